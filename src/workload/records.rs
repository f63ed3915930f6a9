//! The byte layout of dual-engine map entries: plan records in, the keys and
//! values of `include/dual_engine.h` out (and back, for the bpf dump and for
//! adopting an earlier daemon's maps).
//!
//! Every size and offset comes from the skeleton-generated types
//! (`bpf::de_skel::types`), which libbpf-cargo derives from the object's BTF,
//! so this file cannot drift from the C definitions. Ports are host byte
//! order in every record (the programs convert when they write a sockaddr);
//! addresses are network byte order, IPv4 as IPv4-mapped IPv6 where 16 bytes.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::plan::{
    frontend_addr, BackendRecord, EndpointRecord, FrontendAddr, FrontendTarget, LbPolicy,
    ServiceRecord, FAMILIES, MAX_PORTS, MAX_PRIORITIES,
};
use crate::bpf::de_skel::types as c;

// Constants of include/dual_engine.h (enums and macros are not in the BTF).
pub const DE_FRONTEND_SERVICE: u32 = 1;
pub const DE_FRONTEND_WORKLOAD: u32 = 2;
pub const DE_MAX_ENDPOINTS_PER_PRIORITY: usize = 1 << 20;
/// `enum de_counter`, in index order.
pub const COUNTER_NAMES: [&str; 12] = [
    "connects",
    "service_hits",
    "redirected",
    "passthrough",
    "no_endpoint",
    "map_miss",
    "workload_hits",
    "waypoint",
    "waypoint_skipped",
    "waypoint_refused",
    "proxy_sent",
    "proxy_failed",
];

pub const FRONTEND_KEY_SIZE: usize = size_of::<c::de_frontend_key>();
pub const FRONTEND_VALUE_SIZE: usize = size_of::<c::de_frontend_value>();
pub const SERVICE_VALUE_SIZE: usize = size_of::<c::de_service_value>();
pub const ENDPOINT_KEY_SIZE: usize = size_of::<c::de_endpoint_key>();
pub const ENDPOINT_VALUE_SIZE: usize = size_of::<c::de_endpoint_value>();
pub const BACKEND_VALUE_SIZE: usize = size_of::<c::de_backend_value>();
/// Service and backend ids: `__u32` keys.
pub const ID_KEY_SIZE: usize = size_of::<u32>();

/// `DE_OWNER_LEN`: bytes of the owner tag in service and backend records.
pub const OWNER_LEN: usize = 16;

/// Which object an id's records belong to (`owner` in the service and
/// backend records): a SHA-256 prefix of its store key. A restarted daemon
/// reads it back so that an id keeps its object (see [`owner_tag`]).
pub type OwnerTag = [u8; OWNER_LEN];

/// The owner tag of a store key. SHA-256, not a fast hash: a key is partly
/// chosen by whoever names a Service or ServiceEntry, and a collision would
/// hand one object's id to another after a restart. The tag must also stay
/// the same from one build to the next (it outlives the daemon).
pub fn owner_tag(key: &str) -> OwnerTag {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut tag = [0; OWNER_LEN];
    tag.copy_from_slice(&digest.as_ref()[..OWNER_LEN]);
    tag
}

/// Per family and priority: how many endpoint entries (`endpoint_count`).
pub type Counts = [[u32; MAX_PRIORITIES]; FAMILIES];

/// The key of one endpoint entry (`struct de_endpoint_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub service: u32,
    pub slot: u8,
    pub family: u8,
    pub priority: u8,
    pub index: u32,
}

/// A service record as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceValue {
    pub policy: u32,
    pub slot: u8,
    pub ports: Vec<u16>,
    pub counts: Counts,
    pub waypoint: Option<SocketAddr>,
    pub owner: OwnerTag,
}

/// A backend record as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendValue {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub waypoint: Option<SocketAddr>,
    pub owner: OwnerTag,
}

/// Zeroed bytes with typed writes at offsets.
struct Bytes(Vec<u8>);

