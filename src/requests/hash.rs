//! `hash_verify` and `hash_checkall`: BLAKE3, SHA-256, MD5 and mtime of one file or of
//! every file. `hash_checkall` with `unless` is sync's conditional form (BLAKE3 alone,
//! from the recent snapshot). The client reads `hash_checkall`'s answer with
//! [`listing::receive`] or [`listing::receive_conditional`].

use crate::protocol::Link;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::listing;
use super::{CallError, Handled, ServeContext, report};
use crate::protocol::Connection;
use crate::share::{FileHash, RelPath};

/// The fields of `hash_verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashVerify {
    /// The file.
    pub name: RelPath,
}

impl HashVerify {
    /// Server: hashes the file (or takes its cached digests) and answers one batch.
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        match cx.local.share.hash(&self.name).await {
            Ok(hash) => {
                listing::send(connection, [hash].into_iter(), None).await?;
                Ok(Ok(()))
            }
            Err(e) => report(connection, &e).await,
        }
    }

    /// Client: the file's hashes; an answer for another file, or for several, is refused.
    pub async fn read_answer<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        connection: &mut Connection<S>,
    ) -> Result<FileHash, CallError> {
        let mut hashes: Vec<FileHash> = listing::receive(connection).await?;
        match hashes.pop() {
            Some(hash) if hashes.is_empty() && hash.name == self.name => Ok(hash),
            _ => Err(CallError::Protocol("hash answer for another file".into())),
        }
    }
}

/// The fields of `hash_checkall`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashCheckall {
    /// A conditional request, as for [`super::index::Index`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<String>,
}

impl HashCheckall {
    /// Server: every file's hashes (all digests afresh, or BLAKE3 from the recent
    /// snapshot when conditional).
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        let share = &cx.local.share;
        listing::answer(
            connection,
            share,
            self.unless,
            share.hash_all(),
            |snapshot| snapshot.hashes().cloned().collect::<Vec<FileHash>>(),
        )
        .await
    }
}
