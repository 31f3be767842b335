//! `hash_verify` and `hash_checkall`: BLAKE3, SHA-256, MD5 and mtime of one file or of
//! every file. `hash_checkall` with `unless` is sync's conditional form (BLAKE3 alone,
//! from the recent snapshot). The client reads `hash_checkall`'s answer with
//! [`listing::receive`] or [`listing::receive_conditional`].

use crate::protocol::Link;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::listing;
use super::{CallError, Handled, ServeContext, report};
use crate::local::Limits;
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
                listing::send(connection, [&hash].into_iter(), None, cx.stall()).await?;
                Ok(Ok(()))
            }
            Err(e) => report(connection, &e, cx.stall()).await,
        }
    }

    /// Client: the file's hashes; an answer for another file, or for several, is refused.
    pub async fn read_answer<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        connection: &mut Connection<S>,
        limits: &Limits,
    ) -> Result<FileHash, CallError> {
        let mut hashes: Vec<FileHash> = listing::receive(connection, limits).await?;
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
        let fresh = || -> BoxFuture<'_, _> { Box::pin(share.hash_all()) };
        let keep = |_: &FileHash| true;
        listing::answer(connection, share, self.unless, cx.stall(), &fresh, &keep).await
    }
}
