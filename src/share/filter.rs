//! Index filters: which entries `index` returns. The same validation runs in the shell
//! (so bad input is never sent) and in the server (so a hostile peer gets a clear refusal).

use glob::{MatchOptions, Pattern};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::folder::Entry;
use crate::time::Timestamp;

/// Longest accepted regular expression or glob, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Largest compiled regular expression, in bytes (the regex crate's own measure).
const REGEX_SIZE_LIMIT: usize = 1024 * 1024;

/// Which entries of an index are wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "filter", rename_all = "snake_case")]
pub enum IndexFilter {
    /// Every entry.
    Longlist,
    /// Entries modified between `start` and `end`, both inclusive.
    Shortlist {
        /// Earliest modification time.
        start: Timestamp,
        /// Latest modification time.
        end: Timestamp,
    },
    /// Entries whose relative path matches the regular expression (search semantics).
    Regex {
        /// The expression, Rust regex syntax.
        pattern: String,
    },
    /// Entries whose relative path matches the glob; a pattern without `/` matches the
    /// last component at any depth (like `.gitignore`).
    Glob {
        /// The glob.
        pattern: String,
    },
}

/// Why a filter is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    /// Start after end.
    #[error("start {start} is after end {end}")]
    StartAfterEnd {
        /// The start given.
        start: String,
        /// The end given.
        end: String,
    },
    /// Pattern longer than [`MAX_PATTERN_LEN`].
    #[error("pattern too long: {len} bytes, at most {MAX_PATTERN_LEN}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not a valid regular expression (or too large once compiled).
    #[error("invalid regex: {0}")]
    Regex(String),
    /// Not a valid glob.
    #[error("invalid glob: {0}")]
    Glob(String),
}

/// A validated filter, ready to test entries.
pub enum Matcher {
    /// Everything passes.
    All,
    /// A time window.
    Window(Timestamp, Timestamp),
    /// A compiled regular expression.
    Regex(Regex),
    /// A compiled glob, and whether it applies to the last component only.
    Glob(Pattern, bool),
}

impl IndexFilter {
    /// Checks the filter and compiles it.
    pub fn compile(&self) -> Result<Matcher, FilterError> {
        match self {
            IndexFilter::Longlist => Ok(Matcher::All),
            IndexFilter::Shortlist { start, end } => {
                if start > end {
                    return Err(FilterError::StartAfterEnd {
                        start: start.to_rfc3339(),
                        end: end.to_rfc3339(),
                    });
                }
                Ok(Matcher::Window(*start, *end))
            }
            IndexFilter::Regex { pattern } => {
                check_len(pattern)?;
                RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map(Matcher::Regex)
                    .map_err(|e| FilterError::Regex(first_line(&e.to_string())))
            }
            IndexFilter::Glob { pattern } => {
                check_len(pattern)?;
                Pattern::new(pattern)
                    .map(|p| Matcher::Glob(p, !pattern.contains('/')))
                    .map_err(|e| FilterError::Glob(e.to_string()))
            }
        }
    }

    /// A short human description, for the history log.
    pub fn describe(&self) -> String {
        match self {
            IndexFilter::Longlist => "longlist".to_string(),
            IndexFilter::Shortlist { start, end } => format!("shortlist {start} {end}"),
            IndexFilter::Regex { pattern } => format!("regex {pattern}"),
            IndexFilter::Glob { pattern } => format!("glob {pattern}"),
        }
    }
}

impl Matcher {
    /// Whether `entry` passes.
    pub fn matches(&self, entry: &Entry) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Window(start, end) => entry.mtime >= *start && entry.mtime <= *end,
            Matcher::Regex(re) => re.is_match(entry.name.as_str()),
            Matcher::Glob(pattern, last_component_only) => {
                let options = MatchOptions {
                    case_sensitive: true,
                    require_literal_separator: true,
                    require_literal_leading_dot: false,
                };
                let subject = if *last_component_only {
                    entry.name.file_name()
                } else {
                    entry.name.as_str()
                };
                pattern.matches_with(subject, options)
            }
        }
    }
}

fn check_len(pattern: &str) -> Result<(), FilterError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(FilterError::TooLong { len: pattern.len() });
    }
    Ok(())
}

/// Regex errors span several lines with a caret diagram; keep the last, telling line.
fn first_line(message: &str) -> String {
    message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::RelPath;

    fn entry(name: &str) -> Entry {
        Entry {
            name: RelPath::parse(name).unwrap(),
            size: 0,
            mtime: Timestamp::now(),
            file_type: "text/plain".into(),
            mode: 0o644,
        }
    }

    /// A slash-free glob matches names at any depth; one with a slash matches whole paths.
    #[test]
    fn glob_semantics() {
        let m = IndexFilter::Glob {
            pattern: "*.mp3".into(),
        }
        .compile()
        .unwrap();
        assert!(m.matches(&entry("a.mp3")));
        assert!(m.matches(&entry("music/live/a.mp3")));
        assert!(!m.matches(&entry("a.mp4")));
        let m = IndexFilter::Glob {
            pattern: "docs/**/*.md".into(),
        }
        .compile()
        .unwrap();
        assert!(m.matches(&entry("docs/a.md")));
        assert!(m.matches(&entry("docs/x/y/a.md")));
        assert!(!m.matches(&entry("other/docs/a.md")));
        let m = IndexFilter::Glob {
            pattern: "docs/*.md".into(),
        }
        .compile()
        .unwrap();
        assert!(!m.matches(&entry("docs/x/a.md")));
    }

    /// Regexes search (unanchored) in the relative path.
    #[test]
    fn regex_searches() {
        let m = IndexFilter::Regex {
            pattern: r"\.txt$".into(),
        }
        .compile()
        .unwrap();
        assert!(m.matches(&entry("notes/today.txt")));
        assert!(!m.matches(&entry("today.txt.bak")));
    }

    /// Bad and oversized patterns are refused with a one-line reason.
    #[test]
    fn refuses_bad_patterns() {
        let err = IndexFilter::Regex {
            pattern: "(".into(),
        }
        .compile()
        .err()
        .unwrap();
        assert!(!err.to_string().contains('\n'), "{err}");
        let huge = IndexFilter::Regex {
            pattern: "a{1000}{1000}".into(),
        }
        .compile();
        assert!(matches!(huge, Err(FilterError::Regex(_))));
        let long = IndexFilter::Glob {
            pattern: "a".repeat(2000),
        }
        .compile();
        assert!(matches!(long, Err(FilterError::TooLong { .. })));
        assert!(
            IndexFilter::Glob {
                pattern: "[".into()
            }
            .compile()
            .is_err()
        );
    }
}
