//! Receiving one file's body on the TCP connection, after its `file_start`: data frames up
//! to the announced size, then the sender's `file_end` (or its `error`). Single downloads
//! and batches share it, so that both enforce the size the same way.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{TransferError, receive_within};
use crate::protocol::connection::decode;
use crate::protocol::message::FileEnd;
use crate::protocol::{Connection, ErrorKind, Frame, Response};
use crate::share::{Digests, RelPath};

/// How a file's body ended, short of a broken connection or protocol.
pub enum BodyEnd {
    /// Exactly the announced bytes, then the sender's digests of them.
    Complete(Digests),
    /// `file_end` after fewer bytes than announced: this many.
    Short(u64),
    /// The sender reported an error instead of `file_end` (the file changed meanwhile).
    Failed {
        /// What kind of failure.
        kind: ErrorKind,
        /// The sender's explanation.
        message: String,
    },
}

/// What came next in a body.
pub enum Next {
    /// The next bytes.
    Data(Bytes),
    /// The end.
    End(BodyEnd),
}

/// The body of one file being received, announced as `size` bytes.
pub struct Body<'a> {
    /// The file (for errors).
    name: &'a RelPath,
    /// Announced size.
    size: u64,
    /// Bytes received so far.
    received: u64,
    /// Longest wait for the next frame.
    stall: Duration,
}

impl<'a> Body<'a> {
    /// The body of `name`, announced as `size` bytes by its `file_start`, each frame of
    /// which must arrive within `stall` of the one before.
    pub fn new(name: &'a RelPath, size: u64, stall: Duration) -> Body<'a> {
        Body {
            name,
            size,
            received: 0,
            stall,
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next data frame or the end. More bytes than announced, or anything but data,
    /// `file_end` or `error`, is an `Err`: the connection is then not at a message
    /// boundary. So is nothing at all within the stall limit ([`TransferError::Stalled`]).
    pub async fn next<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        connection: &mut Connection<S>,
    ) -> Result<Next, TransferError> {
        match receive_within(self.stall, connection.expect_frame()).await? {
            Frame::Data(bytes) => {
                self.received += bytes.len() as u64;
                if self.received > self.size {
                    return Err(TransferError::Size {
                        name: self.name.clone(),
                        expected: self.size,
                        got: self.received,
                    });
                }
                Ok(Next::Data(bytes))
            }
            frame => Ok(Next::End(match decode::<Response>(frame)? {
                Response::FileEnd(FileEnd { digests }) if self.received == self.size => {
                    BodyEnd::Complete(digests)
                }
                Response::FileEnd(FileEnd { .. }) => BodyEnd::Short(self.received),
                Response::Error { kind, message } => BodyEnd::Failed { kind, message },
                other => return Err(unexpected(&other)),
            })),
        }
    }
}

/// The error for an answer that has no place where it came.
pub fn unexpected(response: &Response) -> TransferError {
    TransferError::Protocol(format!("unexpected response {response:?}"))
}
