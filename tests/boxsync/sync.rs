//! Auto-sync scenarios with real boxes on 127.0.0.1:0: every kind of change in each
//! direction, conflicts, deletes against offline peers, lost records, growing files,
//! killed peers, ignore patterns, the mass-delete guard, and a 3-box mesh under random
//! operations. Waits are polled conditions or awaited rounds, with deadlines.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use boxsync::sync::{SyncError, SyncHandle};
use boxsync::types::{PeerAddress, Transport};
use tokio::sync::watch;

use crate::util::{TestBox, bytes, eventually, start_sync, start_sync_every, write_file};

/// How long a change may take to converge in these tests (the target is about a second).
const CONVERGE: Duration = Duration::from_secs(20);

/// A box with a server and auto-sync running against the given peers.
struct SyncBox {
    b: TestBox,
    handle: SyncHandle,
    stop: watch::Sender<bool>,
}

impl SyncBox {
    fn root(&self) -> PathBuf {
        self.b.root()
    }
}

impl Drop for SyncBox {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A hub (box 0: it listens, dials nobody, trusts the others) and `n - 1` laptops that
/// listen nowhere and dial only the hub: every change between laptops goes through the
/// hub, over the sessions the laptops opened. `prepare` fills folders first.
async fn hub(n: usize, period: Duration, prepare: impl Fn(usize, &Path)) -> Vec<SyncBox> {
    let hub = TestBox::start().await;
    prepare(0, &hub.root());
    let mut laptops = Vec::new();
    for i in 1..n {
        let laptop = TestBox::start_unlistening().await;
        prepare(i, &laptop.root());
        hub.trust(&laptop);
        laptop.trust(&hub);
        laptops.push(laptop);
    }
    let target = hub.target();
    let (handle, stop) = start_sync_every(&hub, &[], Transport::Tcp, period);
    let mut boxes = vec![SyncBox {
        b: hub,
        handle,
        stop,
    }];
    for laptop in laptops {
        let (handle, stop) = start_sync_every(
            &laptop,
            std::slice::from_ref(&target),
            Transport::Tcp,
            period,
        );
        boxes.push(SyncBox {
            b: laptop,
            handle,
            stop,
        });
    }
    boxes
}

/// Starts `n` boxes, each syncing with all the others; `prepare` fills folders first.
async fn mesh(n: usize, transport: Transport, prepare: impl Fn(usize, &Path)) -> Vec<SyncBox> {
    let mut boxes = Vec::new();
    for i in 0..n {
        let b = TestBox::start().await;
        prepare(i, &b.root());
        boxes.push(b);
    }
    let targets: Vec<PeerAddress> = boxes.iter().map(|b| b.target()).collect();
    boxes
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let others: Vec<PeerAddress> = targets
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.clone())
                .collect();
            let (handle, stop) = start_sync(&b, &others, transport);
            SyncBox { b, handle, stop }
        })
        .collect()
}

/// What a folder holds, outside `.boxsync/`: path -> file content, or `None` for folders.
fn contents(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(items) = fs::read_dir(&dir) else {
            continue;
        };
        for item in items.flatten() {
            let path = item.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel == ".boxsync" {
                continue;
            }
            if path.is_dir() {
                out.insert(rel, None);
                pending.push(path);
            } else if let Ok(content) = fs::read(&path) {
                out.insert(rel, Some(content));
            }
        }
    }
    out
}

/// Waits until every box holds exactly the same contents; returns them.
async fn converged(boxes: &[SyncBox]) -> BTreeMap<String, Option<Vec<u8>>> {
    let roots: Vec<PathBuf> = boxes.iter().map(|b| b.root()).collect();
    let ok = eventually(CONVERGE, || {
        let first = contents(&roots[0]);
        roots[1..].iter().all(|r| contents(r) == first)
    })
    .await;
    if !ok {
        for (i, root) in roots.iter().enumerate() {
            eprintln!("box {i}: {:?}", contents(root).keys().collect::<Vec<_>>());
            eprintln!("status {i}: {:?}", boxes[i].handle.status());
        }
        panic!("boxes did not converge within {CONVERGE:?}");
    }
    contents(&roots[0])
}

/// Waits until every box has completed two more rounds: by then both records hold what
/// the boxes agree on (converged contents can still differ in metadata for a round).
async fn settle(boxes: &[SyncBox]) {
    let start: Vec<u64> = boxes.iter().map(|b| b.handle.status().rounds).collect();
    let since = boxsync::time::Timestamp::now();
    // Two rounds more on every box, and a completed round with each of its peers since
    // (a hub learns of a laptop only once it dials in).
    let ok = eventually(CONVERGE, || {
        boxes.iter().zip(&start).all(|(b, s)| {
            let status = b.handle.status();
            status.rounds >= s + 2
                && !status.peers.is_empty()
                && status
                    .peers
                    .iter()
                    .all(|p| p.last_sync.is_some_and(|t| t > since))
        })
    })
    .await;
    assert!(ok, "sync rounds stalled");
}

/// Pauses sync on every box and waits until no round is under way on any of them.
async fn pause(boxes: &[SyncBox]) {
    let paused: Vec<_> = boxes.iter().map(|b| b.handle.pause()).collect();
    let all = futures_util::future::join_all(paused);
    assert!(
        tokio::time::timeout(CONVERGE, all).await.is_ok(),
        "a round under way never ended"
    );
}

/// Waits until every box has ended `n` rounds that began after this call.
async fn rounds_on_every_box(boxes: &[SyncBox], n: usize) {
    let all = futures_util::future::join_all(boxes.iter().map(|b| async {
        for _ in 0..n {
            b.handle.next_round().await;
        }
    }));
    assert!(
        tokio::time::timeout(CONVERGE, all).await.is_ok(),
        "sync rounds stalled"
    );
}

fn text(content: &str) -> Option<Vec<u8>> {
    Some(content.as_bytes().to_vec())
}

/// Create, edit, delete, rename, subfolders and empty folders travel in both directions.
#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_change_in_both_directions() {
    let boxes = mesh(2, Transport::Tcp, |_, _| {}).await;
    every_kind_of_change(&boxes, &[(0, 1), (1, 0)]).await;
}

