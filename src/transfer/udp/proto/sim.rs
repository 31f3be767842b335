//! A virtual-time harness for the two state machines (quinn-proto's `tests/util.rs` `Pair`
//! is the model): a [`Sender`] and a [`Receiver`] joined by a simulated link with a
//! bottleneck, latency, loss, reordering, duplication, corruption and outages, driven by a
//! virtual clock that jumps from one event to the next. Every fault is drawn from a seeded
//! generator, so a failing case reproduces from its seed, and thousands of datagrams run in
//! milliseconds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::receiver::{
    Announced, FIRST_DATA_TIMEOUT, Failure, REPORT_EVERY, Receiver, STALL_TIMEOUT,
};
use super::sender::{
    End, HELLO_TIMEOUT, INITIAL_WINDOW, SILENCE_TIMEOUT, Sender, SenderConfig, SenderStats,
    feedback_grace,
};
use crate::transfer::udp::wire::{self, CHUNK_LEN, Datagram};

/// The serving box's UDP address.
const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    7000,
);

/// The downloading box's UDP address.
const CLIENT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    40000,
);

/// Most events one run may take: a run that needs more is stuck, not slow.
const MAX_STEPS: usize = 10_000_000;

/// What happens to datagrams in one direction of the link.
#[derive(Debug, Clone)]
struct Link {
    /// One-way propagation delay.
    latency: Duration,
    /// Bottleneck rate, bytes per second.
    bandwidth: f64,
    /// Longest queue at the bottleneck; a datagram that would wait longer is dropped.
    queue: Duration,
    /// Chance a datagram is lost.
    loss: f64,
    /// Chance a datagram is delayed by up to `reorder_by` more (so later ones pass it).
    reorder: f64,
    /// Longest extra delay of a reordered datagram.
    reorder_by: Duration,
    /// Chance a datagram arrives twice.
    duplicate: f64,
    /// Chance a datagram arrives with one byte damaged.
    corrupt: f64,
    /// Spans of virtual time (from the start) in which every datagram is lost.
    outages: Vec<Range<Duration>>,
}

impl Link {
    /// The benchmark's link: 100 Mbit/s, 25 ms each way (a 50 ms round trip), 50 ms of queue.
    fn clean() -> Link {
        Link {
            latency: Duration::from_millis(25),
            bandwidth: 12.5e6,
            queue: Duration::from_millis(50),
            loss: 0.0,
            reorder: 0.0,
            reorder_by: Duration::ZERO,
            duplicate: 0.0,
            corrupt: 0.0,
            outages: Vec::new(),
        }
    }

    /// The clean link losing a share `p` of the datagrams.
    fn loss(p: f64) -> Link {
        Link {
            loss: p,
            ..Link::clean()
        }
    }

    /// A link that delivers nothing.
    fn down() -> Link {
        Link::loss(1.0)
    }
}

/// A datagram on its way: when it arrives, an order for equal times, whether the link
/// damaged it, and its bytes.
type InFlight = Reverse<(Instant, u64, bool, Vec<u8>)>;

/// One direction of the link with the datagrams in flight on it.
struct Pipe {
    /// What the link does.
    link: Link,
    /// When the bottleneck finishes sending what it holds.
    busy_until: Instant,
    /// Datagrams in flight, earliest arrival first.
    in_flight: BinaryHeap<InFlight>,
    /// Datagrams sent into the pipe so far (orders equal arrival times).
    sent: u64,
}

impl Pipe {
    fn new(link: Link, start: Instant) -> Pipe {
        Pipe {
            link,
            busy_until: start,
            in_flight: BinaryHeap::new(),
            sent: 0,
        }
    }

