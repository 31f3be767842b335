//! Says above the prompt when the state it shows changes by itself (a peer went away or
//! came back, sync stopped or caught up, the mass-delete guard paused it), so that the
//! person reads why, and the prompt is redrawn with its new marks (every line printed
//! above it redraws it: see [`super::prompt::LivePrompt`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::prompt::{PromptState, SyncMark};
use super::screen::Screen;
use crate::peer::{Peer, Reachability};
use crate::sync::SyncHandle;
use crate::text::escape;

/// How often the state is looked at: the prompt lags a change by at most this.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Everything a line above the prompt may be about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// What the prompt shows.
    pub prompt: PromptState,
    /// Per peer of sync, its name and what stopped its last round (`None`: it went
    /// through).
    pub stopped: Vec<(String, Option<String>)>,
}

impl Watched {
    /// The state now.
    pub fn now(peer: Option<&Peer>, sync: &SyncHandle) -> Watched {
        let status = sync.status();
        Watched {
            prompt: PromptState {
                reach: peer.map_or(Reachability::Unknown, Peer::reachability),
                sync: Some(SyncMark::of_status(&status)),
            },
            stopped: status
                .peers
                .iter()
                .map(|p| {
                    let why = p
                        .failure
                        .as_ref()
                        .map(|_| p.errors.first().cloned().unwrap_or_default());
                    (p.peer.clone(), why)
                })
                .collect(),
        }
    }
}

/// The lines that say what changed from `before` to `now`, for the current peer `peer`
/// (its address); `was_in_sync`: whether sync has been in sync since the shell started. A
/// round that stopped is said with its reason, once per reason; a change of the marks
/// alone in a few words, except the comings and goings of `sync …` while files arrive
/// (their own lines say so). Nothing when nothing changed.
pub fn lines(
    before: &Watched,
    now: &Watched,
    peer: Option<&str>,
    was_in_sync: bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, why) in &now.stopped {
        let was = before
            .stopped
            .iter()
            .find(|(other, _)| other == name)
            .and_then(|(_, why)| why.as_ref());
        match (was, why) {
            (was, Some(why)) if was != Some(why) => {
                lines.push(format!("sync [{}] stopped: {}", escape(name), escape(why)));
            }
            (Some(_), None) => lines.push(format!("sync [{}] going again", escape(name))),
            _ => {}
        }
    }
    if !lines.is_empty() || now.prompt == before.prompt {
        return lines;
    }
    if now.prompt.sync != before.prompt.sync {
        match now.prompt.sync {
            Some(SyncMark::InSync)
                if !was_in_sync || before.prompt.sync == Some(SyncMark::Errors) =>
            {
                lines.push("sync: in sync with every peer".to_string())
            }
            Some(SyncMark::Errors) => {
                lines.push("sync: errors in the last round (see 'sync status')".to_string())
            }
            // Files arriving (their own lines say so), or a person turned sync off or on
            // (the command said so).
            _ => {}
        }
    } else if let Some(addr) = peer {
        match (before.prompt.reach, now.prompt.reach) {
            (_, Reachability::Unreachable) => {
                lines.push(format!("peer {} does not answer", escape(addr)))
            }
            (Reachability::Unreachable, Reachability::Reachable) => {
                lines.push(format!("peer {} answers again", escape(addr)))
            }
            _ => {}
        }
    }
    lines
}

/// Looks at the state every [`LOOK_EVERY`] from a thread of its own and announces each
/// change on `screen`, until `stop` is dropped; `peer` is the current peer, kept up to
/// date by the prompt's loop.
pub fn watch(
    sync: SyncHandle,
    peer: Arc<Mutex<Option<Arc<Peer>>>>,
    screen: Arc<Screen>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let current = move || peer.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let spawned = std::thread::Builder::new()
        .name("boxsync-prompt-state".into())
        .spawn(move || {
            let mut before = Watched::now(current().as_deref(), &sync);
            let mut was_in_sync = false;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop.recv_timeout(LOOK_EVERY)
            {
                let peer = current();
                let now = Watched::now(peer.as_deref(), &sync);
                let addr = peer.as_ref().map(|p| p.addr());
                for line in lines(&before, &now, addr, was_in_sync) {
                    screen.announce(&line);
                }
                was_in_sync |= now.prompt.sync == Some(SyncMark::InSync);
                before = now;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the prompt's watcher");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(reach: Reachability, sync: SyncMark, stopped: Option<&str>) -> Watched {
        Watched {
            prompt: PromptState {
                reach,
                sync: Some(sync),
            },
            stopped: vec![("h:1".to_string(), stopped.map(str::to_string))],
        }
    }

    /// A peer that goes away is said with its reason, once; its return too; nothing
    /// changed, nothing said.
    #[test]
    fn a_stopped_round_is_said_once_with_its_reason() {
        let fine = state(Reachability::Reachable, SyncMark::InSync, None);
        let away = state(
            Reachability::Unreachable,
            SyncMark::Errors,
            Some("peer h:1 is unreachable: connection refused"),
        );
        assert_eq!(
            lines(&fine, &away, Some("h:1"), true),
            ["sync [h:1] stopped: peer h:1 is unreachable: connection refused"]
        );
        assert!(lines(&away, &away, Some("h:1"), true).is_empty());
        assert_eq!(
            lines(&away, &fine, Some("h:1"), true),
            ["sync [h:1] going again"]
        );
    }

    /// The mass-delete guard's pause is a new reason even while errors were shown.
    #[test]
    fn a_new_reason_is_said_even_under_the_same_marks() {
        let away = state(
            Reachability::Unreachable,
            SyncMark::Errors,
            Some("unreachable"),
        );
        let paused = state(
            Reachability::Reachable,
            SyncMark::Errors,
            Some("this box's shared folder lost 20 of the 20 paths in sync: sync paused"),
        );
        assert_eq!(
            lines(&away, &paused, None, true),
            [
                "sync [h:1] stopped: this box's shared folder lost 20 of the 20 paths in sync: sync paused"
            ]
        );
    }

    /// Marks that change alone are said in a few words; a peer's name is escaped.
    #[test]
    fn marks_alone() {
        let pending = state(Reachability::Unknown, SyncMark::Pending, None);
        let synced = state(Reachability::Reachable, SyncMark::InSync, None);
        assert_eq!(
            lines(&pending, &synced, Some("h:1"), false),
            ["sync: in sync with every peer"]
        );
        // Files arriving and done again: their own lines say so.
        assert!(lines(&synced, &pending, Some("h:1"), true).is_empty());
        assert!(lines(&pending, &synced, Some("h:1"), true).is_empty());
        let mut lost = synced.clone();
        lost.prompt.reach = Reachability::Unreachable;
        assert_eq!(
            lines(&synced, &lost, Some("h\x1b:1"), true),
            ["peer h\\x1b:1 does not answer"]
        );
        assert_eq!(
            lines(&lost, &synced, Some("h:1"), true),
            ["peer h:1 answers again"]
        );
    }
}
