//! The interactive shell through a pseudo-terminal, as a person would meet it: tables and
//! errors at the prompt, the sync state in the prompt, Tab completion, Ctrl-C during a
//! download, background downloads with `jobs` and `kill`, history across restarts, logs
//! kept off the prompt.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rexpect::ReadUntil;
use rexpect::session::PtySession;

use crate::util::{TestBox, as_pty_bytes, binary, bytes, coreutils_hashes, files_under, poll};

/// How long one expectation may wait for the shell.
const EXPECT_TIMEOUT_MS: u64 = 30_000;

/// A shell on a box in `dir` whose peer is `peer`, auto-sync off, colours off, started
/// through a pty.
fn shell(dir: &Path, peer: &str, extra: &[&str]) -> Result<PtySession, rexpect::error::Error> {
    // These tests are about the shell; auto-sync would change the folders under them.
    let mut args = vec!["--sync", "0"];
    args.extend_from_slice(extra);
    shell_with(dir, peer, &args)
}

/// A shell on a box in `dir` whose peer is `peer`, with `args`, colours off, started
/// through a pty.
fn shell_with(dir: &Path, peer: &str, args: &[&str]) -> Result<PtySession, rexpect::error::Error> {
    let mut command = Command::new(binary());
    command.args([
        "-d",
        &dir.display().to_string(),
        "-l",
        "127.0.0.1:0",
        "-p",
        peer,
    ]);
    command.args(args);
    command.env("NO_COLOR", "1");
    command.env("TERM", "xterm");
    command.env_remove("RUST_LOG");
    rexpect::session::spawn_command(command, Some(EXPECT_TIMEOUT_MS))
}

/// The prompt once a request to `peer` has succeeded, as rexpect reads it.
fn reached(peer: &str) -> String {
    as_pty_bytes(&format!("boxsync [{peer} ✓]> "))
}

/// A cancelled download left no partial file (within a deadline) and nothing at `name`.
fn assert_cancelled_cleanly(dir: &Path, name: &str) {
    assert!(
        poll(Duration::from_secs(10), || partials(dir).is_empty()),
        "partial files left: {:?}",
        partials(dir)
    );
    assert!(!dir.join(name).exists(), "{name} appeared");
}

/// Types `keys` without Enter (rexpect buffers what is sent until a flush).
fn keys(sh: &mut PtySession, keys: &str) -> Result<(), rexpect::error::Error> {
    sh.send(keys)?;
    sh.flush()
}

/// Waits for two texts that may come in either order (a job can end before or after the
/// command typed meanwhile).
fn expect_both(sh: &mut PtySession, a: &str, b: &str) -> Result<(), rexpect::error::Error> {
    let (_, first) = sh.exp_any(vec![
        ReadUntil::String(a.to_string()),
        ReadUntil::String(b.to_string()),
    ])?;
    sh.exp_string(if first == a { b } else { a })?;
    Ok(())
}

/// The partial downloads under a box's `.boxsync/tmp/`.
/// The partial files under a box's `.boxsync/tmp/`, besides the parts kept there to
/// resume a download (`tmp/resume/`, checked block by block when resumed).
fn partials(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join(".boxsync/tmp"))
        .into_iter()
        .filter(|p| !p.starts_with("resume"))
        .collect()
}

/// Bytes written so far by the downloads under a box's `.boxsync/tmp/` (parts kept to
/// resume included; they are sized to the whole file at once, so the space they take on
/// disk is what counts).
fn partial_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    files_under(&dir.join(".boxsync/tmp"))
        .iter()
        .filter_map(|p| std::fs::metadata(dir.join(".boxsync/tmp").join(p)).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Runs a blocking pty session off the async threads (the peer box runs on them).
async fn drive<T: Send + 'static>(
    body: impl FnOnce() -> Result<T, rexpect::error::Error> + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(body)
        .await
        .expect("pty thread")
        .expect("shell session")
}

