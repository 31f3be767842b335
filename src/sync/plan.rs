//! Deciding, path by path, what this box must do to take in a peer's changes: the pure
//! heart of sync, with no I/O, so that every rule can be tested on its own.
//!
//! Each box only ever changes itself: it pulls what its peer has changed and leaves its own
//! changes for the peer to pull. For a path it compares three states: here (L), on the peer
//! (R), and the record of the last time both held the same version (S). A side *changed*
//! if its state differs from S. Never are clocks of different boxes compared.
//!
//! | changed here | changed there | action |
//! |---|---|---|
//! | no | yes | take the peer's version (download, delete, new metadata) |
//! | yes | no | nothing: the peer will take ours |
//! | yes | yes, same content | nothing (metadata: the smaller box id's wins) |
//! | deleted | edited | take the edit (the edit wins) |
//! | edited | deleted | nothing: the peer will take our edit |
//! | edited | edited differently | conflict: both versions survive |
//!
//! In a conflict the version of the box with the smaller id keeps the name and the other
//! becomes `name.sync-conflict-YYYYMMDD-HHMMSS-<box id>.ext` (that version's mtime, in
//! UTC), so that both boxes arrive at the same two files.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::share::{Expect, RelPath};
use crate::time::Timestamp;

/// One state of a path: what sync compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Directory rather than file.
    pub dir: bool,
    /// BLAKE3 of the content (files): what tells two contents apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Size (files).
    #[serde(default)]
    pub size: u64,
    /// Last-modified time (files).
    pub mtime: Timestamp,
    /// Permission bits (files).
    #[serde(default)]
    pub mode: u32,
}

impl Version {
    /// Same kind and same content.
    pub fn same_content(&self, other: &Version) -> bool {
        self.dir == other.dir && (self.dir || self.blake3 == other.blake3)
    }

    /// Same content and, for files, the same metadata: nothing to do.
    pub fn same(&self, other: &Version) -> bool {
        self.same_content(other)
            && (self.dir || (self.mtime == other.mtime && self.mode == other.mode))
    }

    /// What the file must look like for an action on it to go ahead.
    pub fn expect(&self) -> Expect {
        Expect::File {
            size: self.size,
            mtime: self.mtime,
        }
    }
}

#[cfg(test)]
impl Version {
    /// A file's version for tests: `content` stands for its BLAKE3 and gives its size; the
    /// mtime is `secs` after the epoch.
    pub fn test_file(content: &str, secs: i64) -> Version {
        Version {
            dir: false,
            blake3: Some(content.to_string()),
            size: content.len() as u64,
            mtime: Timestamp(chrono::DateTime::from_timestamp(secs, 0).expect("a valid time")),
            mode: 0o644,
        }
    }
}

fn same(a: Option<&Version>, b: Option<&Version>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same(b),
        _ => false,
    }
}

fn expect(local: Option<&Version>) -> Expect {
    local.map_or(Expect::Absent, Version::expect)
}

/// One thing to do here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a directory.
    CreateDir(RelPath),
    /// Download the peer's file `remote` to `local` (same name, or a conflict copy).
    Download {
        /// The name on the peer.
        remote: RelPath,
        /// The name here.
        local: RelPath,
        /// The version expected from the peer.
        version: Version,
        /// What must be here for the download to replace it.
        expect: Expect,
    },
    /// Take the peer's mtime and mode for identical content.
    SetMetadata {
        /// The file.
        path: RelPath,
        /// The peer's version.
        version: Version,
        /// What must be here.
        expect: Expect,
    },
    /// Set our losing conflict version aside under its conflict name.
    SetAside {
        /// The file.
        path: RelPath,
        /// Its conflict name.
        to: RelPath,
        /// What must be here.
        expect: Expect,
    },
    /// Move a file to the trash (the peer deleted it).
    DeleteFile {
        /// The file.
        path: RelPath,
        /// What must be here.
        expect: Expect,
    },
    /// Remove a directory if it is empty once everything else is done.
    DeleteDir(RelPath),
}

