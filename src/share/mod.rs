//! The shared folder of a box: its index, hashes, per-file locks, the budget of answers
//! waiting for slow clients, trash and the atomic installation of downloaded files.

pub mod blocks;
pub mod budget;
pub mod bursts;
pub mod dirs;
pub mod filter;
pub mod folder;
pub mod hash;
pub mod ignore;
pub mod index;
pub mod install;
pub mod locks;
pub mod numbering;
pub mod owner;
pub mod path;
pub mod resume;
pub mod staged;
pub mod state;
pub mod trash;
pub mod unshared;
pub mod view;

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use thiserror::Error;

pub use budget::{AnswerBudget, Charge};
pub use dirs::{Dirs, PlaceNewError};
pub use folder::{DIRECTORY_TYPE, Entry, Fingerprint, Scope};
pub use hash::{ContentHasher, DigestSet, Digests, FileHash, HashCache};
pub use ignore::{IGNORE_FILE, Ignore};
pub use index::{ChangeMark, IndexDb, IndexError, Opened};
pub use install::{Expect, InstallMeta};
pub use locks::PathLocks;
pub use numbering::{Item, Numbering};
pub use path::{PathError, RelPath, STATE_DIR};
pub use staged::{LinkMethod, StagedFile, Stager};
pub use view::{ChangesSince, ReadPlan, Snapshot, SnapshotCache};

/// Folder under the state folder for partial downloads.
const TMP_DIR: &str = "tmp";

/// File under the state folder where boxsync before the index database kept its hash
/// cache: imported once, then removed.
const HASH_CACHE_JSON: &str = "hash-cache.json";

/// File under the state folder whose exclusive lock the process numbering the folder's
/// changes holds (see [`Numbering::deferred`]).
const INDEX_LOCK: &str = "index.lock";

/// What can go wrong with the shared folder.
#[derive(Debug, Error)]
pub enum ShareError {
    /// The path was refused before touching the disk.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Nothing by that name.
    #[error("no such file: '{0}'")]
    NotFound(RelPath),
    /// The trash holds no such version of the file.
    #[error("the trash holds no version {version} of '{path}' (see 'trash list {path}')")]
    NotInTrash {
        /// The file.
        path: RelPath,
        /// The version asked for (1: the newest).
        version: usize,
    },
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
    /// The folder cannot be written by this user (see [`state`]): it is served as it is,
    /// and nothing is written to it.
    #[error("{} is read-only here: this box serves it as it is and writes nothing to it", .0.display())]
    ReadOnly(PathBuf),
    /// Another process runs a box on this folder (see [`owner`]): two boxes would write
    /// the same state under the same box ID.
    #[error(
        "another box is running on {}{}: stop it first, or use its shell",
        folder.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Busy {
        /// The shared folder.
        folder: PathBuf,
        /// The process holding it, when its lock file says.
        pid: Option<u32>,
    },
    /// An operating-system error on a specific path.
    #[error("{path}: {cause}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// What the operating system said (in the message, so not also its source).
        cause: io::Error,
    },
}

impl ShareError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>, cause: io::Error) -> ShareError {
        ShareError::Io {
            path: path.as_ref().to_path_buf(),
            cause,
        }
    }
}

/// The folder holding `name`, relative (`""`: the shared folder).
fn parent_of(name: &RelPath) -> &str {
    parent_of_str(name.as_str())
}

fn parent_of_str(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The parts of the folder that a change to `paths` touches, for the next read to read
/// only those: each path's folder and every folder above it (a change can create missing
/// folders on the way, or remove the path's own folder).
fn touched_scopes<'p>(paths: impl IntoIterator<Item = &'p RelPath>) -> Vec<Scope> {
    let mut folders = std::collections::BTreeSet::new();
    for path in paths {
        let mut folder = parent_of(path);
        while folders.insert(folder) && !folder.is_empty() {
            folder = parent_of_str(folder);
        }
    }
    folders
        .into_iter()
        .map(|folder| Scope::Children(folder.to_string()))
        .collect()
}

/// `name` and each folder above it, up to the top (`a/b/c`, `a/b`, `a`).
fn ancestors_or_self(name: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(name), |n| n.rsplit_once('/').map(|(parent, _)| parent))
}

/// Opens the index database under `state` and what it keeps: the hash cache (with the
/// JSON cache of an older boxsync imported once) and the change numbering. A database that
/// cannot be opened at all leaves both in memory, with a warning: the box still works, at
/// the cost of rehashing after a restart and of whole listings to its peers.
fn open_index(state: &Path) -> Result<(HashCache, Numbering, Option<Arc<IndexDb>>), ShareError> {
    let db = match IndexDb::open(state) {
        Ok((db, opened)) => {
            if let Opened::SetAside { moved_to, reason } = &opened {
                tracing::warn!(moved_to = %moved_to.display(), %reason, "the index database could not be used; it was set aside and a new one begun");
            }
            Arc::new(db)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the index database; hashes and change numbers are kept in memory only");
            return Ok((HashCache::in_memory(), Numbering::in_memory(), None));
        }
    };
    let cache = match HashCache::persistent(Arc::clone(&db)) {
        Ok(cache) => cache,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the index database; hashes and change numbers are kept in memory only");
            return Ok((HashCache::in_memory(), Numbering::in_memory(), None));
        }
    };
    let numbering = Numbering::deferred(Arc::clone(&db), state.join(INDEX_LOCK));
    match cache.import_json(&state.join(HASH_CACHE_JSON)) {
        Ok(0) => {}
        Ok(n) => tracing::info!(hashes = n, "imported the hash cache of an older boxsync"),
        Err(e) => tracing::warn!(error = %e, "cannot import the hash cache of an older boxsync"),
    }
    Ok((cache, numbering, Some(db)))
}

/// Receiving folders from which one flush of the whole file system makes a batch's renames
/// durable more cheaply than a flush of each folder (each one a journal commit of its own).
const ONE_FLUSH_FOLDERS: usize = 3;

