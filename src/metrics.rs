//! Prometheus metrics (`--metrics-address`, default 0.0.0.0:15020,
//! `/status/metric`): the daemon's health. Counters that the kernel keeps
//! (pipeline events, map fill) are read from the pinned maps at scrape time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use libbpf_rs::MapCore;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::bpf::kernel_native::{open_pinned_maps, pin_dir};
use crate::kernel_native::bpf_dump::pipeline_counters;
use crate::xds::ads::AdsStatus;
use crate::xds::delta::DeltaStatus;

/// What the running mode's kernel side holds, read at scrape time.
pub trait KernelReadout: Send + Sync {
    /// `(map, entries, capacity)` of each lookup map.
    fn maps(&self) -> Vec<(String, i64, i64)>;
    /// `(event, running total)` of the eBPF pipeline counters.
    fn events(&self) -> Vec<(String, u64)>;
}

/// Kernel-native: the listener and cluster maps and the stage counters, read
/// from the pins (so a scrape works whatever the daemon is doing).
pub struct KernelNativeReadout {
    pub bpf_fs_path: PathBuf,
    pub max_listeners: u32,
    pub max_clusters: u32,
}

impl KernelReadout for KernelNativeReadout {
    fn maps(&self) -> Vec<(String, i64, i64)> {
        let Ok(maps) = open_pinned_maps(&pin_dir(&self.bpf_fs_path)) else {
            return Vec::new();
        };
        vec![
            (
                "kn_listeners".into(),
                maps.listeners.keys().count() as i64,
                i64::from(self.max_listeners),
            ),
            (
                "kn_clusters".into(),
                maps.clusters.keys().count() as i64,
                i64::from(self.max_clusters),
            ),
        ]
    }

