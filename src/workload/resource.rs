//! `istio.workload.Address` resources decoded and validated into the shapes
//! the compiler works with. Everything the kernel cannot take (an address of
//! the wrong length, a port over 65535, an unknown enum value) is an error
//! naming the resource and the field, so the push can be NACKed precisely.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use prost::Message;
use serde::Serialize;
use smallvec::SmallVec;

use super::key::Key;
use super::plan::MAX_PORTS;
use super::proto::workload::{
    address, gateway_address, load_balancing, Address, GatewayAddress, LoadBalancing, Port,
    Service, Workload, WorkloadStatus,
};
use super::proto::ADDRESS_TYPE_URL;

/// Copies of a workload an endpoint list holds at most for its `capacity`
/// (the pick is uniform, so copies are weight). Bounds map usage.
pub const MAX_CAPACITY_COPIES: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct ResourceError {
    /// `workload <uid>`, `service <namespace/hostname>` or the xDS name.
    pub resource: String,
    pub field: String,
    pub message: String,
}

/// One `service_port -> target_port` pair (target 0 = same as the service port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortPair {
    pub service_port: u16,
    pub target_port: u16,
}

/// Locality preference scopes, in the order the service lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbMode {
    /// No preference given: every healthy endpoint alike.
    Standard,
    Failover,
    Strict,
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadBalancingSpec {
    pub mode: LbMode,
    pub routing_preference: Vec<Scope>,
    /// `health_policy: ALLOW_ALL`: unhealthy workloads are endpoints too.
    pub allow_unhealthy: bool,
}

/// Where a waypoint is: an address, or a service to look up by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaypointRef {
    Address(IpAddr),
    Service(Key),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    /// `namespace/hostname`: the xDS name and what workloads refer to.
    pub key: Key,
    pub addresses: Vec<IpAddr>,
    /// The first [`MAX_PORTS`] ports; the rest are in `unrouted_ports`.
    pub ports: Vec<PortPair>,
    /// Ports beyond what the kernel record holds: left untouched (never
    /// misrouted) and shown in the dump.
    pub unrouted_ports: Vec<u16>,
    pub load_balancing: LoadBalancingSpec,
    pub waypoint: Option<WaypointRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalityFields {
    pub region: Key,
    pub zone: Key,
    pub subzone: Key,
}

/// A workload's addresses: almost always one, kept inline.
pub type Addresses = SmallVec<[IpAddr; 1]>;

/// A workload's own port mapping for one service: usually one or two pairs.
pub type PortList = SmallVec<[PortPair; 2]>;

/// The services a workload belongs to, each with the workload's own port
/// mapping, sorted by service key. Almost always one service, so the list is
/// kept inline: a map here cost more than the rest of the workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadServices(SmallVec<[(Key, PortList); 1]>);

impl WorkloadServices {
    /// Adds or replaces the mapping for `key`.
    pub fn insert(&mut self, key: Key, ports: PortList) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => self.0[at].1 = ports,
            Err(at) => self.0.insert(at, (key, ports)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&[PortPair]> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|at| self.0[at].1.as_slice())
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn keys_mut(&mut self) -> impl Iterator<Item = &mut Key> {
        self.0.iter_mut().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for WorkloadServices {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, ports)| (k, ports.as_slice())))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadSpec {
    pub uid: Key,
    pub name: Key,
    pub namespace: Key,
    pub addresses: Addresses,
    /// Set for ServiceEntry `resolution: DNS` endpoints that have no address:
    /// the data plane resolves it, each address found is a backend.
    pub hostname: Option<Key>,
    pub network: Key,
    pub node: Key,
    pub cluster_id: Key,
    pub locality: LocalityFields,
    pub healthy: bool,
    /// Service key -> this workload's own port mapping for that service.
    pub services: WorkloadServices,
    pub waypoint: Option<WaypointRef>,
    /// Copies in an endpoint list (weight), 1..=[`MAX_CAPACITY_COPIES`].
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum AddressResource {
    Workload(WorkloadSpec),
    Service(ServiceSpec),
}

impl AddressResource {
    /// The key the store files it under: a workload's uid, a service's
    /// `namespace/hostname` (Istiod uses the same strings as xDS names).
    pub fn key(&self) -> &Key {
        match self {
            AddressResource::Workload(w) => &w.uid,
            AddressResource::Service(s) => &s.key,
        }
    }

    /// Replaces the key by `shared` (an equal string held elsewhere).
    pub fn share_key(&mut self, shared: &Key) {
        debug_assert_eq!(self.key(), shared);
        match self {
            AddressResource::Workload(w) => w.uid = shared.clone(),
            AddressResource::Service(s) => s.key = shared.clone(),
        }
    }
}

/// Decodes one `Any` of type `istio.workload.Address`. `name` is the xDS
/// resource name when there is one (delta ADS), for error messages.
pub fn decode_address(
    any: &prost_types::Any,
    name: Option<&str>,
) -> Result<AddressResource, ResourceError> {
    let label = name.unwrap_or("resource").to_string();
    if any.type_url != ADDRESS_TYPE_URL {
        return Err(ResourceError {
            resource: label,
            field: "@type".into(),
            message: format!("{:?} is not {ADDRESS_TYPE_URL}", any.type_url),
        });
    }
    let address = Address::decode(any.value.as_slice()).map_err(|e| ResourceError {
        resource: label.clone(),
        field: "(bytes)".into(),
        message: format!("not an istio.workload.Address: {e}"),
    })?;
    match address.r#type {
        Some(address::Type::Workload(w)) => validate_workload(w).map(AddressResource::Workload),
        Some(address::Type::Service(s)) => validate_service(s).map(AddressResource::Service),
        None => Err(ResourceError {
            resource: label,
            field: "type".into(),
            message: "neither workload nor service is set".into(),
        }),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| Ipv4Addr::from(b).into()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| Ipv6Addr::from(b).into()),
        _ => None,
    }
}

