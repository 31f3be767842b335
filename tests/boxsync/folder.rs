//! The shared folder's safety (issue 22): one box per folder, a state folder deleted under a
//! running box, a full disk, a subfolder on another file system. Real boxes; the file
//! system cases mount a tmpfs and are skipped, with a message, when that is not possible.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::util::{binary, box_id};

/// A `boxsync serve` process, killed with SIGKILL when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `boxsync serve -d DIR -l 127.0.0.1:0 --no-discovery` with `rest` and waits for
/// its serving line; its log goes to `DIR.log`.
fn serve(dir: &Path, rest: &[&str]) -> Process {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .expect("log file");
    let mut child = Command::new(binary())
        .args(["serve", "-d"])
        .arg(dir)
        .args(["-l", "127.0.0.1:0", "--no-discovery"])
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start boxsync serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("serving line");
    assert!(line.contains("serving"), "no serving line: {line:?}");
    Process { child }
}

/// Runs the binary with `args` to its end.
fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(binary())
        .args(args)
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run boxsync")
}

/// Item 11: while a box serves a folder, a second `serve`, and a script that would write
/// there, are refused with one line naming the folder and the running box's pid, and
/// change nothing; what only reads (`boxsync id`, a script of queries) still runs. Once the
/// first box is killed with SIGKILL, the folder can be served again at once.
#[test]
fn a_second_box_on_the_same_folder_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("shared");
    fs::create_dir_all(&dir).unwrap();
    let id = box_id(&dir);
    let first = serve(&dir, &[]);
    let pid = first.child.id();
    let canonical: PathBuf = dir.canonicalize().unwrap();

    let second = run(&["serve", "-l", "127.0.0.1:0", "--no-discovery"], &dir);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another box is running on {} (pid {pid})",
            canonical.display()
        )),
        "{stderr}"
    );
    assert!(second.stdout.is_empty(), "the second box served");

    let peer = format!("{id}@127.0.0.1:9");
    let writes = run(&["-p", &peer, "-c", "download tcp f.txt"], &dir);
    let stderr = String::from_utf8_lossy(&writes.stderr);
    assert_eq!(writes.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another box is running on"), "{stderr}");

    let reads = run(&["-c", "jobs"], &dir);
    assert!(reads.status.success(), "{reads:?}");
    assert_eq!(box_id(&dir), id, "boxsync id runs beside the box");

    drop(first);
    let _again = serve(&dir, &[]);
    assert_eq!(box_id(&dir), id);
}
