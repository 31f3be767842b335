//! The TCP wire protocol below the requests: frames, the connection that reads and writes
//! them, the greeting and the answers, and the opening handshake. It knows nothing of
//! transfers, sync or the shell. docs/protocol.md describes the same in prose.

pub mod connection;
pub mod decode;
pub mod frame;
pub mod message;

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::types::{BadBoxId, BoxId};

pub use connection::{Connection, ConnectionError};
pub use frame::Frame;
pub use message::{ErrorKind, Hello, MAGIC, PROTOCOL_VERSION, Response};

/// The byte stream a peer connection runs over.
pub type Link = tokio::net::TcpStream;

impl Connection<Link> {
    /// The TCP socket under the connection (for addresses, socket options and the
    /// descriptor).
    pub fn socket(&self) -> &tokio::net::TcpStream {
        self.get_ref()
    }

    /// 32 bytes of keying material bound to this connection's session and to `context`,
    /// for keys of a side channel (a UDP transfer) that must be as authentic as the
    /// connection itself. Both ends of one connection get the same bytes for the same
    /// context; any other connection gets unrelated bytes.
    ///
    /// Placeholder until the link is encrypted: derived from `context` alone.
    pub fn export_secret(&self, context: &[u8]) -> Result<[u8; 32], ConnectionError> {
        Ok(blake3::derive_key("boxsync placeholder secret", context))
    }
}

/// How long either side waits for the other's greeting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the opening handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The connection failed during the handshake.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The other side is not a boxsync box.
    #[error("not a boxsync peer (greeting '{0}')")]
    WrongMagic(String),
    /// The other side speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this box speaks {PROTOCOL_VERSION}")]
    Version {
        /// The peer's version.
        theirs: u32,
    },
    /// The other side refused us.
    #[error("peer refused the connection: {0}")]
    Refused(String),
    /// The other side's greeting carries no valid box id.
    #[error(transparent)]
    BadId(#[from] BadBoxId),
    /// No greeting in time.
    #[error("no greeting within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
}

/// Client side: send our greeting, read and check the server's. Returns the server's box id.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    box_id: &BoxId,
) -> Result<BoxId, HandshakeError> {
    let exchange = async {
        connection.write_message(&Hello::new(box_id)).await?;
        let frame = connection.expect_frame().await?;
        if let Ok(Response::Error { message, .. }) = connection::decode::<Response>(frame.clone()) {
            return Err(HandshakeError::Refused(message));
        }
        let hello: Hello = connection::decode(frame)?;
        check(&hello)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

/// Server side: read and check the client's greeting, answer with ours (or with an error
/// message the client can show). Returns the client's box id.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    box_id: &BoxId,
) -> Result<BoxId, HandshakeError> {
    let exchange = async {
        let hello: Hello = connection.expect_message().await?;
        let id = match check(&hello) {
            Ok(id) => id,
            Err(e) => {
                let refusal = Response::Error {
                    kind: ErrorKind::Handshake,
                    message: e.to_string(),
                };
                let _ = connection.write_message(&refusal).await;
                return Err(e);
            }
        };
        connection.write_message(&Hello::new(box_id)).await?;
        Ok(id)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

/// Checks a greeting and reads the sender's box id from it.
fn check(hello: &Hello) -> Result<BoxId, HandshakeError> {
    if hello.magic != MAGIC {
        return Err(HandshakeError::WrongMagic(hello.magic.clone()));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            theirs: hello.version,
        });
    }
    Ok(BoxId::parse(&hello.box_id)?)
}
