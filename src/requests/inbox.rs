//! The `installed` notices this box acknowledged, kept on disk until its sync has recorded
//! them. A notice acknowledged and then lost in a crash leaves the two boxes' records
//! different for good: the peer records that both hold a file, this box does not, and a
//! deletion on either side is then taken by neither.
//!
//! One journal per peer, `.boxsync/inbox/<peer id>.jsonl`, one line per notice, written and
//! flushed to disk before the `ack`. Each line carries the journal's epoch (random, new with
//! each journal file) and its number in it; sync records the last one it applied with the
//! record it saves, so that a journal replayed after a crash applies nothing twice. Once the
//! record holding everything in a journal is saved, the journal goes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::{Agreement, BoxId};

/// Most notices kept per peer before sync takes them: beyond this, notices are refused
/// (`unavailable`), and the peer keeps them to send again.
pub const MAX_PENDING: usize = 100_000;

/// One acknowledged notice: what the peer agrees on with this box (a version it installed,
/// a path it removed), and where it stands in the peer's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noted {
    /// The journal it was written to.
    pub epoch: u64,
    /// Its number in that journal, from 1.
    pub n: u64,
    /// What the peer said.
    pub version: Agreement,
}

/// One peer's journal: its epoch, the next number, the notices not yet taken, and the open
/// file (none until the first notice, and none in memory-only inboxes).
#[derive(Debug)]
struct Journal {
    epoch: u64,
    next: u64,
    pending: Vec<Noted>,
    file: Option<File>,
}

impl Journal {
    fn new() -> Journal {
        Journal {
            epoch: rand::random(),
            next: 1,
            pending: Vec::new(),
            file: None,
        }
    }
}

/// Every peer's journal. Not synchronised itself: [`super::notices::Notices`] holds it
/// under a lock.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Where the journals live; `None`: in memory only (a box without a folder's state).
    dir: Option<PathBuf>,
    journals: HashMap<BoxId, Journal>,
}

impl Inbox {
    /// Opens the journals under `dir`, with every notice in them pending again (sync skips
    /// those its records show applied). A line cut short by a crash was never acknowledged
    /// and is dropped.
    pub fn open(dir: &Path) -> io::Result<Inbox> {
        let mut inbox = Inbox {
            dir: Some(dir.to_path_buf()),
            journals: HashMap::new(),
        };
        let items = match fs::read_dir(dir) {
            Ok(items) => items,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(inbox),
            Err(e) => return Err(e),
        };
        for item in items {
            let path = item?.path();
            let Some(peer) = peer_of(&path) else {
                continue;
            };
            let pending = read_journal(&path)?;
            let Some(last) = pending.last() else {
                fs::remove_file(&path)?;
                continue;
            };
            let journal = Journal {
                epoch: last.epoch,
                next: last.n + 1,
                file: Some(OpenOptions::new().append(true).open(&path)?),
                pending,
            };
            inbox.journals.insert(peer, journal);
        }
        Ok(inbox)
    }

