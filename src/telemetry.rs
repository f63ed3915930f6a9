//! Connection events from the kernel (ring buffer `kn_conn_events`, written
//! by sockops, see `bpf/kernel_native/lib/conn_events.h`) turned into
//! `kmesh_tcp_*` metrics and access log lines.
//!
//! Two switches, kept in the kernel's `kn_telemetry_config` so that the fast
//! path emits nothing when both are off: monitoring (metrics, on by default)
//! and access logs (off by default), both as in Kmesh. They can be flipped at
//! run time through the admin endpoint (`kmeshctl monitoring|accesslog`).
//!
//! Counting: a connection is counted as *opened* when its active open
//! completes (so long-lived connections show up while they live), as *closed*
//! when an established connection reaches TCP_CLOSE, as *failed* when it
//! reaches TCP_CLOSE without ever being established. Bytes, retransmissions
//! and losses are added when the connection closes.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBufferBuilder};

use crate::bpf::kernel_native::TelemetryMaps;
use crate::bpf::kn_skel::types as c;
use crate::metrics::{ConnLabels, Metrics};

/// `KN_TELEMETRY_*` of include/kernel_native.h.
pub const TELEMETRY_METRICS: u32 = 1 << 0;
pub const TELEMETRY_ACCESS_LOG: u32 = 1 << 1;
const KN_CONN_OPENED: u32 = 1;
const KN_CONN_CLOSED: u32 = 2;
const KN_FAMILY_V6: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Kmesh's `accesslog: <time> src.addr=..., ...` line.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("writing the telemetry switches into kn_telemetry_config: {0}")]
    Config(#[source] libbpf_rs::Error),
    #[error("reading connection events from kn_conn_events: {0}")]
    RingBuffer(#[source] libbpf_rs::Error),
    #[error("starting the connection event thread: {0}")]
    Thread(#[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEventKind {
    Opened,
    Closed,
}

/// One `struct kn_conn_event`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnEvent {
    pub kind: ConnEventKind,
    pub established: bool,
    /// What the client dialled (the VIP).
    pub original: SocketAddr,
    /// The endpoint the socket is connected to.
    pub endpoint: SocketAddr,
    /// The client's address.
    pub source: SocketAddr,
    pub cluster: String,
    pub netns_cookie: u64,
    pub duration: Duration,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmissions: u64,
    pub lost: u64,
}

fn ip(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == KN_FAMILY_V6 {
        // A v4-mapped address (an IPv6 socket reaching an IPv4 endpoint) is shown as IPv4.
        Ipv6Addr::from(*addr).to_canonical()
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

impl ConnEvent {
    /// `None` for a record too short or of an unknown kind.
    pub fn decode(data: &[u8]) -> Option<ConnEvent> {
        if data.len() < size_of::<c::kn_conn_event>() {
            return None;
        }
        // SAFETY: `data` holds at least size_of::<kn_conn_event>() bytes, the
        // type is plain old data (integers and byte arrays: every bit pattern
        // is valid), and read_unaligned does not need the ring's alignment.
        let raw: c::kn_conn_event =
            unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<c::kn_conn_event>()) };
        let kind = match raw.kind {
            KN_CONN_OPENED => ConnEventKind::Opened,
            KN_CONN_CLOSED => ConnEventKind::Closed,
            _ => return None,
        };
        let name: Vec<u8> = raw
            .cluster
            .name
            .iter()
            .map(|&b| b as u8)
            .take_while(|&b| b != 0)
            .collect();
        Some(ConnEvent {
            kind,
            established: raw.established != 0,
            original: SocketAddr::new(ip(raw.orig_family, &raw.orig_addr), raw.orig_port),
            endpoint: SocketAddr::new(ip(raw.family, &raw.remote_addr), raw.remote_port),
            source: SocketAddr::new(ip(raw.family, &raw.local_addr), raw.local_port),
            cluster: String::from_utf8_lossy(&name).into_owned(),
            netns_cookie: raw.netns_cookie,
            duration: Duration::from_nanos(raw.duration_ns),
            bytes_sent: raw.bytes_sent,
            bytes_received: raw.bytes_received,
            retransmissions: u64::from(raw.total_retrans),
            lost: u64::from(raw.lost_out),
        })
    }

    fn labels(&self) -> ConnLabels {
        ConnLabels {
            reporter: "source".to_string(),
            source_address: self.source.ip().to_string(),
            destination_address: self.endpoint.to_string(),
            destination_service: self.cluster.clone(),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC).
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The access log line of a closed connection. Kernel-native mode knows no
/// workloads or namespaces: those fields are `-`.
pub fn access_log_line(ev: &ConnEvent, now: SystemTime, format: AccessLogFormat) -> String {
    let duration_ms = ev.duration.as_secs_f64() * 1000.0;
    match format {
        AccessLogFormat::Text => format!(
            "accesslog: {} src.addr={}, src.workload=-, src.namespace=-, dst.addr={}, \
             dst.service={}, dst.workload=-, dst.namespace=-, direction=OUTBOUND, \
             sent_bytes={}, received_bytes={}, duration={duration_ms:.3}ms",
            rfc3339(now),
            ev.source,
            ev.endpoint,
            ev.cluster,
            ev.bytes_sent,
            ev.bytes_received,
        ),
        AccessLogFormat::Json => serde_json::json!({
            "time": rfc3339(now),
            "src.addr": ev.source.to_string(),
            "src.workload": "-",
            "src.namespace": "-",
            "dst.addr": ev.endpoint.to_string(),
            "dst.original_addr": ev.original.to_string(),
            "dst.service": ev.cluster,
            "dst.workload": "-",
            "dst.namespace": "-",
            "direction": "OUTBOUND",
            "established": ev.established,
            "sent_bytes": ev.bytes_sent,
            "received_bytes": ev.bytes_received,
            "retransmissions": ev.retransmissions,
            "lost": ev.lost,
            "duration_ms": duration_ms,
        })
        .to_string(),
    }
}

/// How stale metrics and access-log lines may get between two drains.
const EVENT_DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// The daemon's side of connection telemetry: the switches and the consumer.
pub struct Telemetry {
    flags: AtomicU32,
    config: Mutex<MapHandle>,
    metrics: Arc<Metrics>,
    format: AccessLogFormat,
}

impl Telemetry {
    /// Write the initial switches into the kernel and start consuming events
    /// on a thread of its own (the ring buffer poll blocks).
    pub fn start(
        maps: TelemetryMaps,
        metrics: Arc<Metrics>,
        monitoring: bool,
        access_log: bool,
        format: AccessLogFormat,
    ) -> Result<Arc<Self>, TelemetryError> {
        let telemetry = Arc::new(Self {
            flags: AtomicU32::new(0),
            config: Mutex::new(maps.config),
            metrics,
            format,
        });
        telemetry.set(TELEMETRY_METRICS, monitoring)?;
        telemetry.set(TELEMETRY_ACCESS_LOG, access_log)?;
        let consumer = telemetry.clone();
        let events = maps.events;
        // Fail here, not in the thread, if the ring buffer cannot be mapped.
        drop(ring_buffer(&events, |_| 0)?);
        std::thread::Builder::new()
            .name("kmesh-conn-events".to_string())
            .spawn(move || consumer.consume(&events))
            .map_err(TelemetryError::Thread)?;
        Ok(telemetry)
    }

    pub fn monitoring(&self) -> bool {
        self.flags.load(Ordering::Acquire) & TELEMETRY_METRICS != 0
    }

    pub fn access_log(&self) -> bool {
        self.flags.load(Ordering::Acquire) & TELEMETRY_ACCESS_LOG != 0
    }

    pub fn set_monitoring(&self, enable: bool) -> Result<(), TelemetryError> {
        self.set(TELEMETRY_METRICS, enable)
    }

    pub fn set_access_log(&self, enable: bool) -> Result<(), TelemetryError> {
        self.set(TELEMETRY_ACCESS_LOG, enable)
    }

    fn set(&self, bit: u32, enable: bool) -> Result<(), TelemetryError> {
        let config = crate::sync::lock(&self.config);
        let old = self.flags.load(Ordering::Acquire);
        let new = if enable { old | bit } else { old & !bit };
        config
            .update(&0u32.to_ne_bytes(), &new.to_ne_bytes(), MapFlags::ANY)
            .map_err(TelemetryError::Config)?;
        self.flags.store(new, Ordering::Release);
        tracing::info!(
            monitoring = new & TELEMETRY_METRICS != 0,
            access_log = new & TELEMETRY_ACCESS_LOG != 0,
            "connection telemetry switches"
        );
        Ok(())
    }

    fn consume(&self, events: &MapHandle) {
        let ring = match ring_buffer(events, |data| {
            self.handle(data);
            0
        }) {
            Ok(ring) => ring,
            Err(e) => {
                tracing::error!(error = %e, "no connection events: metrics and access logs stay empty");
                return;
            }
        };
        // The kernel wakes us only when a batch has piled up (see
        // conn_events.h): otherwise drain on this timer.
        loop {
            if let Err(e) = ring.poll(EVENT_DRAIN_INTERVAL) {
                // EINTR and the like: keep consuming.
                tracing::debug!(error = %e, "polling connection events");
            }
            if let Err(e) = ring.consume() {
                tracing::debug!(error = %e, "draining connection events");
            }
        }
    }

    fn handle(&self, data: &[u8]) {
        let Some(ev) = ConnEvent::decode(data) else {
            tracing::debug!(len = data.len(), "undecodable connection event");
            return;
        };
        let flags = self.flags.load(Ordering::Acquire);
        if flags & TELEMETRY_METRICS != 0 {
            self.count(&ev);
        }
        if flags & TELEMETRY_ACCESS_LOG != 0 && ev.kind == ConnEventKind::Closed {
            println!("{}", access_log_line(&ev, SystemTime::now(), self.format));
        }
    }

    fn count(&self, ev: &ConnEvent) {
        let m = self.metrics.conn();
        let labels = ev.labels();
        match ev.kind {
            ConnEventKind::Opened => {
                m.opened.get_or_create(&labels).inc();
            }
            ConnEventKind::Closed => {
                if ev.established {
                    m.closed.get_or_create(&labels).inc();
                } else {
                    m.failed.get_or_create(&labels).inc();
                }
                m.sent_bytes.get_or_create(&labels).inc_by(ev.bytes_sent);
                m.received_bytes
                    .get_or_create(&labels)
                    .inc_by(ev.bytes_received);
                m.retransmissions
                    .get_or_create(&labels)
                    .inc_by(ev.retransmissions);
                m.packet_loss.get_or_create(&labels).inc_by(ev.lost);
            }
        }
    }
}

fn ring_buffer<'cb>(
    events: &'cb MapHandle,
    callback: impl FnMut(&[u8]) -> i32 + 'cb,
) -> Result<libbpf_rs::RingBuffer<'cb>, TelemetryError> {
    let mut builder = RingBufferBuilder::new();
    builder
        .add(events as &dyn MapCore, callback)
        .map_err(TelemetryError::RingBuffer)?;
    builder.build().map_err(TelemetryError::RingBuffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> ConnEvent {
        ConnEvent {
            kind: ConnEventKind::Closed,
            established: true,
            original: "10.96.0.15:80".parse().unwrap_or_else(|_| unreachable!()),
            endpoint: "127.0.0.2:8080".parse().unwrap_or_else(|_| unreachable!()),
            source: "127.0.0.1:40000".parse().unwrap_or_else(|_| unreachable!()),
            cluster: "svc".to_string(),
            netns_cookie: 7,
            duration: Duration::from_micros(1500),
            bytes_sent: 10,
            bytes_received: 30,
            retransmissions: 0,
            lost: 0,
        }
    }

    #[test]
    fn rfc3339_renders_utc_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // leap year, Feb 29
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn text_access_log_has_kmesh_fields() {
        let line = access_log_line(&event(), UNIX_EPOCH, AccessLogFormat::Text);
        assert_eq!(
            line,
            "accesslog: 1970-01-01T00:00:00.000Z src.addr=127.0.0.1:40000, src.workload=-, \
             src.namespace=-, dst.addr=127.0.0.2:8080, dst.service=svc, dst.workload=-, \
             dst.namespace=-, direction=OUTBOUND, sent_bytes=10, received_bytes=30, \
             duration=1.500ms"
        );
    }

    #[test]
    fn json_access_log_is_one_object() {
        let line = access_log_line(&event(), UNIX_EPOCH, AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["dst.service"], "svc");
        assert_eq!(v["sent_bytes"], 10);
        assert_eq!(v["dst.original_addr"], "10.96.0.15:80");
    }

    #[test]
    fn decode_reads_the_c_layout() {
        let mut raw = c::kn_conn_event {
            kind: KN_CONN_CLOSED,
            established: 1,
            family: 0,
            orig_family: 0,
            orig_port: 80,
            remote_port: 8080,
            local_port: 40000,
            bytes_sent: 10,
            bytes_received: 30,
            duration_ns: 1_500_000,
            ..Default::default()
        };
        raw.orig_addr[..4].copy_from_slice(&[10, 96, 0, 15]);
        raw.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        raw.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        for (d, s) in raw.cluster.name.iter_mut().zip(b"svc") {
            *d = *s as i8;
        }
        // SAFETY: a repr(C) value of plain integers viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const c::kn_conn_event).cast::<u8>(),
                size_of::<c::kn_conn_event>(),
            )
        };
        let ev = ConnEvent::decode(bytes).unwrap_or_else(|| unreachable!());
        assert_eq!(
            ev,
            ConnEvent {
                netns_cookie: 0,
                ..event()
            }
        );
        assert!(ConnEvent::decode(&bytes[..10]).is_none());
    }
}
