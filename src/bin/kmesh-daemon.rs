//! kmesh-daemon: subscribes to xDS, compiles it into eBPF maps.

use std::sync::Arc;

use clap::Parser;

use kmesh::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let logs = Arc::new(kmesh::logging::init(&config.log_level)?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Err(e) = runtime.block_on(kmesh::daemon::run(config, logs)) {
        tracing::error!("{e}");
        // The full cause chain, for errors that wrap an OS error.
        return Err(anyhow::Error::new(e));
    }
    Ok(())
}
