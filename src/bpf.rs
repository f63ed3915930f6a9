//! Loading eBPF objects, pinning them under `<bpf-fs-path>/kmesh/`, and
//! attaching them to the managed cgroup2 directory.

pub mod batch;
pub mod dual_engine;
pub mod kernel_native;
pub mod mounts;
mod pinning;

pub use pinning::StartKind;

/// Switches the data plane to the programs that read the maps being written
/// (a mode's loader `activate`); the runners call it after their first write.
pub type Activation = Box<dyn FnMut() -> Result<(), String> + Send>;

/// The generated libbpf skeletons (see build.rs), one module each: every
/// skeleton defines the same inner module names (`types`, ...). Their
/// `types` modules are the one Rust definition of the C layouts in
/// `include/`. This one is the kernel-native object.
pub mod kn_skel {
    #![allow(
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        unsafe_op_in_unsafe_fn
    )]
    include!(concat!(env!("OUT_DIR"), "/kernel_native.skel.rs"));
}

/// The dual-engine object's skeleton.
pub mod de_skel {
    #![allow(
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        unsafe_op_in_unsafe_fn
    )]
    include!(concat!(env!("OUT_DIR"), "/dual_engine.skel.rs"));
}

use std::path::PathBuf;

/// Everything that can go wrong while loading, pinning or attaching.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Libbpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("mounting {fs} on {path}: {source}")]
    Mount {
        fs: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl BpfError {
    pub(crate) fn libbpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> Self {
        let what = what.into();
        move |source| BpfError::Libbpf { what, source }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BpfError::Io { what, path, source }
    }
}
