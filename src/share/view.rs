//! The folder as last read, kept for as long as the file-system watcher vouches that nothing
//! changed since, so that a peer asking "has your folder changed since version V?" every
//! rescan costs neither a walk of the tree nor a listing on the wire.
//!
//! Trust is conservative: any event the watcher reports (or a watcher error) ends it, a
//! snapshot is never trusted longer than the age the sync engine allows (which bounds what a
//! missed event can cost), and without a running watcher nothing is trusted at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::folder::{Entry, Scope};
use super::hash::FileHash;
use super::index::ChangeMark;
use super::numbering::{Item, Numbering};
use super::path::RelPath;

/// The folder read at one moment: every entry with, for files, its hashes, and the
/// change numbers of each ([`super::numbering`]).
#[derive(Debug)]
pub struct Snapshot {
    /// Every entry, sorted by name; files come with their hashes, or `None` when they could
    /// not be hashed (vanished, or still being written).
    pub items: Arc<Vec<Item>>,
    /// The change number of each item, in the same order.
    pub numbers: Vec<u64>,
    /// Paths removed (those still remembered), with the number of their removal.
    pub removed: Arc<BTreeMap<RelPath, u64>>,
    /// Where the folder's numbering stands at this read.
    pub mark: ChangeMark,
    /// Changes numbered at or below this may have been forgotten.
    pub floor: u64,
}

/// What changed in a folder after a peer's mark.
pub enum ChangesSince<'a> {
    /// The peer must take the whole listing: it has no mark, or one of another epoch,
    /// older than what is remembered, or ahead of this folder's numbering.
    Whole,
    /// What changed after the mark: the items numbered after it, and the paths removed.
    Later {
        /// Items changed or new since the mark.
        present: Vec<&'a Item>,
        /// Paths removed since the mark.
        removed: Vec<&'a RelPath>,
    },
}

impl Snapshot {
    /// Names this content: equal versions mean equal content (the epoch and the last
    /// change number, so it survives restarts). Changes whenever a fresh read finds
    /// anything different.
    pub fn version(&self) -> String {
        format!("{:016x}-{}", self.mark.epoch, self.mark.seq)
    }

    /// The entries alone, as `index` lists them.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.items.iter().map(|(entry, _)| entry)
    }

    /// The hashes of the files that could be hashed, as a conditional `hash checkall` (sync's)
    /// lists them: a listed file without one is left alone this round.
    pub fn hashes(&self) -> impl Iterator<Item = &FileHash> {
        self.items.iter().filter_map(|(_, hash)| hash.as_ref())
    }

    /// What changed after `since`, the mark of the last answer a peer read.
    pub fn changes_since(&self, since: Option<ChangeMark>) -> ChangesSince<'_> {
        let Some(since) = since.filter(|since| {
            since.epoch == self.mark.epoch && since.seq <= self.mark.seq && since.seq >= self.floor
        }) else {
            return ChangesSince::Whole;
        };
        let present = self
            .items
            .iter()
            .zip(&self.numbers)
            .filter(|(_, n)| **n > since.seq)
            .map(|(item, _)| item)
            .collect();
        let removed = self
            .removed
            .iter()
            .filter(|(_, n)| **n > since.seq)
            .map(|(path, _)| path)
            .collect();
        ChangesSince::Later { present, removed }
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
    /// Numbers the changes between reads.
    numbering: Mutex<Numbering>,
    /// Counts the changes the watcher reported.
    generation: AtomicU64,
    /// How long a snapshot may be trusted while nothing is reported; `None` while no
    /// watcher runs.
    trust: Mutex<Option<Duration>>,
    /// The latest snapshot.
    latest: Mutex<Option<Latest>>,
    /// What the watcher reported changed since the last read began.
    dirty: Mutex<Dirty>,
}

/// What changed since a read began, as the watcher reported it.
#[derive(Debug, Default)]
struct Dirty {
    /// Something changed that the watcher could not place (or no watcher vouches): the next
    /// read must read the whole folder.
    whole: bool,
    /// The parts of the folder that changed.
    scopes: BTreeSet<Scope>,
}

