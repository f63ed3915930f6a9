//! Dual-engine mode at run time: resources in (delta ADS pushes, file
//! reloads, DNS answers), compiled incrementally, written to the maps,
//! reported in the admin dump.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost_types::Any;
use serde::Serialize;

use super::authorization::{decode_authorization, AuthorizationStore};
use super::compiler::{Limits, Update, WorkloadCompiler};
use super::key::Key;
use super::plan::{Plan, PlanChanges};
use super::proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use super::resource::{decode_address, ResourceError};
use crate::dns::{DnsResolver, LookupFamily, NoDns, RefreshPolicy, ResolvedHosts, Subscription};
use crate::metrics::Metrics;

/// Where compiled plans go: the map writer in the daemon, a recorder in tests.
pub trait PlanSink: Send {
    /// Writes the records `changes` names. After an error the runner sends
    /// everything again next time (`resync`).
    fn write(&mut self, plan: &Plan, changes: &PlanChanges) -> Result<(), String>;
}

use crate::bpf::Activation;

/// The resolver owner name of every dual-engine hostname.
const DNS_OWNER: &str = "dual-engine";
/// ServiceEntry DNS endpoints: refreshed when the record's TTL runs out, at
/// least this often.
const DNS_REFRESH: Duration = Duration::from_secs(60);

/// A delta response not (wholly) taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRefusal {
    /// The NACK's error_detail.
    pub detail: String,
    /// Added resources that are not held at the version sent.
    pub refused_names: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize)]
struct LastUpdate {
    source: String,
    unix_time: u64,
    outcome: String,
}

pub struct DualEngineRunner {
    compiler: WorkloadCompiler,
    authorizations: AuthorizationStore,
    sink: Box<dyn PlanSink>,
    limits: Limits,
    dns: Option<DnsResolver>,
    dns_hosts: BTreeSet<String>,
    activation: Option<Activation>,
    /// Nothing written yet, or a write failed: the next write sends the
    /// whole plan (and the writer drops whatever else the maps hold).
    resync: bool,
    source: String,
    /// Resources refused and not replaced since, by resource label.
    rejected: BTreeMap<String, String>,
    last: Option<LastUpdate>,
    /// The last update was refused whole (it did not fit): nothing of it is
    /// held. (A failed *write* is different: the plan holds the update and
    /// the next write resends everything.)
    last_refused_whole: bool,
    updates: u64,
    metrics: Option<Arc<Metrics>>,
}

impl DualEngineRunner {
    pub fn new(
        compiler: WorkloadCompiler,
        sink: Box<dyn PlanSink>,
        limits: Limits,
        dns: Option<DnsResolver>,
        source: String,
    ) -> Self {
        Self {
            compiler,
            authorizations: AuthorizationStore::default(),
            sink,
            limits,
            dns,
            dns_hosts: BTreeSet::new(),
            activation: None,
            resync: true,
            source,
            rejected: BTreeMap::new(),
            last: None,
            last_refused_whole: false,
            updates: 0,
            metrics: None,
        }
    }

    /// Counts applies, refusals and refused resources.
    pub fn with_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Run once the maps first hold a configuration.
    pub fn on_first_write(&mut self, activation: Activation) {
        self.activation = Some(activation);
    }

    pub fn plan(&self) -> &Plan {
        self.compiler.plan()
    }

    /// Whether an Address with this xDS name is held (for delta reconnects).
    pub fn holds(&self, name: &str) -> bool {
        self.compiler.holds(name)
    }

    /// The whole world from the file: what is missing from it goes, what
    /// is new or changed is applied; a bad item is logged and its previous
    /// version stays.
    pub fn apply_file(&mut self, resources: &[Any]) -> Result<(), String> {
        let started = Instant::now();
        let mut update = Update::default();
        let mut policies = Vec::new();
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for any in resources {
            match any.type_url.as_str() {
                ADDRESS_TYPE_URL => match decode_address(any, None) {
                    Ok(resource) => {
                        seen.insert(resource.key().clone());
                        update.upserts.push((None, resource));
                    }
                    Err(e) => errors.push(e),
                },
                AUTHORIZATION_TYPE_URL => match decode_authorization(any, None) {
                    Ok(policy) => policies.push(policy),
                    Err(e) => errors.push(e),
                },
                // Envoy resources belong to kernel-native mode.
                other => errors.push(ResourceError {
                    resource: other.to_owned(),
                    field: "@type".into(),
                    message: "not a dual-engine type (istio.workload.Address, istio.security.Authorization)".into(),
                }),
            }
        }
        // A rejected item keeps its previous version: do not remove it.
        let kept: BTreeSet<String> = errors.iter().filter_map(key_of).collect();
        update.removals = self
            .compiler
            .keys()
            .into_iter()
            .filter(|k| !seen.contains(k.as_str()) && !kept.contains(k))
            .collect();
        // Policies follow the file like addresses do: a refused one keeps its
        // previous version, and nothing changes if the update does not fit.
        let kept_policies: BTreeSet<String> = errors
            .iter()
            .filter_map(|e| e.resource.strip_prefix("authorization "))
            .map(str::to_owned)
            .collect();
        let result = self.run_update(update, errors, started.elapsed());
        if !self.last_refused_whole {
            self.authorizations
                .replace_keeping(policies, &kept_policies);
        }
        result
    }

