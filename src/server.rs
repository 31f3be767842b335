//! The box's server: accepts peer connections on TCP, authenticates them (TLS with the
//! caller's key; see [`crate::protocol::tls`]), serves only boxes it trusts, then answers
//! requests until the peer leaves, the connection misbehaves or the box shuts down. The UDP
//! socket on the same port number carries UDP transfers (see [`crate::transfer::udp`]).
//!
//! A caller holds nothing before it has authenticated: handshakes in progress are bounded
//! per source address and in total, each within [`protocol::HANDSHAKE_TIMEOUT`]; only a
//! trusted box then takes a connection slot, and no box more than its share of them.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::history::Direction;
use crate::invite;
use crate::links::PeerLink;
use crate::local::LocalBox;
use crate::protocol::{
    self, Connection, ConnectionError, ErrorKind, HandshakeError, Link, Response,
};
use crate::requests::notices::Notices;
use crate::requests::{self, Request, ServeContext};
use crate::transfer::udp::hub::UdpHub;
use crate::types::BoxId;

/// Most connections served at once (authenticated, trusted boxes).
pub const MAX_CONNECTIONS: usize = 256;

/// Most connections one box may hold, so that one trusted box cannot take every slot.
pub const MAX_CONNECTIONS_PER_BOX: usize = 32;

/// Most handshakes in progress at once, from anyone.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Most handshakes in progress from one source address.
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// A connection that sends no request for this long is closed (peers reconnect).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long shutdown waits for requests in progress before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start. Each message says the operating system's words itself
/// (so they are no error's source as well: a printer of the chain says them once).
#[derive(Debug, Error)]
pub enum ServerError {
    /// The address could not be bound for TCP or UDP.
    #[error("cannot listen on {addr}: {cause}{}", in_use_hint(cause))]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        cause: io::Error,
    },
    /// The box's key could not be set up for TLS.
    #[error("cannot set up TLS with this box's key: {0}")]
    Tls(rustls::Error),
    /// The notices kept for sync (`.boxsync/inbox/`) could not be read.
    #[error("cannot read sync's inbox {}: {cause}", path.display())]
    Inbox {
        /// The inbox folder.
        path: std::path::PathBuf,
        /// What the operating system said.
        cause: io::Error,
    },
    /// The UDP socket could not be set up for transfers.
    #[error("cannot set up UDP on {addr}: {cause}")]
    Udp {
        /// The address bound.
        addr: SocketAddr,
        /// What the operating system said.
        cause: io::Error,
    },
}

/// By hand rather than `#[from]`: the message quotes TLS's error (see [`ServerError`]).
impl From<rustls::Error> for ServerError {
    fn from(error: rustls::Error) -> ServerError {
        ServerError::Tls(error)
    }
}

/// A port in use gets a way out: another port, or any free one.
fn in_use_hint(cause: &io::Error) -> &'static str {
    match cause.kind() {
        io::ErrorKind::AddrInUse => {
            " (another program, or another box, listens there: pick another port, or -l 127.0.0.1:0 for any free one)"
        }
        _ => "",
    }
}

/// Folder under the state folder where acknowledged `installed` notices wait for sync.
pub const INBOX_DIR: &str = "inbox";

/// The box's notices, with those a crash left in its inbox pending again.
fn durable_notices(local: &LocalBox) -> Result<Arc<Notices>, ServerError> {
    let path = local.share.state_dir().join(INBOX_DIR);
    match Notices::durable(&path) {
        Ok(notices) => Ok(Arc::new(notices)),
        Err(cause) => Err(ServerError::Inbox { path, cause }),
    }
}

/// A bound, not yet running server.
pub struct Server {
    /// This box.
    local: Arc<LocalBox>,
    /// The TCP listener; `None` for a box that only dials out (nobody can connect to it:
    /// it serves its peers over the sessions it dials).
    listener: Option<TcpListener>,
    /// The address bound (as the kernel reports it: the port chosen for port 0).
    addr: SocketAddr,
    /// The UDP socket on the same port, shared by all UDP transfers.
    hub: Arc<UdpHub>,
    /// What peers tell this box's sync, noted as requests arrive.
    notices: Arc<Notices>,
    /// TLS with this box's key.
    tls: Arc<rustls::ServerConfig>,
}

