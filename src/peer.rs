//! A typed async client for one peer box: index, hash and download. It prints nothing; the
//! shell and the sync engine render or act on what it returns.
//!
//! Connections are persistent and pooled: a request takes an idle connection (or opens
//! one), and gives it back when the exchange ended cleanly. A request that fails because a
//! pooled connection had gone stale (the peer restarted) is retried once on a fresh one.

use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpStream;

use crate::history::Direction;
use crate::links::PeerLink;
use crate::local::LocalBox;
use crate::protocol::{self, Connection, ConnectionError, ErrorKind, HandshakeError, Link};
use crate::requests::batch::DownloadMany;
use crate::requests::blocks::Blocks;
use crate::requests::changes::{Changes, ChangesAnswer};
use crate::requests::download::Download;
use crate::requests::hash::{HashCheckall, HashVerify};
use crate::requests::index::Index;
use crate::requests::notices::{self, InstalledMany};
use crate::requests::udp::DownloadUdp;
use crate::requests::{CallError, MAX_BATCH_NAMES, Request};
use crate::share::filter::IndexFilter;
use crate::share::{ChangeMark, Entry, FileHash, RelPath};
use crate::transfer::delta::{self, Prepared};
use crate::transfer::udp::UdpError;
use crate::transfer::{Downloaded, Landing, Progress, TransferError, Wanted, seconds};
use crate::types::{Agreement, BoxId, FileVersion, PeerAddress, Transport};

use crate::requests::listing;
pub use crate::requests::listing::{Listing, Streamed};

/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request that failed on a session waits for that session to end before
/// trying once more.
const SESSION_END_WAIT: Duration = Duration::from_millis(300);

/// The first wait before dialing a peer again after a failed dial; it doubles with each
/// failure in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between two dials of a peer that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

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
    #[error("peer {addr}: {cause}")]
    Handshake {
        /// The peer's address.
        addr: String,
        /// What went wrong (in the message, so not also its source).
        cause: HandshakeError,
    },
    /// The box at the address is not the box dialed.
    #[error("the box at {addr} is {seen}, not {expected}")]
    WrongBox {
        /// The peer's address.
        addr: String,
        /// The ID dialed.
        expected: BoxId,
        /// The ID of the box that answered.
        seen: BoxId,
    },
    /// The peer does not trust this box.
    #[error("box {peer} at {addr} does not trust this box: run `boxsync trust {this}` on it")]
    NotTrusted {
        /// The peer's address.
        addr: String,
        /// The peer's ID.
        peer: BoxId,
        /// This box's ID, which the peer must trust.
        this: BoxId,
    },
    /// No session with the peer, and no address to dial it at: it must dial this box.
    #[error(
        "box {peer} is not connected, and no address is known for it: it must dial this box, or give -p {peer}@HOST:PORT"
    )]
    NotConnected {
        /// The peer's ID.
        peer: BoxId,
    },
    /// The peer's trust was withdrawn (`boxsync untrust`): it is not dialed any more.
    #[error("box {peer} is no longer trusted here: `boxsync trust {peer}` to talk to it again")]
    Revoked {
        /// The peer's ID.
        peer: BoxId,
    },
    /// The connection failed during the request.
    #[error("connection to peer {addr} lost: {cause}")]
    Connection {
        /// The peer's address.
        addr: String,
        /// What went wrong (in the message, so not also its source).
        cause: ConnectionError,
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
    /// The peer stopped answering in the middle of a request: nothing arrived (or it took
    /// nothing) for the box's stall limit ([`crate::local::Limits`]). The connection is
    /// dropped.
    #[error("peer {addr} stopped answering: nothing arrived for {}", seconds(*waited))]
    Stalled {
        /// The peer's address.
        addr: String,
        /// How long nothing arrived.
        waited: Duration,
    },
}

