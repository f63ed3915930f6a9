//! The two filesystems the daemon needs: bpffs (for pins) and cgroup2 (to attach to).

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType};

use super::BpfError;

// Magic numbers from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

fn fs_type_is(path: &Path, magic: i64) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == FsType(magic as _))
        .unwrap_or(false)
}

/// Make sure `path` exists and is on a bpffs; mount one there if it is not.
pub fn ensure_bpffs(path: &Path) -> Result<(), BpfError> {
    fs::create_dir_all(path).map_err(BpfError::io("creating bpffs directory", path))?;
    if fs_type_is(path, BPF_FS_MAGIC) {
        return Ok(());
    }
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpfError::Mount {
        fs: "bpf",
        path: path.to_path_buf(),
        source,
    })
}

/// Make sure `path` is a cgroup2 directory: an existing directory on a cgroup2
/// filesystem is used as it is; otherwise the directory is created and cgroup2
/// is mounted on it (as Kmesh does with /mnt/kmesh_cgroup2).
pub fn ensure_cgroup2(path: &Path) -> Result<(), BpfError> {
    fs::create_dir_all(path).map_err(BpfError::io("creating cgroup2 directory", path))?;
    if fs_type_is(path, CGROUP2_SUPER_MAGIC) {
        return Ok(());
    }
    mount(
        Some("none"),
        path,
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpfError::Mount {
        fs: "cgroup2",
        path: path.to_path_buf(),
        source,
    })
}

/// `<bpf-fs-path>/kmesh`: where every pin of the daemon lives.
pub fn pin_root(bpf_fs_path: &Path) -> PathBuf {
    bpf_fs_path.join("kmesh")
}

/// Remove a pin directory tree. Unpinning a link that nothing else holds
/// detaches its program; unpinning a map frees it once no program uses it.
pub fn remove_pins(dir: &Path) -> Result<bool, BpfError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BpfError::io("removing pins", dir)(e)),
    }
}
