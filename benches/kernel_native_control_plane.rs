//! Kernel-native control plane, measured for real (issue #9): the release
//! `kmesh-daemon --mode kernel-native` as a child process, fed over SotW
//! ADS by an in-process server on 127.0.0.1.
//!
//! For each size N (services: a listener on its own VIP, an EDS cluster and
//! its ClusterLoadAssignment of 10 endpoints), on a fresh daemon:
//! - the whole world: CDS, then EDS and LDS as the daemon subscribes to
//!   them (as Envoy does); from sending CDS to the last ACK. The daemon ACKs
//!   a response only after the runner wrote it to the kernel, so this is
//!   transfer + decode + compile + map writes. The maps are then read back
//!   (N listeners and N clusters in the pinned outer maps);
//! - the daemon's VmRSS / VmHWM after that, and the kernel memory of its
//!   `kn_*` maps (`bpftool map show pinned`, `memlock`);
//! - a one-endpoint change: one ClusterLoadAssignment re-sent with one
//!   endpoint more, push → ACK, repeated for different services; then each
//!   put back (one endpoint fewer). EDS is not a wildcard type, so a SotW
//!   response may carry just the assignment that changed. After each ACK
//!   the cluster's inner map is read back to check the change is in the
//!   kernel. Then a few changes where the response re-sends all N
//!   assignments (a control plane that always sends everything): the
//!   daemon compares them by bytes and compiles only the changed one.
//!
//! ```text
//! sudo cargo bench --bench kernel_native_control_plane -- [--sizes 1000,10000,50000]
//!     [--repeat 50] [--daemon PATH] [--json PATH] [--markdown PATH]
//! ```
//!
//! Needs root (the daemon loads eBPF). It touches nothing outside what it
//! creates: a bpffs dir and an empty cgroup (both unique to this run,
//! removed at the end, also on Ctrl-C or a panic) and loopback ports. The
//! VIPs and endpoint addresses are fake and never dialled.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    address, Address, AggregatedConfigSource, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use kmesh::bpf::kernel_native::{open_pinned_maps, pin_dir, KernelNativeMaps};
use kmesh::kernel_native::records::name_key;
use kmesh::xds::transport::MAX_MESSAGE_BYTES;
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use prost::{Message, Name};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use common::{
    forward_requests, main_with, map_breakdown, mib, serve_on_loopback, stats, verdict,
    write_outputs, Args, Daemon, Requests, Stats, APPLY_TIMEOUT, CHANGE_TIMEOUT, CONNECT_TIMEOUT,
    ENDPOINTS_PER_SERVICE, TARGET_APPLY_10K, TARGET_CHANGE_50K, TARGET_RSS_50K_MIB,
};

fn cluster_type() -> String {
    Cluster::type_url()
}
fn endpoint_type() -> String {
    ClusterLoadAssignment::type_url()
}
fn listener_type() -> String {
    Listener::type_url()
}

// ---------------------------------------------------------------------------
// The SotW ADS server: one stream at a time (one daemon), every request the
// daemon sends handed to the benchmark with the time it arrived.

type ResponseTx = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;

type Received = common::Received<DiscoveryRequest>;

