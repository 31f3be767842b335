//! Trusted boxes only: an untrusted box gets nothing, the wrong box at an address is
//! refused, a relay sees no name or content and cannot change a byte unnoticed, invites
//! work once, and callers that have not authenticated hold nothing for long.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boxsync::identity::Identity;
use boxsync::peer::{Peer, PeerError};
use boxsync::protocol::{self, ErrorKind, Response};
use boxsync::requests::Request;
use boxsync::share::filter::IndexFilter;
use boxsync::types::{FileVersion, PeerAddress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::util::{TestBox, binary, bytes, files_under, rel};

/// Every file under `root` (state included) with its bytes, but the server's log.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(root)
        .into_iter()
        .filter(|p| !p.starts_with(".boxsync/log"))
        .map(|p| {
            let bytes = fs::read(root.join(&p)).unwrap_or_default();
            (p.display().to_string(), bytes)
        })
        .collect()
}

/// An untrusted box is refused for every request and every notice, with the command that
/// would let it in; the folder, the record and the state are unchanged afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_box_gets_nothing() {
    let b = TestBox::start().await;
    b.write("secret.txt", b"keep out");
    let before = snapshot(&b.root());
    let (_t, me) = TestBox::client();
    let peer = Peer::new(&b.target(), Arc::clone(&me));
    let mut progress = |_, _| {};
    let version = FileVersion {
        name: rel("secret.txt"),
        blake3: "00".repeat(32),
        size: 8,
        mtime: boxsync::time::Timestamp::now(),
        mode: 0o644,
    };
    let outcomes: Vec<(&str, Result<(), PeerError>)> = vec![
        ("index", peer.index(&IndexFilter::Longlist).await.map(drop)),
        ("hash", peer.hash(&rel("secret.txt")).await.map(drop)),
        ("checkall", peer.hash_all().await.map(drop)),
        (
            "download",
            peer.download_tcp(&rel("secret.txt"), &mut progress)
                .await
                .map(drop),
        ),
        (
            "udp",
            peer.download_udp(&rel("secret.txt"), None, &mut progress)
                .await
                .map(drop),
        ),
        ("changed", peer.notify_changed().await),
        ("installed", peer.confirm_installed(version.clone()).await),
        (
            "installed_many",
            peer.confirm_installed_many(vec![version]).await,
        ),
    ];
    for (what, outcome) in outcomes {
        match outcome {
            Err(e @ PeerError::NotTrusted { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("boxsync trust {}", me.id)),
                    "{what}: {text}"
                );
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    assert!(b.notices.take_installed(&me.id).is_empty());
    assert!(b.notices.take_served(&me.id).is_empty());
    assert_eq!(
        snapshot(&b.root()),
        before,
        "the box changed for an untrusted caller"
    );
    assert!(!me.share.root().join("secret.txt").exists());
}

/// The box at a dialed address that is not the box dialed is refused, with both IDs named.
#[tokio::test(flavor = "multi_thread")]
async fn the_wrong_box_at_an_address_is_refused() {
    let b = TestBox::start().await;
    b.write("a.txt", b"a");
    let (_t, me) = TestBox::client();
    let expected = Identity::generate().unwrap().id().clone();
    b.local.trust.allow_for_this_run(&me.id);
    let wrong = PeerAddress {
        id: expected.clone(),
        addr: b.addr.to_string(),
    };
    let error = Peer::new(&wrong, Arc::clone(&me))
        .index(&IndexFilter::Longlist)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("the box at {} is {}, not {expected}", b.addr, b.local.id)
    );
    // The server side turned the caller away too: nothing was served or logged as served.
    assert!(b.local.history.records().unwrap().is_empty());
}

