//! Partial downloads kept to be resumed: `.boxsync/tmp/resume/<blake3>`, one file per
//! version being assembled, named by the BLAKE3 of the version it will become (so that a
//! later download of the same version, after Ctrl-C, kill -9, a lost link or a peer's
//! restart, finds it). Nothing in it is trusted: a resumed download keeps only the blocks
//! that still match the version's block list.
//!
//! Bounded: a part not written to for [`LIFETIME`] is removed, and the parts together may
//! take at most a quarter of the space their file system has free (counting their own),
//! the oldest removed first. A part in use is locked (`flock`) and never removed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

use super::ShareError;

/// How long a part is kept after its last write (Syncthing keeps its temporary files a
/// day too).
pub const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The parts may take at most free space / this (their own space counted as free).
const SPACE_SHARE: u64 = 4;

/// The folder of parts, under the state folder's `tmp/`.
pub const RESUME_DIR: &str = "resume";

/// The parts of one box.
#[derive(Debug, Clone)]
pub struct ResumeStore {
    /// `.boxsync/tmp/resume`.
    dir: PathBuf,
}

/// One part, locked while this value lives. Its file stays when it is dropped (to be
/// resumed); installing it renames it away.
#[derive(Debug)]
pub struct ResumePart {
    /// Its path.
    pub path: PathBuf,
    /// The open, locked file.
    pub file: File,
    /// Whether it held bytes from an earlier attempt.
    pub earlier: bool,
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Parts removed.
    pub parts: usize,
    /// Their bytes on disk.
    pub bytes: u64,
}

impl ResumeStore {
    /// The parts under `tmp_dir` (`.boxsync/tmp`).
    pub fn new(tmp_dir: &Path) -> ResumeStore {
        ResumeStore {
            dir: tmp_dir.join(RESUME_DIR),
        }
    }

    /// The part for the version named `blake3` (64 hex digits, checked) of `size` bytes,
    /// created if there is none; `Ok(None)` when another download holds it.
    pub fn open(&self, blake3: &str, size: u64) -> Result<Option<ResumePart>, ShareError> {
        if blake3.len() != 64 || !blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ShareError::io(
                &self.dir,
                std::io::Error::other("a version name is not 64 hex digits"),
            ));
        }
        fs::create_dir_all(&self.dir).map_err(|e| ShareError::io(&self.dir, e))?;
        let path = self.dir.join(blake3.to_ascii_lowercase());
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| ShareError::io(&path, e))?;
        if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Ok(None);
        }
        let had = file.metadata().map_err(|e| ShareError::io(&path, e))?.len();
        if had != size {
            file.set_len(size).map_err(|e| ShareError::io(&path, e))?;
        }
        Ok(Some(ResumePart {
            path,
            file,
            earlier: had > 0,
        }))
    }

    /// The bytes on disk of the part for the version named `blake3`, if there is one (0
    /// otherwise): what a resumed download of it needs no new room for.
    pub fn held(&self, blake3: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        if blake3.len() != 64 || !blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return 0;
        }
        fs::metadata(self.dir.join(blake3.to_ascii_lowercase()))
            .map_or(0, |meta| meta.blocks() * 512)
    }

    /// Removes the parts older than [`LIFETIME`] at `now`, then the oldest ones while all
    /// of them take more than their share of the space free (`free`, in bytes, besides
    /// theirs). Parts in use are left alone.
    pub fn sweep(&self, now: SystemTime, free: u64) -> Swept {
        let Ok(items) = fs::read_dir(&self.dir) else {
            return Swept::default();
        };
        let mut parts: Vec<(SystemTime, u64, PathBuf)> = items
            .flatten()
            .filter_map(|item| {
                let meta = item.metadata().ok()?;
                use std::os::unix::fs::MetadataExt;
                Some((meta.modified().ok()?, meta.blocks() * 512, item.path()))
            })
            .collect();
        parts.sort();
        let mut total: u64 = parts.iter().map(|(_, bytes, _)| bytes).sum();
        let bound = (free + total) / SPACE_SHARE;
        let mut swept = Swept::default();
        for (written, bytes, path) in parts {
            let old = now.duration_since(written).unwrap_or_default() > LIFETIME;
            if (old || total > bound) && remove_unless_in_use(&path) {
                swept.parts += 1;
                swept.bytes += bytes;
                total -= bytes;
            }
        }
        swept
    }
}

/// Removes the part at `path` unless a download holds its lock.
fn remove_unless_in_use(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    fs::remove_file(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    /// A part outlives its download (to be resumed) and is found again by its version's
    /// name; while one download holds it, another gets none.
    #[test]
    fn a_part_is_kept_for_the_next_download_and_held_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResumeStore::new(dir.path());
        let first = store.open(&version(1), 10).unwrap().unwrap();
        assert!(!first.earlier);
        use std::os::unix::fs::FileExt;
        first.file.write_all_at(b"abc", 0).unwrap();
        assert!(store.open(&version(1), 10).unwrap().is_none(), "held");
        drop(first);
        let again = store.open(&version(1), 10).unwrap().unwrap();
        assert!(again.earlier);
        assert!(store.open("../../x", 10).is_err(), "not a version name");
    }

    /// A part unwritten for a day goes, and so do the oldest while the parts take more
    /// than a quarter of the free space; one in use stays whatever its age.
    #[test]
    fn parts_are_removed_after_their_lifetime_and_beyond_their_space() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResumeStore::new(dir.path());
        let mut held = Vec::new();
        for n in 0..3 {
            let part = store.open(&version(n), 0).unwrap().unwrap();
            use std::io::Write;
            (&part.file).write_all(&vec![1u8; 64 * 1024]).unwrap();
            held.push(part);
        }
        let now = SystemTime::now();
        assert_eq!(
            store.sweep(now, u64::MAX / 8),
            Swept::default(),
            "all fresh"
        );
        let later = now + LIFETIME + Duration::from_secs(60);
        let in_use = held.remove(0);
        drop(held);
        let swept = store.sweep(later, u64::MAX / 8);
        assert_eq!(swept.parts, 2, "the two not in use, a day old");
        assert!(in_use.path.exists());
        drop(in_use);
        // Fresh again, but with no free space to spare: the space bound removes it.
        let part = store.open(&version(7), 0).unwrap().unwrap();
        use std::io::Write;
        (&part.file).write_all(&vec![1u8; 64 * 1024]).unwrap();
        drop(part);
        let swept = store.sweep(SystemTime::now(), 0);
        assert_eq!(swept.parts, 2, "both parts left, with nothing free");
        assert_eq!(
            fs::read_dir(dir.path().join(RESUME_DIR)).unwrap().count(),
            0
        );
    }
}
