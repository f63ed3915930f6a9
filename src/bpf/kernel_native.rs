//! Load the kernel-native object, pin its maps and links, attach it to a cgroup,
//! and take over what an earlier daemon left pinned.
//!
//! Pins: `<bpf-fs-path>/kmesh/kernel_native/{maps/<map>, links/<program>, layout-<hash>/}`.
//! State outlives the daemon: SIGTERM leaves the pinned links attached and the
//! maps filled, so connections keep being steered while no daemon runs. The
//! next daemon:
//!
//! - **adopts** the pinned maps when their layout (`include/kernel_native.h`)
//!   and sizes are the ones it was built with: its programs use the same maps,
//!   and the pinned links are switched to them atomically (`bpf_link_update`);
//! - **rebuilds** otherwise: fresh maps are filled with the configuration
//!   first, then the links are switched, then the old maps' pins are replaced.
//!
//! Either way the switch happens in [`KernelNativeBpf::activate`], after the
//! first configuration is in the maps the new programs read: make-before-break
//! for the whole data plane.

use std::fs;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapHandle, MapMut, OpenMapMut};

use super::kn_skel::{KernelNativeSkel, KernelNativeSkelBuilder};
use super::mounts::{self, ensure_bpffs, ensure_cgroup2};
use super::pinning::{self, CgroupTarget};
use super::BpfError;

/// Hash of `include/kernel_native.h`, from build.rs: pinned maps written by a
/// daemon with another layout are never reused.
pub const LAYOUT_VERSION: &str = env!("KMESH_KN_LAYOUT");

/// Map capacities chosen by the operator (outer maps and the LRU counter
/// maps; inner maps are sized per resource).
#[derive(Debug, Clone, Copy)]
pub struct MapCapacity {
    pub max_listeners: u32,
    pub max_clusters: u32,
    /// `kn_netns_conns` (LRU).
    pub max_netns_cluster_counters: u32,
    /// `kn_endpoint_conns` (LRU).
    pub max_endpoint_counters: u32,
}

/// The maps the writer and the dumps use.
pub struct KernelNativeMaps {
    pub listeners: MapHandle,
    pub clusters: MapHandle,
    pub cluster_conns: MapHandle,
    pub netns_conns: MapHandle,
    pub endpoint_conns: MapHandle,
    pub rl_buckets: MapHandle,
    pub outliers: MapHandle,
    pub stats: MapHandle,
}

/// Per-daemon telemetry maps: `config` (1-entry ARRAY of `KN_TELEMETRY_*`
/// bits) and `events` (RINGBUF of `struct kn_conn_event`).
pub struct TelemetryMaps {
    pub config: MapHandle,
    pub events: MapHandle,
}

pub const MAP_LISTENERS: &str = "kn_listeners";
pub const MAP_CLUSTERS: &str = "kn_clusters";
pub const MAP_CLUSTER_CONNS: &str = "kn_cluster_conns";
pub const MAP_SOCKS: &str = "kn_socks";
pub const MAP_STATS: &str = "kn_stats";
pub const MAP_NETNS_CONNS: &str = "kn_netns_conns";
pub const MAP_ENDPOINT_CONNS: &str = "kn_endpoint_conns";
pub const MAP_RL_BUCKETS: &str = "kn_rl_buckets";
pub const MAP_OUTLIERS: &str = "kn_outliers";
pub const MAP_CONN_START: &str = "kn_conn_start";

/// Maps that carry state across daemons (the configuration, per-socket state,
/// counters). The tail-call arrays and the scratch map belong to one program
/// generation and are always fresh, as are the telemetry switches and the
/// connection-event ring buffer (see [`TelemetryMaps`]).
const DURABLE_MAPS: [&str; 10] = [
    MAP_LISTENERS,
    MAP_CLUSTERS,
    MAP_CLUSTER_CONNS,
    MAP_NETNS_CONNS,
    MAP_ENDPOINT_CONNS,
    MAP_RL_BUCKETS,
    MAP_OUTLIERS,
    MAP_SOCKS,
    MAP_STATS,
    MAP_CONN_START,
];

pub use super::pinning::StartKind;

/// The loaded programs; attached (or switched to) by [`Self::activate`].
pub struct KernelNativeBpf {
    skel: KernelNativeSkel<'static>,
    pin_dir: PathBuf,
    cgroup2_path: PathBuf,
    start: StartKind,
    active: bool,
}

pub fn pin_dir(bpf_fs_path: &Path) -> PathBuf {
    mounts::pin_root(bpf_fs_path).join("kernel_native")
}

fn skel_map<'a>(
    skel: &'a mut KernelNativeSkel<'static>,
    name: &str,
) -> Option<&'a mut MapMut<'static>> {
    let maps = &mut skel.maps;
    Some(match name {
        MAP_LISTENERS => &mut maps.kn_listeners,
        MAP_CLUSTERS => &mut maps.kn_clusters,
        MAP_CLUSTER_CONNS => &mut maps.kn_cluster_conns,
        MAP_NETNS_CONNS => &mut maps.kn_netns_conns,
        MAP_ENDPOINT_CONNS => &mut maps.kn_endpoint_conns,
        MAP_RL_BUCKETS => &mut maps.kn_rl_buckets,
        MAP_OUTLIERS => &mut maps.kn_outliers,
        MAP_SOCKS => &mut maps.kn_socks,
        MAP_STATS => &mut maps.kn_stats,
        MAP_CONN_START => &mut maps.kn_conn_start,
        _ => return None,
    })
}

