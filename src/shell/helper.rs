//! What rustyline asks of the shell while a line is typed: completions ([`super::complete`]
//! with the peer's cached names), a greyed suggestion from history (never a line that
//! failed when last run), and colours for the command word and the prompt.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::SearchDirection;
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
    /// The current remote folder (`cd`), which remote names complete relative to.
    pub folder: Option<String>,
    /// The session's jobs, for `kill <TAB>`.
    jobs: Jobs,
    /// The peer's names, cached.
    names: RemoteNames,
    /// The lines that failed (or were not understood) when last run this session, which
    /// a suggestion from history never offers again.
    failed: HashSet<String>,
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
            folder: None,
            jobs,
            names,
            failed: HashSet::new(),
            colour,
        }
    }
}

impl ShellHelper {
    /// Notes how `line` went when it ran: a line that failed is not suggested again until
    /// it has run well.
    pub fn note_result(&mut self, line: &str, succeeded: bool) {
        if succeeded {
            self.failed.remove(line);
        } else {
            self.failed.insert(line.to_string());
        }
    }
}

/// The rest of the newest line of `history` (newest first) that starts with `line` and is
/// neither `line` itself nor one of `failed`.
fn suggestion<'a>(
    history: impl Iterator<Item = Cow<'a, str>>,
    line: &str,
    failed: &HashSet<String>,
) -> Option<String> {
    if line.is_empty() {
        return None;
    }
    history
        .filter(|entry| entry.starts_with(line) && entry.len() > line.len())
        .find(|entry| !failed.contains(entry.as_ref()))
        .map(|entry| entry[line.len()..].to_string())
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

    fn remote_folder(&self) -> Option<String> {
        self.helper.folder.clone()
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
        if !self.colour || pos < line.len() {
            return None;
        }
        let history = ctx.history();
        let newest_first = (0..history.len()).rev().filter_map(|i| {
            history
                .get(i, SearchDirection::Reverse)
                .ok()
                .flatten()
                .map(|found| found.entry)
        });
        suggestion(newest_first, line, &self.failed)
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

    /// A suggestion is the newest matching line that did not fail when last run.
    #[test]
    fn suggestions_skip_failed_lines() {
        let history = [
            "index longlist",
            "download tcp missing.txt",
            "download tcp a.txt",
        ];
        let newest_first = || history.iter().rev().map(|s| Cow::Borrowed(*s));
        let mut failed = HashSet::new();
        assert_eq!(
            suggestion(newest_first(), "down", &failed).as_deref(),
            Some("load tcp a.txt")
        );
        failed.insert("download tcp a.txt".to_string());
        assert_eq!(
            suggestion(newest_first(), "down", &failed).as_deref(),
            Some("load tcp missing.txt")
        );
        failed.insert("download tcp missing.txt".to_string());
        assert_eq!(suggestion(newest_first(), "down", &failed), None);
        assert_eq!(suggestion(newest_first(), "index longlist", &failed), None);
        assert_eq!(suggestion(newest_first(), "", &failed), None);
    }
}
