//! The serving box's side of a UDP transfer as a state machine: it waits for the
//! receiver's HELLO, decides which chunk goes next and when (pacing at the controlled
//! rate), resends exactly what the reports say is lost, and ends when the receiver has
//! everything or falls silent.
//!
//! The session is bound to the full address (IP and port) of the first HELLO from the
//! client's IP, and hears nothing from anywhere else. It sends at most [`INITIAL_WINDOW`]
//! datagrams there until a FEEDBACK from that address shows a receiver reading them, and
//! after that only while FEEDBACK keeps coming (see [`feedback_grace`]): a HELLO sent, or
//! replayed, from someone else's address gets that address the initial window and no more.
//! (The driver hands in only datagrams that authenticated under the transfer's keys; see
//! [`crate::transfer::udp::seal`].) It reads no clock and touches no socket or file: the driver
//! passes `now` and datagrams in, sends what [`Sender::poll_transmit`] asks for with the
//! chunk's bytes, and wakes at [`Sender::poll_timeout`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::transfer::udp::rate::{RateControl, Sample};
use crate::transfer::udp::seal::SEAL_OVERHEAD;
use crate::transfer::udp::wire::{self, Data, Datagram, Feedback, Token};

/// How long the sender waits for the receiver's HELLO: longer than the receiver waits for
/// its first datagram ([`super::receiver::FIRST_DATA_TIMEOUT`]), so that a path blocked
/// towards the server is noticed, and fallen back from, by the client first; short enough
/// that a session nobody speaks to frees its slot within seconds.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A transfer whose receiver has sent no report for this long is abandoned (and its slot
/// freed). The receiver reports every [`super::receiver::REPORT_EVERY`] while it runs.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most DATA datagrams sent to the bound address before a FEEDBACK from it: about one round
/// trip at the starting rate on a 50 ms path, so that proving the receiver costs an honest
/// transfer no time, while a HELLO aimed at someone else's port gets them ~340 KB at most.
pub const INITIAL_WINDOW: u64 = 256;

/// Sending pauses when the latest FEEDBACK is older than this (or four round trips, if
/// longer): a receiver reports every 10 ms, so this many lost in a row means the path, or
/// the receiver, is gone. Sending resumes with the next FEEDBACK.
pub const FEEDBACK_GRACE: Duration = Duration::from_millis(500);

/// Pacing granularity: the sender wakes at most this often and sends what the rate
/// allows, so that datagrams leave in batches (one system call each) rather than one by
/// one.
const TICK: Duration = Duration::from_millis(1);

/// Longest span of sending credit one wake-up may use, so that a late timer does not turn
/// into a large burst.
const MAX_BURST: Duration = Duration::from_millis(4);

/// Most doublings of the tail's resend time-out (see `SendState::queue_missing`).
const MAX_TAIL_BACKOFF: u32 = 6;

/// Longest the tail's time-out grows to by doubling: well inside the receiver's
/// [`super::receiver::STALL_TIMEOUT`], so that a path that comes back is used in time.
const MAX_TAIL_WAIT: Duration = Duration::from_secs(2);

/// In the tail, a resend goes out twice only while fewer chunks than this wait to be
/// resent (see `SendState::next_chunk`).
const SECOND_COPIES_BELOW: usize = 64;

/// What the sender needs to know about the transfer.
#[derive(Debug, Clone, Copy)]
pub struct SenderConfig {
    /// The session id.
    pub session: u64,
    /// The secret the receiver must present.
    pub token: Token,
    /// The file's size.
    pub size: u64,
    /// File bytes per datagram.
    pub chunk_len: usize,
    /// Only a UDP endpoint at this IP (the TCP client's) may become the receiver.
    pub client_ip: IpAddr,
    /// Rate cap, bytes per second.
    pub max_rate: Option<f64>,
}

