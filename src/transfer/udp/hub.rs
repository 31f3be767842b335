//! The server's UDP side: one socket on the box's port, shared by every UDP transfer it
//! serves. Incoming datagrams are routed to their session by the id in their clear header;
//! the session opens them under its keys and drops (and counts) what does not authenticate,
//! so nothing unauthenticated is ever answered, and a datagram for no live session is
//! dropped here. The number of sessions and the rate of each are bounded, and a session
//! ends by itself, freeing its slot, when its client stays silent (see
//! [`super::proto::sender::HELLO_TIMEOUT`] and [`super::proto::sender::SILENCE_TIMEOUT`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::sender::{self, SenderPlan, SenderStats};
use super::socket::{FastSocket, ReceiveBuffers};

/// Most UDP transfers a server runs at once; more are refused with a clear error.
pub const MAX_SESSIONS: usize = 16;

/// Datagrams queued per session before further ones are dropped (UDP semantics).
const SESSION_QUEUE: usize = 256;

/// The server's UDP socket and its sessions.
pub struct UdpHub {
    /// The socket on the box's port.
    socket: Arc<FastSocket>,
    /// Where each live session's datagrams go. A std `Mutex`: held only to look up or
    /// change an entry, never across an `.await`.
    sessions: Mutex<HashMap<u64, Route>>,
    /// Session slots.
    slots: Arc<Semaphore>,
    /// The box-wide cap on each session's rate, bytes per second.
    max_rate: Option<f64>,
}

/// Where a session's datagrams go: the session's queue, still sealed, with their sender.
type Route = mpsc::Sender<(Vec<u8>, SocketAddr)>;

/// Why a UDP session could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// All slots taken.
    #[error("this box is already serving {MAX_SESSIONS} UDP transfers; try again or use tcp")]
    Busy,
}

/// A running sending session; dropping it does not stop it, [`Session::finish`] does.
pub struct Session {
    /// Tells the sender to stop.
    stop: watch::Sender<bool>,
    /// The sender task.
    task: JoinHandle<SenderStats>,
    /// How the task ended, once [`Session::ended`] saw it end.
    result: Option<SenderStats>,
    /// The routing entry's key.
    id: u64,
    /// The hub, to remove the routing entry.
    hub: Arc<UdpHub>,
    /// Holds the slot while the session lives.
    _slot: OwnedSemaphorePermit,
}

impl Session {
    /// Waits until the sender ends by itself (complete, or its client silent); returns how
    /// it went. Cancel-safe: the TCP side races it against the client's messages.
    pub async fn ended(&mut self) -> SenderStats {
        if let Some(stats) = self.result {
            return stats;
        }
        let stats = (&mut self.task).await.unwrap_or_default();
        self.result = Some(stats);
        stats
    }

    /// Stops the sender (if still running) and returns how it went; frees the slot.
    pub async fn finish(mut self) -> SenderStats {
        let _ = self.stop.send(true);
        let stats = self.ended().await;
        self.hub.lock_sessions().remove(&self.id);
        stats
    }
}

impl UdpHub {
    /// Wraps the server's UDP socket; `max_rate` caps every session (bytes per second).
    pub fn new(socket: UdpSocket, max_rate: Option<f64>) -> std::io::Result<Arc<UdpHub>> {
        Ok(Arc::new(UdpHub {
            socket: Arc::new(FastSocket::new(socket)?),
            sessions: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_SESSIONS)),
            max_rate,
        }))
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Route>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Receives datagrams and routes them to their sessions until `stop` fires.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut buffers = ReceiveBuffers::for_socket(&self.socket);
        loop {
            let received = tokio::select! {
                received = self.socket.recv(&mut buffers) => received,
                _ = stop.changed() => return,
            };
            let slots = match received {
                Ok(slots) => slots,
                // ICMP errors from earlier sends surface here on Linux; they concern one
                // session, which notices by itself.
                Err(_) => continue,
            };
            for (datagram, from) in buffers.datagrams(slots) {
                if datagram.len() < 12 {
                    continue;
                }
                let mut id = [0u8; 8];
                id.copy_from_slice(&datagram[4..12]);
                let session = u64::from_be_bytes(id);
                let route = self.lock_sessions().get(&session).cloned();
                if let Some(route) = route {
                    let _ = route.try_send((datagram.to_vec(), from));
                }
            }
        }
    }

    /// Starts a sending session. `requested_rate` is the client's own cap, if any.
    pub fn start(
        self: &Arc<Self>,
        mut plan: SenderPlan,
        requested_rate: Option<f64>,
    ) -> Result<Session, HubError> {
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| HubError::Busy)?;
        plan.max_rate = match (self.max_rate, requested_rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (route, incoming) = mpsc::channel(SESSION_QUEUE);
        self.lock_sessions().insert(plan.session, route);
        let (stop, stopped) = watch::channel(false);
        let id = plan.session;
        let task = tokio::spawn(sender::run(
            plan,
            Arc::clone(&self.socket),
            incoming,
            stopped,
        ));
        Ok(Session {
            stop,
            task,
            result: None,
            id,
            hub: Arc::clone(self),
            _slot: slot,
        })
    }
}