/// An error builder bound to one resource (`kind name`, formatted only
/// when there is an error: decoding a large push should not allocate a label
/// per resource).
struct Fields<'a>(&'static str, &'a str);

impl Fields<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ResourceError {
        ResourceError {
            resource: format!("{} {}", self.0, self.1),
            field: field.into(),
            message: message.into(),
        }
    }

    fn ip(&self, field: String, bytes: &[u8]) -> Result<IpAddr, ResourceError> {
        ip_from_bytes(bytes).ok_or_else(|| {
            self.err(
                field,
                format!(
                    "{} bytes; an address has 4 (IPv4) or 16 (IPv6)",
                    bytes.len()
                ),
            )
        })
    }

    fn port(&self, field: String, value: u32, zero_ok: bool) -> Result<u16, ResourceError> {
        match u16::try_from(value) {
            Ok(0) if !zero_ok => Err(self.err(field, "must not be 0")),
            Ok(port) => Ok(port),
            Err(_) => Err(self.err(field, format!("{value} is not a port (0-65535)"))),
        }
    }

    fn ports<C: FromIterator<PortPair>>(
        &self,
        field: &str,
        ports: &[Port],
    ) -> Result<C, ResourceError> {
        ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(PortPair {
                    service_port: self.port(
                        format!("{field}[{i}].service_port"),
                        p.service_port,
                        false,
                    )?,
                    target_port: self.port(
                        format!("{field}[{i}].target_port"),
                        p.target_port,
                        true,
                    )?,
                })
            })
            .collect()
    }

    fn waypoint(
        &self,
        gateway: Option<&GatewayAddress>,
    ) -> Result<Option<WaypointRef>, ResourceError> {
        let Some(gateway) = gateway else {
            return Ok(None);
        };
        match &gateway.destination {
            Some(gateway_address::Destination::Address(a)) => Ok(Some(WaypointRef::Address(
                self.ip("waypoint.address.address".into(), &a.address)?,
            ))),
            Some(gateway_address::Destination::Hostname(h)) => {
                if h.hostname.is_empty() {
                    return Err(self.err("waypoint.hostname.hostname", "empty"));
                }
                Ok(Some(WaypointRef::Service(
                    format!("{}/{}", h.namespace, h.hostname).into(),
                )))
            }
            None => Err(self.err("waypoint", "neither address nor hostname is set")),
        }
    }
}

fn validate_service(s: Service) -> Result<ServiceSpec, ResourceError> {
    let key: Key = format!("{}/{}", s.namespace, s.hostname).into();
    let fields = Fields("service", &key);
    if s.hostname.is_empty() {
        return Err(fields.err(
            "hostname",
            "empty (a service is keyed by namespace/hostname)",
        ));
    }
    let addresses = s
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| fields.ip(format!("addresses[{i}].address"), &a.address))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports: Vec<PortPair> = fields.ports("ports", &s.ports)?;
    let unrouted_ports = ports
        .split_off(ports.len().min(MAX_PORTS))
        .into_iter()
        .map(|p| p.service_port)
        .collect();
    Ok(ServiceSpec {
        key: key.clone(),
        addresses,
        ports,
        unrouted_ports,
        load_balancing: load_balancing(&fields, s.load_balancing.as_ref())?,
        waypoint: fields.waypoint(s.waypoint.as_ref())?,
    })
}

