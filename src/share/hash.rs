//! File digests (BLAKE3 for sync and for checking transfers; MD5 and SHA-256 for people)
//! and the persistent cache that lets a box answer hash requests for unchanged files without
//! reading them again.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::ShareError;
use super::blocks::BlockList;
use super::dirs::Dirs;
use super::folder::{self, Fingerprint};
use super::index::{IndexDb, IndexError};
use super::path::RelPath;
use crate::time::Timestamp;

/// How many times a file that keeps changing while it is hashed is tried before giving up.
const STABLE_ATTEMPTS: usize = 3;

/// Files at least this large are found by content ([`HashCache::with_content`]): a copy
/// made from a local file instead of fetched saves the network only for those.
pub const LARGE_CONTENT: u64 = 1024 * 1024;

/// Size of the reads that feed the digests.
const READ_CHUNK: usize = 1024 * 1024;

/// Inputs at least this long are hashed with BLAKE3 on all cores (below about 128 KiB the
/// split costs more than it saves, says the crate).
const PARALLEL_MIN: usize = 512 * 1024;

/// Files larger than this are read on one thread and hashed on others, so that reading
/// and hashing overlap; smaller ones are not worth the threads.
const BACKGROUND_MIN: u64 = 4 * 1024 * 1024;

/// Feeds `bytes` to BLAKE3, on all cores when they are many.
fn blake3_update(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_MIN {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// Which digests a caller needs. BLAKE3 is always computed: it names a content for sync and
/// checks every transfer, at several times the speed of SHA-256 (which caps a transfer at
/// about 1.4 GB/s per core even with the CPU's SHA instructions). MD5 and SHA-256 are what
/// people compare with `md5sum` and `sha256sum`; they are computed only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestSet {
    /// BLAKE3 alone (sync).
    Blake3,
    /// BLAKE3, SHA-256 and MD5 (what a person asked for).
    All,
}

impl DigestSet {
    /// The set a request asks for with its `blake3_only` flag.
    pub fn from_blake3_only(blake3_only: bool) -> DigestSet {
        if blake3_only {
            DigestSet::Blake3
        } else {
            DigestSet::All
        }
    }

    /// The request flag for this set.
    pub fn blake3_only(self) -> bool {
        self == DigestSet::Blake3
    }
}

/// The digests of one content, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// BLAKE3: sync's name for a content, and what every transfer is checked against.
    pub blake3: Arc<str>,
    /// SHA-256, for people; computed only when someone asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Arc<str>>,
    /// MD5, what the original assignment displays; computed only when someone asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<Arc<str>>,
}

impl Digests {
    /// Whether these include every digest of `set`.
    pub fn covers(&self, set: DigestSet) -> bool {
        set == DigestSet::Blake3 || (self.sha256.is_some() && self.md5.is_some())
    }
}

/// The hashes of one file on a box, as `hash verify` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    /// Path relative to the shared folder.
    pub name: RelPath,
    /// BLAKE3 of the content, hex. The digests are shared, not copied, when a hash is
    /// cloned: the same digests sit in the hash cache and every snapshot of a folder of a
    /// million files.
    pub blake3: Arc<str>,
    /// SHA-256 of the content, hex; absent from answers that did not ask for it (sync's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Arc<str>>,
    /// MD5 of the content, hex; absent from answers that did not ask for it (sync's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<Arc<str>>,
    /// Last-modified time of the hashed version.
    pub mtime: Timestamp,
    /// Size of the hashed version.
    #[serde(default)]
    pub size: u64,
}

/// Computes BLAKE3, and SHA-256 and MD5 when asked, in one pass over a stream of bytes.
#[derive(Clone)]
pub struct ContentHasher {
    blake3: blake3::Hasher,
    classic: Option<(Sha256, Md5)>,
}

