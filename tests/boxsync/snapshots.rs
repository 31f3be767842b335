//! Output pinned by snapshots (insta, under `tests/boxsync/snapshots/`): the shell's help,
//! tables fitted to fixed terminal widths, and the command line's `--help`. A change shows
//! up as a readable diff; accept it with `cargo insta review` (or `INSTA_UPDATE=always`).

use std::process::Command;

use boxsync::share::{Entry, RelPath};
use boxsync::shell::jobs::JobStatus;
use boxsync::shell::render::{self, Format, Layout};
use boxsync::shell::{Outcome, help};
use boxsync::time::Timestamp;

use crate::util::binary;

/// Local times depend on the machine's time zone: they are replaced by a fixed-width mark.
fn redact_times() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(
        r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}",
        "YYYY-MM-DD hh:mm:ss",
    );
    settings
}

fn plain(width: usize) -> Layout {
    Layout {
        width: Some(width),
        colour: false,
    }
}

fn entry(name: &str, size: u64, file_type: &str) -> Entry {
    Entry {
        name: RelPath::parse(name).expect("a valid name"),
        size,
        mtime: Timestamp::from_system(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_763_719_200),
        ),
        file_type: file_type.to_string().into(),
        mode: 0o644,
    }
}

/// A listing with long, nested and wide names.
fn listing() -> Outcome {
    Outcome::Entries(vec![
        entry("music", 0, "directory"),
        entry(
            "music/live/2024/berlin/the longest song title ever recorded.mp3",
            7_340_032,
            "audio/mpeg",
        ),
        entry("music/song one.mp3", 307_200, "audio/mpeg"),
        entry("notes/日本語のメモ.txt", 1_234, "text/plain"),
        entry(
            "reports/q3.docx",
            52_000,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
    ])
}

/// `help` lists every command on one line each, with the keys worth knowing.
#[test]
fn help_overview() {
    insta::assert_snapshot!("help", help::text(None));
}

/// `help <command>` explains each command with examples.
#[test]
fn help_topics() {
    for topic in [
        "index", "hash", "download", "jobs", "kill", "wait", "bg", "history", "peer", "peers",
        "sync", "help", "quit", "get", "ls", "cd", "pwd",
    ] {
        insta::assert_snapshot!(format!("help_{topic}"), help::text(Some(topic)));
    }
}

/// `index longlist` at 60, 80 and 120 columns: names lose their middle, the type its end,
/// sizes and times never shrink; without a width nothing is shortened.
#[test]
fn listing_fits_the_width() {
    redact_times().bind(|| {
        for width in [60, 80, 120] {
            let text = render::outcome_with(&listing(), Format::Human, plain(width));
            insta::assert_snapshot!(format!("longlist_{width}_columns"), text);
        }
        let text = render::outcome_with(&listing(), Format::Human, Layout::default());
        insta::assert_snapshot!("longlist_unlimited", text);
    });
}

/// `jobs` at 80 columns: progress, rate, time left, the command shortened in its middle.
#[test]
fn jobs_table() {
    let jobs = Outcome::Jobs(vec![
        JobStatus {
            id: 1,
            command: "download udp 'music/live/2024/berlin/the longest song title ever recorded.mp3' --max-rate 8M".into(),
            done: 3 << 20,
            total: 7 << 20,
            seconds: 3.0,
        },
        JobStatus {
            id: 2,
            command: "download tcp notes.txt".into(),
            done: 0,
            total: 0,
            seconds: 0.2,
        },
    ]);
    insta::assert_snapshot!(
        "jobs_80_columns",
        render::outcome_with(&jobs, Format::Human, plain(80))
    );
}

/// `hash verify` at 80 columns: the hashes cannot fit with the name, so the line is cut at
/// the width with `…` rather than wrapped (nothing both wraps and is shortened).
#[test]
fn hash_table_is_cut_not_wrapped() {
    let hash = Outcome::Hash(boxsync::share::FileHash {
        name: RelPath::parse("music/live/2024/berlin/the longest song title ever recorded.mp3")
            .expect("a valid name"),
        size: 7_340_032,
        blake3: "b".repeat(64).into(),
        md5: Some("0123456789abcdef0123456789abcdef".into()),
        sha256: Some("89abcdef".repeat(8).into()),
        mtime: Timestamp::from_system(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_763_719_200),
        ),
    });
    redact_times().bind(|| {
        let text = render::outcome_with(&hash, Format::Human, plain(80));
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
        insta::assert_snapshot!("hash_80_columns", text);
    });
}

/// The binary's `--help` documents every option with examples.
#[test]
fn cli_help() {
    let output = Command::new(binary())
        .arg("--help")
        .output()
        .expect("run boxsync");
    assert!(output.status.success());
    insta::assert_snapshot!("cli_help", String::from_utf8_lossy(&output.stdout));
}

/// `boxsync serve --help` documents the options that apply to a server, with examples.
#[test]
fn cli_serve_help() {
    let output = Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .expect("run boxsync");
    assert!(output.status.success());
    insta::assert_snapshot!("cli_serve_help", String::from_utf8_lossy(&output.stdout));
}
