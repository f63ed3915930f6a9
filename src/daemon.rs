//! The daemon's life: load and attach, follow the configuration source,
//! detach on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::admin::{self, AdminError, AdminState};
use crate::bpf::kernel_native as kn_bpf;
use crate::bpf::BpfError;
use crate::config::{Command, Config, Mode};
use crate::dns::{DnsResolver, HostChanged, ResolverSettings};
use crate::logging::LogControl;
use crate::memory::release_freed_memory;
use crate::telemetry::TelemetryError;
use crate::xds::ads::{AdsConfig, TlsSettings};
use crate::xds::file::parse_resources;
use crate::xds::file_watch::FileWatch;
use crate::xds::identity::Identity;

mod dual_engine;
mod kernel_native;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
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
    #[error("reading the adopted dual-engine maps: {0}")]
    Adopt(#[source] crate::workload::writer::WriteError),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub async fn run(config: Config, logs: Arc<LogControl>) -> Result<(), DaemonError> {
    if let Some(Command::Uninstall) = config.command {
        return uninstall(&config.bpf_fs_path);
    }
    let source = match (&config.xds_file, &config.xds_address) {
        (Some(file), _) => Source::File(file.clone()),
        (None, Some(address)) => Source::Ads(Box::new(ads_config(&config, address))),
        (None, None) => return Err(DaemonError::NoSource),
    };

    let mut shutdown = Shutdown::install()?;

    let admin_state = AdminState::new(config.bpf_fs_path.clone(), logs);
    admin::serve(config.admin_address, admin_state.clone()).await?;
    match config.mode {
        Mode::KernelNative => {
            kernel_native::run(&config, source, admin_state, &mut shutdown).await?
        }
        Mode::DualEngine => dual_engine::run(&config, source, admin_state, &mut shutdown).await?,
    }
    // The programs stay attached through their pinned links and the maps keep
    // the configuration: traffic is steered while no daemon runs. The next
    // daemon takes over; `kmesh-daemon uninstall` removes everything.
    tracing::info!("exiting; the data plane stays in place (kmesh-daemon uninstall removes it)");
    Ok(())
}

/// SIGTERM or SIGINT: the daemon exits and leaves the data plane in place.
pub(crate) struct Shutdown {
    sigterm: Signal,
    sigint: Signal,
}

impl Shutdown {
    fn install() -> Result<Self, DaemonError> {
        Ok(Self {
            sigterm: signal(SignalKind::terminate())
                .map_err(|e| DaemonError::Signal("SIGTERM", e))?,
            sigint: signal(SignalKind::interrupt())
                .map_err(|e| DaemonError::Signal("SIGINT", e))?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
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
        // Istiod serves the workload API to ambient node proxies (ztunnel),
        // Envoy xDS to sidecars.
        node: match config.mode {
            Mode::KernelNative => identity.node(),
            Mode::DualEngine => identity.ztunnel_node(),
        },
        cluster_id: config.cluster_id.clone(),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
    }
}

/// The resolver for DNS clusters and ServiceEntry hostnames. Without one (no
/// nameserver configured), the daemon still runs; those get no endpoints.
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

/// Hands every change of DNS answers to `apply`, with the hostnames that
/// changed (sorted, once each); a burst of changes is applied as one.
async fn follow_dns(mut changes: UnboundedReceiver<HostChanged>, mut apply: impl FnMut(&[String])) {
    while let Some(first) = changes.recv().await {
        let mut hosts = Vec::new();
        let mut change = Some(first);
        while let Some(c) = change {
            tracing::info!(host = %c.host, addresses = ?c.addresses, "DNS answer changed");
            hosts.push(c.host);
            change = changes.try_recv().ok();
        }
        hosts.sort();
        hosts.dedup();
        apply(&hosts);
    }
}

/// Polls the xDS file until the caller drops this future. A changed file
/// that parses goes to `apply`; one that cannot be read (reported once per
/// distinct error) or parsed goes to `refuse`, and the config in force stays.
async fn follow_file(
    file: &Path,
    poll: Duration,
    mut apply: impl FnMut(Vec<prost_types::Any>),
    mut refuse: impl FnMut(String),
) {
    let mut watch = FileWatch::new(file);
    let mut last_read_error: Option<String> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match watch.changed() {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(e) => {
                let msg = e.to_string();
                if last_read_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, "xDS file unreadable; the configuration in force stays");
                    refuse(msg.clone());
                    last_read_error = Some(msg);
                }
                continue;
            }
        };
        last_read_error = None;
        match parse_resources(&text) {
            Ok(resources) => {
                drop(text);
                apply(resources);
                release_freed_memory();
            }
            Err(e) => {
                let msg = format!("{}: {e}", watch.path().display());
                tracing::error!(error = %msg, "invalid xDS file; the configuration in force stays");
                refuse(msg);
            }
        }
    }
}

/// Removes both modes' pins (programs detach once no link pin holds them).
fn uninstall(bpf_fs_path: &Path) -> Result<(), DaemonError> {
    let kernel_native = kn_bpf::uninstall(bpf_fs_path)?;
    let dual_engine = crate::bpf::dual_engine::uninstall(bpf_fs_path)?;
    if kernel_native || dual_engine {
        tracing::info!(path = %bpf_fs_path.display(), "removed kmesh pins; programs detached");
    } else {
        tracing::info!(path = %bpf_fs_path.display(), "nothing to remove");
    }
    Ok(())
}
