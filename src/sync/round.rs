//! One sync round with one peer: read both sides (index and hashes, the same operations the
//! shell offers), let [`super::plan`] decide (the guards, the early pull, the quiet check
//! and the plan itself are its pure functions), carry that out, and record what both now
//! agree on.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::{StreamExt, stream};

use super::backoff::RoomBackoff;
use super::plan::{self, Action, Seen, Sides, Version};
use super::record::{Record, Touched};
use super::transfers::Transfers;
use super::{Conflict, PeerStatus, SyncError};
use crate::local::LocalBox;
use crate::peer::{Peer, PeerError};
use crate::protocol::ErrorKind;
use crate::requests::changes::{Change, ChangesAnswer};
use crate::requests::inbox::Noted;
use crate::requests::listing::MAX_LISTED;
use crate::requests::notices::Notices;
use crate::share::Ignore;
use crate::share::filter::IndexFilter;
use crate::share::{
    ChangeMark, ChangesSince, DigestSet, Entry as ShareEntry, FileHash, FileMove, InstallMeta,
    RelPath, ShareError, Snapshot,
};
use crate::time::Timestamp;
use crate::transfer::{Downloaded, Landing, TransferError, Wanted};
use crate::types::{Agreement, BoxId, FileVersion, Transport};

/// Downloads (single files or batches) in flight at once within a round.
const PARALLEL_DOWNLOADS: usize = 4;

/// Files up to this size are downloaded in batches over TCP; larger ones alone.
const SMALL_FILE: u64 = 1024 * 1024;

/// Most files in one batch.
const BATCH_FILES: usize = 1024;

/// Most bytes (as planned) in one batch, so that a batch's flush stays short.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// What one of the parallel workers of a round carries out.
enum Unit {
    /// One action on its own.
    One(Action),
    /// Downloads of small files, in one request; each with what the peer is asked for.
    Batch(Vec<(Action, Wanted)>),
    /// Folders to create (the paths of `Action::CreateDir`s), all in one blocking call.
    Folders(Vec<RelPath>),
    /// Files to rename as the peer did (`Action::Move`s), all in one blocking call.
    Moves(Vec<Action>),
}

/// Splits a group of actions into units: over TCP, small-file downloads go in batches;
/// folders to create together; everything else alone.
fn units(group: Vec<Action>, transport: Transport) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut batch: Vec<(Action, Wanted)> = Vec::new();
    let mut batch_bytes = 0;
    let mut folders = Vec::new();
    let mut moves = Vec::new();
    for action in group {
        let action = match action {
            Action::CreateDir(path) => {
                folders.push(path);
                continue;
            }
            action @ Action::Move { .. } => {
                moves.push(action);
                continue;
            }
            action => action,
        };
        let small = match &action {
            Action::Download {
                remote,
                local,
                version,
                expect,
            } if transport == Transport::Tcp && version.size <= SMALL_FILE => Some((
                version.size,
                Wanted {
                    name: remote.clone(),
                    landing: Landing {
                        name: local.clone(),
                        expect: expect.clone(),
                        digests: DigestSet::Blake3,
                    },
                },
            )),
            _ => None,
        };
        let Some((size, wanted)) = small else {
            units.push(Unit::One(action));
            continue;
        };
        if !batch.is_empty() && (batch.len() >= BATCH_FILES || batch_bytes + size > BATCH_BYTES) {
            units.push(Unit::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += size;
        batch.push((action, wanted));
    }
    if !batch.is_empty() {
        units.push(Unit::Batch(batch));
    }
    if !moves.is_empty() {
        units.insert(0, Unit::Moves(moves));
    }
    if !folders.is_empty() {
        // Listed first, so started first: files of the group usually land in folders that
        // exist (and a file's install makes its own folders anyway).
        units.insert(0, Unit::Folders(folders));
    }
    units
}

/// This box's side of a round, read once per round and shared by all peers.
pub struct LocalState {
    /// Every path sync may touch, with its version.
    pub versions: BTreeMap<RelPath, Version>,
    /// Paths that exist but could not be read this round.
    pub unknown: BTreeSet<RelPath>,
    /// The version of the snapshot read (equal versions: the same folder).
    pub snapshot_version: String,
    /// The snapshot itself, whose change numbers tell a round what changed since the
    /// one it last planned against (`None`: not known, every round plans every path).
    pub snapshot: Option<Arc<Snapshot>>,
    /// The ignore rules it was read with.
    pub rules: Vec<String>,
}

impl LocalState {
    /// Reads this box's folder: afresh when `rescan` (the periodic rescan, which catches
    /// whatever the watcher missed), else from the latest snapshot if the watcher vouches
    /// for it. Returns `previous` itself when the folder is still the one it describes
    /// (the ignore rules live in the folder, so they are the same too).
    pub async fn read(
        local: &Arc<LocalBox>,
        ignore: &Ignore,
        rescan: bool,
        previous: Option<Arc<LocalState>>,
    ) -> Result<Arc<LocalState>, SyncError> {
        let snapshot = if rescan {
            local.share.snapshot().await
        } else {
            local.share.recent_snapshot().await
        }
        .map_err(SyncError::ReadFolder)?;
        let previous = match previous {
            Some(previous) if previous.snapshot_version == snapshot.version() => {
                return Ok(previous);
            }
            previous => previous.filter(|p| p.rules == ignore.lines()),
        };
        // From the read before, when its snapshot's numbers say what changed since: only
        // the changed paths are looked at (a change in a folder of a million files costs
        // a copy of the map, not a million checks against the ignore rules).
        let since = previous.as_ref().and_then(|previous| {
            let mark = previous.snapshot.as_ref()?.mark;
            match snapshot.changes_since(Some(mark)) {
                ChangesSince::Whole => None,
                ChangesSince::Later { present, removed } => {
                    Some((Arc::clone(previous), present, removed))
                }
            }
        });
        let mut state = LocalState {
            versions: BTreeMap::new(),
            unknown: BTreeSet::new(),
            snapshot_version: snapshot.version(),
            snapshot: None,
            rules: ignore.lines().to_vec(),
        };
        match since {
            Some((previous, present, removed)) => {
                state.versions = previous.versions.clone();
                state.unknown = previous.unknown.clone();
                for path in removed {
                    state.versions.remove(path);
                    state.unknown.remove(path);
                }
                for (entry, hash) in present {
                    state.versions.remove(&entry.name);
                    state.unknown.remove(&entry.name);
                    if !ignore.ignores(&entry.name) {
                        state.take(entry, hash.as_ref());
                    }
                }
            }
            None => {
                for (entry, hash) in snapshot.items.iter() {
                    if !ignore.ignores(&entry.name) {
                        state.take(entry, hash.as_ref());
                    }
                }
            }
        }
        state.snapshot = Some(snapshot);
        Ok(Arc::new(state))
    }

    /// Adds an entry of the folder: its version, or unknown (a file not hashed).
    fn take(&mut self, entry: &ShareEntry, hash: Option<&FileHash>) {
        match version(entry, hash) {
            Some(version) => {
                self.versions.insert(entry.name.clone(), version);
            }
            None => {
                self.unknown.insert(entry.name.clone());
            }
        }
    }
}

/// The version of an entry, or `None` for a file whose hash is not known.
fn version(entry: &ShareEntry, hash: Option<&FileHash>) -> Option<Version> {
    if entry.is_dir() {
        return Some(Version {
            dir: true,
            blake3: None,
            size: 0,
            mtime: entry.mtime,
            mode: entry.mode,
        });
    }
    let hash = hash?;
    Some(Version {
        dir: false,
        blake3: Some(hash.blake3.clone()),
        size: hash.size,
        mtime: hash.mtime,
        mode: entry.mode,
    })
}

/// What a round with one peer did.
#[derive(Debug, Default)]
pub struct RoundReport {
    /// Actions carried out.
    pub done: usize,
    /// Files downloaded.
    pub downloaded: usize,
    /// Files deleted here.
    pub deleted: usize,
    /// Files renamed or moved here as on the peer.
    pub moved: usize,
    /// Actions that failed (they are retried next round).
    pub failed: usize,
    /// Conflicts found: the path and its conflict copy.
    pub conflicts: Vec<(RelPath, RelPath)>,
    /// What went wrong with single paths (the round itself went through).
    pub errors: Vec<SyncError>,
    /// Short descriptions of what changed here, for the activity feed.
    pub changes: Vec<String>,
    /// Bytes of the files received that came over the network.
    pub fetched: u64,
    /// Bytes of the files received found on this box instead (unchanged blocks, the same
    /// content under another name, an interrupted download's verified blocks).
    pub reused: u64,
}

/// The peer's folder as its answers to `changes` describe it: the first answer lists it
/// whole, each later one only what changed since, so a round in which nothing changed
/// moves almost nothing and plans nothing.
#[derive(Debug, Default)]
pub struct PeerView {
    /// The mark of the last answer applied (`None`: none yet, or the view was lost).
    mark: Option<ChangeMark>,
    /// Every path of the peer's folder with its version (`None`: a file the peer could
    /// not hash, unknown this round), before the ignore rules.
    entries: BTreeMap<RelPath, Option<Version>>,
    /// What a round that found nothing to do saw, the record's revision after it.
    quiet: Option<Seen>,
    /// The peer's own ignore rules, from its last answer (`None`: it sent none): paths it
    /// keeps to itself, which this box leaves alone too.
    rules: Option<Arc<Ignore>>,
    /// The token of the latest `sync allow-deletes` typed on the peer, from its last
    /// answer, and the one this box last let through its guard (or found already there
    /// when the view began: a confirmation older than this view is not taken).
    deletions_meant: (Option<u64>, Option<u64>),
    /// The paths of `entries` without a version (files the peer could not hash).
    unknown: BTreeSet<RelPath>,
    /// The paths the answers named since the last plan (`None`: all, a whole answer or
    /// new rules came).
    changed: Option<BTreeSet<RelPath>>,
    /// What the last plan covered (`None`: no plan yet, or one that did not finish).
    planned: Option<Planned>,
}

/// What a round's plan covered: the next plans only what changed since, with what this one
/// left unsettled.
#[derive(Debug)]
struct Planned {
    /// The change mark of this box's snapshot it planned against.
    here: ChangeMark,
    /// This box's ignore rules then.
    rules: Vec<String>,
    /// Paths it did not settle (actions, conflicts, paths it skipped): planned again.
    unsettled: BTreeSet<RelPath>,
}

/// Most paths the view notes as changed since the last plan; beyond it, the next plans
/// every path.
const MAX_CHANGED: usize = 200_000;

impl PeerView {
    /// Takes in one answer to `changes`.
    fn apply(&mut self, answer: ChangesAnswer) -> Result<(), &'static str> {
        if answer.whole {
            self.entries.clear();
            self.unknown.clear();
            self.changed = None;
        } else if self.mark.is_none() {
            return Err("changes since a mark this box never sent");
        }
        for change in answer.changes {
            let path = match change {
                Change::Present { entry, blake3 } => {
                    let version = remote_version(&entry, blake3);
                    match version {
                        Some(_) => self.unknown.remove(&entry.name),
                        None => self.unknown.insert(entry.name.clone()),
                    };
                    self.entries.insert(entry.name.clone(), version);
                    entry.name
                }
                Change::Removed { removed } => {
                    self.entries.remove(&removed);
                    self.unknown.remove(&removed);
                    removed
                }
            };
            if let Some(changed) = &mut self.changed {
                changed.insert(path);
                if changed.len() > MAX_CHANGED {
                    self.changed = None;
                }
            }
        }
        // Each answer is bounded; so is what they add up to.
        if self.entries.len() > MAX_LISTED {
            return Err("the peer's changes add up to more paths than a folder may hold");
        }
        if self.mark.is_none() {
            self.deletions_meant.1 = answer.deletions_meant;
        }
        self.deletions_meant.0 = answer.deletions_meant;
        self.mark = Some(answer.mark);
        let same = match &self.rules {
            Some(rules) => rules.lines() == answer.ignored.as_slice(),
            None => answer.ignored.is_empty(),
        };
        if !same {
            self.rules =
                (!answer.ignored.is_empty()).then(|| Arc::new(Ignore::from_peer(&answer.ignored)));
            self.changed = None;
        }
        Ok(())
    }

    /// What to plan this round: the paths that changed here (`here`), on the peer (its
    /// answers) or in the record (`touched`) since the last plan, those it left unsettled,
    /// and those either side could not read; or why every path must be planned (nothing
    /// of that is known, or this box's `rules` changed).
    fn candidates(
        &self,
        here: &LocalState,
        touched: Touched,
        rules: &[String],
    ) -> Result<BTreeSet<RelPath>, &'static str> {
        let planned = self
            .planned
            .as_ref()
            .ok_or("no plan finished since the view began")?;
        let changed = self
            .changed
            .as_ref()
            .ok_or("the peer sent a whole listing, new rules or too many changes")?;
        let Touched::Paths(mut paths) = touched else {
            return Err("the record changed too much since it was loaded");
        };
        if planned.rules != rules {
            return Err("this box's ignore rules changed");
        }
        let snapshot = here.snapshot.as_ref().ok_or("no snapshot")?;
        match snapshot.changes_since(Some(planned.here)) {
            ChangesSince::Whole => {
                return Err("this folder's changes since the plan are not known");
            }
            ChangesSince::Later { present, removed } => {
                paths.extend(present.into_iter().map(|(entry, _)| entry.name.clone()));
                paths.extend(removed.into_iter().cloned());
            }
        }
        paths.extend(changed.iter().cloned());
        paths.extend(planned.unsettled.iter().cloned());
        paths.extend(here.unknown.iter().cloned());
        paths.extend(self.unknown.iter().cloned());
        Ok(paths)
    }

    /// Whether a person on the peer meant the deletions since this box last looked: its
    /// guard lets them through once.
    fn take_deletions_meant(&mut self) -> bool {
        let (told, taken) = self.deletions_meant;
        self.deletions_meant.1 = told;
        told.is_some() && told != taken
    }

    /// Whether the peer keeps `path` to itself (its ignore rules match it).
    fn peer_ignores(&self, path: &RelPath) -> bool {
        self.rules.as_ref().is_some_and(|rules| rules.ignores(path))
    }
}

