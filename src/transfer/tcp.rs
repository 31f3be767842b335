//! File transfer over the box's TCP connection, both ends.
//!
//! Sender: `FileStart`, then exactly `size` bytes in data frames, then `FileEnd` with the
//! digests of the bytes actually read, or `Error{changed}` if the file changed meanwhile.
//! Receiver: writes to a partial file under `.boxsync/tmp/`, computes BLAKE3 as it writes,
//! compares with the sender's, and only then installs the file.
//!
//! Disk reads, writes and hashing run on blocking threads connected to the socket task by
//! small bounded channels, so that disk, hashing and network overlap.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::Link;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::body::{Body, BodyEnd, Next, unexpected};
use super::delta::BlockRanges;
use super::partial::PartialFile;
use super::{Downloaded, Landing, Progress, TransferError, receive_within, send_within};
use crate::protocol::message::{FileEnd, FileStart};
use crate::protocol::{Connection, ConnectionError, Response};
use crate::share::dirs::Dirs;
use crate::share::folder::{self, Fingerprint};
use crate::share::hash::{BackgroundHasher, ContentHasher};
use crate::share::{DigestSet, Digests, InstallMeta, RelPath, Share, ShareError};
use crate::types::FileVersion;
use crate::types::Transport;

/// Bytes per data frame and per disk read.
pub const CHUNK: usize = crate::protocol::frame::DATA_CHUNK;

/// Files up to this size are read whole on the thread that opens them and sent in one
/// flush: a batch serves thousands of small files, and a reading pipeline (a thread hop
/// per chunk, a send per message) cost more than the bytes.
const WHOLE_READ: u64 = CHUNK as u64;

/// Bytes written between two write-back hints on the receiving side.
const WRITE_BEHIND: u64 = 8 * 1024 * 1024;

/// Chunks in flight between the disk thread and the socket task.
const PIPELINE_DEPTH: usize = 8;

/// Serves `rel` on `connection`: the sender side of a TCP download.
///
/// Holds the shared lock on `rel` only while opening it (and reading it, if small): the
/// bytes are then read from the open file, whose fingerprint is checked at the end, so a
/// version replaced meanwhile (sync renames the new one in) is still sent whole, and a
/// client that stops reading holds up no one who wants to replace the file.
///
/// Every write must be taken by the client within `stall`; if not, the send fails with a
/// `TimedOut` connection error (the server then closes the connection). Returns `Ok` once
/// the response is complete (including an `Error` response for a refused or changed file);
/// `Err` only when the connection itself failed.
pub async fn send_file(
    connection: &mut Connection<Link>,
    share: &Arc<Share>,
    rel: &RelPath,
    wanted: DigestSet,
    stall: Duration,
) -> Result<Result<FileVersion, ShareError>, ConnectionError> {
    let guard = share.locks().read(rel).await;
    let opened = {
        let share = Arc::clone(share);
        let rel = rel.clone();
        tokio::task::spawn_blocking(move || {
            open_for_sending(&share, &mut Dirs::open(share.root())?, &rel, wanted)
        })
        .await
        .unwrap_or_else(|e| Err(ShareError::io("<worker>", io::Error::other(e))))
    };
    drop(guard);
    let (file, meta, fingerprint, cached) = match opened {
        Ok(Opened::Streamed(file, meta, fingerprint, cached)) => (file, meta, fingerprint, cached),
        Ok(Opened::Whole(meta, (bytes, digests))) => {
            let served = send_within(stall, async {
                let served = queue_whole(connection, rel, &meta, &bytes, digests).await?;
                connection.flush().await?;
                Ok(served)
            })
            .await?;
            return Ok(Ok(served));
        }
        Err(e) => {
            send_error(connection, &e, stall).await?;
            return Ok(Err(e));
        }
    };
    let size = meta.len();
    send_within(stall, queue_start(connection, rel, &meta)).await?;
    // Digests known without reading the bytes here (cached, or being computed by another
    // reader): the bytes go from the page cache to the socket without a copy.
    if cached.is_some() || share.hash_cache().is_hashing(rel, wanted) {
        let known = Known {
            file,
            fingerprint,
            cached,
            wanted,
        };
        let outcome = send_known(connection, share, rel, known, stall).await?;
        return finish(connection, rel, &meta, outcome, stall).await;
    }

    let (chunks_tx, mut chunks) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let reader = {
        let share = Arc::clone(share);
        let rel = rel.clone();
        tokio::task::spawn_blocking(move || {
            read_stable(
                file,
                size,
                Some(wanted),
                chunks_tx,
                &share,
                &rel,
                fingerprint,
            )?
            .ok_or_else(|| ShareError::io("<worker>", io::Error::other("no digests")))
        })
    };
    while let Some(chunk) = chunks.recv().await {
        send_within(stall, connection.write_data(&chunk)).await?;
    }
    let outcome = reader
        .await
        .unwrap_or_else(|e| Err(ShareError::io("<worker>", io::Error::other(e))));
    finish(connection, rel, &meta, outcome, stall).await
}

