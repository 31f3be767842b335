//! Which boxes this box talks to. A box serves, and takes notices from, only the boxes it
//! trusts: those kept in `.boxsync/trusted.json` (`boxsync trust`, `boxsync join`) and
//! those trusted for this run only (`--trust`, `--peer`). A running box sees a change to
//! the file at the next connection or request, without a restart.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::time::Timestamp;
use crate::types::BoxId;

/// File under the state folder listing the boxes trusted for good.
pub const TRUST_FILE: &str = "trusted.json";

/// Longest name a person may give a trusted box.
const MAX_NAME: usize = 64;

/// Why the trust file could not be read or changed.
#[derive(Debug, Error)]
pub enum TrustError {
    /// Reading or writing the file failed.
    #[error("cannot {action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        cause: io::Error,
    },
    /// The file is not valid.
    #[error("{path} is damaged ({detail}): fix or remove it, then trust the boxes again")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// A name that cannot be shown safely.
    #[error("bad name {0:?}: up to 64 printable characters")]
    BadName(String),
}

/// A box trusted for good, as kept in the trust file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedBox {
    /// Its ID.
    pub id: BoxId,
    /// What a person calls it (`laptop`), if they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it was trusted.
    pub since: Timestamp,
}

/// The trust file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TrustFile {
    /// Every box trusted for good.
    trusted: Vec<TrustedBox>,
    /// Boxes whose trust was withdrawn (`boxsync untrust`): a running box that trusts one
    /// for its run only (`--peer`, `--trust`) stops trusting it too when it sees it here.
    /// Each with when (nanoseconds since the epoch): untrusting again renews it, so a
    /// running box notices even a second `untrust` of the same box.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    revoked: BTreeMap<BoxId, i64>,
}

/// One box in [`Trust::list`]: kept in the file, or for this run only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trusted {
    /// Its ID.
    pub id: BoxId,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Whether it is kept in the trust file (false: this run only).
    pub kept: bool,
}

/// What is known of the trust file, and what this run adds.
#[derive(Debug, Default)]
struct State {
    /// The boxes the file listed when last read.
    stored: BTreeMap<BoxId, TrustedBox>,
    /// The file's modification time, length and inode when last read, to notice a change
    /// (it is replaced by rename, so the inode changes with every write).
    seen: Option<(SystemTime, u64, u64)>,
    /// Boxes trusted for this run only, each with when (nanoseconds since the epoch).
    session: BTreeMap<BoxId, i64>,
    /// The boxes the file said were revoked when last read, and when.
    revoked: BTreeMap<BoxId, i64>,
    /// The device and inode of the file's folder (the state folder) when the trust was
    /// opened or last written back: a file missing from another folder than this one was
    /// deleted with the whole state folder, not by itself.
    folder: Option<(u64, u64)>,
}

/// The boxes this box trusts. Shared by the server (every connection and request asks)
/// and the commands that change it; a std `Mutex`, as nothing waits while holding it.
#[derive(Debug)]
pub struct Trust {
    /// The trust file (`None`: a throwaway box that keeps nothing).
    file: Option<PathBuf>,
    /// What the file said and what this run added.
    state: Mutex<State>,
}

impl Trust {
    /// The trust kept in `state` (a box's `.boxsync/`); a missing file trusts nobody yet.
    pub fn open(state: &Path) -> Result<Trust, TrustError> {
        let trust = Trust {
            file: Some(state.join(TRUST_FILE)),
            state: Mutex::default(),
        };
        {
            let mut held = trust.lock();
            held.folder = folder_identity(state);
            trust.refresh(&mut held)?;
        }
        Ok(trust)
    }

    /// Trust that keeps nothing on disk (a throwaway box).
    pub fn in_memory() -> Trust {
        Trust {
            file: None,
            state: Mutex::default(),
        }
    }

    /// Trusts `id` for as long as this process runs (`--trust`, `--peer`).
    pub fn allow_for_this_run(&self, id: &BoxId) {
        self.lock()
            .session
            .insert(id.clone(), Timestamp::now().unix_nanos());
    }

    /// Whether `id` is trusted now. The file is read again if it changed since; a file
    /// that cannot be read trusts nobody from it (fails closed) until it is fixed.
    pub fn is_trusted(&self, id: &BoxId) -> bool {
        let mut state = self.lock();
        if let Err(e) = self.refresh(&mut state) {
            tracing::warn!(error = %e, "cannot read the trust file: trusting only this run's boxes");
            state.stored.clear();
            state.seen = None;
        }
        state.session.contains_key(id) || state.stored.contains_key(id)
    }

