//! Files of a batch, written and verified, waiting to be installed together.
//!
//! Where the file system allows it, such a file has no name at all until it is installed:
//! it is created with `O_TMPFILE` in `.boxsync/tmp/` and later linked straight to its place
//! with `linkat`. Compared with a named temporary file renamed into place, that saves
//! making and removing a directory entry per file in one busy folder (the most expensive
//! part of receiving thousands of small files), and a crash leaves nothing behind: the file
//! system drops unnamed files itself.
//!
//! An unnamed file lives only as long as its open descriptor, so each holds one, taken
//! from a budget of half the process's open-files limit; past it, and on file systems
//! without `O_TMPFILE` or where this process cannot link one, files get a name under
//! `.boxsync/tmp/` instead, as single downloads do.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;

use super::ShareError;

/// How this process can give a name to an unnamed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMethod {
    /// `linkat(fd, "", …, AT_EMPTY_PATH)`: allowed to the file's opener since Linux 6.10,
    /// and to any process with `CAP_DAC_READ_SEARCH`.
    EmptyPath,
    /// `linkat` of `/proc/self/fd/N`, following it: what older kernels allow everyone.
    ProcFd,
}

impl LinkMethod {
    /// Links the unnamed `file` as `name` in the folder `dir`; `EEXIST` if the name is taken.
    pub fn link(self, file: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &Path) -> Result<(), Errno> {
        match self.link_once(file, dir, name) {
            // Since Linux 6.10 only a thread with the opener's credentials may: should that
            // ever differ, the way every kernel allows.
            Err(Errno::NOENT | Errno::PERM) if self == LinkMethod::EmptyPath => {
                LinkMethod::ProcFd.link_once(file, dir, name)
            }
            other => other,
        }
    }

    fn link_once(
        self,
        file: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &Path,
    ) -> Result<(), Errno> {
        match self {
            LinkMethod::EmptyPath => rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH),
            LinkMethod::ProcFd => {
                let magic = format!("/proc/self/fd/{}", file.as_raw_fd());
                rustix::fs::linkat(CWD, magic.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)
            }
        }
    }

    /// Finds out whether unnamed files can be made in `tmp_dir` and named afterwards, and
    /// how, by linking a probe under `probe_name` and removing it: `Ok(None)` when this
    /// file system or kernel cannot, `Err` when the probe itself failed (out of
    /// descriptors or space, say) and the answer is not known yet.
    pub fn probe(tmp_dir: &Path, probe_name: &Path) -> Result<Option<LinkMethod>, Errno> {
        let dir = rustix::fs::open(tmp_dir, dir_flags(), Mode::empty())?;
        let probe = match open_unnamed(dir.as_fd(), 0o600) {
            Ok(probe) => probe,
            // No O_TMPFILE here: an old kernel says EISDIR, a file system EOPNOTSUPP.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut failure = None;
        for method in [LinkMethod::EmptyPath, LinkMethod::ProcFd] {
            match method.link_once(probe.as_fd(), dir.as_fd(), probe_name) {
                Ok(()) => {
                    let _ = rustix::fs::unlinkat(dir.as_fd(), probe_name, AtFlags::empty());
                    return Ok(Some(method));
                }
                // Refused, or no /proc: this way is closed.
                Err(Errno::NOENT | Errno::PERM | Errno::ACCESS | Errno::OPNOTSUPP) => {}
                Err(e) => failure = Some(e),
            }
        }
        failure.map_or(Ok(None), Err)
    }
}

/// Unnamed files held open by this process, against [`unnamed_budget`].
static UNNAMED_HELD: AtomicUsize = AtomicUsize::new(0);

/// How many unnamed files may be held open at once: half the open-files limit, so that
/// sockets, folders and files being served always have the other half.
fn unnamed_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        limit.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX))
    })
}

/// One unnamed file's place in the budget, given back on drop.
#[derive(Debug)]
struct BudgetSlot(&'static AtomicUsize);

impl BudgetSlot {
    /// A place among `held`, if fewer than `budget` are taken.
    fn take(held: &'static AtomicUsize, budget: usize) -> Option<BudgetSlot> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < budget).then_some(n + 1)
        })
        .ok()
        .map(|_| BudgetSlot(held))
    }
}

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where one batch's files are staged: `.boxsync/tmp/`, held open, and how its unnamed
/// files get a name (`None`: they are all named).
pub struct Stager {
    /// The temporary folder, open, when unnamed files can be made in it.
    dir: Option<OwnedFd>,
    /// How to name them.
    method: Option<LinkMethod>,
}

