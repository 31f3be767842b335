//! The prompt: which peer commands go to, whether it answered last time (✓ or ✗), and the
//! state of auto-sync when it runs: `boxsync [127.0.0.1:7002 ✓ sync ✓]> `.

use crate::peer::Reachability;
use crate::sync::SyncHandle;

/// Auto-sync's state in a word or two, asked before each line: `sync ✓` (every peer
/// synced), `sync !` (errors, see `sync status`), `sync …` (not synced yet), `sync off`.
pub fn sync_label(sync: &SyncHandle) -> String {
    let status = sync.status();
    let mark = if !status.enabled {
        "off"
    } else if status.peers.iter().any(|p| !p.errors.is_empty()) {
        "!"
    } else if sync.healthy() {
        "✓"
    } else {
        "…"
    };
    format!("sync {mark}")
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
