//! Load the dual-engine object, pin its maps and links, attach it to a
//! cgroup, and take over what an earlier daemon left pinned.
//!
//! Pins: `<bpf-fs-path>/kmesh/dual_engine/{maps/<map>, links/<program>, layout-<hash>/}`.
//! As in kernel-native mode, state outlives the daemon: the next daemon
//! adopts pinned maps of the same layout (`include/dual_engine.h`) and sizes,
//! or builds fresh ones; either way the pinned links are switched to its
//! programs in [`DualEngineBpf::activate`], once the maps hold a configuration.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapHandle, MapMut, OpenMapMut};

use super::de_skel::{DualEngineSkel, DualEngineSkelBuilder};
use super::mounts::{self, ensure_bpffs, ensure_cgroup2};
use super::pinning::{self, CgroupTarget, StartKind};
use super::BpfError;

/// Hash of `include/dual_engine.h`, from build.rs: pinned maps written by a
/// daemon with another layout are never reused.
pub const LAYOUT_VERSION: &str = env!("KMESH_DE_LAYOUT");

pub const MAP_FRONTENDS: &str = "de_frontends";
pub const MAP_SERVICES: &str = "de_services";
pub const MAP_ENDPOINTS: &str = "de_endpoints";
pub const MAP_BACKENDS: &str = "de_backends";
pub const MAP_COUNTERS: &str = "de_counters";
pub const MAP_SOCKS: &str = "de_socks";
pub const MAP_PROXY_SOCKS: &str = "de_proxy_socks";

/// Default `--waypoint-mark`: Istio's mark for a proxy's own traffic (1337).
pub const DEFAULT_WAYPOINT_MARK: u32 = 0x539;

/// Maps that carry state across daemons: the configuration, the counters,
/// what each redirected socket dialled (getpeername of live connections),
/// and the sockets still owing a waypoint its PROXY header (the sk_msg
/// program is attached to that map, so it too outlives the daemon).
const DURABLE_MAPS: [&str; 7] = [
    MAP_FRONTENDS,
    MAP_SERVICES,
    MAP_ENDPOINTS,
    MAP_BACKENDS,
    MAP_COUNTERS,
    MAP_SOCKS,
    MAP_PROXY_SOCKS,
];

/// Sizes of the lookup maps (`max_entries`). The maps are not preallocated:
/// a large size costs the hash table's bucket array, not the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DualEngineCapacity {
    /// Service VIPs plus workload addresses.
    pub max_frontends: u32,
    pub max_services: u32,
    /// Endpoint entries of all services, with room for the spare slot an
    /// update writes before it drops the old one.
    pub max_endpoints: u32,
    /// Workloads (and DNS-resolved addresses).
    pub max_backends: u32,
}

impl Default for DualEngineCapacity {
    /// A large production mesh: 65k services with 500k endpoint entries
    /// (twice that for make-before-break headroom), 262k workloads and
    /// frontend addresses.
    fn default() -> Self {
        Self {
            max_frontends: 1 << 18,
            max_services: 1 << 16,
            max_endpoints: 1 << 20,
            max_backends: 1 << 18,
        }
    }
}

/// The maps the writer and the dump use.
pub struct DualEngineMaps {
    pub frontends: MapHandle,
    pub services: MapHandle,
    pub endpoints: MapHandle,
    pub backends: MapHandle,
    pub counters: MapHandle,
}

/// The loaded programs; attached (or switched to) by [`Self::activate`].
pub struct DualEngineBpf {
    skel: DualEngineSkel<'static>,
    pin_dir: PathBuf,
    cgroup2_path: PathBuf,
    start: StartKind,
    active: bool,
}

pub fn pin_dir(bpf_fs_path: &Path) -> PathBuf {
    mounts::pin_root(bpf_fs_path).join("dual_engine")
}

