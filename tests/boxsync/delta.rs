//! Moving only what changed (issue 21), with real boxes: a change on one box reaches the
//! other with the same bytes, and the bytes that travelled are counted (sync's status, a
//! download's `transferred`). An edit, an append, a truncation, an insert near the start,
//! a rename and a copy; a download of what is already here; a lying peer; a download
//! resumed after its box was killed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use boxsync::protocol::message::{FileEnd, FileStart};
use boxsync::protocol::{Connection, Response};
use boxsync::requests::Request;
use boxsync::share::Digests;
use boxsync::sync::SyncHandle;
use boxsync::time::Timestamp;
use boxsync::transfer::TransferError;
use boxsync::types::Transport;
use tokio::sync::watch;

use crate::util::{
    TestBox, binary, blocks_answer, bytes, eventually, files_under, poll, rel,
    scripted_peer_streams, start_sync, write_file,
};

/// How long a change may take to reach the other box here.
const CONVERGE: Duration = Duration::from_secs(20);

/// The block size of the files below (up to 250 MiB).
const BLOCK: usize = 128 * 1024;

/// Two boxes syncing both ways, and their handles.
struct Pair {
    a: TestBox,
    b: TestBox,
    b_sync: SyncHandle,
    _stops: (watch::Sender<bool>, watch::Sender<bool>),
    _a_sync: SyncHandle,
}

impl Pair {
    /// Two syncing boxes that both hold `content` as `name`.
    async fn holding(name: &str, content: &[u8]) -> Pair {
        let a = TestBox::start().await;
        let b = TestBox::start().await;
        a.write(name, content);
        let (a_sync, a_stop) = start_sync(&a, &[b.target()], Transport::Tcp);
        let (b_sync, b_stop) = start_sync(&b, &[a.target()], Transport::Tcp);
        let pair = Pair {
            a,
            b,
            b_sync,
            _stops: (a_stop, b_stop),
            _a_sync: a_sync,
        };
        assert!(
            pair.b_holds(name, content).await,
            "the first copy never arrived"
        );
        pair.round_ended().await;
        pair
    }

    /// Waits until a round of B's that began after this call has ended: the rounds
    /// before it have then reported their bytes.
    async fn round_ended(&self) {
        let next = tokio::time::timeout(CONVERGE, self.b_sync.next_round()).await;
        assert!(next.is_ok(), "sync rounds stalled");
    }

    /// Waits until box B holds `content` as `name`.
    async fn b_holds(&self, name: &str, content: &[u8]) -> bool {
        let path = self.b.root().join(name);
        eventually(CONVERGE, || fs::read(&path).is_ok_and(|c| c == content)).await
    }

    /// Bytes box B has fetched over the network from A since it started.
    fn fetched(&self) -> u64 {
        self.b_sync
            .status()
            .peers
            .iter()
            .map(|p| p.fetched_bytes)
            .sum()
    }

    /// Makes `change` in A's folder, waits until B holds `name` as `content`, and
    /// returns the bytes B fetched for it.
    async fn change(&self, change: impl FnOnce(&Path), name: &str, content: &[u8]) -> u64 {
        let before = self.fetched();
        change(&self.a.root());
        assert!(self.b_holds(name, content).await, "'{name}' never arrived");
        // The round that installed it reports its bytes when it ends.
        self.round_ended().await;
        self.fetched() - before
    }
}

/// Rewrites `len` bytes at `offset` of the file at `path` in place.
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

/// Files in a box's trash.
fn trash(b: &TestBox) -> Vec<PathBuf> {
    files_under(&b.local.share.state_dir().join("trash"))
}

/// 100 KB rewritten across a block boundary in the middle of an 8 MiB file: the two
/// blocks it touches travel, nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_in_the_middle_moves_the_blocks_it_touched() {
    let old = bytes(8 << 20, 1);
    let pair = Pair::holding("big.bin", &old).await;
    let patch = bytes(100_000, 2);
    let mut new = old.clone();
    let at = (4 << 20) - 50_000;
    new[at..at + patch.len()].copy_from_slice(&patch);
    let fetched = pair
        .change(
            |a| overwrite(&a.join("big.bin"), at as u64, &patch),
            "big.bin",
            &new,
        )
        .await;
    assert_eq!(fetched, 2 * BLOCK as u64);
}

/// 1 MiB appended to an 8 MiB file: the megabyte travels.
#[tokio::test(flavor = "multi_thread")]
async fn an_append_moves_what_was_appended() {
    let old = bytes(8 << 20, 3);
    let pair = Pair::holding("log.bin", &old).await;
    let tail = bytes(1 << 20, 4);
    let new = [old.clone(), tail.clone()].concat();
    let fetched = pair
        .change(
            |a| {
                use std::io::Write;
                let mut file = fs::OpenOptions::new()
                    .append(true)
                    .open(a.join("log.bin"))
                    .unwrap();
                file.write_all(&tail).unwrap();
            },
            "log.bin",
            &new,
        )
        .await;
    assert_eq!(fetched, 1 << 20);
}