    fn events(&self) -> Vec<(String, u64)> {
        let Ok(maps) = open_pinned_maps(&pin_dir(&self.bpf_fs_path)) else {
            return Vec::new();
        };
        pipeline_counters(&maps.stats)
            .map(|c| c.into_iter().map(|(e, n)| (e.to_string(), n)).collect())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdsLabels {
    type_url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// Istio-style labels of the connection metrics that kernel-native mode can
/// fill. Bounded: no source port, no per-connection value; the destination is
/// an endpoint of a configured cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// Always `source`: the client's side reports.
    pub reporter: String,
    /// The client's IP (no port).
    pub source_address: String,
    /// The endpoint the connection went to, `IP:PORT`.
    pub destination_address: String,
    /// The cluster that chose the endpoint.
    pub destination_service: String,
}

/// `kmesh_tcp_*`: fed by connection events (see `crate::telemetry`).
#[derive(Default)]
pub struct ConnMetrics {
    pub opened: Family<ConnLabels, Counter>,
    pub closed: Family<ConnLabels, Counter>,
    pub failed: Family<ConnLabels, Counter>,
    pub received_bytes: Family<ConnLabels, Counter>,
    pub sent_bytes: Family<ConnLabels, Counter>,
    pub retransmissions: Family<ConnLabels, Counter>,
    pub packet_loss: Family<ConnLabels, Counter>,
}

pub struct Metrics {
    registry: Registry,
    conn: ConnMetrics,
    xds_responses: Family<XdsLabels, Counter>,
    xds_acks: Family<XdsLabels, Counter>,
    xds_nacks: Family<XdsLabels, Counter>,
    xds_reconnects: Counter,
    xds_connected: Gauge,
    config_applied: Counter,
    config_refused: Counter,
    resources_rejected: Counter,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    bpf_events: Family<EventLabels, Counter>,
    kernel: Box<dyn KernelReadout>,
    /// Serialises scrapes: each refreshes the kernel-side values first.
    scrape: Mutex<()>,
}

/// Raise a counter to `value` (the source keeps a running total).
fn raise_to(counter: &Counter<u64, AtomicU64>, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

impl Metrics {
    pub fn new(kernel: Box<dyn KernelReadout>) -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            conn: ConnMetrics::default(),
            xds_responses: Family::default(),
            xds_acks: Family::default(),
            xds_nacks: Family::default(),
            xds_reconnects: Counter::default(),
            xds_connected: Gauge::default(),
            config_applied: Counter::default(),
            config_refused: Counter::default(),
            resources_rejected: Counter::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            bpf_events: Family::default(),
            kernel,
            scrape: Mutex::new(()),
        };
        registry.register(
            "kmesh_xds_responses",
            "xDS responses received, by type",
            m.xds_responses.clone(),
        );
        registry.register(
            "kmesh_xds_acks",
            "xDS responses ACKed, by type",
            m.xds_acks.clone(),
        );
        registry.register(
            "kmesh_xds_nacks",
            "xDS responses NACKed, by type",
            m.xds_nacks.clone(),
        );
        registry.register(
            "kmesh_xds_reconnects",
            "ADS streams re-opened",
            m.xds_reconnects.clone(),
        );
        registry.register(
            "kmesh_xds_connected",
            "1 while the ADS stream is open",
            m.xds_connected.clone(),
        );
        registry.register(
            "kmesh_config_applied",
            "configurations written to the kernel",
            m.config_applied.clone(),
        );
        registry.register(
            "kmesh_config_refused",
            "configurations refused whole (the previous one stayed in force)",
            m.config_refused.clone(),
        );
        registry.register(
            "kmesh_resources_rejected",
            "resources rejected individually (their previous version stayed in force)",
            m.resources_rejected.clone(),
        );
        registry.register(
            "kmesh_map_entries",
            "entries in a kernel map",
            m.map_entries.clone(),
        );
        registry.register(
            "kmesh_map_capacity",
            "capacity of a kernel map",
            m.map_capacity.clone(),
        );
        registry.register(
            "kmesh_bpf_connect_events",
            "connect() pipeline outcomes counted by the eBPF programs",
            m.bpf_events.clone(),
        );
        for (name, help, family) in [
            (
                "kmesh_tcp_connections_opened",
                "TCP connections established through kmesh (counted when established)",
                &m.conn.opened,
            ),
            (
                "kmesh_tcp_connections_closed",
                "established TCP connections closed",
                &m.conn.closed,
            ),
            (
                "kmesh_tcp_connections_failed",
                "TCP connections that closed without ever being established",
                &m.conn.failed,
            ),
            (
                "kmesh_tcp_received_bytes",
                "bytes received by clients on closed connections",
                &m.conn.received_bytes,
            ),
            (
                "kmesh_tcp_sent_bytes",
                "bytes sent by clients (acknowledged by the peer) on closed connections",
                &m.conn.sent_bytes,
            ),
            (
                "kmesh_tcp_retransmissions",
                "segments retransmitted on closed connections",
                &m.conn.retransmissions,
            ),
            (
                "kmesh_tcp_packet_loss",
                "segments presumed lost (lost_out at close) on closed connections",
                &m.conn.packet_loss,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        Arc::new(Self { registry, ..m })
    }

    /// The connection metrics, for the event consumer.
    pub fn conn(&self) -> &ConnMetrics {
        &self.conn
    }

    pub fn applied(&self, rejected: usize) {
        self.config_applied.inc();
        self.resources_rejected.inc_by(rejected as u64);
    }

    pub fn refused(&self) {
        self.config_refused.inc();
    }

    pub fn xds_status(&self, status: &AdsStatus) {
        self.xds_counts(
            status.reconnects,
            status.connected,
            status
                .types
                .iter()
                .map(|(t, s)| (t.as_str(), s.responses, s.acks, s.nacks)),
        );
    }

    /// The same counters from a delta stream (dual-engine).
    pub fn delta_status(&self, status: &DeltaStatus) {
        self.xds_counts(
            status.reconnects,
            status.connected,
            status
                .types
                .iter()
                .map(|(t, s)| (t.as_str(), s.responses, s.acks, s.nacks)),
        );
    }

    fn xds_counts<'a>(
        &self,
        reconnects: u64,
        connected: bool,
        types: impl Iterator<Item = (&'a str, u64, u64, u64)>,
    ) {
        raise_to(&self.xds_reconnects, reconnects);
        self.xds_connected.set(i64::from(connected));
        for (type_url, responses, acks, nacks) in types {
            let labels = XdsLabels {
                type_url: type_url.to_string(),
            };
            raise_to(&self.xds_responses.get_or_create(&labels), responses);
            raise_to(&self.xds_acks.get_or_create(&labels), acks);
            raise_to(&self.xds_nacks.get_or_create(&labels), nacks);
        }
    }

    /// Refresh what the kernel keeps, then render the text format.
    pub fn render(&self) -> String {
        let _one_at_a_time = crate::sync::lock(&self.scrape);
        self.refresh_kernel_values();
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        to_prometheus_text(&out)
    }

    fn refresh_kernel_values(&self) {
        for (map, entries, capacity) in self.kernel.maps() {
            let labels = MapLabels { map };
            self.map_entries.get_or_create(&labels).set(entries);
            self.map_capacity.get_or_create(&labels).set(capacity);
        }
        for (event, total) in self.kernel.events() {
            let labels = EventLabels { event };
            raise_to(&self.bpf_events.get_or_create(&labels), total);
        }
    }
}

/// The encoder writes OpenMetrics, where a counter family `x` has samples
/// `x_total`. Prometheus' classic text format (what Kmesh serves, what
/// `promtool check metrics` reads) names the family after its samples and has
/// no `# EOF`: rename counter families and drop the terminator.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Serve `/status/metric` (Kmesh's path) and `/metrics`. A port that cannot be
/// bound is reported and the daemon goes on: steering traffic matters more.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "metrics endpoint cannot listen; continuing without it");
            return;
        }
    };
    tracing::info!(%addr, "metrics endpoint listening");
    let render = move || {
        let metrics = metrics.clone();
        async move {
            let text = tokio::task::spawn_blocking(move || metrics.render())
                .await
                .unwrap_or_default();
            (
                [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                text,
            )
                .into_response()
        }
    };
    let app = Router::new()
        .route("/status/metric", get(render.clone()))
        .route("/metrics", get(render));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_families_are_named_after_their_samples() {
        let om = "# HELP a_x Some help.\n# TYPE a_x counter\na_x_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_x_total Some help.\n# TYPE a_x_total counter\na_x_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    /// Every metric the Grafana dashboard queries is one this daemon serves.
    #[test]
    fn the_dashboard_queries_only_served_metrics() {
        let m = Metrics::new(Box::new(KernelNativeReadout {
            bpf_fs_path: PathBuf::from("/nonexistent"),
            max_listeners: 1,
            max_clusters: 1,
        }));
        // Families without samples are not rendered: give each one a sample.
        let conn = ConnLabels {
            reporter: "source".to_string(),
            source_address: "127.0.0.1".to_string(),
            destination_address: "127.0.0.2:80".to_string(),
            destination_service: "svc".to_string(),
        };
        let c = m.conn();
        for family in [
            &c.opened,
            &c.closed,
            &c.failed,
            &c.received_bytes,
            &c.sent_bytes,
            &c.retransmissions,
            &c.packet_loss,
        ] {
            family.get_or_create(&conn).inc();
        }
        let xds = XdsLabels {
            type_url: "t".to_string(),
        };
        for family in [&m.xds_responses, &m.xds_acks, &m.xds_nacks] {
            family.get_or_create(&xds).inc();
        }
        let map = MapLabels {
            map: "kn_listeners".to_string(),
        };
        m.map_entries.get_or_create(&map).set(1);
        m.map_capacity.get_or_create(&map).set(1);
        m.bpf_events
            .get_or_create(&EventLabels {
                event: "redirected".to_string(),
            })
            .inc();
        let text = m.render();
        let served: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let dashboard = include_str!("../docs/grafana-kmesh.json");
        let mut queried = 0;
        for (i, _) in dashboard.match_indices("kmesh_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.ends_with('_') {
                continue; // a prefix in a title, e.g. "kmesh_tcp_*"
            }
            assert!(
                served.contains(name.as_str()),
                "{name} is not served:\n{text}"
            );
            queried += 1;
        }
        assert!(queried > 10);
    }
}
