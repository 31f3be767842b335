//! Where a shared folder's state lives: `<folder>/.boxsync/`, or, for a folder this user
//! cannot write (a read-only mount, a folder shared with read access only), a folder of
//! its own under the user's state home (`$XDG_STATE_HOME/boxsync/folders/`, else
//! `~/.local/state/boxsync/folders/`). A read-only folder is served as it is: peers copy
//! from it, and nothing is ever written to it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ShareError;
use super::path::STATE_DIR;

/// Where a folder's state is, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    /// The state folder.
    pub path: PathBuf,
    /// Whether the shared folder is read-only to this user (the state is then outside
    /// it, and nothing is written to the folder).
    pub read_only: bool,
}

/// The user's state home (`$XDG_STATE_HOME`, else `$HOME/.local/state`), if either is set.
pub fn user_state_home() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    set("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|home| PathBuf::from(home).join(".local/state")))
}

/// The state folder kept outside the read-only folder `root` (an absolute, canonical
/// path): named after its last part and a hash of the whole path, so that two folders
/// never share one (`photos-3f2a9c0d1e2b4a57`).
pub fn outside(root: &Path) -> Option<PathBuf> {
    let hash = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".to_string());
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    Some(
        user_state_home()?
            .join("boxsync")
            .join("folders")
            .join(format!("{name}-{}", &hash.as_str()[..16])),
    )
}

/// Finds, creating it owner-only if needed, the state folder of the shared folder at
/// `root` (canonical): inside it, or outside when the folder cannot be written.
pub fn locate(root: &Path) -> Result<StateDir, ShareError> {
    let inside = root.join(STATE_DIR);
    let tmp = |state: &Path| state.join(super::TMP_DIR);
    match fs::create_dir_all(tmp(&inside)) {
        Ok(()) => {
            owner_only(&inside)?;
            return Ok(StateDir {
                path: inside,
                read_only: false,
            });
        }
        Err(e) if cannot_write(&e) && !inside.exists() => {}
        Err(e) => return Err(ShareError::io(&inside, e)),
    }
    let Some(elsewhere) = outside(root) else {
        return Err(ShareError::io(
            &inside,
            io::Error::other(
                "the folder is read-only, and neither XDG_STATE_HOME nor HOME is set to keep its state elsewhere",
            ),
        ));
    };
    fs::create_dir_all(tmp(&elsewhere)).map_err(|e| ShareError::io(&elsewhere, e))?;
    owner_only(&elsewhere)?;
    Ok(StateDir {
        path: elsewhere,
        read_only: true,
    })
}

/// Finds the state folder of the folder at `dir` without creating anything: inside it
/// when there is one (or when the folder can be written), else the one kept outside.
pub fn existing(dir: &Path) -> PathBuf {
    let inside = dir.join(STATE_DIR);
    if inside.exists() || !dir.exists() {
        return inside;
    }
    let writable = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
        && rustix::fs::statvfs(dir)
            .is_ok_and(|stats| !stats.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    match writable {
        true => inside,
        false => dir
            .canonicalize()
            .ok()
            .and_then(|root| outside(&root))
            .unwrap_or(inside),
    }
}

/// Whether an error creating the state folder means the folder cannot be written here.
fn cannot_write(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)
    )
}

/// The state (key, history, records, trash, partial downloads) is the owner's only.
fn owner_only(state: &Path) -> Result<(), ShareError> {
    fs::set_permissions(state, fs::Permissions::from_mode(0o700))
        .map_err(|e| ShareError::io(state, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two folders of the same name keep apart; the name is kept readable and safe.
    #[test]
    fn outside_names_differ_by_path() {
        let (Some(a), Some(b)) = (
            outside(Path::new("/mnt/a/photos")),
            outside(Path::new("/mnt/b/photos")),
        ) else {
            return; // No state home in this environment: nothing to name.
        };
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("photos-"), "{name}");
        let odd = outside(Path::new("/mnt/we ird\n")).unwrap();
        assert!(
            odd.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("we_ird_-")
        );
    }
}
