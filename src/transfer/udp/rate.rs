//! Rate control for UDP transfers: start fast, find the delivery rate, pace to it, and back
//! off on rising queueing delay or on loss well above the link's random-loss floor, never
//! on a few random drops.
//!
//! The model is BBR's: the pacing rate is an estimate of the bottleneck's delivery rate
//! times a gain. The estimate is the highest delivery rate measured over the last ten
//! rounds (a round is one round trip, at least 20 ms), where a measurement is the bytes
//! the receiver got per second of its own clock, corrected for the random-loss floor.
//! - Startup: twice the estimate (so the rate doubles each round while delivery follows),
//!   until the estimate stops growing by a quarter for three rounds or a report shows the
//!   queue above 4 ms (random loss with no queue does not end it); then gain 0.5 until a
//!   report shows the queue falling to what a round trip of draining removes.
//! - Cruise: gains cycle 1.25, 0.75, 1, 1, 1, 1, 1, 1: one round probes for more bandwidth,
//!   the next drains the queue that probe made. A probe that raised the estimate by a
//!   tenth is followed by another at once.
//! - A round whose queueing delay exceeds 8 ms is not allowed to probe and drains instead,
//!   except in the two rounds after a probe's drain, when the queue shown is the probe's,
//!   drained already.
//! - Rates are in bytes on the wire (datagrams with their headers and seal): the sender
//!   scales the payload the receiver reports to that unit, the pacer's.
//! - Loss is not a signal, except loss far above the floor (more than chance and the
//!   floor itself explain): then the estimate restarts from what was just delivered.
//!   The floor is a slow average of the loss seen while queues were short: random loss
//!   does not grow with the rate and does not delay packets; congestion does both.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Rate at which a transfer starts, bytes per second (50 Mbit/s): fast enough that a
/// long-distance path fills in a few round trips, slow enough that one round at twice it
/// fits in the queue of most links.
pub const START_RATE: f64 = 6.25e6;

/// The rate never drops below this, bytes per second (2 Mbit/s), so that a transfer on a
/// terrible link still progresses.
pub const MIN_RATE: f64 = 250e3;

/// Queueing delay above which a round drains instead of probing.
const QUEUE_HIGH: Duration = Duration::from_millis(8);

/// Queueing delay that ends startup, and below which the drain after it ends: startup
/// sends at twice the delivery rate, so the queue it builds must be caught early.
const QUEUE_STARTUP: Duration = Duration::from_millis(4);

/// Shortest round: the receiver reports every 10 ms, and a round needs a few reports.
const MIN_ROUND: Duration = Duration::from_millis(20);

/// Rounds the bandwidth estimate remembers.
const WINDOW_ROUNDS: usize = 10;

/// Pacing gain of the drain after startup.
const DRAIN_GAIN: f64 = 0.5;

/// Where in the cruise cycle a drain ends: a round at gain 1, not a probe, as the
/// estimate startup left is the link's.
const CRUISE_AFTER_DRAIN: usize = 2;

/// Rounds after the probe's drain round in which a queue is the probe's echo, drained
/// already (see `RateControl::end_round`).
const PROBE_ECHO_ROUNDS: usize = 2;

/// Growth of the estimate over one probe above which the next probe comes at once.
const REPROBE: f64 = 1.1;

/// Pacing gains of the cruise cycle, one per round.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];

/// One receiver report, reduced to what the controller needs.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Payload bytes that arrived since the previous report.
    pub bytes: u64,
    /// Receiver-clock seconds since the previous report.
    pub seconds: f64,
    /// Datagrams the sender sent in that span (by transmission numbers).
    pub expected: u64,
    /// Datagrams that arrived in that span.
    pub received: u64,
    /// Queueing delay the receiver saw since the previous report.
    pub queue: Duration,
}

/// The phases of a transfer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Doubling every round.
    Startup,
    /// One round below the estimate to empty the queue startup built.
    Drain,
    /// Cycling gains around the estimate; the index into [`CYCLE`].
    Cruise(usize),
}

/// The pacing rate of one transfer and the state that adjusts it.
#[derive(Debug, Clone)]
pub struct RateControl {
    /// Current pacing rate, bytes per second.
    rate: f64,
    /// Highest allowed rate (the user's or the server's cap).
    ceiling: f64,
    /// Lowest rate: [`MIN_RATE`], or the ceiling if that is lower (a cap always holds).
    floor: f64,
    /// Where in the life of the transfer we are.
    phase: Phase,
    /// Loss-corrected delivery rates of recent rounds, newest last.
    window: VecDeque<f64>,
    /// Best estimate when startup last grew by a quarter, and rounds since.
    startup_best: f64,
    flat_rounds: u32,
    /// Slow average of the loss seen while queues were short: the random-loss floor.
    loss_floor: Option<f64>,
    /// Datagrams lost and expected in the rounds that make the floor, each round's count
    /// decaying by 7/8 a round: weighted by datagrams, so that a first short round's few
    /// losses do not set the floor for many rounds.
    floor_lost: f64,
    floor_expected: f64,
    /// Smoothed round-trip time.
    srtt: Duration,
    /// Shortest round trip measured (the path's, without queueing).
    min_rtt: Option<Duration>,
    /// The estimate when the last probe began.
    probe_base: f64,
    /// Highest queueing delay reported since the drain began.
    drain_peak: Duration,
    /// The round being accumulated.
    round: Sample,
    /// When the current round began.
    round_start: Instant,
}