/// A file cut to 5 MiB and 1,000 bytes moves nothing: even its new, short last block is
/// the start of a block of the old version, at its place.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncation_moves_nothing() {
    let old = bytes(8 << 20, 5);
    let pair = Pair::holding("cut.bin", &old).await;
    let len = (5 << 20) + 1000;
    let fetched = pair
        .change(
            |a| {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(a.join("cut.bin"))
                    .unwrap();
                file.set_len(len as u64).unwrap();
            },
            "cut.bin",
            &old[..len],
        )
        .await;
    assert_eq!(fetched, 0);
}

/// Ten bytes inserted near the start shift every block after them: blocks are matched
/// at their place only (no rolling match; the figures behind that decision are in
/// docs/benchmarks.md), so the whole file travels, and arrives right.
#[tokio::test(flavor = "multi_thread")]
async fn an_insert_near_the_start_arrives_right() {
    let old = bytes(4 << 20, 6);
    let pair = Pair::holding("shifted.bin", &old).await;
    let new = [&old[..100], b"0123456789", &old[100..]].concat();
    let fetched = pair
        .change(
            |a| {
                write_file(a, "shifted.bin", &new);
            },
            "shifted.bin",
            &new,
        )
        .await;
    assert_eq!(fetched, new.len() as u64);
}

/// A big file renamed into a new folder on one box is renamed on the other: the same file
/// (its inode), no content on the wire, nothing in the trash, the old name gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_rename_moves_no_content() {
    use std::os::unix::fs::MetadataExt;
    let content = bytes(8 << 20, 7);
    let pair = Pair::holding("before.bin", &content).await;
    let trashed = trash(&pair.b);
    let inode = fs::metadata(pair.b.root().join("before.bin"))
        .unwrap()
        .ino();
    let fetched = pair
        .change(
            |a| {
                fs::create_dir(a.join("moved")).unwrap();
                fs::rename(a.join("before.bin"), a.join("moved/sub after.bin")).unwrap()
            },
            "moved/sub after.bin",
            &content,
        )
        .await;
    assert_eq!(fetched, 0);
    let new = pair.b.root().join("moved/sub after.bin");
    assert_eq!(
        fs::metadata(&new).unwrap().ino(),
        inode,
        "not moved in place"
    );
    assert!(
        !pair.b.root().join("before.bin").exists(),
        "the old name stayed"
    );
    assert_eq!(trash(&pair.b), trashed);
}

/// A copy of a big file is made on the other box from its own copy: no content travels.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_moves_no_content() {
    let content = bytes(8 << 20, 8);
    let pair = Pair::holding("original.bin", &content).await;
    let fetched = pair
        .change(
            |a| {
                fs::copy(a.join("original.bin"), a.join("copy.bin")).unwrap();
            },
            "copy.bin",
            &content,
        )
        .await;
    assert_eq!(fetched, 0);
    assert_eq!(
        fs::read(pair.b.root().join("original.bin")).unwrap(),
        content
    );
}

/// Downloading a file this box already has, with the same content, is "up to date": it
/// changes nothing (not even the mtime) and puts nothing in the trash.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_of_what_is_here_changes_nothing() {
    let b = TestBox::start().await;
    let content = bytes(3 << 20, 9);
    b.write("same.bin", &content);
    let (_t, me) = TestBox::client();
    let mine = write_file(me.share.root(), "same.bin", &content);
    let mtime = fs::metadata(&mine).unwrap().modified().unwrap();
    let done = b
        .peer_for(&me)
        .download_tcp(&rel("same.bin"), &mut |_, _| {})
        .await
        .unwrap();
    assert!(done.up_to_date);
    assert_eq!(done.transferred, 0);
    assert_eq!(done.replaced, None);
    assert_eq!(fs::metadata(&mine).unwrap().modified().unwrap(), mtime);
    assert!(files_under(&me.share.state_dir().join("trash")).is_empty());
}

/// A person's download of a new version over an old one moves only the changed block
/// and says how much it found here.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_over_an_old_version_fetches_only_the_changes() {
    let b = TestBox::start().await;
    let old = bytes(2 << 20, 10);
    let mut new = old.clone();
    new[BLOCK * 3 + 17] ^= 0xff;
    b.write("doc.bin", &new);
    let (_t, me) = TestBox::client();
    write_file(me.share.root(), "doc.bin", &old);
    let done = b
        .peer_for(&me)
        .download_tcp(&rel("doc.bin"), &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(fs::read(me.share.root().join("doc.bin")).unwrap(), new);
    assert_eq!(done.transferred, BLOCK as u64);
    assert_eq!(done.reused, new.len() as u64 - BLOCK as u64);
    assert!(done.replaced.is_some(), "the old version went to the trash");
}

