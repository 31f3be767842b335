//! UDP downloads through a fault-injecting relay: whatever happens to datagrams, the file
//! arrives byte-identical with a matching hash, or the download fails clearly and leaves
//! nothing behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use boxsync::local::LocalBox;
use boxsync::peer::PeerError;
use boxsync::protocol::Link;
use boxsync::protocol::{Connection, ErrorKind, Response};
use boxsync::requests::Request;
use boxsync::requests::udp::DownloadUdp;
use boxsync::transfer::udp::hub::MAX_SESSIONS;
use boxsync::transfer::udp::proto::sender::{HELLO_TIMEOUT, INITIAL_WINDOW, SILENCE_TIMEOUT};
use boxsync::transfer::udp::seal::{self, DropCounts, Opener, Sealer, TransferKeys};
use boxsync::transfer::udp::{UdpError, parse_token, receiver, wire};
use boxsync::transfer::{Landing, TransferError};
use boxsync::types::Transport;
use tokio::net::UdpSocket;

use crate::relay::{Faults, Relay};
use crate::util::{
    TestBox, bytes, coreutils_hashes, files_under, is_changed_on_peer, is_connection_lost, rel,
};

/// Downloads `content` over UDP through a relay with the given faults and checks the
/// result byte for byte and against coreutils' hashes.
async fn download_through(content: &[u8], to_server: Faults, to_client: Faults, seed: u64) -> u64 {
    let b = TestBox::start().await;
    b.write("f.bin", content);
    let relay = Relay::start(b.addr, to_server, to_client, seed).await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_via(&me, relay.addr);
    let mut progress = |_, _| {};
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        peer.download_udp(&rel("f.bin"), None, &mut progress),
    )
    .await
    .expect("download finished in time")
    .unwrap_or_else(|e| panic!("download failed: {e}"));
    assert_eq!(done.transport, Transport::Udp, "fell back: {:?}", done.note);
    let local = me.share.root().join("f.bin");
    assert!(std::fs::read(&local).unwrap() == content, "content differs");
    let (md5, sha256) = coreutils_hashes(&local);
    assert_eq!((done.md5, done.sha256), (Some(md5), Some(sha256)));
    assert!(files_under(&me.share.state_dir().join("tmp")).is_empty());
    done.resent.unwrap_or(0)
}

/// Every size edge: empty, one byte, exactly one chunk, one chunk plus one, several MiB.
#[tokio::test(flavor = "multi_thread")]
async fn sizes_on_a_clean_path() {
    for size in [
        0,
        1,
        wire::CHUNK_LEN,
        wire::CHUNK_LEN + 1,
        3 * 1024 * 1024 + 17,
    ] {
        download_through(
            &bytes(size, size as u64),
            Faults::default(),
            Faults::default(),
            1,
        )
        .await;
    }
}

/// Random loss in both directions, up to 50%: complete and identical; only what was lost
/// is resent.
#[tokio::test(flavor = "multi_thread")]
async fn random_loss_both_directions() {
    let content = bytes(2 * 1024 * 1024, 7);
    let chunks = content.len().div_ceil(wire::CHUNK_LEN) as u64;
    for (i, loss) in [0.05, 0.2, 0.5].into_iter().enumerate() {
        let resent = download_through(
            &content,
            Faults::loss(loss),
            Faults::loss(loss),
            i as u64 + 3,
        )
        .await;
        assert!(resent > 0, "loss {loss}: nothing was resent");
        // Selective resends: about loss/(1-loss) of the chunks, never the whole file over.
        let bound = (chunks as f64 * (loss / (1.0 - loss)) * 3.0 + 200.0) as u64;
        assert!(
            resent < bound,
            "loss {loss}: {resent} resends for {chunks} chunks"
        );
    }
}

