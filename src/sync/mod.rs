//! Auto-sync: keeps this box's folder identical with its peers', in both directions,
//! without ever losing what a person wrote.
//!
//! Each box only changes itself: every round it pulls, from each peer, what that peer
//! changed since they last agreed ([`plan`] decides, [`round`] acts), using the same
//! operations the shell offers (index, hash, download) through the same peer client.
//! Rounds start at a fixed period, shortly after local changes settle (a file-system
//! watcher, [`watch`], which also says where they happened, so that a round reads only
//! those parts of the folder), and when a peer announces a change. While the watcher runs,
//! the whole folder is read afresh only at the rescan period (an hour by default), to
//! catch what the watcher missed; without it, every round reads the whole folder. What sync
//! replaces or deletes goes to the trash first; the trash is emptied of versions older
//! than the retention period.
//!
//! - [`plan`]: the decision rules and the guards, pure;
//! - [`backoff`]: files that did not fit here, retried later and said once;
//! - [`error`]: why a round or an action failed;
//! - [`record`]: the persisted last-agreed state per peer;
//! - [`round`]: one round with one peer;
//! - [`transfers`]: the files being received right now, for the status and the feed;
//! - [`watch`]: the file-system watcher.

pub mod backoff;
pub mod error;
pub mod plan;
pub mod record;
pub mod round;
pub mod transfers;
pub mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, broadcast, watch as signal};

pub use error::SyncError;
pub use transfers::TransferStatus;

use crate::local::LocalBox;
use crate::peer::Peer;
use crate::requests::notices::Notices;
use crate::share::{Ignore, RelPath};
use crate::time::Timestamp;
use crate::types::{BadPeerAddress, BoxId, PeerAddress, Transport};

/// How long local changes must settle before a round starts.
const SETTLE: Duration = Duration::from_millis(300);

/// A peer as given on the command line: `ID@HOST:PORT`, or `ID` alone (reached over the
/// session it dials, at the address it was last reached at, or found on the local
/// network), each optionally behind `tcp://` or `udp://` (sync fetches from it over UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's box ID.
    pub id: BoxId,
    /// Where to dial it, if given.
    pub addr: Option<String>,
    /// How sync fetches from it.
    pub transport: Transport,
}

impl PeerSpec {
    /// Splits an optional `tcp://` or `udp://` prefix off `text` and reads the
    /// `ID@HOST:PORT` or `ID` that follows.
    pub fn parse(text: &str) -> Result<PeerSpec, BadPeerAddress> {
        let (transport, rest) = if let Some(rest) = text.strip_prefix("udp://") {
            (Transport::Udp, rest)
        } else {
            (Transport::Tcp, text.strip_prefix("tcp://").unwrap_or(text))
        };
        if rest.contains('@') {
            let target = PeerAddress::parse(rest)?;
            return Ok(PeerSpec {
                id: target.id,
                addr: Some(target.addr),
                transport,
            });
        }
        match BoxId::parse(rest) {
            Ok(id) => Ok(PeerSpec {
                id,
                addr: None,
                transport,
            }),
            // Something like an ID, mistyped: say what is wrong with it.
            Err(e) if rest.len() > 40 && rest.contains('-') => Err(e.into()),
            // `HOST:PORT`, or a word: say the ID is missing.
            Err(_) => Err(BadPeerAddress::NoId(rest.chars().take(80).collect())),
        }
    }

    /// A client for this peer.
    pub fn client(&self, local: Arc<LocalBox>) -> Peer {
        match &self.addr {
            Some(addr) => Peer::new(
                &PeerAddress {
                    id: self.id.clone(),
                    addr: addr.clone(),
                },
                local,
            ),
            None => Peer::by_id(&self.id, local),
        }
    }
}

/// A conflict in `sync status`: the path, and the copy its losing version became. Shown
/// and serialized as `path -> copy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The path both boxes changed.
    pub path: RelPath,
    /// Where the losing version went.
    pub copy: RelPath,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.path, self.copy)
    }
}

impl Serialize for Conflict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How sync runs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Period of the rounds (each reads only what the watcher reported changed, or the
    /// whole folder when no watcher runs).
    pub period: Duration,
    /// Period of the full rescan while the watcher runs: the whole folder read afresh, to
    /// catch whatever the watcher missed.
    pub rescan: Duration,
    /// How long replaced and deleted versions stay in the trash.
    pub trash_retention: Duration,
}

