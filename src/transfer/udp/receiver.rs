//! The downloading box's side of a UDP transfer: negotiates on the TCP connection and
//! derives the transfer's keys from it, then drives a
//! [`super::proto::receiver::Receiver`] (which checks datagrams and says when to report)
//! with the socket and the clock, opening every datagram before the state machine sees it
//! and sealing every report, writes each new chunk at its offset in a partial file, and
//! verifies the whole file before installing it.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::proto::receiver::{Announced, Receiver};
use super::seal::{self, DropCounts, Opener, Sealer, TransferKeys};
use super::serve::FINISH_TIMEOUT;
use super::socket::{FastSocket, ReceiveBuffers};
use super::wire::{self, Token};
use super::{DuringTransfer, UdpError, UdpFinish, parse_token};
use crate::protocol::{Connection, Frame, Link, Response};
use crate::share::blocks::BlockList;
use crate::share::hash::BackgroundHasher;
use crate::share::{DigestSet, InstallMeta, RelPath, Share, ShareError};
use crate::transfer::partial::PartialFile;
use crate::transfer::{Downloaded, Landing, Progress, TransferError};
use crate::types::{FileVersion, Transport};

/// Longest wait for `udp_ready`: the serving box may hash the file first, so as long as a
/// listing may take to start (the box's default `think`).
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

pub use super::proto::receiver::{FIRST_DATA_TIMEOUT, STALL_TIMEOUT};

/// Receive buffer asked of the kernel, so that bursts are queued (and seen as delay by
/// rate control) rather than dropped.
const RECEIVE_BUFFER: usize = 16 * 1024 * 1024;

/// The disk thread is told how far the file is complete (so that it hashes that far)
/// each time this many more bytes are.
const PUBLISH_PREFIX_EVERY: u64 = 256 * wire::CHUNK_LEN as u64;

/// Write requests queued for the disk thread.
const WRITE_QUEUE: usize = 4096;

/// Where the datagrams of a transfer flow: this box's IP (the TCP connection's local one)
/// and the serving box's UDP address (its TCP address: same port number).
#[derive(Debug, Clone, Copy)]
pub struct UdpPath {
    /// The IP this box's UDP socket binds to.
    pub local_ip: std::net::IpAddr,
    /// The serving box's UDP address.
    pub server: SocketAddr,
}

/// Downloads `rel` over UDP into `share`, negotiating on `connection` once the
/// `download_udp` request is sent. Returns the download and the datagrams this side
/// dropped (forged, replayed, damaged), which are also logged.
pub async fn receive_file(
    connection: &mut Connection<Link>,
    path: UdpPath,
    share: &Arc<Share>,
    rel: &RelPath,
    landing: &Landing,
    progress: Progress<'_>,
) -> Result<(Downloaded, DropCounts), UdpError> {
    let started = Instant::now();
    let received = receive_stream(connection, path, share, rel, None, progress).await?;
    let Received {
        ready,
        resent,
        drops,
        written,
    } = received;
    let Written::Whole(partial, blake3) = written else {
        return Err(protocol("a whole download came back as blocks"));
    };
    if *blake3 != *ready.digests.blake3 {
        return Err(TransferError::Checksum {
            name: rel.clone(),
            expected: ready.digests.blake3.to_string(),
            got: blake3,
        }
        .into());
    }
    let replaced = share
        .install(
            partial.keep(),
            &landing.name,
            ready.meta,
            ready.digests.clone(),
            &landing.expect,
        )
        .await?;
    let downloaded = Downloaded {
        version: FileVersion {
            name: rel.clone(),
            blake3,
            size: ready.size,
            mtime: ready.meta.mtime,
            mode: ready.meta.mode,
        },
        sha256: ready.digests.sha256.map(|d| d.to_string()),
        md5: ready.digests.md5.map(|d| d.to_string()),
        transport: Transport::Udp,
        path: landing.name.under(share.root()),
        seconds: started.elapsed().as_secs_f64(),
        replaced,
        resent: Some(resent),
        note: None,
        transferred: ready.size,
        reused: 0,
        up_to_date: false,
    };
    Ok((downloaded, drops))
}