/// How a sending session went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// DATA datagrams sent.
    pub sent: u64,
    /// Of those, resends.
    pub resent: u64,
    /// Whether the receiver reported having everything.
    pub complete: bool,
    /// Why the session ended by itself, if it did (`None`: stopped, or still running).
    pub end: Option<End>,
    /// Datagrams the driver dropped before they reached the state machine (it fills this
    /// in: the state machine sees only authentic datagrams).
    pub drops: crate::transfer::udp::seal::DropCounts,
}

/// Why a sending session ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The receiver reported having every chunk.
    Complete,
    /// No HELLO proved a receiver within [`HELLO_TIMEOUT`].
    NoHello,
    /// The receiver sent nothing for [`SILENCE_TIMEOUT`].
    Silent,
}

/// One DATA datagram to send: which chunk, where, and its header fields. The driver
/// reads the chunk's bytes and encodes it with [`Transmit::encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The proven receiver's address.
    pub destination: SocketAddr,
    /// The chunk to send.
    pub chunk: u32,
    /// Its offset in the file.
    pub offset: u64,
    /// Its length in bytes (the last chunk may be short).
    pub len: usize,
    /// Whether it is a resend.
    pub resend: bool,
    /// The session.
    session: u64,
    /// Transmission number.
    tx: u32,
    /// Chunks sent at least once.
    frontier: u32,
    /// Sender's clock, microseconds since the session began.
    sent_us: u64,
}

impl Transmit {
    /// Appends the datagram to `out`, with `payload` (the chunk's `len` bytes).
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) {
        wire::encode_data(
            out,
            &Data {
                session: self.session,
                chunk: self.chunk,
                tx: self.tx,
                frontier: self.frontier,
                sent_us: self.sent_us,
                payload,
            },
        );
    }
}

/// Where a session is.
#[derive(Debug)]
enum Phase {
    /// No receiver proven yet; since when.
    AwaitingHello(Instant),
    /// Sending to a proven receiver.
    Sending(Box<Sending>),
    /// Over.
    Ended(End),
}

/// The state of a session that has a receiver.
#[derive(Debug)]
struct Sending {
    /// The proven receiver.
    destination: SocketAddr,
    /// What was sent and what goes next.
    state: SendState,
    /// When the receiver last said anything.
    last_report: Instant,
    /// Whether a FEEDBACK came from `destination`: a receiver reads there, so sending may
    /// go beyond [`INITIAL_WINDOW`].
    validated: bool,
    /// When the last FEEDBACK came (the HELLO that bound the session, before any).
    last_feedback: Instant,
    /// Sending credit, bytes.
    allowance: f64,
    /// When the credit was last topped up.
    refilled: Instant,
    /// The next pacing tick: credit is topped up only from then on, so that a datagram
    /// arriving between ticks neither spends credit in dribbles nor delays the tick.
    next_tick: Instant,
}

/// The sending side of one transfer.
#[derive(Debug)]
pub struct Sender {
    /// What is sent to whom.
    config: SenderConfig,
    /// Total chunks.
    total: u32,
    /// Where the session is.
    phase: Phase,
    /// Counters for `udp_end`.
    stats: SenderStats,
}

impl Sender {
    /// A session created at `now`, waiting for its receiver's HELLO.
    pub fn new(config: SenderConfig, now: Instant) -> Sender {
        Sender {
            total: config.size.div_ceil(config.chunk_len.max(1) as u64) as u32,
            config,
            phase: Phase::AwaitingHello(now),
            stats: SenderStats::default(),
        }
    }

    /// How the session went so far.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Why the session ended, once it has.
    pub fn end(&self) -> Option<End> {
        match self.phase {
            Phase::Ended(end) => Some(end),
            _ => None,
        }
    }

