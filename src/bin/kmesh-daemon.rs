//! kmesh-daemon: subscribes to xDS, compiles it into eBPF maps.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use kmesh::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", config.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Err(e) = runtime.block_on(kmesh::daemon::run(config)) {
        tracing::error!("{e}");
        // The full cause chain, for errors that wrap an OS error.
        return Err(anyhow::Error::new(e));
    }
    Ok(())
}
