//! The record: for one peer, the version of every path at the last moment both boxes held
//! the same one, and the versions this box has held since (so that a peer found holding
//! one of them is known to lag behind, not to have changed). It is what tells "deleted here"
//! from "new there", so it is persisted under `.boxsync/sync/`, one SQLite database per peer
//! box id (`<peer>.db`). A path both boxes lack is not in it; a path one box deleted stays
//! in it, with its last agreed version, until the other box has deleted it too (a
//! tombstone), however long that box stays offline.
//!
//! The whole record lives in memory; a save writes only what changed since the last one,
//! in one transaction flushed before it returns (`synchronous = FULL`): a record of a
//! million paths is not rewritten for one download. A record kept as one JSON file (by an
//! older boxsync, `<peer>.json`) is imported once and removed. A database that cannot be
//! read, or names contents by another hash, or has a layout this build does not know, is
//! set aside (`<peer>.db.broken-<unix secs>`) and the record starts empty: sync then merges,
//! which never deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::plan::Version;
use crate::share::RelPath;
use crate::time::Timestamp;
use crate::types::{Agreement, BoxId};

/// Folder under the state folder that holds the records.
pub const RECORD_DIR: &str = "sync";

/// Most versions remembered per path since the last agreement.
const MAX_OURS: usize = 16;

/// Most paths [`Record::take_touched`] lists; past that it answers [`Touched::All`] (a
/// planner then compares everything, which costs less than a set that large).
const MAX_TOUCHED: usize = 200_000;

/// The database layout this build writes; a database of another (newer) one is set aside.
const SCHEMA: i64 = 1;

/// The tables of layout [`SCHEMA`]. A version is stored as its fields (`mtime` as whole
/// seconds and nanoseconds, exact for any time); `ours` holds a path's versions as JSON
/// (at most [`MAX_OURS`]); `landing` and `unconfirmed` keep their order by `seq`.
const TABLES: &str = "
    CREATE TABLE meta (hash TEXT NOT NULL, inbox_epoch INTEGER, inbox_n INTEGER);
    CREATE TABLE entries (
        path TEXT PRIMARY KEY, dir INTEGER NOT NULL, blake3 TEXT, size INTEGER NOT NULL,
        mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE ours (path TEXT PRIMARY KEY, versions TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE copies (
        path TEXT PRIMARY KEY, dir INTEGER NOT NULL, blake3 TEXT, size INTEGER NOT NULL,
        mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE landing (
        seq INTEGER PRIMARY KEY, path TEXT NOT NULL, dir INTEGER NOT NULL, blake3 TEXT,
        size INTEGER NOT NULL, mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        mode INTEGER NOT NULL
    );
    CREATE TABLE unconfirmed (seq INTEGER PRIMARY KEY, agreement TEXT NOT NULL);
";

/// The columns of a stored version, after its path (`dir` … `mode`).
const VERSION_COLUMNS: &str = "dir, blake3, size, mtime_s, mtime_ns, mode";

/// Which paths changed since the planner last asked ([`Record::take_touched`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Touched {
    /// Too many to list, or the record was just loaded: compare everything.
    #[default]
    All,
    /// Only these paths' `entries`, `ours` or `copies` changed.
    Paths(BTreeSet<RelPath>),
}

impl Touched {
    /// Notes that `path` changed, giving up the list past [`MAX_TOUCHED`] paths.
    fn add(&mut self, path: &RelPath) {
        if let Touched::Paths(paths) = self {
            if paths.len() >= MAX_TOUCHED && !paths.contains(path) {
                *self = Touched::All;
            } else {
                paths.insert(path.clone());
            }
        }
    }
}

/// The last agreed state of every path, for one peer.
#[derive(Debug, Default)]
pub struct Record {
    /// The database it is persisted in.
    file: PathBuf,
    /// Path to the version both last agreed on.
    pub entries: BTreeMap<RelPath, Version>,
    /// Path to the versions this box held (or sent to the peer) since that agreement.
    pub ours: BTreeMap<RelPath, Vec<Version>>,
    /// Conflict copies the peer made of this box's losing versions (its `installed` notice
    /// named them) before this box set the same version aside under that name: agreed once
    /// it has.
    pub copies: BTreeMap<RelPath, Version>,
    /// The last `installed` notice from the peer's inbox journal applied here (epoch, number):
    /// a journal replayed after a crash applies nothing twice.
    pub inbox: Option<(u64, u64)>,
    /// Confirmations to the peer (this box holds these versions of its files) that did not
    /// reach it: sent again at the start of the next round, until the peer acknowledges.
    pub unconfirmed: Vec<Agreement>,
    /// The peer's versions a round is about to install under their own names, saved before
    /// the first lands: found in the folder at the next round (after a crash between the
    /// landing and the record's save, say), each is agreed, as it would have been.
    pub landing: Vec<(RelPath, Version)>,
    /// The open database (`None` until the first save makes one). Behind a std `Mutex` so
    /// that the record stays `Sync`; only `&mut self` methods use it (`get_mut`, no lock).
    conn: Mutex<Option<Connection>>,
    /// What changed since the last save.
    unsaved: Unsaved,
    /// Paths changed since the planner last asked.
    touched: Touched,
    /// Counts changes since it was loaded.
    revision: u64,
}

/// What a save has to write: everything else is in the database already.
#[derive(Debug, Default)]
struct Unsaved {
    /// Paths whose `entries`, `ours` or `copies` changed.
    paths: BTreeSet<RelPath>,
    /// `landing` was replaced.
    landing: bool,
    /// `inbox` moved.
    inbox: bool,
    /// The `seq` of `unconfirmed[0]`: the database numbers the list from there on.
    owed_base: i64,
    /// How many of `unconfirmed` (from the front) the database holds.
    owed_saved: usize,
    /// `owed_base` at the last save: rows below the current one were paid and go.
    owed_saved_base: i64,
}

impl Unsaved {
    /// Whether a save has anything to write.
    fn any(&self, owed: usize) -> bool {
        !self.paths.is_empty()
            || self.landing
            || self.inbox
            || self.owed_base != self.owed_saved_base
            || self.owed_saved != owed
    }
}

/// The content hash that the stored versions name. A record written with another one (by
/// an older boxsync) cannot be compared with today's listings: it is set aside as if it
/// were lost, and sync merges (which never deletes).
const CONTENT_HASH: &str = "blake3";

/// The record as an older boxsync stored it, one JSON file: read once, to import it.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Stored {
    /// Which hash the versions carry ([`CONTENT_HASH`]).
    #[serde(default)]
    hash: String,
    agreed: Vec<(RelPath, Version)>,
    #[serde(default)]
    ours: Vec<(RelPath, Vec<Version>)>,
    #[serde(default)]
    copies: Vec<(RelPath, Version)>,
    #[serde(default)]
    inbox: Option<(u64, u64)>,
    #[serde(default)]
    unconfirmed: Vec<Agreement>,
    #[serde(default)]
    landing: Vec<(RelPath, Version)>,
}

/// Why a database could not be read.
enum Failure {
    /// It is no record of this build (damaged, not a database, another layout or hash, a
    /// row that does not parse): set aside.
    Unusable(String),
    /// It could not be read now (permissions, a full disk): left alone, the load fails.
    Io(io::Error),
}

impl From<rusqlite::Error> for Failure {
    /// What keeps the file from being read now (the disk, permissions, another process)
    /// fails the load and leaves it; anything else says it is no record of this build.
    fn from(e: rusqlite::Error) -> Failure {
        use rusqlite::ErrorCode as C;
        let now = matches!(
            e.sqlite_error_code(),
            Some(
                C::SystemIoFailure
                    | C::CannotOpen
                    | C::PermissionDenied
                    | C::DiskFull
                    | C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::OutOfMemory
                    | C::ReadOnly
                    | C::FileLockingProtocolFailed
            )
        );
        if now {
            Failure::Io(db_error(e))
        } else {
            Failure::Unusable(e.to_string())
        }
    }
}

/// A database error as the I/O error the record's API returns.
fn db_error(e: rusqlite::Error) -> io::Error {
    io::Error::other(e)
}

/// A stored row that does not parse, as an error SQLite's row mapping carries.
fn bad_row(what: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        what.to_string().into(),
    )
}

