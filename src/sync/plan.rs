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
//! [`plan`] classifies each side against the record ([`Change`]) and then matches the pair
//! once, arm by arm in the order of these rows (the same table is in problem_statement.md).
//! The guards and the quiet check that decide whether a round plans at all are here too,
//! as pure functions.
//!
//! In a conflict the version of the box with the smaller id keeps the name and the other
//! becomes `name.sync-conflict-YYYYMMDD-HHMMSS-<box id>-<hash>.ext` (that version's mtime, in
//! UTC), so that both boxes arrive at the same two files.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::SyncError;
use super::record::Record;
use crate::share::Ignore;
use crate::share::{Entry as ShareEntry, Expect, RelPath};
use crate::time::Timestamp;
use crate::types::FileVersion;

/// One state of a path: what sync compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Directory rather than file.
    pub dir: bool,
    /// BLAKE3 of the content (files): what tells two contents apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<Arc<str>>,
    /// Size (files).
    #[serde(default)]
    pub size: u64,
    /// Last-modified time (files).
    pub mtime: Timestamp,
    /// Permission bits (files).
    #[serde(default)]
    pub mode: u32,
}

impl From<&FileVersion> for Version {
    /// A file's version as sync compares it (a version served, installed or downloaded).
    fn from(file: &FileVersion) -> Version {
        Version {
            dir: false,
            blake3: Some(file.blake3.clone().into()),
            size: file.size,
            mtime: file.mtime,
            mode: file.mode,
        }
    }
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
            blake3: Some(content.to_string().into()),
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
        /// Our version, which must be here, and which the conflict name then holds.
        version: Version,
    },
    /// Rename the file `from` to `to` here, as the peer did: the peer deleted `from`, which
    /// this box holds unchanged, and has `to` new with the same content. No content travels
    /// and nothing goes to the trash (the file itself is the one kept).
    Move {
        /// The name the file has here, which the peer no longer has.
        from: RelPath,
        /// The peer's new name for it, which must be free here.
        to: RelPath,
        /// The peer's version of `to`: the same content, whose mtime and mode it takes.
        version: Version,
        /// What must be at `from` for the move to go ahead.
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

/// Why the plan leaves a path alone although the boxes disagree on it: shown to a person,
/// who has to sort it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// Neither a file nor a directory can replace the other without losing one of them.
    #[error("a file on one box is a directory on the other")]
    KindsDiffer,
    /// A conflict copy's name is taken by another content, which must not be overwritten.
    #[error("a different file has the conflict copy's name")]
    ConflictNameTaken,
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
    pub skipped: Vec<(RelPath, Skip)>,
}

impl Plan {
    /// Whether this plan leaves nothing to do nor to report, with `unknown` the paths that
    /// could not be read: then a later round that sees the same folders and record can skip
    /// planning (see [`Seen`]).
    pub fn is_quiet(&self, unknown: &BTreeSet<RelPath>) -> bool {
        self.actions.is_empty()
            && self.conflicts.is_empty()
            && self.skipped.is_empty()
            && unknown.is_empty()
    }
}

/// Who is who, for the deterministic conflict rule.
pub struct Sides<'a> {
    /// This box's id.
    pub local_id: &'a str,
    /// The peer's id.
    pub remote_id: &'a str,
}

impl Sides<'_> {
    /// The smaller box id's version wins a conflict or a metadata tie: both boxes then
    /// decide alike without comparing clocks.
    fn remote_wins(&self) -> bool {
        self.remote_id < self.local_id
    }
}