/// Where a ranged UDP download puts the blocks it receives: at their places in the part
/// of a version being assembled ([`crate::transfer::delta`]), each checked against the
/// version's list.
pub struct BlockSink {
    /// The part, open for writing.
    pub file: File,
    /// The version's blocks.
    pub list: BlockList,
    /// The blocks asked for, in order: the bytes sent are theirs, one after the other.
    pub blocks: Vec<usize>,
}

/// What a ranged UDP download ended with.
pub struct BlocksReceived {
    /// The blocks written and checked.
    pub written: Vec<usize>,
    /// The sender's digests of the whole version.
    pub digests: crate::share::Digests,
    /// Datagrams sent again.
    pub resent: u64,
    /// Datagrams this side dropped.
    pub drops: DropCounts,
}

/// Receives the blocks a ranged `download_udp` asked for (its request sent) into `sink`.
/// The blocks written and checked before a failure stay written (a later download resumes
/// from them); the error then says why it stopped.
pub async fn receive_blocks(
    connection: &mut Connection<Link>,
    path: UdpPath,
    share: &Arc<Share>,
    rel: &RelPath,
    sink: BlockSink,
    progress: Progress<'_>,
) -> (Vec<usize>, Result<BlocksReceived, UdpError>) {
    let expected: u64 = sink.blocks.iter().map(|&i| sink.list.range(i).1).sum();
    let sink_blocks = sink.blocks.len();
    let mut written = Vec::new();
    let received = receive_stream(
        connection,
        path,
        share,
        rel,
        Some((sink, &mut written)),
        progress,
    )
    .await;
    let outcome = received.and_then(|received| {
        if received.ready.size != expected {
            return Err(protocol("the blocks sent are not those asked for"));
        }
        if written.len() != sink_blocks {
            return Err(protocol("the transfer ended with blocks missing"));
        }
        Ok(BlocksReceived {
            written: written.clone(),
            digests: received.ready.digests,
            resent: received.resent,
            drops: received.drops,
        })
    });
    (written, outcome)
}

/// What the stream of one UDP transfer left.
enum Written {
    /// A whole file in a partial file, and its BLAKE3.
    Whole(PartialFile, String),
    /// Blocks written into a sink.
    Blocks,
}

/// One UDP transfer received: the announcement, the sender's statistics, what this side
/// dropped, and what was written.
struct Received {
    ready: Ready,
    resent: u64,
    drops: DropCounts,
    written: Written,
}

