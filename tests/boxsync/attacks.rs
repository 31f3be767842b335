//! Hostile peers: paths that try to leave the folder, symlinks, and garbage on the raw
//! socket. Each is refused, nothing outside the folder is touched, and the server keeps
//! serving everyone else.

use std::os::unix::fs::symlink;
use std::time::Duration;

use boxsync::protocol::Link;
use boxsync::protocol::{self, Connection, ErrorKind, Frame, Response};
use boxsync::share::RelPath;
use boxsync::share::filter::IndexFilter;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::util::{TestBox, bytes, files_under};

/// Opens a raw connection and completes the handshake.
async fn raw(b: &TestBox) -> Connection<Link> {
    crate::util::dial(b).await
}

/// Sends a JSON request as a control frame and returns the response, if any, and whether
/// the server then closed the connection.
async fn send_json(b: &TestBox, request: serde_json::Value) -> (Option<Response>, bool) {
    let mut connection = raw(b).await;
    connection.write_message(&request).await.unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        connection.read_message::<Response>(),
    )
    .await
    .expect("server answered in time")
    .ok()
    .flatten();
    connection
        .write_message(&json!({"request": "hash_checkall"}))
        .await
        .ok();
    let next = tokio::time::timeout(Duration::from_secs(5), connection.read_frame()).await;
    let closed = !matches!(next, Ok(Ok(Some(_))));
    (response, closed)
}

/// The server still answers a well-behaved client.
async fn assert_still_serving(b: &TestBox) {
    let (_t, me) = TestBox::client();
    let entries = b.peer_for(&me).index(&IndexFilter::Longlist).await;
    assert!(entries.is_ok(), "server stopped serving: {entries:?}");
}

/// Paths that leave the folder are refused at the server, whatever the client sends.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let b = TestBox::start_in(tempfile::tempdir_in(outer.path()).unwrap()).await;
    b.write("inside.txt", b"inside");
    std::fs::write(outer.path().join("secret.txt"), b"secret").unwrap();
    let long = "a/".repeat(2100) + "x";
    let hostile = [
        "../x",
        "../secret.txt",
        "../../secret.txt",
        "/etc/passwd",
        "a/../../x",
        "..\\x",
        "..\\..\\secret.txt",
        "a\u{0}b",
        ".boxsync/box-id",
        ".boxsync/../../secret.txt",
        long.as_str(),
        &"n".repeat(300),
    ];
    for path in hostile {
        for request in ["download", "hash_verify"] {
            let (response, closed) = send_json(&b, json!({"request": request, "name": path})).await;
            let refused = matches!(response, Some(Response::Error { .. }));
            assert!(refused, "{request} {path:?} got {response:?}");
            assert!(
                closed,
                "{request} {path:?}: malformed request did not end the connection"
            );
        }
        // One hostile name spoils a whole batch: nothing of it is served.
        let batch = json!({"request": "download_many", "names": ["inside.txt", path]});
        let (response, closed) = send_json(&b, batch).await;
        let refused = matches!(response, Some(Response::Error { .. }));
        assert!(refused, "download_many {path:?} got {response:?}");
        assert!(closed, "download_many {path:?} did not end the connection");
    }
    assert_still_serving(&b).await;
    assert_eq!(
        std::fs::read(outer.path().join("secret.txt")).unwrap(),
        b"secret"
    );
}

/// Symlinks are never followed: not listed, not hashed, not served, not traversed.
#[tokio::test(flavor = "multi_thread")]
async fn symlinks_out_of_the_folder_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret.txt"), b"secret").unwrap();
    let b = TestBox::start().await;
    b.write("inside.txt", b"inside");
    symlink(outer.path().join("secret.txt"), b.root().join("link.txt")).unwrap();
    symlink(outer.path(), b.root().join("linkdir")).unwrap();
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let names: Vec<String> = peer
        .index(&IndexFilter::Longlist)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(names, ["inside.txt"]);
    let mut progress = |_, _| {};
    for name in ["link.txt", "linkdir/secret.txt"] {
        let rel = RelPath::parse(name).unwrap();
        let error = peer.download_tcp(&rel, &mut progress).await.unwrap_err();
        assert!(error.to_string().contains("symlink"), "{name}: {error}");
        let error = peer.hash(&rel).await.unwrap_err();
        assert!(error.to_string().contains("symlink"), "{name}: {error}");
        assert!(!me.share.root().join(name).exists());
    }
    let hashes = peer.hash_all().await.unwrap();
    assert_eq!(hashes.len(), 1);
}

