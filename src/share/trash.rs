//! The trash: every version of a file that the box replaced or deleted goes to
//! `.boxsync/trash/<time>/<path>` first, and is removed only once it is older than the
//! retention period.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::ShareError;
use super::path::{RelPath, STATE_DIR};
use crate::time::Timestamp;

/// Folder (under the state folder) that holds every replaced or deleted version.
pub const TRASH_DIR: &str = "trash";

/// The folder name for things trashed now: the second, so that what one round replaces
/// or deletes lands under one time (or a few), not one folder per file; sorts by time.
fn stamp() -> String {
    Timestamp::now().0.format("%Y%m%d-%H%M%S").to_string()
}

/// A finer name, for a path trashed twice in the same second: its versions stay apart.
fn fine_stamp() -> String {
    Timestamp::now().0.format("%Y%m%d-%H%M%S%.9f").to_string()
}

fn destination(root: &Path, rel: &RelPath) -> Result<PathBuf, ShareError> {
    let trash = root.join(STATE_DIR).join(TRASH_DIR);
    let mut kept = trash.join(stamp()).join(rel.as_str());
    if fs::symlink_metadata(&kept).is_ok() {
        kept = trash.join(fine_stamp()).join(rel.as_str());
    }
    if let Some(dir) = kept.parent() {
        fs::create_dir_all(dir).map_err(|e| ShareError::io(dir, e))?;
    }
    Ok(kept)
}

/// Keeps the current content of `rel` in the trash (a hard link, so nothing is copied and
/// the original stays in place until it is replaced). Returns the trash path.
pub fn keep_in_trash(root: &Path, rel: &RelPath) -> Result<PathBuf, ShareError> {
    let kept = destination(root, rel)?;
    let source = rel.under(root);
    match fs::hard_link(&source, &kept) {
        Ok(()) => {}
        // Some file systems cannot hard-link; a copy keeps the content just as well.
        Err(_) => {
            fs::copy(&source, &kept).map_err(|e| ShareError::io(&kept, e))?;
        }
    }
    Ok(kept)
}

/// Moves `rel` into the trash (a rename: the name disappears from the folder at once). A
/// file on another file system than the trash (a mount point inside the shared folder) is
/// copied there, flushed, and only then removed.
pub fn move_to_trash(root: &Path, rel: &RelPath) -> Result<PathBuf, ShareError> {
    let kept = destination(root, rel)?;
    let source = rel.under(root);
    match fs::rename(&source, &kept) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            fs::copy(&source, &kept).map_err(|e| ShareError::io(&kept, e))?;
            fs::File::open(&kept)
                .and_then(|copy| copy.sync_all())
                .map_err(|e| ShareError::io(&kept, e))?;
            fs::remove_file(&source).map_err(|e| ShareError::io(&source, e))?;
        }
        Err(e) => return Err(ShareError::io(&kept, e)),
    }
    Ok(kept)
}

/// Removes one kept version from the trash (an intermediate state of a file written in
/// bursts that a later one superseded: see [`super::bursts`]), and the folders it leaves
/// empty up to the trash itself. Best effort: a version that stays is only space.
pub fn discard(root: &Path, kept: &Path) {
    let trash = root.join(STATE_DIR).join(TRASH_DIR);
    if !kept.starts_with(&trash) || fs::remove_file(kept).is_err() {
        return;
    }
    let mut dir = kept.parent();
    while let Some(folder) = dir {
        if folder == trash || !folder.starts_with(&trash) || fs::remove_dir(folder).is_err() {
            break;
        }
        dir = folder.parent();
    }
}