    /// Takes a datagram that arrived from `from` at `now`. Only a HELLO with the token from
    /// the client's IP proves a receiver; after that only its address is heard.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let (session, token) = (self.config.session, self.config.token);
        let decoded = wire::decode(datagram);
        match &mut self.phase {
            Phase::AwaitingHello(_) => match decoded {
                Ok(Datagram::Hello {
                    session: s,
                    token: t,
                }) if s == session && t == token && from.ip() == self.config.client_ip => {
                    let mut state = SendState::new(self.total, self.config.max_rate, now);
                    // Pacing spends credit per datagram on the wire; reports count payload.
                    let chunk_len = self.config.chunk_len.max(1) as f64;
                    state.wire_per_payload =
                        (chunk_len + (wire::DATA_OVERHEAD + SEAL_OVERHEAD) as f64) / chunk_len;
                    self.phase = Phase::Sending(Box::new(Sending {
                        destination: from,
                        state,
                        last_report: now,
                        validated: false,
                        last_feedback: now,
                        allowance: 0.0,
                        refilled: now,
                        next_tick: now,
                    }));
                }
                _ => tracing::debug!(%from, "ignoring a datagram that proves nothing"),
            },
            Phase::Sending(sending) if from == sending.destination => match decoded {
                Ok(Datagram::Feedback(feedback))
                    if feedback.session == session && feedback.token == token =>
                {
                    sending.last_report = now;
                    sending.last_feedback = now;
                    sending.validated = true;
                    if sending.state.on_feedback(&feedback, now) {
                        self.stats.complete = true;
                        self.stats.end = Some(End::Complete);
                        self.phase = Phase::Ended(End::Complete);
                    }
                }
                // The receiver still says HELLO: none of our data reached it yet.
                Ok(Datagram::Hello {
                    session: s,
                    token: t,
                }) if s == session && t == token => {
                    sending.last_report = now;
                    sending.state.on_hello(now);
                }
                _ => {}
            },
            Phase::Sending(_) | Phase::Ended(_) => {}
        }
    }

    /// Ends the session if its receiver failed to appear or fell silent by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let end = match &self.phase {
            Phase::AwaitingHello(since) if now.duration_since(*since) > HELLO_TIMEOUT => {
                End::NoHello
            }
            Phase::Sending(sending)
                if now.duration_since(sending.last_report) > SILENCE_TIMEOUT =>
            {
                End::Silent
            }
            _ => return,
        };
        self.stats.end = Some(end);
        self.phase = Phase::Ended(end);
    }

    /// The next datagram the rate allows at `now`, if there is one to send. Call until it
    /// returns `None`, then wait for [`Sender::poll_timeout`] or a datagram.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let Phase::Sending(sending) = &mut self.phase else {
            return None;
        };
        if !sending.may_send(now, self.stats.sent) {
            return None;
        }
        let packet = (self.config.chunk_len + wire::DATA_OVERHEAD + SEAL_OVERHEAD) as f64;
        let rate = sending.state.rate.rate();
        if now >= sending.next_tick {
            sending.allowance += now.duration_since(sending.refilled).as_secs_f64() * rate;
            let burst = rate * MAX_BURST.as_secs_f64();
            sending.allowance = sending.allowance.min(burst.max(packet * 4.0));
            sending.refilled = now;
            // On a grid, like a timer that ticks every TICK: a wake-up that comes late
            // (timers round up) does not push every later tick back. A tick missed
            // altogether is not made up for (the credit cap would waste it).
            sending.next_tick += TICK;
            if sending.next_tick <= now {
                sending.next_tick = now + TICK;
            }
        }
        if sending.allowance < packet {
            return None;
        }
        let Some((chunk, resend)) = sending.state.next_chunk(now) else {
            // Nothing to send until the receiver reports: do not bank credit.
            sending.allowance = sending.allowance.min(packet);
            return None;
        };
        sending.allowance -= packet;
        let offset = u64::from(chunk) * self.config.chunk_len as u64;
        let transmit = Transmit {
            destination: sending.destination,
            chunk,
            offset,
            len: (self.config.size - offset).min(self.config.chunk_len as u64) as usize,
            resend,
            session: self.config.session,
            tx: self.stats.sent as u32,
            frontier: sending.state.next_new,
            sent_us: sending.state.clock_us(now),
        };
        self.stats.sent += 1;
        self.stats.resent += u64::from(resend);
        Some(transmit)
    }

    /// When the session next needs the driver without a datagram arriving: the next
    /// pacing tick while there is something to send, else when the receiver would have
    /// been silent too long. `None` once the session ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::AwaitingHello(since) => Some(*since + HELLO_TIMEOUT + TICK),
            Phase::Sending(sending) => {
                let silence = sending.last_report + SILENCE_TIMEOUT + TICK;
                if !sending.state.has_pending() {
                    return Some(silence);
                }
                // Held back (see `Sending::may_send`): only a datagram, or the silence
                // time-out, changes that.
                let paused = if sending.validated {
                    sending.next_tick > sending.last_feedback + sending.grace()
                } else {
                    self.stats.sent >= INITIAL_WINDOW
                };
                if paused {
                    return Some(silence);
                }
                // The next tick, even if the credit will not yet allow a datagram then:
                // waiting for the credit instead would wake off the grid, and timers that
                // round up would then skip a tick.
                Some(sending.next_tick.min(silence))
            }
            Phase::Ended(_) => None,
        }
    }
}