    /// The file could not be read or parsed: nothing changes, and the dump
    /// and metrics say why.
    pub fn refuse(&mut self, error: String) {
        self.last_refused_whole = true;
        let _ = self.finish(Vec::new(), Err(error));
    }

    /// One delta response. `Err` carries the NACK detail (the bad resources
    /// named; the good ones in the same response are applied, as Envoy does)
    /// and which added names were not taken, so their versions are not
    /// claimed on the next stream.
    pub fn apply_delta(
        &mut self,
        type_url: &str,
        added: Vec<(Key, Any)>,
        removed: Vec<String>,
    ) -> Result<(), DeltaRefusal> {
        let mut refused_names = BTreeSet::new();
        let result = match type_url {
            ADDRESS_TYPE_URL => {
                let mut update = Update {
                    upserts: Vec::with_capacity(added.len()),
                    removals: removed,
                };
                let mut errors = Vec::new();
                let started = Instant::now();
                for (name, any) in added {
                    match decode_address(&any, Some(&name)) {
                        Ok(resource) => update.upserts.push((Some(name), resource)),
                        Err(e) => {
                            refused_names.insert(name.to_string());
                            errors.push(e);
                        }
                    }
                }
                let applying: Vec<String> = update
                    .upserts
                    .iter()
                    .filter_map(|(name, _)| name.as_ref().map(|n| n.to_string()))
                    .collect();
                let result = self.run_update(update, errors, started.elapsed());
                if self.last_refused_whole {
                    refused_names.extend(applying);
                }
                result
            }
            AUTHORIZATION_TYPE_URL => {
                let mut errors = Vec::new();
                for name in removed {
                    self.authorizations.remove(&name);
                }
                for (name, any) in added {
                    match decode_authorization(&any, Some(&name)) {
                        Ok(policy) => self.authorizations.upsert(Some(name.to_string()), policy),
                        Err(e) => {
                            refused_names.insert(name.to_string());
                            errors.push(e);
                        }
                    }
                }
                self.finish(errors, Ok(()))
            }
            other => Err(format!("unexpected type {other}")),
        };
        result.map_err(|detail| DeltaRefusal {
            detail,
            refused_names,
        })
    }

    /// Whether an Authorization with this xDS name is held.
    pub fn holds_authorization(&self, name: &str) -> bool {
        self.authorizations.contains(name)
    }

    /// The resolver has new answers for these hostnames.
    pub fn hosts_changed(&mut self, hosts: &[String]) {
        let hosts: Vec<String> = hosts
            .iter()
            .filter(|h| self.dns_hosts.contains(*h))
            .cloned()
            .collect();
        if hosts.is_empty() {
            return;
        }
        let dns = self.dns.clone();
        let resolved: &dyn ResolvedHosts = match &dns {
            Some(r) => r,
            None => &NoDns,
        };
        match self.compiler.hosts_changed(&hosts, &self.limits, resolved) {
            Ok(changes) => {
                if let Err(e) = self.write(&changes) {
                    tracing::error!(error = %e, "writing DNS answers failed");
                } else {
                    tracing::info!(hosts = ?hosts, "DNS answers applied");
                }
            }
            Err(e) => tracing::error!(error = %e, "DNS answers not applied"),
        }
    }

    /// Compiles and writes a decoded update; `decode_time` is what decoding
    /// it took, for the log line that says where an update's time went.
    fn run_update(
        &mut self,
        update: Update,
        errors: Vec<ResourceError>,
        decode_time: Duration,
    ) -> Result<(), String> {
        let dns = self.dns.clone();
        let resolved: &dyn ResolvedHosts = match &dns {
            Some(r) => r,
            None => &NoDns,
        };
        if !self.rejected.is_empty() {
            for (_, resource) in &update.upserts {
                let key = resource.key();
                self.rejected.remove(&format!("workload {key}"));
                self.rejected.remove(&format!("service {key}"));
            }
        }
        self.last_refused_whole = false;
        let started = Instant::now();
        let compiled = self.compiler.apply(update, &self.limits, resolved);
        let compile_time = started.elapsed();
        let outcome = match compiled {
            Ok(changes) => {
                let written = self.write(&changes);
                log_update_times(decode_time, compile_time, started.elapsed() - compile_time);
                self.follow_hostnames();
                written
            }
            Err(e) => {
                self.last_refused_whole = true;
                Err(e.to_string())
            }
        };
        self.finish(errors, outcome)
    }