/// The record's paths this box still holds, for the mass-delete guard: of those neither
/// box keeps to itself.
/// `versions` is this box's side as the guard must see it: as read at the start of the
/// round, with what the round pulled since (the record already counts those as in sync).
fn kept_here(
    record: &Record,
    versions: &BTreeMap<RelPath, Version>,
    unknown: &BTreeSet<RelPath>,
    ignore: &Ignore,
    view: &PeerView,
) -> plan::Kept {
    plan::Kept::count(
        record.entries.keys(),
        |path| versions.contains_key(path) || unknown.contains(path),
        |path| ignore.ignores(path) || view.peer_ignores(path),
    )
}

/// Asks the peer what changed in its folder since `view` last heard, and takes it in.
async fn refresh_view(peer: &Peer, view: &mut PeerView) -> Result<(), PeerError> {
    let answer = peer.changes(view.mark).await?;
    view.apply(answer).map_err(|detail| PeerError::Protocol {
        addr: peer.addr().to_string(),
        detail: detail.to_string(),
    })
}

/// The version of an entry of a peer's answer (`None` for a file without its hash).
fn remote_version(entry: &ShareEntry, blake3: Option<String>) -> Option<Version> {
    if entry.is_dir() {
        return version(entry, None);
    }
    Some(Version {
        dir: false,
        blake3: Some(blake3?.into()),
        size: entry.size,
        mtime: entry.mtime,
        mode: entry.mode,
    })
}

/// A successful action's effect on the record.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// None: the boxes do not hold the same yet.
    Nothing,
    /// Both boxes now hold this state of the path (`None`: both lack it).
    Agreed(RelPath, Option<Version>),
    /// This box now holds this version under a conflict copy's name, which the peer holds
    /// or is about to hold too: ours since the record (so that the peer found holding it
    /// lags behind), not yet agreed (the peer may not have made its copy yet).
    Held(RelPath, Version),
    /// A file moved as on the peer: both boxes lack its old name and hold the version of
    /// its new one.
    Moved {
        /// The old name, which both lack.
        from: RelPath,
        /// The new name.
        to: RelPath,
        /// The version both hold there.
        version: Version,
    },
}