impl Server {
    /// Binds TCP and UDP on `addr`. With port 0 both get the same, free port number.
    pub async fn bind(local: Arc<LocalBox>, addr: SocketAddr) -> Result<Server, ServerError> {
        let tls = protocol::tls::server_config(&local.identity)?;
        let notices = durable_notices(&local)?;
        let bind_error = |cause| ServerError::Bind { addr, cause };
        // With port 0, the TCP port the kernel picks may be taken for UDP: try a few.
        let attempts = if addr.port() == 0 { 16 } else { 1 };
        let mut last_error = None;
        for _ in 0..attempts {
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let bound = listener.local_addr().map_err(bind_error)?;
            match UdpSocket::bind(bound).await {
                Ok(udp) => {
                    let max_rate = local.settings.max_udp_rate.map(|r| r as f64);
                    let hub = UdpHub::new(udp, max_rate)
                        .map_err(|cause| ServerError::Udp { addr: bound, cause })?;
                    // For `boxsync invite`: where this box listens (best effort).
                    let _ = std::fs::write(
                        local.share.state_dir().join(invite::LISTEN_FILE),
                        format!("{bound}\n"),
                    );
                    local.links.set_listen(Some(bound.port()));
                    return Ok(Server {
                        local,
                        listener: Some(listener),
                        addr: bound,
                        hub,
                        notices: Arc::clone(&notices),
                        tls,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(bind_error(
            last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()),
        ))
    }

    /// A server that listens nowhere: it serves peers only over the sessions this box
    /// dials (a laptop behind NAT). UDP transfers, which go to where a session came from,
    /// are never served from it.
    pub async fn unlistening(local: Arc<LocalBox>) -> Result<Server, ServerError> {
        let tls = protocol::tls::server_config(&local.identity)?;
        let notices = durable_notices(&local)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|cause| ServerError::Bind { addr, cause })?;
        let bound = udp
            .local_addr()
            .map_err(|cause| ServerError::Bind { addr, cause })?;
        let hub =
            UdpHub::new(udp, None).map_err(|cause| ServerError::Udp { addr: bound, cause })?;
        local.links.set_listen(None);
        Ok(Server {
            local,
            listener: None,
            addr: bound,
            hub,
            notices,
            tls,
        })
    }

    /// Whether this server accepts connections (else it serves only sessions it dialed).
    pub fn listens(&self) -> bool {
        self.listener.is_some()
    }

    /// Where this server notes what peers tell the box's sync ([`crate::sync::start`]
    /// takes them from there).
    pub fn notices(&self) -> Arc<Notices> {
        Arc::clone(&self.notices)
    }

    /// The address peers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then stops accepting, tells every connection to
    /// finish and waits (briefly) for them.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let hub = self.hub;
        let hub_task = tokio::spawn(Arc::clone(&hub).run(stop_rx.clone()));
        let limits = Arc::new(Limits {
            refusals: RefusalLog::default(),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            pending: Counts::new(MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_SOURCE),
            per_box: Counts::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_BOX),
        });
        let mut handlers = JoinSet::new();
        let mut inbound = self.local.links.serve_inbound();
        // However the server ends (shut down, or its task aborted), its sessions end with it:
        // a peer must not keep a session whose streams nobody serves any more.
        let _sessions = EndSessions(Arc::clone(&self.local));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = accept(self.listener.as_ref()) => accepted,
                Some(stream) = inbound.recv() => {
                    while handlers.try_join_next().is_some() {}
                    let served = Served {
                        local: Arc::clone(&self.local),
                        notices: Arc::clone(&self.notices),
                        hub: Arc::clone(&hub),
                        tls: Arc::clone(&self.tls),
                        limits: Arc::clone(&limits),
                    };
                    handlers.spawn(handle_stream(served, stream, stop_rx.clone()));
                    continue;
                }
                _ = &mut shutdown => break,
            };
            // Reap finished handlers so the set does not grow without bound.
            while handlers.try_join_next().is_some() {}
            match accepted {
                Ok((stream, peer)) => {
                    let Some(pending) = Counts::admit(&limits.pending, peer.ip()) else {
                        tracing::debug!(%peer, "too many handshakes in progress: connection closed");
                        continue;
                    };
                    let served = Served {
                        local: Arc::clone(&self.local),
                        notices: Arc::clone(&self.notices),
                        hub: Arc::clone(&hub),
                        tls: Arc::clone(&self.tls),
                        limits: Arc::clone(&limits),
                    };
                    let stop = stop_rx.clone();
                    handlers.spawn(handle_connection(served, stream, peer, pending, stop));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while handlers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            handlers.abort_all();
        }
        // The port is free again once the UDP side has let go of its socket too.
        let _ = hub_task.await;
        drop(hub);
        self.local.share.flush_cache();
        // No longer listening: `boxsync invite` falls back to `--listen`.
        if self.listener.is_some() {
            let _ = std::fs::remove_file(self.local.share.state_dir().join(invite::LISTEN_FILE));
        }
    }
}

/// Ends a box's sessions when dropped (the server stopped): peers see them end at once,
/// not at their next keepalive, and dial again.
struct EndSessions(Arc<LocalBox>);

impl Drop for EndSessions {
    fn drop(&mut self) {
        self.0.links.stop_inbound();
        self.0.links.close_all();
    }
}

/// The next caller, or never when there is no listener.
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// What every connection's handler shares.
struct Served {
    /// This box.
    local: Arc<LocalBox>,
    /// Where notices for sync go.
    notices: Arc<Notices>,
    /// The UDP side.
    hub: Arc<UdpHub>,
    /// TLS with this box's key.
    tls: Arc<rustls::ServerConfig>,
    /// Slots and counts.
    limits: Arc<Limits>,
}

/// Log lines about refused callers are capped at this many per [`REFUSAL_WINDOW`]: a
/// caller that needs no key (a port scan, an old client in a loop) cannot flood the log.
const REFUSALS_LOGGED: u32 = 20;

/// The window over which [`REFUSALS_LOGGED`] applies.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// Counts refusal log lines per window; those over the cap are counted, and the next line
/// logged says how many were left out. A std `Mutex`: nothing waits while holding it.
#[derive(Default)]
struct RefusalLog {
    /// Start of the current window, lines logged in it, and lines left out since the last
    /// one logged.
    state: Mutex<Option<(std::time::Instant, u32, u64)>>,
}

impl RefusalLog {
    /// Whether to log one more refusal now; if so, how many were left out before it.
    fn admit(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, logged, left_out) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= REFUSAL_WINDOW {
            *start = now;
            *logged = 0;
        }
        if *logged >= REFUSALS_LOGGED {
            *left_out += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(left_out))
    }
}

