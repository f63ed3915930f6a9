//! Kernel-native mode at run time: snapshots in (from the xDS file or ADS),
//! staged and compiled, written to the maps, reported in the admin dump.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::compiler::{Limits, NoDns, ResolvedHosts};
use super::dump::{self, LastUpdate};
use super::input::Snapshot;
use super::plan::{Changed, FilterAction, Plan};
use super::resources::ResourceError;
use super::snapshot::{ConfigState, SnapshotError, Staged};
use super::writer::MapWriter;
use crate::admin::AdminState;
use crate::dns::DnsResolver;
use crate::metrics::Metrics;

use crate::bpf::Activation;

/// What became of a snapshot.
#[derive(Debug, Clone)]
pub enum ApplyOutcome {
    /// In the kernel; these resources were refused individually (their
    /// previous versions stay in force).
    Applied { rejected: Vec<ResourceError> },
    /// Nothing changed in the kernel.
    Refused(String),
}

pub struct KernelNativeRunner {
    state: ConfigState,
    /// Resolves STRICT_DNS/LOGICAL_DNS hostnames; `None` when no resolver
    /// could be started (such clusters then have no endpoints).
    dns: Option<DnsResolver>,
    /// Clusters registered with the resolver as owners of hostnames.
    dns_owners: BTreeSet<String>,
    /// The last [`Self::check`] (before the initial sync): what it decoded
    /// is reused by the next apply rather than decoded again.
    checked: Option<Staged>,
    /// Pending until the first configuration is written.
    activation: Option<Activation>,
    metrics: Option<Arc<Metrics>>,
    writer: MapWriter,
    limits: Limits,
    admin: Arc<AdminState>,
    source: String,
    version: u64,
    last: Option<LastUpdate>,
    warned_http_only: BTreeSet<String>,
}

impl KernelNativeRunner {
    pub fn new(
        writer: MapWriter,
        limits: Limits,
        admin: Arc<AdminState>,
        source: String,
        dns: Option<DnsResolver>,
    ) -> Self {
        Self {
            state: ConfigState::default(),
            dns,
            dns_owners: BTreeSet::new(),
            checked: None,
            activation: None,
            metrics: None,
            writer,
            limits,
            admin,
            source,
            version: 0,
            last: None,
            warned_http_only: BTreeSet::new(),
        }
    }

    /// The plan in force.
    pub fn plan(&self) -> &Plan {
        self.state.plan()
    }

    pub fn with_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Run once the maps first hold a configuration: make the loaded programs
    /// the ones that run (see `bpf::kernel_native::KernelNativeBpf::activate`).
    pub fn on_first_write(&mut self, activation: Activation) {
        self.activation = Some(activation);
    }