/// The result of planning against one peer.
#[derive(Debug, Default)]
pub struct Plan {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Paths both sides agree on now: the record's new state for them (`None`: absent).
    pub agreed: BTreeMap<RelPath, Option<Version>>,
    /// Conflicts found (path and the conflict copy's name).
    pub conflicts: Vec<(RelPath, RelPath)>,
    /// Paths left alone with the reason (a file against a directory, say).
    pub skipped: Vec<(RelPath, String)>,
}

/// Who is who, for the deterministic conflict rule.
pub struct Sides<'a> {
    /// This box's id.
    pub local_id: &'a str,
    /// The peer's id.
    pub remote_id: &'a str,
}

/// Plans what to do here to take in the peer's changes.
///
/// `local` and `remote` hold every path of either side that sync may touch (ignored and
/// unstable paths left out); `record` the state of each path when both last agreed.
/// `ours` the versions this box held since; `unknown` lists local paths that exist but could not be read this round: they are left
/// alone.
pub fn plan(
    local: &BTreeMap<RelPath, Version>,
    remote: &BTreeMap<RelPath, Version>,
    record: &BTreeMap<RelPath, Version>,
    ours: &BTreeMap<RelPath, Vec<Version>>,
    unknown: &BTreeSet<RelPath>,
    sides: &Sides<'_>,
) -> Plan {
    let mut out = Plan::default();
    let paths: BTreeSet<&RelPath> = local
        .keys()
        .chain(remote.keys())
        .chain(record.keys())
        .collect();
    let mut deletes_dir = Vec::new();
    let mut deletes_file = Vec::new();
    let mut set_aside = Vec::new();
    let mut downloads = Vec::new();
    let mut creates = Vec::new();
    let mut metadata = Vec::new();
    for path in paths {
        if unknown.contains(path) {
            continue;
        }
        let (l, r, s) = (local.get(path), remote.get(path), record.get(path));
        if same(l, r) {
            out.agreed.insert(path.clone(), l.cloned());
            continue;
        }
        if let (Some(l), Some(r)) = (l, r)
            && l.dir != r.dir
        {
            out.skipped.push((
                path.clone(),
                "a file on one box is a directory on the other".to_string(),
            ));
            continue;
        }
        let changed_here = !same(l, s);
        // A version this box held since the last agreement is ours, lagging on the peer.
        let ours_lagging = r.is_some_and(|r| {
            ours.get(path)
                .is_some_and(|held| held.iter().any(|v| v.same(r)))
        });
        let changed_there = !same(r, s) && !ours_lagging;
        match (changed_here, changed_there) {
            (false, true) | (true, true) if l.is_none() && r.is_some() => {
                // Only the peer changed, or we deleted and the peer edited: take theirs.
                take(path, l, r, &mut creates, &mut downloads);
            }
            (false, true) => match r {
                None => match l {
                    Some(v) if v.dir => deletes_dir.push(path.clone()),
                    Some(v) => deletes_file.push(Action::DeleteFile {
                        path: path.clone(),
                        expect: v.expect(),
                    }),
                    None => {}
                },
                Some(r) => match l {
                    Some(l) if l.same_content(r) => metadata.push(Action::SetMetadata {
                        path: path.clone(),
                        version: r.clone(),
                        expect: l.expect(),
                    }),
                    _ => take(path, l, Some(r), &mut creates, &mut downloads),
                },
            },
            // Only we changed, or we edited and the peer deleted: the peer takes ours.
            (true, false) | (true, true) if r.is_none() => {}
            (true, false) => {}
            (true, true) => {
                let (Some(l), Some(r)) = (l, r) else {
                    continue;
                };
                let remote_wins = sides.remote_id < sides.local_id;
                if l.same_content(r) {
                    // Both changed metadata only: the smaller box id's wins.
                    if remote_wins {
                        metadata.push(Action::SetMetadata {
                            path: path.clone(),
                            version: r.clone(),
                            expect: l.expect(),
                        });
                    }
                    continue;
                }
                if remote_wins {
                    let to = conflict_name(path, l, sides.local_id);
                    out.conflicts.push((path.clone(), to.clone()));
                    match local.get(&to) {
                        // Our version is already here under its conflict name (the peer's
                        // copy of it came first): it survives there, so the name takes the
                        // peer's version (what it replaces goes to the trash as always).
                        Some(copy) if copy.same_content(l) => downloads.push(Action::Download {
                            remote: path.clone(),
                            local: path.clone(),
                            version: r.clone(),
                            expect: l.expect(),
                        }),
                        Some(_) => out
                            .skipped
                            .push((to, "a different file has the conflict copy's name".into())),
                        None => {
                            set_aside.push(Action::SetAside {
                                path: path.clone(),
                                to,
                                expect: l.expect(),
                            });
                            downloads.push(Action::Download {
                                remote: path.clone(),
                                local: path.clone(),
                                version: r.clone(),
                                expect: Expect::Absent,
                            });
                        }
                    }
                } else {
                    // Ours keeps the name; fetch theirs as the conflict copy (unless we
                    // already have it from an earlier round).
                    let to = conflict_name(path, r, sides.remote_id);
                    out.conflicts.push((path.clone(), to.clone()));
                    match local.get(&to) {
                        Some(copy) if copy.same_content(r) => {}
                        Some(_) => out
                            .skipped
                            .push((to, "a different file has the conflict copy's name".into())),
                        None => downloads.push(Action::Download {
                            remote: path.clone(),
                            local: to,
                            version: r.clone(),
                            expect: Expect::Absent,
                        }),
                    }
                }
            }
            (false, false) => {}
        }
    }
    // Directories before their files; deletions of files before their directories,
    // deepest directories first.
    creates.sort_by_key(|p: &RelPath| p.components().count());
    deletes_dir.sort_by_key(|p: &RelPath| std::cmp::Reverse(p.components().count()));
    out.actions
        .extend(creates.into_iter().map(Action::CreateDir));
    out.actions.extend(set_aside);
    out.actions.extend(downloads);
    out.actions.extend(metadata);
    out.actions.extend(deletes_file);
    out.actions
        .extend(deletes_dir.into_iter().map(Action::DeleteDir));
    out
}

