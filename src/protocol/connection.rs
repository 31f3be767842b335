//! A framed connection over any byte stream: read and write whole frames and typed messages.
//!
//! Generic over `AsyncRead + AsyncWrite` so that TCP today and an encrypted stream later
//! carry the same protocol.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use super::decode::Message;
use super::frame::{DATA_CHUNK, Frame, FrameError, HEADER_LEN, MAX_CONTROL_LEN};

/// Read buffer: one full data frame of the size this box sends, so that a file's frames
/// are each read straight into a buffer of their own and handed on without a copy.
const READ_BUFFER: usize = DATA_CHUNK + HEADER_LEN;

/// A data frame at least this long is read up to its end and no further: bytes of the
/// next frame read with it would have to be copied out when the frame is handed on.
const LARGE_FRAME: usize = 64 * 1024;

/// Write buffer; large writes bypass it.
const WRITE_BUFFER: usize = 64 * 1024;

/// Why a connection could not deliver a frame or message.
#[derive(Debug, Error)]
pub enum ConnectionError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The bytes on the wire are not a valid frame.
    #[error("malformed frame: {0}")]
    Frame(FrameError),
    /// The other side closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The other side closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A control frame that is not a valid message.
    #[error("malformed message: {0}")]
    BadMessage(String),
    /// A data frame where a control message was expected.
    #[error("unexpected data frame")]
    UnexpectedData,
    /// A message too large for a control frame.
    #[error("message of {0} bytes is too large for a control frame")]
    MessageTooLarge(usize),
}

/// By hand rather than `#[from]`: the message quotes the frame's error, so it is not also
/// this error's source (a printer of the chain would say it twice).
impl From<FrameError> for ConnectionError {
    fn from(error: FrameError) -> ConnectionError {
        ConnectionError::Frame(error)
    }
}

/// A framed, buffered connection.
pub struct Connection<S> {
    /// The stream, with writes buffered.
    stream: BufWriter<S>,
    /// Bytes read but not yet parsed into frames.
    buffer: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream: BufWriter::with_capacity(WRITE_BUFFER, stream),
            buffer: BytesMut::with_capacity(READ_BUFFER),
        }
    }

    /// The underlying stream (for peer addresses and socket options).
    pub fn get_ref(&self) -> &S {
        self.stream.get_ref()
    }

    /// The stream back, with the bytes already read from it and not yet parsed: for a
    /// protocol that takes over the stream once the framed greetings are done. Writes must
    /// have been flushed.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.stream.into_inner(), self.buffer)
    }

    /// Reads the next frame; `Ok(None)` when the other side closed cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        loop {
            if let Some(frame) = Frame::parse(&mut self.buffer)? {
                return Ok(Some(frame));
            }
            if self.buffer.capacity() - self.buffer.len() < 4096 {
                self.buffer.reserve(READ_BUFFER);
            }
            let limit = match Frame::missing(&self.buffer) {
                Some(missing) if missing >= LARGE_FRAME => missing,
                _ => usize::MAX,
            };
            let read = match (&mut self.stream)
                .take(limit as u64)
                .read_buf(&mut self.buffer)
                .await
            {
                Ok(read) => read,
                // A peer that closes its socket without TLS's close_notify between frames
                // (a process that exits) has still closed cleanly as far as frames go.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e.into()),
            };
            if read == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnectionError::Truncated)
                };
            }
        }
    }

    /// Reads the next frame, treating a clean close as an error (a reply was expected).
    pub async fn expect_frame(&mut self) -> Result<Frame, ConnectionError> {
        self.read_frame().await?.ok_or(ConnectionError::Closed)
    }

    /// Reads the next control message; `Ok(None)` on a clean close between frames.
    pub async fn read_message<T: Message>(&mut self) -> Result<Option<T>, ConnectionError> {
        match self.read_frame().await? {
            None => Ok(None),
            Some(frame) => decode(frame).map(Some),
        }
    }

    /// Reads the next control message, treating a close as an error.
    pub async fn expect_message<T: Message>(&mut self) -> Result<T, ConnectionError> {
        decode(self.expect_frame().await?)
    }

    /// Writes a control message and flushes it.
    pub async fn write_message<T: Serialize>(
        &mut self,
        message: &T,
    ) -> Result<(), ConnectionError> {
        self.queue_message(message).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes a control message without flushing, for a message that a later one in the
    /// same answer will flush (one send for a small file's start, bytes and end).
    pub async fn queue_message<T: Serialize>(
        &mut self,
        message: &T,
    ) -> Result<(), ConnectionError> {
        let payload =
            serde_json::to_vec(message).map_err(|e| ConnectionError::BadMessage(e.to_string()))?;
        if payload.len() > MAX_CONTROL_LEN {
            return Err(ConnectionError::MessageTooLarge(payload.len()));
        }
        self.stream
            .write_all(&Frame::header(true, payload.len()))
            .await?;
        self.stream.write_all(&payload).await?;
        Ok(())
    }

    /// Sends whatever queued messages and data frames are still buffered.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes a data frame without flushing (the closing control message flushes).
    pub async fn write_data(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.stream
            .write_all(&Frame::header(false, bytes.len()))
            .await?;
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Flushes and closes the sending side (for TLS, with a close_notify).
    pub async fn close(&mut self) -> Result<(), ConnectionError> {
        self.stream.shutdown().await?;
        Ok(())
    }

    /// Writes raw bytes as they are, bypassing framing: only for tests of hostile input.
    #[doc(hidden)]
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

/// Decodes a control frame into a message.
pub fn decode<T: Message>(frame: Frame) -> Result<T, ConnectionError> {
    match frame {
        Frame::Control(payload) => decode_bytes(&payload),
        Frame::Data(_) => Err(ConnectionError::UnexpectedData),
    }
}

fn decode_bytes<T: Message>(payload: &Bytes) -> Result<T, ConnectionError> {
    T::from_json(payload).map_err(|e| ConnectionError::BadMessage(e.to_string()))
}
