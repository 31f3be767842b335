//! The box's server: accepts peer connections on TCP, runs the handshake, then answers
//! requests until the peer leaves, the connection misbehaves or the box shuts down. The UDP
//! socket on the same port number carries UDP transfers (see [`crate::transfer::udp`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::history::Direction;
use crate::local::LocalBox;
use crate::protocol::{self, Connection, ConnectionError, ErrorKind, Response};
use crate::requests::notices::Notices;
use crate::requests::{self, Request, ServeContext};
use crate::transfer::udp::hub::UdpHub;

/// Most connections served at once; further peers wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection that sends no request for this long is closed (peers reconnect).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long shutdown waits for requests in progress before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The address could not be bound for TCP or UDP.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// The UDP socket could not be set up for transfers.
    #[error("cannot set up UDP on {addr}")]
    Udp {
        /// The address bound.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
}

/// A bound, not yet running server.
pub struct Server {
    /// This box.
    local: Arc<LocalBox>,
    /// The TCP listener.
    listener: TcpListener,
    /// The address bound (as the kernel reports it: the port chosen for port 0).
    addr: SocketAddr,
    /// The UDP socket on the same port, shared by all UDP transfers.
    hub: Arc<UdpHub>,
    /// What peers tell this box's sync, noted as requests arrive.
    notices: Arc<Notices>,
}

impl Server {
    /// Binds TCP and UDP on `addr`. With port 0 both get the same, free port number.
    pub async fn bind(local: Arc<LocalBox>, addr: SocketAddr) -> Result<Server, ServerError> {
        let bind_error = |source| ServerError::Bind { addr, source };
        // With port 0, the TCP port the kernel picks may be taken for UDP: try a few.
        let attempts = if addr.port() == 0 { 16 } else { 1 };
        let mut last_error = None;
        for _ in 0..attempts {
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let bound = listener.local_addr().map_err(bind_error)?;
            match UdpSocket::bind(bound).await {
                Ok(udp) => {
                    let max_rate = local.settings.max_udp_rate.map(|r| r as f64);
                    let hub = UdpHub::new(udp, max_rate).map_err(|source| ServerError::Udp {
                        addr: bound,
                        source,
                    })?;
                    return Ok(Server {
                        local,
                        listener,
                        addr: bound,
                        hub,
                        notices: Arc::default(),
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(bind_error(
            last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()),
        ))
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
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut handlers = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&limit).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = &mut shutdown => break,
            };
            // Reap finished handlers so the set does not grow without bound.
            while handlers.try_join_next().is_some() {}
            match accepted {
                Ok((stream, peer)) => {
                    let local = Arc::clone(&self.local);
                    let notices = Arc::clone(&self.notices);
                    let hub = Arc::clone(&hub);
                    let stop = stop_rx.clone();
                    handlers.spawn(async move {
                        handle_connection(local, notices, hub, stream, peer, stop).await;
                        drop(permit);
                    });
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
    }
}

/// Serves one peer connection from handshake to close; every way it can end is logged.
async fn handle_connection(
    local: Arc<LocalBox>,
    notices: Arc<Notices>,
    hub: Arc<UdpHub>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    local.tune(&stream);
    let mut connection = Connection::new(stream);
    let peer_id = match protocol::server_handshake(&mut connection, &local.id).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(%peer, reason = %crate::text::for_log(&e), "connection refused at handshake");
            return;
        }
    };
    tracing::debug!(%peer, %peer_id, "peer connected");
    notices.peer_connected();
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
                    let _ = connection.write_message(&refusal).await;
                }
                return;
            }
        };
        let description = request.describe();
        let routine = request.is_routine();
        let notice = request.is_notice();
        let cx = ServeContext {
            local: &local,
            hub: &hub,
            client_ip: peer.ip(),
            peer_id: &peer_id,
            notices: &notices,
        };
        match requests::serve(request, &cx, &mut connection).await {
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
