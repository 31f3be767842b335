//! Several files at once and sftp's names, through the real binary against a real box:
//! `download tcp '*.txt'`, a whole folder, `get`, `ls`, `cd` and `pwd`, one file failing
//! among others, and `--json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::util::{TestBox, binary, bytes, files_under};

/// Runs the binary with `-d dir -p <the box>` and one `-c` per line, off the async threads.
async fn script(dir: &Path, b: &TestBox, json: bool, lines: &[&str]) -> Output {
    let mut args = vec![
        "-d".to_string(),
        dir.display().to_string(),
        "-p".to_string(),
        b.cli_target(dir),
    ];
    if json {
        args.push("--json".to_string());
    }
    for line in lines {
        args.push("-c".to_string());
        args.push(line.to_string());
    }
    tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run boxsync")
    })
    .await
    .expect("the run's thread")
}

/// The files a run left in `dir`, its own state folder left out.
fn landed(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| !p.starts_with(".boxsync"))
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A peer with text files at the top and deeper, and a music folder with a subfolder and
/// an empty folder.
async fn sample() -> TestBox {
    let b = TestBox::start().await;
    b.write("a.txt", b"alpha\n");
    b.write("b.txt", &bytes(70_000, 2));
    b.write("c.md", b"# not text\n");
    b.write("notes/deep.txt", b"deep\n");
    b.write("music/a.mp3", &bytes(50_000, 3));
    b.write("music/live/b.mp3", &bytes(20_000, 4));
    std::fs::create_dir_all(b.root().join("music/empty")).unwrap();
    b
}

