//! What sync leaves alone: the box's own state, temporary files, and the patterns of the
//! `.boxsyncignore` file at the folder root (globs, one per line, `#` for comments; a
//! pattern without `/` matches a name at any depth, as in `.gitignore`). A directory that
//! matches is ignored with everything in it.

use std::fs;
use std::path::Path;

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
        let ends = text
            .match_indices('/')
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()));
        let mut start = 0;
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
}