/// What `sync status` shows for one peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    /// The peer's address as given, else its name or short ID.
    pub peer: String,
    /// The peer's box ID.
    pub id: String,
    /// In a few words, how sync with it stands: `in sync`, `syncing`, `not connected: it
    /// dials this box`, `one-way: it does not sync back`, `does not trust this box`,
    /// `unreachable`, `never synced`. Only `in sync` means both directions are.
    pub state: String,
    /// Whether a session with it is up.
    pub connected: bool,
    /// Who dialed the session up: `this box` or `peer`.
    pub dialed_by: Option<&'static str>,
    /// The address it was last seen at (the session's, else the one last reached).
    pub address: Option<String>,
    /// Whether its own sync runs (it pulls from this box), as its greeting said.
    pub syncs_back: Option<bool>,
    /// When its sync last read this box's folder (its last round toward this box).
    pub last_pulled_by_peer: Option<Timestamp>,
    /// The transport sync uses with it.
    pub transport: Transport,
    /// When a round with it last completed.
    pub last_sync: Option<Timestamp>,
    /// When a round with it was last tried.
    pub last_attempt: Option<Timestamp>,
    /// Actions that failed in the last round and wait for the next.
    pub pending: usize,
    /// Conflicts seen and not yet resolved (their copies still exist).
    pub conflicts: Vec<Conflict>,
    /// Errors of the last round.
    pub errors: Vec<String>,
    /// Bytes of the files received from it since start that came over the network.
    pub fetched_bytes: u64,
    /// Bytes of those files found on this box instead (unchanged blocks, the same content
    /// under another name, an interrupted download's verified blocks).
    pub reused_bytes: u64,
    /// What stopped the last round short, if anything: its kind, for the engine and the
    /// tests (people read `errors`).
    #[serde(skip)]
    pub failure: Option<Arc<SyncError>>,
    /// What the last round that went through did (`sync now` reports it).
    pub last_round: Option<RoundCounts>,
}

/// What one round with a peer did to this box's folder, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RoundCounts {
    /// Files received (new or changed on the peer).
    pub received: usize,
    /// Files renamed or moved here as on the peer.
    pub moved: usize,
    /// Files deleted here (kept in the trash).
    pub deleted: usize,
    /// Conflicts found (each left a conflict copy).
    pub conflicts: usize,
    /// Other changes (folders made or removed, a mode changed).
    pub other: usize,
    /// Actions that failed (retried next round).
    pub failed: usize,
}

impl RoundCounts {
    /// Whether the round changed nothing and nothing failed.
    pub fn is_empty(&self) -> bool {
        *self == RoundCounts::default()
    }
}

/// What `sync status` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// Whether sync runs (`sync on` / `sync off`).
    pub enabled: bool,
    /// The period of the rounds, seconds.
    pub period_seconds: u64,
    /// The period of the full rescan while the watcher runs, seconds.
    pub rescan_seconds: u64,
    /// Whether the file-system watcher runs (else changes wait for the rescan).
    pub watching: bool,
    /// A problem with sync as a whole (the watcher could not start...).
    pub notice: Option<String>,
    /// Rounds completed since start.
    pub rounds: u64,
    /// Per peer.
    pub peers: Vec<PeerStatus>,
    /// Paths of this box's folder that are not shared, and why (symlinks, special files,
    /// names that cannot travel): the first [`NOT_SHARED_SHOWN`] by name.
    pub not_shared: Vec<crate::share::unshared::NotShared>,
    /// How many paths are not shared in all.
    pub not_shared_total: usize,
    /// The files being received right now, in the order they began.
    pub transfers: Vec<TransferStatus>,
}

/// Most paths not shared that the status names (the rest are counted).
pub const NOT_SHARED_SHOWN: usize = 20;

/// Something sync did, for the activity feed above the prompt.
#[derive(Debug, Clone)]
pub struct SyncEvent {
    /// The peer concerned.
    pub peer: String,
    /// What happened, in a few words.
    pub message: String,
}

/// Whether rounds may start, and how many began and ended: one value, so that turning
/// sync off and a round beginning are ordered, and a caller can await the end of a round.
#[derive(Debug, Clone, Copy)]
struct Rounds {
    /// On/off switch: a round begins only while it is on.
    enabled: bool,
    /// Rounds begun since start (a round's number, counting from 1).
    begun: u64,
    /// Rounds ended since start, failed ones too (rounds run one at a time).
    ended: u64,
}

