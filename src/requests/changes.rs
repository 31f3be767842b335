//! `changes`: what changed in the folder since the mark of the last answer the client read,
//! in batches: sync's listing of a peer, whose cost follows the change, not the folder.
//!
//! Without a mark, with a mark of another epoch (the peer's index database was begun
//! anew), older than the removals the server remembers, or ahead of its numbering, the
//! answer is `whole`: every entry, and the client forgets what it knew. Otherwise it lists
//! the paths removed and the entries changed or new after the mark (none, when nothing
//! changed). Every answer ends with the mark to send next time. It is drawn from the
//! folder's recent snapshot ([`crate::share::Share::recent_snapshot`]) one batch at a
//! time, so a client that does not read costs the server one batch.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::listing::{Listed, MAX_LISTED};
use super::{CallError, Handled, ServeContext, receive_within, report};
use crate::local::Limits;
use crate::protocol::{Connection, ConnectionError, Link, Response};
use crate::share::{ChangeMark, ChangesSince, Entry, Item, RelPath};
use crate::transfer::send_within;

/// Serialized size at which a batch is sent and a new one begun.
const BATCH_BYTES: usize = 256 * 1024;

/// The request's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// The mark of the last answer read; absent: everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<ChangeMark>,
}

/// One change in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Change {
    /// The path as it is now.
    Present {
        /// Its entry.
        entry: Entry,
        /// For a file, the BLAKE3 of its content; absent for a folder, and for a file that
        /// could not be hashed this time (vanished, or still being written): sync leaves
        /// such a file alone until it can.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blake3: Option<String>,
    },
    /// The path was removed.
    Removed {
        /// The path.
        removed: RelPath,
    },
}

impl Change {
    /// The change that lists `item`. A hash of another version than the entry's (the
    /// file changed between the listing and the hashing) is left out: the file is then
    /// unknown, as one not hashed.
    fn of(item: &Item) -> Change {
        let (entry, hash) = item;
        let blake3 = hash
            .as_ref()
            .filter(|hash| hash.size == entry.size && hash.mtime == entry.mtime)
            .map(|hash| hash.blake3.to_string());
        Change::Present {
            entry: entry.clone(),
            blake3,
        }
    }

    /// At most this many bytes of JSON (see [`Listed::max_wire_len`]).
    fn max_wire_len(&self) -> usize {
        match self {
            Change::Present { entry, blake3 } => {
                entry.max_wire_len() + blake3.as_ref().map_or(0, |b| b.len() + 16) + 16
            }
            Change::Removed { removed } => removed.as_str().len() * 6 + 16,
        }
    }
}

/// The fields of [`Response::Changes`]: one batch of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesBatch {
    /// This batch.
    pub changes: Vec<Change>,
    /// Whether another batch follows.
    pub more: bool,
    /// Whether the answer is the whole folder (the client forgets what it knew).
    pub whole: bool,
    /// On the last batch: the mark to send next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<ChangeMark>,
    /// On the last batch: the serving box's own ignore rules (its `.boxsyncignore` lines),
    /// so that the client leaves those paths alone on its side too: it neither sends them
    /// nor takes their absence for a deletion. Absent from a box that sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<Vec<String>>,
    /// On the last batch: the token of the latest `sync allow-deletes` typed on the serving
    /// box (for 10 minutes after): a person there means the deletions the mass-delete
    /// guard stopped, and the client's guard lets them through once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletions_meant: Option<u64>,
}

/// An answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesAnswer {
    /// Whether it is the whole folder.
    pub whole: bool,
    /// The changes (for a whole answer, every entry).
    pub changes: Vec<Change>,
    /// The mark to send next time.
    pub mark: ChangeMark,
    /// The serving box's own ignore rules (empty: none, or a box that sends none).
    pub ignored: Vec<String>,
    /// The serving box's latest `sync allow-deletes`, if recent.
    pub deletions_meant: Option<u64>,
}

impl Changes {
    /// Server: answers from the recent snapshot.
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        let stall = cx.stall();
        let snapshot = match cx.local.share.recent_snapshot().await {
            Ok(snapshot) => snapshot,
            Err(e) => return report(connection, &e, stall).await,
        };
        let end = End {
            mark: snapshot.mark,
            rules: cx.local.share.ignore().told(),
            deletions_meant: cx.notices.deletions_meant(),
        };
        let (whole, answer) = match snapshot.changes_since(self.since) {
            ChangesSince::Whole => (
                true,
                Answer {
                    removed: Vec::new().into_iter(),
                    present: Present::All(snapshot.items.iter()),
                },
            ),
            ChangesSince::Later { present, removed } => (
                false,
                Answer {
                    removed: removed.into_iter(),
                    present: Present::Changed(present.into_iter()),
                },
            ),
        };
        send(connection, answer, whole, end, stall).await?;
        Ok(Ok(()))
    }

    /// Client: reads the answer. The first batch must arrive within `limits.think` (the
    /// peer may have a folder to read), each further one within `limits.stall`.
    pub async fn read_answer<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        connection: &mut Connection<S>,
        limits: &Limits,
    ) -> Result<ChangesAnswer, CallError> {
        let mut changes = Vec::new();
        let mut whole = None;
        let mut wait = limits.think;
        loop {
            let response = receive_within(wait, connection.expect_message::<Response>()).await?;
            wait = limits.stall;
            let batch = match response {
                Response::Changes(batch) => batch,
                Response::Error { kind, message } => {
                    return Err(CallError::Remote { kind, message });
                }
                other => return Err(CallError::unexpected(&other)),
            };
            if *whole.get_or_insert(batch.whole) != batch.whole {
                return Err(CallError::Protocol(
                    "an answer's batches disagree on whether it is whole".into(),
                ));
            }
            changes.extend(batch.changes);
            if changes.len() > MAX_LISTED {
                return Err(CallError::Protocol("listing too long".into()));
            }
            if !batch.more {
                let Some(mark) = batch.mark else {
                    return Err(CallError::Protocol("changes without a mark".into()));
                };
                return Ok(ChangesAnswer {
                    whole: batch.whole,
                    changes,
                    mark,
                    ignored: batch.ignored.unwrap_or_default(),
                    deletions_meant: batch.deletions_meant,
                });
            }
        }
    }
}

