//! What every mode's loader does with its pins: attach programs through
//! pinned links (switching links an earlier daemon left, atomically), mark
//! which layout the pinned maps were written with, and check pinned map sizes.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libbpf_rs::{Link, MapCore, MapHandle, ProgramMut};

use super::BpfError;

/// How a loader found the pins of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartKind {
    /// Nothing was pinned.
    Fresh,
    /// An earlier daemon's maps are reused as they are.
    Adopted,
    /// Pins of another layout or size: replaced once the new maps are filled.
    Rebuilt,
}

/// The cgroup2 directory programs attach to, opened, with its kernel id.
pub(crate) struct CgroupTarget {
    pub file: File,
    pub id: u64,
    pub path: PathBuf,
}

impl CgroupTarget {
    pub fn open(path: &Path) -> Result<Self, BpfError> {
        let file = File::open(path).map_err(BpfError::io("opening cgroup2", path))?;
        // The kernel's cgroup id is the inode number of its directory.
        let id = file
            .metadata()
            .map_err(BpfError::io("reading cgroup2", path))?
            .ino();
        Ok(Self {
            file,
            id,
            path: path.to_path_buf(),
        })
    }
}

/// Is this pinned link attached to the cgroup with this id?
fn on_cgroup(link: &Link, cgroup_id: u64) -> bool {
    matches!(
        link.info().map(|i| i.info),
        Ok(libbpf_rs::query::LinkTypeInfo::Cgroup(c)) if c.cgroup_id == cgroup_id
    )
}

/// The cgroup hooks both modes attach, in this order, by link pin name.
const CGROUP_HOOKS: [&str; 5] = [
    "connect4",
    "connect6",
    "getpeername4",
    "getpeername6",
    "sockops",
];

/// Attaches a mode's programs for [`CGROUP_HOOKS`] (same order) to the
/// cgroup through pinned links (see [`attach_pinned`]).
pub(crate) fn attach_cgroup_hooks(
    links_dir: &Path,
    progs: [&ProgramMut<'static>; 5],
    cgroup: &CgroupTarget,
) -> Result<(), BpfError> {
    for (name, prog) in CGROUP_HOOKS.iter().zip(progs) {
        attach_pinned(links_dir, name, prog, cgroup)?;
    }
    Ok(())
}

/// Make `prog` the program behind the link pinned at `links_dir/name`:
/// switch an existing link on the same cgroup to it (atomic: every hook run
/// sees either the old program or this one), or attach it and pin the new
/// link. A link on another cgroup (after a change of --cgroup2-path) is
/// unpinned, which detaches it.
fn attach_pinned(
    links_dir: &Path,
    name: &str,
    prog: &ProgramMut<'static>,
    cgroup: &CgroupTarget,
) -> Result<(), BpfError> {
    let path = links_dir.join(name);
    let switched = path.exists()
        && match Link::open(&path) {
            Ok(mut link) => on_cgroup(&link, cgroup.id) && link.update_prog(prog).is_ok(),
            Err(_) => false,
        };
    if switched {
        return Ok(());
    }
    let _ = fs::remove_file(&path);
    let mut link = prog
        .attach_cgroup(cgroup.file.as_raw_fd())
        .map_err(BpfError::libbpf(format!(
            "attaching {name} to {}",
            cgroup.path.display()
        )))?;
    link.pin(&path)
        .map_err(BpfError::libbpf(format!("pinning link {name}")))?;
    // The pin keeps the link (and the attachment) alive; dropping `link`
    // closes this process's descriptor only. (`disconnect()` would leak the
    // descriptor, and with it the attachment, until the process exits, so an
    // uninstall from the same process would not detach.)
    drop(link);
    Ok(())
}

/// `layout-<hash>`: a directory (bpffs holds only pins and directories)
/// naming the layout the pinned maps were written with.
pub(crate) fn layout_marker(version: &str) -> String {
    format!("layout-{version}")
}

pub(crate) fn has_layout(pin_dir: &Path, version: &str) -> bool {
    pin_dir.join(layout_marker(version)).is_dir()
}

/// Record that the pinned maps now have layout `version` (and no other).
pub(crate) fn mark_layout(pin_dir: &Path, version: &str) -> Result<(), BpfError> {
    let marker = layout_marker(version);
    if let Ok(entries) = fs::read_dir(pin_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("layout-") && name != marker {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
    let marker = pin_dir.join(marker);
    fs::create_dir_all(&marker).map_err(BpfError::io("creating", &marker))
}

/// Is the map pinned at `path` there with exactly `want` entries of capacity?
pub(crate) fn pinned_with_size(path: &Path, want: u32) -> bool {
    MapHandle::from_pinned_path(path)
        .ok()
        .and_then(|m| m.info().ok())
        .is_some_and(|i| i.info.max_entries == want)
}

/// Replace whatever is pinned at `path` with `map`.
pub(crate) fn repin(map: &mut libbpf_rs::MapMut<'static>, path: &Path) -> Result<(), BpfError> {
    let _ = fs::remove_file(path);
    map.pin(path).map_err(BpfError::libbpf(format!(
        "pinning map at {}",
        path.display()
    )))
}

/// Opens one map a mode pinned under `<pin_dir>/maps/`.
pub(crate) fn open_pinned(pin_dir: &Path, name: &str) -> Result<libbpf_rs::MapHandle, BpfError> {
    let path = pin_dir.join("maps").join(name);
    libbpf_rs::MapHandle::from_pinned_path(&path).map_err(BpfError::libbpf(format!(
        "opening pinned map {}",
        path.display()
    )))
}

/// `kmesh-daemon uninstall` for one mode: detach its pinned links, remove
/// its pins (which frees its maps and programs), then the kmesh pin root if
/// nothing else is left in it. True if anything was pinned.
pub(crate) fn uninstall_mode(bpf_fs_path: &Path, pin_dir: &Path) -> Result<bool, BpfError> {
    detach_pinned_links(&pin_dir.join("links"));
    let removed = super::mounts::remove_pins(pin_dir)?;
    let root = super::mounts::pin_root(bpf_fs_path);
    if root.exists() {
        // Only if empty: the other mode may keep pins there.
        let _ = std::fs::remove_dir(&root);
    }
    Ok(removed)
}

/// Detaches every link pinned in `links_dir` now. Removing the pin alone
/// would too, but the kernel frees an unpinned link from a work queue, a
/// moment later: `uninstall` must not return while programs still run.
fn detach_pinned_links(links_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match libbpf_rs::Link::open(&path).and_then(|link| link.detach()) {
            Ok(()) => tracing::debug!(link = %path.display(), "detached"),
            // Removing the pin still detaches it, just not synchronously.
            Err(e) => tracing::warn!(link = %path.display(), error = %e, "detaching the link"),
        }
    }
}

/// How a mode finds its pins at load: none, reusable by this build, or to
/// be replaced once the new programs take over.
pub(crate) fn start_kind(pin_dir: &Path, adoptable: impl FnOnce(&Path) -> bool) -> StartKind {
    if !pin_dir.exists() {
        StartKind::Fresh
    } else if adoptable(pin_dir) {
        StartKind::Adopted
    } else {
        StartKind::Rebuilt
    }
}

/// Object storage for a skeleton. The skeleton borrows it for as long as it
/// lives, which is the whole daemon: give it a 'static home.
pub(crate) fn static_object_storage() -> &'static mut std::mem::MaybeUninit<libbpf_rs::OpenObject> {
    Box::leak(Box::new(std::mem::MaybeUninit::uninit()))
}
