//! Every command against a real box on 127.0.0.1:0: index in all its forms, hashes checked
//! against coreutils, TCP downloads that keep mtime and mode and never lose a replaced file.

use std::fs;
use std::ops::ControlFlow;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use boxsync::peer::Streamed;
use boxsync::share::DIRECTORY_TYPE;
use boxsync::share::filter::IndexFilter;
use boxsync::time::Timestamp;

use crate::util::{TestBox, bytes, coreutils_hashes, eventually, files_under, rel, write_file};

/// A peer folder with subfolders, spaces, non-ASCII names, an empty file and an empty folder.
async fn sample_box() -> TestBox {
    let b = TestBox::start().await;
    b.write("hello.txt", b"hello\n");
    b.write("with space.txt", b"spaced\n");
    b.write("música/canción ñ.mp3", &bytes(10_000, 1));
    b.write("docs/guide/intro.md", b"# intro\n");
    b.write("docs/readme.md", b"# readme\n");
    b.write("empty.bin", b"");
    fs::create_dir_all(b.root().join("empty dir")).unwrap();
    b
}

/// longlist lists every entry recursively with sizes, types and directories, never the
/// box's own state folder.
#[tokio::test(flavor = "multi_thread")]
async fn longlist_lists_everything() {
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let entries = b.peer_for(&me).index(&IndexFilter::Longlist).await.unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "docs",
            "docs/guide",
            "docs/guide/intro.md",
            "docs/readme.md",
            "empty dir",
            "empty.bin",
            "hello.txt",
            "música",
            "música/canción ñ.mp3",
            "with space.txt",
        ]
    );
    let find = |n: &str| entries.iter().find(|e| e.name.as_str() == n).unwrap();
    assert_eq!(find("música/canción ñ.mp3").size, 10_000);
    assert_eq!(find("música/canción ñ.mp3").file_type, "audio/mpeg");
    assert_eq!(find("hello.txt").file_type, "text/plain");
    assert_eq!(find("empty.bin").size, 0);
    assert_eq!(find("docs").file_type, DIRECTORY_TYPE);
    let mtime = fs::metadata(b.root().join("hello.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(find("hello.txt").mtime, Timestamp::from_system(mtime));
}

/// shortlist keeps exactly the entries modified inside the inclusive window.
#[tokio::test(flavor = "multi_thread")]
async fn shortlist_filters_by_modification_time() {
    let b = TestBox::start().await;
    let old = b.write("old.txt", b"old");
    let new = b.write("new.txt", b"new");
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(at(1_000_000))
        .unwrap();
    fs::File::options()
        .write(true)
        .open(&new)
        .unwrap()
        .set_modified(at(2_000_000))
        .unwrap();
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let window = |start: u64, end: u64| IndexFilter::Shortlist {
        start: Timestamp::from_system(at(start)),
        end: Timestamp::from_system(at(end)),
    };
    let names = |entries: Vec<boxsync::share::Entry>| {
        entries
            .into_iter()
            .map(|e| e.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(peer.index(&window(1_500_000, 2_500_000)).await.unwrap()),
        ["new.txt"]
    );
    // Both ends are inclusive.
    assert_eq!(
        names(peer.index(&window(1_000_000, 2_000_000)).await.unwrap()),
        ["new.txt", "old.txt"]
    );
    assert!(
        peer.index(&window(3_000_000, 4_000_000))
            .await
            .unwrap()
            .is_empty()
    );
}

/// regex searches paths; glob matches names at any depth or whole paths with a slash.
#[tokio::test(flavor = "multi_thread")]
async fn regex_and_glob_filters() {
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let names = |entries: Vec<boxsync::share::Entry>| {
        entries
            .into_iter()
            .map(|e| e.name.to_string())
            .collect::<Vec<_>>()
    };
    let regex = IndexFilter::Regex {
        pattern: r"\.txt$".into(),
    };
    assert_eq!(
        names(peer.index(&regex).await.unwrap()),
        ["hello.txt", "with space.txt"]
    );
    let glob = IndexFilter::Glob {
        pattern: "*.md".into(),
    };
    assert_eq!(
        names(peer.index(&glob).await.unwrap()),
        ["docs/guide/intro.md", "docs/readme.md"]
    );
    let glob = IndexFilter::Glob {
        pattern: "docs/**/*.md".into(),
    };
    assert_eq!(
        names(peer.index(&glob).await.unwrap()),
        ["docs/guide/intro.md", "docs/readme.md"]
    );
    let glob = IndexFilter::Glob {
        pattern: "*ñ*".into(),
    };
    assert_eq!(
        names(peer.index(&glob).await.unwrap()),
        ["música/canción ñ.mp3"]
    );
}

/// A server refuses an invalid pattern sent by a client that skipped validation, with a
/// clear error, and keeps serving on the same connection.
#[tokio::test(flavor = "multi_thread")]
async fn server_refuses_bad_patterns() {
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let error = peer
        .index(&IndexFilter::Regex {
            pattern: "(".into(),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid regex"), "{error}");
    assert!(peer.index(&IndexFilter::Longlist).await.is_ok());
}

/// hash verify and checkall agree with md5sum and sha256sum, for empty, small, non-ASCII
/// and multi-megabyte files.
#[tokio::test(flavor = "multi_thread")]
async fn hashes_match_coreutils() {
    let b = sample_box().await;
    b.write("big/data.bin", &bytes(5 * 1024 * 1024 + 7, 9));
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    for name in [
        "hello.txt",
        "empty.bin",
        "música/canción ñ.mp3",
        "big/data.bin",
    ] {
        let hash = peer.hash(&rel(name)).await.unwrap();
        let (md5, sha256) = coreutils_hashes(&b.root().join(name));
        assert_eq!(
            (hash.md5, hash.sha256),
            (Some(md5.into()), Some(sha256.into())),
            "{name}"
        );
    }
    let all = peer.hash_all().await.unwrap();
    assert_eq!(all.len(), 7, "every file, no directory");
    for hash in all {
        let (md5, sha256) = coreutils_hashes(&b.root().join(hash.name.as_str()));
        assert_eq!(
            (hash.md5, hash.sha256),
            (Some(md5.into()), Some(sha256.into())),
            "{}",
            hash.name
        );
    }
}

/// A second checkall of an unchanged folder reads no file data, even after a restart
/// (the cache is persisted); a changed file is hashed again.
#[tokio::test(flavor = "multi_thread")]
async fn hash_cache_avoids_rereading() {
    let mut b = sample_box().await;
    let (_t, me) = TestBox::client();
    b.peer_for(&me).hash_all().await.unwrap();
    let read = b.local.share.hash_cache().bytes_hashed();
    assert!(read > 0);
    b.peer_for(&me).hash_all().await.unwrap();
    assert_eq!(
        b.local.share.hash_cache().bytes_hashed(),
        read,
        "unchanged files were read"
    );

    b.stop().await;
    let temp = std::mem::replace(&mut b.temp, tempfile::tempdir().unwrap());
    drop(b);
    let b = TestBox::start_in(temp).await;
    b.peer_for(&me).hash_all().await.unwrap();
    assert_eq!(
        b.local.share.hash_cache().bytes_hashed(),
        0,
        "restart rehashed"
    );

    b.write("hello.txt", b"changed\n");
    let hash = b.peer_for(&me).hash(&rel("hello.txt")).await.unwrap();
    assert_eq!(b.local.share.hash_cache().bytes_hashed(), 8);
    assert_eq!(
        hash.sha256,
        Some(coreutils_hashes(&b.root().join("hello.txt")).1.into())
    );
}

/// A TCP download lands at the same relative path with the same bytes, mtime and mode,
/// reports progress up to the full size, and leaves nothing in the temporary folder.
#[tokio::test(flavor = "multi_thread")]
async fn download_keeps_content_mtime_and_mode() {
    let b = sample_box().await;
    let content = bytes(6 * 1024 * 1024 + 3, 4);
    let remote = b.write("deep/er/data file ü.bin", &content);
    fs::set_permissions(&remote, fs::Permissions::from_mode(0o640)).unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    fs::File::options()
        .write(true)
        .open(&remote)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let (_t, me) = TestBox::client();
    let mut last = (0, 0);
    let mut progress = |done, total| last = (done, total);
    let done = b
        .peer_for(&me)
        .download_tcp(&rel("deep/er/data file ü.bin"), &mut progress)
        .await
        .unwrap();
    let local = me.share.root().join("deep/er/data file ü.bin");
    assert_eq!(fs::read(&local).unwrap(), content);
    let meta = fs::metadata(&local).unwrap();
    assert_eq!(meta.modified().unwrap(), mtime);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(last, (content.len() as u64, content.len() as u64));
    let (md5, sha256) = coreutils_hashes(&local);
    assert_eq!((done.md5, done.sha256), (Some(md5), Some(sha256)));
    assert_eq!(done.path, local);
    assert!(files_under(&me.share.state_dir().join("tmp")).is_empty());
}

/// Empty files and top-level names download too.
#[tokio::test(flavor = "multi_thread")]
async fn download_empty_file() {
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let mut progress = |_, _| {};
    b.peer_for(&me)
        .download_tcp(&rel("empty.bin"), &mut progress)
        .await
        .unwrap();
    assert_eq!(fs::read(me.share.root().join("empty.bin")).unwrap(), b"");
}

/// A local file that a download replaces moves to `.boxsync/trash/`, intact.
#[tokio::test(flavor = "multi_thread")]
async fn replaced_file_goes_to_trash() {
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    crate::util::write_file(me.share.root(), "hello.txt", b"my precious local edit\n");
    let mut progress = |_, _| {};
    let done = b
        .peer_for(&me)
        .download_tcp(&rel("hello.txt"), &mut progress)
        .await
        .unwrap();
    assert_eq!(
        fs::read(me.share.root().join("hello.txt")).unwrap(),
        b"hello\n"
    );
    let kept = done.replaced.expect("previous version kept");
    assert!(kept.starts_with(me.share.state_dir().join("trash")));
    assert!(kept.ends_with("hello.txt"));
    assert_eq!(fs::read(kept).unwrap(), b"my precious local edit\n");
}

/// Missing files, directories and refused names give clear errors and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn download_errors_are_clear() {
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let mut progress = |_, _| {};
    let error = peer
        .download_tcp(&rel("nope.txt"), &mut progress)
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "no such file: 'nope.txt'");
    let error = peer
        .download_tcp(&rel("docs"), &mut progress)
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "'docs' is a directory");
    let error = peer.hash(&rel("nope.txt")).await.unwrap_err();
    assert_eq!(error.to_string(), "no such file: 'nope.txt'");
    assert!(
        files_under(me.share.root())
            .iter()
            .all(|p| p.starts_with(".boxsync"))
    );
}

/// Made and served requests are logged on each side, and the log survives a restart.
#[tokio::test(flavor = "multi_thread")]
async fn history_records_made_and_served() {
    let b = sample_box().await;
    let (temp, me) = TestBox::client();
    let peer = b.peer_for(&me);
    peer.index(&IndexFilter::Longlist).await.unwrap();
    let _ = peer.hash(&rel("nope")).await;
    let made = me.history.records().unwrap();
    assert_eq!(made.len(), 2);
    assert_eq!(made[0].request, "index longlist");
    assert_eq!(made[0].outcome, "ok");
    assert_eq!(made[1].request, "hash verify nope");
    assert!(made[1].outcome.contains("no such file"));
    // The server logs a request after answering it: give it a moment.
    let logged = || b.local.history.records().unwrap().len() >= 2;
    assert!(eventually(Duration::from_secs(10), logged).await);
    let served = b.local.history.records().unwrap();
    assert_eq!(served.len(), 2);
    assert_eq!(served[0].direction, boxsync::history::Direction::Served);

    drop(peer);
    drop(me);
    // The session's tasks let go of the box (and its lock on the folder) as they wind
    // down: reopening waits for that, within a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match boxsync::local::LocalBox::open(&temp.path().join("shared")) {
            Ok(reopened) => break reopened,
            Err(boxsync::local::OpenError::Share(boxsync::share::ShareError::Busy { .. }))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen the box: {e}"),
        }
    };
    assert_eq!(reopened.history.records().unwrap().len(), 2);
}

