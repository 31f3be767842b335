//! The real `boxsync` binary: `-c` and batch mode, `--json` shapes, exit codes, `serve`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{TestBox, binary, coreutils_hashes, files_under, poll, write_file};
use std::fs;

/// Runs the binary off the async threads (the peer box runs on them).
async fn run(args: Vec<String>, stdin: Option<&'static str>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(binary())
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start boxsync");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().expect("wait for boxsync")
    })
    .await
    .unwrap()
}

/// The child's exit status once it exits, or `None` (and the child killed) when it has
/// not within `deadline`.
fn exit_within(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let mut status = None;
    poll(deadline, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
    }
    status
}

fn args(dir: &std::path::Path, peer: &TestBox, rest: &[&str]) -> Vec<String> {
    let mut all = vec![
        "-d".to_string(),
        dir.display().to_string(),
        "-p".to_string(),
        peer.cli_target(dir),
    ];
    all.extend(rest.iter().map(|s| s.to_string()));
    all
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// `--json` gives one document per command with the documented keys, in order.
#[tokio::test(flavor = "multi_thread")]
async fn json_shapes() {
    let b = TestBox::start().await;
    b.write("music/a.mp3", b"abc");
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        args(
            dir.path(),
            &b,
            &[
                "--json",
                "-c",
                "index longlist",
                "-c",
                "hash verify music/a.mp3",
                "-c",
                "hash checkall",
                "-c",
                "download tcp music/a.mp3",
            ],
        ),
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = json_lines(&out);
    assert_eq!(docs.len(), 4);

    let index = docs[0].as_array().unwrap();
    assert_eq!(index.len(), 2);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&index[1]), ["name", "size", "mtime", "type"]);
    assert_eq!(index[0]["type"], "directory");
    assert_eq!(index[1]["name"], "music/a.mp3");
    assert_eq!(index[1]["type"], "audio/mpeg");
    assert_eq!(index[1]["size"], 3);
    let mtime = index[1]["mtime"].as_str().unwrap();
    assert!(mtime.ends_with('Z') && mtime.len() == 30, "{mtime}");

    let (md5, sha256) = coreutils_hashes(&b.root().join("music/a.mp3"));
    let blake3 = blake3::hash(b"abc").to_hex().to_string();
    assert_eq!(keys(&docs[1]), ["name", "md5", "sha256", "blake3", "mtime"]);
    assert_eq!(docs[1]["md5"], md5.as_str());
    assert_eq!(docs[1]["sha256"], sha256.as_str());
    assert_eq!(docs[1]["blake3"], blake3.as_str());
    assert_eq!(docs[2].as_array().unwrap().len(), 1);

    assert_eq!(
        keys(&docs[3]),
        [
            "name",
            "size",
            "mtime",
            "md5",
            "sha256",
            "blake3",
            "transport",
            "path",
            "seconds",
            "transferred",
            "reused"
        ]
    );
    assert_eq!(docs[3]["transport"], "tcp");
    assert_eq!(docs[3]["md5"], md5.as_str());
    assert_eq!(docs[3]["blake3"], blake3.as_str());
    let path = docs[3]["path"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"abc");
}

