//! The shared folder of a box: its index, hashes, per-file locks, trash and the atomic
//! installation of downloaded files.

pub mod filter;
pub mod folder;
pub mod hash;
pub mod install;
pub mod locks;
pub mod path;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

pub use folder::{DIRECTORY_TYPE, Entry, Fingerprint};
pub use hash::{ContentHasher, Digests, FileHash, HashCache};
pub use install::InstallMeta;
pub use locks::PathLocks;
pub use path::{PathError, RelPath, STATE_DIR};

/// Folder under the state folder for partial downloads.
const TMP_DIR: &str = "tmp";

/// File under the state folder that persists the hash cache.
const HASH_CACHE_FILE: &str = "hash-cache.json";

/// What can go wrong with the shared folder.
#[derive(Debug, Error)]
pub enum ShareError {
    /// The path was refused before touching the disk.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Nothing by that name.
    #[error("no such file: '{0}'")]
    NotFound(RelPath),
    /// The path is, or goes through, a symlink; symlinks are never followed.
    #[error("'{0}' is or goes through a symlink, which is never followed")]
    Symlink(RelPath),
    /// A directory where a file was asked for.
    #[error("'{0}' is a directory")]
    IsDirectory(RelPath),
    /// Neither a regular file nor a directory (a socket, a device, a FIFO).
    #[error("'{0}' is not a regular file")]
    NotAFile(RelPath),
    /// A file stands where a folder is needed.
    #[error("a file stands where a folder of '{0}' must go")]
    NotADirectory(RelPath),
    /// The file changed while it was being read.
    #[error("'{0}' changed while it was being read")]
    Changed(RelPath),
    /// The file kept changing and could not be hashed.
    #[error("'{0}' keeps changing; try again when it is no longer being written")]
    Unstable(RelPath),
    /// An operating-system error on a specific path.
    #[error("{path}: {source}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

impl ShareError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> ShareError {
        ShareError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// One box's shared folder and the state that goes with it.
///
/// Cheap to share: wrap it in an `Arc`; the server and the local side of downloads use the
/// same instance so that their per-file locks see each other.
pub struct Share {
    /// The folder's absolute path.
    root: PathBuf,
    /// Remembered hashes.
    cache: HashCache,
    /// Per-path locks between serving and replacing.
    locks: PathLocks,
    /// Counter that makes temporary file names unique within this process.
    next_tmp: AtomicU64,
}

impl Share {
    /// Opens (creating if needed) the shared folder at `root` and its state folder.
    pub fn open(root: &Path) -> Result<Arc<Share>, ShareError> {
        fs::create_dir_all(root).map_err(|e| ShareError::io(root, e))?;
        let root = root.canonicalize().map_err(|e| ShareError::io(root, e))?;
        let state = root.join(STATE_DIR);
        fs::create_dir_all(state.join(TMP_DIR)).map_err(|e| ShareError::io(&state, e))?;
        remove_stale_partials(&state.join(TMP_DIR));
        let cache = HashCache::load(state.join(HASH_CACHE_FILE));
        Ok(Arc::new(Share {
            root,
            cache,
            locks: PathLocks::new(),
            next_tmp: AtomicU64::new(0),
        }))
    }

    /// The folder's absolute path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The box's private state folder (`<root>/.boxsync`).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    /// The per-path locks shared by serving and replacing.
    pub fn locks(&self) -> &PathLocks {
        &self.locks
    }

    /// The hash cache (for its statistics).
    pub fn hash_cache(&self) -> &HashCache {
        &self.cache
    }

    /// Every entry of the folder, recursively, sorted by name.
    pub async fn index(self: &Arc<Self>) -> Result<Vec<Entry>, ShareError> {
        let share = Arc::clone(self);
        blocking(move || folder::list(&share.root)).await
    }

    /// The hashes of one file, taking its shared lock while reading it.
    pub async fn hash(self: &Arc<Self>, rel: &RelPath) -> Result<FileHash, ShareError> {
        let _guard = self.locks.read(rel).await;
        let share = Arc::clone(self);
        let rel = rel.clone();
        let result = blocking(move || share.cache.hash_file(&share.root, &rel)).await;
        self.persist_cache();
        result
    }

    /// The hashes of every file in the folder, sorted by name.
    ///
    /// A file that disappears or keeps changing during the walk is left out rather than
    /// failing the whole answer.
    pub async fn hash_all(self: &Arc<Self>) -> Result<Vec<FileHash>, ShareError> {
        let entries = self.index().await?;
        let mut hashes = Vec::new();
        for entry in entries.iter().filter(|e| !e.is_dir()) {
            let _guard = self.locks.read(&entry.name).await;
            let share = Arc::clone(self);
            let rel = entry.name.clone();
            match blocking(move || share.cache.hash_file(&share.root, &rel)).await {
                Ok(hash) => hashes.push(hash),
                Err(ShareError::NotFound(_) | ShareError::Unstable(_) | ShareError::Changed(_)) => {
                }
                Err(e) => return Err(e),
            }
        }
        let names: std::collections::HashSet<&RelPath> = entries.iter().map(|e| &e.name).collect();
        self.cache.retain(|rel| names.contains(rel));
        self.persist_cache();
        Ok(hashes)
    }

    /// Writes the hash cache if it changed; a failure only costs rehashing later.
    pub fn persist_cache(&self) {
        if let Err(e) = self.cache.save() {
            tracing::warn!(error = %e, "could not persist the hash cache");
        }
    }

    /// A fresh path under `.boxsync/tmp/` for a download in progress.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.state_dir()
            .join(TMP_DIR)
            .join(format!("{}-{n}.part", std::process::id()))
    }

    /// Installs a verified temporary file as `rel` (see [`install::install`]), holding the
    /// exclusive lock on `rel` while the old version moves to the trash and the new one in.
    /// Returns where the previous version went, if there was one.
    pub async fn install(
        self: &Arc<Self>,
        tmp: PathBuf,
        rel: &RelPath,
        meta: InstallMeta,
        digests: Digests,
    ) -> Result<Option<PathBuf>, ShareError> {
        let _guard = self.locks.write(rel).await;
        let share = Arc::clone(self);
        let rel = rel.clone();
        blocking(move || {
            let trashed = install::install(&share.root, &tmp, &rel, meta);
            if trashed.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            let trashed = trashed?;
            // The content is known; remember it so that hashing it later reads nothing.
            if let Ok(Some(meta)) = folder::stat(&share.root, &rel) {
                share.cache.insert(&rel, Fingerprint::of(&meta), digests);
            }
            share.persist_cache();
            Ok(trashed)
        })
        .await
    }
}

/// Removes partial downloads left by processes that no longer run. Names start with the
/// owner's process id, so a `-c` run never deletes the partial files of a live box.
fn remove_stale_partials(dir: &Path) {
    let Ok(items) = fs::read_dir(dir) else {
        return;
    };
    for item in items.flatten() {
        let name = item.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        let alive = owner.is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
        if !alive {
            let _ = fs::remove_file(item.path());
        }
    }
}

/// Runs blocking file work off the async executor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ShareError> + Send + 'static,
) -> Result<T, ShareError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(ShareError::io("<worker>", io::Error::other(e))))
}
