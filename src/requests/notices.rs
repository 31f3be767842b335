//! Sync's notices, each answered by `ack`: `changed` ("my folder changed: pull from me
//! soon"), `installed` and `installed_many` ("I installed this version of your file under
//! the name given": the same name, or that of the conflict copy made of it; the receiving
//! box's sync records that both held it, a copy once it holds it too; and, in
//! `installed_many`, "I removed these paths, as you had": both lack them). A notice is taken
//! for the box that sent it, under the id its handshake proved.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::protocol::Link;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::inbox::{Inbox, Noted};
use super::{CallError, Handled, MAX_BATCH_NAMES, ServeContext, receive_within, refuse, too_many};
use crate::protocol::{Connection, ErrorKind, Response};
use crate::share::RelPath;
use crate::time::Timestamp;
use crate::transfer::send_within;
use crate::types::{Agreement, BoxId, FileVersion};

/// Most versions remembered per peer between two sync rounds.
const MAX_NOTED: usize = 100_000;

/// What this box's server learnt for its sync: that a peer's folder changed, what each
/// peer said it installed from here, and what was served to each. The server notes; the
/// sync engine takes, once per round, by the id each peer's handshake proved.
#[derive(Debug, Default)]
pub struct Notices {
    /// Signalled when a peer says its folder changed, so that sync pulls soon.
    changed: Notify,
    /// Set while sync's last round failed to reach a peer: the next box to connect may be
    /// that peer coming back, and is then synced with at once.
    peer_missing: AtomicBool,
    /// Versions sent to each peer since sync last looked. A std `Mutex`: held only to push
    /// or take, never across an `.await`.
    served: Mutex<HashMap<BoxId, Vec<FileVersion>>>,
    /// Versions each peer said it installed from this box since sync last looked, oldest
    /// first, on disk until sync has recorded them. A std `Mutex`, held only by blocking
    /// threads when the inbox writes to disk.
    installed: Mutex<Inbox>,
    /// When each peer's sync last read this box's folder (its round toward this box), for
    /// `sync status`. A std `Mutex`, as above.
    pulled: Mutex<HashMap<BoxId, Timestamp>>,
    /// The latest `sync allow-deletes` typed on this box, and when: peers are told (with
    /// their listings of this box) so that their own mass-delete guard lets the same
    /// deletions through once. A std `Mutex`, held only to set or read.
    deletions_meant: Mutex<Option<(u64, std::time::Instant)>>,
}

/// How long a person's `sync allow-deletes` is told to peers: long enough for every peer's
/// next round, short enough that a later wipe is not taken for meant.
pub const DELETIONS_MEANT_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl Notices {
    /// Notes that a person means the deletions the mass-delete guard stopped: a new token,
    /// told to peers for [`DELETIONS_MEANT_FOR`].
    pub fn mean_deletions(&self) {
        let token = rand::RngExt::random::<u64>(&mut rand::rng()) | 1;
        *self
            .deletions_meant
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((token, std::time::Instant::now()));
    }

    /// The token of the latest `sync allow-deletes`, while it is still told to peers.
    pub fn deletions_meant(&self) -> Option<u64> {
        let meant = *self
            .deletions_meant
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        meant
            .filter(|(_, at)| at.elapsed() < DELETIONS_MEANT_FOR)
            .map(|(token, _)| token)
    }

    /// Notices whose `installed` ones are kept on disk under `inbox` (see
    /// [`super::inbox`]): those a crash left there are pending again.
    pub fn durable(inbox: &Path) -> io::Result<Notices> {
        Ok(Notices {
            installed: Mutex::new(Inbox::open(inbox)?),
            ..Notices::default()
        })
    }

    /// A peer's folder changed (or a peer may be back): sync should run soon.
    pub fn wake_sync(&self) {
        self.changed.notify_one();
    }

    /// Completes when sync should run because of a notice.
    pub async fn sync_woken(&self) {
        self.changed.notified().await;
    }

    /// Sync could (`true`) or could again (`false`) not reach one of its peers.
    pub fn set_peer_missing(&self, missing: bool) {
        self.peer_missing.store(missing, Ordering::Relaxed);
    }

    /// A box connected to this one's server. If sync is waiting for a peer it could not
    /// reach, this may be that peer (restarted, or started after this box): sync runs now.
    /// Connections are pooled, so this happens once per peer start, not per request.
    pub fn peer_connected(&self) {
        if self.peer_missing.swap(false, Ordering::Relaxed) {
            self.wake_sync();
        }
    }

    /// Remembers that `peer`'s sync read this box's folder just now.
    pub fn note_pulled(&self, peer: &BoxId) {
        let mut pulled = self.pulled.lock().unwrap_or_else(|e| e.into_inner());
        pulled.insert(peer.clone(), Timestamp::now());
    }

    /// When `peer`'s sync last read this box's folder, if it did since this box started.
    pub fn last_pulled(&self, peer: &BoxId) -> Option<Timestamp> {
        let pulled = self.pulled.lock().unwrap_or_else(|e| e.into_inner());
        pulled.get(peer).copied()
    }

    /// Remembers that `version` went to the peer `peer`.
    pub fn note_served(&self, peer: &BoxId, version: FileVersion) {
        push(&self.served, peer, version);
    }

    /// Takes the versions sent to `peer` since the last call.
    pub fn take_served(&self, peer: &BoxId) -> Vec<FileVersion> {
        take(&self.served, peer)
    }

    /// Remembers, on disk before it returns, that `peer` installed `versions` of this
    /// box's files (oldest first). Blocking: call it off the async runtime's threads.
    pub fn note_installed(&self, peer: &BoxId, versions: Vec<Agreement>) -> io::Result<()> {
        let mut inbox = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        inbox.note(peer, versions)
    }

    /// Takes what `peer` said it installed since the last call, oldest first.
    pub fn take_installed(&self, peer: &BoxId) -> Vec<Noted> {
        let mut inbox = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        inbox.take(peer)
    }

    /// Sync saved a record holding `peer`'s notices up to `n` of journal `epoch`: the
    /// journal goes if that was all of it. Blocking, like [`Notices::note_installed`].
    pub fn installed_recorded(&self, peer: &BoxId, epoch: u64, n: u64) -> io::Result<()> {
        let mut inbox = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        inbox.recorded(peer, epoch, n)
    }
}