/// Edge sizes under loss, so the first and the last chunk get lost too.
#[tokio::test(flavor = "multi_thread")]
async fn edge_sizes_under_loss() {
    for size in [1, wire::CHUNK_LEN, wire::CHUNK_LEN + 1] {
        for seed in 0..4 {
            download_through(
                &bytes(size, seed),
                Faults::loss(0.3),
                Faults::loss(0.3),
                seed,
            )
            .await;
        }
    }
}

/// Loss bursts, reordering, duplication and corruption, each on its own and all at once,
/// in both directions.
#[tokio::test(flavor = "multi_thread")]
async fn bursts_reordering_duplication_corruption() {
    let content = bytes(1024 * 1024 + 3, 11);
    let cases = [
        Faults {
            burst: Some((0.02, 0.2)),
            ..Faults::default()
        },
        Faults {
            reorder: 0.2,
            ..Faults::default()
        },
        Faults {
            duplicate: 0.2,
            ..Faults::default()
        },
        Faults {
            corrupt: 0.2,
            ..Faults::default()
        },
        Faults {
            loss: 0.05,
            burst: Some((0.01, 0.3)),
            reorder: 0.1,
            duplicate: 0.1,
            corrupt: 0.1,
            ..Faults::default()
        },
    ];
    for (i, faults) in cases.into_iter().enumerate() {
        download_through(&content, faults, faults, 100 + i as u64).await;
    }
}

/// Corrupted datagrams never reach the file: a fifth of all datagrams get a flipped byte,
/// which the per-datagram authentication (AES-256-GCM) always catches, and the file is
/// still exact.
#[tokio::test(flavor = "multi_thread")]
async fn corrupted_datagrams_never_reach_the_file() {
    let b = TestBox::start().await;
    let content = bytes(512 * 1024, 5);
    b.write("f.bin", &content);
    let corrupt = Faults {
        corrupt: 0.2,
        ..Faults::default()
    };
    let relay = Relay::start(b.addr, Faults::default(), corrupt, 9).await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_via(&me, relay.addr);
    let mut progress = |_, _| {};
    let done = peer
        .download_udp(&rel("f.bin"), None, &mut progress)
        .await
        .unwrap();
    assert!(relay.stats.corrupted.load(Ordering::Relaxed) > 10);
    assert!(done.resent.unwrap() > 0, "corrupted chunks were not resent");
    assert_eq!(
        std::fs::read(me.share.root().join("f.bin")).unwrap(),
        content
    );
}

/// Negotiates a UDP download by hand and returns the session, token and server address.
async fn negotiate(b: &TestBox) -> (Connection<Link>, u64, [u8; 16]) {
    let mut connection = crate::util::dial(b).await;
    connection
        .write_message(&Request::DownloadUdp(DownloadUdp {
            name: rel("f.bin"),
            max_rate: None,
            blake3_only: false,
            ranges: None,
        }))
        .await
        .unwrap();
    match connection.expect_message::<Response>().await.unwrap() {
        Response::UdpReady { session, token, .. } => (
            connection,
            u64::from_str_radix(&session, 16).unwrap(),
            parse_token(&token).unwrap(),
        ),
        other => panic!("expected udp_ready, got {other:?}"),
    }
}

/// Whether `socket` receives any datagram within `wait`.
async fn receives_anything(socket: &UdpSocket, wait: Duration) -> bool {
    let mut buffer = [0u8; 2048];
    tokio::time::timeout(wait, socket.recv_from(&mut buffer))
        .await
        .is_ok()
}

/// The keys a hand-made client derives for the session it negotiated on `connection`, as
/// a real client does: its sealer (client to server) and opener (server to client).
fn client_keys(connection: &Connection<Link>, session: u64, token: &[u8; 16]) -> (Sealer, Opener) {
    let secret = connection
        .export_secret(&seal::exporter_context(session, token))
        .unwrap();
    TransferKeys::derive(&secret).for_client()
}

/// A HELLO of `session`, sealed by `sealer`.
fn sealed_hello(sealer: &mut Sealer, session: u64, token: &[u8; 16]) -> Vec<u8> {
    let mut hello = wire::encode_hello(session, token);
    sealer.seal(&mut hello, 0).unwrap();
    hello
}

