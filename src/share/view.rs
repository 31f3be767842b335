//! The folder as last read, kept for as long as the file-system watcher vouches that nothing
//! changed since, so that a peer asking "has your folder changed since version V?" every
//! rescan costs neither a walk of the tree nor a listing on the wire.
//!
//! Trust is conservative: any event the watcher reports (or a watcher error) ends it, a
//! snapshot is never trusted longer than the age the sync engine allows (which bounds what a
//! missed event can cost), and without a running watcher nothing is trusted at all.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;

use super::folder::Entry;
use super::hash::FileHash;

/// The folder read at one moment: every entry with, for files, its hashes.
#[derive(Debug)]
pub struct Snapshot {
    /// Names this content: equal versions from one process mean equal content. Changes
    /// whenever a fresh read finds anything different; never reused across restarts.
    pub version: String,
    /// Every entry, sorted by name; files come with their hashes, or `None` when they could
    /// not be hashed (vanished, or still being written).
    pub items: Vec<(Entry, Option<FileHash>)>,
}

impl Snapshot {
    /// The entries alone, as `index` lists them.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.items.iter().map(|(entry, _)| entry)
    }

    /// The hashes of the files that could be hashed, as a conditional `hash checkall` (sync's)
    /// lists them: a listed file without one is left alone this round.
    pub fn hashes(&self) -> impl Iterator<Item = &FileHash> {
        self.items.iter().filter_map(|(_, hash)| hash.as_ref())
    }
}

/// The latest snapshot and what vouches for it.
struct Latest {
    snapshot: std::sync::Arc<Snapshot>,
    /// The change counter when the read began.
    generation: u64,
    /// When the read began.
    taken: Instant,
}

/// The latest snapshot of a folder and whether it may still be served without reading the
/// folder again. Std mutexes: held only to swap or clone an `Arc`, never across `.await`.
pub struct SnapshotCache {
    /// Random per process, so that a version from before a restart never matches.
    nonce: String,
    /// Counts the changes the watcher reported.
    generation: AtomicU64,
    /// How long a snapshot may be trusted while nothing is reported; `None` while no
    /// watcher runs.
    trust: Mutex<Option<Duration>>,
    /// The latest snapshot.
    latest: Mutex<Option<Latest>>,
    /// Numbers the versions of this process.
    next_version: AtomicU64,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache::new()
    }
}

impl SnapshotCache {
    /// A cache holding nothing and trusting nothing.
    pub fn new() -> SnapshotCache {
        SnapshotCache {
            nonce: format!("{:08x}", rand::rng().random::<u32>()),
            generation: AtomicU64::new(0),
            trust: Mutex::new(None),
            latest: Mutex::new(None),
            next_version: AtomicU64::new(1),
        }
    }

    /// Called by the watcher for every change in the folder (and for its own errors): the
    /// latest snapshot is no longer trusted.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Starts (`Some(max_age)`) or stops (`None`) trusting snapshots while the watcher
    /// reports nothing.
    pub fn set_trust(&self, max_age: Option<Duration>) {
        *self.trust.lock().unwrap_or_else(|e| e.into_inner()) = max_age;
        self.changed();
    }

    /// The change counter, read before a fresh read of the folder begins.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The latest snapshot, if a watcher runs, reported nothing since it was read, and it
    /// is young enough.
    pub fn trusted(&self) -> Option<std::sync::Arc<Snapshot>> {
        let max_age = (*self.trust.lock().unwrap_or_else(|e| e.into_inner()))?;
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let latest = latest.as_ref()?;
        (latest.generation == self.generation() && latest.taken.elapsed() <= max_age)
            .then(|| std::sync::Arc::clone(&latest.snapshot))
    }

    /// Keeps a fresh read that began at `generation` and `taken`, naming it with the latest
    /// version when the content is the same.
    pub fn store(
        &self,
        generation: u64,
        taken: Instant,
        items: Vec<(Entry, Option<FileHash>)>,
    ) -> std::sync::Arc<Snapshot> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let version = match latest.as_ref() {
            Some(previous) if previous.snapshot.items == items => previous.snapshot.version.clone(),
            _ => format!(
                "{}-{}",
                self.nonce,
                self.next_version.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let snapshot = std::sync::Arc::new(Snapshot { version, items });
        // A slower read that began earlier never replaces a newer one.
        if latest.as_ref().is_none_or(|l| l.generation <= generation) {
            *latest = Some(Latest {
                snapshot: std::sync::Arc::clone(&snapshot),
                generation,
                taken,
            });
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::RelPath;
    use crate::time::Timestamp;

    fn entry(name: &str, size: u64) -> (Entry, Option<FileHash>) {
        let name = RelPath::parse(name).unwrap();
        (
            Entry {
                name,
                size,
                mtime: Timestamp::from_system(std::time::UNIX_EPOCH),
                file_type: "text/plain".to_string(),
                mode: 0o644,
            },
            None,
        )
    }

    /// The same content read twice keeps its version; different content gets a new one.
    #[test]
    fn versions_follow_content() {
        let cache = SnapshotCache::new();
        let a = cache.store(cache.generation(), Instant::now(), vec![entry("a", 1)]);
        let again = cache.store(cache.generation(), Instant::now(), vec![entry("a", 1)]);
        let other = cache.store(cache.generation(), Instant::now(), vec![entry("a", 2)]);
        assert_eq!(a.version, again.version);
        assert_ne!(a.version, other.version);
    }

    /// Nothing is trusted without a watcher, after a reported change, or past its age.
    #[test]
    fn trust_needs_a_quiet_watcher() {
        let cache = SnapshotCache::new();
        cache.store(cache.generation(), Instant::now(), vec![entry("a", 1)]);
        assert!(cache.trusted().is_none(), "no watcher yet");
        cache.set_trust(Some(Duration::from_secs(60)));
        cache.store(cache.generation(), Instant::now(), vec![entry("a", 1)]);
        assert!(cache.trusted().is_some());
        cache.changed();
        assert!(cache.trusted().is_none(), "a change was reported");
        cache.set_trust(Some(Duration::ZERO));
        let long_ago = Instant::now() - Duration::from_millis(50);
        cache.store(cache.generation(), long_ago, vec![entry("a", 1)]);
        assert!(cache.trusted().is_none(), "too old");
    }

    /// A read that began before a change is not trusted, even when it finishes after it.
    #[test]
    fn a_read_overtaken_by_a_change_is_not_trusted() {
        let cache = SnapshotCache::new();
        cache.set_trust(Some(Duration::from_secs(60)));
        let began = cache.generation();
        cache.changed();
        cache.store(began, Instant::now(), vec![entry("a", 1)]);
        assert!(cache.trusted().is_none());
    }
}