/// Creates, edits, renames and deletes files and folders, and changes a file's mode and
/// time, on box `from` of each pair; each change must reach every box, `to` checked first.
async fn every_kind_of_change(boxes: &[SyncBox], directions: &[(usize, usize)]) {
    for &(from, to) in directions {
        let (src, dst) = (boxes[from].root(), boxes[to].root());
        let tag = format!("from{from}");
        write_file(&src, &format!("{tag}/new.txt"), b"new");
        write_file(&src, &format!("{tag}/deep/er/file ü.txt"), b"deep");
        fs::create_dir_all(src.join(format!("{tag}/empty dir"))).unwrap();
        let all = converged(boxes).await;
        assert_eq!(all.get(&format!("{tag}/new.txt")), Some(&text("new")));
        assert_eq!(all.get(&format!("{tag}/empty dir")), Some(&None));
        assert!(dst.join(format!("{tag}/deep/er/file ü.txt")).exists());

        write_file(&src, &format!("{tag}/new.txt"), b"edited");
        assert!(
            eventually(CONVERGE, || fs::read(dst.join(format!("{tag}/new.txt")))
                .ok()
                == text("edited"))
            .await
        );
        fs::rename(
            src.join(format!("{tag}/new.txt")),
            src.join(format!("{tag}/renamed.txt")),
        )
        .unwrap();
        fs::remove_dir(src.join(format!("{tag}/empty dir"))).unwrap();
        fs::remove_file(src.join(format!("{tag}/deep/er/file ü.txt"))).unwrap();
        let all = converged(boxes).await;
        assert_eq!(
            all.get(&format!("{tag}/renamed.txt")),
            Some(&text("edited"))
        );
        assert!(!all.contains_key(&format!("{tag}/new.txt")));
        assert!(!all.contains_key(&format!("{tag}/empty dir")));
        assert!(!all.contains_key(&format!("{tag}/deep/er/file ü.txt")));
    }
    // Modification times and permission bits travel too.
    let (from, to) = directions[0];
    let src = boxes[from].root().join(format!("from{from}/renamed.txt"));
    let dst = boxes[to].root().join(format!("from{from}/renamed.txt"));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        eventually(CONVERGE, || fs::metadata(&dst)
            .map(|m| m.permissions().mode() & 0o777 == 0o600)
            .unwrap_or(false))
        .await
    );
    assert_eq!(
        fs::metadata(&src).unwrap().modified().unwrap(),
        fs::metadata(&dst).unwrap().modified().unwrap()
    );
    // A time set on its own (`touch -d`), once both records hold the new mode: not a
    // concurrent change of the same file's metadata, which the later time would win.
    settle(boxes).await;
    let earlier = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(earlier)
        .unwrap();
    for b in boxes {
        let there = b.root().join(format!("from{from}/renamed.txt"));
        assert!(
            eventually(CONVERGE, || fs::metadata(&there)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t == earlier))
            .await,
            "a new modification time did not travel"
        );
    }
}

/// A deleted file is kept in the trash of the box that deleted it on sync's behalf.
#[tokio::test(flavor = "multi_thread")]
async fn deletions_go_to_the_trash() {
    let boxes = mesh(2, Transport::Tcp, |i, root| {
        if i == 0 {
            write_file(root, "doomed.txt", b"precious");
        }
    })
    .await;
    converged(&boxes).await;
    fs::remove_file(boxes[0].root().join("doomed.txt")).unwrap();
    converged(&boxes).await;
    let trash = crate::util::files_under(&boxes[1].root().join(".boxsync/trash"));
    assert_eq!(trash.len(), 1, "{trash:?}");
    assert_eq!(
        fs::read(boxes[1].root().join(".boxsync/trash").join(&trash[0])).unwrap(),
        b"precious"
    );
}

/// Pauses sync on both boxes, runs `edit` on each, resumes, and waits for convergence.
async fn concurrent(
    boxes: &[SyncBox],
    edit: impl Fn(usize, &Path),
) -> BTreeMap<String, Option<Vec<u8>>> {
    pause(boxes).await;
    for (i, b) in boxes.iter().enumerate() {
        edit(i, &b.root());
    }
    for b in boxes {
        b.handle.set_enabled(true);
    }
    converged(boxes).await
}

/// An awaited round is a whole round that began after the call, and a paused box begins
/// none until it is turned on again.
#[tokio::test(flavor = "multi_thread")]
async fn rounds_can_be_awaited_and_paused() {
    let boxes = mesh(2, Transport::Tcp, |_, _| {}).await;
    let handle = &boxes[0].handle;
    let before = handle.status().rounds;
    let next = handle.next_round();
    tokio::time::timeout(CONVERGE, next).await.expect("a round");
    assert!(handle.status().rounds > before, "{:?}", handle.status());
    pause(&boxes).await;
    let paused = handle.status().rounds;
    // Asked for while paused: it cannot end before sync is on again.
    let mut next = Box::pin(handle.next_round());
    handle.sync_now();
    assert!(
        futures_util::poll!(next.as_mut()).is_pending(),
        "a round ended while paused"
    );
    assert_eq!(handle.status().rounds, paused);
    handle.set_enabled(true);
    tokio::time::timeout(CONVERGE, next)
        .await
        .expect("a round after the pause");
    assert!(handle.status().rounds > paused);
}

/// Two synced boxes that both held `name`, then edited it differently while paused, once
/// they converged again: the boxes and every file's content.
async fn conflicted_pair(name: &str) -> (Vec<SyncBox>, BTreeMap<String, Option<Vec<u8>>>) {
    let boxes = mesh(2, Transport::Tcp, |_, root| {
        write_file(root, name, b"base");
    })
    .await;
    converged(&boxes).await;
    let all = concurrent(&boxes, |i, root| {
        write_file(root, name, format!("edit from box {i}").as_bytes());
    })
    .await;
    (boxes, all)
}

/// Different edits on both boxes: both versions survive, under the same names everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn simultaneous_edits_make_one_conflict_copy() {
    let (_boxes, all) = conflicted_pair("notes/a.txt").await;
    let files: Vec<&String> = all.keys().filter(|k| k.starts_with("notes/")).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let copy = files
        .iter()
        .find(|f| f.contains(".sync-conflict-"))
        .expect("a conflict copy");
    assert!(copy.ends_with(".txt"), "{copy}");
    let versions: BTreeSet<Vec<u8>> = files.iter().map(|f| all[*f].clone().unwrap()).collect();
    let expected: BTreeSet<Vec<u8>> =
        [b"edit from box 0".to_vec(), b"edit from box 1".to_vec()].into();
    assert_eq!(versions, expected, "a version was lost");
}

