//! kmeshctl: operate a running kmesh-daemon through its admin endpoint.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use kmesh::admin_client;

#[derive(Parser)]
#[command(name = "kmeshctl", version, about = "Operate a running kmesh-daemon")]
struct Cli {
    /// The daemon's admin endpoint.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:15200",
        env = "KMESH_ADMIN_ADDRESS"
    )]
    admin_address: SocketAddr,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print kmeshctl's version and the daemon's.
    Version,
    /// Print the configuration of a mode as JSON.
    Dump {
        mode: DumpMode,
        /// Show what is in the eBPF maps (read back) instead of the compiled config.
        #[arg(long)]
        bpf: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpMode {
    KernelNative,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Version => {
            println!("kmeshctl {}", env!("CARGO_PKG_VERSION"));
            match admin_client::get(cli.admin_address, "/version") {
                Ok((200, body)) => println!("daemon   {}", body.trim()),
                Ok((status, body)) => {
                    println!("daemon   unavailable (HTTP {status}: {})", body.trim())
                }
                Err(e) => println!("daemon   unreachable: {e}"),
            }
        }
        Cmd::Dump {
            mode: DumpMode::KernelNative,
            bpf,
        } => {
            let path = if bpf {
                "/debug/config_dump/bpf/kernel-native"
            } else {
                "/debug/config_dump/kernel-native"
            };
            let (status, body) = admin_client::get(cli.admin_address, path)?;
            if status != 200 {
                bail!("the daemon answered HTTP {status}: {}", body.trim());
            }
            let value: serde_json::Value =
                serde_json::from_str(&body).context("the daemon's dump is not JSON")?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
    }
    Ok(())
}