impl Stager {
    /// Stages files in `tmp_dir` as unnamed files when `method` says they can be named
    /// afterwards, else as named ones.
    pub fn new(tmp_dir: &Path, method: Option<LinkMethod>) -> Stager {
        let dir = method.and_then(|_| rustix::fs::open(tmp_dir, dir_flags(), Mode::empty()).ok());
        Stager { dir, method }
    }

    /// A new empty file, open for writing: unnamed when possible, else at `named` (a fresh
    /// path under `.boxsync/tmp/`, asked for only when needed).
    ///
    /// An unnamed file is created with `mode`, its final mode, when the process's umask
    /// leaves it whole (no one can open it by name, so a private mode while it is written
    /// would protect nothing): [`StagedFile::has_mode`] then says it needs no `chmod`.
    pub fn create(
        &self,
        mode: u32,
        named: impl FnOnce() -> PathBuf,
    ) -> Result<StagedFile, ShareError> {
        if let (Some(dir), Some(method)) = (&self.dir, self.method)
            && let Some(slot) = BudgetSlot::take(&UNNAMED_HELD, unnamed_budget())
        {
            let exact = creatable_exactly(mode);
            if let Ok(fd) = open_unnamed(dir.as_fd(), exact.unwrap_or(0o600)) {
                return Ok(StagedFile {
                    place: Place::Unnamed {
                        file: File::from(fd),
                        method,
                        _slot: slot,
                    },
                    mode: exact,
                });
            }
        }
        let path = named();
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ShareError::io(&path, e))?;
        Ok(StagedFile {
            place: Place::Named {
                path,
                file: Some(file),
                armed: true,
            },
            mode: None,
        })
    }
}

/// The permission bits of `mode` if a file created with them gets exactly them: no
/// set-id or sticky bit, readable and writable by its owner, none masked by the umask.
fn creatable_exactly(mode: u32) -> Option<u32> {
    let umask = process_umask()?;
    let mode = mode & 0o7777;
    (mode & !0o777 == 0 && mode & 0o600 == 0o600 && mode & umask == 0).then_some(mode)
}

/// The process's umask, read once from `/proc/self/status` (setting it to read it would
/// change it for every thread meanwhile); `None` where the kernel does not say.
fn process_umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Where a staged file's content is.
#[derive(Debug)]
enum Place {
    /// Nowhere by name: only the open descriptor holds it.
    Unnamed {
        /// The file, open until it is installed (closing it would delete it).
        file: File,
        /// How to name it.
        method: LinkMethod,
        /// Its place in the open-files budget.
        _slot: BudgetSlot,
    },
    /// A temporary file, removed on drop while `armed`.
    Named {
        /// Its path under `.boxsync/tmp/`.
        path: PathBuf,
        /// The file, open while it is written.
        file: Option<File>,
        /// Whether drop should remove it.
        armed: bool,
    },
}

impl Place {
    /// The path of a named file.
    fn path(&self) -> Option<&Path> {
        match self {
            Place::Named { path, .. } => Some(path),
            Place::Unnamed { .. } => None,
        }
    }
}

/// A file being written, then waiting to be installed; gone on drop unless installed.
#[derive(Debug)]
pub struct StagedFile {
    /// Where its content is.
    place: Place,
    /// The mode it was created with, when that is exactly its mode.
    mode: Option<u32>,
}

impl StagedFile {
    /// The open file, while it is being written.
    pub fn file(&mut self) -> Option<&mut File> {
        match &mut self.place {
            Place::Unnamed { file, .. } => Some(file),
            Place::Named { file, .. } => file.as_mut(),
        }
    }

    /// Whether the file already has exactly the permission bits `mode`.
    pub fn has_mode(&self, mode: u32) -> bool {
        self.mode == Some(mode & 0o7777)
    }

    /// What to call it in an error message.
    pub fn label(&self) -> &Path {
        self.place
            .path()
            .unwrap_or(Path::new("<unnamed temporary file>"))
    }