/// A conflict is announced on both boxes and is no error on either: the box that keeps the
/// name may ask for the peer's losing version just after the peer set it aside under its
/// conflict name; that copy then comes under the conflict name, and nothing is reported as
/// failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_reports_no_error() {
    let boxes = mesh(2, Transport::Tcp, |_, root| {
        write_file(root, "conf.txt", b"base");
    })
    .await;
    converged(&boxes).await;
    // Subscribed before the edits: every event of the conflict's rounds is seen.
    let mut events: Vec<_> = boxes.iter().map(|b| b.handle.events()).collect();
    let all = concurrent(&boxes, |i, root| {
        write_file(root, "conf.txt", format!("edit from box {i}").as_bytes());
    })
    .await;
    assert_eq!(all.len(), 2, "{:?}", all.keys());
    for (i, events) in events.iter_mut().enumerate() {
        // The round's events may go out just after its files land: wait for them, with a
        // deadline.
        let mut announced = false;
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while !announced {
            let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv()).await else {
                break;
            };
            assert!(
                !event.message.starts_with("error"),
                "box {i} reported: {}",
                event.message
            );
            // Said as a conflict, not only as a file whose name happens to say so.
            announced |= event.message.starts_with("conflict:")
                || event.message.starts_with("received conflict copy");
        }
        assert!(announced, "box {i} did not announce the conflict");
        while let Ok(event) = events.try_recv() {
            assert!(
                !event.message.starts_with("error"),
                "box {i} reported: {}",
                event.message
            );
        }
    }
}

/// A conflict stays in `sync status` until its copy is deleted (the person resolved it),
/// then leaves it on both boxes.
#[tokio::test(flavor = "multi_thread")]
async fn a_resolved_conflict_leaves_the_status() {
    let (boxes, all) = conflicted_pair("conf.txt").await;
    let copy = all
        .keys()
        .find(|name| name.contains(".sync-conflict-"))
        .expect("a conflict copy")
        .clone();
    let listed = |b: &SyncBox| b.handle.status().peers[0].conflicts.clone();
    // The folders converge with the last action of a round, which enters its conflicts in
    // the status when it ends, a moment later. (Not a further round: that would let both
    // boxes see both hold the copy before it is deleted, and hide what this test is for.)
    assert!(
        eventually(CONVERGE, || boxes.iter().any(|b| !listed(b).is_empty())).await,
        "the conflict is not in sync status"
    );
    fs::remove_file(boxes[0].root().join(&copy)).unwrap();
    // Gone from every box (`converged_on` looks at box 0 only, where it was deleted), and
    // then two more rounds everywhere.
    assert!(
        eventually(CONVERGE, || boxes
            .iter()
            .all(|b| !b.root().join(&copy).exists()))
        .await,
        "the deleted copy did not leave every box"
    );
    rounds_on_every_box(&boxes, 2).await;
    for (i, b) in boxes.iter().enumerate() {
        assert!(
            listed(b).is_empty(),
            "box {i} still lists {:?} (deleted: {copy}, converged: {:?}); its files: {:?}; rounds {}",
            listed(b),
            all.keys().collect::<Vec<_>>(),
            contents(&b.root()).keys().collect::<Vec<_>>(),
            b.handle.status().rounds
        );
    }
}

/// The same edit on both boxes is no conflict.
#[tokio::test(flavor = "multi_thread")]
async fn simultaneous_identical_edits_make_no_conflict() {
    let boxes = mesh(2, Transport::Tcp, |_, root| {
        write_file(root, "a.txt", b"base");
    })
    .await;
    converged(&boxes).await;
    let all = concurrent(&boxes, |_, root| {
        write_file(root, "a.txt", b"same edit");
    })
    .await;
    assert_eq!(all.len(), 1, "{:?}", all.keys());
    assert_eq!(all["a.txt"], text("same edit"));
}

/// An edit on one box against a delete on the other: the edit wins.
#[tokio::test(flavor = "multi_thread")]
async fn edit_wins_over_delete() {
    let boxes = mesh(2, Transport::Tcp, |_, root| {
        write_file(root, "a.txt", b"base");
    })
    .await;
    converged(&boxes).await;
    let all = concurrent(&boxes, |i, root| {
        if i == 0 {
            write_file(root, "a.txt", b"edited");
        } else {
            fs::remove_file(root.join("a.txt")).unwrap();
        }
    })
    .await;
    assert_eq!(all.get("a.txt"), Some(&text("edited")));
}

/// Two non-empty folders merge: the union, identical files untouched, same-name files with
/// different content both kept.
#[tokio::test(flavor = "multi_thread")]
async fn initial_merge_of_two_folders() {
    let boxes = mesh(2, Transport::Tcp, |i, root| {
        write_file(root, &format!("only{i}.txt"), b"mine");
        write_file(root, "same.txt", b"identical");
        write_file(root, "clash.txt", format!("box {i}").as_bytes());
        fs::create_dir_all(root.join(format!("dir{i}"))).unwrap();
    })
    .await;
    let all = converged(&boxes).await;
    for key in [
        "only0.txt",
        "only1.txt",
        "same.txt",
        "dir0",
        "dir1",
        "clash.txt",
    ] {
        assert!(all.contains_key(key), "{key} missing: {:?}", all.keys());
    }
    let clashes: BTreeSet<Vec<u8>> = all
        .iter()
        .filter(|(k, _)| k.starts_with("clash"))
        .map(|(_, v)| v.clone().unwrap())
        .collect();
    assert_eq!(clashes, [b"box 0".to_vec(), b"box 1".to_vec()].into());
}

/// A file deleted while a peer was offline stays deleted when the peer comes back.
#[tokio::test(flavor = "multi_thread")]
async fn delete_while_peer_offline_does_not_resurrect() {
    let mut boxes = mesh(2, Transport::Tcp, |_, root| {
        write_file(root, "gone.txt", b"x");
        write_file(root, "kept.txt", b"y");
    })
    .await;
    converged(&boxes).await;
    settle(&boxes).await;
    // Box 1 goes offline: its sync and its server stop.
    let offline = boxes.pop().unwrap();
    let _ = offline.stop.send(true);
    let addr = offline.b.addr;
    let mut b1 = offline;
    b1.b.stop().await;
    fs::remove_file(boxes[0].root().join("gone.txt")).unwrap();
    // Give box 0 time to notice (it cannot reach box 1).
    assert!(eventually(CONVERGE, || boxes[0].handle.status().rounds >= 3).await);
    // Box 1 comes back on the same address with the same folder.
    let temp = std::mem::replace(&mut b1.b.temp, tempfile::tempdir().unwrap());
    drop(b1);
    let back = TestBox::restart_at(temp, addr).await;
    let (handle, stop) = start_sync(&back, &[boxes[0].b.target()], Transport::Tcp);
    boxes.push(SyncBox {
        b: back,
        handle,
        stop,
    });
    let all = converged(&boxes).await;
    assert!(!all.contains_key("gone.txt"), "a deleted file came back");
    assert!(all.contains_key("kept.txt"));
}