/// `download tcp '*.txt'` fetches exactly the top-level text files, with their bytes, one
/// line each and a summary; run again, they are up to date and nothing is fetched;
/// `'**/*.txt'` reaches into folders.
#[tokio::test(flavor = "multi_thread")]
async fn a_glob_fetches_exactly_the_matching_files() {
    let b = sample().await;
    let dir = tempfile::tempdir().unwrap();
    let out = script(dir.path(), &b, false, &["download tcp '*.txt'"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    assert_eq!(
        landed(dir.path()),
        [PathBuf::from("a.txt"), PathBuf::from("b.txt")]
    );
    for name in ["a.txt", "b.txt"] {
        assert_eq!(
            std::fs::read(dir.path().join(name)).unwrap(),
            std::fs::read(b.root().join(name)).unwrap(),
            "{name}"
        );
        assert!(stdout.contains(&format!("downloaded {name}")), "{stdout}");
    }
    assert!(stdout.contains("downloaded 2 files ("), "{stdout}");

    let again = script(dir.path(), &b, false, &["get '*.txt'"]).await;
    let stdout = text(&again.stdout);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(stdout.contains("a.txt is up to date"), "{stdout}");
    assert!(
        stdout.contains("downloaded 0 files (0 B), 2 up to date"),
        "{stdout}"
    );

    let deep = script(dir.path(), &b, false, &["get '**/deep.txt'"]).await;
    assert!(deep.status.success(), "{}", text(&deep.stderr));
    assert_eq!(
        std::fs::read(dir.path().join("notes/deep.txt")).unwrap(),
        b"deep\n"
    );
}

/// A pattern that picks nothing says so in one line and fails the script.
#[tokio::test(flavor = "multi_thread")]
async fn a_glob_that_matches_nothing_fails() {
    let b = sample().await;
    let dir = tempfile::tempdir().unwrap();
    let out = script(dir.path(), &b, false, &["get '*.iso'"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "error: no file on the peer matches '*.iso'",
        "{stderr}"
    );
    assert!(landed(dir.path()).is_empty());
}

/// `download tcp music/` and `get music` (a folder by name) reproduce the nested tree,
/// the empty folder included.
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_comes_whole_with_its_layout() {
    let b = sample().await;
    for line in ["download tcp music/", "get music"] {
        let dir = tempfile::tempdir().unwrap();
        let out = script(dir.path(), &b, false, &[line]).await;
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{line}: {}{stdout}",
            text(&out.stderr)
        );
        assert_eq!(
            landed(dir.path()),
            [
                PathBuf::from("music/a.mp3"),
                PathBuf::from("music/live/b.mp3")
            ],
            "{line}"
        );
        for name in ["music/a.mp3", "music/live/b.mp3"] {
            assert_eq!(
                std::fs::read(dir.path().join(name)).unwrap(),
                std::fs::read(b.root().join(name)).unwrap(),
                "{line}: {name}"
            );
        }
        assert!(dir.path().join("music/empty").is_dir(), "{line}");
        assert!(stdout.contains("downloaded 2 files ("), "{line}: {stdout}");
    }
}

/// One file that cannot land (a folder is in its way here) fails alone: the others
/// arrive, the summary counts it, its line names it, and the script exits 1.
#[tokio::test(flavor = "multi_thread")]
async fn one_failure_does_not_stop_the_others() {
    let b = sample().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("b.txt/in the way")).unwrap();
    std::fs::write(dir.path().join("b.txt/in the way/x"), b"x").unwrap();
    let out = script(dir.path(), &b, false, &["get '*'"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(dir.path().join("c.md")).unwrap(),
        b"# not text\n"
    );
    assert!(stdout.contains("downloaded 2 files ("), "{stdout}");
    assert!(stdout.contains(", 1 failed"), "{stdout}");
    assert!(stderr.contains("error: b.txt: "), "{stderr}");
}

/// `--json` gives one object per file as it ends, then one summary object.
#[tokio::test(flavor = "multi_thread")]
async fn json_gives_each_file_and_a_summary() {
    let b = sample().await;
    let dir = tempfile::tempdir().unwrap();
    let out = script(dir.path(), &b, true, &["get music/"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(docs.len(), 3, "{docs:?}");
    let mut names: Vec<&str> = docs[..2]
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["music/a.mp3", "music/live/b.mp3"]);
    assert_eq!(docs[0]["transport"], "tcp");
    let summary = &docs[2]["summary"];
    assert_eq!(summary["downloaded"], 2);
    assert_eq!(summary["bytes"], 70_000);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["up_to_date"], 0);
}

/// After `cd`, a name with a leading `/` is from the top, as in sftp: `get /notes/deep.txt`
/// lands at its place, `hash verify /a.txt` and `ls /` read the top, and a pattern from the
/// top (`get '/music/live/*.mp3'`) too; the current folder stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_leading_slash_names_from_the_top() {
    let b = sample().await;
    let dir = tempfile::tempdir().unwrap();
    let out = script(
        dir.path(),
        &b,
        false,
        &[
            "cd music/live",
            "get /notes/deep.txt",
            "hash verify /a.txt",
            "get '/music/*.mp3'",
            "ls /",
            "pwd",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    assert_eq!(
        std::fs::read(dir.path().join("notes/deep.txt")).unwrap(),
        b"deep\n"
    );
    assert!(stdout.contains("a.txt"), "{stdout}");
    assert_eq!(
        landed(dir.path()),
        [
            PathBuf::from("music/a.mp3"),
            PathBuf::from("notes/deep.txt")
        ]
    );
    let lines: Vec<&str> = stdout.lines().collect();
    for top in ["b.txt", "c.md", "music/", "notes/"] {
        assert!(lines.contains(&top), "ls / did not list {top}: {stdout}");
    }
    assert_eq!(lines.last(), Some(&"/music/live"), "{stdout}");
}

/// `cd music; ls; get a.mp3; pwd` works as in sftp: ls lists the folder's own entries,
/// folders marked, get lands the file at its place in the tree, names resolve against
/// the current folder (hash verify too), and `cd ..` comes back.
#[tokio::test(flavor = "multi_thread")]
async fn cd_ls_get_as_in_sftp() {
    let b = sample().await;
    let dir = tempfile::tempdir().unwrap();
    let out = script(
        dir.path(),
        &b,
        false,
        &[
            "cd music",
            "ls",
            "get a.mp3",
            "pwd",
            "hash verify live/b.mp3",
            "ls -l live",
            "cd ..",
            "pwd",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], ["a.mp3", "empty/", "live/"], "{stdout}");
    assert!(
        stdout.contains("downloaded music/a.mp3 over TCP"),
        "{stdout}"
    );
    assert!(lines.contains(&"/music"), "{stdout}");
    assert!(stdout.contains("music/live/b.mp3"), "{stdout}");
    assert!(stdout.contains("-rw-"), "{stdout}");
    assert!(stdout.contains("live/b.mp3"), "{stdout}");
    assert_eq!(lines.last(), Some(&"/"), "{stdout}");
    assert_eq!(
        std::fs::read(dir.path().join("music/a.mp3")).unwrap(),
        std::fs::read(b.root().join("music/a.mp3")).unwrap()
    );
    assert_eq!(landed(dir.path()), [PathBuf::from("music/a.mp3")]);

    let top = script(dir.path(), &b, false, &["ls"]).await;
    let stdout = text(&top.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["a.txt", "b.txt", "c.md", "music/", "notes/"],
        "{stdout}"
    );
}

/// `cd` refuses, in one line and with exit status 1, to go above the shared folder, to a
/// folder the peer lacks, or to a file; the current folder stays where it was.
#[tokio::test(flavor = "multi_thread")]
async fn cd_refuses_outside_missing_and_files() {
    let b = sample().await;
    let dir = tempfile::tempdir().unwrap();
    for (line, said) in [
        ("cd ../..", "outside the peer's shared folder"),
        ("cd /music/../..", "outside the peer's shared folder"),
        ("cd nowhere", "no folder 'music/nowhere' on the peer"),
        ("cd /a.txt", "'a.txt' is a file on the peer, not a folder"),
        ("cd /.boxsync", "refused"),
    ] {
        let out = script(dir.path(), &b, false, &["cd music", line, "pwd"]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line}: {stderr}");
        assert!(stderr.contains(said), "{line}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{line}: {stderr}");
        assert_eq!(text(&out.stdout).trim(), "/music", "{line}");
    }
}

/// A shell through a pseudo-terminal on a box in `dir` whose peer is `peer`, auto-sync
/// off, colours off.
fn pty_shell(
    dir: &Path,
    peer: &str,
) -> Result<rexpect::session::PtySession, rexpect::error::Error> {
    let mut command = Command::new(binary());
    command.args([
        "-d",
        &dir.display().to_string(),
        "-l",
        "127.0.0.1:0",
        "-p",
        peer,
        "--sync",
        "0",
    ]);
    command.env("NO_COLOR", "1");
    command.env("TERM", "xterm");
    command.env_remove("RUST_LOG");
    rexpect::session::spawn_command(command, Some(30_000))
}

/// At the prompt: `cd` shows in the prompt, a set runs as one background job that says
/// how it went when it ends, and `kill` stops a set in flight, its partial files removed
/// and its later files never started.
#[tokio::test(flavor = "multi_thread")]
async fn a_set_runs_as_a_job_and_kill_stops_the_rest() {
    let b = sample().await;
    b.write("big/one.bin", &bytes(16 << 20, 5));
    b.write("big/two.bin", &bytes(16 << 20, 6));
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let addr = b.addr.to_string();
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), rexpect::error::Error> {
        let mut sh = pty_shell(&dir_path, &peer)?;
        sh.exp_string("]> ")?;
        sh.send_line("cd music")?;
        sh.exp_string(&crate::util::as_pty_bytes(&format!(
            "boxsync [{addr} ✓ /music]> "
        )))?;
        sh.send_line("get '*' &")?;
        sh.exp_string("[1] download tcp '*'")?;
        sh.exp_string("[1] done download tcp '*': downloaded 1 file (48.8 KiB)")?;
        sh.send_line("cd /big")?;
        sh.exp_string("/big]> ")?;
        // Both files at 8 Mbit/s take half a minute: killed long before.
        sh.send_line("download udp '*.bin' --max-rate 8M &")?;
        sh.exp_string("[2] download udp '*.bin'")?;
        assert!(
            crate::util::poll(std::time::Duration::from_secs(20), || {
                !files_under(&dir_path.join(".boxsync/tmp")).is_empty()
            }),
            "the set never started"
        );
        sh.send_line("kill 2")?;
        sh.exp_string("[2] killed download udp '*.bin'")?;
        sh.send_line("quit")?;
        sh.exp_eof()?;
        Ok(())
    })
    .await
    .expect("pty thread")
    .expect("shell session");
    assert_eq!(
        std::fs::read(dir.path().join("music/a.mp3")).unwrap(),
        std::fs::read(b.root().join("music/a.mp3")).unwrap()
    );
    assert!(!dir.path().join("big/one.bin").exists());
    assert!(!dir.path().join("big/two.bin").exists());
    let partials = || {
        files_under(&dir.path().join(".boxsync/tmp"))
            .into_iter()
            .filter(|p| !p.starts_with("resume"))
            .collect::<Vec<_>>()
    };
    assert!(
        crate::util::poll(std::time::Duration::from_secs(10), || partials().is_empty()),
        "partial files left: {:?}",
        partials()
    );
}

/// A name holding glob characters still names its file: as a pattern it picks nothing
/// (or is no valid pattern), so it is taken as the name, by `get` and by `ls`.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_with_glob_characters_still_names_its_file() {
    let b = TestBox::start().await;
    b.write("odd[1].txt", b"one\n");
    b.write("half[open.txt", b"half\n");
    let dir = tempfile::tempdir().unwrap();
    let out = script(
        dir.path(),
        &b,
        false,
        &["get 'odd[1].txt'", "get 'half[open.txt'", "ls 'odd[1].txt'"],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    assert_eq!(
        std::fs::read(dir.path().join("odd[1].txt")).unwrap(),
        b"one\n"
    );
    assert_eq!(
        std::fs::read(dir.path().join("half[open.txt")).unwrap(),
        b"half\n"
    );
    assert_eq!(stdout.lines().last(), Some("odd[1].txt"), "{stdout}");
}

/// A set downloads a few files at a time, not all at once: while twelve rate-capped files
/// come, this box never holds more than four of them in flight (their parts in
/// `.boxsync/tmp/`), and does hold more than one.
#[tokio::test(flavor = "multi_thread")]
async fn a_set_downloads_four_at_a_time() {
    let b = TestBox::start().await;
    for i in 0..12 {
        b.write(&format!("set/f{i:02}.bin"), &bytes(1 << 20, 10 + i));
    }
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join(".boxsync/tmp");
    let run = script(
        dir.path(),
        &b,
        false,
        &["download udp 'set/*.bin' --max-rate 8M"],
    );
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (tmp, done) = (tmp.clone(), std::sync::Arc::clone(&done));
        tokio::task::spawn_blocking(move || {
            let mut most = 0;
            let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !done.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < end
            {
                most = most.max(files_under(&tmp).len());
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            most
        })
    };
    let out = run.await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watch.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(landed(dir.path()).len(), 12);
    assert!((2..=4).contains(&most), "{most} files in flight at most");
}