impl Record {
    /// Loads the record kept with the peer `peer_id` under `state_dir`. A missing record is
    /// empty (first sync, or `.boxsync/` was lost: sync then merges, never deletes), and so
    /// is one whose versions name contents by another hash, or that cannot be read as a
    /// record (set aside, see the module's doc). A record in the older JSON form is
    /// imported into the database, then removed.
    pub fn load(state_dir: &Path, peer_id: &BoxId) -> io::Result<Record> {
        // A box id is base-32 digits only: the names stay inside the records' folder.
        let dir = state_dir.join(RECORD_DIR);
        let file = dir.join(format!("{peer_id}.db"));
        let json = dir.join(format!("{peer_id}.json"));
        let mut record = Record {
            file: file.clone(),
            ..Record::default()
        };
        let has_json = json.exists();
        if !file.exists() && !has_json {
            return Ok(record);
        }
        let stored = match open(&file) {
            Ok((mut conn, 0)) => {
                // No database yet, or one whose creation never committed: the JSON (if
                // any) is the record.
                let stored = if has_json {
                    read_json(&json)?
                } else {
                    Stored::default()
                };
                match import(&mut conn, &stored).map_err(Failure::from) {
                    Ok(()) => {
                        *record.conn.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                    }
                    // A database of someone else's, say (tables but no layout number).
                    Err(Failure::Unusable(reason)) => {
                        drop(conn);
                        record.begin_anew(&reason, &stored)?;
                    }
                    Err(Failure::Io(e)) => return Err(e),
                }
                stored
            }
            Ok((conn, _)) => match read_all(&conn) {
                Ok((stored, base)) => {
                    record.unsaved.owed_base = base;
                    record.unsaved.owed_saved_base = base;
                    *record.conn.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                    stored
                }
                Err(Failure::Unusable(reason)) => {
                    drop(conn);
                    record.begin_anew(&reason, &Stored::default())?;
                    Stored::default()
                }
                Err(Failure::Io(e)) => return Err(e),
            },
            Err(Failure::Unusable(reason)) => {
                record.begin_anew(&reason, &Stored::default())?;
                Stored::default()
            }
            Err(Failure::Io(e)) => return Err(e),
        };
        if has_json {
            // Imported now or at an earlier load that stopped before removing it; the
            // database's name durable before the JSON's removal.
            fs::File::open(&dir)?.sync_all()?;
            fs::remove_file(&json)?;
            fs::File::open(&dir)?.sync_all()?;
        }
        record.entries = stored.agreed.into_iter().collect();
        record.ours = stored.ours.into_iter().collect();
        record.copies = stored.copies.into_iter().collect();
        record.inbox = stored.inbox;
        record.landing = stored.landing;
        record.unconfirmed = stored.unconfirmed;
        record.unsaved.owed_saved = record.unconfirmed.len();
        Ok(record)
    }

    /// Sets the unusable database aside (logged, `reason`) and starts a new one holding
    /// `stored` (empty, or a JSON record being imported).
    fn begin_anew(&mut self, reason: &str, stored: &Stored) -> io::Result<()> {
        let moved_to = set_aside(&self.file);
        tracing::warn!(
            record = %self.file.display(),
            moved_to = %moved_to.display(),
            reason,
            "the sync record cannot be used: set aside, starting an empty one (sync merges)"
        );
        let mut conn = match open(&self.file) {
            Ok((conn, _)) => conn,
            Err(Failure::Unusable(reason)) => return Err(io::Error::other(reason)),
            Err(Failure::Io(e)) => return Err(e),
        };
        import(&mut conn, stored).map_err(db_error)?;
        *self.conn.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        Ok(())
    }

