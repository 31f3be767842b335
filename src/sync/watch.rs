//! Watching the shared folder for changes with Linux's inotify, so that a change starts a
//! sync round within moments instead of at the next periodic rescan.
//!
//! Sync only needs to know *that* something changed (a round rescans the folder itself), so
//! the watcher asks the kernel for the events that mean a change and nothing else: never
//! `IN_OPEN`, which the `notify` crate (8.x) always asks for, and which made every read of
//! the box's own files (hashing, serving a peer) wake the watcher. It reads its events in
//! bursts at most every [`COALESCE`], so thousands of files landing cost a few wake-ups,
//! not one each.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use inotify::{EventMask, EventOwned, Inotify, WatchMask, Watches};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::share::STATE_DIR;

/// What is asked of the kernel for every watched folder: the events that change something
/// in it (content, metadata, names), and the folder's own removal. `DONT_FOLLOW` and
/// `ONLYDIR`: a symlink to a folder is not shared, so it is not watched either.
const WANTED: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::ONLYDIR);

/// How long the watcher lets events gather after reporting a burst: a change reaches the
/// sync loop at most this much later, and a busy folder costs at most one wake-up per
/// period.
pub const COALESCE: Duration = Duration::from_millis(10);

/// A running watcher; watching stops when it is dropped.
pub struct Watcher {
    /// The task that reads the events.
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `root` and every folder below it, except the box's state folder (and
/// folders created later, as they appear). For every burst of changes, `on_change` is
/// called and then `changed` signalled. `on_change` is also called with an error when part
/// of the folder goes unwatched: a new folder could not be watched (inotify limits), the
/// shared folder itself went away, or reading the events failed (the watcher then stops);
/// changes there are then seen only by the rescans. Must be called within a tokio runtime.
/// Fails when the kernel refuses (inotify limits, say).
pub fn watch(
    root: &Path,
    changed: Arc<Notify>,
    on_change: impl Fn(Option<io::Error>) + Send + 'static,
) -> io::Result<Watcher> {
    let inotify = Inotify::init().map_err(explain)?;
    let mut stream = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
    let mut tree = Tree {
        root: root.to_path_buf(),
        watches: stream.watches(),
        folders: HashMap::new(),
    };
    tree.add_all(root).map_err(explain)?;
    let task = tokio::spawn(async move {
        while let Some(first) = stream.next().await {
            let mut burst = Burst::default();
            let mut read = first.map(|event| tree.take(event, &mut burst));
            // Everything else already queued, without waiting.
            while read.is_ok()
                && let Some(Some(next)) = stream.next().now_or_never()
            {
                read = next.map(|event| tree.take(event, &mut burst));
            }
            for error in burst.errors {
                on_change(Some(error));
            }
            if let Err(e) = read {
                // Events may be lost from here on: say so once, and leave it to the rescans.
                on_change(Some(e));
                changed.notify_one();
                return;
            }
            if burst.changed {
                // Reported after the new folders are watched: a read of the folder that
                // began before this point is stale, one that begins after sees every
                // later change reported.
                on_change(None);
                changed.notify_one();
            }
            tokio::time::sleep(COALESCE).await;
        }
    });
    Ok(Watcher { task })
}

/// Names the kernel limit behind an error, where the kernel's own words would mislead
/// ("no space left on device" for too many watches).
fn explain(error: io::Error) -> io::Error {
    let limit = match error.raw_os_error() {
        Some(libc::ENOSPC) => "fs.inotify.max_user_watches",
        Some(libc::EMFILE) => "fs.inotify.max_user_instances",
        _ => return error,
    };
    io::Error::new(
        error.kind(),
        format!("the kernel's inotify limit {limit} is reached"),
    )
}

/// What one burst of events amounted to.
#[derive(Default)]
struct Burst {
    /// Something in the shared folder changed.
    changed: bool,
    /// Why part of the folder is not watched (a new folder refused, the folder gone).
    errors: Vec<io::Error>,
}

/// The watched folders.
struct Tree {
    /// The shared folder.
    root: PathBuf,
    /// Adds and removes watches.
    watches: Watches,
    /// Each watch's folder, by watch number, to name the folders created in it.
    folders: HashMap<i32, PathBuf>,
}

impl Tree {
    /// Watches `dir` and every folder below it (but not the state folder). A folder is
    /// watched before it is listed, so that a folder created in it meanwhile is either
    /// listed or reported.
    fn add_all(&mut self, dir: &Path) -> io::Result<()> {
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let wd = match self.watches.add(&dir, WANTED) {
                Ok(wd) => wd,
                // Gone or replaced by a file since it was seen: nothing to watch.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.folders
                .insert(wd.get_watch_descriptor_id(), dir.clone());
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue; // Gone meanwhile: its removal is reported.
            };
            for entry in entries.flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let path = entry.path();
                if is_dir && !self.is_state_dir(&path) {
                    pending.push(path);
                }
            }
        }
        Ok(())
    }

    /// Stops watching every folder at or below `dir` (it was moved away; if it was moved
    /// within the shared folder, it is watched again under its new name).
    fn remove_all(&mut self, dir: &Path) {
        let gone: Vec<i32> = self
            .folders
            .iter()
            .filter(|(_, path)| path.starts_with(dir))
            .map(|(wd, _)| *wd)
            .collect();
        for id in gone {
            self.folders.remove(&id);
        }
        // The kernel's watches are left to go with the folders' inodes: an inode moved out
        // of the shared folder only produces events that name no known folder, which are
        // ignored.
    }

    /// Whether `path` is the box's state folder.
    fn is_state_dir(&self, path: &Path) -> bool {
        path.parent() == Some(self.root.as_path())
            && path.file_name() == Some(OsStr::new(STATE_DIR))
    }

    /// Takes one event into `burst`.
    fn take(&mut self, event: EventOwned, burst: &mut Burst) {
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost, new folders among them perhaps: watch whatever is not.
            burst.changed = true;
            if let Err(e) = self.add_all(&self.root.clone()) {
                burst.errors.push(explain(e));
            }
            return;
        }
        let id = event.wd.get_watch_descriptor_id();
        if event.mask.contains(EventMask::IGNORED) {
            if self.folders.remove(&id).as_deref() == Some(self.root.as_path()) {
                // The shared folder itself was removed or unmounted: nothing is watched any
                // more, even if it comes back.
                burst.changed = true;
                burst.errors.push(io::Error::other(
                    "the shared folder itself went away; it is no longer watched",
                ));
            }
            return;
        }
        let Some(folder) = self.folders.get(&id) else {
            return; // A folder no longer watched (moved away).
        };
        let path = match &event.name {
            Some(name) => folder.join(name),
            None => folder.clone(),
        };
        if self.is_state_dir(&path) {
            return;
        }
        burst.changed = true;
        if event.mask.contains(EventMask::ISDIR) {
            if event.mask.contains(EventMask::MOVED_FROM) {
                self.remove_all(&path);
            }
            if event
                .mask
                .intersects(EventMask::CREATE | EventMask::MOVED_TO)
                && let Err(e) = self.add_all(&path)
            {
                burst.errors.push(explain(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::Mutex;
    use std::time::Instant;

    /// A watcher on a temporary folder, with what it reported.
    struct Watched {
        dir: tempfile::TempDir,
        changed: Arc<Notify>,
        calls: Arc<Mutex<usize>>,
        _watcher: Watcher,
    }

    fn watched() -> Watched {
        let dir = tempfile::tempdir().expect("temporary folder");
        fs::create_dir(dir.path().join(STATE_DIR)).expect("state folder");
        fs::create_dir_all(dir.path().join("a/b")).expect("folders");
        let changed = Arc::new(Notify::new());
        let calls = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&calls);
        let watcher = watch(dir.path(), Arc::clone(&changed), move |_| {
            *counted.lock().expect("count") += 1;
        })
        .expect("watcher");
        Watched {
            dir,
            changed,
            calls,
            _watcher: watcher,
        }
    }

    impl Watched {
        /// Whether a change is signalled within `wait`.
        async fn signalled_within(&self, wait: Duration) -> bool {
            tokio::time::timeout(wait, self.changed.notified())
                .await
                .is_ok()
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
    }

    /// Long enough for any event to arrive on a loaded machine; used only where a signal is
    /// expected (silence is checked by [`QUIET`]).
    const DEADLINE: Duration = Duration::from_secs(10);
    /// How long silence is awaited where no signal is expected.
    const QUIET: Duration = Duration::from_millis(300);

    /// A new, edited, renamed or deleted file anywhere below the root is a change.
    #[tokio::test]
    async fn changes_at_any_depth_are_signalled() {
        let w = watched();
        fs::write(w.path("a/b/new.txt"), b"x").expect("write");
        assert!(w.signalled_within(DEADLINE).await);
        fs::rename(w.path("a/b/new.txt"), w.path("top.txt")).expect("rename");
        assert!(w.signalled_within(DEADLINE).await);
        fs::remove_file(w.path("top.txt")).expect("remove");
        assert!(w.signalled_within(DEADLINE).await);
        assert!(*w.calls.lock().expect("count") >= 3);
    }

    /// Folders created after the watcher started are watched too, however deep, and so
    /// are folders moved in.
    #[tokio::test]
    async fn new_and_moved_folders_are_watched() {
        let w = watched();
        fs::create_dir_all(w.path("n/m/o")).expect("folders");
        assert!(w.signalled_within(DEADLINE).await);
        // Let the burst that added the watches end.
        while w.signalled_within(QUIET).await {}
        fs::write(w.path("n/m/o/deep.txt"), b"x").expect("write");
        assert!(w.signalled_within(DEADLINE).await);

        fs::rename(w.path("n"), w.path("a/moved")).expect("move folder");
        assert!(w.signalled_within(DEADLINE).await);
        while w.signalled_within(QUIET).await {}
        fs::write(w.path("a/moved/m/o/again.txt"), b"x").expect("write");
        assert!(w.signalled_within(DEADLINE).await);
    }

    /// Reading files (what hashing and serving a peer do) and everything in the state
    /// folder are not changes: they must not wake sync.
    #[tokio::test]
    async fn reads_and_the_state_folder_are_not_changes() {
        let w = watched();
        fs::write(w.path("a/b/file.txt"), b"content").expect("write");
        assert!(w.signalled_within(DEADLINE).await);
        while w.signalled_within(QUIET).await {}
        let before = *w.calls.lock().expect("count");

        for _ in 0..20 {
            assert_eq!(fs::read(w.path("a/b/file.txt")).expect("read"), b"content");
            let _ = fs::read_dir(w.path("a")).expect("list").count();
        }
        fs::write(w.path(".boxsync/tmp-1"), b"partial").expect("state write");
        fs::create_dir(w.path(".boxsync/trash")).expect("state folder");
        fs::write(w.path(".boxsync/trash/old"), b"old").expect("state write");
        assert!(!w.signalled_within(QUIET).await);
        assert_eq!(*w.calls.lock().expect("count"), before);
    }

    /// When the shared folder itself goes away, the watcher says it no longer watches it.
    #[tokio::test]
    async fn losing_the_folder_is_reported() {
        let parent = tempfile::tempdir().expect("temporary folder");
        let root = parent.path().join("shared");
        fs::create_dir(&root).expect("shared folder");
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&errors);
        let changed = Arc::new(Notify::new());
        let _watcher = watch(&root, Arc::clone(&changed), move |error| {
            if let Some(e) = error {
                seen.lock().expect("errors").push(e.to_string());
            }
        })
        .expect("watcher");
        fs::remove_dir(&root).expect("remove");
        assert!(
            tokio::time::timeout(DEADLINE, changed.notified())
                .await
                .is_ok()
        );
        let errors = errors.lock().expect("errors").clone();
        assert_eq!(
            errors,
            ["the shared folder itself went away; it is no longer watched"]
        );
    }

    /// Hitting a kernel limit names the limit, not "no space left on device".
    #[test]
    fn limits_are_named() {
        let e = explain(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(
            e.to_string(),
            "the kernel's inotify limit fs.inotify.max_user_watches is reached"
        );
        let other = explain(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(other.raw_os_error(), Some(libc::EACCES));
    }

    /// A burst of many changes is reported in a few calls, not one per file.
    #[tokio::test]
    async fn a_burst_is_reported_in_few_calls() {
        let w = watched();
        let started = Instant::now();
        for i in 0..500 {
            fs::write(w.path(&format!("a/f{i}")), b"x").expect("write");
        }
        let writing = started.elapsed();
        assert!(w.signalled_within(DEADLINE).await);
        while w.signalled_within(QUIET).await {}
        let calls = *w.calls.lock().expect("count");
        // One call per coalescing period at most, plus the one that opened the burst.
        let bound = 2 + (writing.as_millis() / COALESCE.as_millis()) as usize + 1;
        assert!(
            (1..=bound).contains(&calls),
            "{calls} calls for 500 files written in {writing:?}"
        );
    }
}
