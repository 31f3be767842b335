//! Putting a verified temporary file in place: atomically, with the peer's modification time
//! and permission bits, and with whatever it replaces kept in the trash.

use std::fs::{self, File, FileTimes, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ShareError;
use super::folder;
use super::path::{RelPath, STATE_DIR};
use crate::time::Timestamp;

/// Folder (under the state folder) that holds every replaced or deleted version.
pub const TRASH_DIR: &str = "trash";

/// What a file should look like once installed.
#[derive(Debug, Clone, Copy)]
pub struct InstallMeta {
    /// Modification time to give it.
    pub mtime: Timestamp,
    /// Permission bits to give it (masked to `0o7777`).
    pub mode: u32,
}

/// Sets mode and mtime on `tmp`, flushes it, then renames it over `rel` under `root`.
///
/// The previous file at `rel`, if any, is hard-linked into `.boxsync/trash/` first, so the
/// rename replaces it atomically and its content survives. Returns where the previous
/// version went. Parent folders are created as needed, never through a symlink.
pub fn install(
    root: &Path,
    tmp: &Path,
    rel: &RelPath,
    meta: InstallMeta,
) -> Result<Option<PathBuf>, ShareError> {
    let file = File::options()
        .write(true)
        .open(tmp)
        .map_err(|e| ShareError::io(tmp, e))?;
    file.set_permissions(Permissions::from_mode(meta.mode & 0o7777))
        .map_err(|e| ShareError::io(tmp, e))?;
    file.set_times(FileTimes::new().set_modified(meta.mtime.to_system()))
        .map_err(|e| ShareError::io(tmp, e))?;
    file.sync_all().map_err(|e| ShareError::io(tmp, e))?;
    drop(file);

    create_parents(root, rel)?;
    let target = rel.under(root);
    let trashed = match folder::stat(root, rel)? {
        Some(existing) if existing.is_dir() => return Err(ShareError::IsDirectory(rel.clone())),
        Some(_) => Some(keep_in_trash(root, rel)?),
        None => None,
    };
    fs::rename(tmp, &target).map_err(|e| ShareError::io(&target, e))?;
    if let Some(parent) = target.parent() {
        // Make the rename itself durable; a failure here loses nothing already visible.
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(trashed)
}

/// Creates the folders on the way to `rel`, refusing to pass through a symlink or a file.
pub fn create_parents(root: &Path, rel: &RelPath) -> Result<(), ShareError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut current = root.to_path_buf();
    for part in parent.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ShareError::Symlink(rel.clone()));
            }
            Ok(_) => return Err(ShareError::NotADirectory(rel.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&current) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ShareError::io(&current, e)),
            },
            Err(e) => return Err(ShareError::io(&current, e)),
        }
    }
    folder::check_ancestors(root, rel)
}

/// Keeps the current content of `rel` in the trash (a hard link, so nothing is copied and
/// the original stays in place until it is replaced). Returns the trash path.
pub fn keep_in_trash(root: &Path, rel: &RelPath) -> Result<PathBuf, ShareError> {
    let stamp = Timestamp::now().0.format("%Y%m%d-%H%M%S%.9f").to_string();
    let kept = root
        .join(STATE_DIR)
        .join(TRASH_DIR)
        .join(stamp)
        .join(rel.as_str());
    if let Some(dir) = kept.parent() {
        fs::create_dir_all(dir).map_err(|e| ShareError::io(dir, e))?;
    }
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
