//! The TCP wire protocol below the requests: frames, the connection that reads and writes
//! them, the greeting and the answers, and the opening handshake. It knows nothing of
//! transfers, sync or the shell. docs/protocol.md describes the same in prose.

pub mod connection;
pub mod decode;
pub mod frame;
pub mod message;
pub mod mux;
pub mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::identity::Identity;
use crate::types::BoxId;

pub use connection::{Connection, ConnectionError};
pub use frame::Frame;
pub use message::{ErrorKind, Hello, MAGIC, PROTOCOL_VERSION, Response};
pub use mux::{Link, Mux, Role, SessionInfo};
use tls::TlsLink;

impl Connection<Link> {
    /// The facts of the session the stream belongs to: the other box, both ends' addresses.
    pub fn session(&self) -> &SessionInfo {
        self.get_ref().info()
    }

    /// 32 bytes of keying material bound to this connection's TLS session and to
    /// `context`, for keys of a side channel (a UDP transfer) that must be as authentic as
    /// the connection itself (see [`SessionInfo::export_secret`]).
    pub fn export_secret(&self, context: &[u8]) -> Result<[u8; 32], ConnectionError> {
        self.session().export_secret(context)
    }
}

/// What a box tells the other in its greeting besides who it is: where it listens and
/// whether it syncs, so that the other side can dial it back and report one-way sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Greeting {
    /// The port its server listens on, if any (the address is the connection's).
    pub listen: Option<u16>,
    /// Whether its auto-sync runs (it will pull from the other side).
    pub syncs: bool,
}

impl Greeting {
    fn hello(self, invite: Option<String>) -> Hello {
        Hello {
            invite,
            listen: self.listen,
            syncs: self.syncs,
            ..Hello::new()
        }
    }

    fn of(hello: &Hello) -> Greeting {
        Greeting {
            listen: hello.listen,
            syncs: hello.syncs,
        }
    }
}

/// A session this box dialed, and what the other box said of itself.
pub struct Dialed {
    /// The session.
    pub mux: Mux,
    /// The other box's greeting.
    pub theirs: Greeting,
}

/// How long a connection may take from its first byte to the end of the greetings (TLS
/// included); one that has not authenticated by then is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a dialer waits for the other side's first TLS answer. A boxsync box answers a
/// caller's hello at once (one round trip, however busy: past its bound it closes the
/// connection instead), so silence this long means no boxsync box is there (a server that
/// waits for its client to speak first, a port that accepts and says nothing). Garbage
/// fails at once; this is the bound for silence.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the opening handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The connection failed during the handshake.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The socket failed during the handshake.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The other side is not a boxsync box.
    #[error("not a boxsync peer (greeting '{0}')")]
    WrongMagic(String),
    /// The other side speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this box speaks {PROTOCOL_VERSION}")]
    Version {
        /// The peer's version.
        theirs: u32,
    },
    /// The other side refused us, and said why.
    #[error("peer refused the connection: {0}")]
    Refused(String),
    /// The server does not trust this box (its own words, which name the fix).
    #[error("{0}")]
    NotTrusted(String),
    /// The box that answered is not the one dialed.
    #[error("it is box {seen}, not {expected}")]
    WrongBox {
        /// The ID dialed.
        expected: BoxId,
        /// The ID of the key that answered.
        seen: BoxId,
    },
    /// The other side's bytes are not boxsync's TLS at all.
    #[error(
        "not a boxsync box: it does not speak boxsync protocol {PROTOCOL_VERSION} (TLS): another program, or an older boxsync"
    )]
    NotBoxsync,
    /// The other side accepted the connection and said nothing.
    #[error(
        "not a boxsync box: it accepted the connection but did not answer within {ANSWER_TIMEOUT:?} (a boxsync box answers at once)"
    )]
    Silent,
    /// (Server side) a client of the old plaintext protocol, told to upgrade.
    #[error("a client of the old plaintext protocol (told to upgrade)")]
    Plaintext,
    /// (Server side) the client gave up on seeing this box's key: it expected another box.
    #[error("the caller refused this box's key: it expected another box at this address")]
    KeyRefused,
    /// The client presented no key.
    #[error("the caller presented no key")]
    NoKey,
    /// TLS failed otherwise.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// No greeting in time.
    #[error("no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
}

