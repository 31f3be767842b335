//! The downloading box's side of a UDP transfer as a state machine: it checks each
//! datagram, keeps the bitset of chunks that arrived, and says when to send HELLO or
//! FEEDBACK and when the transfer has failed. It reads no clock and touches no socket or
//! file: the driver passes `now` in, writes the chunks it hands back, and sends the
//! datagrams it asks for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::chunks::ChunkSet;
use crate::transfer::udp::wire::{self, Datagram, Feedback, Token};

/// How often the receiver reports (and, before data flows, says HELLO).
pub const REPORT_EVERY: Duration = Duration::from_millis(10);

/// If no datagram at all arrives in this long, UDP is taken to be blocked.
pub const FIRST_DATA_TIMEOUT: Duration = Duration::from_secs(3);

/// A transfer with no new chunk for this long fails.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest file a receiver accepts over UDP: the bitset and the sparse partial file are
/// sized from the server's word, so a hostile `udp_ready` must not make them huge. 1 TiB
/// is 100 MiB of bitset at most.
pub const MAX_SIZE: u64 = 1 << 40;

/// What the server announced in `udp_ready`.
#[derive(Debug, Clone, Copy)]
pub struct Announced {
    /// The session id.
    pub session: u64,
    /// The secret this receiver proves itself with.
    pub token: Token,
    /// File size.
    pub size: u64,
    /// File bytes per DATA datagram.
    pub chunk_len: usize,
}

impl Announced {
    /// Refuses a chunk length the wire cannot carry and a size beyond [`MAX_SIZE`] (or
    /// beyond the chunks the wire numbers).
    pub fn check(&self) -> Result<(), AnnounceError> {
        if self.chunk_len == 0 || self.chunk_len > wire::CHUNK_LEN {
            return Err(AnnounceError::ChunkLen(self.chunk_len));
        }
        let max = MAX_SIZE.min(u64::from(u32::MAX) * self.chunk_len as u64);
        if self.size > max {
            return Err(AnnounceError::TooLarge {
                size: self.size,
                max,
            });
        }
        Ok(())
    }
}

/// Why an announced transfer is refused before anything is allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnnounceError {
    /// A chunk length of zero, or more than a datagram holds.
    #[error("chunk length out of range: {0}")]
    ChunkLen(usize),
    /// More bytes than this receiver keeps track of, or chunks than the wire numbers.
    #[error("file too large for one UDP transfer: {size} bytes (at most {max})")]
    TooLarge {
        /// The announced size.
        size: u64,
        /// The largest size accepted with this chunk length.
        max: u64,
    },
}

/// Why a transfer failed on the receiver's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Failure {
    /// Not a single datagram arrived.
    #[error("no UDP datagram arrived within {0:?}")]
    Blocked(Duration),
    /// Datagrams stopped bringing new chunks.
    #[error("no new chunk for {0:?}")]
    Stalled(Duration),
}

/// A chunk that arrived for the first time, to be written at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewChunk<'a> {
    /// Where the bytes go in the file.
    pub offset: u64,
    /// The chunk's bytes (borrowed from the datagram).
    pub bytes: &'a [u8],
}

/// The receiving side of one transfer.
#[derive(Debug)]
pub struct Receiver {
    /// File size.
    size: u64,
    /// Total chunks.
    total: u32,
    /// Bytes per chunk.
    chunk_len: usize,
    /// Session id.
    session: u64,
    /// The session's token.
    token: Token,
    /// Only datagrams from the serving box's address count.
    server: SocketAddr,
    /// Which chunks have arrived.
    have: ChunkSet,
    /// Chunks that have arrived.
    count: u32,
    /// Every chunk below this has arrived.
    cumulative: u32,
    /// Highest frontier announced by the sender.
    frontier: u32,
    /// Valid DATA datagrams received (duplicates included), reported to the sender.
    received: u64,
    /// Their payload bytes, reported to the sender.
    bytes: u64,
    /// Highest transmission number seen, reported to the sender.
    highest_tx: u32,
    /// Latest sender timestamp, echoed for the round-trip time.
    echo_us: u64,
    /// When that timestamp arrived, for the hold time.
    echo_at: Option<Instant>,
    /// Lowest one-way delay seen (receiver clock minus sender clock).
    base_delay: Option<i64>,
    /// Lowest one-way delay since the last report.
    interval_delay: Option<i64>,
    /// Receiver clock origin.
    start: Instant,
    /// When the last new chunk arrived (or the start), for the stall time-out.
    last_progress: Instant,
    /// When the next HELLO or FEEDBACK is due.
    next_report: Instant,
    /// Whether the report that says "complete" went out.
    told_complete: bool,
}