/// One persistent connection serves many requests in a row.
#[tokio::test(flavor = "multi_thread")]
async fn one_connection_serves_many_requests() {
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    for _ in 0..50 {
        peer.index(&IndexFilter::Longlist).await.unwrap();
        peer.hash(&rel("hello.txt")).await.unwrap();
    }
}

/// Large listings arrive complete across several batches.
#[tokio::test(flavor = "multi_thread")]
async fn large_listing_spans_batches() {
    let b = TestBox::start().await;
    for i in 0..3000 {
        b.write(&format!("many/{}-{i:05}.txt", "x".repeat(100)), b"");
    }
    let (_t, me) = TestBox::client();
    let entries = b.peer_for(&me).index(&IndexFilter::Longlist).await.unwrap();
    assert_eq!(entries.len(), 3001);
}

/// A conditional listing (what sync sends every rescan) answers `unchanged` while the
/// folder is the same, for the index and the hashes alike, and a new listing with a new
/// version as soon as anything changed; such routine requests stay out of the request log.
#[tokio::test(flavor = "multi_thread")]
async fn conditional_listings_answer_unchanged_until_something_changes() {
    use boxsync::peer::Listing;
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let Listing::Listed { items, version } =
        peer.index_unless(&IndexFilter::Longlist, "").await.unwrap()
    else {
        panic!("a first conditional index must list");
    };
    assert_eq!(items.len(), 10);
    assert!(matches!(
        peer.index_unless(&IndexFilter::Longlist, &version)
            .await
            .unwrap(),
        Listing::Unchanged
    ));
    assert!(matches!(
        peer.hash_all_unless(&version).await.unwrap(),
        Listing::Unchanged
    ));
    b.write("docs/new.txt", b"new\n");
    let Listing::Listed {
        items: hashes,
        version: changed,
    } = peer.hash_all_unless(&version).await.unwrap()
    else {
        panic!("a changed folder must be listed again");
    };
    assert_ne!(changed, version);
    assert!(hashes.iter().any(|h| h.name == rel("docs/new.txt")));
    let Listing::Listed { items, .. } = peer
        .index_unless(&IndexFilter::Longlist, &version)
        .await
        .unwrap()
    else {
        panic!("a changed folder must be listed again");
    };
    assert!(items.iter().any(|e| e.name == rel("docs/new.txt")));
    assert!(matches!(
        peer.index_unless(&IndexFilter::Longlist, &changed)
            .await
            .unwrap(),
        Listing::Unchanged
    ));
    let logged = me.history.records().unwrap();
    assert!(
        logged.is_empty(),
        "routine requests were logged: {logged:?}"
    );
}