/// Each action of a group with its outcome.
type Outcomes = Vec<(Action, Result<Settled, SyncError>)>;

/// This box as a round sees it: the box, and what its server learnt for sync.
pub struct ThisBox<'a> {
    /// The box.
    pub local: &'a Arc<LocalBox>,
    /// Peers' notices and what was served to them.
    pub notices: &'a Notices,
    /// Where the round's downloads show while they run.
    pub transfers: &'a Arc<Transfers>,
    /// Whether a person waived the mass-delete guards for this round (`sync
    /// allow-deletes`): the deletions they stopped are meant.
    pub waive_guard: bool,
}

/// What a peer's rounds carry from one to the next, lent to one round.
pub struct Kept<'a> {
    /// Sync records by peer box id.
    pub records: &'a mut HashMap<BoxId, Record>,
    /// What the peer's folder looked like at its last answers.
    pub view: &'a mut PeerView,
    /// Its files that did not fit here lately.
    pub room: &'a mut RoomBackoff,
}

/// Runs one round against `peer`: the decisions are [`plan`]'s; this carries them out.
pub async fn sync_with(
    this: ThisBox<'_>,
    here: &LocalState,
    peer: &Peer,
    transport: Transport,
    ignore: &Ignore,
    kept: Kept<'_>,
) -> Result<RoundReport, SyncError> {
    let ThisBox {
        local,
        notices,
        transfers,
        waive_guard,
    } = this;
    let Kept {
        records,
        view,
        room,
    } = kept;
    // Notices from the peer are taken before its folder is read, so that the folder as read
    // is at least as new as every notice applied this round.
    let peer_id = peer.id();
    if peer_id == &local.id {
        return Err(SyncError::SelfPeer);
    }
    let (installed, served) = (
        notices.take_installed(peer_id),
        notices.take_served(peer_id),
    );
    // On first contact (this process has no listing of the peer yet), the folders and files
    // the peer has and this box has never seen are taken at once, from a plain index that
    // costs the peer no hashing: a box joining a big folder starts receiving at once instead
    // of waiting for the peer to hash everything. The sender hashes each file as it sends it
    // (or takes the hash its own rescan is computing).
    let early_index = match view.mark.is_none() {
        true => Some(peer.index(&IndexFilter::Longlist).await?),
        false => None,
    };
    let record = match records.entry(peer_id.clone()) {
        Entry::Occupied(cached) => cached.into_mut(),
        Entry::Vacant(slot) => slot.insert(
            off_the_runtime(|| Record::load(&local.share.state_dir(), peer_id))
                .map_err(SyncError::LoadRecord)?,
        ),
    };
    // What the peer installed from us, both boxes held: agreed (oldest first, so that the
    // latest wins); what it removed as this box had, both lack (see `take_notice`). A
    // conflict copy the peer made of our version, though, both hold only once this box
    // holds it too (set it aside, now or later): then agreed, and confirmed back, for the
    // peer, which made it under a name not its own, records no agreement. Confirmed before
    // anything else this round: the peer takes notices in the order they come, and what
    // this round agrees on later about the same path (a download of the peer's edit of the
    // copy, say) must come after, not be undone by it.
    let held = held_since(record, &installed, &served);
    let mut confirmations: Vec<FileVersion> = Vec::new();
    for noted in installed {
        if record.applied(noted.epoch, noted.n) {
            continue;
        }
        record.mark_applied(noted.epoch, noted.n);
        let this = Holding {
            id: local.id.as_str(),
            here,
            held: &held,
        };
        confirmations.extend(take_notice(record, noted.version, &this));
    }
    record.owe(confirmations.into_iter().map(Agreement::Holds));
    for served in served {
        let name = served.name.clone();
        record.add_ours(&name, Version::from(&served));
    }
    // What an earlier round was installing when it stopped short of saving the record (a
    // crash) and the folder holds: agreed, as it would have been, and owed to the peer.
    if !record.landing.is_empty() {
        let landed = record.settle_landing(&here.versions);
        let owed: Vec<Agreement> = landed
            .iter()
            .filter_map(|(path, version)| file_version(path, version))
            .map(Agreement::Holds)
            .collect();
        record.owe(owed);
    }
    // Confirmations a failure kept from the peer go first.
    if !record.unconfirmed.is_empty() {
        let (taken, failed) = peer.confirm_counted(record.unconfirmed.clone()).await;
        record.paid_first(taken);
        match failed {
            None => {}
            // The peer cannot keep more now (its inbox is full of this box's notices until
            // its own round with this box applies them, which may be waiting on this
            // round's): the rest stay owed, and the round goes on, so that this box applies
            // and clears its own inbox. Two boxes that stopped here both waited for good.
            Some(PeerError::Remote {
                kind: ErrorKind::Unavailable | ErrorKind::Internal,
                message,
            }) => {
                tracing::debug!(peer = peer.addr(), owed = record.unconfirmed.len(), %message, "the peer keeps no more confirmations now; the rest wait");
            }
            Some(e) => return Err(e.into()),
        }
    }
    let owed = Owed::default();
    let moved = Moved::default();
    let pull = Pull {
        local,
        peer,
        transport,
        owed: &owed,
        moved: &moved,
        transfers,
    };
    // The mass-delete guards count the record's paths each side still holds, leaving out
    // what either box keeps to itself. A person who means the deletions waives them once.
    if early_index.is_some() && !waive_guard {
        plan::guard_here(kept_here(
            record,
            &here.versions,
            &here.unknown,
            ignore,
            view,
        ))?;
    }
    let mut report = RoundReport::default();
    let mut pulled = BTreeMap::new();
    if let Some(entries) = early_index {
        let early = plan::plan_early_pull(&entries, &here.versions, &here.unknown, record, ignore);
        let landing = landings(&early);
        if !landing.is_empty() {
            record.expect_landing(landing);
            save(record, &owed, notices, peer_id).await?;
        }
        pulled = pull_early(pull, &entries, early, &mut report).await;
        // What both now hold is agreed before the plan looks: a file the peer changed
        // meanwhile is then its edit to take, not a conflict. Saved at once, should the
        // rest of the round fail.
        record.update(pulled.clone());
        if let Err(e) = save(record, &owed, notices, peer_id).await {
            tracing::warn!(error = %e, "cannot save the sync record");
        }
    }
    if let Err(e) = refresh_view(peer, view).await {
        *view = PeerView::default();
        return Err(e.into());
    }
    let seen = Seen {
        here: here.snapshot_version.clone(),
        peer: view.mark,
        record: record.revision(),
    };
    if seen.repeats(view.quiet.as_ref()) {
        return Ok(report);
    }
    view.quiet = None;
    // This box's side as read at the start of the round, with what it pulled since.
    let here_versions: Cow<BTreeMap<RelPath, Version>> = if pulled.is_empty() {
        Cow::Borrowed(&here.versions)
    } else {
        let mut versions = here.versions.clone();
        versions.extend(
            pulled
                .into_iter()
                .filter_map(|(path, version)| Some((path, version?))),
        );
        Cow::Owned(versions)
    };
    let meant_there = view.take_deletions_meant();
    // What to plan: what changed on either side or in the record since the last plan and
    // what it left unsettled, or every path (see `PeerView::candidates`; on first contact,
    // after the early pull, every path). A plan that does not finish leaves none behind:
    // the next plans every path.
    let candidates = match view.candidates(here, record.take_touched(), ignore.lines()) {
        Ok(paths) => {
            tracing::debug!(
                peer = peer.addr(),
                paths = paths.len(),
                "planning the paths changed since the last plan"
            );
            Some(paths)
        }
        Err(reason) => {
            tracing::debug!(peer = peer.addr(), reason, "planning every path");
            None
        }
    };
    view.planned = None;
    let unknown_there =
        |path: &RelPath| matches!(view.entries.get(path), Some(None)) && !ignore.ignores(path);
    // The guards count every path only when a path to plan is one the record has and the
    // side lacks: a path not planned is as the record has it on both sides.
    let gone = |held: &dyn Fn(&RelPath) -> bool| {
        candidates.as_ref().is_none_or(|paths| {
            paths
                .iter()
                .any(|path| record.entries.contains_key(path) && !held(path))
        })
    };
    if !waive_guard && gone(&|path| here_versions.contains_key(path) || here.unknown.contains(path))
    {
        let kept = kept_here(record, &here_versions, &here.unknown, ignore, view);
        plan::guard_here(kept)?;
    }
    if !waive_guard && !meant_there && gone(&|path| view.entries.contains_key(path)) {
        plan::guard_peer(plan::Kept::count(
            record.entries.keys(),
            |path| view.entries.contains_key(path),
            |path| ignore.ignores(path) || view.peer_ignores(path),
        ))?;
    }
    // The peer's side: its paths the ignore rules let through; files listed without a hash
    // (they were changing on the peer) are unknown this round.
    let there = |path: &RelPath| -> Option<&'_ Version> {
        match view.entries.get(path)? {
            Some(version) if !ignore.ignores(path) => Some(version),
            _ => None,
        }
    };
    // Left alone: what either side could not read, and what the peer keeps to itself of
    // this box's paths (which does not keep a round from being quiet: it stays so until
    // the peer's rules change).
    let left_alone = |path: &RelPath| {
        here.unknown.contains(path)
            || unknown_there(path)
            || ((here_versions.contains_key(path) || here.unknown.contains(path))
                && view.peer_ignores(path))
    };
    let mut unknown = here.unknown.clone();
    unknown.extend(
        view.unknown
            .iter()
            .filter(|path| !ignore.ignores(path))
            .cloned(),
    );
    let sides = Sides {
        local_id: local.id.as_str(),
        remote_id: peer_id.as_str(),
    };
    let mut plan = {
        let state = plan::State {
            local: &here_versions,
            remote: &there,
            record: &record.entries,
            ours: &record.ours,
            left_alone: &left_alone,
        };
        match &candidates {
            Some(paths) => plan::plan_paths(paths, &state, &sides),
            None => {
                let every: BTreeSet<&RelPath> = here_versions
                    .keys()
                    .chain(view.entries.keys())
                    .chain(record.entries.keys())
                    .collect();
                plan::plan_paths(every, &state, &sides)
            }
        }
    };
    match &candidates {
        Some(paths) => {
            let planned_here: BTreeMap<RelPath, Version> = paths
                .iter()
                .filter_map(|path| Some((path.clone(), here_versions.get(path)?.clone())))
                .collect();
            record.hold_unagreed(&planned_here, &plan.agreed);
        }
        None => record.hold_unagreed(&here_versions, &plan.agreed),
    }
    // What this plan leaves unsettled, unless its actions settle it: planned again.
    let mut unsettled: BTreeSet<RelPath> = plan.actions.iter().flat_map(action_paths).collect();
    unsettled.extend(
        plan.conflicts
            .iter()
            .flat_map(|(path, copy)| [path.clone(), copy.clone()]),
    );
    unsettled.extend(plan.skipped.iter().map(|(path, _)| path.clone()));
    report.conflicts = plan.conflicts.clone();
    for (path, reason) in &plan.skipped {
        report.errors.push(SyncError::Skipped {
            path: path.clone(),
            reason: *reason,
        });
    }
    let quiet = plan.is_quiet(&unknown);
    // A file that did not fit lately waits (see `backoff`): pending, not tried again.
    let free = crate::transfer::free_space(&local.share).unwrap_or(u64::MAX);
    let now = std::time::Instant::now();
    plan.actions.retain(|action| match action {
        Action::Download { local, version, .. }
            if !room.allows(local, version.blake3.as_deref(), free, now) =>
        {
            report.failed += 1;
            report.errors.push(SyncError::Waiting {
                path: local.clone(),
                needed: room.needed(local).unwrap_or(version.size),
            });
            false
        }
        _ => true,
    });
    let fetching: Vec<(RelPath, Option<Arc<str>>, u64)> = plan
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Download { local, version, .. } => {
                Some((local.clone(), version.blake3.clone(), version.size))
            }
            _ => None,
        })
        .collect();
    // Downloads confirm themselves to the peer as they land; every other agreement this
    // round reaches (identical files found, metadata taken) is confirmed at its end.
    let downloaded: BTreeSet<RelPath> = plan
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Download { local, .. } => Some(local.clone()),
            _ => None,
        })
        .collect();
    // Noted in the record before the first lands (see `Record::landing`).
    let landing = landings(&plan.actions);
    if !landing.is_empty() {
        record.expect_landing(landing);
        save(record, &owed, notices, peer_id).await?;
    }
    let mut settled = Settlement {
        agreed: plan.agreed,
        held: Vec::new(),
    };
    carry_out_plan(pull, plan.actions, &there, &mut settled, &mut report).await;
    let short: HashMap<&RelPath, Option<u64>> = report.errors.iter().filter_map(no_room).collect();
    for (path, blake3, size) in &fetching {
        match short.get(path) {
            Some(needed) => {
                let needed = needed.unwrap_or(size + crate::transfer::room_margin(*size));
                room.failed(path, blake3.as_deref(), needed, now);
            }
            None => room.clear(path),
        }
    }
    // Agreements are symmetric: the peer records what this box found both hold, or both
    // lack, so that a later change on either side is read as that side's change, not as a
    // version the other box never saw (a metadata tie lost to the smaller ID, a deletion
    // undone, a removal each box waits for the other to take).
    let mut agreements: Vec<Agreement> = settled
        .agreed
        .iter()
        .filter(|(path, _)| !downloaded.contains(*path))
        .filter_map(|(path, version)| match version {
            Some(version) => {
                let known = record.entries.get(path).is_some_and(|s| s == version);
                (!known)
                    .then(|| file_version(path, version))
                    .flatten()
                    .map(Agreement::Holds)
            }
            None => record.entries.contains_key(path).then(|| Agreement::Lacks {
                removed: path.clone(),
            }),
        })
        .collect();
    // A version just set aside under a conflict name where the peer said it holds it
    // already: both hold it now (agreed, and confirmed back, as above).
    let mut confirmations: Vec<FileVersion> = Vec::new();
    for (path, version) in &settled.held {
        if record.copies.get(path).is_some_and(|c| c.same(version))
            && let Some(copy) = file_version(path, version)
        {
            settled.agreed.insert(path.clone(), Some(version.clone()));
            confirmations.push(copy);
        }
    }
    unsettled.retain(|path| !settled.agreed.contains_key(path));
    record.update(settled.agreed);
    for (path, version) in settled.held {
        record.add_ours(&path, version);
    }
    agreements.extend(confirmations.into_iter().map(Agreement::Holds));
    confirm(peer, &owed, agreements).await;
    record.expect_landing(Vec::new());
    save(record, &owed, notices, peer_id).await?;
    if quiet {
        view.quiet = Some(Seen {
            record: record.revision(),
            ..seen
        });
    }
    // Planned through: the next round plans only what changes from here. What the record
    // took since the plan began is this plan's own doing, on paths it planned.
    if let Some(snapshot) = &here.snapshot {
        let _ = record.take_touched();
        view.changed = Some(BTreeSet::new());
        view.planned = Some(Planned {
            here: snapshot.mark,
            rules: ignore.lines().to_vec(),
            unsettled,
        });
    }
    moved.fill(&mut report);
    Ok(report)
}

