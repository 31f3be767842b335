//! One TLS connection per pair of boxes, carrying many exchanges in both directions: once
//! the greetings are through, either side opens streams on it (yamux, as libp2p and
//! tentacle use it), and each stream carries requests and answers exactly as a connection
//! of its own would. The box that was dialed can thus pull from, and notify, the box that
//! dialed it over the connection that box opened: nothing need reach a box behind NAT.
//!
//! A [`Mux`] is the session (the handle to open streams, the addresses, whether it is
//! still up); a [`Link`] is one stream on it. Streams the other side opens arrive on the
//! channel given to [`start`], each a [`Link`] that names the box it came from.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_yamux::{Config, Control, Session, StreamHandle};

use super::ConnectionError;
use super::tls::TlsLink;
use crate::types::BoxId;

/// Most streams one session may have open at once; the server's own per-box bounds are
/// lower still.
const MAX_STREAMS: usize = 64;

/// Streams the other side may have opened and this side not yet taken.
const ACCEPT_BACKLOG: usize = 64;

/// The most bytes one stream may have in flight (and a side buffer unread): a stream runs
/// at up to this much per round trip (8 MiB at 50 ms: 1.3 Gbit/s), and the memory a
/// session holds per stream is bounded by it. 4 MiB capped a 1 GiB download on loopback
/// at 0.7 of the single-stream build, the window updates being late (measured: 1.41 s
/// against 1.12 s with 8 MiB; 16 MiB gained nothing more). A reader that stops reading stalls its
/// sender once this much waits, so the sender's deadlines see it.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// How often an idle session checks that the other side still answers; one that misses
/// its pings closes (a machine that vanished without closing its sockets).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A socket that takes nothing for this long (the peer does not read) ends the session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an ending session may take to send what its streams wrote.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The context of the secret a session exports once, from which each side channel's keys
/// are then expanded (see [`Mux::export_secret`]).
const SESSION_SECRET_CONTEXT: &[u8] = b"boxsync session v1";

/// Which side dialed; yamux numbers the streams of each side apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This box dialed the connection.
    Dialer,
    /// This box accepted it.
    Accepter,
}

/// What every stream of a session shares: where its ends are, and the session's secret.
pub struct SessionInfo {
    /// The other box, as its key proved.
    pub peer: BoxId,
    /// This end of the TCP connection.
    pub local_addr: SocketAddr,
    /// The other end.
    pub peer_addr: SocketAddr,
    /// Who dialed.
    pub role: Role,
    /// Keying material exported from the TLS session once, for side channels' keys.
    secret: [u8; 32],
    /// What bounds the session's memory and time against a peer that misbehaves.
    guard: Guard,
}

/// Bounds on what one session may cost this box, whatever the peer does: yamux itself
/// queues without bound what it sends (answers to pings, bytes a peer let through with a
/// window it granted beyond reason), so the bytes streams hand over and the socket has not
/// yet taken are counted here and writers wait above [`SEND_BUDGET`]; a socket that takes
/// nothing for [`WRITE_TIMEOUT`] ends the session; a peer that pings or opens streams
/// faster than any honest box ends it too.
#[derive(Default)]
struct Guard {
    /// Bytes handed to yamux by this side's streams, not yet taken by the socket.
    queued: AtomicUsize,
    /// Writers waiting for the queue to drain below the budget. A std `Mutex`: held only
    /// to push or take.
    waiting: Mutex<Vec<Waker>>,
    /// Since when the socket has refused to take bytes (ms since `epoch`; 0: it takes).
    blocked_since: AtomicU64,
    /// The session's start, for `blocked_since`.
    epoch: OnceLock<Instant>,
}

impl Guard {
    fn now_ms(&self) -> u64 {
        let epoch = self.epoch.get_or_init(Instant::now);
        (epoch.elapsed().as_millis() as u64).max(1)
    }

    /// The socket took `n` bytes (frames: payload and headers).
    fn sent(&self, n: usize) {
        self.blocked_since.store(0, Ordering::Relaxed);
        let before = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            })
            .unwrap_or(0);
        if before.saturating_sub(n) < SEND_BUDGET {
            let waiting =
                std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
            for waker in waiting {
                waker.wake();
            }
        }
    }

    /// The socket would not take bytes just now.
    fn blocked(&self) {
        let now = self.now_ms();
        let _ = self
            .blocked_since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Whether the socket has taken nothing for longer than `limit`.
    fn stuck(&self, limit: Duration) -> bool {
        let since = self.blocked_since.load(Ordering::Relaxed);
        since != 0 && self.now_ms().saturating_sub(since) > limit.as_millis() as u64
    }
}