/// Garbage, oversized, truncated and unknown frames end that one connection; the server
/// keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_frames_end_only_that_connection() {
    let b = TestBox::start().await;
    b.write("inside.txt", b"inside");

    // Before the handshake: random bytes, an oversized header, an HTTP request.
    let before: Vec<Vec<u8>> = vec![
        bytes(4096, 7),
        Frame::header(true, 64 * 1024 * 1024).to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        [&Frame::header(true, 9)[..], b"not json!"].concat(),
        [&Frame::header(true, 2)[..], b"{}"].concat(),
    ];
    for garbage in before {
        let mut stream = TcpStream::connect(b.addr).await.unwrap();
        stream.write_all(&garbage).await.unwrap();
        let mut connection = Connection::new(stream);
        let end = tokio::time::timeout(Duration::from_secs(15), async {
            while let Ok(Some(_)) = connection.read_frame().await {}
        })
        .await;
        assert!(end.is_ok(), "server kept a garbage connection open");
    }

    // After the handshake.
    let after: Vec<Vec<u8>> = vec![
        Frame::header(true, 2 * 1024 * 1024).to_vec(),
        Frame::header(false, 10)
            .iter()
            .chain(b"0123456789")
            .copied()
            .collect(),
        b"Zxxxxxxxx".to_vec(),
        [
            &Frame::header(true, 30)[..],
            br#"{"request":"format_disk"}    "#,
        ]
        .concat(),
        [&Frame::header(true, 100)[..], b"truncated"].concat(),
    ];
    for garbage in after {
        let mut connection = raw(&b).await;
        connection.write_raw(&garbage).await.unwrap();
        // For the truncated frame, the server only notices once we stop sending.
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(_)) = connection.read_frame().await {}
        })
        .await;
        if end.is_err() {
            drop(connection);
        }
        assert_still_serving(&b).await;
    }
    assert_still_serving(&b).await;
}

/// A client of the old plaintext protocol is told, in that protocol and at once, that this
/// box speaks only the encrypted one: a clear error, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_plaintext_client_is_told_to_upgrade() {
    let b = TestBox::start().await;
    let stream = TcpStream::connect(b.addr).await.unwrap();
    let mut connection = Connection::new(stream);
    connection
        .write_message(&json!({"magic": "boxsync", "version": 1, "box_id": "0123456789abcdef"}))
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        connection.read_message::<Response>(),
    )
    .await
    .expect("answered at once");
    match answer {
        Ok(Some(Response::Error { kind, message })) => {
            assert_eq!(kind, ErrorKind::Handshake);
            assert!(message.contains("protocol 3"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_still_serving(&b).await;
}

/// A TLS client with the wrong protocol version is refused with a clear message.
#[tokio::test(flavor = "multi_thread")]
async fn handshake_refuses_other_versions() {
    let b = TestBox::start().await;
    let identity = boxsync::identity::Identity::generate().unwrap();
    b.local.trust.allow_for_this_run(identity.id());
    let stream = TcpStream::connect(b.addr).await.unwrap();
    let link = protocol::tls::connect(stream, &identity, &b.local.id)
        .await
        .unwrap();
    let mut connection = Connection::new(link);
    connection
        .write_message(&json!({"magic": "boxsync", "version": 99}))
        .await
        .unwrap();
    match connection.read_message::<Response>().await {
        Ok(Some(Response::Error { message, .. })) => {
            assert!(message.contains("version 99"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_still_serving(&b).await;
}

/// A box id that could become a path (or carry escapes, or a megabyte) is refused at the
/// handshake, before any request: nothing is listed, and nothing is written outside the
/// folder or in its state.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_box_ids_are_refused_at_the_handshake() {
    let b = TestBox::start().await;
    let state = b.local.share.state_dir();
    let before = files_under(&state);
    for id in [
        "../../../x".to_string(),
        "/tmp/boxsync-attack".to_string(),
        "0123456789abcde\u{1b}".to_string(),
        "f".repeat(100_000),
    ] {
        let stream = TcpStream::connect(b.addr).await.unwrap();
        let mut connection = Connection::new(stream);
        connection
            .write_message(&json!({"magic": "boxsync", "version": 1, "box_id": id}))
            .await
            .unwrap();
        match connection.read_message::<Response>().await {
            Ok(Some(Response::Error { kind, .. })) => assert_eq!(kind, ErrorKind::Handshake),
            other => panic!("expected a refusal for {:?}, got {other:?}", &id[..10]),
        }
        assert!(
            matches!(
                connection.read_message::<Response>().await,
                Ok(None) | Err(_)
            ),
            "the connection stays closed"
        );
    }
    assert_eq!(files_under(&state), before);
    assert!(!b.temp.path().join("x").exists());
    assert_still_serving(&b).await;
}

/// Many connections at once, some idle, do not stop the server from serving.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_do_not_block_others() {
    let b = TestBox::start().await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(raw(&b).await);
    }
    assert_still_serving(&b).await;
}