impl Sending {
    /// How old the latest FEEDBACK may be for sending to go on.
    fn grace(&self) -> Duration {
        feedback_grace(self.state.rate.srtt())
    }

    /// Whether the session may send at `now`, having sent `sent` datagrams: up to
    /// [`INITIAL_WINDOW`] before the bound address sent FEEDBACK, and after that while its
    /// FEEDBACK is fresh.
    fn may_send(&self, now: Instant, sent: u64) -> bool {
        if self.validated {
            now.duration_since(self.last_feedback) <= self.grace()
        } else {
            sent < INITIAL_WINDOW
        }
    }
}

/// How old the latest FEEDBACK may be before a validated session stops sending, given the
/// smoothed round trip: [`FEEDBACK_GRACE`] or four round trips, whichever is longer.
pub fn feedback_grace(srtt: Duration) -> Duration {
    FEEDBACK_GRACE.max(srtt * 4)
}

/// What has been sent and what must be sent next.
#[derive(Debug)]
struct SendState {
    /// Total chunks in the file.
    total: u32,
    /// Next chunk never sent.
    next_new: u32,
    /// Chunks reported missing, to resend first.
    resend: VecDeque<u32>,
    /// Resends to send a second time (in the tail of the transfer).
    second_copies: VecDeque<u32>,
    /// When each chunk was last sent, microseconds since `start` (0: never).
    last_sent: Vec<u64>,
    /// Whether each chunk is in `resend` already.
    queued: Vec<bool>,
    /// The rate controller.
    rate: RateControl,
    /// The session's clock origin.
    start: Instant,
    /// The previous report, for per-interval deltas.
    previous: Option<Feedback>,
    /// Doublings of the tail's time-out since the receiver last reported news.
    tail_backoff: u32,
    /// When the receiver last reported news (a later datagram read) or the tail's time-out
    /// last fired, microseconds since `start`.
    news_us: u64,
    /// The latest `echo_us` reported (a reordered datagram can make a report's lower).
    latest_echo_us: u64,
    /// Bytes on the wire per payload byte: reports count payload, pacing spends credit per
    /// datagram, so delivery is scaled to the pacer's unit (else pacing at the measured
    /// rate would send ~5% less than was delivered, and cruise would sag below the link).
    wire_per_payload: f64,
}

impl SendState {
    fn new(total: u32, max_rate: Option<f64>, start: Instant) -> SendState {
        SendState {
            total,
            next_new: 0,
            resend: VecDeque::new(),
            second_copies: VecDeque::new(),
            last_sent: vec![0; total as usize],
            queued: vec![false; total as usize],
            rate: RateControl::new(max_rate, start),
            start,
            previous: None,
            tail_backoff: 0,
            news_us: 0,
            latest_echo_us: 0,
            wire_per_payload: 1.0,
        }
    }

    fn clock_us(&self, now: Instant) -> u64 {
        now.duration_since(self.start).as_micros() as u64
    }