/// Exit status 0 when all succeed, 1 when one fails (and the rest still run), 2 for usage.
#[tokio::test(flavor = "multi_thread")]
async fn exit_codes() {
    let b = TestBox::start().await;
    b.write("a.txt", b"a");
    let dir = tempfile::tempdir().unwrap();
    let ok = run(args(dir.path(), &b, &["-c", "index longlist"]), None).await;
    assert_eq!(ok.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("NAME") && stdout.contains("a.txt"),
        "{stdout}"
    );

    let failed = run(
        args(
            dir.path(),
            &b,
            &[
                "--json",
                "-c",
                "hash verify missing",
                "-c",
                "index longlist",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(failed.status.code(), Some(1));
    let docs = json_lines(&failed);
    assert_eq!(docs[0]["error"], "no such file: 'missing'");
    assert!(docs[1].is_array(), "later commands still run");

    let usage = run(vec!["--no-such-option".into()], None).await;
    assert_eq!(usage.status.code(), Some(2));
    let bad_peer = run(
        vec![
            "-p".into(),
            "nowhere".into(),
            "-c".into(),
            "index longlist".into(),
        ],
        None,
    )
    .await;
    assert_eq!(bad_peer.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_peer.stderr).contains("bad peer address"));

    // A bad value is a usage error, as clap's exit status says for a bad option value.
    let bad_input = run(
        args(dir.path(), &b, &["-c", "index shortlist tomorrow today"]),
        None,
    )
    .await;
    assert_eq!(bad_input.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_input.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad timestamp 'tomorrow'"), "{stderr}");
}

/// A line that is not understood (an unknown command, wrong arguments) is a usage error,
/// exit 2, in `-c` and on stdin; a command that fails (here: a missing file) stays 1, and
/// the worst line decides.
#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2() {
    let b = TestBox::start().await;
    b.write("a.txt", b"a");
    let dir = tempfile::tempdir().unwrap();
    for line in ["frobnicate", "hash", "index longlist extra"] {
        let out = run(args(dir.path(), &b, &["-c", line]), None).await;
        assert_eq!(out.status.code(), Some(2), "-c '{line}'");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let unknown = run(args(dir.path(), &b, &["-c", "frobnicate"]), None).await;
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown command 'frobnicate'"));

    let failed = run(args(dir.path(), &b, &["-c", "hash verify missing"]), None).await;
    assert_eq!(failed.status.code(), Some(1));
    let both = run(
        args(
            dir.path(),
            &b,
            &["-c", "hash verify missing", "-c", "frobnicate"],
        ),
        None,
    )
    .await;
    assert_eq!(both.status.code(), Some(2));

    let piped = run(
        args(dir.path(), &b, &[]),
        Some(
            "index longlist
frobnicate
",
        ),
    )
    .await;
    assert_eq!(piped.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&piped.stdout).contains("a.txt"));
}

/// A read-only `-c` run in a folder with no box (no `-d`, so `./shared`) leaves nothing
/// behind: no `shared/`, no `.boxsync/`; a `-c` download still creates the folder it saves
/// into.
#[tokio::test(flavor = "multi_thread")]
async fn read_only_script_leaves_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let b = TestBox::start().await;
    // The box in ./shared has an identity (its peer must trust it): made beforehand, as
    // `boxsync id` would.
    let peer = b.cli_target(&cwd.path().join("shared"));
    let identity_only = files_under(cwd.path());
    b.write("a.txt", b"a");
    let run_in = |cwd: std::path::PathBuf, lines: &'static [&'static str]| {
        let peer = peer.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(binary());
            command.current_dir(cwd).args(["-p", &peer]);
            for line in lines {
                command.args(["-c", line]);
            }
            command.stdin(Stdio::null()).output().expect("run boxsync")
        })
    };
    let out = run_in(
        cwd.path().to_path_buf(),
        &["index longlist", "hash verify a.txt", "history"],
    )
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.txt"));
    assert_eq!(files_under(cwd.path()), identity_only, "left behind");

    let out = run_in(cwd.path().to_path_buf(), &["download tcp a.txt"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read(cwd.path().join("shared/a.txt")).unwrap(),
        b"a"
    );
}

/// A read-only `-c` with no box at all in `./shared` (no identity either) acts as the
/// user's own client identity, kept in `$XDG_STATE_HOME/boxsync/client`: it creates
/// nothing where it runs, a peer that does not trust it names that ID, and once trusted
/// the same ID is used again.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_without_a_box_uses_the_users_client_identity() {
    let cwd = tempfile::tempdir().unwrap();
    let state_home = tempfile::tempdir().unwrap();
    let b = TestBox::start().await;
    b.write("a.txt", b"a");
    let peer = b.target().to_string();
    let query = |cwd: std::path::PathBuf, state_home: std::path::PathBuf| {
        let peer = peer.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(binary())
                .current_dir(cwd)
                .env("XDG_STATE_HOME", state_home)
                .args(["-p", &peer, "-c", "index longlist"])
                .stdin(Stdio::null())
                .output()
                .expect("run boxsync")
        })
    };
    let refused = query(cwd.path().to_path_buf(), state_home.path().to_path_buf())
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let id_file = state_home.path().join("boxsync/client/box-id");
    let id = std::fs::read_to_string(&id_file).unwrap();
    let id = id.trim();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&format!("boxsync trust {id}")), "{stderr}");
    assert!(files_under(cwd.path()).is_empty(), "left behind");

    b.local.trust.allow_for_this_run(&id.parse().unwrap());
    let out = query(cwd.path().to_path_buf(), state_home.path().to_path_buf())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.txt"));
    assert!(files_under(cwd.path()).is_empty(), "left behind");
}

