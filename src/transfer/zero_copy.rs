//! Sending a file's bytes as data frames straight from the page cache to the socket (Linux
//! `sendfile`), for a file whose digests are known without reading it here: the bytes are
//! never copied into this process, which on a gigabyte is most of the sender's work.
//!
//! It runs on a blocking thread, on its own duplicate of the socket's descriptor, so that a
//! read from a cold disk never stalls an async worker and the descriptor stays valid even
//! if the connection is dropped meanwhile. The socket is non-blocking (tokio made it so):
//! the thread waits for room with `poll`.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::frame::Frame;

/// How a body sent by [`send_body`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Every byte, as announced.
    Complete,
    /// The file ended early (it shrank): the frame under way was completed with zeros and
    /// no more were sent; the caller must end the file with an error.
    Short,
}

/// Shuts the socket down when dropped armed: held by the task that waits for a body sent
/// on a blocking thread, so that if that task is dropped (the connection closes, the box
/// shuts down), the thread's next `sendfile` or wait fails at once instead of sending the
/// rest of the file to the peer first.
pub struct StopOnDrop {
    /// The socket the thread sends on.
    socket: Arc<OwnedFd>,
    /// Whether dropping it stops the send.
    armed: bool,
}

impl StopOnDrop {
    /// A guard over `socket`, armed.
    pub fn new(socket: Arc<OwnedFd>) -> StopOnDrop {
        StopOnDrop {
            socket,
            armed: true,
        }
    }

    /// The send ended: dropping the guard does nothing.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // A socket already shut down or failed has nothing left to stop.
            let _ = rustix::net::shutdown(&*self.socket, rustix::net::Shutdown::Both);
        }
    }
}

/// Sends `size` bytes of `file`, from its start, on `socket` as data frames of at most
/// `chunk` bytes each. (`sendfile` on a closed connection fails with `EPIPE`: Rust
/// programs ignore `SIGPIPE`.) Whenever the socket is full, the receiver must make room
/// within `stall`, or the send fails with `TimedOut`.
pub fn send_body(
    socket: &OwnedFd,
    file: &File,
    size: u64,
    chunk: usize,
    stall: Duration,
) -> io::Result<Sent> {
    let mut offset: u64 = 0;
    let mut remaining = size;
    while remaining > 0 {
        let frame = remaining.min(chunk as u64) as usize;
        send_all(socket, &Frame::header(false, frame), stall)?;
        let mut left = frame;
        while left > 0 {
            match rustix::fs::sendfile(socket, file, Some(&mut offset), left) {
                Ok(0) => {
                    // End of file before the announced size: finish the frame so that the
                    // stream stays in step, then let the caller report the change.
                    send_zeros(socket, left, stall)?;
                    return Ok(Sent::Short);
                }
                Ok(n) => left -= n,
                Err(rustix::io::Errno::AGAIN) => wait_writable(socket, stall)?,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        remaining -= frame as u64;
    }
    Ok(Sent::Complete)
}

/// Writes all of `bytes`, telling the kernel that more follows (a frame header goes out
/// with the start of its body, not in a segment of its own).
fn send_all(socket: &OwnedFd, mut bytes: &[u8], stall: Duration) -> io::Result<()> {
    use rustix::net::SendFlags;
    while !bytes.is_empty() {
        match rustix::net::send(socket, bytes, SendFlags::MORE | SendFlags::NOSIGNAL) {
            Ok(sent) => bytes = &bytes[sent..],
            Err(rustix::io::Errno::AGAIN) => wait_writable(socket, stall)?,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends `count` zero bytes: the rest of a frame whose file ended early.
fn send_zeros(socket: &OwnedFd, mut count: usize, stall: Duration) -> io::Result<()> {
    let zeros = [0u8; 4096];
    while count > 0 {
        let n = count.min(zeros.len());
        send_all(socket, &zeros[..n], stall)?;
        count -= n;
    }
    Ok(())
}

/// Waits until the socket has room (or has failed, which the next send reports), at most
/// `stall`.
fn wait_writable(socket: &OwnedFd, stall: Duration) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let limit = Timespec {
        tv_sec: stall.as_secs() as i64,
        tv_nsec: i64::from(stall.subsec_nanos()),
    };
    loop {
        let mut poll = [PollFd::new(socket, PollFlags::OUT)];
        match rustix::event::poll(&mut poll, Some(&limit)) {
            Ok(0) => return Err(super::stopped_reading(stall)),
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A stall limit no test reaches.
    const LONG: Duration = Duration::from_secs(120);

    /// A receiver that takes nothing fails the send once the stall limit passes, with
    /// `TimedOut`.
    #[test]
    fn a_receiver_that_takes_nothing_times_the_send_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let size = 64 << 20;
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let file = File::open(&path).unwrap();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let socket = OwnedFd::from(ours);
        let started = std::time::Instant::now();
        let error = send_body(&socket, &file, size, 256 * 1024, Duration::from_millis(200))
            .expect_err("a send nobody reads completed");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Sends `announced` bytes of a file holding `content` and returns how it ended and
    /// the data frames the other end received.
    fn send(content: &[u8], announced: u64) -> (Sent, Vec<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(content)
            .unwrap();
        let file = File::open(&path).unwrap();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let socket = OwnedFd::from(ours);
        let reader = std::thread::spawn(move || {
            let mut wire = Vec::new();
            theirs.read_to_end(&mut wire).unwrap();
            wire
        });
        let sent = send_body(&socket, &file, announced, 4096, LONG).unwrap();
        drop(socket);
        let mut wire = BytesMut::from(&reader.join().unwrap()[..]);
        let mut frames = Vec::new();
        while let Some(frame) = Frame::parse(&mut wire).unwrap() {
            match frame {
                Frame::Data(bytes) => frames.push(bytes.to_vec()),
                Frame::Control(_) => panic!("a control frame in a body"),
            }
        }
        assert!(wire.is_empty(), "bytes left over after the last frame");
        (sent, frames)
    }

    /// The body arrives whole, in frames of at most the chunk size.
    #[test]
    fn a_file_goes_out_in_frames() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (sent, frames) = send(&content, content.len() as u64);
        assert_eq!(sent, Sent::Complete);
        assert_eq!(
            frames.iter().map(Vec::len).collect::<Vec<_>>(),
            [4096, 4096, 1808]
        );
        assert_eq!(frames.concat(), content);
    }

    /// Dropping the armed guard stops a send that waits for the receiver to make room
    /// (here, one that never reads) at once, instead of when the whole file has gone.
    #[test]
    fn a_dropped_guard_stops_a_stalled_send() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let size = 64 << 20;
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let file = File::open(&path).unwrap();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let socket = Arc::new(OwnedFd::from(ours));
        let guard = StopOnDrop::new(Arc::clone(&socket));
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(send_body(&socket, &file, size, 256 * 1024, LONG));
        });
        drop(guard);
        let outcome = done
            .recv_timeout(Duration::from_secs(10))
            .expect("the send went on after the guard was dropped");
        assert!(outcome.is_err(), "{outcome:?}");
    }

    /// A file that shrank since it was announced ends the frame under way with zeros and
    /// sends no more, so that the stream stays in step for the error that follows.
    #[test]
    fn a_file_that_shrank_ends_short() {
        let content = vec![7u8; 5000];
        let (sent, frames) = send(&content, 20_000);
        assert_eq!(sent, Sent::Short);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], vec![7u8; 4096]);
        let mut second = vec![7u8; 904];
        second.resize(4096, 0);
        assert_eq!(frames[1], second);
    }
}
