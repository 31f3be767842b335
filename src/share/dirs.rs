//! Folders of the shared folder held open while a run of files is read or installed.
//!
//! Every folder on the way to a path is opened one name at a time from the one above it
//! with `O_NOFOLLOW`, so a symlink on the way is never followed and `..` cannot occur
//! (a [`RelPath`] has none). The folder of the last path stays open: files come in name
//! order, so the next one usually lives there too, and each costs a lookup of its own
//! name instead of a walk of the whole path per system call (what `folder::stat` and
//! `folder::check_ancestors` do for a single path).
//!
//! Unlike a check of the folders followed by an operation on the path, nothing can slip a
//! symlink in between: a folder swapped for a symlink meanwhile is either refused when
//! opened or never looked up again, as the folder already open is used.
//!
//! A `Dirs` belongs to one operation (a batch served or installed, a rescan): a shared
//! folder replaced meanwhile is seen by the next one, as with paths.

use std::fs::{File, Metadata};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;

use super::ShareError;
use super::folder::Fingerprint;
use super::path::RelPath;
use super::staged::LinkMethod;

/// The open root of a shared folder and the folder last worked in.
pub struct Dirs {
    /// The root's path, for error messages.
    root: PathBuf,
    /// The root, open.
    root_fd: OwnedFd,
    /// The folder (relative to the root, `""` for the root) of the last path, open.
    last: Option<(String, OwnedFd)>,
}

/// What [`Dirs::place_new`] could not do.
#[derive(Debug)]
pub enum PlaceNewError {
    /// Something already has the name: the caller decides whether to replace it.
    Exists,
    /// The file system cannot rename without replacing: the caller falls back.
    Unsupported,
    /// Anything else, final.
    Failed(ShareError),
}

impl Dirs {
    /// Opens the root of the shared folder at `root` (which may itself be a symlink, as
    /// the person who started the box named it).
    pub fn open(root: &Path) -> Result<Dirs, ShareError> {
        let root_fd = open_dir(root)?;
        Ok(Dirs {
            root: root.to_path_buf(),
            root_fd,
            last: None,
        })
    }

