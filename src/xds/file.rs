//! The local xDS file (`--xds-file`): Envoy resources written by hand or
//! dumped from a control plane, shaped like a `DiscoveryResponse`:
//!
//! ```yaml
//! version_info: "1"          # optional, ignored
//! resources:
//! - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
//!   name: ...
//! ```
//!
//! Each item is proto3 JSON (YAML is read as JSON). The `"@type"` mapping
//! needs message descriptors, which come from the FileDescriptorSet that the
//! envoy-types crate ships (copied into `OUT_DIR` by build.rs). The result is
//! the same `Any` list an ADS stream delivers, so the file goes through the
//! same decode → compile path as the wire.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use prost_types::{
    field_descriptor_proto::{Label, Type},
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto,
};
use serde_json::Value;

/// The Envoy FileDescriptorSet (every Envoy, xds, udpa and well-known type).
static ENVOY_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// Top-level keys of a DiscoveryResponse that the file may carry. Anything
/// else is most likely a typo or a different file, so it is an error.
const ALLOWED_TOP_LEVEL: [&str; 3] = ["resources", "version_info", "type_url"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Not YAML/JSON at all. `message` carries the parser's own text, which
    /// already names the line and column.
    #[error("YAML/JSON syntax error: {message}")]
    Syntax {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error("the file must be a mapping with a `resources` list (an Envoy DiscoveryResponse)")]
    NotAMapping,
    #[error("unknown top-level key {0:?} (allowed: resources, version_info, type_url)")]
    UnknownTopLevelKey(String),
    #[error("missing `resources` (the list of Envoy resources)")]
    MissingResources,
    #[error("`resources` must be a list")]
    ResourcesNotAList,
    #[error("resources[{index}]: must be a mapping with \"@type\"")]
    ItemNotAMapping { index: usize },
    #[error("resources[{index}]: no \"@type\"")]
    MissingType { index: usize },
    #[error(
        "resources[{index}]: unknown type {type_url:?} (not an Envoy or Istio workload API type)"
    )]
    UnknownType { index: usize, type_url: String },
    /// The item does not fit its message: unknown field, wrong value type,
    /// unknown nested `"@type"`... `path` is where inside the item.
    #[error("resources[{index}] of type {type_url}: {}{message}", at(path))]
    Invalid {
        index: usize,
        type_url: String,
        path: String,
        message: String,
    },
    /// The descriptor set built into the binary is unusable (a build problem).
    #[error("Envoy descriptors: {0}")]
    Descriptors(String),
}

/// `at <path>: `, or nothing when the error is about the item itself.
fn at(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("at {path}: ")
    }
}

/// Parses the file's text into the resources it lists, in file order.
pub fn parse_resources(text: &str) -> Result<Vec<prost_types::Any>, FileError> {
    let document: Value = serde_yaml::from_str(text).map_err(|e| {
        let location = e.location();
        FileError::Syntax {
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message: e.to_string(),
        }
    })?;
    let Value::Object(top) = document else {
        return Err(FileError::NotAMapping);
    };
    if let Some(key) = top
        .keys()
        .find(|k| !ALLOWED_TOP_LEVEL.contains(&k.as_str()))
    {
        return Err(FileError::UnknownTopLevelKey(key.clone()));
    }
    let items = match top.get("resources") {
        None => return Err(FileError::MissingResources),
        Some(Value::Array(items)) => items,
        // `resources:` with nothing after it: an empty snapshot.
        Some(Value::Null) => return Ok(Vec::new()),
        Some(_) => return Err(FileError::ResourcesNotAList),
    };
    let pool = descriptor_pool()?;
    let any_desc = pool
        .get_message_by_name("google.protobuf.Any")
        .ok_or_else(|| FileError::Descriptors("google.protobuf.Any is missing".into()))?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| to_any(pool, &any_desc, index, item))
        .collect()
}