    /// Puts a datagram on the link at `now`; the link decides its fate.
    fn send(&mut self, now: Instant, start: Instant, datagram: Vec<u8>, rng: &mut SmallRng) {
        self.sent += 1;
        let elapsed = now - start;
        if self.link.outages.iter().any(|span| span.contains(&elapsed))
            || rng.random_bool(self.link.loss)
        {
            return;
        }
        let depart = now.max(self.busy_until);
        if depart - now > self.link.queue {
            return;
        }
        self.busy_until =
            depart + Duration::from_secs_f64(datagram.len() as f64 / self.link.bandwidth);
        let copies = if rng.random_bool(self.link.duplicate) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let mut arrive = self.busy_until + self.link.latency;
            if rng.random_bool(self.link.reorder) {
                arrive += self.link.reorder_by.mul_f64(rng.random::<f64>());
            }
            let mut bytes = datagram.clone();
            let damaged = rng.random_bool(self.link.corrupt);
            if damaged {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= rng.random_range(1..=255u8);
            }
            self.in_flight
                .push(Reverse((arrive, self.sent * 2 + copy, damaged, bytes)));
        }
    }

    /// When the next datagram arrives.
    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((at, ..))| *at)
    }

    /// The next datagram that has arrived by `now`, and whether it was damaged.
    fn arrived(&mut self, now: Instant) -> Option<(bool, Vec<u8>)> {
        if self.next_arrival()? > now {
            return None;
        }
        self.in_flight
            .pop()
            .map(|Reverse((_, _, damaged, bytes))| (damaged, bytes))
    }
}

/// How a run ended, and when (virtual time since the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The receiver has every chunk and has said so.
    Complete(Duration),
    /// The receiver gave up.
    Failed(Failure, Duration),
    /// The sender ended by itself first.
    SenderEnded(End, Duration),
}

/// Two endpoints, the link between them, and the virtual clock.
struct Pair {
    /// Virtual time zero.
    start: Instant,
    /// Virtual now.
    now: Instant,
    /// The serving end.
    sender: Sender,
    /// The downloading end.
    receiver: Receiver,
    /// The file being sent.
    file: Vec<u8>,
    /// What the receiver wrote.
    written: Vec<u8>,
    /// Sender to receiver.
    down: Pipe,
    /// Receiver to sender.
    up: Pipe,
    /// Every fault is drawn from this.
    rng: SmallRng,
    /// Chunks whose first copies the link loses, with how many more copies to lose.
    lose_copies: Vec<(u32, u32)>,
    /// From this virtual time on the sender does nothing (a hung serving box).
    sender_stops: Option<Duration>,
    /// From this virtual time on the receiver does nothing.
    receiver_stops: Option<Duration>,
    /// Damaged datagrams that reached an endpoint (all of them must be rejected).
    damaged_arrivals: u64,
    /// When the receiver last got a new chunk.
    last_new_chunk: Instant,
    /// When the sender last heard from the receiver.
    last_heard: Instant,
}

impl Pair {
    /// A transfer of `size` seeded bytes over `down` and `up`, faults drawn from `seed`.
    fn new(size: usize, down: Link, up: Link, seed: u64) -> Pair {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut file = vec![0u8; size];
        rng.fill(file.as_mut_slice());
        let start = Instant::now();
        let (session, token) = (rng.random::<u64>(), rng.random::<[u8; 16]>());
        let sender = Sender::new(
            SenderConfig {
                session,
                token,
                size: size as u64,
                chunk_len: CHUNK_LEN,
                client_ip: CLIENT.ip(),
                max_rate: None,
            },
            start,
        );
        let announced = Announced {
            session,
            token,
            size: size as u64,
            chunk_len: CHUNK_LEN,
        };
        let receiver = Receiver::new(announced, SERVER, start).expect("a valid announcement");
        Pair {
            start,
            now: start,
            sender,
            receiver,
            written: vec![0u8; size],
            file,
            down: Pipe::new(down, start),
            up: Pipe::new(up, start),
            rng,
            lose_copies: Vec::new(),
            sender_stops: None,
            receiver_stops: None,
            damaged_arrivals: 0,
            last_new_chunk: start,
            last_heard: start,
        }
    }

