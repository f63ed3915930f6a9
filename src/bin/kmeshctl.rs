//! kmeshctl: operate a running kmesh-daemon through its admin endpoint.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use kmesh::admin_client;

mod port_forward {
    //! `kubectl port-forward` to a daemon pod's admin port, as Kmesh users
    //! reach it (`kmeshctl --pod kmesh-xxxxx dump kernel-native`).

    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    use anyhow::{anyhow, Context};

    /// The daemon's admin port inside the pod.
    const ADMIN_PORT: u16 = 15200;

    pub struct PortForward {
        child: Child,
        pub local: SocketAddr,
    }

    impl PortForward {
        pub fn start(pod: &str, namespace: &str) -> anyhow::Result<Self> {
            let mut child = Command::new("kubectl")
                .args(["port-forward", "-n", namespace, &format!("pod/{pod}")])
                .arg(format!(":{ADMIN_PORT}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context(
                    "running kubectl (needed for --pod; or reach the daemon with --admin-address)",
                )?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("kubectl has no stdout"))?;
            // kubectl prints "Forwarding from 127.0.0.1:PORT -> 15200" once it listens.
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(addr) = forwarded_address(&line) {
                        let _ = tx.send(addr);
                        return;
                    }
                }
            });
            let local = match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(addr) => addr,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(anyhow!(
                        "kubectl port-forward to pod {pod} in {namespace} did not come up within 20 s \
                         (is the pod running? right --namespace?)"
                    ));
                }
            };
            Ok(Self { child, local })
        }
    }

    impl Drop for PortForward {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The local address in kubectl's "Forwarding from ADDR -> PORT" line.
    pub fn forwarded_address(line: &str) -> Option<SocketAddr> {
        let rest = line.strip_prefix("Forwarding from ")?;
        let (addr, _) = rest.split_once(" -> ")?;
        addr.trim().parse().ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_forwarding_line_gives_the_local_address() {
            assert_eq!(
                forwarded_address("Forwarding from 127.0.0.1:43121 -> 15200"),
                Some("127.0.0.1:43121".parse().unwrap())
            );
            assert_eq!(
                forwarded_address("Forwarding from [::1]:43121 -> 15200"),
                Some("[::1]:43121".parse().unwrap())
            );
            assert_eq!(forwarded_address("Handling connection for 43121"), None);
        }
    }
}

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
    /// Reach the daemon of this pod through `kubectl port-forward` instead.
    #[arg(long, global = true)]
    pod: Option<String>,
    /// Namespace of `--pod`.
    #[arg(long, global = true, default_value = "kmesh-system")]
    namespace: String,
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
    DualEngine,
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    // Held until the command is done; dropping it ends kubectl.
    let _forward = match &cli.pod {
        Some(pod) => {
            let forward = port_forward::PortForward::start(pod, &cli.namespace)?;
            cli.admin_address = forward.local;
            Some(forward)
        }
        None => None,
    };
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
        Cmd::Dump { mode, bpf } => {
            let path = match (mode, bpf) {
                (DumpMode::KernelNative, true) => "/debug/config_dump/bpf/kernel-native",
                (DumpMode::KernelNative, false) => "/debug/config_dump/kernel-native",
                (DumpMode::DualEngine, true) => "/debug/config_dump/bpf/dual-engine",
                (DumpMode::DualEngine, false) => "/debug/config_dump/dual-engine",
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