/// How one side of a path stands against the record: the two classifications together
/// pick the row of the rules table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// As in the record (both absent, or the same version); on the peer also a version
    /// this box held since the record, which the peer lags behind with. Holds the side's
    /// version.
    Unchanged(Option<&'a Version>),
    /// Present, and the record has no version of it.
    Created(&'a Version),
    /// Present, and different from the record's version.
    Edited(&'a Version),
    /// Absent, and the record has a version of it.
    Deleted,
}

impl<'a> Change<'a> {
    /// Classifies `side` (a path's version on one box, `None`: absent) against `record`.
    pub fn of(side: Option<&'a Version>, record: Option<&Version>) -> Change<'a> {
        match (side, record) {
            (None, None) => Change::Unchanged(None),
            (Some(v), None) => Change::Created(v),
            (None, Some(_)) => Change::Deleted,
            (Some(v), Some(s)) if v.same(s) => Change::Unchanged(Some(v)),
            (Some(v), Some(_)) => Change::Edited(v),
        }
    }

    /// Classifies the peer's `side`: a version this box `held` since the record is ours,
    /// lagging on the peer, so no change of the peer's.
    pub fn of_peer(
        side: Option<&'a Version>,
        record: Option<&Version>,
        held: &[Version],
    ) -> Change<'a> {
        match side {
            Some(v) if held.iter().any(|h| h.same(v)) => Change::Unchanged(Some(v)),
            _ => Change::of(side, record),
        }
    }
}

/// The actions of a plan by kind, put in the order they must run by [`Steps::finish`].
#[derive(Default)]
struct Steps {
    creates: Vec<RelPath>,
    set_aside: Vec<Action>,
    moves: Vec<Action>,
    downloads: Vec<Action>,
    metadata: Vec<Action>,
    deletes_file: Vec<Action>,
    deletes_dir: Vec<RelPath>,
}

impl Steps {
    /// Directories before their files; deletions of files before their directories,
    /// deepest directories first.
    fn finish(mut self) -> Vec<Action> {
        self.creates
            .sort_by_key(|p: &RelPath| p.components().count());
        self.deletes_dir
            .sort_by_key(|p: &RelPath| std::cmp::Reverse(p.components().count()));
        let mut actions = Vec::new();
        actions.extend(self.creates.into_iter().map(Action::CreateDir));
        actions.extend(self.set_aside);
        actions.extend(self.moves);
        actions.extend(self.downloads);
        actions.extend(self.metadata);
        actions.extend(self.deletes_file);
        actions.extend(self.deletes_dir.into_iter().map(Action::DeleteDir));
        actions
    }

    /// Takes the peer's version `remote` of `path` (a directory to create or a file to
    /// download over what is here).
    fn take(&mut self, path: &RelPath, local: Option<&Version>, remote: &Version) {
        if remote.dir {
            self.creates.push(path.clone());
        } else {
            self.downloads
                .push(download_over(path, remote, expect(local)));
        }
    }

    /// Takes the peer's mtime and mode for the content both hold.
    fn take_metadata(&mut self, path: &RelPath, local: &Version, remote: &Version) {
        self.metadata.push(Action::SetMetadata {
            path: path.clone(),
            version: remote.clone(),
            expect: local.expect(),
        });
    }

    /// Turns each download of a new name whose content is a file this box is to delete
    /// into a move of that file (`local` gives the content of what is here): a rename or
    /// move on the peer then costs a rename here. Pairs one to one; what is left stays a
    /// download (which finds its blocks in the folder anyway) or a deletion.
    fn pair_moves(&mut self, local: &BTreeMap<RelPath, Version>) {
        let mut deleted: BTreeMap<(Arc<str>, u64), Vec<usize>> = BTreeMap::new();
        for (at, delete) in self.deletes_file.iter().enumerate().rev() {
            if let Action::DeleteFile { path, .. } = delete
                && let Some(Version {
                    dir: false,
                    blake3: Some(content),
                    size,
                    ..
                }) = local.get(path)
            {
                deleted
                    .entry((Arc::clone(content), *size))
                    .or_default()
                    .push(at);
            }
        }
        if deleted.is_empty() {
            return;
        }
        let mut taken = BTreeSet::new();
        let mut downloads = Vec::with_capacity(self.downloads.len());
        for download in std::mem::take(&mut self.downloads) {
            let source = match &download {
                Action::Download {
                    remote,
                    local: name,
                    version,
                    expect: Expect::Absent,
                } if remote == name => version
                    .blake3
                    .as_ref()
                    .and_then(|content| deleted.get_mut(&(Arc::clone(content), version.size)))
                    .and_then(Vec::pop),
                _ => None,
            };
            let (
                Some(at),
                Action::Download {
                    local: to, version, ..
                },
            ) = (source, &download)
            else {
                downloads.push(download);
                continue;
            };
            let Action::DeleteFile { path, expect } = &self.deletes_file[at] else {
                downloads.push(download);
                continue;
            };
            taken.insert(at);
            self.moves.push(Action::Move {
                from: path.clone(),
                to: to.clone(),
                version: version.clone(),
                expect: expect.clone(),
            });
        }
        self.downloads = downloads;
        let mut at = 0;
        self.deletes_file.retain(|_| {
            at += 1;
            !taken.contains(&(at - 1))
        });
    }

    /// Deletes here what the peer deleted.
    fn delete(&mut self, path: &RelPath, local: &Version) {
        if local.dir {
            self.deletes_dir.push(path.clone());
        } else {
            self.deletes_file.push(Action::DeleteFile {
                path: path.clone(),
                expect: local.expect(),
            });
        }
    }
}

/// Plans what to do here to take in the peer's changes.
///
/// `local` and `remote` hold every path of either side that sync may touch (ignored and
/// unstable paths left out); `record` the state of each path when both last agreed.
/// `ours` the versions this box held since; `unknown` lists local paths that exist but
/// could not be read this round: they are left alone.
pub fn plan(
    local: &BTreeMap<RelPath, Version>,
    remote: &BTreeMap<RelPath, Version>,
    record: &BTreeMap<RelPath, Version>,
    ours: &BTreeMap<RelPath, Vec<Version>>,
    unknown: &BTreeSet<RelPath>,
    sides: &Sides<'_>,
) -> Plan {
    let paths: BTreeSet<&RelPath> = local
        .keys()
        .chain(remote.keys())
        .chain(record.keys())
        .collect();
    let state = State {
        local,
        remote: &|path: &RelPath| remote.get(path),
        record,
        ours,
        left_alone: &|path: &RelPath| unknown.contains(path),
    };
    plan_paths(paths, &state, sides)
}

/// What the planner looks at, for [`plan_paths`]: this box's side whole (conflict names
/// are checked against it), the peer's side and what is left alone as lookups, so that a
/// round that plans a few paths builds nothing of the whole folders.
pub struct State<'a, 'v> {
    /// This box's side: every path sync may touch, with its version.
    pub local: &'a BTreeMap<RelPath, Version>,
    /// The peer's version of a path (`None`: absent, or left out by the ignore rules).
    pub remote: &'a dyn Fn(&RelPath) -> Option<&'v Version>,
    /// The record's agreed versions.
    pub record: &'a BTreeMap<RelPath, Version>,
    /// The versions this box held since the record.
    pub ours: &'a BTreeMap<RelPath, Vec<Version>>,
    /// Paths left alone this round (unreadable, or kept to itself by a side).
    pub left_alone: &'a dyn Fn(&RelPath) -> bool,
}

/// [`plan`] for the given `paths` only, in their order (sorted, each once): every other
/// path is taken to be as the record has it on both sides, with nothing to do. A round
/// plans the paths that changed on either side or in the record since its last plan, and
/// those that plan left unsettled.
pub fn plan_paths<'p>(
    paths: impl IntoIterator<Item = &'p RelPath>,
    state: &State<'_, '_>,
    sides: &Sides<'_>,
) -> Plan {
    let State {
        local,
        remote,
        record,
        ours,
        left_alone,
    } = state;
    let mut out = Plan::default();
    let mut steps = Steps::default();
    for path in paths {
        if left_alone(path) {
            continue;
        }
        let (l, r, s) = (local.get(path), remote(path), record.get(path));
        // On neither side nor in the record: nothing to plan (and what the record holds
        // for it, versions held or a copy awaited, stays).
        if l.is_none() && r.is_none() && s.is_none() {
            continue;
        }
        // Before the table: what both hold already agrees, and kinds that differ wait for
        // a person.
        if same(l, r) {
            out.agreed.insert(path.clone(), l.cloned());
            continue;
        }
        if let (Some(l), Some(r)) = (l, r)
            && l.dir != r.dir
        {
            out.skipped.push((path.clone(), Skip::KindsDiffer));
            continue;
        }
        let here = Change::of(l, s);
        let held = ours.get(path).map_or(&[][..], Vec::as_slice);
        let there = Change::of_peer(r, s, held);
        let same_content = l.zip(r).is_some_and(|(l, r)| l.same_content(r));
        use Change::{Created, Deleted, Edited, Unchanged};
        // The rules table of problem_statement.md ("Auto-sync"), row by row, in its order.
        match (here, there, same_content) {
            // Row 1, same | changed: take the peer's version; for the same content, only
            // its mtime and mode.
            (Unchanged(Some(l)), Created(r) | Edited(r), true) => steps.take_metadata(path, l, r),
            (Unchanged(l), Created(r) | Edited(r), _) => steps.take(path, l, r),
            (Unchanged(Some(l)), Deleted, _) => steps.delete(path, l),
            // Row 2, changed | same: nothing, the peer takes ours.
            (Created(_) | Edited(_) | Deleted, Unchanged(_), _) => {}
            // Row 3, changed | changed, identical content: nothing, but for metadata the
            // smaller box id's wins.
            (Created(l) | Edited(l), Created(r) | Edited(r), true) => {
                if sides.remote_wins() {
                    steps.take_metadata(path, l, r);
                }
            }
            // Row 4, deleted | edited: the edit wins, take it.
            (Deleted, Created(r) | Edited(r), _) => steps.take(path, None, r),
            // Row 5, edited | deleted: nothing, the peer takes our edit.
            (Created(_) | Edited(_), Deleted, _) => {}
            // Row 6, edited | edited differently: a conflict, both versions survive.
            (Created(l) | Edited(l), Created(r) | Edited(r), false) => {
                conflict(path, l, r, local, sides, &mut steps, &mut out);
            }
            // Not a row: neither changed (the peer lags behind with a version we held).
            (Unchanged(_), Unchanged(_), _) => {}
            // Not a row: both absent agrees (above), and a path the peer deleted is in the
            // record, so a side unchanged since holds it.
            (Unchanged(None) | Deleted, Deleted, _) => {}
        }
    }
    steps.pair_moves(local);
    out.actions = steps.finish();
    out
}

/// The download of the peer's `version` of `path` under the same name here, over what
/// `expect` says is here.
fn download_over(path: &RelPath, version: &Version, expect: Expect) -> Action {
    Action::Download {
        remote: path.clone(),
        local: path.clone(),
        version: version.clone(),
        expect,
    }
}

/// Plans a conflict on `path` between our `l` and the peer's `r`: the smaller box id's
/// version keeps the name, the other takes its conflict name, on both boxes alike.
fn conflict(
    path: &RelPath,
    l: &Version,
    r: &Version,
    local: &BTreeMap<RelPath, Version>,
    sides: &Sides<'_>,
    steps: &mut Steps,
    out: &mut Plan,
) {
    if sides.remote_wins() {
        let to = free_conflict_name(path, l, sides.local_id, local);
        out.conflicts.push((path.clone(), to.clone()));
        match local.get(&to) {
            // Our version is already here under its conflict name (the peer's copy of it
            // came first): it survives there, so the name takes the peer's version (what it
            // replaces goes to the trash as always).
            Some(copy) if copy.same_content(l) => {
                steps.downloads.push(download_over(path, r, l.expect()));
            }
            Some(_) => out.skipped.push((to, Skip::ConflictNameTaken)),
            None => {
                steps.set_aside.push(Action::SetAside {
                    path: path.clone(),
                    to,
                    version: l.clone(),
                });
                steps.downloads.push(download_over(path, r, Expect::Absent));
            }
        }
    } else {
        // Ours keeps the name; fetch theirs as the conflict copy (unless we already have it
        // from an earlier round).
        let to = free_conflict_name(path, r, sides.remote_id, local);
        out.conflicts.push((path.clone(), to.clone()));
        match local.get(&to) {
            Some(copy) if copy.same_content(r) => {}
            Some(_) => out.skipped.push((to, Skip::ConflictNameTaken)),
            None => steps.downloads.push(Action::Download {
                remote: path.clone(),
                local: to,
                version: r.clone(),
                expect: Expect::Absent,
            }),
        }
    }
}

/// Characters of the owner's ID in a conflict copy's name: its first group (see
/// [`crate::types::BoxId::short`]).
const SHORT_OWNER: usize = 7;

/// `dir/name.sync-conflict-YYYYMMDD-HHMMSS-<box id>-<hash>.ext` for the version `loser` of `path`
/// held by box `owner`.
pub fn conflict_name(path: &RelPath, loser: &Version, owner: &str) -> RelPath {
    conflict_name_with(path, loser, owner, CONTENT_DIGITS[0])
}

/// Hex digits of the losing content in a conflict copy's name: a few, or, when a different
/// file already has that name (a person edited the copy, and the same version lost again),
/// more: the name is still the same on every box, and a copy is never written over.
const CONTENT_DIGITS: [usize; 2] = [6, 16];

/// The conflict name of `loser` that is free here or already holds it ([`conflict_name`],
/// else the one with more of the content's digits); the first, when neither is (the plan
/// then skips the path).
fn free_conflict_name(
    path: &RelPath,
    loser: &Version,
    owner: &str,
    local: &BTreeMap<RelPath, Version>,
) -> RelPath {
    let names = CONTENT_DIGITS.map(|digits| conflict_name_with(path, loser, owner, digits));
    let usable = |name: &RelPath| local.get(name).is_none_or(|held| held.same_content(loser));
    match names.iter().find(|name| usable(name)) {
        Some(name) => name.clone(),
        None => names[0].clone(),
    }
}

fn conflict_name_with(path: &RelPath, loser: &Version, owner: &str, digits: usize) -> RelPath {
    // The owner's ID by its first group, as people see boxes told apart in a list.
    let owner = owner.get(..SHORT_OWNER).unwrap_or(owner);
    let stamp = loser.mtime.0.format("%Y%m%d-%H%M%S");
    let name = path.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    // The content's first hex digits too: two different versions that lost in the same
    // second on the same box (a hub between two laptops) never share a name, and the same
    // version set aside on two boxes gets the same one.
    let content = match loser.blake3.as_deref().and_then(|h| h.get(..digits)) {
        Some(digits) => format!("-{digits}"),
        None => String::new(),
    };
    let file = format!("{stem}.sync-conflict-{stamp}-{owner}{content}{ext}");
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

/// Whether `path` is named as [`conflict_name`] names a conflict copy: so that a box that
/// receives one under that name (the peer set it aside first) says it is a conflict.
pub fn is_conflict_copy(path: &RelPath) -> bool {
    conflict_copy_owner(path).is_some()
}

/// Whether `path` is a conflict copy of a version of the box `owner`'s: the copy that the
/// peer makes of this box's losing version carries this box's id.
pub fn is_conflict_copy_of(path: &RelPath, owner: &str) -> bool {
    let owner = owner.get(..SHORT_OWNER).unwrap_or(owner);
    conflict_copy_owner(path) == Some(owner)
}

/// The owner's ID (its first group) in a name that [`conflict_name`] made.
fn conflict_copy_owner(path: &RelPath) -> Option<&str> {
    let name = path.file_name();
    // The last marker: a copy of a copy is the copy of the box that made it last.
    let at = name.rfind(".sync-conflict-")?;
    let rest = &name[at + ".sync-conflict-".len()..];
    let digits = |range: std::ops::Range<usize>| {
        rest.as_bytes()
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let owner = rest.get(16..16 + SHORT_OWNER)?;
    (digits(0..8)
        && rest.as_bytes().get(8) == Some(&b'-')
        && digits(9..15)
        && rest.as_bytes().get(15) == Some(&b'-')
        && owner
            .bytes()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)))
    .then_some(owner)
}

/// What to do about the entries in the peer's `entries` that this box has never seen:
/// absent here (`local`, nor `unknown`: unreadable), unknown to the record (neither agreed
/// nor deleted) and never held here since. For such a folder the table can only say
/// create it, and for such a file download it, so this needs no hashes. Folders come
/// first, in the peer's order: the files then land in folders that exist.
pub fn plan_early_pull(
    entries: &[ShareEntry],
    local: &BTreeMap<RelPath, Version>,
    unknown: &BTreeSet<RelPath>,
    record: &Record,
    ignore: &Ignore,
) -> Vec<Action> {
    let (mut folders, files): (Vec<Action>, Vec<Action>) = entries
        .iter()
        .filter(|entry| !ignore.ignores(&entry.name))
        .filter(|entry| {
            let name = &entry.name;
            !local.contains_key(name)
                && !unknown.contains(name)
                && !record.entries.contains_key(name)
                && !record.ours.contains_key(name)
        })
        .map(|entry| match entry.is_dir() {
            true => Action::CreateDir(entry.name.clone()),
            false => Action::Download {
                remote: entry.name.clone(),
                local: entry.name.clone(),
                version: Version {
                    dir: false,
                    blake3: None,
                    size: entry.size,
                    mtime: entry.mtime,
                    mode: entry.mode,
                },
                expect: Expect::Absent,
            },
        })
        .partition(|action| matches!(action, Action::CreateDir(_)));
    folders.extend(files);
    folders
}

/// What a round saw of both sides and the record. A round that sees what a round that
/// found nothing to do saw would find nothing either: it skips planning, so that an idle
/// pair costs a few short messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The version of this box's snapshot.
    pub here: String,
    /// The mark of the peer's last answer ([`crate::share::ChangeMark`]).
    pub peer: Option<crate::share::ChangeMark>,
    /// The record's revision.
    pub record: u64,
}