/// One box's shared folder and the state that goes with it.
///
/// Cheap to share: wrap it in an `Arc`; the server and the local side of downloads use the
/// same instance so that their per-file locks see each other.
pub struct Share {
    /// The folder's absolute path.
    root: PathBuf,
    /// The box's private state folder: `<root>/.boxsync`, or outside a read-only folder.
    state: PathBuf,
    /// Whether the folder is read-only to this user: nothing is ever written to it.
    read_only: bool,
    /// Remembered hashes.
    cache: HashCache,
    /// Per-path locks between serving and replacing.
    locks: PathLocks,
    /// The memory held by listings read afresh for clients and not yet sent.
    answers: AnswerBudget,
    /// Counter that makes temporary file names unique within this process.
    next_tmp: AtomicU64,
    /// Where temporary files go, with this process's id to start their names (asked once,
    /// not for each of thousands of files).
    tmp_prefix: PathBuf,
    /// The latest snapshot and whether the watcher vouches for it.
    view: SnapshotCache,
    /// Serializes fresh reads of the folder: each is numbered against the one before
    /// (and a reader that waited takes the answer of the one it waited for).
    reading: tokio::sync::Mutex<()>,
    /// How files staged under `.boxsync/tmp/` can be left unnamed until installed (found
    /// out at the first batch whose probe gets an answer; `None`: they cannot).
    link_method: OnceLock<Option<LinkMethod>>,
    /// The ignore rules in force, with the identity of the ignore file they were read from
    /// (`None`: there was none). Behind a std mutex, never held across an await.
    rules: Mutex<(Option<Fingerprint>, Arc<Ignore>)>,
    /// This process's lock on the folder: one box per folder.
    owner: Arc<owner::FolderLock>,
    /// The index database, when there is one: written back should the state folder go.
    db: Option<Arc<IndexDb>>,
    /// Recent installations, so that a file written in bursts leaves one intermediate
    /// version in the trash, not one per burst. A std mutex, never held across an await.
    bursts: Mutex<bursts::Bursts>,
    /// What the latest reads left out that a person may expect to be shared (symlinks,
    /// special files, names that cannot travel). A std mutex, never held across an await.
    unshared: Mutex<unshared::NotSharedList>,
}

impl Share {
    /// Opens (creating if needed) the shared folder at `root` and its state folder.
    pub fn open(root: &Path) -> Result<Arc<Share>, ShareError> {
        fs::create_dir_all(root).map_err(|e| ShareError::io(root, e))?;
        let root = root.canonicalize().map_err(|e| ShareError::io(root, e))?;
        // Created owner-only: the state (key, history, records, trash, partial downloads)
        // is the owner's only.
        let state::StateDir {
            path: state,
            read_only,
        } = state::locate(&root)?;
        // Before anything of the state is touched: a second box on the folder changes nothing.
        let owner = owner::FolderLock::acquire(&root, &state)?;
        remove_stale_partials(&state.join(TMP_DIR));
        sweep_resume_parts(&state.join(TMP_DIR));
        let (cache, numbering, db) = open_index(&state)?;
        let rules = ignore_file_identity(&root);
        let ignore = match rules {
            Some(_) => Ignore::load(&root),
            None => Ignore::built_in(),
        };
        Ok(Arc::new(Share {
            root,
            tmp_prefix: state.join(TMP_DIR).join(std::process::id().to_string()),
            state,
            read_only,
            cache,
            locks: PathLocks::new(),
            answers: AnswerBudget::new(),
            next_tmp: AtomicU64::new(0),
            view: SnapshotCache::new(numbering),
            reading: tokio::sync::Mutex::new(()),
            link_method: OnceLock::new(),
            rules: Mutex::new((rules, Arc::new(ignore))),
            owner,
            db,
            bursts: Mutex::new(bursts::Bursts::new()),
            unshared: Mutex::new(unshared::NotSharedList::default()),
        }))
    }

    /// The ignore rules in force (see [`ignore`]): read again when `.boxsyncignore`
    /// changed, which costs a stat per call. A change makes the next read of the folder a
    /// whole one: what it lists changed.
    pub fn ignore(&self) -> Arc<Ignore> {
        let now = ignore_file_identity(&self.root);
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if rules.0 != now {
            let fresh = match now {
                Some(_) => Ignore::load(&self.root),
                None => Ignore::built_in(),
            };
            if !fresh.invalid.is_empty() {
                tracing::warn!(lines = %crate::text::for_log(fresh.invalid.join(" | ")), "lines of {IGNORE_FILE} that are not valid patterns are left out");
            }
            *rules = (now, Arc::new(fresh));
            self.view.changed();
        }
        Arc::clone(&rules.1)
    }

    /// Refuses a path the box keeps to itself, as if it were not there (a peer learns
    /// nothing of it): what every request that names a file checks before touching it.
    pub fn check_served(&self, rel: &RelPath) -> Result<(), ShareError> {
        match self.ignore().ignores(rel) {
            true => Err(ShareError::NotFound(rel.clone())),
            false => Ok(()),
        }
    }

    /// The folder's absolute path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the state folder is as this box made it: its lock file is the one held and
    /// `tmp/` is there (two lookups, cheap enough before each download).
    pub fn state_intact(&self) -> bool {
        self.owner.intact() && self.tmp_dir().is_dir()
    }