    /// Trusts `id` for good, under `name`. Returns whether it was new (a name given again
    /// replaces the old one).
    pub fn add(&self, id: &BoxId, name: Option<&str>) -> Result<bool, TrustError> {
        if let Some(name) = name
            && (name.is_empty()
                || name.chars().count() > MAX_NAME
                || name.chars().any(char::is_control))
        {
            return Err(TrustError::BadName(name.chars().take(80).collect()));
        }
        let mut state = self.lock();
        self.refresh(&mut state)?;
        let new = !state.stored.contains_key(id);
        state.revoked.remove(id);
        let entry = state.stored.entry(id.clone()).or_insert(TrustedBox {
            id: id.clone(),
            name: None,
            since: Timestamp::now(),
        });
        if name.is_some() {
            entry.name = name.map(str::to_string);
        }
        self.save(&mut state)?;
        Ok(new)
    }

    /// Stops trusting `id` (for good and for this run). Returns whether it was trusted.
    pub fn remove(&self, id: &BoxId) -> Result<bool, TrustError> {
        let mut state = self.lock();
        self.refresh(&mut state)?;
        let stored = state.stored.remove(id).is_some();
        let session = state.session.remove(id).is_some();
        // Always written: a running box that trusts it for its run only must hear of it.
        state
            .revoked
            .insert(id.clone(), Timestamp::now().unix_nanos());
        self.save(&mut state)?;
        Ok(stored || session)
    }

    /// Every trusted box, kept ones first, each group by ID.
    pub fn list(&self) -> Result<Vec<Trusted>, TrustError> {
        let mut state = self.lock();
        self.refresh(&mut state)?;
        let kept = state.stored.values().map(|b| Trusted {
            id: b.id.clone(),
            name: b.name.clone(),
            kept: true,
        });
        let this_run = state
            .session
            .keys()
            .filter(|id| !state.stored.contains_key(*id))
            .map(|id| Trusted {
                id: id.clone(),
                name: None,
                kept: false,
            });
        Ok(kept.chain(this_run).collect())
    }

    /// Writes the trust file back when it went with the whole state folder (deleted while
    /// the box ran, then recreated), from what this box still knows, so that trust given
    /// for good stays given. Returns whether it did.
    pub fn restore(&self) -> Result<bool, TrustError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let mut state = self.lock();
        if !folder_replaced(path, &state) {
            return Ok(false);
        }
        let folder = path.parent().and_then(folder_identity);
        let write = fs::symlink_metadata(path).is_err()
            && (!state.stored.is_empty() || !state.revoked.is_empty());
        if write {
            self.save(&mut state)?;
        }
        state.folder = folder;
        Ok(write)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the file again if its time or length changed since it was last read.
    fn refresh(&self, state: &mut State) -> Result<(), TrustError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let failed = |action, cause| TrustError::Io {
            action,
            path: path.clone(),
            cause,
        };
        let stamp = match fs::metadata(path) {
            Ok(meta) => (
                meta.modified().map_err(|e| failed("read", e))?,
                meta.len(),
                std::os::unix::fs::MetadataExt::ino(&meta),
            ),
            // Deleted with the whole state folder, under the running box: what was trusted
            // stays, to be written back ([`Trust::restore`]). A trust file removed by
            // itself trusts nobody from it.
            Err(e) if e.kind() == io::ErrorKind::NotFound && folder_replaced(path, state) => {
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                state.stored.clear();
                state.seen = None;
                return Ok(());
            }
            Err(e) => return Err(failed("read", e)),
        };
        if state.seen == Some(stamp) {
            return Ok(());
        }
        let text = fs::read(path).map_err(|e| failed("read", e))?;
        let file: TrustFile = serde_json::from_slice(&text).map_err(|e| TrustError::Damaged {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        state.stored = file
            .trusted
            .into_iter()
            .map(|b| (b.id.clone(), b))
            .collect();
        // Revoked after it was trusted for this run (by another process, `boxsync
        // untrust`): no longer trusted for this run either. (Trust given for this run after
        // the revocation, by a later `--peer` or `--trust`, stands.)
        for (id, revoked_at) in &file.revoked {
            if state
                .session
                .get(id)
                .is_some_and(|granted_at| granted_at < revoked_at)
            {
                state.session.remove(id);
            }
        }
        state.revoked = file.revoked;
        state.seen = Some(stamp);
        Ok(())
    }

    /// Writes the kept boxes whole or not at all (a temporary file, flushed, renamed).
    fn save(&self, state: &mut State) -> Result<(), TrustError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let failed = |cause| TrustError::Io {
            action: "write",
            path: path.clone(),
            cause,
        };
        let file = TrustFile {
            trusted: state.stored.values().cloned().collect(),
            revoked: state.revoked.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(|e| failed(io::Error::other(e)))?;
        text.push(b'\n');
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(failed)?;
        let temporary = dir.join(format!("{TRUST_FILE}.new"));
        let mut out = fs::File::create(&temporary).map_err(failed)?;
        out.write_all(&text)
            .and_then(|()| out.sync_all())
            .map_err(failed)?;
        fs::rename(&temporary, path).map_err(failed)?;
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        state.seen = None;
        self.refresh(state)
    }
}

/// The device and inode of the folder at `dir`, if it is there.
fn folder_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(dir).ok().map(|meta| (meta.dev(), meta.ino()))
}

