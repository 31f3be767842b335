//! One direction of the link: a thread that reads packets from one TUN device, runs them
//! through the [`Link`] model and writes the survivors to the other device when their
//! delivery instant comes.
//!
//! A single thread per direction does both halves with `ppoll`: it sleeps until either a
//! packet arrives or the oldest packet in flight is due, whichever is first. `ppoll` takes a
//! nanosecond timeout and the thread's timer slack is set to 1 µs, so packets leave within
//! tens of microseconds of their instant (a full-size packet takes 120 µs at 100 Mbit/s).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::link::{Link, Verdict};
use crate::tun::Tun;

/// Longest sleep without a packet due, so that a stop request is seen promptly.
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// Packets read per wake-up at most, so that a flood cannot delay due deliveries.
const READ_BATCH: usize = 64;
/// Read buffer: larger than any packet a TUN device without offloads hands out.
const BUF_SIZE: usize = 65_536;

/// Counters of one direction, read by the main thread while the forwarder runs.
#[derive(Default)]
pub struct Stats {
    /// Packets read from the input device.
    pub packets: AtomicU64,
    /// Their bytes (IP packets, headers included).
    pub bytes: AtomicU64,
    /// Packets written to the output device.
    pub forwarded: AtomicU64,
    /// Packets lost at random on the wire.
    pub lost: AtomicU64,
    /// Packets dropped because the bottleneck queue was full.
    pub queue_drops: AtomicU64,
    /// Packets the output device refused (for example while it was still down).
    pub write_errors: AtomicU64,
    /// The largest bottleneck backlog seen on a packet's arrival, bytes.
    pub max_backlog: AtomicU64,
    /// Sum over forwarded packets of how late they were written (actual minus scheduled
    /// delivery), nanoseconds: the emulator's own timing error.
    pub late_ns_total: AtomicU64,
    /// The latest any packet was written, nanoseconds.
    pub late_ns_max: AtomicU64,
}

impl Stats {
    /// The counters as a JSON object.
    pub fn json(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            r#"{{"packets":{},"bytes":{},"forwarded":{},"lost":{},"queue_drops":{},"write_errors":{},"max_backlog_bytes":{},"late_us_mean":{:.1},"late_us_max":{:.1}}}"#,
            get(&self.packets),
            get(&self.bytes),
            get(&self.forwarded),
            get(&self.lost),
            get(&self.queue_drops),
            get(&self.write_errors),
            get(&self.max_backlog),
            self.late_us_mean(),
            get(&self.late_ns_max) as f64 / 1000.0,
        )
    }

    /// The counters for a person.
    pub fn human(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let packets = get(&self.packets).max(1) as f64;
        format!(
            "{} packets ({} bytes), forwarded {}, lost {} ({:.2}%), queue drops {} ({:.2}%), write errors {}, max backlog {} bytes, written late by {:.1} µs on average, {:.1} µs at most",
            get(&self.packets),
            get(&self.bytes),
            get(&self.forwarded),
            get(&self.lost),
            100.0 * get(&self.lost) as f64 / packets,
            get(&self.queue_drops),
            100.0 * get(&self.queue_drops) as f64 / packets,
            get(&self.write_errors),
            get(&self.max_backlog),
            self.late_us_mean(),
            get(&self.late_ns_max) as f64 / 1000.0,
        )
    }

    /// Mean lateness of forwarded packets, microseconds.
    fn late_us_mean(&self) -> f64 {
        let forwarded = self.forwarded.load(Ordering::Relaxed).max(1);
        self.late_ns_total.load(Ordering::Relaxed) as f64 / forwarded as f64 / 1000.0
    }
}

/// A packet on its way, due at the far end at `at`.
struct InFlight {
    at: Instant,
    data: Vec<u8>,
}

/// Forwards from `input` to `output` through `link` until `stop` is set; fails only if
/// reading the input device fails.
pub fn run(
    input: &Tun,
    output: &Tun,
    mut link: Link,
    stats: &Stats,
    stop: &AtomicBool,
) -> Result<()> {
    set_timer_slack();
    let mut buf = vec![0u8; BUF_SIZE];
    // Delivery instants never go backwards (see `Link::admit`), so a FIFO is in due order.
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(packet) = in_flight.pop_front() {
            if packet.at > now {
                in_flight.push_front(packet);
                break;
            }
            let late = Instant::now()
                .saturating_duration_since(packet.at)
                .as_nanos() as u64;
            match output.write(&packet.data) {
                Ok(()) => {
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    stats.late_ns_total.fetch_add(late, Ordering::Relaxed);
                    stats.late_ns_max.fetch_max(late, Ordering::Relaxed);
                }
                Err(_) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Measured again: the writes above took time.
        let now = Instant::now();
        let timeout = in_flight
            .front()
            .map_or(IDLE_WAKE, |p| p.at.saturating_duration_since(now))
            .min(IDLE_WAKE);
        if !wait_readable(input, timeout)
            .with_context(|| format!("waiting for packets on {}", input.name()))?
        {
            continue;
        }
        for _ in 0..READ_BATCH {
            let Some(len) = input
                .read(&mut buf)
                .with_context(|| format!("reading from {}", input.name()))?
            else {
                break;
            };
            let arrival = Instant::now();
            stats.packets.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
            stats
                .max_backlog
                .fetch_max(link.backlog_bytes(arrival), Ordering::Relaxed);
            match link.admit(arrival, len) {
                Verdict::Deliver(at) => in_flight.push_back(InFlight {
                    at,
                    data: buf[..len].to_vec(),
                }),
                Verdict::Lost => {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::QueueFull => {
                    stats.queue_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// Waits up to `timeout` for `tun` to have a packet; true if it has one.
fn wait_readable(tun: &Tun, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: tun.raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: one pollfd and one timespec, both outliving the call; no signal mask change.
    let n = unsafe { libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if n > 0 && pollfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
        return Err(io::Error::other(format!(
            "poll reports an error on the device (revents {:#x})",
            pollfd.revents
        )));
    }
    Ok(n > 0 && pollfd.revents & libc::POLLIN != 0)
}

/// Asks the kernel to wake this thread within 1 µs of its timeouts instead of the default
/// 50 µs, which would be a large part of a packet's 120 µs at 100 Mbit/s. Best effort.
fn set_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}