/// A TCP relay in front of `server` that records every byte both ways and, if `flip_at`
/// says so, flips one byte of the first connection's server-to-client stream there.
async fn tcp_relay(server: SocketAddr, flip_at: Option<u64>) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let flipped = Arc::new(AtomicBool::new(flip_at.is_none()));
    let recorder = Arc::clone(&captured);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(server).await else {
                continue;
            };
            let flip = (!flipped.swap(true, Ordering::SeqCst))
                .then_some(flip_at)
                .flatten();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = upstream.into_split();
            tokio::spawn(pipe(client_read, server_write, Arc::clone(&recorder), None));
            tokio::spawn(pipe(server_read, client_write, Arc::clone(&recorder), flip));
        }
    });
    (addr, captured)
}

/// Copies one direction, recording it, flipping the byte at offset `flip` if given.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    captured: Arc<Mutex<Vec<u8>>>,
    flip: Option<u64>,
) {
    let mut offset = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &mut buffer[..read];
        if let Some(at) = flip
            && (offset..offset + read as u64).contains(&at)
        {
            chunk[(at - offset) as usize] ^= 0x40;
        }
        offset += read as u64;
        captured.lock().unwrap().extend_from_slice(chunk);
        if to.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A relay that records every byte of a listing, a hash and a download over TCP never sees
/// a file's name or content.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_sees_no_name_or_content() {
    let b = TestBox::start().await;
    let name = "quarterly-results-Q7-confidential.txt";
    let pattern = b"PLAINTEXT-PATTERN-0123456789-";
    let content: Vec<u8> = pattern.iter().copied().cycle().take(600_000).collect();
    b.write(name, &content);
    let (relay, captured) = tcp_relay(b.addr, None).await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_via(&me, relay);
    assert_eq!(peer.index(&IndexFilter::Longlist).await.unwrap().len(), 1);
    peer.hash(&rel(name)).await.unwrap();
    let mut progress = |_, _| {};
    peer.download_tcp(&rel(name), &mut progress).await.unwrap();
    assert_eq!(fs::read(me.share.root().join(name)).unwrap(), content);
    let seen = captured.lock().unwrap().clone();
    assert!(seen.len() > content.len(), "the relay saw the transfer");
    assert!(
        !contains(&seen, name.as_bytes()),
        "the name crossed in clear"
    );
    assert!(
        !contains(&seen, &pattern[..16]),
        "the content crossed in clear"
    );
}

/// A relay that changes one byte mid-transfer makes the transfer fail cleanly (nothing
/// half-written, nothing installed), and the next attempt succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_byte_fails_the_transfer_cleanly() {
    let b = TestBox::start().await;
    let content = bytes(4 << 20, 11);
    b.write("f.bin", &content);
    let (relay, _) = tcp_relay(b.addr, Some(2 << 20)).await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_via(&me, relay);
    let mut progress = |_, _| {};
    let first = peer.download_tcp(&rel("f.bin"), &mut progress).await;
    assert!(first.is_err(), "a changed byte went unnoticed");
    assert!(!me.share.root().join("f.bin").exists());
    // Nothing loose in tmp/: only the blocks verified before the changed one, kept to
    // resume.
    assert!(
        files_under(&me.share.root().join(".boxsync/tmp"))
            .iter()
            .all(|p| p.starts_with("resume"))
    );
    let second = peer
        .download_tcp(&rel("f.bin"), &mut progress)
        .await
        .unwrap();
    assert_eq!(fs::read(me.share.root().join("f.bin")).unwrap(), content);
    assert_eq!(second.reused + second.transferred, content.len() as u64);
}