/// The paths an action changes or settles, here or on the peer.
fn action_paths(action: &Action) -> Vec<RelPath> {
    match action {
        Action::Download { remote, local, .. } => vec![remote.clone(), local.clone()],
        Action::SetAside { path, to, .. } => vec![path.clone(), to.clone()],
        Action::Move { from, to, .. } => vec![from.clone(), to.clone()],
        Action::DeleteFile { path, .. } | Action::SetMetadata { path, .. } => vec![path.clone()],
        Action::DeleteDir(path) | Action::CreateDir(path) => vec![path.clone()],
    }
}

/// What this box holds, as a round takes the peer's notices.
struct Holding<'a> {
    /// This box's ID.
    id: &'a str,
    /// Its folder as the round read it.
    here: &'a LocalState,
    /// The versions it held since the record's agreements, and those it served to the
    /// peer since the last round (see [`held_since`]).
    held: &'a BTreeMap<RelPath, Vec<Version>>,
}

/// The versions this box held (or served to the peer) since the record's agreement on each
/// path that the peer's notices name, as they stood before the first notice is applied:
/// an agreement a notice brings forgets them, and a later notice may still name one.
fn held_since(
    record: &Record,
    installed: &[Noted],
    served: &[FileVersion],
) -> BTreeMap<RelPath, Vec<Version>> {
    let mut held: BTreeMap<RelPath, Vec<Version>> = BTreeMap::new();
    for noted in installed {
        if let Agreement::Holds(copy) = &noted.version
            && let Some(ours) = record.ours.get(&copy.name)
        {
            held.entry(copy.name.clone())
                .or_insert_with(|| ours.clone());
        }
    }
    for version in served {
        held.entry(version.name.clone())
            .or_default()
            .push(Version::from(version));
    }
    held
}