/// Receives one UDP transfer, once its request is sent: into a new partial file (`sink`
/// `None`), or as blocks into `sink` (noting in its list each block written and checked).
async fn receive_stream(
    connection: &mut Connection<Link>,
    path: UdpPath,
    share: &Arc<Share>,
    rel: &RelPath,
    sink: Option<(BlockSink, &mut Vec<usize>)>,
    progress: Progress<'_>,
) -> Result<Received, UdpError> {
    let ready = match crate::transfer::receive_within(
        READY_TIMEOUT,
        connection.expect_message::<Response>(),
    )
    .await?
    {
        Response::UdpReady {
            name,
            session,
            token,
            size,
            mtime,
            mode,
            chunk_len,
            digests,
        } if &name == rel => Ready {
            session: u64::from_str_radix(&session, 16).map_err(|_| protocol("bad session id"))?,
            token: parse_token(&token).ok_or_else(|| protocol("bad token"))?,
            size,
            chunk_len: chunk_len as usize,
            meta: InstallMeta { mtime, mode },
            digests,
        },
        Response::Error { kind, message } => {
            return Err(TransferError::Remote { kind, message }.into());
        }
        other => return Err(protocol(&format!("unexpected response {other:?}"))),
    };
    let announced = Announced {
        session: ready.session,
        token: ready.token,
        size: ready.size,
        chunk_len: ready.chunk_len,
    };
    // Bounded before anything (the partial file, the bitset) is sized from it.
    announced.check().map_err(|e| protocol(&e.to_string()))?;
    if sink.is_none() {
        crate::transfer::check_room(share, rel, ready.size, 0)?;
    }
    let secret = connection
        .export_secret(&seal::exporter_context(ready.session, &ready.token))
        .map_err(TransferError::from)?;
    let (mut sealer, mut opener) = TransferKeys::derive(&secret).for_client();

    let socket = UdpSocket::bind(SocketAddr::new(path.local_ip, 0))
        .await
        .and_then(FastSocket::new)
        .map_err(|e| ShareError::io("<udp socket>", e))?;
    enlarge_receive_buffer(socket.socket());
    let (writes, write_queue) = mpsc::channel(WRITE_QUEUE);
    let (writer, partial, noted) = match sink {
        None => {
            progress(0, ready.size);
            let (partial, file) = PartialFile::create(share.temp_path())?;
            file.set_len(ready.size)
                .map_err(|e| ShareError::io(partial.path(), e))?;
            let path = partial.path().to_path_buf();
            let writer = tokio::task::spawn_blocking(move || {
                write_and_hash(file, write_queue, &path).map(Some)
            });
            (writer, Some(partial), None)
        }
        Some((sink, noted)) => {
            if ready.size
                != sink
                    .blocks
                    .iter()
                    .map(|&i| sink.list.range(i).1)
                    .sum::<u64>()
            {
                return Err(protocol("the blocks sent are not those asked for"));
            }
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let writer = tokio::task::spawn_blocking(move || {
                write_blocks(sink, write_queue, &done_tx).map(|()| None)
            });
            (writer, None, Some((noted, done_rx)))
        }
    };

    // The receiver's clock starts with its first HELLO.
    let mut receiver = Receiver::new(announced, path.server, Instant::now())
        .map_err(|e| protocol(&e.to_string()))?;
    let keys = Keys {
        sealer: &mut sealer,
        opener: &mut opener,
    };
    let outcome = receive(&mut receiver, keys, connection, &socket, &writes, progress).await;
    drop(writes);
    let drops = opener.drops();
    if drops.any() {
        tracing::info!(
            session = ready.session,
            forged = drops.forged,
            replayed = drops.replayed,
            damaged = drops.damaged,
            "UDP download dropped datagrams"
        );
    } else {
        tracing::debug!(session = ready.session, "UDP download dropped no datagram");
    }
    // The peer's own account of a version that changed under it comes first: the blocks
    // it sent then did not match, but that is why.
    let finished = match finish(connection, ready.session).await {
        Err(
            e @ UdpError::Transfer(TransferError::Remote {
                kind: crate::protocol::ErrorKind::Changed,
                ..
            }),
        ) => return Err(e),
        other => other,
    };
    let wrote = writer
        .await
        .unwrap_or_else(|e| Err(ShareError::io("<udp writer>", io::Error::other(e))));
    if let Some((noted, done)) = noted {
        noted.extend(done.try_iter());
    }
    let blake3 = wrote?;
    outcome?;
    let resent = finished?;
    let written = match (partial, blake3) {
        (Some(partial), Some(blake3)) => Written::Whole(partial, blake3),
        _ => Written::Blocks,
    };
    Ok(Received {
        ready,
        resent,
        drops,
        written,
    })
}