impl Seen {
    /// Whether a round that saw this may skip planning, after `quiet`, what the last round
    /// that found nothing to do saw (`None`: none since the listings were last lost).
    pub fn repeats(&self, quiet: Option<&Seen>) -> bool {
        quiet == Some(self)
    }
}

/// How many of the record's paths one side still holds: `in_sync` the record's paths
/// that sync may touch (those `left_out` leaves aside are not counted), `kept` those of
/// them the side holds. What appeared on the side since is not counted: one new file in a
/// folder that lost everything does not make it look whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kept {
    /// Record paths the side still holds.
    pub kept: usize,
    /// Record paths that count.
    pub in_sync: usize,
}

impl Kept {
    /// Counts the record's `paths` that a side `holds`, leaving out what `left_out` says.
    pub fn count<'p>(
        paths: impl Iterator<Item = &'p RelPath>,
        holds: impl Fn(&RelPath) -> bool,
        left_out: impl Fn(&RelPath) -> bool,
    ) -> Kept {
        let mut count = Kept::default();
        for path in paths.filter(|path| !left_out(path)) {
            count.in_sync += 1;
            count.kept += usize::from(holds(path));
        }
        count
    }

    /// Whether the side looks wiped (an unmounted disk, a folder emptied by mistake)
    /// rather than edited: it lost more than half of at least [`MASS_DELETE_GUARD`]
    /// paths, as rclone's `--max-delete` default. Taking it for deletions would delete all
    /// that on the other box.
    fn looks_wiped(self) -> bool {
        self.in_sync >= MASS_DELETE_GUARD && self.kept * 2 < self.in_sync
    }

    /// The paths lost.
    fn gone(self) -> usize {
        self.in_sync - self.kept
    }
}

