//! `blocks`: one file's block list (see [`crate::share::blocks`]), which a box asks for
//! before a download so that it fetches only the blocks it lacks (with a ranged
//! `download`, [`super::download`]) and finds the rest in its own files.

use crate::protocol::Link;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{CallError, Handled, ServeContext, receive_within, report};
use crate::protocol::{Connection, Response};
use crate::share::RelPath;
use crate::share::blocks::BlockList;
use crate::time::Timestamp;
use crate::transfer::delta::RemoteFile;
use crate::transfer::send_within;

/// The request's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocks {
    /// The file.
    pub name: RelPath,
}

/// The answer: the version the list is of, and the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksAnswer {
    /// The file.
    pub name: RelPath,
    /// Its size.
    pub size: u64,
    /// Its last-modified time.
    pub mtime: Timestamp,
    /// Its permission bits.
    pub mode: u32,
    /// Its BLAKE3, hex: the list merges into it.
    pub blake3: String,
    /// The block size its size gives.
    pub block_size: u64,
    /// Every block's hash, 64 hex digits each, in order; absent for a file of more than
    /// [`crate::share::blocks::MAX_LISTED_BLOCKS`] blocks (downloaded whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<String>,
}

impl Blocks {
    /// Server: the file's list, read once per version (and stored).
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        let share = &cx.local.share;
        match share.block_list(&self.name).await {
            Ok(listed) => {
                let answer = Response::Blocks(BlocksAnswer {
                    name: self.name,
                    size: listed.fingerprint.size,
                    mtime: listed.mtime,
                    mode: listed.mode,
                    blake3: listed.blake3,
                    block_size: crate::share::blocks::block_size(listed.fingerprint.size),
                    hashes: listed.list.as_ref().map(BlockList::hex),
                });
                send_within(cx.stall(), connection.write_message(&answer)).await?;
                Ok(Ok(()))
            }
            Err(e) => report(connection, &e, cx.stall()).await,
        }
    }

    /// Client: the peer's file, its list checked against its BLAKE3 (a list that does
    /// not merge into it is refused: the peer is broken or hostile).
    pub async fn read_answer<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        connection: &mut Connection<S>,
        stall: std::time::Duration,
    ) -> Result<RemoteFile, CallError> {
        let answer = receive_within(stall, connection.expect_message::<Response>()).await?;
        let answer = match answer {
            Response::Blocks(answer) if answer.name == self.name => answer,
            Response::Error { kind, message } => return Err(CallError::Remote { kind, message }),
            other => return Err(CallError::unexpected(&other)),
        };
        if answer.blake3.len() != 64 || blake3::Hash::from_hex(&answer.blake3).is_err() {
            return Err(CallError::Protocol(format!(
                "'{}': a blake3 that is not 64 hex digits",
                self.name
            )));
        }
        let list = match &answer.hashes {
            Some(hex) => Some(
                BlockList::from_wire(answer.size, answer.block_size, hex, &answer.blake3)
                    .map_err(|e| CallError::Protocol(format!("'{}': {e}", self.name)))?,
            ),
            None => None,
        };
        Ok(RemoteFile {
            name: answer.name,
            mtime: answer.mtime,
            mode: answer.mode,
            size: answer.size,
            blake3: answer.blake3,
            list,
        })
    }
}
