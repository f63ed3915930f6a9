//! `/debug/config_dump/kernel-native`: the compiled configuration in force,
//! where it came from, and the outcome of the last update.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use super::plan::{CompiledCluster, CompiledListener, CompiledRouteConfig, Plan};
use super::resources::ResourceError;
use super::writer::WriteStats;

/// Outcome of the latest update attempt (file change or xDS push).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LastUpdate {
    /// Applied; `rejected` lists resources refused individually (their old
    /// versions stay in force).
    Applied {
        at_unix_ms: u128,
        rejected: Vec<ResourceError>,
        write: WriteStats,
    },
    /// Nothing changed in the kernel: the whole update was refused.
    Refused { at_unix_ms: u128, error: String },
}

#[derive(Debug, Serialize)]
pub struct ListenerEntry<'a> {
    pub address: String,
    #[serde(flatten)]
    pub listener: &'a CompiledListener,
}

#[derive(Debug, Serialize)]
pub struct KernelNativeDump<'a> {
    pub mode: &'static str,
    pub source: &'a str,
    /// Number of configurations applied since the daemon started.
    pub version: u64,
    pub last_update: Option<&'a LastUpdate>,
    pub listeners: Vec<ListenerEntry<'a>>,
    pub clusters: &'a BTreeMap<String, CompiledCluster>,
    pub route_configs: &'a BTreeMap<String, CompiledRouteConfig>,
}

pub fn build<'a>(
    source: &'a str,
    version: u64,
    last: Option<&'a LastUpdate>,
    plan: &'a Plan,
) -> KernelNativeDump<'a> {
    KernelNativeDump {
        mode: "kernel-native",
        source,
        version,
        last_update: last,
        listeners: plan
            .listeners
            .iter()
            .map(|(k, l)| ListenerEntry {
                address: SocketAddr::new(k.addr, k.port).to_string(),
                listener: l,
            })
            .collect(),
        clusters: &plan.clusters,
        route_configs: &plan.route_configs,
    }
}

pub fn now_unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The resolver's per-hostname state, for the `dns` section of the dump.
pub fn dns_hosts(hosts: &[crate::dns::HostState]) -> serde_json::Value {
    hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "host": h.host,
                "family": format!("{:?}", h.family),
                "owners": h.owners,
                "addresses": h.addresses,
                "ttl_s": h.ttl.map(|t| t.as_secs_f64()),
                "next_refresh_in_s": h.next_refresh_in.as_secs_f64(),
                "last_error": h.last_error,
                "lookups": h.lookups,
                "failures": h.failures,
            })
        })
        .collect()
}
