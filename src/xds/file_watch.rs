//! Watching the local xDS file: report its content when it changed.
//!
//! Polling (by default every 200 ms) rather than inotify: editors and
//! ConfigMap mounts replace files by rename and symlink swaps, which a content
//! comparison sees reliably and an inode watch does not.
//!
//! A poll reads the content only when the file may have changed: its
//! metadata (device, inode, size, mtime, ctime, through symlinks) differs
//! from the last read, or its ctime is too close to that read for the
//! timestamps to tell a later write apart. Otherwise a poll is one `stat`:
//! re-reading and comparing a 10,000-service file (megabytes) every poll
//! kept a core busy and pushed the eBPF programs' data out of the shared
//! CPU cache, which showed up as per-connect cost growing with config size
//! (issue 9).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Metadata at the last read, and whether it is old enough to be trusted.
    settled: Option<Fingerprint>,
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn ctime(&self) -> SystemTime {
        let (secs, nsec) = self.ctime;
        let secs = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        UNIX_EPOCH + secs + Duration::from_nanos(u64::try_from(nsec).unwrap_or(0))
    }
}

/// File timestamps are coarse (a jiffy on Linux, up to 2 s elsewhere): a
/// write this close after a read may leave the same ctime, so metadata
/// taken that close to a read is not trusted to mean "unchanged".
const TIMESTAMP_SLACK: Duration = Duration::from_secs(2);

impl FileWatch {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            last: None,
            settled: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text if it differs from the last text returned.
    pub fn changed(&mut self) -> Result<Option<String>, ReadError> {
        let err = |source| ReadError {
            path: self.path.clone(),
            source,
        };
        let before = std::fs::metadata(&self.path).map_err(err)?;
        let fingerprint = Fingerprint::of(&before);
        if self.last.is_some() && self.settled == Some(fingerprint) {
            return Ok(None);
        }
        let read_at = SystemTime::now();
        let bytes = std::fs::read(&self.path).map_err(err)?;
        // Trusted from now on only if nothing could have written in the
        // same timestamp granule as this read (and no write raced it).
        let after = std::fs::metadata(&self.path).map(|m| Fingerprint::of(&m));
        self.settled = match after {
            Ok(a) if a == fingerprint && a.ctime() + TIMESTAMP_SLACK < read_at => Some(a),
            _ => None,
        };
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return Ok(None);
        }
        self.last = Some(bytes.clone());
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_same_size_rewrite_right_after_a_read_is_seen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("xds.yaml");
        std::fs::write(&path, "a: 1\n").unwrap_or_else(|e| panic!("write: {e}"));
        let mut watch = FileWatch::new(&path);
        assert_eq!(watch.changed().ok().flatten().as_deref(), Some("a: 1\n"));
        assert_eq!(watch.changed().ok().flatten(), None);
        std::fs::write(&path, "a: 2\n").unwrap_or_else(|e| panic!("write: {e}"));
        assert_eq!(watch.changed().ok().flatten().as_deref(), Some("a: 2\n"));
        // Replaced by rename (how editors and ConfigMaps do it).
        let new = dir.path().join("xds.yaml.new");
        std::fs::write(&new, "a: 3\n").unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::rename(&new, &path).unwrap_or_else(|e| panic!("rename: {e}"));
        assert_eq!(watch.changed().ok().flatten().as_deref(), Some("a: 3\n"));
    }

    #[test]
    fn a_settled_file_is_checked_by_metadata_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("xds.yaml");
        std::fs::write(&path, "a: 1\n").unwrap_or_else(|e| panic!("write: {e}"));
        let mut watch = FileWatch::new(&path);
        assert!(watch.changed().ok().flatten().is_some());
        // Written just now: the timestamps cannot be trusted yet.
        assert!(watch.settled.is_none());
        assert_eq!(watch.changed().ok().flatten(), None);
        // As if read long after the write (ctime cannot be set back).
        watch.settled = std::fs::metadata(&path).ok().map(|m| Fingerprint::of(&m));
        assert_eq!(watch.changed().ok().flatten(), None);
        // Any write moves ctime: read again.
        std::fs::write(&path, "a: 2\n").unwrap_or_else(|e| panic!("write: {e}"));
        assert_eq!(watch.changed().ok().flatten().as_deref(), Some("a: 2\n"));
    }
}