/// Bytes this side's streams may have handed to the session and the socket not yet taken.
const SEND_BUDGET: usize = 8 * 1024 * 1024;

/// Most pings (needing an answer) a peer may send per second; an honest box sends one per
/// [`KEEPALIVE`].
const MAX_PINGS_PER_SECOND: u32 = 8;

/// Most streams a peer may open per second (sync opens a few per round).
const MAX_OPENS_PER_SECOND: u32 = 512;

/// A running session: opens streams to the other box, and tells whether it is still up.
pub struct Mux {
    /// Where every stream's shared facts are.
    info: Arc<SessionInfo>,
    /// yamux's handle for opening streams.
    control: Control,
    /// Turns true once the session has ended (either side closed, or it failed).
    closed: watch::Receiver<bool>,
    /// Set to end the session; the session also ends once this [`Mux`] and every [`Link`]
    /// of it are gone.
    stop: Arc<watch::Sender<bool>>,
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("the connection to box {peer} is closed")]
pub struct SessionClosed {
    /// The box at the other end.
    pub peer: BoxId,
}

/// Starts the session on an authenticated TLS connection whose greetings are done; `early`
/// holds bytes already read past the greetings. Streams the other side opens go to
/// `inbound` (one that finds it full is refused). The session runs until either side
/// closes it, it fails, [`Mux::close`] is called, or the [`Mux`] and all its streams are
/// dropped.
pub fn start(
    tls: TlsLink,
    early: BytesMut,
    peer: BoxId,
    role: Role,
    inbound: Option<mpsc::Sender<Link>>,
) -> Result<Mux, ConnectionError> {
    let (socket, _) = tls.get_ref();
    let local_addr = socket.local_addr()?;
    let peer_addr = socket.peer_addr()?;
    let secret = super::tls::export(&tls, SESSION_SECRET_CONTEXT)
        .map_err(|e| ConnectionError::Io(io::Error::other(e)))?;
    let config = Config {
        accept_backlog: ACCEPT_BACKLOG,
        enable_keepalive: true,
        keepalive_interval: KEEPALIVE,
        connection_write_timeout: WRITE_TIMEOUT,
        max_stream_count: MAX_STREAMS,
        max_stream_window_size: STREAM_WINDOW,
    };
    let info = Arc::new(SessionInfo {
        peer,
        local_addr,
        peer_addr,
        role,
        secret,
        guard: Guard::default(),
    });
    let raw = Prefixed {
        early,
        inner: tls,
        info: Arc::clone(&info),
        frames: FrameWatch::default(),
    };
    let mut session = match role {
        Role::Dialer => Session::new_client(raw, config),
        Role::Accepter => Session::new_server(raw, config),
    };
    let control = session.control();
    let (closed_tx, closed) = watch::channel(false);
    let (stop, mut stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let shared = Arc::clone(&info);
    // Inbound streams hold the session as the `Mux` does; the driver itself must not, or
    // it would never see the last holder go.
    let keep = Arc::downgrade(&stop);
    let mut closer = control.clone();
    tokio::spawn(async move {
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = tokio::select! {
                next = session.next() => next,
                // Told to stop, or nothing holds the session any more.
                _ = stopped.wait_for(|stop| *stop) => break,
                _ = watchdog.tick() => {
                    if shared.guard.stuck(WRITE_TIMEOUT) {
                        tracing::warn!(peer = %shared.peer, "the peer took nothing for {WRITE_TIMEOUT:?}: session closed");
                        let _ = closed_tx.send(true);
                        return;
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(stream)) => {
                    let Some(keep) = keep.upgrade() else { break };
                    let link = Link {
                        stream,
                        stash: BytesMut::new(),
                        info: Arc::clone(&shared),
                        _session: Arc::clone(&keep),
                    };
                    // A full backlog (or no server here) refuses the stream: dropping it
                    // resets it, and the other side's request fails alone.
                    if let Some(inbound) = &inbound
                        && let Err(e) = inbound.try_send(link)
                    {
                        tracing::debug!(peer = %shared.peer, reason = %e, "stream refused");
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(peer = %shared.peer, error = %e, "session failed");
                    let _ = closed_tx.send(true);
                    return;
                }
                None => {
                    let _ = closed_tx.send(true);
                    return;
                }
            }
        }
        // Ending: no new stream is taken, but what the streams wrote is still sent (an
        // answer's last frames; yamux drops them once told to close), then the other side
        // is told (go-away), within a bound.
        let _ = closed_tx.send(true);
        let guard = &shared.guard;
        let drain = async {
            let mut flushed = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    next = session.next() => if !matches!(next, Some(Ok(_))) { return },
                    _ = flushed.tick() => if guard.queued.load(Ordering::Acquire) == 0 { break },
                }
            }
            let close = closer.close();
            tokio::pin!(close);
            let mut closing = true;
            loop {
                tokio::select! {
                    _ = &mut close, if closing => closing = false,
                    next = session.next() => if !matches!(next, Some(Ok(_))) { break },
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    });
    Ok(Mux {
        info,
        control,
        closed,
        stop,
    })
}

impl Mux {
    /// Opens a stream to the other box: a [`Link`] that carries requests as a connection
    /// of its own would.
    pub async fn open(&self) -> Result<Link, SessionClosed> {
        let closed = || SessionClosed {
            peer: self.info.peer.clone(),
        };
        if self.is_closed() {
            return Err(closed());
        }
        let mut control = self.control.clone();
        let stream = control.open_stream().await.map_err(|_| closed())?;
        Ok(Link {
            stream,
            stash: BytesMut::new(),
            info: Arc::clone(&self.info),
            _session: Arc::clone(&self.stop),
        })
    }

    /// Ends the session (a duplicate, or trust withdrawn): its streams fail at once.
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Completes once the session has ended.
    pub async fn wait_closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// The facts every stream of the session shares.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }
}

impl SessionInfo {
    /// 32 bytes of keying material bound to this session's TLS and to `context`, for keys
    /// of a side channel (a UDP transfer) that must be as authentic as the session. Both
    /// ends get the same bytes for the same context; any other session or context gets
    /// unrelated bytes: the TLS exporter (RFC 8446 §7.5) once per session, then HKDF-SHA256
    /// (RFC 5869) expanded with the context.
    pub fn export_secret(&self, context: &[u8]) -> Result<[u8; 32], ConnectionError> {
        struct Len32;
        impl KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let mut out = [0u8; 32];
        Salt::new(HKDF_SHA256, &[])
            .extract(&self.secret)
            .expand(&[context], Len32)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| ConnectionError::Io(io::Error::other("key expansion failed")))?;
        Ok(out)
    }
}

/// One stream of a session: requests and answers, as on a connection of its own.
pub struct Link {
    /// yamux's stream.
    stream: StreamHandle,
    /// Bytes read while a write waited (see `poll_write`), served to the next reads.
    stash: BytesMut,
    /// The session's shared facts.
    info: Arc<SessionInfo>,
    /// Keeps the session up while the stream lives.
    _session: Arc<watch::Sender<bool>>,
}

impl Link {
    /// The facts of the session this stream belongs to (the other box, the addresses).
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }
}

impl AsyncRead for Link {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.stash.is_empty() {
            let n = self.stash.len().min(buf.remaining());
            buf.put_slice(&self.stash[..n]);
            self.stash.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Link {
    /// tokio-yamux's stream takes in the other side's window updates only when it is read:
    /// a writer whose window is spent would wait forever for a wake-up that only a read
    /// registers. So a write that must wait reads too (keeping what arrives for the next
    /// reads, at most one window), which takes the updates in and wakes this task for them.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let guard = &self.info.guard;
        if guard.queued.load(Ordering::Acquire) >= SEND_BUDGET {
            guard
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(cx.waker().clone());
            // Drained meanwhile: go on rather than wait for a wake-up already given.
            if guard.queued.load(Ordering::Acquire) >= SEND_BUDGET {
                return Poll::Pending;
            }
        }
        for _ in 0..2 {
            if let Poll::Ready(written) = Pin::new(&mut self.stream).poll_write(cx, buf) {
                if let Ok(n) = &written {
                    self.info.guard.queued.fetch_add(*n, Ordering::AcqRel);
                }
                return Poll::Ready(written);
            }
            if self.stash.len() >= STREAM_WINDOW as usize {
                // The other side sent a whole window nobody read: wait for the reader.
                return Poll::Pending;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                    let filled = read.filled().to_vec();
                    self.stash.extend_from_slice(&filled);
                }
                // The other side's sending ended, or the stream failed: no window update
                // can come any more, so the write fails rather than wait for one.
                Poll::Ready(_) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The TLS connection with the bytes already read past the greetings put back in front.
struct Prefixed {
    /// Read before the session started; served first.
    early: BytesMut,
    /// The connection.
    inner: TlsLink,
    /// The session's guard (what the socket took, whether it is stuck).
    info: Arc<SessionInfo>,
    /// The peer's frames as they arrive, for the guard's rate limits.
    frames: FrameWatch,
}

/// Follows the frame headers of what the peer sends (yamux: 12-byte headers, data frames'
/// payloads skipped) and counts the pings and stream openings it asks for per second.
#[derive(Default)]
struct FrameWatch {
    /// The header being read, and how much of it has arrived.
    header: [u8; 12],
    have: usize,
    /// Payload bytes of the current data frame still to skip.
    skip: u64,
    /// The current one-second window, and what was counted in it.
    window: Option<Instant>,
    pings: u32,
    opens: u32,
}

impl FrameWatch {
    /// Takes in `bytes` the peer sent; an error when it asks for more than an honest box.
    fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(bytes.len() as u64)) as usize;
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (12 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 12 {
                break;
            }
            self.have = 0;
            let kind = self.header[1];
            let flags = u16::from_be_bytes([self.header[2], self.header[3]]);
            let length = u32::from_be_bytes([
                self.header[8],
                self.header[9],
                self.header[10],
                self.header[11],
            ]);
            const DATA: u8 = 0;
            const WINDOW_UPDATE: u8 = 1;
            const PING: u8 = 2;
            const SYN: u16 = 1;
            if kind == DATA {
                self.skip = u64::from(length);
            }
            let now = Instant::now();
            if self
                .window
                .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
            {
                self.window = Some(now);
                self.pings = 0;
                self.opens = 0;
            }
            if kind == PING && flags & SYN != 0 {
                self.pings += 1;
            }
            if (kind == DATA || kind == WINDOW_UPDATE) && flags & SYN != 0 {
                self.opens += 1;
            }
            if self.pings > MAX_PINGS_PER_SECOND || self.opens > MAX_OPENS_PER_SECOND {
                return Err(io::Error::other(
                    "the peer pings or opens streams faster than any box does",
                ));
            }
        }
        Ok(())
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            this.frames.feed(&this.early[..n])?;
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &read {
            this.frames.feed(&buf.filled()[before..])?;
        }
        read
    }
}

impl Prefixed {
    /// Notes what a write to the socket did, for the guard.
    fn note(&self, written: &Poll<io::Result<usize>>) {
        match written {
            Poll::Ready(Ok(n)) => self.info.guard.sent(*n),
            Poll::Pending => self.info.guard.blocked(),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        match &flushed {
            Poll::Pending => self.info.guard.blocked(),
            Poll::Ready(_) => self.info.guard.sent(0),
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, flags: u16, stream: u32, length: u32) -> Vec<u8> {
        let mut h = vec![0, kind];
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&stream.to_be_bytes());
        h.extend_from_slice(&length.to_be_bytes());
        h
    }

    /// Data payloads are skipped, headers split across reads are put together, and an
    /// honest pace of pings and stream openings passes.
    #[test]
    fn an_honest_peer_passes_the_watch() {
        let mut watch = FrameWatch::default();
        let mut bytes = header(0, 1, 1, 5);
        bytes.extend_from_slice(b"\x02\x02\x02\x02\x02");
        bytes.extend(header(2, 1, 0, 7));
        for chunk in bytes.chunks(5) {
            watch.feed(chunk).unwrap();
        }
        assert_eq!((watch.pings, watch.opens), (1, 1));
    }

    /// A ping flood ends the session; pongs (ACK) are not counted.
    #[test]
    fn a_ping_flood_is_refused() {
        let mut watch = FrameWatch::default();
        for id in 0..MAX_PINGS_PER_SECOND {
            watch.feed(&header(2, 1, 0, id)).unwrap();
        }
        for id in 0..100 {
            watch.feed(&header(2, 2, 0, id)).unwrap();
        }
        assert!(watch.feed(&header(2, 1, 0, 99)).is_err());
    }

    /// Opening streams faster than any box does ends the session.
    #[test]
    fn a_stream_flood_is_refused() {
        let mut watch = FrameWatch::default();
        let result: io::Result<()> =
            (0..=MAX_OPENS_PER_SECOND).try_for_each(|id| watch.feed(&header(1, 1, id * 2 + 1, 0)));
        assert!(result.is_err());
    }
}
