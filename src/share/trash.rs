//! The trash: every version of a file that the box replaced or deleted goes to
//! `.boxsync/trash/<time>/<path>` first, and is removed only once it is older than the
//! retention period.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::ShareError;
use super::path::{RelPath, STATE_DIR};
use crate::time::Timestamp;

/// Folder (under the state folder) that holds every replaced or deleted version.
pub const TRASH_DIR: &str = "trash";

/// A fresh folder name for things trashed now; sorts by time.
fn stamp() -> String {
    Timestamp::now().0.format("%Y%m%d-%H%M%S%.9f").to_string()
}

fn destination(root: &Path, rel: &RelPath) -> Result<PathBuf, ShareError> {
    let kept = root
        .join(STATE_DIR)
        .join(TRASH_DIR)
        .join(stamp())
        .join(rel.as_str());
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
