//! A typed async client for one peer box: index, hash and download. It prints nothing; the
//! shell and the sync engine render or act on what it returns.
//!
//! Connections are persistent and pooled: a request takes an idle connection (or opens
//! one), and gives it back when the exchange ended cleanly. A request that fails because a
//! pooled connection had gone stale (the peer restarted) is retried once on a fresh one.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpStream;

use crate::history::Direction;
use crate::local::{LocalBox, Served};
use crate::protocol::message::{InstalledVersion, MAX_BATCH_NAMES};
use crate::protocol::{
    self, Connection, ConnectionError, ErrorKind, HandshakeError, Request, Response,
};
use crate::share::filter::IndexFilter;
use crate::share::{Entry, FileHash, RelPath};
use crate::transfer::batch;
use crate::transfer::udp::{self, UdpError};
use crate::transfer::{Downloaded, Landing, Progress, TransferError, Transport, Wanted, tcp};

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
    /// A UDP download failed in a way only UDP can.
    #[error(transparent)]
    Udp(UdpError),
}

impl PeerError {
    /// Whether this error means the peer could not be reached or stopped answering (as
    /// opposed to an answer that was an error).
    fn means_unreachable(&self) -> bool {
        matches!(
            self,
            PeerError::Unreachable { .. }
                | PeerError::Handshake { .. }
                | PeerError::Connection { .. }
                | PeerError::Transfer(TransferError::Connection(_))
        )
    }

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

/// What the last finished request to a peer showed about reaching it; the shell's prompt
/// shows it (✓ or ✗).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// No request has finished yet.
    Unknown,
    /// The last request got an answer (even an error answer).
    Reachable,
    /// The last request could not connect, or the connection failed.
    Unreachable,
}

impl Reachability {
    fn to_u8(self) -> u8 {
        match self {
            Reachability::Unknown => 0,
            Reachability::Reachable => 1,
            Reachability::Unreachable => 2,
        }
    }

    fn from_u8(value: u8) -> Reachability {
        match value {
            1 => Reachability::Reachable,
            2 => Reachability::Unreachable,
            _ => Reachability::Unknown,
        }
    }
}

/// The connection type to a peer.
type PeerConnection = Connection<TcpStream>;

/// Runs one request's exchange on a leased connection, retrying once on a fresh connection
/// if a pooled one turned out stale, and records the request in the box's log. A macro
/// rather than a function taking an async closure, so that the futures stay `Send` (the
/// sync loop and background jobs spawn them).
macro_rules! exchange {
    ($peer:expr, $request:expr, |$connection:ident, $addr:ident| $body:expr) => {{
        let peer: &Peer = $peer;
        let request: &Request = $request;
        let mut result = None;
        for _ in 0..2 {
            let (mut leased, reused) = match peer.lease().await {
                Ok(lease) => lease,
                Err(e) => {
                    result = Some(Err(e));
                    break;
                }
            };
            let outcome = {
                let $connection = &mut leased;
                let $addr: &str = &peer.addr;
                async { $body }.await
            };
            let retry = peer.release(leased, reused, &outcome);
            result = Some(outcome);
            if !retry {
                break;
            }
        }
        peer.finish_request(request, result)
    }};
}

/// The answer to a conditional listing request (`index_unless`, `hash_all_unless`).
#[derive(Debug)]
pub enum Listing<T> {
    /// The peer's folder is still at the version asked about: the earlier answer holds.
    Unchanged,
    /// The listing, and the version of the peer's folder it describes.
    Listed {
        /// The entries or hashes.
        items: Vec<T>,
        /// What to send as `unless` next time.
        version: String,
    },
}

/// How a listing ended, beyond its items.
enum Answer {
    Unchanged,
    Version(String),
}

/// One response of a listing, taken apart.
enum Batch<T> {
    Items {
        items: Vec<T>,
        more: bool,
        version: Option<String>,
    },
    Other(Response),
}