/// With auto-sync on, the prompt shows its state, `sync status` shows the peer, and a file
/// of the peer's arrives by itself.
#[tokio::test(flavor = "multi_thread")]
async fn prompt_shows_sync_state() {
    let b = TestBox::start().await;
    // The peer syncs back (with whoever dials it): only then is the sync two-way, ✓.
    let (_sync, _stop) = crate::util::start_sync(&b, &[], boxsync::types::Transport::Tcp);
    b.write("arrives.txt", b"by itself");
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr.to_string();
    let dir_path = dir.path().to_path_buf();
    let local = dir.path().join("arrives.txt");
    drive(move || {
        let mut sh = shell_with(&dir_path, &peer, &[])?;
        sh.exp_string("boxsync [")?;
        poll(Duration::from_secs(15), || local.exists());
        sh.send_line("sync status")?;
        sh.exp_string("auto-sync on")?;
        sh.exp_string(&addr)?;
        // The prompt shows sync's state when it is drawn, and the round that brought the
        // file may still be finishing (saving its record, telling the peer): Enter draws
        // it again until it shows the round done.
        let done = as_pty_bytes(&format!("boxsync [{addr} ✓ sync ✓]> "));
        let busy = as_pty_bytes(&format!("boxsync [{addr} ✓ sync …]> "));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, shown) = sh.exp_any(vec![
                ReadUntil::String(done.clone()),
                ReadUntil::String(busy.clone()),
            ])?;
            if shown == done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the prompt still shows sync busy 15 s after the file arrived"
            );
            std::thread::sleep(Duration::from_millis(50));
            sh.send_line("")?;
        }
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
    assert_eq!(
        std::fs::read(dir.path().join("arrives.txt")).unwrap(),
        b"by itself"
    );
}

