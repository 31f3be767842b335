//! A hostile peer's text never reaches the terminal raw: file names holding escape
//! sequences (title, screen clear, OSC 52 clipboard writes, carriage returns, new lines,
//! 8-bit CSI, DEL, bidi overrides) and hostile error messages come out escaped from every
//! `index` form, `hash`, `download`, `history` and the errors, through `-c` and the shell,
//! and `--json` gives them back unchanged.

use std::process::{Command, Output, Stdio};

use boxsync::protocol::{ErrorKind, Response};
use boxsync::requests::Request;
use serde_json::Value;

use crate::util::{TestBox, as_pty_bytes, binary, scripted_peer};

/// The hostile names, raw.
const TITLE: &str = "title\x1b]0;pwned\x07.txt";
const CLEAR: &str = "clear\x1b[2J\x1b[H.txt";
const CLIPBOARD: &str = "clip\x1b]52;c;ZXZpbA==\x07.txt";
const CARRIAGE: &str = "progress\r100% done.txt";
const NEWLINE: &str = "two\nlines.txt";
const BIDI: &str = "invoice\u{202e}fdp.exe";
const C1: &str = "csi\u{9b}31m.txt";
const DEL_BS_TAB: &str = "del\x7fbs\x08tab\t.txt";
const IN_FOLDER: &str = "dir\x1b[31m/inner.txt";

/// Each hostile name and how it must be shown.
const NAMES: [(&str, &str); 9] = [
    (TITLE, r"title\x1b]0;pwned\x07.txt"),
    (CLEAR, r"clear\x1b[2J\x1b[H.txt"),
    (CLIPBOARD, r"clip\x1b]52;c;ZXZpbA==\x07.txt"),
    (CARRIAGE, r"progress\r100% done.txt"),
    (NEWLINE, r"two\nlines.txt"),
    (BIDI, r"invoice\u{202e}fdp.exe"),
    (C1, r"csi\u{9b}31m.txt"),
    (DEL_BS_TAB, r"del\x7fbs\x08tab\t.txt"),
    (IN_FOLDER, r"dir\x1b[31m/inner.txt"),
];

/// A peer sharing a plain file and every hostile name.
async fn hostile_box() -> TestBox {
    let b = TestBox::start().await;
    b.write("plain.txt", b"plain\n");
    for (name, _) in NAMES {
        b.write(name, name.as_bytes());
    }
    b
}

/// Panics unless `bytes` are UTF-8 text holding nothing a terminal acts on or reorders: no
/// C0 control but the line feed, no DEL, no C1 control, no bidi control, no line separator.
fn assert_inert(what: &str, bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    let bad = text.chars().find(|&c| {
        (c.is_control() && c != '\n')
            || matches!(
                c,
                '\u{061c}'
                    | '\u{200e}'
                    | '\u{200f}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{2028}'
                    | '\u{2029}'
            )
    });
    assert!(bad.is_none(), "{what}: raw {bad:?} in {text:?}");
}

/// Runs the binary with `args` against the peer at `peer`, in the box folder `dir`.
async fn run(dir: &std::path::Path, peer: String, args: Vec<String>) -> Output {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .arg("-d")
            .arg(&dir)
            .args(["-p", &peer])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run boxsync")
    })
    .await
    .expect("the binary's thread")
}

/// `-c` followed by each of `commands`.
fn commands(commands: &[String]) -> Vec<String> {
    commands
        .iter()
        .flat_map(|c| ["-c".to_string(), c.clone()])
        .collect()
}

