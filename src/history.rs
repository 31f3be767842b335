//! The request log: every request this box made and served, with its time and outcome,
//! appended as JSON lines under `.boxsync/` so that it survives restarts.
//!
//! Much of a record comes from a peer (the names it asked for, its address, its error
//! messages). Each field keeps its characters, so that `history --json` gives them back,
//! but is cut at [`text::LOG_LIMIT`] characters, so that a peer cannot grow the log by
//! megabytes a request; and the file is written with [`text::json`], so that printing it
//! (`cat`, `tail -f`) cannot act on a terminal. The shell escapes the fields it shows.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::text;
use crate::time::Timestamp;

/// Above this size the log is rotated to `history.old.jsonl` (one generation kept).
const ROTATE_BYTES: u64 = 4 * 1024 * 1024;

/// Whether this box made the request or served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This box asked a peer.
    Made,
    /// A peer asked this box.
    Served,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// When it finished.
    pub time: Timestamp,
    /// Made or served.
    pub direction: Direction,
    /// The other box's address.
    pub peer: String,
    /// The request, as a command line (`index longlist`).
    pub request: String,
    /// `ok`, or the error message.
    pub outcome: String,
}

/// The persistent request log of one box.
///
/// A std `Mutex` serializes appends; it is never held across an `.await`.
pub struct History {
    /// The JSON-lines file.
    file: PathBuf,
    /// Serializes appends and rotation.
    lock: Mutex<()>,
}

impl History {
    /// The log kept in `file` (created on first append).
    pub fn new(file: PathBuf) -> History {
        History {
            file,
            lock: Mutex::new(()),
        }
    }

    /// Appends a record, each field cut at [`text::LOG_LIMIT`] characters; a failure is
    /// logged, never fatal to the request it describes.
    pub fn record(
        &self,
        direction: Direction,
        peer: &str,
        request: &str,
        outcome: Result<(), String>,
    ) {
        let record = HistoryRecord {
            time: Timestamp::now(),
            direction,
            peer: text::truncate(peer, text::LOG_LIMIT).into_owned(),
            request: text::truncate(request, text::LOG_LIMIT).into_owned(),
            outcome: match outcome {
                Ok(()) => "ok".to_string(),
                Err(message) => text::truncate(&message, text::LOG_LIMIT).into_owned(),
            },
        };
        if let Err(e) = self.append(&record) {
            tracing::warn!(error = %e, file = %self.file.display(), "could not write the request log");
        }
    }

    fn append(&self, record: &HistoryRecord) -> io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0) > ROTATE_BYTES {
            fs::rename(&self.file, self.file.with_extension("old.jsonl"))?;
        }
        let mut line = text::json(record).map_err(io::Error::other)?.into_bytes();
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        file.write_all(&line)
    }

    /// Every record, oldest first (the rotated generation, then the current one).
    pub fn records(&self) -> io::Result<Vec<HistoryRecord>> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut records = Vec::new();
        for file in [self.file.with_extension("old.jsonl"), self.file.clone()] {
            let reader = match fs::File::open(&file) {
                Ok(f) => BufReader::new(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in reader.lines() {
                // A torn last line (a crash mid-append) is skipped, not fatal.
                if let Ok(record) = serde_json::from_str(&line?) {
                    records.push(record);
                }
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's long or hostile text is kept bounded and read back as written (cut), and
    /// the file itself holds no raw control or bidi character.
    #[test]
    fn records_are_bounded_and_the_file_is_inert() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let history = History::new(dir.path().join("history.jsonl"));
        let hostile = "a\x1b]52;c;eA==\x07\u{9b}2J\u{202e}b";
        let flood = "x".repeat(100_000);
        history.record(Direction::Served, hostile, &flood, Err(hostile.to_string()));
        let records = history.records().expect("readable");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].peer, hostile);
        assert_eq!(records[0].outcome, hostile);
        assert_eq!(records[0].request.chars().count(), text::LOG_LIMIT + 1);
        assert!(records[0].request.ends_with(text::CUT_MARK));
        let file = fs::read_to_string(dir.path().join("history.jsonl")).expect("readable");
        assert!(
            file.trim_end()
                .chars()
                .all(|c| !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}')),
            "{file}"
        );
    }
}