    /// Recreates what is missing of the state folder when it was deleted (in whole or in
    /// part) while the box ran: the folder itself (owner-only), `tmp/`, the lock on the
    /// folder, the index database (written back from the open connection). Returns what
    /// was recreated, for the caller to say once; nothing when the state was intact.
    /// Fails with [`ShareError::Busy`] when another box took the folder meanwhile.
    pub fn restore_state(&self) -> Result<Vec<&'static str>, ShareError> {
        if self.state_intact() {
            return Ok(Vec::new());
        }
        let state = self.state_dir();
        let mut restored = Vec::new();
        if !state.is_dir() {
            restored.push("the state folder");
        }
        let tmp = self.tmp_dir();
        if !tmp.is_dir() {
            fs::create_dir_all(&tmp).map_err(|e| ShareError::io(&tmp, e))?;
            restored.push("tmp/");
        }
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700))
            .map_err(|e| ShareError::io(&state, e))?;
        if !self.owner.intact() {
            self.owner.restore()?;
            restored.push(owner::LOCK_FILE);
        }
        if let Some(db) = &self.db {
            match db.restore() {
                Ok(true) => restored.push(index::INDEX_FILE),
                Ok(false) => {}
                // The open connection goes on: what it holds is lost at the next start.
                Err(e) => tracing::warn!(error = %e, "cannot write the index database back"),
            }
        }
        Ok(restored)
    }

    /// The box's private state folder (`<root>/.boxsync`, or outside a read-only folder:
    /// see [`state`]).
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    /// Whether the folder is read-only to this user: served as it is, never written to.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Fails with [`ShareError::ReadOnly`] for a read-only folder: what anything that
    /// would write to the folder checks first (before a byte is fetched for it).
    pub fn check_writable(&self) -> Result<(), ShareError> {
        match self.read_only {
            true => Err(ShareError::ReadOnly(self.root.clone())),
            false => Ok(()),
        }
    }

    /// The per-path locks shared by serving and replacing.
    pub fn locks(&self) -> &PathLocks {
        &self.locks
    }

    /// The bound on memory held by listings waiting for slow clients.
    pub fn answers(&self) -> &AnswerBudget {
        &self.answers
    }

    /// The hash cache (for its statistics).
    pub fn hash_cache(&self) -> &HashCache {
        &self.cache
    }

    /// Every entry of the folder, recursively, sorted by name.
    pub async fn index(self: &Arc<Self>) -> Result<Vec<Entry>, ShareError> {
        let share = Arc::clone(self);
        blocking(move || folder::list(&share.root, &share.ignore())).await
    }

    /// The block list of one file (read once per version, then stored), taking its
    /// shared lock while reading it: what a peer asks for before it fetches only the
    /// blocks it lacks.
    pub async fn block_list(self: &Arc<Self>, rel: &RelPath) -> Result<blocks::Listed, ShareError> {
        self.check_served(rel)?;
        let _guard = self.locks.read(rel).await;
        let share = Arc::clone(self);
        let rel = rel.clone();
        let result =
            blocking(move || blocks::read_list(&mut Dirs::open(&share.root)?, &rel, &share.cache))
                .await;
        self.persist_cache();
        result
    }

    /// The hashes of one file, taking its shared lock while reading it.
    pub async fn hash(self: &Arc<Self>, rel: &RelPath) -> Result<FileHash, ShareError> {
        self.check_served(rel)?;
        let _guard = self.locks.read(rel).await;
        let share = Arc::clone(self);
        let rel = rel.clone();
        let result =
            blocking(move || share.cache.hash_file(&share.root, &rel, DigestSet::All)).await;
        self.persist_cache();
        result
    }

    /// The hashes of every file in the folder, sorted by name, in one pass off the async
    /// threads (unchanged files answered from the cache without touching them).
    ///
    /// A file that disappears during the walk is left out: it is no longer in the folder.
    /// A file that is there but cannot be hashed (it keeps changing, cannot be read) fails
    /// the answer with its error: left out, it would read as absent, and the answer has no
    /// place for one file's error.
    pub async fn hash_all(self: &Arc<Self>) -> Result<Vec<FileHash>, ShareError> {
        let share = Arc::clone(self);
        let hashes = blocking(move || {
            let entries = folder::list_detailed(&share.root, &share.ignore())?;
            share.hash_listed(&entries)
        })
        .await;
        self.persist_cache();
        hashes
    }

    /// [`Share::hash_all`] for the files of `entries`, a listing of the folder.
    fn hash_listed(&self, entries: &[(Entry, Fingerprint)]) -> Result<Vec<FileHash>, ShareError> {
        let names: std::collections::HashSet<&RelPath> =
            entries.iter().map(|(e, _)| &e.name).collect();
        self.cache.retain(|rel| names.contains(rel));
        let mut dirs = Dirs::open(&self.root)?;
        let mut hashes = Vec::with_capacity(entries.len());
        for (entry, fingerprint) in entries.iter().filter(|(entry, _)| !entry.is_dir()) {
            match self.cached_or_hashed(&mut dirs, entry, fingerprint, DigestSet::All) {
                Ok(hash) => hashes.push(hash),
                // Gone since the listing, or never still long enough to hash: not part of
                // the folder as it stands (the documented rule); anything else is an error.
                Err(ShareError::NotFound(_) | ShareError::Changed(_) | ShareError::Unstable(_)) => {
                }
                // Named as the peer knows it (relative), so that the answer says which file.
                Err(ShareError::Io { cause, .. }) => {
                    return Err(ShareError::io(entry.name.as_str(), cause));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(hashes)
    }

    /// The hashes of a listed file: from the cache when its fingerprint (from the listing)
    /// matches, which touches nothing on disk; otherwise by reading it once it holds still.
    fn cached_or_hashed(
        &self,
        dirs: &mut Dirs,
        entry: &Entry,
        fingerprint: &Fingerprint,
        set: DigestSet,
    ) -> Result<FileHash, ShareError> {
        match self.cache.lookup(&entry.name, fingerprint, set) {
            Some(digests) => Ok(FileHash {
                name: entry.name.clone(),
                blake3: digests.blake3,
                sha256: digests.sha256,
                md5: digests.md5,
                mtime: entry.mtime,
                size: entry.size,
            }),
            None => self.cache.hash_file_in(dirs, &entry.name, set),
        }
    }

    /// Every entry with, for files, its hashes, read now in one pass off the async threads:
    /// what sync compares (the rescan: the whole folder, whatever the watcher said). A file
    /// that could not be hashed (it vanished or keeps changing) comes with `None`, so that
    /// sync leaves it alone this round instead of taking it as absent. The read becomes the
    /// latest snapshot (see [`Share::recent_snapshot`]).
    pub async fn snapshot(self: &Arc<Self>) -> Result<Arc<Snapshot>, ShareError> {
        self.read(true).await
    }

    /// A fresh snapshot: of the whole folder when `whole`, else, when the watcher placed
    /// every change since the latest one, of the changed parts only, the rest taken from
    /// it. Reads are one at a time; one that waited for another takes its answer when
    /// nothing changed since.
    async fn read(self: &Arc<Self>, whole: bool) -> Result<Arc<Snapshot>, ShareError> {
        let asked = std::time::Instant::now();
        let _reading = self.reading.lock().await;
        // Taken before the plan: changed rules make it a whole read.
        let ignore = self.ignore();
        if !whole && let Some(snapshot) = self.view.read_since(asked) {
            return Ok(snapshot);
        }
        let share = Arc::clone(self);
        let taken = std::time::Instant::now();
        let (generation, plan) = self.view.begin_read(whole);
        blocking(move || {
            let items = match plan {
                ReadPlan::Whole => share.read_whole(&ignore),
                ReadPlan::Partial { base, scopes } => share.read_partial(&base, scopes, &ignore),
            };
            let snapshot = match items {
                Ok(items) => Ok(share.view.store(generation, taken, items)),
                // What the watcher reported was taken by this read: the next reads it all
                // (noted here, not by the caller, who may have gone meanwhile).
                Err(e) => {
                    share.view.changed();
                    Err(e)
                }
            };
            share.persist_cache_now();
            snapshot
        })
        .await
    }

    /// Every entry of the folder with, for files, their hashes (from the cache when
    /// unchanged); forgets the cached hashes of files no longer there.
    fn read_whole(&self, ignore: &Ignore) -> Result<Vec<Item>, ShareError> {
        let mut unshared = Vec::new();
        let entries = folder::list_detailed_noting(&self.root, ignore, &mut unshared)?;
        let new = self.unshared().replace_all(unshared);
        log_unshared(new);
        let names: std::collections::HashSet<&RelPath> =
            entries.iter().map(|(e, _)| &e.name).collect();
        self.cache.retain(|rel| names.contains(rel));
        self.hashed(entries)
    }

    /// The entries with, for files, their hashes; sync compares BLAKE3 alone (MD5 and
    /// SHA-256 wait until a person asks).
    fn hashed(&self, entries: Vec<(Entry, Fingerprint)>) -> Result<Vec<Item>, ShareError> {
        let mut dirs = Dirs::open(&self.root)?;
        Ok(entries
            .into_iter()
            .map(|(entry, fingerprint)| {
                let hash = match entry.is_dir() {
                    true => None,
                    false => self
                        .cached_or_hashed(&mut dirs, &entry, &fingerprint, DigestSet::Blake3)
                        .ok(),
                };
                (entry, hash)
            })
            .collect())
    }

    /// `base` with the parts of the folder in `scopes` read afresh: a folder's children
    /// (with, as a subtree, every child folder that appeared or went since `base`), or a
    /// whole subtree. Paths outside them are taken from `base` unchanged.
    fn read_partial(
        &self,
        base: &Snapshot,
        scopes: Vec<Scope>,
        ignore: &Ignore,
    ) -> Result<Vec<Item>, ShareError> {
        let mut children = std::collections::HashSet::new();
        let mut subtrees = std::collections::HashSet::new();
        for scope in scopes {
            match scope {
                Scope::Children(folder) => children.insert(folder),
                Scope::Subtree(folder) => subtrees.insert(folder),
            };
        }
        // The folders directly in each folder of `base`, looked up for each scope.
        let mut folders_in: std::collections::HashMap<&str, std::collections::HashSet<&str>> =
            std::collections::HashMap::new();
        for (entry, _) in base.items.iter().filter(|(entry, _)| entry.is_dir()) {
            let name = entry.name.as_str();
            folders_in
                .entry(parent_of_str(name))
                .or_default()
                .insert(name);
        }
        let mut fresh = Vec::new();
        for folder in &children {
            let scope = Scope::Children(folder.clone());
            let mut unshared = Vec::new();
            let listed = folder::list_scope_noting(&self.root, &scope, ignore, &mut unshared)?;
            log_unshared(self.unshared().replace_scope(&scope, unshared));
            // A child folder that appeared (or turned from a file into a folder) is read
            // whole; one that went (or became a file) takes what was below it with it.
            let dirs_now: std::collections::HashSet<&str> = listed
                .iter()
                .filter(|(entry, _)| entry.is_dir() && parent_of(&entry.name) == folder)
                .map(|(entry, _)| entry.name.as_str())
                .collect();
            let none = std::collections::HashSet::new();
            let dirs_before = folders_in.get(folder.as_str()).unwrap_or(&none);
            let changed: Vec<String> = dirs_now
                .symmetric_difference(dirs_before)
                .map(|name| name.to_string())
                .collect();
            subtrees.extend(changed);
            fresh.extend(listed);
        }
        for folder in &subtrees {
            let scope = Scope::Subtree(folder.clone());
            let mut unshared = Vec::new();
            fresh.extend(folder::list_scope_noting(
                &self.root,
                &scope,
                ignore,
                &mut unshared,
            )?);
            log_unshared(self.unshared().replace_scope(&scope, unshared));
        }
        fresh.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        fresh.dedup_by(|a, b| a.0.name == b.0.name);
        let covered = |name: &RelPath| {
            let name = name.as_str();
            children.contains(parent_of_str(name))
                || children.contains(name)
                || ancestors_or_self(name).any(|a| subtrees.contains(a))
        };
        let fresh = self.hashed(fresh)?;
        // Only the items under a scoped folder can be covered, and under each folder they
        // sit together (the names that begin with it), found by binary search: the rest
        // of a folder of a million files is copied without a check. The root's scope
        // covers items everywhere, so then every item is checked.
        let whole = children.contains("") || subtrees.contains("");
        let mut spans: Vec<(usize, usize)> = Vec::new();
        if !whole {
            let base = &base.items;
            for folder in children.iter().chain(&subtrees) {
                let at = base.partition_point(|(e, _)| e.name.as_str() < folder.as_str());
                spans.push((at, at + 1)); // the folder itself
                let below = format!("{folder}/");
                let lo = base.partition_point(|(e, _)| e.name.as_str() < below.as_str());
                let len = base[lo..].partition_point(|(e, _)| e.name.as_str().starts_with(&below));
                spans.push((lo, lo + len));
            }
            spans.sort_unstable();
        }
        let mut span = spans.iter().peekable();
        let mut may_be_covered = |at: usize| {
            while span.next_if(|(_, end)| *end <= at).is_some() {}
            whole || span.peek().is_some_and(|(start, _)| *start <= at)
        };
        let mut items = Vec::with_capacity(base.items.len() + fresh.len());
        let mut fresh = fresh.into_iter().peekable();
        for (at, item) in base.items.iter().enumerate() {
            if may_be_covered(at) && covered(&item.0.name) {
                continue;
            }
            while let Some(next) = fresh.next_if(|(entry, _)| entry.name < item.0.name) {
                items.push(next);
            }
            items.push(item.clone());
        }
        items.extend(fresh);
        Ok(items)
    }

    /// The latest snapshot while the watcher vouches that nothing changed since it was
    /// read, else a fresh one: what conditional requests from peers are answered from.
    pub async fn recent_snapshot(self: &Arc<Self>) -> Result<Arc<Snapshot>, ShareError> {
        match self.view.trusted() {
            Some(snapshot) => Ok(snapshot),
            None => self.read(false).await,
        }
    }

    /// The snapshot cache, for the watcher to report changes to and for sync to say how
    /// long a snapshot may be trusted.
    pub fn view(&self) -> &SnapshotCache {
        &self.view
    }

    /// Writes the hash cache now if it changed (at shutdown); a failure only costs
    /// rehashing later.
    pub fn flush_cache(&self) {
        if let Err(e) = self.cache.save() {
            tracing::warn!(error = %e, "could not persist the hash cache");
        }
    }

    /// Writes the hash cache if it changed and was not written in the last seconds, off
    /// the async threads (it is a flushed database transaction); a failure only costs
    /// rehashing later.
    pub fn persist_cache(self: &Arc<Self>) {
        let share = Arc::clone(self);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || share.persist_cache_now())),
            Err(_) => share.persist_cache_now(),
        }
    }

    /// [`Share::persist_cache`] on this thread.
    fn persist_cache_now(&self) {
        if let Err(e) = self.cache.save_if_due() {
            tracing::warn!(error = %e, "could not persist the hash cache");
        }
    }

    /// `.boxsync/tmp/`: downloads in progress.
    pub fn tmp_dir(&self) -> PathBuf {
        self.state_dir().join(TMP_DIR)
    }

    /// A fresh path under `.boxsync/tmp/` for a download in progress.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let mut name = self.tmp_prefix.clone().into_os_string();
        name.push(format!("-{n}.part"));
        PathBuf::from(name)
    }

    /// Where a batch's files are written before they are installed together
    /// ([`Share::install_batch`]).
    pub fn stager(&self) -> Stager {
        let tmp_dir = self.state_dir().join(TMP_DIR);
        let method = match self.link_method.get() {
            Some(known) => *known,
            None => match LinkMethod::probe(&tmp_dir, &self.temp_path()) {
                Ok(found) => *self.link_method.get_or_init(|| found),
                // Not known yet: named files this time, and the next batch asks again.
                Err(_) => None,
            },
        };
        Stager::new(&tmp_dir, method)
    }

    /// Installs a verified temporary file as `rel` (see [`install::install`]), holding the
    /// exclusive lock on `rel` while the old version moves to the trash and the new one in,
    /// provided `rel` still looks as `expect` says. Returns where the previous version
    /// went, if there was one.
    pub async fn install(
        self: &Arc<Self>,
        tmp: PathBuf,
        rel: &RelPath,
        meta: InstallMeta,
        digests: Digests,
        expect: &Expect,
    ) -> Result<Option<PathBuf>, ShareError> {
        self.install_listed(tmp, rel, meta, digests, None, expect)
            .await
    }

    /// [`Share::install`] of a file whose block list is known: it is stored with the
    /// installed version, so that serving it later reads nothing to list it.
    pub async fn install_listed(
        self: &Arc<Self>,
        tmp: PathBuf,
        rel: &RelPath,
        meta: InstallMeta,
        digests: Digests,
        list: Option<&blocks::BlockList>,
        expect: &Expect,
    ) -> Result<Option<PathBuf>, ShareError> {
        let list = list.cloned();
        let _guard = self.locks.write(rel).await?;
        let share = Arc::clone(self);
        let rel = rel.clone();
        let expect = expect.clone();
        self.changing(touched_scopes([&rel]), move || {
            let intermediate = share.replacing_intermediate(&rel);
            let trashed = install::install(&share.root, &tmp, &rel, meta, &expect);
            if trashed.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            let trashed = trashed?;
            // The content is known; remember it so that hashing it later reads nothing.
            let mut installed = None;
            if let Ok(Some(meta)) = folder::stat(&share.root, &rel) {
                let fingerprint = Fingerprint::of(&meta);
                share.cache.insert(&rel, fingerprint, digests);
                if let Some(list) = &list {
                    share.cache.store_blocks(&rel, &fingerprint, list);
                }
                installed = Some(fingerprint);
            }
            share.note_installed(&rel, installed, trashed.as_deref(), intermediate);
            share.persist_cache();
            Ok(trashed)
        })
        .await
    }
}