impl RateControl {
    /// A controller starting at [`START_RATE`] (or the ceiling, if lower).
    pub fn new(ceiling: Option<f64>, now: Instant) -> RateControl {
        let ceiling = ceiling.unwrap_or(f64::INFINITY).max(1.0);
        RateControl {
            rate: START_RATE.min(ceiling),
            ceiling,
            floor: MIN_RATE.min(ceiling),
            phase: Phase::Startup,
            window: VecDeque::new(),
            startup_best: 0.0,
            flat_rounds: 0,
            loss_floor: None,
            floor_lost: 0.0,
            floor_expected: 0.0,
            srtt: MIN_ROUND,
            min_rtt: None,
            probe_base: f64::INFINITY,
            drain_peak: Duration::ZERO,
            round: Sample {
                bytes: 0,
                seconds: 0.0,
                expected: 0,
                received: 0,
                queue: Duration::ZERO,
            },
            round_start: now,
        }
    }

    /// The current pacing rate, bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The smoothed round-trip time.
    pub fn srtt(&self) -> Duration {
        self.srtt
    }

    /// Takes a round-trip time measurement.
    pub fn on_rtt(&mut self, rtt: Duration) {
        self.srtt = (self.srtt * 7 + rtt) / 8;
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
    }

    /// Takes a receiver report; adjusts the rate at the end of each round.
    pub fn on_sample(&mut self, sample: Sample, now: Instant) {
        self.round.bytes += sample.bytes;
        self.round.seconds += sample.seconds;
        self.round.expected += sample.expected;
        self.round.received += sample.received;
        self.round.queue = self.round.queue.max(sample.queue);
        // Startup and its drain act on every report, not once a round: a report shows the
        // queue as it was a round trip ago, and waiting for the round's end as well would
        // let startup overfill the queue, and the drain empty the link, for a round more.
        match self.phase {
            Phase::Startup if sample.queue > QUEUE_STARTUP => {}
            Phase::Drain => {
                // The queue drains at (1 - DRAIN_GAIN) of real time; what a report shows
                // is a round trip old. Once it falls, it is taken as gone when what is
                // shown is no more than a round trip of draining would have removed.
                self.drain_peak = self.drain_peak.max(sample.queue);
                let lag = self.min_rtt.unwrap_or(self.srtt);
                let gone = QUEUE_STARTUP + lag.mul_f64(1.0 - DRAIN_GAIN);
                if sample.queue < self.drain_peak && sample.queue <= gone {
                    self.phase = Phase::Cruise(CRUISE_AFTER_DRAIN);
                    self.rate = self.estimate().clamp(self.floor, self.ceiling);
                    self.round_start = now;
                    self.round = Sample {
                        bytes: 0,
                        seconds: 0.0,
                        expected: 0,
                        received: 0,
                        queue: Duration::ZERO,
                    };
                    return;
                }
                if now.duration_since(self.round_start) < self.srtt.max(MIN_ROUND) {
                    return;
                }
            }
            _ if now.duration_since(self.round_start) < self.srtt.max(MIN_ROUND) => return,
            _ => {}
        }
        self.round_start = now;
        let round = std::mem::replace(
            &mut self.round,
            Sample {
                bytes: 0,
                seconds: 0.0,
                expected: 0,
                received: 0,
                queue: Duration::ZERO,
            },
        );
        if round.seconds > 0.0 {
            self.end_round(round);
        }
    }

    /// The bandwidth estimate: the best delivery rate of the window.
    fn estimate(&self) -> f64 {
        self.window.iter().copied().fold(0.0, f64::max)
    }