/// The server's bounds on what callers hold.
struct Limits {
    /// Refusals logged.
    refusals: RefusalLog,
    /// Connection slots, taken only by trusted, authenticated boxes.
    slots: Arc<Semaphore>,
    /// Handshakes in progress, per source address.
    pending: Arc<Counts<IpAddr>>,
    /// Connections held, per box.
    per_box: Arc<Counts<BoxId>>,
}

/// Counts of things held per key, bounded per key and in total. A std `Mutex`: nothing
/// waits while holding it.
struct Counts<K> {
    /// Most held in total.
    total_limit: usize,
    /// Most held under one key.
    each_limit: usize,
    /// The total held, and what each key holds.
    held: Mutex<(usize, HashMap<K, usize>)>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(total_limit: usize, each_limit: usize) -> Arc<Counts<K>> {
        Arc::new(Counts {
            total_limit,
            each_limit,
            held: Mutex::default(),
        })
    }

    /// Takes one for `key`, if neither bound is reached; it is given back when the guard
    /// drops.
    fn admit(counts: &Arc<Counts<K>>, key: K) -> Option<Held<K>> {
        let mut held = counts.held.lock().unwrap_or_else(|e| e.into_inner());
        let (total, each) = &mut *held;
        let mine = each.entry(key.clone()).or_insert(0);
        if *total >= counts.total_limit || *mine >= counts.each_limit {
            if *mine == 0 {
                each.remove(&key);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Held {
            counts: Arc::clone(counts),
            key,
        })
    }
}

/// One held in a [`Counts`], given back on drop.
struct Held<K: Hash + Eq + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self.counts.held.lock().unwrap_or_else(|e| e.into_inner());
        let (total, each) = &mut *held;
        *total = total.saturating_sub(1);
        if let Some(mine) = each.get_mut(&self.key) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                each.remove(&self.key);
            }
        }
    }
}