impl ContentHasher {
    /// A hasher for `set` that has seen nothing yet.
    pub fn new(set: DigestSet) -> ContentHasher {
        ContentHasher {
            blake3: blake3::Hasher::new(),
            classic: (set == DigestSet::All).then(|| (Sha256::new(), Md5::new())),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        blake3_update(&mut self.blake3, bytes);
        if let Some((sha256, md5)) = &mut self.classic {
            sha256.update(bytes);
            md5.update(bytes);
        }
    }

    /// The digests of everything fed so far.
    pub fn finish(self) -> Digests {
        let (sha256, md5) = match self.classic {
            Some((sha256, md5)) => (
                Some(to_hex(&sha256.finalize())),
                Some(to_hex(&md5.finalize())),
            ),
            None => (None, None),
        };
        Digests {
            blake3: self.blake3.finalize().to_hex().to_string().into(),
            sha256: sha256.map(Into::into),
            md5: md5.map(Into::into),
        }
    }
}

/// Hashes a stream of chunks on background threads, one per digest, so that hashing runs
/// beside disk and network work instead of after it. Feed it from a blocking thread.
pub struct BackgroundHasher {
    /// The BLAKE3 worker.
    blake3: DigestWorker,
    /// The SHA-256 and MD5 workers, when a person asked for them.
    classic: Option<(DigestWorker, DigestWorker)>,
}

/// A hashing thread panicked: its digest is unknown, and nothing may stand in for it (an
/// empty digest would be cached and sent as the file's).
#[derive(Debug, Error)]
#[error("a hashing thread panicked; the digest is unknown")]
pub struct HashPanicked;

/// One hashing thread and the channel that feeds it.
struct DigestWorker {
    chunks: std::sync::mpsc::SyncSender<bytes::Bytes>,
    thread: std::thread::JoinHandle<String>,
}

impl DigestWorker {
    /// A worker feeding each chunk to `update` and ending with `finish`'s hex digest.
    fn spawn<H: Send + 'static>(
        mut hasher: H,
        update: fn(&mut H, &[u8]),
        finish: fn(H) -> String,
    ) -> DigestWorker {
        let (chunks, incoming) = std::sync::mpsc::sync_channel::<bytes::Bytes>(16);
        let thread = std::thread::spawn(move || {
            for chunk in incoming {
                update(&mut hasher, &chunk);
            }
            finish(hasher)
        });
        DigestWorker { chunks, thread }
    }

    /// A worker for one of the `digest` crate's hashes.
    fn spawn_digest<D: Digest + Send + 'static>(digest: D) -> DigestWorker {
        DigestWorker::spawn(
            digest,
            |d, bytes| d.update(bytes),
            |d| to_hex(&d.finalize()),
        )
    }

    /// Waits for the digest of everything sent; `Err` holds the panic of the thread.
    fn finish(self) -> std::thread::Result<String> {
        drop(self.chunks);
        self.thread.join()
    }
}

impl BackgroundHasher {
    /// Starts the workers for `set`.
    pub fn new(set: DigestSet) -> BackgroundHasher {
        BackgroundHasher {
            blake3: DigestWorker::spawn(blake3::Hasher::new(), blake3_update, |h| {
                h.finalize().to_hex().to_string()
            }),
            classic: (set == DigestSet::All).then(|| {
                (
                    DigestWorker::spawn_digest(Sha256::new()),
                    DigestWorker::spawn_digest(Md5::new()),
                )
            }),
        }
    }

    /// Feeds the next chunk (a cheap reference-counted clone per worker); blocks while the
    /// workers are behind.
    pub fn update(&self, chunk: &bytes::Bytes) {
        let _ = self.blake3.chunks.send(chunk.clone());
        if let Some((sha256, md5)) = &self.classic {
            let _ = sha256.chunks.send(chunk.clone());
            let _ = md5.chunks.send(chunk.clone());
        }
    }

    /// Waits for the workers and returns the digests, or [`HashPanicked`] if a worker
    /// panicked.
    pub fn try_finish(self) -> Result<Digests, HashPanicked> {
        self.join().map_err(|_| HashPanicked)
    }

