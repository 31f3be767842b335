//! What the folder holds that boxsync does not share, and why: symlinks (never followed,
//! never copied), sockets, FIFOs and devices, and names that cannot travel (not UTF-8).
//! A person sees each one in `sync status` and once in the log, instead of wondering why
//! a file never reached the peer. (Ignored paths are left out on purpose and not listed.)
//!
//! Kept up to date by every read of the folder: a whole read replaces the list, a partial
//! one the part it read.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::folder::Scope;

/// Why a path is not shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// A symbolic link: boxsync never follows one (it could lead out of the folder) and
    /// does not copy links.
    Symlink {
        /// Where it points, as written in the link (lossy when not UTF-8).
        target: String,
    },
    /// A socket, FIFO or device: not a file's content.
    Special,
    /// A name that cannot be shared (not UTF-8, or not a valid name on the wire).
    Name,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Symlink { target } => {
                write!(
                    f,
                    "a symlink to '{target}': symlinks are never followed or copied"
                )
            }
            Reason::Special => {
                f.write_str("a socket, FIFO or device: only files and folders are shared")
            }
            Reason::Name => f.write_str("its name cannot be shared (it is not UTF-8)"),
        }
    }
}

/// One path that is not shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotShared {
    /// Its path in the folder, `/`-separated (lossy when not UTF-8; escape it to show it).
    pub path: String,
    /// Why.
    pub reason: Reason,
}

impl NotShared {
    /// The entry for `relative` (a path below the folder) not shared for `reason`.
    pub fn new(relative: &Path, reason: Reason) -> NotShared {
        NotShared {
            path: relative.to_string_lossy().into_owned(),
            reason,
        }
    }
}

/// The paths not shared, as the latest reads found them.
#[derive(Debug, Default)]
pub struct NotSharedList {
    /// By path.
    paths: BTreeMap<String, Reason>,
}

impl NotSharedList {
    /// Takes what a read of the whole folder found. Returns the paths new to the list
    /// (for the log to name once).
    pub fn replace_all(&mut self, found: Vec<NotShared>) -> Vec<NotShared> {
        let before = std::mem::take(&mut self.paths);
        self.absorb(found, &before)
    }

    /// Takes what a read of `scope` found: what the list held there goes. Returns the
    /// paths new to the list.
    pub fn replace_scope(&mut self, scope: &Scope, found: Vec<NotShared>) -> Vec<NotShared> {
        let (folder, whole) = match scope {
            Scope::Children(folder) => (folder.as_str(), false),
            Scope::Subtree(folder) => (folder.as_str(), true),
        };
        let mut before = BTreeMap::new();
        self.paths.retain(|path, reason| {
            let inside = within(path, folder, whole);
            if inside {
                before.insert(path.clone(), reason.clone());
            }
            !inside
        });
        self.absorb(found, &before)
    }

    fn absorb(
        &mut self,
        found: Vec<NotShared>,
        before: &BTreeMap<String, Reason>,
    ) -> Vec<NotShared> {
        let mut new = Vec::new();
        for item in found {
            if before.get(&item.path) != Some(&item.reason) {
                new.push(item.clone());
            }
            self.paths.insert(item.path, item.reason);
        }
        new
    }

    /// The first `most` paths (by name), and how many there are in all.
    pub fn first(&self, most: usize) -> (Vec<NotShared>, usize) {
        let shown = self
            .paths
            .iter()
            .take(most)
            .map(|(path, reason)| NotShared {
                path: path.clone(),
                reason: reason.clone(),
            })
            .collect();
        (shown, self.paths.len())
    }
}

/// Whether `path` lies in `folder` (`""`: the shared folder): directly, or anywhere below
/// it when `whole`.
fn within(path: &str, folder: &str, whole: bool) -> bool {
    let rest = match folder {
        "" => path,
        folder => match path.strip_prefix(folder).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => rest,
            None => return false,
        },
    };
    whole || !rest.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(path: &str) -> NotShared {
        NotShared::new(
            Path::new(path),
            Reason::Symlink {
                target: "/etc".into(),
            },
        )
    }

    /// A partial read replaces only what it read; paths already known are not new again.
    #[test]
    fn reads_replace_what_they_read() {
        let mut list = NotSharedList::default();
        let new = list.replace_all(vec![link("a"), link("music/b"), link("music/deep/c")]);
        assert_eq!(new.len(), 3);
        // music/b went, music/d came; music/deep/c is outside a children read of music.
        let new = list.replace_scope(&Scope::Children("music".into()), vec![link("music/d")]);
        assert_eq!(new, vec![link("music/d")]);
        let (shown, total) = list.first(10);
        let paths: Vec<&str> = shown.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["a", "music/d", "music/deep/c"]);
        assert_eq!(total, 3);
        // A subtree read of music takes everything below it.
        assert!(
            list.replace_scope(&Scope::Subtree("music".into()), vec![])
                .is_empty()
        );
        assert_eq!(list.first(10).1, 1);
        // The root's children: "a" goes, and nothing is new.
        assert!(
            list.replace_scope(&Scope::Children(String::new()), vec![])
                .is_empty()
        );
        assert_eq!(list.first(10).1, 0);
    }

    /// The same path found again with the same reason is not new; with another, it is.
    #[test]
    fn a_known_path_is_new_only_when_its_reason_changed() {
        let mut list = NotSharedList::default();
        list.replace_all(vec![link("x")]);
        assert!(list.replace_all(vec![link("x")]).is_empty());
        let special = NotShared::new(Path::new("x"), Reason::Special);
        assert_eq!(list.replace_all(vec![special.clone()]), vec![special]);
    }
}
