//! kmesh: a sidecarless service-mesh data plane. xDS in, eBPF maps out.
//!
//! Data flows one way: `xds` (bytes) -> typed resources -> `kernel_native`
//! compiler (pure) -> writer (syscalls) -> kernel.

pub mod bpf;
pub mod kernel_native;
pub mod xds;