fn sized_maps(capacity: DualEngineCapacity) -> [(&'static str, u32); 4] {
    [
        (MAP_FRONTENDS, capacity.max_frontends),
        (MAP_SERVICES, capacity.max_services),
        (MAP_ENDPOINTS, capacity.max_endpoints),
        (MAP_BACKENDS, capacity.max_backends),
    ]
}

/// Can the pinned maps be reused by this build with these sizes?
fn adoptable(pin_dir: &Path, capacity: DualEngineCapacity) -> bool {
    let maps = pin_dir.join("maps");
    pinning::has_layout(pin_dir, LAYOUT_VERSION)
        && DURABLE_MAPS.iter().all(|m| maps.join(m).exists())
        && sized_maps(capacity)
            .iter()
            .all(|(name, want)| pinning::pinned_with_size(&maps.join(name), *want))
}

fn open_map<'a>(
    maps: &'a mut super::de_skel::OpenDualEngineMaps<'static>,
    name: &str,
) -> Option<&'a mut OpenMapMut<'static>> {
    Some(match name {
        MAP_FRONTENDS => &mut maps.de_frontends,
        MAP_SERVICES => &mut maps.de_services,
        MAP_ENDPOINTS => &mut maps.de_endpoints,
        MAP_BACKENDS => &mut maps.de_backends,
        MAP_COUNTERS => &mut maps.de_counters,
        MAP_SOCKS => &mut maps.de_socks,
        MAP_PROXY_SOCKS => &mut maps.de_proxy_socks,
        _ => return None,
    })
}

fn loaded_map<'a>(
    skel: &'a mut DualEngineSkel<'static>,
    name: &str,
) -> Option<&'a mut MapMut<'static>> {
    let maps = &mut skel.maps;
    Some(match name {
        MAP_FRONTENDS => &mut maps.de_frontends,
        MAP_SERVICES => &mut maps.de_services,
        MAP_ENDPOINTS => &mut maps.de_endpoints,
        MAP_BACKENDS => &mut maps.de_backends,
        MAP_COUNTERS => &mut maps.de_counters,
        MAP_SOCKS => &mut maps.de_socks,
        MAP_PROXY_SOCKS => &mut maps.de_proxy_socks,
        _ => return None,
    })
}

impl DualEngineBpf {
    /// Load the programs, reusing pinned maps when they fit. Nothing is
    /// attached (and nothing changes for traffic) until [`Self::activate`].
    pub fn load(
        bpf_fs_path: &Path,
        cgroup2_path: &Path,
        capacity: DualEngineCapacity,
    ) -> Result<Self, BpfError> {
        Self::load_with_mark(bpf_fs_path, cgroup2_path, capacity, DEFAULT_WAYPOINT_MARK)
    }