    /// Virtual time since the start.
    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Whether the sender still acts (it has not hung).
    fn sender_runs(&self) -> bool {
        self.sender_stops.is_none_or(|at| self.elapsed() < at)
    }

    /// Whether the receiver still acts.
    fn receiver_runs(&self) -> bool {
        self.receiver_stops.is_none_or(|at| self.elapsed() < at)
    }

    /// Runs until the transfer completes or an endpoint gives up.
    fn run(&mut self) -> Outcome {
        for _ in 0..MAX_STEPS {
            if let Some(outcome) = self.step() {
                return outcome;
            }
            let next = [
                self.sender_runs()
                    .then(|| self.sender.poll_timeout())
                    .flatten(),
                self.receiver_runs()
                    .then(|| self.receiver.poll_timeout())
                    .flatten(),
                self.down.next_arrival(),
                self.up.next_arrival(),
            ]
            .into_iter()
            .flatten()
            .min();
            let next = next.expect("something is always due: a time-out if nothing else");
            self.now = self.now.max(next);
        }
        panic!("no outcome after {MAX_STEPS} steps");
    }

    /// Delivers what has arrived, lets both ends act at `now`, and says whether it is over.
    fn step(&mut self) -> Option<Outcome> {
        let now = self.now;
        while let Some((damaged, datagram)) = self.down.arrived(now) {
            if !self.receiver_runs() {
                continue;
            }
            let new = self.receiver.handle(now, SERVER, &datagram);
            if damaged {
                self.damaged_arrivals += 1;
                assert!(
                    wire::decode(&datagram).is_err(),
                    "a damaged datagram passed the check"
                );
            }
            if let Some(chunk) = new {
                let offset = chunk.offset as usize;
                self.written[offset..offset + chunk.bytes.len()].copy_from_slice(chunk.bytes);
                self.last_new_chunk = now;
            }
        }
        while let Some((damaged, datagram)) = self.up.arrived(now) {
            if !self.sender_runs() {
                continue;
            }
            if damaged {
                self.damaged_arrivals += 1;
                assert!(
                    wire::decode(&datagram).is_err(),
                    "a damaged datagram passed the check"
                );
            }
            self.sender.handle(now, CLIENT, &datagram);
            self.last_heard = now;
        }
        if self.sender_runs() {
            self.sender.handle_timeout(now);
            while let Some(transmit) = self.sender.poll_transmit(now) {
                assert_eq!(transmit.destination, CLIENT);
                let payload = &self.file[transmit.offset as usize..][..transmit.len];
                let mut datagram = Vec::new();
                transmit.encode(payload, &mut datagram);
                if let Some((_, left)) = self
                    .lose_copies
                    .iter_mut()
                    .find(|(c, _)| *c == transmit.chunk)
                    && *left > 0
                {
                    *left -= 1;
                    continue;
                }
                self.down.send(now, self.start, datagram, &mut self.rng);
            }
        }
        if self.receiver_runs() {
            loop {
                match self.receiver.poll_transmit(now) {
                    Ok(Some(datagram)) => self.up.send(now, self.start, datagram, &mut self.rng),
                    Ok(None) => break,
                    Err(failure) => return Some(Outcome::Failed(failure, self.elapsed())),
                }
            }
            if self.receiver.poll_timeout().is_none() {
                return Some(Outcome::Complete(self.elapsed()));
            }
        }
        self.sender
            .end()
            .map(|end| Outcome::SenderEnded(end, self.elapsed()))
    }

