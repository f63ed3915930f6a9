//! Builders for Istio workload API resources (`istio.workload.Address`) in
//! the xDS file format, and the same resources as protobuf for the delta ADS
//! test server. Addresses are written as plain IPs (the file reader turns
//! them into the `bytes` the schema wants).

#![allow(dead_code)] // each test binary uses a subset

use std::net::IpAddr;

use kmesh::workload::proto::workload::{
    address, gateway_address, load_balancing, Address, GatewayAddress, LoadBalancing, Locality,
    NetworkAddress, Port, PortList, Service, Workload,
};
use kmesh::workload::proto::ADDRESS_TYPE_URL;
use prost::Message;

/// A service: `key` is `namespace/hostname`; `ports` are (service, target).
#[derive(Debug, Clone, Default)]
pub struct Svc {
    pub key: String,
    pub vips: Vec<String>,
    pub ports: Vec<(u16, u16)>,
    /// `(mode, routing preference)`: mode is STRICT, FAILOVER or PASSTHROUGH.
    pub lb: Option<(String, Vec<String>)>,
    pub waypoint: Option<String>,
}

impl Svc {
    pub fn new(key: &str, vips: &[&str], ports: &[(u16, u16)]) -> Svc {
        Svc {
            key: key.into(),
            vips: vips.iter().map(|v| v.to_string()).collect(),
            ports: ports.to_vec(),
            ..Svc::default()
        }
    }

    /// Hand this service's connections to the waypoint at `addr`.
    pub fn waypoint(mut self, addr: &str) -> Svc {
        self.waypoint = Some(addr.into());
        self
    }

    pub fn lb(mut self, mode: &str, preference: &[&str]) -> Svc {
        self.lb = Some((
            mode.into(),
            preference.iter().map(|p| p.to_string()).collect(),
        ));
        self
    }

    pub fn yaml(&self) -> String {
        let (namespace, hostname) = self.key.split_once('/').expect("namespace/hostname");
        let vips: Vec<String> = self
            .vips
            .iter()
            .map(|v| format!("{{ address: \"{v}\" }}"))
            .collect();
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(s, t)| format!("{{ service_port: {s}, target_port: {t} }}"))
            .collect();
        let mut text = format!(
            r#"
- "@type": type.googleapis.com/istio.workload.Address
  service:
    name: "{name}"
    namespace: "{namespace}"
    hostname: "{hostname}"
    addresses: [{vips}]
    ports: [{ports}]"#,
            name = hostname.split('.').next().unwrap_or(hostname),
            vips = vips.join(", "),
            ports = ports.join(", "),
        );
        if let Some((mode, preference)) = &self.lb {
            text.push_str(&format!(
                "\n    load_balancing: {{ mode: {mode}, routing_preference: [{}] }}",
                preference.join(", ")
            ));
        }
        if let Some(waypoint) = &self.waypoint {
            text.push_str(&format!(
                "\n    waypoint: {{ address: {{ address: \"{waypoint}\" }}, hbone_mtls_port: 15008 }}"
            ));
        }
        text
    }

    pub fn proto(&self) -> Service {
        let (namespace, hostname) = self.key.split_once('/').expect("namespace/hostname");
        Service {
            name: hostname.split('.').next().unwrap_or(hostname).into(),
            namespace: namespace.into(),
            hostname: hostname.into(),
            addresses: self
                .vips
                .iter()
                .map(|v| NetworkAddress {
                    network: String::new(),
                    address: ip_bytes(v),
                })
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|(s, t)| Port {
                    service_port: u32::from(*s),
                    target_port: u32::from(*t),
                })
                .collect(),
            load_balancing: self.lb.as_ref().map(|(mode, preference)| LoadBalancing {
                mode: load_balancing::Mode::from_str_name(mode).expect("mode") as i32,
                routing_preference: preference
                    .iter()
                    .map(|p| load_balancing::Scope::from_str_name(p).expect("scope") as i32)
                    .collect(),
                ..Default::default()
            }),
            waypoint: self.waypoint.as_ref().map(|w| GatewayAddress {
                destination: Some(gateway_address::Destination::Address(NetworkAddress {
                    network: String::new(),
                    address: ip_bytes(w),
                })),
                hbone_mtls_port: 15008,
            }),
            ..Default::default()
        }
    }
}

/// A workload backing some services.
#[derive(Debug, Clone, Default)]
pub struct Wl {
    pub uid: String,
    pub ips: Vec<String>,
    pub hostname: Option<String>,
    /// Service key -> this workload's (service, target) port overrides.
    pub services: Vec<(String, Vec<(u16, u16)>)>,
    /// `(region, zone)`.
    pub locality: Option<(String, String)>,
    pub node: Option<String>,
    pub unhealthy: bool,
    /// The waypoint's address, if the workload has one.
    pub waypoint: Option<String>,
}

