//! The shared folder's safety (issue 22): one box per folder, a state folder deleted under a
//! running box, a full disk, a subfolder on another file system. Real boxes; the file
//! system cases mount a tmpfs and are skipped, with a message, when that is not possible.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use boxsync::identity::Identity;
use boxsync::local::LocalBox;

use crate::util::{TestBox, binary, box_id, rel};

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

/// Item 12: `.boxsync/` deleted under a running box. The next download recreates what is
/// missing (the folder, owner-only, `tmp/`, the lock, the index database, the key and the
/// trust file, from memory) and works without a restart; a second box is still refused;
/// after a restart the box has the same ID and trusts the same boxes.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_folder_deleted_under_a_running_box_is_recreated() {
    use std::os::unix::fs::PermissionsExt;
    let b = TestBox::start().await;
    b.write("one.txt", b"first");
    b.write("two.txt", b"second");
    let temp = tempfile::tempdir().unwrap();
    let shared = temp.path().join("shared");
    let me = LocalBox::open(&shared).unwrap();
    let friend = Identity::generate().unwrap();
    me.trust.add(friend.id(), Some("friend")).unwrap();
    let peer = b.peer_for(&me);
    peer.download_tcp(&rel("one.txt"), &mut |_, _| {})
        .await
        .unwrap();
    let state = me.share.state_dir();
    fs::remove_dir_all(&state).unwrap();
    assert!(
        me.trust.is_trusted(friend.id()),
        "trust given for good stays"
    );

    let downloaded = peer.download_tcp(&rel("two.txt"), &mut |_, _| {}).await;
    downloaded.expect("a download after the state folder was deleted");
    assert_eq!(fs::read(shared.join("two.txt")).unwrap(), b"second");
    for kept in [
        "tmp",
        "box.lock",
        "index.db",
        "identity.key",
        "box-id",
        "trusted.json",
    ] {
        assert!(state.join(kept).exists(), "{kept} was not recreated");
    }
    let mode = fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let trusted = fs::read_to_string(state.join("trusted.json")).unwrap();
    assert!(trusted.contains(friend.id().as_str()), "{trusted}");
    let second = run(&["serve", "-l", "127.0.0.1:0", "--no-discovery"], &shared);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(String::from_utf8_lossy(&second.stderr).contains("another box is running on"));

    let id = me.id.clone();
    drop((peer, me));
    assert_eq!(
        box_id(&shared),
        id.as_str(),
        "the same box id after a restart"
    );
    let again = LocalBox::open(&shared).unwrap();
    assert_eq!(again.id, id);
    assert!(again.trust.is_trusted(friend.id()));
}
