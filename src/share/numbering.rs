//! The folder's change numbers: each read of the folder is compared with the one before,
//! and every path whose version changed (or that went) gets the next number. A peer that
//! saw the folder up to number N then needs only what is numbered after N: a change costs
//! the wire its own size, not the folder's.
//!
//! Numbers increase within an epoch and are stored in the index database
//! ([`super::index`]) before a read that gave them is published, so a crash never gives
//! one number to two contents. Removals are remembered (as numbered tombstones) up to
//! [`MAX_REMOVED`]; a peer whose mark is older than the oldest forgotten one, from another
//! epoch, or ahead of this numbering (a database restored from a backup) gets the whole
//! listing instead.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use rand::RngExt;

use super::folder::Entry;
use super::hash::FileHash;
use super::index::{ChangeMark, IndexDb, IndexError, NumberingWrite, VersionKey};
use super::path::RelPath;

/// Most removals remembered; beyond it the oldest are forgotten (a peer that saw none of
/// them since then gets a whole listing).
pub const MAX_REMOVED: usize = 100_000;

/// One entry of a read of the folder: the entry and, for a file, its hashes (`None`: not
/// hashed this time).
pub type Item = (Entry, Option<FileHash>);

/// The numbers a read was given.
#[derive(Debug, Clone)]
pub struct Numbered {
    /// Each item's number, in the read's order.
    pub numbers: Vec<u64>,
    /// Removed paths remembered, with the number of their removal.
    pub removed: Arc<BTreeMap<RelPath, u64>>,
    /// Where the numbering stands after the read.
    pub mark: ChangeMark,
    /// Changes numbered at or below this may have been forgotten.
    pub floor: u64,
}

/// The folder's numbering: where it stands and what it last numbered.
pub struct Numbering {
    /// Where it is stored (`None`: in memory only, for tests, or since a write failed).
    db: Option<Arc<IndexDb>>,
    /// The epoch and the last number given.
    mark: ChangeMark,
    /// Changes numbered at or below this may have been forgotten.
    floor: u64,
    /// Until the first read is numbered: each path's stored number and version.
    stored: Option<HashMap<RelPath, (u64, VersionKey)>>,
    /// The last read numbered, with its numbers (sorted by name, as reads are).
    last: Option<(Arc<Vec<Item>>, Vec<u64>)>,
    /// Removed paths remembered, with the number of their removal.
    removed: Arc<BTreeMap<RelPath, u64>>,
    /// The stored numbering to take up at the first read numbered, with its lock file.
    deferred: Option<(Arc<IndexDb>, PathBuf)>,
    /// The exclusive lock on the stored numbering, held while this process numbers it.
    _lock: Option<File>,
}

/// Why the stored numbering is not used (any more): the numbering goes on in memory.
#[derive(Debug)]
pub struct NumberingLost {
    /// Why, in a few words.
    pub reason: String,
}

impl Numbering {
    /// A numbering kept in memory only, with a random epoch.
    pub fn in_memory() -> Numbering {
        Numbering {
            db: None,
            mark: ChangeMark {
                epoch: random_epoch(),
                seq: 0,
            },
            floor: 0,
            stored: None,
            last: None,
            removed: Arc::default(),
            deferred: None,
            _lock: None,
        }
    }

    /// The numbering stored in `db`, taken up at the first read numbered by the process
    /// that then holds the exclusive lock on the file `lock`: the box's server, which
    /// numbers its reads; a one-shot shell on the same folder never reads it, so it neither
    /// loads it nor competes for it. Two processes never number one database.
    pub fn deferred(db: Arc<IndexDb>, lock: PathBuf) -> Numbering {
        Numbering {
            deferred: Some((db, lock)),
            ..Numbering::in_memory()
        }
    }

