//! The files sync is receiving right now: what `sync status` lists under its peers, and
//! what the activity feed says of a long transfer while it goes.
//!
//! A download's progress callback stores two atomics and takes no lock: the list's lock is
//! taken only when a transfer begins or ends, and when the status is read. The feed's lines
//! are decided by [`Announcer`], a pure function of the clock it is given, from a tick of
//! [`ANNOUNCE_TICK`]:
//! - a transfer still running [`ANNOUNCE_AFTER`] after it began is announced once
//!   (`receiving NAME (2.0 GiB)`), so that a file that takes less says nothing more than its
//!   line at the end of the round, however big;
//! - then every [`PROGRESS_EVERY`] it says how far it is (`NAME 1.2 GiB of 2.0 GiB, 41.0
//!   MiB/s, 25s left`).
//!
//! Small files (up to 1 MiB) travel many to a request (a batch) and are not listed one by
//! one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::share::RelPath;
use crate::time::Timestamp;
use crate::units::{eta_seconds, human_duration, human_rate, human_size};

/// A transfer that has run this long is announced on the activity feed.
pub const ANNOUNCE_AFTER: Duration = Duration::from_secs(2);

/// Once announced, a transfer says how far it is this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How often the announcer looks at the transfers in flight.
pub const ANNOUNCE_TICK: Duration = Duration::from_secs(1);

/// Marks a transfer that has not reported any progress yet.
const NO_REPORT: u64 = u64::MAX;

/// The transfers in flight, shared by the rounds (which add and remove theirs) and the
/// status. A std `Mutex`: never held across `.await`, and only to add, remove or list.
#[derive(Debug, Default)]
pub struct Transfers {
    /// Those in flight, in the order they began.
    flights: Mutex<Vec<Arc<Flight>>>,
    /// The next transfer's number.
    next: AtomicU64,
}

/// One transfer in flight.
#[derive(Debug)]
struct Flight {
    /// Its number, unique while the box runs: what the announcer remembers it by.
    id: u64,
    /// The peer it comes from.
    peer: String,
    /// The file, under its name in the folder.
    name: RelPath,
    /// When it began (for the rate and the announcements).
    started: Instant,
    /// When it began, on the wall clock (shown).
    started_at: Timestamp,
    /// Bytes of the file in place so far, fetched or found here.
    done: AtomicU64,
    /// The file's size.
    total: AtomicU64,
    /// Bytes in place at the first report: found on this box (unchanged blocks, a part kept
    /// from an interrupted attempt), not fetched, so left out of the rate.
    base: AtomicU64,
}

/// A transfer's place in [`Transfers`], held by the download while it runs: dropping it
/// (the download ended, failed or was cancelled) takes the transfer off the list.
#[derive(Debug)]
pub struct InFlight {
    /// The list it is on.
    transfers: Arc<Transfers>,
    /// Its entry.
    flight: Arc<Flight>,
}

impl InFlight {
    /// The download's progress callback: `done` bytes of `total` are in place. Two atomic
    /// stores (three at the first call), no lock.
    pub fn progress(&self, done: u64, total: u64) {
        let flight = &self.flight;
        let _ = flight
            .base
            .compare_exchange(NO_REPORT, done, Ordering::Relaxed, Ordering::Relaxed);
        flight.done.store(done, Ordering::Relaxed);
        flight.total.store(total, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut flights = self
            .transfers
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        flights.retain(|f| f.id != self.flight.id);
    }
}

/// One transfer in flight as `sync status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferStatus {
    /// The peer it comes from (as in the peers' table).
    pub peer: String,
    /// The file, under its name in the folder.
    pub name: RelPath,
    /// Bytes in place so far.
    pub done: u64,
    /// The file's size.
    pub total: u64,
    /// Bytes fetched per second since it began (bytes found on this box left out).
    pub bytes_per_second: u64,
    /// Seconds left at that rate; `None` while nothing has moved.
    pub eta_seconds: Option<u64>,
    /// When it began.
    pub started: Timestamp,
    /// Seconds since it began.
    pub seconds: f64,
    /// Its number, for the announcer (not shown).
    #[serde(skip)]
    pub id: u64,
}

impl TransferStatus {
    /// How far it is, in one line: `NAME 1.2 GiB of 2.0 GiB, 41.0 MiB/s, 25s left`.
    pub fn progress_line(&self) -> String {
        let left = match self.eta_seconds {
            Some(eta) => format!("{} left", human_duration(eta as f64)),
            None => "time left unknown".to_string(),
        };
        format!(
            "{} {} of {}, {}, {left}",
            self.name,
            human_size(self.done),
            human_size(self.total),
            human_rate(self.bytes_per_second)
        )
    }
}

impl Transfers {
    /// Puts a download of `name` (`total` bytes, as planned) from `peer` on the list until
    /// the returned value is dropped.
    pub fn begin(self: &Arc<Self>, peer: &str, name: &RelPath, total: u64) -> InFlight {
        let flight = Arc::new(Flight {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            peer: peer.to_string(),
            name: name.clone(),
            started: Instant::now(),
            started_at: Timestamp::now(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(total),
            base: AtomicU64::new(NO_REPORT),
        });
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&flight));
        InFlight {
            transfers: Arc::clone(self),
            flight,
        }
    }

    /// The transfers in flight as of `now`, in the order they began.
    pub fn snapshot(&self, now: Instant) -> Vec<TransferStatus> {
        let flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.iter().map(|f| f.status(now)).collect()
    }
}

