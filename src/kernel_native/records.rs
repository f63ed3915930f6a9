//! The byte layout of kernel-native map entries: a compiled plan in, the keys
//! and values of `include/kernel_native.h` out (and back, for the bpf dump).
//!
//! Every offset comes from the skeleton-generated types (`bpf::kn_skel::types`),
//! which libbpf-cargo derives from the object's BTF, so this file cannot drift
//! from the C definitions.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::plan::{
    ChainMatch, CompiledCluster, CompiledListener, FilterAction, LbPolicy, ListenerKey,
    PriorityLevel,
};
use crate::bpf::kn_skel::types as c;

// Constants of include/kernel_native.h (enums are not in BTF-generated Rust).
pub const KMESH_NAME_LEN: usize = 128;
pub const KN_MAX_PRIORITIES: u32 = 8;
pub const KN_NONE: u32 = u32::MAX;
const KN_FAMILY_V4: u8 = 0;
const KN_FAMILY_V6: u8 = 1;
const KN_FAMILY_ANY: u8 = 2;
const KN_LREC_HEADER: u32 = 1;
const KN_LREC_CHAIN_MATCH: u32 = 2;
const KN_LREC_FILTER: u32 = 3;
const KN_LREC_WEIGHTED_CLUSTER: u32 = 4;
const KN_FILTER_TCP_PROXY: u32 = 1;
const KN_FILTER_HTTP: u32 = 2;
const KN_FILTER_PASSTHROUGH: u32 = 3;
const KN_LB_ROUND_ROBIN: u32 = 0;
const KN_LB_RANDOM: u32 = 1;
const KN_LB_LEAST_REQUEST: u32 = 2;
const KN_LB_MAGLEV: u32 = 3;
const KN_LB_RING_HASH: u32 = 4;
const KN_CREC_HEADER: u32 = 1;
const KN_CREC_LEVEL: u32 = 2;
const KN_CREC_ENDPOINT: u32 = 3;
const KN_CREC_HASH_SLOTS: u32 = 4;
use crate::kernel_native::limits::KN_HASH_SLOTS_PER_RECORD;
pub const KN_CLUSTER_FIRST_ENDPOINT: u32 = 1 + 2 * KN_MAX_PRIORITIES;
pub const KN_STAT_NAMES: [&str; 12] = [
    "connect_seen",
    "no_listener",
    "no_chain",
    "http_untouched",
    "passthrough",
    "no_cluster",
    "no_endpoint",
    "redirected",
    "tail_call_failed",
    "cx_overflow",
    "rate_limited",
    "conn_events_dropped",
];

pub const LISTENER_RECORD_SIZE: usize = size_of::<c::kn_listener_record>();
pub const CLUSTER_RECORD_SIZE: usize = size_of::<c::kn_cluster_record>();
const LBODY: usize = offset_of!(c::kn_listener_record, __anon_kn_listener_record_1);
const CBODY: usize = offset_of!(c::kn_cluster_record, __anon_kn_cluster_record_1);

fn level_index(family: u8, level: u32) -> u32 {
    1 + u32::from(family) * KN_MAX_PRIORITIES + level
}

/// A record being laid out: zeroed bytes with typed writes at offsets.
struct Record(Vec<u8>);

impl Record {
    fn new(size: usize, kind: u32) -> Self {
        let mut r = Record(vec![0; size]);
        r.u32(0, kind);
        r
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_ne_bytes());
    }
    fn u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }
    fn bytes(&mut self, off: usize, v: &[u8]) {
        self.0[off..off + v.len()].copy_from_slice(v);
    }
}

fn rd_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn rd_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn rd_u16(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn family_of(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => KN_FAMILY_V4,
        IpAddr::V6(_) => KN_FAMILY_V6,
    }
}