impl PeerError {
    /// The error of a request's exchange with the peer at `addr`.
    fn from_call(addr: &str, error: CallError) -> PeerError {
        match error {
            CallError::Connection(cause) => PeerError::Connection {
                addr: addr.to_string(),
                cause,
            },
            CallError::Remote { kind, message } => PeerError::Remote { kind, message },
            CallError::Protocol(detail) => PeerError::Protocol {
                addr: addr.to_string(),
                detail,
            },
            CallError::Stalled(waited) | CallError::Transfer(TransferError::Stalled(waited)) => {
                PeerError::Stalled {
                    addr: addr.to_string(),
                    waited,
                }
            }
            CallError::Transfer(e) => PeerError::Transfer(e),
            CallError::Udp(e) => PeerError::Udp(e),
        }
    }

    /// Whether this error means the peer could not be reached or stopped answering (as
    /// opposed to an answer that was an error).
    fn means_unreachable(&self) -> bool {
        matches!(
            self,
            PeerError::Unreachable { .. }
                | PeerError::NotConnected { .. }
                | PeerError::Handshake { .. }
                | PeerError::WrongBox { .. }
                | PeerError::NotTrusted { .. }
                | PeerError::Revoked { .. }
                | PeerError::Connection { .. }
                | PeerError::Stalled { .. }
                | PeerError::Transfer(TransferError::Connection(_))
        )
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
type PeerConnection = Connection<Link>;

/// Runs one request's exchange on a leased connection: sends `$request`, then `$body`
/// reads the answer (a `Result<_, CallError>`). Retries once on a fresh connection if a
/// pooled one turned out stale, and records the request in the box's log.
///
/// The request must be taken, and each frame of the answer arrive, within the box's
/// deadlines ([`crate::local::Limits`]: `$body`'s readers apply them); a peer that stops
/// answering fails the request with [`PeerError::Stalled`], logged at WARN, and its
/// connection is dropped, not retried. A macro rather
/// than a function taking an async closure, so that the futures stay `Send` (the sync loop
/// and background jobs spawn them).
///
/// With `retry_if: $again`, the retry also needs `$again` to hold after the failed attempt:
/// a streamed listing that already handed batches on must not start over.
macro_rules! exchange {
    ($peer:expr, $request:expr, |$connection:ident| $body:expr) => {
        exchange!($peer, $request, retry_if: true, |$connection| $body)
    };
    ($peer:expr, $request:expr, retry_if: $again:expr, |$connection:ident| $body:expr) => {{
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
                async {
                    let stall = peer.local.limits.stall;
                    match tokio::time::timeout(stall, $connection.write_message(request)).await {
                        Ok(sent) => sent?,
                        Err(_) => return Err(CallError::Stalled(stall)),
                    }
                    $body
                }
                .await
                .map_err(|e| PeerError::from_call(&peer.label, e))
            };
            if let Err(PeerError::Stalled { waited, .. }) = &outcome {
                tracing::warn!(
                    peer = %peer.label,
                    request = %request.describe(),
                    waited = %seconds(*waited),
                    "peer stopped answering; request failed"
                );
            }
            let retry = peer.release(leased, reused, &outcome) && $again;
            result = Some(outcome);
            if !retry {
                break;
            }
            // The session may be ending (the peer closed it): let it, so that the retry
            // dials afresh instead of opening a stream on it again.
            if let Some(link) = peer.link() {
                let _ = tokio::time::timeout(SESSION_END_WAIT, link.mux.wait_closed()).await;
            }
        }
        peer.finish_request(request, result)
    }};
}

/// A client for one peer box.
pub struct Peer {
    /// How the peer is named in logs and status: the address as the user gave it
    /// (`127.0.0.1:7002`, `host:port`), else the peer's name or short ID.
    label: String,
    /// The box that must answer (its key is pinned).
    id: BoxId,
    /// This box (for its id, its shared folder, its sessions and its request log).
    local: Arc<LocalBox>,
    /// The address given for it, if any; else the one last reached (remembered).
    given: Option<String>,
    /// Held while dialing, so that requests that find no session make one, not several.
    dialing: tokio::sync::Mutex<()>,
    /// The [`Reachability`] seen by the last finished request, as its `u8` code (an atomic,
    /// because requests finish on any task).
    reachability: AtomicU8,
    /// Dials that failed in a row, and when the next may be tried. A std `Mutex`: never
    /// held across `.await`.
    failures: Mutex<Failures>,
}