/// A lost record (`.boxsync/` deleted) leads to a merge, never to deletions.
#[tokio::test(flavor = "multi_thread")]
async fn lost_record_merges_and_deletes_nothing() {
    let boxes = mesh(2, Transport::Tcp, |i, root| {
        write_file(root, &format!("f{i}.txt"), b"x");
    })
    .await;
    converged(&boxes).await;
    pause(&boxes).await;
    fs::remove_dir_all(boxes[1].root().join(".boxsync/sync")).unwrap();
    write_file(&boxes[0].root(), "new.txt", b"new");
    for b in &boxes {
        b.handle.set_enabled(true);
    }
    let all = converged(&boxes).await;
    for key in ["f0.txt", "f1.txt", "new.txt"] {
        assert!(all.contains_key(key), "{key} lost");
    }
}

/// A file that keeps growing while it is synced is never copied torn: every version seen
/// on the peer is a prefix of what was written, and the final one arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn growing_file_is_never_torn() {
    let boxes = mesh(2, Transport::Tcp, |_, _| {}).await;
    let src = boxes[0].root().join("log.txt");
    let dst = boxes[1].root().join("log.txt");
    let writer = {
        let src = src.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = fs::File::create(&src).unwrap();
            let mut all = Vec::new();
            for i in 0..400 {
                let line = format!("line {i:05} {}\n", "x".repeat(2000));
                file.write_all(line.as_bytes()).unwrap();
                all.extend_from_slice(line.as_bytes());
                std::thread::sleep(Duration::from_millis(5));
            }
            all
        })
    };
    let mut seen = Vec::new();
    while !writer.is_finished() {
        if let Ok(copy) = fs::read(&dst) {
            seen.push(copy);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let final_content = writer.await.unwrap();
    assert!(
        eventually(CONVERGE, || fs::read(&dst).ok().as_ref()
            == Some(&final_content))
        .await
    );
    for copy in seen {
        assert!(
            final_content.starts_with(&copy),
            "a torn copy of {} bytes was visible",
            copy.len()
        );
    }
}

/// A file written in bursts (issue 22 item 6): each burst reaches the peer, whose every
/// replaced version only ever existed as an intermediate state there. Its trash keeps the
/// latest of them, not one per burst, for big files (block lists) and small ones
/// (batches) alike; the final content is whole on both boxes.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_in_bursts_leaves_one_partial_version_in_the_trash() {
    let boxes = mesh(2, Transport::Tcp, |_, _| {}).await;
    for (name, burst) in [("big.bin", 1 << 20), ("small.txt", 700)] {
        let mut content = Vec::new();
        let mut states = Vec::new();
        for step in 0..6u64 {
            content.extend_from_slice(&bytes(burst, step + 1));
            write_file(&boxes[0].root(), name, &content);
            let there = boxes[1].root().join(name);
            assert!(
                eventually(CONVERGE, || fs::read(&there).ok().as_ref()
                    == Some(&content))
                .await,
                "burst {step} of {name} did not arrive"
            );
            states.push(content.clone());
        }
        let trash = boxes[1].root().join(".boxsync/trash");
        let kept: Vec<Vec<u8>> = crate::util::files_under(&trash)
            .into_iter()
            .filter(|path| path.file_name() == Some(std::ffi::OsStr::new(name)))
            .map(|path| fs::read(trash.join(path)).unwrap())
            .collect();
        // Five versions were replaced; the one kept is the last before the final one.
        assert_eq!(
            kept.len(),
            1,
            "{name}: {} versions in the trash",
            kept.len()
        );
        assert_eq!(
            kept[0], states[4],
            "{name}: the kept version is not the latest"
        );
    }
}