    /// Changes since it was loaded: equal revisions mean an unchanged record.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The paths whose `entries`, `ours` or `copies` changed since the last call (whatever
    /// changed them), for a planner that compares only those; [`Touched::All`] right after
    /// loading, and when too many changed to list. Saving does not affect it.
    pub fn take_touched(&mut self) -> Touched {
        std::mem::replace(&mut self.touched, Touched::Paths(BTreeSet::new()))
    }

    /// Notes that `path`'s `entries`, `ours` or `copies` changed.
    fn changed(&mut self, path: &RelPath) {
        self.revision += 1;
        self.touched.add(path);
        if !self.unsaved.paths.contains(path) {
            self.unsaved.paths.insert(path.clone());
        }
    }

    /// Remembers that this box held (or sent) `version` of `path` since the last agreement.
    pub fn add_ours(&mut self, path: &RelPath, version: Version) {
        let list = self.ours.entry(path.clone()).or_default();
        if !list.iter().any(|v| v.same(&version)) {
            list.push(version);
            if list.len() > MAX_OURS {
                list.remove(0);
            }
            self.changed(path);
        }
    }

    /// Remembers as ours every version held `here` that the peer has not agreed to yet
    /// (the plan's `agreed`), so that a peer found holding it later lags behind.
    pub fn hold_unagreed(
        &mut self,
        here: &BTreeMap<RelPath, Version>,
        agreed: &BTreeMap<RelPath, Option<Version>>,
    ) {
        for (path, version) in here {
            if !agreed.contains_key(path) && self.entries.get(path).is_none_or(|s| !s.same(version))
            {
                self.add_ours(path, version.clone());
            }
        }
    }

    /// Whether the notice numbered `n` in the peer's journal `epoch` was applied already.
    pub fn applied(&self, epoch: u64, n: u64) -> bool {
        self.inbox.is_some_and(|(e, last)| e == epoch && n <= last)
    }

    /// Notes that the notice numbered `n` in journal `epoch` is applied.
    pub fn mark_applied(&mut self, epoch: u64, n: u64) {
        self.inbox = Some((epoch, n));
        self.unsaved.inbox = true;
        self.revision += 1;
    }

    /// Notes the peer's versions about to be installed under their own names.
    pub fn expect_landing(&mut self, versions: Vec<(RelPath, Version)>) {
        if !versions.is_empty() || !self.landing.is_empty() {
            self.landing = versions;
            self.unsaved.landing = true;
        }
    }

    /// Settles the landings noted by an earlier round: each one the folder holds (`here`)
    /// is agreed, and returned, for the peer to be told; the others are forgotten.
    pub fn settle_landing(&mut self, here: &BTreeMap<RelPath, Version>) -> Vec<(RelPath, Version)> {
        if !self.landing.is_empty() {
            self.unsaved.landing = true;
        }
        // A version from a plain index (first contact) names no hash: its size, time and
        // mode must match, and the agreement is on what the folder holds.
        let landed: Vec<(RelPath, Version)> = std::mem::take(&mut self.landing)
            .into_iter()
            .filter_map(|(path, version)| {
                let held = here.get(&path)?;
                let unhashed = version.blake3.is_none()
                    && !version.dir
                    && (held.size, held.mtime, held.mode)
                        == (version.size, version.mtime, version.mode);
                (held.same(&version) || unhashed).then(|| (path, held.clone()))
            })
            .collect();
        self.update(landed.iter().cloned().map(|(p, v)| (p, Some(v))));
        landed
    }

    /// Keeps confirmations that did not reach the peer, to send again.
    pub fn owe(&mut self, versions: impl IntoIterator<Item = Agreement>) {
        // A save appends what the database does not hold yet.
        self.unconfirmed.extend(versions);
    }

    /// The peer acknowledged the confirmations owed: they go.
    pub fn paid(&mut self) {
        self.paid_first(self.unconfirmed.len());
    }

    /// The peer acknowledged the first `n` confirmations owed: those go.
    pub fn paid_first(&mut self, n: usize) {
        let n = n.min(self.unconfirmed.len());
        if n > 0 {
            self.unconfirmed.drain(..n);
            // A save deletes the rows numbered below the new front.
            self.unsaved.owed_base += n as i64;
            self.unsaved.owed_saved = self.unsaved.owed_saved.saturating_sub(n);
        }
    }

    /// Remembers that the peer made `path`, a conflict copy of this box's `version`, which
    /// this box has not set aside there yet.
    pub fn add_copy(&mut self, path: RelPath, version: Version) {
        if self.copies.get(&path) != Some(&version) {
            self.changed(&path);
            self.copies.insert(path, version);
        }
    }

    /// Applies what both boxes now agree on (`None`: both lack the path).
    pub fn update(&mut self, agreed: impl IntoIterator<Item = (RelPath, Option<Version>)>) {
        for (path, version) in agreed {
            let forgot = self.ours.remove(&path).is_some() | self.copies.remove(&path).is_some();
            let before = match version {
                Some(version) => {
                    let unchanged = self.entries.get(&path).is_some_and(|v| *v == version);
                    if !unchanged {
                        self.entries.insert(path.clone(), version);
                    }
                    unchanged
                }
                None => self.entries.remove(&path).is_none(),
            };
            if forgot || !before {
                self.changed(&path);
            }
        }
    }

