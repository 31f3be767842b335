//! What sync leaves alone: the box's own state, temporary files, and the patterns of the
//! `.boxsyncignore` file at the folder root (globs, one per line, `#` for comments; a
//! pattern without `/` matches a name at any depth, as in `.gitignore`). A directory that
//! matches is ignored with everything in it.

use std::fs;
use std::path::Path;
use std::sync::Mutex;

use glob::{MatchOptions, Pattern};

use crate::share::RelPath;

/// The ignore file's name at the folder root.
pub const IGNORE_FILE: &str = ".boxsyncignore";

/// Always ignored: the ignore file itself (each box has its own), editors' swap and lock
/// files, and office lock files.
const BUILT_IN: &[&str] = &[
    IGNORE_FILE,
    ".*.swp",
    ".*.swx",
    ".#*",
    "~$*",
    "*.boxsync-tmp",
];

/// A compiled set of ignore patterns.
pub struct Ignore {
    /// Each pattern, and whether it matches names (no `/`) rather than whole paths.
    patterns: Vec<(Pattern, bool)>,
    /// Lines of the ignore file that are not valid globs, for the status report.
    pub invalid: Vec<String>,
    /// The last folder found not ignored (nor any folder it is in): paths come in name
    /// order, so most share it, and only their own name is left to match. Behind a std
    /// mutex, never held across an await.
    clean_folder: Mutex<String>,
}

impl Ignore {
    /// The built-in patterns plus those in `<root>/.boxsyncignore`, if it exists.
    pub fn load(root: &Path) -> Ignore {
        let text = fs::read_to_string(root.join(IGNORE_FILE)).unwrap_or_default();
        Ignore::from_lines(BUILT_IN.iter().copied().chain(text.lines()))
    }

    fn from_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Ignore {
        let mut ignore = Ignore {
            patterns: Vec::new(),
            invalid: Vec::new(),
            clean_folder: Mutex::new(String::new()),
        };
        for line in lines {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.trim_end_matches('/');
            let anchored = line.trim_start_matches('/');
            match Pattern::new(anchored) {
                Ok(pattern) => ignore.patterns.push((pattern, !line.contains('/'))),
                Err(_) => ignore.invalid.push(line.to_string()),
            }
        }
        ignore
    }

    /// Whether sync leaves `path` alone (it, or a folder it is in, matches).
    pub fn ignores(&self, path: &RelPath) -> bool {
        let options = MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        // Each prefix of the path (`a`, `a/b`, `a/b/c`) with its last component, without
        // allocating: this runs for every path in every round.
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
            let hit = self.patterns.iter().any(|(pattern, by_name)| {
                pattern.matches_with(if *by_name { name } else { prefix }, options)
            });
            if hit {
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
        Ignore::from_lines(BUILT_IN.iter().copied().chain(lines.iter().copied()))
            .ignores(&RelPath::parse(path).unwrap())
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

    /// Remembering the last clean folder changes no answer: a path in it still has its own
    /// name checked, a path in another folder has every folder checked, and a sibling
    /// folder whose name starts the same is not taken for it.
    #[test]
    fn answers_do_not_depend_on_order() {
        let ignore =
            Ignore::from_lines(BUILT_IN.iter().copied().chain(["*.log", "/a/b/skip", "ab"]));
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