/// Applies to `record` what the peer told in one notice of its journal (`this`: what this
/// box holds). Returns the confirmation owed back for a conflict copy the peer made of our
/// version, once both hold it.
///
/// A notice is as old as the peer's reading of this box, and this box may have reached a
/// later agreement on the path meanwhile (it downloaded the peer's new version after the
/// peer looked, say), which stands: a notice taken over it would make this box take its
/// copy for a change of its own, while the peer, holding that agreement, waits for this box
/// to take the peer's next change (a deletion left on this box alone). So a removal ("both
/// lack it") is taken only while this box lacks the path too, and a version the peer holds
/// over another the record agreed on only if this box holds it, held it since that
/// agreement, or served it to the peer. What both still agree on, the next round records.
fn take_notice(
    record: &mut Record,
    agreement: Agreement,
    this: &Holding<'_>,
) -> Option<FileVersion> {
    let here = this.here;
    let copy = match agreement {
        Agreement::Holds(copy) => copy,
        Agreement::Lacks { removed } => {
            if !here.versions.contains_key(&removed) && !here.unknown.contains(&removed) {
                record.update([(removed, None)]);
            }
            return None;
        }
    };
    let version = Version::from(&copy);
    if !plan::is_conflict_copy_of(&copy.name, this.id) {
        let ours = |v: &Version| v.same(&version);
        let current = match record.entries.get(&copy.name) {
            None => true,
            Some(agreed) => {
                agreed.same(&version)
                    || here.versions.get(&copy.name).is_some_and(ours)
                    || this
                        .held
                        .get(&copy.name)
                        .is_some_and(|h| h.iter().any(ours))
            }
        };
        if current {
            record.update([(copy.name, Some(version))]);
        }
        None
    } else if holds(&copy.name, &version, &here.versions, record) {
        record.update([(copy.name.clone(), Some(version))]);
        Some(copy)
    } else {
        record.add_copy(copy.name, version);
        None
    }
}

/// Whether this box holds `version` of `path` (`here`, as the round read the folder) or
/// held it since the record (set it aside there, say, and deleted it since).
fn holds(
    path: &RelPath,
    version: &Version,
    here: &BTreeMap<RelPath, Version>,
    record: &Record,
) -> bool {
    here.get(path).is_some_and(|h| h.same(version))
        || record
            .ours
            .get(path)
            .is_some_and(|ours| ours.iter().any(|h| h.same(version)))
}

/// A file's version as the `installed` notice names it (`None` for a directory).
fn file_version(path: &RelPath, version: &Version) -> Option<FileVersion> {
    Some(FileVersion {
        name: path.clone(),
        blake3: version.blake3.clone()?.to_string(),
        size: version.size,
        mtime: version.mtime,
        mode: version.mode,
    })
}

/// What the actions of a round did to the record.
#[derive(Debug, Default)]
struct Settlement {
    /// Paths both boxes now agree on (the plan's, and those the actions settled).
    agreed: BTreeMap<RelPath, Option<Version>>,
    /// Versions this box now holds under a conflict copy's name, not yet agreed.
    held: Vec<(RelPath, Version)>,
}

impl Settlement {
    /// Adds a successful action's effect; a folder created here, `folder` on the peer, is
    /// then agreed (both boxes hold it: a removal on either is then the other's to take).
    fn add(&mut self, action: &Action, settled: Settled, folder: Option<&Version>) {
        match settled {
            Settled::Agreed(path, version) => {
                self.agreed.insert(path, version);
            }
            Settled::Held(path, version) => self.held.push((path, version)),
            Settled::Moved { from, to, version } => {
                self.agreed.insert(from, None);
                self.agreed.insert(to, Some(version));
            }
            Settled::Nothing => {
                if let (Action::CreateDir(path), Some(folder)) = (action, folder) {
                    self.agreed.insert(path.clone(), Some(folder.clone()));
                }
            }
        }
    }
}

/// Carries out a plan's `actions` in their order, adding to `settled` what each did (the
/// peer's versions `there` name the folders created); a failed action fails alone (it is
/// retried next round).
async fn carry_out_plan<'v>(
    pull: Pull<'_>,
    actions: Vec<Action>,
    there: &(dyn Fn(&RelPath) -> Option<&'v Version> + Sync),
    settled: &mut Settlement,
    report: &mut RoundReport,
) {
    let mut actions = actions.into_iter().peekable();
    while let Some(action) = actions.next() {
        // Downloads run a few at a time, small files many to a request: the round trips
        // and the flushes to disk of one overlap those of the others, or are shared.
        let mut group = vec![action];
        if matches!(group[0], Action::Download { .. }) {
            while let Some(next) = actions.next_if(|a| matches!(a, Action::Download { .. })) {
                group.push(next);
            }
        } else if matches!(group[0], Action::Move { .. }) {
            while let Some(next) = actions.next_if(|a| matches!(a, Action::Move { .. })) {
                group.push(next);
            }
        }
        for (action, result) in carry_out(pull, group).await {
            match result {
                Ok(outcome) => {
                    report.done += 1;
                    describe(&action, report);
                    let folder = match &action {
                        Action::CreateDir(path) => there(path).filter(|v| v.dir),
                        _ => None,
                    };
                    settled.add(&action, outcome, folder);
                }
                // Not a failure: the copy comes next round, under its conflict name.
                Err(e) if set_aside_meanwhile(&action, &e) => {
                    tracing::debug!(?action, "the peer set its version aside meanwhile");
                }
                Err(e) => {
                    report.failed += 1;
                    report.errors.push(e);
                }
            }
        }
    }
}