/// One rename for [`Share::move_files`]: a file a peer renamed or moved, taken here the same
/// way.
#[derive(Debug, Clone)]
pub struct FileMove {
    /// Its name here now.
    pub from: RelPath,
    /// Its new name, which must be free.
    pub to: RelPath,
    /// What must be at `from`.
    pub expect: Expect,
    /// The peer's mtime and mode for it.
    pub meta: InstallMeta,
}

/// One verified temporary file of a batch, and where it goes.
#[derive(Debug)]
pub struct BatchInstall {
    /// The staged file, written and given its final mode and mtime, not yet flushed.
    pub staged: StagedFile,
    /// Where it goes.
    pub rel: RelPath,
    /// Its content's digests (remembered in the hash cache).
    pub digests: Digests,
    /// What must be at `rel` for it to be replaced.
    pub expect: Expect,
}

impl Share {
    /// Installs many verified temporary files at once, with the same guarantees as
    /// [`Share::install`] for each, at a fraction of the cost for small files: one flush of
    /// the file system for all of them before any becomes visible (instead of an `fsync`
    /// each), then each rename under its path's exclusive lock after re-checking its
    /// `expect`, then one flush of the folders that received files.
    ///
    /// Returns one result per item, in order; a failed item's temporary file is removed
    /// and does not stop the others.
    pub async fn install_batch(
        self: &Arc<Self>,
        items: Vec<BatchInstall>,
    ) -> Vec<Result<Option<PathBuf>, ShareError>> {
        let share = Arc::clone(self);
        let scopes = touched_scopes(items.iter().map(|item| &item.rel));
        self.changing_each(items.len(), scopes, move || share.install_batch_now(items))
            .await
    }

