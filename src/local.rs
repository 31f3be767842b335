//! This box: its identity, its shared folder and its request log, shared by the server and
//! the client side of one process.

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::history::History;
use crate::identity::{Identity, IdentityError};
use crate::share::{Share, ShareError};
use crate::trust::{Trust, TrustError};
use crate::types::BoxId;

/// Why a box could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The shared folder or its state folder.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// The box's key.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The box's trust file.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

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
    /// The box's ID: the hash of its public key (a copy of `identity.id()`).
    pub id: BoxId,
    /// Its key pair, which authenticates every link it makes.
    pub identity: Identity,
    /// The boxes it talks to.
    pub trust: Trust,
    /// The shared folder.
    pub share: Arc<Share>,
    /// The request log.
    pub history: History,
    /// Socket tunables.
    pub settings: Settings,
}

impl LocalBox {
    /// Opens the box whose shared folder is `dir` (created if missing), creating its
    /// identity on first use.
    pub fn open(dir: &Path) -> Result<Arc<LocalBox>, OpenError> {
        LocalBox::open_with(dir, Settings::default())
    }

    /// Like [`LocalBox::open`], with tunables.
    pub fn open_with(dir: &Path, settings: Settings) -> Result<Arc<LocalBox>, OpenError> {
        let share = Share::open(dir)?;
        let state = share.state_dir();
        let identity = Identity::load_or_create(&state)?;
        let trust = Trust::open(&state)?;
        Ok(LocalBox::assemble(share, identity, trust, settings))
    }

    /// A box serving `dir` under an identity and trust kept elsewhere: a throwaway box in a
    /// temporary folder that acts for the box whose identity it borrows.
    pub fn open_as(
        dir: &Path,
        identity: Identity,
        trust: Trust,
        settings: Settings,
    ) -> Result<Arc<LocalBox>, OpenError> {
        let share = Share::open(dir)?;
        Ok(LocalBox::assemble(share, identity, trust, settings))
    }

    fn assemble(
        share: Arc<Share>,
        identity: Identity,
        trust: Trust,
        settings: Settings,
    ) -> Arc<LocalBox> {
        let history = History::new(share.state_dir().join(HISTORY_FILE));
        Arc::new(LocalBox {
            id: identity.id().clone(),
            identity,
            trust,
            share,
            history,
            settings,
        })
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