/// Symlinks and special files are never followed or copied (issue 22 item 13), and not
/// in silence: `sync status` names each one with its reason, and the files beside them
/// travel as usual. A link that goes changes the list at the next read.
#[tokio::test(flavor = "multi_thread")]
async fn symlinks_and_sockets_are_named_as_not_shared() {
    let boxes = mesh(2, Transport::Tcp, |i, root| {
        if i == 0 {
            write_file(root, "music/a.txt", b"a");
            std::os::unix::fs::symlink("/etc/hostname", root.join("host")).unwrap();
            std::os::unix::fs::symlink("a.txt", root.join("music/inside")).unwrap();
            std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        }
    })
    .await;
    let socket = std::os::unix::net::UnixListener::bind(boxes[0].root().join("music/sock"));
    let socket = socket.unwrap();
    write_file(&boxes[0].root(), "after.txt", b"later");
    let peer = boxes[1].root();
    assert!(
        eventually(CONVERGE, || peer.join("after.txt").is_file()
            && peer.join("music/a.txt").is_file())
        .await
    );
    for name in ["host", "music/inside", "etc", "music/sock"] {
        assert!(
            fs::symlink_metadata(peer.join(name)).is_err(),
            "{name} reached the peer"
        );
    }
    let named = |boxes: &[SyncBox]| {
        let status = boxes[0].handle.status();
        status
            .not_shared
            .iter()
            .map(|n| (n.path.clone(), n.reason.to_string()))
            .collect::<Vec<_>>()
    };
    let expected = [
        (
            "etc",
            "a symlink to '/etc': symlinks are never followed or copied",
        ),
        (
            "host",
            "a symlink to '/etc/hostname': symlinks are never followed or copied",
        ),
        (
            "music/inside",
            "a symlink to 'a.txt': symlinks are never followed or copied",
        ),
        (
            "music/sock",
            "a socket, FIFO or device: only files and folders are shared",
        ),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    assert!(
        eventually(CONVERGE, || named(&boxes) == expected).await,
        "{:?}",
        named(&boxes)
    );
    assert_eq!(boxes[0].handle.status().not_shared_total, 4);
    // The socket goes: the next read of its folder drops it from the list.
    drop(socket);
    fs::remove_file(boxes[0].root().join("music/sock")).unwrap();
    assert!(
        eventually(CONVERGE, || named(&boxes).len() == 3).await,
        "{:?}",
        named(&boxes)
    );
}

/// The serving box is killed in the middle of a transfer: no partial file on the other
/// box (what arrived, verified, waits in `.boxsync/tmp/resume/`), and the file arrives
/// after the box restarts, resumed from what had arrived.
#[tokio::test(flavor = "multi_thread")]
async fn peer_killed_mid_transfer_then_restarted() {
    let a = TestBox::start().await;
    let content = bytes(48 * 1024 * 1024, 7);
    a.write("big.bin", &content);
    let b = TestBox::start().await;
    a.trust(&b);
    let (hb, stop_b) = start_sync(&b, &[a.target()], Transport::Tcp);
    let tmp = b.root().join(".boxsync/tmp");
    let parts = tmp.join("resume");
    let started = eventually(CONVERGE, || {
        use std::os::unix::fs::MetadataExt;
        fs::read_dir(&parts)
            .map(|d| {
                d.flatten()
                    .any(|f| f.metadata().is_ok_and(|m| m.blocks() > 64))
            })
            .unwrap_or(false)
    })
    .await;
    assert!(started, "the transfer never started");
    let addr = a.addr;
    let mut a = a;
    a.kill().await;
    let temp = std::mem::replace(&mut a.temp, tempfile::tempdir().unwrap());
    drop(a);
    assert!(
        crate::util::files_under(&tmp)
            .iter()
            .all(|p| p.starts_with("resume")),
        "partial file left"
    );
    assert!(
        !b.root().join("big.bin").exists(),
        "a partial file became visible"
    );
    let _a = TestBox::restart_at(temp, addr).await;
    assert!(
        eventually(Duration::from_secs(60), || fs::read(
            b.root().join("big.bin")
        )
        .ok()
        .as_deref()
            == Some(&content[..]))
        .await
    );
    let next = tokio::time::timeout(CONVERGE, hb.next_round()).await;
    assert!(next.is_ok(), "sync rounds stalled");
    let status = hb.status();
    let reused: u64 = status.peers.iter().map(|p| p.reused_bytes).sum();
    assert!(reused > 0, "nothing was resumed: {status:?}");
    assert!(
        crate::util::files_under(&parts).is_empty(),
        "the part stayed"
    );
    drop(hb);
    let _ = stop_b.send(true);
}

/// A box whose peer was down when it started syncs as soon as that peer comes up and
/// connects, not at its next rescan (an hour away here).
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_comes_up_is_synced_with_at_once() {
    let mut a = TestBox::start().await;
    let addr = a.addr;
    let target = a.target();
    a.kill().await;
    let temp = std::mem::replace(&mut a.temp, tempfile::tempdir().unwrap());
    drop(a);
    let b = TestBox::start().await;
    let hour = Duration::from_secs(3600);
    let (hb, stop_b) = start_sync_every(&b, &[target], Transport::Tcp, hour);
    assert!(
        eventually(CONVERGE, || hb.status().rounds >= 1).await,
        "no first round"
    );
    assert!(
        !hb.status().peers[0].errors.is_empty(),
        "the first round should have failed: {:?}",
        hb.status().peers
    );
    assert!(
        matches!(
            hb.status().peers[0].failure.as_deref(),
            Some(SyncError::Peer(_))
        ),
        "the peer should have been the failure: {:?}",
        hb.status().peers
    );

    // The peer comes up, with a file, and syncs with this box on its own.
    crate::util::write_file(&temp.path().join("shared"), "late.txt", b"here at last");
    let a = TestBox::restart_at(temp, addr).await;
    let (ha, stop_a) = start_sync_every(&a, &[b.target()], Transport::Tcp, hour);
    assert!(
        eventually(CONVERGE, || fs::read(b.root().join("late.txt"))
            .ok()
            .as_deref()
            == Some(&b"here at last"[..]))
        .await,
        "the file never arrived before the rescan"
    );
    drop((ha, hb));
    let _ = stop_a.send(true);
    let _ = stop_b.send(true);
}

/// A round with many changes shows above the prompt as one line of counts, not one line
/// per file (which would flood the person typing and overflow the event channel).
#[tokio::test(flavor = "multi_thread")]
async fn a_big_round_is_summed_up_in_one_event() {
    let a = TestBox::start().await;
    let b = TestBox::start().await;
    a.trust(&b);
    let (hb, stop_b) = start_sync(&b, &[a.target()], Transport::Tcp);
    // Subscribed before anything exists to sync: no event can be missed.
    let mut events = hb.events();
    // All 30 appear at once (one rename), so that one round sees them all.
    let staging = tempfile::tempdir_in(a.root().join(".boxsync")).unwrap();
    for i in 0..30 {
        crate::util::write_file(staging.path(), &format!("f{i:02}.txt"), b"x");
    }
    fs::rename(staging.path(), a.root().join("batch")).unwrap();
    let mut seen = Vec::new();
    let summed_up = tokio::time::timeout(CONVERGE, async {
        loop {
            match events.recv().await {
                Ok(event) if event.message.starts_with("received 30 files") => break true,
                Ok(event) => seen.push(event.message),
                Err(_) => break false,
            }
        }
    })
    .await;
    assert_eq!(summed_up, Ok(true), "events seen: {seen:?}");
    assert!(
        seen.iter().all(|line| !line.starts_with("received batch/")),
        "one event per file: {seen:?}"
    );
    assert_eq!(contents(&b.root()).len(), 31);
    drop(hb);
    let _ = stop_b.send(true);
}

/// Patterns in `.boxsyncignore` (and the box's own temporary files) are never synced.
#[tokio::test(flavor = "multi_thread")]
async fn ignore_patterns() {
    let boxes = mesh(2, Transport::Tcp, |i, root| {
        write_file(
            root,
            ".boxsyncignore",
            b"# logs stay local\n*.log\nbuild/\n",
        );
        write_file(root, &format!("keep{i}.txt"), b"k");
        write_file(root, &format!("noise{i}.log"), b"n");
        write_file(root, &format!("build/out{i}.o"), b"o");
        write_file(root, &format!(".doc{i}.txt.swp"), b"swap");
    })
    .await;
    let all = converged_on(&boxes, |c| {
        c.contains_key("keep0.txt") && c.contains_key("keep1.txt")
    })
    .await;
    assert!(!all.contains_key("noise1.log"));
    assert!(!all.contains_key("build/out1.o"));
    assert!(!all.contains_key(".doc1.txt.swp"));
}

/// What one box ignores never leaves it, and the other box leaves alone its own files of
/// those names: it neither sends them nor deletes them. A file synced before its name was
/// ignored stays on both boxes, and later edits of it stay where they were made.
#[tokio::test(flavor = "multi_thread")]
async fn a_box_keeps_to_itself_what_it_ignores() {
    let boxes = mesh(2, Transport::Tcp, |i, root| match i {
        0 => {
            write_file(root, "mine.key", b"zero's key");
            write_file(root, "shared0.txt", b"s0");
            write_file(root, "later.txt", b"synced, then ignored by one");
        }
        _ => {
            write_file(root, ".boxsyncignore", b"*.key\n(?i)*.ENV\n");
            write_file(root, "private.key", b"one's key");
            write_file(root, "dev.env", b"TOKEN=1");
            write_file(root, "shared1.txt", b"s1");
        }
    })
    .await;
    let (zero, one) = (boxes[0].root(), boxes[1].root());
    let all = converged_on(&boxes, |c| {
        c.contains_key("shared1.txt") && c.contains_key("later.txt")
    })
    .await;
    assert!(!all.contains_key("private.key"), "{:?}", all.keys());
    assert!(!all.contains_key("dev.env"));
    assert!(eventually(CONVERGE, || one.join("later.txt").exists()).await);
    rounds_on_every_box(&boxes, 2).await;
    assert!(
        !one.join("mine.key").exists(),
        "an ignored name was synced to the box ignoring it"
    );
    assert_eq!(fs::read(zero.join("mine.key")).unwrap(), b"zero's key");

    // Box 1 now ignores a file both hold: box 0 keeps its copy, and neither edit crosses.
    write_file(&one, ".boxsyncignore", b"*.key\n(?i)*.ENV\nlater.txt\n");
    rounds_on_every_box(&boxes, 2).await;
    write_file(&zero, "later.txt", b"edited on zero");
    write_file(&one, "later.txt", b"edited on one, kept here");
    write_file(&zero, "marker.txt", b"m");
    assert!(eventually(CONVERGE, || one.join("marker.txt").exists()).await);
    rounds_on_every_box(&boxes, 2).await;
    assert_eq!(fs::read(zero.join("later.txt")).unwrap(), b"edited on zero");
    assert_eq!(
        fs::read(one.join("later.txt")).unwrap(),
        b"edited on one, kept here"
    );
    for root in [&zero, &one] {
        let trash = root.join(".boxsync/trash");
        let trashed: Vec<_> = crate::util::files_under(&trash)
            .into_iter()
            .filter(|path| path.to_string_lossy().contains("later.txt"))
            .collect();
        assert!(trashed.is_empty(), "{trashed:?}");
    }
}

/// Waits until box 0's contents satisfy `done`, and returns them.
async fn converged_on(
    boxes: &[SyncBox],
    done: impl Fn(&BTreeMap<String, Option<Vec<u8>>>) -> bool,
) -> BTreeMap<String, Option<Vec<u8>>> {
    let root = boxes[0].root();
    assert!(
        eventually(CONVERGE, || done(&contents(&root))).await,
        "{:?}",
        contents(&root).keys()
    );
    // And it stays that way for a few rounds.
    rounds_on_every_box(boxes, 2).await;
    contents(&root)
}

/// A shared folder that loses most of what was in sync at once (an unmounted disk) pauses
/// sync instead of deleting everything on the peer, and stays paused when a new file
/// appears in it (an application writing to the empty mount point): the new file does not
/// travel either. A person who means the deletions types `sync allow-deletes` on the box
/// where they were made; the peer's guard then lets them through once.
#[tokio::test(flavor = "multi_thread")]
async fn mass_delete_guard() {
    let boxes = mesh(2, Transport::Tcp, |i, root| {
        if i == 0 {
            for n in 0..20 {
                write_file(root, &format!("data/f{n:02}.txt"), b"data");
            }
        }
    })
    .await;
    converged(&boxes).await;
    // A box records what both hold as a round ends: let one that began after the folders
    // matched end on box 1, so that its record lists the files it would otherwise delete.
    let rounds = boxes[1].handle.status().rounds;
    assert!(
        eventually(CONVERGE, || boxes[1].handle.status().rounds >= rounds + 2).await,
        "box 1 ended no round"
    );
    // Everything disappears from box 0 at once (one rename out of the shared folder), as
    // with a disk unmounted; its state folder stays. Files deleted one by one would be
    // deletions a round may see halfway, and rightly pass on.
    let away = tempfile::tempdir().unwrap();
    fs::rename(boxes[0].root().join("data"), away.path().join("data")).unwrap();
    let paused = |b: &SyncBox| {
        matches!(
            b.handle.status().peers[0].failure.as_deref(),
            Some(SyncError::WipedThere { gone, .. }) if *gone >= 20
        )
    };
    assert!(
        eventually(CONVERGE, || paused(&boxes[1])).await,
        "no pause reported: {:?}",
        boxes[1].handle.status()
    );
    assert!(matches!(
        boxes[0].handle.status().peers[0].failure.as_deref(),
        Some(SyncError::WipedHere { gone, .. }) if *gone >= 20
    ));
    // One file written into the emptied folder does not lift the pause.
    write_file(&boxes[0].root(), "written-on-the-mount-point.txt", b"app");
    rounds_on_every_box(&boxes, 2).await;
    assert!(paused(&boxes[1]), "{:?}", boxes[1].handle.status());
    let kept = contents(&boxes[1].root());
    assert_eq!(
        kept.values().filter(|content| content.is_some()).count(),
        20,
        "files were deleted on the peer: {kept:?}"
    );
    assert!(
        !boxes[1]
            .root()
            .join("written-on-the-mount-point.txt")
            .exists()
    );
    // The pause says how to resume; the person meant it: the deletions go through, once.
    let message = boxes[0].handle.status().peers[0].errors.join(" ");
    assert!(message.contains("sync allow-deletes"), "{message}");
    boxes[0].handle.allow_deletions();
    assert!(
        eventually(CONVERGE, || {
            // Every deletion carried out (they run in parallel), not only the first.
            (0..20).all(|i| !boxes[1].root().join(format!("data/f{i:02}.txt")).exists())
                && boxes[1]
                    .root()
                    .join("written-on-the-mount-point.txt")
                    .exists()
        })
        .await,
        "{:?}",
        contents(&boxes[1].root()).keys()
    );
    let trash = crate::util::files_under(&boxes[1].root().join(".boxsync/trash"));
    assert_eq!(trash.len(), 20, "{trash:?}");
}

/// Sync over UDP (`udp://` peers) works too.
#[tokio::test(flavor = "multi_thread")]
async fn sync_over_udp() {
    let boxes = mesh(2, Transport::Udp, |i, root| {
        write_file(
            root,
            &format!("big{i}.bin"),
            &bytes(2 * 1024 * 1024 + i, i as u64),
        );
    })
    .await;
    let all = converged(&boxes).await;
    assert_eq!(all.len(), 2);
}

/// Three boxes under many seeded rounds of random creates, edits, deletes and renames on
/// all of them end identical, and every content ever written is still somewhere (in the
/// folders, in a conflict copy, or in a trash) unless the test itself overwrote or deleted
/// it on purpose.
#[tokio::test(flavor = "multi_thread")]
async fn three_box_mesh_under_random_operations() {
    for seed in [0x5eed_u64, 0xbeef, 0xcafe] {
        let boxes = mesh(3, Transport::Tcp, |_, _| {}).await;
        random_mesh(seed, boxes).await;
    }
}

/// The same with only one box dialable: a hub the two others dial, which dials nobody.
#[tokio::test(flavor = "multi_thread")]
async fn three_boxes_with_only_the_hub_dialable_under_random_operations() {
    for seed in [0x5eed_u64, 0xbeef] {
        let boxes = hub(3, Duration::from_secs(1), |_, _| {}).await;
        random_mesh(seed, boxes).await;
    }
}

/// One seeded run of random operations on `boxes`, which sync with each other.
async fn random_mesh(seed: u64, boxes: Vec<SyncBox>) {
    let mut person = crate::util::Person::new(seed);
    for _round in 0..12 {
        for (i, b) in boxes.iter().enumerate() {
            for _ in 0..3 {
                person.change(&b.root(), i);
            }
        }
        // Some sync between two bursts of operations: a round that began after them ends
        // on one of the boxes, while the others may be anywhere in theirs.
        let one =
            futures_util::future::select_all(boxes.iter().map(|b| Box::pin(b.handle.next_round())));
        assert!(
            tokio::time::timeout(CONVERGE, one).await.is_ok(),
            "sync rounds stalled"
        );
    }
    converged(&boxes).await;
    let roots: Vec<PathBuf> = boxes.iter().map(|b| b.root()).collect();
    let lost = person.lost(&roots);
    assert!(lost.is_empty(), "contents lost: {lost:?}");
}

/// Every kind of change between two laptops that only the hub's sessions connect, in
/// both directions, and from the hub to a laptop and back.
#[tokio::test(flavor = "multi_thread")]
async fn a_hub_carries_every_kind_of_change_between_laptops() {
    let boxes = hub(3, Duration::from_secs(1), |_, _| {}).await;
    every_kind_of_change(&boxes, &[(1, 2), (2, 1), (0, 1), (1, 0)]).await;
}

/// With the rescan an hour away, changes still travel within seconds, both ways: each box
/// announces its changes over the session, whoever dialed it.
#[tokio::test(flavor = "multi_thread")]
async fn changes_travel_over_the_session_without_a_rescan() {
    let hour = Duration::from_secs(3600);
    let boxes = hub(3, hour, |_, _| {}).await;
    let soon = Duration::from_secs(10);
    // First contact: every laptop has had its first round with the hub.
    rounds_on_every_box(&boxes, 1).await;
    for (from, name) in [(0, "from-hub.txt"), (1, "from-laptop1.txt"), (2, "l2.txt")] {
        write_file(&boxes[from].root(), name, name.as_bytes());
        for (i, b) in boxes.iter().enumerate() {
            let there = b.root().join(name);
            assert!(
                eventually(soon, || fs::read(&there).ok().as_deref()
                    == Some(name.as_bytes()))
                .await,
                "{name} written on box {from} did not reach box {i} within {soon:?}"
            );
        }
    }
}

/// Different edits on the two laptops: both versions survive, under the same names on all
/// three boxes.
#[tokio::test(flavor = "multi_thread")]
async fn laptops_editing_one_file_make_a_conflict_through_the_hub() {
    let boxes = hub(3, Duration::from_secs(1), |_, root| {
        write_file(root, "notes/a.txt", b"base");
    })
    .await;
    converged(&boxes).await;
    let edits = [&boxes[1], &boxes[2]];
    for (i, b) in edits.iter().enumerate() {
        write_file(&b.root(), "notes/a.txt", format!("edit {i}").as_bytes());
    }
    let all = converged(&boxes).await;
    let versions: BTreeSet<Vec<u8>> = all
        .iter()
        .filter(|(k, _)| k.starts_with("notes/"))
        .filter_map(|(_, v)| v.clone())
        .collect();
    assert!(versions.contains(b"edit 0".as_slice()), "{versions:?}");
    assert!(versions.contains(b"edit 1".as_slice()), "{versions:?}");
}

/// An edit on one laptop against a delete on the other: the edit wins everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn edit_wins_over_delete_through_the_hub() {
    let boxes = hub(3, Duration::from_secs(1), |_, root| {
        write_file(root, "a.txt", b"base");
    })
    .await;
    converged(&boxes).await;
    settle(&boxes).await;
    pause(&boxes).await;
    write_file(&boxes[1].root(), "a.txt", b"edited");
    fs::remove_file(boxes[2].root().join("a.txt")).unwrap();
    for b in &boxes {
        b.handle.set_enabled(true);
    }
    let all = converged(&boxes).await;
    assert_eq!(all.get("a.txt"), Some(&text("edited")));
}