impl Bytes {
    fn new(size: usize) -> Self {
        Bytes(vec![0; size])
    }
    fn u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_ne_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn bytes(&mut self, off: usize, v: &[u8]) {
        self.0[off..off + v.len()].copy_from_slice(v);
    }
}

fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn rd_16(b: &[u8], off: usize) -> Option<[u8; 16]> {
    b.get(off..off + 16)?.try_into().ok()
}

pub fn id_key(id: u32) -> [u8; 4] {
    id.to_ne_bytes()
}

pub fn id_from(key: &[u8]) -> Option<u32> {
    rd_u32(key, 0)
}

pub fn frontend_key(addr: &FrontendAddr) -> [u8; 16] {
    addr.octets()
}

pub fn frontend_from(key: &[u8]) -> Option<FrontendAddr> {
    rd_16(key, offset_of!(c::de_frontend_key, addr)).map(Ipv6Addr::from)
}

pub fn frontend_value(target: FrontendTarget) -> Vec<u8> {
    let (kind, id) = match target {
        FrontendTarget::Service(id) => (DE_FRONTEND_SERVICE, id),
        FrontendTarget::Workload(id) => (DE_FRONTEND_WORKLOAD, id),
    };
    let mut b = Bytes::new(FRONTEND_VALUE_SIZE);
    b.u32(offset_of!(c::de_frontend_value, kind), kind);
    b.u32(offset_of!(c::de_frontend_value, id), id);
    b.0
}

pub fn decode_frontend_value(b: &[u8]) -> Option<FrontendTarget> {
    let id = rd_u32(b, offset_of!(c::de_frontend_value, id))?;
    match rd_u32(b, offset_of!(c::de_frontend_value, kind))? {
        DE_FRONTEND_SERVICE => Some(FrontendTarget::Service(id)),
        DE_FRONTEND_WORKLOAD => Some(FrontendTarget::Workload(id)),
        _ => None,
    }
}

/// `endpoint_count` of a service record: its endpoints per family and priority.
pub fn counts_of(service: &ServiceRecord) -> Counts {
    let mut counts = Counts::default();
    for (family, levels) in service.endpoints.iter().enumerate() {
        for (priority, level) in levels.iter().enumerate().take(MAX_PRIORITIES) {
            counts[family][priority] = u32::try_from(level.len()).unwrap_or(u32::MAX);
        }
    }
    counts
}

/// Write a `struct de_waypoint` at `off` (port 0 = none).
fn waypoint(b: &mut Bytes, off: usize, waypoint: Option<SocketAddr>) {
    if let Some(w) = waypoint {
        b.bytes(
            off + offset_of!(c::de_waypoint, addr),
            &frontend_addr(w.ip()).octets(),
        );
        b.u16(off + offset_of!(c::de_waypoint, port), w.port());
    }
}

fn decode_waypoint(b: &[u8], off: usize) -> Option<Option<SocketAddr>> {
    let port = rd_u16(b, off + offset_of!(c::de_waypoint, port))?;
    let addr = Ipv6Addr::from(rd_16(b, off + offset_of!(c::de_waypoint, addr))?);
    Some((port != 0).then(|| SocketAddr::new(unmap(addr), port)))
}

/// `::ffff:a.b.c.d` back to `a.b.c.d`; other addresses as they are.
pub fn unmap(addr: Ipv6Addr) -> std::net::IpAddr {
    match addr.to_ipv4_mapped() {
        Some(v4) => v4.into(),
        None => addr.into(),
    }
}