    /// Waits for the workers and returns the digests.
    ///
    /// # Panics
    ///
    /// If a worker panicked, its panic goes on here rather than becoming a digest: callers
    /// on a blocking task see their task fail. Prefer [`BackgroundHasher::try_finish`].
    pub fn finish(self) -> Digests {
        self.join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Waits for every worker (even after one panicked, so that none is left running).
    fn join(self) -> std::thread::Result<Digests> {
        let (sha256, md5) = match self.classic {
            Some((sha256, md5)) => (Some(sha256.finish()), Some(md5.finish())),
            None => (None, None),
        };
        let blake3 = self.blake3.finish();
        Ok(Digests {
            blake3: blake3?.into(),
            sha256: sha256.transpose()?.map(Into::into),
            md5: md5.transpose()?.map(Into::into),
        })
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    out
}

/// One remembered hash: valid while the file keeps this fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedHash {
    fingerprint: Fingerprint,
    digests: Digests,
}

/// Hashes of files keyed by path and fingerprint (size, mtime, inode, ctime), persisted in
/// the index database ([`super::index`]), row by row as they change, so that a restart
/// does not mean rehashing everything.
///
/// The map sits behind a std `Mutex`: it is only held for lookups and inserts, never across
/// an `.await` or a file read.
pub struct HashCache {
    /// Where the cache is persisted (`None`: nowhere, for tests and for a box whose
    /// database could not be opened).
    db: Option<Arc<IndexDb>>,
    /// The remembered hashes.
    entries: Mutex<HashMap<RelPath, CachedHash>>,
    /// The paths of large files (at least [`LARGE_CONTENT`]) by content: where a file
    /// moved or copied on a peer may already be here. It may still name a path whose
    /// content changed since; [`HashCache::with_content`] checks each against `entries`.
    by_content: Mutex<HashMap<String, Vec<RelPath>>>,
    /// The paths whose entry changed (or went) since the last save.
    dirty: Mutex<HashSet<RelPath>>,
    /// Bytes of file content read for hashing since start: lets tests and benchmarks prove
    /// that cached answers read nothing.
    bytes_hashed: AtomicU64,
    /// Serializes saves, which share one temporary file name, and remembers when the last
    /// one happened.
    saving: Mutex<Option<std::time::Instant>>,
    /// Paths being hashed right now.
    in_flight: InFlight,
}

/// The paths being hashed, so that a second reader of the same file waits for the first
/// instead of reading a gigabyte twice. A std `Mutex`: never held across `.await`.
#[derive(Default)]
struct InFlight {
    paths: Mutex<std::collections::HashSet<RelPath>>,
    done: std::sync::Condvar,
}

/// A claim on hashing one path, released when dropped.
struct Claim<'a> {
    in_flight: &'a InFlight,
    rel: RelPath,
}

impl InFlight {
    /// Waits until nobody else hashes `rel`, then claims it.
    fn claim(&self, rel: &RelPath) -> Claim<'_> {
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        while paths.contains(rel) {
            paths = self.done.wait(paths).unwrap_or_else(|e| e.into_inner());
        }
        paths.insert(rel.clone());
        Claim {
            in_flight: self,
            rel: rel.clone(),
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut paths = self
            .in_flight
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        paths.remove(&self.rel);
        self.in_flight.done.notify_all();
    }
}

