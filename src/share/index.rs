//! The index database, `.boxsync/index.db` (SQLite): what a box knows of its own folder,
//! kept across restarts and written only where it changed. It holds
//! - the hashes of files with the fingerprint they were computed for, so that nothing
//!   unchanged is hashed again after a restart (this replaced `hash-cache.json`, which was
//!   rewritten whole);
//! - the folder's change numbers: every path's latest change has a number, increasing
//!   within an epoch (a random number given when the database is created), so that a peer
//!   asks for what changed since the last number it saw and gets only that (see
//!   [`super::view`]);
//! - the block lists of large files with the fingerprint they were computed for (layout 2,
//!   [`super::blocks`]), so that serving a file's list reads it once per version.
//!
//! Every write is one transaction, flushed (`synchronous = FULL`) before it returns: a
//! change number a peer was told is never reused for another content after a crash. A
//! database that cannot be read (damaged, or written by a newer boxsync) is set aside and a
//! new one begun, with a new epoch: peers then compare whole folders once, which loses
//! nothing. SQLite was chosen by measurement (docs/benchmarks.md, "Index database").

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::RngExt;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::blocks::{self, BlockList};
use super::folder::Fingerprint;
use super::hash::Digests;
use super::path::RelPath;

/// The database's file under the state folder.
pub const INDEX_FILE: &str = "index.db";

/// The layout this build writes. Layout 1 (no block lists) is brought up to it in place;
/// a database with another one is set aside (before layout 1, the state was JSON,
/// imported once).
const SCHEMA: i64 = 2;

/// The table of layout 2: each large file's block list, with the fingerprint of the
/// version it is of.
const BLOCKS_TABLE: &str = "CREATE TABLE blocks (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, block_size INTEGER NOT NULL,
    hashes BLOB NOT NULL) WITHOUT ROWID;";

/// A short digest of one version of a path as listed (kind, size, mtime, mode, content
/// hash), stored with its change number: after a restart, the first read of the folder
/// numbers only what differs from it.
pub type VersionKey = [u8; 16];

/// Where a folder's changes stand: the epoch of its numbering and the last number given.
/// A peer sends back the mark of the last answer it read and gets only later changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChangeMark {
    /// Names one numbering: a database begun anew (lost, damaged) gets a new one, and a
    /// mark from another epoch gets a whole listing.
    pub epoch: u64,
    /// The last change number given.
    pub seq: u64,
}

/// What the index database could not do.
#[derive(Debug, Error)]
pub enum IndexError {
    /// SQLite failed.
    #[error("index database {path}: {cause}")]
    Db {
        /// The database's file.
        path: PathBuf,
        /// What SQLite said.
        cause: rusqlite::Error,
    },
    /// A stored path is not a valid relative path (a damaged row).
    #[error("index database {path}: a stored path is invalid: {detail}")]
    BadRow {
        /// The database's file.
        path: PathBuf,
        /// Which row and why.
        detail: String,
    },
}

/// The numbering as stored: where it stands, and each path's latest change.
#[derive(Debug, Default)]
pub struct StoredChanges {
    /// The epoch and the last number given.
    pub mark: Option<ChangeMark>,
    /// Changes numbered at or below this were forgotten (removals no longer kept): a
    /// peer whose mark is older gets a whole listing.
    pub floor: u64,
    /// Each path's latest change: its number and the version it gave the path (`None`:
    /// the path was removed).
    pub paths: Vec<(RelPath, u64, Option<VersionKey>)>,
}

/// One change to the stored numbering, written with others in one transaction.
#[derive(Debug, Clone)]
pub enum NumberingWrite {
    /// The path's latest change (`None`: it was removed).
    Set(RelPath, u64, Option<VersionKey>),
    /// The path is no longer remembered (a removal forgotten).
    Forget(RelPath),
}

