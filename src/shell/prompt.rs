//! The prompt: which peer commands go to, whether it answered last time (✓ or ✗), and the
//! state of auto-sync when it runs: `boxsync [127.0.0.1:7002 ✓ sync ✓]> `.

use std::sync::Arc;

use crate::peer::{Peer, Reachability};
use crate::sync::{SyncHandle, SyncStatus};

/// Auto-sync's state in a word: `✓` (every peer synced), `!` (errors, see `sync status`),
/// `…` (not synced yet), `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMark {
    /// Every peer is in sync.
    InSync,
    /// A peer's last round had errors.
    Errors,
    /// Not every peer is in sync yet (a round to come, a peer away).
    Pending,
    /// Sync is off.
    Off,
}

impl SyncMark {
    /// Every mark, for the prompts drawn ahead of time.
    const ALL: [SyncMark; 4] = [
        SyncMark::InSync,
        SyncMark::Errors,
        SyncMark::Pending,
        SyncMark::Off,
    ];

    /// Sync's mark as it stands now.
    pub fn of(sync: &SyncHandle) -> SyncMark {
        SyncMark::of_status(&sync.status())
    }

    /// Sync's mark for `status`.
    pub fn of_status(status: &SyncStatus) -> SyncMark {
        if !status.enabled {
            SyncMark::Off
        } else if status.peers.iter().any(|p| !p.errors.is_empty()) {
            SyncMark::Errors
        } else if status.healthy() {
            SyncMark::InSync
        } else {
            SyncMark::Pending
        }
    }

    /// As the prompt shows it: `sync ✓`.
    pub fn label(self) -> &'static str {
        match self {
            SyncMark::InSync => "sync ✓",
            SyncMark::Errors => "sync !",
            SyncMark::Pending => "sync …",
            SyncMark::Off => "sync off",
        }
    }
}

/// Auto-sync's state in a word or two, asked before each line: `sync ✓` (every peer
/// synced), `sync !` (errors, see `sync status`), `sync …` (not synced yet), `sync off`.
pub fn sync_label(sync: &SyncHandle) -> String {
    SyncMark::of(sync).label().to_string()
}

/// The prompt twice: plain, and with colours (the same width on screen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptText {
    /// Without escape sequences: for rustyline's width computation and plain terminals.
    pub plain: String,
    /// With ANSI colours (equal to `plain` when colours are off).
    pub styled: String,
}

