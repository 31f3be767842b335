//! What a box keeps to itself: the `.boxsyncignore` file at the folder root, plus the
//! built-in ignores (the ignore file itself, editors' swap and lock files, temporary
//! files). An ignored path is never listed, hashed, served or synced: a person who writes
//! `*.key` there expects those files never to leave the box.
//!
//! The file holds globs, one per line, `#` starting a comment:
//! - a pattern without `/` matches a name at any depth (`*.log`); one with `/` matches a
//!   path from the folder root (`docs/*.tmp`, `/build`); a trailing `/` is allowed and
//!   changes nothing;
//! - `!` before a pattern takes back what an earlier line ignored (`*.log` then
//!   `!keep.log`); the last line that matches decides;
//! - `(?i)` before a pattern (after any `!`) makes it ignore case (`(?i)*.jpg`);
//! - **the folder rule**: an ignored folder is ignored with everything in it, and a `!`
//!   cannot take back a path inside it (as in git: `build/` then `!build/keep` keeps
//!   nothing).
//!
//! The built-in ignores always hold: no `!` takes them back.

use std::fs;
use std::path::Path;
use std::sync::Mutex;

use glob::{MatchOptions, Pattern};

use super::path::RelPath;

/// The ignore file's name at the folder root.
pub const IGNORE_FILE: &str = ".boxsyncignore";

/// Most rules taken from a peer (its own ignore file's lines).
pub const MAX_PEER_RULES: usize = 10_000;

/// Most bytes of rules told to a peer (they travel with the last batch of a listing,
/// within one frame); an ignore file longer than that is applied here whole, but a peer
/// hears only its first lines.
pub const MAX_TOLD_BYTES: usize = 256 * 1024;

/// Longest rule line taken from a peer, in bytes.
pub const MAX_RULE_LEN: usize = 1024;

/// Always ignored: the ignore file itself (each box has its own), editors' swap and lock
/// files, office lock files and temporary files.
const BUILT_IN: &[&str] = &[
    IGNORE_FILE,
    ".*.swp",
    ".*.swx",
    ".#*",
    "~$*",
    "*.boxsync-tmp",
];

/// Prefix of a rule that takes back what earlier rules ignored.
const NEGATION: char = '!';

/// Prefix of a pattern that ignores case.
const IGNORE_CASE: &str = "(?i)";

/// One compiled line.
struct Rule {
    /// The glob.
    pattern: Pattern,
    /// Whether it matches names (no `/`) rather than whole paths.
    by_name: bool,
    /// Whether it takes back (`!`) rather than ignores.
    negated: bool,
    /// Whether it ignores case (`(?i)`).
    any_case: bool,
}

impl Rule {
    /// Compiles one line; `None` for a blank line or a comment, `Err` for a bad glob.
    fn parse(line: &str) -> Option<Result<Rule, ()>> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (negated, rest) = match line.strip_prefix(NEGATION) {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (any_case, rest) = match rest.strip_prefix(IGNORE_CASE) {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let rest = rest.trim_end_matches('/');
        let anchored = rest.trim_start_matches('/');
        if anchored.is_empty() {
            return Some(Err(()));
        }
        Some(
            Pattern::new(anchored)
                .map(|pattern| Rule {
                    pattern,
                    by_name: !rest.contains('/'),
                    negated,
                    any_case,
                })
                .map_err(|_| ()),
        )
    }

    /// Whether the rule matches the path `prefix`, whose last component is `name`.
    fn matches(&self, prefix: &str, name: &str) -> bool {
        let options = MatchOptions {
            case_sensitive: !self.any_case,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.pattern
            .matches_with(if self.by_name { name } else { prefix }, options)
    }
}

/// A compiled set of ignore rules: the built-in ones and a folder's (or a peer's) own.
pub struct Ignore {
    /// The built-in rules: never taken back.
    built_in: Vec<Rule>,
    /// The folder's own rules, in file order (the last that matches decides).
    rules: Vec<Rule>,
    /// The folder's own rules as written (valid ones only): what a peer is told, so that
    /// it leaves these paths alone on its side too.
    lines: Vec<String>,
    /// Lines of the ignore file that are not valid globs, for the status report.
    pub invalid: Vec<String>,
    /// The last folder found not ignored (nor any folder it is in): paths come in name
    /// order, so most share it, and only their own name is left to match. Behind a std
    /// mutex, never held across an await.
    clean_folder: Mutex<String>,
}

impl std::fmt::Debug for Ignore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ignore")
            .field("lines", &self.lines)
            .field("invalid", &self.invalid)
            .finish_non_exhaustive()
    }
}