/// A file deleted on one laptop while the other is offline stays deleted when the other
/// comes back (it dials the hub again; nobody can dial it).
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_while_a_laptop_is_offline_does_not_resurrect() {
    let mut boxes = hub(3, Duration::from_secs(1), |_, root| {
        write_file(root, "gone.txt", b"x");
        write_file(root, "kept.txt", b"y");
    })
    .await;
    converged(&boxes).await;
    // The three copies were written apart: they agree once their times do (the hub
    // passes one box's time on to the other), and the records say so a round later.
    let mtime = |b: &SyncBox| {
        fs::metadata(b.root().join("gone.txt"))
            .and_then(|m| m.modified())
            .ok()
    };
    let agreed = eventually(CONVERGE, || {
        let first = mtime(&boxes[0]);
        first.is_some() && boxes.iter().all(|b| mtime(b) == first)
    })
    .await;
    assert!(agreed, "the boxes never agreed on gone.txt's time");
    settle(&boxes).await;
    let offline = boxes.pop().unwrap();
    let _ = offline.stop.send(true);
    let mut laptop = offline;
    laptop.b.stop().await;
    fs::remove_file(boxes[1].root().join("gone.txt")).unwrap();
    converged(&boxes).await;
    let temp = std::mem::replace(&mut laptop.b.temp, tempfile::tempdir().unwrap());
    drop(laptop);
    let back = TestBox::restart_unlistening(temp).await;
    let (handle, stop) = start_sync(&back, &[boxes[0].b.target()], Transport::Tcp);
    boxes.push(SyncBox {
        b: back,
        handle,
        stop,
    });
    let all = converged(&boxes).await;
    assert!(!all.contains_key("gone.txt"), "a deleted file came back");
    assert!(all.contains_key("kept.txt"));
}

