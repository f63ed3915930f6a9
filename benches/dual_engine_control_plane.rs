//! Dual-engine control plane, measured for real (issue #9): the release
//! `kmesh-daemon --mode dual-engine` as a child process, fed over delta ADS
//! by an in-process server on 127.0.0.1.
//!
//! For each size N (services, each backed by 10 workloads of their own), on
//! a fresh daemon:
//! - the whole world in one delta response; push → ACK time. The daemon
//!   ACKs only after the runner wrote the plan to the kernel, so this is
//!   decode + compile + map writes (plus the gRPC transfer of the message);
//! - the daemon's VmRSS / VmHWM from /proc after that ACK, and the kernel
//!   memory of its `de_*` maps (`bpftool map show pinned`, `memlock`);
//! - a one-endpoint change (one workload added to one service), repeated,
//!   push → ACK median and p99; then the same for removing one workload.
//!
//! ```text
//! sudo cargo bench --bench dual_engine_control_plane -- [--sizes 1000,10000,50000]
//!     [--repeat 50] [--daemon PATH] [--json PATH] [--markdown PATH]
//! ```
//!
//! Needs root (the daemon loads eBPF). It touches nothing outside what it
//! creates: a bpffs dir and an empty cgroup (both unique to this run,
//! removed at the end, also on Ctrl-C or a panic) and loopback ports. The
//! service and workload addresses are fake and never dialled.
//!
//! A bench rather than a `src/bin` tool: it is not shipped, cargo builds it
//! (and the daemon it drives, `CARGO_BIN_EXE_kmesh-daemon`) with the
//! release profile, and `clippy --all-targets` checks it.

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use kmesh::workload::proto::workload::{
    address, Address, NetworkAddress, Port, PortList, Service, Workload,
};
use kmesh::workload::proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use kmesh::xds::transport::MAX_MESSAGE_BYTES;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

const ENDPOINTS_PER_SERVICE: usize = 10;
const NAMESPACE: &str = "bench";

/// The issue's targets.
const TARGET_APPLY_10K: Duration = Duration::from_secs(1);
const TARGET_CHANGE_50K: Duration = Duration::from_millis(10);
const TARGET_RSS_50K_MIB: f64 = 100.0;

// ---------------------------------------------------------------------------
// The delta ADS server: one stream at a time (one daemon), every request the
// daemon sends handed to the benchmark with the time it arrived.

type ResponseTx = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

struct Received {
    request: DeltaDiscoveryRequest,
    at: Instant,
}

#[derive(Clone)]
struct Ads {
    /// The open stream's response sender, and the channel its requests go
    /// to; replaced when a daemon connects.
    stream: Arc<Mutex<Option<ResponseTx>>>,
    requests: mpsc::UnboundedSender<Received>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("this server speaks delta ADS only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        *self
            .stream
            .lock()
            .map_err(|_| Status::internal("poisoned"))? = Some(tx);
        let requests = self.requests.clone();
        tokio::spawn(async move {
            // The time is taken as soon as the request is decoded: an ACK
            // seen here is the end of a push → ACK measurement.
            while let Ok(Some(request)) = incoming.message().await {
                let at = Instant::now();
                if requests.send(Received { request, at }).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

struct Server {
    addr: SocketAddr,
    ads: Ads,
    requests: mpsc::UnboundedReceiver<Received>,
    nonces: u64,
}

impl Server {
    async fn start() -> Result<Server> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let ads = Ads {
            stream: Arc::new(Mutex::new(None)),
            requests: requests_tx,
        };
        let service = AggregatedDiscoveryServiceServer::new(ads.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
            if let Err(e) = served {
                eprintln!("delta ADS server: {e}");
            }
        });
        Ok(Server {
            addr,
            ads,
            requests,
            nonces: 0,
        })
    }

    /// The next request from the daemon, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Result<Received> {
        match tokio::time::timeout(timeout, self.requests.recv()).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => bail!("the request channel closed"),
            Err(_) => bail!("no request from the daemon within {timeout:?}"),
        }
    }

    /// Waits for the first request of each type the daemon subscribes to
    /// (a new stream) and answers each with an empty change set, as a
    /// control plane with nothing configured yet; returns when both are
    /// ACKed.
    async fn accept_daemon(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: HashMap<String, String> = HashMap::new();
        let mut initial = 0;
        while initial < 2 || !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self.next(left).await?.request;
            if r.response_nonce.is_empty() {
                if r.type_url != ADDRESS_TYPE_URL && r.type_url != AUTHORIZATION_TYPE_URL {
                    bail!("unexpected subscription to {}", r.type_url);
                }
                initial += 1;
                let nonce = self.send(&r.type_url, Vec::new(), Vec::new())?;
                pending.insert(nonce, r.type_url);
            } else {
                check_ack(&r)?;
                pending.remove(&r.response_nonce);
            }
        }
        Ok(())
    }

