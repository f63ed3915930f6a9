//! What the control-plane benchmarks share: the daemon under test as a child
//! process (and the bpffs dir and cgroup it needs, removed again also on a
//! panic or Ctrl-C), its memory readouts, the statistics, the issue's
//! targets and the command line.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Endpoints behind each service.
pub const ENDPOINTS_PER_SERVICE: usize = 10;

/// The targets.
pub const TARGET_APPLY_10K: Duration = Duration::from_secs(1);
pub const TARGET_CHANGE_50K: Duration = Duration::from_millis(10);
pub const TARGET_RSS_50K_MIB: f64 = 100.0;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(600);
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The in-process control plane's plumbing.

/// Serves `routes` (one ADS service) on an ephemeral loopback port.
/// TCP_NODELAY, as real control planes set it: without it a small response
/// can wait for a delayed ACK (40 ms on loopback).
pub async fn serve_on_loopback(
    routes: tonic::service::Routes,
    what: &'static str,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await;
        if let Err(e) = served {
            eprintln!("{what}: {e}");
        }
    });
    Ok(addr)
}

/// One request from the daemon and when it was decoded.
pub struct Received<R> {
    pub request: R,
    pub at: Instant,
}

/// Passes a stream's requests on, timestamped as soon as each is decoded:
/// an ACK seen here is the end of a push → ACK measurement.
pub fn forward_requests<R: Send + 'static>(
    mut incoming: tonic::Streaming<R>,
    to: tokio::sync::mpsc::UnboundedSender<Received<R>>,
) {
    tokio::spawn(async move {
        while let Ok(Some(request)) = incoming.message().await {
            let at = Instant::now();
            if to.send(Received { request, at }).is_err() {
                break;
            }
        }
    });
}

/// What the daemon sent the server, in order.
pub struct Requests<R>(pub tokio::sync::mpsc::UnboundedReceiver<R>);

