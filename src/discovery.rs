//! Local discovery: boxes on one network announce their ID and port, so that a peer named
//! by its ID alone can be found without an address (Syncthing's local discovery, IPv4 only).
//!
//! Every box sends a small datagram (the wire form is in `docs/protocol.md`, "Local
//! discovery") once at start and then every [`DiscoveryConfig::interval`] to each target
//! (by default the IPv4 broadcast address on UDP port [`DEFAULT_PORT`]), and listens on
//! that port for the others'. A sighting is the datagram's source IP with the announced
//! port; it lasts three intervals.
//!
//! An announcement proves nothing: anyone on the network can announce any ID with any
//! address. Discovery only proposes where to dial; the TLS handshake, which pins the ID,
//! decides whether the box there is the one named. The worst a forger can do is make a
//! dial fail (or, by flooding IDs, push real sightings out of the bounded table), so
//! received datagrams are checked strictly and cheaply, refused silently (a debug log
//! line), and never trusted further.
//!
//! The layering follows the rest of the crate: [`Sightings`] is a pure table that is
//! handed the time; one tokio task per [`Discovery`] does the sending and receiving.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::types::{BadBoxId, BoxId};

/// The UDP port boxes announce to and listen on, unless configured otherwise (Syncthing's:
/// a box on a network that runs Syncthing sees its datagrams and refuses them by magic).
pub const DEFAULT_PORT: u16 = 21025;

/// How often a box announces itself, unless configured otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Most boxes remembered at once: a flood of forged IDs evicts the oldest sightings
/// instead of growing memory.
pub const MAX_ENTRIES: usize = 1024;

/// A sighting lasts this many intervals: one or two lost datagrams do not forget a box.
const LIFETIMES: u32 = 3;

/// Longest datagram read: an announcement is 79 bytes; anything longer than this is not
/// one.
const MAX_DATAGRAM: usize = 1024;

/// The first bytes of every announcement ("boxsync discovery").
const MAGIC: [u8; 4] = *b"BXSD";

/// The version of the announcement's layout after the magic.
const VERSION: u8 = 1;

/// Where and how often to announce, and where to listen: [`Default`] for a real network,
/// loopback and a port chosen by the system (0) for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The UDP port to listen on (0: any free port, see [`Discovery::local_port`]). Shared
    /// with other boxes on the same machine (`SO_REUSEPORT`), which all hear broadcasts.
    pub port: u16,
    /// Time between two announcements; sightings expire after three of them.
    pub interval: Duration,
    /// Where announcements are sent: IPv4 broadcast (or, in tests, loopback) addresses.
    pub targets: Vec<SocketAddr>,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            port: DEFAULT_PORT,
            interval: DEFAULT_INTERVAL,
            targets: vec![SocketAddr::from((Ipv4Addr::BROADCAST, DEFAULT_PORT))],
        }
    }
}

/// Why discovery could not start.
#[derive(Debug, Error)]
pub enum DiscoveryError {
    /// An interval of zero would announce without pause.
    #[error("the local discovery interval must be more than zero")]
    ZeroInterval,
    /// The discovery socket could not be made or bound (port taken without
    /// `SO_REUSEPORT`, no permission...).
    #[error("cannot listen for local discovery on UDP port {port}: {cause}")]
    Bind {
        /// The port asked for.
        port: u16,
        /// The system's error.
        cause: io::Error,
    },
}

/// What one box announces: who it is and on which port its server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Announcement {
    /// The announcing box: whoever answers at the address must prove this ID.
    id: BoxId,
    /// Its server's TCP (and UDP) port; the IP is the datagram's source.
    port: u16,
    /// Random per run, so that a restart can be told from a repeat.
    instance: u64,
}

