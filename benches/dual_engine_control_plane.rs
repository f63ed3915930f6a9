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

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
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
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use common::{
    forward_requests, main_with, map_breakdown, mib, serve_on_loopback, stats, verdict,
    write_outputs, Args, Daemon, Requests, Stats, APPLY_TIMEOUT, CHANGE_TIMEOUT, CONNECT_TIMEOUT,
    ENDPOINTS_PER_SERVICE, TARGET_APPLY_10K, TARGET_CHANGE_50K, TARGET_RSS_50K_MIB,
};

const NAMESPACE: &str = "bench";

// ---------------------------------------------------------------------------
// The delta ADS server: one stream at a time (one daemon), every request the
// daemon sends handed to the benchmark with the time it arrived.

type ResponseTx = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

type Received = common::Received<DeltaDiscoveryRequest>;

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
        let incoming = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        *self
            .stream
            .lock()
            .map_err(|_| Status::internal("poisoned"))? = Some(tx);
        forward_requests(incoming, self.requests.clone());
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

struct Server {
    addr: SocketAddr,
    ads: Ads,
    requests: Requests<Received>,
    nonces: u64,
}

impl Server {
    async fn start() -> Result<Server> {
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let ads = Ads {
            stream: Arc::new(Mutex::new(None)),
            requests: requests_tx,
        };
        let service = AggregatedDiscoveryServiceServer::new(ads.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let addr = serve_on_loopback(Routes::new(service), "delta ADS server").await?;
        Ok(Server {
            addr,
            ads,
            requests: Requests(requests),
            nonces: 0,
        })
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
            let r = self.requests.next(left).await?.request;
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
            let r = self.requests.next(left).await?;
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

async fn measure(bin: &Path, n: usize, repeat: usize) -> Result<SizeResult> {
    let mut server = Server::start().await?;
    let daemon = Daemon::start(bin, "dual-engine", server.addr, &n.to_string(), &[])?;
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
    let maps = daemon.map_memory(&daemon.bpffs().join("kmesh/dual_engine/maps"), "de_")?;
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
        map_breakdown(results.iter().map(|r| (r.services, r.maps.as_slice()))),
        targets(results)
    )
}

async fn run(args: Args) -> Result<Vec<SizeResult>> {
    let mut results = Vec::new();
    for &n in &args.sizes {
        eprintln!("dual-engine control plane: {n} services (fresh daemon)");
        results.push(measure(&args.daemon, n, args.repeat).await?);
    }
    Ok(results)
}

fn main() -> Result<()> {
    let Some((args, results)) = main_with("dual_engine_control_plane", run)? else {
        return Ok(());
    };
    println!(
        "\nDual-engine control plane (delta ADS, release daemon, a fresh daemon per size; {} one-endpoint changes each)\n",
        args.repeat
    );
    print!("{}", table(&results));
    println!("\nTargets (issue #9):");
    print!("{}", targets(&results));
    write_outputs(&args, &markdown(&results, args.repeat), &results)
}
