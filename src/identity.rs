//! This box's identity: an Ed25519 key pair kept in the state folder, whose public key's
//! hash is the box's ID. The key signs every TLS handshake the box makes, so a peer that
//! pinned the ID knows it is talking to this box and no other.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use thiserror::Error;

use crate::types::BoxId;

/// File under the state folder holding the private key (PKCS#8, owner-only).
pub const KEY_FILE: &str = "identity.key";

/// File under the state folder holding the ID as text, for people and scripts to read.
pub const ID_FILE: &str = "box-id";

/// Why the identity could not be loaded or created.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("cannot {action} {path}: {cause}")]
    Io {
        /// What was being done (`read`, `write`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        cause: io::Error,
    },
    /// The key file holds no usable key.
    #[error(
        "{0} is not a boxsync key: move it away to give this box a new identity (peers must then trust the new ID)"
    )]
    BadKey(PathBuf),
    /// The system's random number generator failed.
    #[error("cannot generate a key: the system's random number generator failed")]
    Random,
}

/// A box's key pair and the ID derived from it.
#[derive(Clone)]
pub struct Identity {
    /// The ID: SHA-256 of the public key.
    id: BoxId,
    /// The key, with its public half as the "certificate" TLS presents (a raw public key,
    /// RFC 7250).
    key: Arc<CertifiedKey>,
    /// The private key as kept on disk (PKCS#8), to write it back should the state folder
    /// be deleted while the box runs: the box keeps its ID.
    der: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("id", &self.id).finish()
    }
}

impl Identity {
    /// The identity kept in `state` (a box's `.boxsync/`), created on first use. The key
    /// file is readable by its owner only; one found readable by others is tightened.
    pub fn load_or_create(state: &Path) -> Result<Identity, IdentityError> {
        let path = state.join(KEY_FILE);
        let identity = match fs::read(&path) {
            Ok(der) => {
                tighten(&path)?;
                Identity::from_pkcs8(der).ok_or_else(|| IdentityError::BadKey(path.clone()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let der = generate_pkcs8()?;
                let identity = Identity::from_pkcs8(der.clone()).ok_or(IdentityError::Random)?;
                write_private(state, &path, &der)?;
                identity
            }
            Err(cause) => {
                return Err(IdentityError::Io {
                    action: "read",
                    path,
                    cause,
                });
            }
        };
        identity.write_id(state)?;
        Ok(identity)
    }

    /// For people: the ID as text next to the key (rewritten if it went stale).
    fn write_id(&self, state: &Path) -> Result<(), IdentityError> {
        let id_file = state.join(ID_FILE);
        if fs::read_to_string(&id_file).ok().as_deref().map(str::trim) != Some(self.id.as_str()) {
            fs::write(&id_file, format!("{}\n", self.id)).map_err(|cause| IdentityError::Io {
                action: "write",
                path: id_file,
                cause,
            })?;
        }
        Ok(())
    }

    /// Writes this identity back into `state` when its key file is gone (the state folder
    /// was deleted while the box ran), so that the box keeps its ID after a restart.
    /// Returns whether it did; a key file there, whatever it holds, is left alone.
    pub fn restore(&self, state: &Path) -> Result<bool, IdentityError> {
        let path = state.join(KEY_FILE);
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(false);
        }
        write_private(state, &path, &self.der)?;
        self.write_id(state)?;
        Ok(true)
    }

    /// A new identity kept nowhere: for a throwaway box, and for tests.
    pub fn generate() -> Result<Identity, IdentityError> {
        Identity::from_pkcs8(generate_pkcs8()?).ok_or(IdentityError::Random)
    }

    /// The box's ID.
    pub fn id(&self) -> &BoxId {
        &self.id
    }

    /// The key as TLS uses it.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.key)
    }

    /// The identity of a PKCS#8 Ed25519 key, if it is one.
    fn from_pkcs8(der: Vec<u8>) -> Option<Identity> {
        let private = PrivatePkcs8KeyDer::from(der);
        let signing = rustls::crypto::ring::sign::any_eddsa_type(&private).ok()?;
        let public = signing.public_key()?;
        let id = BoxId::from_public_key(public.as_ref());
        let certificate = CertificateDer::from(public.as_ref().to_vec());
        Some(Identity {
            id,
            key: Arc::new(CertifiedKey::new(vec![certificate], signing)),
            der: Arc::new(private.secret_pkcs8_der().to_vec()),
        })
    }
}

/// A fresh Ed25519 key in PKCS#8.
fn generate_pkcs8() -> Result<Vec<u8>, IdentityError> {
    let random = ring::rand::SystemRandom::new();
    ring::signature::Ed25519KeyPair::generate_pkcs8(&random)
        .map(|der| der.as_ref().to_vec())
        .map_err(|_| IdentityError::Random)
}

/// Writes `der` to `path` readable by its owner only, whole or not at all: a temporary
/// file created with mode 0600, flushed to disk, then renamed over the name.
fn write_private(state: &Path, path: &Path, der: &[u8]) -> Result<(), IdentityError> {
    let failed = |action, cause| IdentityError::Io {
        action,
        path: path.to_path_buf(),
        cause,
    };
    // The state folder is the owner's only (the share makes it so too, for an older one).
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state)
        .map_err(|e| failed("create the folder of", e))?;
    let temporary = state.join(format!("{KEY_FILE}.new"));
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| failed("write", e))?;
    file.write_all(der)
        .and_then(|()| file.sync_all())
        .map_err(|e| failed("write", e))?;
    fs::rename(&temporary, path).map_err(|e| failed("write", e))?;
    if let Ok(dir) = fs::File::open(state) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Makes the key file owner-only if it is not (copied with a permissive umask, say).
fn tighten(path: &Path) -> Result<(), IdentityError> {
    let mode = fs::metadata(path)
        .map_err(|cause| IdentityError::Io {
            action: "read",
            path: path.to_path_buf(),
            cause,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the key file was readable by others: made owner-only");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|cause| {
            IdentityError::Io {
                action: "protect",
                path: path.to_path_buf(),
                cause,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is created once, owner-only, and gives the same ID when loaded again.
    #[test]
    fn the_identity_is_kept_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.id(), again.id());
        let written = fs::read_to_string(dir.path().join(ID_FILE)).unwrap();
        assert_eq!(written.trim(), first.id().as_str());
        assert_ne!(Identity::generate().unwrap().id(), first.id());
    }

    /// A key file left readable by others is made owner-only; a broken one is refused.
    #[test]
    fn loose_and_broken_keys() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap().id().clone();
        let key = dir.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Identity::load_or_create(dir.path()).unwrap().id(), &id);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&key, b"garbage").unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::BadKey(_))
        ));
    }
}
