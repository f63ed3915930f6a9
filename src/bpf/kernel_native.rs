//! Load the kernel-native object, pin its maps and links, attach it to a cgroup.
//!
//! Pins: `<bpf-fs-path>/kmesh/kernel_native/maps/<map>` and `.../links/<program>`.
//! Links are pinned so that (in a later release) traffic keeps flowing while
//! the daemon restarts; today SIGTERM removes them again.

use std::fs::{self, File};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapHandle};

use super::mounts::{self, ensure_bpffs, ensure_cgroup2};
use super::skel::{KernelNativeSkel, KernelNativeSkelBuilder};
use super::BpfError;

/// Map capacities chosen by the operator (outer maps; inner maps are sized per resource).
#[derive(Debug, Clone, Copy)]
pub struct MapCapacity {
    pub max_listeners: u32,
    pub max_clusters: u32,
}

/// The maps the writer and the dumps use.
pub struct KernelNativeMaps {
    pub listeners: MapHandle,
    pub clusters: MapHandle,
    pub cluster_conns: MapHandle,
    pub netns_conns: MapHandle,
    pub endpoint_conns: MapHandle,
    pub rl_buckets: MapHandle,
    pub stats: MapHandle,
}

/// The pinned names of the maps that userspace opens again by path.
pub const MAP_LISTENERS: &str = "kn_listeners";
pub const MAP_CLUSTERS: &str = "kn_clusters";
pub const MAP_CLUSTER_CONNS: &str = "kn_cluster_conns";
pub const MAP_STATS: &str = "kn_stats";
pub const MAP_NETNS_CONNS: &str = "kn_netns_conns";
pub const MAP_ENDPOINT_CONNS: &str = "kn_endpoint_conns";
pub const MAP_RL_BUCKETS: &str = "kn_rl_buckets";

/// The loaded, pinned and attached kernel-native programs.
pub struct KernelNativeBpf {
    // Held for the lifetime of the daemon: dropping the skeleton closes the
    // program fds (the pinned links keep the attached ones alive anyway).
    _skel: KernelNativeSkel<'static>,
    links: Vec<Link>,
    pin_dir: PathBuf,
}

pub fn pin_dir(bpf_fs_path: &Path) -> PathBuf {
    mounts::pin_root(bpf_fs_path).join("kernel_native")
}

pub fn map_pin_path(bpf_fs_path: &Path, map: &str) -> PathBuf {
    pin_dir(bpf_fs_path).join("maps").join(map)
}

impl KernelNativeBpf {
    /// Load, pin and attach. Stale pins from a daemon that did not shut down
    /// cleanly are removed first (adopting them is the restart feature's job).
    pub fn load_and_attach(
        bpf_fs_path: &Path,
        cgroup2_path: &Path,
        capacity: MapCapacity,
    ) -> Result<Self, BpfError> {
        ensure_bpffs(bpf_fs_path)?;
        ensure_cgroup2(cgroup2_path)?;
        let pin_dir = pin_dir(bpf_fs_path);
        if mounts::remove_pins(&pin_dir)? {
            tracing::warn!(dir = %pin_dir.display(), "removed stale pins of an earlier daemon");
        }

        // The skeleton borrows its object storage for as long as it lives,
        // which is the whole daemon: give it a 'static home.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = KernelNativeSkelBuilder::default()
            .open(storage)
            .map_err(BpfError::libbpf("opening the kernel-native object"))?;
        open.maps
            .kn_listeners
            .set_max_entries(capacity.max_listeners)
            .map_err(BpfError::libbpf("sizing kn_listeners"))?;
        open.maps
            .kn_clusters
            .set_max_entries(capacity.max_clusters)
            .map_err(BpfError::libbpf("sizing kn_clusters"))?;
        open.maps
            .kn_cluster_conns
            .set_max_entries(capacity.max_clusters)
            .map_err(BpfError::libbpf("sizing kn_cluster_conns"))?;
        let mut skel = open.load().map_err(BpfError::libbpf(
            "loading the kernel-native programs (verifier)",
        ))?;

        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(BpfError::io("creating pin directory", dir))?;
        }
        let maps = &mut skel.maps;
        for map in [
            &mut maps.kn_listeners,
            &mut maps.kn_clusters,
            &mut maps.kn_cluster_conns,
            &mut maps.kn_netns_conns,
            &mut maps.kn_endpoint_conns,
            &mut maps.kn_rl_buckets,
            &mut maps.kn_socks,
            &mut maps.kn_stats,
            &mut maps.kn_scratch,
            &mut maps.kn_stages4,
            &mut maps.kn_stages6,
        ] {
            let name = map.name().to_string_lossy().into_owned();
            map.pin(maps_dir.join(&name))
                .map_err(BpfError::libbpf(format!("pinning map {name}")))?;
        }

