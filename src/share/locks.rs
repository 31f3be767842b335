//! Per-file reader/writer locks: serving a file holds a shared lock on its path, replacing
//! it holds an exclusive one. Different paths never wait on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::path::RelPath;

/// Above this many remembered paths, locks nobody holds any more are swept out.
const SWEEP_THRESHOLD: usize = 1024;

/// A table of locks, one per path in use, created on demand and dropped when unused.
///
/// The table itself sits behind a std `Mutex` held only to find or insert a lock, never
/// across an `.await`.
#[derive(Default)]
pub struct PathLocks {
    /// Live locks by path; a `Weak` so that an unused lock frees itself.
    table: Mutex<HashMap<RelPath, Weak<RwLock<()>>>>,
}

impl PathLocks {
    /// An empty table.
    pub fn new() -> PathLocks {
        PathLocks::default()
    }

    fn lock_for(&self, rel: &RelPath) -> Arc<RwLock<()>> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = table.get(rel).and_then(Weak::upgrade) {
            return lock;
        }
        if table.len() >= SWEEP_THRESHOLD {
            table.retain(|_, weak| weak.strong_count() > 0);
        }
        let lock = Arc::new(RwLock::new(()));
        table.insert(rel.clone(), Arc::downgrade(&lock));
        lock
    }

    /// Waits for a shared lock on `rel`: many readers, no writer.
    pub async fn read(&self, rel: &RelPath) -> OwnedRwLockReadGuard<()> {
        self.lock_for(rel).read_owned().await
    }

    /// Waits for the exclusive lock on `rel`: no reader, no other writer.
    pub async fn write(&self, rel: &RelPath) -> OwnedRwLockWriteGuard<()> {
        self.lock_for(rel).write_owned().await
    }

    /// Runs `work` holding a shared lock on `rel`, waiting for it on this thread: for
    /// blocking code (a batch served) that reads many paths one after the other. Must not
    /// be called from an async task.
    pub fn with_read_blocking<T>(&self, rel: &RelPath, work: impl FnOnce() -> T) -> T {
        let lock = self.lock_for(rel);
        let _guard = lock.blocking_read();
        work()
    }

    /// Runs `work` holding the exclusive lock on `rel`, waiting for it on this thread: for
    /// blocking code (a batch install) that takes many paths' locks one after the other.
    /// Must not be called from an async task.
    pub fn with_write_blocking<T>(&self, rel: &RelPath, work: impl FnOnce() -> T) -> T {
        let lock = self.lock_for(rel);
        let _guard = lock.blocking_write();
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A writer waits for a reader of the same path; another path does not wait at all.
    #[tokio::test]
    async fn same_path_excludes_other_path_does_not() {
        let locks = PathLocks::new();
        let a = RelPath::parse("a").unwrap();
        let b = RelPath::parse("b").unwrap();
        let reader = locks.read(&a).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), locks.write(&a)).await;
        assert!(blocked.is_err(), "writer got a path that is being read");
        let other = tokio::time::timeout(Duration::from_secs(5), locks.write(&b)).await;
        assert!(other.is_ok(), "a different path waited");
        drop(reader);
        let after = tokio::time::timeout(Duration::from_secs(5), locks.write(&a)).await;
        assert!(after.is_ok(), "writer still blocked after the reader left");
    }
}
