//! Watching the shared folder for changes (inotify through the `notify` crate), so that a
//! change starts a sync round within moments instead of at the next periodic rescan.

use std::path::Path;
use std::sync::Arc;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::share::STATE_DIR;

/// Starts watching `root` recursively; `changed` is signalled and `on_change` called for
/// every change outside the box's state folder (`on_change` also for every error of the
/// watcher, which may have lost events). Keep the returned watcher alive for as long as
/// watching should go on. Fails when the platform refuses (inotify limits, say).
pub fn watch(
    root: &Path,
    changed: Arc<Notify>,
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<RecommendedWatcher> {
    let state = root.join(STATE_DIR);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            on_change();
            return;
        };
        if event.need_rescan() {
            on_change();
            changed.notify_one();
            return;
        }
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|path| !path.starts_with(&state)) {
            on_change();
            changed.notify_one();
        }
    })?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    // The state folder's events would all be ignored, and they are the most numerous: every
    // download writes, stamps and renames a temporary file there. Not watching it spares
    // the watcher's thread from reading them (if it comes back after being deleted, it is
    // watched again, which costs only that).
    if let Err(e) = watcher.unwatch(&root.join(STATE_DIR)) {
        tracing::debug!(error = %e, "the state folder stays watched");
    }
    Ok(watcher)
}