fn push(map: &Mutex<HashMap<BoxId, Vec<FileVersion>>>, peer: &BoxId, version: FileVersion) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let list = map.entry(peer.clone()).or_default();
    if list.len() < MAX_NOTED {
        list.push(version);
    }
}

fn take(map: &Mutex<HashMap<BoxId, Vec<FileVersion>>>, peer: &BoxId) -> Vec<FileVersion> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.remove(peer).unwrap_or_default()
}

/// Server side of `changed`: wakes this box's sync, which pulls from the sender soon.
pub async fn serve_changed(cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
    cx.notices.wake_sync();
    ack(cx, connection).await
}

/// Server side of `installed` (whose fields are the [`FileVersion`] installed): noted for
/// the sender's next sync round.
pub async fn serve_installed(
    version: FileVersion,
    cx: &ServeContext<'_>,
    connection: &mut Connection<Link>,
) -> Handled {
    note_installed(cx, connection, vec![Agreement::Holds(version)]).await
}

/// Notes `versions` as installed by the sender, on disk, then acknowledges them; a note
/// that cannot be kept is refused, so that the sender keeps the notice to send again.
async fn note_installed(
    cx: &ServeContext<'_>,
    connection: &mut Connection<Link>,
    versions: Vec<Agreement>,
) -> Handled {
    let notices = Arc::clone(cx.notices);
    let peer = cx.peer_id.clone();
    let noted = tokio::task::spawn_blocking(move || notices.note_installed(&peer, versions))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    if let Err(e) = noted {
        let kind = match e.kind() {
            // A full inbox is back-pressure, not a fault: the peer keeps the notices and
            // sends them again after this box's next round (a first sync of a million
            // files owes about ten rounds of them).
            io::ErrorKind::QuotaExceeded => {
                tracing::debug!(peer = %cx.peer_id, error = %e, "installed notices wait for this box's next round");
                ErrorKind::Unavailable
            }
            _ => {
                tracing::warn!(peer = %cx.peer_id, error = %e, "cannot keep an installed notice");
                ErrorKind::Internal
            }
        };
        return refuse(connection, kind, format!("cannot note it: {e}"), cx.stall()).await;
    }
    ack(cx, connection).await
}

/// The fields of `installed_many`: many `installed` notices in one message, oldest
/// first, so that a batch of downloads is confirmed in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledMany {
    /// The versions installed.
    pub versions: Vec<FileVersion>,
    /// Paths this box removed because the peer had (both now lack them); with `versions`,
    /// at most [`MAX_BATCH_NAMES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RelPath>,
}

impl InstalledMany {
    /// Server: noted, oldest first; a list over the limit is refused whole.
    pub async fn serve(self, cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
        let count = self.versions.len() + self.removed.len();
        if count > MAX_BATCH_NAMES {
            return refuse(
                connection,
                ErrorKind::BadRequest,
                too_many(count),
                cx.stall(),
            )
            .await;
        }
        let agreements = self.versions.into_iter().map(Agreement::Holds);
        let removed = self
            .removed
            .into_iter()
            .map(|removed| Agreement::Lacks { removed });
        note_installed(cx, connection, agreements.chain(removed).collect()).await
    }
}

/// Answers a notice with `ack`, which the client must take within the stall limit.
async fn ack(cx: &ServeContext<'_>, connection: &mut Connection<Link>) -> Handled {
    send_within(cx.stall(), connection.write_message(&Response::Ack)).await?;
    Ok(Ok(()))
}

/// Client, once a notice is sent: its `ack`, which must arrive within `stall`.
pub async fn read_ack<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    stall: Duration,
) -> Result<(), CallError> {
    match receive_within(stall, connection.expect_message::<Response>()).await? {
        Response::Ack => Ok(()),
        Response::Error { kind, message } => Err(CallError::Remote { kind, message }),
        other => Err(CallError::unexpected(&other)),
    }
}