/// Every `index` form, `hash checkall`, `hash verify`, `download` and `history`, and the
/// peer's error about a hostile name, print the names escaped and no raw control byte, and
/// the rows of a listing stay aligned.
#[tokio::test(flavor = "multi_thread")]
async fn every_command_shows_hostile_names_escaped() {
    let b = hostile_box().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = "missing\x1b]0;gotcha\x07\u{202e}.txt";
    let lines = [
        "index longlist".to_string(),
        "index regex .".to_string(),
        "index glob '*'".to_string(),
        "index shortlist 2000-01-01 2100-01-01".to_string(),
        "hash checkall".to_string(),
        format!("hash verify '{TITLE}'"),
        format!("hash verify '{NEWLINE}'"),
        format!("download tcp '{CLEAR}'"),
        format!("download tcp '{BIDI}'"),
        format!("hash verify '{missing}'"),
        "history".to_string(),
    ];
    let out = run(dir.path(), b.cli_target(dir.path()), commands(&lines)).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_inert("stdout", &out.stdout);
    assert_inert("stderr", &out.stderr);
    // The missing file fails; everything else succeeds.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for (raw, shown) in NAMES {
        // Four index forms and checkall.
        let times = stdout.matches(shown).count();
        assert!(
            times >= 5,
            "{raw:?} shown {times} times as {shown}:\n{stdout}"
        );
    }
    assert!(stdout.contains(r"dir\x1b[31m/"), "{stdout}");
    assert!(
        stdout.contains(r"downloaded clear\x1b[2J\x1b[H.txt over TCP"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r"downloaded invoice\u{202e}fdp.exe over TCP"),
        "{stdout}"
    );
    // The peer's error quotes the name: one line, escaped.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(r"missing\x1b]0;gotcha\x07\u{202e}.txt"),
        "{stderr}"
    );
    // The request log shows the requests and the peer's error escaped.
    let history = stdout
        .rsplit_once("TIME")
        .map(|(_, h)| h)
        .unwrap_or_default();
    assert!(
        history.contains(r"hash verify title\x1b]0;pwned\x07.txt"),
        "{history}"
    );
    assert!(history.contains(r"hash verify two\nlines.txt"), "{history}");
    assert!(
        history.contains(r"download tcp clear\x1b[2J\x1b[H.txt"),
        "{history}"
    );
    assert!(
        history.contains(r"missing\x1b]0;gotcha\x07\u{202e}.txt"),
        "{history}"
    );
    // The longlist's rows line up: each size ends where the SIZE header does (escaped
    // names are ASCII: a byte is a column).
    let mut listing = stdout.lines().skip_while(|l| !l.starts_with("NAME"));
    let header = listing.next().expect("a listing");
    let rows: Vec<&str> = listing.take_while(|l| !l.starts_with("NAME")).collect();
    assert_eq!(rows.len(), NAMES.len() + 2, "{stdout}");
    let size_end = header.find("SIZE").map(|i| i + "SIZE".len());
    for row in &rows {
        let end = row.find(" B ").or_else(|| row.find(" - ")).map(|i| i + 2);
        assert_eq!(end, size_end, "misaligned {row:?} under {header:?}");
    }
    // The downloads landed under their real names.
    assert_eq!(
        std::fs::read(dir.path().join(CLEAR)).unwrap(),
        CLEAR.as_bytes()
    );
}

/// `--json` output holds no raw control character either, and gives every hostile name
/// back exactly.
#[tokio::test(flavor = "multi_thread")]
async fn json_keeps_hostile_names_exact_and_inert() {
    let b = hostile_box().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        "index longlist".to_string(),
        "hash checkall".to_string(),
        format!("hash verify '{C1}'"),
        "history".to_string(),
    ];
    let mut args = vec!["--json".to_string()];
    args.extend(commands(&lines));
    let out = run(dir.path(), b.cli_target(dir.path()), args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_inert("stdout", &out.stdout);
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    assert_eq!(docs.len(), 4);
    let names = |doc: &Value| -> Vec<String> {
        doc.as_array()
            .expect("an array")
            .iter()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect()
    };
    for (raw, _) in NAMES {
        assert!(
            names(&docs[0]).iter().any(|n| n == raw),
            "{raw:?} not listed"
        );
        assert!(
            names(&docs[1]).iter().any(|n| n == raw),
            "{raw:?} not hashed"
        );
    }
    assert_eq!(docs[2]["name"], C1);
    let requests: Vec<&str> = docs[3]
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|r| r["request"].as_str())
        .collect();
    assert!(
        requests.contains(&format!("hash verify {C1}").as_str()),
        "{requests:?}"
    );
}

/// A peer whose error message carries escape sequences (a clipboard write, a screen clear,
/// a forged second line) is shown escaped on one line; `--json` gives the message back.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_error_message_is_escaped() {
    const MESSAGE: &str = "denied\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\r\nerror: forged\u{9b}1A";
    let answer = |connection: boxsync::protocol::Connection<boxsync::protocol::Link>| async move {
        let mut connection = connection;
        let _: Request = connection.expect_message().await.unwrap();
        let error = Response::Error {
            kind: ErrorKind::Refused,
            message: MESSAGE.to_string(),
        };
        connection.write_message(&error).await.unwrap();
    };
    let (addr, server) = scripted_peer(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        addr.to_string(),
        commands(&["hash verify a.txt".to_string()]),
    )
    .await;
    let _ = server.await;
    assert_eq!(out.status.code(), Some(1));
    assert_inert("stderr", &out.stderr);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(r"denied\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\r\nerror: forged\u{9b}1A"),
        "{stderr}"
    );

    let (addr, server) = scripted_peer(answer).await;
    let mut args = vec!["--json".to_string()];
    args.extend(commands(&["hash verify a.txt".to_string()]));
    let out = run(dir.path(), addr.to_string(), args).await;
    let _ = server.await;
    assert_inert("stdout", &out.stdout);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("a JSON document");
    assert_eq!(doc["error"], MESSAGE);
}