/// Takes the peer's version of `path` (a directory to create or a file to download).
fn take(
    path: &RelPath,
    local: Option<&Version>,
    remote: Option<&Version>,
    creates: &mut Vec<RelPath>,
    downloads: &mut Vec<Action>,
) {
    let Some(remote) = remote else { return };
    if remote.dir {
        creates.push(path.clone());
    } else {
        downloads.push(Action::Download {
            remote: path.clone(),
            local: path.clone(),
            version: remote.clone(),
            expect: expect(local),
        });
    }
}

/// `dir/name.sync-conflict-YYYYMMDD-HHMMSS-<box id>.ext` for the version `loser` of `path`
/// held by box `owner`.
pub fn conflict_name(path: &RelPath, loser: &Version, owner: &str) -> RelPath {
    let stamp = loser.mtime.0.format("%Y%m%d-%H%M%S");
    let name = path.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    let file = format!("{stem}.sync-conflict-{stamp}-{owner}{ext}");
    let full = match path.parent() {
        Some(dir) => format!("{dir}/{file}"),
        None => file,
    };
    // Only a name too long for the file system can fail here; then keep it short.
    RelPath::parse(&full).unwrap_or_else(|_| {
        let short = format!("sync-conflict-{stamp}-{owner}");
        RelPath::parse(&short).unwrap_or_else(|_| path.clone())
    })
}