/// A run of failed dials.
#[derive(Debug, Default)]
struct Failures {
    /// How many in a row.
    count: u32,
    /// When sync may dial again.
    retry_at: Option<Instant>,
    /// The last reason, reported once (a new reason is reported again).
    reason: Option<String>,
}

impl Peer {
    /// A client for the box `target.id` at `target.addr`; no connection is made until the
    /// first request. Dialing it trusts it for this run (it may call back).
    pub fn new(target: &PeerAddress, local: Arc<LocalBox>) -> Peer {
        local.trust.allow_for_this_run(&target.id);
        Peer::assemble(
            target.id.clone(),
            Some(target.addr.clone()),
            target.addr.clone(),
            local,
        )
    }

    /// A client for the box `id`, reached over the session it opens to this box, or at the
    /// address it was last reached at (or found at, on the local network). Trusts it for
    /// this run.
    pub fn by_id(id: &BoxId, local: Arc<LocalBox>) -> Peer {
        local.trust.allow_for_this_run(id);
        Peer::assemble(id.clone(), None, id.short().to_string(), local)
    }

    /// A client for the box `id`, which dialed this box: it is trusted already, and named
    /// as the trust file names it.
    pub fn dialed_in(id: &BoxId, name: Option<String>, local: Arc<LocalBox>) -> Peer {
        let label = name.unwrap_or_else(|| id.short().to_string());
        Peer::assemble(id.clone(), None, label, local)
    }

    fn assemble(id: BoxId, given: Option<String>, label: String, local: Arc<LocalBox>) -> Peer {
        Peer {
            label,
            id,
            local,
            given,
            dialing: tokio::sync::Mutex::new(()),
            reachability: AtomicU8::new(Reachability::Unknown.to_u8()),
            failures: Mutex::default(),
        }
    }

    /// The address this box dials the peer at first: the one given, else the one it was
    /// last reached at, else where it announced itself on the local network lately.
    pub fn dial_address(&self) -> Option<String> {
        let links = &self.local.links;
        self.given
            .clone()
            .or_else(|| links.address(&self.id).map(|r| r.addr))
            .or_else(|| links.found(&self.id))
    }

    /// The live session with the peer, if any (whoever dialed).
    pub fn link(&self) -> Option<Arc<PeerLink>> {
        self.local.links.get(&self.id)
    }

    /// How long sync should wait before dialing again (dials failed lately), if at all.
    /// A live session needs no dial.
    pub fn dial_backoff(&self) -> Option<Duration> {
        if self.link().is_some() {
            return None;
        }
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let retry_at = failures.retry_at?;
        retry_at.checked_duration_since(Instant::now())
    }

    /// Whether the last finished request reached the peer.
    pub fn reachability(&self) -> Reachability {
        Reachability::from_u8(self.reachability.load(Ordering::Relaxed))
    }

    /// How the peer is named in logs and status: its address as given, else its name or
    /// short ID.
    pub fn addr(&self) -> &str {
        &self.label
    }

    /// Where the peer is and which box it is: `ID@HOST:PORT` (the address given, else the
    /// one last reached, else the label).
    pub fn target(&self) -> PeerAddress {
        PeerAddress {
            id: self.id.clone(),
            addr: self.dial_address().unwrap_or_else(|| self.label.clone()),
        }
    }

    /// The peer's box ID (pinned: no other box is accepted at its address).
    pub fn id(&self) -> &BoxId {
        &self.id
    }

    /// Tells the peer this box's folder changed, so that its sync pulls soon.
    pub async fn notify_changed(&self) -> Result<(), PeerError> {
        self.notice(&Request::Changed).await
    }