/// The prompt for `peer` (its address, `None` when no peer is set), what the last request
/// showed about it, the sync loop's label, and the current remote folder when `cd` left
/// the root (`/music`).
pub fn prompt(
    peer: Option<&str>,
    reachability: Reachability,
    sync: Option<&str>,
    folder: Option<&str>,
    colour: bool,
) -> PromptText {
    // Each part is (plain text, ANSI style).
    let mut parts: Vec<(String, &str)> = Vec::new();
    match peer {
        Some(addr) => parts.push((crate::text::escape(addr).into_owned(), "36")),
        None => parts.push(("no peer".to_string(), "2")),
    }
    match (peer, reachability) {
        (Some(_), Reachability::Reachable) => parts.push(("✓".to_string(), "32")),
        (Some(_), Reachability::Unreachable) => parts.push(("✗".to_string(), "31")),
        // With sync running the mark changes by itself while a line is typed: a stand-in
        // of the same width lets the prompt be redrawn in place (see [`LivePrompt`]).
        (Some(_), Reachability::Unknown) if sync.is_some() => parts.push(("?".to_string(), "2")),
        _ => {}
    }
    if let (Some(_), Some(folder)) = (peer, folder) {
        parts.push((crate::text::escape(folder).into_owned(), "34"));
    }
    if let Some(label) = sync.filter(|l| !l.is_empty()) {
        parts.push((label.to_string(), "33"));
    }
    let plain = format!(
        "boxsync [{}]> ",
        parts
            .iter()
            .map(|(text, _)| text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let styled = if colour {
        format!(
            "\x1b[1mboxsync\x1b[0m [{}]> ",
            parts
                .iter()
                .map(|(text, style)| format!("\x1b[{style}m{text}\x1b[0m"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    } else {
        plain.clone()
    };
    PromptText { plain, styled }
}

/// What the prompt shows that can change by itself while a line is being typed: the
/// current peer's mark and sync's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptState {
    /// Whether the current peer answered its last request (sync's requests count).
    pub reach: Reachability,
    /// Sync's mark, when sync runs.
    pub sync: Option<SyncMark>,
}

/// The prompt rustyline draws, which follows the state as it changes: every redraw
/// (a key, a line printed above the prompt) shows the marks as they are then. rustyline
/// measures the prompt once per line, so only states whose prompt has the width of the
/// one the line began with are drawn in place; any other shows at the next line.
pub struct LivePrompt {
    /// The state the line began with, and its prompt.
    first: (PromptState, PromptText),
    /// The other states' prompts of the same width, drawn ahead of time.
    others: Vec<(PromptState, PromptText)>,
    /// The current peer, whose reachability the mark shows.
    peer: Option<Arc<Peer>>,
    /// Sync, whose mark the prompt shows.
    sync: Option<SyncHandle>,
}

impl LivePrompt {
    /// The prompt for `peer` and `sync` as they are now, with the current remote `folder`
    /// (`/music`; `None` at the root), ready to follow them.
    pub fn new(
        peer: Option<Arc<Peer>>,
        sync: Option<SyncHandle>,
        folder: Option<String>,
        colour: bool,
    ) -> LivePrompt {
        let addr = peer.as_ref().map(|p| p.addr().to_string());
        let draw = |state: PromptState| {
            prompt(
                addr.as_deref(),
                state.reach,
                state.sync.map(SyncMark::label),
                folder.as_deref(),
                colour,
            )
        };
        let now = state_of(peer.as_deref(), sync.as_ref());
        let first = (now, draw(now));
        let width = first.1.plain.chars().count();
        let marks: Vec<Option<SyncMark>> = match sync {
            Some(_) => SyncMark::ALL.into_iter().map(Some).collect(),
            None => vec![None],
        };
        let mut others = Vec::new();
        for reach in [
            Reachability::Unknown,
            Reachability::Reachable,
            Reachability::Unreachable,
        ] {
            for &mark in &marks {
                let state = PromptState { reach, sync: mark };
                let text = draw(state);
                if state != now && text.plain.chars().count() == width {
                    others.push((state, text));
                }
            }
        }
        LivePrompt {
            first,
            others,
            peer,
            sync,
        }
    }

    /// The state as it is now.
    pub fn state(&self) -> PromptState {
        state_of(self.peer.as_deref(), self.sync.as_ref())
    }

    /// The prompt for the state as it is now, or the first one when that state's prompt
    /// has another width.
    fn shown(&self) -> &PromptText {
        let now = self.state();
        if now == self.first.0 {
            return &self.first.1;
        }
        self.others
            .iter()
            .find(|(state, _)| *state == now)
            .map_or(&self.first.1, |(_, text)| text)
    }
}

impl rustyline::Prompt for LivePrompt {
    fn raw(&self) -> &str {
        &self.shown().plain
    }

    fn styled(&self) -> &str {
        &self.shown().styled
    }
}

/// The state of `peer` and `sync` now.
pub fn state_of(peer: Option<&Peer>, sync: Option<&SyncHandle>) -> PromptState {
    PromptState {
        reach: peer.map_or(Reachability::Unknown, Peer::reachability),
        sync: sync.map(SyncMark::of),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mark follows the last request; the sync label is appended when there is one;
    /// without colours the styled prompt is the plain one.
    #[test]
    fn prompt_parts() {
        let p = |reach, sync| prompt(Some("127.0.0.1:7002"), reach, sync, None, false).plain;
        assert_eq!(p(Reachability::Unknown, None), "boxsync [127.0.0.1:7002]> ");
        assert_eq!(
            p(Reachability::Reachable, None),
            "boxsync [127.0.0.1:7002 ✓]> "
        );
        assert_eq!(
            p(Reachability::Unreachable, None),
            "boxsync [127.0.0.1:7002 ✗]> "
        );
        assert_eq!(
            p(Reachability::Reachable, Some("synced")),
            "boxsync [127.0.0.1:7002 ✓ synced]> "
        );
        assert_eq!(
            prompt(None, Reachability::Reachable, None, None, false).plain,
            "boxsync [no peer]> "
        );
        // With sync, a peer not asked yet has a stand-in of the marks' width.
        assert_eq!(
            p(Reachability::Unknown, Some("sync …")),
            "boxsync [127.0.0.1:7002 ? sync …]> "
        );
        let coloured = prompt(Some("h:1"), Reachability::Reachable, None, None, true);
        assert_eq!(coloured.plain, "boxsync [h:1 ✓]> ");
        assert!(coloured.styled.contains("\x1b[32m✓"));
    }

    /// After `cd`, the current remote folder shows after the mark.
    #[test]
    fn prompt_folder() {
        let p = prompt(
            Some("127.0.0.1:7002"),
            Reachability::Reachable,
            Some("sync ✓"),
            Some("/music"),
            false,
        );
        assert_eq!(p.plain, "boxsync [127.0.0.1:7002 ✓ /music sync ✓]> ");
    }
}
