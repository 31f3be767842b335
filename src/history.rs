//! The request log: every request this box made and served, with its time and outcome,
//! appended as JSON lines under `.boxsync/` so that it survives restarts.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

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

    /// Appends a record; a failure is logged, never fatal to the request it describes.
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
            peer: peer.to_string(),
            request: request.to_string(),
            outcome: match outcome {
                Ok(()) => "ok".to_string(),
                Err(message) => message,
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
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
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