/// Why a datagram is not an announcement. Only ever logged (debug): the sender may be
/// anyone.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
enum BadAnnouncement {
    /// Longer than any announcement may be.
    #[error("{0} bytes or more: too long")]
    TooLong(usize),
    /// Ends before its fields do.
    #[error("truncated")]
    Truncated,
    /// Not a boxsync announcement (another program's datagram on the port).
    #[error("not a boxsync announcement")]
    Magic,
    /// A layout this box does not know.
    #[error("unknown version {0}")]
    Version(u8),
    /// The ID field is not a box ID.
    #[error(transparent)]
    Id(#[from] BadBoxId),
    /// Port 0 cannot be dialled.
    #[error("port 0")]
    ZeroPort,
    /// Bytes after the last field.
    #[error("{0} bytes after the announcement")]
    Trailing(usize),
}

impl Announcement {
    /// The datagram: magic, version, ID length and ID (ASCII), port and instance (big
    /// endian).
    fn encode(&self) -> Vec<u8> {
        let id = self.id.as_str().as_bytes();
        let mut datagram = Vec::with_capacity(MAGIC.len() + 2 + id.len() + 10);
        datagram.extend_from_slice(&MAGIC);
        datagram.push(VERSION);
        // An ID's canonical form is 63 characters: its length always fits.
        datagram.push(id.len() as u8);
        datagram.extend_from_slice(id);
        datagram.extend_from_slice(&self.port.to_be_bytes());
        datagram.extend_from_slice(&self.instance.to_be_bytes());
        datagram
    }

    /// Reads a datagram from anyone: every field checked, nothing after the last one.
    fn decode(datagram: &[u8]) -> Result<Announcement, BadAnnouncement> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(BadAnnouncement::TooLong(datagram.len()));
        }
        let mut rest = datagram;
        if take(&mut rest, MAGIC.len())? != MAGIC {
            return Err(BadAnnouncement::Magic);
        }
        let version = take(&mut rest, 1)?[0];
        if version != VERSION {
            return Err(BadAnnouncement::Version(version));
        }
        let id_len = usize::from(take(&mut rest, 1)?[0]);
        let id = take(&mut rest, id_len)?;
        // Not UTF-8 cannot be an ID; the lossy copy only serves the error's message.
        let id = BoxId::parse(&String::from_utf8_lossy(id))?;
        let port = u16::from_be_bytes(array(take(&mut rest, 2)?));
        if port == 0 {
            return Err(BadAnnouncement::ZeroPort);
        }
        let instance = u64::from_be_bytes(array(take(&mut rest, 8)?));
        if !rest.is_empty() {
            return Err(BadAnnouncement::Trailing(rest.len()));
        }
        Ok(Announcement { id, port, instance })
    }
}

/// The first `n` bytes of `rest`, which moves past them.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], BadAnnouncement> {
    if rest.len() < n {
        return Err(BadAnnouncement::Truncated);
    }
    let (taken, after) = rest.split_at(n);
    *rest = after;
    Ok(taken)
}

/// `bytes` (exactly `N` of them, as [`take`] gave) as an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(bytes);
    array
}

/// The boxes seen lately, each at its latest address: a pure table, handed the time, so
/// that expiry and eviction are tested without waiting.
#[derive(Debug)]
struct Sightings {
    /// Each box's latest sighting.
    latest: HashMap<BoxId, Sighting>,
    /// The same boxes by sequence number, oldest sighting first: what expires or is
    /// evicted next, found without a scan.
    by_age: BTreeMap<u64, BoxId>,
    /// The next sighting's sequence number.
    next: u64,
    /// How long a sighting lasts.
    lifetime: Duration,
    /// Most boxes kept.
    capacity: usize,
}

/// Where one box was seen, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sighting {
    /// Its source IP with its announced port.
    addr: SocketAddr,
    /// The run that announced it.
    instance: u64,
    /// When it was last heard.
    seen: Instant,
    /// Its key in [`Sightings::by_age`].
    sequence: u64,
}

impl Sightings {
    fn new(lifetime: Duration, capacity: usize) -> Sightings {
        Sightings {
            latest: HashMap::new(),
            by_age: BTreeMap::new(),
            next: 0,
            lifetime,
            capacity: capacity.max(1),
        }
    }

    /// Notes `id` at `addr` at `now` (which never goes back), forgetting the expired and,
    /// when full, the oldest. True when it is news: a box not seen (or expired), a new
    /// address, or a restart.
    fn record(&mut self, now: Instant, id: BoxId, addr: SocketAddr, instance: u64) -> bool {
        self.expire(now);
        let sequence = self.next;
        self.next += 1;
        let news = match self.latest.get_mut(&id) {
            Some(sighting) => {
                let news = sighting.addr != addr || sighting.instance != instance;
                self.by_age.remove(&sighting.sequence);
                *sighting = Sighting {
                    addr,
                    instance,
                    seen: now,
                    sequence,
                };
                news
            }
            None => {
                if self.latest.len() >= self.capacity
                    && let Some((_, oldest)) = self.by_age.pop_first()
                {
                    self.latest.remove(&oldest);
                }
                self.latest.insert(
                    id.clone(),
                    Sighting {
                        addr,
                        instance,
                        seen: now,
                        sequence,
                    },
                );
                true
            }
        };
        self.by_age.insert(sequence, id);
        news
    }

