//! The sessions this box holds with its peers, whoever dialed: at most one per peer, so
//! that a box behind NAT that dials out is pulled from, and notified, over the connection
//! it opened. Also where each peer was last reached, kept across restarts.
//!
//! When both boxes dial each other at once, both end up holding two sessions for a moment;
//! each keeps the one [`keeps_new`] picks, a rule both sides compute alike, so they close
//! the same one without a word exchanged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::discovery::Discovery;
use crate::protocol::{Greeting, Link, Mux, Role};
use crate::time::Timestamp;
use crate::types::BoxId;

/// Where the addresses peers were last reached at are kept, in the state folder.
pub const ADDRESS_FILE: &str = "peers.json";

/// Streams peers opened that the server has not taken yet (beyond it, they are refused).
const INBOUND_BACKLOG: usize = 256;

/// Most peers whose address is remembered.
const MAX_REMEMBERED: usize = 10_000;

/// A session with one peer, and what it said of itself.
pub struct PeerLink {
    /// The session.
    pub mux: Mux,
    /// The peer's greeting: where it listens, whether it syncs.
    pub theirs: Greeting,
    /// When the session began.
    pub since: Timestamp,
}

impl PeerLink {
    /// A session just set up.
    pub fn new(mux: Mux, theirs: Greeting) -> PeerLink {
        PeerLink {
            mux,
            theirs,
            since: Timestamp::now(),
        }
    }

    /// Whether this box dialed it.
    pub fn dialed_here(&self) -> bool {
        self.mux.info().role == Role::Dialer
    }

    /// The box that dialed it.
    fn dialer<'a>(&'a self, own: &'a BoxId) -> &'a BoxId {
        if self.dialed_here() {
            own
        } else {
            &self.mux.info().peer
        }
    }

    /// Where the peer's server listens, as far as this session tells: the session's
    /// address with the port the peer announced.
    pub fn peer_listens_at(&self) -> Option<String> {
        let port = self.theirs.listen?;
        let mut addr = self.mux.info().peer_addr;
        addr.set_port(port);
        Some(addr.to_string())
    }
}

/// Whether a new session replaces the one held with the same peer: yes if the old one has
/// ended, or if both were dialed by the same box (it dialed again: it restarted, or lost
/// the old one); else the session dialed by the box with the smaller ID stays. Both boxes
/// compute the same answer.
pub fn keeps_new(old_closed: bool, old_dialer: &BoxId, new_dialer: &BoxId) -> bool {
    old_closed || old_dialer == new_dialer || new_dialer.as_str() < old_dialer.as_str()
}

/// One remembered address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Remembered {
    /// `HOST:PORT`.
    pub addr: String,
    /// When the peer was last reached there.
    pub reached: Timestamp,
}

/// This box's sessions, by peer.
pub struct Links {
    /// This box's ID (for the tie rule).
    own: BoxId,
    /// The live sessions. A std `Mutex`: never held across `.await`.
    table: Mutex<HashMap<BoxId, Arc<PeerLink>>>,
    /// Where streams peers open go; `None` once no server will take them.
    inbound: Mutex<Option<mpsc::Sender<Link>>>,
    /// The other end, until the server takes it: streams that arrive on a session dialed
    /// before the server runs wait there rather than be refused.
    waiting: Mutex<Option<mpsc::Receiver<Link>>>,
    /// What this box says of itself in its greetings.
    greeting: Mutex<Greeting>,
    /// Announces each peer whose session began.
    connected: broadcast::Sender<BoxId>,
    /// The address file; `None` keeps addresses in memory only.
    file: Option<PathBuf>,
    /// Where each peer was last reached.
    addresses: Mutex<BTreeMap<BoxId, Remembered>>,
    /// Boxes announcing themselves on the local network, if local discovery runs.
    discovery: Mutex<Option<Arc<Discovery>>>,
}