    fn install_batch_now(
        &self,
        items: Vec<BatchInstall>,
    ) -> Vec<Result<Option<PathBuf>, ShareError>> {
        let tmp_dir = self.state_dir().join(TMP_DIR);
        if let Err(e) = install::sync_file_system(&tmp_dir) {
            let reason = e.to_string();
            // Dropping the staged files removes them.
            return items
                .into_iter()
                .map(|_| Err(ShareError::io(&tmp_dir, io::Error::other(reason.clone()))))
                .collect();
        }
        let mut folders = std::collections::BTreeSet::new();
        // New files go in by name from folders held open, in one link or rename that
        // refuses to replace anything; the rest (and everything, should opening fail) by
        // path.
        let mut dirs = Dirs::open(&self.root).ok();
        let tmp_fd = dirs::open_dir(&tmp_dir).ok();
        let results = items
            .into_iter()
            .map(|mut item| {
                let placed = self.locks.with_write_blocking(&item.rel, || {
                    if let Some(dirs) = dirs.as_mut()
                        && matches!(item.expect, Expect::Absent | Expect::Anything)
                    {
                        let put = match (item.staged.unnamed(), &tmp_fd) {
                            (Some((file, method)), _) => dirs.link_new(file, method, &item.rel),
                            (None, Some(tmp_fd)) => {
                                match item.staged.path(|| self.temp_path()).map(Path::file_name) {
                                    Ok(Some(name)) => {
                                        dirs.place_new(tmp_fd.as_fd(), Path::new(name), &item.rel)
                                    }
                                    _ => Err(PlaceNewError::Unsupported),
                                }
                            }
                            (None, None) => Err(PlaceNewError::Unsupported),
                        };
                        match put {
                            Ok(fingerprint) => {
                                // The content is known; hashing it later reads nothing.
                                if let Some(fingerprint) = fingerprint {
                                    self.cache.insert(&item.rel, fingerprint, item.digests);
                                }
                                self.note_installed(&item.rel, fingerprint, None, false);
                                return Ok(None);
                            }
                            Err(PlaceNewError::Failed(e)) => return Err(e),
                            // Something is there (to replace or to refuse), or the file
                            // system cannot say: the general way decides.
                            Err(PlaceNewError::Exists | PlaceNewError::Unsupported) => {}
                        }
                    }
                    let tmp = item.staged.path(|| self.temp_path())?;
                    let intermediate = self.replacing_intermediate(&item.rel);
                    let placed = install::place(&self.root, tmp, &item.rel, &item.expect);
                    // The folders on the way were checked as it was placed.
                    if let Ok(trashed) = &placed {
                        let mut installed = None;
                        if let Ok(meta) = fs::symlink_metadata(item.rel.under(&self.root)) {
                            // The content is known; hashing it later reads nothing.
                            let fingerprint = Fingerprint::of(&meta);
                            self.cache.insert(&item.rel, fingerprint, item.digests);
                            installed = Some(fingerprint);
                        }
                        self.note_installed(&item.rel, installed, trashed.as_deref(), intermediate);
                    }
                    placed
                });
                let placed = placed.and_then(|placed| placed);
                if placed.is_ok() {
                    item.staged.installed();
                    if let Some(parent) = item.rel.under(&self.root).parent() {
                        folders.insert(parent.to_path_buf());
                    }
                }
                // A failed item's staged file goes with it.
                placed
            })
            .collect();
        // Make the links and renames durable: a flush per folder, or, for files spread over
        // many folders, one flush of the file system (each folder's flush is a journal
        // commit of its own). Best effort: what is visible is correct either way.
        if folders.len() >= ONE_FLUSH_FOLDERS {
            let _ = install::sync_file_system(&self.root);
        } else {
            for folder in &folders {
                install::sync_dir(folder);
            }
        }
        self.persist_cache_now();
        results
    }

