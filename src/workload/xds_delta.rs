//! The dual-engine side of the delta ADS stream: subscribes to workload
//! addresses and authorizations, hands each response to the runner, and
//! remembers the version of every resource held so that a new stream asks
//! only for what changed (`initial_resource_versions`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::Resource;

use super::key::{Interner, Key};
use super::proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use super::runner::DualEngineRunner;
use crate::admin::AdminState;
use crate::memory::{heap_usage, release_freed_memory};
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::xds::delta::{DeltaHandler, DeltaStatus};

pub type SharedRunner = Arc<Mutex<DualEngineRunner>>;

/// Responses with at least this many resources are followed by returning
/// freed heap to the system.
const LARGE_RESPONSE: usize = 1000;

pub struct DualEngineXds {
    runner: SharedRunner,
    admin: Arc<AdminState>,
    /// type URL -> resource name -> version held. The names are the strings
    /// the store keys by (shared, not copied); versions repeat across
    /// resources (one per push is common), so they are shared too.
    versions: HashMap<String, HashMap<Key, Key, foldhash::fast::RandomState>>,
    version_strings: Interner,
    last_version: Option<Key>,
    metrics: Option<Arc<Metrics>>,
}

impl DualEngineXds {
    pub fn new(runner: SharedRunner, admin: Arc<AdminState>) -> Self {
        Self {
            runner,
            admin,
            versions: HashMap::new(),
            version_strings: Interner::default(),
            last_version: None,
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl DualEngineXds {
    /// One shared string per distinct version. A push usually gives all its
    /// resources the same version: that case costs a compare, no allocation.
    fn shared_version(&mut self, version: String) -> Key {
        if let Some(last) = &self.last_version {
            if **last == *version {
                return last.clone();
            }
        }
        let shared = self.version_strings.intern(&Key::from(version));
        self.last_version = Some(shared.clone());
        shared
    }
}

impl DeltaHandler for DualEngineXds {
    fn type_urls(&self) -> Vec<String> {
        // Addresses first: authorizations refer to workloads.
        vec![ADDRESS_TYPE_URL.into(), AUTHORIZATION_TYPE_URL.into()]
    }

    fn initial_resource_versions(&self, type_url: &str) -> HashMap<String, String> {
        self.versions
            .get(type_url)
            .into_iter()
            .flatten()
            .map(|(name, version)| (name.to_string(), version.to_string()))
            .collect()
    }

    fn on_response(
        &mut self,
        type_url: &str,
        added: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<(), String> {
        let mut payloads = Vec::with_capacity(added.len());
        let mut sent_versions = Vec::with_capacity(added.len());
        for resource in added {
            // A resource without a body only names itself (an alias answer).
            let Some(any) = resource.resource else {
                continue;
            };
            let name = Key::from(resource.name);
            let version = self.shared_version(resource.version);
            sent_versions.push((name.clone(), version));
            // envoy-types has its own Any; the compiler takes prost's.
            let any = prost_types::Any {
                type_url: any.type_url,
                value: any.value,
            };
            payloads.push((name, any));
        }
        let large = payloads.len() >= LARGE_RESPONSE;
        let held = self.versions.entry(type_url.to_owned()).or_default();
        for name in &removed {
            held.remove(name.as_str());
        }
        let outcome = lock(&self.runner).apply_delta(type_url, payloads, removed);
        let refused = outcome
            .as_ref()
            .err()
            .map(|r| r.refused_names.clone())
            .unwrap_or_default();
        for (name, version) in sent_versions {
            if !refused.contains(&*name) {
                held.insert(name, version);
            }
        }
        if large {
            // The response and its decoded copies (hundreds of MB for a whole
            // mesh) are freed now; give the pages back rather than keep them
            // as RSS for good.
            release_freed_memory();
            if let Some((in_use, free)) = heap_usage() {
                tracing::debug!(
                    in_use_mib = in_use >> 20,
                    free_mib = free >> 20,
                    "heap after a large response"
                );
            }
        }
        outcome.map_err(|r| r.detail)
    }

    fn on_status(&mut self, status: &DeltaStatus) {
        if let Some(m) = &self.metrics {
            m.delta_status(status);
        }
        self.admin
            .set_xds_status(serde_json::to_value(status).unwrap_or_default());
    }

    fn resource_count(&self, type_url: &str) -> usize {
        self.versions.get(type_url).map_or(0, |held| held.len())
    }
}
