//! `download_many`: the bytes of many files in one exchange, so that a sync of many small
//! files does not pay a round trip per file: one answer per name, in order (as for
//! `download`, or an `error`), then `batch_end` (see [`crate::transfer::batch`]).

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::Link;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Handled, MAX_BATCH_NAMES, ServeContext, refuse, too_many};
use crate::protocol::{Connection, ErrorKind, Response};
use crate::share::{DigestSet, RelPath, Share};
use crate::transfer::batch::{self, BatchReceipt};
use crate::transfer::{send_within, tcp};

/// The request's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadMany {
    /// The files, at most [`MAX_BATCH_NAMES`].
    pub names: Vec<RelPath>,
}

impl DownloadMany {
    /// A short human description, for the history log.
    pub fn describe(&self) -> String {
        match self.names.as_slice() {
            [] => "download tcp (no files)".to_string(),
            [only] => format!("download tcp {only} (batch)"),
            [first, rest @ ..] => format!("download tcp {first} and {} more (batch)", rest.len()),
        }
    }

    /// Server: sends every file (BLAKE3 alone: batches are sync's), then `batch_end`.
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        let count = self.names.len();
        if count > MAX_BATCH_NAMES {
            return refuse(
                connection,
                ErrorKind::BadRequest,
                too_many(count),
                cx.stall(),
            )
            .await;
        }
        let share = &cx.local.share;
        let mut failures = 0;
        let mut first_failure = None;
        let stall = cx.stall();
        let sent = tcp::send_files(connection, share, self.names, DigestSet::Blake3, stall).await?;
        for outcome in sent {
            match outcome {
                Ok(served) => cx.notices.note_served(cx.peer_id, served),
                Err(e) => {
                    failures += 1;
                    first_failure.get_or_insert_with(|| e.to_string());
                }
            }
        }
        send_within(stall, connection.write_message(&Response::BatchEnd)).await?;
        share.persist_cache();
        Ok(match first_failure {
            None => Ok(()),
            Some(first) => Err(format!(
                "{failures} of {count} files failed, the first: {first}"
            )),
        })
    }

    /// Client, once the request is sent: receives the files into verified staged files
    /// of `share`, one slot per name, each frame within `stall` of the one before.
    pub async fn read_answer<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        connection: &mut Connection<S>,
        share: &Arc<Share>,
        stall: Duration,
    ) -> BatchReceipt {
        batch::receive_batch(connection, share, &self.names, stall).await
    }
}