/// The same over UDP: the changed block comes by datagram, the rest from here.
#[tokio::test(flavor = "multi_thread")]
async fn a_udp_download_over_an_old_version_fetches_only_the_changes() {
    let b = TestBox::start().await;
    let old = bytes(2 << 20, 13);
    let mut new = old.clone();
    new[BLOCK * 5 + 3] ^= 0xff;
    new[BLOCK * 9 + 3] ^= 0xff;
    b.write("doc.bin", &new);
    let (_t, me) = TestBox::client();
    write_file(me.share.root(), "doc.bin", &old);
    let done = b
        .peer_for(&me)
        .download_udp(&rel("doc.bin"), None, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(fs::read(me.share.root().join("doc.bin")).unwrap(), new);
    assert_eq!(done.transport, Transport::Udp);
    assert_eq!(done.transferred, 2 * BLOCK as u64);
    assert_eq!(done.reused, new.len() as u64 - 2 * BLOCK as u64);
}

/// A peer whose list is honest but whose blocks are not: the block that does not match
/// is refused, the download fails with a checksum error, and nothing is installed.
#[tokio::test(flavor = "multi_thread")]
async fn a_block_that_does_not_match_its_hash_is_refused() {
    let content = bytes(3 * BLOCK + 5, 11);
    let answer = blocks_answer("evil.bin", &content);
    let (target, _script) = scripted_peer_streams(move |mut streams| async move {
        let mut first = Connection::new(streams.recv().await.unwrap());
        let request: Request = first.expect_message().await.unwrap();
        assert!(matches!(request, Request::Blocks(_)), "{request:?}");
        first.write_message(&answer).await.unwrap();
        let mut second = Connection::new(streams.recv().await.unwrap());
        let request: Request = second.expect_message().await.unwrap();
        let Request::Download(download) = request else {
            panic!("{request:?}");
        };
        let ranges = download.ranges.expect("a ranged download");
        let mut sent = Vec::new();
        for [offset, len] in &ranges.ranges {
            sent.extend_from_slice(&content[*offset as usize..(*offset + *len) as usize]);
        }
        sent[BLOCK + 9] ^= 1; // The second block lies.
        let start = Response::FileStart(FileStart {
            name: rel("evil.bin"),
            size: sent.len() as u64,
            mtime: Timestamp::now(),
            mode: 0o644,
        });
        second.write_message(&start).await.unwrap();
        for chunk in sent.chunks(64 * 1024) {
            if second.write_data(chunk).await.is_err() {
                return;
            }
        }
        let end = Response::FileEnd(FileEnd {
            digests: Digests {
                blake3: blake3::hash(&content).to_hex().to_string().into(),
                sha256: None,
                md5: None,
            },
        });
        let _ = second.write_message(&end).await;
        let _ = second.read_frame().await;
    })
    .await;
    let (_t, me) = TestBox::client();
    let peer = boxsync::peer::Peer::new(&target, std::sync::Arc::clone(&me));
    let error = peer
        .download_tcp(&rel("evil.bin"), &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            boxsync::peer::PeerError::Transfer(TransferError::Checksum { .. })
        ),
        "{error:?}"
    );
    assert!(!me.share.root().join("evil.bin").exists());
}

/// A TCP download whose box is killed (SIGKILL) midway resumes from the blocks it had
/// verified: the second run reports them as reused and fetches only the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_download_resumes_after_its_box_was_killed() {
    resumes_after_a_kill("tcp").await;
}

/// The same over UDP.
#[tokio::test(flavor = "multi_thread")]
async fn a_udp_download_resumes_after_its_box_was_killed() {
    resumes_after_a_kill("udp").await;
}

/// Downloads a big file with `boxsync -c 'download TRANSPORT …'`, kills the process
/// midway, downloads again, and checks what the second run reused.
async fn resumes_after_a_kill(transport: &'static str) {
    let b = TestBox::start().await;
    let content = bytes(192 << 20, 12);
    b.write("huge.bin", &content);
    let dir = tempfile::tempdir().unwrap();
    let peer = b.cli_target(dir.path());
    let args = |json: bool| {
        let mut args = vec![
            "-d".to_string(),
            dir.path().display().to_string(),
            "-p".to_string(),
            peer.clone(),
        ];
        if json {
            args.push("--json".into());
        }
        args.extend(["-c".to_string(), format!("download {transport} huge.bin")]);
        args
    };
    let parts = dir.path().join(".boxsync/tmp/resume");
    let parts_dir = parts.clone();
    let held = move || -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::read_dir(&parts)
            .map(|items| {
                items
                    .flatten()
                    .filter_map(|i| i.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0)
    };
    let first = {
        let args = args(false);
        let held = held.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(binary())
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let midway = poll(CONVERGE, || held() >= 16 << 20);
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            midway
        })
    };
    assert!(first.await.unwrap(), "the download never got under way");
    let kept = held();
    assert!(kept < content.len() as u64, "it finished before the kill");
    let args = args(true);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        fs::read(dir.path().join("huge.bin")).unwrap(),
        content,
        "the resumed file is whole"
    );
    let reused = report["reused"].as_u64().unwrap();
    let transferred = report["transferred"].as_u64().unwrap();
    assert!(reused >= 8 << 20, "{report}");
    assert_eq!(reused + transferred, content.len() as u64, "{report}");
    assert!(files_under(&parts_dir).is_empty(), "the part was installed");
}
