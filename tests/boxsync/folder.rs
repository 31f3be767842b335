//! The shared folder's safety (issue 22): one box per folder, a state folder deleted under a
//! running box, a full disk, a subfolder on another file system. Real boxes; the file
//! system cases mount a tmpfs and are skipped, with a message, when that is not possible.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use boxsync::identity::Identity;
use boxsync::local::LocalBox;
use boxsync::share::Expect;
use boxsync::share::path::STAGING_PREFIX;
use boxsync::transfer::{Landing, Wanted};

use std::time::Duration;

use boxsync::types::Transport;

use crate::util::{
    TestBox, binary, box_id, bytes, eventually, files_under, rel, start_sync, write_file,
};

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

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs {
    /// Where it is mounted.
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`) at `at`, created if needed; `None`, with
    /// the reason printed, where this test cannot mount one (not root, or refused).
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs {
                at: at.to_path_buf(),
            }),
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr);
                eprintln!("skipped: cannot mount a tmpfs: {}", why.trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Names under `dir` that a box stages files under when copying them across file systems.
fn staged_names(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(STAGING_PREFIX))
        .collect()
}

/// Item 10: a subfolder that is another file system (a tmpfs mounted inside the shared
/// folder) receives files: a single download over TCP and over UDP (replacing a file, whose
/// old version goes to the trash), a batch of small files, and a deletion to the trash; no
/// hidden staging name is left or ever listed, and one a crash left is removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_subfolder_on_another_file_system_receives_files() {
    let temp = tempfile::tempdir().unwrap();
    let shared = temp.path().join("shared");
    let Some(_mount) = Tmpfs::mount(&shared.join("mnt"), "64m") else {
        return;
    };
    let me = LocalBox::open(&shared).unwrap();
    let b = TestBox::start().await;
    let big = bytes(3 * 1024 * 1024, 1);
    b.write("mnt/big.bin", &big);
    b.write("mnt/old.txt", b"new version");
    for name in ["a", "b", "c"] {
        b.write(&format!("mnt/small/{name}.txt"), name.as_bytes());
    }
    write_file(me.share.root(), "mnt/old.txt", b"old version");
    let peer = b.peer_for(&me);

    peer.download_tcp(&rel("mnt/big.bin"), &mut |_, _| {})
        .await
        .expect("a download into the mount point");
    let replaced = peer
        .download_udp(&rel("mnt/old.txt"), None, &mut |_, _| {})
        .await
        .expect("a download replacing a file on the mount point");
    let wanted: Vec<Wanted> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let name = rel(&format!("mnt/small/{name}.txt"));
            Wanted {
                landing: Landing::same_name(&name),
                name,
            }
        })
        .collect();
    for result in peer.download_batch(&wanted).await.unwrap() {
        result.expect("a batch into the mount point");
    }

    assert_eq!(fs::read(shared.join("mnt/big.bin")).unwrap(), big);
    assert_eq!(
        fs::read(shared.join("mnt/old.txt")).unwrap(),
        b"new version"
    );
    assert_eq!(fs::read(shared.join("mnt/small/b.txt")).unwrap(), b"b");
    let kept = replaced.replaced.expect("the old version kept");
    assert_eq!(fs::read(kept).unwrap(), b"old version");
    me.share
        .remove_file(&rel("mnt/small/a.txt"), &Expect::Anything)
        .await
        .expect("a deletion on the mount point");
    assert!(!shared.join("mnt/small/a.txt").exists());
    let trash = files_under(&me.share.state_dir().join("trash"));
    assert!(
        trash.iter().any(|p| p.ends_with("mnt/small/a.txt")),
        "{trash:?}"
    );
    assert_eq!(staged_names(&shared), Vec::<PathBuf>::new());

    // Left by a crash (no process has that id): never listed, removed at the next walk.
    let left = shared.join(format!("mnt/{STAGING_PREFIX}999999999-0"));
    fs::write(&left, b"half").unwrap();
    let listed = me.share.index().await.unwrap();
    assert!(
        listed
            .iter()
            .all(|e| !e.name.as_str().contains(STAGING_PREFIX)),
        "{listed:?}"
    );
    assert!(!left.exists(), "a crash's staged file was not removed");
}

/// Item 9: a file bigger than the free space is refused before any byte of it is fetched,
/// with an error naming the person's file, the space needed and the space free; sync then
/// waits (backs off) instead of fetching again each round, and takes the file as soon as
/// enough space is freed, without waiting out its backoff (30 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_does_not_fit_waits_for_space() {
    let temp = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(&temp.path().join("shared"), "16m") else {
        return;
    };
    let me = TestBox::start_in(temp).await;
    let b = TestBox::start().await;
    let big = bytes(8 * 1024 * 1024, 9);
    b.write("big.bin", &big);
    b.local.trust.allow_for_this_run(&me.local.id);
    let ballast = me.local.share.state_dir().join("ballast");
    fs::write(&ballast, vec![0u8; 10 * 1024 * 1024]).unwrap();
    let refused = b
        .peer_for(&me.local)
        .download_tcp(&rel("big.bin"), &mut |_, _| {})
        .await
        .expect_err("a download that does not fit")
        .to_string();
    assert!(
        refused.contains("'big.bin' does not fit: it needs ")
            && refused.contains(" bytes are free here"),
        "{refused}"
    );
    assert!(!refused.contains(".part"), "{refused}");
    let (sync, _stop) = start_sync(&me, &[b.target()], Transport::Tcp);

    let mut errors = Vec::new();
    let refused = eventually(Duration::from_secs(20), || {
        let status = sync.status();
        errors = status
            .peers
            .first()
            .map(|p| p.errors.clone())
            .unwrap_or_default();
        errors.iter().any(|e| e.contains("waiting for space"))
    })
    .await;
    assert!(refused, "{errors:?}");
    let waiting = errors.iter().find(|e| e.contains("waiting")).unwrap();
    assert!(waiting.starts_with("big.bin: "), "{waiting}");
    assert!(!me.root().join("big.bin").exists());
    let parts = files_under(&me.local.share.tmp_dir());
    assert!(parts.is_empty(), "bytes were fetched: {parts:?}");

    fs::remove_file(&ballast).unwrap();
    let arrived = eventually(Duration::from_secs(20), || {
        fs::read(me.root().join("big.bin")).ok().as_deref() == Some(&big[..])
    })
    .await;
    assert!(arrived, "the file never came once there was room");
}

/// Item 22: a read-only folder (a tmpfs remounted read-only) is served as it is, with its
/// state kept under `$XDG_STATE_HOME` and a one-line note saying so: `boxsync id` and
/// `trust` work on it, a peer downloads from it, and nothing is written to it.
#[test]
fn a_read_only_folder_is_served_with_its_state_elsewhere() {
    let temp = tempfile::tempdir().unwrap();
    let ro = temp.path().join("ro");
    let Some(_mount) = Tmpfs::mount(&ro, "4m") else {
        return;
    };
    write_file(&ro, "sub/b.txt", b"read me");
    let remount = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro)
        .status()
        .expect("run mount");
    assert!(remount.success(), "cannot remount the tmpfs read-only");
    let state_home = temp.path().join("state");
    let boxsync = |args: &[&str], dir: &Path| {
        Command::new(binary())
            .args(args)
            .arg("-d")
            .arg(dir)
            .env("XDG_STATE_HOME", &state_home)
            .stdin(Stdio::null())
            .output()
            .expect("run boxsync")
    };
    let client = temp.path().join("client");
    let client_id = String::from_utf8(boxsync(&["id"], &client).stdout).unwrap();
    let trusted = boxsync(&["trust", client_id.trim()], &ro);
    assert!(trusted.status.success(), "{trusted:?}");
    let ro_id = String::from_utf8(boxsync(&["id"], &ro).stdout).unwrap();
    assert!(!ro_id.trim().is_empty());
    let log = temp.path().join("ro.log");
    let mut child = Command::new(binary())
        .args(["serve", "-d"])
        .arg(&ro)
        .args(["-l", "127.0.0.1:0", "--no-discovery"])
        .env("XDG_STATE_HOME", &state_home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start boxsync serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Process { child };
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("serving"), "no serving line: {line:?}");
    let note = fs::read_to_string(&log).unwrap();
    let notes: Vec<&str> = note.lines().filter(|l| l.contains("read-only")).collect();
    assert_eq!(notes.len(), 1, "{note}");
    assert!(
        notes[0].contains(&state_home.display().to_string()),
        "{note}"
    );
    let peer = format!("{}@{addr}", ro_id.trim());
    let got = boxsync(
        &["--sync", "0", "-p", &peer, "-c", "download tcp sub/b.txt"],
        &client,
    );
    assert!(got.status.success(), "{got:?}");
    assert_eq!(fs::read(client.join("sub/b.txt")).unwrap(), b"read me");
    // Nothing was written to the folder; its state is under the state home.
    assert!(!ro.join(".boxsync").exists());
    let states = fs::read_dir(state_home.join("boxsync/folders"))
        .unwrap()
        .count();
    assert_eq!(states, 1);
    drop(server);
}