fn open_map<'a>(
    maps: &'a mut super::kn_skel::OpenKernelNativeMaps<'static>,
    name: &str,
) -> Option<&'a mut OpenMapMut<'static>> {
    Some(match name {
        MAP_LISTENERS => &mut maps.kn_listeners,
        MAP_CLUSTERS => &mut maps.kn_clusters,
        MAP_CLUSTER_CONNS => &mut maps.kn_cluster_conns,
        MAP_NETNS_CONNS => &mut maps.kn_netns_conns,
        MAP_ENDPOINT_CONNS => &mut maps.kn_endpoint_conns,
        MAP_RL_BUCKETS => &mut maps.kn_rl_buckets,
        MAP_OUTLIERS => &mut maps.kn_outliers,
        MAP_SOCKS => &mut maps.kn_socks,
        MAP_STATS => &mut maps.kn_stats,
        MAP_CONN_START => &mut maps.kn_conn_start,
        _ => return None,
    })
}

/// The maps whose size the operator sets, with that size: set before load,
/// and a pinned map of another size is not adopted.
fn sized_maps(capacity: MapCapacity) -> [(&'static str, u32); 5] {
    [
        (MAP_LISTENERS, capacity.max_listeners),
        (MAP_CLUSTERS, capacity.max_clusters),
        (MAP_CLUSTER_CONNS, capacity.max_clusters),
        (MAP_NETNS_CONNS, capacity.max_netns_cluster_counters),
        (MAP_ENDPOINT_CONNS, capacity.max_endpoint_counters),
    ]
}

/// Can the pinned maps be reused by this build with these sizes?
fn adoptable(pin_dir: &Path, capacity: MapCapacity) -> bool {
    let maps = pin_dir.join("maps");
    pinning::has_layout(pin_dir, LAYOUT_VERSION)
        && DURABLE_MAPS.iter().all(|m| maps.join(m).exists())
        && sized_maps(capacity)
            .iter()
            .all(|(name, want)| pinning::pinned_with_size(&maps.join(name), *want))
}

impl KernelNativeBpf {
    /// Load the programs, reusing pinned maps when they fit. Nothing changes
    /// for traffic until [`Self::activate`].
    pub fn load(
        bpf_fs_path: &Path,
        cgroup2_path: &Path,
        capacity: MapCapacity,
    ) -> Result<Self, BpfError> {
        ensure_bpffs(bpf_fs_path)?;
        ensure_cgroup2(cgroup2_path)?;
        let pin_dir = pin_dir(bpf_fs_path);
        let start = pinning::start_kind(&pin_dir, |dir| adoptable(dir, capacity));
        let mut open = KernelNativeSkelBuilder::default()
            .open(pinning::static_object_storage())
            .map_err(BpfError::libbpf("opening the kernel-native object"))?;
        for (name, size) in sized_maps(capacity) {
            if let Some(map) = open_map(&mut open.maps, name) {
                map.set_max_entries(size)
                    .map_err(BpfError::libbpf(format!("sizing {name}")))?;
            }
        }
        if start == StartKind::Adopted {
            for name in DURABLE_MAPS {
                if let Some(map) = open_map(&mut open.maps, name) {
                    map.reuse_pinned_map(pin_dir.join("maps").join(name))
                        .map_err(BpfError::libbpf(format!("reusing pinned map {name}")))?;
                }
            }
        }
        let skel = open.load().map_err(BpfError::libbpf(
            "loading the kernel-native programs (verifier)",
        ))?;
        let mut bpf = Self {
            skel,
            pin_dir,
            cgroup2_path: cgroup2_path.to_path_buf(),
            start,
            active: false,
        };
        if start == StartKind::Fresh {
            bpf.pin_maps()?;
        }
        tracing::info!(start = ?start, pins = %bpf.pin_dir.display(), "kernel-native programs loaded");
        Ok(bpf)
    }

    /// The maps the new programs read (to fill before [`Self::activate`]).
    pub fn maps(&self) -> Result<KernelNativeMaps, BpfError> {
        let handle = |name: &'static str, map: &MapMut<'static>| {
            MapHandle::try_from(map).map_err(BpfError::libbpf(format!(
                "duplicating the handle of {name}"
            )))
        };
        let maps = &self.skel.maps;
        Ok(KernelNativeMaps {
            listeners: handle(MAP_LISTENERS, &maps.kn_listeners)?,
            clusters: handle(MAP_CLUSTERS, &maps.kn_clusters)?,
            cluster_conns: handle(MAP_CLUSTER_CONNS, &maps.kn_cluster_conns)?,
            netns_conns: handle(MAP_NETNS_CONNS, &maps.kn_netns_conns)?,
            endpoint_conns: handle(MAP_ENDPOINT_CONNS, &maps.kn_endpoint_conns)?,
            rl_buckets: handle(MAP_RL_BUCKETS, &maps.kn_rl_buckets)?,
            outliers: handle(MAP_OUTLIERS, &maps.kn_outliers)?,
            stats: handle(MAP_STATS, &maps.kn_stats)?,
        })
    }

    /// This generation's telemetry switches and connection-event ring buffer.
    ///
    /// Neither is pinned: each daemon gets its own. Until [`Self::activate`]
    /// switches the links, the previous generation's programs keep writing
    /// into the previous ring buffer, which nobody reads once its daemon is
    /// gone (its events are dropped and counted in `kn_stats`); the kernel
    /// frees it with the last program that uses it.
    pub fn telemetry_maps(&self) -> Result<TelemetryMaps, BpfError> {
        let maps = &self.skel.maps;
        Ok(TelemetryMaps {
            config: MapHandle::try_from(&maps.kn_telemetry_config).map_err(BpfError::libbpf(
                "duplicating the handle of kn_telemetry_config",
            ))?,
            events: MapHandle::try_from(&maps.kn_conn_events)
                .map_err(BpfError::libbpf("duplicating the handle of kn_conn_events"))?,
        })
    }

    /// Make these programs the ones that run: switch the pinned links to them
    /// (or attach and pin new links), then pin this generation's maps. Called
    /// once the maps hold the configuration; later calls do nothing.
    pub fn activate(&mut self) -> Result<(), BpfError> {
        if self.active {
            return Ok(());
        }
        let links_dir = self.pin_dir.join("links");
        fs::create_dir_all(&links_dir)
            .map_err(BpfError::io("creating pin directory", &links_dir))?;
        let cgroup = CgroupTarget::open(&self.cgroup2_path)?;
        let progs = &self.skel.progs;
        pinning::attach_cgroup_hooks(
            &links_dir,
            [
                &progs.kn_connect4,
                &progs.kn_connect6,
                &progs.kn_getpeername4,
                &progs.kn_getpeername6,
                &progs.kn_sockops,
            ],
            &cgroup,
        )?;
        if self.start == StartKind::Rebuilt {
            self.pin_maps()?;
        }
        self.pin_stage_arrays()?;
        pinning::mark_layout(&self.pin_dir, LAYOUT_VERSION)?;
        self.active = true;
        tracing::info!(
            start = ?self.start,
            cgroup = %self.cgroup2_path.display(),
            "kernel-native programs active"
        );
        Ok(())
    }

    /// The kernel empties a tail-call array once no file descriptor or pin
    /// refers to it, even while programs still use it: pin this generation's
    /// arrays (replacing the previous generation's) so the pipeline keeps
    /// working after the daemon exits.
    fn pin_stage_arrays(&mut self) -> Result<(), BpfError> {
        let maps_dir = self.pin_dir.join("maps");
        fs::create_dir_all(&maps_dir).map_err(BpfError::io("creating pin directory", &maps_dir))?;
        let maps = &mut self.skel.maps;
        for (name, map) in [
            ("kn_stages4", &mut maps.kn_stages4),
            ("kn_stages6", &mut maps.kn_stages6),
        ] {
            pinning::repin(map, &maps_dir.join(name))?;
        }
        Ok(())
    }

    /// Pin this generation's durable maps, replacing older pins.
    fn pin_maps(&mut self) -> Result<(), BpfError> {
        let maps_dir = self.pin_dir.join("maps");
        fs::create_dir_all(&maps_dir).map_err(BpfError::io("creating pin directory", &maps_dir))?;
        for name in DURABLE_MAPS {
            if let Some(map) = skel_map(&mut self.skel, name) {
                pinning::repin(map, &maps_dir.join(name))?;
            }
        }
        Ok(())
    }
}

/// Open the pinned kernel-native maps below a pin directory.
pub fn open_pinned_maps(pin_dir: &Path) -> Result<KernelNativeMaps, BpfError> {
    let open = |name: &str| pinning::open_pinned(pin_dir, name);
    Ok(KernelNativeMaps {
        listeners: open(MAP_LISTENERS)?,
        clusters: open(MAP_CLUSTERS)?,
        cluster_conns: open(MAP_CLUSTER_CONNS)?,
        netns_conns: open(MAP_NETNS_CONNS)?,
        endpoint_conns: open(MAP_ENDPOINT_CONNS)?,
        rl_buckets: open(MAP_RL_BUCKETS)?,
        outliers: open(MAP_OUTLIERS)?,
        stats: open(MAP_STATS)?,
    })
}

/// `kmesh-daemon uninstall`: remove the kernel-native pins (see
/// [`pinning::uninstall_mode`]). True if anything was pinned.
pub fn uninstall(bpf_fs_path: &Path) -> Result<bool, BpfError> {
    pinning::uninstall_mode(bpf_fs_path, &pin_dir(bpf_fs_path))
}
