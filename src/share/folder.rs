//! Reading the shared folder safely: listing entries and opening files without ever
//! following a symlink or leaving the folder.

use std::borrow::Cow;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ShareError;
use super::dirs::Dirs;
use super::ignore::Ignore;
use super::path::{RelPath, STAGING_PREFIX, STATE_DIR};
use super::unshared::{NotShared, Reason};
use crate::time::Timestamp;

/// The `type` of a directory entry; files carry a MIME type instead.
pub const DIRECTORY_TYPE: &str = "directory";

/// One entry of a shared folder's index, as it travels and as `--json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the shared folder, `/`-separated.
    pub name: RelPath,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last-modified time.
    pub mtime: Timestamp,
    /// `directory`, or the MIME type guessed from the name.
    #[serde(rename = "type")]
    pub file_type: Cow<'static, str>,
    /// Unix permission bits (`0o644`), so copies keep them.
    #[serde(default)]
    pub mode: u32,
}

impl Entry {
    /// Whether this entry is a directory rather than a file.
    pub fn is_dir(&self) -> bool {
        self.file_type == DIRECTORY_TYPE
    }

    fn from_metadata(name: RelPath, meta: &Metadata) -> Entry {
        let is_dir = meta.is_dir();
        Entry {
            file_type: Cow::Borrowed(if is_dir {
                DIRECTORY_TYPE
            } else {
                mime_type(&name)
            }),
            size: if is_dir { 0 } else { meta.len() },
            mtime: modified(meta),
            mode: mode(meta),
            name,
        }
    }
}

/// The MIME type guessed from a file name; `application/octet-stream` when unknown.
pub fn mime_type(name: &RelPath) -> &'static str {
    mime_guess::from_path(name.file_name())
        .first_raw()
        .unwrap_or("application/octet-stream")
}

/// A file's permission bits (`0o644`), as copies keep them.
pub fn mode(meta: &Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// A file's last-modified time; the epoch if the platform cannot tell.
pub fn modified(meta: &Metadata) -> Timestamp {
    meta.modified()
        .map(Timestamp::from_system)
        .unwrap_or_else(|_| Timestamp::from_system(std::time::UNIX_EPOCH))
}

/// Lists every file and directory below `root`, recursively, sorted by name.
///
/// Symlinks, special files, names that are not UTF-8, the root's `.boxsync/` and what
/// `ignore` ignores are skipped: they can be neither served nor synced.
pub fn list(root: &Path, ignore: &Ignore) -> Result<Vec<Entry>, ShareError> {
    Ok(list_detailed(root, ignore)?
        .into_iter()
        .map(|(entry, _)| entry)
        .collect())
}

/// Like [`list`], with each entry's fingerprint (from the same `lstat`), so that hashes can
/// be looked up in the cache without touching the files again.
pub fn list_detailed(
    root: &Path,
    ignore: &Ignore,
) -> Result<Vec<(Entry, Fingerprint)>, ShareError> {
    list_detailed_noting(root, ignore, &mut Vec::new())
}

/// [`list_detailed`], adding to `unshared` each path it leaves out that a person may have
/// expected to be shared (see [`super::unshared`]).
pub fn list_detailed_noting(
    root: &Path,
    ignore: &Ignore,
    unshared: &mut Vec<NotShared>,
) -> Result<Vec<(Entry, Fingerprint)>, ShareError> {
    let mut entries = walk(root, PathBuf::new(), true, ignore, unshared)?;
    entries.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(entries)
}

/// What part of the folder a partial read lists afresh (see [`list_scope`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The folder (`""`: the shared folder itself) and its direct children.
    Children(String),
    /// The folder and everything below it.
    Subtree(String),
}

impl Scope {
    /// The folder the scope is about, relative (`""`: the shared folder).
    pub fn folder(&self) -> &str {
        match self {
            Scope::Children(folder) | Scope::Subtree(folder) => folder,
        }
    }
}

/// The entries of `scope`, unsorted: the folder's own entry (unless it is the shared
/// folder), then its children, recursively for a subtree. A folder that is gone, or is now
/// a symlink or a file, or lies under one, or is ignored, has nothing (its removal is the
/// caller's to see).
pub fn list_scope(
    root: &Path,
    scope: &Scope,
    ignore: &Ignore,
) -> Result<Vec<(Entry, Fingerprint)>, ShareError> {
    list_scope_noting(root, scope, ignore, &mut Vec::new())
}

/// [`list_scope`], adding to `unshared` each path of the scope it leaves out (see
/// [`super::unshared`]).
pub fn list_scope_noting(
    root: &Path,
    scope: &Scope,
    ignore: &Ignore,
    unshared: &mut Vec<NotShared>,
) -> Result<Vec<(Entry, Fingerprint)>, ShareError> {
    let folder = scope.folder();
    let mut entries = Vec::new();
    if !folder.is_empty() {
        let Ok(rel) = RelPath::parse(folder) else {
            return Ok(entries);
        };
        if ignore.ignores(&rel) {
            return Ok(entries);
        }
        match check_ancestors(root, &rel) {
            Ok(()) => {}
            Err(
                ShareError::Symlink(_) | ShareError::NotFound(_) | ShareError::NotADirectory(_),
            ) => {
                return Ok(entries);
            }
            Err(e) => return Err(e),
        }
        let meta = match fs::symlink_metadata(rel.under(root)) {
            Ok(meta) => meta,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(entries);
            }
            Err(e) => return Err(ShareError::io(rel.under(root), e)),
        };
        if !meta.is_dir() {
            return Ok(entries);
        }
        entries.push((Entry::from_metadata(rel, &meta), Fingerprint::of(&meta)));
    }
    let recursive = matches!(scope, Scope::Subtree(_));
    entries.extend(walk(
        root,
        PathBuf::from(folder),
        recursive,
        ignore,
        unshared,
    )?);
    Ok(entries)
}

