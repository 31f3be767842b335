//! Real `boxsync serve` processes killed with SIGKILL: what a box acknowledged or recorded
//! before the kill is there after its restart, and the boxes converge.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{binary, box_id, eventually, files_under, write_file};

/// How long boxes get to converge after a restart.
const CONVERGE: Duration = Duration::from_secs(30);

/// A `boxsync serve` process, killed with SIGKILL when dropped.
struct Process {
    child: Child,
    /// Where it listens.
    addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Kills it with SIGKILL, at once, and reaps it.
    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `boxsync serve -d DIR -l LISTEN --sync 1 --no-discovery` with `rest`, and waits
/// for its `serving` line, which names the address.
fn serve(dir: &Path, listen: &str, rest: &[String]) -> Process {
    let mut child = Command::new(binary())
        .args(["serve", "-d"])
        .arg(dir)
        .args(["-l", listen, "--sync", "1", "--no-discovery"])
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start boxsync serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("serving line");
    let addr = line
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("serving"), "no serving line: {line:?}");
    Process { child, addr }
}

/// Two folders in one temporary folder, with their IDs.
fn two_boxes(temp: &Path) -> (PathBuf, String, PathBuf, String) {
    let (a, b) = (temp.join("a"), temp.join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let (ida, idb) = (box_id(&a), box_id(&b));
    (a, ida, b, idb)
}

/// Issue 20's divergence: a file reaches B, A is killed at once (B's `installed` notice
/// acknowledged but not yet recorded by A's sync), B deletes the file, A restarts. The
/// deletion must reach A: before, A kept the file for good, each box waiting for the other.
#[tokio::test(flavor = "multi_thread")]
async fn a_box_killed_right_after_a_file_arrived_takes_the_later_deletion() {
    let temp = tempfile::tempdir().unwrap();
    let (a, ida, b, idb) = two_boxes(temp.path());
    let trust_b = vec!["--trust".to_string(), idb.clone()];
    let box_a = serve(&a, "127.0.0.1:0", &trust_b);
    let addr_a = box_a.addr.clone();
    let _box_b = serve(
        &b,
        "127.0.0.1:0",
        &["-p".to_string(), format!("{ida}@{addr_a}")],
    );
    write_file(&a, "f.txt", b"made on a");
    assert!(
        eventually(CONVERGE, || fs::read(b.join("f.txt")).ok().as_deref()
            == Some(&b"made on a"[..]))
        .await,
        "the file never reached b"
    );
    box_a.kill_9();
    fs::remove_file(b.join("f.txt")).unwrap();
    let _box_a = serve(&a, &addr_a, &trust_b);
    assert!(
        eventually(CONVERGE, || !a.join("f.txt").exists()).await,
        "the deletion made on b never reached a"
    );
    let trash = files_under(&a.join(".boxsync/trash"));
    assert_eq!(trash.len(), 1, "a keeps the version it deleted: {trash:?}");
    assert!(!b.join("f.txt").exists(), "the file came back on b");
}