    /// The shared folder's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens the regular file `rel` for reading, refusing symlinks anywhere on the way and
    /// anything that is not a regular file (never opening a device or a FIFO), and returns
    /// it with the metadata of the opened file itself.
    pub fn open_regular(&mut self, rel: &RelPath) -> Result<(File, Metadata), ShareError> {
        self.enter_folder_of(rel, false)?;
        let (dir, root) = (self.folder_of(rel), &self.root);
        let name = rel.file_name();
        let before = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Err(ShareError::NotFound(rel.clone())),
            Err(e) => return Err(ShareError::io(rel.under(root), e.into())),
        };
        match FileType::from_raw_mode(before.st_mode) {
            FileType::RegularFile => {}
            FileType::Symlink => return Err(ShareError::Symlink(rel.clone())),
            FileType::Directory => return Err(ShareError::IsDirectory(rel.clone())),
            _ => return Err(ShareError::NotAFile(rel.clone())),
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => return Err(ShareError::NotFound(rel.clone())),
            Err(Errno::LOOP) => return Err(ShareError::Symlink(rel.clone())),
            Err(e) => return Err(ShareError::io(rel.under(root), e.into())),
        };
        let meta = file
            .metadata()
            .map_err(|e| ShareError::io(rel.under(root), e))?;
        if meta.ino() != before.st_ino || meta.dev() != before.st_dev || !meta.is_file() {
            return Err(ShareError::Changed(rel.clone()));
        }
        Ok((file, meta))
    }

    /// Renames `tmp_name` in the folder `tmp_dir` to `rel`, only if nothing has that name
    /// (atomically: `renameat2(RENAME_NOREPLACE)`), creating the folders on the way, and
    /// returns the fingerprint of the file now at `rel` (`None` if it could not be read).
    pub fn place_new(
        &mut self,
        tmp_dir: BorrowedFd<'_>,
        tmp_name: &Path,
        rel: &RelPath,
    ) -> Result<Option<Fingerprint>, PlaceNewError> {
        self.put_new(
            rel,
            |dir, name| {
                rustix::fs::renameat_with(tmp_dir, tmp_name, dir, name, RenameFlags::NOREPLACE)
            },
            |dir, name| rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        )
    }

    /// Gives the unnamed file `file` (see [`super::staged`]) the name `rel`, only if nothing
    /// has that name (a link never replaces), creating the folders on the way, and returns
    /// the fingerprint of the file now at `rel` (`None` if it could not be read).
    pub fn link_new(
        &mut self,
        file: BorrowedFd<'_>,
        method: LinkMethod,
        rel: &RelPath,
    ) -> Result<Option<Fingerprint>, PlaceNewError> {
        self.put_new(
            rel,
            |dir, name| method.link(file, dir, Path::new(name)),
            |_, _| rustix::fs::fstat(file),
        )
    }

    /// Enters the folder of `rel` (creating it), runs `put` with it and `rel`'s name, then
    /// `stat` for the fingerprint: the shared part of [`Dirs::place_new`] and
    /// [`Dirs::link_new`]. Once `put` succeeded the file is in place, whatever `stat` says.
    fn put_new(
        &mut self,
        rel: &RelPath,
        put: impl FnOnce(BorrowedFd<'_>, &str) -> Result<(), Errno>,
        stat: impl FnOnce(BorrowedFd<'_>, &str) -> Result<Stat, Errno>,
    ) -> Result<Option<Fingerprint>, PlaceNewError> {
        self.enter_folder_of(rel, true)
            .map_err(PlaceNewError::Failed)?;
        let (dir, name) = (self.folder_of(rel), rel.file_name());
        match put(dir, name) {
            Ok(()) => Ok(stat(dir, name).ok().map(|stat| Fingerprint::of_stat(&stat))),
            Err(Errno::EXIST) => Err(PlaceNewError::Exists),
            // Or the folder is on another file system than the temporary file (a mount
            // point inside the shared folder): the general way copies it across.
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::XDEV) => {
                Err(PlaceNewError::Unsupported)
            }
            Err(e) => Err(PlaceNewError::Failed(ShareError::io(
                rel.under(&self.root),
                e.into(),
            ))),
        }
    }

    /// Opens the folder that holds `rel`, unless it is the one already open; with
    /// `create`, folders missing on the way are made. It stays open for the next path.
    fn enter_folder_of(&mut self, rel: &RelPath, create: bool) -> Result<(), ShareError> {
        let parent = parent_of(rel);
        if !parent.is_empty() && self.last.as_ref().is_none_or(|(open, _)| open != parent) {
            let fd = self.open_folder(rel, parent, create)?;
            self.last = Some((parent.to_string(), fd));
        }
        Ok(())
    }

    /// The folder that holds `rel`, as [`Dirs::enter_folder_of`] left it open.
    fn folder_of(&self, rel: &RelPath) -> BorrowedFd<'_> {
        match &self.last {
            Some((open, fd)) if open == parent_of(rel) => fd.as_fd(),
            _ => self.root_fd.as_fd(),
        }
    }

    /// Opens the folder `parent` of `rel`, one name at a time from the root.
    fn open_folder(
        &self,
        rel: &RelPath,
        parent: &str,
        create: bool,
    ) -> Result<OwnedFd, ShareError> {
        let mut current: Option<OwnedFd> = None;
        for part in parent.split('/') {
            let above = current
                .as_ref()
                .map_or(self.root_fd.as_fd(), |fd| fd.as_fd());
            let next = match open_child(above, part) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(above, part, Mode::from_raw_mode(0o777)) {
                        // Made here, or by someone else meanwhile: opened without
                        // following either way, so a symlink put there is refused.
                        Ok(()) | Err(Errno::EXIST) => open_child(above, part),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            current = Some(next.map_err(|e| self.folder_error(rel, above, part, e, create))?);
        }
        current.ok_or_else(|| ShareError::NotFound(rel.clone()))
    }

    /// The error for a folder of `rel` that could not be opened: a symlink in the way is
    /// named as such; a file in the way means no such path to read, and no place to put
    /// one (`create`).
    fn folder_error(
        &self,
        rel: &RelPath,
        above: BorrowedFd<'_>,
        part: &str,
        e: Errno,
        create: bool,
    ) -> ShareError {
        match e {
            Errno::NOENT => ShareError::NotFound(rel.clone()),
            Errno::LOOP | Errno::NOTDIR => {
                match rustix::fs::statat(above, part, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                        ShareError::Symlink(rel.clone())
                    }
                    _ if create => ShareError::NotADirectory(rel.clone()),
                    _ => ShareError::NotFound(rel.clone()),
                }
            }
            e => ShareError::io(rel.under(&self.root), e.into()),
        }
    }
}

/// The folder part of `rel`, `""` for a name at the root.
fn parent_of(rel: &RelPath) -> &str {
    rel.as_str()
        .rsplit_once('/')
        .map_or("", |(parent, _)| parent)
}

/// Opens the folder at `path` (following symlinks, as a path given by a person or the box
/// itself is) to work below it with `*at` calls.
pub fn open_dir(path: &Path) -> Result<OwnedFd, ShareError> {
    rustix::fs::open(path, dir_flags() & !OFlags::NOFOLLOW, Mode::empty())
        .map_err(|e| ShareError::io(path, e.into()))
}