    /// Writes what changed since the last save (nothing if nothing did), in one
    /// transaction, flushed before it returns: its cost follows the change, not the record.
    /// A save that fails leaves the changes to the next one.
    pub fn save(&mut self) -> io::Result<()> {
        if !self.unsaved.any(self.unconfirmed.len()) {
            return Ok(());
        }
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        if conn.is_some() && !self.file.exists() {
            // The state folder was deleted under the running box: the record is written
            // whole into a new database, as it stands in memory.
            *conn = None;
            let unsaved = &mut self.unsaved;
            unsaved.paths = (self.entries.keys())
                .chain(self.ours.keys())
                .chain(self.copies.keys())
                .cloned()
                .collect();
            unsaved.landing = true;
            unsaved.inbox = true;
            unsaved.owed_saved = 0;
        }
        if conn.is_none() {
            *conn = Some(create(&self.file)?);
        }
        let Some(conn) = conn.as_mut() else {
            return Err(io::Error::other("the sync record's database is not open"));
        };
        let tx = conn.transaction().map_err(db_error)?;
        write_changes(
            &tx,
            &self.unsaved,
            Contents {
                entries: &self.entries,
                ours: &self.ours,
                copies: &self.copies,
                inbox: self.inbox,
                landing: &self.landing,
                unconfirmed: &self.unconfirmed,
            },
        )
        .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        let unsaved = &mut self.unsaved;
        unsaved.paths.clear();
        unsaved.landing = false;
        unsaved.inbox = false;
        unsaved.owed_saved_base = unsaved.owed_base;
        unsaved.owed_saved = self.unconfirmed.len();
        Ok(())
    }
}

/// The parts of a record a save writes, borrowed from it.
struct Contents<'a> {
    entries: &'a BTreeMap<RelPath, Version>,
    ours: &'a BTreeMap<RelPath, Vec<Version>>,
    copies: &'a BTreeMap<RelPath, Version>,
    inbox: Option<(u64, u64)>,
    landing: &'a [(RelPath, Version)],
    unconfirmed: &'a [Agreement],
}

