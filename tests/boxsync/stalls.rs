//! A slow, hung or hostile peer cannot stall the box: clients that ask and never read, a
//! peer that stops answering mid-file, a file held by another transfer, and full UDP slots.
//! Every box here runs with deadlines of a second or two ([`fast`]); waits are polled
//! conditions with deadlines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use boxsync::history::Direction;
use boxsync::local::{Limits, LocalBox, Settings};
use boxsync::peer::{Peer, PeerError};
use boxsync::protocol::message::FileStart;
use boxsync::protocol::{Frame, Response, connection};
use boxsync::requests::Request;
use boxsync::requests::download::Download;
use boxsync::requests::index::Index;
use boxsync::requests::udp::DownloadUdp;
use boxsync::share::filter::IndexFilter;
use boxsync::sync::{self, SyncConfig, SyncHandle};
use boxsync::transfer::udp::hub::MAX_SESSIONS;
use boxsync::types::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::util::{TestBox, bytes, dial, eventually, rel, scripted_download};

/// How long anything here may take that the deadlines do not bound (a round, a small
/// transfer): far more than it needs, far less than a stall would last without deadlines.
const BOUND: Duration = Duration::from_secs(15);

/// Deadlines short enough to test: a second without progress, two to start an answer, a
/// second for a file's lock.
fn fast() -> Limits {
    Limits {
        stall: Duration::from_secs(1),
        think: Duration::from_secs(2),
        lock_wait: Duration::from_secs(1),
        ..Limits::default()
    }
}