/// 16 address bytes as the kernel stores them (IPv4 in the first four).
fn addr_bytes(addr: &IpAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn addr_from(family: u8, b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    if family == KN_FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// A name as the fixed-size, NUL-padded key (the compiler has checked the length).
pub fn name_key(name: &str) -> Vec<u8> {
    let mut key = vec![0u8; KMESH_NAME_LEN];
    let n = name.len().min(KMESH_NAME_LEN - 1);
    key[..n].copy_from_slice(&name.as_bytes()[..n]);
    key
}

pub fn name_from(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub fn listener_key(key: &ListenerKey) -> Vec<u8> {
    let mut r = Record(vec![0; size_of::<c::kn_listener_key>()]);
    r.u8(offset_of!(c::kn_listener_key, family), family_of(&key.addr));
    r.u16(offset_of!(c::kn_listener_key, port), key.port);
    r.bytes(offset_of!(c::kn_listener_key, addr), &addr_bytes(&key.addr));
    r.0
}

pub fn listener_key_from(b: &[u8]) -> Option<ListenerKey> {
    if b.len() != size_of::<c::kn_listener_key>() {
        return None;
    }
    let family = b[offset_of!(c::kn_listener_key, family)];
    Some(ListenerKey {
        addr: addr_from(family, &b[offset_of!(c::kn_listener_key, addr)..]),
        port: rd_u16(b, offset_of!(c::kn_listener_key, port)),
    })
}

/// The records of one listener's inner map, index by index.
pub fn listener_records(l: &CompiledListener) -> Vec<(u32, Vec<u8>)> {
    // Equal actions share one filter record.
    fn filter_index<'a>(
        action: &'a Option<FilterAction>,
        filters: &mut Vec<&'a FilterAction>,
    ) -> Option<usize> {
        let action = action.as_ref()?;
        Some(match filters.iter().position(|f| *f == action) {
            Some(i) => i,
            None => {
                filters.push(action);
                filters.len() - 1
            }
        })
    }
    let mut filters: Vec<&FilterAction> = Vec::new();
    // Filters are laid out after the header and the chain matches; weighted
    // entries after the filters.
    let match_refs: Vec<Option<usize>> = l
        .matches
        .iter()
        .map(|m| filter_index(&m.action, &mut filters))
        .collect();
    let default_ref = filter_index(&l.default_action, &mut filters);
    let first_filter = 1 + l.matches.len() as u32;
    let filter_at = |i: Option<usize>| i.map_or(KN_NONE, |i| first_filter + i as u32);

    let mut out = Vec::new();
    let mut header = Record::new(LISTENER_RECORD_SIZE, KN_LREC_HEADER);
    header.u32(
        LBODY + offset_of!(c::kn_listener_header, match_count),
        l.matches.len() as u32,
    );
    header.u32(
        LBODY + offset_of!(c::kn_listener_header, default_filter),
        filter_at(default_ref),
    );
    out.push((0, header.0));

    for (i, (m, fref)) in l.matches.iter().zip(&match_refs).enumerate() {
        out.push((1 + i as u32, chain_match_record(m, filter_at(*fref))));
    }
    let mut next_weighted = first_filter + filters.len() as u32;
    for (i, action) in filters.iter().enumerate() {
        let mut f = Record::new(LISTENER_RECORD_SIZE, KN_LREC_FILTER);
        let at = |field: usize| LBODY + field;
        let name_off = at(offset_of!(c::kn_filter, cluster));
        let mut action: &FilterAction = action;
        if let FilterAction::RateLimited { limit, then } = action {
            f.u32(
                at(offset_of!(c::kn_filter, rl_max_tokens)),
                limit.max_tokens,
            );
            f.u32(
                at(offset_of!(c::kn_filter, rl_tokens_per_fill)),
                limit.tokens_per_fill,
            );
            f.u64(
                at(offset_of!(c::kn_filter, rl_fill_interval_ns)),
                limit.fill_interval_ns,
            );
            action = then.terminal();
        }
        match action {
            FilterAction::TcpProxy { cluster } => {
                f.u32(at(offset_of!(c::kn_filter, kind)), KN_FILTER_TCP_PROXY);
                f.bytes(name_off, &name_key(cluster));
            }
            FilterAction::Http { route_config } => {
                f.u32(at(offset_of!(c::kn_filter, kind)), KN_FILTER_HTTP);
                f.bytes(name_off, &name_key(route_config));
            }
            FilterAction::Passthrough | FilterAction::RateLimited { .. } => {
                f.u32(at(offset_of!(c::kn_filter, kind)), KN_FILTER_PASSTHROUGH)
            }
            FilterAction::WeightedClusters { clusters } => {
                f.u32(at(offset_of!(c::kn_filter, kind)), KN_FILTER_TCP_PROXY);
                f.u32(at(offset_of!(c::kn_filter, weighted_first)), next_weighted);
                f.u32(
                    at(offset_of!(c::kn_filter, weighted_count)),
                    clusters.len() as u32,
                );
                let mut cumulative = 0u32;
                for (name, weight) in clusters {
                    cumulative = cumulative.saturating_add(*weight);
                    let mut w = Record::new(LISTENER_RECORD_SIZE, KN_LREC_WEIGHTED_CLUSTER);
                    w.u32(
                        LBODY + offset_of!(c::kn_weighted_cluster, cumulative_weight),
                        cumulative,
                    );
                    w.bytes(
                        LBODY + offset_of!(c::kn_weighted_cluster, cluster),
                        &name_key(name),
                    );
                    out.push((next_weighted, w.0));
                    next_weighted += 1;
                }
                f.u32(at(offset_of!(c::kn_filter, total_weight)), cumulative);
            }
        }
        out.push((first_filter + i as u32, f.0));
    }
    out
}

fn chain_match_record(m: &ChainMatch, filter: u32) -> Vec<u8> {
    let mut r = Record::new(LISTENER_RECORD_SIZE, KN_LREC_CHAIN_MATCH);
    let at = |field: usize| LBODY + field;
    let (family, addr) = match &m.prefix {
        Some(p) => (family_of(p), addr_bytes(p)),
        None => (KN_FAMILY_ANY, [0; 16]),
    };
    r.u8(at(offset_of!(c::kn_chain_match, family)), family);
    r.u8(at(offset_of!(c::kn_chain_match, prefix_len)), m.prefix_len);
    r.u32(at(offset_of!(c::kn_chain_match, filter)), filter);
    r.bytes(at(offset_of!(c::kn_chain_match, addr)), &addr);
    r.0
}

/// The records of one cluster's inner map, index by index.
pub fn cluster_records(cl: &CompiledCluster) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut header = Record::new(CLUSTER_RECORD_SIZE, KN_CREC_HEADER);
    let h = |field: usize| CBODY + field;
    let lb = match cl.lb_policy {
        LbPolicy::RoundRobin => KN_LB_ROUND_ROBIN,
        LbPolicy::Random => KN_LB_RANDOM,
        LbPolicy::LeastRequest { choice_count } => {
            header.u8(
                h(offset_of!(c::kn_cluster_header, choice_count)),
                choice_count.min(crate::kernel_native::limits::KN_MAX_CHOICES) as u8,
            );
            KN_LB_LEAST_REQUEST
        }
        LbPolicy::Maglev { .. } => KN_LB_MAGLEV,
        LbPolicy::RingHash { .. } => KN_LB_RING_HASH,
    };
    header.u32(h(offset_of!(c::kn_cluster_header, lb_policy)), lb);
    if let Some(cb) = &cl.circuit_breakers {
        header.u32(
            h(offset_of!(c::kn_cluster_header, max_connections)),
            cb.max_connections,
        );
    }
    if let Some(od) = &cl.outlier_detection {
        header.u16(
            h(offset_of!(c::kn_cluster_header, od_failures)),
            od.consecutive_failures,
        );
        header.u8(
            h(offset_of!(c::kn_cluster_header, od_max_ejected)),
            od.max_ejected,
        );
        header.u32(
            h(offset_of!(c::kn_cluster_header, od_base_ejection_ms)),
            od.base_ejection_ms,
        );
    }
    let counts = h(offset_of!(c::kn_cluster_header, level_count));
    header.u8(counts, cl.levels_v4.len() as u8);
    header.u8(counts + 1, cl.levels_v6.len() as u8);
    header.u8(
        h(offset_of!(c::kn_cluster_header, passthrough)),
        u8::from(cl.passthrough),
    );
    out.push((0, header.0));

    let mut next = KN_CLUSTER_FIRST_ENDPOINT;
    // Lookup tables go after every endpoint: level by level, in this order.
    let mut tables: Vec<(usize, u32, &[u32])> = Vec::new();
    for (family, levels) in [(KN_FAMILY_V4, &cl.levels_v4), (KN_FAMILY_V6, &cl.levels_v6)] {
        for (l, level) in levels.iter().enumerate() {
            if let Some(t) = &level.hash_table {
                tables.push((out.len(), next, &t.slots));
            }
            out.push((level_index(family, l as u32), level_record(level, next)));
            let mut cumulative = 0u32;
            for ep in &level.endpoints {
                cumulative = cumulative.saturating_add(ep.weight);
                let mut r = Record::new(CLUSTER_RECORD_SIZE, KN_CREC_ENDPOINT);
                let e = |field: usize| CBODY + field;
                r.bytes(e(offset_of!(c::kn_endpoint, addr)), &addr_bytes(&ep.addr));
                r.u32(e(offset_of!(c::kn_endpoint, cumulative_weight)), cumulative);
                r.u16(e(offset_of!(c::kn_endpoint, port)), ep.port);
                r.u8(e(offset_of!(c::kn_endpoint, family)), family_of(&ep.addr));
                out.push((next, r.0));
                next += 1;
            }
        }
    }
    for (level_at, first_endpoint, slots) in tables {
        let lvl = &mut out[level_at].1;
        let at = |field: usize| CBODY + field;
        lvl[at(offset_of!(c::kn_priority_level, table_first))..][..4]
            .copy_from_slice(&next.to_ne_bytes());
        lvl[at(offset_of!(c::kn_priority_level, table_size))..][..4]
            .copy_from_slice(&(slots.len() as u32).to_ne_bytes());
        for chunk in slots.chunks(KN_HASH_SLOTS_PER_RECORD as usize) {
            let mut r = Record::new(CLUSTER_RECORD_SIZE, KN_CREC_HASH_SLOTS);
            for (i, pos) in chunk.iter().enumerate() {
                r.u32(CBODY + 4 * i, first_endpoint + pos);
            }
            out.push((next, r.0));
            next += 1;
        }
    }
    out
}

/// Lookup-table records of a cluster's inner map (for the capacity check).
pub fn hash_table_records(cl: &CompiledCluster) -> usize {
    cl.levels_v4
        .iter()
        .chain(&cl.levels_v6)
        .map(|l| {
            l.hash_table.as_ref().map_or(0, |t| {
                t.slots.len().div_ceil(KN_HASH_SLOTS_PER_RECORD as usize)
            })
        })
        .sum()
}

fn level_record(level: &PriorityLevel, first: u32) -> Vec<u8> {
    let mut r = Record::new(CLUSTER_RECORD_SIZE, KN_CREC_LEVEL);
    let at = |field: usize| CBODY + field;
    let total = level
        .endpoints
        .iter()
        .fold(0u32, |t, e| t.saturating_add(e.weight));
    r.u32(at(offset_of!(c::kn_priority_level, first)), first);
    r.u32(
        at(offset_of!(c::kn_priority_level, count)),
        level.endpoints.len() as u32,
    );
    r.u32(at(offset_of!(c::kn_priority_level, total_weight)), total);
    r.u32(
        at(offset_of!(c::kn_priority_level, priority)),
        level.priority,
    );
    r.0
}

/// One inner-map record decoded for `/debug/config_dump/bpf/kernel-native`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum DecodedRecord {
    ListenerHeader {
        match_count: u32,
        default_filter: Option<u32>,
    },
    ChainMatch {
        family: String,
        prefix: String,
        prefix_len: u8,
        filter: Option<u32>,
    },
    Filter {
        filter: String,
        name: String,
        weighted_first: u32,
        weighted_count: u32,
        total_weight: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        rate_limit: Option<DecodedRateLimit>,
    },
    WeightedCluster {
        cumulative_weight: u32,
        cluster: String,
    },
    ClusterHeader {
        lb_policy: String,
        rr_cursor: u32,
        levels_v4: u8,
        levels_v6: u8,
        passthrough: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        choice_count: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_connections: Option<u32>,
        /// Outlier detection: (consecutive failures, max ejected, base ejection ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        outlier_detection: Option<(u16, u8, u32)>,
    },
    Level {
        first: u32,
        count: u32,
        total_weight: u32,
        priority: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        table_first: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        table_size: Option<u32>,
    },
    /// One record of a lookup table: endpoint record indices.
    HashSlots {
        endpoints: Vec<u32>,
    },
    /// Consecutive lookup-table records, summarised for the dump.
    HashTable {
        records: u32,
        first_slots: Vec<u32>,
    },
    Endpoint {
        address: String,
        port: u16,
        cumulative_weight: u32,
    },
    Unknown {
        kind: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecodedRateLimit {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval_ns: u64,
}

fn opt(v: u32) -> Option<u32> {
    (v != KN_NONE).then_some(v)
}

pub fn decode_listener_record(b: &[u8]) -> DecodedRecord {
    if b.len() != LISTENER_RECORD_SIZE {
        return DecodedRecord::Unknown { kind: 0 };
    }
    let at = |field: usize| LBODY + field;
    match rd_u32(b, 0) {
        KN_LREC_HEADER => DecodedRecord::ListenerHeader {
            match_count: rd_u32(b, at(offset_of!(c::kn_listener_header, match_count))),
            default_filter: opt(rd_u32(
                b,
                at(offset_of!(c::kn_listener_header, default_filter)),
            )),
        },
        KN_LREC_CHAIN_MATCH => {
            let family = b[at(offset_of!(c::kn_chain_match, family))];
            let addr = &b[at(offset_of!(c::kn_chain_match, addr))..];
            DecodedRecord::ChainMatch {
                family: match family {
                    KN_FAMILY_V4 => "v4",
                    KN_FAMILY_V6 => "v6",
                    _ => "any",
                }
                .into(),
                prefix: if family == KN_FAMILY_ANY {
                    "*".into()
                } else {
                    addr_from(family, addr).to_string()
                },
                prefix_len: b[at(offset_of!(c::kn_chain_match, prefix_len))],
                filter: opt(rd_u32(b, at(offset_of!(c::kn_chain_match, filter)))),
            }
        }
        KN_LREC_FILTER => DecodedRecord::Filter {
            filter: match rd_u32(b, at(offset_of!(c::kn_filter, kind))) {
                KN_FILTER_TCP_PROXY => "tcp_proxy",
                KN_FILTER_HTTP => "http",
                KN_FILTER_PASSTHROUGH => "passthrough",
                _ => "unknown",
            }
            .into(),
            name: name_from(&b[at(offset_of!(c::kn_filter, cluster))..]),
            weighted_first: rd_u32(b, at(offset_of!(c::kn_filter, weighted_first))),
            weighted_count: rd_u32(b, at(offset_of!(c::kn_filter, weighted_count))),
            total_weight: rd_u32(b, at(offset_of!(c::kn_filter, total_weight))),
            rate_limit: match rd_u32(b, at(offset_of!(c::kn_filter, rl_max_tokens))) {
                0 => None,
                max_tokens => Some(DecodedRateLimit {
                    max_tokens,
                    tokens_per_fill: rd_u32(b, at(offset_of!(c::kn_filter, rl_tokens_per_fill))),
                    fill_interval_ns: rd_u64(b, at(offset_of!(c::kn_filter, rl_fill_interval_ns))),
                }),
            },
        },
        KN_LREC_WEIGHTED_CLUSTER => DecodedRecord::WeightedCluster {
            cumulative_weight: rd_u32(b, at(offset_of!(c::kn_weighted_cluster, cumulative_weight))),
            cluster: name_from(&b[at(offset_of!(c::kn_weighted_cluster, cluster))..]),
        },
        kind => DecodedRecord::Unknown { kind },
    }
}

pub fn decode_cluster_record(b: &[u8]) -> DecodedRecord {
    if b.len() != CLUSTER_RECORD_SIZE {
        return DecodedRecord::Unknown { kind: 0 };
    }
    let at = |field: usize| CBODY + field;
    match rd_u32(b, 0) {
        KN_CREC_HEADER => {
            let counts = at(offset_of!(c::kn_cluster_header, level_count));
            DecodedRecord::ClusterHeader {
                lb_policy: match rd_u32(b, at(offset_of!(c::kn_cluster_header, lb_policy))) {
                    KN_LB_ROUND_ROBIN => "ROUND_ROBIN",
                    KN_LB_RANDOM => "RANDOM",
                    KN_LB_LEAST_REQUEST => "LEAST_REQUEST",
                    KN_LB_MAGLEV => "MAGLEV",
                    KN_LB_RING_HASH => "RING_HASH",
                    _ => "unknown",
                }
                .into(),
                choice_count: match b[at(offset_of!(c::kn_cluster_header, choice_count))] {
                    0 => None,
                    n => Some(n),
                },
                max_connections: match rd_u32(
                    b,
                    at(offset_of!(c::kn_cluster_header, max_connections)),
                ) {
                    0 => None,
                    n => Some(n),
                },
                outlier_detection: match rd_u16(
                    b,
                    at(offset_of!(c::kn_cluster_header, od_failures)),
                ) {
                    0 => None,
                    n => Some((
                        n,
                        b[at(offset_of!(c::kn_cluster_header, od_max_ejected))],
                        rd_u32(b, at(offset_of!(c::kn_cluster_header, od_base_ejection_ms))),
                    )),
                },
                rr_cursor: rd_u32(b, at(offset_of!(c::kn_cluster_header, rr_cursor))),
                levels_v4: b[counts],
                levels_v6: b[counts + 1],
                passthrough: b[at(offset_of!(c::kn_cluster_header, passthrough))] != 0,
            }
        }
        KN_CREC_LEVEL => DecodedRecord::Level {
            first: rd_u32(b, at(offset_of!(c::kn_priority_level, first))),
            count: rd_u32(b, at(offset_of!(c::kn_priority_level, count))),
            total_weight: rd_u32(b, at(offset_of!(c::kn_priority_level, total_weight))),
            priority: rd_u32(b, at(offset_of!(c::kn_priority_level, priority))),
            table_first: match rd_u32(b, at(offset_of!(c::kn_priority_level, table_size))) {
                0 => None,
                _ => Some(rd_u32(b, at(offset_of!(c::kn_priority_level, table_first)))),
            },
            table_size: match rd_u32(b, at(offset_of!(c::kn_priority_level, table_size))) {
                0 => None,
                n => Some(n),
            },
        },
        KN_CREC_HASH_SLOTS => DecodedRecord::HashSlots {
            endpoints: (0..KN_HASH_SLOTS_PER_RECORD as usize)
                .map(|i| rd_u32(b, CBODY + 4 * i))
                .collect(),
        },
        KN_CREC_ENDPOINT => {
            let family = b[at(offset_of!(c::kn_endpoint, family))];
            DecodedRecord::Endpoint {
                address: addr_from(family, &b[at(offset_of!(c::kn_endpoint, addr))..]).to_string(),
                port: rd_u16(b, at(offset_of!(c::kn_endpoint, port))),
                cumulative_weight: rd_u32(b, at(offset_of!(c::kn_endpoint, cumulative_weight))),
            }
        }
        kind => DecodedRecord::Unknown { kind },
    }
}

/// Replace each run of consecutive lookup-table records with one summary
/// (its record count and first slots): a Maglev table is 16k records.
pub fn summarise_hash_tables(records: Vec<(u32, DecodedRecord)>) -> Vec<(u32, DecodedRecord)> {
    let shown = crate::kernel_native::plan::HASH_TABLE_SHOWN;
    let mut out: Vec<(u32, DecodedRecord)> = Vec::new();
    let mut last_index = u32::MAX;
    for (index, rec) in records {
        if let DecodedRecord::HashSlots { endpoints } = rec {
            if let Some((
                _,
                DecodedRecord::HashTable {
                    records,
                    first_slots,
                },
            )) = out.last_mut()
            {
                if last_index.wrapping_add(1) == index {
                    *records += 1;
                    let room = shown.saturating_sub(first_slots.len());
                    first_slots.extend(endpoints.into_iter().take(room));
                    last_index = index;
                    continue;
                }
            }
            let mut first_slots = endpoints;
            first_slots.truncate(shown);
            out.push((
                index,
                DecodedRecord::HashTable {
                    records: 1,
                    first_slots,
                },
            ));
            last_index = index;
        } else {
            out.push((index, rec));
        }
    }
    out
}

fn rd_opt_u64(b: &[u8], off: usize) -> Option<u64> {
    let mut a = [0u8; 8];
    a.copy_from_slice(b.get(off..off + 8)?);
    Some(u64::from_ne_bytes(a))
}

/// Decode a `kn_cluster_conns` value: (active, total, cx_overflow).
pub fn decode_cluster_conns(b: &[u8]) -> Option<(u64, u64, u64)> {
    Some((
        rd_opt_u64(b, offset_of!(c::kn_cluster_conns, active))?,
        rd_opt_u64(b, offset_of!(c::kn_cluster_conns, total))?,
        rd_opt_u64(b, offset_of!(c::kn_cluster_conns, cx_overflow))?,
    ))
}

/// Decode a `kn_netns_cluster_key`: (netns cookie, cluster).
pub fn decode_netns_cluster_key(b: &[u8]) -> Option<(u64, String)> {
    let cookie = rd_opt_u64(b, offset_of!(c::kn_netns_cluster_key, netns_cookie))?;
    let name = b.get(offset_of!(c::kn_netns_cluster_key, cluster)..)?;
    Some((cookie, name_from(name)))
}

/// Decode a `kn_netns_conns` value: (active, overflow).
pub fn decode_netns_conns(b: &[u8]) -> Option<(u64, u64)> {
    Some((
        rd_opt_u64(b, offset_of!(c::kn_netns_conns, active))?,
        rd_opt_u64(b, offset_of!(c::kn_netns_conns, overflow))?,
    ))
}

/// Decode a `kn_endpoint_key`: (cluster, address, port).
pub fn decode_endpoint_key(b: &[u8]) -> Option<(String, IpAddr, u16)> {
    if b.len() != size_of::<c::kn_endpoint_key>() {
        return None;
    }
    let family = b[offset_of!(c::kn_endpoint_key, family)];
    Some((
        name_from(&b[offset_of!(c::kn_endpoint_key, cluster)..][..KMESH_NAME_LEN]),
        addr_from(family, &b[offset_of!(c::kn_endpoint_key, addr)..]),
        rd_u16(b, offset_of!(c::kn_endpoint_key, port)),
    ))
}

/// The `kn_endpoint_key` the kernel builds for an endpoint of `cluster`
/// (`kn_probe_set`): the key of its connection counter and outlier state.
pub fn endpoint_key(cluster: &str, addr: &IpAddr, port: u16) -> Vec<u8> {
    let mut r = Record(vec![0; size_of::<c::kn_endpoint_key>()]);
    r.bytes(offset_of!(c::kn_endpoint_key, cluster), &name_key(cluster));
    r.bytes(offset_of!(c::kn_endpoint_key, addr), &addr_bytes(addr));
    r.u16(offset_of!(c::kn_endpoint_key, port), port);
    r.u8(offset_of!(c::kn_endpoint_key, family), family_of(addr));
    r.0
}

/// Decode a `kn_endpoint_conns` value: (active, total).
pub fn decode_endpoint_conns(b: &[u8]) -> Option<(u64, u64)> {
    Some((
        rd_opt_u64(b, offset_of!(c::kn_endpoint_conns, active))?,
        rd_opt_u64(b, offset_of!(c::kn_endpoint_conns, total))?,
    ))
}

/// Decode a `kn_outlier` value: (ejected_until_ns, failures, times_ejected, ejections).
pub fn decode_outlier(b: &[u8]) -> Option<(u64, u32, u32, u64)> {
    let failures = offset_of!(c::kn_outlier, failures);
    let times = offset_of!(c::kn_outlier, times_ejected);
    Some((
        rd_opt_u64(b, offset_of!(c::kn_outlier, ejected_until_ns))?,
        rd_u32(b.get(failures..failures + 4)?, 0),
        rd_u32(b.get(times..times + 4)?, 0),
        rd_opt_u64(b, offset_of!(c::kn_outlier, ejections))?,
    ))
}

/// Decode a `kn_rl_key`: (netns cookie, listener, filter index).
pub fn decode_rl_key(b: &[u8]) -> Option<(u64, ListenerKey, u32)> {
    if b.len() != size_of::<c::kn_rl_key>() {
        return None;
    }
    let lk = offset_of!(c::kn_rl_key, listener);
    Some((
        rd_opt_u64(b, offset_of!(c::kn_rl_key, netns_cookie))?,
        listener_key_from(&b[lk..lk + size_of::<c::kn_listener_key>()])?,
        rd_u32(b, offset_of!(c::kn_rl_key, filter)),
    ))
}

/// Decode a `kn_rl_bucket` value: (tokens, limited).
pub fn decode_rl_bucket(b: &[u8]) -> Option<(u64, u64)> {
    Some((
        rd_opt_u64(b, offset_of!(c::kn_rl_bucket, tokens))?,
        rd_opt_u64(b, offset_of!(c::kn_rl_bucket, limited))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_native::plan::Endpoint;

    #[test]
    fn record_sizes_match_the_c_layout() {
        // The C header documents these; the BTF-derived types must agree.
        assert_eq!(size_of::<c::kn_listener_key>(), 20);
        assert_eq!(size_of::<c::kn_name>(), KMESH_NAME_LEN);
        assert_eq!(size_of::<c::kn_endpoint>(), 24);
        assert_eq!(CLUSTER_RECORD_SIZE, 32);
        assert_eq!(LISTENER_RECORD_SIZE, 8 + 16 + KMESH_NAME_LEN + 16);
    }

    #[test]
    fn endpoint_keys_round_trip() {
        for (addr, port) in [("10.0.0.1", 80), ("fd00::2", 9300)] {
            let addr: IpAddr = addr.parse().unwrap();
            let key = endpoint_key("outbound|80||svc", &addr, port);
            assert_eq!(key.len(), size_of::<c::kn_endpoint_key>());
            assert_eq!(
                decode_endpoint_key(&key),
                Some(("outbound|80||svc".to_string(), addr, port))
            );
        }
    }

    #[test]
    fn listener_records_round_trip() {
        let l = CompiledListener {
            name: "l".into(),
            matches: vec![
                ChainMatch {
                    prefix: Some("10.0.0.0".parse().unwrap()),
                    prefix_len: 8,
                    chain_name: "a".into(),
                    action: Some(FilterAction::WeightedClusters {
                        clusters: vec![("c1".into(), 80), ("c2".into(), 20)],
                    }),
                },
                ChainMatch {
                    prefix: None,
                    prefix_len: 0,
                    chain_name: "b".into(),
                    action: None,
                },
            ],
            default_action: Some(FilterAction::TcpProxy {
                cluster: "c3".into(),
            }),
            ignored: vec![],
            inline_route_configs: Default::default(),
        };
        let recs = listener_records(&l);
        let decoded: Vec<_> = recs
            .iter()
            .map(|(i, b)| (*i, decode_listener_record(b)))
            .collect();
        assert_eq!(
            decoded[0],
            (
                0,
                DecodedRecord::ListenerHeader {
                    match_count: 2,
                    default_filter: Some(4)
                }
            )
        );
        assert_eq!(
            decoded[1].1,
            DecodedRecord::ChainMatch {
                family: "v4".into(),
                prefix: "10.0.0.0".into(),
                prefix_len: 8,
                filter: Some(3)
            }
        );
        assert_eq!(
            decoded[2].1,
            DecodedRecord::ChainMatch {
                family: "any".into(),
                prefix: "*".into(),
                prefix_len: 0,
                filter: None
            }
        );
        assert!(decoded.contains(&(
            5,
            DecodedRecord::WeightedCluster {
                cumulative_weight: 80,
                cluster: "c1".into()
            }
        )));
        assert!(decoded.contains(&(
            6,
            DecodedRecord::WeightedCluster {
                cumulative_weight: 100,
                cluster: "c2".into()
            }
        )));
        assert!(decoded.contains(&(
            4,
            DecodedRecord::Filter {
                filter: "tcp_proxy".into(),
                name: "c3".into(),
                weighted_first: 0,
                weighted_count: 0,
                total_weight: 0,
                rate_limit: None
            }
        )));
    }

    #[test]
    fn cluster_records_lay_levels_and_cumulative_weights() {
        let ep = |a: &str, w| Endpoint {
            addr: a.parse().unwrap(),
            port: 80,
            weight: w,
        };
        let cl = CompiledCluster {
            lb_policy: LbPolicy::Random,
            levels_v4: vec![
                PriorityLevel {
                    priority: 0,
                    endpoints: vec![ep("127.0.0.2", 1), ep("127.0.0.3", 3)],
                    hash_table: None,
                },
                PriorityLevel {
                    priority: 2,
                    endpoints: vec![ep("127.0.0.4", 1)],
                    hash_table: None,
                },
            ],
            levels_v6: vec![PriorityLevel {
                priority: 0,
                endpoints: vec![ep("fd00::2", 5)],
                hash_table: None,
            }],
            passthrough: false,
            circuit_breakers: None,
            outlier_detection: None,
            ignored: vec![],
        };
        let recs: std::collections::BTreeMap<u32, DecodedRecord> = cluster_records(&cl)
            .iter()
            .map(|(i, b)| (*i, decode_cluster_record(b)))
            .collect();
        assert_eq!(
            recs[&level_index(KN_FAMILY_V4, 0)],
            DecodedRecord::Level {
                first: 17,
                count: 2,
                total_weight: 4,
                priority: 0,
                table_first: None,
                table_size: None,
            }
        );
        assert_eq!(
            recs[&level_index(KN_FAMILY_V4, 1)],
            DecodedRecord::Level {
                first: 19,
                count: 1,
                total_weight: 1,
                priority: 2,
                table_first: None,
                table_size: None,
            }
        );
        assert_eq!(
            recs[&18],
            DecodedRecord::Endpoint {
                address: "127.0.0.3".into(),
                port: 80,
                cumulative_weight: 4
            }
        );
        assert_eq!(
            recs[&20],
            DecodedRecord::Endpoint {
                address: "fd00::2".into(),
                port: 80,
                cumulative_weight: 5
            }
        );
    }
}