    /// Writes `versions` (the agreements `peer` told) to its journal and flushes it to disk;
    /// then they are pending.
    /// Refused whole, with nothing written, if it would hold more than [`MAX_PENDING`].
    pub fn note(&mut self, peer: &BoxId, versions: Vec<Agreement>) -> io::Result<()> {
        let dir = self.dir.clone();
        let journal = self
            .journals
            .entry(peer.clone())
            .or_insert_with(Journal::new);
        if journal.pending.len() + versions.len() > MAX_PENDING {
            return Err(io::Error::new(
                io::ErrorKind::QuotaExceeded,
                "too many installed notices wait for this box's sync",
            ));
        }
        let noted: Vec<Noted> = versions
            .into_iter()
            .zip(journal.next..)
            .map(|(version, n)| Noted {
                epoch: journal.epoch,
                n,
                version,
            })
            .collect();
        if let Some(dir) = dir {
            if journal.file.is_none() {
                fs::create_dir_all(&dir)?;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(file_name(peer)))?;
                journal.file = Some(file);
            }
            let mut lines = Vec::new();
            for note in &noted {
                serde_json::to_writer(&mut lines, note).map_err(io::Error::other)?;
                lines.push(b'\n');
            }
            if let Some(file) = journal.file.as_mut() {
                file.write_all(&lines)?;
                file.sync_data()?;
            }
        }
        journal.next += noted.len() as u64;
        journal.pending.extend(noted);
        Ok(())
    }

    /// Takes `peer`'s pending notices, oldest first.
    pub fn take(&mut self, peer: &BoxId) -> Vec<Noted> {
        self.journals
            .get_mut(peer)
            .map(|journal| std::mem::take(&mut journal.pending))
            .unwrap_or_default()
    }

    /// Sync saved a record holding `peer`'s notices up to `n` of journal `epoch`: if that
    /// is all the journal holds, it goes (the next notice starts a new one).
    pub fn recorded(&mut self, peer: &BoxId, epoch: u64, n: u64) -> io::Result<()> {
        let Some(journal) = self.journals.get(peer) else {
            return Ok(());
        };
        if journal.epoch != epoch || journal.next != n + 1 || !journal.pending.is_empty() {
            return Ok(());
        }
        self.journals.remove(peer);
        if let Some(dir) = &self.dir {
            match fs::remove_file(dir.join(file_name(peer))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The journal file of `peer`.
fn file_name(peer: &BoxId) -> String {
    format!("{peer}.jsonl")
}

/// The peer whose journal `path` is, if it is one.
fn peer_of(path: &Path) -> Option<BoxId> {
    if path.extension()? != "jsonl" {
        return None;
    }
    BoxId::parse(path.file_stem()?.to_str()?).ok()
}

/// The notices in a journal, up to the first line that does not read whole (the end of a
/// write a crash cut short, never acknowledged).
fn read_journal(path: &Path) -> io::Result<Vec<Noted>> {
    let mut noted = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let Ok(note) = serde_json::from_str::<Noted>(&line?) else {
            break;
        };
        noted.push(note);
    }
    Ok(noted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::RelPath;
    use crate::time::Timestamp;

    fn peer() -> BoxId {
        BoxId::from_public_key(b"peer")
    }

    fn version(name: &str) -> Agreement {
        Agreement::Holds(crate::types::FileVersion {
            name: RelPath::parse(name).expect("path"),
            blake3: "0".repeat(64),
            size: 1,
            mtime: Timestamp::now(),
            mode: 0o644,
        })
    }

    /// What was acknowledged is there again after a restart (a crash), in order, with the
    /// same numbers; a line cut short at the end is dropped.
    #[test]
    fn notices_survive_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let peer = peer();
        let mut inbox = Inbox::open(dir.path()).expect("open");
        inbox
            .note(&peer, vec![version("a"), version("b")])
            .expect("note");
        inbox.note(&peer, vec![version("c")]).expect("note");
        let before = inbox.take(&peer);
        drop(inbox);
        let journal = dir.path().join(file_name(&peer));
        OpenOptions::new()
            .append(true)
            .open(&journal)
            .and_then(|mut f| f.write_all(b"{\"epoch\":1,\"n\""))
            .expect("torn line");
        let mut again = Inbox::open(dir.path()).expect("reopen");
        assert_eq!(again.take(&peer), before);
        assert_eq!(before.iter().map(|n| n.n).collect::<Vec<_>>(), [1, 2, 3]);
        again.note(&peer, vec![version("d")]).expect("note after");
        assert_eq!(again.take(&peer)[0].n, 4);
    }

    /// A journal goes once its last notice is recorded, not before; the next one has a new
    /// epoch, so that a record of the old one skips none of it.
    #[test]
    fn a_recorded_journal_goes_and_the_next_has_a_new_epoch() {
        let dir = tempfile::tempdir().expect("dir");
        let peer = peer();
        let mut inbox = Inbox::open(dir.path()).expect("open");
        inbox
            .note(&peer, vec![version("a"), version("b")])
            .expect("note");
        let taken = inbox.take(&peer);
        let epoch = taken[0].epoch;
        inbox.recorded(&peer, epoch, 1).expect("early");
        assert!(dir.path().join(file_name(&peer)).exists(), "gone too soon");
        inbox.recorded(&peer, epoch, 2).expect("recorded");
        assert!(!dir.path().join(file_name(&peer)).exists(), "still there");
        inbox.note(&peer, vec![version("c")]).expect("note");
        let next = inbox.take(&peer);
        assert_eq!(next[0].n, 1);
        assert_ne!(next[0].epoch, epoch);
        assert!(Inbox::open(dir.path()).expect("reopen").take(&peer).len() == 1);
    }

    /// A notice that arrives after sync took the others keeps the journal.
    #[test]
    fn a_later_notice_keeps_the_journal() {
        let dir = tempfile::tempdir().expect("dir");
        let peer = peer();
        let mut inbox = Inbox::open(dir.path()).expect("open");
        inbox.note(&peer, vec![version("a")]).expect("note");
        let taken = inbox.take(&peer);
        inbox.note(&peer, vec![version("b")]).expect("note");
        inbox.recorded(&peer, taken[0].epoch, 1).expect("recorded");
        assert_eq!(
            Inbox::open(dir.path()).expect("reopen").take(&peer).len(),
            2
        );
    }
}