/// More changed parts than this, and a read takes the whole folder instead.
const MAX_SCOPES: usize = 10_000;

/// How a read of the folder goes, as [`SnapshotCache::begin_read`] decides.
pub enum ReadPlan {
    /// Read the whole folder.
    Whole,
    /// Read only `scopes` afresh and take the rest from `base`, the latest snapshot,
    /// which the watcher vouches for outside them.
    Partial {
        /// The latest snapshot.
        base: Arc<Snapshot>,
        /// What changed since it was read.
        scopes: Vec<Scope>,
    },
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache::new(Numbering::in_memory())
    }
}

impl SnapshotCache {
    /// A cache holding nothing and trusting nothing, numbering reads with `numbering`.
    pub fn new(numbering: Numbering) -> SnapshotCache {
        SnapshotCache {
            numbering: Mutex::new(numbering),
            generation: AtomicU64::new(0),
            trust: Mutex::new(None),
            latest: Mutex::new(None),
            dirty: Mutex::new(Dirty::default()),
        }
    }

    /// Called by the watcher for every change in the folder (and for its own errors): the
    /// latest snapshot is no longer trusted.
    pub fn changed(&self) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.whole = true;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Called by the watcher with the parts of the folder where something changed: the
    /// latest snapshot is no longer trusted, and the next read may read only those.
    pub fn changed_in(&self, scopes: impl IntoIterator<Item = Scope>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.scopes.extend(scopes);
        if dirty.scopes.len() > MAX_SCOPES {
            dirty.whole = true;
            dirty.scopes.clear();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Begins a read of the folder: its generation, and whether reading the parts the
    /// watcher reported will do (a watcher vouches, the latest snapshot is still the base,
    /// nothing unplaced changed) or the whole folder must be read (`whole`: the rescan
    /// asks so). What was reported is taken: a read that fails must call
    /// [`SnapshotCache::changed`], so the next one reads the whole folder.
    pub fn begin_read(&self, whole: bool) -> (u64, ReadPlan) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation();
        let taken = std::mem::take(&mut *dirty);
        drop(dirty);
        let watched = self
            .trust
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let base = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|latest| Arc::clone(&latest.snapshot));
        match base {
            Some(base) if watched && !whole && !taken.whole => (
                generation,
                ReadPlan::Partial {
                    base,
                    scopes: taken.scopes.into_iter().collect(),
                },
            ),
            _ => (generation, ReadPlan::Whole),
        }
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

    /// Numbers a fresh read that began at `generation` and `taken` (storing its numbers
    /// before it is published) and keeps it as the latest. Reads must be stored in the
    /// order they began (the share serializes them). Blocks on the database: call it off
    /// the async threads.
    pub fn store(
        &self,
        generation: u64,
        taken: Instant,
        items: Vec<Item>,
    ) -> std::sync::Arc<Snapshot> {
        let items = Arc::new(items);
        let (numbered, lost) = self
            .numbering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .number(Arc::clone(&items));
        if let Some(lost) = lost {
            tracing::warn!(reason = %lost.reason, "the folder's change numbers are kept in memory only; peers will compare whole folders once, and after each restart");
        }
        let snapshot = Arc::new(Snapshot {
            items,
            numbers: numbered.numbers,
            removed: numbered.removed,
            mark: numbered.mark,
            floor: numbered.floor,
        });
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        // A slower read that began earlier never replaces a newer one.
        if latest.as_ref().is_none_or(|l| l.generation <= generation) {
            *latest = Some(Latest {
                snapshot: Arc::clone(&snapshot),
                generation,
                taken,
            });
        }
        snapshot
    }

    /// The latest snapshot, trusted or not, if it was read at or after `since` and no
    /// change was reported since it was: a reader that waited for another one to finish
    /// takes that one's answer instead of reading the folder again.
    pub fn read_since(&self, since: Instant) -> Option<Arc<Snapshot>> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let latest = latest.as_ref()?;
        (latest.taken >= since && latest.generation == self.generation())
            .then(|| Arc::clone(&latest.snapshot))
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
                file_type: "text/plain".into(),
                mode: 0o644,
            },
            None,
        )
    }

    /// The same content read twice keeps its version; different content gets a new one.
    #[test]
    fn versions_follow_content() {
        let cache = SnapshotCache::default();
        let a = cache.store(cache.generation(), Instant::now(), vec![entry("a", 1)]);
        let again = cache.store(cache.generation(), Instant::now(), vec![entry("a", 1)]);
        let other = cache.store(cache.generation(), Instant::now(), vec![entry("a", 2)]);
        assert_eq!(a.version(), again.version());
        assert_ne!(a.version(), other.version());
    }

    /// A peer gets what was numbered after its mark, whatever the gaps between numbers (a
    /// path changed twice keeps only its latest); the whole listing for a mark of another
    /// epoch, one ahead of the numbering, or one older than the removals remembered.
    #[test]
    fn changes_since_a_mark_are_what_was_numbered_after_it() {
        let cache = SnapshotCache::default();
        let first = cache.store(
            cache.generation(),
            Instant::now(),
            vec![entry("a", 1), entry("b", 1), entry("c", 1)],
        );
        cache.store(
            cache.generation(),
            Instant::now(),
            vec![entry("a", 2), entry("b", 1), entry("c", 1)],
        );
        let now = cache.store(
            cache.generation(),
            Instant::now(),
            vec![entry("a", 3), entry("b", 1)],
        );
        // "a" was numbered 4 then 5 (4 is a gap now), "c" removed as 6.
        assert_eq!(now.numbers, vec![5, 2]);
        let names = |since| match now.changes_since(Some(since)) {
            ChangesSince::Whole => None,
            ChangesSince::Later { present, removed } => Some((
                present
                    .iter()
                    .map(|(e, _)| e.name.to_string())
                    .collect::<Vec<_>>(),
                removed.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            )),
        };
        let at = |seq| ChangeMark {
            epoch: first.mark.epoch,
            seq,
        };
        assert_eq!(names(at(3)), Some((vec!["a".into()], vec!["c".into()])));
        assert_eq!(names(at(4)), Some((vec!["a".into()], vec!["c".into()])));
        assert_eq!(names(at(5)), Some((vec![], vec!["c".into()])));
        assert_eq!(names(at(6)), Some((vec![], vec![])));
        assert_eq!(names(at(7)), None, "a mark ahead of the numbering");
        let other = ChangeMark {
            epoch: first.mark.epoch ^ 1,
            seq: 6,
        };
        assert_eq!(names(other), None, "another epoch");
        assert!(matches!(now.changes_since(None), ChangesSince::Whole));
        let forgotten = Snapshot {
            floor: 4,
            ..clone_of(&now)
        };
        assert!(matches!(
            forgotten.changes_since(Some(at(3))),
            ChangesSince::Whole
        ));
        assert!(matches!(
            forgotten.changes_since(Some(at(4))),
            ChangesSince::Later { .. }
        ));
    }

    fn clone_of(snapshot: &Snapshot) -> Snapshot {
        Snapshot {
            items: Arc::clone(&snapshot.items),
            numbers: snapshot.numbers.clone(),
            removed: Arc::clone(&snapshot.removed),
            mark: snapshot.mark,
            floor: snapshot.floor,
        }
    }

    /// Nothing is trusted without a watcher, after a reported change, or past its age.
    #[test]
    fn trust_needs_a_quiet_watcher() {
        let cache = SnapshotCache::default();
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
        let cache = SnapshotCache::default();
        cache.set_trust(Some(Duration::from_secs(60)));
        let began = cache.generation();
        cache.changed();
        cache.store(began, Instant::now(), vec![entry("a", 1)]);
        assert!(cache.trusted().is_none());
    }
}
