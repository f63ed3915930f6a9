//! Watching the local xDS file: report its content when it changed.
//!
//! Polling (by default every 200 ms) rather than inotify: editors and
//! ConfigMap mounts replace files by rename and symlink swaps, which a content
//! comparison sees reliably and an inode watch does not.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub struct FileWatch {
    path: PathBuf,
    last: Option<Vec<u8>>,
}

impl FileWatch {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            last: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text if it differs from the last text returned.
    pub fn changed(&mut self) -> Result<Option<String>, ReadError> {
        let bytes = std::fs::read(&self.path).map_err(|source| ReadError {
            path: self.path.clone(),
            source,
        })?;
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return Ok(None);
        }
        self.last = Some(bytes.clone());
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}