fn load_balancing(
    fields: &Fields,
    lb: Option<&LoadBalancing>,
) -> Result<LoadBalancingSpec, ResourceError> {
    let Some(lb) = lb else {
        return Ok(LoadBalancingSpec {
            mode: LbMode::Standard,
            routing_preference: Vec::new(),
            allow_unhealthy: false,
        });
    };
    let routing_preference = lb
        .routing_preference
        .iter()
        .enumerate()
        .map(|(i, &raw)| {
            use load_balancing::Scope as S;
            match S::try_from(raw) {
                Ok(S::Region) => Ok(Scope::Region),
                Ok(S::Zone) => Ok(Scope::Zone),
                Ok(S::Subzone) => Ok(Scope::Subzone),
                Ok(S::Node) => Ok(Scope::Node),
                Ok(S::Cluster) => Ok(Scope::Cluster),
                Ok(S::Network) => Ok(Scope::Network),
                Ok(S::UnspecifiedScope) | Err(_) => Err(fields.err(
                    format!("load_balancing.routing_preference[{i}]"),
                    format!("{raw} is not a scope (REGION, ZONE, SUBZONE, NODE, CLUSTER, NETWORK)"),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    use load_balancing::Mode as M;
    let mode = match M::try_from(lb.mode) {
        Ok(M::Strict) => LbMode::Strict,
        Ok(M::Failover) => LbMode::Failover,
        Ok(M::Passthrough) => LbMode::Passthrough,
        // Preferences without a mode: prefer close endpoints, fail over
        // (what `trafficDistribution: PreferClose` means).
        Ok(M::UnspecifiedMode) if !routing_preference.is_empty() => LbMode::Failover,
        Ok(M::UnspecifiedMode) => LbMode::Standard,
        Err(_) => {
            return Err(fields.err("load_balancing.mode", format!("{} is not a mode", lb.mode)))
        }
    };
    use load_balancing::HealthPolicy as H;
    let allow_unhealthy = match H::try_from(lb.health_policy) {
        Ok(H::OnlyHealthy) => false,
        Ok(H::AllowAll) => true,
        Err(_) => {
            return Err(fields.err(
                "load_balancing.health_policy",
                format!("{} is not a health policy", lb.health_policy),
            ))
        }
    };
    Ok(LoadBalancingSpec {
        mode,
        routing_preference,
        allow_unhealthy,
    })
}

fn validate_workload(w: Workload) -> Result<WorkloadSpec, ResourceError> {
    let fields = Fields("workload", &w.uid);
    if w.uid.is_empty() {
        return Err(ResourceError {
            resource: format!("workload {}/{}", w.namespace, w.name),
            field: "uid".into(),
            message: "empty (a workload is keyed by its uid)".into(),
        });
    }
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| fields.ip(format!("addresses[{i}]"), a))
        .collect::<Result<Addresses, _>>()?;
    let hostname = (!w.hostname.is_empty()).then(|| Key::from(w.hostname.as_str()));
    if addresses.is_empty() && hostname.is_none() {
        return Err(fields.err("addresses", "no address and no hostname"));
    }
    let mut services = WorkloadServices::default();
    for (key, list) in &w.services {
        if !key.contains('/') {
            return Err(fields.err(
                format!("services[{key:?}]"),
                "a service key is namespace/hostname",
            ));
        }
        services.insert(
            Key::from(key.as_str()),
            fields.ports(&format!("services[{key:?}].ports"), &list.ports)?,
        );
    }
    let healthy = match WorkloadStatus::try_from(w.status) {
        Ok(WorkloadStatus::Healthy) => true,
        Ok(WorkloadStatus::Unhealthy) => false,
        Err(_) => return Err(fields.err("status", format!("{} is not a status", w.status))),
    };
    let locality = w
        .locality
        .as_ref()
        .map_or_else(LocalityFields::default, |l| LocalityFields {
            region: l.region.as_str().into(),
            zone: l.zone.as_str().into(),
            subzone: l.subzone.as_str().into(),
        });
    Ok(WorkloadSpec {
        weight: w.capacity.unwrap_or(1).clamp(1, MAX_CAPACITY_COPIES),
        waypoint: fields.waypoint(w.waypoint.as_ref())?,
        uid: w.uid.into(),
        name: w.name.into(),
        namespace: w.namespace.into(),
        addresses,
        hostname,
        network: w.network.into(),
        node: w.node.into(),
        cluster_id: w.cluster_id.into(),
        locality,
        healthy,
        services,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::workload::proto::workload::{LoadBalancing, Locality, NetworkAddress, PortList};

    pub fn any(address: address::Type) -> prost_types::Any {
        prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: Address {
                r#type: Some(address),
            }
            .encode_to_vec(),
        }
    }

    pub fn workload(uid: &str, ip: [u8; 4], service: &str) -> Workload {
        Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            services: [(
                service.to_string(),
                PortList {
                    ports: vec![Port {
                        service_port: 80,
                        target_port: 8080,
                    }],
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    pub fn service(key: &str, vip: [u8; 4]) -> Service {
        let (namespace, hostname) = key.split_once('/').unwrap();
        Service {
            name: hostname.split('.').next().unwrap().into(),
            namespace: namespace.into(),
            hostname: hostname.into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
            }],
            ports: vec![Port {
                service_port: 80,
                target_port: 8080,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_service_decodes_with_its_vip_ports_and_policy() {
        let mut s = service("default/web.default.svc.cluster.local", [10, 96, 0, 1]);
        s.load_balancing = Some(LoadBalancing {
            routing_preference: vec![1, 2],
            mode: 2,
            health_policy: 1,
            dns_connect_strategy: 0,
        });
        let AddressResource::Service(spec) =
            decode_address(&any(address::Type::Service(s)), None).unwrap()
        else {
            panic!("not a service")
        };
        assert_eq!(&*spec.key, "default/web.default.svc.cluster.local");
        assert_eq!(spec.addresses, vec!["10.96.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            spec.ports,
            vec![PortPair {
                service_port: 80,
                target_port: 8080
            }]
        );
        assert_eq!(spec.load_balancing.mode, LbMode::Failover);
        assert_eq!(
            spec.load_balancing.routing_preference,
            vec![Scope::Region, Scope::Zone]
        );
        assert!(spec.load_balancing.allow_unhealthy);
    }

    #[test]
    fn a_workload_decodes_with_locality_health_and_weight() {
        let mut w = workload("c1/pod/a", [10, 0, 0, 1], "default/web");
        w.locality = Some(Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: String::new(),
        });
        w.status = 1;
        w.capacity = Some(1000);
        let AddressResource::Workload(spec) =
            decode_address(&any(address::Type::Workload(w)), Some("c1/pod/a")).unwrap()
        else {
            panic!("not a workload")
        };
        assert_eq!(&*spec.locality.zone, "z");
        assert!(!spec.healthy);
        assert_eq!(spec.weight, MAX_CAPACITY_COPIES);
        assert_eq!(
            spec.services.get("default/web").unwrap()[0].target_port,
            8080
        );
    }

    #[test]
    fn bad_fields_are_named_in_the_error() {
        let mut w = workload("c1/pod/a", [10, 0, 0, 1], "default/web");
        w.addresses.push(vec![1, 2, 3]);
        let e = decode_address(&any(address::Type::Workload(w)), None).unwrap_err();
        assert_eq!(e.resource, "workload c1/pod/a");
        assert_eq!(e.field, "addresses[1]");
        assert!(e.message.contains("3 bytes"), "{e}");

        let mut s = service("default/web", [10, 96, 0, 1]);
        s.ports[0].target_port = 70000;
        let e = decode_address(&any(address::Type::Service(s)), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service default/web: ports[0].target_port: 70000 is not a port (0-65535)"
        );

        let mut w = workload("c1/pod/b", [10, 0, 0, 2], "default/web");
        w.addresses.clear();
        let e = decode_address(&any(address::Type::Workload(w)), None).unwrap_err();
        assert!(e.to_string().contains("no address and no hostname"), "{e}");

        let empty = prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: Address { r#type: None }.encode_to_vec(),
        };
        let e = decode_address(&empty, Some("x")).unwrap_err();
        assert_eq!((e.resource.as_str(), e.field.as_str()), ("x", "type"));

        let garbage = prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(decode_address(&garbage, Some("x")).is_err());
    }

    #[test]
    fn ports_beyond_the_kernel_record_are_kept_aside_not_dropped_silently() {
        let mut s = service("default/many", [10, 96, 0, 2]);
        s.ports = (1..=12)
            .map(|p| Port {
                service_port: p,
                target_port: 0,
            })
            .collect();
        let AddressResource::Service(spec) =
            decode_address(&any(address::Type::Service(s)), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(spec.ports.len(), MAX_PORTS);
        assert_eq!(spec.unrouted_ports, vec![11, 12]);
    }
}