/// How [`IndexDb::open`] found the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// It was there and readable.
    Existing,
    /// There was none.
    Created,
    /// It could not be used and was set aside under this name; a new one was begun.
    SetAside {
        /// Where the old one went.
        moved_to: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
}

/// An open index database. Its connection sits behind a std `Mutex`: every use is a short
/// synchronous transaction, called off the async threads.
pub struct IndexDb {
    /// The database's file, for error messages.
    file: PathBuf,
    /// The connection.
    conn: Mutex<Connection>,
}

impl IndexDb {
    /// Opens the database under `state_dir`, creating it (with a fresh epoch) if it is
    /// missing, and setting it aside for a new one if it cannot be used.
    pub fn open(state_dir: &Path) -> Result<(IndexDb, Opened), IndexError> {
        let file = state_dir.join(INDEX_FILE);
        let existed = file.exists();
        match Self::open_file(&file) {
            Ok(db) => Ok((
                db,
                if existed {
                    Opened::Existing
                } else {
                    Opened::Created
                },
            )),
            // Only a file that is not a database of this layout is set aside: a full disk or
            // a permission problem leaves it as it is, for the next start.
            Err(reason) if existed && reason.unusable() => {
                let moved_to = set_aside(&file);
                let db = Self::open_file(&file).map_err(|e| IndexError::Db {
                    path: file.clone(),
                    cause: e.into_sqlite(),
                })?;
                Ok((
                    db,
                    Opened::SetAside {
                        moved_to,
                        reason: reason.to_string(),
                    },
                ))
            }
            Err(e) => Err(IndexError::Db {
                path: file,
                cause: e.into_sqlite(),
            }),
        }
    }