/// Datagrams `socket` receives until it has received nothing for `quiet`.
async fn count_received(socket: &UdpSocket, quiet: Duration) -> u64 {
    let mut buffer = [0u8; 2048];
    let mut count = 0;
    while tokio::time::timeout(quiet, socket.recv_from(&mut buffer))
        .await
        .is_ok()
    {
        count += 1;
    }
    count
}

/// Nothing unauthenticated is answered: the old plaintext HELLO with the right token, a
/// HELLO sealed under another key, truncated and garbled ones, and junk for no session get
/// no byte back. The HELLO sealed under the transfer's key gets the data; replayed from
/// elsewhere, or sealed afresh from elsewhere once the session is bound, it gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_datagrams_get_no_answer() {
    let b = TestBox::start().await;
    b.write("f.bin", &bytes(100_000, 3));
    let (connection, session, token) = negotiate(&b).await;
    let server: SocketAddr = b.addr;
    let (mut sealer, _) = client_keys(&connection, session, &token);
    let spoofer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut wrong_key = TransferKeys::derive(&[0x55; 32]).for_client().0;
    let genuine = sealed_hello(&mut sealer, session, &token);
    let mut garbled = genuine.clone();
    garbled[30] ^= 0x01;
    let mut junk = vec![0xEE; 64];
    junk[..12].copy_from_slice(&genuine[..12]);
    for datagram in [
        wire::encode_hello(session, &token),
        sealed_hello(&mut wrong_key, session, &token),
        genuine[..genuine.len() - 1].to_vec(),
        genuine[..20].to_vec(),
        garbled,
        junk,
        vec![0u8; 3],
        sealed_hello(&mut wrong_key, session ^ 1, &token),
    ] {
        spoofer.send_to(&datagram, server).await.unwrap();
    }
    assert!(
        !receives_anything(&spoofer, Duration::from_millis(500)).await,
        "an unauthenticated datagram was answered"
    );

    let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    receiver.send_to(&genuine, server).await.unwrap();
    assert!(
        receives_anything(&receiver, Duration::from_secs(5)).await,
        "receiver got nothing"
    );
    // Once a receiver is proven, neither a replay of its HELLO nor a fresh one from
    // elsewhere changes anything.
    spoofer.send_to(&genuine, server).await.unwrap();
    spoofer
        .send_to(&sealed_hello(&mut sealer, session, &token), server)
        .await
        .unwrap();
    assert!(!receives_anything(&spoofer, Duration::from_millis(300)).await);
}

/// A HELLO sent from another port (a spoofed source) binds the session there, and that
/// port gets at most the initial window, since no FEEDBACK comes from it; the session then
/// ends for silence and the client hears `unavailable` on its TCP connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_hello_from_another_port_gets_at_most_the_initial_window() {
    let b = TestBox::start().await;
    b.write("f.bin", &bytes(4 * 1024 * 1024, 6));
    let (mut connection, session, token) = negotiate(&b).await;
    let (mut sealer, _) = client_keys(&connection, session, &token);
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    receiver::enlarge_receive_buffer(&victim);
    let started = std::time::Instant::now();
    victim
        .send_to(&sealed_hello(&mut sealer, session, &token), b.addr)
        .await
        .unwrap();
    let received = count_received(&victim, Duration::from_millis(1500)).await;
    assert!(received > 0, "the bound address got nothing");
    assert!(
        received <= INITIAL_WINDOW,
        "{received} datagrams to a port that never sent feedback"
    );
    let answer = tokio::time::timeout(
        SILENCE_TIMEOUT + Duration::from_secs(3),
        connection.expect_message::<Response>(),
    )
    .await
    .expect("the silent session ended in time")
    .unwrap();
    assert!(
        matches!(
            answer,
            Response::Error {
                kind: ErrorKind::Unavailable,
                ..
            }
        ),
        "{answer:?}"
    );
    assert!(started.elapsed() <= SILENCE_TIMEOUT + Duration::from_secs(2));
}

