//! The record: for one peer, the version of every path at the last moment both boxes held
//! the same one, and the versions this box has held since (so that a peer found holding
//! one of them is known to lag behind, not to have changed). It is what tells "deleted here" from "new there", so it is persisted
//! (atomically) under `.boxsync/sync/`, one file per peer box id. A path both boxes lack is
//! not in it; a path one box deleted stays in it, with its last agreed version, until the
//! other box has deleted it too (a tombstone), however long that box stays offline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::plan::Version;
use crate::share::RelPath;
use crate::types::{Agreement, BoxId};

/// Folder under the state folder that holds the records.
pub const RECORD_DIR: &str = "sync";

/// Most versions remembered per path since the last agreement.
const MAX_OURS: usize = 16;

/// The last agreed state of every path, for one peer.
#[derive(Debug, Default)]
pub struct Record {
    /// Where it is persisted.
    file: PathBuf,
    /// Path to the version both last agreed on.
    pub entries: BTreeMap<RelPath, Version>,
    /// Path to the versions this box held (or sent to the peer) since that agreement.
    pub ours: BTreeMap<RelPath, Vec<Version>>,
    /// Conflict copies the peer made of this box's losing versions (its `installed` notice
    /// named them) before this box set the same version aside under that name: agreed once
    /// it has.
    pub copies: BTreeMap<RelPath, Version>,
    /// The last `installed` notice from the peer's inbox journal applied here (epoch, number):
    /// a journal replayed after a crash applies nothing twice.
    pub inbox: Option<(u64, u64)>,
    /// Confirmations to the peer (this box holds these versions of its files) that did not
    /// reach it: sent again at the start of the next round, until the peer acknowledges.
    pub unconfirmed: Vec<Agreement>,
    /// The peer's versions a round is about to install under their own names, saved before
    /// the first lands: found in the folder at the next round (after a crash between the
    /// landing and the record's save, say), each is agreed, as it would have been.
    pub landing: Vec<(RelPath, Version)>,
    /// Whether it changed since it was loaded or saved.
    dirty: bool,
    /// Counts changes since it was loaded.
    revision: u64,
    /// Paths whose agreement, held versions or copies changed since [`Record::take_touched`]
    /// was last called (`None`: all of them, as after loading).
    touched: Option<BTreeSet<RelPath>>,
}

/// What changed in a record since the planner last looked ([`Record::take_touched`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Touched {
    /// Anything may have: plan every path.
    All,
    /// These paths.
    Paths(BTreeSet<RelPath>),
}

/// Most paths [`Record::take_touched`] names; beyond it, it says [`Touched::All`].
const MAX_TOUCHED: usize = 200_000;

/// The content hash that the stored versions name. A record written with another one (by
/// an older boxsync) cannot be compared with today's listings: it is set aside as if it
/// were lost, and sync merges (which never deletes).
const CONTENT_HASH: &str = "blake3";

/// The record as stored.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Stored {
    /// Which hash the versions carry ([`CONTENT_HASH`]).
    #[serde(default)]
    hash: String,
    agreed: Vec<(RelPath, Version)>,
    #[serde(default)]
    ours: Vec<(RelPath, Vec<Version>)>,
    #[serde(default)]
    copies: Vec<(RelPath, Version)>,
    #[serde(default)]
    inbox: Option<(u64, u64)>,
    #[serde(default)]
    unconfirmed: Vec<Agreement>,
    #[serde(default)]
    landing: Vec<(RelPath, Version)>,
}