    /// Runs to the end and checks that the receiver holds exactly the file's bytes; then
    /// lets the reports still in flight reach the sender (the last one says "complete",
    /// unless the link loses it: the TCP finish is the reliable signal).
    fn transfer(&mut self) -> (Duration, SenderStats) {
        let outcome = self.run();
        let Outcome::Complete(took) = outcome else {
            panic!("transfer did not complete: {outcome:?}");
        };
        while let Some(next) = self.up.next_arrival() {
            self.now = next;
            while let Some((_, datagram)) = self.up.arrived(next) {
                self.sender.handle(next, CLIENT, &datagram);
            }
        }
        assert!(
            self.written == self.file,
            "the received bytes differ from the file"
        );
        (took, self.sender.stats())
    }
}

/// Sizes around the chunk boundaries, and a file of a few hundred chunks.
const SIZES: [usize; 6] = [
    0,
    1,
    CHUNK_LEN - 1,
    CHUNK_LEN,
    CHUNK_LEN + 1,
    300 * CHUNK_LEN + 7,
];

/// On a clean link every size arrives exact, nothing is resent, the sender learns that the
/// receiver has everything, and a file of 300 chunks takes little more than a round trip
/// and the time to send it.
#[test]
fn a_clean_link_delivers_every_size_without_resends() {
    for size in SIZES {
        let mut pair = Pair::new(size, Link::clean(), Link::clean(), 1);
        let (took, stats) = pair.transfer();
        assert_eq!(stats.resent, 0, "size {size}");
        assert!(
            stats.complete || size == 0,
            "size {size}: the sender was told"
        );
        assert!(
            took < Duration::from_millis(400),
            "size {size} took {took:?}"
        );
    }
}

/// Random loss in both directions at several rates: every transfer ends with the exact
/// bytes, and only lost chunks are resent (resends stay near the loss rate).
#[test]
fn random_loss_at_several_rates() {
    for loss in [0.01, 0.05, 0.2, 0.4] {
        for seed in 0..4 {
            for size in [CHUNK_LEN + 1, 1000 * CHUNK_LEN] {
                let mut pair = Pair::new(size, Link::loss(loss), Link::loss(loss), seed);
                let (took, stats) = pair.transfer();
                assert!(
                    took < Duration::from_secs(30),
                    "loss {loss} seed {seed}: {took:?}"
                );
                if size > CHUNK_LEN * 2 {
                    let resent = stats.resent as f64 / stats.sent as f64;
                    assert!(stats.resent > 0, "loss {loss} seed {seed}");
                    assert!(
                        resent < loss * 2.0 + 0.05,
                        "loss {loss} seed {seed}: {stats:?}"
                    );
                }
            }
        }
    }
}

/// Datagrams overtaking each other by up to 30 ms (more than the reordering a report
/// allows for) cost at most a few needless resends, and the bytes arrive exact.
#[test]
fn reordering() {
    for seed in 0..4 {
        let link = Link {
            reorder: 0.2,
            reorder_by: Duration::from_millis(30),
            ..Link::clean()
        };
        let (_, stats) = Pair::new(1000 * CHUNK_LEN, link.clone(), link, seed).transfer();
        assert!(stats.resent < stats.sent / 4, "seed {seed}: {stats:?}");
    }
}

/// Duplicated datagrams are counted once: exact bytes, and no chunk is resent because of
/// them.
#[test]
fn duplication() {
    for seed in 0..4 {
        let link = Link {
            duplicate: 0.3,
            ..Link::clean()
        };
        let (_, stats) = Pair::new(1000 * CHUNK_LEN, link.clone(), link, seed).transfer();
        assert_eq!(stats.resent, 0, "seed {seed}");
    }
}

/// Damaged datagrams in both directions are rejected by the integrity check (the harness
/// asserts it for each one), and the file arrives exact.
#[test]
fn corruption_is_rejected() {
    for seed in 0..4 {
        let link = Link {
            corrupt: 0.1,
            ..Link::clean()
        };
        let mut pair = Pair::new(1000 * CHUNK_LEN, link.clone(), link, seed);
        pair.transfer();
        assert!(
            pair.damaged_arrivals > 50,
            "seed {seed}: {}",
            pair.damaged_arrivals
        );
    }
}