/// Auto-sync for `b` with `peers`, a round every 500 ms; sync stops when the sender drops.
/// Each peer is a box reached at an address (its own, or a relay's), which trusts `b`.
fn start_sync(
    b: &TestBox,
    peers: &[(&TestBox, SocketAddr, Transport)],
) -> (SyncHandle, watch::Sender<bool>) {
    let (stop, mut stopped) = watch::channel(false);
    let peers = peers
        .iter()
        .map(|(other, addr, transport)| {
            other.local.trust.allow_for_this_run(&b.local.id);
            let peer = Peer::new(&other.target_at(*addr), Arc::clone(&b.local));
            (Arc::new(peer), *transport)
        })
        .collect();
    let config = SyncConfig {
        period: Duration::from_millis(500),
        rescan: Duration::from_millis(500),
        trash_retention: Duration::from_secs(86_400),
    };
    let notices = Arc::clone(&b.notices);
    let handle = sync::start(Arc::clone(&b.local), notices, peers, config, async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    (handle, stop)
}

/// Whether the file `rel` of `b` holds `content`.
fn holds(b: &TestBox, rel: &str, content: &[u8]) -> bool {
    std::fs::read(b.root().join(rel)).is_ok_and(|got| got == content)
}

/// Waits until every peer of `handle` has completed a round without errors.
async fn agreed(handle: &SyncHandle) -> bool {
    eventually(BOUND, || {
        let status = handle.status();
        status
            .peers
            .iter()
            .all(|p| p.last_sync.is_some() && p.errors.is_empty())
    })
    .await
}

/// Whether `b`'s request log has a request `direction` whose description starts with
/// `request` and whose outcome contains `outcome`.
fn logged(b: &TestBox, direction: Direction, request: &str, outcome: &str) -> bool {
    b.local.history.records().is_ok_and(|records| {
        records.iter().any(|r| {
            r.direction == direction
                && r.request.starts_with(request)
                && r.outcome.contains(outcome)
        })
    })
}

/// Reads what is left of an answer on `connection` until it ends; whether a `file_end`
/// came (the whole file was sent).
async fn drain_saw_file_end(
    connection: &mut boxsync::protocol::Connection<boxsync::protocol::Link>,
) -> bool {
    loop {
        match connection.read_frame().await {
            Ok(Some(Frame::Control(payload))) => {
                let frame = Frame::Control(payload);
                if let Ok(Response::FileEnd(_)) = connection::decode::<Response>(frame) {
                    return true;
                }
            }
            Ok(Some(Frame::Data(_))) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}

/// A client that asks for a big file and never reads does not freeze the box's sync with
/// another box: the file itself is replaced by that sync meanwhile (the sender holds no
/// lock while it waits on the client), another file arrives, and the stalled request is
/// cut off once the stall limit passes (the server logs it; the bytes left on the wire end
/// without the file's `file_end`).
#[tokio::test]
async fn a_client_that_never_reads_a_big_file_does_not_freeze_sync() {
    let a = TestBox::start_limited(fast()).await;
    let b = TestBox::start_limited(fast()).await;
    let big = bytes(32 << 20, 7);
    b.write("big.bin", &big);
    let (handle, _stop) = start_sync(&a, &[(&b, b.addr, Transport::Tcp)]);
    assert!(eventually(BOUND, || holds(&a, "big.bin", &big)).await);
    assert!(agreed(&handle).await, "{:?}", handle.status());

    let mut stalled = dial(&a).await;
    let request = Request::Download(Download {
        name: rel("big.bin"),
        blake3_only: false,
        ranges: None,
    });
    stalled.write_message(&request).await.unwrap();
    let started = Instant::now();
    b.write("big.bin", b"a new version");
    b.write("other.txt", b"another file");
    let synced = eventually(BOUND, || {
        holds(&a, "big.bin", b"a new version") && holds(&a, "other.txt", b"another file")
    })
    .await;
    assert!(synced, "sync froze: {:?}", handle.status());
    let cut = eventually(BOUND, || {
        logged(
            &a,
            Direction::Served,
            "download tcp big.bin",
            "took nothing",
        )
    })
    .await;
    assert!(cut, "the stalled download was not cut off");
    assert!(started.elapsed() < BOUND);
    assert!(
        !drain_saw_file_end(&mut stalled).await,
        "the stalled client got the whole file"
    );
}

/// A `download_udp` whose client never sends a datagram holds its file's lock (the UDP
/// session's own deadline is the UDP layer's); sync's wait for that lock gives up after
/// the lock wait, failing that file alone: another file still arrives, rounds go on, and
/// the file's error says it is in use.
#[tokio::test]
async fn a_silent_udp_download_of_a_tiny_file_holds_up_that_file_only() {
    let a = TestBox::start_limited(fast()).await;
    let b = TestBox::start_limited(fast()).await;
    b.write("tiny.txt", b"tiny\n");
    let (handle, _stop) = start_sync(&a, &[(&b, b.addr, Transport::Tcp)]);
    assert!(eventually(BOUND, || holds(&a, "tiny.txt", b"tiny\n")).await);
    assert!(agreed(&handle).await, "{:?}", handle.status());

    let mut silent = dial(&a).await;
    let request = Request::DownloadUdp(DownloadUdp {
        name: rel("tiny.txt"),
        max_rate: None,
        blake3_only: false,
        ranges: None,
    });
    silent.write_message(&request).await.unwrap();
    let ready = silent.expect_message::<Response>().await.unwrap();
    assert!(matches!(ready, Response::UdpReady { .. }), "{ready:?}");

    let rounds_before = handle.status().rounds;
    b.write("tiny.txt", b"edited");
    b.write("other.txt", b"another file");
    let other = eventually(BOUND, || holds(&a, "other.txt", b"another file")).await;
    assert!(other, "sync froze: {:?}", handle.status());
    let held_up_or_done = eventually(BOUND, || {
        let status = handle.status();
        let in_use = status.peers[0]
            .errors
            .iter()
            .any(|e| e.contains("tiny.txt") && e.contains("still in use"));
        in_use || holds(&a, "tiny.txt", b"edited")
    })
    .await;
    assert!(held_up_or_done, "{:?}", handle.status());
    let going_on = eventually(BOUND, || handle.status().rounds >= rounds_before + 3).await;
    assert!(going_on, "rounds stopped: {:?}", handle.status());
    drop(silent);
}

/// Many clients that ask for a big index and never read hold no more memory than the
/// box's answer budget: the budget's peak stays within its limit while they stall; each is
/// cut off or refused `unavailable`, everything is given back, and a client that reads
/// still gets the whole index.
#[tokio::test]
async fn stalled_index_clients_stay_within_the_answer_budget() {
    let limit = 32 << 20;
    let a = TestBox::start_limited(Limits {
        answer_bytes: limit,
        ..fast()
    })
    .await;
    // 80,000 entries with long names: about 22 MB of JSON, more than a stream's 8 MiB
    // window and loopback's buffers take from a client that does not read, and about as
    // much held per listing (so that the budget holds one at a time).
    let long = "n".repeat(190);
    let root = a.root();
    tokio::task::spawn_blocking(move || {
        for folder in 0..100 {
            let dir = root.join(format!("d{folder:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            for file in 0..800 {
                std::fs::write(dir.join(format!("{long}{file:04}")), b"").unwrap();
            }
        }
    })
    .await
    .unwrap();
    let clients = 20;
    let mut stalled = Vec::new();
    for _ in 0..clients {
        let mut connection = dial(&a).await;
        let request = Request::Index(Index {
            filter: IndexFilter::Longlist,
            unless: None,
        });
        connection.write_message(&request).await.unwrap();
        stalled.push(connection);
    }
    let answered = eventually(Duration::from_secs(60), || {
        a.local.history.records().is_ok_and(|records| {
            let served = records.iter().filter(|r| r.direction == Direction::Served);
            served.filter(|r| r.request.starts_with("index")).count() >= clients
        })
    })
    .await;
    let budget = a.local.share.answers();
    assert!(answered, "not every stalled client was cut off or refused");
    assert!(
        logged(&a, Direction::Served, "index", "took nothing"),
        "no listing ever stalled: the test proves nothing"
    );
    assert!(budget.peak() > 0, "no listing was ever charged");
    assert!(
        budget.peak() <= limit,
        "{} bytes held at once, over the limit of {limit}",
        budget.peak()
    );
    assert!(eventually(BOUND, || budget.pending() == 0).await);
    drop(stalled);

    let (_temp, client) = TestBox::client();
    let entries = a.peer_for(&client).index(&IndexFilter::Longlist).await;
    assert_eq!(entries.map(|e| e.len()).ok(), Some(100 + 100 * 800));
}

/// A download from a peer that stops answering mid-file fails within the stall limit with
/// an error that names the peer and says it stopped answering.
#[tokio::test]
async fn a_peer_that_stops_mid_file_fails_the_download_within_the_deadline() {
    let (addr, _script) =
        scripted_download("f.bin", vec![7u8; 1 << 20], |mut connection| async move {
            let _request = connection.expect_frame().await;
            let start = Response::FileStart(FileStart {
                name: rel("f.bin"),
                size: 1 << 20,
                mtime: boxsync::time::Timestamp::now(),
                mode: 0o644,
            });
            connection.queue_message(&start).await.unwrap();
            connection.write_data(&[7u8; 4096]).await.unwrap();
            connection.flush().await.unwrap();
            // Hung: the connection stays open, and nothing more comes.
            std::future::pending::<()>().await;
            drop(connection);
        })
        .await;
    let temp = tempfile::tempdir().unwrap();
    let local = LocalBox::open_limited(temp.path(), Settings::default(), fast()).unwrap();
    let peer = Peer::new(&addr, Arc::clone(&local));
    let started = Instant::now();
    let mut progress = |_: u64, _: u64| {};
    let outcome = tokio::time::timeout(BOUND, peer.download_tcp(&rel("f.bin"), &mut progress))
        .await
        .expect("the download did not give up");
    let error = outcome.expect_err("a download from a hung peer succeeded");
    assert!(matches!(error, PeerError::Stalled { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&addr.addr), "{message}");
    assert!(message.contains("stopped answering"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!temp.path().join("f.bin").exists());
}

/// A TCP relay to a box that freezes, as a peer stopped with SIGSTOP does: once the bytes
/// from the box pass `freeze_at`, nothing more goes either way, and every connection,
/// old or new, stays open without a byte.
struct FreezingRelay {
    /// Where clients connect.
    addr: SocketAddr,
    /// Bytes passed from the box to clients so far.
    forwarded: Arc<AtomicU64>,
    /// Past this many forwarded bytes, the relay freezes.
    freeze_at: Arc<AtomicU64>,
    /// Whether it froze.
    frozen: Arc<AtomicBool>,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl Drop for FreezingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FreezingRelay {
    async fn start(target: SocketAddr) -> FreezingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarded = Arc::new(AtomicU64::new(0));
        let freeze_at = Arc::new(AtomicU64::new(u64::MAX));
        let frozen = Arc::new(AtomicBool::new(false));
        let state = (
            Arc::clone(&forwarded),
            Arc::clone(&freeze_at),
            Arc::clone(&frozen),
        );
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (forwarded, freeze_at, frozen) = state.clone();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let up = (
                    Arc::new(AtomicU64::new(0)),
                    Arc::new(AtomicU64::new(u64::MAX)),
                );
                connections.spawn(pipe(
                    client_read,
                    server_write,
                    up.0,
                    up.1,
                    Arc::clone(&frozen),
                ));
                connections.spawn(pipe(
                    server_read,
                    client_write,
                    forwarded,
                    freeze_at,
                    frozen,
                ));
            }
        });
        FreezingRelay {
            addr,
            forwarded,
            freeze_at,
            frozen,
            task,
        }
    }

    /// Freezes once `more` further bytes have gone from the box to clients.
    fn freeze_after(&self, more: u64) {
        let now = self.forwarded.load(Ordering::SeqCst);
        self.freeze_at.store(now + more, Ordering::SeqCst);
    }

    fn frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to`, counting into `count`, until the relay freezes (then holds both
/// ends open for good) or a side closes.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
    freeze_at: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
        let total = count.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if total >= freeze_at.load(Ordering::SeqCst) {
            frozen.store(true, Ordering::SeqCst);
        }
    }
}

/// A peer that hangs mid-file (its link freezes, as with SIGSTOP) fails that download
/// within the stall limit, with a logged error saying it stopped answering; sync with a
/// third box goes on meanwhile and brings that box's new file.
#[tokio::test]
async fn a_hung_peer_fails_within_the_deadline_and_sync_with_another_goes_on() {
    let a = TestBox::start_limited(fast()).await;
    let b = TestBox::start_limited(fast()).await;
    let c = TestBox::start_limited(fast()).await;
    let relay = FreezingRelay::start(b.addr).await;
    b.write("from-b.txt", b"b");
    c.write("from-c.txt", b"c");
    let (handle, _stop) = start_sync(
        &a,
        &[
            (&b, relay.addr, Transport::Tcp),
            (&c, c.addr, Transport::Tcp),
        ],
    );
    let first = eventually(BOUND, || {
        holds(&a, "from-b.txt", b"b") && holds(&a, "from-c.txt", b"c")
    })
    .await;
    assert!(first, "{:?}", handle.status());
    assert!(agreed(&handle).await, "{:?}", handle.status());

    relay.freeze_after(2 << 20);
    b.write("big.bin", &bytes(16 << 20, 3));
    assert!(
        eventually(BOUND, || relay.frozen()).await,
        "the big file never started"
    );
    let frozen_at = Instant::now();
    c.write("later-c.txt", b"while b hangs");
    let from_c = eventually(BOUND, || holds(&a, "later-c.txt", b"while b hangs")).await;
    assert!(
        from_c,
        "sync with the third box waited: {:?}",
        handle.status()
    );
    let failed = eventually(BOUND, || {
        logged(
            &a,
            Direction::Made,
            "download tcp big.bin",
            "stopped answering",
        )
    })
    .await;
    assert!(
        failed,
        "the hung download did not fail: {:?}",
        handle.status()
    );
    assert!(
        frozen_at.elapsed() < Duration::from_secs(10),
        "{:?}",
        frozen_at.elapsed()
    );
    assert!(!a.root().join("big.bin").exists());
}

/// One file that cannot be installed this round (its lock is held, as by a transfer in
/// progress) fails alone: the other files of the round arrive, the status counts the one
/// left and names it, and it arrives once its lock is free.
#[tokio::test]
async fn one_failing_file_does_not_fail_the_others() {
    let a = TestBox::start_limited(fast()).await;
    let b = TestBox::start_limited(fast()).await;
    let (handle, _stop) = start_sync(&a, &[(&b, b.addr, Transport::Tcp)]);
    assert!(agreed(&handle).await, "{:?}", handle.status());
    let held = a.local.share.locks().read(&rel("busy.txt")).await;
    b.write("busy.txt", b"busy");
    for i in 0..5 {
        b.write(&format!("free{i}.txt"), b"free");
    }
    let others = eventually(BOUND, || {
        (0..5).all(|i| holds(&a, &format!("free{i}.txt"), b"free"))
    })
    .await;
    assert!(others, "{:?}", handle.status());
    let reported = eventually(BOUND, || {
        let status = handle.status();
        let peer = &status.peers[0];
        peer.pending >= 1 && peer.errors.iter().any(|e| e.contains("busy.txt"))
    })
    .await;
    assert!(reported, "{:?}", handle.status());
    assert!(!a.root().join("busy.txt").exists());
    drop(held);
    assert!(eventually(BOUND, || holds(&a, "busy.txt", b"busy")).await);
}

/// With every UDP slot of the peer taken (silent sessions), a `udp://` sync peer's files
/// come over TCP instead of failing.
#[tokio::test]
async fn full_udp_slots_make_a_udp_peer_fall_back_to_tcp() {
    let a = TestBox::start_limited(fast()).await;
    let b = TestBox::start_limited(fast()).await;
    b.write("slot.txt", b"held by silent sessions");
    let mut silent = Vec::new();
    for _ in 0..MAX_SESSIONS {
        let mut connection = dial(&b).await;
        let request = Request::DownloadUdp(DownloadUdp {
            name: rel("slot.txt"),
            max_rate: None,
            blake3_only: false,
            ranges: None,
        });
        connection.write_message(&request).await.unwrap();
        let ready = connection.expect_message::<Response>().await.unwrap();
        assert!(matches!(ready, Response::UdpReady { .. }), "{ready:?}");
        silent.push(connection);
    }
    b.write("over-tcp.txt", b"fell back");
    let (handle, _stop) = start_sync(&a, &[(&b, b.addr, Transport::Udp)]);
    let arrived = eventually(BOUND, || holds(&a, "over-tcp.txt", b"fell back")).await;
    assert!(arrived, "{:?}", handle.status());
    drop(silent);
}

/// The box's peak memory (VmHWM of this process) above what it held before, with 60
/// clients that ask for a plain index of 100,000 entries and never read: a manual
/// measurement, not a check (run it alone, with `--ignored --nocapture`).
/// `BOXSYNC_UNBOUNDED=1` measures without the answer budget and with a stall limit longer
/// than the measurement: as the box behaved before either existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_memory_of_stalled_index_clients() {
    let unbounded = std::env::var_os("BOXSYNC_UNBOUNDED").is_some();
    let limits = match unbounded {
        true => Limits {
            answer_bytes: usize::MAX,
            stall: Duration::from_secs(600),
            ..Limits::default()
        },
        false => Limits::default(),
    };
    let a = TestBox::start_limited(limits).await;
    let root = a.root();
    tokio::task::spawn_blocking(move || {
        for folder in 0..100 {
            let dir = root.join(format!("folder-{folder:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            for file in 0..999 {
                std::fs::write(dir.join(format!("document-{file:04}.txt")), b"").unwrap();
            }
        }
    })
    .await
    .unwrap();
    let status = |field: &str| -> u64 {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        text.lines()
            .find(|line| line.starts_with(field))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0)
    };
    let before = status("VmRSS:");
    let mut stalled = Vec::new();
    for _ in 0..60 {
        let mut connection = dial(&a).await;
        let request = Request::Index(Index {
            filter: IndexFilter::Longlist,
            unless: None,
        });
        connection.write_message(&request).await.unwrap();
        stalled.push(connection);
    }
    let started = Instant::now();
    let mut peak_pending = 0;
    while started.elapsed() < Duration::from_secs(20) {
        peak_pending = peak_pending.max(a.local.share.answers().pending());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak = status("VmHWM:");
    println!(
        "unbounded={unbounded}: RSS before {} MiB, peak {} MiB, growth {} MiB; answer budget peak {} MiB (limit {} MiB)",
        before >> 10,
        peak >> 10,
        peak.saturating_sub(before) >> 10,
        a.local.share.answers().peak() >> 20,
        a.local.share.answers().limit().min(1 << 40) >> 20,
    );
    drop(stalled);
}
