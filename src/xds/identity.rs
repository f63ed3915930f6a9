//! Who we are to the control plane. Istiod serves a proxy by its node id and
//! metadata, so kmesh presents itself as a sidecar does.

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
        format!(
            "sidecar~{}~{}.{}~{}.svc.cluster.local",
            self.instance_ip, self.pod_name, self.pod_namespace, self.pod_namespace
        )
    }

    pub fn node(&self) -> Node {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