    /// Takes up the deferred numbering, if any: locks it and loads it.
    fn take_up(&mut self) -> Option<NumberingLost> {
        let (db, lock) = self.deferred.take()?;
        let file = match File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
        {
            Ok(file) => file,
            Err(e) => {
                return Some(NumberingLost {
                    reason: format!("cannot open {}: {e}", lock.display()),
                });
            }
        };
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Some(NumberingLost {
                reason: "another process of this box numbers the folder's changes".into(),
            });
        }
        match Numbering::persistent(db) {
            Ok(loaded) => {
                *self = Numbering {
                    _lock: Some(file),
                    ..loaded
                };
                None
            }
            Err(e) => Some(NumberingLost {
                reason: e.to_string(),
            }),
        }
    }

    /// The numbering stored in `db`.
    pub fn persistent(db: Arc<IndexDb>) -> Result<Numbering, IndexError> {
        let stored = db.changes()?;
        let mut present = HashMap::new();
        let mut removed = BTreeMap::new();
        for (path, number, version) in stored.paths {
            match version {
                Some(version) => {
                    present.insert(path, (number, version));
                }
                None => {
                    removed.insert(path, number);
                }
            }
        }
        Ok(Numbering {
            mark: stored.mark.unwrap_or(ChangeMark {
                epoch: random_epoch(),
                seq: 0,
            }),
            floor: stored.floor,
            db: Some(db),
            stored: Some(present),
            last: None,
            removed: Arc::new(removed),
            deferred: None,
            _lock: None,
        })
    }

    /// Where the numbering stands.
    pub fn mark(&self) -> ChangeMark {
        self.mark
    }

    /// Numbers `items` (a read of the folder, sorted by name) against the last read
    /// numbered, stores what changed, and returns the numbers. A failed store is returned
    /// beside them: the numbering then goes on in memory under a new epoch (peers compare
    /// whole folders once), as the stored one can no longer be kept true.
    pub fn number(&mut self, items: Arc<Vec<Item>>) -> (Numbered, Option<NumberingLost>) {
        let mut lost = self.take_up();
        let mut writes = Vec::new();
        let mut numbers = Vec::with_capacity(items.len());
        let mut removed = Arc::clone(&self.removed);
        let mut seq = self.mark.seq;
        let mut next = |writes: &mut Vec<NumberingWrite>, path: &RelPath, key| {
            seq += 1;
            writes.push(NumberingWrite::Set(path.clone(), seq, key));
            seq
        };
        match (&self.last, self.stored.take()) {
            (Some((last, last_numbers)), _) => {
                let mut old = last.iter().zip(last_numbers).peekable();
                for item in items.iter() {
                    let name = &item.0.name;
                    // Paths of the last read that sort before this one are gone.
                    while let Some(((gone, _), _)) = old.next_if(|((e, _), _)| &e.name < name) {
                        let n = next(&mut writes, &gone.name, None);
                        Arc::make_mut(&mut removed).insert(gone.name.clone(), n);
                    }
                    let number = match old.next_if(|((e, _), _)| &e.name == name) {
                        Some((before, &n)) if same_version(before, item) => n,
                        _ => next(&mut writes, name, Some(version_key(item))),
                    };
                    if removed.contains_key(name) {
                        Arc::make_mut(&mut removed).remove(name);
                    }
                    numbers.push(number);
                }
                for ((gone, _), _) in old {
                    let n = next(&mut writes, &gone.name, None);
                    Arc::make_mut(&mut removed).insert(gone.name.clone(), n);
                }
            }
            (None, stored) => {
                let mut stored = stored.unwrap_or_default();
                for item in items.iter() {
                    let name = &item.0.name;
                    let key = version_key(item);
                    let number = match stored.remove(name) {
                        Some((n, before)) if before == key => n,
                        _ => next(&mut writes, name, Some(key)),
                    };
                    if removed.contains_key(name) {
                        Arc::make_mut(&mut removed).remove(name);
                    }
                    numbers.push(number);
                }
                // What the database knew and the folder no longer holds went while the
                // box was not running. (Sorted, so that the numbers do not depend on a
                // hash map's order.)
                let mut gone: Vec<RelPath> = stored.into_keys().collect();
                gone.sort();
                for path in gone {
                    let n = next(&mut writes, &path, None);
                    Arc::make_mut(&mut removed).insert(path, n);
                }
            }
        }
        if removed.len() > MAX_REMOVED {
            let map = Arc::make_mut(&mut removed);
            let mut by_number: Vec<(u64, RelPath)> =
                map.iter().map(|(path, n)| (*n, path.clone())).collect();
            by_number.sort_unstable();
            let forget = by_number.len() - MAX_REMOVED * 3 / 4;
            for (n, path) in by_number.into_iter().take(forget) {
                map.remove(&path);
                self.floor = self.floor.max(n);
                writes.push(NumberingWrite::Forget(path));
            }
        }
        self.mark.seq = seq;
        if !writes.is_empty()
            && let Some(db) = &self.db
            && let Err(error) = db.write_changes(seq, self.floor, &writes)
        {
            self.db = None;
            self._lock = None;
            self.mark.epoch = random_epoch();
            lost = Some(NumberingLost {
                reason: error.to_string(),
            });
        }
        self.removed = Arc::clone(&removed);
        self.last = Some((items, numbers.clone()));
        (
            Numbered {
                numbers,
                removed,
                mark: self.mark,
                floor: self.floor,
            },
            lost,
        )
    }
}

/// A random epoch (63 bits: SQLite stores signed integers).
fn random_epoch() -> u64 {
    rand::rng().random::<u64>() >> 1
}

/// Whether two reads of a path found the same version of it: what a peer compares (kind,
/// size, mtime, mode and content hash; SHA-256 and MD5 computed later change nothing).
fn same_version(a: &Item, b: &Item) -> bool {
    a.0 == b.0 && a.1.as_ref().map(|h| &h.blake3) == b.1.as_ref().map(|h| &h.blake3)
}