impl Links {
    /// No sessions yet; addresses read from `state`'s address file (a missing or unreadable
    /// one is an empty book: addresses are only hints).
    pub fn open(own: BoxId, state: Option<&Path>) -> Links {
        let file = state.map(|s| s.join(ADDRESS_FILE));
        let addresses = file
            .as_deref()
            .and_then(|f| fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let (sender, receiver) = mpsc::channel(INBOUND_BACKLOG);
        Links {
            own,
            table: Mutex::default(),
            inbound: Mutex::new(Some(sender)),
            waiting: Mutex::new(Some(receiver)),
            greeting: Mutex::default(),
            connected: broadcast::channel(64).0,
            file,
            addresses: Mutex::new(addresses),
            discovery: Mutex::default(),
        }
    }

    /// The live session with `peer`, if any.
    pub fn get(&self, peer: &BoxId) -> Option<Arc<PeerLink>> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.get(peer).filter(|l| !l.mux.is_closed()).cloned()
    }

    /// The peers with a live session.
    pub fn connected(&self) -> Vec<BoxId> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table
            .iter()
            .filter(|(_, l)| !l.mux.is_closed())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Holds a new session with its peer, unless the one already held wins the tie
    /// ([`keeps_new`]); the loser is closed. Returns the session kept.
    pub fn keep(&self, link: PeerLink) -> Arc<PeerLink> {
        let peer = link.mux.info().peer.clone();
        let link = Arc::new(link);
        if peer == self.own {
            // A box talking to its own server (a shell pointed at itself) holds both ends:
            // neither is the peer's session, and each lives as long as its streams.
            return link;
        }
        let (kept, dropped) = {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            match table.get(&peer) {
                Some(old)
                    if !keeps_new(
                        old.mux.is_closed(),
                        old.dialer(&self.own),
                        link.dialer(&self.own),
                    ) =>
                {
                    (Arc::clone(old), Some(Arc::clone(&link)))
                }
                _ => {
                    let old = table.insert(peer.clone(), Arc::clone(&link));
                    (Arc::clone(&link), old)
                }
            }
        };
        if let Some(dropped) = dropped {
            if !dropped.mux.is_closed() {
                tracing::debug!(peer = %peer, "two sessions with one peer: one closed");
            }
            dropped.mux.close();
        }
        if Arc::ptr_eq(&kept, &link) {
            let _ = self.connected.send(peer);
        }
        kept
    }

    /// Ends the session with `peer` (its trust was withdrawn).
    pub fn close(&self, peer: &BoxId) {
        let removed = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        if let Some(link) = removed {
            link.mux.close();
        }
    }

