//! Kernel-native mode: Envoy xDS resources compiled into the eBPF maps that the
//! `cgroup/connect4`/`connect6` pipeline reads.

pub mod compiler;
pub mod limits;
pub mod plan;
pub mod resources;