/// Every fault at once, on many seeds: the file always arrives exact.
#[test]
fn every_fault_at_once() {
    for seed in 0..16 {
        let link = Link {
            loss: 0.05,
            reorder: 0.1,
            reorder_by: Duration::from_millis(20),
            duplicate: 0.05,
            corrupt: 0.02,
            ..Link::clean()
        };
        let size = SIZES[seed as usize % SIZES.len()] + 500 * CHUNK_LEN;
        Pair::new(size, link.clone(), link, seed).transfer();
    }
}

/// Thousands of datagrams (a 10 MB file at 5% loss) in virtual time.
#[test]
fn thousands_of_datagrams() {
    let mut pair = Pair::new(10_000_000, Link::loss(0.05), Link::loss(0.05), 7);
    let (took, stats) = pair.transfer();
    assert!(stats.sent > 7000, "{stats:?}");
    // 10 MB on a 100 Mbit/s link: 0.8 s at the line rate.
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// The file's last chunk lost, even twice: no report lists it (no later datagram told the
/// receiver it was sent), so the tail's time-out resends it, and the bytes arrive exact.
#[test]
fn a_lost_last_chunk() {
    for (size, copies) in [
        (CHUNK_LEN * 3 + 5, 1),
        (CHUNK_LEN * 3 + 5, 2),
        (CHUNK_LEN * 200, 1),
    ] {
        let mut pair = Pair::new(size, Link::clean(), Link::clean(), 3);
        let last = (size.div_ceil(CHUNK_LEN) - 1) as u32;
        pair.lose_copies.push((last, copies));
        let (took, stats) = pair.transfer();
        assert!(stats.resent >= u64::from(copies), "{stats:?}");
        // Well inside the stall time-out: a round trip or few of patience, doubled.
        assert!(
            took < Duration::from_secs(1),
            "{copies} copies lost: {took:?}"
        );
    }
}

/// A link that goes down both ways for 3 s in the middle of a transfer: the tail's
/// time-out stays short enough that the transfer resumes and completes once it is back.
#[test]
fn an_outage_that_ends() {
    let outage = Duration::from_millis(200)..Duration::from_millis(3200);
    let link = Link {
        outages: vec![outage.clone()],
        ..Link::clean()
    };
    let (took, _) = Pair::new(3000 * CHUNK_LEN, link.clone(), link, 5).transfer();
    assert!(
        took > outage.end && took < outage.end + MAX_TAIL_RESUME,
        "{took:?}"
    );
}

/// After an outage the tail's doubled time-out (at most 2 s) and a round trip pass before
/// the transfer resumes.
const MAX_TAIL_RESUME: Duration = Duration::from_millis(2500);

/// A serving box that hangs mid-transfer: the receiver fails as stalled at the first report
/// after [`STALL_TIMEOUT`] without a new chunk, not before.
#[test]
fn a_stalled_sender_fails_the_receiver_on_time() {
    let mut pair = Pair::new(3000 * CHUNK_LEN, Link::clean(), Link::clean(), 9);
    pair.sender_stops = Some(Duration::from_millis(150));
    let outcome = pair.run();
    let Outcome::Failed(Failure::Stalled(waited), at) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(waited, STALL_TIMEOUT);
    let since_progress = pair.start + at - pair.last_new_chunk;
    assert!(since_progress > STALL_TIMEOUT, "{since_progress:?}");
    assert!(
        since_progress <= STALL_TIMEOUT + REPORT_EVERY,
        "{since_progress:?}"
    );
}

/// A receiver that hangs mid-transfer: the sender abandons the session once it has heard
/// nothing for [`SILENCE_TIMEOUT`] (within one pacing tick), not before.
#[test]
fn a_stalled_receiver_ends_the_sender_on_time() {
    let mut pair = Pair::new(3000 * CHUNK_LEN, Link::clean(), Link::clean(), 11);
    pair.receiver_stops = Some(Duration::from_millis(150));
    let outcome = pair.run();
    let Outcome::SenderEnded(End::Silent, at) = outcome else {
        panic!("{outcome:?}");
    };
    let silent = pair.start + at - pair.last_heard;
    assert!(silent > SILENCE_TIMEOUT, "{silent:?}");
    assert!(
        silent <= SILENCE_TIMEOUT + Duration::from_millis(1),
        "{silent:?}"
    );
}

/// No datagram ever reaches the receiver: it reports UDP blocked at the first report past
/// [`FIRST_DATA_TIMEOUT`], exactly.
#[test]
fn a_blocked_path_is_reported_at_the_right_time() {
    let outcome = Pair::new(100 * CHUNK_LEN, Link::down(), Link::clean(), 13).run();
    assert_eq!(
        outcome,
        Outcome::Failed(
            Failure::Blocked(FIRST_DATA_TIMEOUT),
            FIRST_DATA_TIMEOUT + REPORT_EVERY
        )
    );
}

/// No HELLO ever reaches the sender: it gives the session up after [`HELLO_TIMEOUT`], and
/// sends nothing meanwhile.
#[test]
fn a_receiver_that_never_says_hello() {
    let mut pair = Pair::new(100 * CHUNK_LEN, Link::clean(), Link::clean(), 17);
    pair.receiver_stops = Some(Duration::ZERO);
    let outcome = pair.run();
    let Outcome::SenderEnded(End::NoHello, at) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        at > HELLO_TIMEOUT && at <= HELLO_TIMEOUT + Duration::from_millis(1),
        "{at:?}"
    );
    assert_eq!(pair.sender.stats().sent, 0);
    assert_eq!(pair.down.sent, 0);
}