    /// True when the programs that read these maps are the active ones.
    fn activate(&mut self) -> bool {
        let Some(activation) = self.activation.as_mut() else {
            return true;
        };
        match activation() {
            Ok(()) => {
                self.activation = None;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "activating the programs failed; will retry with the next update");
                false
            }
        }
    }

    /// A DNS answer changed: compile the clusters that resolve hostnames again.
    pub fn reapply(&mut self) -> ApplyOutcome {
        self.checked = None;
        let staged = self.state.restage(&self.limits, self.resolved_hosts());
        self.write(staged)
    }

    /// What the compiler reads DNS answers from.
    fn resolved_hosts(&self) -> &dyn ResolvedHosts {
        match &self.dns {
            Some(resolver) => resolver,
            None => &NoDns,
        }
    }

    /// Validate a snapshot as [`Self::apply`] would, without writing anything.
    pub fn check(&mut self, snapshot: &Snapshot) -> ApplyOutcome {
        let earlier = self.checked.take();
        match self.state.stage_after(
            snapshot,
            &self.limits,
            self.resolved_hosts(),
            earlier.as_ref(),
        ) {
            Ok(staged) => {
                let rejected = staged.rejected.clone();
                self.checked = Some(staged);
                ApplyOutcome::Applied { rejected }
            }
            Err(e) => ApplyOutcome::Refused(e.to_string()),
        }
    }

    /// Apply one complete snapshot.
    pub fn apply(&mut self, snapshot: &Snapshot) -> ApplyOutcome {
        let earlier = self.checked.take();
        let staged = self.state.stage_after(
            snapshot,
            &self.limits,
            self.resolved_hosts(),
            earlier.as_ref(),
        );
        drop(earlier);
        self.write(staged)
    }

    /// Make a staged snapshot the state in force and write what changed. A
    /// failed write leaves the state in force as staged: the writer then
    /// rewrites the whole plan with the next update (see `MapWriter`).
    fn write(&mut self, staged: Result<Staged, SnapshotError>) -> ApplyOutcome {
        let staged = match staged {
            Ok(staged) => staged,
            Err(e) => {
                tracing::error!(error = %e, "configuration refused; the previous one stays in force");
                self.refuse(e.to_string());
                return ApplyOutcome::Refused(e.to_string());
            }
        };
        for note in &staged.unsupported {
            tracing::warn!("{note}; skipped");
        }
        for err in &staged.rejected {
            tracing::error!(error = %err, "resource rejected; its previous version (if any) stays in force");
        }
        let rejected = staged.rejected.clone();
        let changed = self.state.commit(staged);
        self.follow_dns_hostnames();
        match self.writer.apply(self.state.plan(), &changed) {
            Ok(write) => {
                self.warn_http_only(&changed);
                self.version += 1;
                let plan = self.state.plan();
                tracing::info!(
                    version = self.version,
                    listeners = plan.listeners.len(),
                    clusters = plan.clusters.len(),
                    rejected = rejected.len(),
                    ?write,
                    "configuration applied"
                );
                self.last = Some(LastUpdate::Applied {
                    at_unix_ms: dump::now_unix_ms(),
                    rejected: rejected.clone(),
                    write,
                });
                if let Some(m) = &self.metrics {
                    m.applied(rejected.len());
                }
                if self.activate() {
                    self.admin.set_ready();
                }
                ApplyOutcome::Applied { rejected }
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the maps failed; will retry with the next update");
                let message = format!("writing the maps: {e}");
                self.refuse(message.clone());
                ApplyOutcome::Refused(message)
            }
        }
    }

    /// Keep the resolver subscribed to exactly the hostnames of the DNS
    /// clusters in force. New hostnames resolve in the background; their
    /// first answer comes back as a change and triggers [`Self::reapply`].
    fn follow_dns_hostnames(&mut self) {
        let Some(resolver) = &self.dns else {
            return;
        };
        let mut owners = BTreeSet::new();
        for (name, subs) in self.state.dns_clusters() {
            if let Err(e) = resolver.set_owner(name, subs) {
                tracing::error!(cluster = %name, error = %e, "cannot resolve the cluster's hostnames");
            }
            owners.insert(name.to_string());
        }
        for gone in self.dns_owners.difference(&owners) {
            resolver.unsubscribe_owner(gone);
        }
        self.dns_owners = owners;
    }

    /// Delete the counters of removed endpoints whose last connections have
    /// closed since the last update; run periodically.
    pub fn sweep_stale_counters(&mut self) {
        self.writer.sweep();
    }

    /// Record an update that could not be used at all (e.g. an unparsable file).
    pub fn refuse(&mut self, error: String) {
        if let Some(m) = &self.metrics {
            m.refused();
        }
        self.last = Some(LastUpdate::Refused {
            at_unix_ms: dump::now_unix_ms(),
            error,
        });
    }

    /// `/debug/config_dump/kernel-native`, built when asked: serializing a
    /// large plan on every update would cost time and memory for nothing.
    pub fn dump_json(&self) -> serde_json::Value {
        let dump = dump::build(
            &self.source,
            self.version,
            self.last.as_ref(),
            self.state.plan(),
        );
        serde_json::to_value(&dump).unwrap_or_else(|e| {
            tracing::error!(error = %e, "building the config dump");
            serde_json::json!({ "error": format!("building the config dump: {e}") })
        })
    }

    /// On a stock kernel an HTTP-only listener is left alone; say so once per listener.
    fn warn_http_only(&mut self, changed: &Changed) {
        let plan = self.state.plan();
        for listener in changed
            .listeners
            .iter()
            .filter_map(|k| plan.listeners.get(k))
        {
            let actions: Vec<&FilterAction> = listener
                .matches
                .iter()
                .filter_map(|m| m.action.as_ref())
                .chain(listener.default_action.as_ref())
                .collect();
            let http_only = !actions.is_empty()
                && actions
                    .iter()
                    .all(|a| matches!(a.terminal(), FilterAction::Http { .. }));
            if http_only && self.warned_http_only.insert(listener.name.clone()) {
                tracing::warn!(
                    listener = %listener.name,
                    "HTTP-only listener: its connections are left untouched on a stock kernel \
                     (HTTP routing in the kernel needs the enhanced kernel)"
                );
            }
        }
    }
}
