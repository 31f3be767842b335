//! Why a sync round, or one of its actions, failed: typed, so that the engine and the
//! tests tell the kinds apart, and rendered for a person only by `Display`.

use std::io;

use thiserror::Error;

use super::plan::Skip;
use crate::peer::PeerError;
use crate::share::{RelPath, ShareError};

/// What went wrong in a round with a peer. The round-wide kinds stop the round (it is
/// retried at the next); the per-path kinds (`Transfer`, `Disk`, `Skipped`) fail one path
/// only.
#[derive(Debug, Error)]
pub enum SyncError {
    /// This box's folder could not be read: nothing can be compared.
    #[error("cannot read the shared folder: {0}")]
    ReadFolder(ShareError),
    /// A request to the peer failed (unreachable, connection lost, a broken answer).
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The peer is this box: syncing with itself would compare a folder with itself.
    #[error("that address is this box itself")]
    SelfPeer,
    /// The record of the last agreement could not be read.
    #[error("cannot read the sync record: {0}")]
    LoadRecord(io::Error),
    /// The record of what both now agree on could not be written.
    #[error("cannot save the sync record: {0}")]
    SaveRecord(io::Error),
    /// The mass-delete guard: this box's folder lost most of what was in sync at once (an
    /// unmounted disk, a folder emptied by mistake); the round stops before the peer is
    /// told anything, whatever else appeared in the folder meanwhile.
    #[error(
        "this box's shared folder lost {gone} of the {in_sync} paths in sync: sync paused, nothing deleted on the peer (is the disk mounted?); if the deletions are meant, type 'sync allow-deletes'"
    )]
    WipedHere {
        /// Paths of the record no longer here.
        gone: usize,
        /// Paths in the record.
        in_sync: usize,
    },
    /// The mass-delete guard: the peer's folder lost most of what was in sync at once;
    /// nothing is deleted here.
    #[error(
        "the peer's shared folder lost {gone} of the {in_sync} paths in sync: not deleting them here (is its disk mounted?); if the deletions are meant, type 'sync allow-deletes'"
    )]
    WipedThere {
        /// Paths of the record no longer on the peer.
        gone: usize,
        /// Paths in the record.
        in_sync: usize,
    },
    /// Fetching one path from the peer failed.
    #[error("{path}: {source}")]
    Transfer {
        /// The path here.
        path: RelPath,
        /// Why.
        source: PeerError,
    },
    /// A batch of small files failed as a whole: each of its files fails with it.
    #[error("{path}: {source}")]
    Batch {
        /// The path here.
        path: RelPath,
        /// Why, shared by the batch's files.
        source: std::sync::Arc<PeerError>,
    },
    /// Changing one path here failed (it changed meanwhile, a permission...).
    #[error("{path}: {source}")]
    Disk {
        /// The path.
        path: RelPath,
        /// Why.
        source: ShareError,
    },
    /// A download that did not fit lately, not tried again this round (see
    /// [`super::backoff`]): shown in the status, not logged again.
    #[error("{path}: waiting for space ({needed} bytes needed)")]
    Waiting {
        /// The path here.
        path: RelPath,
        /// The bytes it needs.
        needed: u64,
    },
    /// The plan left a path alone, for a person to sort out.
    #[error("{path}: {reason}")]
    Skipped {
        /// The path.
        path: RelPath,
        /// Why.
        reason: Skip,
    },
}