/// Whether `path` is a conflict copy made by sync.
pub fn is_conflict_copy(path: &RelPath) -> bool {
    path.file_name().contains(".sync-conflict-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(p: &str) -> RelPath {
        RelPath::parse(p).unwrap()
    }

    fn file(content: &str, secs: i64) -> Version {
        Version::test_file(content, secs)
    }

    fn dir() -> Version {
        Version {
            dir: true,
            blake3: None,
            size: 0,
            mtime: Timestamp(chrono::DateTime::from_timestamp(0, 0).unwrap()),
            mode: 0o755,
        }
    }

    fn map(items: &[(&str, Version)]) -> BTreeMap<RelPath, Version> {
        items.iter().map(|(p, v)| (rel(p), v.clone())).collect()
    }

    const SIDES: Sides<'static> = Sides {
        local_id: "bbbb",
        remote_id: "cccc",
    };

    fn run(
        local: &[(&str, Version)],
        remote: &[(&str, Version)],
        record: &[(&str, Version)],
    ) -> Plan {
        plan(
            &map(local),
            &map(remote),
            &map(record),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &SIDES,
        )
    }

    /// A new file or folder on the peer is taken; one only here is left for the peer.
    #[test]
    fn creations() {
        let p = run(
            &[("mine", file("m", 1))],
            &[("theirs", file("t", 1)), ("d", dir())],
            &[],
        );
        assert_eq!(p.actions.len(), 2);
        assert_eq!(p.actions[0], Action::CreateDir(rel("d")));
        assert!(
            matches!(&p.actions[1], Action::Download { local, expect: Expect::Absent, .. } if local == &rel("theirs"))
        );
    }

    /// A deletion on the peer of a file unchanged here deletes it here; a file missing
    /// here with no record (a lost record, or never synced) is never deleted anywhere.
    #[test]
    fn deletions_need_the_record() {
        let v = file("x", 1);
        let p = run(&[("a", v.clone())], &[], &[("a", v.clone())]);
        assert!(matches!(&p.actions[..], [Action::DeleteFile { .. }]));
        let p = run(&[("a", v.clone())], &[], &[]);
        assert!(
            p.actions.is_empty(),
            "deleted without a record: {:?}",
            p.actions
        );
        let p = run(&[], &[("a", v.clone())], &[]);
        assert!(matches!(&p.actions[..], [Action::Download { .. }]));
    }

    /// Deleted here but edited there: the edit comes back. Edited here, deleted there:
    /// nothing here (the peer takes our edit).
    #[test]
    fn edit_beats_delete() {
        let old = file("old", 1);
        let p = run(&[], &[("a", file("new", 2))], &[("a", old.clone())]);
        assert!(matches!(&p.actions[..], [Action::Download { .. }]));
        let p = run(&[("a", file("new", 2))], &[], &[("a", old)]);
        assert!(p.actions.is_empty());
    }

    /// Identical edits on both sides are no conflict; the record is brought up to date.
    #[test]
    fn identical_edits_agree() {
        let v = file("same", 5);
        let p = run(
            &[("a", v.clone())],
            &[("a", v.clone())],
            &[("a", file("old", 1))],
        );
        assert!(p.actions.is_empty());
        assert_eq!(p.agreed.get(&rel("a")), Some(&Some(v)));
    }

    /// A real conflict: the smaller box id keeps the name on both sides, and the other
    /// version gets the same conflict name on both sides.
    #[test]
    fn conflicts_resolve_the_same_way_on_both_boxes() {
        let old = file("old", 1);
        let ours = file("ours", 1_763_719_200);
        let theirs = file("theirs", 1_763_719_300);
        // Here "bbbb" < "cccc": ours keeps the name; theirs is fetched as the copy.
        let p = run(
            &[("d/a.txt", ours.clone())],
            &[("d/a.txt", theirs.clone())],
            &[("d/a.txt", old.clone())],
        );
        let copy = rel("d/a.sync-conflict-20251121-100140-cccc.txt");
        assert_eq!(p.conflicts, vec![(rel("d/a.txt"), copy.clone())]);
        assert!(matches!(&p.actions[..], [Action::Download { local, .. }] if local == &copy));
        // On the other box the roles swap: its version is set aside under the same name.
        let other = plan(
            &map(&[("d/a.txt", theirs.clone())]),
            &map(&[("d/a.txt", ours.clone())]),
            &map(&[("d/a.txt", old.clone())]),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &Sides {
                local_id: "cccc",
                remote_id: "bbbb",
            },
        );
        assert!(matches!(&other.actions[0], Action::SetAside { to, .. } if to == &copy));
        assert!(
            matches!(&other.actions[1], Action::Download { local, expect: Expect::Absent, .. } if local == &rel("d/a.txt"))
        );
        // If that box already got its own version back under the conflict name (the peer
        // made the copy first), nothing is set aside: the name just takes the peer's version.
        let cccc = Sides {
            local_id: "cccc",
            remote_id: "bbbb",
        };
        let other = plan(
            &map(&[("d/a.txt", theirs.clone()), (copy.as_str(), theirs.clone())]),
            &map(&[("d/a.txt", ours.clone()), (copy.as_str(), theirs.clone())]),
            &map(&[("d/a.txt", old.clone())]),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &cccc,
        );
        assert_eq!(
            other.actions,
            vec![Action::Download {
                remote: rel("d/a.txt"),
                local: rel("d/a.txt"),
                version: ours.clone(),
                expect: theirs.expect(),
            }]
        );
        // A different file under that name is left alone, and said so.
        let other = plan(
            &map(&[
                ("d/a.txt", theirs.clone()),
                (copy.as_str(), file("else", 7)),
            ]),
            &map(&[("d/a.txt", ours)]),
            &map(&[("d/a.txt", old)]),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &cccc,
        );
        assert_eq!(other.skipped.len(), 1, "{:?}", other.skipped);
        assert!(
            !other
                .actions
                .iter()
                .any(|a| matches!(a, Action::SetAside { .. })),
            "{:?}",
            other.actions
        );
    }

    /// Metadata-only changes travel without content.
    #[test]
    fn metadata_only() {
        let old = file("x", 1);
        let mut touched = old.clone();
        touched.mtime = Timestamp(chrono::DateTime::from_timestamp(9, 0).unwrap());
        let p = run(&[("a", old.clone())], &[("a", touched)], &[("a", old)]);
        assert!(matches!(&p.actions[..], [Action::SetMetadata { .. }]));
    }

    /// Unknown paths (unreadable this round) are never touched; directories are deleted
    /// deepest first, after files.
    #[test]
    fn unknown_and_order() {
        let v = file("x", 1);
        let mut unknown = BTreeSet::new();
        unknown.insert(rel("busy"));
        let p = plan(
            &map(&[("d", dir()), ("d/e", dir()), ("d/e/f", v.clone())]),
            &map(&[("busy", file("y", 2))]),
            &map(&[("d", dir()), ("d/e", dir()), ("d/e/f", v)]),
            &BTreeMap::new(),
            &unknown,
            &SIDES,
        );
        assert!(matches!(&p.actions[0], Action::DeleteFile { .. }));
        assert_eq!(p.actions[1], Action::DeleteDir(rel("d/e")));
        assert_eq!(p.actions[2], Action::DeleteDir(rel("d")));
        assert_eq!(p.actions.len(), 3);
    }

    /// A peer holding a version this box had since the last agreement lags behind: it has
    /// not changed, so our later deletion or edit stands.
    #[test]
    fn lagging_peer_is_no_change() {
        let base = file("base", 1);
        let edited = file("edited", 2);
        let mut ours = BTreeMap::new();
        ours.insert(rel("a"), vec![edited.clone()]);
        let p = plan(
            &BTreeMap::new(),
            &map(&[("a", edited)]),
            &map(&[("a", base)]),
            &ours,
            &BTreeSet::new(),
            &SIDES,
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
    }

    /// Conflict names keep the extension and work without one.
    #[test]
    fn conflict_names() {
        let v = file("x", 0);
        assert_eq!(
            conflict_name(&rel("a/b.tar.gz"), &v, "id").as_str(),
            "a/b.tar.sync-conflict-19700101-000000-id.gz"
        );
        assert_eq!(
            conflict_name(&rel("Makefile"), &v, "id").as_str(),
            "Makefile.sync-conflict-19700101-000000-id"
        );
        assert_eq!(
            conflict_name(&rel(".bashrc"), &v, "id").as_str(),
            ".bashrc.sync-conflict-19700101-000000-id"
        );
    }
}