/// A box that comes back on another port keeps syncing: the box it dials takes its new
/// session as the same peer (one row in its status, connected, dialed by the peer), and
/// changes flow both ways again.
#[tokio::test(flavor = "multi_thread")]
async fn a_box_restarted_on_a_new_port_keeps_syncing() {
    let boxes = hub(2, Duration::from_secs(1), |_, _| {}).await;
    let mut boxes = boxes;
    let laptop = boxes.pop().unwrap();
    let _ = laptop.stop.send(true);
    let mut laptop = laptop;
    laptop.b.stop().await;
    let temp = std::mem::replace(&mut laptop.b.temp, tempfile::tempdir().unwrap());
    drop(laptop);
    // Back, listening this time, on a port of its own.
    let back = TestBox::start_in(temp).await;
    let (handle, stop) = start_sync(&back, &[boxes[0].b.target()], Transport::Tcp);
    boxes.push(SyncBox {
        b: back,
        handle,
        stop,
    });
    write_file(&boxes[0].root(), "to-laptop.txt", b"down");
    write_file(&boxes[1].root(), "to-hub.txt", b"up");
    let all = converged(&boxes).await;
    assert!(all.contains_key("to-laptop.txt") && all.contains_key("to-hub.txt"));
    let laptop_id = boxes[1].b.local.id.to_string();
    let status = boxes[0].handle.status();
    let rows: Vec<_> = status.peers.iter().filter(|p| p.id == laptop_id).collect();
    assert_eq!(rows.len(), 1, "{status:?}");
    assert!(rows[0].connected, "{status:?}");
    assert_eq!(rows[0].dialed_by, Some("peer"), "{status:?}");
}

