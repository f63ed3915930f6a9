//! Flags and environment -> `Config`. Names follow Kmesh (`--mode`,
//! `XDS_ADDRESS`, ...) so that existing deployments keep working.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Envoy xDS (LDS/RDS/CDS/EDS) compiled into the kernel.
    KernelNative,
    /// Istio ambient workload API.
    DualEngine,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "kmesh-daemon",
    version,
    about = "kmesh data-plane daemon: xDS in, eBPF maps out"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Data-plane mode.
    #[arg(long, value_enum, default_value = "dual-engine", env = "KMESH_MODE")]
    pub mode: Mode,

    /// Read resources from this YAML/JSON file (a DiscoveryResponse-shaped
    /// `resources:` list with "@type"); the file is watched for changes.
    #[arg(long, value_name = "PATH")]
    pub xds_file: Option<PathBuf>,

    /// Address of the xDS control plane (ADS over gRPC).
    #[arg(long, env = "XDS_ADDRESS", value_name = "HOST:PORT")]
    pub xds_address: Option<String>,

    /// Plaintext gRPC to the control plane even when the address has no
    /// `http://` scheme (tests, local control planes).
    #[arg(long)]
    pub xds_plaintext: bool,

    /// Root CA of the control plane (TLS).
    #[arg(
        long,
        env = "XDS_ROOT_CA",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub xds_root_cert: PathBuf,

    /// Name to verify in the control plane's TLS certificate (default: the
    /// host of --xds-address; needed when that is an IP address).
    #[arg(long, env = "XDS_SERVER_NAME")]
    pub xds_server_name: Option<String>,

    /// Bearer token sent to the control plane; used when the file exists.
    #[arg(
        long,
        env = "XDS_TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/istio-token"
    )]
    pub xds_token_file: PathBuf,

    /// Cluster name sent to the control plane (node metadata and `ClusterID`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// This pod's IP, part of the node id.
    #[arg(long, env = "INSTANCE_IP", default_value = "127.0.0.1")]
    pub instance_ip: String,

    #[arg(long, env = "POD_NAME", default_value = "kmesh")]
    pub pod_name: String,

    #[arg(long, env = "POD_NAMESPACE", default_value = "kmesh-system")]
    pub pod_namespace: String,

    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,

    /// Root of the BPF filesystem; pins live under `<path>/kmesh/`.
    #[arg(long, global = true, default_value = "/sys/fs/bpf")]
    pub bpf_fs_path: PathBuf,

    /// cgroup2 directory whose processes are managed (mounted as cgroup2 if it is not one).
    #[arg(
        long = "cgroup2-path",
        global = true,
        default_value = "/mnt/kmesh_cgroup2"
    )]
    pub cgroup2_path: PathBuf,

    /// Admin HTTP endpoint (config dumps, readiness). Keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15200")]
    pub admin_address: SocketAddr,

    /// Prometheus metrics endpoint (`/status/metric`).
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_address: SocketAddr,

    /// Log filter: a level (`info`) or tracing directives (`kmesh=debug,info`).
    #[arg(long, global = true, default_value = "info", env = "KMESH_LOG_LEVEL")]
    pub log_level: String,

    /// Capacity of the listener map (listener addresses, including additional addresses).
    #[arg(long, default_value_t = 16384)]
    pub max_listeners: u32,

    /// Capacity of the cluster map.
    #[arg(long, default_value_t = 65536)]
    pub max_clusters: u32,

    /// Most endpoints one cluster may have.
    #[arg(long, default_value_t = 65536)]
    pub max_endpoints_per_cluster: u32,

    /// Kernel-native: capacity of the circuit-breaker counters, one per
    /// (client netns, cluster with max_connections) pair; the least recently
    /// used is evicted when full.
    #[arg(long, default_value_t = 65536)]
    pub max_netns_cluster_counters: u32,

    /// Kernel-native: capacity of the per-endpoint connection counters
    /// (LEAST_REQUEST, the bpf dump), one per endpoint of a cluster that was
    /// connected to; the least recently used is evicted when full.
    #[arg(long, default_value_t = 65536)]
    pub max_endpoint_counters: u32,

    /// Most HTTP route configurations.
    #[arg(long, default_value_t = 16384)]
    pub max_route_configs: u32,

    /// Dual-engine: most services (VIP records).
    #[arg(long, default_value_t = 65536)]
    pub max_services: u32,

    /// Dual-engine: most endpoint entries of all services together (a
    /// workload backing two services counts twice).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_endpoints: u32,

    /// Dual-engine: most backends (workloads, plus one per address a DNS
    /// workload resolves to).
    #[arg(long, default_value_t = 1 << 19)]
    pub max_backends: u32,

    /// Dual-engine: most frontend addresses (service VIPs + workload IPs).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_frontends: u32,

    /// Dual-engine: this node's locality as `region/zone/subzone` (subzone
    /// optional). Without it, the locality of the workloads on NODE_NAME is
    /// used.
    #[arg(long, env = "KMESH_LOCALITY", value_parser = parse_locality)]
    pub locality: Option<crate::workload::resource::LocalityFields>,

    /// Dual-engine: the port of a waypoint's listener that connections to a
    /// service or workload with a waypoint are sent to.
    #[arg(long, default_value_t = 15019)]
    pub waypoint_port: u16,

    /// Dual-engine: the socket mark (SO_MARK) of a waypoint's own upstream
    /// connections, decimal or 0x-hex. A connect from a socket with all of
    /// these bits set is load-balanced but never sent to a waypoint, so a
    /// waypoint inside the managed cgroup does not receive its own
    /// connections back. 0 turns the check off (then run waypoints outside
    /// the managed cgroup).
    #[arg(long, env = "KMESH_WAYPOINT_MARK", default_value = "0x539", value_parser = parse_mark)]
    pub waypoint_mark: u32,

    /// DNS server for STRICT_DNS/LOGICAL_DNS clusters and ServiceEntry
    /// hostnames, as `ADDR:PORT`; repeat the flag for several servers. When
    /// absent, the nameservers (and search domains) of /etc/resolv.conf are used.
    #[arg(long = "dns-server", value_name = "ADDR:PORT")]
    pub dns_server: Vec<SocketAddr>,

    /// Connection metrics (`kmesh_tcp_*`) from the kernel's connection
    /// events; `--monitoring false` turns them off (runtime: `kmeshctl monitoring`).
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        env = "KMESH_MONITORING"
    )]
    pub monitoring: bool,

    /// One access log line per closed connection on stdout (runtime:
    /// `kmeshctl accesslog enable|disable`). Off by default, as in Kmesh;
    /// Kmesh's spelling `--enable-accesslog` is accepted too.
    #[arg(
        long,
        alias = "enable-accesslog",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        env = "KMESH_ACCESSLOG"
    )]
    pub accesslog: bool,

    /// Access log line format.
    #[arg(long, value_enum, default_value_t = crate::telemetry::AccessLogFormat::Text)]
    pub access_log_format: crate::telemetry::AccessLogFormat,

    /// How often the xDS file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200, hide = true)]
    pub xds_file_poll_ms: u64,
}

