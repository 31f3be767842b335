//! What rustyline asks of the shell while a line is typed: completions ([`super::complete`]
//! with the peer's cached names), a greyed suggestion from history, and colours for the
//! command word and the prompt.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::{Hinter, HistoryHinter};
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use super::command::{ALIASES, COMMANDS, canonical};
use super::complete::{self, Sources};
use super::jobs::Jobs;
use super::names::RemoteNames;
use crate::peer::Peer;

/// Longest Tab waits for the peer's names when none are cached yet.
const FIRST_NAMES_WAIT: Duration = Duration::from_secs(2);

/// The shell's rustyline helper. The loop updates the peer fields before each line.
pub struct ShellHelper {
    /// The current peer, whose names complete.
    pub peer: Option<Arc<Peer>>,
    /// Every known peer address, for `peer <TAB>`.
    pub peers: Vec<String>,
    /// The session's jobs, for `kill <TAB>`.
    jobs: Jobs,
    /// The peer's names, cached.
    names: RemoteNames,
    /// Suggestions from history.
    hinter: HistoryHinter,
    /// Whether to colour (hints are shown only with colours: an uncoloured hint would look
    /// like typed text).
    colour: bool,
}

impl ShellHelper {
    /// A helper for a session with `jobs`, completing names from `names`.
    pub fn new(jobs: Jobs, names: RemoteNames, colour: bool) -> ShellHelper {
        ShellHelper {
            peer: None,
            peers: Vec::new(),
            jobs,
            names,
            hinter: HistoryHinter::new(),
            colour,
        }
    }
}

/// The sources of one completion.
struct HelperSources<'a> {
    /// The helper.
    helper: &'a ShellHelper,
}

impl Sources for HelperSources<'_> {
    fn remote_files(&self) -> Vec<String> {
        match &self.helper.peer {
            Some(peer) => self
                .helper
                .names
                .files(peer, FIRST_NAMES_WAIT)
                .as_ref()
                .clone(),
            None => Vec::new(),
        }
    }

    fn peers(&self) -> Vec<String> {
        self.helper.peers.clone()
    }

    fn jobs(&self) -> Vec<u32> {
        self.helper.jobs.ids()
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let completion = complete::complete(line, pos, &HelperSources { helper: self });
        Ok((
            completion.start,
            completion
                .candidates
                .into_iter()
                .map(|c| Pair {
                    display: c.display,
                    replacement: c.replacement,
                })
                .collect(),
        ))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;

    fn hint(&self, line: &str, pos: usize, ctx: &Context<'_>) -> Option<String> {
        if !self.colour {
            return None;
        }
        self.hinter.hint(line, pos, ctx)
    }
}

/// How a command word looks as it is typed.
#[derive(Debug, PartialEq, Eq)]
enum WordKind {
    /// A command: shown in bold green.
    Known,
    /// The start of one: left alone.
    Partial,
    /// Nothing: shown in red.
    Unknown,
}

fn word_kind(word: &str) -> WordKind {
    let canonical = canonical(word);
    let lower = word.to_ascii_lowercase();
    let names = COMMANDS
        .iter()
        .map(|(name, _)| *name)
        .chain(ALIASES.iter().copied());
    let mut partial = false;
    for name in names {
        if name == canonical {
            return WordKind::Known;
        }
        partial |= name.to_ascii_lowercase().starts_with(&lower);
    }
    if partial || word.starts_with('#') {
        WordKind::Partial
    } else {
        WordKind::Unknown
    }
}

impl Highlighter for ShellHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if !self.colour {
            return Cow::Borrowed(line);
        }
        let start = line.len() - line.trim_start().len();
        let end = line[start..]
            .find(char::is_whitespace)
            .map_or(line.len(), |i| start + i);
        let style = match word_kind(&line[start..end]) {
            _ if start == end => return Cow::Borrowed(line),
            WordKind::Known => "1;32",
            WordKind::Unknown => "31",
            WordKind::Partial => return Cow::Borrowed(line),
        };
        Cow::Owned(format!(
            "{}\x1b[{style}m{}\x1b[0m{}",
            &line[..start],
            &line[start..end],
            &line[end..]
        ))
    }

    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.colour {
            Cow::Owned(format!("\x1b[90m{hint}\x1b[0m"))
        } else {
            Cow::Borrowed(hint)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, kind: CmdKind) -> bool {
        // The command word's colour can change with any character typed.
        self.colour && kind != CmdKind::MoveCursor
    }
}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands and aliases are known, prefixes are partial, the rest unknown.
    #[test]
    fn command_word_kinds() {
        assert_eq!(word_kind("index"), WordKind::Known);
        assert_eq!(word_kind("IndexGet"), WordKind::Known);
        assert_eq!(word_kind("EXIT"), WordKind::Known);
        assert_eq!(word_kind("ind"), WordKind::Partial);
        assert_eq!(word_kind("fileh"), WordKind::Partial);
        assert_eq!(word_kind("frobnicate"), WordKind::Unknown);
    }
}
