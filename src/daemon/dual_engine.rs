//! Dual-engine mode: the Istio workload API (delta ADS or the file)
//! compiled into the frontend/service/endpoint/backend maps read by
//! `bpf/dual_engine`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{follow_dns, follow_file, start_dns, DaemonError, Shutdown, Source};
use crate::admin::AdminState;
use crate::bpf::dual_engine::{DualEngineBpf, DualEngineCapacity, DualEngineMaps};
use crate::config::Config;
use crate::metrics::{self, KernelReadout, Metrics};
use crate::sync::lock;
use crate::workload::bpf_dump;
use crate::workload::compiler::{CompilerSettings, Limits, WorkloadCompiler};
use crate::workload::plan::{Plan, PlanChanges};
use crate::workload::runner::{DualEngineRunner, PlanSink};
use crate::workload::writer::DualEngineWriter;
use crate::workload::xds_delta::{DualEngineXds, SharedRunner};
use crate::xds::delta;

/// The kernel's endpoint map holds the plan's endpoints plus the spare slot
/// of the services being updated at that moment; the writer splits a large
/// update into rounds that fit this headroom.
const ENDPOINT_HEADROOM: u32 = 1 << 16;

/// Map fill from the plan (the writer keeps the maps equal to it) and the
/// pipeline counters from the kernel, for `/status/metric`.
struct DualEngineReadout {
    runner: SharedRunner,
    maps: Arc<DualEngineMaps>,
    limits: Limits,
}

impl KernelReadout for DualEngineReadout {
    fn maps(&self) -> Vec<(String, i64, i64)> {
        let runner = lock(&self.runner);
        let plan = runner.plan();
        [
            (
                "de_frontends",
                plan.frontends.len(),
                self.limits.max_frontends,
            ),
            ("de_services", plan.services.len(), self.limits.max_services),
            (
                "de_endpoints",
                plan.endpoint_entries(),
                self.limits.max_endpoints,
            ),
            ("de_backends", plan.backends.len(), self.limits.max_backends),
        ]
        .into_iter()
        .map(|(map, entries, capacity)| (map.to_string(), entries as i64, capacity as i64))
        .collect()
    }

    fn events(&self) -> Vec<(String, u64)> {
        bpf_dump::counter_totals(&self.maps)
            .map(|c| c.into_iter().map(|(e, n)| (e.to_string(), n)).collect())
            .unwrap_or_default()
    }
}

/// The daemon's writer, as the runner's plan sink.
struct WriterSink(DualEngineWriter);

impl PlanSink for WriterSink {
    fn write(&mut self, plan: &Plan, changes: &PlanChanges) -> Result<(), String> {
        let stats = self.0.apply(plan, changes).map_err(|e| e.to_string())?;
        tracing::debug!(?stats, "dual-engine maps written");
        Ok(())
    }
}

pub(super) async fn run(
    config: &Config,
    source: Source,
    admin_state: Arc<AdminState>,
    shutdown: &mut Shutdown,
) -> Result<(), DaemonError> {
    let capacity = DualEngineCapacity {
        max_frontends: config.max_frontends,
        max_services: config.max_services,
        max_endpoints: config.max_endpoints.saturating_add(ENDPOINT_HEADROOM),
        max_backends: config.max_backends,
    };
    let limits = Limits {
        max_frontends: config.max_frontends as usize,
        max_services: config.max_services as usize,
        max_endpoints: config.max_endpoints as usize,
        max_backends: config.max_backends as usize,
    };
    let (bpf_fs, cgroup) = (config.bpf_fs_path.clone(), config.cgroup2_path.clone());
    let mark = config.waypoint_mark;
    let bpf = tokio::task::spawn_blocking(move || {
        DualEngineBpf::load_with_mark(&bpf_fs, &cgroup, capacity, mark)
    })
    .await??;
    let mut writer = DualEngineWriter::new(bpf.maps()?, capacity);
    // Before anything is compiled: ids must keep the objects their pinned
    // records belong to (see workload::ids).
    let adopted = writer.adopt().map_err(DaemonError::Adopt)?;
    // Read back by the bpf dump and the metrics scrape alike.
    let read_maps = Arc::new(bpf.maps()?);
    let dump_maps = read_maps.clone();
    admin_state.set_dual_engine_bpf_dump(Arc::new(move || {
        bpf_dump::dump(&dump_maps).map_err(|e| e.to_string())
    }));
    let bpf = Arc::new(Mutex::new(bpf));

    let (dns, dns_changes) = start_dns(config);
    if let Some(resolver) = &dns {
        admin_state.set_dns(resolver.clone());
    }
    let mut compiler = WorkloadCompiler::new(CompilerSettings {
        node_name: config.node_name.clone(),
        cluster_id: config.cluster_id.clone(),
        locality: config.locality.clone(),
        waypoint_port: config.waypoint_port,
    });
    compiler.adopt_ids(&adopted.service_ids, &adopted.backend_ids);
    drop(adopted);
    let source_name = match &source {
        Source::File(file) => format!("file:{}", file.display()),
        Source::Ads(ads) => format!("ads:{}", ads.uri),
    };
    let runner: SharedRunner = Arc::new(Mutex::new(DualEngineRunner::new(
        compiler,
        Box::new(WriterSink(writer)),
        limits,
        dns,
        source_name,
    )));
    let metrics = Metrics::new(Box::new(DualEngineReadout {
        runner: runner.clone(),
        maps: read_maps,
        limits,
    }));
    metrics::serve(config.metrics_address, metrics.clone()).await;
    lock(&runner).with_metrics(metrics.clone());
    let (dump_runner, summary_runner) = (runner.clone(), runner.clone());
    admin_state.set_dual_engine_dump(
        Arc::new(move || lock(&dump_runner).dump_json()),
        Arc::new(move || lock(&summary_runner).summary_json()),
    );
    let (activation_bpf, ready) = (bpf.clone(), admin_state.clone());
    lock(&runner).on_first_write(Box::new(move || {
        lock(&activation_bpf)
            .activate()
            .map_err(|e| e.to_string())?;
        ready.set_ready();
        Ok(())
    }));
    let dns_runner = runner.clone();
    let dns_task = dns_changes.map(|rx| {
        tokio::spawn(follow_dns(rx, move |hosts| {
            lock(&dns_runner).hosts_changed(hosts);
        }))
    });
    match source {
        Source::File(file) => {
            let poll = Duration::from_millis(config.xds_file_poll_ms.max(10));
            tokio::select! {
                _ = follow_file(&file, poll, |resources| {
                    if let Err(e) = lock(&runner).apply_file(&resources) {
                        tracing::warn!(error = %e, "xDS file not fully applied");
                    }
                }, |error| lock(&runner).refuse(error)) => {}
                _ = shutdown.wait() => {}
            }
        }
        Source::Ads(ads) => {
            let mut handler = DualEngineXds::new(runner.clone(), admin_state).with_metrics(metrics);
            tokio::select! {
                _ = delta::run(*ads, &mut handler) => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    if let Some(task) = dns_task {
        task.abort();
    }
    Ok(())
}