/// Runs the binary with `args`; its exit code, stdout and stderr.
async fn boxsync(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(binary()).args(&args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

/// An invitation lets one box join, once: the two then trust each other. A second use, and
/// an expired invitation, are refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_invitation_works_once_and_not_after_it_expires() {
    let b = TestBox::start().await;
    b.write("a.txt", b"a");
    let root = b.root().display().to_string();
    let (code, line, _) = boxsync(vec!["invite".into(), "-d".into(), root.clone()]).await;
    assert_eq!(code, Some(0));
    let line = line.trim().to_string();
    assert!(
        line.contains(&format!("{}@{}", b.local.id, b.addr)),
        "{line}"
    );

    let first = tempfile::tempdir().unwrap();
    let dir = first.path().display().to_string();
    let (code, out, err) =
        boxsync(vec!["join".into(), line.clone(), "-d".into(), dir.clone()]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = boxsync(vec![
        "-d".into(),
        dir.clone(),
        "-p".into(),
        b.target().to_string(),
        "-c".into(),
        "index longlist".into(),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("a.txt"));
    let (_, trusted, _) = boxsync(vec!["peers".into(), "-d".into(), dir]).await;
    assert!(trusted.contains(b.local.id.as_str()), "{trusted}");

    // Read from standard input (`join -`), the line never shows in the process list: a
    // used line is refused there too.
    let via_stdin = tempfile::tempdir().unwrap();
    let out = {
        let dir = via_stdin.path().display().to_string();
        let line = line.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = Command::new(binary())
                .args(["join", "-", "-d", &dir])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            writeln!(child.stdin.take().unwrap(), "{line}").unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    };
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("used, expired or unknown"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let second = tempfile::tempdir().unwrap();
    let dir = second.path().display().to_string();
    let (code, _, err) = boxsync(vec!["join".into(), line, "-d".into(), dir.clone()]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("used, expired or unknown"), "{err}");

    let expired = boxsync::invite::create(
        &b.local.share.state_dir(),
        &b.local.id,
        &b.addr.to_string(),
        Duration::ZERO,
    )
    .unwrap();
    let (code, _, err) = boxsync(vec!["join".into(), expired.to_string(), "-d".into(), dir]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("used, expired or unknown"), "{err}");
}

/// The key is the owner's only, and an ID typed with one wrong character is caught.
#[tokio::test(flavor = "multi_thread")]
async fn the_key_is_private_and_typos_are_caught() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (code, id, _) = boxsync(vec!["id".into(), "-d".into(), d.clone()]).await;
    assert_eq!(code, Some(0));
    let id = id.trim().to_string();
    let mode = fs::metadata(dir.path().join(".boxsync/identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let state = fs::metadata(dir.path().join(".boxsync"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(state & 0o777, 0o700, "the state folder is the owner's only");
    let (_, json, _) = boxsync(vec!["id".into(), "-d".into(), d.clone(), "--json".into()]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["id"],
        id
    );

    let mut typo: Vec<char> = id.chars().collect();
    typo[20] = if typo[20] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    let (code, _, err) = boxsync(vec!["trust".into(), typo, "-d".into(), d.clone()]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("typo"), "{err}");
    let (_, listed, _) = boxsync(vec!["peers".into(), "-d".into(), d]).await;
    assert!(listed.contains("no trusted boxes"), "{listed}");
}

/// Connections that never authenticate hold a handshake place for a few seconds at most,
/// and only their source's share of them: a box from another address gets in at once.
#[tokio::test(flavor = "multi_thread")]
async fn silent_callers_hold_nothing_for_long() {
    let b = TestBox::start().await;
    b.write("a.txt", b"a");
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(b.addr).await.unwrap());
    }
    // A box on another source address (127.0.0.2) is served at once.
    let identity = Identity::generate().unwrap();
    b.local.trust.allow_for_this_run(identity.id());
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let started = Instant::now();
    let stream = socket.connect(b.addr).await.unwrap();
    protocol::dial(stream, &identity, &b.local.id)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // Every silent connection is closed within the handshake deadline (and a little).
    for mut stream in silent {
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(
            protocol::HANDSHAKE_TIMEOUT + Duration::from_secs(3),
            stream.read(&mut byte),
        )
        .await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "still open: {closed:?}"
        );
    }
}

/// One box cannot hold every connection slot: past its share it is turned away with a
/// reason, and another box is still served.
#[tokio::test(flavor = "multi_thread")]
async fn one_box_cannot_take_every_slot() {
    let b = TestBox::start().await;
    let hog = Identity::generate().unwrap();
    b.local.trust.allow_for_this_run(hog.id());
    // One session per box: its streams are what it can hold, each busy with a notice
    // answered and the next request awaited.
    let stream = TcpStream::connect(b.addr).await.unwrap();
    let session = protocol::dial_session(
        stream,
        &hog,
        &b.local.id,
        None,
        protocol::Greeting::default(),
        None,
    )
    .await
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..boxsync::server::MAX_CONNECTIONS_PER_BOX {
        let mut connection = protocol::Connection::new(session.mux.open().await.unwrap());
        connection.write_message(&Request::Changed).await.unwrap();
        let ack: Response = connection.expect_message().await.unwrap();
        assert!(matches!(ack, Response::Ack), "{ack:?}");
        held.push(connection);
    }
    let mut one_more = protocol::Connection::new(session.mux.open().await.unwrap());
    one_more.write_message(&Request::Changed).await.unwrap();
    match one_more.expect_message::<Response>().await {
        Ok(Response::Error { kind, message }) => {
            assert_eq!(kind, ErrorKind::Unavailable);
            assert!(message.contains("already serves"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (_t, other) = TestBox::client();
    assert!(
        b.peer_for(&other)
            .index(&IndexFilter::Longlist)
            .await
            .is_ok()
    );
    drop(held);
}

/// Trust withdrawn while a box is connected ends its connection at its next request.
#[tokio::test(flavor = "multi_thread")]
async fn untrusting_closes_live_connections() {
    let b = TestBox::start().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    assert!(peer.index(&IndexFilter::Longlist).await.is_ok());
    b.local.trust.remove(&me.id).unwrap();
    match peer.index(&IndexFilter::Longlist).await {
        Err(PeerError::Remote {
            kind: ErrorKind::NotTrusted,
            ..
        })
        | Err(PeerError::NotTrusted { .. }) => {}
        other => panic!("expected a refusal, got {:?}", other.map(drop)),
    }
    assert!(matches!(
        peer.index(&IndexFilter::Longlist).await,
        Err(PeerError::NotTrusted { .. })
    ));
}

/// A size a peer announces that does not fit in the free space is refused before anything
/// is created for it, over TCP and over UDP.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_sizes_are_refused_before_anything_is_created() {
    use boxsync::protocol::Response;
    use boxsync::protocol::message::FileStart;
    use boxsync::share::Digests;
    use boxsync::transfer::TransferError;
    // Over TCP: a file of 2^60 bytes (too many blocks to list: it comes whole).
    let (addr, _script) = crate::util::scripted_peer_streams(|mut streams| async move {
        let mut first = boxsync::protocol::Connection::new(streams.recv().await.unwrap());
        let _request = first.expect_frame().await;
        let listed = unlisted("huge.bin", 1 << 60);
        let _ = first.write_message(&listed).await;
        let mut connection = boxsync::protocol::Connection::new(streams.recv().await.unwrap());
        let _request = connection.expect_frame().await;
        let start = Response::FileStart(FileStart {
            name: rel("huge.bin"),
            size: 1 << 60,
            mtime: boxsync::time::Timestamp::now(),
            mode: 0o644,
        });
        let _ = connection.write_message(&start).await;
        let _ = connection.read_frame().await;
    })
    .await;
    let (_t, me) = TestBox::client();
    let mut progress = |_, _| {};
    let error = Peer::new(&addr, Arc::clone(&me))
        .download_tcp(&rel("huge.bin"), &mut progress)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PeerError::Transfer(TransferError::NoRoom { .. })),
        "{error:?}"
    );
    assert!(
        files_under(me.share.root())
            .iter()
            .all(|p| !p.starts_with(".boxsync/tmp"))
    );

    // Over UDP: 512 GiB, within the protocol's bound but beyond this disk (listed without
    // its blocks, so downloaded whole).
    let (addr, _script) = crate::util::scripted_peer_streams(|mut streams| async move {
        let mut first = boxsync::protocol::Connection::new(streams.recv().await.unwrap());
        let _request = first.expect_frame().await;
        let listed = unlisted("huge.bin", 512 << 30);
        let _ = first.write_message(&listed).await;
        let mut connection = boxsync::protocol::Connection::new(streams.recv().await.unwrap());
        let _request = connection.expect_frame().await;
        let ready = Response::UdpReady {
            name: rel("huge.bin"),
            session: "00000000000000aa".into(),
            token: "00".repeat(16),
            size: 512 << 30,
            mtime: boxsync::time::Timestamp::now(),
            mode: 0o644,
            chunk_len: boxsync::transfer::udp::wire::CHUNK_LEN as u32,
            digests: Digests {
                blake3: "00".repeat(32).into(),
                sha256: None,
                md5: None,
            },
        };
        let _ = connection.write_message(&ready).await;
        let _ = connection.read_frame().await;
    })
    .await;
    let error = Peer::new(&addr, Arc::clone(&me))
        .download_udp(&rel("huge.bin"), None, &mut progress)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PeerError::Transfer(TransferError::NoRoom { .. })),
        "{error:?}"
    );
    assert!(
        files_under(me.share.root())
            .iter()
            .all(|p| !p.starts_with(".boxsync/tmp"))
    );
}

/// A file a peer serves with set-ID bits arrives without them: a peer cannot plant a
/// set-user-ID program owned by this box's user.
#[tokio::test(flavor = "multi_thread")]
async fn set_id_bits_from_a_peer_are_dropped() {
    use std::os::unix::fs::PermissionsExt;
    let b = TestBox::start().await;
    let path = b.write("tool", b"#!/bin/sh\n");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o6755)).unwrap();
    let (_t, me) = TestBox::client();
    let mut progress = |_, _| {};
    b.peer_for(&me)
        .download_tcp(&rel("tool"), &mut progress)
        .await
        .unwrap();
    let mode = fs::metadata(me.share.root().join("tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

/// The shell's `peers` lists the session's peers with their trust, and `peer` takes only
/// `ID@HOST:PORT` (a bare address says the ID is missing).
#[tokio::test(flavor = "multi_thread")]
async fn the_shell_lists_peers_and_wants_ids() {
    let b = TestBox::start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = b.cli_target(dir.path());
    let d = dir.path().display().to_string();
    let (code, out, err) = boxsync(vec![
        "-d".into(),
        d.clone(),
        "-p".into(),
        target,
        "-c".into(),
        "peers".into(),
        "--json".into(),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["id"], b.local.id.as_str());
    assert_eq!(rows[0]["current"], true);
    assert_eq!(rows[0]["trust"], "this run");
    let (code, _, err) = boxsync(vec![
        "-d".into(),
        d,
        "-c".into(),
        format!("peer {}", b.addr),
    ])
    .await;
    assert_eq!(code, Some(2));
    assert!(err.contains("no box ID"), "{err}");
}

/// A box whose peer's trust is withdrawn stops talking to it, pooled connection or not.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_peer_is_not_dialed() {
    let b = TestBox::start().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    assert!(peer.index(&IndexFilter::Longlist).await.is_ok());
    me.trust.remove(&b.local.id).unwrap();
    match peer.index(&IndexFilter::Longlist).await {
        Err(e @ PeerError::Revoked { .. }) => {
            assert!(e.to_string().contains("no longer trusted here"), "{e}")
        }
        other => panic!("expected a refusal to dial, got {:?}", other.map(drop)),
    }
}

/// A `blocks` answer without the blocks (a file too big to list), for a file of `size`
/// bytes: the download that follows is of the whole file.
fn unlisted(name: &str, size: u64) -> Response {
    Response::Blocks(boxsync::requests::blocks::BlocksAnswer {
        name: rel(name),
        size,
        mtime: boxsync::time::Timestamp::now(),
        mode: 0o644,
        blake3: "00".repeat(32),
        block_size: boxsync::share::blocks::MAX_BLOCK,
        hashes: None,
    })
}
