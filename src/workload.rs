//! Dual-engine mode: the Istio workload API (`istio.workload.Address`,
//! `istio.security.Authorization`) compiled into the frontend → service →
//! endpoint → backend maps that `bpf/dual_engine` reads at connect.
//!
//! Flow: delta ADS or `--xds-file` → [`proto`] types → store + compiler
//! (pure, incremental: only services/workloads an update touched are
//! recompiled) → [`plan::Plan`] + [`plan::PlanChanges`] → writer (syscalls).

pub mod authorization;
pub mod bpf_dump;
pub mod compiler;
pub mod ids;
pub mod key;
pub mod locality;
pub mod plan;
pub mod proto;
pub mod records;
pub mod resource;
pub mod runner;
pub mod writer;
pub mod xds_delta;