/// The stored digest of an item's version: equal for equal versions ([`same_version`]).
fn version_key(item: &Item) -> VersionKey {
    let (entry, hash) = item;
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[u8::from(entry.is_dir())]);
    hasher.update(&entry.size.to_le_bytes());
    hasher.update(&entry.mtime.unix_nanos().to_le_bytes());
    hasher.update(&entry.mode.to_le_bytes());
    hasher.update(entry.file_type.as_bytes());
    hasher.update(&[0]);
    match hash {
        Some(hash) => {
            hasher.update(&[1]);
            hasher.update(hash.blake3.as_bytes());
        }
        None => {
            hasher.update(&[0]);
        }
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn item(name: &str, size: u64, blake3: Option<&str>) -> Item {
        let name = RelPath::parse(name).unwrap();
        let mtime = Timestamp::from_system(std::time::UNIX_EPOCH);
        (
            Entry {
                name: name.clone(),
                size,
                mtime,
                file_type: "text/plain".into(),
                mode: 0o644,
            },
            blake3.map(|b| FileHash {
                name,
                blake3: b.to_string().into(),
                sha256: None,
                md5: None,
                mtime,
                size,
            }),
        )
    }

    fn read(items: Vec<Item>) -> Arc<Vec<Item>> {
        Arc::new(items)
    }

    /// Only what changed gets a number; a removal gets one too, and a path back from
    /// removal is no longer listed as removed.
    #[test]
    fn numbers_only_what_changed() {
        let mut numbering = Numbering::in_memory();
        let (first, _) = numbering.number(read(vec![
            item("a", 1, Some("x")),
            item("b", 1, Some("y")),
            item("c", 1, None),
        ]));
        assert_eq!(first.numbers, vec![1, 2, 3]);
        assert_eq!(first.mark.seq, 3);
        // Unchanged: no number given. A hash computed later (`None` before) is a change.
        let (again, _) = numbering.number(read(vec![
            item("a", 1, Some("x")),
            item("b", 1, Some("y")),
            item("c", 1, Some("z")),
        ]));
        assert_eq!(again.numbers, vec![1, 2, 4]);
        // "a" goes, "b" changes, "d" comes.
        let (later, _) = numbering.number(read(vec![
            item("b", 2, Some("y2")),
            item("c", 1, Some("z")),
            item("d", 1, Some("w")),
        ]));
        assert_eq!(later.numbers, vec![6, 4, 7]);
        assert_eq!(later.removed.get(&RelPath::parse("a").unwrap()), Some(&5));
        let (back, _) = numbering.number(read(vec![
            item("a", 1, Some("x")),
            item("b", 2, Some("y2")),
            item("c", 1, Some("z")),
            item("d", 1, Some("w")),
        ]));
        assert_eq!(back.numbers, vec![8, 6, 4, 7]);
        assert!(back.removed.is_empty());
        assert_eq!(back.mark.epoch, first.mark.epoch);
    }

    /// After a restart, the first read numbers only what changed while the box was down
    /// (nothing, when nothing did), including what went; the epoch is kept.
    #[test]
    fn a_restart_numbers_only_what_changed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let (db, _) = IndexDb::open(dir.path()).unwrap();
            Numbering::persistent(Arc::new(db)).unwrap()
        };
        let mut numbering = open();
        let (before, lost) = numbering.number(read(vec![
            item("a", 1, Some("x")),
            item("b", 1, Some("y")),
            item("c", 1, Some("z")),
        ]));
        assert!(lost.is_none());
        drop(numbering);
        let mut numbering = open();
        assert_eq!(numbering.mark(), before.mark);
        let (same, _) = numbering.number(read(vec![
            item("a", 1, Some("x")),
            item("b", 1, Some("y")),
            item("c", 1, Some("z")),
        ]));
        assert_eq!(same.numbers, before.numbers);
        assert_eq!(same.mark, before.mark);
        drop(numbering);
        let mut numbering = open();
        let (changed, _) = numbering.number(read(vec![
            item("a", 1, Some("x")),
            item("c", 3, Some("z3")),
        ]));
        assert_eq!(changed.numbers, vec![1, 4]);
        assert_eq!(changed.removed.get(&RelPath::parse("b").unwrap()), Some(&5));
        drop(numbering);
        // The removal is stored too.
        let mut numbering = open();
        let (after, _) = numbering.number(read(vec![
            item("a", 1, Some("x")),
            item("c", 3, Some("z3")),
        ]));
        assert_eq!(after.mark.seq, 5);
        assert_eq!(after.removed.get(&RelPath::parse("b").unwrap()), Some(&5));
    }

    /// Beyond [`MAX_REMOVED`] removals the oldest are forgotten, and the floor says up to
    /// which number.
    #[test]
    fn old_removals_are_forgotten_with_a_floor() {
        let mut numbering = Numbering::in_memory();
        let names: Vec<Item> = (0..=MAX_REMOVED)
            .map(|i| item(&format!("f{i:07}"), 1, Some("x")))
            .collect();
        numbering.number(read(names));
        let (after, _) = numbering.number(read(Vec::new()));
        assert_eq!(after.removed.len(), MAX_REMOVED * 3 / 4);
        let oldest_kept = after.removed.values().min().copied().unwrap();
        assert_eq!(after.floor + 1, oldest_kept);
        assert!(after.floor > MAX_REMOVED as u64);
    }
}
