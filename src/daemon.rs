//! The daemon's life: load and attach, follow the configuration source,
//! detach on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{self, AdminError, AdminState};
use crate::bpf::kernel_native::{self as kn_bpf, KernelNativeBpf, MapCapacity};
use crate::bpf::BpfError;
use crate::config::{Command, Config, Mode};
use crate::dns::{DnsResolver, HostChanged, ResolverSettings};
use crate::kernel_native::compiler::Limits;
use crate::kernel_native::runner::KernelNativeRunner;
use crate::kernel_native::writer::MapWriter;
use crate::kernel_native::xds_sotw::KernelNativeXds;
use crate::logging::LogControl;
use crate::metrics::{self, Metrics};
use crate::telemetry::{Telemetry, TelemetryError};
use crate::xds::ads::{self, AdsConfig, TlsSettings};
use crate::xds::file::parse_resources;
use crate::xds::file_watch::FileWatch;
use crate::xds::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "--mode dual-engine is not available in this release yet; run with --mode kernel-native"
    )]
    ModeNotAvailable,
    #[error("no configuration source: give --xds-file PATH (or --xds-address HOST:PORT)")]
    NoSource,
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, #[source] std::io::Error),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub async fn run(config: Config, logs: Arc<LogControl>) -> Result<(), DaemonError> {
    if let Some(Command::Uninstall) = config.command {
        return uninstall(&config.bpf_fs_path);
    }
    if config.mode == Mode::DualEngine {
        return Err(DaemonError::ModeNotAvailable);
    }
    let source = match (&config.xds_file, &config.xds_address) {
        (Some(file), _) => Source::File(file.clone()),
        (None, Some(address)) => Source::Ads(Box::new(ads_config(&config, address))),
        (None, None) => return Err(DaemonError::NoSource),
    };

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Signal("SIGTERM", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::Signal("SIGINT", e))?;

    let admin_state = AdminState::new(config.bpf_fs_path.clone(), logs);
    admin::serve(config.admin_address, admin_state.clone()).await?;
    let metrics = Metrics::new(
        config.bpf_fs_path.clone(),
        config.max_listeners,
        config.max_clusters,
    );
    metrics::serve(config.metrics_address, metrics.clone()).await;

    let capacity = MapCapacity {
        max_listeners: config.max_listeners,
        max_clusters: config.max_clusters,
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
    let (dns, dns_changes) = start_dns(&config);
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
        activation_bpf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .activate()
            .map_err(|e| e.to_string())
    }));
    let dns_task = dns_changes.map(|rx| tokio::spawn(follow_dns(rx, runner.clone())));
    match source {
        Source::File(file) => {
            let poll = Duration::from_millis(config.xds_file_poll_ms.max(10));
            tokio::select! {
                _ = follow_file(runner.clone(), &file, poll) => {}
                _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        Source::Ads(ads) => {
            let mut handler =
                KernelNativeXds::new(runner.clone(), admin_state).with_metrics(metrics);
            tokio::select! {
                _ = ads::run(*ads, &mut handler) => {}
                _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
    }
    if let Some(task) = dns_task {
        task.abort();
    }
    // The programs stay attached through their pinned links and the maps keep
    // the configuration: traffic is steered while no daemon runs. The next
    // daemon takes over; `kmesh-daemon uninstall` removes everything.
    tracing::info!("exiting; the data plane stays in place (kmesh-daemon uninstall removes it)");
    Ok(())
}

type SharedRunner = Arc<Mutex<KernelNativeRunner>>;

/// The runner's state stays consistent across a panic in another holder
/// (every apply is all-or-nothing), so a poisoned lock is still usable.
fn lock(runner: &SharedRunner) -> std::sync::MutexGuard<'_, KernelNativeRunner> {
    runner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Source {
    File(PathBuf),
    Ads(Box<AdsConfig>),
}

/// `--xds-address`: `http://` means plaintext, `https://` TLS; a bare
/// `host:port` is TLS (Istiod's 15012) unless `--xds-plaintext`.
fn ads_config(config: &Config, address: &str) -> AdsConfig {
    let (uri, tls) = if address.starts_with("http://") {
        (address.to_string(), false)
    } else if address.starts_with("https://") {
        (address.to_string(), true)
    } else if config.xds_plaintext {
        (format!("http://{address}"), false)
    } else {
        (format!("https://{address}"), true)
    };
    let identity = Identity {
        instance_ip: config.instance_ip.clone(),
        pod_name: config.pod_name.clone(),
        pod_namespace: config.pod_namespace.clone(),
        cluster_id: config.cluster_id.clone(),
        node_name: config.node_name.clone(),
    };
    AdsConfig {
        uri,
        tls: tls.then(|| TlsSettings {
            root_cert: config.xds_root_cert.clone(),
            domain: config.xds_server_name.clone(),
        }),
        // Read at every stream open: Istio mounts (and rotates) the token file.
        token_file: Some(config.xds_token_file.clone()),
        node: identity.node(),
        cluster_id: config.cluster_id.clone(),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
    }
}

/// Poll the xDS file forever (until the caller drops this future).
async fn follow_file(runner: SharedRunner, file: &Path, poll: Duration) {
    let mut watch = FileWatch::new(file);
    let mut last_read_error = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        poll_file(&mut watch, &mut lock(&runner), &mut last_read_error);
    }
}

/// The resolver for DNS clusters. Without one (no nameserver configured),
/// the daemon still runs; DNS clusters then have no endpoints.
fn start_dns(config: &Config) -> (Option<DnsResolver>, Option<UnboundedReceiver<HostChanged>>) {
    let settings = ResolverSettings {
        servers: config.dns_server.clone(),
        // A dead server times out rather than refusing: keep failures quick so
        // the retry schedule, not the query timeout, sets the pace.
        timeout: Some(Duration::from_secs(2)),
        attempts: Some(1),
    };
    match DnsResolver::start(&settings) {
        Ok((resolver, changes)) => (Some(resolver), Some(changes)),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: STRICT_DNS/LOGICAL_DNS clusters get no endpoints");
            (None, None)
        }
    }
}

/// Re-apply the configuration whenever a hostname's addresses change. A burst
/// of changes is folded into one apply.
async fn follow_dns(mut changes: UnboundedReceiver<HostChanged>, runner: SharedRunner) {
    while let Some(change) = changes.recv().await {
        tracing::info!(host = %change.host, addresses = ?change.addresses, "DNS answer changed");
        while let Ok(more) = changes.try_recv() {
            tracing::info!(host = %more.host, addresses = ?more.addresses, "DNS answer changed");
        }
        lock(&runner).reapply();
    }
}

/// Check the file; apply it when it changed. A file that cannot be read or
/// parsed is reported (once per distinct error) and the config in force stays.
fn poll_file(
    watch: &mut FileWatch,
    runner: &mut KernelNativeRunner,
    last_error: &mut Option<String>,
) {
    let text = match watch.changed() {
        Ok(Some(text)) => text,
        Ok(None) => return,
        Err(e) => {
            let msg = e.to_string();
            if last_error.as_deref() != Some(msg.as_str()) {
                tracing::error!(error = %msg, "xDS file unreadable; the configuration in force stays");
                runner.refuse(msg.clone());
                *last_error = Some(msg);
            }
            return;
        }
    };
    *last_error = None;
    match parse_resources(&text) {
        Ok(resources) => {
            runner.apply(&resources);
            drop(resources);
            drop(text);
            release_freed_memory();
        }
        Err(e) => {
            let msg = format!("{}: {e}", watch.path().display());
            tracing::error!(error = %msg, "invalid xDS file; the configuration in force stays");
            runner.refuse(msg);
        }
    }
}

/// Parsing a large xDS file allocates hundreds of MB briefly; glibc keeps
/// freed memory in its arenas. Give it back to the system after each file.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions and does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn uninstall(bpf_fs_path: &Path) -> Result<(), DaemonError> {
    if kn_bpf::uninstall(bpf_fs_path)? {
        tracing::info!(path = %bpf_fs_path.display(), "removed kmesh pins; programs detached");
    } else {
        tracing::info!(path = %bpf_fs_path.display(), "nothing to remove");
    }
    Ok(())
}