fn unpack_entries(response: Response) -> Batch<Entry> {
    match response {
        Response::Entries {
            entries,
            more,
            version,
        } => Batch::Items {
            items: entries,
            more,
            version,
        },
        other => Batch::Other(other),
    }
}

fn unpack_hashes(response: Response) -> Batch<FileHash> {
    match response {
        Response::Hashes {
            hashes,
            more,
            version,
        } => Batch::Items {
            items: hashes,
            more,
            version,
        },
        other => Batch::Other(other),
    }
}

/// A client for one peer box.
pub struct Peer {
    /// The address as the user gave it (`127.0.0.1:7002`, `host:port`).
    addr: String,
    /// This box (for its id, its shared folder and its request log).
    local: Arc<LocalBox>,
    /// Idle connections ready for the next request.
    idle: Mutex<Vec<PeerConnection>>,
    /// The peer's box id, once a handshake has told it.
    remote_id: Mutex<Option<String>>,
    /// The [`Reachability`] seen by the last finished request, as its `u8` code (an atomic,
    /// because requests finish on any task).
    reachability: AtomicU8,
}

impl Peer {
    /// A client for the box at `addr`; no connection is made until the first request.
    pub fn new(addr: &str, local: Arc<LocalBox>) -> Peer {
        Peer {
            addr: addr.to_string(),
            local,
            idle: Mutex::new(Vec::new()),
            remote_id: Mutex::new(None),
            reachability: AtomicU8::new(Reachability::Unknown.to_u8()),
        }
    }

    /// Whether the last finished request reached the peer.
    pub fn reachability(&self) -> Reachability {
        Reachability::from_u8(self.reachability.load(Ordering::Relaxed))
    }

