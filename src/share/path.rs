//! Relative paths inside a shared folder, validated once at the edge.
//!
//! Every path that arrives from the network or the user becomes a [`RelPath`] before it
//! touches the disk. A `RelPath` is relative, normalized (`a//./b` becomes `a/b`), holds no
//! `..`, NUL, backslash or absolute form, stays within length limits and never names the
//! box's own state folder. Code that holds a `RelPath` need not check any of that again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The box's own state folder inside the shared folder; never listed, served or hashed.
pub const STATE_DIR: &str = ".boxsync";

/// How the name of a file being received starts when its folder is on another file system
/// than `.boxsync/tmp/` (a mount point inside the shared folder): it is copied there under
/// such a hidden name, then renamed over its own. Never listed, served or synced; left by a
/// crash, it is removed at the next walk of its folder.
pub const STAGING_PREFIX: &str = ".boxsync-part-";

/// Longest accepted relative path, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// Longest accepted single component, in bytes (Linux's NAME_MAX).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// Nothing left after normalization.
    #[error("empty path")]
    Empty,
    /// Starts with `/`.
    #[error("absolute path '{0}' refused: paths are relative to the shared folder")]
    Absolute(String),
    /// Holds a `..` component.
    #[error("path '{0}' refused: '..' is not allowed")]
    ParentComponent(String),
    /// Holds a NUL byte.
    #[error("path refused: it contains a NUL byte")]
    Nul,
    /// Holds a backslash (a Windows separator that would escape elsewhere).
    #[error("path '{0}' refused: backslashes are not allowed")]
    Backslash(String),
    /// Too long as a whole.
    #[error("path refused: longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// One component too long.
    #[error("path refused: a name is longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong,
    /// Names the box's private state folder.
    #[error("path '{0}' refused: {STATE_DIR}/ is the box's private state")]
    StateDir(String),
    /// Names a file a box is receiving into a folder on another file system (see
    /// [`STAGING_PREFIX`]).
    #[error("path '{0}' refused: names starting with {STAGING_PREFIX} are files being received")]
    Staging(String),
    /// Not valid UTF-8 (only reachable from local file names).
    #[error("path refused: not valid UTF-8")]
    NotUtf8,
}

/// A validated, normalized path relative to the shared folder, with `/` separators.
/// Shared, not copied, when cloned: the same path sits in the snapshot, the hashes and
/// sync's maps of a folder of a million files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Arc<str>);

impl RelPath {
    /// Validates and normalizes `raw`; the only way to build a `RelPath`.
    pub fn parse(raw: &str) -> Result<RelPath, PathError> {
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if raw.contains('\\') {
            return Err(PathError::Backslash(raw.to_string()));
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute(raw.to_string()));
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => continue,
                ".." => return Err(PathError::ParentComponent(raw.to_string())),
                _ if part.len() > MAX_COMPONENT_BYTES => return Err(PathError::ComponentTooLong),
                _ => parts.push(part),
            }
        }
        if parts.is_empty() {
            return Err(PathError::Empty);
        }
        if parts[0] == STATE_DIR {
            return Err(PathError::StateDir(raw.to_string()));
        }
        if parts.iter().any(|part| part.starts_with(STAGING_PREFIX)) {
            return Err(PathError::Staging(raw.to_string()));
        }
        Ok(RelPath(Arc::from(parts.join("/"))))
    }

    /// Builds a `RelPath` from a path found on local disk relative to the folder root.
    pub fn from_local(relative: &Path) -> Result<RelPath, PathError> {
        let text = relative.to_str().ok_or(PathError::NotUtf8)?;
        RelPath::parse(text)
    }

    /// The normalized text, `/`-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The containing directory, or `None` at the top level.
    pub fn parent(&self) -> Option<RelPath> {
        self.0
            .rsplit_once('/')
            .map(|(dir, _)| RelPath(Arc::from(dir)))
    }

    /// Where this path lives under `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&*self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        RelPath::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normalization removes empty and `.` components so one file has one name.
    #[test]
    fn normalizes() {
        assert_eq!(RelPath::parse("a//./b/").unwrap().as_str(), "a/b");
        assert_eq!(RelPath::parse("./x y.txt").unwrap().as_str(), "x y.txt");
    }

    /// Every hostile form is refused, whatever its position.
    #[test]
    fn refuses_hostile_paths() {
        for raw in [
            "../x",
            "a/../../x",
            "a/..",
            "/etc/passwd",
            "..\\x",
            "a\0b",
            "",
            ".",
            ".boxsync/hash-cache.json",
            "./.boxsync",
        ] {
            assert!(RelPath::parse(raw).is_err(), "{raw:?} was accepted");
        }
        assert_eq!(
            RelPath::parse(&"a".repeat(300)),
            Err(PathError::ComponentTooLong)
        );
        assert_eq!(RelPath::parse(&"a/".repeat(3000)), Err(PathError::TooLong));
    }

    /// A nested `.boxsync` folder is ordinary user data; only the root one is private.
    #[test]
    fn nested_state_name_is_allowed() {
        assert!(RelPath::parse("docs/.boxsync").is_ok());
    }

    /// Parent and file name split on the last separator.
    #[test]
    fn parent_and_name() {
        let p = RelPath::parse("music/live/a.mp3").unwrap();
        assert_eq!(p.file_name(), "a.mp3");
        assert_eq!(p.parent().unwrap().as_str(), "music/live");
        assert!(RelPath::parse("a").unwrap().parent().is_none());
    }
}