/// Writes the bytes of a ranged transfer into `sink`'s part, each block at its place, and
/// checks each block against the list once all its bytes are in (as the prefix that
/// arrived grows, and at the end): the first that does not match fails the transfer.
/// Sends the index of each block written and checked to `done`.
fn write_blocks(
    sink: BlockSink,
    mut jobs: mpsc::Receiver<WriteJob>,
    done: &std::sync::mpsc::Sender<usize>,
) -> Result<(), ShareError> {
    let BlockSink { file, list, blocks } = sink;
    // Each block asked for: where its bytes start in the stream, and in the file.
    let mut layout = Vec::with_capacity(blocks.len());
    let mut sent = 0u64;
    for &index in &blocks {
        let (offset, len) = list.range(index);
        layout.push((index, sent, offset, len));
        sent += len;
    }
    let place = |stream: u64, bytes: &[u8]| -> Result<(), ShareError> {
        let mut done = 0usize;
        // The first block that holds this offset of the stream, then the next ones.
        let first = layout.partition_point(|&(_, at, _, len)| at + len <= stream);
        for &(_, at, offset, len) in &layout[first..] {
            if done == bytes.len() {
                break;
            }
            let from = stream + done as u64 - at;
            let take = ((len - from) as usize).min(bytes.len() - done);
            file.write_all_at(&bytes[done..done + take], offset + from)
                .map_err(|e| ShareError::io("<part>", e))?;
            done += take;
        }
        Ok(())
    };
    let mut checked = 0usize;
    let mut check_up_to = |until: u64| -> Result<(), ShareError> {
        let mut buffer = Vec::new();
        while let Some(&(index, at, offset, len)) = layout.get(checked) {
            if at + len > until {
                break;
            }
            buffer.resize(len as usize, 0);
            file.read_exact_at(&mut buffer, offset)
                .map_err(|e| ShareError::io("<part>", e))?;
            if !list.matches(index, &buffer) {
                return Err(ShareError::io(
                    "<part>",
                    io::Error::other(format!(
                        "block {index} as received does not match its hash in the list"
                    )),
                ));
            }
            let _ = done.send(index);
            checked += 1;
        }
        Ok(())
    };
    let mut pending = Pending::default();
    while let Some(job) = jobs.blocking_recv() {
        match job {
            WriteJob::Chunks(chunks) => {
                for (stream, bytes) in chunks {
                    if let Some((at, block)) = pending.gather(stream, &bytes) {
                        place(at, &block)?;
                    }
                }
            }
            WriteJob::Prefix(until) => {
                if let Some((at, block)) = pending.take() {
                    place(at, &block)?;
                }
                check_up_to(until)?;
            }
        }
    }
    // Blocks are checked as far as the stream is known complete (the last `Prefix` of a
    // complete transfer covers it all); the rest of a transfer cut short stay unchecked and
    // missing.
    if let Some((at, block)) = pending.take() {
        place(at, &block)?;
    }
    Ok(())
}

/// The receiving side's keys: one seals reports, the other opens data.
struct Keys<'a> {
    sealer: &'a mut Sealer,
    opener: &'a mut Opener,
}

/// Tells the server the transfer is over (complete or not) and reads its statistics.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    session: u64,
) -> Result<u64, UdpError> {
    connection
        .write_message(&DuringTransfer::UdpFinish(UdpFinish {
            session: format!("{session:016x}"),
        }))
        .await
        .map_err(TransferError::from)?;
    let answer = tokio::time::timeout(FINISH_TIMEOUT, connection.expect_message::<Response>())
        .await
        .map_err(|_| protocol(&format!("no udp_end within {FINISH_TIMEOUT:?}")))?;
    match answer.map_err(TransferError::from)? {
        Response::UdpEnd { resent, .. } => Ok(resent),
        Response::Error { kind, message } => Err(TransferError::Remote { kind, message }.into()),
        other => Err(protocol(&format!("unexpected response {other:?}"))),
    }
}

/// What the server's `udp_ready` said.
struct Ready {
    session: u64,
    token: Token,
    size: u64,
    chunk_len: usize,
    meta: InstallMeta,
    digests: crate::share::Digests,
}