    /// The peer's address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The peer's box id, known once a request has reached it.
    pub fn remote_id(&self) -> Option<String> {
        self.remote_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Tells the peer this box's folder changed, so that its sync pulls soon.
    pub async fn notify_changed(&self) -> Result<(), PeerError> {
        self.notice(&Request::Changed).await
    }

    /// Tells the peer this box installed `version` of its file under the same name, so
    /// that its sync records that both boxes held it.
    pub async fn confirm_installed(&self, version: Served) -> Result<(), PeerError> {
        let request = Request::Installed {
            name: version.name,
            blake3: version.blake3,
            size: version.size,
            mtime: version.mtime,
            mode: version.mode,
        };
        self.notice(&request).await
    }

    /// Tells the peer this box installed all of `versions` of its files under the same
    /// names (oldest first), in as few messages as the protocol allows.
    pub async fn confirm_installed_many(&self, versions: Vec<Served>) -> Result<(), PeerError> {
        let versions: Vec<InstalledVersion> = versions
            .into_iter()
            .map(|version| InstalledVersion {
                name: version.name,
                blake3: version.blake3,
                size: version.size,
                mtime: version.mtime,
                mode: version.mode,
            })
            .collect();
        for chunk in versions.chunks(MAX_BATCH_NAMES) {
            let request = Request::InstalledMany {
                versions: chunk.to_vec(),
            };
            self.notice(&request).await?;
        }
        Ok(())
    }

    /// Sends a notice that is answered by `ack`.
    async fn notice(&self, request: &Request) -> Result<(), PeerError> {
        exchange!(self, request, |connection, addr| {
            connection
                .write_message(request)
                .await
                .map_err(lost(addr))?;
            match connection
                .expect_message::<Response>()
                .await
                .map_err(lost(addr))?
            {
                Response::Ack => Ok(()),
                Response::Error { kind, message } => Err(PeerError::Remote { kind, message }),
                other => Err(protocol_error(addr, &format!("{other:?}"))),
            }
        })
    }

    /// The entries of the peer's folder that pass `filter`, sorted by name.
    pub async fn index(&self, filter: &IndexFilter) -> Result<Vec<Entry>, PeerError> {
        let request = Request::Index {
            filter: filter.clone(),
            unless: None,
        };
        Ok(self.listing(&request, unpack_entries).await?.1)
    }

    /// Like [`Peer::index`], unless the peer's folder is still at version `unless` (from an
    /// earlier answer; empty for none): what sync asks every rescan, cheap when nothing
    /// changed.
    pub async fn index_unless(
        &self,
        filter: &IndexFilter,
        unless: &str,
    ) -> Result<Listing<Entry>, PeerError> {
        let request = Request::Index {
            filter: filter.clone(),
            unless: Some(unless.to_string()),
        };
        self.conditional_listing(&request, unpack_entries).await
    }

    /// MD5, SHA-256 and mtime of one file on the peer.
    pub async fn hash(&self, name: &RelPath) -> Result<FileHash, PeerError> {
        let request = Request::HashVerify { name: name.clone() };
        let (_, mut hashes) = self.listing(&request, unpack_hashes).await?;
        match hashes.pop() {
            Some(hash) if hashes.is_empty() && &hash.name == name => Ok(hash),
            _ => Err(protocol_error(&self.addr, "hash answer for another file")),
        }
    }

    /// MD5, SHA-256 and mtime of every file on the peer.
    pub async fn hash_all(&self) -> Result<Vec<FileHash>, PeerError> {
        let request = Request::HashCheckall { unless: None };
        Ok(self.listing(&request, unpack_hashes).await?.1)
    }

    /// Like [`Peer::hash_all`], unless the peer's folder is still at version `unless`.
    pub async fn hash_all_unless(&self, unless: &str) -> Result<Listing<FileHash>, PeerError> {
        let request = Request::HashCheckall {
            unless: Some(unless.to_string()),
        };
        self.conditional_listing(&request, unpack_hashes).await
    }

    async fn conditional_listing<T>(
        &self,
        request: &Request,
        unpack: fn(Response) -> Batch<T>,
    ) -> Result<Listing<T>, PeerError> {
        match self.listing(request, unpack).await? {
            (Some(Answer::Unchanged), _) => Ok(Listing::Unchanged),
            (Some(Answer::Version(version)), items) => Ok(Listing::Listed { items, version }),
            (None, _) => Err(protocol_error(&self.addr, "listing without a version")),
        }
    }

    /// Sends `request` and collects the batches of its answer.
    async fn listing<T>(
        &self,
        request: &Request,
        unpack: fn(Response) -> Batch<T>,
    ) -> Result<(Option<Answer>, Vec<T>), PeerError> {
        exchange!(self, request, |connection, addr| {
            connection
                .write_message(request)
                .await
                .map_err(lost(addr))?;
            let mut all = Vec::new();
            loop {
                let response = connection
                    .expect_message::<Response>()
                    .await
                    .map_err(lost(addr))?;
                match unpack(response) {
                    Batch::Items {
                        items,
                        more,
                        version,
                    } => {
                        all.extend(items);
                        if all.len() > MAX_LISTED {
                            return Err(protocol_error(addr, "listing too long"));
                        }
                        if !more {
                            return Ok((version.map(Answer::Version), all));
                        }
                    }
                    Batch::Other(Response::Unchanged) if all.is_empty() => {
                        return Ok((Some(Answer::Unchanged), all));
                    }
                    Batch::Other(Response::Error { kind, message }) => {
                        return Err(PeerError::Remote { kind, message });
                    }
                    Batch::Other(other) => {
                        return Err(protocol_error(addr, &format!("{other:?}")));
                    }
                }
            }
        })
    }

    /// Downloads `name` over TCP into this box's shared folder, verified and atomic.
    pub async fn download_tcp(
        &self,
        name: &RelPath,
        progress: Progress<'_>,
    ) -> Result<Downloaded, PeerError> {
        self.download_tcp_to(name, &Landing::same_name(name), progress)
            .await
    }

    /// Downloads `name` over TCP, landing it as `landing` says.
    pub async fn download_tcp_to(
        &self,
        name: &RelPath,
        landing: &Landing,
        progress: Progress<'_>,
    ) -> Result<Downloaded, PeerError> {
        let request = Request::Download {
            name: name.clone(),
            blake3_only: landing.digests.blake3_only(),
        };
        let share = Arc::clone(&self.local.share);
        exchange!(self, &request, |connection, _addr| {
            tcp::receive_file(connection, &share, name, landing, &mut *progress)
                .await
                .map_err(PeerError::Transfer)
        })
    }

    /// Downloads many files over TCP in one request (at most
    /// [`MAX_BATCH_NAMES`]), each verified, landing each as its [`Wanted`] says, and
    /// installs them together (one flush for all; see [`crate::share::Share::install_batch`]).
    ///
    /// Returns one result per file, in order: a file the peer refused, that changed while
    /// it was sent, or that failed to install fails alone. The whole call fails only when
    /// not a single answer arrived (the peer is unreachable, say); if the connection breaks
    /// midway, the files already received are installed and the rest fail.
    pub async fn download_batch(
        &self,
        wanted: &[Wanted],
    ) -> Result<Vec<Result<Downloaded, PeerError>>, PeerError> {
        let started = Instant::now();
        let names: Vec<RelPath> = wanted.iter().map(|w| w.name.clone()).collect();
        let request = Request::DownloadMany {
            names: names.clone(),
        };
        let share = Arc::clone(&self.local.share);
        // Files a broken attempt had already verified: installed all the same.
        let mut salvaged = None;
        let result = exchange!(self, &request, |connection, _addr| {
            let receipt = batch::receive_batch(connection, &share, &names).await;
            match receipt.broken {
                None => Ok(receipt.files),
                Some(e) => {
                    if receipt.files.iter().any(Option::is_some) {
                        salvaged = Some(receipt.files);
                    }
                    Err(PeerError::Transfer(e))
                }
            }
        });
        let (files, broken) = match result {
            Ok(files) => (files, None),
            Err(e) => match salvaged.take() {
                Some(files) => (files, Some(e.to_string())),
                None => return Err(e),
            },
        };
        let mut installs = Vec::new();
        let mut results: Vec<Result<Downloaded, PeerError>> = Vec::with_capacity(files.len());
        let mut waiting = Vec::new();
        for (index, (slot, want)) in files.into_iter().zip(wanted).enumerate() {
            match slot {
                Some(Ok(received)) => {
                    waiting.push((index, received.size, received.mtime, received.mode));
                    installs.push(received.into_install(&want.landing));
                    // A placeholder, replaced once the batch is installed.
                    results.push(Err(PeerError::Transfer(TransferError::Interrupted(
                        "not installed".into(),
                    ))));
                }
                Some(Err(e)) => results.push(Err(PeerError::Transfer(e))),
                None => results.push(Err(PeerError::Transfer(TransferError::Interrupted(
                    broken.clone().unwrap_or_else(|| "no answer".into()),
                )))),
            }
        }
        let digests: Vec<_> = installs.iter().map(|i| i.digests.clone()).collect();
        let installed = share.install_batch(installs).await;
        let seconds = started.elapsed().as_secs_f64();
        for (((index, size, mtime, mode), outcome), digests) in
            waiting.into_iter().zip(installed).zip(digests)
        {
            let want = &wanted[index];
            results[index] = outcome
                .map(|replaced| Downloaded {
                    name: want.name.clone(),
                    size,
                    mtime,
                    mode,
                    blake3: digests.blake3,
                    sha256: digests.sha256,
                    md5: digests.md5,
                    transport: Transport::Tcp,
                    path: want.landing.name.under(share.root()),
                    seconds,
                    replaced,
                    resent: None,
                    note: None,
                })
                .map_err(|e| PeerError::Transfer(TransferError::Local(e)));
        }
        Ok(results)
    }

    /// Downloads `name` over UDP (negotiated on the TCP connection), verified and atomic.
    ///
    /// If not a single datagram gets through within a few seconds (a firewall), the file
    /// is downloaded over TCP instead and the result's `note` says so.
    pub async fn download_udp(
        &self,
        name: &RelPath,
        max_rate: Option<u64>,
        progress: Progress<'_>,
    ) -> Result<Downloaded, PeerError> {
        self.download_udp_to(name, &Landing::same_name(name), max_rate, progress)
            .await
    }

    /// Downloads `name` over UDP (falling back to TCP if UDP is blocked), landing it as
    /// `landing` says.
    pub async fn download_udp_to(
        &self,
        name: &RelPath,
        landing: &Landing,
        max_rate: Option<u64>,
        progress: Progress<'_>,
    ) -> Result<Downloaded, PeerError> {
        let request = Request::DownloadUdp {
            name: name.clone(),
            max_rate,
            blake3_only: landing.digests.blake3_only(),
        };
        let share = Arc::clone(&self.local.share);
        let result = exchange!(self, &request, |connection, addr| {
            let stream = connection.get_ref();
            let (local, remote) = match (stream.local_addr(), stream.peer_addr()) {
                (Ok(local), Ok(remote)) => (local, remote),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(lost(addr)(ConnectionError::Io(e)));
                }
            };
            let path = udp::receiver::UdpPath {
                local_ip: local.ip(),
                server: remote,
            };
            udp::receiver::receive_file(
                connection,
                path,
                &share,
                name,
                landing,
                max_rate,
                &mut *progress,
            )
            .await
            .map_err(|e| match e {
                UdpError::Transfer(e) => PeerError::Transfer(e),
                other => PeerError::Udp(other),
            })
        });
        match result {
            Err(PeerError::Udp(UdpError::Blocked(waited))) => {
                let mut downloaded = self.download_tcp_to(name, landing, progress).await?;
                downloaded.note = Some(format!(
                    "no UDP datagram arrived within {waited:?} (UDP blocked?); downloaded over TCP instead"
                ));
                Ok(downloaded)
            }
            other => other,
        }
    }

