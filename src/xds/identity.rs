//! Who we are to the control plane. Istiod serves a proxy by its node id and
//! metadata: in kernel-native mode kmesh presents itself as a sidecar does
//! (Envoy xDS), in dual-engine mode as ztunnel does (the ambient workload API
//! over delta ADS; Istiod picks the node type from the id's first field).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

/// The identity fields, from flags/env (INSTANCE_IP, POD_NAME, POD_NAMESPACE, CLUSTER_ID, NODE_NAME).
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_ip: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub cluster_id: String,
    pub node_name: String,
}

/// The Istio version whose proxy behaviour we speak to Istiod as.
pub const ISTIO_VERSION: &str = "1.24.0";

impl Identity {
    /// `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`, Istio's sidecar node id.
    pub fn node_id(&self) -> String {
        self.proxy_node_id("sidecar")
    }

    /// Istio's node id: `<type>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    fn proxy_node_id(&self, node_type: &str) -> String {
        format!(
            "{node_type}~{}~{}.{}~{}.svc.cluster.local",
            self.instance_ip, self.pod_name, self.pod_namespace, self.pod_namespace
        )
    }

    pub fn node(&self) -> Node {
        let mut fields = HashMap::new();
        fields.insert("CLUSTER_ID".to_string(), text(&self.cluster_id));
        fields.insert("NAMESPACE".to_string(), text(&self.pod_namespace));
        fields.insert("INSTANCE_IPS".to_string(), text(&self.instance_ip));
        fields.insert("NODE_NAME".to_string(), text(&self.node_name));
        fields.insert("ISTIO_VERSION".to_string(), text(ISTIO_VERSION));
        fields.insert("WORKLOAD_NAME".to_string(), text(&self.pod_name));
        fields.insert(
            "PROXY_CONFIG".to_string(),
            Value {
                kind: Some(Kind::StructValue(Struct::default())),
            },
        );
        Node {
            id: self.node_id(),
            cluster: format!("{}.{}", self.pod_name, self.pod_namespace),
            metadata: Some(Struct { fields }),
            user_agent_name: "kmesh".to_string(),
            ..Default::default()
        }
    }

    /// `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`: the node id of an
    /// ambient node proxy. Istiod serves the workload API (Address,
    /// Authorization) to this node type.
    pub fn ztunnel_node_id(&self) -> String {
        self.proxy_node_id("ztunnel")
    }

    /// The node for delta ADS in dual-engine mode, with the metadata ztunnel
    /// sends: NAME/NAMESPACE of the pod, INSTANCE_IPS, NODE_NAME (Istiod
    /// scopes workload pushes to the node), CLUSTER_ID (which cluster's
    /// registry the proxy lives in) and ISTIO_VERSION.
    pub fn ztunnel_node(&self) -> Node {
        let fields = [
            ("NAME", self.pod_name.as_str()),
            ("NAMESPACE", self.pod_namespace.as_str()),
            ("INSTANCE_IPS", self.instance_ip.as_str()),
            ("NODE_NAME", self.node_name.as_str()),
            ("CLUSTER_ID", self.cluster_id.as_str()),
            ("ISTIO_VERSION", ISTIO_VERSION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), text(v)))
        .collect();
        Node {
            id: self.ztunnel_node_id(),
            metadata: Some(Struct { fields }),
            user_agent_name: "kmesh".to_string(),
            ..Default::default()
        }
    }
}

fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            instance_ip: "10.0.0.7".into(),
            pod_name: "kmesh-abc".into(),
            pod_namespace: "kmesh-system".into(),
            cluster_id: "Kubernetes".into(),
            node_name: "node-1".into(),
        }
    }

    #[test]
    fn ztunnel_node_has_the_ambient_id_and_metadata() {
        let node = identity().ztunnel_node();
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.7~kmesh-abc.kmesh-system~kmesh-system.svc.cluster.local"
        );
        let meta = node.metadata.unwrap().fields;
        let get = |k: &str| match &meta[k].kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(get("NAME"), "kmesh-abc");
        assert_eq!(get("NAMESPACE"), "kmesh-system");
        assert_eq!(get("INSTANCE_IPS"), "10.0.0.7");
        assert_eq!(get("NODE_NAME"), "node-1");
        assert_eq!(get("CLUSTER_ID"), "Kubernetes");
        assert_eq!(get("ISTIO_VERSION"), ISTIO_VERSION);
        assert_eq!(meta.len(), 6);
    }

    #[test]
    fn node_id_has_the_sidecar_shape_and_metadata_names_the_cluster() {
        let id = Identity {
            instance_ip: "10.0.0.7".into(),
            pod_name: "kmesh-abc".into(),
            pod_namespace: "kmesh-system".into(),
            cluster_id: "Kubernetes".into(),
            node_name: "node-1".into(),
        };
        assert_eq!(
            id.node_id(),
            "sidecar~10.0.0.7~kmesh-abc.kmesh-system~kmesh-system.svc.cluster.local"
        );
        let node = id.node();
        let meta = node.metadata.unwrap().fields;
        assert_eq!(
            meta["CLUSTER_ID"].kind,
            Some(Kind::StringValue("Kubernetes".into()))
        );
        assert!(meta.contains_key("ISTIO_VERSION"));
    }
}