fn to_any(
    pool: &DescriptorPool,
    any_desc: &MessageDescriptor,
    index: usize,
    item: &Value,
) -> Result<prost_types::Any, FileError> {
    let Value::Object(fields) = item else {
        return Err(FileError::ItemNotAMapping { index });
    };
    let type_url = match fields.get("@type") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err(FileError::MissingType { index }),
    };
    // Checked here (prost-reflect would too) to give a clearer message for
    // the most common mistake, a misspelt or non-Envoy type.
    let message_name = type_url.rsplit('/').next().unwrap_or(&type_url);
    if pool.get_message_by_name(message_name).is_none() {
        return Err(FileError::UnknownType { index, type_url });
    }
    let istio_item;
    let item = if message_name.starts_with("istio.") {
        istio_item = with_readable_addresses(item.clone());
        &istio_item
    } else {
        item
    };
    let invalid = |path: String, message: String| FileError::Invalid {
        index,
        type_url: type_url.clone(),
        path,
        message,
    };
    // Tracks where in the item an error happened; prost-reflect's own
    // message names the field but not the path to it.
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(item, &mut track);
    // Default options: unknown fields are errors, so a typo in a
    // hand-written file cannot silently drop configuration.
    let message = DynamicMessage::deserialize(any_desc.clone(), deserializer);
    let message = message.map_err(|e| invalid(track.path().to_string(), e.to_string()))?;
    message
        .transcode_to::<prost_types::Any>()
        .map_err(|e| invalid(".".into(), e.to_string()))
}

