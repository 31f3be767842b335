//! The current peer's file names for completion, cached so that Tab never waits on the
//! network for long. A list older than [`FRESH_FOR`] is fetched again at the next Tab,
//! which waits for it briefly (the caller's bound) and falls back to the old list only if
//! the peer is slower than that: a file made on the peer a minute ago completes, even after
//! the shell sat idle.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::peer::Peer;
use crate::share::Entry;
use crate::share::filter::IndexFilter;

/// How long a fetched list is used before Tab asks for a fresh one.
pub const FRESH_FOR: Duration = Duration::from_secs(15);

/// The cached file names of one peer at a time, shared with the tasks that refresh them.
#[derive(Clone)]
pub struct RemoteNames {
    /// The cache and its signal; shared with refresh tasks.
    shared: Arc<Shared>,
    /// The runtime refreshes run on.
    handle: Handle,
    /// How long a fetched list is used before the next Tab fetches another.
    fresh_for: Duration,
}

/// The cache and the signal that a refresh ended.
struct Shared {
    /// The cache. A std `Mutex`: never held across an `.await`.
    state: Mutex<State>,
    /// Signalled when a refresh ends.
    refreshed: Condvar,
}

/// What is cached, and for which peer.
#[derive(Default)]
struct State {
    /// The peer whose names these are.
    addr: Option<String>,
    /// Its files' relative paths, sorted.
    files: Arc<Vec<String>>,
    /// When they were last fetched (or the last fetch failed); `None`: never.
    fetched: Option<Instant>,
    /// Whether a refresh is under way.
    refreshing: bool,
    /// Bumped when the peer changes, so that a late refresh of the old one is ignored.
    generation: u64,
}

impl RemoteNames {
    /// An empty cache whose refreshes run on `handle`, lists kept [`FRESH_FOR`].
    pub fn new(handle: Handle) -> RemoteNames {
        RemoteNames::fresh_for(handle, FRESH_FOR)
    }

    /// An empty cache whose lists are used for `fresh_for` before the next Tab fetches
    /// another (tests shorten it).
    pub fn fresh_for(handle: Handle, fresh_for: Duration) -> RemoteNames {
        RemoteNames {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                refreshed: Condvar::new(),
            }),
            handle,
            fresh_for,
        }
    }

    /// The files of `peer`: the cached list while it is fresh; otherwise a new one, waited
    /// for at most `wait` (then the old list, while the new one keeps coming). A failed
    /// fetch counts as fresh too, so that a peer that is away does not make every Tab wait.
    /// Called on the prompt's thread, never from the runtime.
    pub fn files(&self, peer: &Arc<Peer>, wait: Duration) -> Arc<Vec<String>> {
        let mut state = self.state();
        if state.addr.as_deref() != Some(peer.addr()) {
            *state = State {
                addr: Some(peer.addr().to_string()),
                generation: state.generation + 1,
                ..State::default()
            };
        }
        let stale = state.fetched.is_none_or(|at| at.elapsed() > self.fresh_for);
        if stale && !state.refreshing {
            state.refreshing = true;
            self.spawn_refresh(Arc::clone(peer), state.generation);
        }
        if stale {
            let (waited, _) = self
                .shared
                .refreshed
                .wait_timeout_while(state, wait, |s| s.refreshing)
                .unwrap_or_else(|e| e.into_inner());
            state = waited;
        }
        Arc::clone(&state.files)
    }

    /// Replaces the cache with a complete listing of `addr` that a command just fetched
    /// (`index longlist`), saving a request.
    pub fn offer(&self, addr: &str, entries: &[Entry]) {
        self.offer_names(addr, file_names(entries));
    }

    /// Replaces the cache with the files of a complete listing of `addr`, given as their
    /// relative paths (in any order), as a streamed `index longlist` gathers them.
    pub fn offer_names(&self, addr: &str, mut files: Vec<String>) {
        files.sort();
        let mut state = self.state();
        if state.addr.as_deref() != Some(addr) {
            state.addr = Some(addr.to_string());
            state.generation += 1;
            state.refreshing = false;
        }
        state.files = Arc::new(files);
        state.fetched = Some(Instant::now());
    }

    fn spawn_refresh(&self, peer: Arc<Peer>, generation: u64) {
        let shared = Arc::clone(&self.shared);
        self.handle.spawn(async move {
            let listed = peer.index(&IndexFilter::Longlist).await;
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.generation == generation {
                match listed {
                    Ok(entries) => state.files = Arc::new(file_names(&entries)),
                    Err(e) => tracing::debug!(
                        error = %crate::text::for_log(&e),
                        "cannot refresh names for completion"
                    ),
                }
                // A failure counts as a fetch too, so that Tab does not ask again at once.
                state.fetched = Some(Instant::now());
                state.refreshing = false;
            }
            drop(state);
            shared.refreshed.notify_all();
        });
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The names Tab offers for `entries`: files by their path, folders with a trailing `/`
/// (so that an empty folder is offered too; the others also come from their files' paths).
fn file_names(entries: &[Entry]) -> Vec<String> {
    let mut names: Vec<String> = entries.iter().map(completion_name).collect();
    names.sort();
    names
}

/// How Tab's names hold one entry: a file by its path, a folder as `path/`.
pub fn completion_name(entry: &Entry) -> String {
    match entry.is_dir() {
        true => format!("{}/", entry.name),
        false => entry.name.as_str().to_string(),
    }
}
