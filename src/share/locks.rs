//! Per-file reader/writer locks: serving a file holds a shared lock on its path, replacing
//! it holds an exclusive one. Different paths never wait on each other.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::ShareError;
use super::path::RelPath;

/// Above this many remembered paths, locks nobody holds any more are swept out.
const SWEEP_THRESHOLD: usize = 1024;

/// How long a writer waits for a path's lock unless told otherwise.
const DEFAULT_WAIT: Duration = crate::local::Limits::DEFAULT.lock_wait;

/// A table of locks, one per path in use, created on demand and dropped when unused.
///
/// The table itself sits behind a std `Mutex` held only to find or insert a lock, never
/// across an `.await`.
///
/// A writer (sync replacing, renaming or deleting a file) waits a bounded time: a reader
/// may hold its shared lock for as long as a peer takes to receive the file (a UDP session
/// does), and one file's wait must not hold up the rest of a round.
pub struct PathLocks {
    /// Live locks by path; a `Weak` so that an unused lock frees itself.
    table: Mutex<HashMap<RelPath, Weak<RwLock<()>>>>,
    /// How long a writer waits, milliseconds (an atomic: set once the box is opened).
    wait_ms: AtomicU64,
}

impl Default for PathLocks {
    fn default() -> PathLocks {
        PathLocks {
            table: Mutex::default(),
            wait_ms: AtomicU64::new(DEFAULT_WAIT.as_millis() as u64),
        }
    }
}

impl PathLocks {
    /// An empty table.
    pub fn new() -> PathLocks {
        PathLocks::default()
    }

    /// Sets how long a writer waits for a path's lock before giving up.
    pub fn set_wait(&self, wait: Duration) {
        self.wait_ms
            .store(wait.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// How long a writer waits for a path's lock before giving up.
    pub fn wait(&self) -> Duration {
        Duration::from_millis(self.wait_ms.load(Ordering::Relaxed))
    }

    /// The error of a writer that waited [`PathLocks::wait`] in vain for `rel`.
    fn busy(&self, rel: &RelPath) -> ShareError {
        let message = format!(
            "still in use after {:.1}s (being sent to a peer?); tried again next round",
            self.wait().as_secs_f64()
        );
        ShareError::io(
            rel.as_str(),
            io::Error::new(io::ErrorKind::TimedOut, message),
        )
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

    /// Waits for a shared lock on `rel`: many readers, no writer. Writers hold a lock only
    /// while they rename or change a file on the local disk, so this wait is short.
    pub async fn read(&self, rel: &RelPath) -> OwnedRwLockReadGuard<()> {
        self.lock_for(rel).read_owned().await
    }

    /// Waits for the exclusive lock on `rel`: no reader, no other writer; fails after
    /// [`PathLocks::wait`].
    pub async fn write(&self, rel: &RelPath) -> Result<OwnedRwLockWriteGuard<()>, ShareError> {
        tokio::time::timeout(self.wait(), self.lock_for(rel).write_owned())
            .await
            .map_err(|_| self.busy(rel))
    }

    /// Runs `work` holding a shared lock on `rel`, waiting for it on this thread: for
    /// blocking code (a batch served) that reads many paths one after the other. Must not
    /// be called from an async task.
    pub fn with_read_blocking<T>(&self, rel: &RelPath, work: impl FnOnce() -> T) -> T {
        let lock = self.lock_for(rel);
        let _guard = lock.blocking_read();
        work()
    }

    /// Runs `work` holding the exclusive lock on `rel`, waiting for it on this thread (at
    /// most [`PathLocks::wait`]): for blocking code (a batch install) that takes many paths'
    /// locks one after the other. Must not be called from an async task.
    pub fn with_write_blocking<T>(
        &self,
        rel: &RelPath,
        work: impl FnOnce() -> T,
    ) -> Result<T, ShareError> {
        let lock = self.lock_for(rel);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let _guard = runtime
                    .block_on(tokio::time::timeout(self.wait(), lock.write()))
                    .map_err(|_| self.busy(rel))?;
                Ok(work())
            }
            // Outside a runtime there is no timer: wait as long as it takes.
            Err(_) => {
                let _guard = lock.blocking_write();
                Ok(work())
            }
        }
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

    /// A writer gives up after the wait set, with an error naming the path; once the
    /// reader is gone, the next writer gets the lock.
    #[tokio::test]
    async fn a_writer_gives_up_after_its_wait() {
        let locks = PathLocks::new();
        locks.set_wait(Duration::from_millis(50));
        let a = RelPath::parse("a").unwrap();
        let reader = locks.read(&a).await;
        let waited = tokio::time::timeout(Duration::from_secs(5), locks.write(&a))
            .await
            .expect("the writer waited past its deadline");
        let error = waited.expect_err("the writer got a path being read");
        assert!(error.to_string().starts_with("a: still in use"), "{error}");
        drop(reader);
        assert!(locks.write(&a).await.is_ok());
    }
}
