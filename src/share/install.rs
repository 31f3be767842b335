//! Putting a verified temporary file in place: atomically, with the peer's modification time
//! and permission bits, and with whatever it replaces kept in the trash.

use std::fs::{self, File, FileTimes, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ShareError;
use super::folder;
use super::path::{RelPath, STAGING_PREFIX};
use super::trash::keep_in_trash;
use crate::time::Timestamp;

/// The permission bits a file installed from a peer may get: read, write and execute for
/// owner, group and others, never set-user-ID, set-group-ID or sticky, so that a peer
/// cannot plant a set-ID program owned by this box's user.
pub const PEER_MODE_BITS: u32 = 0o777;

/// What a file should look like once installed.
#[derive(Debug, Clone, Copy)]
pub struct InstallMeta {
    /// Modification time to give it.
    pub mtime: Timestamp,
    /// Permission bits to give it (masked to [`PEER_MODE_BITS`]).
    pub mode: u32,
}

/// Sets mode and mtime on `tmp`, flushes it, then renames it over `rel` under `root`.
///
/// The previous file at `rel`, if any, is hard-linked into `.boxsync/trash/` first, so the
/// rename replaces it atomically and its content survives. Returns where the previous
/// version went. Parent folders are created as needed, never through a symlink.
pub fn install(
    root: &Path,
    tmp: &Path,
    rel: &RelPath,
    meta: InstallMeta,
    expect: &Expect,
) -> Result<Option<PathBuf>, ShareError> {
    let file = File::options()
        .write(true)
        .open(tmp)
        .map_err(|e| ShareError::io(tmp, e))?;
    set_meta(&file, tmp, meta)?;
    file.sync_all().map_err(|e| ShareError::io(tmp, e))?;
    drop(file);

    let trashed = place(root, tmp, rel, expect)?;
    if let Some(parent) = rel.under(root).parent() {
        // Make the rename itself durable; a failure here loses nothing already visible.
        sync_dir(parent);
    }
    Ok(trashed)
}

/// Gives the open temporary file at `tmp` the mode and mtime it must have once installed.
pub fn set_meta(file: &File, tmp: &Path, meta: InstallMeta) -> Result<(), ShareError> {
    file.set_permissions(Permissions::from_mode(meta.mode & PEER_MODE_BITS))
        .map_err(|e| ShareError::io(tmp, e))?;
    set_mtime(file, tmp, meta)
}

/// Gives the open temporary file at `tmp` the mtime it must have once installed: all of
/// [`set_meta`] for a file created with its final mode.
pub fn set_mtime(file: &File, tmp: &Path, meta: InstallMeta) -> Result<(), ShareError> {
    file.set_times(FileTimes::new().set_modified(meta.mtime.to_system()))
        .map_err(|e| ShareError::io(tmp, e))
}

/// Gives the installed file at `path` the mode and mtime of `meta` (a change of metadata
/// alone) without opening it for writing: a file synced read-only (mode `0444`) must still
/// take its next mode or mtime, and only its owner's right to change them is needed.
///
/// The file is opened with `O_PATH | O_NOFOLLOW`, which needs no permission on it and never
/// follows a symlink put there meanwhile, then changed through `/proc/self/fd`, which names
/// exactly the file opened (what glibc does for `fchmodat` with `AT_SYMLINK_NOFOLLOW`).
/// Without `/proc`, a read-only descriptor (`O_NOFOLLOW` too) does the same for any file its
/// owner may read.
pub fn set_meta_in_place(path: &Path, meta: InstallMeta) -> Result<(), ShareError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};
    use std::os::fd::AsRawFd;
    let fail = |e: rustix::io::Errno| ShareError::io(path, e.into());
    let handle = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    // With O_PATH, O_NOFOLLOW opens a symlink itself instead of failing: refuse it as the
    // open for writing did (and a folder likewise).
    let opened = rustix::fs::fstat(&handle).map_err(fail)?;
    match FileType::from_raw_mode(opened.st_mode) {
        FileType::Symlink => return Err(fail(rustix::io::Errno::LOOP)),
        FileType::Directory => return Err(fail(rustix::io::Errno::ISDIR)),
        _ => {}
    }
    let mode = Mode::from_raw_mode(meta.mode & PEER_MODE_BITS);
    let times = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: timespec(meta.mtime.to_system()),
    };
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    match rustix::fs::chmod(&by_fd, mode) {
        Ok(()) => {
            rustix::fs::utimensat(rustix::fs::CWD, &by_fd, &times, AtFlags::empty()).map_err(fail)
        }
        Err(rustix::io::Errno::NOENT) => {
            // No /proc: a descriptor that can change the file is needed.
            let file = rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(fail)?;
            // Opened by name again: it must be the file checked above, not one put there
            // meanwhile.
            let reopened = rustix::fs::fstat(&file).map_err(fail)?;
            if (reopened.st_dev, reopened.st_ino) != (opened.st_dev, opened.st_ino) {
                let replaced = std::io::Error::other("replaced while its mode was being set");
                return Err(ShareError::io(path, replaced));
            }
            rustix::fs::fchmod(&file, mode).map_err(fail)?;
            rustix::fs::futimens(&file, &times).map_err(fail)
        }
        Err(e) => Err(fail(e)),
    }
}

