//! The receiving side of a UDP transfer, run by the downloading box: negotiates on the TCP
//! connection, proves its UDP endpoint with the token, writes each chunk at its offset in a
//! partial file, reports what is missing, and verifies the whole file before installing it.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::socket::{FastSocket, ReceiveBuffers};
use super::wire::{self, Datagram, Feedback, Token};
use super::{UdpError, parse_token};
use crate::protocol::{Connection, Frame, Response};
use crate::requests::Request;
use crate::requests::udp::UdpFinish;
use crate::share::hash::BackgroundHasher;
use crate::share::{DigestSet, InstallMeta, RelPath, Share, ShareError};
use crate::transfer::partial::PartialFile;
use crate::transfer::{Downloaded, Landing, Progress, TransferError};
use crate::types::{FileVersion, Transport};

/// How often the receiver reports (and, before data flows, says HELLO).
const REPORT_EVERY: Duration = Duration::from_millis(10);

/// If no datagram at all arrives in this long, UDP is taken to be blocked.
pub const FIRST_DATA_TIMEOUT: Duration = Duration::from_secs(3);

/// A transfer with no new chunk for this long fails.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer asked of the kernel, so that bursts are queued (and seen as delay by
/// rate control) rather than dropped.
const RECEIVE_BUFFER: usize = 16 * 1024 * 1024;

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
/// `download_udp` request is sent.
pub async fn receive_file<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    path: UdpPath,
    share: &Arc<Share>,
    rel: &RelPath,
    landing: &Landing,
    progress: Progress<'_>,
) -> Result<Downloaded, UdpError> {
    let started = Instant::now();
    let ready = match connection
        .expect_message::<Response>()
        .await
        .map_err(TransferError::from)?
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
    if ready.chunk_len == 0 || ready.chunk_len > wire::CHUNK_LEN {
        return Err(protocol("chunk length out of range"));
    }
    let total = ready.size.div_ceil(ready.chunk_len as u64);
    if total > u64::from(u32::MAX) {
        return Err(protocol("file too large for one UDP transfer"));
    }
    progress(0, ready.size);

    let socket = UdpSocket::bind(SocketAddr::new(path.local_ip, 0))
        .await
        .and_then(FastSocket::new)
        .map_err(|e| ShareError::io("<udp socket>", e))?;
    enlarge_receive_buffer(socket.socket());
    let (partial, file) = PartialFile::create(share.temp_path())?;
    file.set_len(ready.size)
        .map_err(|e| ShareError::io(partial.path(), e))?;
    let (writes, write_queue) = mpsc::channel(WRITE_QUEUE);
    let writer = {
        let path = partial.path().to_path_buf();
        tokio::task::spawn_blocking(move || write_and_hash(file, write_queue, &path))
    };

    let mut receiving = Receiving::new(ready.size, ready.chunk_len, ready.session, ready.token);
    let outcome = receiving
        .run(connection, &socket, path.server, &writes, progress)
        .await;
    drop(writes);
    let finished = finish(connection, ready.session).await;
    let blake3 = writer
        .await
        .unwrap_or_else(|e| Err(ShareError::io(partial.path(), io::Error::other(e))))?;
    outcome?;
    let resent = finished?;
    if blake3 != ready.digests.blake3 {
        return Err(TransferError::Checksum {
            name: rel.clone(),
            expected: ready.digests.blake3,
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
    Ok(Downloaded {
        version: FileVersion {
            name: rel.clone(),
            blake3,
            size: ready.size,
            mtime: ready.meta.mtime,
            mode: ready.meta.mode,
        },
        sha256: ready.digests.sha256,
        md5: ready.digests.md5,
        transport: Transport::Udp,
        path: landing.name.under(share.root()),
        seconds: started.elapsed().as_secs_f64(),
        replaced,
        resent: Some(resent),
        note: None,
    })
}

/// Tells the server the transfer is over (complete or not) and reads its statistics.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    session: u64,
) -> Result<u64, UdpError> {
    connection
        .write_message(&Request::UdpFinish(UdpFinish {
            session: format!("{session:016x}"),
        }))
        .await
        .map_err(TransferError::from)?;
    match connection
        .expect_message::<Response>()
        .await
        .map_err(TransferError::from)?
    {
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

/// The receiver's bookkeeping.
struct Receiving {
    /// File size.
    size: u64,
    /// Total chunks.
    total: u32,
    /// Bytes per chunk.
    chunk_len: usize,
    /// Session id and token.
    session: u64,
    token: Token,
    /// Which chunks have arrived.
    have: Vec<bool>,
    /// Chunks that have arrived.
    count: u32,
    /// Every chunk below this has arrived.
    cumulative: u32,
    /// Highest frontier announced by the sender.
    frontier: u32,
    /// Counters reported to the sender.
    received: u64,
    bytes: u64,
    highest_tx: u32,
    /// Latest sender timestamp and when it arrived.
    echo_us: u64,
    echo_at: Option<Instant>,
    /// Lowest one-way delay seen (receiver clock minus sender clock), and the lowest since
    /// the last report.
    base_delay: Option<i64>,
    interval_delay: Option<i64>,
    /// Receiver clock origin.
    start: Instant,
}

impl Receiving {
    fn new(size: u64, chunk_len: usize, session: u64, token: Token) -> Receiving {
        let total = size.div_ceil(chunk_len as u64) as u32;
        Receiving {
            size,
            total,
            chunk_len,
            session,
            token,
            have: vec![false; total as usize],
            count: 0,
            cumulative: 0,
            frontier: 0,
            received: 0,
            bytes: 0,
            highest_tx: 0,
            echo_us: 0,
            echo_at: None,
            base_delay: None,
            interval_delay: None,
            start: Instant::now(),
        }
    }

    /// Receives until every chunk is in, or fails on a stall, a blocked path or a message
    /// from the server on the TCP connection.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        connection: &mut Connection<S>,
        socket: &FastSocket,
        server: SocketAddr,
        writes: &mpsc::Sender<WriteJob>,
        progress: Progress<'_>,
    ) -> Result<(), UdpError> {
        let size = self.size;
        let mut buffers = ReceiveBuffers::for_socket(socket);
        let mut report = tokio::time::interval(REPORT_EVERY);
        let mut last_progress = Instant::now();
        let mut published_prefix = 0u32;
        let hello = wire::encode_hello(self.session, &self.token);
        while self.count < self.total {
            tokio::select! {
                received = socket.recv(&mut buffers) => {
                    let Ok(slots) = received else { continue };
                    let chunks: Vec<(u64, bytes::Bytes)> = buffers
                        .datagrams(slots)
                        .filter(|(_, from)| *from == server)
                        .filter_map(|(datagram, _)| self.accept(datagram))
                        .collect();
                    if chunks.is_empty() {
                        continue;
                    }
                    last_progress = Instant::now();
                    if writes.send(WriteJob::Chunks(chunks)).await.is_err() {
                        return Err(ShareError::io("<writer>", io::ErrorKind::BrokenPipe.into()).into());
                    }
                    progress((u64::from(self.count) * self.chunk_len as u64).min(size), size);
                    if self.cumulative >= published_prefix + 256 {
                        published_prefix = self.cumulative;
                        let prefix = (u64::from(self.cumulative) * self.chunk_len as u64).min(size);
                        let _ = writes.send(WriteJob::Prefix(prefix)).await;
                    }
                }
                _ = report.tick() => {
                    let datagram = if self.received == 0 {
                        if self.start.elapsed() > FIRST_DATA_TIMEOUT {
                            return Err(UdpError::Blocked(FIRST_DATA_TIMEOUT));
                        }
                        hello.clone()
                    } else {
                        if last_progress.elapsed() > STALL_TIMEOUT {
                            return Err(UdpError::Stalled(STALL_TIMEOUT));
                        }
                        wire::encode_feedback(&self.feedback())
                    };
                    let _ = socket.send(server, &datagram, datagram.len()).await;
                }
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
        }
        // Tell the sender at once (the TCP finish that follows is the reliable signal).
        let last = wire::encode_feedback(&self.feedback());
        let _ = socket.send(server, &last, last.len()).await;
        Ok(())
    }

    /// Checks a datagram; returns the offset and bytes of a chunk that is new.
    fn accept(&mut self, bytes: &[u8]) -> Option<(u64, bytes::Bytes)> {
        let Ok(Datagram::Data(data)) = wire::decode(bytes) else {
            return None;
        };
        if data.session != self.session || data.chunk >= self.total {
            return None;
        }
        let offset = u64::from(data.chunk) * self.chunk_len as u64;
        let expected_len = (self.size - offset).min(self.chunk_len as u64) as usize;
        if data.payload.len() != expected_len {
            return None;
        }
        self.received += 1;
        self.bytes += data.payload.len() as u64;
        self.highest_tx = self.highest_tx.max(data.tx);
        self.frontier = self.frontier.max(data.frontier.min(self.total));
        self.echo_us = data.sent_us;
        self.echo_at = Some(Instant::now());
        let delay = self.start.elapsed().as_micros() as i64 - data.sent_us as i64;
        self.base_delay = Some(self.base_delay.map_or(delay, |d| d.min(delay)));
        self.interval_delay = Some(self.interval_delay.map_or(delay, |d| d.min(delay)));
        let index = data.chunk as usize;
        if self.have[index] {
            return None;
        }
        self.have[index] = true;
        self.count += 1;
        while self.cumulative < self.total && self.have[self.cumulative as usize] {
            self.cumulative += 1;
        }
        Some((offset, bytes::Bytes::copy_from_slice(data.payload)))
    }

    fn feedback(&mut self) -> Feedback {
        let mut missing = Vec::new();
        let mut chunk = self.cumulative;
        while chunk < self.frontier && missing.len() < wire::MAX_RANGES {
            if self.have[chunk as usize] {
                chunk += 1;
                continue;
            }
            let start = chunk;
            while chunk < self.frontier && !self.have[chunk as usize] {
                chunk += 1;
            }
            missing.push((start, chunk));
        }
        let queue = match (self.interval_delay.take(), self.base_delay) {
            (Some(now), Some(base)) => (now - base).clamp(0, i64::from(u32::MAX)) as u32,
            _ => 0,
        };
        Feedback {
            session: self.session,
            token: self.token,
            received: self.received,
            bytes: self.bytes,
            highest_tx: self.highest_tx,
            clock_us: self.start.elapsed().as_micros() as u64,
            echo_us: self.echo_us,
            hold_us: self.echo_at.map_or(0, |t| {
                t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
            }),
            queue_us: queue,
            cumulative: self.cumulative,
            missing,
        }
    }
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
    Ok(hasher.finish().blake3)
}

/// Consecutive chunks gathered into one write.
#[derive(Default)]
struct Pending {
    offset: u64,
    bytes: Vec<u8>,
}

impl Pending {
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
    use std::os::fd::AsRawFd;
    let size = RECEIVE_BUFFER as libc::c_int;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: the pointer and length describe `size`, which outlives the call.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // SO_RCVBUFFORCE needs privileges; SO_RCVBUF is capped by net.core.rmem_max.
        if result == 0 {
            return;
        }
    }
}

fn protocol(detail: &str) -> UdpError {
    TransferError::Protocol(detail.to_string()).into()
}