impl<R> Requests<R> {
    /// The next request from the daemon, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<R> {
        match tokio::time::timeout(timeout, self.0.recv()).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => bail!("the request channel closed"),
            Err(_) => bail!("no request from the daemon within {timeout:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The daemon under test, and everything it leaves behind.

pub struct Daemon {
    bin: PathBuf,
    child: Option<Child>,
    bpffs: PathBuf,
    cgroup: PathBuf,
    log: PathBuf,
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl Daemon {
    /// `kmesh-daemon --mode MODE` fed by the ADS server at `xds`, with its
    /// own bpffs dir and (empty) cgroup; `extra` flags go last.
    pub fn start(
        bin: &Path,
        mode: &str,
        xds: SocketAddr,
        tag: &str,
        extra: &[String],
    ) -> Result<Daemon> {
        let unique = format!("kmbench-{mode}-{}-{tag}", std::process::id());
        let bpffs = PathBuf::from("/sys/fs/bpf").join(&unique);
        let cgroup_root = if Path::new("/sys/fs/cgroup/unified").is_dir() {
            "/sys/fs/cgroup/unified"
        } else {
            "/sys/fs/cgroup"
        };
        let cgroup = PathBuf::from(cgroup_root).join(&unique);
        let log = std::env::temp_dir().join(format!("{unique}.log"));
        // From here on Drop cleans up whatever exists.
        let mut daemon = Daemon {
            bin: bin.to_path_buf(),
            child: None,
            bpffs,
            cgroup,
            log,
        };
        fs::create_dir(&daemon.bpffs).with_context(|| format!("mkdir {:?}", daemon.bpffs))?;
        fs::create_dir(&daemon.cgroup).with_context(|| format!("mkdir {:?}", daemon.cgroup))?;
        let log = fs::File::create(&daemon.log)?;
        let mut cmd = Command::new(bin);
        cmd.args(["--mode", mode, "--log-level", "warn"])
            .arg("--xds-address")
            .arg(format!("http://{xds}"))
            .arg("--bpf-fs-path")
            .arg(&daemon.bpffs)
            .arg("--cgroup2-path")
            .arg(&daemon.cgroup)
            .arg("--admin-address")
            .arg(format!("127.0.0.1:{}", free_port()?))
            .arg("--metrics-address")
            .arg(format!("127.0.0.1:{}", free_port()?))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // If this benchmark dies without cleaning up, the daemon gets
        // SIGTERM instead of living on.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        daemon.child = Some(cmd.spawn().with_context(|| format!("starting {bin:?}"))?);
        Ok(daemon)
    }

    /// The bpffs dir the daemon pins under.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    fn pid(&self) -> Result<u32> {
        Ok(self.child.as_ref().context("daemon not running")?.id())
    }

    /// The daemon's log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{name} not in /proc/PID/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// `(map name, bytes_memlock, max_entries)` of the pinned maps in `dir`
    /// whose names start with `prefix`.
    pub fn map_memory(&self, dir: &Path, prefix: &str) -> Result<Vec<(String, u64, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("reading {dir:?}"))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.starts_with(prefix) {
                continue;
            }
            let shown = Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(&path)
                .output()
                .context("running bpftool (Debian package bpftool)")?;
            if !shown.status.success() {
                bail!(
                    "bpftool map show pinned {path:?}: {}",
                    String::from_utf8_lossy(&shown.stderr)
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&shown.stdout)?;
            let bytes = v["bytes_memlock"].as_u64().context("no bytes_memlock")?;
            let max = v["max_entries"].as_u64().unwrap_or(0);
            out.push((name, bytes, max));
        }
        out.sort();
        Ok(out)
    }

    /// SIGTERM, a grace period, then SIGKILL; then `kmesh-daemon uninstall`
    /// on our bpffs dir, and the dirs removed.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if self.bpffs.exists() {
            let out = Command::new(&self.bin)
                .arg("uninstall")
                .arg("--bpf-fs-path")
                .arg(&self.bpffs)
                .arg("--cgroup2-path")
                .arg(&self.cgroup)
                .output();
            if let Ok(out) = out {
                if !out.status.success() {
                    eprintln!(
                        "kmesh-daemon uninstall: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            let _ = fs::remove_dir_all(&self.bpffs);
        }
        if self.cgroup.exists() {
            // The cgroup is empty (nothing was moved into it); rmdir can
            // still fail briefly while the kernel releases the detached
            // programs.
            for _ in 0..50 {
                if fs::remove_dir(&self.cgroup).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = fs::remove_file(&self.log);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Statistics and output helpers.

#[derive(Debug, serde::Serialize)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    /// In the order measured (to tell a one-off pause from a slow tail).
    pub samples: Vec<f64>,
}

pub fn stats(measured: Vec<Duration>) -> Stats {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let in_order = measured.iter().copied().map(ms).collect();
    let mut samples = measured;
    samples.sort();
    if samples.is_empty() {
        return Stats {
            n: 0,
            median: f64::NAN,
            p99: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            samples: in_order,
        };
    }
    // Nearest rank: with fewer than 100 samples p99 is the largest.
    let rank = |p: f64| {
        let r = (p * samples.len() as f64).ceil() as usize;
        samples[r.clamp(1, samples.len()) - 1]
    };
    Stats {
        n: samples.len(),
        median: ms(rank(0.5)),
        p99: ms(rank(0.99)),
        min: ms(samples[0]),
        max: ms(samples[samples.len() - 1]),
        samples: in_order,
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}

/// Per map, for each size: where the kernel memory goes.
pub fn map_breakdown<'a>(sizes: impl Iterator<Item = (usize, &'a [(String, u64, u64)])>) -> String {
    let mut t = String::new();
    for (services, maps) in sizes {
        let maps: Vec<String> = maps
            .iter()
            .map(|(name, bytes, max)| {
                format!(
                    "{name} {:.1} MiB (max_entries {max})",
                    *bytes as f64 / (1 << 20) as f64
                )
            })
            .collect();
        t.push_str(&format!("- {services} services: {}\n", maps.join(", ")));
    }
    t
}

// ---------------------------------------------------------------------------
// The command line and the run.

#[derive(Clone)]
pub struct Args {
    pub sizes: Vec<usize>,
    pub repeat: usize,
    pub daemon: PathBuf,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
}

pub fn parse_args() -> Result<Args> {
    let mut args = Args {
        sizes: vec![1_000, 10_000, 50_000],
        repeat: 50,
        daemon: PathBuf::from(env!("CARGO_BIN_EXE_kmesh-daemon")),
        json: None,
        markdown: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            // `cargo bench` passes --bench to harness = false benches.
            "--bench" => {}
            "--sizes" => {
                args.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse())
                    .collect::<Result<_, _>>()
                    .context("--sizes: comma-separated numbers")?
            }
            "--repeat" => args.repeat = value()?.parse().context("--repeat")?,
            "--daemon" => args.daemon = value()?.into(),
            "--json" => args.json = Some(value()?.into()),
            "--markdown" => args.markdown = Some(value()?.into()),
            other => bail!(
                "unknown argument {other:?} (--sizes, --repeat, --daemon, --json, --markdown)"
            ),
        }
    }
    if args.repeat == 0 || args.sizes.contains(&0) {
        bail!("--repeat and every size must be at least 1");
    }
    Ok(args)
}

/// The common `main`: leaves at once without `--bench` (`cargo test
/// --all-targets` runs bench targets as smoke tests; this is a minutes-long
/// measurement, not a test), checks root and the daemon binary, then runs
/// `measure` on a two-thread runtime. Ctrl-C or SIGTERM drops the `measure`
/// future, and with it the daemon guard, which cleans up.
pub fn main_with<T, F, Fut>(name: &str, measure: F) -> Result<Option<(Args, T)>>
where
    F: FnOnce(Args) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: a benchmark; run it with `cargo bench --bench {name}` (or bench/run.sh)");
        return Ok(None);
    }
    let args = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the daemon loads eBPF programs (sudo -E cargo bench --bench {name})");
    }
    if !args.daemon.is_file() {
        bail!(
            "{:?} not found: cargo build --release --bin kmesh-daemon",
            args.daemon
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = measure(args.clone()) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow!("terminated")),
        }
    })?;
    Ok(Some((args, result)))
}

/// Writes the `--markdown` section and the `--json` results when asked.
pub fn write_outputs(args: &Args, markdown: &str, results: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = &args.markdown {
        fs::write(path, markdown).with_context(|| format!("writing {path:?}"))?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "repeat": args.repeat,
            "daemon": args.daemon,
            "results": results,
        });
        fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {path:?}"))?;
    }
    Ok(())
}