impl Ignore {
    /// The built-in rules plus those in `<root>/.boxsyncignore`, if it exists.
    pub fn load(root: &Path) -> Ignore {
        let text = fs::read_to_string(root.join(IGNORE_FILE)).unwrap_or_default();
        Ignore::from_lines(text.lines())
    }

    /// The built-in rules only: what a box with no ignore file, or a peer that sent no
    /// rules, ignores.
    pub fn built_in() -> Ignore {
        Ignore::from_lines(std::iter::empty())
    }

    /// The rules a peer sent (its own ignore file's lines), bounded: at most
    /// [`MAX_PEER_RULES`] lines of at most [`MAX_RULE_LEN`] bytes are taken, the rest
    /// counted as invalid.
    pub fn from_peer(lines: &[String]) -> Ignore {
        let (taken, dropped) = lines.split_at(lines.len().min(MAX_PEER_RULES));
        let mut ignore = Ignore::from_lines(
            taken
                .iter()
                .map(String::as_str)
                .filter(|line| line.len() <= MAX_RULE_LEN),
        );
        ignore.invalid.extend(
            taken
                .iter()
                .filter(|line| line.len() > MAX_RULE_LEN)
                .chain(dropped)
                .map(|line| crate::text::for_log(line).to_string()),
        );
        ignore
    }

    /// Compiles the folder's own `lines` after the built-in rules.
    pub fn from_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Ignore {
        let built_in = BUILT_IN
            .iter()
            .filter_map(|line| Rule::parse(line).and_then(Result::ok))
            .collect();
        let mut ignore = Ignore {
            built_in,
            rules: Vec::new(),
            lines: Vec::new(),
            invalid: Vec::new(),
            clean_folder: Mutex::new(String::new()),
        };
        for line in lines {
            match Rule::parse(line) {
                None => {}
                Some(Ok(rule)) => {
                    ignore.rules.push(rule);
                    ignore.lines.push(line.trim().to_string());
                }
                Some(Err(())) => ignore.invalid.push(line.trim().to_string()),
            }
        }
        ignore
    }

    /// The folder's own rules as written (valid lines, in order).
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The rules to tell a peer: the valid lines, in order, as many as fit in
    /// [`MAX_TOLD_BYTES`] and the peer's own bounds.
    pub fn told(&self) -> Vec<String> {
        let mut total = 0;
        self.lines
            .iter()
            .filter(|line| line.len() <= MAX_RULE_LEN)
            .take(MAX_PEER_RULES)
            .take_while(|line| {
                total += line.len() + 8;
                total <= MAX_TOLD_BYTES
            })
            .cloned()
            .collect()
    }

    /// Whether `prefix` (a path whose last component is `name`) is ignored by itself,
    /// leaving aside the folders it is in: a built-in rule matches, or the last of the
    /// folder's rules that matches is not a `!`.
    fn ignored_alone(&self, prefix: &str, name: &str) -> bool {
        self.built_in.iter().any(|rule| rule.matches(prefix, name))
            || self
                .rules
                .iter()
                .rev()
                .find(|rule| rule.matches(prefix, name))
                .is_some_and(|rule| !rule.negated)
    }