    /// Whether [`SendState::next_chunk`] has a chunk to give.
    fn has_pending(&self) -> bool {
        !self.second_copies.is_empty() || !self.resend.is_empty() || self.next_new < self.total
    }

    /// The next chunk to send and whether it is a resend.
    fn next_chunk(&mut self, now: Instant) -> Option<(u32, bool)> {
        let stamp = self.clock_us(now).max(1);
        if let Some(chunk) = self.second_copies.pop_front() {
            return Some((chunk, true));
        }
        if let Some(chunk) = self.resend.pop_front() {
            self.queued[chunk as usize] = false;
            self.last_sent[chunk as usize] = stamp;
            // In the tail (everything sent once) a lost resend costs a whole round trip
            // more; sending resends twice there makes that rare at little cost, as long as
            // few are left: a long recovery (heavy loss) is not doubled.
            if self.next_new == self.total && self.resend.len() < SECOND_COPIES_BELOW {
                self.second_copies.push_back(chunk);
            }
            return Some((chunk, true));
        }
        if self.next_new < self.total {
            let chunk = self.next_new;
            self.next_new += 1;
            self.last_sent[chunk as usize] = stamp;
            return Some((chunk, false));
        }
        None
    }

    /// The receiver said HELLO: it had received nothing when it sent that. A HELLO that
    /// comes after a report is older than the report and says nothing. Before any report,
    /// every chunk sent so far may be missing, but while new chunks still go out the first
    /// report will say exactly which: a HELLO that was merely late (a receiver that had not
    /// read its socket yet) must not resend a whole file's start. Only once everything was
    /// sent are chunks resent on a HELLO alone, after the tail's time-out (see
    /// [`SendState::queue_missing`]); with no round trip measured yet, a late HELLO can then
    /// still resend a small file's few chunks, less often each time.
    fn on_hello(&mut self, now: Instant) {
        if self.previous.is_none() {
            self.queue_missing(&[(0, self.next_new)], None, None, self.clock_us(now));
        }
    }

    /// Takes a receiver report: feeds the rate controller and queues resends. Returns
    /// whether the receiver has every chunk.
    fn on_feedback(&mut self, feedback: &Feedback, now: Instant) -> bool {
        if feedback.cumulative >= self.total {
            return true;
        }
        let now_us = self.clock_us(now);
        if feedback.echo_us > 0 {
            let rtt = now_us
                .saturating_sub(feedback.echo_us)
                .saturating_sub(u64::from(feedback.hold_us));
            self.rate.on_rtt(Duration::from_micros(rtt));
        }
        if let Some(previous) = &self.previous
            && feedback.clock_us > previous.clock_us
            && feedback.received >= previous.received
        {
            let sample = Sample {
                bytes: (feedback.bytes.saturating_sub(previous.bytes) as f64
                    * self.wire_per_payload) as u64,
                seconds: (feedback.clock_us - previous.clock_us) as f64 / 1e6,
                expected: u64::from(feedback.highest_tx.saturating_sub(previous.highest_tx)),
                received: feedback.received - previous.received,
                queue: Duration::from_micros(u64::from(feedback.queue_us)),
            };
            self.rate.on_sample(sample, now);
        }
        // News: the receiver read a datagram sent later than any it had read before.
        if feedback.echo_us > self.latest_echo_us {
            self.latest_echo_us = feedback.echo_us;
            self.tail_backoff = 0;
            self.news_us = now_us;
        }
        // The receiver lists what is missing below the latest frontier it heard of; chunks
        // past the last range (when the list is whole) may be missing too if the datagrams
        // that would have told it so were lost, as when the file's last chunk is.
        let unlisted = (feedback.missing.len() < wire::MAX_RANGES).then(|| {
            feedback
                .missing
                .last()
                .map_or(feedback.cumulative, |&(_, end)| end)
        });
        self.queue_missing(&feedback.missing, unlisted, Some(feedback.echo_us), now_us);
        self.previous = Some(feedback.clone());
        false
    }