/// `changes` (sync's listing): the first answer is the whole folder; later ones list only
/// what changed since the mark sent, nothing when nothing did; a removal is listed as one.
/// The marks survive a restart: a box back up answers a mark from before with only what
/// changed while it was down, and a mark it cannot honour with the whole folder.
#[tokio::test(flavor = "multi_thread")]
async fn changes_list_only_what_changed_since_a_mark_even_across_a_restart() {
    use boxsync::requests::changes::Change;
    let names = |changes: &[Change]| -> Vec<String> {
        let mut names: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Present { entry, .. } => entry.name.as_str().to_string(),
                Change::Removed { removed } => format!("-{removed}"),
            })
            .collect();
        names.sort();
        names
    };
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let first = peer.changes(None).await.unwrap();
    assert!(first.whole);
    assert_eq!(first.changes.len(), 10, "{:?}", names(&first.changes));
    let same = peer.changes(Some(first.mark)).await.unwrap();
    assert!(!same.whole && same.changes.is_empty(), "{same:?}");
    assert_eq!(same.mark, first.mark);
    b.write("docs/readme.md", b"# readme, edited\n");
    fs::remove_file(b.root().join("hello.txt")).unwrap();
    let later = peer.changes(Some(first.mark)).await.unwrap();
    assert!(!later.whole);
    assert_eq!(names(&later.changes), vec!["-hello.txt", "docs/readme.md"]);
    assert!(later.mark.seq > first.mark.seq);
    // Down and up again, with one more change made meanwhile.
    let mut b = b;
    let addr = b.addr;
    b.stop().await;
    let temp = std::mem::replace(&mut b.temp, tempfile::tempdir().unwrap());
    drop(b);
    write_file(&temp.path().join("shared"), "while-down.txt", b"new\n");
    let b = TestBox::restart_at(temp, addr).await;
    let peer = b.peer_for(&me);
    let after = peer.changes(Some(later.mark)).await.unwrap();
    assert!(!after.whole, "a restart cost a whole listing");
    assert_eq!(names(&after.changes), vec!["while-down.txt"]);
    assert_eq!(after.mark.epoch, first.mark.epoch);
    // A mark from another epoch, or ahead of the numbering, gets the whole folder.
    for odd in [
        boxsync::share::ChangeMark {
            epoch: after.mark.epoch ^ 1,
            seq: after.mark.seq,
        },
        boxsync::share::ChangeMark {
            epoch: after.mark.epoch,
            seq: after.mark.seq + 1,
        },
    ] {
        let whole = peer.changes(Some(odd)).await.unwrap();
        assert!(whole.whole, "{odd:?}");
        assert_eq!(whole.changes.len(), 10);
    }
}