impl Receiver {
    /// A receiver for the transfer `announced` by `server`, starting at `now`. Refuses an
    /// announcement out of bounds before allocating anything for it.
    pub fn new(
        announced: Announced,
        server: SocketAddr,
        now: Instant,
    ) -> Result<Receiver, AnnounceError> {
        announced.check()?;
        let Announced {
            session,
            token,
            size,
            chunk_len,
        } = announced;
        let total = size.div_ceil(chunk_len as u64) as u32;
        Ok(Receiver {
            size,
            total,
            chunk_len,
            session,
            token,
            server,
            have: ChunkSet::new(total),
            count: 0,
            cumulative: 0,
            frontier: 0,
            received: 0,
            bytes: 0,
            highest_tx: 0,
            echo_us: 0,
            echo_at: None,
            base_delay: None,
            interval_delay: None,
            start: now,
            last_progress: now,
            next_report: now,
            told_complete: false,
        })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The serving box's address, where reports go.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Whether every chunk has arrived.
    pub fn is_complete(&self) -> bool {
        self.count >= self.total
    }

    /// Bytes of the file that have arrived, for progress.
    pub fn received_bytes(&self) -> u64 {
        (u64::from(self.count) * self.chunk_len as u64).min(self.size)
    }

    /// Every byte below this offset has arrived.
    pub fn prefix_bytes(&self) -> u64 {
        (u64::from(self.cumulative) * self.chunk_len as u64).min(self.size)
    }

    /// Takes a datagram that arrived from `from` at `now`; returns the chunk it carried if
    /// that chunk is new. Anything damaged, foreign, out of range or from elsewhere is
    /// dropped.
    pub fn handle<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'a [u8],
    ) -> Option<NewChunk<'a>> {
        if from != self.server {
            return None;
        }
        let Ok(Datagram::Data(data)) = wire::decode(datagram) else {
            return None;
        };
        if data.session != self.session || data.chunk >= self.total {
            return None;
        }
        let offset = u64::from(data.chunk) * self.chunk_len as u64;
        let expected_len = (self.size - offset).min(self.chunk_len as u64) as usize;
        if data.payload.len() != expected_len {
            return None;
        }
        self.received += 1;
        self.bytes += data.payload.len() as u64;
        self.highest_tx = self.highest_tx.max(data.tx);
        self.frontier = self.frontier.max(data.frontier.min(self.total));
        self.echo_us = data.sent_us;
        self.echo_at = Some(now);
        let delay = self.clock_us(now) as i64 - data.sent_us as i64;
        self.base_delay = Some(self.base_delay.map_or(delay, |d| d.min(delay)));
        self.interval_delay = Some(self.interval_delay.map_or(delay, |d| d.min(delay)));
        if !self.have.insert(data.chunk) {
            return None;
        }
        self.count += 1;
        self.cumulative = self.have.next_missing(self.cumulative);
        self.last_progress = now;
        Some(NewChunk {
            offset,
            bytes: data.payload,
        })
    }

    /// The next datagram to send to the server at `now`, if one is due: HELLO every
    /// [`REPORT_EVERY`] until data flows, FEEDBACK after, and one last FEEDBACK as soon as
    /// the transfer is complete. Fails once nothing arrived for [`FIRST_DATA_TIMEOUT`] or
    /// no new chunk for [`STALL_TIMEOUT`] (checked when a report is due).
    pub fn poll_transmit(&mut self, now: Instant) -> Result<Option<Vec<u8>>, Failure> {
        if self.is_complete() {
            if self.told_complete {
                return Ok(None);
            }
            self.told_complete = true;
            return Ok(Some(wire::encode_feedback(&self.feedback(now))));
        }
        if now < self.next_report {
            return Ok(None);
        }
        self.next_report += REPORT_EVERY;
        if self.next_report <= now {
            self.next_report = now + REPORT_EVERY;
        }
        if self.received == 0 {
            if now.duration_since(self.start) > FIRST_DATA_TIMEOUT {
                return Err(Failure::Blocked(FIRST_DATA_TIMEOUT));
            }
            return Ok(Some(wire::encode_hello(self.session, &self.token)));
        }
        if now.duration_since(self.last_progress) > STALL_TIMEOUT {
            return Err(Failure::Stalled(STALL_TIMEOUT));
        }
        Ok(Some(wire::encode_feedback(&self.feedback(now))))
    }

    /// When [`Receiver::poll_transmit`] next has something to say; `None` once the
    /// transfer is complete and the server was told.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.is_complete(), self.told_complete) {
            (false, _) => Some(self.next_report),
            (true, false) => Some(self.start),
            (true, true) => None,
        }
    }

    fn clock_us(&self, now: Instant) -> u64 {
        now.duration_since(self.start).as_micros() as u64
    }

    /// The report: what arrived, what is missing below the frontier, and the timing the
    /// sender's rate control needs.
    fn feedback(&mut self, now: Instant) -> Feedback {
        let mut missing = Vec::new();
        let mut chunk = self.cumulative;
        while missing.len() < wire::MAX_RANGES {
            let start = self.have.next_missing(chunk);
            if start >= self.frontier {
                break;
            }
            chunk = self.have.next_present(start).min(self.frontier);
            missing.push((start, chunk));
        }
        let queue = match (self.interval_delay.take(), self.base_delay) {
            (Some(now), Some(base)) => (now - base).clamp(0, i64::from(u32::MAX)) as u32,
            _ => 0,
        };
        Feedback {
            session: self.session,
            token: self.token,
            received: self.received,
            bytes: self.bytes,
            highest_tx: self.highest_tx,
            clock_us: self.clock_us(now),
            echo_us: self.echo_us,
            hold_us: self.echo_at.map_or(0, |t| {
                now.duration_since(t).as_micros().min(u128::from(u32::MAX)) as u32
            }),
            queue_us: queue,
            cumulative: self.cumulative,
            missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(size: u64, chunk_len: usize) -> Announced {
        Announced {
            session: 1,
            token: [7; 16],
            size,
            chunk_len,
        }
    }

    fn server() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    /// A hostile announcement (a huge size, a zero or oversized chunk) is refused with a
    /// typed error, before the bitset is allocated; the largest accepted size still is.
    #[test]
    fn announcements_out_of_bounds_are_refused() {
        let now = Instant::now();
        let refused = |size, chunk_len| Receiver::new(announced(size, chunk_len), server(), now);
        assert!(matches!(
            refused(u64::MAX, wire::CHUNK_LEN),
            Err(AnnounceError::TooLarge {
                size: u64::MAX,
                max: MAX_SIZE
            })
        ));
        assert!(matches!(
            refused(MAX_SIZE + 1, wire::CHUNK_LEN),
            Err(AnnounceError::TooLarge { .. })
        ));
        // One-byte chunks: the wire numbers at most 2^32 - 1 of them.
        assert!(matches!(
            refused(u64::from(u32::MAX) + 1, 1),
            Err(AnnounceError::TooLarge { max, .. }) if max == u64::from(u32::MAX)
        ));
        assert!(matches!(refused(10, 0), Err(AnnounceError::ChunkLen(0))));
        assert!(matches!(
            refused(10, wire::CHUNK_LEN + 1),
            Err(AnnounceError::ChunkLen(_))
        ));
        assert!(refused(MAX_SIZE, wire::CHUNK_LEN).is_ok());
        assert!(refused(0, wire::CHUNK_LEN).is_ok());
    }

    /// A report lists the missing ranges between the cumulative point and the frontier.
    #[test]
    fn feedback_lists_the_gaps_below_the_frontier() {
        let now = Instant::now();
        let mut receiver = Receiver::new(announced(10 * 4, 4), server(), now).unwrap();
        for (tx, chunk) in [0u32, 1, 3, 4, 7].into_iter().enumerate() {
            let mut out = Vec::new();
            wire::encode_data(
                &mut out,
                &wire::Data {
                    session: 1,
                    chunk,
                    tx: tx as u32,
                    frontier: 8,
                    sent_us: 0,
                    payload: &[chunk as u8; 4],
                },
            );
            let new = receiver.handle(now, server(), &out);
            assert_eq!(new.map(|c| c.offset), Some(u64::from(chunk) * 4));
            assert_eq!(
                receiver.handle(now, server(), &out),
                None,
                "a duplicate is new"
            );
        }
        let feedback = receiver.feedback(now);
        assert_eq!(feedback.cumulative, 2);
        assert_eq!(feedback.missing, vec![(2, 3), (5, 7)]);
        assert_eq!(feedback.received, 10);
        assert_eq!(receiver.prefix_bytes(), 8);
        assert_eq!(receiver.received_bytes(), 20);
    }
}