/// `time` as the `timespec` the kernel takes (seconds may be negative, nanoseconds never).
fn timespec(time: std::time::SystemTime) -> rustix::fs::Timespec {
    let (tv_sec, tv_nsec) = match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => (after.as_secs() as i64, i64::from(after.subsec_nanos())),
        Err(before) => {
            let before = before.duration();
            match before.subsec_nanos() {
                0 => (-(before.as_secs() as i64), 0),
                nanos => (
                    -(before.as_secs() as i64) - 1,
                    1_000_000_000 - i64::from(nanos),
                ),
            }
        }
    };
    rustix::fs::Timespec { tv_sec, tv_nsec }
}

/// Renames the flushed temporary file `tmp` over `rel`, provided `rel` still looks as
/// `expect` says: the visible half of [`install`], without making the rename durable
/// (the caller syncs the parent folder, once for many files if it installs many).
///
/// The previous file at `rel`, if any, is hard-linked into `.boxsync/trash/` first. Parent
/// folders are created as needed, never through a symlink. The caller holds `rel`'s
/// exclusive lock.
pub fn place(
    root: &Path,
    tmp: &Path,
    rel: &RelPath,
    expect: &Expect,
) -> Result<Option<PathBuf>, ShareError> {
    create_parents(root, rel)?;
    let target = rel.under(root);
    // The folders on the way were just checked: one look at the target itself serves both
    // the expectation and what to keep.
    let existing = lstat(&target)?;
    if !expect.matches(existing.as_ref()) {
        return Err(ShareError::Changed(rel.clone()));
    }
    let trashed = match existing {
        Some(existing) if existing.is_dir() => return Err(ShareError::IsDirectory(rel.clone())),
        Some(_) => Some(keep_in_trash(root, rel)?),
        None => None,
    };
    rename_or_copy(tmp, &target)?;
    Ok(trashed)
}

/// Renames the flushed file `tmp` over `target`; when `target`'s folder is on another file
/// system (a mount point inside the shared folder: `EXDEV`), copies it there under a hidden
/// name ([`STAGING_PREFIX`]) first, flushed, with `tmp`'s mode and mtime, then renames that
/// over `target` and flushes the folder: atomic and durable as a rename within one file
/// system. `tmp` is removed once the copy is in place.
///
/// Copying at installation, not writing the download in the target's folder from the start,
/// keeps one place for every kind of temporary file: parts kept to resume a download must
/// stay in `.boxsync/tmp/resume/` to be found again.
pub fn rename_or_copy(tmp: &Path, target: &Path) -> Result<(), ShareError> {
    match fs::rename(tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_across(tmp, target),
        Err(e) => Err(ShareError::io(target, e)),
    }
}

