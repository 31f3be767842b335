//! `download`: the bytes of one file over the box's TCP connection, verified by BLAKE3 and
//! installed atomically (see [`crate::transfer::tcp`] for how the bytes move).

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::Link;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{CallError, Handled, ServeContext};
use crate::protocol::{Connection, ErrorKind};
use crate::share::{DigestSet, RelPath, Share};
pub use crate::transfer::delta::BlockRanges;
use crate::transfer::{Downloaded, Landing, Progress, tcp};

/// The request's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    /// The file.
    pub name: RelPath,
    /// Leave SHA-256 and MD5 out of the digests: sync needs BLAKE3 alone, and the two
    /// would slow the sender down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blake3_only: bool,
    /// Only these blocks of one version (a box that has the others): the answer's body is
    /// the ranges' bytes in order, and its digests are those of the whole version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<BlockRanges>,
}

impl Download {
    /// The request for `name`, landing as `landing` says (which digests it wants).
    pub fn new(name: &RelPath, landing: &Landing) -> Download {
        Download {
            name: name.clone(),
            blake3_only: landing.digests.blake3_only(),
            ranges: None,
        }
    }

    /// Server: sends the file, and remembers that this version went to the client.
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        let share = &cx.local.share;
        let digests = DigestSet::from_blake3_only(self.blake3_only);
        let outcome = match &self.ranges {
            None => tcp::send_file(connection, share, &self.name, digests, cx.stall()).await?,
            Some(ranges) => {
                if let Some(fault) = ranges.fault() {
                    return super::refuse(connection, ErrorKind::BadRequest, fault, cx.stall())
                        .await;
                }
                tcp::send_ranges(connection, share, &self.name, digests, ranges, cx.stall()).await?
            }
        };
        share.persist_cache();
        Ok(outcome
            .map(|served| cx.notices.note_served(cx.peer_id, served))
            .map_err(|e| e.to_string()))
    }

    /// Client, once the request is sent: receives the file into `share`, verified, each
    /// frame within `stall` of the one before.
    pub async fn read_answer<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        connection: &mut Connection<S>,
        share: &Arc<Share>,
        landing: &Landing,
        progress: Progress<'_>,
        stall: Duration,
    ) -> Result<Downloaded, CallError> {
        tcp::receive_file(connection, share, &self.name, landing, progress, stall)
            .await
            .map_err(CallError::Transfer)
    }
}
