//! The model of one direction of the link, kept apart from the I/O so that it can be tested
//! without root: a drop-tail bottleneck queue serialising at a fixed rate, then a wire with a
//! fixed propagation delay that loses packets at random.
//!
//! Time is virtual: the bottleneck's state is the instant it finishes sending everything
//! admitted so far (`busy_until`), so nothing needs a timer per packet and the schedule is
//! exact whatever the forwarder's wake-up jitter.

use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// The parameters of one direction.
#[derive(Clone, Copy, Debug)]
pub struct LinkParams {
    /// Bottleneck rate, bits per second.
    pub rate_bps: u64,
    /// One-way propagation delay, added after serialisation.
    pub delay: Duration,
    /// Drop-tail limit: bytes waiting in or being sent by the bottleneck.
    pub queue_bytes: u64,
    /// Probability that a packet is lost on the wire, independently of every other.
    pub loss: f64,
}

/// What happens to one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It arrives at the far end at this instant.
    Deliver(Instant),
    /// Lost on the wire (it did occupy the bottleneck, as a real wire loss would).
    Lost,
    /// The bottleneck queue was full: dropped on arrival.
    QueueFull,
}

/// One direction's state.
pub struct Link {
    params: LinkParams,
    /// When the bottleneck finishes serialising the last admitted packet.
    busy_until: Instant,
    rng: Xoshiro256PlusPlus,
}

impl Link {
    /// A link with an idle bottleneck; `seed` makes the losses reproducible.
    pub fn new(params: LinkParams, seed: u64) -> Link {
        Link {
            params,
            busy_until: Instant::now(),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }

    /// Bytes queued at the bottleneck at `now` (including what is left of the packet being
    /// serialised).
    pub fn backlog_bytes(&self, now: Instant) -> u64 {
        let backlog = self.busy_until.saturating_duration_since(now);
        (backlog.as_nanos() * u128::from(self.params.rate_bps) / 8_000_000_000) as u64
    }

    /// Time the bottleneck takes to send `len` bytes.
    fn serialisation(&self, len: usize) -> Duration {
        let nanos = len as u128 * 8_000_000_000 / u128::from(self.params.rate_bps);
        Duration::from_nanos(nanos as u64)
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now`. Calls must come in
    /// order of arrival; the delivery instants they return never go backwards.
    pub fn admit(&mut self, now: Instant, len: usize) -> Verdict {
        if self.backlog_bytes(now) + len as u64 > self.params.queue_bytes {
            return Verdict::QueueFull;
        }
        let start = self.busy_until.max(now);
        self.busy_until = start + self.serialisation(len);
        if self.params.loss > 0.0 && self.rng.random_bool(self.params.loss) {
            return Verdict::Lost;
        }
        Verdict::Deliver(self.busy_until + self.params.delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(loss: f64) -> LinkParams {
        LinkParams {
            rate_bps: 100_000_000,
            delay: Duration::from_millis(25),
            queue_bytes: 15_000,
            loss,
        }
    }

    #[test]
    fn a_lone_packet_takes_serialisation_plus_delay() {
        let mut link = Link::new(params(0.0), 1);
        let now = Instant::now() + Duration::from_secs(1);
        // 1500 bytes at 100 Mbit/s: 120 µs.
        assert_eq!(
            link.admit(now, 1500),
            Verdict::Deliver(now + Duration::from_micros(25_120))
        );
    }

    #[test]
    fn a_burst_is_spaced_at_the_bottleneck_rate_and_the_queue_overflows() {
        let mut link = Link::new(params(0.0), 1);
        let now = Instant::now() + Duration::from_secs(1);
        let verdicts: Vec<Verdict> = (0..12).map(|_| link.admit(now, 1500)).collect();
        for (i, v) in verdicts.iter().take(10).enumerate() {
            let at = now + Duration::from_millis(25) + Duration::from_micros(120 * (i as u64 + 1));
            assert_eq!(*v, Verdict::Deliver(at), "packet {i}");
        }
        assert_eq!(verdicts[10], Verdict::QueueFull);
        assert_eq!(link.backlog_bytes(now), 15_000);
        // Once one packet has left, there is room for one more.
        let later = now + Duration::from_micros(120);
        assert_eq!(link.backlog_bytes(later), 13_500);
        assert!(matches!(link.admit(later, 1500), Verdict::Deliver(_)));
    }

    #[test]
    fn losses_follow_the_probability_and_the_seed() {
        let run = |seed| {
            let mut link = Link::new(params(0.05), seed);
            let mut now = Instant::now();
            (0..100_000)
                .map(|_| {
                    now += Duration::from_millis(1);
                    link.admit(now, 100) == Verdict::Lost
                })
                .collect::<Vec<bool>>()
        };
        let a = run(7);
        let lost = a.iter().filter(|&&l| l).count();
        assert!((4_700..5_300).contains(&lost), "{lost} lost of 100000");
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
    }
}