#[derive(Clone)]
struct Ads {
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
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let incoming = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        *self
            .stream
            .lock()
            .map_err(|_| Status::internal("poisoned"))? = Some(tx);
        forward_requests(incoming, self.requests.clone());
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("this server speaks SotW ADS only"))
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
        let addr = serve_on_loopback(Routes::new(service), "SotW ADS server").await?;
        Ok(Server {
            addr,
            ads,
            requests: Requests(requests),
            nonces: 0,
        })
    }

    /// Waits for the daemon's first request: its wildcard CDS subscription.
    async fn accept_daemon(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self.requests.next(left).await?.request;
            if r.type_url == cluster_type() && r.response_nonce.is_empty() {
                return Ok(());
            }
        }
    }

    fn send(&mut self, type_url: &str, resources: Vec<Any>) -> Result<String> {
        self.nonces += 1;
        let nonce = format!("b{}", self.nonces);
        let response = DiscoveryResponse {
            version_info: nonce.clone(),
            resources,
            type_url: type_url.to_string(),
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

    /// The whole world: CDS now, EDS and LDS when the daemon subscribes to
    /// them; returns the time from sending CDS to the last of the ACKs.
    async fn push_world(&mut self, world: &World, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut pending = BTreeSet::from([self.send(&cluster_type(), world.clusters.clone())?]);
        let (mut eds_sent, mut lds_sent) = (false, false);
        let mut last = start;
        while !(pending.is_empty() && eds_sent && lds_sent) {
            let left = (start + timeout).saturating_duration_since(Instant::now());
            let Received { request: r, at } = self.requests.next(left).await?;
            if pending.remove(&r.response_nonce) {
                check_ack(&r)?;
                last = at;
            }
            if r.type_url == endpoint_type() && !eds_sent {
                if r.resource_names.len() != world.load_assignments.len() {
                    bail!(
                        "the daemon asked for {} assignments, not {}",
                        r.resource_names.len(),
                        world.load_assignments.len()
                    );
                }
                pending.insert(self.send(&endpoint_type(), world.load_assignments.clone())?);
                eds_sent = true;
            }
            if r.type_url == listener_type() && !lds_sent {
                pending.insert(self.send(&listener_type(), world.listeners.clone())?);
                lds_sent = true;
            }
        }
        Ok(last - start)
    }

    /// Sends one EDS response and returns the time from the send to its ACK.
    async fn push_and_wait(&mut self, resources: Vec<Any>, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let nonce = self.send(&endpoint_type(), resources)?;
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

fn check_ack(r: &DiscoveryRequest) -> Result<()> {
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
// The world: N services, each a listener on its own VIP, an EDS cluster and
// its assignment of 10 endpoints.

fn service_name(i: usize) -> String {
    format!("outbound|80||svc-{i}.bench.svc.cluster.local")
}

/// 10.96.0.0/12 style VIPs: distinct for i < 2^20.
fn vip(i: usize) -> Ipv4Addr {
    let i = i as u32;
    Ipv4Addr::new(10, 96 + ((i >> 16) & 0x0f) as u8, (i >> 8) as u8, i as u8)
}

/// Endpoint addresses from 10.128.0.0/9: distinct for j < 2^23.
fn endpoint_ip(j: usize) -> Ipv4Addr {
    let j = j as u32;
    Ipv4Addr::new(10, 128 + ((j >> 16) & 0x7f) as u8, (j >> 8) as u8, j as u8)
}

fn socket_address(ip: Ipv4Addr, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn any<T: Message + Name>(m: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

fn listener(i: usize) -> Any {
    let proxy = TcpProxy {
        stat_prefix: service_name(i),
        cluster_specifier: Some(ClusterSpecifier::Cluster(service_name(i))),
        ..Default::default()
    };
    any(&Listener {
        name: format!("{}_80", vip(i)),
        address: Some(socket_address(vip(i), 80)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn cluster(i: usize) -> Any {
    any(&Cluster {
        name: service_name(i),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        ..Default::default()
    })
}

/// Service `i`'s assignment: its 10 endpoints, plus `extra` more (from a
/// range no service uses).
fn load_assignment(i: usize, n: usize, extra: usize) -> Any {
    let own = (0..ENDPOINTS_PER_SERVICE).map(|k| endpoint_ip(i * ENDPOINTS_PER_SERVICE + k));
    let more = (0..extra).map(|k| endpoint_ip(n * ENDPOINTS_PER_SERVICE + i + k * n));
    let lb_endpoints = own
        .chain(more)
        .map(|ip| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(ip, 8080)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    any(&ClusterLoadAssignment {
        cluster_name: service_name(i),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    })
}

struct World {
    listeners: Vec<Any>,
    clusters: Vec<Any>,
    load_assignments: Vec<Any>,
}

fn world(n: usize) -> World {
    World {
        listeners: (0..n).map(listener).collect(),
        clusters: (0..n).map(cluster).collect(),
        load_assignments: (0..n).map(|i| load_assignment(i, n, 0)).collect(),
    }
}

// ---------------------------------------------------------------------------
// Reading the kernel back.

/// Records in a cluster's inner map (a header plus one per endpoint), read
/// from the pinned maps.
fn cluster_records(maps: &KernelNativeMaps, cluster: &str) -> Result<usize> {
    let id = maps
        .clusters
        .lookup(&name_key(cluster), MapFlags::ANY)?
        .with_context(|| format!("cluster {cluster:?} is not in kn_clusters"))?;
    let id = u32::from_ne_bytes(id.as_slice().try_into().context("inner map id")?);
    Ok(MapHandle::from_map_id(id)?.keys().count())
}

// ---------------------------------------------------------------------------
// The measurements.

#[derive(Debug, serde::Serialize)]
struct SizeResult {
    services: usize,
    endpoints_per_service: usize,
    world_mib: f64,
    apply_ms: f64,
    rss_kib: u64,
    hwm_kib: u64,
    idle_rss_kib: u64,
    map_bytes: u64,
    maps: Vec<(String, u64, u64)>,
    /// The inner maps (one per listener address and per cluster).
    inner_map_bytes: u64,
    change_ms: Stats,
    removal_ms: Stats,
    /// One endpoint added, the response re-sending all N assignments.
    change_all_sent_ms: Stats,
}

async fn measure(bin: &Path, n: usize, repeat: usize) -> Result<SizeResult> {
    let mut server = Server::start().await?;
    // Room for 50k listeners (the default is 16384).
    let extra = [
        "--max-listeners".to_string(),
        n.next_power_of_two().max(16384).to_string(),
    ];
    let daemon = Daemon::start(bin, "kernel-native", server.addr, &n.to_string(), &extra)?;
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

    let world = world(n);
    let world_bytes: usize = world
        .listeners
        .iter()
        .chain(&world.clusters)
        .chain(&world.load_assignments)
        .map(Message::encoded_len)
        .sum();
    let world_mib = world_bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "  {n} services x {ENDPOINTS_PER_SERVICE}: pushing {} resources ({world_mib:.1} MiB) ...",
        3 * n
    );
    let apply = server.push_world(&world, APPLY_TIMEOUT).await?;
    let (rss_kib, hwm_kib) = daemon.memory_kib()?;
    let maps = daemon.map_memory(&pin_dir(daemon.bpffs()).join("maps"), "kn_")?;
    let map_bytes = maps.iter().map(|(_, b, _)| b).sum();
    eprintln!("  applied in {:.0} ms", apply.as_secs_f64() * 1e3);

    let kernel = open_pinned_maps(&pin_dir(daemon.bpffs()))?;
    let (listeners, clusters) = (
        kernel.listeners.keys().count(),
        kernel.clusters.keys().count(),
    );
    if listeners != n || clusters != n {
        bail!("the kernel holds {listeners} listeners and {clusters} clusters, not {n} each");
    }
    let base_records = cluster_records(&kernel, &service_name(0))?;
    let inner_map_bytes = inner_map_bytes(&kernel)?;

    // One endpoint more for one service, `repeat` times (a different
    // service each time, spread over the whole range), each checked in the
    // kernel after the ACK; then each put back.
    let services: Vec<usize> = (0..repeat).map(|r| (r * 7919 + n / 2) % n).collect();
    let mut changes = Vec::with_capacity(repeat);
    for &svc in &services {
        let changed = vec![load_assignment(svc, n, 1)];
        changes.push(server.push_and_wait(changed, CHANGE_TIMEOUT).await?);
        expect_records(&kernel, svc, base_records + 1)?;
    }
    let mut removals = Vec::with_capacity(repeat);
    for &svc in &services {
        let changed = vec![load_assignment(svc, n, 0)];
        removals.push(server.push_and_wait(changed, CHANGE_TIMEOUT).await?);
        expect_records(&kernel, svc, base_records)?;
    }
    // The same change with every assignment in the response: fewer rounds,
    // the message is the whole EDS state.
    let mut all_sent = Vec::new();
    let mut everything = world.load_assignments;
    for &svc in services.iter().take(repeat.div_ceil(5)) {
        everything[svc] = load_assignment(svc, n, 1);
        all_sent.push(
            server
                .push_and_wait(everything.clone(), CHANGE_TIMEOUT)
                .await?,
        );
        expect_records(&kernel, svc, base_records + 1)?;
        everything[svc] = load_assignment(svc, n, 0);
    }
    Ok(SizeResult {
        services: n,
        endpoints_per_service: ENDPOINTS_PER_SERVICE,
        world_mib,
        apply_ms: apply.as_secs_f64() * 1e3,
        rss_kib,
        hwm_kib,
        idle_rss_kib,
        map_bytes,
        maps,
        inner_map_bytes,
        change_ms: stats(changes),
        removal_ms: stats(removals),
        change_all_sent_ms: stats(all_sent),
    })
}

/// Kernel memory of the inner maps the outer maps point to (created at run
/// time, not pinned, so not in the `kn_*` figure): `memlock` from
/// /proc/self/fdinfo of each, opened by id.
fn inner_map_bytes(kernel: &KernelNativeMaps) -> Result<u64> {
    let mut total = 0;
    for outer in [&kernel.listeners, &kernel.clusters] {
        for key in outer.keys() {
            let Some(id) = outer.lookup(&key, MapFlags::ANY)? else {
                continue;
            };
            let id = u32::from_ne_bytes(id.as_slice().try_into().context("inner map id")?);
            let inner = MapHandle::from_map_id(id)?;
            let fdinfo = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                inner.as_fd().as_raw_fd()
            ))?;
            total += fdinfo
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .context("no memlock in fdinfo")?;
        }
    }
    Ok(total)
}

fn expect_records(kernel: &KernelNativeMaps, svc: usize, want: usize) -> Result<()> {
    let got = cluster_records(kernel, &service_name(svc))?;
    if got != want {
        bail!(
            "after the ACK, cluster {} has {got} records in the kernel, not {want}",
            service_name(svc)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Output.

fn table(results: &[SizeResult]) -> String {
    let mut t = String::new();
    t.push_str("| services × endpoints | world MiB | push → last ACK (whole world) ms | one-endpoint add: median / p99 ms | one-endpoint removal: median / p99 ms | add, all assignments re-sent: median / max ms | daemon VmRSS / VmHWM MiB | `kn_*` map memlock MiB | inner maps memlock MiB |\n");
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        t.push_str(&format!(
            "| {} × {} | {:.1} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} | {:.1} |\n",
            r.services,
            r.endpoints_per_service,
            r.world_mib,
            r.apply_ms,
            r.change_ms.median,
            r.change_ms.p99,
            r.removal_ms.median,
            r.removal_ms.p99,
            r.change_all_sent_ms.median,
            r.change_all_sent_ms.max,
            mib(r.rss_kib),
            mib(r.hwm_kib),
            r.map_bytes as f64 / (1 << 20) as f64,
            r.inner_map_bytes as f64 / (1 << 20) as f64,
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
            let limit = TARGET_CHANGE_50K.as_secs_f64() * 1e3;
            t.push_str(&format!(
                "- one-endpoint change under {} ms at 50k services: add median {:.2} ms (p99 {:.2}), removal median {:.2} ms (p99 {:.2}) — {}\n",
                TARGET_CHANGE_50K.as_millis(),
                r.change_ms.median,
                r.change_ms.p99,
                r.removal_ms.median,
                r.removal_ms.p99,
                verdict(r.change_ms.p99 < limit && r.removal_ms.p99 < limit)
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
        "Measured by `benches/kernel_native_control_plane.rs` (`cargo bench --bench \
kernel_native_control_plane`): the release `kmesh-daemon --mode kernel-native` as a \
child process, fed by an in-process SotW ADS server on 127.0.0.1; a fresh daemon \
(and fresh maps) per size. Each service is a TCP listener on its own VIP, an EDS \
cluster and its ClusterLoadAssignment of 10 endpoints.\n\n\
- **push → last ACK**: CDS is sent, then EDS and LDS as the daemon subscribes \
to them (as Envoy does); from sending CDS to the last ACK. The daemon ACKs a \
response only after the runner wrote it to the kernel maps; the maps are read \
back afterwards (N listeners, N clusters).\n\
- **one-endpoint add / removal**: {repeat} EDS responses each carrying one \
ClusterLoadAssignment with one endpoint more (a different service each time), \
then {repeat} putting them back; push → ACK, median and p99 (nearest rank: \
with fewer than 100 samples, the largest). After each ACK the cluster's inner \
map is read from the pinned maps to check the change is in the kernel.\n\
- **add, all assignments re-sent**: the same change from a control plane that \
re-sends every assignment in each EDS response ({} samples): the daemon \
compares the N assignments by bytes and compiles only the changed one; the \
rest is the transfer and decoding of the whole message.\n\
- **VmRSS / VmHWM**: `/proc/PID/status` of the daemon right after the \
whole-world ACK (VmHWM is the peak so far).\n\
- **map memlock**: the sum of `bytes_memlock` (`bpftool map show pinned`) over \
the daemon's pinned `kn_*` maps after the whole-world ACK (their sizes are \
the configured capacities); **inner maps**: the sum of `memlock` (fdinfo) over \
the inner maps they point to (one per listener address and per cluster, \
created at run time and not pinned).\n\n{}\n\
Kernel map memory by map:\n\n{}\nTargets (issue #9):\n\n{}",
        repeat.div_ceil(5),
        table(results),
        map_breakdown(results.iter().map(|r| (r.services, r.maps.as_slice()))),
        targets(results)
    )
}

async fn run(args: Args) -> Result<Vec<SizeResult>> {
    let mut results = Vec::new();
    for &n in &args.sizes {
        eprintln!("kernel-native control plane: {n} services (fresh daemon)");
        results.push(measure(&args.daemon, n, args.repeat).await?);
    }
    Ok(results)
}

fn main() -> Result<()> {
    let Some((args, results)) = main_with("kernel_native_control_plane", run)? else {
        return Ok(());
    };
    println!(
        "\nKernel-native control plane (SotW ADS, release daemon, a fresh daemon per size; {} one-endpoint changes each)\n",
        args.repeat
    );
    print!("{}", table(&results));
    println!("\nTargets (issue #9):");
    print!("{}", targets(&results));
    write_outputs(&args, &markdown(&results, args.repeat), &results)
}