    /// [`Self::load`] with the socket mark that tells a waypoint's own
    /// connects (never sent to a waypoint; 0 = no such mark).
    pub fn load_with_mark(
        bpf_fs_path: &Path,
        cgroup2_path: &Path,
        capacity: DualEngineCapacity,
        waypoint_mark: u32,
    ) -> Result<Self, BpfError> {
        ensure_bpffs(bpf_fs_path)?;
        ensure_cgroup2(cgroup2_path)?;
        let pin_dir = pin_dir(bpf_fs_path);
        let start = pinning::start_kind(&pin_dir, |dir| adoptable(dir, capacity));
        let mut open = DualEngineSkelBuilder::default()
            .open(pinning::static_object_storage())
            .map_err(BpfError::libbpf("opening the dual-engine object"))?;
        for (name, size) in sized_maps(capacity) {
            if let Some(map) = open_map(&mut open.maps, name) {
                map.set_max_entries(size)
                    .map_err(BpfError::libbpf(format!("sizing {name}")))?;
            }
        }
        // A load-time constant: the verifier drops the mark check when 0.
        let rodata =
            open.maps.rodata_data.as_deref_mut().ok_or_else(|| {
                BpfError::Unsupported("the dual-engine object has no .rodata".into())
            })?;
        rodata.de_waypoint_mark = waypoint_mark;
        if start == StartKind::Adopted {
            for name in DURABLE_MAPS {
                if let Some(map) = open_map(&mut open.maps, name) {
                    map.reuse_pinned_map(pin_dir.join("maps").join(name))
                        .map_err(BpfError::libbpf(format!("reusing pinned map {name}")))?;
                }
            }
        }
        let skel = open.load().map_err(BpfError::libbpf(
            "loading the dual-engine programs (verifier)",
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
        tracing::info!(start = ?start, pins = %bpf.pin_dir.display(), "dual-engine programs loaded");
        Ok(bpf)
    }

    /// How the pins were found.
    pub fn start_kind(&self) -> StartKind {
        self.start
    }

    /// The maps the new programs read (to fill before [`Self::activate`]).
    pub fn maps(&self) -> Result<DualEngineMaps, BpfError> {
        let handle = |name: &'static str, map: &MapMut<'static>| {
            MapHandle::try_from(map).map_err(BpfError::libbpf(format!(
                "duplicating the handle of {name}"
            )))
        };
        let maps = &self.skel.maps;
        Ok(DualEngineMaps {
            frontends: handle(MAP_FRONTENDS, &maps.de_frontends)?,
            services: handle(MAP_SERVICES, &maps.de_services)?,
            endpoints: handle(MAP_ENDPOINTS, &maps.de_endpoints)?,
            backends: handle(MAP_BACKENDS, &maps.de_backends)?,
            counters: handle(MAP_COUNTERS, &maps.de_counters)?,
        })
    }

    /// Make these programs the ones that run: switch the pinned links to them
    /// (or attach and pin new links), then pin this generation's maps if they
    /// replace another layout's. Called once the maps hold the first
    /// configuration; later calls do nothing.
    pub fn activate(&mut self) -> Result<(), BpfError> {
        if self.active {
            return Ok(());
        }
        let links_dir = self.pin_dir.join("links");
        fs::create_dir_all(&links_dir)
            .map_err(BpfError::io("creating pin directory", &links_dir))?;
        let cgroup = CgroupTarget::open(&self.cgroup2_path)?;
        // sk_msg first: it must be on the socket map before sockops puts
        // sockets there. It is attached to the (pinned) map, not to the
        // cgroup, and lives as long as the map; attaching to an adopted map
        // replaces the earlier daemon's program (sockets already in the map
        // keep the program they were added with).
        let sockhash = self.skel.maps.de_proxy_socks.as_fd().as_raw_fd();
        self.skel
            .progs
            .de_proxy_header
            .attach_sockmap(sockhash)
            .map_err(BpfError::libbpf(format!(
                "attaching the PROXY header program to {MAP_PROXY_SOCKS}"
            )))?;
        let progs = &self.skel.progs;
        pinning::attach_cgroup_hooks(
            &links_dir,
            [
                &progs.de_connect4,
                &progs.de_connect6,
                &progs.de_getpeername4,
                &progs.de_getpeername6,
                &progs.de_sockops,
            ],
            &cgroup,
        )?;
        if self.start == StartKind::Rebuilt {
            self.pin_maps()?;
        }
        pinning::mark_layout(&self.pin_dir, LAYOUT_VERSION)?;
        self.active = true;
        tracing::info!(
            start = ?self.start,
            cgroup = %self.cgroup2_path.display(),
            "dual-engine programs active"
        );
        Ok(())
    }

    /// Pin this generation's durable maps, replacing older pins.
    fn pin_maps(&mut self) -> Result<(), BpfError> {
        let maps_dir = self.pin_dir.join("maps");
        fs::create_dir_all(&maps_dir).map_err(BpfError::io("creating pin directory", &maps_dir))?;
        for name in DURABLE_MAPS {
            if let Some(map) = loaded_map(&mut self.skel, name) {
                pinning::repin(map, &maps_dir.join(name))?;
            }
        }
        Ok(())
    }
}

/// `kmesh-daemon uninstall`: remove the dual-engine pins (see
/// [`pinning::uninstall_mode`]). True if anything was pinned.
pub fn uninstall(bpf_fs_path: &Path) -> Result<bool, BpfError> {
    pinning::uninstall_mode(bpf_fs_path, &pin_dir(bpf_fs_path))
}