/// 16 sessions whose clients never say HELLO take every slot, so a 17th client is told
/// `unavailable`; each silent session ends within its deadline (its client hears
/// `unavailable`), and then the 17th client is served.
#[tokio::test(flavor = "multi_thread")]
async fn silent_sessions_free_their_slots() {
    let b = TestBox::start().await;
    let content = bytes(200_000, 4);
    b.write("f.bin", &content);
    let started = std::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..MAX_SESSIONS {
        silent.push(negotiate(&b).await.0);
    }
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let mut progress = |_, _| {};
    let refused = peer
        .download_udp(&rel("f.bin"), None, &mut progress)
        .await
        .expect_err("a 17th session started");
    assert!(
        matches!(
            refused,
            PeerError::Remote {
                kind: ErrorKind::Unavailable,
                ..
            } | PeerError::Transfer(TransferError::Remote {
                kind: ErrorKind::Unavailable,
                ..
            })
        ),
        "{refused:?}"
    );
    for connection in &mut silent {
        let answer = tokio::time::timeout(
            HELLO_TIMEOUT + Duration::from_secs(3),
            connection.expect_message::<Response>(),
        )
        .await
        .expect("a silent session ended in time")
        .unwrap();
        assert!(
            matches!(
                answer,
                Response::Error {
                    kind: ErrorKind::Unavailable,
                    ..
                }
            ),
            "{answer:?}"
        );
    }
    assert!(started.elapsed() < HELLO_TIMEOUT + Duration::from_secs(3));
    let done = peer
        .download_udp(&rel("f.bin"), None, &mut progress)
        .await
        .expect("served once the slots were free");
    assert_eq!(done.transport, Transport::Udp);
    assert!(std::fs::read(me.share.root().join("f.bin")).unwrap() == content);
}

/// Downloads `f.bin` from `b` over UDP through `relay` (TCP straight to `b`), returning
/// what the client dropped.
async fn download_via(b: &TestBox, relay: &Relay, me: &Arc<LocalBox>) -> DropCounts {
    let mut connection = crate::util::dial(b).await;
    let name = rel("f.bin");
    let landing = Landing::same_name(&name);
    let request = DownloadUdp::new(&name, &landing, None);
    connection
        .write_message(&Request::DownloadUdp(request.clone()))
        .await
        .unwrap();
    let path = receiver::UdpPath {
        local_ip: "127.0.0.1".parse().unwrap(),
        server: relay.addr,
    };
    let mut progress = |_, _| {};
    let (done, drops) = tokio::time::timeout(
        Duration::from_secs(60),
        request.receive(&mut connection, path, &me.share, &landing, &mut progress),
    )
    .await
    .expect("download finished in time")
    .unwrap_or_else(|e| panic!("download failed: {e:?}"));
    assert_eq!(done.transport, Transport::Udp);
    drops
}

/// A relay that injects forged datagrams, replays of earlier ones and truncated copies in
/// both directions changes nothing: the file arrives intact, and the client counts what it
/// dropped under each reason.
#[tokio::test(flavor = "multi_thread")]
async fn forged_replayed_and_truncated_datagrams_change_nothing() {
    let b = TestBox::start().await;
    let content = bytes(1024 * 1024 + 5, 12);
    b.write("f.bin", &content);
    let attack = Faults {
        forge: 0.1,
        replay: 0.1,
        truncate: 0.1,
        ..Faults::default()
    };
    let relay = Relay::start(b.addr, attack, attack, 21).await;
    let (_t, me) = TestBox::client();
    let drops = download_via(&b, &relay, &me).await;
    assert!(std::fs::read(me.share.root().join("f.bin")).unwrap() == content);
    assert!(files_under(&me.share.state_dir().join("tmp")).is_empty());
    let injected = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    assert!(injected(&relay.stats.forged) > 10);
    assert!(injected(&relay.stats.replayed) > 10);
    assert!(injected(&relay.stats.truncated) > 10);
    assert!(drops.forged > 0, "{drops:?}");
    assert!(drops.replayed > 0, "{drops:?}");
    assert!(drops.damaged > 0, "{drops:?}");
}

