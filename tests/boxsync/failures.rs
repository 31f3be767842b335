//! Failures mid-flight: the serving box dies, the file changes while it is sent, a lying
//! server, an unreachable peer. Nothing half-written ever becomes visible.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use boxsync::protocol::Response;
use boxsync::protocol::message::{FileEnd, FileStart};
use boxsync::requests::Request;
use boxsync::share::Digests;
use boxsync::share::filter::IndexFilter;
use boxsync::time::Timestamp;

use crate::util::{
    TestBox, bytes, files_under, is_changed_on_peer, is_connection_lost, rel, scripted_download,
};

/// Everything under the shared folder except the box's state, plus the partial files.
/// The files a person sees in the folder, and how many partial files are left under
/// `.boxsync/tmp/` besides the parts kept to resume a download (`tmp/resume/`).
fn visible_and_partial(me: &boxsync::local::LocalBox) -> (Vec<std::path::PathBuf>, usize) {
    let visible = files_under(me.share.root())
        .into_iter()
        .filter(|p| !p.starts_with(".boxsync"))
        .collect();
    let partial = files_under(&me.share.state_dir().join("tmp"))
        .into_iter()
        .filter(|p| !p.starts_with("resume"))
        .count();
    (visible, partial)
}

/// The serving box dies in the middle of a download: an error, no partial file in the
/// folder or loose in `.boxsync/tmp/`, the previous local version intact, and what had
/// arrived kept (verified block by block) in `.boxsync/tmp/resume/`: the next download
/// resumes from it.
#[tokio::test(flavor = "multi_thread")]
async fn serving_box_dies_mid_download() {
    let mut b = TestBox::start().await;
    b.write("big.bin", &bytes(64 * 1024 * 1024, 3));
    let (_t, me) = TestBox::client();
    crate::util::write_file(me.share.root(), "big.bin", b"previous version");
    let peer = b.peer_for(&me);

    let halfway = tokio::sync::Notify::new();
    let signalled = AtomicBool::new(false);
    let mut progress = |done: u64, _total: u64| {
        if done > 4 * 1024 * 1024 && !signalled.swap(true, Ordering::SeqCst) {
            halfway.notify_one();
        }
    };
    let kill = async {
        halfway.notified().await;
        b.kill().await;
    };
    let name = rel("big.bin");
    let (result, ()) = tokio::join!(peer.download_tcp(&name, &mut progress), kill);
    let error = result.expect_err("download of a dying peer succeeded");
    assert!(is_connection_lost(&error), "unclear error: {error:?}");
    assert_eq!(
        fs::read(me.share.root().join("big.bin")).unwrap(),
        b"previous version"
    );
    let (visible, partial) = visible_and_partial(&me);
    assert_eq!(visible, [std::path::PathBuf::from("big.bin")]);
    assert_eq!(partial, 0, "a partial file was left behind");
    let kept = files_under(&me.share.state_dir().join("tmp/resume"));
    assert_eq!(kept.len(), 1, "what arrived is kept to resume: {kept:?}");
}

/// A file that changes on the peer while it is being sent is never stored as a mix.
#[tokio::test(flavor = "multi_thread")]
async fn file_changing_during_send_is_not_stored() {
    let b = TestBox::start().await;
    let path = b.write("growing.bin", &bytes(48 * 1024 * 1024, 5));
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let changed = AtomicBool::new(false);
    let mut progress = |done: u64, _total: u64| {
        if done > 1024 * 1024 && !changed.swap(true, Ordering::SeqCst) {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(b"appended while sending").unwrap();
        }
    };
    let error = peer
        .download_tcp(&rel("growing.bin"), &mut progress)
        .await
        .expect_err("a file that changed mid-send was stored");
    assert!(is_changed_on_peer(&error), "{error:?}");
    let (visible, partial) = visible_and_partial(&me);
    assert!(visible.is_empty(), "{visible:?}");
    assert_eq!(partial, 0);
    // The connection is still good for the next request.
    assert!(peer.index(&IndexFilter::Longlist).await.is_ok());
}

/// A server that lies (wrong digest, extra bytes, a different name) gets nothing stored.
#[tokio::test(flavor = "multi_thread")]
async fn lying_server_gets_nothing_stored() {
    for lie in ["digest", "extra", "name", "short"] {
        let (addr, server) = scripted_download(
            "f.txt",
            b"hello".to_vec(),
            move |mut connection| async move {
                let _: Request = connection.expect_message().await.unwrap();
                let name = if lie == "name" { "other.txt" } else { "f.txt" };
                let start = Response::FileStart(FileStart {
                    name: rel(name),
                    size: 5,
                    mtime: Timestamp::now(),
                    mode: 0o644,
                });
                connection.write_message(&start).await.unwrap();
                let body: &[u8] = match lie {
                    "extra" => b"hello!!",
                    "short" => b"hel",
                    _ => b"hello",
                };
                connection.write_data(body).await.unwrap();
                let digests = Digests {
                    blake3: "0".repeat(64).into(),
                    sha256: Some("0".repeat(64).into()),
                    md5: Some("0".repeat(32).into()),
                };
                let _ = connection
                    .write_message(&Response::FileEnd(FileEnd { digests }))
                    .await;
                // Hold the connection until the client is done with it.
                let _ = connection.read_frame().await;
            },
        )
        .await;
        let (_t, me) = TestBox::client();
        let peer = boxsync::peer::Peer::new(&addr, Arc::clone(&me));
        let mut progress = |_, _| {};
        let error = peer.download_tcp(&rel("f.txt"), &mut progress).await;
        assert!(error.is_err(), "{lie}: a lie was stored");
        let (visible, partial) = visible_and_partial(&me);
        assert!(visible.is_empty(), "{lie}: {visible:?}");
        assert_eq!(partial, 0, "{lie}");
        drop(peer);
        server.abort();
    }
}

/// An unreachable peer gives one clear line; once it is up, the next command works.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_peer_then_reconnect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (_t, me) = TestBox::client();
    let nobody = boxsync::types::PeerAddress {
        id: boxsync::identity::Identity::generate()
            .unwrap()
            .id()
            .clone(),
        addr: addr.to_string(),
    };
    let peer = boxsync::peer::Peer::new(&nobody, Arc::clone(&me));
    let error = peer.index(&IndexFilter::Longlist).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("peer {addr} is unreachable: connection refused")
    );
    let b = TestBox::start().await;
    let peer = b.peer_for(&me);
    assert!(peer.index(&IndexFilter::Longlist).await.is_ok());
}

/// A peer that restarts between two commands: the stale pooled connection is replaced
/// transparently.
#[tokio::test(flavor = "multi_thread")]
async fn peer_restart_is_transparent() {
    let mut b = TestBox::start().await;
    b.write("a.txt", b"a");
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    // Kept, so that the restarted box trusts it too.
    b.local.trust.add(&me.id, None).unwrap();
    assert!(peer.index(&IndexFilter::Longlist).await.is_ok());
    b.stop().await;
    let addr = b.addr;
    let temp = std::mem::replace(&mut b.temp, tempfile::tempdir().unwrap());
    drop(b);
    // Restart on the same port.
    let local = boxsync::local::LocalBox::open(&temp.path().join("shared")).unwrap();
    let server = boxsync::server::Server::bind(local, addr).await.unwrap();
    let task = tokio::spawn(server.run(std::future::pending()));
    let entries = tokio::time::timeout(Duration::from_secs(10), peer.index(&IndexFilter::Longlist))
        .await
        .unwrap();
    assert_eq!(entries.unwrap().len(), 1);
    task.abort();
}