/// Writes in `tx` what `unsaved` names, from the record's current contents.
fn write_changes(
    tx: &Transaction<'_>,
    unsaved: &Unsaved,
    Contents {
        entries,
        ours,
        copies,
        inbox,
        landing,
        unconfirmed,
    }: Contents<'_>,
) -> rusqlite::Result<()> {
    if !unsaved.paths.is_empty() {
        let mut put_entry = tx.prepare(&format!(
            "INSERT OR REPLACE INTO entries (path, {VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        ))?;
        let mut put_copy = tx.prepare(&format!(
            "INSERT OR REPLACE INTO copies (path, {VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        ))?;
        let mut put_ours =
            tx.prepare("INSERT OR REPLACE INTO ours (path, versions) VALUES (?1, ?2)")?;
        let mut drop_entry = tx.prepare("DELETE FROM entries WHERE path = ?1")?;
        let mut drop_copy = tx.prepare("DELETE FROM copies WHERE path = ?1")?;
        let mut drop_ours = tx.prepare("DELETE FROM ours WHERE path = ?1")?;
        for path in &unsaved.paths {
            let name = path.as_str();
            match entries.get(path) {
                Some(v) => put_version(&mut put_entry, name, v)?,
                None => drop_entry.execute([name])?,
            };
            match copies.get(path) {
                Some(v) => put_version(&mut put_copy, name, v)?,
                None => drop_copy.execute([name])?,
            };
            match ours.get(path) {
                Some(list) => put_ours.execute(params![name, to_json(list)?])?,
                None => drop_ours.execute([name])?,
            };
        }
    }
    if unsaved.landing {
        tx.execute("DELETE FROM landing", [])?;
        insert_landing(tx, landing)?;
    }
    if unsaved.inbox {
        let (epoch, n) = inbox.map_or((None, None), |(e, n)| (Some(e as i64), Some(n as i64)));
        tx.execute(
            "UPDATE meta SET inbox_epoch = ?1, inbox_n = ?2",
            params![epoch, n],
        )?;
    }
    if unsaved.owed_base != unsaved.owed_saved_base {
        tx.execute(
            "DELETE FROM unconfirmed WHERE seq < ?1",
            [unsaved.owed_base],
        )?;
    }
    insert_owed(tx, unsaved.owed_base, unsaved.owed_saved, unconfirmed)?;
    Ok(())
}

/// Appends `unconfirmed[from..]`, numbered from `base` (the first one's `seq`).
fn insert_owed(
    tx: &Transaction<'_>,
    base: i64,
    from: usize,
    unconfirmed: &[Agreement],
) -> rusqlite::Result<()> {
    if from >= unconfirmed.len() {
        return Ok(());
    }
    let mut put = tx.prepare("INSERT INTO unconfirmed (seq, agreement) VALUES (?1, ?2)")?;
    for (i, agreement) in unconfirmed.iter().enumerate().skip(from) {
        put.execute(params![base + i as i64, to_json(agreement)?])?;
    }
    Ok(())
}

/// Writes the landings, in their order.
fn insert_landing(tx: &Transaction<'_>, landing: &[(RelPath, Version)]) -> rusqlite::Result<()> {
    let mut put = tx.prepare(&format!(
        "INSERT INTO landing (seq, path, {VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?;
    for (i, (path, v)) in landing.iter().enumerate() {
        put.execute(params![
            i as i64,
            path.as_str(),
            v.dir,
            v.blake3,
            v.size as i64,
            v.mtime.0.timestamp(),
            v.mtime.0.timestamp_subsec_nanos(),
            v.mode
        ])?;
    }
    Ok(())
}

/// Runs `statement` (path then [`VERSION_COLUMNS`]) for `version`.
fn put_version(
    statement: &mut rusqlite::Statement<'_>,
    path: &str,
    v: &Version,
) -> rusqlite::Result<usize> {
    statement.execute(params![
        path,
        v.dir,
        v.blake3,
        v.size as i64,
        v.mtime.0.timestamp(),
        v.mtime.0.timestamp_subsec_nanos(),
        v.mode
    ])
}

/// Reads a version from `row`, its [`VERSION_COLUMNS`] from column `at` on.
fn get_version(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Version> {
    let (secs, nanos): (i64, u32) = (row.get(at + 3)?, row.get(at + 4)?);
    let mtime = chrono::DateTime::from_timestamp(secs, nanos)
        .ok_or_else(|| bad_row(format!("a time out of range: {secs}.{nanos}")))?;
    Ok(Version {
        dir: row.get(at)?,
        blake3: row.get(at + 1)?,
        size: row.get::<_, i64>(at + 2)? as u64,
        mtime: Timestamp(mtime),
        mode: row.get(at + 5)?,
    })
}

/// Reads a path from column `at` of `row`, refusing one that is not a valid relative path.
fn get_path(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<RelPath> {
    let text = row.get_ref(at)?.as_str()?;
    RelPath::parse(text).map_err(|e| bad_row(format!("path {text:?}: {e}")))
}

/// Reads JSON text from column `at` of `row`.
fn get_json<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    at: usize,
) -> rusqlite::Result<T> {
    serde_json::from_str(row.get_ref(at)?.as_str()?).map_err(bad_row)
}

/// `value` as JSON text.
fn to_json(value: &impl serde::Serialize) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

/// Opens `file` (creating an empty file if missing) and returns it with its layout number
/// (0: no layout committed yet).
fn open(file: &Path) -> Result<(Connection, i64), Failure> {
    let conn = Connection::open(file)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let schema: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if schema != 0 && schema != SCHEMA {
        return Err(Failure::Unusable(format!(
            "it has layout {schema}, this boxsync uses layout {SCHEMA}"
        )));
    }
    Ok((conn, schema))
}

/// Makes the database of a record that had none (its first save), its folder too.
fn create(file: &Path) -> io::Result<Connection> {
    let dir = file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut conn = match open(file) {
        Ok((conn, _)) => conn,
        Err(Failure::Unusable(reason)) => return Err(io::Error::other(reason)),
        Err(Failure::Io(e)) => return Err(e),
    };
    import(&mut conn, &Stored::default()).map_err(db_error)?;
    // The new file's name durable too.
    fs::File::open(dir)?.sync_all()?;
    Ok(conn)
}

/// Creates the tables in a database that has none and fills them with `stored` (all of
/// it, or, if the hash it names is not today's, nothing), in one transaction: a crash
/// before it commits leaves no layout, and the next load imports again.
fn import(conn: &mut Connection, stored: &Stored) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(TABLES)?;
    tx.execute(
        "INSERT INTO meta (hash, inbox_epoch, inbox_n) VALUES (?1, NULL, NULL)",
        [CONTENT_HASH],
    )?;
    if stored.hash == CONTENT_HASH {
        let entries: BTreeMap<_, _> = stored.agreed.iter().cloned().collect();
        let ours: BTreeMap<_, _> = stored.ours.iter().cloned().collect();
        let copies: BTreeMap<_, _> = stored.copies.iter().cloned().collect();
        let unsaved = Unsaved {
            paths: entries
                .keys()
                .chain(ours.keys())
                .chain(copies.keys())
                .cloned()
                .collect(),
            landing: true,
            inbox: true,
            ..Unsaved::default()
        };
        write_changes(
            &tx,
            &unsaved,
            Contents {
                entries: &entries,
                ours: &ours,
                copies: &copies,
                inbox: stored.inbox,
                landing: &stored.landing,
                unconfirmed: &stored.unconfirmed,
            },
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA)?;
    tx.commit()
}

/// Reads the older JSON record (an error if it does not parse, as it always was); one
/// that names another content hash reads as empty.
fn read_json(file: &Path) -> io::Result<Stored> {
    let bytes = fs::read(file)?;
    let stored = serde_json::from_slice::<Stored>(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(if stored.hash == CONTENT_HASH {
        stored
    } else {
        Stored::default()
    })
}

/// Reads the whole record from its database, one query per table, with the `seq` of the
/// first confirmation owed.
fn read_all(conn: &Connection) -> Result<(Stored, i64), Failure> {
    let meta: Option<(String, Option<i64>, Option<i64>)> = conn
        .query_row("SELECT hash, inbox_epoch, inbox_n FROM meta", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((hash, epoch, n)) = meta else {
        return Err(Failure::Unusable("it has no meta row".into()));
    };
    if hash != CONTENT_HASH {
        return Err(Failure::Unusable(format!(
            "its versions name contents by {hash}, this boxsync by {CONTENT_HASH}"
        )));
    }
    let versions = |table: &str| -> rusqlite::Result<Vec<(RelPath, Version)>> {
        let order = if table == "landing" {
            "ORDER BY seq"
        } else {
            ""
        };
        conn.prepare(&format!(
            "SELECT path, {VERSION_COLUMNS} FROM {table} {order}"
        ))?
        .query_map([], |row| Ok((get_path(row, 0)?, get_version(row, 1)?)))?
        .collect()
    };
    let agreed = versions("entries")?;
    let copies = versions("copies")?;
    let landing = versions("landing")?;
    let ours = conn
        .prepare("SELECT path, versions FROM ours")?
        .query_map([], |row| Ok((get_path(row, 0)?, get_json(row, 1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let owed: Vec<(i64, Agreement)> = conn
        .prepare("SELECT seq, agreement FROM unconfirmed ORDER BY seq")?
        .query_map([], |row| Ok((row.get(0)?, get_json(row, 1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Numbered without gaps from the first (every save keeps them so).
    if owed.windows(2).any(|w| w[1].0 != w[0].0 + 1) {
        return Err(Failure::Unusable(
            "its confirmations owed are not numbered in order".into(),
        ));
    }
    let base = owed.first().map_or(0, |(seq, _)| *seq);
    let stored = Stored {
        hash,
        agreed,
        ours,
        copies,
        inbox: epoch.zip(n).map(|(e, n)| (e as u64, n as u64)),
        unconfirmed: owed.into_iter().map(|(_, a)| a).collect(),
        landing,
    };
    Ok((stored, base))
}

/// Moves an unusable database (and its WAL files with it) out of the way, under a name
/// that says when; returns the new name. A failure to move removes it instead.
fn set_aside(file: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let moved_to = file.with_extension(format!("db.broken-{secs}"));
    let with = |path: &Path, suffix: &str| {
        let mut side = path.as_os_str().to_os_string();
        side.push(suffix);
        PathBuf::from(side)
    };
    for suffix in ["", "-wal", "-shm"] {
        if fs::rename(with(file, suffix), with(&moved_to, suffix)).is_err() {
            let _ = fs::remove_file(with(file, suffix));
        }
    }
    moved_to
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::BoxId;

    /// The peer the records are kept with.
    fn peer() -> BoxId {
        BoxId::from_public_key(b"peer")
    }

    fn version(blake3: &str) -> Version {
        Version::test_file(blake3, 1_700_000_000)
    }

    fn rel(p: &str) -> RelPath {
        RelPath::parse(p).unwrap()
    }

    /// A confirmation owed for the file `name`.
    fn owed(name: &str) -> Agreement {
        Agreement::Lacks { removed: rel(name) }
    }

    fn db_file(state: &Path) -> PathBuf {
        state.join(RECORD_DIR).join(format!("{}.db", peer()))
    }

    fn json_file(state: &Path) -> PathBuf {
        state.join(RECORD_DIR).join(format!("{}.json", peer()))
    }

    /// Rows the record's connection changed so far.
    fn rows_written(record: &mut Record) -> u64 {
        record
            .conn
            .get_mut()
            .unwrap()
            .as_ref()
            .map_or(0, |c| c.total_changes())
    }

    /// A save writes what changed and only that: one changed path is one row (as a fresh
    /// load sees), and a save with nothing changed does not write to the database at all.
    #[test]
    fn a_save_writes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.update((0..100).map(|i| (rel(&format!("f{i}")), Some(version("old")))));
        record.save().unwrap();
        let watcher = Connection::open(db_file(dir.path())).unwrap();
        let data_version = |c: &Connection| -> i64 {
            c.pragma_query_value(None, "data_version", |r| r.get(0))
                .unwrap()
        };
        let seen = data_version(&watcher);

        let written = rows_written(&mut record);
        record.save().unwrap();
        assert_eq!(rows_written(&mut record), written);
        assert_eq!(data_version(&watcher), seen, "a save with no change wrote");

        record.update([(rel("f7"), Some(version("new")))]);
        record.save().unwrap();
        assert_eq!(rows_written(&mut record), written + 1);
        assert_ne!(data_version(&watcher), seen);
        let loaded = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(loaded.entries.len(), 100);
        assert_eq!(loaded.entries[&rel("f7")], version("new"));
        assert_eq!(loaded.entries[&rel("f8")], version("old"));

        // A path both lack goes from the database too.
        let mut record = loaded;
        record.update([(rel("f8"), None)]);
        record.save().unwrap();
        let loaded = Record::load(dir.path(), &peer()).unwrap();
        assert!(!loaded.entries.contains_key(&rel("f8")) && loaded.entries.len() == 99);
    }

    /// A record whose database was deleted under the running box (the state folder went)
    /// is written whole again at the next save that has a change to write.
    #[test]
    fn a_deleted_database_is_written_whole_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.update([(rel("a"), Some(version("a")))]);
        record.owe([owed("x")]);
        record.mark_applied(3, 4);
        record.save().unwrap();
        fs::remove_dir_all(dir.path().join(RECORD_DIR)).unwrap();
        record.update([(rel("b"), Some(version("b")))]);
        record.save().unwrap();
        let loaded = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(loaded.entries, record.entries);
        assert_eq!(loaded.unconfirmed, [owed("x")]);
        assert_eq!(loaded.inbox, Some((3, 4)));
    }

    /// A box killed between two saves finds the record as the last save left it.
    #[test]
    fn a_kill_between_saves_keeps_the_last_save() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.update([(rel("a"), Some(version("a")))]);
        record.add_ours(&rel("o"), version("o"));
        record.owe([owed("x")]);
        record.mark_applied(1, 2);
        record.save().unwrap();
        record.update([(rel("b"), Some(version("b"))), (rel("a"), None)]);
        record.add_copy(rel("c"), version("c"));
        record.owe([owed("y")]);
        record.paid_first(1);
        record.mark_applied(1, 3);
        record.expect_landing(vec![(rel("l"), version("l"))]);
        drop(record);
        let loaded = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(loaded.entries.keys().collect::<Vec<_>>(), [&rel("a")]);
        assert_eq!(loaded.ours[&rel("o")], [version("o")]);
        assert!(loaded.copies.is_empty() && loaded.landing.is_empty());
        assert_eq!(loaded.unconfirmed, [owed("x")]);
        assert_eq!(loaded.inbox, Some((1, 2)));
    }

    /// Confirmations owed keep their order through appends, partial payments, saves and
    /// loads, whether a payment takes rows already saved or not yet.
    #[test]
    fn confirmations_owed_keep_their_order_across_saves() {
        let dir = tempfile::tempdir().unwrap();
        let names = |list: &[Agreement]| -> Vec<String> {
            list.iter()
                .map(|a| match a {
                    Agreement::Lacks { removed } => removed.to_string(),
                    Agreement::Holds(f) => f.name.to_string(),
                })
                .collect()
        };
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.owe(["a", "b", "c"].map(owed));
        record.save().unwrap();
        record.owe(["d", "e"].map(owed));
        record.paid_first(1);
        record.save().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(names(&record.unconfirmed), ["b", "c", "d", "e"]);
        // Paid past the saved rows into ones not saved yet.
        record.owe(["f", "g"].map(owed));
        record.paid_first(5);
        record.owe(["h"].map(owed));
        record.save().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(names(&record.unconfirmed), ["g", "h"]);
        record.paid_first(1);
        record.save().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(names(&record.unconfirmed), ["h"]);
        record.paid();
        record.owe(["i", "j"].map(owed));
        record.save().unwrap();
        let record = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(names(&record.unconfirmed), ["i", "j"]);
    }

    /// A database that is no record of this build (not a database, versions named by
    /// another hash, a newer layout) is set aside, kept under another name, and the record
    /// starts empty; it saves and loads as any other from then on.
    #[test]
    fn an_unusable_database_is_set_aside() {
        let set_aside = |state: &Path| -> Vec<PathBuf> {
            fs::read_dir(state.join(RECORD_DIR))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().contains(".db.broken-"))
                .collect()
        };
        let saved = |state: &Path| {
            let mut record = Record::load(state, &peer()).unwrap();
            record.update([(rel("a"), Some(version("a")))]);
            record.save().unwrap();
        };
        let damages: [&dyn Fn(&Path); 3] = [
            &|db| fs::write(db, b"this is not a database, it is a text file".repeat(200)).unwrap(),
            &|db| {
                let c = Connection::open(db).unwrap();
                c.execute("UPDATE meta SET hash = 'sha256'", []).unwrap();
            },
            &|db| {
                let c = Connection::open(db).unwrap();
                c.pragma_update(None, "user_version", 99).unwrap();
            },
        ];
        for damage in damages {
            let dir = tempfile::tempdir().unwrap();
            saved(dir.path());
            damage(&db_file(dir.path()));
            let mut record = Record::load(dir.path(), &peer()).unwrap();
            assert!(record.entries.is_empty());
            assert_eq!(set_aside(dir.path()).len(), 1);
            record.update([(rel("b"), Some(version("b")))]);
            record.save().unwrap();
            let loaded = Record::load(dir.path(), &peer()).unwrap();
            assert_eq!(loaded.entries.keys().collect::<Vec<_>>(), [&rel("b")]);
        }
    }

    /// A record just loaded answers "everything" (nothing was planned against it); after
    /// that, the paths changed since the last answer, whatever changed them, saved or not;
    /// past the limit, everything again.
    #[test]
    fn touched_paths_are_those_changed_since_the_last_answer() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(record.take_touched(), Touched::All);
        assert_eq!(record.take_touched(), Touched::Paths(BTreeSet::new()));
        record.update([(rel("a"), Some(version("a")))]);
        record.add_ours(&rel("b"), version("b"));
        record.add_copy(rel("c"), version("c"));
        // Not changes: the same version again, an inbox mark, confirmations owed.
        record.update([(rel("a"), Some(version("a")))]);
        record.mark_applied(1, 1);
        record.owe([owed("z")]);
        record.save().unwrap();
        assert_eq!(
            record.take_touched(),
            Touched::Paths([rel("a"), rel("b"), rel("c")].into())
        );
        // A landing agreed touches its path; taking touched leaves the save its work.
        record.expect_landing(vec![(rel("l"), version("l"))]);
        let here = [(rel("l"), version("l"))].into();
        record.settle_landing(&here);
        assert_eq!(record.take_touched(), Touched::Paths([rel("l")].into()));
        record.save().unwrap();
        let mut loaded = Record::load(dir.path(), &peer()).unwrap();
        assert!(loaded.entries.contains_key(&rel("l")));
        assert_eq!(loaded.take_touched(), Touched::All);

        loaded.update((0..=MAX_TOUCHED).map(|i| (rel(&format!("many/{i}")), Some(version("m")))));
        assert_eq!(loaded.take_touched(), Touched::All);
        assert_eq!(loaded.take_touched(), Touched::Paths(BTreeSet::new()));
    }

    /// Timings at a million paths (run by hand: `cargo test --release --lib record --
    /// --ignored --nocapture`): the first save, a load, and a save of one change.
    #[test]
    #[ignore]
    fn a_million_paths_load_and_save() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        let hash = "0123456789abcdef".repeat(4);
        record.update((0..1_000_000).map(|i| {
            (
                rel(&format!("folder{}/sub{}/file-{i}.dat", i % 100, i % 7)),
                Some(version(&hash)),
            )
        }));
        let started = std::time::Instant::now();
        record.save().unwrap();
        eprintln!("first save of 1,000,000 entries: {:?}", started.elapsed());
        drop(record);
        let started = std::time::Instant::now();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        eprintln!("load of 1,000,000 entries: {:?}", started.elapsed());
        assert_eq!(record.entries.len(), 1_000_000);
        record.update([(rel("folder3/sub3/file-3.dat"), Some(version("changed")))]);
        let started = std::time::Instant::now();
        record.save().unwrap();
        eprintln!("save of one change: {:?}", started.elapsed());
        record.owe([owed("x")]);
        let started = std::time::Instant::now();
        record.save().unwrap();
        eprintln!("save of one confirmation owed: {:?}", started.elapsed());
    }

    /// A saved record comes back as it was; one written (as JSON) by a boxsync that named
    /// contents by SHA-256 comes back empty, so that sync merges instead of comparing hashes
    /// of two kinds (which would take every file for changed); a JSON record of today's kind
    /// is imported whole, and the JSON file goes.
    #[test]
    fn loads_its_own_format_and_sets_an_older_one_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = RelPath::parse("a.txt").unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.update([(path.clone(), Some(version("abc")))]);
        record.save().unwrap();
        let loaded = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(loaded.entries.get(&path), Some(&version("abc")));

        let older_dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(older_dir.path().join(RECORD_DIR)).unwrap();
        let older = r#"{"agreed":[["a.txt",{"dir":false,"sha256":"abc","size":3,"mtime":"2023-11-14T22:13:20Z","mode":420}]],"ours":[]}"#;
        let json = json_file(older_dir.path());
        fs::write(&json, older).unwrap();
        let loaded = Record::load(older_dir.path(), &peer()).unwrap();
        assert!(loaded.entries.is_empty());
        assert!(!json.exists(), "the older record stays");
        assert!(db_file(older_dir.path()).exists());

        // Today's JSON form, with every part filled in.
        let current_dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(current_dir.path().join(RECORD_DIR)).unwrap();
        let stored = Stored {
            hash: CONTENT_HASH.into(),
            agreed: vec![(rel("a.txt"), version("abc")), (rel("d/b"), version("b"))],
            ours: vec![(rel("a.txt"), vec![version("x"), version("y")])],
            copies: vec![(rel("c.txt"), version("c"))],
            inbox: Some((5, 9)),
            unconfirmed: vec![owed("u1"), owed("u2")],
            landing: vec![(rel("l"), version("l"))],
        };
        let json = json_file(current_dir.path());
        fs::write(&json, serde_json::to_vec(&stored).unwrap()).unwrap();
        for _ in 0..2 {
            let loaded = Record::load(current_dir.path(), &peer()).unwrap();
            assert_eq!(loaded.entries, stored.agreed.iter().cloned().collect());
            assert_eq!(loaded.ours, stored.ours.iter().cloned().collect());
            assert_eq!(loaded.copies, stored.copies.iter().cloned().collect());
            assert_eq!(loaded.inbox, Some((5, 9)));
            assert_eq!(loaded.unconfirmed, stored.unconfirmed);
            assert_eq!(loaded.landing, stored.landing);
            assert!(!json.exists(), "the imported JSON stays");
        }

        // A crash after the import committed, before the JSON went: the database is the
        // record, and the JSON goes at the next load.
        let mut record = Record::load(current_dir.path(), &peer()).unwrap();
        record.update([(rel("a.txt"), None)]);
        record.save().unwrap();
        fs::write(&json, serde_json::to_vec(&stored).unwrap()).unwrap();
        let loaded = Record::load(current_dir.path(), &peer()).unwrap();
        assert!(!loaded.entries.contains_key(&rel("a.txt")));
        assert!(!json.exists());

        // A crash during the import (a database file with no layout yet): imported again.
        let crashed_dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(crashed_dir.path().join(RECORD_DIR)).unwrap();
        Connection::open(db_file(crashed_dir.path()))
            .unwrap()
            .pragma_update(None, "journal_mode", "WAL")
            .unwrap();
        let json = json_file(crashed_dir.path());
        fs::write(&json, serde_json::to_vec(&stored).unwrap()).unwrap();
        let loaded = Record::load(crashed_dir.path(), &peer()).unwrap();
        assert_eq!(loaded.entries, stored.agreed.iter().cloned().collect());
        assert!(!json.exists());
    }

    /// What a crash must not lose is saved with the record: the last inbox notice applied
    /// (so that a replayed journal applies nothing twice) and the confirmations owed to
    /// the peer, until it acknowledged them.
    #[test]
    fn keeps_the_inbox_mark_and_the_confirmations_owed() {
        let dir = tempfile::tempdir().unwrap();
        let held = Agreement::Holds(crate::types::FileVersion {
            name: RelPath::parse("f.txt").unwrap(),
            blake3: "0".repeat(64),
            size: 1,
            mtime: crate::time::Timestamp::now(),
            mode: 0o644,
        });
        let lacked = Agreement::Lacks {
            removed: RelPath::parse("g.txt").unwrap(),
        };
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.mark_applied(7, 3);
        record.owe([held.clone(), lacked.clone()]);
        record.save().unwrap();
        let mut loaded = Record::load(dir.path(), &peer()).unwrap();
        assert!(loaded.applied(7, 3) && loaded.applied(7, 1));
        assert!(!loaded.applied(7, 4) && !loaded.applied(8, 1));
        assert_eq!(loaded.unconfirmed, [held, lacked.clone()]);
        // The peer took the first before refusing more: only the rest stay owed.
        loaded.paid_first(1);
        assert_eq!(loaded.unconfirmed, [lacked]);
        loaded.paid();
        loaded.save().unwrap();
        assert!(
            Record::load(dir.path(), &peer())
                .unwrap()
                .unconfirmed
                .is_empty()
        );
    }

    /// A landing noted before a crash is agreed at the next round if the folder holds that
    /// version, and forgotten if it does not.
    #[test]
    fn a_landing_the_folder_holds_is_agreed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (RelPath::parse("a").unwrap(), RelPath::parse("b").unwrap());
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.expect_landing(vec![(a.clone(), version("new")), (b.clone(), version("x"))]);
        record.save().unwrap();
        let mut loaded = Record::load(dir.path(), &peer()).unwrap();
        let here: BTreeMap<RelPath, Version> =
            [(a.clone(), version("new")), (b.clone(), version("other"))].into();
        let landed = loaded.settle_landing(&here);
        assert_eq!(landed, [(a.clone(), version("new"))]);
        assert_eq!(loaded.entries.get(&a), Some(&version("new")));
        assert!(!loaded.entries.contains_key(&b));
        assert!(loaded.landing.is_empty());
    }

    /// A conflict copy the peer made of our version waits, saved, until both hold it; the
    /// agreement then takes its place.
    #[test]
    fn a_copy_the_peer_made_waits_for_the_agreement() {
        let dir = tempfile::tempdir().unwrap();
        let copy = RelPath::parse("a.sync-conflict-20231114-221320-CCCCCCC.txt").unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.add_copy(copy.clone(), version("v"));
        assert!(record.entries.is_empty());
        record.save().unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        assert_eq!(record.copies.get(&copy), Some(&version("v")));
        let before = record.revision();
        record.update([(copy.clone(), Some(version("v")))]);
        assert!(record.copies.is_empty());
        assert_eq!(record.entries.get(&copy), Some(&version("v")));
        assert!(record.revision() > before);
    }

    /// A version held here is remembered as ours unless the plan found both agreeing on the
    /// path, or it is the record's own version (nothing new to remember).
    #[test]
    fn only_unagreed_new_versions_are_held() {
        let dir = tempfile::tempdir().unwrap();
        let rel = |p: &str| RelPath::parse(p).unwrap();
        let mut record = Record::load(dir.path(), &peer()).unwrap();
        record.update([(rel("same.txt"), Some(version("s")))]);
        let here: BTreeMap<RelPath, Version> = [
            (rel("new.txt"), version("n")),
            (rel("agreed.txt"), version("a")),
            (rel("same.txt"), version("s")),
        ]
        .into_iter()
        .collect();
        let agreed = [(rel("agreed.txt"), Some(version("a")))]
            .into_iter()
            .collect();
        let before = record.revision();
        record.hold_unagreed(&here, &agreed);
        assert_eq!(
            record.ours.keys().collect::<Vec<_>>(),
            vec![&rel("new.txt")]
        );
        assert_eq!(record.ours[&rel("new.txt")], vec![version("n")]);
        assert!(record.revision() > before);
        let held = record.revision();
        record.hold_unagreed(&here, &agreed);
        assert_eq!(record.revision(), held, "held twice");
    }
}
