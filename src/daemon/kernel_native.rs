//! Kernel-native mode: Envoy xDS (SotW ADS or the file) compiled into the
//! listener/cluster maps read by `bpf/kernel_native`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{follow_dns, follow_file, start_dns, DaemonError, Shutdown, Source};
use crate::admin::AdminState;
use crate::bpf::kernel_native::{KernelNativeBpf, MapCapacity};
use crate::config::Config;
use crate::kernel_native::compiler::Limits;
use crate::kernel_native::input::Snapshot;
use crate::kernel_native::runner::KernelNativeRunner;
use crate::kernel_native::writer::MapWriter;
use crate::kernel_native::xds_sotw::KernelNativeXds;
use crate::metrics::{self, KernelNativeReadout, Metrics};
use crate::sync::lock;
use crate::telemetry::Telemetry;
use crate::xds::ads;

/// How often the counters of removed endpoints are looked at again while
/// connections still hold them.
const STALE_COUNTER_SWEEP: Duration = Duration::from_secs(1);

pub(super) async fn run(
    config: &Config,
    source: Source,
    admin_state: Arc<AdminState>,
    shutdown: &mut Shutdown,
) -> Result<(), DaemonError> {
    let metrics = Metrics::new(Box::new(KernelNativeReadout {
        bpf_fs_path: config.bpf_fs_path.clone(),
        max_listeners: config.max_listeners,
        max_clusters: config.max_clusters,
    }));
    metrics::serve(config.metrics_address, metrics.clone()).await;

    let capacity = MapCapacity {
        max_listeners: config.max_listeners,
        max_clusters: config.max_clusters,
        max_netns_cluster_counters: config.max_netns_cluster_counters,
        max_endpoint_counters: config.max_endpoint_counters,
    };
    let (bpf_fs, cgroup) = (config.bpf_fs_path.clone(), config.cgroup2_path.clone());
    let bpf =
        tokio::task::spawn_blocking(move || KernelNativeBpf::load(&bpf_fs, &cgroup, capacity))
            .await??;
    let limits = Limits {
        max_listeners: config.max_listeners as usize,
        max_clusters: config.max_clusters as usize,
        max_endpoints_per_cluster: config.max_endpoints_per_cluster as usize,
        max_route_configs: config.max_route_configs as usize,
    };
    let writer = MapWriter::new(bpf.maps()?);
    // Switches written before the programs are activated: they see them from the start.
    let telemetry = Telemetry::start(
        bpf.telemetry_maps()?,
        metrics.clone(),
        config.monitoring,
        config.accesslog,
        config.access_log_format,
    )?;
    admin_state.set_telemetry(telemetry);
    let bpf = Arc::new(Mutex::new(bpf));
    let (dns, dns_changes) = start_dns(config);
    if let Some(resolver) = &dns {
        admin_state.set_dns(resolver.clone());
    }
    let source_name = match &source {
        Source::File(file) => format!("file:{}", file.display()),
        Source::Ads(ads) => format!("ads:{}", ads.uri),
    };
    let runner = Arc::new(Mutex::new(KernelNativeRunner::new(
        writer,
        limits,
        admin_state.clone(),
        source_name,
        dns,
    )));
    lock(&runner).with_metrics(metrics.clone());
    let dump_runner = runner.clone();
    admin_state.set_kernel_native_dump(Arc::new(move || lock(&dump_runner).dump_json()));
    let activation_bpf = bpf.clone();
    lock(&runner).on_first_write(Box::new(move || {
        lock(&activation_bpf).activate().map_err(|e| e.to_string())
    }));
    let dns_runner = runner.clone();
    let dns_task = dns_changes.map(|rx| {
        tokio::spawn(follow_dns(rx, move |_| {
            lock(&dns_runner).reapply();
        }))
    });
    // Counters of removed endpoints that connections still held at the
    // last update go once those close (see kernel_native::sweep).
    let sweep_runner = runner.clone();
    let sweep_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(STALE_COUNTER_SWEEP);
        loop {
            every.tick().await;
            lock(&sweep_runner).sweep_stale_counters();
        }
    });
    match source {
        Source::File(file) => {
            let poll = Duration::from_millis(config.xds_file_poll_ms.max(10));
            tokio::select! {
                _ = follow_file(&file, poll, |resources| {
                    lock(&runner).apply(&Snapshot::from_anys(resources));
                }, |error| lock(&runner).refuse(error)) => {}
                _ = shutdown.wait() => {}
            }
        }
        Source::Ads(ads) => {
            let mut handler =
                KernelNativeXds::new(runner.clone(), admin_state).with_metrics(metrics);
            tokio::select! {
                _ = ads::run(*ads, &mut handler) => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    if let Some(task) = dns_task {
        task.abort();
    }
    sweep_task.abort();
    Ok(())
}
