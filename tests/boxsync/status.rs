//! What a box says of itself while it works: the transfers in flight in `sync status` and
//! on the activity feed, and `boxsync status` asking a running box through its control
//! socket from another process.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use boxsync::local::Settings;
use boxsync::types::Transport;
use serde_json::Value;

use crate::util::{TestBox, binary, box_id, bytes, eventually, poll, start_sync};

/// Size of the slow file: 24 MiB, about 4 s at 6 MB/s.
const SLOW_FILE: usize = 24 << 20;

/// A running `boxsync serve`, killed if the test ends before it stops it.
struct Serving {
    /// The process.
    child: Child,
}

impl Serving {
    /// Starts `boxsync serve -d dir` with `args` and waits for its banner (it then holds
    /// the folder and listens on its control socket).
    async fn start(dir: &Path, args: &[String]) -> Serving {
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("-d")
            .arg(dir)
            .args(["-l", "127.0.0.1:0", "--no-discovery"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start boxsync serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let banner = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(banner.contains(" serving "), "{banner:?}");
        Serving { child }
    }

    /// Sends `signal` (TERM or KILL) and waits for the process to exit (10 s at most).
    fn stop(mut self, signal: &str) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut status = None;
        poll(Duration::from_secs(10), || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.expect("boxsync serve did not exit within 10 s")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `boxsync status -d dir` with `rest`, run off the async threads.
async fn status(dir: &Path, rest: &[&str]) -> Output {
    let mut command = Command::new(binary());
    command.arg("status").arg("-d").arg(dir).args(rest);
    tokio::task::spawn_blocking(move || command.output().expect("run boxsync status"))
        .await
        .unwrap()
}

/// The one JSON object `boxsync status --json` printed.
fn status_json(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line of JSON: {text}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON: {text}: {e}"))
}

fn socket(dir: &Path) -> PathBuf {
    dir.join(".boxsync").join(boxsync::control::SOCKET_FILE)
}

/// A file that takes seconds to arrive is listed in `sync status` while it does, with
/// bytes done short of its size, a rate and the time left; the activity feed announces it
/// once it has run two seconds; it leaves the list once it has arrived.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_transfer_shows_in_sync_status_until_it_arrives() {
    let b = TestBox::start().await;
    let content = bytes(SLOW_FILE, 7);
    b.write("big.bin", &content);
    let a = TestBox::start_with(Settings {
        max_udp_rate: Some(6_000_000),
        ..Settings::default()
    })
    .await;
    b.local.trust.allow_for_this_run(&a.local.id);
    let (sync, _stop) = start_sync(&a, &[b.target()], Transport::Udp);
    let mut events = sync.events();
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            let status = sync.status();
            seen = status
                .transfers
                .iter()
                .find(|t| t.name.as_str() == "big.bin" && t.done > 0 && t.done < t.total)
                .cloned()
                .map(|t| (t, status.peers[0].state.clone()));
            seen.is_some()
        })
        .await,
        "{:?}",
        sync.status()
    );
    let (transfer, state) = seen.unwrap();
    assert_eq!(transfer.total, SLOW_FILE as u64, "{transfer:?}");
    assert_eq!(transfer.peer, b.target().addr, "{transfer:?}");
    assert_ne!(
        state, "in sync",
        "a peer is not in sync while a file from it is in flight"
    );
    // The announcement, at two seconds (the transfer takes about four).
    let announced = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(event) if event.message.starts_with("receiving big.bin") => break event,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("feed closed: {e}"),
            }
        }
    })
    .await
    .expect("the long transfer was announced");
    assert_eq!(announced.message, "receiving big.bin (24.0 MiB)");
    let mid = sync.status();
    let live = mid.transfers.iter().find(|t| t.name.as_str() == "big.bin");
    if let Some(live) = live {
        assert!(live.bytes_per_second > 0, "{live:?}");
        assert!(live.eta_seconds.is_some(), "{live:?}");
    }
    let arrived = a.root().join("big.bin");
    assert!(
        eventually(Duration::from_secs(60), || {
            std::fs::read(&arrived).is_ok_and(|got| got == content)
                && sync.status().transfers.is_empty()
        })
        .await,
        "{:?}",
        sync.status()
    );
}