/// The shell's handle on a running sync engine.
#[derive(Clone)]
pub struct SyncHandle {
    /// The peers sync works with, in the status's order (peers that dial in are added).
    peers: Arc<Mutex<Vec<Arc<Peer>>>>,
    /// What the box's server learnt (when each peer last pulled).
    notices: Arc<Notices>,
    /// The status, updated after every round. A std `Mutex`: never held across `.await`.
    status: Arc<Mutex<SyncStatus>>,
    /// Starts a round now.
    trigger: Arc<Notify>,
    /// The on/off switch and the round counts.
    rounds: Arc<signal::Sender<Rounds>>,
    /// Activity feed.
    events: broadcast::Sender<SyncEvent>,
    /// The files being received right now.
    transfers: Arc<transfers::Transfers>,
    /// Set by a person who means the deletions the mass-delete guard stopped: the next
    /// round, with every peer, goes ahead without the guard (then it holds again).
    deletions_allowed: Arc<AtomicBool>,
    /// The shared folder, for what its reads left out.
    share: Arc<crate::share::Share>,
}

impl SyncHandle {
    /// Lets the next round carry out the deletions the mass-delete guard stopped (`sync
    /// allow-deletes`), and starts it now; peers are told, so that their guard lets the
    /// same deletions through once. Only that round: the guard holds again after.
    pub fn allow_deletions(&self) {
        self.deletions_allowed.store(true, Ordering::SeqCst);
        self.notices.mean_deletions();
        self.trigger.notify_one();
    }

    /// A copy of the current status, with each peer's session as it is now.
    pub fn status(&self) -> SyncStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        status.transfers = self.transfers.snapshot(Instant::now());
        for (row, peer) in status.peers.iter_mut().zip(&peers) {
            let receiving = status.transfers.iter().any(|t| t.peer == row.peer);
            live(row, peer, &self.notices, receiving);
        }
        (status.not_shared, status.not_shared_total) = self.share.not_shared(NOT_SHARED_SHOWN);
        status
    }

    /// Starts a round as soon as possible.
    pub fn sync_now(&self) {
        self.trigger.notify_one();
    }

    /// Turns sync on or off.
    pub fn set_enabled(&self, on: bool) {
        self.rounds.send_modify(|r| r.enabled = on);
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enabled = on;
        if on {
            self.trigger.notify_one();
        }
    }

    /// Resolves once a round that begins after this call has ended (succeeded or not):
    /// what a caller that just changed a folder awaits to know sync has looked at it. While
    /// sync is off it waits for sync to be turned on and a round to run. Once the engine
    /// has shut down no round ends any more: await it under a deadline.
    pub fn next_round(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rounds = self.rounds.subscribe();
        let begun = rounds.borrow().begun;
        async move {
            // Fails only when the engine and every handle are gone: nothing to wait for.
            let _ = rounds.wait_for(|r| r.ended > begun).await;
        }
    }

    /// Turns sync off and resolves once the round under way, if any, has ended: from then
    /// on no round touches the folder until [`SyncHandle::set_enabled`] turns it on.
    pub fn pause(&self) -> impl Future<Output = ()> + Send + 'static {
        self.set_enabled(false);
        let mut rounds = self.rounds.subscribe();
        let begun = rounds.borrow().begun;
        async move {
            // Fails only when the engine and every handle are gone: nothing to wait for.
            let _ = rounds.wait_for(|r| r.ended >= begun).await;
        }
    }

    /// Subscribes to the activity feed.
    pub fn events(&self) -> broadcast::Receiver<SyncEvent> {
        self.events.subscribe()
    }

    /// Whether sync with every peer stands `in sync`, both ways (for the prompt).
    pub fn healthy(&self) -> bool {
        self.status().healthy()
    }
}

impl SyncStatus {
    /// Whether sync is on and every peer stands `in sync`, both ways.
    pub fn healthy(&self) -> bool {
        self.enabled && self.peers.iter().all(|p| p.state == IN_SYNC)
    }
}

/// The one state that means both directions are synced.
const IN_SYNC: &str = "in sync";

