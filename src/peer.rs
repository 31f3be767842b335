//! A typed async client for one peer box: index, hash and download. It prints nothing; the
//! shell and the sync engine render or act on what it returns.
//!
//! Connections are persistent and pooled: a request takes an idle connection (or opens
//! one), and gives it back when the exchange ended cleanly. A request that fails because a
//! pooled connection had gone stale (the peer restarted) is retried once on a fresh one.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpStream;

use crate::history::Direction;
use crate::local::LocalBox;
use crate::protocol::{
    self, Connection, ConnectionError, ErrorKind, HandshakeError, Request, Response,
};
use crate::share::filter::IndexFilter;
use crate::share::{Entry, FileHash, RelPath};
use crate::transfer::{Downloaded, Progress, TransferError, tcp};

/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most idle connections kept per peer.
const MAX_IDLE: usize = 4;

/// Most entries accepted in one listing, so a hostile peer cannot exhaust memory.
const MAX_LISTED: usize = 10_000_000;

/// Why a request to a peer failed.
#[derive(Debug, Error)]
pub enum PeerError {
    /// No connection could be made.
    #[error("peer {addr} is unreachable: {reason}")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// Why, in a few words (`connection refused`).
        reason: String,
    },
    /// Connected, but the handshake failed.
    #[error("peer {addr}: {source}")]
    Handshake {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        source: HandshakeError,
    },
    /// The connection failed during the request.
    #[error("connection to peer {addr} lost: {source}")]
    Connection {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        source: ConnectionError,
    },
    /// The peer answered with an error.
    #[error("{message}")]
    Remote {
        /// What kind of failure.
        kind: ErrorKind,
        /// The peer's explanation.
        message: String,
    },
    /// The peer answered something that makes no sense here.
    #[error("peer {addr} broke the protocol: {detail}")]
    Protocol {
        /// The peer's address.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// A download failed.
    #[error(transparent)]
    Transfer(TransferError),
}

impl PeerError {
    /// Whether the connection can carry further requests after this error.
    fn leaves_connection_usable(&self) -> bool {
        match self {
            PeerError::Remote { .. } => true,
            PeerError::Transfer(e) => e.leaves_connection_usable(),
            _ => false,
        }
    }

    /// Whether a stale pooled connection could explain this error (worth one retry).
    fn may_be_stale(&self) -> bool {
        matches!(
            self,
            PeerError::Connection { .. }
                | PeerError::Transfer(TransferError::Connection(
                    ConnectionError::Closed | ConnectionError::Io(_)
                ))
        )
    }
}

/// The connection type to a peer.
type PeerConnection = Connection<TcpStream>;

/// A client for one peer box.
pub struct Peer {
    /// The address as the user gave it (`127.0.0.1:7002`, `host:port`).
    addr: String,
    /// This box (for its id, its shared folder and its request log).
    local: Arc<LocalBox>,
    /// Idle connections ready for the next request.
    idle: Mutex<Vec<PeerConnection>>,
}