    /// Where `id` was last seen, unless that has expired by `now`.
    fn lookup(&self, now: Instant, id: &BoxId) -> Option<SocketAddr> {
        self.latest
            .get(id)
            .filter(|sighting| self.alive(sighting, now))
            .map(|sighting| sighting.addr)
    }

    /// Whether `sighting` still holds at `now`.
    fn alive(&self, sighting: &Sighting, now: Instant) -> bool {
        now.saturating_duration_since(sighting.seen) < self.lifetime
    }

    /// Forgets the sightings expired by `now`, oldest first.
    fn expire(&mut self, now: Instant) {
        while let Some((_, id)) = self.by_age.first_key_value() {
            match self.latest.get(id) {
                Some(sighting) if self.alive(sighting, now) => break,
                _ => {
                    if let Some((_, id)) = self.by_age.pop_first() {
                        self.latest.remove(&id);
                    }
                }
            }
        }
    }

    /// How many boxes are remembered (expired ones included until the next record).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.latest.len()
    }
}

/// What the discovery task and the callers share.
#[derive(Debug)]
struct Shared {
    /// This box: its own announcements come back by broadcast and are ignored.
    own: BoxId,
    /// The table. A std mutex: it is never held across an `.await`.
    sightings: Mutex<Sightings>,
    /// Bumped on every piece of news, so that [`Shared::wait_for`] wakes to look again.
    news: watch::Sender<()>,
}

impl Shared {
    fn new(own: BoxId, lifetime: Duration) -> Shared {
        Shared {
            own,
            sightings: Mutex::new(Sightings::new(lifetime, MAX_ENTRIES)),
            news: watch::channel(()).0,
        }
    }