    /// Writing is over: a named file's descriptor is closed (thousands may wait at once),
    /// an unnamed one's kept, as the file would vanish with it.
    pub fn finish_writing(&mut self) {
        if let Place::Named { file, .. } = &mut self.place {
            *file = None;
        }
    }

    /// The unnamed file and how to name it, or `None` for a named one.
    pub fn unnamed(&self) -> Option<(BorrowedFd<'_>, LinkMethod)> {
        match &self.place {
            Place::Unnamed { file, method, .. } => Some((file.as_fd(), *method)),
            Place::Named { .. } => None,
        }
    }

    /// The temporary file's path, giving an unnamed file the fresh path `fresh` (under
    /// `.boxsync/tmp/`) first: for installs that must go by path.
    pub fn path(&mut self, fresh: impl FnOnce() -> PathBuf) -> Result<&Path, ShareError> {
        if let Place::Unnamed { file, method, .. } = &self.place {
            let path = fresh();
            // An absolute path: the folder argument is not used.
            method
                .link(file.as_fd(), CWD, &path)
                .map_err(|e| ShareError::io(&path, e.into()))?;
            // The descriptor closes and the budget slot comes back with the old place.
            self.place = Place::Named {
                path,
                file: None,
                armed: true,
            };
        }
        // Named by now, whichever it was.
        self.place.path().ok_or_else(|| {
            ShareError::io(
                self.label(),
                std::io::Error::other("staged file has no name"),
            )
        })
    }

    /// The file is in place: nothing to clean up any more.
    pub fn installed(mut self) {
        if let Place::Named { armed, .. } = &mut self.place {
            *armed = false;
        }
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Place::Named {
            path, armed: true, ..
        } = &self.place
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Creates an unnamed file with `mode` in the folder `dir`; no one can open it by name.
fn open_unnamed(dir: BorrowedFd<'_>, mode: u32) -> Result<OwnedFd, Errno> {
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    rustix::fs::openat(dir, ".", flags, Mode::from_raw_mode(mode))
}

/// Flags to open a folder only to create and link files in it.
fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;

    /// A temporary folder standing for `.boxsync/tmp/`, and a fresh-name maker for it.
    fn tmp_dir() -> (tempfile::TempDir, impl Fn(&str) -> PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        (dir, move |name: &str| base.join(name))
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A file staged by `stager` (at `named` if it must be named) holding `content`.
    fn stage(stager: &Stager, named: PathBuf, content: &[u8]) -> StagedFile {
        let mut staged = stager.create(0o644, || named).unwrap();
        staged.file().unwrap().write_all(content).unwrap();
        staged
    }

    /// A stager making unnamed files in `dir` the way this machine offers, or `None` with a
    /// note (the named fallback is then all there is to test).
    fn unnamed_stager(dir: &Path) -> Option<Stager> {
        let method = LinkMethod::probe(dir, &dir.join("probe")).unwrap();
        if method.is_none() {
            eprintln!("skipped: this file system cannot make and link unnamed files");
        }
        Some(Stager::new(dir, Some(method?)))
    }

    /// An unnamed file is nowhere in the temporary folder while it waits, gets its name in
    /// one link that refuses to replace, and a dropped one leaves nothing behind; the probe
    /// leaves nothing either.
    #[test]
    fn unnamed_files_appear_only_when_linked() {
        let (dir, fresh) = tmp_dir();
        let Some(stager) = unnamed_stager(dir.path()) else {
            return;
        };
        let mut kept = stage(&stager, fresh("never"), b"kept");
        kept.finish_writing();
        let dropped = stage(&stager, fresh("never"), b"dropped");
        assert!(names_in(dir.path()).is_empty());
        let dir_fd = rustix::fs::open(dir.path(), dir_flags(), Mode::empty()).unwrap();
        let (file, method) = kept.unnamed().unwrap();
        method
            .link(file, dir_fd.as_fd(), Path::new("final"))
            .unwrap();
        let again = method.link(file, dir_fd.as_fd(), Path::new("final"));
        assert_eq!(again, Err(Errno::EXIST));
        // The way every kernel allows, whichever the probe chose.
        let (other, _) = dropped.unnamed().unwrap();
        LinkMethod::ProcFd
            .link(other, dir_fd.as_fd(), Path::new("via-proc"))
            .unwrap();
        assert_eq!(fs::read(dir.path().join("via-proc")).unwrap(), b"dropped");
        fs::remove_file(dir.path().join("via-proc")).unwrap();
        kept.installed();
        drop(dropped);
        assert_eq!(names_in(dir.path()), ["final"]);
        assert_eq!(fs::read(dir.path().join("final")).unwrap(), b"kept");
    }

    /// An unnamed file that must be installed by path gets a fresh name first, which goes
    /// away with it unless it is installed.
    #[test]
    fn unnamed_files_get_a_path_when_asked() {
        let (dir, fresh) = tmp_dir();
        let Some(stager) = unnamed_stager(dir.path()) else {
            return;
        };
        let mut staged = stage(&stager, fresh("never"), b"content");
        let path = staged.path(|| fresh("named.part")).unwrap().to_path_buf();
        assert_eq!(path, dir.path().join("named.part"));
        assert_eq!(fs::read(&path).unwrap(), b"content");
        assert!(staged.unnamed().is_none());
        drop(staged);
        assert!(names_in(dir.path()).is_empty());
    }

    /// An unnamed file is created with its final mode when the umask leaves that mode
    /// whole, and says so; any other mode (or a named file) is left to a `chmod`.
    #[test]
    fn unnamed_files_are_created_with_their_mode_when_they_can_be() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, fresh) = tmp_dir();
        let Some(stager) = unnamed_stager(dir.path()) else {
            return;
        };
        let Some(umask) = process_umask() else {
            eprintln!("skipped: this kernel does not show the umask in /proc/self/status");
            return;
        };
        let dir_fd = rustix::fs::open(dir.path(), dir_flags(), Mode::empty()).unwrap();
        for (mode, exact) in [
            (0o644, umask & 0o644 == 0),
            (0o600, umask & 0o600 == 0),
            (0o444, false),
            (0o4755, false),
            // As `st_mode` has it, with the file type.
            (0o100644, umask & 0o644 == 0),
        ] {
            let mut staged = stager.create(mode, || fresh("never")).unwrap();
            staged.file().unwrap().write_all(b"x").unwrap();
            assert_eq!(staged.has_mode(mode), exact, "mode {mode:o}");
            let name = format!("m{mode:o}");
            let (file, method) = staged.unnamed().unwrap();
            method.link(file, dir_fd.as_fd(), Path::new(&name)).unwrap();
            let got = fs::metadata(dir.path().join(&name))
                .unwrap()
                .permissions()
                .mode();
            if exact {
                assert_eq!(got & 0o7777, mode & 0o7777, "mode {mode:o}");
            } else {
                assert_eq!(
                    got & 0o7777,
                    0o600 & !umask,
                    "mode {mode:o}: private until its chmod"
                );
            }
            staged.installed();
        }
        let named = Stager::new(dir.path(), None);
        let staged = named.create(0o644, || fresh("named")).unwrap();
        assert!(!staged.has_mode(0o644));
    }