/// The path of a download that failed for lack of space here, with the bytes it needed
/// when known (`None`: the disk filled while it was written).
fn no_room(error: &SyncError) -> Option<(&RelPath, Option<u64>)> {
    let (path, source) = match error {
        SyncError::Transfer { path, source } => (path, source),
        SyncError::Batch { path, source } => (path, &**source),
        _ => return None,
    };
    match source {
        PeerError::Transfer(TransferError::NoRoom { needed, .. }) => Some((path, Some(*needed))),
        PeerError::Transfer(TransferError::Local(ShareError::Io { cause, .. }))
            if matches!(cause.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
        {
            Some((path, None))
        }
        _ => None,
    }
}

/// Whether `error` only says that the peer's file a conflict copy was to be made from is no
/// longer under its name: the peer, planning the same conflict, set its losing version
/// aside meanwhile, under the very conflict name this box was to give it, so the next
/// round brings it under that name.
fn set_aside_meanwhile(action: &Action, error: &SyncError) -> bool {
    let Action::Download { remote, local, .. } = action else {
        return false;
    };
    // Gone from its name, or already replaced there by the version that keeps it: the
    // answer to the block list (`Remote`) or to the download itself (`Transfer`).
    let gone = |source: &PeerError| {
        matches!(
            source,
            PeerError::Transfer(TransferError::Remote {
                kind: ErrorKind::NotFound | ErrorKind::Changed,
                ..
            }) | PeerError::Remote {
                kind: ErrorKind::NotFound | ErrorKind::Changed,
                ..
            }
        )
    };
    remote != local && matches!(error, SyncError::Transfer { source, .. } if gone(source))
}

/// Carries out the early pull of first contact: folders first, so that the files then
/// land in folders that exist and the watcher, which reads each new folder to watch it,
/// finds them empty. Returns what both boxes now hold.
async fn pull_early(
    pull: Pull<'_>,
    entries: &[ShareEntry],
    early: Vec<Action>,
    report: &mut RoundReport,
) -> BTreeMap<RelPath, Option<Version>> {
    let mut pulled = Settlement::default();
    let (folders, files): (Vec<Action>, Vec<Action>) = early
        .into_iter()
        .partition(|action| matches!(action, Action::CreateDir(_)));
    let folder_versions: HashMap<&RelPath, Version> = entries
        .iter()
        .filter(|entry| entry.is_dir())
        .filter_map(|entry| Some((&entry.name, version(entry, None)?)))
        .collect();
    for group in [folders, files] {
        for (action, result) in carry_out(pull, group).await {
            match result {
                Ok(outcome) => {
                    report.done += 1;
                    describe(&action, report);
                    let folder = match &action {
                        Action::CreateDir(path) => folder_versions.get(path),
                        _ => None,
                    };
                    pulled.add(&action, outcome, folder);
                }
                // Left to the plan, which tries again and reports what still fails.
                Err(e) => tracing::debug!(error = %crate::text::for_log(&e), "early action failed"),
            }
        }
    }
    // The early pull takes files under their own names only: nothing is merely held.
    pulled.agreed
}

/// Carries out a group of actions: a few units at a time, small-file downloads (over TCP)
/// many to a request. Returns each action with its outcome.
async fn carry_out(pull: Pull<'_>, group: Vec<Action>) -> Outcomes {
    let Pull {
        local, transport, ..
    } = pull;
    let results: Vec<Vec<_>> = stream::iter(units(group, transport))
        .map(|unit| async move {
            match unit {
                Unit::One(action) => {
                    tracing::debug!(box_id = %local.id, ?action, "sync action");
                    let result = apply(pull, &action).await;
                    vec![(action, result)]
                }
                Unit::Batch(batch) => apply_batch(pull, batch).await,
                Unit::Folders(paths) => create_folders(local, paths).await,
                Unit::Moves(moves) => move_files(local, moves).await,
            }
        })
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// Carries out one action. On success, returns the path's new agreed state when the action
/// made both sides agree.
async fn apply(pull: Pull<'_>, action: &Action) -> Result<Settled, SyncError> {
    let Pull {
        local,
        peer,
        transport,
        owed,
        transfers,
        ..
    } = pull;
    let share = &local.share;
    match action {
        // Folders normally go together (`Unit::Folders`); one on its own the same way.
        Action::CreateDir(path) => create_folders(local, vec![path.clone()])
            .await
            .pop()
            .map_or(Ok(Settled::Nothing), |(_, outcome)| outcome),
        Action::Download {
            remote,
            local: name,
            version,
            expect,
        } => {
            let landing = Landing {
                name: name.clone(),
                expect: expect.clone(),
                digests: DigestSet::Blake3,
            };
            let flight = transfers.begin(peer.addr(), remote, version.size);
            let mut progress = |done: u64, total: u64| flight.progress(done, total);
            let downloaded = match transport {
                Transport::Tcp => peer.download_tcp_to(remote, &landing, &mut progress).await,
                Transport::Udp => {
                    let rate = local.settings.max_udp_rate;
                    match peer
                        .download_udp_to(remote, &landing, rate, &mut progress)
                        .await
                    {
                        Err(e) if udp_failed(&e) => {
                            tracing::warn!(
                                peer = peer.addr(),
                                path = %remote,
                                error = %e,
                                "UDP download failed; downloading this file over TCP instead"
                            );
                            peer.download_tcp_to(remote, &landing, &mut progress).await
                        }
                        other => other,
                    }
                }
            }
            .map_err(|source| SyncError::Transfer {
                path: name.clone(),
                source,
            })?;
            // In place: no longer in flight while the peer is told.
            drop(flight);
            pull.moved.add(&downloaded);
            let (settled, confirmation) = settle(remote, name, downloaded);
            confirm(peer, owed, vec![Agreement::Holds(confirmation)]).await;
            Ok(settled)
        }
        Action::SetMetadata {
            path,
            version,
            expect,
        } => {
            let meta = InstallMeta {
                mtime: version.mtime,
                mode: version.mode,
            };
            share
                .set_metadata(path, expect, meta)
                .await
                .map_err(|source| disk(path, source))?;
            Ok(Settled::Agreed(path.clone(), Some(version.clone())))
        }
        Action::Move { .. } => move_files(local, vec![action.clone()])
            .await
            .pop()
            .map_or(Ok(Settled::Nothing), |(_, outcome)| outcome),
        Action::SetAside { path, to, version } => {
            share
                .rename_file(path, to, &version.expect())
                .await
                .map_err(|source| disk(path, source))?;
            Ok(Settled::Held(to.clone(), version.clone()))
        }
        Action::DeleteFile { path, expect } => {
            share
                .remove_file(path, expect)
                .await
                .map_err(|source| disk(path, source))?;
            Ok(Settled::Agreed(path.clone(), None))
        }
        Action::DeleteDir(path) => {
            let removed = share
                .remove_empty_dir(path)
                .await
                .map_err(|source| disk(path, source))?;
            Ok(match removed {
                true => Settled::Agreed(path.clone(), None),
                false => Settled::Nothing,
            })
        }
    }
}

/// Whether a UDP download failed for a reason of UDP's own, so that the same file over TCP
/// may well succeed: the peer has no UDP session free (`unavailable`), or the UDP exchange
/// itself failed. A file the peer refused or that changed fails the same way over TCP, and
/// a peer that stopped answering would only make the fallback wait again.
fn udp_failed(error: &PeerError) -> bool {
    matches!(
        error,
        PeerError::Udp(_)
            | PeerError::Remote {
                kind: ErrorKind::Unavailable,
                ..
            }
            | PeerError::Transfer(TransferError::Remote {
                kind: ErrorKind::Unavailable,
                ..
            })
    )
}

/// What a completed download means for the record, and the notice that tells the peer.
/// Under the peer's own name, both boxes now hold what was just transferred (the peer may
/// have moved on from the version planned; then this one is what they agree on). Under a
/// conflict copy's name, this box holds the peer's losing version there, which the peer
/// sets aside under the same name: not agreed yet, but the peer is told, so that it records
/// the agreement once it holds the copy too; else a deletion of the copy on either box
/// would be taken by neither (each would take it for the other's new file).
fn settle(remote: &RelPath, name: &RelPath, downloaded: Downloaded) -> (Settled, FileVersion) {
    let got = Version::from(&downloaded.version);
    let notice = FileVersion {
        name: name.clone(),
        ..downloaded.version
    };
    match name == remote {
        true => (Settled::Agreed(name.clone(), Some(got)), notice),
        false => (Settled::Held(name.clone(), got), notice),
    }
}

/// Creates the folders `paths` in one blocking call, each an `Action::CreateDir` done or
/// failed.
async fn create_folders(local: &Arc<LocalBox>, paths: Vec<RelPath>) -> Outcomes {
    tracing::debug!(box_id = %local.id, folders = paths.len(), "sync folders");
    let results = local.share.create_dirs(paths.clone()).await;
    paths
        .into_iter()
        .zip(results)
        .map(|(path, result)| {
            let outcome = result
                .map(|()| Settled::Nothing)
                .map_err(|source| disk(&path, source));
            (Action::CreateDir(path), outcome)
        })
        .collect()
}

/// Renames files as the peer did (`Action::Move`s) in one blocking call, each done or
/// failed.
async fn move_files(local: &Arc<LocalBox>, actions: Vec<Action>) -> Outcomes {
    tracing::debug!(box_id = %local.id, files = actions.len(), "sync moves");
    let moves = actions
        .iter()
        .filter_map(|action| match action {
            Action::Move {
                from,
                to,
                version,
                expect,
            } => Some(FileMove {
                from: from.clone(),
                to: to.clone(),
                expect: expect.clone(),
                meta: InstallMeta {
                    mtime: version.mtime,
                    mode: version.mode,
                },
            }),
            _ => None,
        })
        .collect();
    let results = local.share.move_files(moves).await;
    actions
        .into_iter()
        .zip(results)
        .map(|(action, result)| {
            let outcome = match (&action, result) {
                (
                    Action::Move {
                        from, to, version, ..
                    },
                    Ok(()),
                ) => Ok(Settled::Moved {
                    from: from.clone(),
                    to: to.clone(),
                    version: version.clone(),
                }),
                (Action::Move { from, .. }, Err(source)) => Err(disk(from, source)),
                // Only moves are given here.
                (_, _) => Ok(Settled::Nothing),
            };
            (action, outcome)
        })
        .collect()
}

/// Carries out a batch of small-file downloads in one request, then confirms to the peer,
/// in one notice, the files installed under its names.
async fn apply_batch(pull: Pull<'_>, batch: Vec<(Action, Wanted)>) -> Outcomes {
    let Pull {
        local, peer, owed, ..
    } = pull;
    tracing::debug!(box_id = %local.id, files = batch.len(), "sync batch download");
    let (actions, wanted): (Vec<Action>, Vec<Wanted>) = batch.into_iter().unzip();
    let results = match peer.download_batch(&wanted).await {
        Ok(results) => results,
        Err(e) => {
            let e = Arc::new(e);
            return actions
                .into_iter()
                .zip(&wanted)
                .map(|(action, want)| {
                    let failure = SyncError::Batch {
                        path: want.landing.name.clone(),
                        source: Arc::clone(&e),
                    };
                    (action, Err(failure))
                })
                .collect();
        }
    };
    let mut confirmations = Vec::new();
    let outcomes = actions
        .into_iter()
        .zip(&wanted)
        .zip(results)
        .map(|((action, want), result)| {
            let name = &want.landing.name;
            let outcome = result
                .map(|downloaded| {
                    pull.moved.add(&downloaded);
                    let (settled, confirmation) = settle(&want.name, name, downloaded);
                    confirmations.push(confirmation);
                    settled
                })
                .map_err(|source| SyncError::Transfer {
                    path: name.clone(),
                    source,
                });
            (action, outcome)
        })
        .collect();
    let agreements = confirmations.into_iter().map(Agreement::Holds).collect();
    confirm(peer, owed, agreements).await;
    outcomes
}

/// Saves `record` (the peer's `peer_id`) with the confirmations `owed` to the peer so far,
/// then lets go of the inbox journal it now holds. Whatever the record agrees on is then
/// saved with what the peer has not been told of it: a round that fails later loses
/// neither.
async fn save(
    record: &mut Record,
    owed: &Owed,
    notices: &Notices,
    peer_id: &BoxId,
) -> Result<(), SyncError> {
    record.owe(std::mem::take(
        &mut *owed.lock().unwrap_or_else(|e| e.into_inner()),
    ));
    off_the_runtime(|| record.save()).map_err(SyncError::SaveRecord)?;
    if let Some((epoch, n)) = record.inbox
        && let Err(e) = notices.installed_recorded(peer_id, epoch, n)
    {
        tracing::warn!(error = %e, "cannot remove a recorded inbox journal");
    }
    Ok(())
}

/// Runs database work that can take seconds (loading or first saving the record of a
/// million paths) so that the other tasks of this worker thread (other peers' requests)
/// move to another worker meanwhile; inline on a single-threaded runtime (tests).
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The peer's versions `actions` install under their own names.
fn landings(actions: &[Action]) -> Vec<(RelPath, Version)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Download {
                remote,
                local,
                version,
                ..
            } if remote == local => Some((local.clone(), version.clone())),
            Action::Move { to, version, .. } => Some((to.clone(), version.clone())),
            _ => None,
        })
        .collect()
}

