//! The settings file, `.boxsync/config.toml`, through the real binary: a start writes its
//! settings there, a start without flags resumes them, flags override them (and are
//! kept), a mistyped key stops the start, and `boxsync peers` shows the result.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{TestBox, binary, poll};

/// Runs the binary to its end, off the async threads.
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run boxsync")
    })
    .await
    .unwrap()
}

/// Starts `boxsync serve` with `args`, reads its banner line, stops it with SIGTERM and
/// checks it exited cleanly. Returns the banner.
async fn serve_once(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(binary())
            .arg("serve")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start boxsync serve");
        let mut banner = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut exited = None;
        poll(Duration::from_secs(5), || {
            exited = child.try_wait().unwrap();
            exited.is_some()
        });
        if exited.is_none() {
            let _ = child.kill();
        }
        let exited = exited.expect("serve did not exit within 5 s of SIGTERM");
        assert!(exited.success(), "{exited:?}: {banner}");
        banner
    })
    .await
    .unwrap()
}

/// `boxsync peers -d dir --json`, read.
async fn peers_json(dir: &str) -> Value {
    let out = run(vec![
        "peers".into(),
        "-d".into(),
        dir.into(),
        "--json".into(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The box's settings file.
fn config_file(dir: &Path) -> PathBuf {
    dir.join(".boxsync").join("config.toml")
}

/// A port nothing listens on (the peer is only named, not reached).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The listening address a `serve` banner ends with.
fn banner_addr(banner: &str) -> std::net::SocketAddr {
    banner.trim().rsplit(' ').next().unwrap().parse().unwrap()
}

/// One start with flags writes them to the file, owner-only, and `peers` shows them; a
/// start with no flags resumes the same box (listen address, peer, sync period) and
/// leaves the file as it was; a flag given later wins over the file and is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_without_flags_resumes_the_last_settings() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("box");
    let d = dir.display().to_string();
    let (_t, peer) = TestBox::client();
    let (_u, other) = TestBox::client();
    let port = closed_port();
    let target = format!("{}@127.0.0.1:{port}", peer.id);

    let banner = serve_once(vec![
        "-d".into(),
        d.clone(),
        "-l".into(),
        "127.0.0.1:0".into(),
        "-p".into(),
        target.clone(),
        "--sync".into(),
        "7".into(),
        "--no-discovery".into(),
    ])
    .await;
    assert!(banner_addr(&banner).port() != 0, "{banner}");
    let text = std::fs::read_to_string(config_file(&dir)).unwrap();
    assert!(text.starts_with("# boxsync"), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:0\""), "{text}");
    assert!(text.contains(&format!("peers = [\"{target}\"]")), "{text}");
    assert!(text.contains("sync = 7"), "{text}");
    assert!(text.contains("discovery = false"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(config_file(&dir))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the settings are the owner's only");

    let shown = peers_json(&d).await;
    assert_eq!(shown["listen"], "127.0.0.1:0");
    assert_eq!(shown["sync"], 7);
    assert_eq!(shown["peers"][0]["id"], peer.id.as_str());
    assert_eq!(shown["peers"][0]["addr"], format!("127.0.0.1:{port}"));
    assert_eq!(shown["peers"][0]["transport"], "tcp");
    assert_eq!(shown["peers"][0]["trust"], "this run");

    // No flags: the same box starts, listening (a new free port, as the file says port 0),
    // and the file is not rewritten.
    let before = std::fs::metadata(config_file(&dir))
        .unwrap()
        .modified()
        .unwrap();
    let banner = serve_once(vec!["-d".into(), d.clone()]).await;
    let addr = banner_addr(&banner);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{banner}");
    assert_eq!(std::fs::read_to_string(config_file(&dir)).unwrap(), text);
    let after = std::fs::metadata(config_file(&dir))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "unchanged settings are not written again");

    // A flag wins over the file and is kept; a new -p joins the file's peers, first.
    serve_once(vec![
        "-d".into(),
        d.clone(),
        "--sync".into(),
        "0".into(),
        "-p".into(),
        format!("udp://{}", other.id),
    ])
    .await;
    let text = std::fs::read_to_string(config_file(&dir)).unwrap();
    assert!(text.contains("sync = 0"), "{text}");
    let shown = peers_json(&d).await;
    assert_eq!(shown["sync"], 0);
    assert_eq!(shown["peers"][0]["id"], other.id.as_str());
    assert_eq!(shown["peers"][0]["addr"], Value::Null);
    assert_eq!(shown["peers"][0]["transport"], "udp");
    assert_eq!(shown["peers"][1]["id"], peer.id.as_str());
    let human = run(vec!["peers".into(), "-d".into(), d]).await;
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.starts_with("listen 127.0.0.1:0, sync off"), "{human}");
    assert!(human.contains("by ID"), "{human}");
}

/// A mistyped key stops the start with one line naming the file and the line, exit
/// status 2, and the file is left as it was.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_key_stops_the_start() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("box");
    std::fs::create_dir_all(dir.join(".boxsync")).unwrap();
    let text = "sync = 7\nlisten_on = \"127.0.0.1:0\"\n";
    std::fs::write(config_file(&dir), text).unwrap();
    let out = run(vec![
        "serve".into(),
        "-d".into(),
        dir.display().to_string(),
        "-l".into(),
        "127.0.0.1:0".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("config.toml:2: unknown field `listen_on`"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(config_file(&dir)).unwrap(), text);
}

/// A file named with --config is read instead of the box's own, and may name the folder
/// (relative to the file); the box's own file then holds the settings it started with.
#[tokio::test(flavor = "multi_thread")]
async fn a_named_file_may_name_the_folder() {
    let temp = tempfile::tempdir().unwrap();
    let (_t, peer) = TestBox::client();
    let file = temp.path().join("laptop.toml");
    std::fs::write(
        &file,
        format!(
            "folder = \"box\"\nlisten = \"127.0.0.1:0\"\ntrust = [\"{}\"]\nsync = 3\n",
            peer.id
        ),
    )
    .unwrap();
    let config = file.display().to_string();
    let out = run(vec![
        "peers".into(),
        "--config".into(),
        config.clone(),
        "--json".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["sync"], 3);
    assert_eq!(shown["trusted"][0]["id"], peer.id.as_str());
    assert_eq!(shown["trusted"][0]["kept"], false);

    let banner = serve_once(vec!["--config".into(), config]).await;
    let dir = temp.path().join("box");
    assert!(banner.contains(&dir.display().to_string()), "{banner}");
    let own = std::fs::read_to_string(config_file(&dir)).unwrap();
    assert!(own.contains("sync = 3") && !own.contains("folder"), "{own}");
}
