//! Kernel-native mode at run time: snapshots in (from the xDS file today),
//! staged and compiled, written to the maps, reported in the admin dump.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost_types::Any;

use super::compiler::Limits;
use super::dump::{self, LastUpdate};
use super::plan::{FilterAction, Plan};
use super::resources::ResourceError;
use super::snapshot::ConfigState;
use super::writer::MapWriter;
use crate::admin::AdminState;

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
    writer: MapWriter,
    limits: Limits,
    admin: Arc<AdminState>,
    source: String,
    version: u64,
    last: Option<LastUpdate>,
    warned_http_only: BTreeSet<String>,
}

impl KernelNativeRunner {
    pub fn new(writer: MapWriter, limits: Limits, admin: Arc<AdminState>, source: String) -> Self {
        Self {
            state: ConfigState::default(),
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

    /// Apply one complete snapshot.
    pub fn apply(&mut self, snapshot: &[Any]) -> ApplyOutcome {
        let staged = match self.state.stage(snapshot, &self.limits) {
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
        match self.writer.apply(&staged.plan) {
            Ok(write) => {
                self.warn_http_only(&staged.plan);
                self.version += 1;
                let (listeners, clusters, rejected) = (
                    staged.plan.listeners.len(),
                    staged.plan.clusters.len(),
                    staged.rejected.len(),
                );
                self.last = Some(LastUpdate::Applied {
                    at_unix_ms: dump::now_unix_ms(),
                    rejected: staged.rejected.clone(),
                    write,
                });
                let rejected_resources = staged.rejected.clone();
                self.state.commit(staged);
                self.publish_dump();
                tracing::info!(
                    version = self.version,
                    listeners,
                    clusters,
                    rejected,
                    ?write,
                    "configuration applied"
                );
                self.admin.set_ready();
                ApplyOutcome::Applied {
                    rejected: rejected_resources,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the maps failed; will retry with the next update");
                let message = format!("writing the maps: {e}");
                self.refuse(message.clone());
                ApplyOutcome::Refused(message)
            }
        }
    }

    /// Record an update that could not be used at all (e.g. an unparsable file).
    pub fn refuse(&mut self, error: String) {
        self.last = Some(LastUpdate::Refused {
            at_unix_ms: dump::now_unix_ms(),
            error,
        });
        self.publish_dump();
    }

    fn publish_dump(&self) {
        let dump = dump::build(
            &self.source,
            self.version,
            self.last.as_ref(),
            self.state.plan(),
        );
        match serde_json::to_value(&dump) {
            Ok(v) => self.admin.set_kernel_native_dump(v),
            Err(e) => tracing::error!(error = %e, "building the config dump"),
        }
    }

    /// On a stock kernel an HTTP-only listener is left alone; say so once per listener.
    fn warn_http_only(&mut self, plan: &Plan) {
        for listener in plan.listeners.values() {
            let actions: Vec<&FilterAction> = listener
                .matches
                .iter()
                .filter_map(|m| m.action.as_ref())
                .chain(listener.default_action.as_ref())
                .collect();
            let http_only = !actions.is_empty()
                && actions
                    .iter()
                    .all(|a| matches!(a, FilterAction::Http { .. }));
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