/// Confirmations to a peer that did not reach it, kept for the record to send again.
type Owed = std::sync::Mutex<Vec<Agreement>>;

/// What carrying out a round's actions needs: this box, the peer and how to fetch from it,
/// and where confirmations that did not reach the peer are kept.
#[derive(Clone, Copy)]
struct Pull<'a> {
    local: &'a Arc<LocalBox>,
    peer: &'a Peer,
    transport: Transport,
    owed: &'a Owed,
    moved: &'a Moved,
    /// Where each download shows while it runs.
    transfers: &'a Arc<Transfers>,
}

/// The bytes a round's downloads fetched and found locally, added up as they complete.
#[derive(Default)]
struct Moved {
    fetched: std::sync::atomic::AtomicU64,
    reused: std::sync::atomic::AtomicU64,
}

impl Moved {
    /// Counts one completed download.
    fn add(&self, downloaded: &Downloaded) {
        use std::sync::atomic::Ordering::Relaxed;
        self.fetched.fetch_add(downloaded.transferred, Relaxed);
        self.reused.fetch_add(downloaded.reused, Relaxed);
    }

    /// Puts the totals in `report`.
    fn fill(&self, report: &mut RoundReport) {
        use std::sync::atomic::Ordering::Relaxed;
        report.fetched = self.fetched.load(Relaxed);
        report.reused = self.reused.load(Relaxed);
    }
}

/// Tells the peer what this box now agrees on with it; what does not reach it is owed,
/// and sent again next round.
async fn confirm(peer: &Peer, owed: &Owed, versions: Vec<Agreement>) {
    if versions.is_empty() {
        return;
    }
    if let Err(e) = peer.confirm(versions.clone()).await {
        tracing::debug!(error = %crate::text::for_log(&e), "install confirmations not delivered: kept to send again");
        owed.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(versions);
    }
}

fn disk(path: &RelPath, source: ShareError) -> SyncError {
    SyncError::Disk {
        path: path.clone(),
        source,
    }
}

fn describe(action: &Action, report: &mut RoundReport) {
    let line = match action {
        Action::CreateDir(path) => format!("created folder {path}/"),
        Action::Download { remote, local, .. }
            if remote == local && !plan::is_conflict_copy(local) =>
        {
            report.downloaded += 1;
            format!("received {local}")
        }
        Action::Download { local, .. } => {
            report.downloaded += 1;
            format!("received conflict copy {local}")
        }
        Action::SetMetadata { path, .. } => format!("updated time and mode of {path}"),
        Action::SetAside { path, to, .. } => format!("conflict: kept this box's {path} as {to}"),
        Action::Move { from, to, .. } => {
            report.moved += 1;
            format!("moved {from} to {to}")
        }
        Action::DeleteFile { path, .. } => {
            report.deleted += 1;
            format!("deleted {path} (kept in .boxsync/trash)")
        }
        Action::DeleteDir(path) => format!("removed folder {path}/"),
    };
    report.changes.push(line);
}

