//! Moving file bytes between boxes and landing them safely: the transports (TCP and UDP)
//! share the result type, the errors and the rule that nothing unverified becomes visible.
//! A transfer moves bytes once its request ([`crate::requests`]) is sent; it knows nothing
//! of sync.

pub mod batch;
pub mod body;
pub mod delta;
pub mod partial;
pub mod tcp;
pub mod udp;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::protocol::{ConnectionError, ErrorKind};
use crate::share::{DigestSet, Expect, RelPath, ShareError};
use crate::types::{FileVersion, Transport};

/// A progress callback: `(bytes so far, total bytes)`. Called from the async side as data
/// arrives; the shell draws bars with it, tests count bytes with it.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Where a downloaded file lands locally, and on what condition.
#[derive(Debug, Clone)]
pub struct Landing {
    /// The local name (sync gives a conflict copy another name than the peer's).
    pub name: RelPath,
    /// What must be at that name for the download to replace it.
    pub expect: Expect,
    /// Which digests are wanted: all of them for a person, BLAKE3 alone for sync (cold
    /// SHA-256 and MD5 would slow the sender down).
    pub digests: DigestSet,
}

impl Landing {
    /// The same name as on the peer, replacing whatever is there (a person's download).
    pub fn same_name(name: &RelPath) -> Landing {
        Landing {
            name: name.clone(),
            expect: Expect::Anything,
            digests: DigestSet::All,
        }
    }
}

/// One file of a batch download: its name on the peer, and where it lands here.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The name on the peer.
    pub name: RelPath,
    /// Where and on what condition it lands.
    pub landing: Landing,
}

/// A completed, verified, installed download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// The version installed: its name (as on the peer), BLAKE3 (verified end to end),
    /// size, mtime and mode.
    pub version: FileVersion,
    /// SHA-256 of the content, hex (when it was asked for): the sender's, over the bytes
    /// that BLAKE3 proved arrived unchanged.
    pub sha256: Option<String>,
    /// MD5 of the content, hex (when it was asked for), like SHA-256.
    pub md5: Option<String>,
    /// How it travelled.
    pub transport: Transport,
    /// Where it landed locally.
    pub path: PathBuf,
    /// Wall-clock duration of the transfer, verification and installation.
    pub seconds: f64,
    /// Where the replaced local version went, if one was replaced.
    pub replaced: Option<PathBuf>,
    /// UDP only: how many datagrams were sent again.
    pub resent: Option<u64>,
    /// Something the user should know, such as a fallback from UDP to TCP.
    pub note: Option<String>,
    /// Bytes of the file that came over the network.
    pub transferred: u64,
    /// Bytes of the file found on this box instead: blocks of the version it replaced, of
    /// a file with the same content, or kept from an interrupted attempt.
    pub reused: u64,
    /// The local file already was this version: nothing was fetched or changed.
    pub up_to_date: bool,
}

/// Why a download did not complete. Whatever the reason, the shared folder is unchanged.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The connection failed mid-transfer.
    #[error("connection lost during the transfer: {0}")]
    Connection(ConnectionError),
    /// The peer refused or failed the request.
    #[error("{message}")]
    Remote {
        /// What kind of failure the peer reported.
        kind: ErrorKind,
        /// The peer's explanation.
        message: String,
    },
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// More or fewer bytes than announced.
    #[error("size mismatch for '{name}': expected {expected} bytes, got {got}")]
    Size {
        /// The file.
        name: RelPath,
        /// Announced size.
        expected: u64,
        /// Received size.
        got: u64,
    },
    /// The received bytes do not hash to what the peer read.
    #[error("checksum mismatch for '{name}': expected blake3 {expected}, got {got}")]
    Checksum {
        /// The file.
        name: RelPath,
        /// The peer's BLAKE3.
        expected: String,
        /// The BLAKE3 of what arrived.
        got: String,
    },
    /// A batch ended (its connection failed) before this file's turn came.
    #[error("not received: the batch stopped early ({0})")]
    Interrupted(String),
    /// Writing or installing locally failed.
    #[error(transparent)]
    Local(#[from] ShareError),
    /// The peer stopped answering: nothing arrived for this long in the middle of the
    /// exchange.
    #[error("the peer stopped answering: nothing arrived for {}", seconds(*.0))]
    Stalled(Duration),
    /// The file does not fit in the free space here.
    #[error("'{name}' does not fit: it needs {needed} bytes, {free} bytes are free here")]
    NoRoom {
        /// The file, under its name in the shared folder.
        name: RelPath,
        /// The bytes it needs: its size, less what a kept part already holds, plus a
        /// margin.
        needed: u64,
        /// The free space of the file system it must be written to.
        free: u64,
    },
}