    fn send(
        &mut self,
        type_url: &str,
        added: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<String> {
        self.nonces += 1;
        let nonce = format!("b{}", self.nonces);
        let response = DeltaDiscoveryResponse {
            system_version_info: nonce.clone(),
            resources: added,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            ..Default::default()
        };
        let stream = self
            .ads
            .stream
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .clone()
            .context("no daemon stream open")?;
        stream
            .send(Ok(response))
            .map_err(|_| anyhow!("the daemon's stream closed"))?;
        Ok(nonce)
    }

    /// Sends a change of addresses and returns the time from the send to
    /// the ACK (a NACK is an error).
    async fn push_and_wait(
        &mut self,
        added: Vec<Resource>,
        removed: Vec<String>,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        let nonce = self.send(ADDRESS_TYPE_URL, added, removed)?;
        loop {
            let left = (start + timeout).saturating_duration_since(Instant::now());
            let r = self.next(left).await?;
            if r.request.response_nonce == nonce {
                check_ack(&r.request)?;
                return Ok(r.at - start);
            }
        }
    }
}

fn check_ack(r: &DeltaDiscoveryRequest) -> Result<()> {
    match &r.error_detail {
        None => Ok(()),
        Some(status) => bail!(
            "the daemon NACKed {} ({}): {}",
            r.response_nonce,
            r.type_url,
            status.message
        ),
    }
}

// ---------------------------------------------------------------------------
// The world: N services, each with one VIP and 10 workloads of its own.

fn service_key(i: usize) -> String {
    format!("{NAMESPACE}/svc-{i}.{NAMESPACE}.svc.cluster.local")
}

/// 10.96.0.0/12 style VIPs: distinct for i < 2^20.
fn vip(i: usize) -> [u8; 4] {
    let i = i as u32;
    [10, 96 + ((i >> 16) & 0x0f) as u8, (i >> 8) as u8, i as u8]
}

/// Workload addresses from 10.128.0.0/9: distinct for j < 2^23.
fn workload_ip(j: usize) -> [u8; 4] {
    let j = j as u32;
    [10, 128 + ((j >> 16) & 0x7f) as u8, (j >> 8) as u8, j as u8]
}

fn address_resource(name: String, address: address::Type) -> Resource {
    let payload = Address {
        r#type: Some(address),
    };
    Resource {
        name,
        version: "1".into(),
        resource: Some(Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: payload.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn service(i: usize) -> Resource {
    let hostname = format!("svc-{i}.{NAMESPACE}.svc.cluster.local");
    address_resource(
        service_key(i),
        address::Type::Service(Service {
            name: format!("svc-{i}"),
            namespace: NAMESPACE.into(),
            hostname,
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vip(i).to_vec(),
            }],
            ports: vec![Port {
                service_port: 80,
                target_port: 8080,
            }],
            ..Default::default()
        }),
    )
}

fn workload_uid(j: usize) -> String {
    format!("Kubernetes//Pod/{NAMESPACE}/wl-{j}")
}

/// Workload `j` backing service `i`, with the fields Istiod fills for a pod
/// (so the message sizes are realistic).
fn workload(j: usize, i: usize) -> Resource {
    address_resource(
        workload_uid(j),
        address::Type::Workload(Workload {
            uid: workload_uid(j),
            name: format!("wl-{j}"),
            namespace: NAMESPACE.into(),
            addresses: vec![workload_ip(j).to_vec()],
            trust_domain: "cluster.local".into(),
            service_account: format!("svc-{i}"),
            node: format!("node-{}", j % 100),
            canonical_name: format!("svc-{i}"),
            canonical_revision: "latest".into(),
            workload_name: format!("svc-{i}"),
            cluster_id: "Kubernetes".into(),
            services: HashMap::from([(
                service_key(i),
                PortList {
                    ports: vec![Port {
                        service_port: 80,
                        target_port: 8080,
                    }],
                },
            )]),
            ..Default::default()
        }),
    )
}

fn world(n: usize) -> Vec<Resource> {
    let mut all = Vec::with_capacity(n * (ENDPOINTS_PER_SERVICE + 1));
    for i in 0..n {
        all.push(service(i));
        for k in 0..ENDPOINTS_PER_SERVICE {
            all.push(workload(i * ENDPOINTS_PER_SERVICE + k, i));
        }
    }
    all
}

// ---------------------------------------------------------------------------
// The daemon under test, and everything it leaves behind.

struct Daemon {
    bin: PathBuf,
    child: Option<Child>,
    bpffs: PathBuf,
    cgroup: PathBuf,
    log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl Daemon {
    fn start(bin: &Path, xds: SocketAddr, tag: &str) -> Result<Daemon> {
        let unique = format!("kmbench-de-{}-{tag}", std::process::id());
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
        cmd.args(["--mode", "dual-engine", "--log-level", "warn"])
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

    fn pid(&self) -> Result<u32> {
        Ok(self.child.as_ref().context("daemon not running")?.id())
    }

    /// The daemon's log (for error messages).
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> Result<(u64, u64)> {
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

    /// `map name -> (bytes_memlock, max_entries)` of the daemon's pinned
    /// `de_*` maps.
    fn map_memory(&self) -> Result<Vec<(String, u64, u64)>> {
        let dir = self.bpffs.join("kmesh/dual_engine/maps");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir:?}"))? {
            let path = entry?.path();
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
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.starts_with("de_") {
                continue;
            }
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
// The measurements.

#[derive(Debug, serde::Serialize)]
struct SizeResult {
    services: usize,
    endpoints_per_service: usize,
    message_mib: f64,
    apply_ms: f64,
    rss_kib: u64,
    hwm_kib: u64,
    idle_rss_kib: u64,
    map_bytes: u64,
    maps: Vec<(String, u64, u64)>,
    change_ms: Stats,
    removal_ms: Stats,
}

#[derive(Debug, serde::Serialize)]
struct Stats {
    n: usize,
    median: f64,
    p99: f64,
    min: f64,
    max: f64,
    /// In the order measured (to tell a one-off pause from a slow tail).
    samples: Vec<f64>,
}

fn stats(measured: Vec<Duration>) -> Stats {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let in_order = measured.iter().copied().map(ms).collect();
    let mut samples = measured;
    samples.sort();
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

const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const APPLY_TIMEOUT: Duration = Duration::from_secs(600);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

async fn measure(bin: &Path, n: usize, repeat: usize) -> Result<SizeResult> {
    let mut server = Server::start().await?;
    let daemon = Daemon::start(bin, server.addr, &n.to_string())?;
    let result = measure_on(&mut server, &daemon, n, repeat).await;
    result.map_err(|e| anyhow!("{e:#}\n--- daemon log (tail) ---\n{}", daemon.log_tail()))
    // `daemon` drops here: stopped, uninstalled, dirs removed.
}

async fn measure_on(
    server: &mut Server,
    daemon: &Daemon,
    n: usize,
    repeat: usize,
) -> Result<SizeResult> {
    server.accept_daemon(CONNECT_TIMEOUT).await?;
    let (idle_rss_kib, _) = daemon.memory_kib()?;

    let resources = world(n);
    let message_bytes: usize = resources.iter().map(Message::encoded_len).sum();
    let message_mib = message_bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "  {n} services x {ENDPOINTS_PER_SERVICE}: pushing {} resources ({message_mib:.1} MiB) ...",
        resources.len()
    );
    let apply = server
        .push_and_wait(resources, Vec::new(), APPLY_TIMEOUT)
        .await?;
    let (rss_kib, hwm_kib) = daemon.memory_kib()?;
    let maps = daemon.map_memory()?;
    let map_bytes = maps.iter().map(|(_, b, _)| b).sum();
    eprintln!("  applied in {:.0} ms", apply.as_secs_f64() * 1e3);

    // One workload more for one service, `repeat` times (a different
    // service each time, spread over the whole range), then the same
    // workloads removed one by one.
    let first_extra = n * ENDPOINTS_PER_SERVICE;
    let mut changes = Vec::with_capacity(repeat);
    for r in 0..repeat {
        let svc = (r * 7919 + n / 2) % n;
        let added = vec![workload(first_extra + r, svc)];
        changes.push(
            server
                .push_and_wait(added, Vec::new(), CHANGE_TIMEOUT)
                .await?,
        );
    }
    let mut removals = Vec::with_capacity(repeat);
    for r in 0..repeat {
        let removed = vec![workload_uid(first_extra + r)];
        removals.push(
            server
                .push_and_wait(Vec::new(), removed, CHANGE_TIMEOUT)
                .await?,
        );
    }
    Ok(SizeResult {
        services: n,
        endpoints_per_service: ENDPOINTS_PER_SERVICE,
        message_mib,
        apply_ms: apply.as_secs_f64() * 1e3,
        rss_kib,
        hwm_kib,
        idle_rss_kib,
        map_bytes,
        maps,
        change_ms: stats(changes),
        removal_ms: stats(removals),
    })
}

// ---------------------------------------------------------------------------
// Output.

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn table(results: &[SizeResult]) -> String {
    let mut t = String::new();
    t.push_str("| services × endpoints | message MiB | push → ACK (whole world) ms | one-endpoint add: median / p99 ms | one-endpoint removal: median / p99 ms | daemon VmRSS / VmHWM MiB | `de_*` map memlock MiB |\n");
    t.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        t.push_str(&format!(
            "| {} × {} | {:.1} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} / {:.1} | {:.1} |\n",
            r.services,
            r.endpoints_per_service,
            r.message_mib,
            r.apply_ms,
            r.change_ms.median,
            r.change_ms.p99,
            r.removal_ms.median,
            r.removal_ms.p99,
            mib(r.rss_kib),
            mib(r.hwm_kib),
            r.map_bytes as f64 / (1 << 20) as f64,
        ));
    }
    t
}

/// Per map, for each size: where the kernel memory goes.
fn map_breakdown(results: &[SizeResult]) -> String {
    let mut t = String::new();
    for r in results {
        let maps: Vec<String> = r
            .maps
            .iter()
            .map(|(name, bytes, max)| {
                format!(
                    "{name} {:.1} MiB (max_entries {max})",
                    *bytes as f64 / (1 << 20) as f64
                )
            })
            .collect();
        t.push_str(&format!("- {} services: {}\n", r.services, maps.join(", ")));
    }
    t
}

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}

fn targets(results: &[SizeResult]) -> String {
    let at = |n: usize| results.iter().find(|r| r.services == n);
    let mut t = String::new();
    match at(10_000) {
        Some(r) => t.push_str(&format!(
            "- 10k services × 10 endpoints applied in under {} s: {:.0} ms — {}\n",
            TARGET_APPLY_10K.as_secs(),
            r.apply_ms,
            verdict(r.apply_ms < TARGET_APPLY_10K.as_secs_f64() * 1e3)
        )),
        None => t.push_str("- 10k applied in under 1 s: not measured in this run\n"),
    }
    match at(50_000) {
        Some(r) => {
            t.push_str(&format!(
                "- one-endpoint change under {} ms at 50k services: add median {:.2} ms (p99 {:.2}), removal median {:.2} ms (p99 {:.2}) — {}\n",
                TARGET_CHANGE_50K.as_millis(),
                r.change_ms.median,
                r.change_ms.p99,
                r.removal_ms.median,
                r.removal_ms.p99,
                verdict(
                    r.change_ms.p99 < TARGET_CHANGE_50K.as_secs_f64() * 1e3
                        && r.removal_ms.p99 < TARGET_CHANGE_50K.as_secs_f64() * 1e3
                )
            ));
            t.push_str(&format!(
                "- daemon RSS under {TARGET_RSS_50K_MIB:.0} MB at 50k services: VmRSS {:.1} MiB after the apply (peak VmHWM {:.1} MiB) — {}\n",
                mib(r.rss_kib),
                mib(r.hwm_kib),
                verdict(mib(r.rss_kib) < TARGET_RSS_50K_MIB)
            ));
        }
        None => t.push_str(
            "- one-endpoint change under 10 ms and RSS under 100 MB at 50k: not measured in this run\n",
        ),
    }
    t
}

/// The section of docs/benchmarks.md (bench/bench.py puts it between its
/// markers): how it was measured, the table, the targets.
fn markdown(results: &[SizeResult], repeat: usize) -> String {
    format!(
        "Measured by `benches/dual_engine_control_plane.rs` (`cargo bench --bench \
dual_engine_control_plane`): the release `kmesh-daemon --mode dual-engine` as a \
child process, fed by an in-process delta ADS server on 127.0.0.1; a fresh daemon \
(and fresh maps) per size. Each service has one VIP and 10 workloads of its own \
(one address each, the fields Istiod fills for a pod).\n\n\
- **push → ACK**: from handing the response to the server's gRPC stream to \
receiving the daemon's ACK of its nonce. The daemon ACKs only after the \
runner wrote the plan to the kernel maps, so this is transfer + decode + \
compile + map writes. The whole world goes in one delta response.\n\
- **one-endpoint add / removal**: {repeat} pushes of one new workload for one \
service (a different service each time), then {repeat} pushes removing them \
one by one; median and p99 (nearest rank: with fewer than 100 samples, the \
largest).\n\
- **VmRSS / VmHWM**: `/proc/PID/status` of the daemon right after the \
whole-world ACK (VmHWM is the peak so far).\n\
- **map memlock**: the sum of `bytes_memlock` (`bpftool map show pinned`) over \
the daemon's pinned `de_*` maps after the whole-world ACK.\n\n{}\n\
Kernel map memory by map:\n\n{}\nTargets (issue #9):\n\n{}",
        table(results),
        map_breakdown(results),
        targets(results)
    )
}

struct Args {
    sizes: Vec<usize>,
    repeat: usize,
    daemon: PathBuf,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
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

async fn run(args: &Args) -> Result<Vec<SizeResult>> {
    let mut results = Vec::new();
    for &n in &args.sizes {
        eprintln!("dual-engine control plane: {n} services (fresh daemon)");
        results.push(measure(&args.daemon, n, args.repeat).await?);
    }
    Ok(results)
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench
    // targets as smoke tests with libtest flags instead. This is a
    // minutes-long measurement, not a test: say so and leave.
    if !std::env::args().any(|a| a == "--bench") {
        println!("dual_engine_control_plane: a benchmark; run it with `cargo bench --bench dual_engine_control_plane` (or bench/run.sh)");
        return Ok(());
    }
    let args = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the daemon loads eBPF programs (sudo -E cargo bench --bench dual_engine_control_plane)");
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
    let results = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Dropping the `run` future on a signal drops the daemon guard,
        // which stops the daemon and removes what it made.
        tokio::select! {
            r = run(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow!("terminated")),
        }
    })?;
    println!(
        "\nDual-engine control plane (delta ADS, release daemon, a fresh daemon per size; {} one-endpoint changes each)\n",
        args.repeat
    );
    print!("{}", table(&results));
    println!("\nTargets (issue #9):");
    print!("{}", targets(&results));
    if let Some(path) = &args.markdown {
        fs::write(path, markdown(&results, args.repeat))
            .with_context(|| format!("writing {path:?}"))?;
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
