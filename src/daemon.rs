//! The daemon's life: load and attach, follow the configuration source,
//! detach on SIGTERM/SIGINT.

use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{self, AdminError, AdminState};
use crate::bpf::kernel_native::{self as kn_bpf, KernelNativeBpf, MapCapacity};
use crate::bpf::BpfError;
use crate::config::{Command, Config, Mode};
use crate::kernel_native::compiler::Limits;
use crate::kernel_native::runner::KernelNativeRunner;
use crate::kernel_native::writer::MapWriter;
use crate::xds::file::parse_resources;
use crate::xds::file_watch::FileWatch;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "--mode dual-engine is not available in this release yet; run with --mode kernel-native"
    )]
    ModeNotAvailable,
    #[error(
        "ADS over gRPC (--xds-address / XDS_ADDRESS) is not available in this release yet; \
         give the configuration with --xds-file PATH"
    )]
    AdsNotAvailable,
    #[error("no configuration source: give --xds-file PATH (or --xds-address HOST:PORT)")]
    NoSource,
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, #[source] std::io::Error),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    if let Some(Command::Uninstall) = config.command {
        return uninstall(&config.bpf_fs_path);
    }
    if config.mode == Mode::DualEngine {
        return Err(DaemonError::ModeNotAvailable);
    }
    let file = match (&config.xds_file, &config.xds_address) {
        (Some(file), _) => file.clone(),
        (None, Some(_)) => return Err(DaemonError::AdsNotAvailable),
        (None, None) => return Err(DaemonError::NoSource),
    };

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Signal("SIGTERM", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::Signal("SIGINT", e))?;

    let admin_state = AdminState::new(config.bpf_fs_path.clone());
    admin::serve(config.admin_address, admin_state.clone()).await?;

    let capacity = MapCapacity {
        max_listeners: config.max_listeners,
        max_clusters: config.max_clusters,
    };
    let (bpf_fs, cgroup) = (config.bpf_fs_path.clone(), config.cgroup2_path.clone());
    let bpf = tokio::task::spawn_blocking(move || {
        KernelNativeBpf::load_and_attach(&bpf_fs, &cgroup, capacity)
    })
    .await??;
    let limits = Limits {
        max_listeners: config.max_listeners as usize,
        max_clusters: config.max_clusters as usize,
        max_endpoints_per_cluster: config.max_endpoints_per_cluster as usize,
        max_route_configs: config.max_route_configs as usize,
    };
    let writer = match bpf.maps() {
        Ok(maps) => MapWriter::new(maps),
        Err(e) => {
            let _ = bpf.teardown();
            return Err(e.into());
        }
    };
    let mut runner = KernelNativeRunner::new(
        writer,
        limits,
        admin_state,
        format!("file:{}", file.display()),
    );
    let mut watch = FileWatch::new(&file);
    let mut last_read_error = None;
    let mut tick = tokio::time::interval(Duration::from_millis(config.xds_file_poll_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = tick.tick() => poll_file(&mut watch, &mut runner, &mut last_read_error),
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }
    tokio::task::spawn_blocking(move || bpf.teardown()).await??;
    Ok(())
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
        }
        Err(e) => {
            let msg = format!("{}: {e}", watch.path().display());
            tracing::error!(error = %msg, "invalid xDS file; the configuration in force stays");
            runner.refuse(msg);
        }
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
