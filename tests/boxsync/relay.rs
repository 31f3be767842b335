//! A fault-injecting relay between a client box and a server box: TCP passes through
//! untouched, UDP datagrams on the same port number suffer seeded, deterministic faults
//! (loss, loss bursts, reordering, duplication, corruption), each direction on its own. It
//! can also attack (inject forged, replayed and truncated datagrams next to the real ones)
//! and record every UDP byte it relays.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use boxsync::transfer::udp::receiver;

/// What happens to datagrams in one direction. Probabilities are per datagram.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Independent loss.
    pub loss: f64,
    /// Loss bursts (Gilbert-Elliott): chance to enter a burst, chance to leave it; every
    /// datagram in a burst is lost.
    pub burst: Option<(f64, f64)>,
    /// Chance a datagram is held back and sent after the next one.
    pub reorder: f64,
    /// Chance a datagram is sent twice.
    pub duplicate: f64,
    /// Chance one byte of a datagram is flipped.
    pub corrupt: f64,
    /// Drop everything (a firewall).
    pub blackhole: bool,
    /// Chance that a forged datagram (the real one's clear header, then random bytes) is
    /// sent after a real one.
    pub forge: f64,
    /// Chance that one of the last 64 datagrams relayed is sent again (captured and
    /// resent).
    pub replay: f64,
    /// Chance that a copy of the datagram cut short (to under 48 bytes) is sent after it.
    pub truncate: f64,
    /// Keep every datagram relayed in [`RelayStats::captured`].
    pub record: bool,
}

impl Faults {
    /// Only independent loss.
    pub fn loss(p: f64) -> Faults {
        Faults {
            loss: p,
            ..Faults::default()
        }
    }
}

/// Counts of what the relay did, both directions together.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams received from either side.
    pub seen: AtomicU64,
    /// Dropped by loss, bursts or blackhole.
    pub dropped: AtomicU64,
    /// Sent with a flipped byte.
    pub corrupted: AtomicU64,
    /// Sent twice.
    pub duplicated: AtomicU64,
    /// Held back past the next datagram.
    pub reordered: AtomicU64,
    /// Forged datagrams injected.
    pub forged: AtomicU64,
    /// Old datagrams sent again.
    pub replayed: AtomicU64,
    /// Truncated copies injected.
    pub truncated: AtomicU64,
    /// Every datagram relayed, both directions, when the faults say `record`.
    pub captured: std::sync::Mutex<Vec<u8>>,
}