    fn unshared(&self) -> std::sync::MutexGuard<'_, unshared::NotSharedList> {
        self.unshared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first `most` paths of the folder that are not shared (symlinks, special files,
    /// names that cannot travel) as the latest reads found them, and how many in all.
    pub fn not_shared(&self, most: usize) -> (Vec<unshared::NotShared>, usize) {
        self.unshared().first(most)
    }

    /// Whether the version of `rel` about to be replaced is an intermediate state of a file
    /// written in bursts (see [`bursts`]); called under the path's write lock.
    fn replacing_intermediate(&self, rel: &RelPath) -> bool {
        let Ok(meta) = fs::symlink_metadata(rel.under(&self.root)) else {
            return false;
        };
        self.bursts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_intermediate(rel, &Fingerprint::of(&meta), std::time::Instant::now())
    }

    /// Records an installation of `rel` (`installed`: its fingerprint, when `stat` could
    /// tell), whose previous version went to the trash at `trashed`; drops from the trash
    /// the intermediate version that this one supersedes.
    fn note_installed(
        &self,
        rel: &RelPath,
        installed: Option<Fingerprint>,
        trashed: Option<&Path>,
        intermediate: bool,
    ) {
        let mut bursts = self.bursts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fingerprint) = installed else {
            bursts.forget(rel);
            return;
        };
        let now = std::time::Instant::now();
        let replaced = bursts.installed(
            rel,
            fingerprint,
            trashed.map(Path::to_path_buf),
            intermediate,
            now,
        );
        drop(bursts);
        if let bursts::Replaced::Intermediate {
            superseded: Some(superseded),
        } = replaced
        {
            trash::discard(&self.root, &superseded);
        }
    }

    /// Moves the file `rel` to the trash, provided it still looks as `expect` says.
    pub async fn remove_file(
        self: &Arc<Self>,
        rel: &RelPath,
        expect: &Expect,
    ) -> Result<Option<PathBuf>, ShareError> {
        let _guard = self.locks.write(rel).await?;
        let share = Arc::clone(self);
        let (rel, expect) = (rel.clone(), expect.clone());
        self.changing(touched_scopes([&rel]), move || {
            install::check(&share.root, &rel, &expect)?;
            folder::check_ancestors(&share.root, &rel)?;
            trash::move_to_trash(&share.root, &rel).map(Some)
        })
        .await
    }

    /// Puts version `version` (1: the newest) of `rel` back from the trash, under the
    /// file's lock; what is at that name now goes to the trash first.
    pub async fn restore_from_trash(
        self: &Arc<Self>,
        rel: &RelPath,
        version: usize,
    ) -> Result<trash::Trashed, ShareError> {
        let _guard = self.locks.write(rel).await?;
        let share = Arc::clone(self);
        let rel = rel.clone();
        self.changing(touched_scopes([&rel]), move || {
            trash::restore(&share.root, &rel, version)
        })
        .await
    }

