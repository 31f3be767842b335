//! This box: its identity, its shared folder and its request log, shared by the server and
//! the client side of one process.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::history::History;
use crate::identity::{Identity, IdentityError};
use crate::links::Links;
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
    /// Deadlines and bounds toward peers.
    pub limits: Limits,
    /// Its sessions with peers, whoever dialed, and where peers were last reached.
    pub links: Links,
    /// Whether its identity is kept in its own state folder (not borrowed by a throwaway
    /// box): only then is it written back there should the folder be deleted.
    keeps_identity: bool,
}

impl LocalBox {
    /// Opens the box whose shared folder is `dir` (created if missing), creating its
    /// identity on first use.
    pub fn open(dir: &Path) -> Result<Arc<LocalBox>, OpenError> {
        LocalBox::open_with(dir, Settings::default())
    }

    /// Like [`LocalBox::open`], with tunables.
    pub fn open_with(dir: &Path, settings: Settings) -> Result<Arc<LocalBox>, OpenError> {
        LocalBox::open_limited(dir, settings, Limits::DEFAULT)
    }

    /// Like [`LocalBox::open_with`], with deadlines and bounds toward peers.
    pub fn open_limited(
        dir: &Path,
        settings: Settings,
        limits: Limits,
    ) -> Result<Arc<LocalBox>, OpenError> {
        let share = Share::open(dir)?;
        let state = share.state_dir();
        let identity = Identity::load_or_create(&state)?;
        let trust = Trust::open(&state)?;
        Ok(LocalBox::assemble(
            share, identity, trust, settings, limits, true,
        ))
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
        Ok(LocalBox::assemble(
            share,
            identity,
            trust,
            settings,
            Limits::DEFAULT,
            false,
        ))
    }

    fn assemble(
        share: Arc<Share>,
        identity: Identity,
        trust: Trust,
        settings: Settings,
        limits: Limits,
        keeps_identity: bool,
    ) -> Arc<LocalBox> {
        share.locks().set_wait(limits.lock_wait);
        share.answers().set_limit(limits.answer_bytes);
        let history = History::new(share.state_dir().join(HISTORY_FILE));
        let links = Links::open(identity.id().clone(), Some(&share.state_dir()));
        Arc::new(LocalBox {
            links,
            id: identity.id().clone(),
            identity,
            trust,
            share,
            history,
            settings,
            limits,
            keeps_identity,
        })
    }

    /// Recreates what is missing of the state folder when it was deleted while the box
    /// runs (see [`Share::restore_state`]), and writes back the identity and the trust
    /// kept in memory, so that downloads go on without a restart and the box keeps its
    /// ID. Called before each download and each sync round: a few lookups when all is
    /// well. What happened is logged once, at WARN; a failure too (the download then
    /// fails with its own error).
    pub fn ensure_state(&self) {
        if self.share.state_intact() && (!self.keeps_identity || self.key_file_present()) {
            return;
        }
        let state = self.share.state_dir();
        let mut restored = match self.share.restore_state() {
            Ok(restored) => restored,
            Err(e) => {
                tracing::warn!(error = %e, "the state folder was deleted while the box ran, and cannot be recreated");
                return;
            }
        };
        if self.keeps_identity {
            match self.identity.restore(&state) {
                Ok(true) => restored.push(crate::identity::KEY_FILE),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot write the box's key back"),
            }
        }
        match self.trust.restore() {
            Ok(true) => restored.push(crate::trust::TRUST_FILE),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot write the trust file back"),
        }
        if !restored.is_empty() {
            tracing::warn!(
                state = %crate::text::for_log(&state.display().to_string()),
                box_id = %self.id,
                "the state folder was deleted while the box ran: recreated {} (same box id; the sync records, history and trash that were in it are gone)",
                restored.join(", ")
            );
        }
    }

    fn key_file_present(&self) -> bool {
        self.share
            .state_dir()
            .join(crate::identity::KEY_FILE)
            .exists()
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