/// Whether the folder of the trust file at `path` is gone or another than the one known.
fn folder_replaced(path: &Path, state: &State) -> bool {
    let Some(known) = state.folder else {
        return false;
    };
    path.parent().and_then(folder_identity) != Some(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: u8) -> BoxId {
        BoxId::from_public_key(&[seed; 44])
    }

    /// Trust kept in the file survives a reopen; trust for this run does not; removing
    /// ends both.
    #[test]
    fn trust_is_kept_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Trust::open(dir.path()).unwrap();
        assert!(!trust.is_trusted(&id(1)));
        assert!(trust.add(&id(1), Some("laptop")).unwrap());
        assert!(!trust.add(&id(1), None).unwrap());
        trust.allow_for_this_run(&id(2));
        assert!(trust.is_trusted(&id(1)) && trust.is_trusted(&id(2)));
        let listed = trust.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].name.as_deref(), Some("laptop"));
        assert!(listed[0].kept && !listed[1].kept);

        let reopened = Trust::open(dir.path()).unwrap();
        assert!(reopened.is_trusted(&id(1)));
        assert!(!reopened.is_trusted(&id(2)));
        assert!(reopened.remove(&id(1)).unwrap());
        assert!(!reopened.remove(&id(1)).unwrap());
        // The first handle sees the change made through the second, without a restart.
        assert!(!trust.is_trusted(&id(1)));

        // Untrusting in another process ends this run's trust too; trusting again restores it.
        reopened.remove(&id(2)).unwrap();
        assert!(!trust.is_trusted(&id(2)), "revoked elsewhere");
        trust.allow_for_this_run(&id(2));
        assert!(trust.is_trusted(&id(2)), "a later --peer trusts it again");
        reopened.add(&id(2), None).unwrap();
        assert!(Trust::open(dir.path()).unwrap().is_trusted(&id(2)));

        // Untrusting a box already revoked before this run still reaches this run.
        reopened.remove(&id(2)).unwrap();
        trust.allow_for_this_run(&id(2));
        assert!(trust.is_trusted(&id(2)));
        reopened.remove(&id(2)).unwrap();
        assert!(!trust.is_trusted(&id(2)), "a second untrust went unnoticed");
    }

    /// A damaged trust file trusts nobody from it, and says so when asked to change it.
    #[test]
    fn a_damaged_file_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Trust::open(dir.path()).unwrap();
        trust.add(&id(1), None).unwrap();
        fs::write(dir.path().join(TRUST_FILE), b"{not json").unwrap();
        assert!(!trust.is_trusted(&id(1)));
        assert!(matches!(
            trust.add(&id(2), None),
            Err(TrustError::Damaged { .. })
        ));
        assert!(matches!(
            Trust::open(dir.path()),
            Err(TrustError::Damaged { .. })
        ));
    }

    /// Names are short and printable.
    #[test]
    fn names_are_checked() {
        let trust = Trust::in_memory();
        assert!(trust.add(&id(1), Some("a\u{1b}[2J")).is_err());
        assert!(trust.add(&id(1), Some(&"x".repeat(65))).is_err());
        assert!(trust.add(&id(1), Some("")).is_err());
        assert!(trust.add(&id(1), Some("work laptop")).is_ok());
    }
}
