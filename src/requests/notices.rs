//! Sync's notices, each answered by `ack`: `changed` ("my folder changed: pull from me
//! soon"), `installed` and `installed_many` ("I installed this version of your file under
//! the same name": the receiving box's sync records that both held it). A notice is taken
//! for the box that sent it, under the id its handshake proved.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{CallError, Handled, MAX_BATCH_NAMES, ServeContext, refuse, too_many};
use crate::protocol::{Connection, ErrorKind, Response};
use crate::types::FileVersion;

/// Server side of `changed`: wakes this box's sync, which pulls from the sender soon.
pub async fn serve_changed(
    cx: &ServeContext<'_>,
    connection: &mut Connection<TcpStream>,
) -> Handled {
    cx.local.changes.notify_one();
    ack(connection).await
}

/// The fields of `installed`: the version installed.
pub type Installed = FileVersion;

impl FileVersion {
    /// Server side of `installed`: noted for the sender's next sync round.
    pub async fn serve(
        self,
        cx: &ServeContext<'_>,
        connection: &mut Connection<TcpStream>,
    ) -> Handled {
        cx.local.note_installed(cx.peer_id, self);
        ack(connection).await
    }
}

/// The fields of `installed_many`: many `installed` notices in one message, oldest
/// first, so that a batch of downloads is confirmed in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledMany {
    /// The versions installed, at most [`MAX_BATCH_NAMES`].
    pub versions: Vec<FileVersion>,
}

impl InstalledMany {
    /// Server: noted, oldest first; a list over the limit is refused whole.
    pub async fn serve(
        self,
        cx: &ServeContext<'_>,
        connection: &mut Connection<TcpStream>,
    ) -> Handled {
        if self.versions.len() > MAX_BATCH_NAMES {
            return refuse(
                connection,
                ErrorKind::BadRequest,
                too_many(self.versions.len()),
            )
            .await;
        }
        for version in self.versions {
            cx.local.note_installed(cx.peer_id, version);
        }
        ack(connection).await
    }
}

async fn ack(connection: &mut Connection<TcpStream>) -> Handled {
    connection.write_message(&Response::Ack).await?;
    Ok(Ok(()))
}

/// Client, once a notice is sent: its `ack`.
pub async fn read_ack<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
) -> Result<(), CallError> {
    match connection.expect_message::<Response>().await? {
        Response::Ack => Ok(()),
        Response::Error { kind, message } => Err(CallError::Remote { kind, message }),
        other => Err(CallError::unexpected(&other)),
    }
}