/// Fills in a peer's row what its session says now; `receiving`: a file from it is in
/// flight (it is then `syncing`, not `in sync`).
fn live(row: &mut PeerStatus, peer: &Peer, notices: &Notices, receiving: bool) {
    let link = peer.link();
    row.id = peer.id().to_string();
    row.connected = link.is_some();
    row.dialed_by = link
        .as_ref()
        .map(|l| if l.dialed_here() { "this box" } else { "peer" });
    row.address = match &link {
        Some(link) => Some(link.mux.info().peer_addr.to_string()),
        None => peer.dial_address(),
    };
    row.syncs_back = link.as_ref().map(|l| l.theirs.syncs);
    row.last_pulled_by_peer = notices.last_pulled(peer.id());
    let not_trusted = matches!(
        row.failure.as_deref(),
        Some(SyncError::Peer(crate::peer::PeerError::NotTrusted { .. }))
    );
    row.state = if not_trusted {
        "does not trust this box".to_string()
    } else if link.is_none() && peer.dial_address().is_none() {
        "not connected: it dials this box".to_string()
    } else if row.failure.is_some() {
        "unreachable".to_string()
    } else if row.last_sync.is_none() {
        "never synced".to_string()
    } else if row.syncs_back == Some(false) {
        "one-way: it does not sync back".to_string()
    } else if !row.errors.is_empty() || row.pending > 0 || receiving {
        "syncing".to_string()
    } else {
        IN_SYNC.to_string()
    };
}