/// The CLI's own errors escape what they quote (here a hostile peer address).
#[tokio::test(flavor = "multi_thread")]
async fn cli_errors_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        "\x1b]0;pwned\x07\x1b[2J:7002".to_string(),
        commands(&["index longlist".to_string()]),
    )
    .await;
    assert!(!out.status.success());
    assert_inert("stderr", &out.stderr);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r"\x1b]0;pwned\x07\x1b[2J"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// At the interactive prompt, `index longlist` and `history` show the names escaped: none
/// of the hostile sequences reaches the pseudo-terminal.
#[tokio::test(flavor = "multi_thread")]
async fn the_shell_shows_hostile_names_escaped() {
    let b = hostile_box().await;
    let dir = tempfile::tempdir().unwrap();
    // A request naming a hostile file, made by a script, for the shell's `history` (a
    // person cannot type ESC at the prompt: the line editor reads it as a key).
    let out = run(
        dir.path(),
        b.cli_target(dir.path()),
        commands(&[format!("download tcp '{CLIPBOARD}'")]),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer = b.cli_target(dir.path());
    let dir_path = dir.path().to_path_buf();
    let printed = tokio::task::spawn_blocking(move || {
        let run = || -> Result<String, rexpect::error::Error> {
            let mut command = Command::new(binary());
            command.arg("-d").arg(&dir_path);
            command.args(["-l", "127.0.0.1:0", "-p", &peer, "--sync", "0"]);
            command.env("NO_COLOR", "1");
            command.env("TERM", "xterm");
            command.env_remove("RUST_LOG");
            let mut sh = rexpect::session::spawn_command(command, Some(30_000))?;
            sh.exp_string("]> ")?;
            sh.send_line("index longlist")?;
            // rexpect hands back what came before the text it waited for.
            let mut printed = String::new();
            for (wanted, next) in [
                (r"title\x1b]0;pwned\x07.txt", None),
                ("]> ", Some("history")),
                (r"download tcp clip\x1b]52;", None),
                ("]> ", None),
            ] {
                let wanted = as_pty_bytes(wanted);
                printed.push_str(&sh.exp_string(&wanted)?);
                printed.push_str(&wanted);
                if let Some(line) = next {
                    sh.send_line(line)?;
                }
            }
            sh.send_line("quit")?;
            printed.push_str(&sh.exp_eof()?);
            Ok(printed)
        };
        run()
    })
    .await
    .expect("pty thread")
    .expect("shell session");
    for raw in [
        "\x1b]0;",
        "\x1b]52;",
        "\x1b[2J",
        "\x1b[31m",
        "pwned\x07",
        "progress\r",
        "two\nlines",
        "del\x7f",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([as_pty_bytes(BIDI), as_pty_bytes(C1)])
    {
        assert!(
            !printed.contains(&raw),
            "raw {raw:?} on the terminal:\n{printed:?}"
        );
    }
    for (_, shown) in NAMES {
        assert!(
            printed.contains(&as_pty_bytes(shown)),
            "{shown} not shown:\n{printed:?}"
        );
    }
}

/// With auto-sync on, the lines announced above the prompt as hostile names arrive, and
/// `sync status`, show them escaped.
#[tokio::test(flavor = "multi_thread")]
async fn sync_lines_show_hostile_names_escaped() {
    let b = TestBox::start().await;
    b.write(CLEAR, b"clear");
    b.write(BIDI, b"bidi");
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let dir_path = dir.path().to_path_buf();
    let printed = tokio::task::spawn_blocking(move || {
        let run = || -> Result<String, rexpect::error::Error> {
            let mut command = Command::new(binary());
            command.arg("-d").arg(&dir_path);
            command.args(["-l", "127.0.0.1:0", "-p", &peer]);
            command.env("NO_COLOR", "1");
            command.env("TERM", "xterm");
            command.env_remove("RUST_LOG");
            let mut sh = rexpect::session::spawn_command(command, Some(30_000))?;
            let mut printed = String::new();
            for wanted in [
                r"received clear\x1b[2J\x1b[H.txt",
                r"received invoice\u{202e}fdp.exe",
            ] {
                let wanted = as_pty_bytes(wanted);
                printed.push_str(&sh.exp_string(&wanted)?);
                printed.push_str(&wanted);
            }
            sh.send_line("sync status")?;
            printed.push_str(&sh.exp_string("auto-sync on")?);
            printed.push_str(&sh.exp_string("]> ")?);
            sh.send_line("quit")?;
            printed.push_str(&sh.exp_eof()?);
            Ok(printed)
        };
        run()
    })
    .await
    .expect("pty thread")
    .expect("shell session");
    for raw in [
        "\x1b[2J".to_string(),
        "\x1b[H.txt".to_string(),
        as_pty_bytes(BIDI),
    ] {
        assert!(
            !printed.contains(&raw),
            "raw {raw:?} on the terminal:\n{printed:?}"
        );
    }
    assert_eq!(std::fs::read(dir.path().join(CLEAR)).unwrap(), b"clear");
}