/// The entries below `start` (relative to `root`), unsorted: its children, and theirs
/// when `recursive`; an ignored path is skipped (a folder with everything in it), and
/// what cannot be shared is noted in `unshared`.
fn walk(
    root: &Path,
    start: PathBuf,
    recursive: bool,
    ignore: &Ignore,
    unshared: &mut Vec<NotShared>,
) -> Result<Vec<(Entry, Fingerprint)>, ShareError> {
    let mut entries = Vec::new();
    let mut pending = vec![start];
    while let Some(dir) = pending.pop() {
        let read = match fs::read_dir(root.join(&dir)) {
            Ok(read) => read,
            // A folder that vanished during the walk is simply no longer there.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.as_os_str().is_empty() => {
                continue;
            }
            Err(e) => return Err(ShareError::io(root.join(&dir), e)),
        };
        for item in read {
            let item = item.map_err(|e| ShareError::io(root.join(&dir), e))?;
            let relative = dir.join(item.file_name());
            if dir.as_os_str().is_empty() && item.file_name() == STATE_DIR {
                continue;
            }
            if let Some(staging) = item
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            {
                remove_if_abandoned(staging, &item.path());
                continue;
            }
            let Ok(name) = RelPath::from_local(&relative) else {
                unshared.push(NotShared::new(&relative, Reason::Name));
                continue;
            };
            if ignore.ignores(&name) {
                continue;
            }
            // Relative to the open directory (no walk of the whole path), never following
            // a symlink.
            let meta = match item.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ShareError::io(root.join(&relative), e)),
            };
            if meta.is_dir() {
                if recursive {
                    pending.push(relative);
                }
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(item.path())
                    .map(|target| target.to_string_lossy().into_owned())
                    .unwrap_or_default();
                unshared.push(NotShared::new(&relative, Reason::Symlink { target }));
                continue;
            } else if !meta.is_file() {
                unshared.push(NotShared::new(&relative, Reason::Special));
                continue;
            }
            entries.push((Entry::from_metadata(name, &meta), Fingerprint::of(&meta)));
        }
    }
    Ok(entries)
}

/// Removes the staged file at `path` (named `.boxsync-part-<pid>-<n>`, `rest` being what
/// follows the prefix) when the process that was receiving it no longer runs: a crash left
/// it. One that a live box is writing is left alone.
fn remove_if_abandoned(rest: &str, path: &Path) {
    let owner = rest
        .split('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok());
    let alive = owner.is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
    if !alive {
        let _ = fs::remove_file(path);
    }
}

/// Checks that every folder on the way to `rel` is a real directory inside `root`, not a
/// symlink, so that a later operation on `rel` cannot be redirected outside the folder.
pub fn check_ancestors(root: &Path, rel: &RelPath) -> Result<(), ShareError> {
    let mut current = root.to_path_buf();
    let parts: Vec<&str> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ShareError::Symlink(rel.clone()));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(ShareError::NotFound(rel.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ShareError::NotFound(rel.clone()));
            }
            Err(e) => return Err(ShareError::io(current, e)),
        }
    }
    Ok(())
}

/// Metadata of `rel` without following symlinks; `Ok(None)` when nothing is there.
pub fn stat(root: &Path, rel: &RelPath) -> Result<Option<Metadata>, ShareError> {
    match check_ancestors(root, rel) {
        Err(ShareError::NotFound(_)) => return Ok(None),
        other => other?,
    }
    match fs::symlink_metadata(rel.under(root)) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ShareError::io(rel.under(root), e)),
    }
}

/// Opens a regular file for reading, refusing symlinks anywhere on the way, and returns it
/// with the metadata of the opened file itself (see [`Dirs::open_regular`], which a run of
/// files should use directly).
pub fn open_regular(root: &Path, rel: &RelPath) -> Result<(File, Metadata), ShareError> {
    Dirs::open(root)?.open_regular(rel)
}

/// The identity of one version of a file: if any of these change, so may its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode number (a replaced file gets a new one).
    pub ino: u64,
    /// Status-change time, nanoseconds; catches writes that restore the mtime.
    #[serde(default)]
    pub ctime_ns: i64,
}

impl Fingerprint {
    /// The fingerprint of the file `stat` describes: the same as [`Fingerprint::of`] gives
    /// for its `Metadata`, for callers that look a name up relative to an open folder.
    pub fn of_stat(stat: &rustix::fs::Stat) -> Fingerprint {
        let nanos = |secs: i64, nsec: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsec);
        Fingerprint {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime_ns: nanos(stat.st_mtime, stat.st_mtime_nsec as i64),
            ino: stat.st_ino,
            ctime_ns: nanos(stat.st_ctime, stat.st_ctime_nsec as i64),
        }
    }

    /// The fingerprint of the file described by `meta`.
    pub fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            size: meta.len(),
            mtime_ns: modified(meta).unix_nanos(),
            ino: meta.ino(),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
        }
    }
}
