//! The greeting and the answers of the control channel, serialized as JSON in control
//! frames. The requests live in [`crate::requests`], one module each. File bytes never
//! travel inside these messages: they follow a [`Response::FileStart`] as data frames.

use serde::{Deserialize, Serialize};

use crate::share::{Digests, Entry, FileHash, RelPath, ShareError};
use crate::time::Timestamp;

/// Identifies the protocol in the handshake.
pub const MAGIC: &str = "boxsync";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 3;

/// The first message on a connection, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`]; anything else is not a boxsync peer.
    pub magic: String,
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// A client joining with an invitation: its one-time secret (sent only inside TLS,
    /// after the server's key matched the invitation's ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
    /// The port the sender's server listens on (on the connection's address), if it
    /// listens: the other side may dial it back there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<u16>,
    /// Whether the sender's auto-sync runs, so that the other side can tell a two-way sync
    /// from a one-way one.
    #[serde(default)]
    pub syncs: bool,
}

impl Hello {
    /// This build's greeting. (Who sent it is known from the TLS key, not from the text.)
    pub fn new() -> Hello {
        Hello {
            magic: MAGIC.to_string(),
            version: PROTOCOL_VERSION,
            invite: None,
            listen: None,
            syncs: false,
        }
    }
}

impl Default for Hello {
    fn default() -> Hello {
        Hello::new()
    }
}

/// What a box's server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// A batch of index entries; `more` says whether another batch follows.
    Entries(Entries),
    /// A batch of file hashes; `more` says whether another batch follows.
    Hashes(Hashes),
    /// A batch of an answer to `changes`; `more` says whether another batch follows.
    Changes(crate::requests::changes::ChangesBatch),
    /// A file's block list, answering `blocks`.
    Blocks(crate::requests::blocks::BlocksAnswer),
    /// Answers a conditional request whose folder version is still the current one: the
    /// previous answer still holds.
    Unchanged,
    /// A file transfer begins: exactly `size` bytes follow in data frames, then
    /// [`Response::FileEnd`] (or [`Response::Error`] if the file changed while being sent).
    FileStart(FileStart),
    /// A file transfer ended; the digests are of exactly the bytes that were sent.
    FileEnd(FileEnd),
    /// A UDP transfer is ready: the client proves its UDP endpoint with the token, then
    /// datagrams flow from the server's port.
    UdpReady {
        /// The file.
        name: RelPath,
        /// The session id, 16 hex digits.
        session: String,
        /// The secret the client's UDP endpoint must present, 32 hex digits.
        token: String,
        /// File size.
        size: u64,
        /// Last-modified time.
        mtime: Timestamp,
        /// Permission bits.
        mode: u32,
        /// File bytes per datagram.
        chunk_len: u32,
        /// BLAKE3 (and, when asked for, SHA-256 and MD5) of the file as it will be sent.
        digests: Digests,
    },
    /// The request was taken note of.
    Ack,
    /// Every file of a `download_many` has been answered.
    BatchEnd,
    /// A UDP transfer ended.
    UdpEnd {
        /// DATA datagrams sent.
        sent: u64,
        /// Of those, resends.
        resent: u64,
    },
    /// The request failed; the connection stays usable unless the kind says otherwise.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// A one-line explanation for people.
        message: String,
    },
}

/// The fields of [`Response::Entries`]: a batch of index entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    /// This batch.
    pub entries: Vec<Entry>,
    /// Whether another batch follows.
    pub more: bool,
    /// Answering a conditional request, on the last batch: the version of the folder
    /// listed, to send as `unless` next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The fields of [`Response::Hashes`]: a batch of file hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    /// This batch.
    pub hashes: Vec<FileHash>,
    /// Whether another batch follows.
    pub more: bool,
    /// As for [`Entries`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The fields of [`Response::FileStart`]: a file transfer begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStart {
    /// The file.
    pub name: RelPath,
    /// Bytes that follow.
    pub size: u64,
    /// Its last-modified time.
    pub mtime: Timestamp,
    /// Its permission bits.
    pub mode: u32,
}

/// The fields of [`Response::FileEnd`]: a file transfer ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEnd {
    /// BLAKE3 (and, when asked for, SHA-256 and MD5) of the sent bytes.
    pub digests: Digests,
}

/// Kinds of failure a server reports, so that clients can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such file.
    NotFound,
    /// The path or request was refused (outside the folder, a symlink, a directory...).
    Refused,
    /// The request was not understood.
    BadRequest,
    /// The file changed while it was being read.
    Changed,
    /// The server is shutting down or overloaded.
    Unavailable,
    /// The handshake failed (wrong magic or version).
    Handshake,
    /// The caller's box is not trusted by this box.
    NotTrusted,
    /// Something went wrong on the server's side.
    Internal,
}

impl Response {
    /// The answer that reports a share error to a peer: its kind, and a message that
    /// names no path of the serving box outside its folder.
    pub fn from_share_error(error: &ShareError) -> Response {
        let kind = match error {
            ShareError::NotFound(_) | ShareError::NotInTrash { .. } => ErrorKind::NotFound,
            ShareError::Changed(_) | ShareError::Unstable(_) => ErrorKind::Changed,
            ShareError::Path(_)
            | ShareError::Symlink(_)
            | ShareError::IsDirectory(_)
            | ShareError::NotAFile(_)
            | ShareError::NotADirectory(_)
            | ShareError::ReadOnly(_) => ErrorKind::Refused,
            ShareError::Io { .. } | ShareError::Busy { .. } => ErrorKind::Internal,
        };
        let message = match error {
            // A file of the folder, named relative to it, is the peer's business; the
            // server's own absolute paths are not.
            ShareError::Io { path, cause } if path.is_relative() => {
                format!("read error on the peer for '{}': {cause}", path.display())
            }
            ShareError::Io { cause, .. } => format!("read error on the peer: {cause}"),
            ShareError::Busy { .. } => "the peer's folder is held by another process".into(),
            ShareError::ReadOnly(_) => "the peer's folder is read-only".into(),
            other => other.to_string(),
        };
        Response::Error { kind, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read error names a file of the folder (relative) but never the serving box's own
    /// absolute paths.
    #[test]
    fn read_errors_name_only_the_folders_files() {
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let inside = Response::from_share_error(&ShareError::io("music/a.mp3", denied()));
        let outside = Response::from_share_error(&ShareError::io("/home/me/.boxsync/x", denied()));
        match (inside, outside) {
            (
                Response::Error {
                    kind: ErrorKind::Internal,
                    message: inside,
                },
                Response::Error {
                    kind: ErrorKind::Internal,
                    message: outside,
                },
            ) => {
                assert!(inside.contains("'music/a.mp3'"), "{inside}");
                assert!(!outside.contains("/home"), "{outside}");
            }
            other => panic!("expected two internal errors, got {other:?}"),
        }
    }
}