impl Record {
    /// Loads the record kept with the peer `peer_id` under `state_dir`. A missing record is
    /// empty (first sync, or `.boxsync/` was lost: sync then merges, never deletes), and so
    /// is one whose versions name contents by another hash.
    pub fn load(state_dir: &Path, peer_id: &BoxId) -> io::Result<Record> {
        // A box id is hex digits only: the name stays inside the records' folder.
        let file = state_dir.join(RECORD_DIR).join(format!("{peer_id}.json"));
        let stored = match fs::read(&file) {
            Ok(bytes) => serde_json::from_slice::<Stored>(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(e),
        };
        let stored = if stored.hash == CONTENT_HASH {
            stored
        } else {
            Stored::default()
        };
        Ok(Record {
            file,
            entries: stored.agreed.into_iter().collect(),
            ours: stored.ours.into_iter().collect(),
            copies: stored.copies.into_iter().collect(),
            inbox: stored.inbox,
            unconfirmed: stored.unconfirmed,
            landing: stored.landing,
            dirty: false,
            revision: 0,
            touched: None,
        })
    }

    /// The paths whose agreement, held versions or copies changed since the last call
    /// (all of them, the first time).
    pub fn take_touched(&mut self) -> Touched {
        match self.touched.replace(BTreeSet::new()) {
            None => Touched::All,
            Some(paths) => Touched::Paths(paths),
        }
    }

    /// Notes that `path` changed, for [`Record::take_touched`].
    fn touch(&mut self, path: &RelPath) {
        if let Some(paths) = &mut self.touched {
            paths.insert(path.clone());
            if paths.len() > MAX_TOUCHED {
                self.touched = None;
            }
        }
    }

    /// Changes since it was loaded: equal revisions mean an unchanged record.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Remembers that this box held (or sent) `version` of `path` since the last agreement.
    pub fn add_ours(&mut self, path: &RelPath, version: Version) {
        let list = self.ours.entry(path.clone()).or_default();
        if !list.iter().any(|v| v.same(&version)) {
            list.push(version);
            if list.len() > MAX_OURS {
                list.remove(0);
            }
            self.touch(path);
            self.dirty = true;
            self.revision += 1;
        }
    }

    /// Remembers as ours every version held `here` that the peer has not agreed to yet
    /// (the plan's `agreed`), so that a peer found holding it later lags behind.
    pub fn hold_unagreed(
        &mut self,
        here: &BTreeMap<RelPath, Version>,
        agreed: &BTreeMap<RelPath, Option<Version>>,
    ) {
        for (path, version) in here {
            if !agreed.contains_key(path) && self.entries.get(path).is_none_or(|s| !s.same(version))
            {
                self.add_ours(path, version.clone());
            }
        }
    }

    /// Whether the notice numbered `n` in the peer's journal `epoch` was applied already.
    pub fn applied(&self, epoch: u64, n: u64) -> bool {
        self.inbox.is_some_and(|(e, last)| e == epoch && n <= last)
    }

    /// Notes that the notice numbered `n` in journal `epoch` is applied.
    pub fn mark_applied(&mut self, epoch: u64, n: u64) {
        self.inbox = Some((epoch, n));
        self.dirty = true;
        self.revision += 1;
    }

    /// Notes the peer's versions about to be installed under their own names.
    pub fn expect_landing(&mut self, versions: Vec<(RelPath, Version)>) {
        if !versions.is_empty() || !self.landing.is_empty() {
            self.landing = versions;
            self.dirty = true;
        }
    }

    /// Settles the landings noted by an earlier round: each one the folder holds (`here`)
    /// is agreed, and returned, for the peer to be told; the others are forgotten.
    pub fn settle_landing(&mut self, here: &BTreeMap<RelPath, Version>) -> Vec<(RelPath, Version)> {
        // A version from a plain index (first contact) names no hash: its size, time and
        // mode must match, and the agreement is on what the folder holds.
        let landed: Vec<(RelPath, Version)> = std::mem::take(&mut self.landing)
            .into_iter()
            .filter_map(|(path, version)| {
                let held = here.get(&path)?;
                let unhashed = version.blake3.is_none()
                    && !version.dir
                    && (held.size, held.mtime, held.mode)
                        == (version.size, version.mtime, version.mode);
                (held.same(&version) || unhashed).then(|| (path, held.clone()))
            })
            .collect();
        self.dirty = true;
        self.update(landed.iter().cloned().map(|(p, v)| (p, Some(v))));
        landed
    }

    /// Keeps confirmations that did not reach the peer, to send again.
    pub fn owe(&mut self, versions: impl IntoIterator<Item = Agreement>) {
        let before = self.unconfirmed.len();
        self.unconfirmed.extend(versions);
        if self.unconfirmed.len() != before {
            self.dirty = true;
        }
    }

    /// The peer acknowledged the confirmations owed: they go.
    pub fn paid(&mut self) {
        self.paid_first(self.unconfirmed.len());
    }

    /// The peer acknowledged the first `n` confirmations owed: those go.
    pub fn paid_first(&mut self, n: usize) {
        let n = n.min(self.unconfirmed.len());
        if n > 0 {
            self.unconfirmed.drain(..n);
            self.dirty = true;
        }
    }

    /// Remembers that the peer made `path`, a conflict copy of this box's `version`, which
    /// this box has not set aside there yet.
    pub fn add_copy(&mut self, path: RelPath, version: Version) {
        if self.copies.get(&path) != Some(&version) {
            self.touch(&path);
            self.copies.insert(path, version);
            self.dirty = true;
            self.revision += 1;
        }
    }

    /// Applies what both boxes now agree on (`None`: both lack the path).
    pub fn update(&mut self, agreed: impl IntoIterator<Item = (RelPath, Option<Version>)>) {
        for (path, version) in agreed {
            let forgot = self.ours.remove(&path).is_some() | self.copies.remove(&path).is_some();
            let before = match version {
                Some(version) => {
                    let unchanged = self.entries.get(&path).is_some_and(|v| *v == version);
                    if !unchanged {
                        self.entries.insert(path.clone(), version);
                    }
                    unchanged
                }
                None => self.entries.remove(&path).is_none(),
            };
            if forgot || !before {
                self.touch(&path);
                self.dirty = true;
                self.revision += 1;
            }
        }
    }

    /// Writes the record if it changed: temporary file, flush, rename.
    pub fn save(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = self.file.parent() {
            fs::create_dir_all(dir)?;
        }
        let stored = Stored {
            hash: CONTENT_HASH.to_string(),
            agreed: self.entries.clone().into_iter().collect(),
            ours: self.ours.clone().into_iter().collect(),
            copies: self.copies.clone().into_iter().collect(),
            inbox: self.inbox,
            unconfirmed: self.unconfirmed.clone(),
            landing: self.landing.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        let tmp = self.file.with_extension("json.tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &self.file)?;
        // The rename itself durable too: what the record holds lets the inbox journal go.
        if let Some(dir) = self.file.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::BoxId;

    /// The peer the records are kept with.
    fn peer() -> BoxId {
        BoxId::from_public_key(b"peer")
    }

    fn version(blake3: &str) -> Version {
        Version::test_file(blake3, 1_700_000_000)
    }

    /// A saved record comes back as it was; one written by a boxsync that named contents
    /// by SHA-256 comes back empty, so that sync merges instead of comparing hashes of two
    /// kinds (which would take every file for changed).
    #[test]
    fn loads_its_own_format_and_sets_an_older_one_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = RelPath::parse("a.txt").unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.update([(path.clone(), Some(version("abc")))]);
        record.save().unwrap();
        let loaded = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(loaded.entries.get(&path), Some(&version("abc")));

        let older = r#"{"agreed":[["a.txt",{"dir":false,"sha256":"abc","size":3,"mtime":"2023-11-14T22:13:20Z","mode":420}]],"ours":[]}"#;
        fs::write(
            dir.path().join(RECORD_DIR).join(format!("{}.json", peer())),
            older,
        )
        .unwrap();
        let loaded = Record::load(dir.path(), &peer()).unwrap();
        assert!(loaded.entries.is_empty());
    }

    /// What a crash must not lose is saved with the record: the last inbox notice applied
    /// (so that a replayed journal applies nothing twice) and the confirmations owed to
    /// the peer, until it acknowledged them.
    #[test]
    fn keeps_the_inbox_mark_and_the_confirmations_owed() {
        let dir = tempfile::tempdir().unwrap();
        let held = Agreement::Holds(crate::types::FileVersion {
            name: RelPath::parse("f.txt").unwrap(),
            blake3: "0".repeat(64),
            size: 1,
            mtime: crate::time::Timestamp::now(),
            mode: 0o644,
        });
        let lacked = Agreement::Lacks {
            removed: RelPath::parse("g.txt").unwrap(),
        };
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.mark_applied(7, 3);
        record.owe([held.clone(), lacked.clone()]);
        record.save().unwrap();
        let mut loaded = Record::load(dir.path(), &peer()).unwrap();
        assert!(loaded.applied(7, 3) && loaded.applied(7, 1));
        assert!(!loaded.applied(7, 4) && !loaded.applied(8, 1));
        assert_eq!(loaded.unconfirmed, [held, lacked.clone()]);
        // The peer took the first before refusing more: only the rest stay owed.
        loaded.paid_first(1);
        assert_eq!(loaded.unconfirmed, [lacked]);
        loaded.paid();
        loaded.save().unwrap();
        assert!(
            Record::load(dir.path(), &peer())
                .unwrap()
                .unconfirmed
                .is_empty()
        );
    }

    /// A landing noted before a crash is agreed at the next round if the folder holds that
    /// version, and forgotten if it does not.
    #[test]
    fn a_landing_the_folder_holds_is_agreed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (RelPath::parse("a").unwrap(), RelPath::parse("b").unwrap());
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.expect_landing(vec![(a.clone(), version("new")), (b.clone(), version("x"))]);
        record.save().unwrap();
        let mut loaded = Record::load(dir.path(), &peer()).unwrap();
        let here: BTreeMap<RelPath, Version> =
            [(a.clone(), version("new")), (b.clone(), version("other"))].into();
        let landed = loaded.settle_landing(&here);
        assert_eq!(landed, [(a.clone(), version("new"))]);
        assert_eq!(loaded.entries.get(&a), Some(&version("new")));
        assert!(!loaded.entries.contains_key(&b));
        assert!(loaded.landing.is_empty());
    }

    /// A conflict copy the peer made of our version waits, saved, until both hold it; the
    /// agreement then takes its place.
    #[test]
    fn a_copy_the_peer_made_waits_for_the_agreement() {
        let dir = tempfile::tempdir().unwrap();
        let copy = RelPath::parse("a.sync-conflict-20231114-221320-CCCCCCC.txt").unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.add_copy(copy.clone(), version("v"));
        assert!(record.entries.is_empty());
        record.save().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(record.copies.get(&copy), Some(&version("v")));
        let before = record.revision();
        record.update([(copy.clone(), Some(version("v")))]);
        assert!(record.copies.is_empty());
        assert_eq!(record.entries.get(&copy), Some(&version("v")));
        assert!(record.revision() > before);
    }

    /// A version held here is remembered as ours unless the plan found both agreeing on the
    /// path, or it is the record's own version (nothing new to remember).
    #[test]
    fn only_unagreed_new_versions_are_held() {
        let dir = tempfile::tempdir().unwrap();
        let rel = |p: &str| RelPath::parse(p).unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.update([(rel("same.txt"), Some(version("s")))]);
        let here: BTreeMap<RelPath, Version> = [
            (rel("new.txt"), version("n")),
            (rel("agreed.txt"), version("a")),
            (rel("same.txt"), version("s")),
        ]
        .into_iter()
        .collect();
        let agreed = [(rel("agreed.txt"), Some(version("a")))]
            .into_iter()
            .collect();
        let before = record.revision();
        record.hold_unagreed(&here, &agreed);
        assert_eq!(
            record.ours.keys().collect::<Vec<_>>(),
            vec![&rel("new.txt")]
        );
        assert_eq!(record.ours[&rel("new.txt")], vec![version("n")]);
        assert!(record.revision() > before);
        let held = record.revision();
        record.hold_unagreed(&here, &agreed);
        assert_eq!(record.revision(), held, "held twice");
    }
}