/// The Istio workload API carries addresses as `bytes`, which proto3 JSON
/// writes in base64. In a hand-written file `addresses: [10.0.0.1]` is what
/// a user means, so in Istio items any `address`/`addresses` string that is
/// an IP is turned into its base64 bytes first. Unambiguous: base64 never
/// contains `.` or `:`, so no base64 text parses as an IP.
fn with_readable_addresses(mut item: Value) -> Value {
    fn visit(value: &mut Value) {
        match value {
            Value::Object(fields) => {
                for (key, field) in fields.iter_mut() {
                    match (key.as_str(), &mut *field) {
                        ("address", Value::String(text)) => encode_ip(text),
                        ("addresses", Value::Array(items)) => {
                            for item in items.iter_mut() {
                                match item {
                                    Value::String(text) => encode_ip(text),
                                    other => visit(other),
                                }
                            }
                        }
                        (_, other) => visit(other),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(visit),
            _ => {}
        }
    }
    fn encode_ip(text: &mut String) {
        match text.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => *text = base64(&v4.octets()),
            Ok(std::net::IpAddr::V6(v6)) => *text = base64(&v6.octets()),
            Err(_) => {}
        }
    }
    visit(&mut item);
    item
}

/// Standard base64 with padding (what proto3 JSON reads for `bytes`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The Envoy descriptors, decoded once: the set is large (several MB) and
/// immutable.
fn descriptor_pool() -> Result<&'static DescriptorPool, FileError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(build_pool)
        .as_ref()
        .map_err(|e| FileError::Descriptors(e.clone()))
}

fn build_pool() -> Result<DescriptorPool, String> {
    let mut pool = DescriptorPool::decode(ENVOY_DESCRIPTORS).map_err(|e| e.to_string())?;
    // The Istio workload API (dual-engine); the well-known types it imports
    // are already in the Envoy set.
    let istio = prost_types::FileDescriptorSet::decode(crate::workload::proto::ISTIO_DESCRIPTORS)
        .map_err(|e| e.to_string())?;
    pool.add_file_descriptor_protos(
        istio
            .file
            .into_iter()
            .filter(|f| !f.name().starts_with("google/protobuf/")),
    )
    .map_err(|e| e.to_string())?;
    // Control planes (Istio) wrap configs of extensions that Envoy does not
    // ship in TypedStruct. envoy-types' descriptor set lacks both TypedStruct
    // flavours, so they are declared here (two fields, from the public
    // schema); a future descriptor set that has them wins.
    for package in ["udpa.type.v1", "xds.type.v3"] {
        if pool
            .get_message_by_name(&format!("{package}.TypedStruct"))
            .is_none()
        {
            pool.add_file_descriptor_proto(typed_struct_file(package))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(pool)
}

/// `message TypedStruct { string type_url = 1; google.protobuf.Struct value = 2; }`
fn typed_struct_file(package: &str) -> FileDescriptorProto {
    let field = |name: &str, json: &str, number, kind: Type, type_name: Option<&str>| {
        FieldDescriptorProto {
            name: Some(name.into()),
            json_name: Some(json.into()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(kind as i32),
            type_name: type_name.map(Into::into),
            ..Default::default()
        }
    };
    FileDescriptorProto {
        name: Some(format!("{}/typed_struct.proto", package.replace('.', "/"))),
        package: Some(package.into()),
        dependency: vec!["google/protobuf/struct.proto".into()],
        message_type: vec![DescriptorProto {
            name: Some("TypedStruct".into()),
            field: vec![
                field("type_url", "typeUrl", 1, Type::String, None),
                field(
                    "value",
                    "value",
                    2,
                    Type::Message,
                    Some(".google.protobuf.Struct"),
                ),
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Filter, Listener};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager::RouteSpecifier, HttpConnectionManager,
    };
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        tcp_proxy::ClusterSpecifier, TcpProxy,
    };
    use prost::{Message, Name};

    use super::*;

    fn decode<T: Message + Name + Default>(any: &prost_types::Any) -> T {
        assert_eq!(any.type_url, T::type_url());
        T::decode(any.value.as_slice()).unwrap()
    }

    fn typed_config<T: Message + Name + Default>(f: &Filter) -> T {
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("filter {} has no typed_config", f.name);
        };
        assert_eq!(any.type_url, T::type_url());
        T::decode(any.value.as_slice()).unwrap()
    }

    const TCP_WEIGHTED: &str = r#"
version_info: "7"
type_url: type.googleapis.com/envoy.config.listener.v3.Listener
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: tcp_9000
  address:
    socket_address: { address: 10.96.0.10, port_value: 9000 }
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: tcp_9000
        idle_timeout: 3600s
        weighted_clusters:
          clusters:
          - { name: "outbound|9000|v1|echo.default.svc.cluster.local", weight: 90 }
          - { name: "outbound|9000|v2|echo.default.svc.cluster.local", weight: 10 }
"#;

    #[test]
    fn reads_a_tcp_proxy_listener_with_weighted_clusters() {
        let anys = parse_resources(TCP_WEIGHTED).unwrap();
        assert_eq!(anys.len(), 1);
        let l: Listener = decode(&anys[0]);
        assert_eq!(l.name, "tcp_9000");
        let proxy: TcpProxy = typed_config(&l.filter_chains[0].filters[0]);
        assert_eq!(proxy.idle_timeout.map(|d| d.seconds), Some(3600));
        let Some(ClusterSpecifier::WeightedClusters(w)) = proxy.cluster_specifier else {
            panic!("weighted clusters expected");
        };
        let weights: Vec<u32> = w.clusters.iter().map(|c| c.weight).collect();
        assert_eq!(weights, [90, 10]);
    }

    #[test]
    fn reads_http_connection_managers_with_rds_and_inline_routes() {
        let text = r#"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: "0.0.0.0_8080"
  address: { socket_address: { address: 0.0.0.0, port_value: 8080 } }
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: outbound_0.0.0.0_8080
        rds:
          route_config_name: "8080"
          config_source: { ads: {}, resource_api_version: V3 }
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: ingress
  address: { socket_address: { address: "::", port_value: 80, ipv4_compat: true } }
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress_http
        route_config:
          name: local_route
          virtual_hosts:
          - name: backend
            domains: ["*"]
            routes:
            - match: { prefix: "/api" }
              route: { cluster: api, timeout: 5s }
            - match: { safe_regex: { regex: "^/v[0-9]+/.*" } }
              route:
                weighted_clusters:
                  clusters: [{ name: a, weight: 1 }, { name: b, weight: 3 }]
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;
        let anys = parse_resources(text).unwrap();
        let rds: Listener = decode(&anys[0]);
        let hcm: HttpConnectionManager = typed_config(&rds.filter_chains[0].filters[0]);
        let Some(RouteSpecifier::Rds(r)) = hcm.route_specifier else {
            panic!("rds expected");
        };
        assert_eq!(r.route_config_name, "8080");

        let inline: Listener = decode(&anys[1]);
        let hcm: HttpConnectionManager = typed_config(&inline.filter_chains[0].filters[0]);
        let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
            panic!("inline route_config expected");
        };
        assert_eq!(rc.name, "local_route");
        assert_eq!(rc.virtual_hosts[0].routes.len(), 2);
    }

    #[test]
    fn reads_static_and_eds_clusters_and_a_load_assignment() {
        let text = r#"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: static_backend
  type: STATIC
  connect_timeout: 0.25s
  lb_policy: RANDOM
  load_assignment:
    cluster_name: static_backend
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 8080 } } }
        load_balancing_weight: 3
      - endpoint: { address: { socket_address: { address: "fd00::1", port_value: 8080 } } }
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: "outbound|80||reviews.default.svc.cluster.local"
  type: EDS
  eds_cluster_config:
    service_name: "outbound|80||reviews.default.svc.cluster.local"
    eds_config: { ads: {}, resource_api_version: V3 }
  circuit_breakers:
    thresholds: [{ max_connections: 4294967295, max_requests: 4294967295 }]
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: "outbound|80||reviews.default.svc.cluster.local"
  endpoints:
  - locality: { region: us-east1, zone: us-east1-b }
    load_balancing_weight: 2
    lb_endpoints:
    - endpoint: { address: { socket_address: { address: 10.244.1.5, port_value: 9080 } } }
      health_status: HEALTHY
    - endpoint: { address: { socket_address: { address: 10.244.1.6, port_value: 9080 } } }
      health_status: DRAINING
  - priority: 1
    lb_endpoints:
    - endpoint: { address: { socket_address: { address: 10.244.2.7, port_value: 9080 } } }
"#;
        let anys = parse_resources(text).unwrap();
        let s: Cluster = decode(&anys[0]);
        assert_eq!(s.lb_policy, 3); // RANDOM
        assert_eq!(
            s.load_assignment.unwrap().endpoints[0].lb_endpoints[0]
                .load_balancing_weight
                .map(|w| w.value),
            Some(3)
        );
        let eds: Cluster = decode(&anys[1]);
        assert_eq!(
            eds.eds_cluster_config.unwrap().service_name,
            "outbound|80||reviews.default.svc.cluster.local"
        );
        let cla: ClusterLoadAssignment = decode(&anys[2]);
        assert_eq!(cla.endpoints[1].priority, 1);
        assert_eq!(cla.endpoints[0].lb_endpoints[1].health_status, 3); // DRAINING
    }

    /// The shape Istio sends: TLS transport sockets, listener filters, and
    /// extension configs wrapped in both TypedStruct flavours.
    pub(crate) const ISTIO_INBOUND: &str = r#"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: "10.244.1.5_9080"
  address: { socket_address: { address: 10.244.1.5, port_value: 9080 } }
  traffic_direction: INBOUND
  use_original_dst: true
  bind_to_port: false
  listener_filters:
  - name: envoy.filters.listener.original_dst
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
  - name: envoy.filters.listener.tls_inspector
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
  filter_chains:
  - name: "inbound|9080||"
    filter_chain_match:
      destination_port: 9080
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        require_client_certificate: true
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio, h2, http/1.1]
          tls_certificate_sds_secret_configs:
          - name: default
            sds_config: { api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds-grpc } }] }, resource_api_version: V3 }
          combined_validation_context:
            default_validation_context: {}
            validation_context_sds_secret_config:
              name: ROOTCA
              sds_config: { api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds-grpc } }] }, resource_api_version: V3 }
    filters:
    - name: istio.metadata_exchange
      typed_config:
        "@type": type.googleapis.com/udpa.type.v1.TypedStruct
        type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange
        value: { protocol: istio-peer-exchange }
    - name: istio.stats
      typed_config:
        "@type": type.googleapis.com/xds.type.v3.TypedStruct
        type_url: type.googleapis.com/stats.PluginConfig
        value: { disable_host_header_fallback: true, metrics: [{ dimensions: { destination_cluster: "node.metadata['CLUSTER_ID']" } }] }
    - name: envoy.filters.network.rbac
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
        stat_prefix: tcp.
        rules: { policies: {} }
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: "inbound|9080||"
        cluster: "inbound|9080||"
