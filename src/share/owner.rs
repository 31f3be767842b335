//! One box per folder: the process that opens a shared folder's state for writing holds an
//! exclusive advisory lock (`flock`) on `.boxsync/box.lock` for as long as it runs, so a
//! second box started on the same folder is refused at once instead of writing the same
//! state beside it under the same box ID. The kernel releases the lock when the process
//! ends, however it ends (kill -9 included): a crashed box never blocks its restart.
//!
//! The lock belongs to the process: opening the same folder again in the same process (a
//! box restarted in-process, as tests do) shares it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use rustix::fs::FlockOperation;

use super::ShareError;

/// File under the state folder whose lock the box's process holds; it names that
/// process's id, for the message another start shows.
pub const LOCK_FILE: &str = "box.lock";

/// The locks this process holds, by lock file path: a second open shares the first's.
static HELD: Mutex<Option<HashMap<PathBuf, Weak<FolderLock>>>> = Mutex::new(None);

/// The exclusive lock on one folder's state, held while this value lives.
#[derive(Debug)]
pub struct FolderLock {
    /// The shared folder, for messages.
    folder: PathBuf,
    /// The lock file.
    path: PathBuf,
    /// The locked file (replaced when the state folder was deleted and recreated).
    file: Mutex<File>,
}

impl FolderLock {
    /// Takes the lock on the state folder `state` of the shared folder `folder`, or fails
    /// with [`ShareError::Busy`] naming the process that holds it.
    pub fn acquire(folder: &Path, state: &Path) -> Result<Arc<FolderLock>, ShareError> {
        let path = state.join(LOCK_FILE);
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let held = held.get_or_insert_with(HashMap::new);
        if let Some(lock) = held.get(&path).and_then(Weak::upgrade) {
            return Ok(lock);
        }
        let file = lock_file(folder, &path)?;
        let lock = Arc::new(FolderLock {
            folder: folder.to_path_buf(),
            path: path.clone(),
            file: Mutex::new(file),
        });
        held.retain(|_, lock| lock.strong_count() > 0);
        held.insert(path, Arc::downgrade(&lock));
        Ok(lock)
    }

    /// Whether the lock file is still the one locked (not deleted with the state folder).
    pub fn intact(&self) -> bool {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        match (file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(held), Ok(now)) => (held.dev(), held.ino()) == (now.dev(), now.ino()),
            _ => false,
        }
    }

    /// Locks a new lock file where the one held was deleted (with the state folder), so
    /// that a box started on the folder now is refused as before. Fails with
    /// [`ShareError::Busy`] if another process took the folder meanwhile.
    pub fn restore(&self) -> Result<(), ShareError> {
        if self.intact() {
            return Ok(());
        }
        let fresh = lock_file(&self.folder, &self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// Whether a process holds the lock of the state folder `state`, without taking it: `None`
/// when none does (or there is no lock file), else the pid its lock file names, if any.
/// Tries a shared lock, which conflicts with the holder's exclusive one, and drops it at
/// once: a box starting in that instant would be refused as if one ran.
pub fn holder(state: &Path) -> Option<Option<u32>> {
    let mut file = File::open(state.join(LOCK_FILE)).ok()?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared) {
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            Some(
                file.read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse::<u32>().ok()),
            )
        }
        _ => None,
    }
}

/// Opens (creating) and locks the lock file at `path`, writing this process's id in it.
fn lock_file(folder: &Path, path: &Path) -> Result<File, ShareError> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| ShareError::io(path, e))?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse::<u32>().ok());
            return Err(ShareError::Busy {
                folder: folder.to_path_buf(),
                pid,
            });
        }
        Err(e) => return Err(ShareError::io(path, e.into())),
    }
    // Only the holder writes it; a reader that finds it empty meanwhile names no pid.
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.map_err(|e| ShareError::io(path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock in the same process shares the first; once every holder is gone the
    /// folder can be locked afresh; a deleted lock file is replaced and locked again.
    #[test]
    fn one_lock_per_process_and_folder() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path(), dir.path()).unwrap();
        let second = FolderLock::acquire(dir.path(), dir.path()).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        assert!(first.intact());
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        assert!(!first.intact());
        first.restore().unwrap();
        assert!(first.intact());
        // Another open file description of the same file is refused while it is held.
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        assert!(rustix::fs::flock(&other, FlockOperation::NonBlockingLockExclusive).is_err());
        drop((first, second));
        assert!(rustix::fs::flock(&other, FlockOperation::NonBlockingLockExclusive).is_ok());
    }
}
