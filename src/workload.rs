//! Dual-engine mode: the Istio workload API (`istio.workload.Address`,
//! `istio.security.Authorization`) compiled into the frontend → service →
//! endpoint → backend maps that `bpf/dual_engine` reads at connect.
//!
//! Flow: delta ADS or `--xds-file` → [`proto`] types → store + compiler
//! (pure, incremental: only services/workloads an update touched are
//! recompiled) → [`plan::Plan`] + [`plan::PlanChanges`] → writer (syscalls).

pub mod bpf_dump;
pub mod plan;
pub mod proto;
pub mod records;
pub mod writer;
