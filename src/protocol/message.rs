//! The typed messages of the control channel, serialized as JSON in control frames.
//!
//! Each message's wire form lives here and only here. File bytes never travel inside these
//! messages: they follow a [`Response::FileStart`] as data frames.

use serde::{Deserialize, Serialize};

use crate::share::filter::IndexFilter;
use crate::share::{Digests, Entry, FileHash, RelPath};
use crate::time::Timestamp;

/// Identifies the protocol in the handshake.
pub const MAGIC: &str = "boxsync";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The first message on a connection, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`]; anything else is not a boxsync peer.
    pub magic: String,
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The sender's box id (stable across restarts).
    pub box_id: String,
}

impl Hello {
    /// This build's greeting for a box with the given id.
    pub fn new(box_id: &str) -> Hello {
        Hello {
            magic: MAGIC.to_string(),
            version: PROTOCOL_VERSION,
            box_id: box_id.to_string(),
        }
    }
}

/// What a client asks of a box's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The entries of the shared folder that pass the filter.
    Index {
        /// Which entries.
        filter: IndexFilter,
        /// A conditional request: "unless your folder is still at this version" (see
        /// [`Response::Unchanged`]); the empty string asks for the version without having
        /// one. Absent, the folder is read afresh and no version comes back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unless: Option<String>,
    },
    /// BLAKE3, SHA-256, MD5 and mtime of one file.
    HashVerify {
        /// The file.
        name: RelPath,
    },
    /// BLAKE3, SHA-256, MD5 and mtime of every file (BLAKE3 alone when conditional: sync's).
    HashCheckall {
        /// A conditional request, as for [`Request::Index`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unless: Option<String>,
    },
    /// The bytes of one file.
    Download {
        /// The file.
        name: RelPath,
        /// Leave SHA-256 and MD5 out of the digests: sync needs BLAKE3 alone, and the two
        /// would slow the sender down.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        blake3_only: bool,
    },
    /// The bytes of many files in one exchange, so that a sync of many small files does not
    /// pay a round trip per file: one answer per name, in order (as for `download`, or an
    /// `error`), then `batch_end`.
    DownloadMany {
        /// The files, at most [`MAX_BATCH_NAMES`].
        names: Vec<RelPath>,
    },
    /// Negotiates a UDP download of one file (answered by `udp_ready`).
    DownloadUdp {
        /// The file.
        name: RelPath,
        /// The client's cap on the sending rate, bytes per second.
        #[serde(default)]
        max_rate: Option<u64>,
        /// As for [`Request::Download`].
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        blake3_only: bool,
    },
    /// "My folder changed": the receiver's sync should pull from the sender soon (answered
    /// by `ack`).
    Changed,
    /// "I installed this version of your file under the same name": sync on the receiving
    /// box records that both boxes held it (answered by `ack`).
    Installed {
        /// The file.
        name: RelPath,
        /// BLAKE3 of the installed content.
        blake3: String,
        /// Its size.
        size: u64,
        /// Its modification time.
        mtime: Timestamp,
        /// Its permission bits.
        mode: u32,
    },
    /// Many `installed` notices in one message, oldest first, so that a batch of downloads
    /// is confirmed in one round trip (answered by `ack`).
    InstalledMany {
        /// The versions installed, at most [`MAX_BATCH_NAMES`].
        versions: Vec<InstalledVersion>,
    },
    /// Ends a UDP transfer, complete or not (answered by `udp_end`).
    UdpFinish {
        /// The session, 16 hex digits.
        session: String,
    },
}

impl Request {
    /// Whether this is one of sync's routine requests (notices, conditional listings),
    /// sent too often to be worth a line each in the request log.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            Request::Changed
                | Request::Installed { .. }
                | Request::InstalledMany { .. }
                | Request::Index {
                    unless: Some(_),
                    ..
                }
                | Request::HashCheckall { unless: Some(_) }
        )
    }

    /// A short human description, for the history log.
    pub fn describe(&self) -> String {
        match self {
            Request::Index { filter, .. } => format!("index {}", filter.describe()),
            Request::HashVerify { name } => format!("hash verify {name}"),
            Request::HashCheckall { .. } => "hash checkall".to_string(),
            Request::Download { name, .. } => format!("download tcp {name}"),
            Request::DownloadUdp { name, .. } => format!("download udp {name}"),
            Request::UdpFinish { session } => format!("udp finish {session}"),
            Request::Changed => "changed".to_string(),
            Request::Installed { name, .. } => format!("installed {name}"),
            Request::DownloadMany { names } => match names.as_slice() {
                [] => "download tcp (no files)".to_string(),
                [only] => format!("download tcp {only} (batch)"),
                [first, rest @ ..] => {
                    format!("download tcp {first} and {} more (batch)", rest.len())
                }
            },
            Request::InstalledMany { versions } => format!("installed {} files", versions.len()),
        }
    }
}

/// Most names in one `download_many` or versions in one `installed_many`: a server refuses
/// longer lists, so that one request cannot hold a connection for an unbounded time.
pub const MAX_BATCH_NAMES: usize = 4096;

/// One version of a file a box installed from its peer, as `installed_many` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledVersion {
    /// The file.
    pub name: RelPath,
    /// BLAKE3 of the installed content.
    pub blake3: String,
    /// Its size.
    pub size: u64,
    /// Its modification time.
    pub mtime: Timestamp,
    /// Its permission bits.
    pub mode: u32,
}

/// What a box's server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// A batch of index entries; `more` says whether another batch follows.
    Entries {
        /// This batch.
        entries: Vec<Entry>,
        /// Whether another batch follows.
        more: bool,
        /// Answering a conditional request, on the last batch: the version of the folder
        /// listed, to send as `unless` next time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// A batch of file hashes; `more` says whether another batch follows.
    Hashes {
        /// This batch.
        hashes: Vec<FileHash>,
        /// Whether another batch follows.
        more: bool,
        /// As for [`Response::Entries`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// Answers a conditional request whose folder version is still the current one: the
    /// previous answer still holds.
    Unchanged,
    /// A file transfer begins: exactly `size` bytes follow in data frames, then
    /// [`Response::FileEnd`] (or [`Response::Error`] if the file changed while being sent).
    FileStart {
        /// The file.
        name: RelPath,
        /// Bytes that follow.
        size: u64,
        /// Its last-modified time.
        mtime: Timestamp,
        /// Its permission bits.
        mode: u32,
    },
    /// A file transfer ended; the digests are of exactly the bytes that were sent.
    FileEnd {
        /// BLAKE3 (and, when asked for, SHA-256 and MD5) of the sent bytes.
        digests: Digests,
    },
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
    /// Something went wrong on the server's side.
    Internal,
}