/// A HELLO with the right token from another IP proves nothing: the sender sends it no
/// data. Nor does a DATA datagram from anywhere but the server reach the receiver's file.
#[test]
fn strangers_are_ignored() {
    let mut pair = Pair::new(10 * CHUNK_LEN, Link::clean(), Link::clean(), 19);
    let start = pair.start;
    let Ok(Some(hello)) = pair.receiver.poll_transmit(start) else {
        panic!("the receiver says HELLO first");
    };
    assert!(matches!(wire::decode(&hello), Ok(Datagram::Hello { .. })));
    let stranger = SocketAddr::from(([10, 0, 0, 3], 40000));
    pair.sender.handle(start, stranger, &hello);
    assert_eq!(
        pair.sender.poll_transmit(start + Duration::from_millis(5)),
        None
    );
    pair.sender.handle(start, CLIENT, &hello);
    let transmit = pair.sender.poll_transmit(start + Duration::from_millis(5));
    let transmit = transmit.expect("the proven client gets data");
    let mut datagram = Vec::new();
    transmit.encode(&pair.file[..transmit.len], &mut datagram);
    assert_eq!(pair.receiver.handle(start, stranger, &datagram), None);
    assert!(pair.receiver.handle(start, SERVER, &datagram).is_some());
}

/// A HELLO that reaches the sender from another port of the client's IP first (spoofed,
/// or a copy replayed from there) binds the session to that address: it gets at most
/// [`INITIAL_WINDOW`] datagrams, ever, with no FEEDBACK from it; the real receiver's
/// datagrams, from its own port, are not heard; and the session ends on silence.
#[test]
fn a_hello_from_another_port_gets_only_the_initial_window() {
    let mut pair = Pair::new(3000 * CHUNK_LEN, Link::clean(), Link::clean(), 23);
    let start = pair.start;
    let Ok(Some(hello)) = pair.receiver.poll_transmit(start) else {
        panic!("the receiver says HELLO first");
    };
    let elsewhere = SocketAddr::new(CLIENT.ip(), CLIENT.port() + 1);
    pair.sender.handle(start, elsewhere, &hello);
    pair.sender.handle(start, CLIENT, &hello);
    let mut sent = 0u64;
    let mut now = start;
    while let Some(at) = pair.sender.poll_timeout() {
        now = at;
        pair.sender.handle_timeout(now);
        while let Some(transmit) = pair.sender.poll_transmit(now) {
            assert_eq!(transmit.destination, elsewhere);
            sent += 1;
        }
        // The real receiver keeps reporting from its own port: unheard.
        if let Ok(Some(report)) = pair.receiver.poll_transmit(now) {
            pair.sender.handle(now, CLIENT, &report);
        }
    }
    assert_eq!(sent, INITIAL_WINDOW);
    assert_eq!(pair.sender.end(), Some(End::Silent));
    assert!(now - start <= SILENCE_TIMEOUT + Duration::from_millis(2));
}