impl Peer {
    /// A client for the box at `addr`; no connection is made until the first request.
    pub fn new(addr: &str, local: Arc<LocalBox>) -> Peer {
        Peer {
            addr: addr.to_string(),
            local,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The peer's address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The entries of the peer's folder that pass `filter`, sorted by name.
    pub async fn index(&self, filter: &IndexFilter) -> Result<Vec<Entry>, PeerError> {
        let request = Request::Index {
            filter: filter.clone(),
        };
        self.logged(&request, async |connection, addr| {
            connection
                .write_message(&request)
                .await
                .map_err(lost(addr))?;
            let mut all = Vec::new();
            loop {
                match connection
                    .expect_message::<Response>()
                    .await
                    .map_err(lost(addr))?
                {
                    Response::Entries { entries, more } => {
                        all.extend(entries);
                        if all.len() > MAX_LISTED {
                            return Err(protocol_error(addr, "listing too long"));
                        }
                        if !more {
                            return Ok(all);
                        }
                    }
                    Response::Error { kind, message } => {
                        return Err(PeerError::Remote { kind, message });
                    }
                    other => return Err(protocol_error(addr, &format!("{other:?}"))),
                }
            }
        })
        .await
    }

    /// MD5, SHA-256 and mtime of one file on the peer.
    pub async fn hash(&self, name: &RelPath) -> Result<FileHash, PeerError> {
        let request = Request::HashVerify { name: name.clone() };
        let mut hashes = self.hashes(&request).await?;
        match hashes.pop() {
            Some(hash) if hashes.is_empty() && &hash.name == name => Ok(hash),
            _ => Err(protocol_error(&self.addr, "hash answer for another file")),
        }
    }

    /// MD5, SHA-256 and mtime of every file on the peer.
    pub async fn hash_all(&self) -> Result<Vec<FileHash>, PeerError> {
        self.hashes(&Request::HashCheckall).await
    }

    async fn hashes(&self, request: &Request) -> Result<Vec<FileHash>, PeerError> {
        self.logged(request, async |connection, addr| {
            connection
                .write_message(request)
                .await
                .map_err(lost(addr))?;
            let mut all = Vec::new();
            loop {
                match connection
                    .expect_message::<Response>()
                    .await
                    .map_err(lost(addr))?
                {
                    Response::Hashes { hashes, more } => {
                        all.extend(hashes);
                        if all.len() > MAX_LISTED {
                            return Err(protocol_error(addr, "listing too long"));
                        }
                        if !more {
                            return Ok(all);
                        }
                    }
                    Response::Error { kind, message } => {
                        return Err(PeerError::Remote { kind, message });
                    }
                    other => return Err(protocol_error(addr, &format!("{other:?}"))),
                }
            }
        })
        .await
    }

    /// Downloads `name` over TCP into this box's shared folder, verified and atomic.
    pub async fn download_tcp(
        &self,
        name: &RelPath,
        progress: Progress<'_>,
    ) -> Result<Downloaded, PeerError> {
        let request = Request::Download { name: name.clone() };
        let share = Arc::clone(&self.local.share);
        self.logged(&request, async |connection, _| {
            tcp::receive_file(connection, &share, name, &mut *progress)
                .await
                .map_err(PeerError::Transfer)
        })
        .await
    }

    /// Runs `exchange` on a connection, retrying once on a fresh connection if a pooled one
    /// turned out stale, and records the request in the box's log.
    async fn logged<T>(
        &self,
        request: &Request,
        mut exchange: impl AsyncFnMut(&mut PeerConnection, &str) -> Result<T, PeerError>,
    ) -> Result<T, PeerError> {
        let mut result = None;
        for _ in 0..2 {
            let (mut connection, reused) = match self.take_idle() {
                Some(connection) => (connection, true),
                None => match self.connect().await {
                    Ok(connection) => (connection, false),
                    Err(e) => {
                        result = Some(Err(e));
                        break;
                    }
                },
            };
            let outcome = exchange(&mut connection, &self.addr).await;
            let retry = matches!(&outcome, Err(e) if reused && e.may_be_stale());
            match &outcome {
                Ok(_) => self.put_idle(connection),
                Err(e) if e.leaves_connection_usable() => self.put_idle(connection),
                Err(_) => {}
            }
            result = Some(outcome);
            if !retry {
                break;
            }
        }
        let result = result.unwrap_or_else(|| Err(protocol_error(&self.addr, "no attempt made")));
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        self.local
            .history
            .record(Direction::Made, &self.addr, &request.describe(), outcome);
        result
    }

    fn take_idle(&self) -> Option<PeerConnection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put_idle(&self, connection: PeerConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }

    async fn connect(&self) -> Result<PeerConnection, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await {
                Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
                Ok(Err(e)) => return Err(unreachable(describe_io(&e))),
                Ok(Ok(stream)) => stream,
            };
        self.local.tune(&stream);
        let mut connection = Connection::new(stream);
        protocol::client_handshake(&mut connection, &self.local.id)
            .await
            .map_err(|source| PeerError::Handshake {
                addr: self.addr.clone(),
                source,
            })?;
        Ok(connection)
    }
}

/// An I/O error in a few lowercase words (`connection refused`), without the OS code.
pub fn describe_io(error: &io::Error) -> String {
    let kind = error.kind().to_string();
    if error.kind() == io::ErrorKind::Other || kind.contains("uncategorized") {
        error.to_string()
    } else {
        kind
    }
}

fn lost(addr: &str) -> impl Fn(ConnectionError) -> PeerError + '_ {
    move |source| PeerError::Connection {
        addr: addr.to_string(),
        source,
    }
}

fn protocol_error(addr: &str, detail: &str) -> PeerError {
    PeerError::Protocol {
        addr: addr.to_string(),
        detail: detail.to_string(),
    }
}