/// Serves some blocks of one version of `rel` (a ranged `download`): `file_start`
/// announcing the ranges' bytes, those bytes in order, then `file_end` with the digests of
/// the whole version. Refused as changed unless the file is still the version `ranges`
/// names (by BLAKE3), and checked after the last byte as [`send_file`] checks.
pub async fn send_ranges(
    connection: &mut Connection<Link>,
    share: &Arc<Share>,
    rel: &RelPath,
    wanted: DigestSet,
    ranges: &BlockRanges,
    stall: Duration,
) -> Result<Result<FileVersion, ShareError>, ConnectionError> {
    let guard = share.locks().read(rel).await;
    let opened = {
        let share = Arc::clone(share);
        let rel = rel.clone();
        let ranges = ranges.clone();
        tokio::task::spawn_blocking(move || open_version(&share, &rel, wanted, &ranges))
            .await
            .unwrap_or_else(|e| Err(ShareError::io("<worker>", io::Error::other(e))))
    };
    drop(guard);
    let (file, meta, fingerprint, digests) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            send_error(connection, &e, stall).await?;
            return Ok(Err(e));
        }
    };
    let start = Response::FileStart(FileStart {
        name: rel.clone(),
        size: ranges.total(),
        mtime: folder::modified(&meta),
        mode: folder::mode(&meta),
    });
    send_within(stall, connection.queue_message(&start)).await?;
    let (chunks_tx, mut chunks) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let reader = {
        let share = Arc::clone(share);
        let rel = rel.clone();
        let ranges = ranges.ranges.clone();
        tokio::task::spawn_blocking(move || {
            read_ranges(&file, &ranges, &chunks_tx, &share, &rel)?;
            still_unchanged(&file, &share, &rel, fingerprint)?;
            Ok(digests)
        })
    };
    while let Some(chunk) = chunks.recv().await {
        send_within(stall, connection.write_data(&chunk)).await?;
    }
    let outcome = reader
        .await
        .unwrap_or_else(|e| Err(ShareError::io("<worker>", io::Error::other(e))));
    finish(connection, rel, &meta, outcome, stall).await
}

/// Opens `rel` for a ranged download: the file, its metadata, fingerprint and digests,
/// if it is still the version `ranges` are of and holds them all.
fn open_version(
    share: &Share,
    rel: &RelPath,
    wanted: DigestSet,
    ranges: &BlockRanges,
) -> Result<(File, std::fs::Metadata, Fingerprint, Digests), ShareError> {
    share.check_served(rel)?;
    let mut dirs = Dirs::open(share.root())?;
    let (file, meta) = dirs.open_regular(rel)?;
    let fingerprint = Fingerprint::of(&meta);
    let digests = match share.hash_cache().lookup(rel, &fingerprint, wanted) {
        Some(digests) => digests,
        None => {
            share.hash_cache().hash_file_in(&mut dirs, rel, wanted)?;
            share
                .hash_cache()
                .lookup(rel, &fingerprint, wanted)
                .ok_or_else(|| ShareError::Changed(rel.clone()))?
        }
    };
    let beyond = ranges
        .ranges
        .last()
        .is_some_and(|[offset, len]| offset + len > meta.len());
    if *digests.blake3 != *ranges.blake3 || beyond {
        return Err(ShareError::Changed(rel.clone()));
    }
    Ok((file, meta, fingerprint, digests))
}

/// Reads the bytes of `ranges` of `file` in order into the channel, a chunk at a time.
fn read_ranges(
    file: &File,
    ranges: &[[u64; 2]],
    chunks: &mpsc::Sender<Bytes>,
    share: &Share,
    rel: &RelPath,
) -> Result<(), ShareError> {
    use std::os::unix::fs::FileExt;
    for &[offset, len] in ranges {
        let mut done = 0;
        while done < len {
            let want = (len - done).min(CHUNK as u64) as usize;
            let mut buffer = vec![0; want];
            file.read_exact_at(&mut buffer, offset + done)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => ShareError::Changed(rel.clone()),
                    _ => ShareError::io(rel.under(share.root()), e),
                })?;
            done += want as u64;
            if chunks.blocking_send(Bytes::from(buffer)).is_err() {
                return Err(ShareError::io(
                    rel.under(share.root()),
                    io::ErrorKind::BrokenPipe.into(),
                ));
            }
        }
    }
    Ok(())
}