    /// The open-files budget hands out places up to its size, and a place comes back when
    /// its file goes.
    #[test]
    fn the_budget_bounds_unnamed_files_held() {
        static HELD: AtomicUsize = AtomicUsize::new(0);
        let first = BudgetSlot::take(&HELD, 2).unwrap();
        let second = BudgetSlot::take(&HELD, 2).unwrap();
        assert!(BudgetSlot::take(&HELD, 2).is_none());
        drop(first);
        let third = BudgetSlot::take(&HELD, 2);
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(HELD.load(Ordering::Acquire), 0);
    }

    /// Where unnamed files are not possible, files are staged by name, and removed unless
    /// installed.
    #[test]
    fn without_unnamed_files_they_are_named() {
        let (dir, fresh) = tmp_dir();
        let stager = Stager::new(dir.path(), None);
        let mut staged = stage(&stager, fresh("a.part"), b"named");
        staged.finish_writing();
        assert!(staged.file().is_none() && staged.unnamed().is_none());
        assert_eq!(names_in(dir.path()), ["a.part"]);
        assert_eq!(
            staged.path(|| fresh("unused")).unwrap(),
            dir.path().join("a.part")
        );
        drop(staged);
        assert!(names_in(dir.path()).is_empty());
        let installed = stage(&stager, fresh("b.part"), b"");
        installed.installed();
        assert_eq!(names_in(dir.path()), ["b.part"]);
    }
}
