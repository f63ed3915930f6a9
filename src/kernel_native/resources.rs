//! Typed Envoy resources: what the compiler reads. xDS and the file source
//! both deliver `Any`s; [`decode`] turns one into its envoy-types struct.

use std::collections::BTreeMap;
use std::fmt;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::{Message, Name};
use serde::Serialize;

/// The resource types kernel-native mode consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ResourceKind {
    Listener,
    Cluster,
    ClusterLoadAssignment,
    RouteConfiguration,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::Listener,
        ResourceKind::Cluster,
        ResourceKind::ClusterLoadAssignment,
        ResourceKind::RouteConfiguration,
    ];

    /// The xDS type URL, e.g. `type.googleapis.com/envoy.config.listener.v3.Listener`.
    pub fn type_url(self) -> String {
        match self {
            ResourceKind::Listener => Listener::type_url(),
            ResourceKind::Cluster => Cluster::type_url(),
            ResourceKind::ClusterLoadAssignment => ClusterLoadAssignment::type_url(),
            ResourceKind::RouteConfiguration => RouteConfiguration::type_url(),
        }
    }

    /// The kind a type URL names. Only the part after the last `/` counts:
    /// the prefix is a convention (`type.googleapis.com/`), not part of the type.
    pub fn from_type_url(type_url: &str) -> Option<ResourceKind> {
        let message = type_url.rsplit('/').next().unwrap_or(type_url);
        ResourceKind::ALL
            .into_iter()
            .find(|kind| kind.full_name() == message)
    }

    fn full_name(self) -> String {
        match self {
            ResourceKind::Listener => Listener::full_name(),
            ResourceKind::Cluster => Cluster::full_name(),
            ResourceKind::ClusterLoadAssignment => ClusterLoadAssignment::full_name(),
            ResourceKind::RouteConfiguration => RouteConfiguration::full_name(),
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Listener => "Listener",
            ResourceKind::Cluster => "Cluster",
            ResourceKind::ClusterLoadAssignment => "ClusterLoadAssignment",
            ResourceKind::RouteConfiguration => "RouteConfiguration",
        })
    }
}

/// Why a resource was rejected: the text of the NACK's `error_detail`.
/// `field` is a path inside the resource, e.g.
/// `filter_chains[1].filters[0].typed_config.weighted_clusters.clusters[2].weight`.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("{kind} {name:?}: {field}: {message}")]
pub struct ResourceError {
    pub kind: ResourceKind,
    pub name: String,
    pub field: String,
    pub message: String,
}

/// An `Any` that is not one of the kernel-native resource types, or whose
/// bytes do not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported resource type {0:?}")]
    UnknownType(String),
    #[error(transparent)]
    Malformed(#[from] ResourceError),
}

/// One decoded resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Listener(Box<Listener>),
    Cluster(Box<Cluster>),
    ClusterLoadAssignment(Box<ClusterLoadAssignment>),
    RouteConfiguration(Box<RouteConfiguration>),
}

impl Resource {
    /// The xDS resource name (a ClusterLoadAssignment is named by its `cluster_name`).
    pub fn name(&self) -> &str {
        match self {
            Resource::Listener(l) => &l.name,
            Resource::Cluster(c) => &c.name,
            Resource::ClusterLoadAssignment(a) => &a.cluster_name,
            Resource::RouteConfiguration(r) => &r.name,
        }
    }

    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::Listener(_) => ResourceKind::Listener,
            Resource::Cluster(_) => ResourceKind::Cluster,
            Resource::ClusterLoadAssignment(_) => ResourceKind::ClusterLoadAssignment,
            Resource::RouteConfiguration(_) => ResourceKind::RouteConfiguration,
        }
    }
}