    fn end_round(&mut self, round: Sample) {
        let loss = if round.expected == 0 {
            0.0
        } else {
            1.0 - (round.received as f64 / round.expected as f64).min(1.0)
        };
        let floor = *self.loss_floor.get_or_insert(loss);
        let noise = 3.0 * (floor.max(0.01) * (1.0 - floor) / round.expected.max(1) as f64).sqrt();
        // In startup the floor rests on a few rounds of few datagrams, and a startup that
        // overfills the queue shows it in the queueing delay: loss without a queue there is
        // the link's random loss, and ending startup on it would leave the rate to climb
        // by probes alone (a quarter every cycle).
        let calm_startup = self.phase == Phase::Startup && round.queue <= QUEUE_STARTUP;
        let congestion_loss = loss > floor + noise + 0.02 + floor * 0.5 && !calm_startup;
        let queued = round.queue > QUEUE_HIGH;
        if !queued && !congestion_loss {
            let lost = round.expected.saturating_sub(round.received) as f64;
            self.floor_lost = self.floor_lost * 7.0 / 8.0 + lost;
            self.floor_expected = self.floor_expected * 7.0 / 8.0 + round.expected as f64;
            if self.floor_expected > 0.0 {
                self.loss_floor = Some((self.floor_lost / self.floor_expected).min(1.0));
            }
        }
        let delivered = round.bytes as f64 / round.seconds / (1.0 - floor.min(0.9));
        if congestion_loss {
            self.window.clear();
        }
        self.window.push_back(delivered);
        if self.window.len() > WINDOW_ROUNDS {
            self.window.pop_front();
        }
        let estimate = self.estimate();

        let gain = match self.phase {
            Phase::Startup => {
                if estimate > self.startup_best * 1.25 {
                    self.startup_best = estimate;
                    self.flat_rounds = 0;
                } else {
                    self.flat_rounds += 1;
                }
                if round.queue > QUEUE_STARTUP || congestion_loss || self.flat_rounds >= 3 {
                    self.phase = Phase::Drain;
                    self.drain_peak = round.queue;
                    DRAIN_GAIN
                } else {
                    2.0
                }
            }
            // Below the estimate until the queue startup built is gone (see `on_sample`,
            // which ends the drain as soon as a report shows it falling far enough; a round
            // with no queue at all, as when startup ended on loss or a flat estimate, ends
            // it too).
            Phase::Drain if round.queue > QUEUE_STARTUP => DRAIN_GAIN,
            Phase::Drain => {
                self.phase = Phase::Cruise(CRUISE_AFTER_DRAIN);
                CYCLE[CRUISE_AFTER_DRAIN]
            }
            Phase::Cruise(i) => {
                let mut next = (i + 1) % CYCLE.len();
                // A probe that found much more bandwidth (its echo is in by now) is
                // followed by another one at once rather than a cycle later: the link has
                // more to give than the estimate says, as after a startup cut short.
                if i == PROBE_ECHO_ROUNDS + 1 && !queued && estimate > self.probe_base * REPROBE {
                    next = 0;
                }
                if next == 0 {
                    self.probe_base = estimate;
                }
                self.phase = Phase::Cruise(next);
                // The queue a probe builds shows a round trip later, in the two rounds
                // after the probe, while the round that follows the probe drains it
                // already: draining again then would empty the link for two rounds.
                let probe_echo = (1..=PROBE_ECHO_ROUNDS).contains(&i);
                if queued && !probe_echo {
                    0.75
                } else {
                    CYCLE[next]
                }
            }
        };
        self.rate = match self.phase {
            // Startup sends at twice what got through (never less than it sends now), so
            // the rate doubles each round until delivery stops following.
            Phase::Startup => self.rate.max(estimate * gain),
            _ => estimate * gain,
        };
        self.rate = self.rate.clamp(self.floor, self.ceiling);
        tracing::trace!(
            rate = self.rate as u64,
            estimate = estimate as u64,
            loss,
            floor = self.loss_floor.unwrap_or(0.0),
            queue_us = round.queue.as_micros() as u64,
            phase = ?self.phase,
            "rate adjusted"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a link of `capacity` bytes/s with random `loss` and a queue that grows
    /// when the rate exceeds capacity; returns the average rate of the last rounds.
    fn simulate(capacity: f64, loss: f64, rounds: usize) -> f64 {
        let start = Instant::now();
        let mut control = RateControl::new(None, start);
        control.on_rtt(Duration::from_millis(50));
        let mut queue_bytes: f64 = 0.0;
        let round = 0.05;
        let mut rates = Vec::new();
        for i in 1..=rounds {
            let now = start + Duration::from_secs_f64(round * i as f64);
            let rate = control.rate();
            rates.push(rate);
            queue_bytes = (queue_bytes + (rate - capacity) * round).max(0.0);
            let sent = (rate * round / 1400.0) as u64;
            let delivered = rate.min(capacity) * (1.0 - loss) * round;
            let sample = Sample {
                bytes: delivered as u64,
                seconds: round,
                expected: sent,
                received: (sent as f64 * (1.0 - loss)) as u64,
                queue: Duration::from_secs_f64(queue_bytes / capacity),
            };
            control.on_sample(sample, now);
        }
        rates[rounds / 2..].iter().sum::<f64>() / (rounds - rounds / 2) as f64
    }

    /// On a 100 Mbit/s link the rate settles near capacity, whatever the random loss.
    #[test]
    fn finds_capacity_despite_random_loss() {
        let capacity = 12.5e6;
        for loss in [0.0, 0.01, 0.05, 0.1, 0.2, 0.5] {
            let rate = simulate(capacity, loss, 200);
            assert!(
                rate > capacity * 0.85 && rate < capacity * 1.2,
                "loss {loss}: rate {rate:.0} for capacity {capacity:.0}"
            );
        }
    }

    /// Loss far above the floor (a congested queue dropping) cuts the rate.
    #[test]
    fn congestion_loss_cuts_the_rate() {
        let start = Instant::now();
        let mut control = RateControl::new(None, start);
        let calm = Sample {
            bytes: 100_000,
            seconds: 0.02,
            expected: 100,
            received: 99,
            queue: Duration::ZERO,
        };
        for i in 1..30 {
            control.on_sample(calm, start + MIN_ROUND * i);
        }
        let before = control.rate();
        let burst = Sample {
            bytes: 30_000,
            received: 30,
            ..calm
        };
        control.on_sample(burst, start + MIN_ROUND * 40);
        assert!(
            control.rate() < before * 0.8,
            "{} vs {before}",
            control.rate()
        );
    }

    /// A ceiling below the usual minimum rate still holds.
    #[test]
    fn respects_a_low_ceiling() {
        let start = Instant::now();
        let mut control = RateControl::new(Some(62_500.0), start);
        assert!(control.rate() <= 62_500.0);
        for i in 1..50 {
            let sample = Sample {
                bytes: 1_000,
                seconds: 0.02,
                expected: 10,
                received: 1,
                queue: Duration::from_millis(50),
            };
            control.on_sample(sample, start + MIN_ROUND * i);
            assert!(control.rate() <= 62_500.0);
        }
    }

    /// A ceiling is never exceeded.
    #[test]
    fn respects_the_ceiling() {
        let start = Instant::now();
        let mut control = RateControl::new(Some(1e6), start);
        for i in 1..100 {
            let sample = Sample {
                bytes: (control.rate() * 0.02) as u64,
                seconds: 0.02,
                expected: 10,
                received: 10,
                queue: Duration::ZERO,
            };
            control.on_sample(sample, start + MIN_ROUND * i);
        }
        assert!(control.rate() <= 1e6);
    }

    /// Random loss in startup, with no queue behind it, does not end startup: the rate
    /// keeps doubling until the queue shows the link is full.
    #[test]
    fn random_loss_does_not_end_startup() {
        let start = Instant::now();
        let mut control = RateControl::new(None, start);
        let mut rate = control.rate();
        for i in 1..5 {
            // A tenth lost in the second round, as a few hundred datagrams at 5% can be.
            let received = if i == 2 { 90 } else { 98 };
            let sample = Sample {
                bytes: (control.rate() * 0.02 * 0.95) as u64,
                seconds: 0.02,
                expected: 100,
                received,
                queue: Duration::ZERO,
            };
            control.on_sample(sample, start + MIN_ROUND * i);
            assert!(
                control.rate() >= rate,
                "round {i}: {} < {rate}",
                control.rate()
            );
            rate = control.rate();
        }
        assert!(rate > START_RATE * 4.0, "{rate}");
    }

    /// Startup's drain ends as soon as a report shows the queue falling well enough,
    /// not a round later: the rate returns to the estimate.
    #[test]
    fn the_drain_ends_on_a_falling_queue() {
        let start = Instant::now();
        let mut control = RateControl::new(None, start);
        control.on_rtt(Duration::from_millis(50));
        let at = |ms: u64| start + Duration::from_millis(ms);
        let sample = |queue_ms: u64| Sample {
            bytes: 125_000,
            seconds: 0.01,
            expected: 90,
            received: 90,
            queue: Duration::from_millis(queue_ms),
        };
        // Startup until the queue shows (12.5 MB/s delivered), then the drain.
        control.on_sample(sample(0), at(60));
        control.on_sample(sample(10), at(70));
        assert_eq!(control.phase, Phase::Drain);
        let drain = control.rate();
        assert!(drain < 12.5e6 * 0.6, "{drain}");
        // Still rising: draining goes on.
        control.on_sample(sample(40), at(80));
        assert_eq!(control.phase, Phase::Drain);
        // Falling, to what a round trip of draining removes: cruise at the estimate.
        control.on_sample(sample(25), at(90));
        assert_eq!(control.phase, Phase::Cruise(CRUISE_AFTER_DRAIN));
        assert!(control.rate() > 12.5e6 * 0.95, "{}", control.rate());
    }
}