    /// Takes one datagram from `from`, received at `now`: a sighting if it is another
    /// box's announcement; otherwise nothing but a debug line.
    fn receive(&self, now: Instant, datagram: &[u8], from: SocketAddr) {
        let announcement = match Announcement::decode(datagram) {
            Ok(announcement) => announcement,
            Err(reason) => {
                tracing::debug!(%from, %reason, "local discovery: datagram ignored");
                return;
            }
        };
        if announcement.id == self.own {
            return;
        }
        let addr = SocketAddr::new(from.ip(), announcement.port);
        let news = self
            .sightings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now, announcement.id.clone(), addr, announcement.instance);
        if news {
            tracing::debug!(id = %announcement.id, %addr, "local discovery: box seen");
            self.news.send_replace(());
        }
    }

    fn lookup(&self, now: Instant, id: &BoxId) -> Option<SocketAddr> {
        self.sightings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(now, id)
    }

    async fn wait_for(&self, id: &BoxId, deadline: Instant) -> Option<SocketAddr> {
        // Subscribed before looking, so that news between the look and the wait wakes it.
        let mut news = self.news.subscribe();
        loop {
            if let Some(addr) = self.lookup(Instant::now(), id) {
                return Some(addr);
            }
            // The sender lives in `self`: `changed` fails only at the deadline.
            if !matches!(
                tokio::time::timeout_at(deadline, news.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
    }
}

/// This box's local discovery, running: it announces the box and remembers the others.
/// Dropping the last `Arc` stops it (its task is aborted and its socket closed).
#[derive(Debug)]
pub struct Discovery {
    /// The table and this box's ID.
    shared: Arc<Shared>,
    /// The UDP port listened on, the one chosen when 0 was asked for.
    local_port: u16,
    /// The task that sends and receives; aborted on drop.
    task: JoinHandle<()>,
}

impl Discovery {
    /// Starts announcing `own` with its server's `port`, and listening, in a task on the
    /// current tokio runtime (which must be running). Port 0 (a box that listens nowhere,
    /// `-l none`) only listens: there is nowhere to dial it. It stops when the returned
    /// `Arc`'s last clone is dropped.
    pub fn start(
        config: DiscoveryConfig,
        own: BoxId,
        port: u16,
    ) -> Result<Arc<Discovery>, DiscoveryError> {
        if config.interval.is_zero() {
            return Err(DiscoveryError::ZeroInterval);
        }
        let bind_error = |cause| DiscoveryError::Bind {
            port: config.port,
            cause,
        };
        let socket = bind(config.port).map_err(bind_error)?;
        let local_port = socket.local_addr().map_err(bind_error)?.port();
        let announcement = Announcement {
            id: own.clone(),
            port,
            instance: rand::random(),
        }
        .encode();
        let lifetime = config
            .interval
            .checked_mul(LIFETIMES)
            .unwrap_or(Duration::MAX);
        let shared = Arc::new(Shared::new(own, lifetime));
        let targets = match port {
            0 => Vec::new(),
            _ => config.targets,
        };
        let task = tokio::spawn(run(
            socket,
            Arc::clone(&shared),
            announcement,
            targets,
            config.interval,
        ));
        Ok(Arc::new(Discovery {
            shared,
            local_port,
            task,
        }))
    }

    /// The UDP port discovery listens on: the system's choice when the configuration
    /// asked for 0 (tests point other instances at it).
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Where box `id` was last seen (its latest announcement, unexpired), for a dialer
    /// given an ID without an address. The box there must still prove the ID.
    pub fn lookup(&self, id: &BoxId) -> Option<SocketAddr> {
        self.shared.lookup(Instant::now(), id)
    }

    /// Waits until box `id` is seen (at once if it already is), or gives up with `None` at
    /// `deadline`: for a dialer started before the peer's first announcement arrives.
    pub async fn wait_for(&self, id: &BoxId, deadline: Instant) -> Option<SocketAddr> {
        self.shared.wait_for(id, deadline).await
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The discovery socket: IPv4, bound to every address on `port`, shared with other boxes
/// on the machine (`SO_REUSEADDR`, `SO_REUSEPORT`: each gets its copy of a broadcast),
/// allowed to broadcast.
fn bind(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    UdpSocket::from_std(socket.into())
}

/// The discovery task: announces at once and every `interval`, and takes every datagram
/// that arrives in between. Runs until aborted.
async fn run(
    socket: UdpSocket,
    shared: Arc<Shared>,
    announcement: Vec<u8>,
    targets: Vec<SocketAddr>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One byte more than the longest accepted, so that a longer datagram shows as such
    // (the system cuts it to the buffer).
    let mut buffer = [0u8; MAX_DATAGRAM + 1];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                for target in &targets {
                    if let Err(e) = socket.send_to(&announcement, target).await {
                        // A network without a route for broadcasts: nothing to find there.
                        tracing::debug!(%target, error = %e, "local discovery: announcement not sent");
                    }
                }
            }
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => shared.receive(Instant::now(), &buffer[..len], from),
                Err(e) => {
                    tracing::debug!(error = %e, "local discovery: receive failed");
                    // Not a hot loop should the error persist.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ID for tests, from a seed.
    fn id(seed: u8) -> BoxId {
        BoxId::from_public_key(&[seed; 44])
    }

    /// An address for tests.
    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// An announcement for tests.
    fn announcement(seed: u8) -> Announcement {
        Announcement {
            id: id(seed),
            port: 7002,
            instance: 0x0123_4567_89ab_cdef,
        }
    }

    /// What is encoded decodes to the same announcement, in the documented layout.
    #[test]
    fn announcements_round_trip() {
        let sent = announcement(1);
        let datagram = sent.encode();
        assert_eq!(datagram.len(), 79);
        assert_eq!(&datagram[..6], b"BXSD\x01\x3f");
        assert_eq!(&datagram[6..69], id(1).as_str().as_bytes());
        assert_eq!(&datagram[69..71], &7002u16.to_be_bytes());
        assert_eq!(Announcement::decode(&datagram), Ok(sent));
    }

    /// Every malformed datagram is refused with its reason, and none (nor random bytes)
    /// panics.
    #[test]
    fn malformed_datagrams_are_refused() {
        let good = announcement(2).encode();
        for len in 0..good.len() {
            assert_eq!(
                Announcement::decode(&good[..len]),
                Err(BadAnnouncement::Truncated),
                "{len}"
            );
        }
        let with = |at: usize, byte: u8| {
            let mut datagram = good.clone();
            datagram[at] = byte;
            Announcement::decode(&datagram)
        };
        assert_eq!(with(0, b'X'), Err(BadAnnouncement::Magic));
        assert_eq!(with(4, 2), Err(BadAnnouncement::Version(2)));
        // A wrong ID character: a typo, as the check characters see it.
        let typo = if good[6] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            with(6, typo),
            Err(BadAnnouncement::Id(BadBoxId::Typo { .. }))
        ));
        assert!(matches!(
            with(6, 0xff),
            Err(BadAnnouncement::Id(BadBoxId::Malformed(_)))
        ));
        // A length that leaves the ID short (and the rest misread) is not an ID.
        assert!(matches!(with(5, 62), Err(BadAnnouncement::Id(_))));
        let mut zero_port = good.clone();
        zero_port[69..71].copy_from_slice(&[0, 0]);
        assert_eq!(
            Announcement::decode(&zero_port),
            Err(BadAnnouncement::ZeroPort)
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Announcement::decode(&trailing),
            Err(BadAnnouncement::Trailing(1))
        );
        let mut oversized = good.clone();
        oversized.resize(MAX_DATAGRAM + 1, 0);
        assert_eq!(
            Announcement::decode(&oversized),
            Err(BadAnnouncement::TooLong(MAX_DATAGRAM + 1))
        );
        // Random bytes, and the good datagram with each byte changed: refused or read,
        // never a panic.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 120) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 56)) as u8).collect();
            let _ = Announcement::decode(&bytes);
            let mut prefixed = good[..6].to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = Announcement::decode(&prefixed);
        }
        for at in 0..good.len() {
            for byte in [0, 0x3f, 0x7f, 0xff] {
                let _ = with(at, byte);
            }
        }
    }

    /// A sighting holds for its lifetime and not a moment longer; hearing the box again
    /// renews it.
    #[test]
    fn sightings_expire_after_their_lifetime() {
        let start = Instant::now();
        let lifetime = Duration::from_secs(90);
        let mut sightings = Sightings::new(lifetime, 16);
        let here = addr("192.0.2.7:7002");
        assert!(sightings.record(start, id(1), here, 1));
        assert_eq!(sightings.lookup(start + lifetime / 2, &id(1)), Some(here));
        assert_eq!(sightings.lookup(start + lifetime, &id(1)), None);
        // Heard again: alive again, and news, since it had expired.
        let later = start + lifetime * 2;
        assert!(sightings.record(later, id(1), here, 1));
        assert_eq!(
            sightings.lookup(later + lifetime - Duration::from_millis(1), &id(1)),
            Some(here)
        );
        // The expired are forgotten, not only hidden.
        sightings.record(later + lifetime, id(2), here, 1);
        assert_eq!(sightings.len(), 1);
    }

    /// The latest announcement wins; only a new address or a restart is news.
    #[test]
    fn the_latest_sighting_wins() {
        let now = Instant::now();
        let mut sightings = Sightings::new(Duration::from_secs(90), 16);
        let (first, second) = (addr("192.0.2.7:7002"), addr("192.0.2.8:7002"));
        assert!(sightings.record(now, id(1), first, 1));
        assert!(!sightings.record(now, id(1), first, 1));
        assert!(sightings.record(now, id(1), second, 1));
        assert_eq!(sightings.lookup(now, &id(1)), Some(second));
        assert!(sightings.record(now, id(1), second, 2));
        assert_eq!(sightings.lookup(now, &id(2)), None);
    }

    /// A flood of IDs never holds more than the capacity: the oldest sighting goes first,
    /// and a box heard again is young again.
    #[test]
    fn sightings_are_bounded_oldest_evicted() {
        let now = Instant::now();
        let mut sightings = Sightings::new(Duration::from_secs(90), 3);
        let here = addr("192.0.2.7:7002");
        for seed in 1..=3 {
            sightings.record(now, id(seed), here, 1);
        }
        sightings.record(now, id(1), here, 1);
        sightings.record(now, id(4), here, 1);
        assert_eq!(sightings.len(), 3);
        assert_eq!(sightings.lookup(now, &id(2)), None);
        for seed in [1, 3, 4] {
            assert_eq!(sightings.lookup(now, &id(seed)), Some(here), "{seed}");
        }
        for seed in 5..=100 {
            sightings.record(now, id(seed), here, 1);
        }
        assert_eq!(sightings.len(), 3);
        assert_eq!(sightings.by_age.len(), 3);
    }

    /// A box's own announcement, come back by broadcast, is no sighting; another's is
    /// recorded at the datagram's source IP with the announced port; garbage is dropped.
    #[test]
    fn own_announcement_is_ignored() {
        let shared = Shared::new(id(1), Duration::from_secs(90));
        let now = Instant::now();
        let from = addr("192.0.2.7:21025");
        shared.receive(now, &announcement(1).encode(), from);
        assert_eq!(shared.lookup(now, &id(1)), None);
        shared.receive(now, b"not an announcement", from);
        shared.receive(now, &announcement(2).encode(), from);
        assert_eq!(shared.lookup(now, &id(2)), Some(addr("192.0.2.7:7002")));
    }

    /// `wait_for` answers at once for a box already seen, wakes when a box is seen later,
    /// and gives up at its deadline.
    #[tokio::test]
    async fn wait_for_wakes_on_a_sighting_or_gives_up() {
        let shared = Arc::new(Shared::new(id(1), Duration::from_secs(90)));
        let from = addr("192.0.2.7:21025");
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(shared.wait_for(&id(2), soon).await, None);
        let waiting = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                shared.wait_for(&id(2), deadline).await
            }
        });
        tokio::task::yield_now().await;
        shared.receive(Instant::now(), &announcement(3).encode(), from);
        shared.receive(Instant::now(), &announcement(2).encode(), from);
        assert_eq!(waiting.await.unwrap(), Some(addr("192.0.2.7:7002")));
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            shared.wait_for(&id(2), deadline).await,
            Some(addr("192.0.2.7:7002"))
        );
    }

    /// Two boxes on one machine share the discovery port, broadcast on loopback, and find
    /// each other by ID, each at the other's announced port; neither records itself. A
    /// third that listens nowhere finds them and is not found.
    #[tokio::test]
    async fn two_boxes_on_one_machine_find_each_other() {
        // A free port, held (shared, as discovery shares it) while both boxes bind it;
        // both announce to loopback's broadcast address, which every socket on it hears.
        let held = bind(0).unwrap();
        let port = held.local_addr().unwrap().port();
        let config = DiscoveryConfig {
            port,
            interval: Duration::from_millis(200),
            targets: vec![SocketAddr::from(([127, 255, 255, 255], port))],
        };
        let first = Discovery::start(config.clone(), id(1), 7001).unwrap();
        let second = Discovery::start(config.clone(), id(2), 7002).unwrap();
        // A box that listens nowhere looks, but announces nothing.
        let third = Discovery::start(config, id(3), 0).unwrap();
        drop(held);
        assert_eq!(second.local_port(), port);
        assert_eq!(first.local_port(), port);
        let deadline = Instant::now() + Duration::from_secs(10);
        let (first_id, second_id) = (id(1), id(2));
        let (seen_by_first, seen_by_second) = tokio::join!(
            first.wait_for(&second_id, deadline),
            second.wait_for(&first_id, deadline)
        );
        assert_eq!(seen_by_first, Some(addr("127.0.0.1:7002")));
        assert_eq!(seen_by_second, Some(addr("127.0.0.1:7001")));
        assert_eq!(
            third.wait_for(&first_id, deadline).await,
            Some(addr("127.0.0.1:7001"))
        );
        assert_eq!(first.lookup(&id(3)), None, "a box without a port announced");
        assert_eq!(
            second.lookup(&id(3)),
            None,
            "a box without a port announced"
        );
        assert_eq!(first.lookup(&id(1)), None);
        assert_eq!(second.lookup(&id(2)), None);
    }

    /// An interval of zero is refused before any socket is made.
    #[tokio::test]
    async fn a_zero_interval_is_refused() {
        let config = DiscoveryConfig {
            port: 0,
            interval: Duration::ZERO,
            targets: Vec::new(),
        };
        assert!(matches!(
            Discovery::start(config, id(1), 7001),
            Err(DiscoveryError::ZeroInterval)
        ));
    }
}