/// The service record pointing at `slot`, with that slot's endpoint counts.
pub fn service_value(service: &ServiceRecord, slot: u8) -> Vec<u8> {
    let mut b = Bytes::new(SERVICE_VALUE_SIZE);
    b.u32(
        offset_of!(c::de_service_value, policy),
        service.policy.kernel_value(),
    );
    b.u32(offset_of!(c::de_service_value, slot), u32::from(slot));
    let ports = &service.ports[..service.ports.len().min(MAX_PORTS)];
    b.u32(
        offset_of!(c::de_service_value, port_count),
        ports.len() as u32,
    );
    let counts_off = offset_of!(c::de_service_value, endpoint_count);
    for (family, levels) in counts_of(service).iter().enumerate() {
        for (priority, count) in levels.iter().enumerate() {
            b.u32(
                counts_off + (family * MAX_PRIORITIES + priority) * size_of::<u32>(),
                *count,
            );
        }
    }
    let ports_off = offset_of!(c::de_service_value, service_port);
    for (i, port) in ports.iter().enumerate() {
        b.u16(ports_off + i * size_of::<u16>(), *port);
    }
    waypoint(
        &mut b,
        offset_of!(c::de_service_value, waypoint),
        service.waypoint,
    );
    b.bytes(
        offset_of!(c::de_service_value, owner),
        &owner_tag(&service.name),
    );
    b.0
}

pub fn decode_service_value(b: &[u8]) -> Option<ServiceValue> {
    if b.len() < SERVICE_VALUE_SIZE {
        return None;
    }
    let port_count =
        (rd_u32(b, offset_of!(c::de_service_value, port_count))? as usize).min(MAX_PORTS);
    let ports_off = offset_of!(c::de_service_value, service_port);
    let ports = (0..port_count)
        .map(|i| rd_u16(b, ports_off + i * size_of::<u16>()))
        .collect::<Option<Vec<u16>>>()?;
    let counts_off = offset_of!(c::de_service_value, endpoint_count);
    let mut counts = Counts::default();
    for (family, levels) in counts.iter_mut().enumerate() {
        for (priority, count) in levels.iter_mut().enumerate() {
            *count = rd_u32(
                b,
                counts_off + (family * MAX_PRIORITIES + priority) * size_of::<u32>(),
            )?;
        }
    }
    Some(ServiceValue {
        policy: rd_u32(b, offset_of!(c::de_service_value, policy))?,
        slot: u8::try_from(rd_u32(b, offset_of!(c::de_service_value, slot))?).ok()?,
        ports,
        counts,
        waypoint: decode_waypoint(b, offset_of!(c::de_service_value, waypoint))?,
        owner: rd_16(b, offset_of!(c::de_service_value, owner))?,
    })
}

/// The name of an `enum de_lb_policy` value.
pub fn policy_name(policy: u32) -> String {
    [
        LbPolicy::Random,
        LbPolicy::Failover,
        LbPolicy::Strict,
        LbPolicy::Passthrough,
    ]
    .into_iter()
    .find(|p| p.kernel_value() == policy)
    .and_then(|p| serde_json::to_value(p).ok())
    .and_then(|v| v.as_str().map(str::to_string))
    .unwrap_or_else(|| format!("UNKNOWN({policy})"))
}

pub fn endpoint_key(key: &EndpointKey) -> [u8; ENDPOINT_KEY_SIZE] {
    let mut b = Bytes::new(ENDPOINT_KEY_SIZE);
    b.u32(offset_of!(c::de_endpoint_key, service_id), key.service);
    b.u8(offset_of!(c::de_endpoint_key, slot), key.slot);
    b.u8(offset_of!(c::de_endpoint_key, family), key.family);
    b.u8(offset_of!(c::de_endpoint_key, priority), key.priority);
    b.u32(offset_of!(c::de_endpoint_key, index), key.index);
    let mut out = [0; ENDPOINT_KEY_SIZE];
    out.copy_from_slice(&b.0);
    out
}

pub fn decode_endpoint_key(b: &[u8]) -> Option<EndpointKey> {
    Some(EndpointKey {
        service: rd_u32(b, offset_of!(c::de_endpoint_key, service_id))?,
        slot: *b.get(offset_of!(c::de_endpoint_key, slot))?,
        family: *b.get(offset_of!(c::de_endpoint_key, family))?,
        priority: *b.get(offset_of!(c::de_endpoint_key, priority))?,
        index: rd_u32(b, offset_of!(c::de_endpoint_key, index))?,
    })
}