    /// Opens `file`, creating the schema in a new one; any failure (not a database, another
    /// schema) is the caller's to handle.
    fn open_file(file: &Path) -> Result<IndexDb, OpenFailure> {
        let conn = Connection::open(file).map_err(OpenFailure::Sqlite)?;
        // Another process of this box (a one-shot `-c` shell) may write hashes meanwhile.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(OpenFailure::Sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(OpenFailure::Sqlite)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(OpenFailure::Sqlite)?;
        let schema: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(OpenFailure::Sqlite)?;
        if schema == 0 {
            let epoch = rand::rng().random::<u64>() >> 1;
            conn.execute_batch(&format!(
                "BEGIN;
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE hashes (
                     path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                     ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
                     blake3 TEXT NOT NULL, sha256 TEXT, md5 TEXT) WITHOUT ROWID;
                 CREATE TABLE changes (
                     path TEXT PRIMARY KEY, seq INTEGER NOT NULL, version BLOB) WITHOUT ROWID;
                 {BLOCKS_TABLE}
                 INSERT INTO meta VALUES ('epoch', {epoch}), ('seq', 0), ('floor', 0);
                 PRAGMA user_version = {SCHEMA};
                 COMMIT;"
            ))
            .map_err(OpenFailure::Sqlite)?;
        } else if schema == 1 {
            conn.execute_batch(&format!(
                "BEGIN; {BLOCKS_TABLE} PRAGMA user_version = {SCHEMA}; COMMIT;"
            ))
            .map_err(OpenFailure::Sqlite)?;
        } else if schema != SCHEMA {
            return Err(OpenFailure::Schema(schema));
        }
        Ok(IndexDb {
            file: file.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// The database's file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Writes the database back to its file when the file was deleted (with the state
    /// folder) while the box ran, and goes on there: `VACUUM INTO` copies all that the open
    /// connection still reads (the deleted file and its WAL stay readable while open), then
    /// the old connection closes and a new one opens the copy. Returns whether it did.
    ///
    /// The old connection closes before the new one opens: closing removes the WAL by name,
    /// which must not be the new one's.
    pub fn restore(&self) -> Result<bool, IndexError> {
        if self.file.exists() {
            return Ok(false);
        }
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let target = self.file.to_string_lossy().into_owned();
        conn.execute("VACUUM INTO ?1", [&target])
            .map_err(|e| self.error(e))?;
        let placeholder = Connection::open_in_memory().map_err(|e| self.error(e))?;
        drop(std::mem::replace(&mut *conn, placeholder));
        let reopened = Self::open_file(&self.file).map_err(|e| self.error(e.into_sqlite()))?;
        *conn = reopened
            .conn
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        Ok(true)
    }

    fn error(&self, cause: rusqlite::Error) -> IndexError {
        IndexError::Db {
            path: self.file.clone(),
            cause,
        }
    }

    fn bad_row(&self, detail: String) -> IndexError {
        IndexError::BadRow {
            path: self.file.clone(),
            detail,
        }
    }

    /// Runs `work` in one transaction, committed (and flushed) when it succeeds.
    fn write(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), IndexError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        work(&tx).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    /// Every remembered hash, with the fingerprint of the version it is of.
    pub fn hashes(&self) -> Result<Vec<(RelPath, Fingerprint, Digests)>, IndexError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut statement = conn
            .prepare("SELECT path, size, mtime_ns, ino, ctime_ns, blake3, sha256, md5 FROM hashes")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Fingerprint {
                        size: row.get::<_, i64>(1)? as u64,
                        mtime_ns: row.get(2)?,
                        ino: row.get::<_, i64>(3)? as u64,
                        ctime_ns: row.get(4)?,
                    },
                    Digests {
                        blake3: row.get(5)?,
                        sha256: row.get(6)?,
                        md5: row.get(7)?,
                    },
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut hashes = Vec::new();
        for row in rows {
            let (path, fingerprint, digests) = row.map_err(|e| self.error(e))?;
            let path = RelPath::parse(&path).map_err(|e| self.bad_row(e.to_string()))?;
            hashes.push((path, fingerprint, digests));
        }
        Ok(hashes)
    }

    /// Stores the hashes of `set` (replacing what was known of those paths) and forgets
    /// those of `forget`, in one transaction.
    pub fn write_hashes(
        &self,
        set: &[(RelPath, Fingerprint, Digests)],
        forget: &[RelPath],
    ) -> Result<(), IndexError> {
        self.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO hashes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (path, f, d) in set {
                insert.execute(params![
                    path.as_str(),
                    f.size as i64,
                    f.mtime_ns,
                    f.ino as i64,
                    f.ctime_ns,
                    d.blake3,
                    d.sha256,
                    d.md5
                ])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM hashes WHERE path = ?1")?;
            let mut blocks = tx.prepare_cached("DELETE FROM blocks WHERE path = ?1")?;
            for path in forget {
                delete.execute([path.as_str()])?;
                blocks.execute([path.as_str()])?;
            }
            Ok(())
        })
    }

    /// The block list of the version of `path` with this fingerprint, if it is stored.
    pub fn blocks(
        &self,
        path: &RelPath,
        fingerprint: &Fingerprint,
    ) -> Result<Option<BlockList>, IndexError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let row = conn
            .query_row(
                "SELECT size, mtime_ns, ino, ctime_ns, block_size, hashes FROM blocks
                 WHERE path = ?1",
                [path.as_str()],
                |row| {
                    Ok((
                        Fingerprint {
                            size: row.get::<_, i64>(0)? as u64,
                            mtime_ns: row.get(1)?,
                            ino: row.get::<_, i64>(2)? as u64,
                            ctime_ns: row.get(3)?,
                        },
                        row.get::<_, i64>(4)?,
                        row.get::<_, Vec<u8>>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some((stored, block_size, bytes)) = row else {
            return Ok(None);
        };
        if &stored != fingerprint {
            return Ok(None);
        }
        let list = BlockList {
            size: stored.size,
            block_size: u64::try_from(block_size).unwrap_or(0),
            hashes: bytes
                .chunks_exact(32)
                .filter_map(|hash| <[u8; 32]>::try_from(hash).ok())
                .collect(),
        };
        let whole = list.block_size == blocks::block_size(list.size)
            && bytes.len().is_multiple_of(32)
            && list.count() == list.size.div_ceil(list.block_size) as usize;
        if !whole {
            return Err(self.bad_row(format!("the block list of '{path}' is damaged")));
        }
        Ok(Some(list))
    }

    /// Stores the block list of the version of `path` with this fingerprint.
    pub fn write_blocks(
        &self,
        path: &RelPath,
        fingerprint: &Fingerprint,
        list: &BlockList,
    ) -> Result<(), IndexError> {
        let bytes: Vec<u8> = list.hashes.iter().flatten().copied().collect();
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO blocks VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    path.as_str(),
                    fingerprint.size as i64,
                    fingerprint.mtime_ns,
                    fingerprint.ino as i64,
                    fingerprint.ctime_ns,
                    list.block_size as i64,
                    bytes
                ],
            )?;
            Ok(())
        })
    }