        let cgroup =
            File::open(cgroup2_path).map_err(BpfError::io("opening cgroup2", cgroup2_path))?;
        let mut links = Vec::new();
        let progs = &skel.progs;
        for (name, prog) in [
            ("connect4", &progs.kn_connect4),
            ("connect6", &progs.kn_connect6),
            ("getpeername4", &progs.kn_getpeername4),
            ("getpeername6", &progs.kn_getpeername6),
            ("sockops", &progs.kn_sockops),
        ] {
            let mut link = prog
                .attach_cgroup(cgroup.as_raw_fd())
                .map_err(BpfError::libbpf(format!(
                    "attaching {name} to {}",
                    cgroup2_path.display()
                )))?;
            link.pin(links_dir.join(name))
                .map_err(BpfError::libbpf(format!("pinning link {name}")))?;
            links.push(link);
        }
        tracing::info!(
            cgroup = %cgroup2_path.display(),
            pins = %pin_dir.display(),
            "kernel-native programs attached"
        );
        Ok(Self {
            _skel: skel,
            links,
            pin_dir,
        })
    }

    /// Open the maps by their pins (independent handles, usable from any task).
    pub fn maps(&self) -> Result<KernelNativeMaps, BpfError> {
        open_pinned_maps(&self.pin_dir)
    }

    /// Detach everything and remove the pins.
    pub fn teardown(mut self) -> Result<(), BpfError> {
        for link in &mut self.links {
            if let Err(e) = link.unpin() {
                tracing::warn!(error = %e, "unpinning a link");
            }
        }
        for link in self.links.drain(..) {
            if let Err(e) = link.detach() {
                tracing::warn!(error = %e, "detaching a link");
            }
        }
        mounts::remove_pins(&self.pin_dir)?;
        if let Some(root) = self.pin_dir.parent() {
            // Only if empty: other modes may keep pins there.
            let _ = fs::remove_dir(root);
        }
        tracing::info!(pins = %self.pin_dir.display(), "kernel-native programs detached, pins removed");
        Ok(())
    }
}

/// Open the pinned kernel-native maps below a pin directory.
pub fn open_pinned_maps(pin_dir: &Path) -> Result<KernelNativeMaps, BpfError> {
    let open = |name: &str| {
        let path = pin_dir.join("maps").join(name);
        MapHandle::from_pinned_path(&path).map_err(BpfError::libbpf(format!(
            "opening pinned map {}",
            path.display()
        )))
    };
    Ok(KernelNativeMaps {
        listeners: open(MAP_LISTENERS)?,
        clusters: open(MAP_CLUSTERS)?,
        cluster_conns: open(MAP_CLUSTER_CONNS)?,
        netns_conns: open(MAP_NETNS_CONNS)?,
        endpoint_conns: open(MAP_ENDPOINT_CONNS)?,
        rl_buckets: open(MAP_RL_BUCKETS)?,
        stats: open(MAP_STATS)?,
    })
}

/// `kmesh-daemon uninstall`: remove every pin (which detaches the pinned links
/// no live daemon holds) and the kmesh pin root if it is left empty.
pub fn uninstall(bpf_fs_path: &Path) -> Result<bool, BpfError> {
    let removed = mounts::remove_pins(&pin_dir(bpf_fs_path))?;
    let root = mounts::pin_root(bpf_fs_path);
    if root.exists() {
        // Only if empty: other modes may keep pins there.
        let _ = fs::remove_dir(&root);
    }
    Ok(removed)
}