/// Ends a sent file: `file_end` with its digests, or the error that replaces it.
async fn finish(
    connection: &mut Connection<Link>,
    rel: &RelPath,
    meta: &std::fs::Metadata,
    outcome: Result<Digests, ShareError>,
    stall: Duration,
) -> Result<Result<FileVersion, ShareError>, ConnectionError> {
    match outcome {
        Ok(digests) => {
            let served = send_within(stall, async {
                let served = queue_end(connection, rel, meta, digests).await?;
                connection.flush().await?;
                Ok(served)
            })
            .await?;
            Ok(Ok(served))
        }
        Err(e) => {
            send_error(connection, &e, stall).await?;
            Ok(Err(e))
        }
    }
}

/// A file opened for sending whose digests need not be computed while it is sent.
struct Known {
    /// The open file.
    file: File,
    /// Its fingerprint when opened.
    fingerprint: Fingerprint,
    /// Its digests, if the cache knew them (else another reader is computing them).
    cached: Option<Digests>,
    /// Which digests are wanted.
    wanted: DigestSet,
}

/// Sends the body of a file whose digests need not be computed here (cached, or being
/// computed by another reader), then checks that the file still has the fingerprint it
/// had when opened and returns its digests. The bytes are read but not hashed: on a
/// gigabyte, hashing is most of the sender's work. (They cannot go from the page cache to
/// the socket with `sendfile`: the link encrypts them in this process.)
/// Every chunk must be taken by the receiver within `stall`.
async fn send_known(
    connection: &mut Connection<Link>,
    share: &Arc<Share>,
    rel: &RelPath,
    known: Known,
    stall: Duration,
) -> Result<Result<Digests, ShareError>, ConnectionError> {
    let Known {
        file,
        fingerprint,
        cached,
        wanted,
    } = known;
    let size = fingerprint.size;
    let (chunks_tx, mut chunks) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let reader = {
        let share = Arc::clone(share);
        let rel = rel.clone();
        tokio::task::spawn_blocking(move || {
            read_stable(file, size, None, chunks_tx, &share, &rel, fingerprint)?;
            match cached {
                Some(digests) => Ok(digests),
                None => {
                    share
                        .hash_cache()
                        .digests_once_hashed(share.root(), &rel, &fingerprint, wanted)
                }
            }
        })
    };
    while let Some(chunk) = chunks.recv().await {
        send_within(stall, connection.write_data(&chunk)).await?;
    }
    Ok(reader
        .await
        .unwrap_or_else(|e| Err(ShareError::io("<worker>", io::Error::other(e)))))
}

/// Fails with [`ShareError::Changed`] unless the open `file` of `rel` still has the
/// fingerprint it had when opened: the bytes just read are then those of that version,
/// whole. (The file itself is asked, not its path: a version renamed away or deleted
/// meanwhile was still read whole, as if just before; only a change to its bytes makes a
/// torn copy.)
fn still_unchanged(
    file: &File,
    share: &Share,
    rel: &RelPath,
    fingerprint: Fingerprint,
) -> Result<(), ShareError> {
    let now = file
        .metadata()
        .map_err(|e| ShareError::io(rel.under(share.root()), e))?;
    if Fingerprint::of(&now) == fingerprint {
        Ok(())
    } else {
        Err(ShareError::Changed(rel.clone()))
    }
}

/// The digests a send ends with: known from the cache, or computed while sending.
struct Planned {
    /// From the cache, when its entry matches and has every digest wanted.
    cached: Option<Digests>,
    /// Which digests are wanted.
    wanted: DigestSet,
}

/// A file opened for sending: small ones already read, checked and hashed.
enum Opened {
    /// Read whole (at most [`WHOLE_READ`] bytes): its metadata, bytes and digests.
    Whole(std::fs::Metadata, (Vec<u8>, Digests)),
    /// To be read in chunks while sending: the file, its metadata and fingerprint, and its
    /// digests if the cache knows them.
    Streamed(File, std::fs::Metadata, Fingerprint, Option<Digests>),
}

