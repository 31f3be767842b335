//! Real `boxsync serve` processes killed with SIGKILL: what a box acknowledged or recorded
//! before the kill is there after its restart, and the boxes converge.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{Person, binary, box_id, eventually, files_under, write_file};

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
    // Its log goes beside the folder, for a failing run to show.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .expect("log file");
    let mut child = Command::new(binary())
        .env("RUST_LOG", "boxsync=debug")
        .args(["serve", "-d"])
        .arg(dir)
        .args(["-l", listen, "--sync", "1", "--no-discovery"])
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
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
    if !eventually(CONVERGE, || !a.join("f.txt").exists()).await {
        let kept = temp.keep();
        panic!(
            "the deletion made on b never reached a (folders and logs in {})",
            kept.display()
        );
    }
    let trash = files_under(&a.join(".boxsync/trash"));
    assert_eq!(trash.len(), 1, "a keeps the version it deleted: {trash:?}");
    assert!(!b.join("f.txt").exists(), "the file came back on b");
}

/// What a folder holds outside `.boxsync/`: relative path -> content (files only).
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(root)
        .into_iter()
        .filter(|p| !p.starts_with(".boxsync"))
        .filter_map(|p| {
            let content = fs::read(root.join(&p)).ok()?;
            Some((p.to_string_lossy().into_owned(), content))
        })
        .collect()
}

/// A box of the chaos run: its folder, the flags it starts with, where it listens, and
/// its process while it runs.
struct ChaosBox {
    dir: PathBuf,
    flags: Vec<String>,
    listen: String,
    process: Option<Process>,
}

impl ChaosBox {
    fn start(&mut self) {
        let process = serve(&self.dir, &self.listen, &self.flags);
        if self.listen.ends_with(":0") {
            self.listen = process.addr.clone();
        }
        self.process = Some(process);
    }
}

/// Issue 20's chaos test: random creates, edits, deletes, renames and conflicting edits
/// on a hub and its laptops (real processes), with repeated kill -9 of random boxes. After
/// the last restart every box holds the same folder within 30 s, and every content
/// written is in a folder or a trash, save those the test itself overwrote or deleted.
async fn chaos(seed: u64, laptops: usize) {
    let mut person = Person::new(seed);
    let temp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..=laptops)
        .map(|i| {
            let dir = temp.path().join(format!("box{i}"));
            fs::create_dir_all(&dir).unwrap();
            dir
        })
        .collect();
    let ids: Vec<String> = dirs.iter().map(|d| box_id(d)).collect();
    let mut hub = ChaosBox {
        dir: dirs[0].clone(),
        flags: ids[1..]
            .iter()
            .flat_map(|id| ["--trust".to_string(), id.clone()])
            .collect(),
        listen: "127.0.0.1:0".to_string(),
        process: None,
    };
    hub.start();
    let mut boxes = vec![hub];
    for dir in &dirs[1..] {
        let mut laptop = ChaosBox {
            dir: dir.clone(),
            flags: vec!["-p".to_string(), format!("{}@{}", ids[0], boxes[0].listen)],
            listen: "none".to_string(),
            process: None,
        };
        laptop.start();
        boxes.push(laptop);
    }
    for serial in 0..160u64 {
        if person.next(10) == 9 {
            // kill -9 of a random box, back after a moment (or at once if down).
            let k = person.next(boxes.len() as u64) as usize;
            match boxes[k].process.take() {
                Some(process) => process.kill_9(),
                None => boxes[k].start(),
            }
        } else {
            let i = person.next(boxes.len() as u64) as usize;
            person.change(&boxes[i].dir, i);
        }
        tokio::time::sleep(Duration::from_millis(person.next(120))).await;
        if serial % 20 == 19 {
            for b in boxes.iter_mut().filter(|b| b.process.is_none()) {
                b.start();
            }
        }
    }
    for b in boxes.iter_mut().filter(|b| b.process.is_none()) {
        b.start();
    }
    let same = eventually(CONVERGE, || {
        let first = files(&boxes[0].dir);
        boxes[1..].iter().all(|b| files(&b.dir) == first)
    })
    .await;
    if !same {
        let first = files(&boxes[0].dir);
        let differ: Vec<String> = boxes[1..]
            .iter()
            .flat_map(|b| {
                let other = files(&b.dir);
                let paths: BTreeSet<&String> = first.keys().chain(other.keys()).collect();
                paths
                    .into_iter()
                    .filter(|p| first.get(*p) != other.get(*p))
                    .map(|p| {
                        let show = |v: Option<&Vec<u8>>| {
                            v.map(|c| String::from_utf8_lossy(c).into_owned())
                        };
                        format!("{p}: {:?} / {:?}", show(first.get(p)), show(other.get(p)))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let kept = temp.keep();
        panic!(
            "seed {seed}: the boxes differ 30 s after the last restart (folders and logs in {}): {differ:?}",
            kept.display()
        );
    }
    let dirs: Vec<PathBuf> = boxes.iter().map(|b| b.dir.clone()).collect();
    let lost = person.lost(&dirs);
    assert!(lost.is_empty(), "seed {seed}: contents lost: {lost:?}");
}

/// Two boxes (a hub and a laptop) under chaos.
#[tokio::test(flavor = "multi_thread")]
async fn two_boxes_converge_and_lose_nothing_under_kill_9() {
    chaos(0x5eed_0001, 1).await;
}

/// Three boxes (a hub and two laptops) under chaos.
#[tokio::test(flavor = "multi_thread")]
async fn three_boxes_converge_and_lose_nothing_under_kill_9() {
    chaos(0x5eed_0002, 2).await;
}