/// Authenticates one caller and, if it is trusted and there is room, serves it until it
/// leaves; every way it can end is logged.
async fn handle_connection(
    served: Served,
    stream: TcpStream,
    peer: SocketAddr,
    pending: Held<IpAddr>,
    mut stop: watch::Receiver<bool>,
) {
    let Served {
        local,
        notices,
        hub: _,
        tls,
        limits,
    } = served;
    local.tune(&stream);
    let protocol::Caller {
        mut connection,
        id: peer_id,
        invite,
        theirs: caller_greeting,
    } = match protocol::accept(stream, tls).await {
        Ok(caller) => caller,
        Err(e) => {
            match e {
                HandshakeError::KeyRefused | HandshakeError::Plaintext => {
                    if let Some(left_out) = limits.refusals.admit() {
                        tracing::warn!(%peer, reason = %crate::text::for_log(&e), left_out, "connection refused at handshake")
                    }
                }
                _ => {
                    tracing::debug!(%peer, reason = %crate::text::for_log(&e), "connection refused at handshake")
                }
            }
            return;
        }
    };
    drop(pending);
    // A caller with an invitation is let in once it is redeemed, after it has a slot (so
    // that a busy box does not spend the invitation on a caller it then turns away).
    let joining = match invite {
        Some(secret) if !local.trust.is_trusted(&peer_id) => Some(secret),
        _ => None,
    };
    if joining.is_none() && !local.trust.is_trusted(&peer_id) {
        if let Some(left_out) = limits.refusals.admit() {
            tracing::warn!(
                %peer,
                box_id = %peer_id,
                left_out,
                "box {peer_id} at {peer} is not trusted here: run `boxsync trust {peer_id}` on this box"
            );
        }
        let message = not_trusted(&local.id, &peer_id);
        protocol::refuse(&mut connection, ErrorKind::NotTrusted, message).await;
        return;
    }
    if let Some(secret) = joining {
        let state = local.share.state_dir();
        if !invite::redeem(&state, &secret) {
            if let Some(left_out) = limits.refusals.admit() {
                tracing::warn!(%peer, box_id = %peer_id, left_out, "refused an invitation that is used, expired or unknown");
            }
            let message = format!(
                "box {} refused the invitation: it is used, expired or unknown; ask for a new one with `boxsync invite`",
                local.id
            );
            protocol::refuse(&mut connection, ErrorKind::NotTrusted, message).await;
            return;
        }
        if let Err(e) = local.trust.add(&peer_id, None) {
            tracing::warn!(%peer, box_id = %peer_id, error = %e, "box joined with an invitation, but its trust could not be kept");
            let message = format!("box {} cannot keep its trust in this box: {e}", local.id);
            protocol::refuse(&mut connection, ErrorKind::Internal, message).await;
            return;
        }
        tracing::info!(%peer, box_id = %peer_id, "box joined with an invitation: trusted for good");
    }
    let theirs = caller_greeting;
    let mux = match protocol::welcome(
        protocol::Caller {
            connection,
            id: peer_id.clone(),
            invite: None,
            theirs,
        },
        local.links.greeting(),
        local.links.inbound(),
    )
    .await
    {
        Ok(mux) => mux,
        Err(e) => {
            tracing::debug!(%peer, reason = %e, "session not started");
            return;
        }
    };
    tracing::debug!(%peer, %peer_id, "peer connected");
    let link = local.links.keep(PeerLink::new(mux, theirs));
    if let Some(addr) = link.peer_listens_at() {
        local.links.remember(&peer_id, &addr);
    }
    notices.peer_connected();
    // The session lives on in the table; its streams come through the server's inbound
    // channel. This handler waits for it to end only so that shutdown sees it.
    tokio::select! {
        _ = link.mux.wait_closed() => {}
        _ = stop.changed() => {}
    }
}