    /// Ends every session (the box shuts down).
    pub fn close_all(&self) {
        let all: Vec<_> = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, link) in all {
            link.mux.close();
        }
    }

    /// Announces each peer whose session begins (sync adds peers that dialed in).
    pub fn subscribe(&self) -> broadcast::Receiver<BoxId> {
        self.connected.subscribe()
    }

    /// Where streams peers open are to go: the server takes them from the receiver
    /// (with those that arrived before it ran).
    pub fn serve_inbound(&self) -> mpsc::Receiver<Link> {
        if let Some(receiver) = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return receiver;
        }
        let (sender, receiver) = mpsc::channel(INBOUND_BACKLOG);
        *self.inbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        receiver
    }

    /// Stops taking streams peers open (the server stopped, or none will run: a one-off
    /// `-c` box): sessions made from now on refuse them at once.
    pub fn stop_inbound(&self) {
        *self.inbound.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Where a new session sends the streams its peer opens (`None`: no server runs, they
    /// are refused).
    pub fn inbound(&self) -> Option<mpsc::Sender<Link>> {
        self.inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What this box says of itself in greetings.
    pub fn greeting(&self) -> Greeting {
        *self.greeting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the port this box's server listens on, for greetings.
    pub fn set_listen(&self, port: Option<u16>) {
        self.greeting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .listen = port;
    }

    /// Sets whether this box's auto-sync runs, for greetings.
    pub fn set_syncs(&self, syncs: bool) {
        self.greeting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .syncs = syncs;
    }

    /// Turns local discovery's findings into addresses to dial (see [`Links::found`]).
    pub fn set_discovery(&self, discovery: Option<Arc<Discovery>>) {
        *self.discovery.lock().unwrap_or_else(|e| e.into_inner()) = discovery;
    }

    /// Where `peer` announced itself on the local network lately, if discovery runs.
    pub fn found(&self, peer: &BoxId) -> Option<String> {
        let discovery = self
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        discovery.lookup(peer).map(|addr| addr.to_string())
    }

    /// Where `peer` was last reached, if anywhere.
    pub fn address(&self, peer: &BoxId) -> Option<Remembered> {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .cloned()
    }

    /// Remembers that `peer` was reached at `addr`, and keeps that across restarts (best
    /// effort: the file holds hints, not truth).
    pub fn remember(&self, peer: &BoxId, addr: &str) {
        let snapshot = {
            let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
            let changed = addresses.get(peer).is_none_or(|r| r.addr != addr);
            addresses.insert(
                peer.clone(),
                Remembered {
                    addr: addr.to_string(),
                    reached: Timestamp::now(),
                },
            );
            while addresses.len() > MAX_REMEMBERED {
                let oldest = addresses
                    .iter()
                    .min_by_key(|(_, r)| r.reached)
                    .map(|(id, _)| id.clone());
                match oldest {
                    Some(id) => addresses.remove(&id),
                    None => break,
                };
            }
            changed.then(|| addresses.clone())
        };
        if let (Some(addresses), Some(file)) = (snapshot, &self.file)
            && let Err(e) = save(file, &addresses)
        {
            tracing::warn!(file = %file.display(), error = %e, "cannot keep peers' addresses");
        }
    }
}

/// Writes the address book whole or not at all.
fn save(file: &Path, addresses: &BTreeMap<BoxId, Remembered>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(addresses).map_err(std::io::Error::other)?;
    let temporary = file.with_extension("json.tmp");
    let mut out = fs::File::create(&temporary)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    fs::rename(&temporary, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: u8) -> BoxId {
        BoxId::from_public_key(&[seed; 32])
    }

    /// Both boxes, each holding both sessions, keep the same one, whatever the order.
    #[test]
    fn both_sides_keep_the_same_session() {
        let (a, b) = (id(1), id(2));
        let (small, large) = if a.as_str() < b.as_str() {
            (a, b)
        } else {
            (b, a)
        };
        // Held: the session the larger dialed; new: the smaller's. The new one stays.
        assert!(keeps_new(false, &large, &small));
        // Held: the smaller's; new: the larger's. The held one stays.
        assert!(!keeps_new(false, &small, &large));
    }

    /// A box that dials again (it restarted) replaces its own old session, and an ended
    /// session is always replaced.
    #[test]
    fn a_redial_or_an_ended_session_is_replaced() {
        let (a, b) = (id(1), id(2));
        assert!(keeps_new(false, &a, &a));
        assert!(keeps_new(false, &b, &b));
        assert!(keeps_new(true, &a, &b));
        assert!(keeps_new(true, &b, &a));
    }

    /// Addresses survive a restart; a damaged file is an empty book.
    #[test]
    fn addresses_are_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let peer = id(3);
        let links = Links::open(id(1), Some(dir.path()));
        assert!(links.address(&peer).is_none());
        links.remember(&peer, "192.0.2.7:7002");
        let again = Links::open(id(1), Some(dir.path()));
        assert_eq!(again.address(&peer).unwrap().addr, "192.0.2.7:7002");
        fs::write(dir.path().join(ADDRESS_FILE), b"{not json").unwrap();
        assert!(
            Links::open(id(1), Some(dir.path()))
                .address(&peer)
                .is_none()
        );
    }
}