/// Flags to open a folder only to work below it, never through a symlink.
fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn open_child(above: BorrowedFd<'_>, part: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(above, part, dir_flags(), Mode::empty())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    /// A shared folder, a folder outside it, and the box's temporary folder.
    fn folders() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let tmp = root.path().join(".boxsync/tmp");
        fs::create_dir_all(&tmp).unwrap();
        (root, outside, tmp)
    }

    /// Writes `content` as a temporary file in `tmp` and places it as `target` below `root`.
    fn place(
        root: &Path,
        tmp: &Path,
        content: &str,
        target: &str,
    ) -> Result<Option<Fingerprint>, PlaceNewError> {
        fs::write(tmp.join("t1"), content).unwrap();
        let tmp_fd = open_dir(tmp).unwrap();
        let mut dirs = Dirs::open(root).unwrap();
        dirs.place_new(tmp_fd.as_fd(), Path::new("t1"), &rel(target))
    }

    /// Files in several folders, in and out of order, open with their own metadata.
    #[test]
    fn opens_files_across_folders() {
        let (root, _outside, _) = folders();
        for (name, body) in [
            ("a/x/1", "one"),
            ("a/x/2", "two"),
            ("b/3", "three"),
            ("4", "four"),
        ] {
            let path = root.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        let mut dirs = Dirs::open(root.path()).unwrap();
        for (name, body) in [
            ("a/x/1", "one"),
            ("a/x/2", "two"),
            ("b/3", "three"),
            ("4", "four"),
            ("a/x/1", "one"),
        ] {
            let (file, meta) = dirs.open_regular(&rel(name)).unwrap();
            assert_eq!(std::io::read_to_string(file).unwrap(), body, "{name}");
            assert_eq!(meta.len(), body.len() as u64, "{name}");
        }
    }

    /// A symlink on the way or at the end is refused, as are folders, special files and
    /// missing names: nothing outside the folder is ever opened.
    #[test]
    fn refuses_what_is_not_a_regular_file_inside() {
        let (root, outside, _) = folders();
        fs::write(outside.path().join("secret"), "secret").unwrap();
        symlink(outside.path(), root.path().join("linkdir")).unwrap();
        symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
        fs::create_dir(root.path().join("dir")).unwrap();
        fs::write(root.path().join("file"), "x").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let mut dirs = Dirs::open(root.path()).unwrap();
        let open =
            |dirs: &mut Dirs, name: &str| dirs.open_regular(&rel(name)).map(|_| ()).unwrap_err();
        assert!(matches!(
            open(&mut dirs, "linkdir/secret"),
            ShareError::Symlink(_)
        ));
        assert!(matches!(open(&mut dirs, "link"), ShareError::Symlink(_)));
        assert!(matches!(open(&mut dirs, "dir"), ShareError::IsDirectory(_)));
        assert!(matches!(open(&mut dirs, "fifo"), ShareError::NotAFile(_)));
        assert!(matches!(
            open(&mut dirs, "missing"),
            ShareError::NotFound(_)
        ));
        assert!(matches!(
            open(&mut dirs, "missing/x"),
            ShareError::NotFound(_)
        ));
        assert!(matches!(open(&mut dirs, "file/x"), ShareError::NotFound(_)));
    }

    /// A new file lands under its name with the folders on the way made, and its
    /// fingerprint is that of the file now there.
    #[test]
    fn places_a_new_file_and_makes_its_folders() {
        let (root, _outside, tmp) = folders();
        let fingerprint = place(root.path(), &tmp, "new", "a/b/new").unwrap();
        let placed = root.path().join("a/b/new");
        assert_eq!(fs::read_to_string(&placed).unwrap(), "new");
        assert_eq!(
            fingerprint,
            Some(Fingerprint::of(&fs::symlink_metadata(&placed).unwrap()))
        );
        assert!(!tmp.join("t1").exists());
    }

    /// Nothing is replaced: a name taken meanwhile is reported and both files stay.
    #[test]
    fn never_replaces_what_is_there() {
        let (root, _outside, tmp) = folders();
        fs::write(root.path().join("taken"), "theirs").unwrap();
        let result = place(root.path(), &tmp, "ours", "taken");
        assert!(matches!(result, Err(PlaceNewError::Exists)), "{result:?}");
        assert_eq!(
            fs::read_to_string(root.path().join("taken")).unwrap(),
            "theirs"
        );
        assert_eq!(fs::read_to_string(tmp.join("t1")).unwrap(), "ours");
    }

    /// A symlinked folder on the way is refused and nothing lands outside the folder.
    #[test]
    fn never_places_through_a_symlink() {
        let (root, outside, tmp) = folders();
        symlink(outside.path(), root.path().join("linkdir")).unwrap();
        let result = place(root.path(), &tmp, "x", "linkdir/sub/f");
        assert!(
            matches!(result, Err(PlaceNewError::Failed(ShareError::Symlink(_)))),
            "{result:?}"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(tmp.join("t1").exists());
    }

    /// A file where a folder must go is named as such, and stays as it was.
    #[test]
    fn never_places_below_a_file() {
        let (root, _outside, tmp) = folders();
        fs::write(root.path().join("file"), "mine").unwrap();
        let result = place(root.path(), &tmp, "x", "file/f");
        assert!(
            matches!(
                result,
                Err(PlaceNewError::Failed(ShareError::NotADirectory(_)))
            ),
            "{result:?}"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("file")).unwrap(),
            "mine"
        );
    }
}