/// By hand rather than `#[from]`: the message quotes the connection's error, so it is not
/// also this error's source (a printer of the chain would say it twice).
impl From<ConnectionError> for TransferError {
    fn from(error: ConnectionError) -> TransferError {
        TransferError::Connection(error)
    }
}

/// Room kept free beyond a file's size: 1 MiB and 1/64 of the size, for the file system's
/// own blocks and what else writes meanwhile.
pub fn room_margin(size: u64) -> u64 {
    (1 << 20) + size / 64
}

/// Fails unless a file of `size` bytes, as a peer announced it, fits in the free space here:
/// checked before anything is created or allocated for it, so that a hostile size cannot
/// fill the disk or memory (a bitset sized from it), and a file too big is refused before
/// any byte of it is fetched. `held` bytes of it are already on disk (a part kept to resume
/// it). It needs room in `.boxsync/tmp/` and, when `name`'s folder is on another file
/// system, there too (it is copied across when installed).
pub fn check_room(
    share: &crate::share::Share,
    name: &RelPath,
    size: u64,
    held: u64,
) -> Result<(), TransferError> {
    share.check_writable()?;
    let needed = size.saturating_sub(held).saturating_add(room_margin(size));
    let tmp = share.tmp_dir();
    let tmp_stats = statvfs(&tmp)?;
    let mut free = tmp_stats.0;
    if let Some(folder) = existing_folder_of(share, name)
        && let Ok((there, device)) = statvfs(&folder)
        && device != tmp_stats.1
    {
        free = free.min(there);
    }
    if needed > free {
        return Err(TransferError::NoRoom {
            name: name.clone(),
            needed,
            free,
        });
    }
    Ok(())
}

/// The nearest folder of `name` (its own, or the closest one above it) that exists.
fn existing_folder_of(share: &crate::share::Share, name: &RelPath) -> Option<PathBuf> {
    let mut folder = name.under(share.root()).parent()?.to_path_buf();
    while !folder.is_dir() {
        if !folder.pop() || !folder.starts_with(share.root()) {
            return None;
        }
    }
    Some(folder)
}

/// The free bytes of the file system holding `path`, and its device (`st_dev`).
fn statvfs(path: &std::path::Path) -> Result<(u64, u64), TransferError> {
    use std::os::unix::fs::MetadataExt;
    let stats =
        rustix::fs::statvfs(path).map_err(|e| ShareError::io(path, std::io::Error::from(e)))?;
    let device = std::fs::metadata(path)
        .map_err(|e| ShareError::io(path, e))?
        .dev();
    Ok((stats.f_bavail.saturating_mul(stats.f_frsize), device))
}

/// The free space of the file system of `.boxsync/tmp/`, in bytes.
pub fn free_space(share: &crate::share::Share) -> Result<u64, TransferError> {
    statvfs(&share.tmp_dir()).map(|(free, _)| free)
}

/// A duration as people read it in these errors: `1.5s`.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// Sends with a deadline: `write` (one frame or a few, to a peer) must complete within
/// `limit`, or the send fails with a `TimedOut` error that says the peer stopped reading.
/// What the server's writes go through: a connection that fails is closed, and whatever
/// its request held is released.
pub async fn send_within<T>(
    limit: Duration,
    write: impl Future<Output = Result<T, ConnectionError>>,
) -> Result<T, ConnectionError> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(ConnectionError::Io(stopped_reading(limit))))
}

/// The error of a send that waited `limit` for the peer to take anything.
pub fn stopped_reading(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the peer took nothing for {}", seconds(limit)),
    )
}

/// Receives with a deadline: `read` (one frame from a peer) must complete within `limit`,
/// else [`TransferError::Stalled`].
pub async fn receive_within<T>(
    limit: Duration,
    read: impl Future<Output = Result<T, ConnectionError>>,
) -> Result<T, TransferError> {
    match tokio::time::timeout(limit, read).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(TransferError::Stalled(limit)),
    }
}

impl TransferError {
    /// Whether the connection is still at a message boundary after this error, so that it
    /// can carry the next request; otherwise it must be dropped.
    pub fn leaves_connection_usable(&self) -> bool {
        matches!(
            self,
            TransferError::Remote { .. } | TransferError::Checksum { .. }
        )
    }
}
