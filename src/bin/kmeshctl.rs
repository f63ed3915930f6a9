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
    /// Show the daemon's log level, or change it (`--set default:debug`).
    Log {
        /// `NAME:LEVEL` (NAME is `default`), or just `LEVEL`.
        #[arg(long)]
        set: Option<String>,
    },
    /// Print the configuration of a mode as JSON.
    Dump {
        mode: DumpMode,
        /// Show what is in the eBPF maps (read back) instead of the compiled config.
        #[arg(long)]
        bpf: bool,
    },
    /// Turn the per-connection access log (daemon stdout) on or off.
    Accesslog { action: Toggle },
    /// Turn connection metrics (kmesh_tcp_*) on or off.
    Monitoring { action: Toggle },
}

#[derive(Clone, Copy, ValueEnum)]
enum Toggle {
    Enable,
    Disable,
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
        Cmd::Log { set: None } => {
            let (status, body) = admin_client::get(cli.admin_address, "/debug/loggers")?;
            if status != 200 {
                bail!("the daemon answered HTTP {status}: {}", body.trim());
            }
            let value: serde_json::Value =
                serde_json::from_str(&body).context("the daemon's answer is not JSON")?;
            for logger in value["loggers"].as_array().into_iter().flatten() {
                println!(
                    "{}: {}",
                    logger["name"].as_str().unwrap_or("?"),
                    logger["level"].as_str().unwrap_or("?")
                );
            }
        }
        Cmd::Log { set: Some(spec) } => {
            let (name, level) = spec.split_once(':').unwrap_or(("default", spec.as_str()));
            let body = serde_json::json!({ "name": name, "level": level }).to_string();
            let (status, answer) =
                admin_client::post_json(cli.admin_address, "/debug/loggers", &body)?;
            if status != 200 {
                bail!(
                    "the daemon refused the change (HTTP {status}): {}",
                    answer.trim()
                );
            }
            println!("{name}: {level}");
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
        Cmd::Accesslog { action } => toggle(cli.admin_address, "/accesslog", action)?,
        Cmd::Monitoring { action } => toggle(cli.admin_address, "/monitoring", action)?,
    }
    Ok(())
}

fn toggle(admin: SocketAddr, path: &str, action: Toggle) -> anyhow::Result<()> {
    let enable = matches!(action, Toggle::Enable);
    let (status, body) = admin_client::post_json(admin, &format!("{path}?enable={enable}"), "")?;
    if status != 200 {
        bail!("the daemon refused (HTTP {status}): {}", body.trim());
    }
    println!("{}", body.trim());
    Ok(())
}