pub fn endpoint_value(endpoint: &EndpointRecord) -> Vec<u8> {
    let mut b = Bytes::new(ENDPOINT_VALUE_SIZE);
    b.u32(
        offset_of!(c::de_endpoint_value, backend_id),
        endpoint.backend,
    );
    let off = offset_of!(c::de_endpoint_value, target_port);
    for (i, port) in endpoint.target_ports.iter().take(MAX_PORTS).enumerate() {
        b.u16(off + i * size_of::<u16>(), *port);
    }
    b.0
}

/// (backend id, target port per service port) of an endpoint entry.
pub fn decode_endpoint_value(b: &[u8]) -> Option<(u32, [u16; MAX_PORTS])> {
    let off = offset_of!(c::de_endpoint_value, target_port);
    let mut ports = [0u16; MAX_PORTS];
    for (i, port) in ports.iter_mut().enumerate() {
        *port = rd_u16(b, off + i * size_of::<u16>())?;
    }
    Some((
        rd_u32(b, offset_of!(c::de_endpoint_value, backend_id))?,
        ports,
    ))
}

pub fn backend_value(backend: &BackendRecord) -> Vec<u8> {
    let mut b = Bytes::new(BACKEND_VALUE_SIZE);
    if let Some(v4) = backend.v4 {
        b.bytes(offset_of!(c::de_backend_value, addr4), &v4.octets());
        b.u8(offset_of!(c::de_backend_value, has_v4), 1);
    }
    if let Some(v6) = backend.v6 {
        b.bytes(offset_of!(c::de_backend_value, addr6), &v6.octets());
        b.u8(offset_of!(c::de_backend_value, has_v6), 1);
    }
    waypoint(
        &mut b,
        offset_of!(c::de_backend_value, waypoint),
        backend.waypoint,
    );
    b.bytes(
        offset_of!(c::de_backend_value, owner),
        &owner_tag(&backend.name),
    );
    b.0
}

