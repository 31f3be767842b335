//! One-step pairing. `boxsync invite` writes a one-time secret into the state folder and
//! prints a line that names this box (ID and address) and carries the secret; `boxsync
//! join LINE` on another box dials the named box, pinning its ID, and presents the secret
//! inside the authenticated channel. The inviting box's server redeems it once, within its
//! lifetime, and trusts the caller's key; the joining box trusts the inviter. The secret
//! never travels in clear, and the line is useless once used or expired.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use thiserror::Error;

use crate::types::{BadPeerAddress, BoxId, PeerAddress};

/// Folder under the state folder holding pending invitations, one file each.
pub const INVITE_DIR: &str = "invites";

/// File under the state folder holding the address this box's server listens on, for
/// `boxsync invite` to put in its line.
pub const LISTEN_FILE: &str = "listening";

/// How long an invitation stays valid.
pub const LIFETIME: Duration = Duration::from_secs(10 * 60);

/// How an invitation line starts.
const PREFIX: &str = "boxsync-invite:";

/// Random bytes in a secret (128 bits).
const SECRET_BYTES: usize = 16;

/// Why an invitation line is not one.
#[derive(Debug, Error)]
pub enum BadInvitation {
    /// Not the shape of an invitation.
    #[error(
        "not a boxsync invitation: expected the line `boxsync invite` printed ({PREFIX}ID@HOST:PORT#SECRET)"
    )]
    Malformed,
    /// The box or its address is wrong.
    #[error(transparent)]
    Peer(#[from] BadPeerAddress),
}

/// Why an invitation could not be made or redeemed.
#[derive(Debug, Error)]
pub enum InviteError {
    /// The state folder could not be read or written.
    #[error("cannot {action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        cause: io::Error,
    },
    /// The system's random number generator failed.
    #[error("cannot make a secret: the system's random number generator failed")]
    Random,
}

/// A parsed invitation line: the inviting box, where it listens, and the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The inviting box and its address.
    pub inviter: PeerAddress,
    /// The one-time secret (base 32).
    pub secret: String,
}

impl Invitation {
    /// Reads a line printed by `boxsync invite`.
    pub fn parse(line: &str) -> Result<Invitation, BadInvitation> {
        let rest = line
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(BadInvitation::Malformed)?;
        let (target, secret) = rest.rsplit_once('#').ok_or(BadInvitation::Malformed)?;
        if !is_secret(secret) {
            return Err(BadInvitation::Malformed);
        }
        Ok(Invitation {
            inviter: PeerAddress::parse(target)?,
            secret: secret.to_string(),
        })
    }
}

impl std::fmt::Display for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}#{}", self.inviter, self.secret)
    }
}

/// What an invitation's file holds.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    /// Until when it may be redeemed (seconds since the epoch).
    expires: u64,
}

/// Makes an invitation to the box `id` listening at `addr`, valid once for `lifetime`.
pub fn create(
    state: &Path,
    id: &BoxId,
    addr: &str,
    lifetime: Duration,
) -> Result<Invitation, InviteError> {
    let mut bytes = [0u8; SECRET_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| InviteError::Random)?;
    let secret = data_encoding::BASE32_NOPAD.encode(&bytes);
    let dir = state.join(INVITE_DIR);
    let failed = |action, path: &Path, cause| InviteError::Io {
        action,
        path: path.to_path_buf(),
        cause,
    };
    fs::create_dir_all(&dir).map_err(|e| failed("create", &dir, e))?;
    forget_expired(&dir);
    let pending = Pending {
        expires: now().saturating_add(lifetime.as_secs()),
    };
    let path = file_of(&dir, &secret);
    let text =
        serde_json::to_vec(&pending).map_err(|e| failed("write", &path, io::Error::other(e)))?;
    fs::write(&path, text).map_err(|e| failed("write", &path, e))?;
    Ok(Invitation {
        inviter: PeerAddress {
            id: id.clone(),
            addr: addr.to_string(),
        },
        secret,
    })
}

/// Redeems the invitation whose secret is `secret`, if one is pending and unexpired:
/// whether it was (it is used up either way). Two callers with the same secret cannot both
/// succeed: removing the file is the claim.
pub fn redeem(state: &Path, secret: &str) -> bool {
    redeem_at(state, secret, now())
}

/// [`redeem`] at the time `now` (seconds since the epoch).
fn redeem_at(state: &Path, secret: &str, now: u64) -> bool {
    if !is_secret(secret) {
        return false;
    }
    let path = file_of(&state.join(INVITE_DIR), secret);
    let pending: Option<Pending> = fs::read(&path)
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok());
    let claimed = fs::remove_file(&path).is_ok();
    claimed && pending.is_some_and(|p| now < p.expires)
}

/// The file of the invitation with `secret`: named by the secret's SHA-256, so that the
/// text a caller sends never becomes a path, and the folder's listing reveals no secret.
fn file_of(dir: &Path, secret: &str) -> PathBuf {
    let digest = sha2::Sha256::digest(secret.as_bytes());
    dir.join(format!("{}.json", data_encoding::HEXLOWER.encode(&digest)))
}

/// Removes the invitations whose time is up (best effort).
fn forget_expired(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let expired = fs::read(entry.path())
            .ok()
            .and_then(|text| serde_json::from_slice::<Pending>(&text).ok())
            .is_none_or(|p| now() > p.expires);
        if expired {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether `text` has the shape of a secret (base 32, the right length).
fn is_secret(text: &str) -> bool {
    text.len() == data_encoding::BASE32_NOPAD.encode_len(SECRET_BYTES)
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An invitation reads back from its line, and is redeemed once only.
    #[test]
    fn an_invitation_works_once() {
        let dir = tempfile::tempdir().unwrap();
        let id = BoxId::from_public_key(b"inviter");
        let made = create(dir.path(), &id, "127.0.0.1:7001", LIFETIME).unwrap();
        let line = made.to_string();
        let read = Invitation::parse(&line).unwrap();
        assert_eq!(read, made);
        assert_eq!(read.inviter.id, id);
        assert!(redeem(dir.path(), &read.secret));
        assert!(!redeem(dir.path(), &read.secret), "a second use");
    }

    /// An expired invitation is refused; a made-up or hostile secret is refused without
    /// touching any path.
    #[test]
    fn expired_and_wrong_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = BoxId::from_public_key(b"inviter");
        let made = create(dir.path(), &id, "127.0.0.1:7001", Duration::ZERO).unwrap();
        assert!(!redeem_at(dir.path(), &made.secret, now() + 1));
        for bad in [
            "",
            "../../../etc/passwd",
            "AAAAAAAAAAAAAAAAAAAAAAAAAA",
            "a\u{1b}",
        ] {
            assert!(!redeem(dir.path(), bad), "{bad:?}");
        }
        for bad in [
            "",
            "boxsync-invite:",
            "boxsync-invite:nothing#x",
            &made.inviter.to_string(),
        ] {
            assert!(Invitation::parse(bad).is_err(), "{bad:?}");
        }
    }
}
