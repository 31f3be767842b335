//! The current remote folder (`cd`, `pwd`) and the names typed relative to it: resolved
//! against it, kept inside the peer's shared folder ([`RelPath`]'s checks), and the globs
//! that pick several files at once, matched as sftp matches them (`*` stays within a
//! folder, `**` crosses folders).

use glob::{MatchOptions, Pattern};
use thiserror::Error;

use crate::share::filter::{FilterError, IndexFilter};
use crate::share::{Entry, PathError, RelPath};

/// Why a remote folder or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RemoteError {
    /// `cd ..` above the shared folder's root, or a name that would leave it.
    #[error("'{0}' is outside the peer's shared folder")]
    Outside(String),
    /// The folder (or pattern) named no acceptable path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A bad glob.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// Whether `word` is a pattern (holds `*`, `?` or `[`) rather than a name.
pub fn is_pattern(word: &str) -> bool {
    word.contains(['*', '?', '['])
}

/// The folder `cd ARG` moves to from `current` (`None`: the root). `/` starts from the
/// root, `..` goes up, `.` and empty parts are skipped; going above the root is refused.
pub fn change_folder(current: Option<&RelPath>, arg: &str) -> Result<Option<RelPath>, RemoteError> {
    let mut parts: Vec<&str> = match (arg.starts_with('/'), current) {
        (false, Some(folder)) => folder.components().collect(),
        _ => Vec::new(),
    };
    for part in arg.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(RemoteError::Outside(arg.to_string()));
                }
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(RelPath::parse(&parts.join("/"))?))
}

/// `name` (typed relative to `folder`) as a path from the shared folder's root.
pub fn join(folder: Option<&RelPath>, name: &RelPath) -> Result<RelPath, PathError> {
    match folder {
        None => Ok(name.clone()),
        Some(folder) => RelPath::parse(&format!("{folder}/{name}")),
    }
}

/// `name` shown relative to `folder` when it lies inside it, else from the root with a
/// leading `/` (as sftp names a path outside the current folder).
pub fn relative(folder: Option<&RelPath>, name: &RelPath) -> String {
    match folder {
        None => name.to_string(),
        Some(folder) => match name.as_str().strip_prefix(folder.as_str()) {
            Some(rest) if rest.starts_with('/') => rest[1..].to_string(),
            _ => format!("/{name}"),
        },
    }
}

/// The folder shown by `pwd` and the prompt: `/` for the root, else `/music/live`.
pub fn display_folder(folder: Option<&RelPath>) -> String {
    match folder {
        None => "/".to_string(),
        Some(folder) => format!("/{folder}"),
    }
}

/// Which of the peer's entries a pattern or folder picks, and the index filter that asks
/// the peer for (at least) those, so that only they cross the network when the peer can
/// tell them apart.
#[derive(Debug, Clone)]
pub struct Pick {
    /// What the peer is asked for.
    pub filter: IndexFilter,
    /// The glob every path is matched against, whole, `*` not crossing `/`.
    pattern: Pattern,
    /// A pattern taken as a name instead (`a[1].txt` may name a file), when it is one.
    literal: Option<RelPath>,
}

/// How picks match: case-sensitive, `*` and `?` never match `/`, dot files included.
const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Pick {
    /// The entries matching `pattern`, typed relative to `folder`.
    pub fn glob(folder: Option<&RelPath>, pattern: &str) -> Result<Pick, RemoteError> {
        check_pattern(pattern)?;
        let full = match folder {
            None => pattern.to_string(),
            Some(folder) => format!("{}/{pattern}", Pattern::escape(folder.as_str())),
        };
        let mut pick = Pick::from_full(full)?;
        pick.literal = RelPath::parse(pattern)
            .ok()
            .and_then(|name| join(folder, &name).ok());
        Ok(pick)
    }

    /// The pattern read as a name (from the current folder), for when it picks nothing: a
    /// file may be called `a[1].txt`.
    pub fn literal(&self) -> Option<&RelPath> {
        self.literal.as_ref()
    }

    /// Every entry directly inside `folder` (`None`: the root).
    pub fn children(folder: Option<&RelPath>) -> Pick {
        Pick::glob(folder, "*").unwrap_or_else(|_| Pick::everything())
    }

    /// Every entry under `folder`, at any depth.
    pub fn under(folder: &RelPath) -> Pick {
        Pick::from_full(format!("{}/**", Pattern::escape(folder.as_str())))
            .unwrap_or_else(|_| Pick::everything())
    }

    /// The entry named `name` itself (a file or a folder).
    pub fn exactly(name: &RelPath) -> Pick {
        Pick::from_full(Pattern::escape(name.as_str())).unwrap_or_else(|_| Pick::everything())
    }

    /// Whether `entry` is picked.
    pub fn matches(&self, entry: &Entry) -> bool {
        self.pattern.matches_with(entry.name.as_str(), OPTIONS)
    }

    fn from_full(full: String) -> Result<Pick, RemoteError> {
        let filter = IndexFilter::Glob {
            pattern: full.clone(),
        };
        filter.compile()?;
        let pattern = Pattern::new(&full).map_err(|e| FilterError::Glob(e.to_string()))?;
        Ok(Pick {
            filter,
            pattern,
            literal: None,
        })
    }

    /// Every entry; only reached if an escaped name would not compile, which cannot
    /// happen, and even then the matcher stays exact.
    fn everything() -> Pick {
        Pick {
            filter: IndexFilter::Longlist,
            pattern: Pattern::new("**").unwrap_or_default(),
            literal: None,
        }
    }
}