/// The changes of an answer, made as they are sent (a named type, not a chain of
/// closures: the future that holds it across its sends must be `Send` for every lifetime).
struct Answer<'s> {
    /// The paths removed, sent first.
    removed: std::vec::IntoIter<&'s RelPath>,
    /// Then the entries.
    present: Present<'s>,
}

/// The entries of an answer.
enum Present<'s> {
    /// Every entry of the snapshot (a whole answer).
    All(std::slice::Iter<'s, Item>),
    /// Those changed after the mark.
    Changed(std::vec::IntoIter<&'s Item>),
}

impl Iterator for Answer<'_> {
    type Item = Change;

    fn next(&mut self) -> Option<Change> {
        if let Some(path) = self.removed.next() {
            return Some(Change::Removed {
                removed: path.clone(),
            });
        }
        match &mut self.present {
            Present::All(items) => items.next().map(Change::of),
            Present::Changed(items) => items.next().map(Change::of),
        }
    }
}

/// What the last batch of an answer carries besides its changes.
struct End {
    /// The mark to send next time.
    mark: ChangeMark,
    /// The serving box's ignore rules.
    rules: Vec<String>,
    /// Its latest `sync allow-deletes`, if recent.
    deletions_meant: Option<u64>,
}

/// Sends `changes` in batches under [`BATCH_BYTES`], the last marked `more: false` with
/// what `end` carries (an empty answer is one empty batch). Each batch must be taken
/// within `stall`.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    changes: impl Iterator<Item = Change>,
    whole: bool,
    end: End,
    stall: std::time::Duration,
) -> Result<(), ConnectionError> {
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut changes = changes.peekable();
    while let Some(change) = changes.next() {
        batch_bytes += change.max_wire_len() + 1;
        batch.push(change);
        if batch_bytes >= BATCH_BYTES && changes.peek().is_some() {
            let response = Response::Changes(ChangesBatch {
                changes: std::mem::take(&mut batch),
                more: true,
                whole,
                mark: None,
                ignored: None,
                deletions_meant: None,
            });
            send_within(stall, connection.write_message(&response)).await?;
            batch_bytes = 0;
        }
    }
    let last = Response::Changes(ChangesBatch {
        changes: batch,
        more: false,
        whole,
        mark: Some(end.mark),
        ignored: (!end.rules.is_empty()).then_some(end.rules),
        deletions_meant: end.deletions_meant,
    });
    send_within(stall, connection.write_message(&last)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two kinds of change keep their wire forms and read back as themselves.
    #[test]
    fn changes_keep_their_wire_form() {
        let entry = Entry {
            name: RelPath::parse("a.txt").unwrap(),
            size: 3,
            mtime: crate::time::Timestamp(
                chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            ),
            file_type: "text/plain".into(),
            mode: 0o644,
        };
        let cases = [
            (
                Change::Present {
                    entry: entry.clone(),
                    blake3: Some("bb".into()),
                },
                r#"{"entry":{"name":"a.txt","size":3,"mtime":"2023-11-14T22:13:20.000000000Z","type":"text/plain","mode":420},"blake3":"bb"}"#,
            ),
            (
                Change::Present {
                    entry,
                    blake3: None,
                },
                r#"{"entry":{"name":"a.txt","size":3,"mtime":"2023-11-14T22:13:20.000000000Z","type":"text/plain","mode":420}}"#,
            ),
            (
                Change::Removed {
                    removed: RelPath::parse("d/b").unwrap(),
                },
                r#"{"removed":"d/b"}"#,
            ),
        ];
        for (change, json) in cases {
            assert_eq!(serde_json::to_string(&change).unwrap(), json);
            assert_eq!(serde_json::from_str::<Change>(json).unwrap(), change);
            assert!(change.max_wire_len() >= json.len(), "{json}");
        }
        // A removal naming a path outside the folder is refused as it is read.
        assert!(serde_json::from_str::<Change>(r#"{"removed":"../x"}"#).is_err());
    }
}