/// Sync's listings leave MD5 out (it is the slower digest and sync compares SHA-256), yet a
/// person's `hash checkall` afterwards still shows the right MD5 for every file.
#[tokio::test(flavor = "multi_thread")]
async fn md5_is_computed_when_a_person_asks() {
    use boxsync::peer::Listing;
    let b = sample_box().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let Listing::Listed { items, .. } = peer.hash_all_unless("").await.unwrap() else {
        panic!("a first conditional checkall must list");
    };
    assert!(!items.is_empty());
    assert!(items.iter().all(|h| h.md5.is_none()), "{items:?}");
    for hash in peer.hash_all().await.unwrap() {
        let (md5, sha256) = coreutils_hashes(&hash.name.under(&b.root()));
        assert_eq!(
            (hash.md5, hash.sha256),
            (Some(md5.into()), Some(sha256.into())),
            "{}",
            hash.name
        );
    }
}

/// A listing taken batch by batch is the collected listing, in several batches; stopping
/// it after the first batch reads no more, and the peer answers the next request at once.
#[tokio::test(flavor = "multi_thread")]
async fn listings_stream_batch_by_batch() {
    let b = TestBox::start().await;
    // Long names: a few hundred per batch.
    for i in 0..2000 {
        b.write(&format!("{:0>100}.txt", i), b"x");
    }
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let whole = peer.index(&IndexFilter::Longlist).await.unwrap();
    let mut batches = Vec::new();
    let ended = peer
        .index_each(&IndexFilter::Longlist, |batch| {
            batches.push(batch);
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(ended, Streamed::Complete);
    assert!(batches.len() > 2, "{} batches", batches.len());
    assert_eq!(batches.concat(), whole);
    let mut seen = 0;
    let ended = peer
        .hash_all_each(|batch| {
            seen += batch.len();
            ControlFlow::Break(())
        })
        .await
        .unwrap();
    assert_eq!(ended, Streamed::Stopped);
    assert!(seen > 0 && seen < 2000, "{seen}");
    let hashes = peer.hash_all().await.unwrap();
    assert_eq!(hashes.len(), 2000);
}

/// What `.boxsyncignore` names is never listed, hashed or served to a peer, over TCP or
/// UDP: a `!` takes back a name but not a path inside an ignored folder, and `(?i)`
/// ignores case. The refusal is the one for a file that is not there.
#[tokio::test(flavor = "multi_thread")]
async fn ignored_paths_are_never_served() {
    let b = TestBox::start().await;
    b.write(
        ".boxsyncignore",
        b"*.key\nbuild/\n!build/keep.txt\n(?i)*.env\n*.log\n!keep.log\n",
    );
    for name in [
        "a.txt",
        "secret.key",
        "sub/deep.key",
        "build/out.o",
        "build/keep.txt",
        "PROD.ENV",
        "noise.log",
        "keep.log",
    ] {
        b.write(name, name.as_bytes());
    }
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let listed: Vec<String> = peer
        .index(&IndexFilter::Longlist)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.name.to_string())
        .collect();
    assert_eq!(listed, ["a.txt", "keep.log", "sub"]);
    let hashed: Vec<String> = peer
        .hash_all()
        .await
        .unwrap()
        .into_iter()
        .map(|hash| hash.name.to_string())
        .collect();
    assert_eq!(hashed, ["a.txt", "keep.log"]);
    let not_found = |e: &boxsync::peer::PeerError| {
        matches!(
            e,
            boxsync::peer::PeerError::Remote {
                kind: boxsync::protocol::ErrorKind::NotFound,
                ..
            }
        ) || e.to_string().contains("no such file")
    };
    let mut progress = |_, _| {};
    for name in [
        "secret.key",
        "sub/deep.key",
        "build/keep.txt",
        "PROD.ENV",
        "noise.log",
    ] {
        let e = peer.hash(&rel(name)).await.unwrap_err();
        assert!(not_found(&e), "hash {name}: {e}");
        let e = peer
            .download_tcp(&rel(name), &mut progress)
            .await
            .unwrap_err();
        assert!(not_found(&e), "download tcp {name}: {e}");
        let e = peer
            .download_udp(&rel(name), None, &mut progress)
            .await
            .unwrap_err();
        assert!(not_found(&e), "download udp {name}: {e}");
    }
    assert!(peer.hash(&rel("keep.log")).await.is_ok());
    let landed: Vec<_> = files_under(me.share.root())
        .into_iter()
        .filter(|path| !path.starts_with(boxsync::share::STATE_DIR))
        .collect();
    assert!(landed.is_empty(), "{landed:?}");
}

/// A change to `.boxsyncignore` takes effect at once, without a restart: a file just
/// ignored is no longer listed, and one no longer ignored is listed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_ignore_file_applies_at_once() {
    let b = TestBox::start().await;
    b.write("a.txt", b"a");
    b.write("b.key", b"b");
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let names = || async {
        peer.index(&IndexFilter::Longlist)
            .await
            .unwrap()
            .into_iter()
            .map(|entry| entry.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names().await, ["a.txt", "b.key"]);
    b.write(".boxsyncignore", b"*.key\n");
    assert_eq!(names().await, ["a.txt"]);
    b.write(".boxsyncignore", b"# the other way now\n*.txt\n");
    assert_eq!(names().await, ["b.key"]);
}

/// Tab's names (the shell's cache of the peer's files): once the list is older than its
/// freshness (15 s in the shell, 2 s here), the next Tab fetches the peer's names again
/// and waits for them, so a file made on the peer meanwhile completes at once rather than
/// one Tab later.
#[tokio::test(flavor = "multi_thread")]
async fn tab_names_follow_the_peer_after_idle() {
    let b = TestBox::start().await;
    b.write("old.txt", b"o");
    let (_t, me) = TestBox::client();
    let peer = std::sync::Arc::new(b.peer_for(&me));
    let fresh_for = Duration::from_secs(2);
    let names =
        boxsync::shell::names::RemoteNames::fresh_for(tokio::runtime::Handle::current(), fresh_for);
    let tab = {
        let (names, peer) = (names.clone(), std::sync::Arc::clone(&peer));
        move || {
            let (names, peer) = (names.clone(), std::sync::Arc::clone(&peer));
            async move {
                tokio::task::spawn_blocking(move || {
                    names.files(&peer, Duration::from_secs(10)).as_ref().clone()
                })
                .await
                .unwrap()
            }
        }
    };
    assert_eq!(tab().await, vec!["old.txt"]);
    b.write("new.txt", b"n");
    // Fresh: the cached list, without asking the peer.
    assert_eq!(tab().await, vec!["old.txt"]);
    let fetched = std::time::Instant::now();
    // Idle until the list is stale (a wait for time itself, not for another task).
    assert!(eventually(Duration::from_secs(10), || fetched.elapsed() > fresh_for).await);
    assert_eq!(tab().await, vec!["new.txt", "old.txt"]);
}