/// Drives `receiver` until every chunk is in, or fails on a stall, a blocked path or a
/// message from the server on the TCP connection.
async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    receiver: &mut Receiver,
    keys: Keys<'_>,
    connection: &mut Connection<S>,
    socket: &FastSocket,
    writes: &mpsc::Sender<WriteJob>,
    progress: Progress<'_>,
) -> Result<(), UdpError> {
    let size = receiver.size();
    let server = receiver.server();
    let mut buffers = ReceiveBuffers::for_socket(socket);
    let mut published_prefix = 0u64;
    // One timer, moved only when the deadline does (a new one per batch would cost a
    // timer-wheel insertion per batch of datagrams).
    let timer = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(timer);
    while !receiver.is_complete() {
        let deadline = receiver.poll_timeout().unwrap_or_else(Instant::now).into();
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            received = socket.recv(&mut buffers) => {
                let Ok(slots) = received else { continue };
                let now = Instant::now();
                // Only the server's datagrams are opened (anything else costs no
                // cryptography); only what authenticates reaches the state machine.
                let opener = &mut *keys.opener;
                let chunks: Vec<(u64, bytes::Bytes)> = buffers
                    .datagrams_mut(slots)
                    .filter(|(_, from)| *from == server)
                    .filter_map(|(datagram, from)| Some((opener.open(datagram)?, from)))
                    .filter_map(|(datagram, from)| receiver.handle(now, from, datagram))
                    .map(|chunk| (chunk.offset, bytes::Bytes::copy_from_slice(chunk.bytes)))
                    .collect();
                if !chunks.is_empty() {
                    if writes.send(WriteJob::Chunks(chunks)).await.is_err() {
                        return Err(ShareError::io("<writer>", io::ErrorKind::BrokenPipe.into()).into());
                    }
                    progress(receiver.received_bytes(), size);
                    let prefix = receiver.prefix_bytes();
                    if prefix >= published_prefix + PUBLISH_PREFIX_EVERY {
                        published_prefix = prefix;
                        let _ = writes.send(WriteJob::Prefix(prefix)).await;
                    }
                }
            }
            _ = &mut timer => {}
            frame = connection.read_frame() => {
                return Err(match frame {
                    Ok(Some(Frame::Control(bytes))) => {
                        match serde_json::from_slice::<Response>(&bytes) {
                            Ok(Response::Error { kind, message }) => {
                                TransferError::Remote { kind, message }.into()
                            }
                            _ => protocol("unexpected message during the transfer"),
                        }
                    }
                    Ok(Some(Frame::Data(_))) => protocol("unexpected data frame"),
                    Ok(None) => TransferError::Connection(crate::protocol::ConnectionError::Closed).into(),
                    Err(e) => TransferError::Connection(e).into(),
                });
            }
        }
        // Once complete, this is the last report: it tells the sender at once (the TCP
        // finish that follows is the reliable signal).
        while let Some(mut datagram) = receiver.poll_transmit(Instant::now())? {
            keys.sealer
                .seal(&mut datagram, 0)
                .map_err(|e| protocol(&e.to_string()))?;
            let _ = socket.send(server, &datagram, datagram.len()).await;
        }
    }
    // Everything is in: the disk thread may take the whole stream as complete.
    let _ = writes.send(WriteJob::Prefix(size)).await;
    Ok(())
}

/// Work for the disk thread.
enum WriteJob {
    /// Write these bytes at these offsets.
    Chunks(Vec<(u64, bytes::Bytes)>),
    /// Every byte below this offset has been written: hash up to it.
    Prefix(u64),
}

