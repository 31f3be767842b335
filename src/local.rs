//! This box: its identity, its shared folder and its request log, shared by the server and
//! the client side of one process.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// How long this box waits on a peer, and how much it holds for peers that do not read:
/// what keeps a slow, hung or hostile peer from stalling the box. Tests lower them; the
/// defaults are for real networks.
///
/// "Progress" is counted per frame: every frame of an answer (at most 256 KiB) must be
/// taken by the peer, or arrive from it, within `stall`, so a peer slower than about
/// 9 KB/s is cut off too. Not in [`Settings`] (yet): the command line builds `Settings`
/// field by field.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest time without progress on an exchange under way: a frame written to a peer
    /// that takes nothing, or awaited from a peer that sent part of an answer. The request
    /// then fails, its connection is closed and what it held (locks, buffers) is released.
    pub stall: Duration,
    /// Longest wait for the first frame of an answer the peer may have to work out first
    /// (hashing its folder for a listing, a file for `hash`), so longer than `stall`.
    pub think: Duration,
    /// Longest wait for a file's exclusive lock when sync replaces, renames or deletes it;
    /// after that the file fails for this round (and is retried the next).
    pub lock_wait: Duration,
    /// Most bytes of listings read afresh and not yet sent, over all clients together; a
    /// listing beyond it waits (at most `stall`) for others to drain, then is refused as
    /// `unavailable`.
    pub answer_bytes: usize,
}

impl Limits {
    /// The defaults for real networks.
    pub const DEFAULT: Limits = Limits {
        stall: Duration::from_secs(30),
        think: Duration::from_secs(600),
        lock_wait: Duration::from_secs(30),
        answer_bytes: 64 * 1024 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
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
    /// Deadlines and bounds toward peers.
    pub limits: Limits,
}

impl LocalBox {
    /// Opens the box whose shared folder is `dir` (created if missing), creating its id on
    /// first use.
    pub fn open(dir: &Path) -> Result<Arc<LocalBox>, ShareError> {
        LocalBox::open_with(dir, Settings::default())
    }

    /// Like [`LocalBox::open`], with tunables.
    pub fn open_with(dir: &Path, settings: Settings) -> Result<Arc<LocalBox>, ShareError> {
        LocalBox::open_limited(dir, settings, Limits::DEFAULT)
    }

    /// Like [`LocalBox::open_with`], with deadlines and bounds toward peers.
    pub fn open_limited(
        dir: &Path,
        settings: Settings,
        limits: Limits,
    ) -> Result<Arc<LocalBox>, ShareError> {
        let share = Share::open(dir)?;
        share.locks().set_wait(limits.lock_wait);
        share.answers().set_limit(limits.answer_bytes);
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
            limits,
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