    /// Tells the peer this box installed `version` of its file under the same name, so
    /// that its sync records that both boxes held it.
    pub async fn confirm_installed(&self, version: FileVersion) -> Result<(), PeerError> {
        self.notice(&Request::Installed(version)).await
    }

    /// Tells the peer this box installed all of `versions` of its files under the same
    /// names (oldest first), in as few messages as the protocol allows.
    pub async fn confirm_installed_many(
        &self,
        versions: Vec<FileVersion>,
    ) -> Result<(), PeerError> {
        self.confirm(versions.into_iter().map(Agreement::Holds).collect())
            .await
    }

    /// Tells the peer what this box now agrees on with it (`installed_many`, oldest
    /// first): versions of its files it holds, paths both lack.
    pub async fn confirm(&self, agreements: Vec<Agreement>) -> Result<(), PeerError> {
        match self.confirm_counted(agreements).await {
            (_, None) => Ok(()),
            (_, Some(e)) => Err(e),
        }
    }

    /// [`Peer::confirm`], saying how many of `agreements` (the first ones) the peer took
    /// before a failure, if one stopped it.
    pub async fn confirm_counted(&self, agreements: Vec<Agreement>) -> (usize, Option<PeerError>) {
        let mut taken = 0;
        for chunk in agreements.chunks(MAX_BATCH_NAMES) {
            let mut many = InstalledMany {
                versions: Vec::new(),
                removed: Vec::new(),
            };
            for agreement in chunk.iter().cloned() {
                match agreement {
                    Agreement::Holds(version) => many.versions.push(version),
                    Agreement::Lacks { removed } => many.removed.push(removed),
                }
            }
            if let Err(e) = self.notice(&Request::InstalledMany(many)).await {
                return (taken, Some(e));
            }
            taken += chunk.len();
        }
        (taken, None)
    }

    /// Sends a notice that is answered by `ack`.
    async fn notice(&self, request: &Request) -> Result<(), PeerError> {
        let stall = self.local.limits.stall;
        exchange!(self, request, |connection| notices::read_ack(
            connection, stall
        )
        .await)
    }

    /// The entries of the peer's folder that pass `filter`, sorted by name.
    pub async fn index(&self, filter: &IndexFilter) -> Result<Vec<Entry>, PeerError> {
        let request = Request::Index(Index {
            filter: filter.clone(),
            unless: None,
        });
        let limits = &self.local.limits;
        exchange!(self, &request, |connection| listing::receive(
            connection, limits
        )
        .await)
    }

    /// The entries of the peer's folder that pass `filter`, sorted by name, handed to
    /// `each` one batch at a time as they arrive (a few hundred KiB of the answer each),
    /// so that a listing of any length is shown in bounded memory. `each` returning
    /// `Break` stops the listing ([`Streamed::Stopped`]): the request's stream is dropped,
    /// which ends the peer's answer, and the session lives on. Each wait on the peer has
    /// the deadline of [`Peer::index`]; a stale pooled connection is retried only while no
    /// batch was handed on.
    pub async fn index_each(
        &self,
        filter: &IndexFilter,
        each: impl FnMut(Vec<Entry>) -> ControlFlow<()>,
    ) -> Result<Streamed, PeerError> {
        let request = Request::Index(Index {
            filter: filter.clone(),
            unless: None,
        });
        self.stream_listing(&request, each).await
    }

    /// Every file's hashes on the peer, as [`Peer::hash_all`], handed to `each` one batch
    /// at a time as [`Peer::index_each`] does.
    pub async fn hash_all_each(
        &self,
        each: impl FnMut(Vec<FileHash>) -> ControlFlow<()>,
    ) -> Result<Streamed, PeerError> {
        let request = Request::HashCheckall(HashCheckall { unless: None });
        self.stream_listing(&request, each).await
    }

