//! Watching the shared folder for changes with Linux's inotify, so that a change starts a
//! sync round within moments instead of at the next periodic rescan.
//!
//! The watcher reports *where* something changed: the folders whose children changed, and
//! the folders that appeared or went whole (or that it could not tell, after the kernel
//! dropped events), so that the next read of the folder reads only those parts. It asks
//! the kernel for the events that mean a change and nothing else: never
//! `IN_OPEN`, which the `notify` crate (8.x) always asks for, and which made every read of
//! the box's own files (hashing, serving a peer) wake the watcher. It reads its events in
//! bursts at most every [`COALESCE`], so thousands of files landing cost a few wake-ups,
//! not one each.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use inotify::{EventMask, EventOwned, Inotify, WatchMask, Watches};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::share::{STATE_DIR, Scope};

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

/// What the watcher reports to its caller for each burst of events.
#[derive(Debug)]
pub enum WatchReport {
    /// Something changed in these parts of the folder (`None`: somewhere, the kernel
    /// dropped events or a name was not placed).
    Changed(Option<Vec<Scope>>),
    /// Part of the folder is not watched any more (see [`watch`]).
    Lost(io::Error),
}

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
/// called with where they happened and then `changed` signalled. `on_change` is also
/// called with [`WatchReport::Lost`] when part of the folder goes unwatched: a new folder could not be watched (inotify limits), the
/// shared folder itself went away, or reading the events failed (the watcher then stops);
/// changes there are then seen only by the rescans. Must be called within a tokio runtime.
/// Fails when the kernel refuses (inotify limits, say).
pub fn watch(
    root: &Path,
    changed: Arc<Notify>,
    on_change: impl Fn(WatchReport) + Send + 'static,
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
                on_change(WatchReport::Lost(error));
            }
            if let Err(e) = read {
                // Events may be lost from here on: say so once, and leave it to the rescans.
                on_change(WatchReport::Lost(e));
                changed.notify_one();
                return;
            }
            if burst.unplaced || !burst.scopes.is_empty() {
                // Reported after the new folders are watched: a read of the folder that
                // began before this point is stale, one that begins after sees every
                // later change reported.
                let scopes = (!burst.unplaced).then(|| burst.scopes.into_iter().collect());
                on_change(WatchReport::Changed(scopes));
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
    /// Where something changed.
    scopes: BTreeSet<Scope>,
    /// Something changed that could not be placed: the whole folder must be read.
    unplaced: bool,
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

    /// Notes where an event on `path` (in the watched `folder`) changed something: the
    /// folder's children, and a child folder that came or went, whole. An event on the
    /// watched folder itself (its mode, say) changed its entry among its parent's children.
    fn place(&self, folder: &Path, path: &Path, event: &EventOwned, burst: &mut Burst) {
        let relative = |p: &Path| -> Option<String> {
            p.strip_prefix(&self.root)
                .ok()
                .and_then(|r| r.to_str())
                .map(str::to_string)
        };
        let placed = match &event.name {
            Some(_) => relative(folder).map(|f| {
                burst.scopes.insert(Scope::Children(f));
                let whole = EventMask::CREATE
                    | EventMask::MOVED_TO
                    | EventMask::MOVED_FROM
                    | EventMask::DELETE;
                if event.mask.contains(EventMask::ISDIR)
                    && event.mask.intersects(whole)
                    && let Some(p) = relative(path)
                {
                    burst.scopes.insert(Scope::Subtree(p));
                }
            }),
            None if folder == self.root => Some(()),
            None => folder.parent().and_then(relative).map(|parent| {
                burst.scopes.insert(Scope::Children(parent));
            }),
        };
        if placed.is_none() {
            burst.unplaced = true;
        }
    }

    /// Takes one event into `burst`.
    fn take(&mut self, event: EventOwned, burst: &mut Burst) {
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost, new folders among them perhaps: watch whatever is not.
            burst.unplaced = true;
            if let Err(e) = self.add_all(&self.root.clone()) {
                burst.errors.push(explain(e));
            }
            return;
        }
        let id = event.wd.get_watch_descriptor_id();
        if event.mask.contains(EventMask::UNMOUNT) {
            // A file system mounted below the folder went: what was under it is back in
            // view, unreported. The next read takes the whole folder.
            burst.unplaced = true;
            return;
        }
        if event.mask.contains(EventMask::IGNORED) {
            if self.folders.remove(&id).as_deref() == Some(self.root.as_path()) {
                // The shared folder itself was removed or unmounted: nothing is watched any
                // more, even if it comes back.
                burst.unplaced = true;
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
        let folder = folder.clone();
        self.place(&folder, &path, &event, burst);
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

    /// Waits until `done` holds, looking again at each signal of `changed`; fails with
    /// `what` after [`DEADLINE`].
    async fn until(changed: &Notify, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}");
            let _ = tokio::time::timeout(left, changed.notified()).await;
        }
    }

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

    /// The watcher says where changes happened: the folder whose children changed, and a
    /// folder that came or went, whole; a change to a folder's own mode, among its
    /// parent's children.
    #[tokio::test]
    async fn changes_are_placed() {
        let dir = tempfile::tempdir().expect("temporary folder");
        fs::create_dir_all(dir.path().join("a/b")).expect("folders");
        let reported = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = Arc::clone(&reported);
        let changed = Arc::new(Notify::new());
        let _watcher = watch(dir.path(), Arc::clone(&changed), move |report| {
            if let WatchReport::Changed(Some(scopes)) = report {
                seen.lock().expect("scopes").extend(scopes);
            }
        })
        .expect("watcher");
        let until = |wanted: Scope| {
            let reported = Arc::clone(&reported);
            let changed = Arc::clone(&changed);
            async move {
                let what = format!("{wanted:?} not reported");
                until(&changed, &what, || {
                    reported.lock().expect("scopes").contains(&wanted)
                })
                .await;
            }
        };
        fs::write(dir.path().join("a/b/f.txt"), b"x").expect("write");
        until(Scope::Children("a/b".into())).await;
        fs::create_dir(dir.path().join("a/new")).expect("mkdir");
        until(Scope::Subtree("a/new".into())).await;
        until(Scope::Children("a".into())).await;
        reported.lock().expect("scopes").clear();
        fs::set_permissions(
            dir.path().join("a/b"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        until(Scope::Children("a".into())).await;
        fs::write(dir.path().join("top.txt"), b"x").expect("write");
        until(Scope::Children(String::new())).await;
    }

    /// What a read of only the parts the watcher reported finds is what a read of the
    /// whole folder finds, through seeded random creations, edits, deletions, renames and
    /// mode changes of files and folders at any depth.
    #[tokio::test(flavor = "multi_thread")]
    async fn partial_reads_find_what_whole_reads_find() {
        use rand::{RngExt, SeedableRng};
        let dir = tempfile::tempdir().expect("temporary folder");
        let share = crate::share::Share::open(dir.path()).expect("share");
        let root = share.root().to_path_buf();
        let changed = Arc::new(Notify::new());
        let _watcher = watch(&root, Arc::clone(&changed), {
            let share = Arc::clone(&share);
            move |report| match report {
                WatchReport::Changed(Some(scopes)) => share.view().changed_in(scopes),
                _ => share.view().changed(),
            }
        })
        .expect("watcher");
        share.view().set_trust(Some(Duration::from_secs(3600)));
        share.snapshot().await.expect("first read");
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ca1e);
        let folders = ["a", "a/b", "a/b/c", "d", "d/e"];
        for round in 0..25 {
            for step in 0..4 {
                let folder = folders[rng.random_range(0..folders.len())];
                let path = root.join(folder);
                match rng.random_range(0..7) {
                    0 | 1 => {
                        let _ = fs::create_dir_all(&path);
                        let name = format!("f{}.txt", rng.random_range(0..4));
                        let _ = fs::write(path.join(name), format!("{round} {step}"));
                    }
                    2 => {
                        let _ = fs::remove_dir_all(&path);
                    }
                    3 => {
                        let to = root.join(folders[rng.random_range(0..folders.len())]);
                        let _ = fs::rename(&path, to.with_extension("moved"));
                    }
                    4 => {
                        let mode = if rng.random_bool(0.5) { 0o700 } else { 0o755 };
                        let _ = fs::set_permissions(
                            &path,
                            std::os::unix::fs::PermissionsExt::from_mode(mode),
                        );
                    }
                    5 => {
                        if let Ok(list) = fs::read_dir(&path) {
                            for entry in list.flatten().take(1) {
                                let _ = fs::remove_file(entry.path());
                            }
                        }
                    }
                    _ => {
                        // A file where a folder was, or the other way round.
                        let _ = fs::remove_dir_all(&path);
                        let _ = fs::write(&path, b"now a file");
                    }
                }
            }
            // Something surely changed (the steps may all have found nothing to do); every
            // event of the burst reported: a notice, then quiet for a while.
            fs::write(root.join("tick.txt"), round.to_string()).expect("tick");
            assert!(
                tokio::time::timeout(DEADLINE, changed.notified())
                    .await
                    .is_ok()
            );
            while tokio::time::timeout(QUIET, changed.notified())
                .await
                .is_ok()
            {}
            let partial = share.recent_snapshot().await.expect("partial read");
            let whole = share.snapshot().await.expect("whole read");
            assert_eq!(
                partial.items, whole.items,
                "round {round}: a partial read differs from the whole folder"
            );
            assert_eq!(partial.version(), whole.version(), "round {round}");
        }
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
        let _watcher = watch(&root, Arc::clone(&changed), move |report| {
            if let WatchReport::Lost(e) = report {
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

    /// When the kernel's queue overflows (`IN_Q_OVERFLOW`), events are lost: the watcher
    /// says the change cannot be placed (the next read takes the whole folder) and watches
    /// the folders whose creation it never heard of. The test's own runtime has one thread,
    /// so the watcher reads nothing while the queue is filled.
    #[tokio::test]
    async fn an_overflow_is_caught_up_by_a_whole_read() {
        let limit: usize = match fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            Some(limit) if limit <= 1 << 20 => limit,
            other => {
                eprintln!(
                    "skipped: fs.inotify.max_queued_events is {other:?}; overflowing it takes too many files"
                );
                return;
            }
        };
        let dir = tempfile::tempdir().expect("temporary folder");
        fs::create_dir(dir.path().join("a")).expect("folder");
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&reports);
        let changed = Arc::new(Notify::new());
        let _watcher = watch(dir.path(), Arc::clone(&changed), move |report| {
            if let WatchReport::Changed(scopes) = report {
                seen.lock().expect("reports").push(scopes);
            }
        })
        .expect("watcher");
        // Each new file is at least two events (created, closed after writing).
        for i in 0..limit / 2 + 100 {
            fs::write(dir.path().join(format!("a/f{i}")), b"x").expect("write");
        }
        // Created after the overflow: the kernel drops its event.
        fs::create_dir_all(dir.path().join("late/deep")).expect("folders");
        until(
            &changed,
            "the overflow was not reported as unplaced",
            || reports.lock().expect("reports").contains(&None),
        )
        .await;
        // The folder whose creation was lost is watched now.
        reports.lock().expect("reports").clear();
        fs::write(dir.path().join("late/deep/f.txt"), b"x").expect("write");
        let wanted = Scope::Children("late/deep".into());
        until(&changed, "a write in late/deep was not reported", || {
            reports
                .lock()
                .expect("reports")
                .iter()
                .flatten()
                .any(|scopes| scopes.contains(&wanted))
        })
        .await;
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