/// The cross-device half of [`rename_or_copy`].
fn copy_across(tmp: &Path, target: &Path) -> Result<(), ShareError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let folder = target.parent().unwrap_or(Path::new("."));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let staged = folder.join(format!("{STAGING_PREFIX}{}-{n}", std::process::id()));
    let copied = (|| {
        let meta = fs::metadata(tmp).map_err(|e| ShareError::io(tmp, e))?;
        fs::copy(tmp, &staged).map_err(|e| ShareError::io(&staged, e))?;
        let file = File::options()
            .write(true)
            .open(&staged)
            .map_err(|e| ShareError::io(&staged, e))?;
        let mtime = meta.modified().map_err(|e| ShareError::io(tmp, e))?;
        file.set_times(FileTimes::new().set_modified(mtime))
            .map_err(|e| ShareError::io(&staged, e))?;
        file.set_permissions(meta.permissions())
            .map_err(|e| ShareError::io(&staged, e))?;
        file.sync_all().map_err(|e| ShareError::io(&staged, e))?;
        fs::rename(&staged, target).map_err(|e| ShareError::io(target, e))
    })();
    if copied.is_err() {
        let _ = fs::remove_file(&staged);
        return copied;
    }
    sync_dir(folder);
    let _ = fs::remove_file(tmp);
    Ok(())
}

/// Metadata of `path` itself (not following a symlink); `None` when nothing is there.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, ShareError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ShareError::io(path, e)),
    }
}

/// Flushes a folder, which makes the renames into it durable; best effort (what is already
/// visible stays correct either way).
pub fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// Flushes everything written to the file system that holds `dir` (Linux's `syncfs`): one
/// call makes a whole batch of temporary files durable, where an `fsync` per file would
/// wait for one journal commit each.
pub fn sync_file_system(dir: &Path) -> Result<(), ShareError> {
    let handle = File::open(dir).map_err(|e| ShareError::io(dir, e))?;
    rustix::fs::syncfs(&handle).map_err(|e| ShareError::io(dir, e.into()))
}

/// What a path must look like for a change to it to go ahead. Sync decides from what it
/// saw during its scan and re-checks just before acting, under the path's exclusive lock,
/// so that a file edited in between is never replaced or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (a download asked for by a person).
    Anything,
    /// Nothing is there.
    Absent,
    /// A file of this size and modification time is there.
    File {
        /// Its size.
        size: u64,
        /// Its modification time.
        mtime: Timestamp,
    },
}

impl Expect {
    /// Whether what is there (`None`: nothing) looks as this says.
    pub fn matches(&self, now: Option<&fs::Metadata>) -> bool {
        match (self, now) {
            (Expect::Anything, _) => true,
            (Expect::Absent, None) => true,
            (Expect::File { size, mtime }, Some(meta)) => {
                meta.is_file() && meta.len() == *size && folder::modified(meta) == *mtime
            }
            _ => false,
        }
    }
}

/// Fails with [`ShareError::Changed`] unless `rel` looks as `expect` says.
pub fn check(root: &Path, rel: &RelPath, expect: &Expect) -> Result<(), ShareError> {
    if expect.matches(folder::stat(root, rel)?.as_ref()) {
        Ok(())
    } else {
        Err(ShareError::Changed(rel.clone()))
    }
}

/// Creates the folders on the way to `rel`, refusing to pass through a symlink or a file.
pub fn create_parents(root: &Path, rel: &RelPath) -> Result<(), ShareError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut current = root.to_path_buf();
    for part in parent.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ShareError::Symlink(rel.clone()));
            }
            Ok(_) => return Err(ShareError::NotADirectory(rel.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&current) {
                Ok(()) => {}
                // Someone else made something there meanwhile: look again at what it is.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return folder::check_ancestors(root, rel);
                }
                Err(e) => return Err(ShareError::io(&current, e)),
            },
            Err(e) => return Err(ShareError::io(&current, e)),
        }
    }
    Ok(())
}