    /// Sends a plain listing request and hands its batches to `each`.
    async fn stream_listing<T: listing::Listed>(
        &self,
        request: &Request,
        mut each: impl FnMut(Vec<T>) -> ControlFlow<()>,
    ) -> Result<Streamed, PeerError> {
        let limits = &self.local.limits;
        let mut handed = false;
        exchange!(self, request, retry_if: !handed, |connection| {
            listing::receive_each(connection, limits, |batch| {
                handed = true;
                each(batch)
            })
            .await
        })
    }

    /// Like [`Peer::index`], unless the peer's folder is still at version `unless` (from an
    /// earlier answer; empty for none): what sync asks every rescan, cheap when nothing
    /// changed.
    pub async fn index_unless(
        &self,
        filter: &IndexFilter,
        unless: &str,
    ) -> Result<Listing<Entry>, PeerError> {
        let request = Request::Index(Index {
            filter: filter.clone(),
            unless: Some(unless.to_string()),
        });
        let limits = &self.local.limits;
        exchange!(self, &request, |connection| {
            listing::receive_conditional(connection, limits).await
        })
    }

    /// What changed in the peer's folder since `since`, the mark of the last answer read
    /// (`None`: everything): sync's listing of the peer.
    pub async fn changes(&self, since: Option<ChangeMark>) -> Result<ChangesAnswer, PeerError> {
        let changes = Changes { since };
        let request = Request::Changes(changes.clone());
        let limits = &self.local.limits;
        exchange!(self, &request, |connection| changes
            .read_answer(connection, limits)
            .await)
    }

    /// MD5, SHA-256 and mtime of one file on the peer.
    pub async fn hash(&self, name: &RelPath) -> Result<FileHash, PeerError> {
        let verify = HashVerify { name: name.clone() };
        let request = Request::HashVerify(verify.clone());
        let limits = &self.local.limits;
        exchange!(self, &request, |connection| verify
            .read_answer(connection, limits)
            .await)
    }

    /// MD5, SHA-256 and mtime of every file on the peer.
    pub async fn hash_all(&self) -> Result<Vec<FileHash>, PeerError> {
        let request = Request::HashCheckall(HashCheckall { unless: None });
        let limits = &self.local.limits;
        exchange!(self, &request, |connection| {
            listing::receive(connection, limits).await
        })
    }