/// Starts sync for `local` with `peers`; it runs until `shutdown` completes.
pub fn start(
    local: Arc<LocalBox>,
    notices: Arc<Notices>,
    peers: Vec<(Arc<Peer>, Transport)>,
    config: SyncConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> SyncHandle {
    let status = SyncStatus {
        enabled: true,
        period_seconds: config.period.as_secs(),
        rescan_seconds: config.rescan.as_secs(),
        peers: peers
            .iter()
            .map(|(peer, transport)| PeerStatus {
                peer: peer.addr().to_string(),
                id: peer.id().to_string(),
                transport: *transport,
                ..PeerStatus::default()
            })
            .collect(),
        ..SyncStatus::default()
    };
    let rounds = Rounds {
        enabled: true,
        begun: 0,
        ended: 0,
    };
    local.links.set_syncs(true);
    let handle = SyncHandle {
        peers: Arc::new(Mutex::new(
            peers.iter().map(|(peer, _)| Arc::clone(peer)).collect(),
        )),
        notices: Arc::clone(&notices),
        status: Arc::new(Mutex::new(status)),
        trigger: Arc::new(Notify::new()),
        rounds: Arc::new(signal::channel(rounds).0),
        events: broadcast::channel(256).0,
        transfers: Arc::default(),
        deletions_allowed: Arc::new(AtomicBool::new(false)),
        share: Arc::clone(&local.share),
    };
    let engine = Engine {
        slots: peers.iter().map(|_| Slot::Idle(Box::default())).collect(),
        failed: peers.iter().map(|_| false).collect(),
        done: tokio::sync::mpsc::unbounded_channel(),
        here: None,
        local,
        notices,
        peers,
        config,
        handle: handle.clone(),
    };
    tokio::spawn(engine.run(shutdown));
    handle
}

/// The running engine.
struct Engine {
    /// Each peer's state between its rounds, or the round it is out on (same order as
    /// `peers`).
    slots: Vec<Slot>,
    /// Whether each peer's last round failed (same order as `peers`).
    failed: Vec<bool>,
    /// Where a peer's round, run as a task of its own, reports its end; and where the
    /// tasks get their sender from.
    done: (
        tokio::sync::mpsc::UnboundedSender<Finished>,
        tokio::sync::mpsc::UnboundedReceiver<Finished>,
    ),
    /// This box's side as last read, reused while the folder is unchanged.
    here: Option<Arc<round::LocalState>>,
    local: Arc<LocalBox>,
    /// What the box's server learnt for sync: peers' changes and installs, what it served.
    notices: Arc<Notices>,
    peers: Vec<(Arc<Peer>, Transport)>,
    config: SyncConfig,
    handle: SyncHandle,
}

/// What one peer's rounds carry from one to the next.
#[derive(Default)]
struct PeerState {
    /// Sync records by peer box id, loaded once and saved when they change.
    records: std::collections::HashMap<BoxId, record::Record>,
    /// What the peer's folder looked like at its last answers.
    view: round::PeerView,
    /// Its files that did not fit here lately, waiting for space.
    room: backoff::RoomBackoff,
}

/// A peer between rounds, or out on one.
enum Slot {
    /// At rest: the next round starts one with it.
    Idle(Box<PeerState>),
    /// Its round runs as a task of its own, which reports through [`Engine::done`]; the
    /// handle stops it at shutdown.
    Busy(tokio::task::AbortHandle),
}

/// A peer's round that ended: which peer, its state, and how it went.
struct Finished {
    /// The peer's place in `peers`.
    index: usize,
    /// Its state, back from the round.
    state: Box<PeerState>,
    /// The round's report or failure.
    outcome: Result<round::RoundReport, Arc<SyncError>>,
}

/// What a peer's round, run as a task of its own, owns.
struct PeerRound {
    /// This box.
    local: Arc<LocalBox>,
    /// What the box's server learnt for sync.
    notices: Arc<Notices>,
    /// The peer.
    peer: Arc<Peer>,
    /// How sync fetches from it.
    transport: Transport,
    /// This box's side, as read at the start of the round.
    here: Arc<round::LocalState>,
    /// The ignore rules of this round.
    ignore: Arc<Ignore>,
    /// Whether a person waived the mass-delete guards for this round.
    waive_guard: bool,
    /// The peer's place in the engine's list.
    index: usize,
    /// What the peer's rounds carry from one to the next.
    state: Box<PeerState>,
    /// Where the round's end is reported (status, activity feed).
    handle: SyncHandle,
}

/// Runs one round with one peer, reports it (status, activity feed) and hands its state
/// back on `done`.
async fn peer_round(job: PeerRound, done: tokio::sync::mpsc::UnboundedSender<Finished>) {
    let PeerRound {
        local,
        notices,
        peer,
        transport,
        here,
        ignore,
        waive_guard,
        index,
        mut state,
        handle,
    } = job;
    let this = round::ThisBox {
        local: &local,
        notices: &notices,
        transfers: &handle.transfers,
        waive_guard,
    };
    let outcome = round::sync_with(
        this,
        &here,
        &peer,
        transport,
        &ignore,
        round::Kept {
            records: &mut state.records,
            view: &mut state.view,
            room: &mut state.room,
        },
    )
    .await
    .map_err(Arc::new);
    if outcome.is_err() {
        // At once, not at the end of the round: the peer may connect meanwhile.
        notices.set_peer_missing(true);
    }
    handle.report(peer.addr(), index, &outcome, &here);
    // The engine has stopped if nobody listens: nothing left to report to.
    let _ = done.send(Finished {
        index,
        state,
        outcome,
    });
}

/// A round that changed more paths than this is shown above the prompt as counts (each
/// change still goes to the log, one line each): an initial sync of 10,000 files must not
/// scroll 10,000 lines past the person typing, nor overflow the event channel.
const LISTED_CHANGES: usize = 20;

/// `count` and `noun`, the noun in the plural unless the count is one: "1 file", "2
/// files". For the counts people read in messages ("1 rounds" reads as a bug); the nouns
/// used take a plain `s`.
pub fn counted(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// One line for a round with many changes.
fn summary(report: &round::RoundReport) -> String {
    let others = report
        .changes
        .len()
        .saturating_sub(report.downloaded + report.deleted + report.moved);
    let mut parts = Vec::new();
    if report.downloaded > 0 {
        parts.push(format!(
            "received {}",
            counted(report.downloaded as u64, "file")
        ));
    }
    if report.moved > 0 {
        parts.push(format!("moved {}", counted(report.moved as u64, "file")));
    }
    if report.deleted > 0 {
        parts.push(format!(
            "deleted {} (kept in .boxsync/trash)",
            report.deleted
        ));
    }
    if others > 0 {
        parts.push(counted(others as u64, "other change"));
    }
    format!("{} (each is in the log)", parts.join(", "))
}

impl Engine {
    async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let local_change = Arc::new(Notify::new());
        let share = Arc::clone(&self.local.share);
        let _watcher = match watch::watch(share.root(), Arc::clone(&local_change), {
            let share = Arc::clone(&share);
            let handle = self.handle.clone();
            let told = std::sync::atomic::AtomicBool::new(false);
            move |report| match report {
                watch::WatchReport::Changed(Some(scopes)) => share.view().changed_in(scopes),
                watch::WatchReport::Changed(None) => share.view().changed(),
                watch::WatchReport::Lost(e) => {
                    // Part of the folder is not watched: vouch for no snapshot any more.
                    share.view().set_trust(None);
                    // Said once (a limit refuses every new folder after the first).
                    if told.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::debug!(error = %e, "not all of the folder is watched");
                        return;
                    }
                    let notice = format!(
                        "not all of the folder is watched ({e}); every round reads the whole folder from now on"
                    );
                    handle.emit_failure("", &notice);
                    handle.update(|s| s.notice = Some(notice));
                }
            }
        }) {
            Ok(watcher) => {
                // Between two rescans, what the watcher vouches for needs no new walk.
                share.view().set_trust(Some(self.config.rescan));
                self.update(|s| s.watching = true);
                Some(watcher)
            }
            Err(e) => {
                let notice = format!(
                    "cannot watch the folder for changes ({e}); each round, every {}s, reads the whole folder instead",
                    self.config.period.as_secs()
                );
                tracing::warn!("{notice}");
                self.emit("", &notice);
                self.update(|s| s.notice = Some(notice));
                None
            }
        };
        let _announcer = AbortOnDrop(tokio::spawn(announce_transfers(self.handle.clone())));
        // Without a watcher every round reads the whole folder: the rescan is the round.
        let watching = _watcher.is_some();
        let mut rescan = tokio::time::interval(match watching {
            true => self.config.rescan,
            false => self.config.period,
        });
        let period = self.config.period;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = self.local.links.subscribe();
        // Peers whose sessions began before sync started (a box that dialed in at once).
        for id in self.local.links.connected() {
            tracing::debug!(box_id = %id, "session up before sync started");
            self.admit(&id);
        }
        loop {
            let mut announce = false;
            let mut full = false;
            tokio::select! {
                _ = &mut shutdown => {
                    share.view().set_trust(None);
                    self.stop_rounds();
                    return;
                }
                news = connected.recv() => match news {
                    Ok(id) => {
                        tracing::debug!(box_id = %id, "session up");
                        self.admit(&id)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for id in self.local.links.connected() {
                            self.admit(&id);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = rescan.tick() => full = true,
                _ = tick.tick(), if watching => {}
                _ = self.handle.trigger.notified() => {}
                _ = self.notices.sync_woken() => {}
                _ = local_change.notified() => {
                    // Let a burst of changes (a file being written, a folder copied) settle.
                    loop {
                        tokio::select! {
                            _ = local_change.notified() => continue,
                            _ = tokio::time::sleep(SETTLE) => break,
                        }
                    }
                    announce = true;
                }
            }
            // Checked and counted in one step: a `pause` that saw no round begun has
            // none begin after it.
            let begins = self.handle.rounds.send_if_modified(|r| {
                r.begun += u64::from(r.enabled);
                r.enabled
            });
            if !begins {
                continue;
            }
            if announce {
                self.announce();
            }
            self.round(full).await;
            self.handle.rounds.send_modify(|r| r.ended += 1);
        }
    }

    /// A session with `id` began: a peer sync does not know yet (it dialed in) is added,
    /// if this box trusts it; either way, a round runs now.
    fn admit(&mut self, id: &BoxId) {
        if id == &self.local.id {
            return;
        }
        if !self.peers.iter().any(|(peer, _)| peer.id() == id) {
            if !self.local.trust.is_trusted(id) {
                tracing::debug!(box_id = %id, "a box that is not trusted here dialed in: not synced with");
                return;
            }
            let name = self
                .local
                .trust
                .list()
                .ok()
                .and_then(|list| list.into_iter().find(|t| &t.id == id))
                .and_then(|t| t.name);
            let peer = Arc::new(Peer::dialed_in(id, name, Arc::clone(&self.local)));
            tracing::info!(peer = peer.addr(), box_id = %id, "a trusted box dialed in: syncing with it over its session");
            self.handle
                .peers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::clone(&peer));
            self.update(|s| {
                s.peers.push(PeerStatus {
                    peer: peer.addr().to_string(),
                    id: id.to_string(),
                    transport: Transport::Tcp,
                    ..PeerStatus::default()
                })
            });
            self.slots.push(Slot::Idle(Box::default()));
            self.failed.push(false);
            self.peers.push((peer, Transport::Tcp));
        }
        self.handle.trigger.notify_one();
    }

    /// Tells every peer our folder changed, without waiting for them.
    fn announce(&self) {
        for (peer, _) in &self.peers {
            if peer.link().is_none() && peer.dial_address().is_none() {
                continue;
            }
            let peer = Arc::clone(peer);
            tokio::spawn(async move {
                if let Err(e) = peer.notify_changed().await {
                    tracing::debug!(peer = peer.addr(), error = %crate::text::for_log(&e), "change notice not delivered");
                }
            });
        }
    }

    /// One round with every peer; `full` for the periodic rescan, which reads the folder
    /// afresh whatever the watcher says.
    async fn round(&mut self, full: bool) {
        self.local.ensure_state();
        let ignore = self.local.share.ignore();
        crate::share::trash::prune(self.local.share.root(), self.config.trash_retention);
        let previous = self.here.take();
        let mut here = match round::LocalState::read(&self.local, &ignore, full, previous).await {
            Ok(here) => here,
            Err(e) => {
                let e = Arc::new(e);
                self.update(|s| {
                    for peer in &mut s.peers {
                        peer.errors = vec![e.to_string()];
                        peer.failure = Some(Arc::clone(&e));
                    }
                });
                return;
            }
        };
        // Every peer's round runs at the same time, as a task of its own, each bounded by
        // the box's deadlines (`Limits`). They all compare with this box's side as read
        // now; what one installs meanwhile, another sees at its next round (each change
        // re-checks the disk under its file's lock, so a round working from the older read
        // fails that file rather than undo the other's change).
        let waive_guard = self.handle.deletions_allowed.swap(false, Ordering::SeqCst);
        let mut started = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let state = match slot {
                Slot::Idle(state) => std::mem::take(state),
                // Still out on an earlier round (a slow peer): it goes on; this round
                // does not wait for it.
                Slot::Busy(_) => continue,
            };
            let Some((peer, transport)) = self.peers.get(index) else {
                *slot = Slot::Idle(state);
                continue;
            };
            // A peer with no session that cannot be dialed now (it dials this box, or its
            // dials failed lately) is waited for, not tried and failed every round.
            if peer.link().is_none()
                && (peer.dial_address().is_none() || peer.dial_backoff().is_some())
            {
                *slot = Slot::Idle(state);
                continue;
            }
            let task = tokio::spawn(peer_round(
                PeerRound {
                    local: Arc::clone(&self.local),
                    notices: Arc::clone(&self.notices),
                    peer: Arc::clone(peer),
                    transport: *transport,
                    here: Arc::clone(&here),
                    ignore: Arc::clone(&ignore),
                    waive_guard,
                    index,
                    state,
                    handle: self.handle.clone(),
                },
                self.done.0.clone(),
            ));
            *slot = Slot::Busy(task.abort_handle());
            started.push(index);
        }
        // The round ends when every peer it started with is done, except that once one is,
        // the others get `stall` more: a peer slower than that is left to finish on its
        // own, and the next rounds go on with the rest meanwhile.
        let grace = self.local.limits.stall;
        let mut outstanding = started.len();
        let mut deadline = None;
        let mut changed_here = false;
        while outstanding > 0 {
            let next = match deadline {
                None => self.done.1.recv().await,
                Some(deadline) => match tokio::time::timeout_at(deadline, self.done.1.recv()).await
                {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some(finished) = next else {
                break;
            };
            if started.contains(&finished.index) {
                outstanding -= 1;
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
            }
            changed_here |= self.finish(finished);
        }
        for index in 0..self.slots.len() {
            if matches!(self.slots.get(index), Some(Slot::Busy(_))) && started.contains(&index) {
                let addr = self.peers.get(index).map_or("", |(peer, _)| peer.addr());
                tracing::warn!(
                    peer = addr,
                    "sync with this peer is slow; the other peers' rounds go on without it"
                );
            }
        }
        let missing = self.failed.iter().any(|failed| *failed);
        if missing {
            self.notices.set_peer_missing(true);
        }
        // What was just taken from the peers is this box's side for the next round: read
        // where the round's changes were made (each marks its folders), not the whole
        // folder again.
        if changed_here
            && let Ok(fresh) =
                round::LocalState::read(&self.local, &ignore, false, Some(Arc::clone(&here))).await
        {
            here = fresh;
        }
        if !missing {
            self.notices.set_peer_missing(false);
        }
        self.here = Some(here);
        self.update(|s| s.rounds += 1);
    }

    /// Takes in a peer's finished round (already reported by [`SyncHandle::report`]): its
    /// state goes back to its slot. Returns whether it changed this box's folder.
    fn finish(&mut self, finished: Finished) -> bool {
        let Finished {
            index,
            state,
            outcome,
        } = finished;
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Slot::Idle(state);
        }
        if let Some(failed) = self.failed.get_mut(index) {
            *failed = outcome.is_err();
        }
        matches!(&outcome, Ok(report) if report.done > 0)
    }

    /// Stops the rounds still out (at shutdown).
    fn stop_rounds(&mut self) {
        for slot in &self.slots {
            if let Slot::Busy(task) = slot {
                task.abort();
            }
        }
    }

    fn update(&self, change: impl FnOnce(&mut SyncStatus)) {
        self.handle.update(change);
    }

    fn emit(&self, peer: &str, message: &str) {
        self.handle.emit(peer, message);
    }
}

/// Stops a task when dropped: what ends the engine's helpers with the engine.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Says on the activity feed how long transfers go, as [`transfers::Announcer`] decides,
/// looking every [`transfers::ANNOUNCE_TICK`].
async fn announce_transfers(handle: SyncHandle) {
    let mut announcer = transfers::Announcer::default();
    let mut tick = tokio::time::interval(transfers::ANNOUNCE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = handle.transfers.snapshot(Instant::now());
        for (peer, line) in announcer.due(&now) {
            handle.emit(&peer, &line);
        }
    }
}

impl SyncHandle {
    fn update(&self, change: impl FnOnce(&mut SyncStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn emit(&self, peer: &str, message: &str) {
        tracing::info!(peer, "{}", crate::text::for_log(message));
        self.send_event(peer, message);
    }

    /// Like [`SyncHandle::emit`] for a failure: logged at WARN.
    fn emit_failure(&self, peer: &str, message: &str) {
        tracing::warn!(peer, "{}", crate::text::for_log(message));
        self.send_event(peer, message);
    }

    fn send_event(&self, peer: &str, message: &str) {
        let _ = self.events.send(SyncEvent {
            peer: peer.to_string(),
            message: message.to_string(),
        });
    }

    /// Reports the end of the round with the peer at `addr` (number `index`): the
    /// activity feed, the log and the status, as soon as it ends.
    fn report(
        &self,
        addr: &str,
        index: usize,
        outcome: &Result<round::RoundReport, Arc<SyncError>>,
        here: &round::LocalState,
    ) {
        match outcome {
            Ok(report) => {
                if report.changes.len() <= LISTED_CHANGES {
                    for line in &report.changes {
                        self.emit(addr, line);
                    }
                } else {
                    for line in &report.changes {
                        tracing::info!(peer = addr, "{}", crate::text::for_log(line));
                    }
                    self.emit(addr, &summary(report));
                }
                // A file waiting for space was logged when it did not fit, not each round.
                for error in report
                    .errors
                    .iter()
                    .filter(|e| !matches!(e, SyncError::Waiting { .. }))
                {
                    self.emit_failure(addr, &format!("error: {error}"));
                }
                if report.fetched + report.reused > 0 {
                    tracing::info!(
                        peer = addr,
                        fetched = report.fetched,
                        reused = report.reused,
                        "round received {} bytes: {} fetched, {} found on this box",
                        report.fetched + report.reused,
                        report.fetched,
                        report.reused
                    );
                }
            }
            Err(e) => {
                // Reported once per reason: a peer that stays away is not a new line every
                // round (its dials back off, and say so once too).
                let again = {
                    let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    status
                        .peers
                        .get(index)
                        .is_some_and(|p| p.errors.first() == Some(&e.to_string()))
                };
                if again {
                    tracing::debug!(peer = addr, error = %crate::text::for_log(&e), "sync round failed again");
                } else {
                    tracing::warn!(peer = addr, error = %crate::text::for_log(&e), "sync round failed");
                }
            }
        }
        self.update(|s| {
            if let Some(status) = s.peers.get_mut(index) {
                round::fold(status, outcome, here);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One takes the singular; zero and more the plural.
    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(counted(0, "file"), "0 files");
        assert_eq!(counted(1, "file"), "1 file");
        assert_eq!(counted(2, "round"), "2 rounds");
    }

    /// A round's summary says "1 file", not "1 files".
    #[test]
    fn summary_wording() {
        let report = round::RoundReport {
            downloaded: 1,
            deleted: 2,
            changes: vec![String::new(); 4],
            ..Default::default()
        };
        assert_eq!(
            summary(&report),
            "received 1 file, deleted 2 (kept in .boxsync/trash), 1 other change (each is in the log)"
        );
    }
}
