//! The box's server: accepts peer connections on TCP, runs the handshake, then answers
//! requests until the peer leaves, the connection misbehaves or the box shuts down. The UDP
//! socket on the same port number carries UDP transfers (see [`crate::transfer::udp`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::history::Direction;
use crate::local::{LocalBox, Served};
use crate::protocol::message::{InstalledVersion, MAX_BATCH_NAMES};
use crate::protocol::{self, Connection, ConnectionError, ErrorKind, Request, Response};
use crate::share::{DigestSet, FileHash};
use crate::transfer::tcp;
use crate::transfer::udp::{self, hub::UdpHub};

/// Most connections served at once; further peers wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection that sends no request for this long is closed (peers reconnect).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long shutdown waits for requests in progress before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serialized size at which a batch of entries or hashes is sent and a new one begun.
const BATCH_BYTES: usize = 256 * 1024;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The address could not be bound for TCP or UDP.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
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
    /// The UDP socket on the same port (reserved for UDP transfers).
    udp: UdpSocket,
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
            let port = listener.local_addr().map_err(bind_error)?.port();
            match UdpSocket::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(udp) => {
                    return Ok(Server {
                        local,
                        listener,
                        udp,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(bind_error(
            last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()),
        ))
    }

    /// The address peers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` completes, then stops accepting, tells every connection to
    /// finish and waits (briefly) for them.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let max_rate = self.local.settings.max_udp_rate.map(|r| r as f64);
        let hub = match UdpHub::new(self.udp, max_rate) {
            Ok(hub) => hub,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the UDP socket; not serving");
                return;
            }
        };
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
                    let hub = Arc::clone(&hub);
                    let stop = stop_rx.clone();
                    handlers.spawn(async move {
                        handle_connection(local, hub, stream, peer, stop).await;
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
            tracing::info!(%peer, reason = %e, "connection refused at handshake");
            return;
        }
    };
    tracing::debug!(%peer, peer_id, "peer connected");
    local.peer_connected();
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
                tracing::info!(%peer, reason = %e, "closing connection");
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
        // Sync's notices are too frequent to log as requests.
        let notice = match request {
            Request::Changed => {
                // A peer's folder changed: wake our sync.
                local.changes.notify_one();
                true
            }
            Request::Installed {
                ref name,
                ref blake3,
                size,
                mtime,
                mode,
            } => {
                let version = Served {
                    name: name.clone(),
                    blake3: blake3.clone(),
                    size,
                    mtime,
                    mode,
                };
                local.note_installed(&peer_id, version);
                true
            }
            Request::InstalledMany { ref versions } if versions.len() <= MAX_BATCH_NAMES => {
                for version in versions {
                    local.note_installed(&peer_id, served(version));
                }
                true
            }
            _ => false,
        };
        if notice {
            if connection.write_message(&Response::Ack).await.is_err() {
                return;
            }
            continue;
        }
        let description = request.describe();
        let routine = request.is_routine();
        match serve(&local, &hub, &mut connection, request, peer.ip(), &peer_id).await {
            Ok(Ok(())) if routine => {}
            Ok(outcome) => {
                local
                    .history
                    .record(Direction::Served, &peer.to_string(), &description, outcome);
            }
            Err(e) => {
                local.history.record(
                    Direction::Served,
                    &peer.to_string(),
                    &description,
                    Err(e.to_string()),
                );
                tracing::info!(%peer, reason = %e, "connection failed during a request");
                return;
            }
        }
    }
}