"#;

    #[test]
    fn reads_an_istio_shaped_listener() {
        let anys = parse_resources(ISTIO_INBOUND).unwrap();
        let l: Listener = decode(&anys[0]);
        assert_eq!(l.listener_filters.len(), 2);
        let chain = &l.filter_chains[0];
        let tls = chain.transport_socket.as_ref().unwrap();
        assert_eq!(tls.name, "envoy.transport_sockets.tls");
        let types: Vec<&str> = chain
            .filters
            .iter()
            .map(|f| match &f.config_type {
                Some(ConfigType::TypedConfig(any)) => any.type_url.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(
            types,
            [
                "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type.googleapis.com/xds.type.v3.TypedStruct",
                "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            ]
        );
        let proxy: TcpProxy = typed_config(&chain.filters[3]);
        assert_eq!(
            proxy.cluster_specifier,
            Some(ClusterSpecifier::Cluster("inbound|9080||".into()))
        );
    }

    #[test]
    fn reads_json_too() {
        let text = r#"{"resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "c", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"}]}"#;
        let anys = parse_resources(text).unwrap();
        let c: Cluster = decode(&anys[0]);
        assert_eq!(c.name, "c");
        assert_eq!(c.lb_policy, 6);
    }

    #[test]
    fn an_empty_resource_list_is_an_empty_snapshot() {
        assert!(parse_resources("resources: []").unwrap().is_empty());
        assert!(parse_resources("resources:").unwrap().is_empty());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse_resources("resources:\n- name: a\n  bad: [1, 2\n").unwrap_err();
        let FileError::Syntax { line, .. } = &err else {
            panic!("syntax error expected, got {err}");
        };
        assert!(line.is_some());
        assert!(err.to_string().contains("line"), "{err}");
    }

    #[test]
    fn the_document_shape_is_checked() {
        assert_eq!(parse_resources("- a").unwrap_err(), FileError::NotAMapping);
        assert_eq!(
            parse_resources("version_info: x").unwrap_err(),
            FileError::MissingResources
        );
        assert_eq!(
            parse_resources("resources: []\nresource: []").unwrap_err(),
            FileError::UnknownTopLevelKey("resource".into())
        );
        assert_eq!(
            parse_resources("resources: {a: 1}").unwrap_err(),
            FileError::ResourcesNotAList
        );
        assert_eq!(
            parse_resources("resources: [1]").unwrap_err(),
            FileError::ItemNotAMapping { index: 0 }
        );
    }

    #[test]
    fn items_need_a_known_type() {
        let text = r#"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: ok
- name: no_type
"#;
        assert_eq!(
            parse_resources(text).unwrap_err(),
            FileError::MissingType { index: 1 }
        );
        let text = r#"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listenr
  name: typo
"#;
        let err = parse_resources(text).unwrap_err();
        assert!(
            matches!(&err, FileError::UnknownType { index: 0, type_url } if type_url.ends_with("Listenr")),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_their_path() {
        let text = TCP_WEIGHTED.replace("weight: 10", "wieght: 10");
        let err = parse_resources(&text).unwrap_err();
        let FileError::Invalid {
            index,
            path,
            message,
            ..
        } = &err
        else {
            panic!("invalid item expected, got {err}");
        };
        assert_eq!(*index, 0);
        assert!(message.contains("wieght"), "{err}");
        assert!(
            path.starts_with("filter_chains[0].filters[0].typed_config"),
            "{err}"
        );
    }

    #[test]
    fn wrong_values_and_nested_unknown_types_are_errors() {
        let text = TCP_WEIGHTED.replace("port_value: 9000", "port_value: nine");
        let err = parse_resources(&text).unwrap_err();
        assert!(
            matches!(&err, FileError::Invalid { path, .. } if path.contains("port_value")),
            "{err}"
        );

        let text = TCP_WEIGHTED.replace("tcp_proxy.v3.TcpProxy", "tcp_proxy.v3.TcpProxi");
        let err = parse_resources(&text).unwrap_err();
        assert!(
            matches!(&err, FileError::Invalid { message, .. } if message.contains("TcpProxi")),
            "{err}"
        );
        assert!(err.to_string().starts_with("resources[0] of type"), "{err}");
    }

    const WORKLOADS: &str = r#"
resources:
- "@type": type.googleapis.com/istio.workload.Address
  service:
    name: web
    namespace: default
    hostname: web.default.svc.cluster.local
    addresses: [{ address: 10.96.0.1 }, { network: n1, address: "fd00::1" }]
    ports: [{ service_port: 80, target_port: 8080 }]
    load_balancing: { routing_preference: [REGION, ZONE], mode: FAILOVER }
- "@type": type.googleapis.com/istio.workload.Address
  workload:
    uid: c1/pod/web-1
    addresses: [10.0.0.1, "fd00::a"]
    locality: { region: r1, zone: z1 }
    services:
      default/web.default.svc.cluster.local: { ports: [{ service_port: 80, target_port: 9090 }] }
- "@type": type.googleapis.com/istio.workload.Address
  workload: { uid: c1/pod/base64, addresses: [CgAAAg==] }
- "@type": type.googleapis.com/istio.security.Authorization
  name: allow-test
  namespace: default
  rules: [{ clauses: [{ matches: [{ source_ips: [{ address: 10.1.0.0, length: 16 }] }] }] }]
"#;

    #[test]
    fn reads_istio_workload_api_items_with_readable_addresses() {
        use crate::workload::proto::security::Authorization;
        use crate::workload::proto::workload::{address::Type, Address};
        let anys = parse_resources(WORKLOADS).unwrap();
        assert_eq!(anys.len(), 4);
        let Some(Type::Service(svc)) = Address::decode(anys[0].value.as_slice()).unwrap().r#type
        else {
            panic!("service expected")
        };
        assert_eq!(svc.addresses[0].address, vec![10, 96, 0, 1]);
        assert_eq!(svc.addresses[1].address.len(), 16);
        assert_eq!(svc.load_balancing.unwrap().routing_preference, vec![1, 2]);
        let Some(Type::Workload(w)) = Address::decode(anys[1].value.as_slice()).unwrap().r#type
        else {
            panic!("workload expected")
        };
        assert_eq!(w.addresses[0], vec![10, 0, 0, 1]);
        assert_eq!(w.services.len(), 1);
        let Some(Type::Workload(w)) = Address::decode(anys[2].value.as_slice()).unwrap().r#type
        else {
            panic!("workload expected")
        };
        assert_eq!(w.addresses[0], vec![10, 0, 0, 2], "base64 still works");
        let policy = Authorization::decode(anys[3].value.as_slice()).unwrap();
        assert_eq!(
            policy.rules[0].clauses[0].matches[0].source_ips[0].address,
            vec![10, 1, 0, 0]
        );
    }

    #[test]
    fn envoy_socket_addresses_stay_strings() {
        // The IP rewrite is for Istio items only: an Envoy address is text.
        let anys = parse_resources(TCP_WEIGHTED).unwrap();
        let l: Listener = decode(&anys[0]);
        assert!(format!("{:?}", l.address).contains("10.96.0.10"));
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(&[10, 0, 0, 2]), "CgAAAg==");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