/// Folds a round's outcome into the peer's status. A conflict whose copy is no longer in
/// this box's folder as the round read it (`here`) was resolved: it leaves the list.
pub fn fold(
    status: &mut PeerStatus,
    outcome: &Result<RoundReport, Arc<SyncError>>,
    here: &LocalState,
) {
    status.last_attempt = Some(Timestamp::now());
    match outcome {
        Ok(report) => {
            status.last_sync = Some(Timestamp::now());
            status.pending = report.failed;
            status.fetched_bytes += report.fetched;
            status.reused_bytes += report.reused;
            status.errors = report.errors.iter().map(ToString::to_string).collect();
            status.failure = None;
            let counted = report.downloaded + report.moved + report.deleted;
            status.last_round = Some(crate::sync::RoundCounts {
                received: report.downloaded,
                moved: report.moved,
                deleted: report.deleted,
                conflicts: report.conflicts.len(),
                other: report
                    .changes
                    .len()
                    .saturating_sub(counted + report.conflicts.len()),
                failed: report.failed,
            });
            status
                .conflicts
                .retain(|conflict| here.versions.contains_key(&conflict.copy));
            for (path, copy) in &report.conflicts {
                let conflict = Conflict {
                    path: path.clone(),
                    copy: copy.clone(),
                };
                if !status.conflicts.contains(&conflict) {
                    status.conflicts.push(conflict);
                }
            }
        }
        Err(e) => {
            status.errors = vec![e.to_string()];
            status.failure = Some(Arc::clone(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::Expect;

    fn rel(p: &str) -> RelPath {
        RelPath::parse(p).unwrap()
    }

    fn version() -> Version {
        Version::test_file("x", 1)
    }

    /// A conflict in `sync status` reads, and serializes, as `path -> copy`, as it did when
    /// the status kept it as text.
    #[test]
    fn a_conflict_shows_as_path_and_copy() {
        let conflict = Conflict {
            path: rel("a -> b.txt"),
            copy: rel("a -> b.sync-conflict-20231114-221320-0123456789abcdef.txt"),
        };
        let text = "a -> b.txt -> a -> b.sync-conflict-20231114-221320-0123456789abcdef.txt";
        assert_eq!(conflict.to_string(), text);
        assert_eq!(
            serde_json::to_string(&conflict).unwrap(),
            format!("\"{text}\"")
        );
    }

    fn downloaded(name: &str) -> Downloaded {
        let v = version();
        Downloaded {
            version: FileVersion {
                name: rel(name),
                blake3: v.blake3.clone().unwrap().to_string(),
                size: v.size,
                mtime: v.mtime,
                mode: v.mode,
            },
            sha256: None,
            md5: None,
            transport: Transport::Tcp,
            path: std::path::PathBuf::from(name),
            seconds: 0.0,
            replaced: None,
            resent: None,
            note: None,
            transferred: v.size,
            reused: 0,
            up_to_date: false,
        }
    }

    /// A download under the peer's name is agreed and confirmed under that name; one under
    /// a conflict copy's name is only held here, and confirmed to the peer under the copy's
    /// name, so that the peer, which sets the same version aside there, records both hold it.
    #[test]
    fn a_conflict_copy_download_is_held_and_confirmed_under_its_name() {
        let (settled, notice) = settle(&rel("a.txt"), &rel("a.txt"), downloaded("a.txt"));
        assert_eq!(settled, Settled::Agreed(rel("a.txt"), Some(version())));
        assert_eq!(notice.name, rel("a.txt"));
        let copy = rel("a.sync-conflict-19700101-000001-CCCCCCC.txt");
        let (settled, notice) = settle(&rel("a.txt"), &copy, downloaded("a.txt"));
        assert_eq!(settled, Settled::Held(copy.clone(), version()));
        assert_eq!(notice.name, copy);
    }

    /// A folder created here is agreed with the peer's version of it; a copy set aside is
    /// held, not agreed.
    #[test]
    fn created_folders_are_agreed_and_set_aside_copies_held() {
        let mut dir = version();
        dir.dir = true;
        dir.blake3 = None;
        let mut settled = Settlement::default();
        let create = Action::CreateDir(rel("d"));
        settled.add(&create, Settled::Nothing, Some(&dir));
        let copy = rel("a.sync-conflict-19700101-000001-CCCCCCC.txt");
        let set_aside = Action::SetAside {
            path: rel("a.txt"),
            to: copy.clone(),
            version: version(),
        };
        settled.add(&set_aside, Settled::Held(copy.clone(), version()), None);
        assert_eq!(settled.agreed, [(rel("d"), Some(dir))].into());
        assert_eq!(settled.held, vec![(copy, version())]);
    }

    /// Folders to create are listed first, all in one unit; small downloads in batches;
    /// the rest alone.
    #[test]
    fn folders_are_created_in_one_unit_before_the_rest() {
        let download = |name: &str, size: u64| Action::Download {
            remote: rel(name),
            local: rel(name),
            version: Version { size, ..version() },
            expect: Expect::Absent,
        };
        let group = vec![
            download("a.txt", 10),
            Action::CreateDir(rel("sub")),
            download("big.bin", SMALL_FILE + 1),
            Action::CreateDir(rel("sub/deeper")),
            download("sub/b.txt", 20),
        ];
        let units = units(group, Transport::Tcp);
        assert_eq!(units.len(), 3);
        assert!(
            matches!(&units[0], Unit::Folders(paths) if paths == &[rel("sub"), rel("sub/deeper")])
        );
        assert!(
            matches!(&units[1], Unit::One(Action::Download { remote, .. }) if remote == &rel("big.bin"))
        );
        assert!(matches!(&units[2], Unit::Batch(batch) if batch.len() == 2));
    }

    /// A removal the peer told before a later agreement does not undo it (the hub test's
    /// flake): a laptop and the hub agreed on `f`, then both lack it, and the hub's round,
    /// which read the laptop then, tells it so; the hub writes `f` anew, and the laptop
    /// downloads it before it takes the hub's notice. Taken then, the removal would forget
    /// that agreement: the laptop would take `f` for its own new file, and once the hub
    /// deletes `f` each box would wait for the other. Not taken, the hub's deletion
    /// reaches the laptop. A removal of a path this box lacks too is taken.
    #[test]
    fn a_removal_told_before_a_later_agreement_does_not_undo_it() {
        let (old, new) = (Version::test_file("old", 1), Version::test_file("new", 2));
        let state = |versions: &[(&str, &Version)]| LocalState {
            versions: versions
                .iter()
                .map(|(path, version)| (rel(path), (*version).clone()))
                .collect(),
            unknown: BTreeSet::new(),
            snapshot_version: String::new(),
            snapshot: None,
            rules: Vec::new(),
        };
        let removed = Agreement::Lacks {
            removed: rel("f.txt"),
        };
        let mut record = Record::default();
        record.update([(rel("f.txt"), Some(old))]);
        // The laptop downloads the hub's new `f` (the hub's removal is in its inbox).
        record.update([(rel("f.txt"), Some(new.clone()))]);
        let here = state(&[("f.txt", &new)]);
        let held = BTreeMap::new();
        let this = |here| Holding {
            id: "LAPTOPX",
            here,
            held: &held,
        };
        let owed = take_notice(&mut record, removed.clone(), &this(&here));
        assert_eq!(owed, None);
        assert_eq!(record.entries.get(&rel("f.txt")), Some(&new));
        // The hub deletes `f`: the laptop deletes its copy of the version both agreed on.
        assert_eq!(
            laptop_plan_after_hub_deleted_all(&here, &record),
            [Action::DeleteFile {
                path: rel("f.txt"),
                expect: new.expect(),
            }]
        );
        // Lacking `f` here too, the removal is taken: both lack it.
        take_notice(&mut record, removed, &this(&state(&[])));
        assert!(record.entries.is_empty());
    }

    /// What the laptop plans against a hub whose folder is now empty.
    fn laptop_plan_after_hub_deleted_all(here: &LocalState, record: &Record) -> Vec<Action> {
        let sides = Sides {
            local_id: "LAPTOPX",
            remote_id: "HUBXXXX",
        };
        plan::plan(
            &here.versions,
            &BTreeMap::new(),
            &record.entries,
            &record.ours,
            &BTreeSet::new(),
            &sides,
        )
        .actions
    }

    /// The same for a version the peer says it holds (the other flake of the hub test): a
    /// laptop and the hub both hold `v1`, and the hub's notice of it waits in the laptop's
    /// inbox while the laptop downloads the hub's `v2`. Taken after, it would bring back
    /// `v1` for the record, and the hub's deletion of `v2` would look like the laptop's edit
    /// against the hub's deletion, each box waiting for the other. A version this box held
    /// since the record (the peer downloaded it, and this box edited it since) is taken.
    #[test]
    fn a_version_told_before_a_later_agreement_does_not_undo_it() {
        let (v1, v2, v3) = (
            Version::test_file("v1", 1),
            Version::test_file("v2", 2),
            Version::test_file("v3", 3),
        );
        let notice = |version: &Version| {
            Agreement::Holds(file_version(&rel("f.txt"), version).expect("a file"))
        };
        let here = LocalState {
            versions: [(rel("f.txt"), v2.clone())].into(),
            unknown: BTreeSet::new(),
            snapshot_version: String::new(),
            snapshot: None,
            rules: Vec::new(),
        };
        let this = |held| Holding {
            id: "LAPTOPX",
            here: &here,
            held,
        };
        let mut record = Record::default();
        record.update([(rel("f.txt"), Some(v2.clone()))]);
        let nothing = BTreeMap::new();
        assert_eq!(take_notice(&mut record, notice(&v1), &this(&nothing)), None);
        assert_eq!(record.entries.get(&rel("f.txt")), Some(&v2));
        assert_eq!(
            laptop_plan_after_hub_deleted_all(&here, &record),
            [Action::DeleteFile {
                path: rel("f.txt"),
                expect: v2.expect(),
            }]
        );
        // Served to the peer since the record (`v3`, edited here since into `v2`): the
        // peer's notice of it is the later agreement.
        record.update([(rel("f.txt"), Some(v1))]);
        let served = [(rel("f.txt"), vec![v3.clone()])].into();
        take_notice(&mut record, notice(&v3), &this(&served));
        assert_eq!(record.entries.get(&rel("f.txt")), Some(&v3));
    }
}