/// Without `-c` and with stdin not a terminal, commands are read one per line.
#[tokio::test(flavor = "multi_thread")]
async fn batch_mode_reads_stdin() {
    let b = TestBox::start().await;
    b.write("a.txt", b"a");
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        args(dir.path(), &b, &["--json"]),
        Some("index longlist\n\n# a comment\nhash verify a.txt\nFileDownload TCP a.txt\n"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = json_lines(&out);
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[2]["name"], "a.txt");
    assert!(dir.path().join("a.txt").exists());

    let out = run(args(dir.path(), &b, &[]), Some("hash verify nope\n")).await;
    assert_eq!(out.status.code(), Some(1));
}

/// An unreachable peer: one line on stderr, exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_peer_is_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        vec![
            "-d".into(),
            dir.path().display().to_string(),
            "-p".into(),
            format!(
                "{}@127.0.0.1:{port}",
                boxsync::identity::Identity::generate().unwrap().id()
            ),
            "-c".into(),
            "index longlist".into(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("error: peer 127.0.0.1:{port} is unreachable: connection refused")
    );
}

/// `serve` announces its address, serves, and exits cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, me) = TestBox::client();
    std::fs::write(dir.path().join("x.txt"), b"x").unwrap();
    let mut child = Command::new(binary())
        .args([
            "serve",
            "-d",
            &dir.path().display().to_string(),
            "-l",
            "127.0.0.1:0",
            "--trust",
            me.id.as_str(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    let id = line.split_whitespace().nth(2).unwrap();
    let target = boxsync::types::PeerAddress {
        id: boxsync::types::BoxId::parse(id).unwrap(),
        addr,
    };
    let peer = boxsync::peer::Peer::new(&target, me);
    let entries = peer
        .index(&boxsync::share::filter::IndexFilter::Longlist)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    // SAFETY-free: kill(2) with SIGTERM through the shell's kill command.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited =
        tokio::task::spawn_blocking(move || exit_within(&mut child, Duration::from_secs(5)))
            .await
            .unwrap();
    let status = exited.expect("serve did not exit within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Start-up errors are one line that says the operating system's words once; a port in
/// use suggests `-l 127.0.0.1:0`.
#[tokio::test(flavor = "multi_thread")]
async fn start_up_errors_say_it_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let serve = |dir: String, listen: String| {
        run(
            vec!["serve".into(), "-d".into(), dir, "-l".into(), listen],
            None,
        )
    };
    let out = serve(
        dir.path().join("box").display().to_string(),
        format!("127.0.0.1:{port}"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("-l 127.0.0.1:0"), "{stderr}");
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");

    // A file where the shared folder should be: "File exists (os error 17)", once.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = serve(file.display().to_string(), "127.0.0.1:0".into()).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
    drop(taken);
}

/// A peer address where something other than a boxsync box answers is reported as "not a
/// boxsync box": at once when it sends bytes that are not boxsync's TLS, within the
/// 3-second answer deadline when it accepts and says nothing (not the 5-second handshake
/// limit, nor any longer wait for a greeting).
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_is_no_box_is_named_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let id = boxsync::identity::Identity::generate()
        .unwrap()
        .id()
        .clone();
    for (garbage, within) in [
        (
            Some(&b"SSH-2.0-OpenSSH_9.6\r\n"[..]),
            Duration::from_secs(2),
        ),
        (None, Duration::from_millis(4500)),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if let Some(bytes) = garbage {
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, bytes).await;
                }
                held.push(socket);
            }
        });
        let started = std::time::Instant::now();
        let out = run(
            vec![
                "-d".into(),
                dir.path().display().to_string(),
                "-p".into(),
                format!("{id}@127.0.0.1:{port}"),
                "-c".into(),
                "index longlist".into(),
            ],
            None,
        )
        .await;
        let took = started.elapsed();
        server.abort();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("not a boxsync box"), "{stderr}");
        assert!(took < within, "{garbage:?}: {took:?}: {stderr}");
    }
}