/// The mass-delete guard on this box's side.
pub fn guard_here(count: Kept) -> Result<(), SyncError> {
    match count.looks_wiped() {
        true => Err(SyncError::WipedHere {
            gone: count.gone(),
            in_sync: count.in_sync,
        }),
        false => Ok(()),
    }
}

/// The mass-delete guard on the peer's side.
pub fn guard_peer(count: Kept) -> Result<(), SyncError> {
    match count.looks_wiped() {
        true => Err(SyncError::WipedThere {
            gone: count.gone(),
            in_sync: count.in_sync,
        }),
        false => Ok(()),
    }
}

/// A record with at least this many paths makes a side that lost more than half of them
/// suspicious: an unmounted disk, not a person who deleted them.
pub const MASS_DELETE_GUARD: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::BoxId;

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

    /// A rename on the peer (its old name deleted, a new name with the same content) is a
    /// rename here: no download, no deletion. Pairs go one to one, a file edited here is
    /// never moved, and a new name only moves onto a free name.
    #[test]
    fn a_rename_on_the_peer_is_a_move_here() {
        let v = file("big", 1);
        let p = run(
            &[("old", v.clone())],
            &[("d/new", v.clone())],
            &[("old", v.clone())],
        );
        assert_eq!(
            p.actions,
            vec![Action::Move {
                from: rel("old"),
                to: rel("d/new"),
                version: v.clone(),
                expect: v.expect(),
            }]
        );
        // Two copies deleted, one new name: one move, one deletion.
        let p = run(
            &[("a", v.clone()), ("b", v.clone())],
            &[("c", v.clone())],
            &[("a", v.clone()), ("b", v.clone())],
        );
        let moves = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Move { .. }))
            .count();
        let deletes = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::DeleteFile { .. }))
            .count();
        assert_eq!((moves, deletes, p.actions.len()), (1, 1, 2));
        // The old name edited here: the edit stays (the peer takes it), the new name is
        // downloaded.
        let p = run(
            &[("old", file("edited", 2))],
            &[("new", v.clone())],
            &[("old", v.clone())],
        );
        assert!(matches!(&p.actions[..], [Action::Download { local, .. }] if local == &rel("new")));
        // Another content under the new name: no move (the contents differ), a deletion and a
        // download as before.
        let w = file("other", 1);
        let p = run(
            &[("old", v.clone())],
            &[("new", w.clone())],
            &[("old", v.clone())],
        );
        assert!(matches!(
            &p.actions[..],
            [Action::Download { .. }, Action::DeleteFile { .. }]
        ));
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
        let copy = rel("d/a.sync-conflict-20251121-100140-cccc-theirs.txt");
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
        // A different file under that name is left alone: the longer name is taken.
        let longer = conflict_name_with(&rel("d/a.txt"), &theirs, "cccc", CONTENT_DIGITS[1]);
        let other = plan(
            &map(&[
                ("d/a.txt", theirs.clone()),
                (copy.as_str(), file("else", 7)),
            ]),
            &map(&[("d/a.txt", ours.clone())]),
            &map(&[("d/a.txt", old.clone())]),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &cccc,
        );
        assert!(
            other
                .actions
                .iter()
                .any(|a| matches!(a, Action::SetAside { to, .. } if to == &longer)),
            "{:?}",
            other.actions
        );
        // With that one taken too, the path is left alone, and said so.
        let other = plan(
            &map(&[
                ("d/a.txt", theirs.clone()),
                (copy.as_str(), file("else", 7)),
                (longer.as_str(), file("else again", 8)),
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

    /// The copy of a conflict, made on each box by its own action (one set its version
    /// aside, the other downloaded it under that name), was once held by both although no
    /// round saw both hold it, and then deleted on one box. Planning on the other box with
    /// no record of it took the copy for a file new here ("the peer will take ours") and
    /// kept it forever; with the record the notices now give, the deletion is taken.
    #[test]
    fn a_deleted_conflict_copy_leaves_the_box_that_knows_both_held_it() {
        let copy = "a.sync-conflict-20261202-062559-CCCCCCC.txt";
        let v = file("theirs", 1);
        let p = run(&[(copy, v.clone())], &[], &[]);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        let p = run(&[(copy, v.clone())], &[], &[(copy, v.clone())]);
        assert_eq!(
            p.actions,
            vec![Action::DeleteFile {
                path: rel(copy),
                expect: v.expect()
            }]
        );
    }

    /// The box that downloaded the peer's losing version under its conflict name and then
    /// deleted that copy, before any round saw both hold it, took the peer's copy for a new
    /// file and downloaded it back; remembered as held here, it is the peer lagging.
    #[test]
    fn a_conflict_copy_deleted_here_is_not_taken_back() {
        let copy = "a.sync-conflict-20261202-062559-CCCCCCC.txt";
        let v = file("theirs", 1);
        let p = run(&[], &[(copy, v.clone())], &[]);
        assert!(matches!(&p.actions[..], [Action::Download { .. }]));
        let ours = [(rel(copy), vec![v.clone()])].into();
        let p = plan(
            &BTreeMap::new(),
            &map(&[(copy, v)]),
            &BTreeMap::new(),
            &ours,
            &BTreeSet::new(),
            &SIDES,
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
    }

    /// A folder created here for the peer's, then removed there before a round saw both
    /// hold it: without a record it stays (or comes back on the peer); recorded as agreed
    /// when it was created, its removal is taken.
    #[test]
    fn a_folder_removed_there_goes_once_recorded() {
        let p = run(&[("empty", dir())], &[], &[]);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        let p = run(&[("empty", dir())], &[], &[("empty", dir())]);
        assert_eq!(p.actions, vec![Action::DeleteDir(rel("empty"))]);
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

    /// Each side is classified against the record: a directory's mtime is no change, a
    /// file's is; absent with no record is unchanged.
    #[test]
    fn a_side_is_classified_against_the_record() {
        let v = file("x", 1);
        let touched = file("x", 2);
        assert_eq!(Change::of(None, None), Change::Unchanged(None));
        assert_eq!(Change::of(Some(&v), Some(&v)), Change::Unchanged(Some(&v)));
        assert_eq!(Change::of(Some(&v), None), Change::Created(&v));
        assert_eq!(
            Change::of(Some(&touched), Some(&v)),
            Change::Edited(&touched)
        );
        assert_eq!(Change::of(None, Some(&v)), Change::Deleted);
        let mut later = dir();
        later.mtime = touched.mtime;
        assert_eq!(
            Change::of(Some(&later), Some(&dir())),
            Change::Unchanged(Some(&later))
        );
    }

    /// On the peer, a version this box held since the record is no change (the peer lags);
    /// any other is classified as here.
    #[test]
    fn a_peer_holding_our_version_is_unchanged() {
        let base = file("base", 1);
        let held = file("held", 2);
        let other = file("other", 3);
        let ours = [held.clone()];
        assert_eq!(
            Change::of_peer(Some(&held), Some(&base), &ours),
            Change::Unchanged(Some(&held))
        );
        assert_eq!(
            Change::of_peer(Some(&held), None, &ours),
            Change::Unchanged(Some(&held))
        );
        assert_eq!(
            Change::of_peer(Some(&other), Some(&base), &ours),
            Change::Edited(&other)
        );
        assert_eq!(Change::of_peer(None, Some(&base), &ours), Change::Deleted);
    }

    /// Row 3: both changed only the metadata; the smaller box id's wins on both boxes.
    #[test]
    fn metadata_tie_goes_to_the_smaller_box_id() {
        let old = file("x", 1);
        let (ours, theirs) = (file("x", 2), file("x", 3));
        let p = run(
            &[("a", ours.clone())],
            &[("a", theirs.clone())],
            &[("a", old.clone())],
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert!(p.conflicts.is_empty());
        let other = plan(
            &map(&[("a", theirs.clone())]),
            &map(&[("a", ours.clone())]),
            &map(&[("a", old)]),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &Sides {
                local_id: "cccc",
                remote_id: "bbbb",
            },
        );
        assert_eq!(
            other.actions,
            vec![Action::SetMetadata {
                path: rel("a"),
                version: ours,
                expect: theirs.expect(),
            }]
        );
    }

    /// A file on one box against a directory on the other is left alone, and said why.
    #[test]
    fn a_file_against_a_directory_is_skipped() {
        let p = run(&[("a", file("x", 1))], &[("a", dir())], &[]);
        assert!(p.actions.is_empty());
        assert_eq!(p.skipped, vec![(rel("a"), Skip::KindsDiffer)]);
    }

    /// The mass-delete guards stop a round for a side that lost more than half of at
    /// least [`MASS_DELETE_GUARD`] record paths, each with its own kind; what appeared
    /// since does not count, nor do paths left aside.
    #[test]
    fn mass_delete_guards() {
        let many = MASS_DELETE_GUARD;
        let kept = |kept, in_sync| Kept { kept, in_sync };
        assert!(matches!(
            guard_here(kept(0, many)),
            Err(SyncError::WipedHere { gone, in_sync }) if gone == many && in_sync == many
        ));
        assert!(matches!(
            guard_peer(kept(4, many)),
            Err(SyncError::WipedThere { gone: 6, .. })
        ));
        assert!(guard_here(kept(0, many - 1)).is_ok());
        assert!(guard_peer(kept(0, many - 1)).is_ok());
        assert!(guard_here(kept(5, many)).is_ok());
        assert!(guard_peer(kept(500, 1000)).is_ok());
        assert!(guard_peer(kept(499, 1000)).is_err());
        // One new file in an emptied folder does not count; paths left aside do not either.
        let record: Vec<RelPath> = (0..20).map(|n| rel(&format!("f{n}"))).collect();
        let here: BTreeSet<RelPath> = [rel("new.txt")].into();
        let count = Kept::count(record.iter(), |p| here.contains(p), |_| false);
        assert_eq!(count, kept(0, 20));
        assert!(guard_here(count).is_err());
        let count = Kept::count(
            record.iter(),
            |_| false,
            |p| !["f0", "f1", "f2"].contains(&p.as_str()),
        );
        assert_eq!(count, kept(0, 3));
        assert!(guard_here(count).is_ok());
    }

    /// A round may skip planning only when it sees exactly what a quiet round saw: the
    /// same folder here, the same changes there and the same record.
    #[test]
    fn the_quiet_check_needs_everything_unchanged() {
        let seen = Seen {
            here: "h1".into(),
            peer: Some(crate::share::ChangeMark { epoch: 1, seq: 9 }),
            record: 4,
        };
        assert!(seen.repeats(Some(&seen.clone())));
        assert!(!seen.repeats(None));
        for changed in [
            Seen {
                here: "h2".into(),
                ..seen.clone()
            },
            Seen {
                peer: Some(crate::share::ChangeMark { epoch: 1, seq: 10 }),
                ..seen.clone()
            },
            Seen {
                peer: Some(crate::share::ChangeMark { epoch: 2, seq: 9 }),
                ..seen.clone()
            },
            Seen {
                record: 5,
                ..seen.clone()
            },
        ] {
            assert!(!changed.repeats(Some(&seen)), "{changed:?}");
        }
    }

    /// A plan is quiet only with nothing to do, no conflict, nothing skipped and nothing
    /// unreadable.
    #[test]
    fn quiet_plans() {
        let none = BTreeSet::new();
        assert!(run(&[("a", file("x", 1))], &[("a", file("x", 1))], &[]).is_quiet(&none));
        assert!(!run(&[], &[("a", file("x", 1))], &[]).is_quiet(&none));
        assert!(!run(&[("a", file("x", 1))], &[("a", dir())], &[]).is_quiet(&none));
        let unknown: BTreeSet<RelPath> = [rel("busy")].into();
        assert!(!Plan::default().is_quiet(&unknown));
        assert!(Plan::default().is_quiet(&none));
    }

    fn entry(name: &str) -> ShareEntry {
        ShareEntry {
            name: rel(name),
            size: 3,
            mtime: Timestamp(chrono::DateTime::from_timestamp(1, 0).unwrap()),
            file_type: "text/plain".into(),
            mode: 0o644,
        }
    }

    /// Only folders and files this box has never seen are taken before the hashes are
    /// known: not a file it has (or cannot read), nor one the record knows (a deletion here
    /// not yet taken by the peer must not bring it back), nor one it held since, nor an
    /// ignored one.
    #[test]
    fn only_never_seen_files_are_pulled_early() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".boxsyncignore"), "*.log\n").unwrap();
        let ignore = Ignore::load(dir.path());
        let mut record = Record::load(dir.path(), &BoxId::from_public_key(b"peer")).unwrap();
        record.update([(rel("deleted-here.txt"), Some(file("x", 1)))]);
        record.add_ours(&rel("held-here.txt"), file("x", 1));
        let versions: BTreeMap<RelPath, Version> =
            [(rel("have.txt"), file("x", 1))].into_iter().collect();
        let unknown: BTreeSet<RelPath> = [rel("busy.txt")].into_iter().collect();
        let mut folder = entry("sub");
        folder.file_type = "directory".into();
        let listed = [
            "new.txt",
            "have.txt",
            "busy.txt",
            "deleted-here.txt",
            "held-here.txt",
            "debug.log",
        ]
        .map(entry);
        let mut entries = vec![folder];
        entries.extend(listed);
        let early = plan_early_pull(&entries, &versions, &unknown, &record, &ignore);
        assert_eq!(early.len(), 2, "{early:?}");
        assert_eq!(early[0], Action::CreateDir(rel("sub")));
        assert!(matches!(
            &early[1],
            Action::Download { remote, local, expect: Expect::Absent, .. }
                if remote == &rel("new.txt") && local == &rel("new.txt")
        ));
    }

    /// Conflict names keep the extension and work without one.
    /// A conflict copy's name held by another content (a person edited the copy, and the
    /// same version lost again) is never written over: the name with more of the content's
    /// digits is taken instead, the same on every box.
    #[test]
    fn a_taken_conflict_name_gives_way_to_a_longer_one() {
        let loser = Version {
            blake3: Some("0123456789abcdef0123".into()),
            ..file("x", 0)
        };
        let path = rel("a.txt");
        let short = conflict_name(&path, &loser, "ABCDEFG");
        let mut local = BTreeMap::new();
        assert_eq!(free_conflict_name(&path, &loser, "ABCDEFG", &local), short);
        local.insert(short.clone(), loser.clone());
        assert_eq!(free_conflict_name(&path, &loser, "ABCDEFG", &local), short);
        local.insert(short.clone(), file("edited", 0));
        let long = free_conflict_name(&path, &loser, "ABCDEFG", &local);
        assert_ne!(long, short);
        assert!(is_conflict_copy_of(&long, "ABCDEFG"), "{long}");
        local.insert(long.clone(), file("edited too", 0));
        assert_eq!(free_conflict_name(&path, &loser, "ABCDEFG", &local), short);
    }

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

    /// A conflict copy's name is recognised as one, whatever the file; other names are not.
    #[test]
    fn conflict_copies_are_recognised_by_name() {
        let version = Version::test_file("x", 1_700_000_000);
        for name in ["notes/a.txt", "a", ".hidden", "dir/archive.tar.gz"] {
            let path = RelPath::parse(name).unwrap();
            let owner = crate::types::BoxId::from_public_key(b"owner");
            let copy = conflict_name(&path, &version, owner.as_str());
            assert!(is_conflict_copy(&copy), "{copy}");
            assert!(!is_conflict_copy(&path), "{path}");
        }
        let owner = crate::types::BoxId::from_public_key(b"owner");
        let other = crate::types::BoxId::from_public_key(b"other");
        let copy = conflict_name(&rel("a.txt"), &version, owner.as_str());
        assert!(is_conflict_copy_of(&copy, owner.as_str()), "{copy}");
        assert!(!is_conflict_copy_of(&copy, other.as_str()), "{copy}");
        assert!(!is_conflict_copy_of(&rel("a.txt"), owner.as_str()));
        for name in [
            "a.sync-conflict-.txt",
            "a.sync-conflict-2023111-221320-0123456789abcdef.txt",
            "a.sync-conflict-20231114-221320-0123456789abcdeg.txt",
        ] {
            assert!(!is_conflict_copy(&RelPath::parse(name).unwrap()), "{name}");
        }
    }

    /// Planning only some paths gives, for them, what planning every path gives, as long as
    /// they include every path that plan acts on, reports or skips: the paths a round does
    /// not plan (as the record has them on both sides, or unchanged since a plan that did
    /// nothing there) change nothing. Seeded random folders: every row of the table,
    /// conflicts (and their names taken), kinds that differ, moves, held versions.
    #[test]
    fn planning_some_paths_agrees_with_planning_all() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x91a7);
        let pool = [
            None,
            Some(file("a", 1)),
            Some(file("a", 2)),
            Some(file("b", 1)),
            Some(file("c", 3)),
            Some(dir()),
        ];
        for trial in 0..300 {
            let (mut local, mut remote, mut record) =
                (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
            let mut ours: BTreeMap<RelPath, Vec<Version>> = BTreeMap::new();
            let mut unknown = BTreeSet::new();
            for n in 0..40 {
                let path = rel(&format!("d{}/f{n}.txt", n % 3));
                let pick =
                    |rng: &mut rand::rngs::StdRng| pool[rng.random_range(0..pool.len())].clone();
                // Mostly in sync, as folders are; the rest anything.
                let base = pick(&mut rng);
                let (l, r, s) = match rng.random_range(0..10) {
                    0..6 => (base.clone(), base.clone(), base),
                    _ => (pick(&mut rng), pick(&mut rng), pick(&mut rng)),
                };
                for (side, version) in [(&mut local, l), (&mut remote, r), (&mut record, s)] {
                    if let Some(version) = version {
                        side.insert(path.clone(), version);
                    }
                }
                if let Some(held) = pick(&mut rng).filter(|_| rng.random_range(0..8) == 0) {
                    ours.entry(path.clone()).or_default().push(held);
                }
                if rng.random_range(0..30) == 0 {
                    unknown.insert(path);
                }
            }
            // A conflict copy's name already taken here, now and then.
            if let Some((path, version)) = remote.iter().next().filter(|_| trial % 5 == 0) {
                let taken = conflict_name(path, version, SIDES.remote_id);
                local.insert(taken, file("other", 9));
            }
            let all = plan(&local, &remote, &record, &ours, &unknown, &SIDES);
            let mut some: BTreeSet<RelPath> = all
                .actions
                .iter()
                .flat_map(|action| match action {
                    Action::Download { remote, local, .. } => vec![remote.clone(), local.clone()],
                    Action::SetAside { path, to, .. } => vec![path.clone(), to.clone()],
                    Action::Move { from, to, .. } => vec![from.clone(), to.clone()],
                    Action::DeleteFile { path, .. } | Action::SetMetadata { path, .. } => {
                        vec![path.clone()]
                    }
                    Action::DeleteDir(path) | Action::CreateDir(path) => vec![path.clone()],
                })
                .collect();
            some.extend(all.conflicts.iter().map(|(path, _)| path.clone()));
            some.extend(all.skipped.iter().map(|(path, _)| path.clone()));
            // And some of the rest, as a round plans more than it must.
            some.extend(
                local
                    .keys()
                    .chain(remote.keys())
                    .filter(|_| rng.random_range(0..4) == 0)
                    .cloned(),
            );
            let state = State {
                local: &local,
                remote: &|path: &RelPath| remote.get(path),
                record: &record,
                ours: &ours,
                left_alone: &|path: &RelPath| unknown.contains(path),
            };
            let part = plan_paths(&some, &state, &SIDES);
            assert_eq!(part.actions, all.actions, "trial {trial}");
            assert_eq!(part.conflicts, all.conflicts, "trial {trial}");
            assert_eq!(part.skipped, all.skipped, "trial {trial}");
            let agreed: BTreeMap<RelPath, Option<Version>> = all
                .agreed
                .into_iter()
                .filter(|(path, _)| some.contains(path))
                .collect();
            assert_eq!(part.agreed, agreed, "trial {trial}");
        }
    }
}