pub fn decode_backend_value(b: &[u8]) -> Option<BackendValue> {
    let v4_off = offset_of!(c::de_backend_value, addr4);
    let v4 = Ipv4Addr::from(<[u8; 4]>::try_from(b.get(v4_off..v4_off + 4)?).ok()?);
    let v6 = Ipv6Addr::from(rd_16(b, offset_of!(c::de_backend_value, addr6))?);
    let has = |field: usize| b.get(field).map(|v| *v != 0);
    Some(BackendValue {
        v4: has(offset_of!(c::de_backend_value, has_v4))?.then_some(v4),
        v6: has(offset_of!(c::de_backend_value, has_v6))?.then_some(v6),
        waypoint: decode_waypoint(b, offset_of!(c::de_backend_value, waypoint))?,
        owner: rd_16(b, offset_of!(c::de_backend_value, owner))?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn service(ports: Vec<u16>, v4: Vec<Vec<EndpointRecord>>) -> ServiceRecord {
        ServiceRecord {
            name: "ns/svc".into(),
            policy: LbPolicy::Failover,
            ports,
            waypoint: None,
            endpoints: [v4, vec![]],
        }
    }

    #[test]
    fn record_sizes_match_the_c_layout() {
        // The sizes include/dual_engine.h implies on x86-64 and BPF alike.
        assert_eq!(FRONTEND_KEY_SIZE, 16);
        assert_eq!(FRONTEND_VALUE_SIZE, 8);
        assert_eq!(size_of::<c::de_waypoint>(), 20);
        assert_eq!(
            SERVICE_VALUE_SIZE,
            16 + 4 * FAMILIES * MAX_PRIORITIES + 2 * MAX_PORTS + 20 + OWNER_LEN
        );
        assert_eq!(ENDPOINT_KEY_SIZE, 12);
        assert_eq!(offset_of!(c::de_endpoint_key, index), 8);
        assert_eq!(ENDPOINT_VALUE_SIZE, 4 + 2 * MAX_PORTS);
        assert_eq!(BACKEND_VALUE_SIZE, 4 + 16 + 4 + 20 + OWNER_LEN);
        assert_eq!(size_of::<c::de_sock_state>(), 32);
    }

    #[test]
    fn frontend_keys_are_v4_mapped_in_network_order() {
        let key = frontend_key(&frontend_addr("10.96.0.1".parse().unwrap()));
        assert_eq!(
            key,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 1]
        );
        assert_eq!(
            frontend_from(&key).map(unmap),
            Some("10.96.0.1".parse().unwrap())
        );
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(frontend_key(&v6)[0..2], [0xfd, 0x00]);
    }

    #[test]
    fn frontend_values_carry_kind_and_id() {
        let b = frontend_value(FrontendTarget::Workload(7));
        assert_eq!(b, [2, 0, 0, 0, 7, 0, 0, 0].map(u8::to_le).to_vec());
        assert_eq!(decode_frontend_value(&b), Some(FrontendTarget::Workload(7)));
        let b = frontend_value(FrontendTarget::Service(0x01020304));
        assert_eq!(
            decode_frontend_value(&b),
            Some(FrontendTarget::Service(0x01020304))
        );
    }

    #[test]
    fn service_values_hold_host_order_ports_and_counts_per_family_and_priority() {
        let ep = |backend| EndpointRecord {
            backend,
            target_ports: [8080, 0].into_iter().collect(),
        };
        let svc = service(vec![80, 443], vec![vec![ep(1), ep(2)], vec![], vec![ep(3)]]);
        let b = service_value(&svc, 1);
        let ports = offset_of!(c::de_service_value, service_port);
        // Host byte order: 80 = 0x0050 is [0x50, 0x00] on little-endian.
        assert_eq!(b[ports..ports + 2], 80u16.to_ne_bytes());
        let counts = offset_of!(c::de_service_value, endpoint_count);
        assert_eq!(rd_u32(&b, counts), Some(2));
        assert_eq!(rd_u32(&b, counts + 2 * 4), Some(1));
        let decoded = decode_service_value(&b).unwrap();
        assert_eq!(decoded.slot, 1);
        assert_eq!(decoded.ports, vec![80, 443]);
        assert_eq!(decoded.counts[0][..3], [2, 0, 1]);
        assert_eq!(decoded.counts[1], [0; MAX_PRIORITIES]);
        assert_eq!(policy_name(decoded.policy), "FAILOVER");
        assert_eq!(decoded.waypoint, None);
    }

    #[test]
    fn waypoints_round_trip_in_mapped_form() {
        let mut svc = service(vec![80], vec![]);
        svc.waypoint = Some("10.0.0.9:15008".parse().unwrap());
        let b = service_value(&svc, 0);
        let off = offset_of!(c::de_service_value, waypoint);
        assert_eq!(b[off + 10..off + 16], [0xff, 0xff, 10, 0, 0, 9]);
        assert_eq!(decode_service_value(&b).unwrap().waypoint, svc.waypoint);
    }

    #[test]
    fn endpoint_keys_and_values_round_trip() {
        let key = EndpointKey {
            service: 42,
            slot: 1,
            family: 1,
            priority: 3,
            index: 9,
        };
        let b = endpoint_key(&key);
        assert_eq!(b[4..8], [1, 1, 3, 0]);
        assert_eq!(decode_endpoint_key(&b), Some(key));
        let v = endpoint_value(&EndpointRecord {
            backend: 5,
            target_ports: [9090, 0, 7].into_iter().collect(),
        });
        let (backend, ports) = decode_endpoint_value(&v).unwrap();
        assert_eq!(backend, 5);
        assert_eq!(ports[..4], [9090, 0, 7, 0]);
    }

    #[test]
    fn backend_values_flag_each_family() {
        let b = backend_value(&BackendRecord {
            name: "w".into(),
            v4: Some("10.0.0.1".parse().unwrap()),
            v6: None,
            waypoint: None,
        });
        assert_eq!(b[0..4], [10, 0, 0, 1]);
        let decoded = decode_backend_value(&b).unwrap();
        assert_eq!(decoded.v4, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(decoded.v6, None);
        assert_eq!(decoded.owner, owner_tag("w"));
    }

    const HEADER: &str = include_str!("../../include/dual_engine.h");

    /// `#define NAME VALUE` of the header: a number or `(1u << N)`.
    fn define(name: &str) -> usize {
        let value = HEADER
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} is not defined in dual_engine.h"))
            .trim();
        match value
            .strip_prefix("(1u << ")
            .and_then(|v| v.strip_suffix(')'))
        {
            Some(shift) => 1 << shift.parse::<usize>().unwrap(),
            None => value
                .parse()
                .unwrap_or_else(|e| panic!("{name} = {value:?}: {e}")),
        }
    }

    /// `(NAME, value)` of every member of `enum NAME { ... }`, in order.
    fn enum_members(name: &str) -> Vec<(String, u32)> {
        let body = HEADER
            .split(&format!("enum {name} {{"))
            .nth(1)
            .and_then(|rest| rest.split("};").next())
            .unwrap_or_else(|| panic!("enum {name} is not in dual_engine.h"));
        body.lines()
            .filter_map(|l| {
                let (member, value) = l.split("/*").next()?.split_once('=')?;
                let value = value.trim().trim_end_matches(',').parse().ok()?;
                Some((member.trim().to_string(), value))
            })
            .collect()
    }

    #[test]
    fn constants_and_enums_match_the_header() {
        assert_eq!(define("DE_MAX_PORTS"), MAX_PORTS);
        assert_eq!(define("DE_MAX_PRIORITIES"), MAX_PRIORITIES);
        assert_eq!(
            define("DE_MAX_ENDPOINTS_PER_PRIORITY"),
            DE_MAX_ENDPOINTS_PER_PRIORITY
        );
        assert_eq!(define("DE_OWNER_LEN"), OWNER_LEN);
        let family = enum_members("de_family");
        assert_eq!(
            family.last(),
            Some(&("DE_FAMILY_COUNT".into(), FAMILIES as u32))
        );
        assert_eq!(
            enum_members("de_frontend_kind"),
            [
                ("DE_FRONTEND_SERVICE".into(), DE_FRONTEND_SERVICE),
                ("DE_FRONTEND_WORKLOAD".into(), DE_FRONTEND_WORKLOAD)
            ]
        );
        let policies: Vec<u32> = [
            LbPolicy::Random,
            LbPolicy::Failover,
            LbPolicy::Strict,
            LbPolicy::Passthrough,
        ]
        .iter()
        .map(|p| p.kernel_value())
        .collect();
        let header: Vec<u32> = enum_members("de_lb_policy").iter().map(|m| m.1).collect();
        assert_eq!(header, policies);
        // Counter names in index order: DE_CNT_<NAME> for each, then the count.
        let counters = enum_members("de_counter");
        let (count, members) = counters.split_last().unwrap();
        assert_eq!(count, &("DE_CNT_COUNT".into(), COUNTER_NAMES.len() as u32));
        for (i, (member, value)) in members.iter().enumerate() {
            assert_eq!(*value as usize, i, "{member}");
            assert_eq!(
                member
                    .strip_prefix("DE_CNT_")
                    .map(str::to_lowercase)
                    .as_deref(),
                Some(COUNTER_NAMES[i]),
                "{member}"
            );
        }
    }

    #[test]
    fn records_carry_the_owner_tag_of_their_key() {
        let b = service_value(&service(vec![80], vec![]), 0);
        assert_eq!(decode_service_value(&b).unwrap().owner, owner_tag("ns/svc"));
        // SHA-256("ns/svc"), first 16 bytes: the tag must not change between
        // builds, or a restarted daemon would not recognise its ids.
        assert_eq!(
            owner_tag("ns/svc")[..4],
            [0x76, 0x37, 0x26, 0x07],
            "{:02x?}",
            owner_tag("ns/svc")
        );
        assert_ne!(owner_tag("ns/svc"), owner_tag("ns/svc2"));
    }
}