/// `--help` documents every option, and `serve --help` too.
#[tokio::test(flavor = "multi_thread")]
async fn help_documents_options() {
    let out = run(vec!["--help".into()], None).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--dir", "--listen", "--peer", "-c", "--json", "serve", "demo",
    ] {
        assert!(text.contains(option), "--help lacks {option}");
    }
    let out = run(vec!["serve".into(), "--help".into()], None).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--listen"));
}

/// A reader that goes away (`| head -1`) ends the program quietly: no panic, exit 0, as
/// `ripgrep` does, rather than "failed printing to stdout: Broken pipe" and exit 101.
#[tokio::test(flavor = "multi_thread")]
async fn closed_output_ends_quietly() {
    let b = TestBox::start().await;
    // Far more than a pipe's 64 KiB buffer, so that the table is still being written
    // when the reader goes away.
    for i in 0..3000 {
        b.write(
            &format!("folder-{}/a-long-file-name-{i:05}.txt", i % 10),
            b"x",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let args = args(
        dir.path(),
        &b,
        &["-c", "index longlist", "-c", "index longlist"],
    );
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start boxsync");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("NAME"), "{first}");
        // The reader is dropped here: the pipe is closed.
        let status = exit_within(&mut child, Duration::from_secs(20));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    let status = status.expect("boxsync did not exit within 20 s of its reader leaving");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// `trash`, `trash list` and `trash restore` work on this box's own trash, from `-c`: the
/// versions are listed newest first, a restore puts the one asked for back (what was
/// there going to the trash), and a version that is not there is a one-line error that
/// changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn trash_lists_and_restores() {
    use boxsync::share::{RelPath, trash};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shared");
    let rel = RelPath::parse("docs/a.txt").unwrap();
    for content in ["first version", "second"] {
        write_file(&root, "docs/a.txt", content.as_bytes());
        trash::move_to_trash(&root, &rel).unwrap();
    }
    write_file(&root, "docs/a.txt", b"written since");
    let d = root.display().to_string();
    let out = run(
        vec![
            "-d".into(),
            d.clone(),
            "-c".into(),
            "trash".into(),
            "-c".into(),
            "trash list docs".into(),
            "-c".into(),
            "trash restore docs/a.txt --version 2".into(),
        ],
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("trash: 2 versions"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("docs/a.txt"))
        .collect();
    assert!(rows.len() >= 3, "{stdout}");
    assert!(
        rows[0].contains(" 1 ") && rows[0].contains("6 B"),
        "{stdout}"
    );
    assert!(
        rows[1].contains(" 2 ") && rows[1].contains("13 B"),
        "{stdout}"
    );
    assert!(
        stdout.contains("restored docs/a.txt (version 2"),
        "{stdout}"
    );
    assert_eq!(fs::read(root.join("docs/a.txt")).unwrap(), b"first version");
    let kept: Vec<u64> = trash::list(&root, Some(&rel))
        .unwrap()
        .iter()
        .map(|t| t.size)
        .collect();
    assert_eq!(kept, [13, 6], "what was there went to the trash");

    let out = run(
        vec![
            "-d".into(),
            d,
            "-c".into(),
            "trash restore docs/a.txt --version 7".into(),
        ],
        None,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no version 7 of 'docs/a.txt'"), "{stderr}");
    assert_eq!(fs::read(root.join("docs/a.txt")).unwrap(), b"first version");
}