    /// The stored numbering.
    pub fn changes(&self) -> Result<StoredChanges, IndexError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let meta = |key: &str| -> Result<Option<i64>, IndexError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| self.error(e))
        };
        let (Some(epoch), Some(seq)) = (meta("epoch")?, meta("seq")?) else {
            return Err(self.bad_row("the epoch or the last change number is missing".into()));
        };
        let floor = meta("floor")?.unwrap_or(0);
        let mut statement = conn
            .prepare("SELECT path, seq, version FROM changes")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<Vec<u8>>>(2)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut paths = Vec::new();
        for row in rows {
            let (path, number, version) = row.map_err(|e| self.error(e))?;
            let path = RelPath::parse(&path).map_err(|e| self.bad_row(e.to_string()))?;
            let version = match version {
                None => None,
                Some(bytes) => Some(VersionKey::try_from(bytes.as_slice()).map_err(|_| {
                    self.bad_row(format!("the version of '{path}' is not 16 bytes"))
                })?),
            };
            let number = u64::try_from(number)
                .map_err(|_| self.bad_row(format!("the change number of '{path}' is negative")))?;
            paths.push((path, number, version));
        }
        let (Ok(epoch), Ok(seq), Ok(floor)) = (
            u64::try_from(epoch),
            u64::try_from(seq),
            u64::try_from(floor),
        ) else {
            return Err(self.bad_row("the epoch or a change number is negative".into()));
        };
        if paths.iter().any(|(_, number, _)| *number > seq) {
            return Err(self.bad_row("a path's change number is above the last one given".into()));
        }
        Ok(StoredChanges {
            mark: Some(ChangeMark { epoch, seq }),
            floor,
            paths,
        })
    }

    /// Stores where the numbering stands (`seq`, `floor`) with the changes that got it
    /// there, in one flushed transaction.
    pub fn write_changes(
        &self,
        seq: u64,
        floor: u64,
        writes: &[NumberingWrite],
    ) -> Result<(), IndexError> {
        self.write(|tx| {
            let mut set =
                tx.prepare_cached("INSERT OR REPLACE INTO changes VALUES (?1, ?2, ?3)")?;
            let mut forget = tx.prepare_cached("DELETE FROM changes WHERE path = ?1")?;
            for write in writes {
                match write {
                    NumberingWrite::Set(path, number, version) => {
                        set.execute(params![
                            path.as_str(),
                            *number as i64,
                            version.as_ref().map(|v| v.as_slice())
                        ])?;
                    }
                    NumberingWrite::Forget(path) => {
                        forget.execute([path.as_str()])?;
                    }
                }
            }
            tx.execute("UPDATE meta SET value = ?1 WHERE key = 'seq'", [seq as i64])?;
            tx.execute(
                "INSERT OR REPLACE INTO meta VALUES ('floor', ?1)",
                [floor as i64],
            )?;
            Ok(())
        })
    }
}

/// Why a database file could not be opened as this build's.
enum OpenFailure {
    /// SQLite refused it (not a database, damaged, unreadable).
    Sqlite(rusqlite::Error),
    /// It has another layout (written by another boxsync).
    Schema(i64),
}