/// Writes chunks at their offsets and hashes the file in offset order as it fills: a chunk
/// that continues the hashed prefix is hashed as it arrives; chunks that arrived ahead of a
/// gap are read back from the page cache once the gap is filled. Verification is thus
/// nearly done when the last chunk arrives. Returns the BLAKE3 of the whole file.
fn write_and_hash(
    file: File,
    mut jobs: mpsc::Receiver<WriteJob>,
    path: &std::path::Path,
) -> Result<String, ShareError> {
    let hasher = BackgroundHasher::new(DigestSet::Blake3);
    let mut hashed: u64 = 0;
    let mut pending = Pending::default();
    let size = file.metadata().map_err(|e| ShareError::io(path, e))?.len();
    let hash_up_to = |hashed: &mut u64, until: u64, file: &File| -> Result<(), ShareError> {
        let mut buffer = vec![0u8; 1024 * 1024];
        while *hashed < until {
            let len = ((until - *hashed) as usize).min(buffer.len());
            file.read_exact_at(&mut buffer[..len], *hashed)
                .map_err(|e| ShareError::io(path, e))?;
            hasher.update(&bytes::Bytes::copy_from_slice(&buffer[..len]));
            *hashed += len as u64;
        }
        Ok(())
    };
    // A written block that continues the hashed prefix is hashed at once, in one piece
    // (feeding the hasher per 1,372-byte chunk would cost more than the hashing).
    let hash_written = |block: Option<(u64, bytes::Bytes)>, hashed: &mut u64| {
        if let Some((offset, block)) = block
            && offset == *hashed
        {
            *hashed += block.len() as u64;
            hasher.update(&block);
        }
    };
    while let Some(job) = jobs.blocking_recv() {
        match job {
            WriteJob::Chunks(chunks) => {
                for (offset, bytes) in chunks {
                    let written = pending.add(&file, offset, &bytes, path)?;
                    hash_written(written, &mut hashed);
                }
            }
            WriteJob::Prefix(until) => {
                let written = pending.flush(&file, path)?;
                hash_written(written, &mut hashed);
                hash_up_to(&mut hashed, until, &file)?;
            }
        }
    }
    let written = pending.flush(&file, path)?;
    hash_written(written, &mut hashed);
    hash_up_to(&mut hashed, size, &file)?;
    file.sync_all().map_err(|e| ShareError::io(path, e))?;
    Ok(hasher.finish().blake3.to_string())
}

/// Consecutive chunks gathered into one write.
#[derive(Default)]
struct Pending {
    offset: u64,
    bytes: Vec<u8>,
}

impl Pending {
    /// Adds a chunk, without writing; returns the gathered bytes it could not join (with
    /// their offset), for the caller to write.
    fn gather(&mut self, offset: u64, bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
        let mut full = None;
        if !self.bytes.is_empty() && offset != self.offset + self.bytes.len() as u64
            || self.bytes.len() >= 1024 * 1024
        {
            full = self.take();
        }
        if self.bytes.is_empty() {
            self.offset = offset;
        }
        self.bytes.extend_from_slice(bytes);
        full
    }

    /// The gathered bytes and their offset, if any.
    fn take(&mut self) -> Option<(u64, Vec<u8>)> {
        if self.bytes.is_empty() {
            return None;
        }
        Some((self.offset, std::mem::take(&mut self.bytes)))
    }

    /// Adds a chunk; returns the block written to make room, if one was.
    fn add(
        &mut self,
        file: &File,
        offset: u64,
        bytes: &[u8],
        path: &std::path::Path,
    ) -> Result<Option<(u64, bytes::Bytes)>, ShareError> {
        let mut written = None;
        if !self.bytes.is_empty() && offset != self.offset + self.bytes.len() as u64
            || self.bytes.len() >= 1024 * 1024
        {
            written = self.flush(file, path)?;
        }
        if self.bytes.is_empty() {
            self.offset = offset;
            self.bytes.reserve(1024 * 1024 + bytes.len());
        }
        self.bytes.extend_from_slice(bytes);
        Ok(written)
    }

    /// Writes the gathered block; returns it with its offset.
    fn flush(
        &mut self,
        file: &File,
        path: &std::path::Path,
    ) -> Result<Option<(u64, bytes::Bytes)>, ShareError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        file.write_all_at(&self.bytes, self.offset)
            .map_err(|e| ShareError::io(path, e))?;
        let block = bytes::Bytes::from(std::mem::take(&mut self.bytes));
        Ok(Some((self.offset, block)))
    }
}

/// Asks the kernel for a large receive buffer on `socket` (best effort), so that a burst
/// that arrives while the reader is busy waits in the queue instead of being dropped. Public
/// for the tests' link emulator, which must lose only what it is told to.
pub fn enlarge_receive_buffer(socket: &UdpSocket) {
    use rustix::net::sockopt;
    // SO_RCVBUFFORCE needs privileges; SO_RCVBUF is capped by net.core.rmem_max.
    if sockopt::set_socket_recv_buffer_size_force(socket, RECEIVE_BUFFER).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(socket, RECEIVE_BUFFER);
    }
}

fn protocol(detail: &str) -> UdpError {
    TransferError::Protocol(detail.to_string()).into()
}