/// Files of a batch read ahead of the socket.
const READ_AHEAD: usize = 32;

/// One file of a batch, as the reading thread prepared it.
enum Prepared {
    /// Read whole, checked and hashed: ready to send (name, metadata, bytes, digests).
    Whole(Box<(RelPath, std::fs::Metadata, Vec<u8>, Digests)>),
    /// Too big to read ahead: sent as a download of its own.
    Large(RelPath),
    /// Refused or failed before its first byte.
    Failed(ShareError),
}

/// Serves the files of a `download_many` in order, each exactly as a `download` of it
/// would be answered, and returns each one's outcome (`Err` only when the connection
/// failed).
///
/// Small files are opened, read, hashed and checked by one blocking thread that stays a
/// few files ahead of the socket, each under its shared lock while it is read, and their
/// answers go out many to a send: thousands of small files cost no thread hop and no
/// system call each. A bigger file is sent as by [`send_file`]. Every write must be taken
/// by the client within `stall`, as for [`send_file`].
pub async fn send_files(
    connection: &mut Connection<Link>,
    share: &Arc<Share>,
    names: Vec<RelPath>,
    wanted: DigestSet,
    stall: Duration,
) -> Result<Vec<Result<FileVersion, ShareError>>, ConnectionError> {
    let (prepared_tx, mut prepared) = mpsc::channel::<Prepared>(READ_AHEAD);
    {
        let share = Arc::clone(share);
        tokio::task::spawn_blocking(move || {
            // The folders of the batch, held open from one file to the next.
            let mut dirs: Option<Dirs> = None;
            for name in names {
                let one = share.locks().with_read_blocking(&name, || {
                    let opened = match &mut dirs {
                        Some(dirs) => open_for_sending(&share, dirs, &name, wanted),
                        None => Dirs::open(share.root()).and_then(|opened| {
                            open_for_sending(&share, dirs.insert(opened), &name, wanted)
                        }),
                    };
                    match opened {
                        Ok(Opened::Whole(meta, (bytes, digests))) => {
                            Prepared::Whole(Box::new((name.clone(), meta, bytes, digests)))
                        }
                        Ok(Opened::Streamed(..)) => Prepared::Large(name.clone()),
                        Err(e) => Prepared::Failed(e),
                    }
                });
                if prepared_tx.blocking_send(one).is_err() {
                    return; // The socket side stopped: the connection failed.
                }
            }
        });
    }
    let mut outcomes = Vec::new();
    while let Some(one) = prepared.recv().await {
        let outcome = match one {
            Prepared::Whole(whole) => {
                let (name, meta, bytes, digests) = *whole;
                let queued = queue_whole(connection, &name, &meta, &bytes, digests);
                Ok(send_within(stall, queued).await?)
            }
            Prepared::Large(name) => send_file(connection, share, &name, wanted, stall).await?,
            Prepared::Failed(e) => {
                let refusal = Response::from_share_error(&e);
                send_within(stall, connection.queue_message(&refusal)).await?;
                Err(e)
            }
        };
        outcomes.push(outcome);
        // Send what is queued whenever the reader has nothing more ready.
        if prepared.is_empty() {
            send_within(stall, connection.flush()).await?;
        }
    }
    Ok(outcomes)
}

/// Opens `rel` for sending; a small file is read, hashed and checked at once.
fn open_for_sending(
    share: &Share,
    dirs: &mut Dirs,
    rel: &RelPath,
    wanted: DigestSet,
) -> Result<Opened, ShareError> {
    share.check_served(rel)?;
    let (file, meta) = dirs.open_regular(rel)?;
    let fingerprint = Fingerprint::of(&meta);
    let cached = share.hash_cache().lookup(rel, &fingerprint, wanted);
    if meta.len() <= WHOLE_READ {
        let whole = read_whole(
            file,
            meta.len(),
            Planned { cached, wanted },
            share,
            rel,
            fingerprint,
        )?;
        return Ok(Opened::Whole(meta, whole));
    }
    Ok(Opened::Streamed(file, meta, fingerprint, cached))
}

/// Queues a file read whole: start, bytes and end, without flushing.
async fn queue_whole<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    rel: &RelPath,
    meta: &std::fs::Metadata,
    bytes: &[u8],
    digests: Digests,
) -> Result<FileVersion, ConnectionError> {
    queue_start(connection, rel, meta).await?;
    if !bytes.is_empty() {
        connection.write_data(bytes).await?;
    }
    queue_end(connection, rel, meta, digests).await
}