/// Removes trash folders older than `keep`; returns how many were removed.
pub fn prune(root: &Path, keep: Duration) -> usize {
    let trash = root.join(STATE_DIR).join(TRASH_DIR);
    let Ok(items) = fs::read_dir(&trash) else {
        return 0;
    };
    let cutoff = SystemTime::now().checked_sub(keep);
    let mut removed = 0;
    for item in items.flatten() {
        let old = item
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| cutoff.is_some_and(|cutoff| modified < cutoff));
        if old && fs::remove_dir_all(item.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// One version of a file kept in the trash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Trashed {
    /// The file's path in the shared folder.
    pub path: RelPath,
    /// Its number among the path's versions: 1 is the newest.
    pub version: usize,
    /// When it went to the trash (the trash folder's name, `YYYYMMDD-HHMMSS`, UTC).
    pub trashed: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it is kept.
    #[serde(skip)]
    pub kept: PathBuf,
    /// When it went there (its status-change time, nanoseconds: moving or linking it into
    /// the trash set it), which orders the versions.
    #[serde(skip)]
    trashed_ns: i64,
}

/// Every version in the trash of `under` (a file, or everything in a folder; `None`: all),
/// by path, then newest first.
pub fn list(root: &Path, under: Option<&RelPath>) -> Result<Vec<Trashed>, ShareError> {
    let trash = root.join(STATE_DIR).join(TRASH_DIR);
    let stamps = match fs::read_dir(&trash) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ShareError::io(&trash, e)),
    };
    let wanted = |path: &RelPath| match under {
        None => true,
        Some(under) => {
            path == under
                || path
                    .as_str()
                    .strip_prefix(under.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        }
    };
    let mut found = Vec::new();
    for stamp in stamps.flatten() {
        let Some(name) = stamp.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let mut pending = vec![PathBuf::new()];
        while let Some(dir) = pending.pop() {
            let Ok(items) = fs::read_dir(stamp.path().join(&dir)) else {
                continue;
            };
            for item in items.flatten() {
                let relative = dir.join(item.file_name());
                let Ok(meta) = item.metadata() else { continue };
                if meta.is_dir() {
                    pending.push(relative);
                } else if meta.is_file()
                    && let Ok(path) = RelPath::from_local(&relative)
                    && wanted(&path)
                {
                    found.push(Trashed {
                        path,
                        version: 0,
                        trashed: name.chars().take(15).collect(),
                        size: meta.len(),
                        kept: item.path(),
                        trashed_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                    });
                }
            }
        }
    }
    // Newest first within a path.
    found.sort_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then_with(|| b.trashed_ns.cmp(&a.trashed_ns))
            .then_with(|| b.kept.cmp(&a.kept))
    });
    let mut previous: Option<RelPath> = None;
    let mut number = 0;
    for item in &mut found {
        number = match previous.as_ref() == Some(&item.path) {
            true => number + 1,
            false => 1,
        };
        previous = Some(item.path.clone());
        item.version = number;
    }
    Ok(found)
}

/// How many files the trash holds, and their bytes.
pub fn usage(root: &Path) -> Result<(usize, u64), ShareError> {
    let all = list(root, None)?;
    Ok((all.len(), all.iter().map(|item| item.size).sum()))
}

/// Puts version `version` (1: the newest) of `rel` back at its name, whatever is there
/// now going to the trash first: nothing is lost. The caller holds `rel`'s lock.
pub fn restore(root: &Path, rel: &RelPath, version: usize) -> Result<Trashed, ShareError> {
    let versions = list(root, Some(rel))?;
    let Some(item) = versions
        .into_iter()
        .find(|item| &item.path == rel && item.version == version)
    else {
        return Err(ShareError::NotInTrash {
            path: rel.clone(),
            version,
        });
    };
    super::folder::check_ancestors(root, rel).or_else(|e| match e {
        ShareError::NotFound(_) => Ok(()),
        e => Err(e),
    })?;
    super::install::create_parents(root, rel)?;
    if fs::symlink_metadata(rel.under(root)).is_ok() {
        move_to_trash(root, rel)?;
    }
    let target = rel.under(root);
    let cwd = rustix::fs::CWD;
    match rustix::fs::renameat_with(
        cwd,
        &item.kept,
        cwd,
        &target,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => return Err(ShareError::Changed(rel.clone())),
        Err(e) => return Err(ShareError::io(&target, e.into())),
    }
    if let Some(parent) = target.parent() {
        super::install::sync_dir(parent);
    }
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions are listed by path, newest first, numbered from 1; a restore puts the one
    /// asked for back and sends what was there to the trash; a version that is not there
    /// is a clear error that changes nothing.
    #[test]
    fn list_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rel = RelPath::parse("docs/a.txt").unwrap();
        fs::create_dir_all(root.join("docs")).unwrap();
        for content in ["first", "second"] {
            fs::write(rel.under(root), content).unwrap();
            move_to_trash(root, &rel).unwrap();
        }
        fs::write(root.join("b.txt"), "b").unwrap();
        move_to_trash(root, &RelPath::parse("b.txt").unwrap()).unwrap();
        let all = list(root, None).unwrap();
        let names: Vec<(String, usize, u64)> = all
            .iter()
            .map(|t| (t.path.to_string(), t.version, t.size))
            .collect();
        assert_eq!(
            names,
            [
                ("b.txt".to_string(), 1, 1),
                ("docs/a.txt".to_string(), 1, 6),
                ("docs/a.txt".to_string(), 2, 5)
            ]
        );
        let docs = RelPath::parse("docs").unwrap();
        assert_eq!(list(root, Some(&docs)).unwrap().len(), 2);
        assert_eq!(usage(root).unwrap(), (3, 12));

        fs::write(rel.under(root), "third, written since").unwrap();
        let restored = restore(root, &rel, 2).unwrap();
        assert_eq!(restored.size, 5);
        assert_eq!(fs::read_to_string(rel.under(root)).unwrap(), "first");
        let left: Vec<u64> = list(root, Some(&rel))
            .unwrap()
            .iter()
            .map(|t| t.size)
            .collect();
        assert_eq!(left, [20, 6], "what was there went to the trash");
        assert!(matches!(
            restore(root, &rel, 9),
            Err(ShareError::NotInTrash { version: 9, .. })
        ));
        assert_eq!(fs::read_to_string(rel.under(root)).unwrap(), "first");
    }
}
