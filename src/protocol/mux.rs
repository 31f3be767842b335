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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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
/// at up to this much per round trip (4 MiB at 50 ms: 670 Mbit/s), and the memory a
/// session holds per stream is bounded by it. A reader that stops reading stalls its
/// sender once this much waits, so the sender's deadlines see it.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// How often an idle session checks that the other side still answers; one that misses
/// its pings closes (a machine that vanished without closing its sockets).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A write to the socket that makes no progress for this long closes the session.
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
}

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
    let raw = Prefixed { early, inner: tls };
    let mut session = match role {
        Role::Dialer => Session::new_client(raw, config),
        Role::Accepter => Session::new_server(raw, config),
    };
    let control = session.control();
    let info = Arc::new(SessionInfo {
        peer,
        local_addr,
        peer_addr,
        role,
        secret,
    });
    let (closed_tx, closed) = watch::channel(false);
    let (stop, mut stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let shared = Arc::clone(&info);
    // Inbound streams hold the session as the `Mux` does; the driver itself must not, or
    // it would never see the last holder go.
    let keep = Arc::downgrade(&stop);
    let mut closer = control.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = session.next() => next,
                // Told to stop, or nothing holds the session any more.
                _ = stopped.wait_for(|stop| *stop) => break,
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
        // answer's last frames), then the other side is told (go-away), within a bound.
        let _ = closed_tx.send(true);
        let drain = async {
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
        for _ in 0..2 {
            if let Poll::Ready(written) = Pin::new(&mut self.stream).poll_write(cx, buf) {
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
                // The end of the other side's sending, or a failure: the next read sees it
                // again; the write itself can only wait (or fail) on its own terms.
                Poll::Ready(_) => return Poll::Pending,
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
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