/// A relay that records every UDP byte in both directions never sees the file's content:
/// a distinctive pattern that fills the file appears nowhere in the capture.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_never_sees_the_content() {
    let b = TestBox::start().await;
    let pattern = b"boxsync-SECRET-pattern-0123456789-";
    let content: Vec<u8> = pattern.iter().copied().cycle().take(300_000).collect();
    b.write("f.bin", &content);
    let record = Faults {
        record: true,
        ..Faults::default()
    };
    let relay = Relay::start(b.addr, record, record, 2).await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_via(&me, relay.addr);
    let mut progress = |_, _| {};
    let done = peer
        .download_udp(&rel("f.bin"), None, &mut progress)
        .await
        .unwrap();
    assert_eq!(done.transport, Transport::Udp);
    assert!(std::fs::read(me.share.root().join("f.bin")).unwrap() == content);
    let captured = relay.stats.captured.lock().unwrap();
    assert!(captured.len() > content.len(), "the relay saw the transfer");
    let needle = &pattern[..12];
    assert!(
        !captured.windows(needle.len()).any(|w| w == needle),
        "file content in clear on the wire"
    );
}

/// The serving box dies mid-transfer: a clear error in bounded time, no partial file in
/// the folder (what arrived, checked, waits in `.boxsync/tmp/resume/`), the previous local
/// version intact.
#[tokio::test(flavor = "multi_thread")]
async fn peer_vanishes_mid_transfer() {
    let mut b = TestBox::start().await;
    b.write("f.bin", &bytes(32 * 1024 * 1024, 1));
    let (_t, me) = TestBox::client();
    crate::util::write_file(me.share.root(), "f.bin", b"previous");
    let peer = b.peer_for(&me);
    let halfway = tokio::sync::Notify::new();
    let signalled = AtomicBool::new(false);
    let mut progress = |done: u64, _| {
        if done > 1024 * 1024 && !signalled.swap(true, Ordering::SeqCst) {
            halfway.notify_one();
        }
    };
    let kill = async {
        halfway.notified().await;
        b.kill().await;
    };
    let name = rel("f.bin");
    let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(
            peer.download_udp(&name, Some(4_000_000), &mut progress),
            kill
        )
    })
    .await
    .expect("bounded time");
    let error = result.expect_err("download from a dead peer succeeded");
    assert!(is_connection_lost(&error), "{error:?}");
    assert_eq!(
        std::fs::read(me.share.root().join("f.bin")).unwrap(),
        b"previous"
    );
    // Nothing loose in tmp/: only the blocks checked so far, kept to resume.
    assert!(
        files_under(&me.share.state_dir().join("tmp"))
            .iter()
            .all(|p| p.starts_with("resume"))
    );
}

/// The UDP path dies mid-transfer while TCP stays up: the download fails in bounded time,
/// leaving nothing behind: the server ends the session once the client's feedback has
/// stopped for its silence time-out (and says `unavailable`), or the client fails for lack
/// of progress, whichever comes first (the server's, at 5 s against 10 s).
#[tokio::test(flavor = "multi_thread")]
async fn udp_path_dies_mid_transfer() {
    let b = TestBox::start().await;
    b.write("f.bin", &bytes(16 * 1024 * 1024, 2));
    let relay = Relay::start(b.addr, Faults::default(), Faults::default(), 4).await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_via(&me, relay.addr);
    let cut = Arc::clone(&relay.cut);
    let mut progress = |done: u64, _| {
        if done > 512 * 1024 {
            cut.store(true, Ordering::SeqCst);
        }
    };
    let started = std::time::Instant::now();
    let error = peer
        .download_udp(&rel("f.bin"), Some(2_000_000), &mut progress)
        .await
        .expect_err("a dead path completed");
    assert!(
        matches!(
            error,
            PeerError::Udp(UdpError::Stalled(_))
                | PeerError::Transfer(TransferError::Remote {
                    kind: ErrorKind::Unavailable,
                    ..
                })
        ),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        files_under(me.share.root())
            .iter()
            .all(|p| p.starts_with(".boxsync"))
    );
    // Nothing loose in tmp/: only the blocks checked so far, kept to resume.
    assert!(
        files_under(&me.share.state_dir().join("tmp"))
            .iter()
            .all(|p| p.starts_with("resume"))
    );
}