/// Queues the `file_start` that announces `rel` with its size, mtime and mode.
async fn queue_start<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    rel: &RelPath,
    meta: &std::fs::Metadata,
) -> Result<(), ConnectionError> {
    let start = Response::FileStart(FileStart {
        name: rel.clone(),
        size: meta.len(),
        mtime: folder::modified(meta),
        mode: folder::mode(meta),
    });
    connection.queue_message(&start).await
}

/// Queues the `file_end` that closes a sent file, and returns what was served.
async fn queue_end<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    rel: &RelPath,
    meta: &std::fs::Metadata,
    digests: Digests,
) -> Result<FileVersion, ConnectionError> {
    let served = FileVersion {
        name: rel.clone(),
        blake3: digests.blake3.to_string(),
        size: meta.len(),
        mtime: folder::modified(meta),
        mode: folder::mode(meta),
    };
    connection
        .queue_message(&Response::FileEnd(FileEnd { digests }))
        .await?;
    Ok(served)
}

/// Reads a small file whole, hashing it unless its digests are known, and checks that it
/// still has the fingerprint it had when opened: the one-call version of [`read_stable`].
fn read_whole(
    file: File,
    size: u64,
    digests: Planned,
    share: &Share,
    rel: &RelPath,
    fingerprint: Fingerprint,
) -> Result<(Vec<u8>, Digests), ShareError> {
    let mut bytes = Vec::with_capacity(size as usize);
    (&file)
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| ShareError::io(rel.under(share.root()), e))?;
    if bytes.len() as u64 != size {
        return Err(ShareError::Changed(rel.clone()));
    }
    still_unchanged(&file, share, rel, fingerprint)?;
    let Planned { cached, wanted } = digests;
    let digests = match cached {
        Some(digests) => digests,
        None => {
            let mut hasher = ContentHasher::new(wanted);
            hasher.update(&bytes);
            let digests = hasher.finish();
            share.hash_cache().insert(rel, fingerprint, digests.clone());
            digests
        }
    };
    Ok((bytes, digests))
}

/// Reads exactly `size` bytes into the channel, hashing them (the digests of `wanted`, if
/// asked), and checks afterwards that the file still has the fingerprint it had when
/// opened. Returns the digests computed (and caches them), or `None` when not asked.
fn read_stable(
    mut file: File,
    size: u64,
    wanted: Option<DigestSet>,
    chunks: mpsc::Sender<Bytes>,
    share: &Share,
    rel: &RelPath,
    fingerprint: Fingerprint,
) -> Result<Option<Digests>, ShareError> {
    let hasher = wanted.map(BackgroundHasher::new);
    let mut remaining = size;
    while remaining > 0 {
        let want = remaining.min(CHUNK as u64) as usize;
        // Read into fresh capacity: no zeroing of bytes about to be overwritten.
        let mut buffer = Vec::with_capacity(want);
        (&mut file)
            .take(want as u64)
            .read_to_end(&mut buffer)
            .map_err(|e| ShareError::io(rel.under(share.root()), e))?;
        if buffer.len() < want {
            // Shorter than when it was opened: it changed.
            return Err(ShareError::Changed(rel.clone()));
        }
        let buffer = Bytes::from(buffer);
        if let Some(hasher) = &hasher {
            hasher.update(&buffer);
        }
        remaining -= want as u64;
        if chunks.blocking_send(buffer).is_err() {
            // The socket task stopped (the client left); nothing more to do.
            return Err(ShareError::io(
                rel.under(share.root()),
                io::ErrorKind::BrokenPipe.into(),
            ));
        }
    }
    still_unchanged(&file, share, rel, fingerprint)?;
    let Some(hasher) = hasher else {
        return Ok(None);
    };
    let digests = hasher.finish();
    share.hash_cache().insert(rel, fingerprint, digests.clone());
    Ok(Some(digests))
}

/// Answers with `error` in place of a file, within `stall`.
async fn send_error<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    error: &ShareError,
    stall: Duration,
) -> Result<(), ConnectionError> {
    let refusal = Response::from_share_error(error);
    send_within(stall, connection.write_message(&refusal)).await
}