/// The prompt redraws itself when sync's state changes, with no key pressed (issue 22
/// item 2): it turns to `✓ sync ✓` once the first round is done, a peer that stops is
/// said above the prompt with the reason and the prompt shows `✗ sync !`, and its return
/// is said and drawn too.
#[tokio::test(flavor = "multi_thread")]
async fn the_prompt_follows_sync_without_a_key() {
    let mut b = TestBox::start().await;
    let (_sync, stop_sync) = crate::util::start_sync(&b, &[], boxsync::types::Transport::Tcp);
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr;
    let dir_path = dir.path().to_path_buf();
    let synced = as_pty_bytes(&format!("boxsync [{addr} ✓ sync ✓]> "));
    let away = as_pty_bytes(&format!("boxsync [{addr} ✗ sync !]> "));
    let sh = drive({
        let synced = synced.clone();
        move || {
            let mut sh = shell_with(&dir_path, &peer, &["--sync", "1"])?;
            // Nothing is typed from here on: every prompt below is one the shell redrew.
            sh.exp_string("sync: in sync with every peer")?;
            sh.exp_string(&synced)?;
            Ok(sh)
        }
    })
    .await;
    let _ = stop_sync.send(true);
    b.stop().await;
    let temp = std::mem::replace(&mut b.temp, tempfile::tempdir().unwrap());
    drop(b);
    let sh = drive({
        let (addr, away) = (addr.to_string(), away.clone());
        move || {
            let mut sh = sh;
            sh.exp_string(&format!("sync [{addr}] stopped: "))?;
            sh.exp_string(&away)?;
            Ok(sh)
        }
    })
    .await;
    let back = TestBox::restart_at(temp, addr).await;
    // The shell's box was trusted for the peer's first run only.
    back.cli_target(dir.path());
    let (_sync, _stop) = crate::util::start_sync(&back, &[], boxsync::types::Transport::Tcp);
    drive(move || {
        let mut sh = sh;
        sh.exp_string(&format!("sync [{addr}] going again"))?;
        sh.exp_string(&synced)?;
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
}

/// `help sync` explains every sync subcommand, `sync <Tab>` completes them, and `sync now`
/// says what its round did: the file it received, then "nothing to do"; paused, it runs
/// nothing and says how to resume.
#[tokio::test(flavor = "multi_thread")]
async fn sync_now_reports_its_round() {
    let b = TestBox::start().await;
    b.write("first.txt", b"1");
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr.to_string();
    let dir_path = dir.path().to_path_buf();
    let root = b.root();
    drive(move || {
        // A long period: only the first round and `sync now` run during the test.
        let mut sh = shell_with(&dir_path, &peer, &["--sync", "3600"])?;
        sh.exp_string("boxsync [")?;
        assert!(
            poll(Duration::from_secs(15), || dir_path
                .join("first.txt")
                .exists()),
            "the first round did not bring first.txt"
        );
        sh.send_line("help sync")?;
        for form in ["sync status", "sync now", "sync on", "sync off"] {
            sh.exp_string(form)?;
        }
        // The rounds that installing first.txt set off (the watcher saw it) end within two
        // awaited rounds; from then on only `sync now` starts one.
        for _ in 0..2 {
            sh.send_line("sync now")?;
            sh.exp_string(&format!("sync [{addr}]: nothing to do"))?;
        }
        std::fs::write(root.join("second.txt"), b"2").unwrap();
        keys(&mut sh, "sync n\t")?;
        sh.exp_string("sync now ")?;
        keys(&mut sh, "\r")?;
        sh.exp_string(&format!("sync [{addr}]: received 1 file"))?;
        sh.send_line("sync off")?;
        sh.exp_string("auto-sync off")?;
        sh.send_line("sync now")?;
        sh.exp_string("auto-sync is paused, so no round ran: 'sync on' resumes it")?;
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
    assert_eq!(std::fs::read(dir.path().join("second.txt")).unwrap(), b"2");
}

/// Tab completes a remote name with a space (fetching the peer's names on the first Tab),
/// a command, a subcommand and a transport; the completed lines run and show their tables;
/// an unknown command is a one-line error that keeps the prompt; quit leaves.
#[tokio::test(flavor = "multi_thread")]
async fn tab_completes_commands_and_remote_names() {
    let b = TestBox::start().await;
    b.write("notes/hello world.txt", b"hello");
    b.write("music/a.mp3", b"abc");
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr.to_string();
    let dir_path = dir.path().to_path_buf();
    drive(move || {
        let mut sh = shell(&dir_path, &peer, &[])?;
        sh.exp_string(&format!("boxsync [{addr}]> "))?;
        // A remote name with a space: one folder level, then the file, quoted.
        keys(&mut sh, "download tcp no\t")?;
        sh.exp_string("download tcp notes/")?;
        keys(&mut sh, "\t")?;
        sh.exp_string("download tcp \"notes/hello world.txt\" ")?;
        keys(&mut sh, "\r")?;
        sh.exp_string("MD5")?;
        sh.exp_string("5d41402abc4b2a76b9719d911017c592")?;
        // Once a request has reached the peer, the prompt says so.
        sh.exp_string(&reached(&addr))?;
        sh.send_line("frobnicate")?;
        sh.exp_string("unknown command 'frobnicate'")?;
        sh.exp_string(&reached(&addr))?;
        // A command, then a subcommand.
        keys(&mut sh, "ind\t")?;
        sh.exp_string("index ")?;
        keys(&mut sh, "l\t")?;
        sh.exp_string("index longlist ")?;
        keys(&mut sh, "\r")?;
        sh.exp_string("NAME")?;
        sh.exp_string("music/a.mp3")?;
        sh.exp_string(&reached(&addr))?;
        // A transport; Ctrl-C then clears the line and the prompt stays.
        keys(&mut sh, "download u\t")?;
        sh.exp_string("download udp ")?;
        sh.send_control('c')?;
        sh.exp_string(&reached(&addr))?;
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
    assert_eq!(
        std::fs::read(dir.path().join("notes/hello world.txt")).unwrap(),
        b"hello"
    );
}

/// Ctrl-C during a large (rate-limited) download cancels it: no partial file, no file,
/// and the prompt works afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_cancels_a_download_cleanly() {
    let b = TestBox::start().await;
    b.write("big.bin", &bytes(32 << 20, 7));
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr.to_string();
    let dir_path = dir.path().to_path_buf();
    drive(move || {
        let mut sh = shell(&dir_path, &peer, &[])?;
        sh.exp_string(&format!("boxsync [{addr}]> "))?;
        // 32 MiB at 8 Mbit/s takes half a minute: plenty of time to interrupt it.
        sh.send_line("download udp big.bin --max-rate 8M")?;
        assert!(
            poll(Duration::from_secs(20), || partial_bytes(&dir_path) > 0),
            "the download never started"
        );
        sh.send_control('c')?;
        sh.exp_string("error: cancelled")?;
        sh.exp_string("]> ")?;
        assert_cancelled_cleanly(&dir_path, "big.bin");
        sh.send_line("jobs")?;
        sh.exp_string("no jobs")?;
        sh.send_line("index longlist")?;
        sh.exp_string("big.bin")?;
        sh.exp_string(&reached(&addr))?;
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
}

/// A background download completes while another command runs and is announced; `jobs`
/// lists those in flight; `kill` cancels one cleanly; quitting with one in flight asks
/// first.
#[tokio::test(flavor = "multi_thread")]
async fn background_downloads_jobs_and_kill() {
    let b = TestBox::start().await;
    let small = b.write("small.bin", &bytes(3 << 20, 1));
    b.write("slow.bin", &bytes(32 << 20, 2));
    b.write("notes.txt", b"notes");
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr.to_string();
    let dir_path = dir.path().to_path_buf();
    drive(move || {
        let mut sh = shell(&dir_path, &peer, &[])?;
        sh.exp_string(&format!("boxsync [{addr}]> "))?;
        // Job 1 is slow (half a minute); job 2 takes about two seconds.
        sh.send_line("download udp slow.bin --max-rate 8M &")?;
        sh.exp_string("[1] download udp slow.bin --max-rate 8M")?;
        sh.send_line("bg download udp small.bin --max-rate 12M")?;
        sh.exp_string("[2] download udp small.bin --max-rate 12M")?;
        sh.send_line("jobs")?;
        sh.exp_string("COMMAND")?;
        sh.exp_string("[1]")?;
        sh.exp_string("download udp slow.bin")?;
        // Another command runs in the foreground meanwhile; job 2 ends during it or after.
        sh.send_line("download tcp notes.txt")?;
        expect_both(
            &mut sh,
            "downloaded notes.txt over TCP",
            "[2] done download udp small.bin --max-rate 12M",
        )?;
        // Job 1 is still going, and gets killed.
        assert!(
            poll(Duration::from_secs(20), || partial_bytes(&dir_path) > 0),
            "job 1 never started"
        );
        sh.send_line("kill 1")?;
        sh.exp_string("[1] killed download udp slow.bin")?;
        assert_cancelled_cleanly(&dir_path, "slow.bin");
        // Job 3 is in flight when the user quits: the shell asks first.
        sh.send_line("download udp slow.bin --max-rate 8M &")?;
        sh.exp_string("[3] download udp slow.bin")?;
        sh.send_line("quit")?;
        sh.exp_string("1 background download in flight; quit and cancel it? [y/N]")?;
        sh.send_line("n")?;
        sh.exp_string("]> ")?;
        sh.send_line("quit")?;
        sh.exp_string("quit and cancel it? [y/N]")?;
        sh.send_line("y")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
    assert_eq!(
        coreutils_hashes(&dir.path().join("small.bin")),
        coreutils_hashes(&small)
    );
    assert!(!dir.path().join("slow.bin").exists());
    assert!(
        partials(dir.path()).is_empty(),
        "{:?}",
        partials(dir.path())
    );
}

/// Typed lines survive a restart (Up brings the last one back), and with `-vv` the logs go
/// to `.boxsync/log/`, never onto the prompt.
#[tokio::test(flavor = "multi_thread")]
async fn history_survives_a_restart_and_logs_stay_off_the_prompt() {
    let b = TestBox::start().await;
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let dir_path = dir.path().to_path_buf();
    let transcript = drive(move || {
        let mut sh = shell(&dir_path, &peer, &["-vv"])?;
        sh.exp_string("]> ")?;
        sh.send_line("help kill")?;
        sh.exp_string("Cancels background download")?;
        sh.exp_string("]> ")?;
        sh.send_line("quit")?;
        sh.exp_eof()?;

        let mut sh = shell(&dir_path, &peer, &["-vv"])?;
        let (_, banner) = sh.exp_regex(r"box \S+ serving \S+ on 127\.0\.0\.1:\d+")?;
        let words: Vec<&str> = banner.split_whitespace().collect();
        let own = words[words.len() - 1].to_string();
        let own_target = format!("{}@{own}", words[1]);
        sh.exp_string("]> ")?;
        // Up brings back the last line ("quit"), Up again the one before.
        keys(&mut sh, "\x1b[A")?;
        sh.exp_string("quit")?;
        keys(&mut sh, "\x1b[A")?;
        sh.exp_string("help kill")?;
        keys(&mut sh, "\r")?;
        sh.exp_string("Cancels background download")?;
        // Talk to this box's own server, which logs each connection at debug level.
        sh.send_line(&format!("peer {own_target}"))?;
        sh.exp_string(&format!("peer: {own_target}"))?;
        sh.send_line("index longlist")?;
        let mut transcript = sh.exp_string(&reached(&own))?;
        sh.send_line("quit")?;
        transcript.push_str(&sh.exp_eof()?);
        Ok(transcript)
    })
    .await;
    let history = std::fs::read_to_string(dir.path().join(".boxsync/shell-history")).unwrap();
    assert!(history.contains("help kill"), "{history}");
    let logs: String = files_under(&dir.path().join(".boxsync/log"))
        .iter()
        .map(|f| std::fs::read_to_string(dir.path().join(".boxsync/log").join(f)).unwrap())
        .collect();
    assert!(logs.contains("peer connected"), "logs: {logs}");
    assert!(
        !transcript.contains("peer connected") && !transcript.contains("DEBUG"),
        "logs on the prompt: {transcript}"
    );
}

/// `wait` prints how each job that ended during it ended, then the prompt comes back.
#[tokio::test(flavor = "multi_thread")]
async fn wait_reports_each_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBox::start().await;
    let file = b.write("three.bin", &bytes(3 << 20, 3));
    let (dir_path, peer) = (dir.path().to_path_buf(), b.cli_target(dir.path()));
    drive(move || {
        let mut sh = shell(&dir_path, &peer, &[])?;
        sh.exp_string("]> ")?;
        // About three seconds at 8 Mbit/s: still in flight when `wait` starts.
        sh.send_line("download udp three.bin --max-rate 8M &")?;
        sh.exp_string("[1] download udp three.bin --max-rate 8M")?;
        sh.send_line("wait")?;
        sh.exp_string("[1] done download udp three.bin --max-rate 8M: 3.0 MiB in")?;
        sh.exp_string("]> ")?;
        sh.send_line("wait")?;
        sh.exp_string("no jobs")?;
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
    assert_eq!(
        coreutils_hashes(&dir.path().join("three.bin")),
        coreutils_hashes(&file)
    );
}

/// A peer folder of `count` files named `f000000.txt`, `f000001.txt`...
fn numbered_files(b: &TestBox, count: usize) {
    for i in 0..count {
        b.write(&format!("f{i:06}.txt"), b"x");
    }
}

/// A listing longer than the threshold (`--ask-over 1000`, crossed in the second batch)
/// shows its first 1000 entries, asks once, and on "no" stops there: no later entry is
/// shown, the count shown is said, and the session goes on with the next command.
#[tokio::test(flavor = "multi_thread")]
async fn long_listing_asks_and_stops_on_no() {
    let b = TestBox::start().await;
    numbered_files(&b, 1500);
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr.to_string();
    let dir_path = dir.path().to_path_buf();
    drive(move || {
        let mut sh = shell(&dir_path, &peer, &["--ask-over", "1000"])?;
        sh.exp_string(&format!("boxsync [{addr}]> "))?;
        sh.send_line("index longlist")?;
        let shown =
            sh.exp_string("the peer's listing has more than 1000 entries; show them all? [y/N] ")?;
        assert!(shown.contains("f000000.txt") && shown.contains("f000999.txt"));
        assert!(!shown.contains("f001000.txt"), "shown before the answer");
        sh.send_line("n")?;
        let after = sh.exp_string("stopped: showed 1000 entries")?;
        assert!(!after.contains("f001"), "shown after no: {after}");
        sh.exp_string(&reached(&addr))?;
        sh.send_line("index glob 'f001499*'")?;
        sh.exp_string("f001499.txt")?;
        sh.exp_string(&reached(&addr))?;
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
}

/// Answering yes shows the whole listing, every entry once, and asks only once.
#[tokio::test(flavor = "multi_thread")]
async fn long_listing_shows_all_on_yes() {
    let b = TestBox::start().await;
    numbered_files(&b, 1500);
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr.to_string();
    let dir_path = dir.path().to_path_buf();
    drive(move || {
        let mut sh = shell(&dir_path, &peer, &["--ask-over", "1000"])?;
        sh.exp_string(&format!("boxsync [{addr}]> "))?;
        sh.send_line("hash checkall")?;
        sh.exp_string("show them all? [y/N] ")?;
        sh.send_line("y")?;
        let rest = sh.exp_string(&reached(&addr))?;
        for i in 1000..1500 {
            let name = format!("f{i:06}.txt");
            assert_eq!(rest.matches(&name).count(), 1, "{name} in:\n{rest}");
        }
        assert!(!rest.contains("show them all"), "asked twice");
        assert!(!rest.contains("stopped"), "{rest}");
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await;
}
