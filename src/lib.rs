//! kmesh: a sidecarless service-mesh data plane. xDS in, eBPF maps out.
//!
//! Data flows one way: `xds` (bytes) -> typed resources -> `kernel_native`
//! compiler (pure) -> writer (syscalls) -> kernel. The reverse path (dumps)
//! reads caches and maps, never the wire.

pub mod admin;
pub mod admin_client;
pub mod bpf;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod kernel_native;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod sync;
pub mod telemetry;
pub mod workload;
pub mod xds;
