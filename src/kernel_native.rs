//! Kernel-native mode: Envoy xDS resources compiled into the eBPF maps that the
//! `cgroup/connect4`/`connect6` pipeline reads.

pub mod bpf_dump;
pub mod compiler;
pub mod dump;
pub mod input;
pub mod limits;
pub mod plan;
pub mod records;
pub mod resources;
pub mod runner;
pub mod snapshot;
mod sweep;
pub mod writer;
pub mod xds_sotw;