/// Shortest interval between two routine saves: a busy box (sync installing thousands of
/// small files) must not rewrite the whole cache for each one.
const SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl HashCache {
    /// A cache kept in memory only.
    pub fn in_memory() -> HashCache {
        HashCache::with(None, HashMap::new())
    }

    /// The cache persisted in `db`, as stored.
    pub fn persistent(db: Arc<IndexDb>) -> Result<HashCache, IndexError> {
        let entries = db
            .hashes()?
            .into_iter()
            .map(|(rel, fingerprint, digests)| {
                (
                    rel,
                    CachedHash {
                        fingerprint,
                        digests,
                    },
                )
            })
            .collect();
        Ok(HashCache::with(Some(db), entries))
    }

    fn with(db: Option<Arc<IndexDb>>, entries: HashMap<RelPath, CachedHash>) -> HashCache {
        let mut by_content: HashMap<String, Vec<RelPath>> = HashMap::new();
        for (rel, cached) in &entries {
            if cached.fingerprint.size >= LARGE_CONTENT {
                by_content
                    .entry(cached.digests.blake3.to_string())
                    .or_default()
                    .push(rel.clone());
            }
        }
        HashCache {
            db,
            entries: Mutex::new(entries),
            by_content: Mutex::new(by_content),
            dirty: Mutex::new(HashSet::new()),
            bytes_hashed: AtomicU64::new(0),
            saving: Mutex::new(None),
            in_flight: InFlight::default(),
        }
    }

    /// Takes in the hashes of `file`, the JSON cache of an older boxsync, and removes it:
    /// done once, so that an upgraded box rehashes nothing. A damaged file is removed
    /// too (it only costs rehashing). Returns how many hashes it held.
    pub fn import_json(&self, file: &Path) -> Result<usize, ShareError> {
        let bytes = match fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ShareError::io(file, e)),
        };
        let list = serde_json::from_slice::<Vec<(RelPath, CachedHash)>>(&bytes).unwrap_or_default();
        let count = list.len();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            for (rel, cached) in list {
                dirty.insert(rel.clone());
                self.note_content(&rel, &cached);
                entries.insert(rel, cached);
            }
        }
        self.save()?;
        fs::remove_file(file).map_err(|e| ShareError::io(file, e))?;
        Ok(count)
    }

    /// Bytes of file content this box has read for hashing since it started.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed.load(Ordering::Relaxed)
    }

    /// The cached digests of `rel`, if its current fingerprint matches and they include
    /// every digest of `set`.
    pub fn lookup(
        &self,
        rel: &RelPath,
        fingerprint: &Fingerprint,
        set: DigestSet,
    ) -> Option<Digests> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(rel)
            .filter(|cached| &cached.fingerprint == fingerprint)
            .filter(|cached| cached.digests.covers(set))
            .map(|cached| cached.digests.clone())
    }

    /// Remembers the digests of the version of `rel` with this fingerprint (keeping the
    /// SHA-256 and MD5 already known for it when `digests` come without them).
    pub fn insert(&self, rel: &RelPath, fingerprint: Fingerprint, mut digests: Digests) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if !digests.covers(DigestSet::All)
            && let Some(known) = entries
                .get(rel)
                .filter(|c| c.fingerprint == fingerprint && c.digests.blake3 == digests.blake3)
        {
            digests.sha256 = digests.sha256.or_else(|| known.digests.sha256.clone());
            digests.md5 = digests.md5.or_else(|| known.digests.md5.clone());
        }
        let cached = CachedHash {
            fingerprint,
            digests,
        };
        self.note_content(rel, &cached);
        entries.insert(rel.clone(), cached);
        drop(entries);
        self.mark_dirty([rel.clone()]);
    }

    fn mark_dirty(&self, paths: impl IntoIterator<Item = RelPath>) {
        if self.db.is_some() {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(paths);
        }
    }

    /// The stored block list of the version of `rel` with `fingerprint`, if any (a box
    /// without a database keeps none, and a damaged row counts as none).
    pub fn blocks(&self, rel: &RelPath, fingerprint: &Fingerprint) -> Option<BlockList> {
        self.db.as_ref()?.blocks(rel, fingerprint).ok().flatten()
    }

    /// Stores the block list of the version of `rel` with `fingerprint` (a failure only
    /// costs reading the file again next time).
    pub fn store_blocks(&self, rel: &RelPath, fingerprint: &Fingerprint, list: &BlockList) {
        if let Some(db) = &self.db
            && let Err(e) = db.write_blocks(rel, fingerprint, list)
        {
            tracing::debug!(error = %e, "a block list was not stored");
        }
    }

    /// The paths whose remembered content is `blake3` of `size` bytes (at least
    /// [`LARGE_CONTENT`]), with the fingerprint it was seen with: where a file that moved
    /// or was copied on a peer may already be here.
    pub fn with_content(&self, blake3: &str, size: u64) -> Vec<(RelPath, Fingerprint)> {
        if size < LARGE_CONTENT {
            return Vec::new();
        }
        let candidates = {
            let by_content = self.by_content.lock().unwrap_or_else(|e| e.into_inner());
            by_content.get(blake3).cloned().unwrap_or_default()
        };
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let found: Vec<_> = candidates
            .iter()
            .filter_map(|rel| Some((rel, entries.get(rel)?)))
            .filter(|(_, c)| c.fingerprint.size == size && *c.digests.blake3 == *blake3)
            .map(|(rel, c)| (rel.clone(), c.fingerprint))
            .collect();
        drop(entries);
        if found.len() < candidates.len() {
            // Forget the paths whose content is no longer this one.
            let mut by_content = self.by_content.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(paths) = by_content.get_mut(blake3) {
                paths.retain(|p| found.iter().any(|(f, _)| f == p));
                if paths.is_empty() {
                    by_content.remove(blake3);
                }
            }
        }
        found
    }

    /// Notes where a large content is (see `by_content`).
    fn note_content(&self, rel: &RelPath, cached: &CachedHash) {
        if cached.fingerprint.size < LARGE_CONTENT {
            return;
        }
        let mut by_content = self.by_content.lock().unwrap_or_else(|e| e.into_inner());
        let paths = by_content
            .entry(cached.digests.blake3.to_string())
            .or_default();
        if !paths.contains(rel) {
            paths.push(rel.clone());
        }
    }

    /// Whether some thread is hashing `rel` right now and will know the digests of `set`: a
    /// sender that finds so leaves the hashing to it (see
    /// [`HashCache::digests_once_hashed`]) rather than doing it twice. Every reader
    /// computes BLAKE3, only some the others: only BLAKE3 alone is sure to be covered.
    pub fn is_hashing(&self, rel: &RelPath, set: DigestSet) -> bool {
        let paths = self
            .in_flight
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        set == DigestSet::Blake3 && paths.contains(rel)
    }

    /// The digests of `rel` in the version with `fingerprint`, for a sender that left the
    /// hashing to whoever was hashing the file when it began: waits until they are done and
    /// takes their answer from the cache. If they saw another version or failed, the file
    /// is hashed here; if it no longer has `fingerprint`, it changed.
    pub fn digests_once_hashed(
        &self,
        root: &Path,
        rel: &RelPath,
        fingerprint: &Fingerprint,
        set: DigestSet,
    ) -> Result<Digests, ShareError> {
        drop(self.in_flight.claim(rel));
        if let Some(digests) = self.lookup(rel, fingerprint, set) {
            return Ok(digests);
        }
        self.hash_file(root, rel, set)?;
        self.lookup(rel, fingerprint, set)
            .ok_or_else(|| ShareError::Changed(rel.clone()))
    }

    /// Forgets every path for which `keep` says no (files that no longer exist).
    pub fn retain(&self, mut keep: impl FnMut(&RelPath) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        entries.retain(|rel, _| {
            let kept = keep(rel);
            if !kept {
                gone.push(rel.clone());
            }
            kept
        });
        drop(entries);
        self.mark_dirty(gone);
    }

    /// Writes what changed in the cache to the database if the last save is at least a
    /// couple of seconds old (a cache that lags only costs rehashing after a crash).
    pub fn save_if_due(&self) -> Result<(), ShareError> {
        self.save_inner(false)
    }

    /// Writes what changed in the cache to the database, in one transaction.
    pub fn save(&self) -> Result<(), ShareError> {
        self.save_inner(true)
    }

    fn save_inner(&self, now: bool) -> Result<(), ShareError> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let mut last = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        if !now && last.is_some_and(|t| t.elapsed() < SAVE_INTERVAL) {
            return Ok(());
        }
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        if dirty.is_empty() {
            return Ok(());
        }
        *last = Some(std::time::Instant::now());
        let (mut set, mut forget) = (Vec::new(), Vec::new());
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for rel in &dirty {
                match entries.get(rel) {
                    Some(cached) => {
                        set.push((rel.clone(), cached.fingerprint, cached.digests.clone()))
                    }
                    None => forget.push(rel.clone()),
                }
            }
        }
        if let Err(e) = db.write_hashes(&set, &forget) {
            self.mark_dirty(dirty);
            return Err(ShareError::io(db.file(), io::Error::other(e)));
        }
        Ok(())
    }

    /// The hashes of `rel` (those of `set`), from the cache or by reading the file once it
    /// holds still.
    ///
    /// A file that changes while it is read (seen by comparing its fingerprint before and
    /// after) is read again, up to a few times; then the caller gets `ShareError::Unstable`.
    /// Two threads never hash the same path at once: the second waits for the first and
    /// takes its answer from the cache.
    pub fn hash_file(
        &self,
        root: &Path,
        rel: &RelPath,
        set: DigestSet,
    ) -> Result<FileHash, ShareError> {
        self.hash_file_in(&mut Dirs::open(root)?, rel, set)
    }

    /// [`HashCache::hash_file`] for one of a run of files, whose folders `dirs` holds open.
    pub fn hash_file_in(
        &self,
        dirs: &mut Dirs,
        rel: &RelPath,
        set: DigestSet,
    ) -> Result<FileHash, ShareError> {
        for _ in 0..STABLE_ATTEMPTS {
            let (mut file, meta) = dirs.open_regular(rel)?;
            let root = dirs.root();
            let fingerprint = Fingerprint::of(&meta);
            let mtime = folder::modified(&meta);
            let digests = match self.lookup(rel, &fingerprint, set) {
                Some(digests) => digests,
                None => {
                    let _hashing = self.in_flight.claim(rel);
                    // Whoever hashed it meanwhile left the answer in the cache.
                    match self.lookup(rel, &fingerprint, set) {
                        Some(digests) => digests,
                        None => {
                            let digests =
                                self.hash_stream(&mut file, rel, root, set, meta.len())?;
                            // The file read, not its path (see `still_unchanged` in
                            // transfer::tcp): only a change to its bytes tears a hash.
                            let after = file
                                .metadata()
                                .map_err(|e| ShareError::io(rel.under(root), e))?;
                            if Fingerprint::of(&after) != fingerprint {
                                continue;
                            }
                            self.insert(rel, fingerprint, digests.clone());
                            digests
                        }
                    }
                }
            };
            return Ok(FileHash {
                name: rel.clone(),
                blake3: digests.blake3,
                sha256: digests.sha256,
                md5: digests.md5,
                mtime,
                size: meta.len(),
            });
        }
        Err(ShareError::Unstable(rel.clone()))
    }

    fn hash_stream(
        &self,
        file: &mut fs::File,
        rel: &RelPath,
        root: &Path,
        set: DigestSet,
        size: u64,
    ) -> Result<Digests, ShareError> {
        // Reads at most `limit` more bytes into `chunk` (never zeroed: reads fill it
        // directly); false at the end of the file.
        let mut read_next = |chunk: &mut Vec<u8>, limit: u64| -> Result<bool, ShareError> {
            (&mut *file)
                .take(limit)
                .read_to_end(chunk)
                .map_err(|e| ShareError::io(rel.under(root), e))?;
            self.bytes_hashed
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok(!chunk.is_empty())
        };
        if size > BACKGROUND_MIN {
            let hasher = BackgroundHasher::new(set);
            loop {
                // A fresh chunk each time: the hashing threads still hold the last ones.
                let mut chunk = Vec::with_capacity(READ_CHUNK);
                if !read_next(&mut chunk, READ_CHUNK as u64)? {
                    // A panicked worker is an error, never a digest to cache.
                    return hasher
                        .try_finish()
                        .map_err(|e| ShareError::io(rel.under(root), io::Error::other(e)));
                }
                hasher.update(&bytes::Bytes::from(chunk));
            }
        }
        let mut hasher = ContentHasher::new(set);
        if size <= READ_CHUNK as u64 {
            // Most files: the size the file had when opened, in one read and without a read
            // to find the end. Should the file shrink or grow meanwhile, its fingerprint
            // changes too, and the caller hashes it again.
            let mut bytes = Vec::with_capacity(size as usize);
            read_next(&mut bytes, size)?;
            hasher.update(&bytes);
            return Ok(hasher.finish());
        }
        // Reused for each chunk.
        let mut buffer = Vec::with_capacity(READ_CHUNK);
        loop {
            buffer.clear();
            if !read_next(&mut buffer, READ_CHUNK as u64)? {
                return Ok(hasher.finish());
            }
            hasher.update(&buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two readers asking for the hash of the same big file at once (sync's own rescan and
    /// a peer's listing) read it once between them.
    #[test]
    fn one_file_is_hashed_once_by_concurrent_readers() {
        let dir = tempfile::tempdir().unwrap();
        let content = vec![7u8; 32 << 20];
        fs::write(dir.path().join("big.bin"), &content).unwrap();
        let cache = HashCache::in_memory();
        let rel = RelPath::parse("big.bin").unwrap();
        let start = std::sync::Barrier::new(2);
        let hashes: Vec<FileHash> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        cache
                            .hash_file(dir.path(), &rel, DigestSet::Blake3)
                            .unwrap()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(hashes[0], hashes[1]);
        assert_eq!(cache.bytes_hashed(), content.len() as u64);
        // Read on one thread and hashed on others (it is over BACKGROUND_MIN), the digest
        // is still that of the whole content in one piece.
        assert_eq!(
            hashes[0].blake3,
            blake3::hash(&content).to_hex().to_string().into()
        );
    }

    /// A sender that left the hashing of a file to the reader hashing it when it began
    /// waits for that reader and takes its answer without reading the file again; if no
    /// answer is known for the version it sent and the file moved on, it changed.
    #[test]
    fn a_sender_takes_the_answer_of_the_reader_hashing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big.bin"), b"content").unwrap();
        let cache = HashCache::in_memory();
        let rel = RelPath::parse("big.bin").unwrap();
        let meta = fs::metadata(dir.path().join("big.bin")).unwrap();
        let fingerprint = Fingerprint::of(&meta);
        let answer = Digests {
            blake3: "from the other reader".into(),
            sha256: None,
            md5: None,
        };
        let hashing = cache.in_flight.claim(&rel);
        assert!(cache.is_hashing(&rel, DigestSet::Blake3));
        // A person's download wants MD5 and SHA-256 too, which that reader may not compute.
        assert!(!cache.is_hashing(&rel, DigestSet::All));
        let got = std::thread::scope(|scope| {
            let sender = scope.spawn(|| {
                cache.digests_once_hashed(dir.path(), &rel, &fingerprint, DigestSet::Blake3)
            });
            cache.insert(&rel, fingerprint, answer.clone());
            drop(hashing);
            sender.join().unwrap()
        });
        assert_eq!(got.unwrap(), answer);
        assert_eq!(cache.bytes_hashed(), 0);

        // Nobody knows the version sent, and the file has moved on from it.
        fs::write(dir.path().join("big.bin"), b"changed meanwhile").unwrap();
        let cache = HashCache::in_memory();
        let outcome = cache.digests_once_hashed(dir.path(), &rel, &fingerprint, DigestSet::Blake3);
        assert!(
            matches!(outcome, Err(ShareError::Changed(_))),
            "{outcome:?}"
        );
    }

    /// The JSON cache of an older boxsync is imported once into the database (so a box
    /// upgraded rehashes nothing), then removed; the hashes are there after a reopen.
    #[test]
    fn an_older_json_cache_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let rel = RelPath::parse("a.txt").unwrap();
        let fingerprint = Fingerprint {
            size: 3,
            mtime_ns: 1,
            ino: 2,
            ctime_ns: 3,
        };
        let digests = Digests {
            blake3: "b3".into(),
            sha256: Some("s".into()),
            md5: None,
        };
        let json = dir.path().join("hash-cache.json");
        let old = vec![(
            rel.clone(),
            CachedHash {
                fingerprint,
                digests: digests.clone(),
            },
        )];
        fs::write(&json, serde_json::to_vec(&old).unwrap()).unwrap();
        let open = || {
            let (db, _) = IndexDb::open(dir.path()).unwrap();
            HashCache::persistent(Arc::new(db)).unwrap()
        };
        let cache = open();
        assert_eq!(cache.import_json(&json).unwrap(), 1);
        assert!(!json.exists());
        assert_eq!(cache.import_json(&json).unwrap(), 0);
        drop(cache);
        let cache = open();
        assert_eq!(
            cache.lookup(&rel, &fingerprint, DigestSet::Blake3),
            Some(digests)
        );
        // A hash forgotten (its file went) is forgotten in the database too.
        cache.retain(|_| false);
        cache.save().unwrap();
        drop(cache);
        assert_eq!(open().lookup(&rel, &fingerprint, DigestSet::Blake3), None);
    }

    /// A big file's digests, computed while it is read, for a person (all three), equal
    /// those of its content hashed in one pass.
    #[test]
    fn a_big_file_gets_the_digests_of_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..(9u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(dir.path().join("big.bin"), &content).unwrap();
        let cache = HashCache::in_memory();
        let rel = RelPath::parse("big.bin").unwrap();
        let hash = cache.hash_file(dir.path(), &rel, DigestSet::All).unwrap();
        let mut one_pass = ContentHasher::new(DigestSet::All);
        one_pass.update(&content);
        let expected = one_pass.finish();
        assert_eq!(
            (hash.blake3, hash.sha256, hash.md5),
            (expected.blake3, expected.sha256, expected.md5)
        );
    }

    /// A hasher whose BLAKE3 worker panics at its first chunk, and whose other workers are
    /// sound.
    fn hasher_that_panics() -> BackgroundHasher {
        let hasher = BackgroundHasher {
            blake3: DigestWorker::spawn((), |_, _| panic!("injected"), |_| "never".into()),
            classic: Some((
                DigestWorker::spawn_digest(Sha256::new()),
                DigestWorker::spawn_digest(Md5::new()),
            )),
        };
        hasher.update(&bytes::Bytes::from_static(b"abc"));
        hasher
    }

    /// A panicked hashing thread is an error, never a digest (it was an empty BLAKE3, which
    /// was then cached and sent as the file's).
    #[test]
    fn a_panicked_hashing_thread_gives_no_digest() {
        assert!(matches!(
            hasher_that_panics().try_finish(),
            Err(HashPanicked)
        ));
        // The transfers' `finish` carries the panic on to their blocking task.
        let finished = std::panic::catch_unwind(|| hasher_that_panics().finish());
        assert!(finished.is_err(), "a digest came back: {finished:?}");
    }

    /// Known-answer test: the digests of "abc" from RFC 1321, FIPS 180-2 and the BLAKE3
    /// reference implementation (`b3sum`), in one pass and on the background workers.
    #[test]
    fn digests_of_abc() {
        let expected = Digests {
            blake3: "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85".into(),
            sha256: Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()),
            md5: Some("900150983cd24fb0d6963f7d28e17f72".into()),
        };
        let mut h = ContentHasher::new(DigestSet::All);
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), expected);
        let background = BackgroundHasher::new(DigestSet::All);
        background.update(&bytes::Bytes::from_static(b"a"));
        background.update(&bytes::Bytes::from_static(b"bc"));
        assert_eq!(background.finish(), expected);
        let mut sync_only = ContentHasher::new(DigestSet::Blake3);
        sync_only.update(b"abc");
        let sync_only = sync_only.finish();
        assert_eq!(sync_only.blake3, expected.blake3);
        assert_eq!((sync_only.sha256, sync_only.md5), (None, None));
    }
}