/// Two boxes that dial each other at once end up with one session, the same one on both
/// sides.
#[tokio::test(flavor = "multi_thread")]
async fn both_boxes_dialing_at_once_keep_one_session() {
    let boxes = mesh(2, Transport::Tcp, |i, root| {
        write_file(root, &format!("from{i}.txt"), b"x");
    })
    .await;
    converged(&boxes).await;
    settle(&boxes).await;
    let (a, b) = (&boxes[0].b.local, &boxes[1].b.local);
    let one_session = eventually(CONVERGE, || {
        match (a.links.get(&b.id), b.links.get(&a.id)) {
            (Some(ab), Some(ba)) => {
                ab.dialed_here() != ba.dialed_here()
                    && ab.mux.info().local_addr == ba.mux.info().peer_addr
                    && ab.mux.info().peer_addr == ba.mux.info().local_addr
            }
            _ => false,
        }
    })
    .await;
    assert!(one_session, "the boxes did not settle on one session");
    assert_eq!(a.links.connected().len(), 1);
    assert_eq!(b.links.connected().len(), 1);
}

/// A peer that does not trust this box, and one that does not sync back, are reported as
/// such, never as in sync, and the prompt's mark is not ✓.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_does_not_trust_or_sync_back_is_reported() {
    let distrustful = TestBox::start().await;
    let a = TestBox::start().await;
    let (handle, _stop) = start_sync(&a, &[distrustful.target()], Transport::Tcp);
    let reported = eventually(CONVERGE, || {
        handle
            .status()
            .peers
            .first()
            .is_some_and(|p| p.state == "does not trust this box")
    })
    .await;
    assert!(reported, "{:?}", handle.status());
    assert!(!handle.healthy());

    // It trusts this box now, but runs no sync: one-way.
    distrustful.trust(&a);
    let one_way = eventually(CONVERGE, || {
        handle
            .status()
            .peers
            .first()
            .is_some_and(|p| p.state == "one-way: it does not sync back")
    })
    .await;
    assert!(one_way, "{:?}", handle.status());
    assert!(!handle.healthy());
}

/// A file both boxes held before they first met is agreed on both, whichever box pulled
/// first: deleted on the first box before the other ran a round, it is deleted there too,
/// not left on one box while each waits for the other.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_found_identical_is_agreed_on_both_boxes() {
    let a = TestBox::start().await;
    let b = TestBox::start().await;
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for root in [a.root(), b.root()] {
        write_file(&root, "both.txt", b"the same bytes");
        fs::File::options()
            .write(true)
            .open(root.join("both.txt"))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    a.trust(&b);
    b.trust(&a);
    let hour = Duration::from_secs(3600);
    let (ha, stop_a) = start_sync_every(&a, &[b.target()], Transport::Tcp, hour);
    assert!(
        eventually(CONVERGE, || ha.status().rounds >= 1).await,
        "no first round on a"
    );
    fs::remove_file(a.root().join("both.txt")).unwrap();
    let (hb, stop_b) = start_sync_every(&b, &[a.target()], Transport::Tcp, hour);
    assert!(
        eventually(CONVERGE, || !b.root().join("both.txt").exists()).await,
        "the deletion never reached b: {:?}",
        hb.status().peers
    );
    assert!(
        !a.root().join("both.txt").exists(),
        "the file came back on a"
    );
    drop((ha, hb));
    let _ = stop_a.send(true);
    let _ = stop_b.send(true);
}
