//! This box: its identity, its shared folder and its request log, shared by the server and
//! the client side of one process.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::history::History;
use crate::share::{Share, ShareError};
use crate::types::{BoxId, FileVersion};

/// File under the state folder that keeps the box id across restarts.
const BOX_ID_FILE: &str = "box-id";

/// File under the state folder that holds the request log.
const HISTORY_FILE: &str = "history.jsonl";

/// Tunables of a box that its server and clients apply to their sockets.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// TCP congestion control for this box's TCP connections (`None`: the kernel default).
    pub tcp_congestion: Option<String>,
    /// Cap on the rate of each UDP transfer this box serves or asks for, bytes per second.
    pub max_udp_rate: Option<u64>,
}

/// A version of a file this box sent to a peer: sync uses it to recognise, in the peer's
/// folder, a version that came from here (and is therefore no change of the peer's).
pub type Served = FileVersion;

/// Most served versions remembered per peer between two sync rounds.
const MAX_SERVED: usize = 100_000;

/// Everything one box owns locally.
pub struct LocalBox {
    /// A stable random id (16 hex digits), told to peers in the handshake.
    pub id: String,
    /// The shared folder.
    pub share: Arc<Share>,
    /// The request log.
    pub history: History,
    /// Socket tunables.
    pub settings: Settings,
    /// Signalled when a peer says its folder changed, so that sync pulls soon.
    pub changes: tokio::sync::Notify,
    /// Set while sync's last round failed to reach a peer: the next box to connect may be
    /// that peer coming back, and is then synced with at once (see [`LocalBox::peer_connected`])
    /// instead of at the next rescan.
    pub peer_missing: std::sync::atomic::AtomicBool,
    /// Versions sent to each peer (by box id) since sync last looked. A std `Mutex`: held
    /// only to push or take, never across an `.await`.
    served: PerPeer,
    /// Versions each peer (by box id) said it installed from this box since sync last
    /// looked. A std `Mutex`, as above.
    installed: PerPeer,
}

impl LocalBox {
    /// A box connected to this one's server. If sync is waiting for a peer it could not
    /// reach, this may be that peer (restarted, or started after this box): sync runs now.
    /// Connections are pooled, so this happens once per peer start, not per request.
    pub fn peer_connected(&self) {
        if self
            .peer_missing
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.changes.notify_one();
        }
    }

    /// Opens the box whose shared folder is `dir` (created if missing), creating its id on
    /// first use.
    pub fn open(dir: &Path) -> Result<Arc<LocalBox>, ShareError> {
        LocalBox::open_with(dir, Settings::default())
    }

    /// Like [`LocalBox::open`], with tunables.
    pub fn open_with(dir: &Path, settings: Settings) -> Result<Arc<LocalBox>, ShareError> {
        let share = Share::open(dir)?;
        let state = share.state_dir();
        let id_file = state.join(BOX_ID_FILE);
        let id = match fs::read_to_string(&id_file) {
            Ok(text) if BoxId::parse(text.trim()).is_ok() => text.trim().to_string(),
            _ => {
                let id = BoxId::random().to_string();
                fs::write(&id_file, &id).map_err(|e| ShareError::io(&id_file, e))?;
                id
            }
        };
        let history = History::new(state.join(HISTORY_FILE));
        Ok(Arc::new(LocalBox {
            id,
            share,
            history,
            settings,
            changes: tokio::sync::Notify::new(),
            peer_missing: std::sync::atomic::AtomicBool::new(false),
            served: Mutex::new(HashMap::new()),
            installed: Mutex::new(HashMap::new()),
        }))
    }
}

impl LocalBox {
    /// Remembers that `served` went to the peer with box id `peer_id`.
    pub fn note_served(&self, peer_id: &str, served: Served) {
        push(&self.served, peer_id, served);
    }

    /// Takes the versions sent to the peer `peer_id` since the last call.
    pub fn take_served(&self, peer_id: &str) -> Vec<Served> {
        take(&self.served, peer_id)
    }

    /// Remembers that the peer `peer_id` installed `version` of one of this box's files.
    pub fn note_installed(&self, peer_id: &str, version: Served) {
        push(&self.installed, peer_id, version);
    }

    /// Takes what the peer `peer_id` said it installed since the last call, oldest first.
    pub fn take_installed(&self, peer_id: &str) -> Vec<Served> {
        take(&self.installed, peer_id)
    }

    /// Applies this box's socket tunables to a TCP connection; a failure is logged (the
    /// connection still works with the kernel's defaults).
    pub fn tune(&self, stream: &tokio::net::TcpStream) {
        let _ = stream.set_nodelay(true);
        if let Some(algorithm) = &self.settings.tcp_congestion
            && let Err(e) = crate::net::set_tcp_congestion(stream, algorithm)
        {
            tracing::warn!(algorithm, error = %e, "cannot set TCP congestion control");
        }
    }
}

/// Versions noted per peer box id, taken by sync once per round.
type PerPeer = Mutex<HashMap<String, Vec<Served>>>;

fn push(map: &PerPeer, peer_id: &str, version: Served) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let list = map.entry(peer_id.to_string()).or_default();
    if list.len() < MAX_SERVED {
        list.push(version);
    }
}

fn take(map: &PerPeer, peer_id: &str) -> Vec<Served> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.remove(peer_id).unwrap_or_default()
}
