//! linkemu: a long-distance lossy link between two TUN devices, in user space.
//!
//! This machine's kernel has no netem qdisc, so delay, a rate bottleneck with a finite
//! queue and random loss are imposed here instead: linkemu creates two TUN devices, a
//! script moves each into its own network namespace, and every IP packet that one side
//! sends is read here and written to the other device after the link has had its way with
//! it. Both directions get the same parameters and independent random losses.
//!
//! Output (stdout, one JSON object per line): `ready` once the devices exist, `stats` on
//! SIGUSR1 (counters so far, to measure a time window) and `final` on SIGINT, SIGTERM or
//! SIGHUP, after which it exits; a readable summary goes to stderr at exit.

mod forward;
mod link;
mod tun;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use forward::Stats;
use link::{Link, LinkParams};
use tun::Tun;

/// Emulates a link with delay, a rate bottleneck and random loss between two TUN devices.
#[derive(Parser, Debug)]
#[command(
    name = "linkemu",
    after_help = "Example:\n  linkemu --tun-a bxa0 --tun-b bxb0 --rate-mbit 100 --delay-ms 25 --loss 0.01 --seed 1\n\nSignals: SIGUSR1 prints the counters so far; SIGINT, SIGTERM, SIGHUP print them and exit."
)]
struct Cli {
    /// Name of the first TUN device.
    #[arg(long, default_value = "bxa0")]
    tun_a: String,
    /// Name of the second TUN device.
    #[arg(long, default_value = "bxb0")]
    tun_b: String,
    /// Bottleneck rate in each direction, Mbit/s (10^6 bit/s).
    #[arg(long, default_value_t = 100.0)]
    rate_mbit: f64,
    /// One-way propagation delay, milliseconds (the round trip is twice this).
    #[arg(long, default_value_t = 25.0)]
    delay_ms: f64,
    /// Probability that a packet is lost, in each direction independently (0.01 = 1%).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Drop-tail queue at the bottleneck, bytes; default: one bandwidth-delay product
    /// (rate x round-trip delay), the classic router buffer.
    #[arg(long)]
    queue_bytes: Option<u64>,
    /// Seed of the loss generator (the two directions derive distinct streams from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The signals the main thread waits for; blocked in every thread so only it sees them.
const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1];

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("linkemu: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let params = params(&cli)?;
    let mask = block_signals()?;
    let a = Tun::create(&cli.tun_a)?;
    let b = Tun::create(&cli.tun_b)?;
    println!(
        r#"{{"event":"ready","tun_a":"{}","tun_b":"{}","rate_bps":{},"delay_us":{},"queue_bytes":{},"loss":{},"seed":{}}}"#,
        a.name(),
        b.name(),
        params.rate_bps,
        params.delay.as_micros(),
        params.queue_bytes,
        params.loss,
        cli.seed
    );

    let stop = AtomicBool::new(false);
    let (a_to_b, b_to_a) = (Stats::default(), Stats::default());
    let started = Instant::now();
    let report = |event: &str| {
        println!(
            r#"{{"event":"{event}","elapsed_s":{:.3},"a_to_b":{},"b_to_a":{}}}"#,
            started.elapsed().as_secs_f64(),
            a_to_b.json(),
            b_to_a.json()
        );
    };
    let results = thread::scope(|scope| {
        let forwarders = [
            thread::Builder::new()
                .name("a-to-b".into())
                .spawn_scoped(scope, || {
                    forward::run(&a, &b, Link::new(params, cli.seed), &a_to_b, &stop)
                }),
            thread::Builder::new()
                .name("b-to-a".into())
                .spawn_scoped(scope, || {
                    // A different stream of losses for the other direction.
                    let seed = cli.seed ^ 0x9e37_79b9_7f4a_7c15;
                    forward::run(&b, &a, Link::new(params, seed), &b_to_a, &stop)
                }),
        ];
        let mut handles = Vec::new();
        for f in forwarders {
            match f {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return vec![Err(anyhow::Error::from(e).context("cannot start a thread"))];
                }
            }
        }
        loop {
            match wait_signal(&mask, Duration::from_millis(200)) {
                Ok(Some(libc::SIGUSR1)) => report("stats"),
                Ok(Some(_)) => break,
                Ok(None) if handles.iter().any(|h| h.is_finished()) => break,
                Ok(None) => {}
                Err(e) => {
                    eprintln!("linkemu: waiting for signals: {e}");
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a forwarder panicked")))
            .collect()
    });
    report("final");
    eprintln!("linkemu: {} -> {}: {}", a.name(), b.name(), a_to_b.human());
    eprintln!("linkemu: {} -> {}: {}", b.name(), a.name(), b_to_a.human());
    results.into_iter().collect()
}

/// Checks the command line and turns it into the link's parameters.
fn params(cli: &Cli) -> Result<LinkParams> {
    if !(cli.rate_mbit > 0.0 && cli.rate_mbit.is_finite()) {
        bail!("--rate-mbit must be positive");
    }
    if !(cli.delay_ms >= 0.0 && cli.delay_ms < 60_000.0) {
        bail!("--delay-ms must be between 0 and 60000");
    }
    if !(0.0..1.0).contains(&cli.loss) {
        bail!("--loss is a probability: at least 0, less than 1");
    }
    let rate_bps = (cli.rate_mbit * 1e6).round() as u64;
    let delay = Duration::from_secs_f64(cli.delay_ms / 1000.0);
    let bdp = (rate_bps as f64 * 2.0 * delay.as_secs_f64() / 8.0) as u64;
    let queue_bytes = cli.queue_bytes.unwrap_or(bdp);
    if queue_bytes < 1500 {
        bail!("--queue-bytes must hold at least one full-size packet (1500 bytes)");
    }
    Ok(LinkParams {
        rate_bps,
        delay,
        queue_bytes,
        loss: cli.loss,
    })
}

/// Blocks [`SIGNALS`] in this thread (and so in every thread it starts), returning the set
/// for [`wait_signal`].
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the calls only
    // read and write the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc)).context("cannot block signals");
        }
        Ok(set)
    }
}

/// Waits up to `timeout` for one of the blocked signals; `None` if none came.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> io::Result<Option<libc::c_int>> {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: the set and the timespec outlive the call; no siginfo is requested.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    if signal >= 0 {
        return Ok(Some(signal));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(e),
    }
}