/// Client side: TLS as `identity` to the box `expected` (no other key is accepted), then
/// the greetings, then one stream of the session: a connection authenticated both ways,
/// for one-off exchanges (tests, tools). The session lasts as long as the stream.
pub async fn dial(
    stream: TcpStream,
    identity: &Identity,
    expected: &BoxId,
) -> Result<Connection<Link>, HandshakeError> {
    let dialed = dial_session(stream, identity, expected, None, Greeting::default(), None).await?;
    let link = dialed
        .mux
        .open()
        .await
        .map_err(|e| HandshakeError::Io(io::Error::other(e)))?;
    Ok(Connection::new(link))
}

/// Client side: TLS as `identity` to the box `expected`, presenting an invitation's secret
/// if joining (`boxsync join`: a box that does not trust this one yet does once it has
/// redeemed the secret), the greetings with `ours`, then the session. Streams the other box
/// opens go to `inbound` (none: they are refused).
pub async fn dial_session(
    stream: TcpStream,
    identity: &Identity,
    expected: &BoxId,
    invite: Option<&str>,
    ours: Greeting,
    inbound: Option<mpsc::Sender<Link>>,
) -> Result<Dialed, HandshakeError> {
    let exchange = async {
        let link = tokio::time::timeout(ANSWER_TIMEOUT, tls::connect(stream, identity, expected))
            .await
            .unwrap_or(Err(HandshakeError::Silent))?;
        let mut connection = Connection::new(link);
        connection
            .write_message(&ours.hello(invite.map(str::to_string)))
            .await?;
        let frame = connection.expect_frame().await?;
        if let Ok(Response::Error { kind, message }) = connection::decode::<Response>(frame.clone())
        {
            return Err(match kind {
                ErrorKind::NotTrusted => HandshakeError::NotTrusted(message),
                _ => HandshakeError::Refused(message),
            });
        }
        let hello: Hello = connection::decode(frame)?;
        check(&hello)?;
        Ok((connection, Greeting::of(&hello)))
    };
    let (connection, theirs) = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(HandshakeError::Timeout))?;
    let (tls, early) = connection.into_parts();
    let mux = mux::start(tls, early, expected.clone(), Role::Dialer, inbound)?;
    Ok(Dialed { mux, theirs })
}

/// A caller that has authenticated, not yet admitted.
pub struct Caller {
    /// Its connection, greetings read.
    pub connection: Connection<TlsLink>,
    /// Its ID, proven by its key.
    pub id: BoxId,
    /// The invitation secret it presented, if it is joining.
    pub invite: Option<String>,
    /// What it said of itself.
    pub theirs: Greeting,
}

/// Server side: TLS, then the caller's greeting. Returns the authenticated caller; the
/// server then [`welcome`]s it or [`refuse`]s it (untrusted, busy).
pub async fn accept(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<Caller, HandshakeError> {
    let exchange = async {
        let (link, id) = tls::accept(stream, config).await?;
        let mut connection = Connection::new(link);
        let hello: Hello = connection.expect_message().await?;
        if let Err(e) = check(&hello) {
            refuse(&mut connection, ErrorKind::Handshake, e.to_string()).await;
            return Err(e);
        }
        Ok(Caller {
            connection,
            id,
            theirs: Greeting::of(&hello),
            invite: hello.invite,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

/// Server side: admits an accepted caller (answers its greeting with `ours`) and starts
/// the session; streams the caller opens go to `inbound`.
pub async fn welcome(
    caller: Caller,
    ours: Greeting,
    inbound: Option<mpsc::Sender<Link>>,
) -> Result<Mux, ConnectionError> {
    let Caller {
        mut connection, id, ..
    } = caller;
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        connection.write_message(&ours.hello(None)),
    )
    .await
    .map_err(|_| ConnectionError::Io(io::ErrorKind::TimedOut.into()))??;
    let (tls, early) = connection.into_parts();
    mux::start(tls, early, id, Role::Accepter, inbound)
}

/// Server side: turns an accepted caller (or one of its streams) away with a reason it
/// can show, and closes.
pub async fn refuse<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    kind: ErrorKind,
    message: String,
) {
    let refusal = Response::Error { kind, message };
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let _ = connection.write_message(&refusal).await;
        let _ = connection.close().await;
    })
    .await;
}

/// Checks a greeting.
fn check(hello: &Hello) -> Result<(), HandshakeError> {
    if hello.magic != MAGIC {
        return Err(HandshakeError::WrongMagic(
            hello.magic.chars().take(40).collect(),
        ));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            theirs: hello.version,
        });
    }
    Ok(())
}