    /// Records the outcome and turns it into the NACK detail.
    fn finish(
        &mut self,
        errors: Vec<ResourceError>,
        outcome: Result<(), String>,
    ) -> Result<(), String> {
        self.updates += 1;
        for e in &errors {
            tracing::warn!(error = %e, "resource refused; its previous version (if any) stays");
            self.rejected.insert(e.resource.clone(), e.to_string());
        }
        let mut problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "update not applied; the configuration in force keeps serving");
            problems.push(e.clone());
        }
        if let Some(m) = &self.metrics {
            match &outcome {
                Ok(()) => m.applied(errors.len()),
                Err(_) => m.refused(),
            }
        }
        let text = if problems.is_empty() {
            "applied".to_string()
        } else {
            problems.join("; ")
        };
        self.last = Some(LastUpdate {
            source: self.source.clone(),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            outcome: text.clone(),
        });
        if problems.is_empty() {
            Ok(())
        } else {
            Err(text)
        }
    }

    fn write(&mut self, changes: &PlanChanges) -> Result<(), String> {
        let everything;
        let changes = if self.resync {
            everything = PlanChanges::everything(self.compiler.plan());
            &everything
        } else if changes.is_empty() {
            return Ok(());
        } else {
            changes
        };
        if let Err(e) = self.sink.write(self.compiler.plan(), changes) {
            self.resync = true;
            return Err(format!("writing the maps: {e}"));
        }
        self.resync = false;
        self.compiler.kernel_caught_up();
        if let Some(activate) = self.activation.as_mut() {
            activate().map_err(|e| format!("activating the programs: {e}"))?;
            self.activation = None;
        }
        Ok(())
    }

    /// Keeps the resolver subscribed to exactly the DNS workloads' hostnames;
    /// answers already known (another owner asked) are applied at once.
    fn follow_hostnames(&mut self) {
        let Some(resolver) = self.dns.clone() else {
            if !self.compiler.hostnames().is_empty() && self.dns_hosts.is_empty() {
                tracing::warn!(
                    "DNS workloads present but no resolver is running; they get no endpoints"
                );
            }
            return;
        };
        let wanted: BTreeSet<String> = self.compiler.hostnames().into_iter().collect();
        if wanted == self.dns_hosts {
            return;
        }
        let subscriptions: Vec<Subscription> = wanted
            .iter()
            .map(|host| Subscription {
                host: host.clone(),
                family: LookupFamily::All,
                // A changed record is seen when its TTL runs out; a failed
                // lookup is retried on the resolver's default backoff (1 s
                // doubling to 30 s), ServiceEntry having no schedule of its own.
                policy: RefreshPolicy {
                    refresh_rate: DNS_REFRESH,
                    respect_ttl: true,
                    failure_refresh: None,
                },
            })
            .collect();
        match resolver.set_owner(DNS_OWNER, &subscriptions) {
            Ok(_) => {
                let added: Vec<String> = wanted.difference(&self.dns_hosts).cloned().collect();
                self.dns_hosts = wanted;
                self.hosts_changed(&added);
            }
            Err(e) => tracing::error!(error = %e, "DNS subscriptions not updated"),
        }
    }

    /// The store, what was refused, and the plan sizes.
    pub fn dump_json(&self) -> serde_json::Value {
        self.dump(false)
    }

    /// [`Self::dump_json`] without the per-service and per-workload lists:
    /// cheap at any scale (what monitoring and tests poll).
    pub fn summary_json(&self) -> serde_json::Value {
        self.dump(true)
    }

    fn dump(&self, summary: bool) -> serde_json::Value {
        let mut dump = self.compiler.dump_json(summary);
        if let Some(map) = dump.as_object_mut() {
            let authorizations = if summary {
                serde_json::json!(self.authorizations.len())
            } else {
                self.authorizations.dump_json()
            };
            map.insert("authorizations".into(), authorizations);
            map.insert("rejected".into(), serde_json::json!(self.rejected));
            map.insert("last_update".into(), serde_json::json!(self.last));
            map.insert("updates".into(), serde_json::json!(self.updates));
            map.insert("limits".into(), serde_json::json!(self.limits));
        }
        dump
    }
}

/// The store key a refused resource had, when its label names one.
fn key_of(e: &ResourceError) -> Option<String> {
    e.resource
        .strip_prefix("workload ")
        .or_else(|| e.resource.strip_prefix("service "))
        .map(str::to_owned)
}

/// Updates slower than this are logged at info level (the others at debug)
/// with where the time went, so a slow push can be told apart.
const SLOW_UPDATE: Duration = Duration::from_millis(100);

fn log_update_times(decode: Duration, compile: Duration, write: Duration) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if decode + compile + write >= SLOW_UPDATE {
        tracing::info!(
            decode_ms = ms(decode),
            compile_ms = ms(compile),
            write_ms = ms(write),
            "large update applied"
        );
    } else {
        tracing::debug!(
            decode_ms = ms(decode),
            compile_ms = ms(compile),
            write_ms = ms(write),
            "update applied"
        );
    }
}

#[cfg(test)]
mod tests;