    /// Like [`Peer::hash_all`], unless the peer's folder is still at version `unless`.
    pub async fn hash_all_unless(&self, unless: &str) -> Result<Listing<FileHash>, PeerError> {
        let request = Request::HashCheckall(HashCheckall {
            unless: Some(unless.to_string()),
        });
        let limits = &self.local.limits;
        exchange!(self, &request, |connection| {
            listing::receive_conditional(connection, limits).await
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

    /// Downloads `name` over TCP, landing it as `landing` says, moving only what this box
    /// lacks: the peer's block list first, then the blocks found in no local file (see
    /// [`delta`]). A local file that already is the version makes it a no-op.
    pub async fn download_tcp_to(
        &self,
        name: &RelPath,
        landing: &Landing,
        progress: Progress<'_>,
    ) -> Result<Downloaded, PeerError> {
        let share = &self.local.share;
        let stall = self.local.limits.stall;
        let prepared = self.prepare_download(name, landing).await?;
        let mut assembly = match prepared {
            Prepared::UpToDate(done) => return Ok(*done),
            Prepared::Whole => return self.download_whole_tcp(name, landing, progress).await,
            Prepared::Assembling(assembly) => assembly,
        };
        let sent = if assembly.complete() {
            None
        } else {
            let download = Download {
                ranges: Some(assembly.ranges()),
                ..Download::new(name, landing)
            };
            let request = Request::Download(download);
            let fetching = &mut *assembly;
            // Not retried on a new connection: the session just answered `blocks`, so a
            // failure is the peer's, mid-transfer (what arrived is kept to resume).
            let fetched = exchange!(self, &request, retry_if: false, |connection| {
                delta::receive_ranges(connection, fetching, &mut *progress, stall)
                    .await
                    .map_err(CallError::Transfer)
            });
            match fetched {
                Ok(digests) => Some(digests),
                // That version is gone on the peer: nothing will resume it.
                Err(e) if version_gone(&e) => {
                    assembly.discard();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        };
        delta::finish(share, landing, *assembly, sent)
            .await
            .map_err(PeerError::Transfer)
    }

    /// The first step of a download: the peer's block list of `name`, and what this box
    /// already has of that version (see [`delta::prepare`]).
    async fn prepare_download(
        &self,
        name: &RelPath,
        landing: &Landing,
    ) -> Result<Prepared, PeerError> {
        // A state folder deleted meanwhile is recreated first: the download needs `tmp/`.
        self.local.ensure_state();
        let stall = self.local.limits.stall;
        let blocks = Blocks { name: name.clone() };
        let request = Request::Blocks(blocks.clone());
        let remote = exchange!(self, &request, |connection| {
            blocks.read_answer(connection, stall).await
        })?;
        delta::prepare(&self.local.share, landing, remote)
            .await
            .map_err(PeerError::Transfer)
    }

    /// Downloads `name` whole over TCP, landing it as `landing` says.
    async fn download_whole_tcp(
        &self,
        name: &RelPath,
        landing: &Landing,
        progress: Progress<'_>,
    ) -> Result<Downloaded, PeerError> {
        let download = Download::new(name, landing);
        let request = Request::Download(download.clone());
        let share = &self.local.share;
        let stall = self.local.limits.stall;
        exchange!(self, &request, |connection| {
            download
                .read_answer(connection, share, landing, &mut *progress, stall)
                .await
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
        self.local.ensure_state();
        let started = Instant::now();
        let many = DownloadMany {
            names: wanted.iter().map(|w| w.name.clone()).collect(),
        };
        let request = Request::DownloadMany(many.clone());
        let share = &self.local.share;
        let stall = self.local.limits.stall;
        // Files a broken attempt had already verified: installed all the same.
        let mut salvaged = None;
        let result = exchange!(self, &request, |connection| {
            let receipt = many.read_answer(connection, share, stall).await;
            match receipt.broken {
                None => Ok(receipt.files),
                Some(e) => {
                    if receipt.files.iter().any(Option::is_some) {
                        salvaged = Some(receipt.files);
                    }
                    Err(CallError::Transfer(e))
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
                    version: FileVersion {
                        name: want.name.clone(),
                        blake3: digests.blake3.to_string(),
                        size,
                        mtime,
                        mode,
                    },
                    sha256: digests.sha256.map(|d| d.to_string()),
                    md5: digests.md5.map(|d| d.to_string()),
                    transport: Transport::Tcp,
                    path: want.landing.name.under(share.root()),
                    seconds,
                    replaced,
                    resent: None,
                    note: None,
                    transferred: size,
                    reused: 0,
                    up_to_date: false,
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
        let share = &self.local.share;
        let prepared = self.prepare_download(name, landing).await?;
        let mut assembly = match prepared {
            Prepared::UpToDate(done) => {
                return Ok(Downloaded {
                    transport: Transport::Udp,
                    ..*done
                });
            }
            Prepared::Whole => {
                return self
                    .download_whole_udp(name, landing, max_rate, progress)
                    .await;
            }
            Prepared::Assembling(assembly) => assembly,
        };
        let (sent, resent) = if assembly.complete() {
            (None, None)
        } else {
            let udp = DownloadUdp {
                ranges: Some(assembly.ranges()),
                ..DownloadUdp::new(name, landing, max_rate)
            };
            let request = Request::DownloadUdp(udp.clone());
            let mut written = Vec::new();
            let fetching = &*assembly;
            // Not retried on a new connection, as for TCP: what arrived is kept.
            let fetched = exchange!(self, &request, retry_if: false, |connection| {
                let sink = fetching.sink().map_err(CallError::Transfer)?;
                let (done, outcome) = udp.read_blocks(connection, share, sink, &mut *progress).await;
                written.extend(done);
                outcome
            });
            assembly.written(&written);
            match fetched {
                Ok(received) if *received.digests.blake3 == *assembly.remote_blake3() => {
                    (Some(received.digests), Some(received.resent))
                }
                Ok(received) => {
                    return Err(PeerError::Transfer(TransferError::Checksum {
                        name: name.clone(),
                        expected: assembly.remote_blake3().to_string(),
                        got: received.digests.blake3.to_string(),
                    }));
                }
                Err(PeerError::Udp(UdpError::Blocked(waited))) => {
                    drop(assembly);
                    let mut downloaded = self.download_tcp_to(name, landing, progress).await?;
                    downloaded.note = Some(format!(
                        "no UDP datagram arrived within {waited:?} (UDP blocked?); downloaded over TCP instead"
                    ));
                    return Ok(downloaded);
                }
                Err(e) if version_gone(&e) => {
                    assembly.discard();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        };
        let downloaded = delta::finish(share, landing, *assembly, sent)
            .await
            .map_err(PeerError::Transfer)?;
        Ok(Downloaded {
            transport: Transport::Udp,
            resent,
            ..downloaded
        })
    }

    /// Downloads `name` whole over UDP (falling back to TCP if UDP is blocked).
    async fn download_whole_udp(
        &self,
        name: &RelPath,
        landing: &Landing,
        max_rate: Option<u64>,
        progress: Progress<'_>,
    ) -> Result<Downloaded, PeerError> {
        let udp = DownloadUdp::new(name, landing, max_rate);
        let request = Request::DownloadUdp(udp.clone());
        let share = &self.local.share;
        let result = exchange!(self, &request, |connection| {
            udp.read_answer(connection, share, landing, &mut *progress)
                .await
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

    /// A stream for one request, on the session held with the peer (`true`: it was
    /// already up) or on a new one this box dials.
    async fn lease(&self) -> Result<(PeerConnection, bool), PeerError> {
        // Trust withdrawn meanwhile (`boxsync untrust`): this box no longer talks to it, in
        // either direction, on a session held or a new one.
        if !self.local.trust.is_trusted(&self.id) {
            self.local.links.close(&self.id);
            return Err(PeerError::Revoked {
                peer: self.id.clone(),
            });
        }
        if let Some(link) = self.link()
            && let Ok(stream) = link.mux.open().await
        {
            return Ok((Connection::new(stream), true));
        }
        let _dialing = self.dialing.lock().await;
        // Another request may have made the session while this one waited.
        if let Some(link) = self.link()
            && let Ok(stream) = link.mux.open().await
        {
            return Ok((Connection::new(stream), true));
        }
        let link = self.connect().await?;
        let stream = link.mux.open().await.map_err(|e| PeerError::Connection {
            addr: self.label.clone(),
            cause: ConnectionError::Io(io::Error::other(e)),
        })?;
        Ok((Connection::new(stream), false))
    }

    /// Returns a connection after a request; says whether the request should be retried on
    /// a fresh connection (a reused one turned out stale).
    fn release<T>(
        &self,
        connection: PeerConnection,
        reused: bool,
        outcome: &Result<T, PeerError>,
    ) -> bool {
        // Each request has a stream of its own: dropping it ends it (the session lives on).
        drop(connection);
        matches!(outcome, Err(e) if reused && e.may_be_stale())
    }

    /// Records a finished request in the box's log and hands back its result.
    fn finish_request<T>(
        &self,
        request: &Request,
        result: Option<Result<T, PeerError>>,
    ) -> Result<T, PeerError> {
        let result = result.unwrap_or_else(|| Err(protocol_error(&self.label, "no attempt made")));
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
                .record(Direction::Made, &self.label, &request.describe(), outcome);
        }
        result
    }

    /// Dials the peer and holds the session (or the one the peer dialed meanwhile, if the
    /// tie rule keeps that one). A failure is logged once per reason, and sync waits longer
    /// before each new try.
    async fn connect(&self) -> Result<Arc<PeerLink>, PeerError> {
        // The address given, where it was last reached (or said it listens, when it dialed
        // in), and where it announced itself on the LAN (unauthenticated, so last): tried
        // in that order, each once.
        let links = &self.local.links;
        let mut candidates: Vec<String> = Vec::new();
        let known = [
            self.given.clone(),
            links.address(&self.id).map(|r| r.addr),
            links.found(&self.id),
        ];
        for addr in known.into_iter().flatten() {
            if !candidates.contains(&addr) {
                candidates.push(addr);
            }
        }
        if candidates.is_empty() {
            return Err(PeerError::NotConnected {
                peer: self.id.clone(),
            });
        }
        let mut result = None;
        for addr in &candidates {
            let attempt = self.dial(addr).await.map(|link| (link, addr.clone()));
            // The box at the address given that answered and refused (wrong box, not
            // trusted) is not tried elsewhere: its answer stands. Elsewhere (a hint, an
            // announcement anyone can forge) the next address is tried.
            let answered = self.given.as_deref() == Some(addr.as_str())
                && matches!(
                    &attempt,
                    Err(PeerError::WrongBox { .. } | PeerError::NotTrusted { .. })
                );
            let done = attempt.is_ok() || answered;
            result = Some(attempt);
            if done {
                break;
            }
        }
        let result = result.unwrap_or_else(|| {
            Err(PeerError::NotConnected {
                peer: self.id.clone(),
            })
        });
        let shown = candidates.join(", ");
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok((link, addr)) => {
                if failures.count > 0 {
                    tracing::info!(peer = %self.label, %addr, "peer reached again");
                }
                *failures = Failures::default();
                drop(failures);
                links.remember(&self.id, &addr);
                Ok(link)
            }
            Err(e) => {
                let reason = e.to_string();
                if failures.reason.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(peer = %self.label, addr = %shown, error = %crate::text::for_log(&reason), "cannot reach peer; trying again later, with growing waits (reported once)");
                } else {
                    tracing::debug!(peer = %self.label, addr = %shown, error = %crate::text::for_log(&reason), "peer still unreachable");
                }
                let wait = FIRST_BACKOFF
                    .saturating_mul(1 << failures.count.min(6))
                    .min(MAX_BACKOFF);
                failures.count = failures.count.saturating_add(1);
                failures.retry_at = Some(Instant::now() + wait);
                failures.reason = Some(reason);
                Err(e)
            }
        }
    }

    async fn dial(&self, addr: &str) -> Result<Arc<PeerLink>, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(unreachable(describe_io(&e))),
            Ok(Ok(stream)) => stream,
        };
        self.local.tune(&stream);
        let links = &self.local.links;
        let dialed = protocol::dial_session(
            stream,
            &self.local.identity,
            &self.id,
            None,
            links.greeting(),
            links.inbound(),
        )
        .await
        .map_err(|source| match source {
            HandshakeError::WrongBox { expected, seen } => PeerError::WrongBox {
                addr: addr.to_string(),
                expected,
                seen,
            },
            HandshakeError::NotTrusted(_) => PeerError::NotTrusted {
                addr: addr.to_string(),
                peer: self.id.clone(),
                this: self.local.id.clone(),
            },
            cause => PeerError::Handshake {
                addr: addr.to_string(),
                cause,
            },
        })?;
        Ok(links.keep(PeerLink::new(dialed.mux, dialed.theirs)))
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

fn protocol_error(addr: &str, detail: &str) -> PeerError {
    PeerError::Protocol {
        addr: addr.to_string(),
        detail: detail.to_string(),
    }
}

/// Whether `error` says the version being downloaded is gone on the peer (it changed or
/// went): no later download can resume it.
fn version_gone(error: &PeerError) -> bool {
    matches!(
        error,
        PeerError::Transfer(TransferError::Remote {
            kind: ErrorKind::Changed | ErrorKind::NotFound,
            ..
        })
    )
}
