//! File digests (MD5 for people, SHA-256 for integrity) and the persistent cache that lets
//! a box answer hash requests for unchanged files without reading them again.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ShareError;
use super::folder::{self, Fingerprint};
use super::path::RelPath;
use crate::time::Timestamp;

/// How many times a file that keeps changing while it is hashed is tried before giving up.
const STABLE_ATTEMPTS: usize = 3;

/// Size of the reads that feed the digests.
const READ_CHUNK: usize = 256 * 1024;

/// The two digests of one content, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// MD5, what the original assignment displays; computed only when someone asks for it
    /// (sync needs SHA-256 alone, and MD5 is the slower of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// SHA-256, what every integrity check compares.
    pub sha256: String,
}

/// The hashes of one file on a box, as `hash verify` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    /// Path relative to the shared folder.
    pub name: RelPath,
    /// MD5 of the content, hex; absent from answers that did not ask for it (sync's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Last-modified time of the hashed version.
    pub mtime: Timestamp,
    /// Size of the hashed version.
    #[serde(default)]
    pub size: u64,
}

/// Computes SHA-256, and MD5 when asked, in one pass over a stream of bytes.
#[derive(Default, Clone)]
pub struct ContentHasher {
    md5: Option<Md5>,
    sha256: Sha256,
}

impl ContentHasher {
    /// A hasher that has seen nothing yet; `with_md5` adds MD5 to SHA-256.
    pub fn new(with_md5: bool) -> ContentHasher {
        ContentHasher {
            md5: with_md5.then(Md5::new),
            sha256: Sha256::new(),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        if let Some(md5) = &mut self.md5 {
            md5.update(bytes);
        }
        self.sha256.update(bytes);
    }

    /// The digests of everything fed so far.
    pub fn finish(self) -> Digests {
        Digests {
            md5: self.md5.map(|md5| to_hex(&md5.finalize())),
            sha256: to_hex(&self.sha256.finalize()),
        }
    }
}

/// Hashes a stream of chunks on background threads, one per digest, so that hashing runs
/// beside disk and network work instead of after it. Feed it from a blocking thread.
pub struct BackgroundHasher {
    /// The MD5 worker, when MD5 is wanted.
    md5: Option<DigestWorker>,
    /// The SHA-256 worker.
    sha256: DigestWorker,
}

/// One hashing thread and the channel that feeds it.
struct DigestWorker {
    chunks: std::sync::mpsc::SyncSender<bytes::Bytes>,
    thread: std::thread::JoinHandle<String>,
}

impl DigestWorker {
    fn spawn<D: Digest + Send + 'static>(mut digest: D) -> DigestWorker {
        let (chunks, incoming) = std::sync::mpsc::sync_channel::<bytes::Bytes>(16);
        let thread = std::thread::spawn(move || {
            for chunk in incoming {
                digest.update(&chunk);
            }
            to_hex(&digest.finalize())
        });
        DigestWorker { chunks, thread }
    }
}

impl BackgroundHasher {
    /// Starts the workers: SHA-256 always, MD5 when `with_md5`.
    pub fn new(with_md5: bool) -> BackgroundHasher {
        BackgroundHasher {
            md5: with_md5.then(|| DigestWorker::spawn(Md5::new())),
            sha256: DigestWorker::spawn(Sha256::new()),
        }
    }

    /// Feeds the next chunk (a cheap reference-counted clone per worker); blocks while the
    /// workers are behind.
    pub fn update(&self, chunk: &bytes::Bytes) {
        if let Some(md5) = &self.md5 {
            let _ = md5.chunks.send(chunk.clone());
        }
        let _ = self.sha256.chunks.send(chunk.clone());
    }

    /// Waits for the workers: `(MD5 if asked for, SHA-256)`.
    pub fn finish(self) -> (Option<String>, String) {
        let join = |worker: DigestWorker| {
            drop(worker.chunks);
            worker.thread.join().unwrap_or_default()
        };
        (self.md5.map(join), join(self.sha256))
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

/// Hashes of files keyed by path and fingerprint (size, mtime, inode, ctime), persisted as
/// JSON under `.boxsync/` so that a restart does not mean rehashing everything.
///
/// The map sits behind a std `Mutex`: it is only held for lookups and inserts, never across
/// an `.await` or a file read.
pub struct HashCache {
    /// Where the cache is persisted.
    file: PathBuf,
    /// The remembered hashes.
    entries: Mutex<HashMap<RelPath, CachedHash>>,
    /// Whether `entries` holds something not yet persisted.
    dirty: AtomicBool,
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
    /// Loads the cache persisted at `file`; a missing or damaged cache starts empty.
    pub fn load(file: PathBuf) -> HashCache {
        let entries = fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<(RelPath, CachedHash)>>(&bytes).ok())
            .map(|list| list.into_iter().collect())
            .unwrap_or_default();
        HashCache {
            file,
            entries: Mutex::new(entries),
            dirty: AtomicBool::new(false),
            bytes_hashed: AtomicU64::new(0),
            saving: Mutex::new(None),
            in_flight: InFlight::default(),
        }
    }

    /// Bytes of file content this box has read for hashing since it started.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed.load(Ordering::Relaxed)
    }