/// Answers one request. The outer `Err` means the connection failed; the inner result is
/// the request's own outcome, for the log.
async fn serve(
    local: &Arc<LocalBox>,
    hub: &Arc<UdpHub>,
    connection: &mut Connection<TcpStream>,
    request: Request,
    client_ip: std::net::IpAddr,
    peer_id: &str,
) -> Result<Result<(), String>, ConnectionError> {
    let share = &local.share;
    match request {
        Request::Index {
            filter,
            unless: None,
        } => {
            let matcher = match filter.compile() {
                Ok(matcher) => matcher,
                Err(e) => return refuse(connection, ErrorKind::BadRequest, e.to_string()).await,
            };
            match share.index().await {
                Ok(entries) => {
                    let entries = entries.into_iter().filter(|e| matcher.matches(e));
                    send_batches(connection, entries, None, entries_response).await?;
                    Ok(Ok(()))
                }
                Err(e) => report(connection, &e).await,
            }
        }
        Request::Index {
            filter,
            unless: Some(unless),
        } => {
            let matcher = match filter.compile() {
                Ok(matcher) => matcher,
                Err(e) => return refuse(connection, ErrorKind::BadRequest, e.to_string()).await,
            };
            match share.recent_snapshot().await {
                Ok(snapshot) if snapshot.version == unless => unchanged(connection).await,
                Ok(snapshot) => {
                    let entries: Vec<_> = snapshot
                        .entries()
                        .filter(|e| matcher.matches(e))
                        .cloned()
                        .collect();
                    let version = Some(snapshot.version.clone());
                    send_batches(connection, entries.into_iter(), version, entries_response)
                        .await?;
                    Ok(Ok(()))
                }
                Err(e) => report(connection, &e).await,
            }
        }
        Request::HashVerify { name } => match share.hash(&name).await {
            Ok(hash) => {
                send_batches(connection, [hash].into_iter(), None, hashes_response).await?;
                Ok(Ok(()))
            }
            Err(e) => report(connection, &e).await,
        },
        Request::HashCheckall { unless: None } => match share.hash_all().await {
            Ok(hashes) => {
                send_batches(connection, hashes.into_iter(), None, hashes_response).await?;
                Ok(Ok(()))
            }
            Err(e) => report(connection, &e).await,
        },
        Request::HashCheckall {
            unless: Some(unless),
        } => match share.recent_snapshot().await {
            Ok(snapshot) if snapshot.version == unless => unchanged(connection).await,
            Ok(snapshot) => {
                let hashes: Vec<_> = snapshot.hashes().cloned().collect();
                let version = Some(snapshot.version.clone());
                send_batches(connection, hashes.into_iter(), version, hashes_response).await?;
                Ok(Ok(()))
            }
            Err(e) => report(connection, &e).await,
        },
        Request::Download { name, blake3_only } => {
            let digests = DigestSet::from_blake3_only(blake3_only);
            let outcome = tcp::send_file(connection, share, &name, digests).await?;
            share.persist_cache();
            Ok(outcome
                .map(|served| local.note_served(peer_id, served))
                .map_err(|e| e.to_string()))
        }
        Request::DownloadMany { names } => {
            if names.len() > MAX_BATCH_NAMES {
                return refuse(connection, ErrorKind::BadRequest, too_many(names.len())).await;
            }
            let count = names.len();
            let mut failures = 0;
            let mut first_failure = None;
            for outcome in tcp::send_files(connection, share, names, DigestSet::Blake3).await? {
                match outcome {
                    Ok(served) => local.note_served(peer_id, served),
                    Err(e) => {
                        failures += 1;
                        first_failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            connection.write_message(&Response::BatchEnd).await?;
            share.persist_cache();
            Ok(match first_failure {
                None => Ok(()),
                Some(first) => Err(format!(
                    "{failures} of {count} files failed, the first: {first}"
                )),
            })
        }
        Request::DownloadUdp {
            name,
            max_rate,
            blake3_only,
        } => {
            let wanted = udp::serve::Wanted {
                max_rate,
                digests: DigestSet::from_blake3_only(blake3_only),
            };
            let outcome =
                udp::serve::serve_download(connection, share, hub, &name, wanted, client_ip)
                    .await?;
            Ok(outcome.map(|served| local.note_served(peer_id, served)))
        }
        Request::Changed | Request::Installed { .. } => {
            connection.write_message(&Response::Ack).await?;
            Ok(Ok(()))
        }
        // Only a list over the limit gets here (shorter ones are notices, answered above).
        Request::InstalledMany { versions } => {
            refuse(connection, ErrorKind::BadRequest, too_many(versions.len())).await
        }
        Request::UdpFinish { .. } => {
            refuse(
                connection,
                ErrorKind::BadRequest,
                "no UDP transfer is running on this connection".to_string(),
            )
            .await
        }
    }
}

/// A box's `installed` notice as the record of what was served keeps it.
fn served(version: &InstalledVersion) -> Served {
    Served {
        name: version.name.clone(),
        blake3: version.blake3.clone(),
        size: version.size,
        mtime: version.mtime,
        mode: version.mode,
    }
}

fn too_many(count: usize) -> String {
    format!("{count} files in one request; at most {MAX_BATCH_NAMES} are served")
}

fn hashes_response(hashes: Vec<FileHash>, more: bool, version: Option<String>) -> Response {
    Response::Hashes {
        hashes,
        more,
        version,
    }
}

fn entries_response(
    entries: Vec<crate::share::Entry>,
    more: bool,
    version: Option<String>,
) -> Response {
    Response::Entries {
        entries,
        more,
        version,
    }
}

/// Answers a conditional request whose version still holds.
async fn unchanged<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
) -> Result<Result<(), String>, ConnectionError> {
    connection.write_message(&Response::Unchanged).await?;
    Ok(Ok(()))
}

async fn refuse<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    kind: ErrorKind,
    message: String,
) -> Result<Result<(), String>, ConnectionError> {
    connection
        .write_message(&Response::Error {
            kind,
            message: message.clone(),
        })
        .await?;
    Ok(Err(message))
}

async fn report<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    error: &crate::share::ShareError,
) -> Result<Result<(), String>, ConnectionError> {
    connection
        .write_message(&tcp::error_response(error))
        .await?;
    Ok(Err(error.to_string()))
}

/// An upper bound of an item's JSON size, known without serializing it: listings are sent
/// every sync round, and serializing each item twice (once to measure) doubled their cost.
trait WireSize {
    /// At most this many bytes of JSON.
    fn max_wire_len(&self) -> usize;
}

/// JSON escapes a byte in at most six (`\u001f`); everything else in these items is short.
const FIXED_FIELDS: usize = 256;

impl WireSize for crate::share::Entry {
    fn max_wire_len(&self) -> usize {
        6 * (self.name.as_str().len() + self.file_type.len()) + FIXED_FIELDS
    }
}

impl WireSize for FileHash {
    fn max_wire_len(&self) -> usize {
        6 * self.name.as_str().len() + 64 + 32 + FIXED_FIELDS
    }
}

/// Sends `items` as a series of responses, each under [`BATCH_BYTES`] serialized, the last
/// one marked `more: false` and carrying `version` (an empty list is one empty batch).
async fn send_batches<S, T>(
    connection: &mut Connection<S>,
    items: impl Iterator<Item = T>,
    version: Option<String>,
    response: impl Fn(Vec<T>, bool, Option<String>) -> Response,
) -> Result<(), ConnectionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: Serialize + WireSize,
{
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut items = items.peekable();
    while let Some(item) = items.next() {
        batch_bytes += item.max_wire_len() + 1;
        batch.push(item);
        if batch_bytes >= BATCH_BYTES && items.peek().is_some() {
            connection
                .write_message(&response(std::mem::take(&mut batch), true, None))
                .await?;
            batch_bytes = 0;
        }
    }
    connection
        .write_message(&response(batch, false, version))
        .await
}