/// A running relay; clients connect to `addr` as if it were the server.
pub struct Relay {
    /// The address to give clients (TCP and UDP).
    pub addr: SocketAddr,
    /// What the relay did.
    pub stats: Arc<RelayStats>,
    /// When set, every datagram is dropped from now on (the path dies).
    pub cut: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Deterministic xorshift generator: the same seed gives the same fault decisions.
struct Rng(u64);

impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        p > 0.0 && ((self.0 >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn below(&mut self, n: usize) -> usize {
        self.chance(0.0);
        (self.0 % n as u64) as usize
    }
}

/// The fault state of one direction.
struct Direction {
    faults: Faults,
    rng: Rng,
    in_burst: bool,
    held: Option<Vec<u8>>,
    /// The last datagrams relayed, for replays.
    recent: std::collections::VecDeque<Vec<u8>>,
}

impl Direction {
    /// Decides the fate of one datagram: the datagrams to send now, in order.
    fn apply(&mut self, datagram: Vec<u8>, stats: &RelayStats, cut: bool) -> Vec<Vec<u8>> {
        stats.seen.fetch_add(1, Ordering::Relaxed);
        if self.faults.record {
            let mut captured = stats.captured.lock().unwrap();
            captured.extend_from_slice(&datagram);
        }
        let mut attacks = Vec::new();
        if self.rng.chance(self.faults.forge) && datagram.len() > 20 {
            let mut forged = datagram.clone();
            for byte in &mut forged[12..] {
                *byte = self.rng.below(256) as u8;
            }
            stats.forged.fetch_add(1, Ordering::Relaxed);
            attacks.push(forged);
        }
        if self.rng.chance(self.faults.replay) && !self.recent.is_empty() {
            let old = self.recent[self.rng.below(self.recent.len())].clone();
            stats.replayed.fetch_add(1, Ordering::Relaxed);
            attacks.push(old);
        }
        if self.rng.chance(self.faults.truncate) && !datagram.is_empty() {
            // Mostly shorter than any sealed datagram, sometimes just long enough to try.
            let len = self.rng.below(datagram.len().min(48));
            stats.truncated.fetch_add(1, Ordering::Relaxed);
            attacks.push(datagram[..len].to_vec());
        }
        if self.faults.replay > 0.0 {
            if self.recent.len() == 64 {
                self.recent.pop_front();
            }
            self.recent.push_back(datagram.clone());
        }
        let mut out = self.fate(datagram, stats, cut);
        if !(cut || self.faults.blackhole) {
            out.extend(attacks);
        }
        out
    }

    /// The datagram's own fate under loss, corruption, reordering and duplication.
    fn fate(&mut self, datagram: Vec<u8>, stats: &RelayStats, cut: bool) -> Vec<Vec<u8>> {
        if let Some((enter, leave)) = self.faults.burst {
            self.in_burst = if self.in_burst {
                !self.rng.chance(leave)
            } else {
                self.rng.chance(enter)
            };
        }
        if cut || self.faults.blackhole || self.in_burst || self.rng.chance(self.faults.loss) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let mut datagram = datagram;
        if self.rng.chance(self.faults.corrupt) {
            let i = self.rng.below(datagram.len());
            datagram[i] ^= 0x5a;
            stats.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        let mut out = Vec::new();
        if self.rng.chance(self.faults.reorder) && self.held.is_none() {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some(datagram);
            return out;
        }
        if self.rng.chance(self.faults.duplicate) {
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
            out.push(datagram.clone());
        }
        out.push(datagram);
        if let Some(held) = self.held.take() {
            out.push(held);
        }
        out
    }
}

impl Relay {
    /// Starts a relay in front of the server at `server`, with faults for datagrams going
    /// to the server and to the client.
    pub async fn start(
        server: SocketAddr,
        to_server: Faults,
        to_client: Faults,
        seed: u64,
    ) -> Relay {
        let (listener, front) = loop {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            if let Ok(front) = UdpSocket::bind(("127.0.0.1", port)).await {
                break (listener, front);
            }
        };
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(RelayStats::default());
        let cut = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();

        tasks.push(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(server).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        }));

        // The relay must lose only what its faults say: on a loaded machine a relay task
        // that runs late would otherwise see its socket's default buffer overflow.
        receiver::enlarge_receive_buffer(&front);
        let front = Arc::new(front);
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        receiver::enlarge_receive_buffer(&back);
        let back = Arc::new(back);
        back.connect(server).await.unwrap();
        let client_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));

        let mut upward = Direction {
            faults: to_server,
            rng: Rng(seed | 1),
            in_burst: false,
            held: None,
            recent: Default::default(),
        };
        {
            let (front, back, stats, cut, client_addr) = (
                front.clone(),
                back.clone(),
                stats.clone(),
                cut.clone(),
                client_addr.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                while let Ok((len, from)) = front.recv_from(&mut buffer).await {
                    *client_addr.lock().await = Some(from);
                    let cut = cut.load(Ordering::Relaxed);
                    for datagram in upward.apply(buffer[..len].to_vec(), &stats, cut) {
                        let _ = back.send(&datagram).await;
                    }
                }
            }));
        }
        let mut downward = Direction {
            faults: to_client,
            rng: Rng(seed.wrapping_mul(31) | 1),
            in_burst: false,
            held: None,
            recent: Default::default(),
        };
        {
            let (stats, cut) = (stats.clone(), cut.clone());
            tasks.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                while let Ok(len) = back.recv(&mut buffer).await {
                    let Some(client) = *client_addr.lock().await else {
                        continue;
                    };
                    let cut = cut.load(Ordering::Relaxed);
                    for datagram in downward.apply(buffer[..len].to_vec(), &stats, cut) {
                        let _ = front.send_to(&datagram, client).await;
                    }
                }
            }));
        }
        Relay {
            addr,
            stats,
            cut,
            tasks,
        }
    }
}