    /// How long a quiet receiver in the tail is given before its missing chunks time out
    /// (before any doubling): a round trip and a margin.
    fn patience(&self) -> Duration {
        let srtt = self.rate.srtt();
        srtt + srtt / 4 + Duration::from_millis(5)
    }

    /// Queues for resending the chunks whose last copy is lost: of `missing` (listed as
    /// missing by a report), and from `unlisted` on (past the report's list). A report
    /// speaks for what the receiver had read when it wrote it, which `echo_us` dates: the
    /// sending time of the latest datagram it had. A listed chunk whose last copy went out
    /// before that (by more than reordering allows) was overtaken, so it is lost; an
    /// unlisted one was overtaken too, so it arrived (the later datagram told the receiver
    /// it had been sent). A copy sent after `echo_us` is in flight or waits unread at the
    /// receiver, however late the report arrives. In the tail (everything sent once)
    /// nothing may come to overtake a lost copy, so the copies not overtaken are taken as
    /// lost once the receiver has shown no progress for a round trip and a margin; each
    /// such time-out without news doubles the next, as TCP's retransmission timer does, up
    /// to a few seconds (the receiver gives up after [`super::receiver::STALL_TIMEOUT`]).
    fn queue_missing(
        &mut self,
        missing: &[(u32, u32)],
        unlisted: Option<u32>,
        echo_us: Option<u64>,
        now_us: u64,
    ) {
        let reordering = (self.rate.srtt() / 4).as_micros() as u64;
        let patience = self.patience();
        let wait = (patience * (1 << self.tail_backoff)).min(MAX_TAIL_WAIT.max(patience));
        let wait = wait.as_micros() as u64;
        // Only a quiet receiver in the tail lets a copy time out.
        let quiet = self.next_new == self.total && now_us.saturating_sub(self.news_us) > wait;
        let listed = missing
            .iter()
            .flat_map(|&(start, end)| start..end.min(self.next_new))
            .map(|chunk| (chunk, true));
        let unlisted = unlisted
            .filter(|_| quiet)
            .into_iter()
            .flat_map(|start| start..self.total)
            .map(|chunk| (chunk, false));
        let mut timed_out = false;
        for (chunk, listed) in listed.chain(unlisted) {
            let index = chunk as usize;
            if self.queued[index] {
                continue;
            }
            let sent = self.last_sent[index];
            let overtaken = echo_us.is_some_and(|echo| sent + reordering < echo);
            let late = quiet && !overtaken && now_us.saturating_sub(sent) > wait;
            if (listed && overtaken) || late {
                timed_out |= late;
                self.queued[index] = true;
                self.resend.push_back(chunk);
            }
        }
        if timed_out {
            self.tail_backoff = (self.tail_backoff + 1).min(MAX_TAIL_BACKOFF);
            self.news_us = now_us;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender of `total` chunks that sent the first `sent` of them at its start.
    fn sent_at_start(total: u32, sent: u32) -> SendState {
        let mut state = SendState::new(total, None, Instant::now());
        let start = state.start;
        for expected in 0..sent {
            assert_eq!(state.next_chunk(start), Some((expected, false)));
        }
        state
    }

    /// A report from a receiver that has every chunk below `cumulative`, lists `missing`
    /// above it, and had last read a datagram sent at `echo_us`.
    fn report(cumulative: u32, missing: Vec<(u32, u32)>, echo_us: u64) -> Feedback {
        Feedback {
            received: u64::from(cumulative),
            echo_us,
            clock_us: echo_us,
            cumulative,
            missing,
            ..Feedback::default()
        }
    }

    /// A sender of 3 chunks, all sent at its start, whose receiver got the first two and
    /// reported so (listing nothing missing) `after` the start; with that start and the
    /// report's echo.
    fn last_chunk_lost(after: Duration) -> (SendState, Instant, u64) {
        let mut state = sent_at_start(3, 3);
        let start = state.start;
        let echo = state.clock_us(start);
        assert!(!state.on_feedback(&report(2, vec![], echo), start + after));
        (state, start, echo)
    }

    /// The chunks resent next, each named once (in the tail every resend goes twice).
    fn resends(state: &mut SendState, at: Instant) -> Vec<u32> {
        let mut chunks = Vec::new();
        while let Some((chunk, true)) = state.next_chunk(at) {
            chunks.push(chunk);
        }
        chunks.dedup();
        chunks
    }

    /// A HELLO that arrives after data went out (the receiver had not read its socket
    /// yet) resends nothing while new chunks still go out: the first report will say
    /// what is missing.
    #[test]
    fn a_late_hello_resends_nothing_while_new_chunks_go_out() {
        let mut state = sent_at_start(1000, 300);
        let later = state.start + Duration::from_millis(200);
        state.on_hello(later);
        assert_eq!(state.next_chunk(later), Some((300, false)));
    }

    /// Once every chunk went out and the receiver still says HELLO, it has none of them:
    /// all are resent.
    #[test]
    fn a_hello_after_everything_went_out_resends_everything() {
        let mut state = sent_at_start(3, 3);
        let later = state.start + Duration::from_millis(200);
        state.on_hello(later);
        assert_eq!(resends(&mut state, later), vec![0, 1, 2]);
    }

    /// A HELLO after a report is older than that report: it resends nothing.
    #[test]
    fn a_hello_after_a_report_resends_nothing() {
        let mut state = sent_at_start(3, 3);
        let start = state.start;
        let echo = state.clock_us(start);
        let first = start + Duration::from_millis(1);
        assert!(!state.on_feedback(&report(2, vec![], echo), first));
        state.on_hello(start + Duration::from_millis(500));
        assert_eq!(state.next_chunk(start + Duration::from_millis(500)), None);
    }

    /// A chunk reported missing by a receiver that had read datagrams sent after it is
    /// resent; reports that do not know of that resend yet (a receiver slow to read its
    /// socket, however late they come) do not resend it again; a report that saw later
    /// datagrams but not the resend does.
    #[test]
    fn a_chunk_is_resent_once_per_report_that_knows_of_its_last_copy() {
        let mut state = sent_at_start(1000, 10);
        let start = state.start;
        let first_sends = state.clock_us(start);
        // Chunk 9 went out a little after chunk 2 (the clock moved on between them).
        state.last_sent[9] = first_sends + 5_000;
        let t1 = start + Duration::from_millis(10);
        assert!(!state.on_feedback(&report(2, vec![(2, 3)], first_sends + 5_000), t1));
        assert_eq!(resends(&mut state, t1), vec![2]);
        let resent_us = state.last_sent[2];
        // Stale reports: the receiver had read nothing sent after the resend.
        for late_ms in [20, 60, 200] {
            let late = start + Duration::from_millis(late_ms);
            assert!(!state.on_feedback(&report(2, vec![(2, 3)], first_sends + 5_000), late));
            assert_eq!(
                resends(&mut state, late),
                Vec::<u32>::new(),
                "at {late_ms} ms"
            );
        }
        // The receiver read a datagram sent well after the resend: the resend was lost.
        let t2 = start + Duration::from_millis(300);
        state.last_sent[10] = resent_us + 50_000;
        assert!(!state.on_feedback(&report(2, vec![(2, 3)], resent_us + 50_000), t2));
        assert_eq!(resends(&mut state, t2), vec![2]);
    }

    /// The file's last chunk lost: no datagram that arrived told the receiver it was
    /// sent, so no report lists it. Once the receiver has shown no progress for a while it
    /// is resent anyway, and each time-out without news doubles the next one.
    #[test]
    fn a_lost_last_chunk_times_out_and_backs_off() {
        let ms = Duration::from_millis(1);
        let (mut state, start, echo) = last_chunk_lost(ms);
        let patience = state.patience();
        assert_eq!(resends(&mut state, start + ms), Vec::<u32>::new());
        let t1 = start + ms + patience + ms;
        assert!(!state.on_feedback(&report(2, vec![], echo), t1));
        assert_eq!(resends(&mut state, t1), vec![2]);
        // No news one patience later: the doubled time-out has not passed.
        let t2 = t1 + patience + ms;
        assert!(!state.on_feedback(&report(2, vec![], echo), t2));
        assert_eq!(resends(&mut state, t2), Vec::<u32>::new());
        // Twice the patience after the resend, it goes again.
        let t3 = t1 + patience * 2 + ms;
        assert!(!state.on_feedback(&report(2, vec![], echo), t3));
        assert_eq!(resends(&mut state, t3), vec![2]);
        // News (a report dating a later datagram: here a resent copy of chunk 1) resets
        // the back-off: one patience of quiet is enough again.
        state.last_sent[1] = state.clock_us(t3) + 1;
        let t4 = t3 + ms;
        assert!(!state.on_feedback(&report(2, vec![], state.last_sent[1]), t4));
        let t5 = t4 + patience + ms;
        assert!(!state.on_feedback(&report(2, vec![], state.last_sent[1]), t5));
        assert_eq!(resends(&mut state, t5), vec![2]);
    }

    /// Doubling stops well inside the receiver's stall time-out: a path that comes back
    /// is used in time.
    #[test]
    fn the_tail_time_out_stays_short_of_the_receivers_patience() {
        let (mut state, start, echo) = last_chunk_lost(Duration::ZERO);
        let mut last = start;
        let mut at = start;
        for _ in 0..1000 {
            at += Duration::from_millis(100);
            assert!(!state.on_feedback(&report(2, vec![], echo), at));
            if !resends(&mut state, at).is_empty() {
                assert!(at - last <= MAX_TAIL_WAIT + Duration::from_millis(100));
                last = at;
            }
        }
        assert!(at - last <= MAX_TAIL_WAIT + Duration::from_millis(100));
        assert!(MAX_TAIL_WAIT * 2 < super::super::receiver::STALL_TIMEOUT);
    }

    /// Tail resends go twice while few are left, once while many are (heavy loss would
    /// otherwise double the whole recovery).
    #[test]
    fn only_a_short_tail_sends_resends_twice() {
        let mut state = sent_at_start(200, 200);
        let start = state.start;
        let echo = state.clock_us(start) + 1_000_000;
        let at = start + Duration::from_millis(1);
        assert!(!state.on_feedback(&report(0, vec![(0, 100)], echo), at));
        let mut sent = Vec::new();
        while let Some((chunk, true)) = state.next_chunk(at) {
            sent.push(chunk);
        }
        // The first go once; the last SECOND_COPIES_BELOW (fewer than that waiting behind
        // each) go twice.
        let once = 100 - SECOND_COPIES_BELOW;
        assert_eq!(sent.len(), once + 2 * SECOND_COPIES_BELOW, "{sent:?}");
        assert!(sent[..once].iter().copied().eq(0..once as u32));
        assert_eq!(&sent[once..once + 2], &[once as u32, once as u32]);
    }

    /// A receiver that keeps reading, but slowly (its reports date ever later datagrams,
    /// all older than the tail's last copies), is making progress: its reports resend
    /// nothing it has not had the time to read.
    #[test]
    fn a_slow_reader_in_the_tail_gets_no_time_outs() {
        let mut state = sent_at_start(100, 100);
        let start = state.start;
        for (chunk, sent) in state.last_sent.iter_mut().enumerate() {
            *sent = 1 + chunk as u64 * 1_000;
        }
        // Reports every 10 ms, each having read one more chunk, in order.
        for read in 1..60u32 {
            let at = start + Duration::from_millis(10 * u64::from(read));
            let echo = 1 + u64::from(read - 1) * 1_000;
            assert!(!state.on_feedback(&report(read, vec![], echo), at));
            assert_eq!(resends(&mut state, at), Vec::<u32>::new(), "report {read}");
        }
    }
}
