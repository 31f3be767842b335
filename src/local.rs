//! This box: its identity, its shared folder and its request log, shared by the server and
//! the client side of one process.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::history::History;
use crate::share::{Share, ShareError};
use crate::types::BoxId;

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

/// Everything one box owns locally.
pub struct LocalBox {
    /// A stable random id, told to peers in the handshake.
    pub id: BoxId,
    /// The shared folder.
    pub share: Arc<Share>,
    /// The request log.
    pub history: History,
    /// Socket tunables.
    pub settings: Settings,
}

impl LocalBox {
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
        let kept = fs::read_to_string(&id_file).map(|text| BoxId::parse(text.trim()));
        let id = match kept {
            Ok(Ok(id)) => id,
            _ => {
                let id = BoxId::random();
                fs::write(&id_file, id.as_str()).map_err(|e| ShareError::io(&id_file, e))?;
                id
            }
        };
        let history = History::new(state.join(HISTORY_FILE));
        Ok(Arc::new(LocalBox {
            id,
            share,
            history,
            settings,
        }))
    }
}

impl LocalBox {
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