/// `boxsync status` asks the running box through its socket (0600): --json gives one
/// object with the box, its peers and sync's state; without, the `sync status` text. A
/// clean stop removes the socket; then, or after a kill -9 that leaves it behind, status
/// says in one line that no box runs (exit 1), and the next start replaces the socket.
#[tokio::test(flavor = "multi_thread")]
async fn boxsync_status_asks_the_running_box() {
    let b = TestBox::start().await;
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("a");
    let peer = b.cli_target(&dir);
    let args = vec!["-p".to_string(), peer];
    let serving = Serving::start(&dir, &args).await;
    let meta = std::fs::symlink_metadata(socket(&dir)).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let state = std::fs::metadata(dir.join(".boxsync")).unwrap();
    assert_eq!(state.permissions().mode() & 0o777, 0o700);

    let value = status_json(&status(&dir, &["--json"]).await);
    assert_eq!(value["box"]["id"], box_id(&dir), "{value}");
    assert_eq!(value["box"]["pid"], serving.child.id(), "{value}");
    let sync = &value["sync"];
    assert_eq!(sync["enabled"], true, "{value}");
    assert_eq!(sync["peers"][0]["id"], b.local.id.to_string(), "{value}");
    assert!(sync["peers"][0]["state"].is_string(), "{value}");
    assert!(sync["transfers"].is_array(), "{value}");

    let human = status(&dir, &[]).await;
    assert!(human.status.success(), "{human:?}");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.starts_with(&format!("box {} serving ", box_id(&dir))),
        "{text}"
    );
    for part in ["auto-sync on", "PEER", "STATE", &b.target().addr] {
        assert!(text.contains(part), "{part:?} in {text}");
    }

    assert!(serving.stop("TERM").success());
    assert!(!socket(&dir).exists(), "a clean stop removes the socket");
    let no_box = |out: &Output| {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err,
            format!("boxsync: no box is running on {}\n", dir.display()),
            "one line"
        );
    };
    no_box(&status(&dir, &[]).await);
    no_box(&status(&dir, &["--json"]).await);

    let serving = Serving::start(&dir, &args).await;
    serving.stop("KILL");
    assert!(socket(&dir).exists(), "kill -9 leaves the socket behind");
    no_box(&status(&dir, &[]).await);
    let serving = Serving::start(&dir, &args).await;
    let value = status_json(&status(&dir, &["--json"]).await);
    assert_eq!(value["box"]["pid"], serving.child.id(), "{value}");
    assert!(serving.stop("TERM").success());
}

/// From another process, `boxsync status --json` shows a file syncing slowly (over UDP,
/// under --max-rate) in `transfers`, bytes done short of its size; once it has arrived,
/// `transfers` is empty.
#[tokio::test(flavor = "multi_thread")]
async fn boxsync_status_shows_a_transfer_in_flight() {
    let b = TestBox::start().await;
    let content = bytes(SLOW_FILE, 8);
    b.write("big.bin", &content);
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("a");
    let args = vec![
        "-p".to_string(),
        format!("udp://{}", b.cli_target(&dir)),
        "--max-rate".to_string(),
        "48M".to_string(),
    ];
    let serving = Serving::start(&dir, &args).await;
    let status_now = |dir: PathBuf| async move { status_json(&status(&dir, &["--json"]).await) };
    let mut in_flight = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while in_flight.is_none() && std::time::Instant::now() < deadline {
        let value = status_now(dir.clone()).await;
        in_flight = value["sync"]["transfers"]
            .as_array()
            .and_then(|t| t.first())
            .filter(|t| t["done"].as_u64() < t["total"].as_u64())
            .cloned();
        if in_flight.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let transfer = in_flight.expect("the transfer showed in boxsync status");
    assert_eq!(transfer["name"], "big.bin", "{transfer}");
    assert_eq!(transfer["total"], SLOW_FILE as u64, "{transfer}");
    assert_eq!(transfer["peer"], b.target().addr, "{transfer}");
    for key in ["bytes_per_second", "eta_seconds", "started", "seconds"] {
        assert!(transfer.get(key).is_some(), "{key} in {transfer}");
    }
    let arrived = dir.join("big.bin");
    let mut done = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done && std::time::Instant::now() < deadline {
        let value = status_now(dir.clone()).await;
        done = value["sync"]["transfers"]
            .as_array()
            .is_some_and(|t| t.is_empty())
            && std::fs::read(&arrived).is_ok_and(|got| got == content);
        if !done {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(done, "the file arrived and left the transfers");
    assert!(serving.stop("TERM").success());
}
