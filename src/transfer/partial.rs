//! A download in progress under `.boxsync/tmp/`, removed unless it is installed: an error,
//! a cancellation (the future dropped) or a crash of this task never leaves it behind.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::share::ShareError;

/// A temporary file that deletes itself on drop unless [`PartialFile::keep`] is called.
pub struct PartialFile {
    /// Its path.
    path: PathBuf,
    /// Whether drop should delete it.
    armed: bool,
}

impl PartialFile {
    /// Creates an empty temporary file at `path`, open for reading and writing.
    pub fn create(path: PathBuf) -> Result<(PartialFile, File), ShareError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ShareError::io(&path, e))?;
        Ok((PartialFile { path, armed: true }, file))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the cleanup: the file is being moved into place (which removes it from here
    /// on success; the installer deletes it on failure).
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}