    /// A connection for one request: an idle one (`true`: reused) or a new one.
    async fn lease(&self) -> Result<(PeerConnection, bool), PeerError> {
        match self.take_idle() {
            Some(connection) => Ok((connection, true)),
            None => self.connect().await.map(|connection| (connection, false)),
        }
    }

    /// Returns a connection after a request; says whether the request should be retried on
    /// a fresh connection (a reused one turned out stale).
    fn release<T>(
        &self,
        connection: PeerConnection,
        reused: bool,
        outcome: &Result<T, PeerError>,
    ) -> bool {
        match outcome {
            Ok(_) => self.put_idle(connection),
            Err(e) if e.leaves_connection_usable() => self.put_idle(connection),
            Err(_) => {}
        }
        matches!(outcome, Err(e) if reused && e.may_be_stale())
    }

    /// Records a finished request in the box's log and hands back its result.
    fn finish_request<T>(
        &self,
        request: &Request,
        result: Option<Result<T, PeerError>>,
    ) -> Result<T, PeerError> {
        let result = result.unwrap_or_else(|| Err(protocol_error(&self.addr, "no attempt made")));
        let reached = match &result {
            Err(e) if e.means_unreachable() => Reachability::Unreachable,
            _ => Reachability::Reachable,
        };
        self.reachability.store(reached.to_u8(), Ordering::Relaxed);
        // Sync's routine requests are too frequent to be worth a line in the log each.
        if !request.is_routine() {
            let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            self.local
                .history
                .record(Direction::Made, &self.addr, &request.describe(), outcome);
        }
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
        let id = protocol::client_handshake(&mut connection, &self.local.id)
            .await
            .map_err(|source| PeerError::Handshake {
                addr: self.addr.clone(),
                source,
            })?;
        *self.remote_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
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