/// Decodes one xDS resource.
pub fn decode(any: &prost_types::Any) -> Result<Resource, DecodeError> {
    let kind = ResourceKind::from_type_url(&any.type_url)
        .ok_or_else(|| DecodeError::UnknownType(any.type_url.clone()))?;
    let bytes = any.value.as_slice();
    // The name is unknown when the bytes do not decode: prost's message
    // (which names the message and field) is all there is to report.
    let malformed = |e: prost::DecodeError| ResourceError {
        kind,
        name: String::new(),
        field: String::new(),
        message: format!("malformed protobuf: {e}"),
    };
    let resource = match kind {
        ResourceKind::Listener => {
            Resource::Listener(Box::new(Listener::decode(bytes).map_err(malformed)?))
        }
        ResourceKind::Cluster => {
            Resource::Cluster(Box::new(Cluster::decode(bytes).map_err(malformed)?))
        }
        ResourceKind::ClusterLoadAssignment => Resource::ClusterLoadAssignment(Box::new(
            ClusterLoadAssignment::decode(bytes).map_err(malformed)?,
        )),
        ResourceKind::RouteConfiguration => Resource::RouteConfiguration(Box::new(
            RouteConfiguration::decode(bytes).map_err(malformed)?,
        )),
    };
    Ok(resource)
}

/// A snapshot of every resource, keyed by resource name (the State-of-the-World
/// view the compiler turns into a plan).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: BTreeMap<String, Listener>,
    pub clusters: BTreeMap<String, Cluster>,
    /// Keyed by `cluster_name`, which EDS clusters refer to through
    /// `eds_cluster_config.service_name` (or their own name).
    pub load_assignments: BTreeMap<String, ClusterLoadAssignment>,
    pub route_configs: BTreeMap<String, RouteConfiguration>,
}

impl Resources {
    /// Adds or replaces a resource by name.
    pub fn insert(&mut self, resource: Resource) {
        let name = resource.name().to_string();
        match resource {
            Resource::Listener(l) => {
                self.listeners.insert(name, *l);
            }
            Resource::Cluster(c) => {
                self.clusters.insert(name, *c);
            }
            Resource::ClusterLoadAssignment(a) => {
                self.load_assignments.insert(name, *a);
            }
            Resource::RouteConfiguration(r) => {
                self.route_configs.insert(name, *r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn type_urls_round_trip() {
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::from_type_url(&kind.type_url()), Some(kind));
        }
        assert_eq!(
            ResourceKind::Listener.type_url(),
            "type.googleapis.com/envoy.config.listener.v3.Listener"
        );
        assert_eq!(
            ResourceKind::from_type_url("example.com/envoy.config.cluster.v3.Cluster"),
            Some(ResourceKind::Cluster)
        );
        assert_eq!(
            ResourceKind::ClusterLoadAssignment.to_string(),
            "ClusterLoadAssignment"
        );
    }

    #[test]
    fn decodes_each_kind_by_name() {
        let cla = ClusterLoadAssignment {
            cluster_name: "svc".into(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: ResourceKind::ClusterLoadAssignment.type_url(),
            value: cla.encode_to_vec(),
        };
        let resource = decode(&any).unwrap();
        assert_eq!(resource.kind(), ResourceKind::ClusterLoadAssignment);
        assert_eq!(resource.name(), "svc");

        let mut resources = Resources::default();
        resources.insert(resource);
        assert!(resources.load_assignments.contains_key("svc"));

        let listener = Listener {
            name: "l".into(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: ResourceKind::Listener.type_url(),
            value: listener.encode_to_vec(),
        };
        assert_eq!(
            decode(&any).unwrap(),
            Resource::Listener(Box::new(listener))
        );
    }

    #[test]
    fn rejects_unknown_types_and_bad_bytes() {
        let any = prost_types::Any {
            type_url: "type.googleapis.com/envoy.config.core.v3.Address".into(),
            value: vec![],
        };
        assert!(matches!(decode(&any), Err(DecodeError::UnknownType(_))));

        let any = prost_types::Any {
            type_url: ResourceKind::Cluster.type_url(),
            value: vec![0x0a, 0x05, b'a'], // field 1, length 5, truncated
        };
        let Err(DecodeError::Malformed(e)) = decode(&any) else {
            panic!("truncated bytes must not decode");
        };
        assert_eq!(e.kind, ResourceKind::Cluster);
        assert!(e.message.contains("malformed"), "{e}");
    }
}