impl Flight {
    fn status(&self, now: Instant) -> TransferStatus {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let base = match self.base.load(Ordering::Relaxed) {
            NO_REPORT => done,
            base => base,
        };
        let elapsed = now.saturating_duration_since(self.started);
        let rate = mean_rate(done.saturating_sub(base), elapsed);
        TransferStatus {
            peer: self.peer.clone(),
            name: self.name.clone(),
            done,
            total,
            bytes_per_second: rate,
            eta_seconds: eta_seconds(total.saturating_sub(done), rate),
            started: self.started_at,
            seconds: elapsed.as_secs_f64(),
            id: self.id,
        }
    }
}

/// Bytes per second of `bytes` moved in `elapsed`; 0 in the first tenth of a second (too
/// early to tell).
pub fn mean_rate(bytes: u64, elapsed: Duration) -> u64 {
    if elapsed < Duration::from_millis(100) {
        return 0;
    }
    (bytes as f64 / elapsed.as_secs_f64()) as u64
}

/// Decides which transfers the activity feed speaks of, and when: what it has said of each
/// is its only state, and the clock is an argument (tests drive it).
#[derive(Debug, Default)]
pub struct Announcer {
    /// When each announced transfer (by number) last had a line.
    said: HashMap<u64, Duration>,
}

impl Announcer {
    /// The lines due for `transfers` (a snapshot), each with its peer: a transfer running
    /// [`ANNOUNCE_AFTER`] is announced, then given a progress line every
    /// [`PROGRESS_EVERY`]. Transfers no longer in the snapshot are forgotten.
    pub fn due(&mut self, transfers: &[TransferStatus]) -> Vec<(String, String)> {
        self.said
            .retain(|id, _| transfers.iter().any(|t| t.id == *id));
        let mut lines = Vec::new();
        for transfer in transfers {
            let elapsed = Duration::from_secs_f64(transfer.seconds.max(0.0));
            let line = match self.said.get(&transfer.id) {
                None if elapsed >= ANNOUNCE_AFTER => {
                    format!(
                        "receiving {} ({})",
                        transfer.name,
                        human_size(transfer.total)
                    )
                }
                Some(last) if elapsed >= *last + PROGRESS_EVERY => transfer.progress_line(),
                _ => continue,
            };
            self.said.insert(transfer.id, elapsed);
            lines.push((transfer.peer.clone(), line));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(id: u64, seconds: f64, done: u64, total: u64) -> TransferStatus {
        let rate = mean_rate(done, Duration::from_secs_f64(seconds));
        TransferStatus {
            peer: "hub".to_string(),
            name: RelPath::parse("big.iso").unwrap(),
            done,
            total,
            bytes_per_second: rate,
            eta_seconds: eta_seconds(total - done, rate),
            started: Timestamp::now(),
            seconds,
            id,
        }
    }

    /// The progress line says bytes done of total, the rate and the time left.
    #[test]
    fn progress_line_wording() {
        let t = transfer(0, 30.0, 1230 << 20, 2 << 30);
        assert_eq!(
            t.progress_line(),
            "big.iso 1.2 GiB of 2.0 GiB, 41.0 MiB/s, 20s left"
        );
        let stalled = TransferStatus {
            bytes_per_second: 0,
            eta_seconds: None,
            ..t
        };
        assert!(
            stalled
                .progress_line()
                .ends_with("0 B/s, time left unknown")
        );
    }

    /// The rate leaves out the bytes found on this box (in place at the first report).
    #[test]
    fn rate_counts_fetched_bytes_only() {
        let transfers = Arc::new(Transfers::default());
        let flight = transfers.begin("hub", &RelPath::parse("a").unwrap(), 100 << 20);
        flight.progress(60 << 20, 100 << 20);
        let later = Instant::now() + Duration::from_secs(10);
        flight.progress(80 << 20, 100 << 20);
        let [status] = transfers.snapshot(later).try_into().unwrap();
        assert_eq!(status.done, 80 << 20);
        // 20 MiB fetched in about 10 s, not 80.
        assert!(status.bytes_per_second <= 2 << 20, "{status:?}");
        assert!(status.bytes_per_second > (19 << 20) / 10, "{status:?}");
        assert!(matches!(status.eta_seconds, Some(10 | 11)), "{status:?}");
        drop(flight);
        assert!(transfers.snapshot(later).is_empty());
    }

    /// A quick transfer says nothing; a long one is announced after two seconds, then
    /// every ten, never more often, and is forgotten when it ends.
    #[test]
    fn announcements_are_throttled() {
        let mut announcer = Announcer::default();
        assert!(announcer.due(&[transfer(1, 1.9, 10, 100)]).is_empty());
        let start = announcer.due(&[transfer(1, 2.0, 20, 100)]);
        assert_eq!(
            start,
            vec![("hub".to_string(), "receiving big.iso (100 B)".to_string())]
        );
        for seconds in [3.0, 6.0, 11.9] {
            assert!(announcer.due(&[transfer(1, seconds, 30, 100)]).is_empty());
        }
        let progress = announcer.due(&[transfer(1, 12.0, 50, 100)]);
        assert_eq!(progress.len(), 1);
        assert!(
            progress[0].1.starts_with("big.iso 50 B of 100 B"),
            "{progress:?}"
        );
        assert!(announcer.due(&[transfer(1, 21.9, 60, 100)]).is_empty());
        assert_eq!(announcer.due(&[transfer(1, 22.0, 70, 100)]).len(), 1);
        // Ended: forgotten. Another one begins its own count.
        assert!(announcer.due(&[]).is_empty());
        assert!(announcer.said.is_empty());
        assert!(announcer.due(&[transfer(2, 0.5, 1, 100)]).is_empty());
    }
}