    /// Removes the directory `rel` if it is empty; `Ok(false)` if it is not (or is gone).
    pub async fn remove_empty_dir(self: &Arc<Self>, rel: &RelPath) -> Result<bool, ShareError> {
        let share = Arc::clone(self);
        let rel = rel.clone();
        self.changing(touched_scopes([&rel]), move || {
            match folder::stat(&share.root, &rel)? {
                Some(meta) if meta.is_dir() => {}
                _ => return Ok(false),
            }
            match fs::remove_dir(rel.under(&share.root)) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(ShareError::io(rel.under(&share.root), e)),
            }
        })
        .await
    }

    /// Creates the folders `rels` (and their parents), never through a symlink, in one
    /// blocking call: a box joining a big folder makes hundreds at once. One result per
    /// folder, in order; a folder already there is fine, a file in its place is not.
    pub async fn create_dirs(self: &Arc<Self>, rels: Vec<RelPath>) -> Vec<Result<(), ShareError>> {
        let share = Arc::clone(self);
        let scopes = touched_scopes(rels.iter());
        self.changing_each(rels.len(), scopes, move || {
            rels.iter().map(|rel| share.create_dir_now(rel)).collect()
        })
        .await
    }

    fn create_dir_now(&self, rel: &RelPath) -> Result<(), ShareError> {
        install::create_parents(&self.root, rel)?;
        match fs::create_dir(rel.under(&self.root)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                match folder::stat(&self.root, rel)? {
                    Some(meta) if meta.is_dir() => Ok(()),
                    _ => Err(ShareError::NotADirectory(rel.clone())),
                }
            }
            Err(e) => Err(ShareError::io(rel.under(&self.root), e)),
        }
    }

    /// Renames the file `from` to `to` (which must not exist), provided `from` still looks
    /// as `expect` says. Used to set a losing conflict version aside.
    pub async fn rename_file(
        self: &Arc<Self>,
        from: &RelPath,
        to: &RelPath,
        expect: &Expect,
    ) -> Result<(), ShareError> {
        let _from_guard = self.locks.write(from).await?;
        let _to_guard = self.locks.write(to).await?;
        let share = Arc::clone(self);
        let (from, to, expect) = (from.clone(), to.clone(), expect.clone());
        self.changing(touched_scopes([&from, &to]), move || {
            install::check(&share.root, &from, &expect)?;
            install::check(&share.root, &to, &Expect::Absent)?;
            install::create_parents(&share.root, &to)?;
            fs::rename(from.under(&share.root), to.under(&share.root))
                .map_err(|e| ShareError::io(to.under(&share.root), e))
        })
        .await
    }

    /// Renames files here as a peer did (sync's [`FileMove`]s), in one blocking call: each
    /// provided its old name still looks as expected and its new name is free (atomically,
    /// `RENAME_NOREPLACE`). The file then takes the peer's mtime and mode, and keeps its
    /// remembered hashes and block list under the new name, so nothing is read again. One
    /// result per move, in order; the renames are made durable before this returns.
    pub async fn move_files(self: &Arc<Self>, moves: Vec<FileMove>) -> Vec<Result<(), ShareError>> {
        let share = Arc::clone(self);
        let scopes = touched_scopes(moves.iter().flat_map(|item| [&item.from, &item.to]));
        self.changing_each(moves.len(), scopes, move || {
            let mut folders = std::collections::BTreeSet::new();
            let results = moves
                .into_iter()
                .map(|item| {
                    let moved = share.locks.with_write_blocking(&item.from, || {
                        share
                            .locks
                            .with_write_blocking(&item.to, || share.move_now(&item))
                    });
                    let moved = moved.and_then(|inner| inner).and_then(|inner| inner);
                    if moved.is_ok() {
                        for rel in [&item.from, &item.to] {
                            if let Some(parent) = rel.under(&share.root).parent() {
                                folders.insert(parent.to_path_buf());
                            }
                        }
                    }
                    moved
                })
                .collect();
            if folders.len() >= ONE_FLUSH_FOLDERS {
                let _ = install::sync_file_system(&share.root);
            } else {
                for folder in &folders {
                    install::sync_dir(folder);
                }
            }
            share.persist_cache_now();
            results
        })
        .await
    }

    /// One move of [`Share::move_files`], holding both names' locks.
    fn move_now(&self, item: &FileMove) -> Result<(), ShareError> {
        let (from, to) = (item.from.under(&self.root), item.to.under(&self.root));
        install::check(&self.root, &item.from, &item.expect)?;
        folder::check_ancestors(&self.root, &item.from)?;
        install::create_parents(&self.root, &item.to)?;
        let before = fs::symlink_metadata(&from).map_err(|e| ShareError::io(&from, e))?;
        let seen = Fingerprint::of(&before);
        let digests = self.cache.lookup(&item.from, &seen, DigestSet::Blake3);
        let blocks = self.cache.blocks(&item.from, &seen);
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, &from, cwd, &to, rustix::fs::RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Err(ShareError::Changed(item.to.clone())),
            Err(e) => return Err(ShareError::io(&to, e.into())),
        }
        // The file moved is the one checked (same inode, size and mtime): it takes the peer's
        // metadata and keeps what is known of its content. Anything else (written to just
        // now) is left for the next read of the folder to find.
        let Ok(after) = fs::symlink_metadata(&to) else {
            return Ok(());
        };
        let unchanged = |meta: &fs::Metadata| {
            let now = Fingerprint::of(meta);
            now.ino == seen.ino && now.size == seen.size && now.mtime_ns == seen.mtime_ns
        };
        if !unchanged(&after) {
            return Ok(());
        }
        let mut after = after;
        if folder::modified(&after) != item.meta.mtime
            || after.permissions().mode() & install::PEER_MODE_BITS
                != item.meta.mode & install::PEER_MODE_BITS
        {
            install::set_meta_in_place(&to, item.meta)?;
            after = fs::symlink_metadata(&to).map_err(|e| ShareError::io(&to, e))?;
        }
        let now = Fingerprint::of(&after);
        if now.ino == seen.ino && now.size == seen.size {
            if let Some(digests) = digests {
                self.cache.insert(&item.to, now, digests);
            }
            if let Some(blocks) = blocks {
                self.cache.store_blocks(&item.to, &now, &blocks);
            }
        }
        Ok(())
    }

    /// Sets the modification time and permission bits of the file `rel`, provided it still
    /// looks as `expect` says (a change of metadata only, without new content).
    pub async fn set_metadata(
        self: &Arc<Self>,
        rel: &RelPath,
        expect: &Expect,
        meta: InstallMeta,
    ) -> Result<(), ShareError> {
        let _guard = self.locks.write(rel).await?;
        let share = Arc::clone(self);
        let (rel, expect) = (rel.clone(), expect.clone());
        self.changing(touched_scopes([&rel]), move || {
            install::check(&share.root, &rel, &expect)?;
            install::set_meta_in_place(&rel.under(&share.root), meta)
        })
        .await
    }
}