/// A pattern typed by a person: a valid glob, relative (no leading `/`, no `..`).
pub fn check_pattern(pattern: &str) -> Result<(), RemoteError> {
    if pattern.starts_with('/') {
        return Err(PathError::Absolute(pattern.to_string()).into());
    }
    if pattern.split('/').any(|part| part == "..") {
        return Err(PathError::ParentComponent(pattern.to_string()).into());
    }
    IndexFilter::Glob {
        pattern: pattern.to_string(),
    }
    .compile()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn path(name: &str) -> RelPath {
        RelPath::parse(name).unwrap()
    }

    fn entry(name: &str) -> Entry {
        Entry {
            name: path(name),
            size: 0,
            mtime: Timestamp::now(),
            file_type: "text/plain".into(),
            mode: 0o644,
        }
    }

    /// `cd` goes down, up and to the root, and never above it.
    #[test]
    fn changing_folder() {
        let music = path("music");
        assert_eq!(change_folder(None, "music").unwrap(), Some(music.clone()));
        assert_eq!(
            change_folder(Some(&music), "live/").unwrap(),
            Some(path("music/live"))
        );
        assert_eq!(change_folder(Some(&music), "..").unwrap(), None);
        assert_eq!(change_folder(Some(&music), "/").unwrap(), None);
        assert_eq!(
            change_folder(Some(&music), "/notes").unwrap(),
            Some(path("notes"))
        );
        assert_eq!(
            change_folder(Some(&music), "../notes/./x").unwrap(),
            Some(path("notes/x"))
        );
        assert!(matches!(
            change_folder(None, ".."),
            Err(RemoteError::Outside(_))
        ));
        assert!(matches!(
            change_folder(Some(&music), "../../etc"),
            Err(RemoteError::Outside(_))
        ));
        assert!(change_folder(None, ".boxsync").is_err());
    }

    /// Names join the current folder and show relative to it.
    #[test]
    fn joining_and_showing() {
        let music = path("music");
        assert_eq!(
            join(Some(&music), &path("a.mp3")).unwrap(),
            path("music/a.mp3")
        );
        assert_eq!(join(None, &path("a.mp3")).unwrap(), path("a.mp3"));
        assert_eq!(
            relative(Some(&music), &path("music/live/a.mp3")),
            "live/a.mp3"
        );
        assert_eq!(relative(Some(&music), &path("musicals/a")), "/musicals/a");
        assert_eq!(display_folder(None), "/");
        assert_eq!(display_folder(Some(&music)), "/music");
    }

    /// `*` stays in its folder, `**` crosses folders, the current folder's own glob
    /// characters are literal, and patterns cannot climb out.
    #[test]
    fn picks() {
        let txt = Pick::glob(None, "*.txt").unwrap();
        assert!(txt.matches(&entry("a.txt")));
        assert!(!txt.matches(&entry("docs/a.txt")));
        let deep = Pick::glob(None, "**/*.txt").unwrap();
        assert!(deep.matches(&entry("docs/x/a.txt")));
        let odd = path("odd[1]");
        let inside = Pick::glob(Some(&odd), "*").unwrap();
        assert!(inside.matches(&entry("odd[1]/a")));
        assert!(!inside.matches(&entry("odd1/a")));
        assert!(!inside.matches(&entry("odd[1]/x/a")));
        let under = Pick::under(&path("music"));
        assert!(under.matches(&entry("music/live/a.mp3")));
        assert!(!under.matches(&entry("musicals/a.mp3")));
        assert!(!under.matches(&entry("music")));
        assert!(Pick::children(None).matches(&entry("music")));
        assert!(!Pick::children(None).matches(&entry("music/a")));
        assert!(Pick::exactly(&odd).matches(&entry("odd[1]")));
        assert!(Pick::glob(None, "../*").is_err());
        assert!(Pick::glob(None, "/etc/*").is_err());
        assert!(Pick::glob(None, "[").is_err());
        assert_eq!(
            Pick::glob(Some(&path("music")), "a[1].mp3")
                .unwrap()
                .literal(),
            Some(&path("music/a[1].mp3"))
        );
        assert!(is_pattern("*.txt") && is_pattern("a?") && !is_pattern("music/"));
    }
}