/// `region/zone[/subzone]`; a region alone is fine too.
fn parse_locality(text: &str) -> Result<crate::workload::resource::LocalityFields, String> {
    let parts: Vec<&str> = text.split('/').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "{text:?}: expected region/zone/subzone (zone and subzone optional, none empty)"
        ));
    }
    let part = |i: usize| parts.get(i).map_or_else(Default::default, |p| (*p).into());
    Ok(crate::workload::resource::LocalityFields {
        region: part(0),
        zone: part(1),
        subzone: part(2),
    })
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Remove everything a daemon pinned or attached (programs, links, maps).
    Uninstall,
}

/// A socket mark: decimal or `0x`-prefixed hex.
fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a mark (decimal or 0x-hex u32): {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn waypoint_mark_takes_hex_or_decimal() {
        assert_eq!(super::parse_mark("0x539"), Ok(1337));
        assert_eq!(super::parse_mark("1337"), Ok(1337));
        assert_eq!(super::parse_mark("0"), Ok(0));
        assert!(super::parse_mark("0xzz").is_err());
    }

    use super::*;

    #[test]
    fn dns_server_is_repeatable_and_defaults_to_none() {
        let config = Config::try_parse_from(["kmesh-daemon"]).unwrap();
        assert!(config.dns_server.is_empty());

        let config = Config::try_parse_from([
            "kmesh-daemon",
            "--dns-server",
            "127.0.0.1:53",
            "--dns-server",
            "[::1]:5353",
        ])
        .unwrap();
        let expected: Vec<SocketAddr> = vec![
            "127.0.0.1:53".parse().unwrap(),
            "[::1]:5353".parse().unwrap(),
        ];
        assert_eq!(config.dns_server, expected);
    }

    #[test]
    fn locality_is_region_zone_subzone() {
        let config =
            Config::try_parse_from(["kmesh-daemon", "--locality", "eu-west/eu-west-1a"]).unwrap();
        let locality = config.locality.unwrap();
        assert_eq!(
            (&*locality.region, &*locality.zone),
            ("eu-west", "eu-west-1a")
        );
        assert!(locality.subzone.is_empty());
        assert!(Config::try_parse_from(["kmesh-daemon", "--locality", "a//c"]).is_err());
        assert!(Config::try_parse_from(["kmesh-daemon", "--locality", "a/b/c/d"]).is_err());
    }

    #[test]
    fn dns_server_needs_a_port() {
        assert!(Config::try_parse_from(["kmesh-daemon", "--dns-server", "127.0.0.1"]).is_err());
    }

    #[test]
    fn monitoring_is_on_and_access_log_off_by_default_as_in_kmesh() {
        let config = Config::try_parse_from(["kmesh-daemon"]).unwrap();
        assert!(config.monitoring);
        assert!(!config.accesslog);
        assert_eq!(
            config.access_log_format,
            crate::telemetry::AccessLogFormat::Text
        );
        for args in [
            &["kmesh-daemon", "--enable-accesslog"][..],
            &["kmesh-daemon", "--accesslog", "true"][..],
            &["kmesh-daemon", "--accesslog=true", "--monitoring=false"][..],
        ] {
            let config = Config::try_parse_from(args).unwrap();
            assert!(config.accesslog, "{args:?}");
        }
        let config = Config::try_parse_from([
            "kmesh-daemon",
            "--monitoring",
            "false",
            "--access-log-format",
            "json",
        ])
        .unwrap();
        assert!(!config.monitoring);
        assert_eq!(
            config.access_log_format,
            crate::telemetry::AccessLogFormat::Json
        );
    }
}