    /// Whether the box leaves `path` alone: it, or a folder it is in, is ignored.
    pub fn ignores(&self, path: &RelPath) -> bool {
        // Each prefix of the path (`a`, `a/b`, `a/b/c`) with its last component, without
        // allocating: this runs for every path in every listing.
        let text = path.as_str();
        let folder_end = text.rfind('/');
        let mut clean = self.clean_folder.lock().unwrap_or_else(|e| e.into_inner());
        // Where checking starts: past the folder already known clean, if it is this one.
        let mut start = match folder_end {
            Some(end) if !clean.is_empty() && clean.as_str() == &text[..end] => end + 1,
            _ => 0,
        };
        let skipped = start;
        let ends = text[start..]
            .match_indices('/')
            .map(move |(i, _)| skipped + i)
            .chain(std::iter::once(text.len()));
        for end in ends {
            let (prefix, name) = (&text[..end], &text[start..end]);
            start = end + 1;
            if self.ignored_alone(prefix, name) {
                return true;
            }
        }
        if let Some(end) = folder_end
            && clean.as_str() != &text[..end]
        {
            clean.clear();
            clean.push_str(&text[..end]);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignores(lines: &[&str], path: &str) -> bool {
        Ignore::from_lines(lines.iter().copied()).ignores(&RelPath::parse(path).unwrap())
    }

    /// Name patterns match at any depth, path patterns from the root, and a matching
    /// folder takes its contents with it.
    #[test]
    fn patterns() {
        assert!(ignores(&["*.log"], "a/b/c.log"));
        assert!(!ignores(&["*.log"], "a/b/c.txt"));
        assert!(ignores(&["build/"], "build/x/y.o"));
        assert!(ignores(&["/docs/*.tmp"], "docs/a.tmp"));
        assert!(!ignores(&["docs/*.tmp"], "x/docs/a.tmp"));
        assert!(ignores(
            &["# comment", "node_modules"],
            "web/node_modules/x.js"
        ));
        assert!(ignores(&[], ".boxsyncignore"));
        assert!(ignores(&[], "notes/.todo.md.swp"));
        assert!(!ignores(&[], "notes/todo.md"));
    }

    /// `!` takes back what an earlier line ignored (the last matching line decides), but
    /// not a path inside an ignored folder, and never a built-in ignore.
    #[test]
    fn negation() {
        let lines = ["*.log", "!keep.log"];
        assert!(ignores(&lines, "a/b.log"));
        assert!(!ignores(&lines, "a/keep.log"));
        assert!(ignores(&["!keep.log", "*.log"], "a/keep.log"));
        assert!(ignores(&["build/", "!build/keep.txt"], "build/keep.txt"));
        assert!(ignores(&["build", "!keep.txt"], "build/keep.txt"));
        assert!(ignores(&["!.boxsyncignore"], ".boxsyncignore"));
        assert!(ignores(&["!*.boxsync-tmp"], "a/x.boxsync-tmp"));
    }

    /// `(?i)` makes a pattern ignore case; without it, case counts.
    #[test]
    fn any_case() {
        assert!(ignores(&["(?i)*.jpg"], "photos/A.JPG"));
        assert!(!ignores(&["*.jpg"], "photos/A.JPG"));
        assert!(!ignores(&["*.jpg", "!(?i)a.JPG"], "photos/a.jpg"));
        assert!(ignores(&["(?i)/Secret"], "secret/x"));
    }

    /// Bad globs and empty patterns are reported, not applied; the lines kept to tell a
    /// peer are the valid ones as written.
    #[test]
    fn invalid_lines_are_reported() {
        let ignore = Ignore::from_lines(["*.log", "a[", "/", "", "# c", "!x"].into_iter());
        assert_eq!(ignore.invalid, vec!["a[".to_string(), "/".to_string()]);
        assert_eq!(ignore.lines(), ["*.log".to_string(), "!x".to_string()]);
    }

    /// A peer's rules are bounded in number and length.
    #[test]
    fn a_peers_rules_are_bounded() {
        let mut lines = vec!["x".repeat(MAX_RULE_LEN + 1), "*.key".to_string()];
        lines.extend(std::iter::repeat_n("y".to_string(), MAX_PEER_RULES));
        let ignore = Ignore::from_peer(&lines);
        assert_eq!(ignore.lines().len(), MAX_PEER_RULES - 1);
        assert_eq!(ignore.invalid.len(), 3);
        assert!(ignore.ignores(&RelPath::parse("a/b.key").unwrap()));
    }

    /// Remembering the last clean folder changes no answer: a path in it still has its own
    /// name checked, a path in another folder has every folder checked, and a sibling
    /// folder whose name starts the same is not taken for it.
    #[test]
    fn answers_do_not_depend_on_order() {
        let ignore = Ignore::from_lines(["*.log", "/a/b/skip", "ab"].into_iter());
        let check = |path: &str| ignore.ignores(&RelPath::parse(path).unwrap());
        assert!(!check("a/b/c.txt"));
        assert!(check("a/b/c.log"));
        assert!(!check("a/b/d.txt"));
        assert!(check("a/b/skip/x.txt"));
        assert!(!check("a/b/c.txt"));
        assert!(check("ab/c.txt"));
        assert!(!check("a/bc/c.txt"));
        assert!(check("a/bc/c.log"));
        assert!(check("a/b/skip"));
        assert!(!check("top.txt"));
        assert!(check("top.log"));
    }
}
