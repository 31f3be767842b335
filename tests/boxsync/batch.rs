//! Batch downloads (`download_many`), what sync uses for small files: each file verified
//! and installed as safely as a single download, a file that fails fails alone, and
//! nothing half-written is ever left behind.

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::Arc;

use boxsync::peer::{Peer, PeerError};
use boxsync::protocol::message::{FileEnd, FileStart};
use boxsync::protocol::{ErrorKind, Response};
use boxsync::requests::Request;
use boxsync::share::{Digests, Expect};
use boxsync::time::Timestamp;
use boxsync::transfer::{Landing, TransferError, Wanted};
use boxsync::types::{Agreement, FileVersion, PeerAddress};

use crate::util::{TestBox, bytes, files_under, rel, scripted_peer};

/// Each name landing under the same name, replacing whatever is there.
fn same_names(names: &[&str]) -> Vec<Wanted> {
    names
        .iter()
        .map(|name| Wanted {
            name: rel(name),
            landing: Landing::same_name(&rel(name)),
        })
        .collect()
}

/// Files visible in the shared folder (not the box's state).
fn visible(root: &std::path::Path) -> Vec<String> {
    files_under(root)
        .into_iter()
        .filter(|p| !p.starts_with(".boxsync"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Partial downloads left under `.boxsync/tmp/`.
fn partials(me: &boxsync::local::LocalBox) -> Vec<std::path::PathBuf> {
    files_under(&me.share.state_dir().join("tmp"))
}

fn remote_kind(result: &Result<boxsync::transfer::Downloaded, PeerError>) -> Option<ErrorKind> {
    match result {
        Err(PeerError::Transfer(TransferError::Remote { kind, .. })) => Some(*kind),
        _ => None,
    }
}

/// A batch with good files, a missing one, a directory and symlinks: the good files arrive
/// byte for byte with their mode and mtime, each bad one fails with the peer's reason, and
/// nothing outside the folder is read or written.
#[tokio::test(flavor = "multi_thread")]
async fn batch_installs_the_good_files_and_fails_the_bad_ones_alone() {
    let outer = tempfile::tempdir().unwrap();
    fs::write(outer.path().join("secret.txt"), b"secret").unwrap();
    let b = TestBox::start().await;
    b.write("a.txt", b"alpha");
    let deep = b.write("sub/dir/b.bin", &bytes(300_000, 7));
    fs::set_permissions(&deep, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    b.write("empty", b"");
    fs::create_dir(b.root().join("folder")).unwrap();
    symlink(outer.path().join("secret.txt"), b.root().join("link.txt")).unwrap();
    symlink(outer.path(), b.root().join("linkdir")).unwrap();
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let names = [
        "a.txt",
        "missing.txt",
        "sub/dir/b.bin",
        "folder",
        "link.txt",
        "linkdir/secret.txt",
        "empty",
    ];
    let results = peer.download_batch(&same_names(&names)).await.unwrap();
    assert_eq!(results.len(), names.len());
    for (name, result) in names.iter().zip(&results) {
        match *name {
            "a.txt" | "sub/dir/b.bin" | "empty" => {
                let downloaded = result.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
                let here = me.share.root().join(name);
                assert_eq!(
                    fs::read(&here).unwrap(),
                    fs::read(b.root().join(name)).unwrap()
                );
                let content = fs::read(&here).unwrap();
                assert_eq!(
                    downloaded.version.blake3,
                    blake3::hash(&content).to_hex().to_string(),
                    "{name}"
                );
                // Sync's batches carry BLAKE3 alone: SHA-256 and MD5 are for people.
                assert_eq!((&downloaded.sha256, &downloaded.md5), (&None, &None));
                let there = fs::metadata(b.root().join(name)).unwrap();
                let mine = fs::metadata(&here).unwrap();
                assert_eq!(
                    mine.modified().unwrap(),
                    there.modified().unwrap(),
                    "{name}"
                );
                assert_eq!(mine.permissions(), there.permissions(), "{name}");
            }
            "missing.txt" => assert_eq!(remote_kind(result), Some(ErrorKind::NotFound)),
            _ => assert_eq!(remote_kind(result), Some(ErrorKind::Refused), "{name}"),
        }
    }
    assert_eq!(
        visible(me.share.root()),
        ["a.txt", "empty", "sub/dir/b.bin"]
    );
    assert!(partials(&me).is_empty(), "{:?}", partials(&me));
    assert_eq!(
        fs::read(outer.path().join("secret.txt")).unwrap(),
        b"secret"
    );
    // The connection stayed usable after the per-file errors.
    assert!(peer.hash(&rel("a.txt")).await.is_ok());
}

/// Big files whose digests the server already knows go from its page cache straight to
/// the socket: in a batch, between small answers queued before and after them, every file
/// still arrives whole and verified, and the connection stays in step.
#[tokio::test(flavor = "multi_thread")]
async fn known_big_files_are_sent_in_step_with_small_ones() {
    let b = TestBox::start().await;
    b.write("a.txt", b"alpha");
    b.write("big1.bin", &bytes(600_000, 3));
    b.write("m.txt", b"middle");
    b.write("big2.bin", &bytes(1_000_000, 5));
    b.write("z.txt", b"omega");
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    // The server hashes its folder: now it knows every file's digests.
    assert_eq!(peer.hash_all().await.unwrap().len(), 5);
    let names = ["a.txt", "big1.bin", "m.txt", "big2.bin", "z.txt"];
    let results = peer.download_batch(&same_names(&names)).await.unwrap();
    for (name, result) in names.iter().zip(&results) {
        let downloaded = result.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        let content = fs::read(me.share.root().join(name)).unwrap();
        assert_eq!(content, fs::read(b.root().join(name)).unwrap(), "{name}");
        assert_eq!(
            downloaded.version.blake3,
            blake3::hash(&content).to_hex().to_string()
        );
    }
    // And a single download of a known big file, then a request on the same connection.
    fs::remove_file(me.share.root().join("big2.bin")).unwrap();
    let landing = Landing::same_name(&rel("big2.bin"));
    peer.download_tcp_to(&rel("big2.bin"), &landing, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        fs::read(me.share.root().join("big2.bin")).unwrap(),
        fs::read(b.root().join("big2.bin")).unwrap()
    );
    assert!(peer.hash(&rel("a.txt")).await.is_ok());
    assert!(partials(&me).is_empty(), "{:?}", partials(&me));
}

/// A local file that changed since sync planned (it expected nothing there) is kept, not
/// replaced; the other files of the batch still land, and the trash stays empty.
#[tokio::test(flavor = "multi_thread")]
async fn batch_never_replaces_a_file_that_changed_here() {
    let b = TestBox::start().await;
    b.write("x.txt", b"theirs");
    b.write("y.txt", b"also theirs");
    let (_t, me) = TestBox::client();
    fs::write(me.share.root().join("x.txt"), b"mine, written meanwhile").unwrap();
    let mut wanted = same_names(&["x.txt", "y.txt"]);
    wanted[0].landing.expect = Expect::Absent;
    wanted[1].landing.expect = Expect::Absent;
    let results = b.peer_for(&me).download_batch(&wanted).await.unwrap();
    assert!(
        matches!(
            &results[0],
            Err(PeerError::Transfer(TransferError::Local(
                boxsync::share::ShareError::Changed(_)
            )))
        ),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_ok(), "{:?}", results[1]);
    let root = me.share.root();
    assert_eq!(
        fs::read(root.join("x.txt")).unwrap(),
        b"mine, written meanwhile"
    );
    assert_eq!(fs::read(root.join("y.txt")).unwrap(), b"also theirs");
    assert!(partials(&me).is_empty());
    assert!(files_under(&me.share.state_dir().join("trash")).is_empty());
}

/// What a scripted server says about one file of a batch.
enum Answer {
    /// The file, honestly.
    Good(&'static [u8]),
    /// The bytes, then "it changed while I read it".
    ChangedMidway(&'static [u8]),
    /// The bytes with the digests of other bytes.
    WrongDigest(&'static [u8]),
    /// Refused before any byte.
    NotFound,
}

fn digests_of(content: &[u8]) -> Digests {
    use sha2::Digest;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Digests {
        blake3: blake3::hash(content).to_hex().to_string().into(),
        sha256: Some(hex(&sha2::Sha256::digest(content)).into()),
        md5: Some(hex(&md5::Md5::digest(content)).into()),
    }
}

/// A one-connection server that answers a `download_many` as `answers` say, then either
/// ends the batch properly or (with `cut`) closes the connection after those answers.
async fn scripted_server(answers: Vec<(&'static str, Answer)>, cut: bool) -> PeerAddress {
    let (addr, _script) = scripted_peer(move |mut connection| async move {
        let request: Request = connection.expect_message().await.unwrap();
        assert!(
            matches!(request, Request::DownloadMany { .. }),
            "{request:?}"
        );
        for (name, answer) in answers {
            let content = match answer {
                Answer::NotFound => {
                    let refusal = Response::Error {
                        kind: ErrorKind::NotFound,
                        message: format!("no such file: '{name}'"),
                    };
                    connection.write_message(&refusal).await.unwrap();
                    continue;
                }
                Answer::Good(c) | Answer::ChangedMidway(c) | Answer::WrongDigest(c) => c,
            };
            let start = Response::FileStart(FileStart {
                name: rel(name),
                size: content.len() as u64,
                mtime: Timestamp::now(),
                mode: 0o644,
            });
            connection.write_message(&start).await.unwrap();
            connection.write_data(content).await.unwrap();
            let end = match answer {
                Answer::ChangedMidway(_) => Response::Error {
                    kind: ErrorKind::Changed,
                    message: format!("'{name}' changed while it was being read"),
                },
                Answer::WrongDigest(_) => Response::FileEnd(FileEnd {
                    digests: digests_of(b"something else"),
                }),
                _ => Response::FileEnd(FileEnd {
                    digests: digests_of(content),
                }),
            };
            connection.write_message(&end).await.unwrap();
        }
        if cut {
            return;
        }
        connection.write_message(&Response::BatchEnd).await.unwrap();
        // Hold the connection until the client is done with it.
        let _ = connection.read_frame().await;
    })
    .await;
    addr
}

/// In one batch: a file that changed while being sent, a file whose bytes do not match
/// the sender's digest, a file that vanished; each fails alone, and the honest files
/// around them land.
#[tokio::test(flavor = "multi_thread")]
async fn files_changing_or_vanishing_mid_batch_fail_alone() {
    let answers = vec![
        ("one.txt", Answer::Good(b"first")),
        ("changing.txt", Answer::ChangedMidway(b"half of a")),
        ("lying.txt", Answer::WrongDigest(b"not what was hashed")),
        ("gone.txt", Answer::NotFound),
        ("five.txt", Answer::Good(b"fifth")),
    ];
    let names: Vec<&str> = answers.iter().map(|(n, _)| *n).collect();
    let addr = scripted_server(answers, false).await;
    let (_t, me) = TestBox::client();
    let peer = Peer::new(&addr, Arc::clone(&me));
    let results = peer.download_batch(&same_names(&names)).await.unwrap();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_eq!(remote_kind(&results[1]), Some(ErrorKind::Changed));
    assert!(
        matches!(
            &results[2],
            Err(PeerError::Transfer(TransferError::Checksum { .. }))
        ),
        "{:?}",
        results[2]
    );
    assert_eq!(remote_kind(&results[3]), Some(ErrorKind::NotFound));
    assert!(results[4].is_ok(), "{:?}", results[4]);
    assert_eq!(visible(me.share.root()), ["five.txt", "one.txt"]);
    assert_eq!(fs::read(me.share.root().join("one.txt")).unwrap(), b"first");
    assert!(partials(&me).is_empty(), "{:?}", partials(&me));
}

/// The connection breaks in the middle of a batch: the files verified before the break are
/// installed, the rest fail (to be retried next round), and no partial file remains.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_cut_short_keeps_what_arrived_whole() {
    let answers = vec![
        ("one.txt", Answer::Good(b"first")),
        ("two.txt", Answer::Good(b"second")),
    ];
    let addr = scripted_server(answers, true).await;
    let (_t, me) = TestBox::client();
    let peer = Peer::new(&addr, Arc::clone(&me));
    let names = ["one.txt", "two.txt", "three.txt", "four.txt"];
    let results = peer.download_batch(&same_names(&names)).await.unwrap();
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    for result in &results[2..] {
        assert!(
            matches!(
                result,
                Err(PeerError::Transfer(TransferError::Interrupted(_)))
            ),
            "{result:?}"
        );
    }
    assert_eq!(visible(me.share.root()), ["one.txt", "two.txt"]);
    assert!(partials(&me).is_empty(), "{:?}", partials(&me));
}

/// One `installed_many` notice carries many confirmations, in order, exactly as that many
/// `installed` notices would, and they are kept on disk once acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn installed_many_is_noted_like_single_notices() {
    let b = TestBox::start().await;
    let (_t, me) = TestBox::client();
    let peer = b.peer_for(&me);
    let version = |name: &str, sha: char| FileVersion {
        name: rel(name),
        blake3: sha.to_string().repeat(64),
        size: 3,
        mtime: Timestamp::now(),
        mode: 0o644,
    };
    let versions = vec![version("a", 'a'), version("b/c", 'b'), version("a", 'c')];
    peer.confirm_installed_many(versions.clone()).await.unwrap();
    let taken = |b: &TestBox| -> Vec<FileVersion> {
        let noted = b.notices.take_installed(&me.id);
        let held = noted.into_iter().filter_map(|n| match n.version {
            Agreement::Holds(version) => Some(version),
            Agreement::Lacks { .. } => None,
        });
        held.collect()
    };
    assert_eq!(taken(&b), versions);
    assert!(taken(&b).is_empty());
    // Acknowledged is kept: a box killed before its sync recorded them has them again.
    let mut b = b;
    let addr = b.addr;
    b.kill().await;
    let temp = std::mem::replace(&mut b.temp, tempfile::tempdir().unwrap());
    drop(b);
    let b = TestBox::restart_at(temp, addr).await;
    assert_eq!(taken(&b), versions, "acknowledged notices lost in a crash");
}