    /// The cached digests of `rel`, if its current fingerprint matches and they include
    /// MD5 when `with_md5`.
    pub fn lookup(
        &self,
        rel: &RelPath,
        fingerprint: &Fingerprint,
        with_md5: bool,
    ) -> Option<Digests> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(rel)
            .filter(|cached| &cached.fingerprint == fingerprint)
            .filter(|cached| !with_md5 || cached.digests.md5.is_some())
            .map(|cached| cached.digests.clone())
    }

    /// Remembers the digests of the version of `rel` with this fingerprint (keeping an MD5
    /// already known for it when `digests` come without one).
    pub fn insert(&self, rel: &RelPath, fingerprint: Fingerprint, mut digests: Digests) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if digests.md5.is_none()
            && let Some(known) = entries
                .get(rel)
                .filter(|c| c.fingerprint == fingerprint && c.digests.sha256 == digests.sha256)
        {
            digests.md5 = known.digests.md5.clone();
        }
        entries.insert(
            rel.clone(),
            CachedHash {
                fingerprint,
                digests,
            },
        );
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Forgets every path for which `keep` says no (files that no longer exist).
    pub fn retain(&self, mut keep: impl FnMut(&RelPath) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let before = entries.len();
        entries.retain(|rel, _| keep(rel));
        if entries.len() != before {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Writes the cache to disk if it changed and the last save is at least a couple of
    /// seconds old (a cache that lags only costs rehashing after a crash).
    pub fn save_if_due(&self) -> Result<(), ShareError> {
        self.save_inner(false)
    }

    /// Writes the cache to disk if it changed, atomically (temporary file, then rename).
    pub fn save(&self) -> Result<(), ShareError> {
        self.save_inner(true)
    }

    fn save_inner(&self, now: bool) -> Result<(), ShareError> {
        let mut last = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        if !now && last.is_some_and(|t| t.elapsed() < SAVE_INTERVAL) {
            return Ok(());
        }
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        *last = Some(std::time::Instant::now());
        let bytes = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let list: Vec<(&RelPath, &CachedHash)> = entries.iter().collect();
            serde_json::to_vec(&list)
                .map_err(|e| ShareError::io(&self.file, io::Error::other(e)))?
        };
        let tmp = self.file.with_extension("json.tmp");
        let result = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()))
            .and_then(|_| fs::rename(&tmp, &self.file));
        if let Err(e) = result {
            self.dirty.store(true, Ordering::Relaxed);
            return Err(ShareError::io(&self.file, e));
        }
        Ok(())
    }

    /// The hashes of `rel` (with MD5 when `with_md5`), from the cache or by reading the
    /// file once it holds still.
    ///
    /// A file that changes while it is read (seen by comparing its fingerprint before and
    /// after) is read again, up to a few times; then the caller gets `ShareError::Unstable`.
    /// Two threads never hash the same path at once: the second waits for the first and
    /// takes its answer from the cache.
    pub fn hash_file(
        &self,
        root: &Path,
        rel: &RelPath,
        with_md5: bool,
    ) -> Result<FileHash, ShareError> {
        for _ in 0..STABLE_ATTEMPTS {
            let (mut file, meta) = folder::open_regular(root, rel)?;
            let fingerprint = Fingerprint::of(&meta);
            let mtime = folder::modified(&meta);
            let digests = match self.lookup(rel, &fingerprint, with_md5) {
                Some(digests) => digests,
                None => {
                    let _hashing = self.in_flight.claim(rel);
                    // Whoever hashed it meanwhile left the answer in the cache.
                    match self.lookup(rel, &fingerprint, with_md5) {
                        Some(digests) => digests,
                        None => {
                            let digests = self.hash_stream(&mut file, rel, root, with_md5)?;
                            let after = folder::stat(root, rel)?;
                            if after.as_ref().map(Fingerprint::of) != Some(fingerprint) {
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
                md5: digests.md5,
                sha256: digests.sha256,
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
        with_md5: bool,
    ) -> Result<Digests, ShareError> {
        let mut hasher = ContentHasher::new(with_md5);
        let mut buffer = vec![0u8; READ_CHUNK];
        loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ShareError::io(rel.under(root), e)),
            };
            hasher.update(&buffer[..n]);
            self.bytes_hashed.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(hasher.finish())
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
        let cache = HashCache::load(dir.path().join("cache.json"));
        let rel = RelPath::parse("big.bin").unwrap();
        let start = std::sync::Barrier::new(2);
        let hashes: Vec<FileHash> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        cache.hash_file(dir.path(), &rel, false).unwrap()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(hashes[0], hashes[1]);
        assert_eq!(cache.bytes_hashed(), content.len() as u64);
    }

    /// Known-answer test: the digests of "abc" from RFC 1321 and FIPS 180-2.
    #[test]
    fn digests_of_abc() {
        let mut h = ContentHasher::new(true);
        h.update(b"a");
        h.update(b"bc");
        let d = h.finish();
        assert_eq!(d.md5.as_deref(), Some("900150983cd24fb0d6963f7d28e17f72"));
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