/// FEEDBACK from the bound address lifts the initial window; when it stops, sending stops
/// within [`feedback_grace`] (nothing more is pushed at a path that may be gone), resumes
/// with the next FEEDBACK, and the session ends after [`SILENCE_TIMEOUT`] without one.
#[test]
fn sending_follows_feedback() {
    let mut pair = Pair::new(20_000 * CHUNK_LEN, Link::clean(), Link::clean(), 29);
    // The receiver hangs once data flows: its FEEDBACK stops.
    pair.receiver_stops = Some(Duration::from_millis(300));
    let outcome = pair.run();
    let Outcome::SenderEnded(End::Silent, _) = outcome else {
        panic!("{outcome:?}");
    };
    let stats = pair.sender.stats();
    assert!(
        stats.sent > INITIAL_WINDOW,
        "the window was lifted: {stats:?}"
    );
    // Everything sent went out before the grace after the last FEEDBACK ran out: at
    // 100 Mbit/s, 0.3 s of sending and a grace are far fewer datagrams than the file.
    let grace = feedback_grace(Duration::from_millis(50));
    let bound = ((Duration::from_millis(300) + grace).as_secs_f64() * 12.5e6 * 1.5
        / wire::MAX_DATAGRAM as f64) as u64;
    assert!(stats.sent < bound, "{stats:?} (bound {bound})");
    assert!(stats.sent < 20_000);
}

/// A pause for lack of FEEDBACK is not the end: a receiver whose reports stop for a
/// second (longer than the grace, shorter than the silence time-out) and then come back
/// gets the whole file.
#[test]
fn sending_resumes_when_feedback_returns() {
    let link = Link {
        outages: vec![Duration::from_millis(300)..Duration::from_millis(1300)],
        ..Link::clean()
    };
    let mut pair = Pair::new(5000 * CHUNK_LEN, Link::clean(), link, 31);
    let (took, _) = pair.transfer();
    assert!(took > Duration::from_millis(1300), "{took:?}");
}

/// The benchmark's link fills, whatever its random loss: startup is not cut short by
/// random loss, the pacer's unit is the delivery estimate's, and cruise holds the link's
/// rate (10 MB would take 0.82 s at the 97.4 Mbit/s of payload the link carries; a round
/// trip of start, one of ending and the loss recovery come on top).
#[test]
fn the_benchmark_link_fills_despite_random_loss() {
    for (loss, seed) in [(0.0, 3), (0.02, 4), (0.05, 5), (0.1, 6)] {
        let size = 10_000_000;
        let mut pair = Pair::new(size, Link::loss(loss), Link::loss(loss), seed);
        let (took, _) = pair.transfer();
        let mbit = size as f64 * 8.0 / took.as_secs_f64() / 1e6;
        // Before: 76 Mbit/s clean, 71-73 at 2-10% (pacing in wire bytes at a payload
        // estimate; random loss ending startup). Now: 87 clean, 79-81 at 2-10%.
        let floor = if loss == 0.0 { 83.0 } else { 77.0 };
        assert!(mbit > floor, "loss {loss}: {mbit:.1} Mbit/s ({took:?})");
    }
}