impl Share {
    /// Like [`Share::changing`] for work on `count` items with a result each; should the
    /// blocking task itself fail, every item fails with its reason.
    async fn changing_each<T: Send + 'static>(
        &self,
        count: usize,
        scopes: Vec<Scope>,
        work: impl FnOnce() -> Vec<Result<T, ShareError>> + Send + 'static,
    ) -> Vec<Result<T, ShareError>> {
        if self.read_only {
            return (0..count)
                .map(|_| Err(ShareError::ReadOnly(self.root.clone())))
                .collect();
        }
        let outcome = tokio::task::spawn_blocking(work).await;
        self.view.changed_in(scopes);
        outcome.unwrap_or_else(|e| {
            let reason = e.to_string();
            (0..count)
                .map(|_| Err(ShareError::io("<worker>", io::Error::other(reason.clone()))))
                .collect()
        })
    }

    /// Runs blocking work that changes the folder in `scopes`, then marks those parts of the
    /// latest snapshot stale at once: a notice sent after the change (`installed`) must
    /// never meet an answer from a snapshot older than the change, whenever the watcher gets
    /// to report it; the next read reads only those parts.
    async fn changing<T: Send + 'static>(
        &self,
        scopes: Vec<Scope>,
        work: impl FnOnce() -> Result<T, ShareError> + Send + 'static,
    ) -> Result<T, ShareError> {
        self.check_writable()?;
        let result = blocking(work).await;
        self.view.changed_in(scopes);
        result
    }
}

/// Removes partial downloads left by processes that no longer run. Names start with the
/// owner's process id, so a `-c` run never deletes the partial files of a live box.
/// Removes the parts kept to resume downloads that outlived their lifetime or their
/// space (see [`resume`]).
fn sweep_resume_parts(tmp_dir: &Path) {
    let free = rustix::fs::statvfs(tmp_dir)
        .map(|stats| stats.f_bavail.saturating_mul(stats.f_frsize))
        .unwrap_or(0);
    resume::ResumeStore::new(tmp_dir).sweep(std::time::SystemTime::now(), free);
}

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

/// The identity of the ignore file at `root` (`None`: there is none, or it is not a
/// regular file), to see when it changed.
fn ignore_file_identity(root: &Path) -> Option<Fingerprint> {
    fs::symlink_metadata(root.join(IGNORE_FILE))
        .ok()
        .filter(|meta| meta.is_file())
        .map(|meta| Fingerprint::of(&meta))
}

/// Most paths newly found not shared that one read names in the log; the rest are counted.
const LOG_UNSHARED: usize = 10;

/// Says once, at WARN, each path a read found not shared that it was not known for.
fn log_unshared(new: Vec<unshared::NotShared>) {
    for item in new.iter().take(LOG_UNSHARED) {
        tracing::warn!(path = %crate::text::for_log(&item.path), "not shared: {}", crate::text::for_log(item.reason.to_string()));
    }
    if new.len() > LOG_UNSHARED {
        tracing::warn!(
            "and {} more paths not shared (see 'sync status')",
            new.len() - LOG_UNSHARED
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    /// A file that cannot be opened for writing still takes a new mtime and mode: a synced
    /// read-only file must not make every later metadata change fail.
    ///
    /// The file is read-only (mode 0555), which alone refuses an open for writing to its
    /// owner when not root; and it is a program running meanwhile, which refuses an open for
    /// writing with `ETXTBSY` even to root (a root process passes every permission check),
    /// so that the test proves the file is never opened for writing wherever it runs.
    #[tokio::test]
    async fn a_read_only_busy_file_takes_a_new_mtime_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let share = Share::open(dir.path()).unwrap();
        let program = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("a sleep program to run");
        let path = share.root().join("tool");
        fs::copy(program, &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o555)).unwrap();
        let mut running = std::process::Command::new(&path).arg("60").spawn().unwrap();
        let mtime = Timestamp::from_system(UNIX_EPOCH + Duration::new(1_600_000_000, 123_000));
        let rel = RelPath::parse("tool").unwrap();

        let outcome = share
            .set_metadata(&rel, &Expect::Anything, InstallMeta { mtime, mode: 0o500 })
            .await;
        running.kill().unwrap();
        running.wait().unwrap();

        outcome.unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o500);
        assert_eq!(Timestamp::from_system(meta.modified().unwrap()), mtime);
    }

    /// `hash checkall` reports a listed file it cannot hash instead of leaving it out (which
    /// reads as absent); one that vanished since the listing is simply no longer there.
    #[test]
    fn a_file_that_cannot_be_hashed_fails_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let share = Share::open(dir.path()).unwrap();
        for name in ["a", "b", "c"] {
            fs::write(share.root().join(name), name).unwrap();
        }
        let entries = folder::list_detailed(share.root(), &share.ignore()).unwrap();
        fs::remove_file(share.root().join("a")).unwrap();
        // Replaced since the listing by something that cannot be hashed (a symlink: a
        // failure that root meets too, as it would not an unreadable file).
        fs::remove_file(share.root().join("c")).unwrap();
        std::os::unix::fs::symlink("b", share.root().join("c")).unwrap();
        let outcome = share.hash_listed(&entries);
        assert!(
            matches!(&outcome, Err(ShareError::Symlink(rel)) if rel.as_str() == "c"),
            "{outcome:?}"
        );

        fs::remove_file(share.root().join("c")).unwrap();
        fs::write(share.root().join("c"), "c again").unwrap();
        let hashes = share.hash_listed(&entries).unwrap();
        let names: Vec<&str> = hashes.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
    }

    /// A symlink put where the file was is refused, never followed to what it points at.
    #[tokio::test]
    async fn metadata_is_never_set_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let share = Share::open(dir.path()).unwrap();
        let target = share.root().join("target");
        fs::write(&target, b"x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&target, share.root().join("link")).unwrap();
        let mtime = Timestamp::from_system(UNIX_EPOCH + Duration::from_secs(1_000_000_000));
        let rel = RelPath::parse("link").unwrap();

        let outcome = share
            .set_metadata(&rel, &Expect::Anything, InstallMeta { mtime, mode: 0o600 })
            .await;

        assert!(outcome.is_err(), "{outcome:?}");
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_ne!(Timestamp::from_system(meta.modified().unwrap()), mtime);
    }
}