impl OpenFailure {
    /// Whether the file is no database of this layout (damaged, something else, another
    /// layout), as opposed to one that could not be opened now (a full disk, permissions).
    fn unusable(&self) -> bool {
        match self {
            OpenFailure::Schema(_) => true,
            OpenFailure::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            ),
        }
    }

    fn into_sqlite(self) -> rusqlite::Error {
        match self {
            OpenFailure::Sqlite(e) => e,
            OpenFailure::Schema(n) => rusqlite::Error::InvalidParameterName(format!(
                "layout {n}, this boxsync writes {SCHEMA}"
            )),
        }
    }
}

impl std::fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenFailure::Sqlite(e) => write!(f, "{e}"),
            OpenFailure::Schema(n) => {
                write!(f, "it has layout {n}, this boxsync uses layout {SCHEMA}")
            }
        }
    }
}

/// Moves a database that cannot be used (and its WAL files with it) out of the way, under
/// a name that says when; returns the new name. A failure to move leaves it to be
/// overwritten.
fn set_aside(file: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let moved_to = file.with_extension(format!("db.unusable-{stamp}"));
    if std::fs::rename(file, &moved_to).is_err() {
        let _ = std::fs::remove_file(file);
    }
    for suffix in ["-wal", "-shm"] {
        let with = |path: &Path| {
            let mut side = path.as_os_str().to_os_string();
            side.push(suffix);
            PathBuf::from(side)
        };
        if std::fs::rename(with(file), with(&moved_to)).is_err() {
            let _ = std::fs::remove_file(with(file));
        }
    }
    moved_to
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(p: &str) -> RelPath {
        RelPath::parse(p).unwrap()
    }

    fn digests(b: &str) -> Digests {
        Digests {
            blake3: b.to_string().into(),
            sha256: None,
            md5: Some("m".into()),
        }
    }

    fn fingerprint(size: u64) -> Fingerprint {
        Fingerprint {
            size,
            mtime_ns: -5,
            ino: u64::MAX,
            ctime_ns: 7,
        }
    }

    /// A database of layout 1 is brought up to layout 2 in place (its hashes kept); a
    /// block list is found for the version it was stored with only, and forgotten with
    /// the path's hash.
    #[test]
    fn keeps_block_lists_for_their_version_and_upgrades_layout_one() {
        let dir = tempfile::tempdir().unwrap();
        // A database of layout 1 (before block lists), with a hash in it.
        {
            let (db, _) = IndexDb::open(dir.path()).unwrap();
            db.write_hashes(&[(rel("a"), fingerprint(1), digests("b1"))], &[])
                .unwrap();
            let conn = db.conn.lock().unwrap();
            conn.execute_batch("DROP TABLE blocks; PRAGMA user_version = 1;")
                .unwrap();
        }
        let (db, opened) = IndexDb::open(dir.path()).unwrap();
        assert_eq!(opened, Opened::Existing, "upgraded in place, not set aside");
        assert_eq!(db.hashes().unwrap().len(), 1, "its hashes kept");
        let data = vec![7u8; 300_000];
        let mut hasher = crate::share::blocks::BlockHasher::new(data.len() as u64);
        hasher.update(&data);
        let list = hasher.finish().unwrap();
        let version = Fingerprint {
            size: data.len() as u64,
            ..fingerprint(1)
        };
        db.write_blocks(&rel("big"), &version, &list).unwrap();
        assert_eq!(db.blocks(&rel("big"), &version).unwrap(), Some(list));
        let other = Fingerprint {
            mtime_ns: 5,
            ..version
        };
        assert_eq!(
            db.blocks(&rel("big"), &other).unwrap(),
            None,
            "another version"
        );
        db.write_hashes(&[], &[rel("big")]).unwrap();
        assert_eq!(db.blocks(&rel("big"), &version).unwrap(), None, "forgotten");
    }

    /// A database deleted while open (with the state folder) is written back whole from
    /// the open connection, which goes on writing to the new file: what it held and what
    /// it writes afterwards are there when the database is opened again.
    #[test]
    fn a_deleted_database_is_written_back_from_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = IndexDb::open(dir.path()).unwrap();
        db.write_hashes(&[(rel("a"), fingerprint(1), digests("b1"))], &[])
            .unwrap();
        assert!(
            !db.restore().unwrap(),
            "nothing to do while the file is there"
        );
        for name in [INDEX_FILE, "index.db-wal", "index.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(name));
        }
        assert!(db.restore().unwrap());
        db.write_hashes(&[(rel("b"), fingerprint(2), digests("b2"))], &[])
            .unwrap();
        drop(db);
        let (db, opened) = IndexDb::open(dir.path()).unwrap();
        assert_eq!(opened, Opened::Existing);
        let names: Vec<String> = db
            .hashes()
            .unwrap()
            .into_iter()
            .map(|(path, _, _)| path.as_str().to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    /// Hashes and numbers survive a reopen; a new database has an epoch and no changes.
    #[test]
    fn keeps_hashes_and_numbers_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (db, opened) = IndexDb::open(dir.path()).unwrap();
        assert_eq!(opened, Opened::Created);
        let fresh = db.changes().unwrap();
        assert_eq!(fresh.mark.unwrap().seq, 0);
        assert!(fresh.paths.is_empty());
        db.write_hashes(
            &[
                (rel("a"), fingerprint(1), digests("b1")),
                (rel("d/b"), fingerprint(2), digests("b2")),
            ],
            &[],
        )
        .unwrap();
        db.write_hashes(&[], &[rel("a")]).unwrap();
        db.write_changes(
            3,
            1,
            &[
                NumberingWrite::Set(rel("d/b"), 2, Some([9; 16])),
                NumberingWrite::Set(rel("gone"), 3, None),
                NumberingWrite::Set(rel("old"), 1, None),
                NumberingWrite::Forget(rel("old")),
            ],
        )
        .unwrap();
        drop(db);
        let (db, opened) = IndexDb::open(dir.path()).unwrap();
        assert_eq!(opened, Opened::Existing);
        assert_eq!(
            db.hashes().unwrap(),
            vec![(rel("d/b"), fingerprint(2), digests("b2"))]
        );
        let stored = db.changes().unwrap();
        assert_eq!(stored.mark.unwrap().epoch, fresh.mark.unwrap().epoch);
        assert_eq!(stored.mark.unwrap().seq, 3);
        assert_eq!(stored.floor, 1);
        let mut paths = stored.paths;
        paths.sort();
        assert_eq!(
            paths,
            vec![(rel("d/b"), 2, Some([9; 16])), (rel("gone"), 3, None)]
        );
    }

    /// A damaged file, or one with another layout, is set aside and a new numbering begun
    /// with another epoch.
    #[test]
    fn an_unusable_database_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = IndexDb::open(dir.path()).unwrap();
        let epoch = db.changes().unwrap().mark.unwrap().epoch;
        db.conn
            .lock()
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(db);
        let (db, opened) = IndexDb::open(dir.path()).unwrap();
        let Opened::SetAside { moved_to, reason } = opened else {
            panic!("expected the database set aside, got {opened:?}");
        };
        assert!(reason.contains("layout 99"), "{reason}");
        assert!(moved_to.exists());
        assert_ne!(db.changes().unwrap().mark.unwrap().epoch, epoch);
        drop(db);
        std::fs::write(dir.path().join(INDEX_FILE), b"not a database at all").unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("{INDEX_FILE}{suffix}")));
        }
        let (db, opened) = IndexDb::open(dir.path()).unwrap();
        assert!(matches!(opened, Opened::SetAside { .. }), "{opened:?}");
        assert_eq!(db.changes().unwrap().mark.unwrap().seq, 0);
    }
}