impl Wl {
    pub fn new(uid: &str, ips: &[&str], services: &[&str]) -> Wl {
        Wl {
            uid: uid.into(),
            ips: ips.iter().map(|v| v.to_string()).collect(),
            services: services.iter().map(|s| (s.to_string(), vec![])).collect(),
            ..Wl::default()
        }
    }

    /// A ServiceEntry `resolution: DNS` endpoint: a hostname, no address.
    pub fn dns(uid: &str, hostname: &str, services: &[&str]) -> Wl {
        Wl {
            uid: uid.into(),
            hostname: Some(hostname.into()),
            services: services.iter().map(|s| (s.to_string(), vec![])).collect(),
            ..Wl::default()
        }
    }

    pub fn zone(mut self, region: &str, zone: &str) -> Wl {
        self.locality = Some((region.into(), zone.into()));
        self
    }

    /// Hand connections to this workload to the waypoint at `addr`.
    pub fn waypoint(mut self, addr: &str) -> Wl {
        self.waypoint = Some(addr.into());
        self
    }

    pub fn node(mut self, node: &str) -> Wl {
        self.node = Some(node.into());
        self
    }

    pub fn yaml(&self) -> String {
        let ips: Vec<String> = self.ips.iter().map(|v| format!("\"{v}\"")).collect();
        let mut text = format!(
            r#"
- "@type": type.googleapis.com/istio.workload.Address
  workload:
    uid: "{uid}"
    name: "{uid}"
    namespace: default
    addresses: [{ips}]"#,
            uid = self.uid,
            ips = ips.join(", "),
        );
        if let Some(host) = &self.hostname {
            text.push_str(&format!("\n    hostname: \"{host}\""));
        }
        if let Some((region, zone)) = &self.locality {
            text.push_str(&format!(
                "\n    locality: {{ region: \"{region}\", zone: \"{zone}\" }}"
            ));
        }
        if let Some(node) = &self.node {
            text.push_str(&format!("\n    node: \"{node}\""));
        }
        if self.unhealthy {
            text.push_str("\n    status: UNHEALTHY");
        }
        if let Some(waypoint) = &self.waypoint {
            text.push_str(&format!(
                "\n    waypoint: {{ address: {{ address: \"{waypoint}\" }}, hbone_mtls_port: 15008 }}"
            ));
        }
        if !self.services.is_empty() {
            text.push_str("\n    services:");
            for (key, ports) in &self.services {
                let ports: Vec<String> = ports
                    .iter()
                    .map(|(s, t)| format!("{{ service_port: {s}, target_port: {t} }}"))
                    .collect();
                text.push_str(&format!(
                    "\n      \"{key}\": {{ ports: [{}] }}",
                    ports.join(", ")
                ));
            }
        }
        text
    }

    pub fn proto(&self) -> Workload {
        Workload {
            uid: self.uid.clone(),
            name: self.uid.clone(),
            namespace: "default".into(),
            addresses: self.ips.iter().map(|v| ip_bytes(v)).collect(),
            hostname: self.hostname.clone().unwrap_or_default(),
            node: self.node.clone().unwrap_or_default(),
            status: i32::from(self.unhealthy),
            waypoint: self.waypoint.as_ref().map(|w| GatewayAddress {
                destination: Some(gateway_address::Destination::Address(NetworkAddress {
                    network: String::new(),
                    address: ip_bytes(w),
                })),
                hbone_mtls_port: 15008,
            }),
            locality: self.locality.as_ref().map(|(region, zone)| Locality {
                region: region.clone(),
                zone: zone.clone(),
                subzone: String::new(),
            }),
            services: self
                .services
                .iter()
                .map(|(key, ports)| {
                    (
                        key.clone(),
                        PortList {
                            ports: ports
                                .iter()
                                .map(|(s, t)| Port {
                                    service_port: u32::from(*s),
                                    target_port: u32::from(*t),
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }
}

fn ip_bytes(text: &str) -> Vec<u8> {
    match text.parse::<IpAddr>().expect("an IP address") {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// An xDS file with these items (from [`Svc::yaml`] / [`Wl::yaml`]).
pub fn file(items: &[String]) -> String {
    format!("resources:{}\n", items.concat())
}

/// `(name, Any)` of a service for a delta push.
pub fn service_any(s: &Svc) -> (String, prost_types::Any) {
    let address = Address {
        r#type: Some(address::Type::Service(s.proto())),
    };
    (s.key.clone(), any(&address))
}

/// `(name, Any)` of a workload for a delta push.
pub fn workload_any(w: &Wl) -> (String, prost_types::Any) {
    let address = Address {
        r#type: Some(address::Type::Workload(w.proto())),
    };
    (w.uid.clone(), any(&address))
}

fn any(address: &Address) -> prost_types::Any {
    prost_types::Any {
        type_url: ADDRESS_TYPE_URL.into(),
        value: address.encode_to_vec(),
    }
}