/// Downloads `rel` over `connection` into `share`, once its request is sent: the receiver
/// side of a TCP download.
///
/// The file is written to a partial file, verified against the sender's BLAKE3 and only
/// then installed (atomically, with mtime and mode, the old version kept in the trash).
/// Dropping the future cancels the download and removes the partial file. Every frame must
/// arrive within `stall` of the one before (the first, of the request): else
/// [`TransferError::Stalled`].
pub async fn receive_file<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    share: &Arc<Share>,
    rel: &RelPath,
    landing: &Landing,
    progress: Progress<'_>,
    stall: Duration,
) -> Result<Downloaded, TransferError> {
    let started = Instant::now();
    let start = receive_within(stall, connection.expect_message::<Response>()).await?;
    let (size, mtime, mode) = match start {
        Response::FileStart(FileStart {
            name,
            size,
            mtime,
            mode,
        }) if &name == rel => (size, mtime, mode),
        Response::Error { kind, message } => return Err(TransferError::Remote { kind, message }),
        other => return Err(unexpected(&other)),
    };
    super::check_room(share, &landing.name, size, 0)?;
    progress(0, size);

    let (partial, file) = PartialFile::create(share.temp_path())?;
    let (chunks_tx, chunks_rx) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let writer = {
        let path = partial.path().to_path_buf();
        tokio::task::spawn_blocking(move || write_and_hash(file, chunks_rx, &path))
    };
    let mut body = Body::new(rel, size, stall);
    let end = loop {
        match body.next(connection).await? {
            Next::Data(bytes) => {
                if chunks_tx.send(bytes).await.is_err() {
                    // The writer stopped: its own error says why.
                    break None;
                }
                progress(body.received(), size);
            }
            Next::End(end) => break Some(end),
        }
    };
    drop(chunks_tx);
    let sent_digests = match end {
        Some(BodyEnd::Complete(digests)) => Some(digests),
        None => None,
        Some(BodyEnd::Short(got)) => {
            return Err(TransferError::Size {
                name: rel.clone(),
                expected: size,
                got,
            });
        }
        Some(BodyEnd::Failed { kind, message }) => {
            return Err(TransferError::Remote { kind, message });
        }
    };
    let local_blake3 = writer
        .await
        .unwrap_or_else(|e| Err(ShareError::io(partial.path(), io::Error::other(e))))?;
    let Some(sent_digests) = sent_digests else {
        return Err(TransferError::Protocol("local writer stopped early".into()));
    };
    if *local_blake3 != *sent_digests.blake3 {
        return Err(TransferError::Checksum {
            name: rel.clone(),
            expected: sent_digests.blake3.to_string(),
            got: local_blake3,
        });
    }
    // The content is verified by BLAKE3; its SHA-256 and MD5 (for display) are the
    // sender's, computed over the same bytes. Computing them again here would cap the
    // download at SHA-256's speed.
    let local_digests = sent_digests;
    let replaced = share
        .install(
            partial.keep(),
            &landing.name,
            InstallMeta { mtime, mode },
            local_digests.clone(),
            &landing.expect,
        )
        .await?;
    Ok(Downloaded {
        version: FileVersion {
            name: rel.clone(),
            blake3: local_digests.blake3.to_string(),
            size,
            mtime,
            mode,
        },
        sha256: local_digests.sha256.map(|d| d.to_string()),
        md5: local_digests.md5.map(|d| d.to_string()),
        transport: Transport::Tcp,
        path: landing.name.under(share.root()),
        seconds: started.elapsed().as_secs_f64(),
        replaced,
        resent: None,
        note: None,
        transferred: size,
        reused: 0,
        up_to_date: false,
    })
}

/// Writes arriving chunks to the partial file while a background thread computes their
/// BLAKE3, then flushes the file to disk. Returns the BLAKE3.
///
/// Write-back is started every [`WRITE_BEHIND`] bytes, so that the final flush has little
/// left to do instead of writing the whole file at the end.
fn write_and_hash(
    mut file: File,
    mut chunks: mpsc::Receiver<Bytes>,
    path: &std::path::Path,
) -> Result<String, ShareError> {
    let hasher = BackgroundHasher::new(DigestSet::Blake3);
    let mut written: u64 = 0;
    let mut flushed: u64 = 0;
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| ShareError::io(path, e))?;
        written += chunk.len() as u64;
        if written - flushed >= WRITE_BEHIND {
            start_write_back(&file, flushed, written - flushed);
            flushed = written;
        }
    }
    file.sync_all().map_err(|e| ShareError::io(path, e))?;
    Ok(hasher.finish().blake3.to_string())
}

/// Asks the kernel to start writing a range to disk without waiting for it (Linux's
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`); purely a performance hint.
pub(super) fn start_write_back(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; the call only reads
    // its integer arguments and has no memory-safety preconditions.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}