/// Serves one stream a peer opened on its session: the same limits as a connection of its
/// own, then requests until it ends.
async fn handle_stream(served: Served, link: Link, mut stop: watch::Receiver<bool>) {
    let Served {
        local,
        notices,
        hub,
        limits,
        ..
    } = served;
    let peer_id = link.info().peer.clone();
    let peer = link.info().peer_addr;
    let mut connection = Connection::new(link);
    if !local.trust.is_trusted(&peer_id) {
        tracing::warn!(%peer, box_id = %peer_id, "box is no longer trusted: session closed");
        let message = not_trusted(&local.id, &peer_id);
        protocol::refuse(&mut connection, ErrorKind::NotTrusted, message).await;
        local.links.close(&peer_id);
        return;
    }
    let Ok(_slot) = Arc::clone(&limits.slots).try_acquire_owned() else {
        if let Some(left_out) = limits.refusals.admit() {
            tracing::warn!(%peer, box_id = %peer_id, left_out, "all {MAX_CONNECTIONS} connection slots taken: request turned away");
        }
        let message = format!(
            "box {} is serving its most connections ({MAX_CONNECTIONS}): try again later",
            local.id
        );
        protocol::refuse(&mut connection, ErrorKind::Unavailable, message).await;
        return;
    };
    let Some(_share) = Counts::admit(&limits.per_box, peer_id.clone()) else {
        if let Some(left_out) = limits.refusals.admit() {
            tracing::warn!(%peer, box_id = %peer_id, left_out, "box holds {MAX_CONNECTIONS_PER_BOX} streams already: request turned away");
        }
        let message = format!(
            "box {} already serves {MAX_CONNECTIONS_PER_BOX} streams of box {peer_id}: close some first",
            local.id
        );
        protocol::refuse(&mut connection, ErrorKind::Unavailable, message).await;
        return;
    };
    serve_requests(
        &local,
        &notices,
        &hub,
        &mut connection,
        peer,
        &peer_id,
        &mut stop,
    )
    .await;
}

/// What an untrusted caller is told: its ID and the command that would let it in.
fn not_trusted(this: &BoxId, caller: &BoxId) -> String {
    format!("box {this} does not trust box {caller}: run `boxsync trust {caller}` on box {this}")
}

/// Answers requests on an admitted connection until it ends.
async fn serve_requests(
    local: &Arc<LocalBox>,
    notices: &Arc<Notices>,
    hub: &Arc<UdpHub>,
    connection: &mut Connection<Link>,
    peer: SocketAddr,
    peer_id: &BoxId,
    stop: &mut watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(IDLE_TIMEOUT, connection.read_message::<Request>()) => next,
            _ = stop.changed() => {
                tracing::debug!(%peer, "closing connection for shutdown");
                return;
            }
        };
        let request = match next {
            Err(_) => {
                tracing::debug!(%peer, "closing idle connection");
                return;
            }
            Ok(Ok(None)) => {
                tracing::debug!(%peer, "peer closed the connection");
                return;
            }
            Ok(Ok(Some(request))) => request,
            // A client ends each exchange by dropping its stream, which yamux resets.
            Ok(Err(ConnectionError::Io(e))) if e.kind() == io::ErrorKind::ConnectionReset => {
                tracing::debug!(%peer, "peer closed the stream");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, reason = %crate::text::for_log(&e), "closing connection");
                if matches!(
                    e,
                    ConnectionError::BadMessage(_) | ConnectionError::UnexpectedData
                ) {
                    let refusal = Response::Error {
                        kind: ErrorKind::BadRequest,
                        message: format!("request not understood: {e}"),
                    };
                    let _ = tokio::time::timeout(
                        protocol::HANDSHAKE_TIMEOUT,
                        connection.write_message(&refusal),
                    )
                    .await;
                }
                return;
            }
        };
        // Trust withdrawn while connected (`boxsync untrust`) ends the connection here.
        if !local.trust.is_trusted(peer_id) {
            tracing::warn!(%peer, box_id = %peer_id, "box is no longer trusted: connection closed");
            let message = not_trusted(&local.id, peer_id);
            protocol::refuse(connection, ErrorKind::NotTrusted, message).await;
            local.links.close(peer_id);
            return;
        }
        let description = request.describe();
        tracing::debug!(%peer, request = %crate::text::for_log(&description), "request");
        let routine = request.is_routine();
        if matches!(&request, Request::HashCheckall(c) if c.unless.is_some()) {
            // A sync round of the peer's reads the folder's hashes last: it is pulling.
            notices.note_pulled(peer_id);
        }
        let notice = request.is_notice();
        let cx = ServeContext {
            local,
            hub,
            client_ip: peer.ip(),
            peer_id,
            notices,
        };
        match requests::serve(request, &cx, connection).await {
            Ok(Ok(())) if routine => {}
            Ok(outcome) => {
                local
                    .history
                    .record(Direction::Served, &peer.to_string(), &description, outcome);
            }
            // A notice whose `ack` cannot be sent: the peer left; nothing worth a line.
            Err(_) if notice => return,
            Err(e) => {
                local.history.record(
                    Direction::Served,
                    &peer.to_string(),
                    &description,
                    Err(e.to_string()),
                );
                tracing::warn!(%peer, reason = %crate::text::for_log(&e), "connection failed during a request");
                return;
            }
        }
    }
}