/// No datagram gets through at all (a firewall): the download says so within seconds and
/// falls back to TCP.
#[tokio::test(flavor = "multi_thread")]
async fn blocked_udp_falls_back_to_tcp() {
    let b = TestBox::start().await;
    let content = bytes(100_000, 8);
    b.write("f.bin", &content);
    let wall = Faults {
        blackhole: true,
        ..Faults::default()
    };
    let relay = Relay::start(b.addr, wall, wall, 1).await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_via(&me, relay.addr);
    let mut progress = |_, _| {};
    let started = std::time::Instant::now();
    let done = peer
        .download_udp(&rel("f.bin"), None, &mut progress)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(done.transport, Transport::Tcp);
    assert!(done.note.unwrap().contains("UDP"));
    assert_eq!(
        std::fs::read(me.share.root().join("f.bin")).unwrap(),
        content
    );
}

/// Several UDP downloads at once, from two boxes, all complete.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_downloads_from_several_boxes() {
    let b1 = TestBox::start().await;
    let b2 = TestBox::start().await;
    for i in 0..3 {
        b1.write(&format!("one/{i}.bin"), &bytes(700_000, i));
        b2.write(&format!("two/{i}.bin"), &bytes(900_000, 10 + i));
    }
    let (_t, me) = TestBox::client();
    let p1 = Arc::new(b1.peer_for(&me));
    let p2 = Arc::new(b2.peer_for(&me));
    let mut tasks = Vec::new();
    for i in 0..3 {
        for (peer, dir) in [(Arc::clone(&p1), "one"), (Arc::clone(&p2), "two")] {
            tasks.push(tokio::spawn(async move {
                let mut progress = |_, _| {};
                peer.download_udp(&rel(&format!("{dir}/{i}.bin")), None, &mut progress)
                    .await
                    .map(|d| d.transport)
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), Transport::Udp);
    }
    for i in 0..3u64 {
        let one = std::fs::read(me.share.root().join(format!("one/{i}.bin"))).unwrap();
        assert!(one == bytes(700_000, i));
        let two = std::fs::read(me.share.root().join(format!("two/{i}.bin"))).unwrap();
        assert!(two == bytes(900_000, 10 + i));
    }
}

/// A file that changes on the peer during a UDP transfer is never stored as a mix.
#[tokio::test(flavor = "multi_thread")]
async fn file_changing_during_udp_transfer_is_not_stored() {
    let b = TestBox::start().await;
    let path = b.write("f.bin", &bytes(8 * 1024 * 1024, 3));
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let changed = AtomicBool::new(false);
    let mut progress = |done: u64, _| {
        if done > 1024 * 1024 && !changed.swap(true, Ordering::SeqCst) {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[0xAB; 4096], 6 * 1024 * 1024).unwrap();
        }
    };
    let error = peer
        .download_udp(&rel("f.bin"), Some(8_000_000), &mut progress)
        .await
        .expect_err("a changed file was stored");
    assert!(is_changed_on_peer(&error), "{error:?}");
    assert!(
        files_under(me.share.root())
            .iter()
            .all(|p| p.starts_with(".boxsync"))
    );
}
