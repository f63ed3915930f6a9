//! Checks the test control plane (`common::xds_server`) and the Envoy oracle
//! (`common::envoy`) before any kmesh test relies on them: a real Envoy takes
//! CDS/EDS/LDS/RDS from the test server and ACKs them, NACKs an invalid
//! cluster, and comes back after the server ends its streams or restarts.
//! A plain gRPC client checks the SotW serving rules exactly.
//!
//! No root needed. Without an Envoy binary the Envoy tests print SKIP (and
//! fail under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::envoy::{require_envoy, Envoy};
use common::xds_server::{resources_from_yaml, XdsServer, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use serde_json::Value;

/// Envoy startup plus a first config can take seconds on the 2-core VMs.
const T: Duration = Duration::from_secs(30);

// ---- snapshot builders (Envoy proto3 JSON as YAML) ----

fn eds_cluster(name: &str) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: "{name}"
  type: EDS
  connect_timeout: 1s
  eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}"#
    )
}

fn assignment(cluster: &str, endpoints: &[(&str, u16)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(ip, port)| {
            format!(
                "\n    - endpoint: {{ address: {{ socket_address: {{ address: \"{ip}\", port_value: {port} }} }} }}"
            )
        })
        .collect();
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: "{cluster}"
  endpoints:
  - lb_endpoints:{eps}"#
    )
}

/// Listeners are `bind_to_port: false`, as Istio's per-service listeners:
/// Envoy must not open ports on the host (and cannot bind a service VIP).
fn tcp_listener(name: &str, addr: &str, port: u16, cluster: &str) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: "{name}"
  address: {{ socket_address: {{ address: "{addr}", port_value: {port} }} }}
  bind_to_port: false
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: "{name}"
        cluster: "{cluster}""#
    )
}

fn http_listener(name: &str, addr: &str, port: u16, route_config: &str) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: "{name}"
  address: {{ socket_address: {{ address: "{addr}", port_value: {port} }} }}
  bind_to_port: false
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: "{name}"
        rds:
          route_config_name: "{route_config}"
          config_source: {{ ads: {{}}, resource_api_version: V3 }}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
    )
}

fn route_config(name: &str, cluster: &str) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: "{name}"
  virtual_hosts:
  - name: "{cluster}"
    domains: ["*"]
    routes:
    - match: {{ prefix: "/" }}
      route: {{ cluster: "{cluster}" }}"#
    )
}

fn yaml(parts: &[String]) -> String {
    format!("resources:{}\n", parts.concat())
}

/// The snapshot of test (a): a TCP listener on a VIP and an HTTP listener
/// through RDS, both to the EDS cluster `svc` with one endpoint.
fn mesh_snapshot(endpoint: &str) -> String {
    yaml(&[
        eds_cluster("svc"),
        assignment("svc", &[(endpoint, 8080)]),
        tcp_listener("svc_tcp", "10.96.0.1", 80, "svc"),
        http_listener("http_8080", "0.0.0.0", 8080, "8080"),
        route_config("8080", "svc"),
    ])
}

// ---- Envoy config_dump readers ----

/// The `configs[]` entry whose `@type` ends with `kind`, e.g. "ClustersConfigDump".
fn dump_section<'a>(dump: &'a Value, kind: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .and_then(|configs| {
            configs.iter().find(|c| {
                c["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(&format!(".{kind}")))
            })
        })
        .unwrap_or(&Value::Null)
}

fn active_listeners(dump: &Value) -> Vec<String> {
    dump_section(dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| !l["active_state"].is_null())
        .filter_map(|l| l["name"].as_str().map(str::to_string))
        .collect()
}

/// `(name, version_info)` of the dynamic active clusters.
fn active_clusters(dump: &Value) -> Vec<(String, String)> {
    dump_section(dump, "ClustersConfigDump")["dynamic_active_clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["cluster"]["name"].as_str()?.to_string(),
                c["version_info"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn route_configs(dump: &Value) -> Vec<String> {
    dump_section(dump, "RoutesConfigDump")["dynamic_route_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["route_config"]["name"].as_str().map(str::to_string))
        .collect()
}

/// `ip:port` of every endpoint Envoy holds for `cluster` (from EDS).
fn endpoints_of(dump: &Value, cluster: &str) -> Vec<String> {
    dump_section(dump, "EndpointsConfigDump")["dynamic_endpoint_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["endpoint_config"])
        .filter(|c| c["cluster_name"].as_str() == Some(cluster))
        .flat_map(|c| c["endpoints"].as_array().into_iter().flatten())
        .flat_map(|l| l["lb_endpoints"].as_array().into_iter().flatten())
        .filter_map(|e| {
            let sa = &e["endpoint"]["address"]["socket_address"];
            Some(format!("{}:{}", sa["address"].as_str()?, sa["port_value"]))
        })
        .collect()
}

/// Polls Envoy's config dump until `ok` holds; panics with the last dump.
fn wait_dump(envoy: &Envoy, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let dump = envoy.config_dump();
        if ok(&dump) {
            return dump;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy's config never showed {what} within {T:?}:\n{dump:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn names(v: &[(String, String)]) -> Vec<&str> {
    v.iter().map(|(n, _)| n.as_str()).collect()
}

// ---- tests with a real Envoy ----

#[test]
fn envoy_acks_cds_eds_lds_rds_and_shows_the_config() {
    if require_envoy().is_none() {
        return;
    }
    let xds = XdsServer::start();
    xds.set_yaml("1", &mesh_snapshot("127.0.0.2"));
    let envoy = Envoy::start_ads(xds.addr(), "selftest-a");

    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        let ack = xds.wait_for_ack(t, "1", T);
        assert_eq!(ack.stream, 1, "{}", xds.history());
    }
    // Envoy asked for what the listeners and the cluster reference.
    let eds = xds.wait_for(|r| r.type_url == ENDPOINT, T);
    assert_eq!(eds.resource_names, ["svc"]);
    let rds = xds.wait_for(|r| r.type_url == ROUTE, T);
    assert_eq!(rds.resource_names, ["8080"]);
    // Node and stream metadata are recorded.
    let first = &xds.requests()[0];
    assert_eq!(first.node_id.as_deref(), Some("selftest-a"));
    assert_eq!(first.cluster_id_metadata.as_deref(), Some("Kubernetes"));
    assert_eq!(xds.connections(), 1);

    let dump = wait_dump(
        &envoy,
        "listeners, cluster svc, its endpoint and route 8080",
        |d| {
            let listeners = active_listeners(d);
            listeners.contains(&"svc_tcp".to_string())
                && listeners.contains(&"http_8080".to_string())
                && names(&active_clusters(d)).contains(&"svc")
                && endpoints_of(d, "svc") == ["127.0.0.2:8080"]
                && route_configs(d).contains(&"8080".to_string())
        },
    );
    assert!(
        active_clusters(&dump).contains(&("svc".into(), "1".into())),
        "{dump:#}"
    );

    // An endpoint change is pushed at once and ACKed.
    let nonces = xds.set(
        ENDPOINT,
        "2",
        resources_from_yaml(&yaml(&[assignment("svc", &[("127.0.0.3", 8080)])])),
    );
    assert_eq!(nonces.len(), 1, "{}", xds.history());
    let ack = xds.wait_for_ack(ENDPOINT, "2", T);
    assert_eq!(ack.response_nonce, nonces[0]);
    assert_eq!(
        xds.last_nonce(ENDPOINT).as_deref(),
        Some(nonces[0].as_str())
    );
    wait_dump(&envoy, "endpoint 127.0.0.3:8080", |d| {
        endpoints_of(d, "svc") == ["127.0.0.3:8080"]
    });
}

#[test]
fn envoy_nacks_an_invalid_cluster_and_a_zero_weight_endpoint() {
    if require_envoy().is_none() {
        return;
    }
    let xds = XdsServer::start();
    xds.set_yaml("1", &mesh_snapshot("127.0.0.2"));
    let envoy = Envoy::start_ads(xds.addr(), "selftest-b");
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        xds.wait_for_ack(t, "1", T);
    }
    envoy.wait_ready(T);

    // A ring hash whose minimum ring is larger than its maximum: Envoy
    // rejects the cluster and NACKs the response, naming it.
    let bad = r#"
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: bad
  type: STATIC
  connect_timeout: 1s
  lb_policy: RING_HASH
  ring_hash_lb_config: { minimum_ring_size: 4096, maximum_ring_size: 1024 }"#;
    let nonces = xds.set_yaml("2", &yaml(&[eds_cluster("svc"), bad.into()]));
    assert_eq!(nonces.len(), 1, "{}", xds.history());
    let nack = xds.wait_for_nack(CLUSTER, "2", T);
    let (_, message) = nack.error_detail.clone().unwrap();
    assert!(
        message.contains("bad"),
        "NACK should name the cluster: {message}"
    );
    assert_eq!(
        nack.version_info, "1",
        "a NACK carries the last accepted version"
    );
    assert_eq!(nack.response_nonce, nonces[0]);
    assert!(
        xds.requests()
            .iter()
            .all(|r| r.type_url != CLUSTER || r.version_info != "2"),
        "version 2 was never accepted:\n{}",
        xds.history()
    );
    let dump = envoy.config_dump();
    assert!(names(&active_clusters(&dump)).contains(&"svc"), "{dump:#}");
    assert!(!names(&active_clusters(&dump)).contains(&"bad"), "{dump:#}");

    // EDS: a zero endpoint weight is invalid (weights are >= 1).
    let zero_weight = r#"
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: svc
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: 127.0.0.9, port_value: 8080 } } }
      load_balancing_weight: 0"#;
    xds.set(
        ENDPOINT,
        "3",
        resources_from_yaml(&yaml(&[zero_weight.into()])),
    );
    let nack = xds.wait_for_nack(ENDPOINT, "3", T);
    assert_eq!(nack.version_info, "1", "{}", xds.history());
    assert_eq!(
        endpoints_of(&envoy.config_dump(), "svc"),
        ["127.0.0.2:8080"]
    );
}

#[test]
fn envoy_reconnects_after_drop_streams_and_restart_and_acks_again() {
    if require_envoy().is_none() {
        return;
    }
    let mut xds = XdsServer::start();
    xds.set_yaml("1", &mesh_snapshot("127.0.0.2"));
    let envoy = Envoy::start_ads(xds.addr(), "selftest-c");
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        xds.wait_for_ack(t, "1", T);
    }
    assert_eq!(xds.connections(), 1);

    // The server ends the stream; Envoy opens a new one, says what it has
    // (version 1, no nonce) and ACKs what the new stream sends it.
    xds.drop_streams();
    let hello = xds.wait_for(|r| r.stream == 2 && r.type_url == CLUSTER, T);
    assert_eq!(hello.version_info, "1");
    assert_eq!(hello.response_nonce, "");
    assert_eq!(hello.cluster_id_metadata.as_deref(), Some("Kubernetes"));
    for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
        xds.wait_for(
            |r| {
                r.stream == 2
                    && r.type_url == t
                    && r.version_info == "1"
                    && !r.response_nonce.is_empty()
                    && !r.is_nack()
            },
            T,
        );
    }
    assert_eq!(xds.connections(), 2);

    // The server goes away; a new endpoint set while it is down is served
    // after the restart on the same port.
    xds.stop();
    assert_eq!(xds.open_streams(), 0);
    xds.set(
        ENDPOINT,
        "2",
        resources_from_yaml(&yaml(&[assignment("svc", &[("127.0.0.4", 8080)])])),
    );
    std::thread::sleep(Duration::from_millis(300));
    xds.restart();
    let ack = xds.wait_for_ack(ENDPOINT, "2", T);
    assert!(ack.stream >= 3, "{}", xds.history());
    assert!(xds.connections() >= 3);
    wait_dump(&envoy, "endpoint 127.0.0.4:8080", |d| {
        endpoints_of(d, "svc") == ["127.0.0.4:8080"]
    });
}

// ---- the SotW rules, checked with a plain gRPC client ----

mod client {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Streaming;

    struct Client {
        tx: mpsc::Sender<DiscoveryRequest>,
        rx: Streaming<DiscoveryResponse>,
    }

    impl Client {
        async fn connect(xds: &XdsServer) -> Client {
            let mut grpc = AggregatedDiscoveryServiceClient::connect(xds.url())
                .await
                .unwrap();
            let (tx, requests) = mpsc::channel(16);
            let mut request = tonic::Request::new(ReceiverStream::new(requests));
            request
                .metadata_mut()
                .insert("clusterid", "Kubernetes".parse().unwrap());
            let rx = grpc
                .stream_aggregated_resources(request)
                .await
                .unwrap()
                .into_inner();
            Client { tx, rx }
        }

        async fn send(&self, type_url: &str, version: &str, nonce: &str, names: &[&str]) {
            self.send_req(type_url, version, nonce, names, None).await;
        }

        async fn nack(&self, type_url: &str, version: &str, nonce: &str, names: &[&str]) {
            let status = RpcStatus {
                code: 3,
                message: "rejected by the test".into(),
                details: vec![],
            };
            self.send_req(type_url, version, nonce, names, Some(status))
                .await;
        }

        async fn send_req(
            &self,
            type_url: &str,
            version: &str,
            nonce: &str,
            names: &[&str],
            error_detail: Option<RpcStatus>,
        ) {
            let req = DiscoveryRequest {
                version_info: version.into(),
                node: Some(Node {
                    id: "client-1".into(),
                    ..Default::default()
                }),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                type_url: type_url.into(),
                response_nonce: nonce.into(),
                error_detail,
                ..Default::default()
            };
            self.tx.send(req).await.unwrap();
        }

        async fn recv(&mut self) -> DiscoveryResponse {
            tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .expect("no response within 10 s")
                .expect("stream failed")
                .expect("stream ended")
        }

        /// Nothing arrives for a while.
        async fn quiet(&mut self) {
            let got = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await;
            assert!(got.is_err(), "unexpected message: {got:?}");
        }
    }

    fn names(resp: &DiscoveryResponse) -> Vec<String> {
        resp.resources
            .iter()
            .map(common::xds_server::resource_name)
            .collect()
    }

    fn clusters(list: &[&str]) -> Vec<envoy_types::pb::google::protobuf::Any> {
        resources_from_yaml(&yaml(
            &list.iter().map(|n| eds_cluster(n)).collect::<Vec<_>>(),
        ))
    }

    fn assignments(list: &[&str]) -> Vec<envoy_types::pb::google::protobuf::Any> {
        resources_from_yaml(&yaml(
            &list
                .iter()
                .map(|n| assignment(n, &[("127.0.0.2", 80)]))
                .collect::<Vec<_>>(),
        ))
    }

    /// Blocking waits on the server from async code.
    fn blocking<R>(f: impl FnOnce() -> R) -> R {
        tokio::task::block_in_place(f)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sotw_rules_wildcard_named_acks_nacks_and_stale_nonces() {
        let xds = XdsServer::start();
        xds.set(CLUSTER, "1", clusters(&["a", "b"]));
        xds.set(ENDPOINT, "1", assignments(&["a", "b"]));
        let mut c = Client::connect(&xds).await;

        // CDS wildcard: everything.
        c.send(CLUSTER, "", "", &[]).await;
        let r = c.recv().await;
        assert_eq!(
            (r.type_url.as_str(), r.version_info.as_str()),
            (CLUSTER, "1")
        );
        assert_eq!(names(&r), ["a", "b"]);
        // The ACK gets no answer.
        c.send(CLUSTER, "1", &r.nonce, &[]).await;
        c.quiet().await;
        let ack = blocking(|| xds.wait_for_ack(CLUSTER, "1", T));
        assert_eq!(ack.node_id.as_deref(), Some("client-1"));
        assert_eq!(ack.cluster_id_metadata.as_deref(), Some("Kubernetes"));

        // EDS by name: only what was asked for.
        c.send(ENDPOINT, "", "", &["a"]).await;
        let e1 = c.recv().await;
        assert_eq!(names(&e1), ["a"]);
        // A wider subscription is answered at once, with the same version.
        c.send(ENDPOINT, "1", &e1.nonce, &["a", "b", "missing"])
            .await;
        let e2 = c.recv().await;
        assert_eq!(names(&e2), ["a", "b"]);
        assert_eq!(e2.version_info, "1");
        assert_ne!(e2.nonce, e1.nonce);
        c.send(ENDPOINT, "1", &e2.nonce, &["a", "b", "missing"])
            .await;
        c.quiet().await;

        // A push: new version, new nonce.
        let nonces = xds.set(CLUSTER, "2", clusters(&["a"]));
        let r2 = c.recv().await;
        assert_eq!(names(&r2), ["a"]);
        assert_eq!(r2.version_info, "2");
        assert_eq!(nonces, vec![r2.nonce.clone()]);
        // NACK: recorded, not answered.
        c.nack(CLUSTER, "1", &r2.nonce, &[]).await;
        c.quiet().await;
        let nack = blocking(|| xds.wait_for_nack(CLUSTER, "2", T));
        assert_eq!(nack.error_detail, Some((3, "rejected by the test".into())));
        assert_eq!(nack.version_info, "1");

        // A request with an old nonce is stale: ignored even though it
        // changes the names.
        c.send(ENDPOINT, "1", &e1.nonce, &["b"]).await;
        c.quiet().await;
        let stale = blocking(|| xds.wait_for(|r| r.stale, T));
        assert_eq!(stale.response_nonce, e1.nonce);

        // send_raw goes out as is and becomes the stream's current nonce.
        let raw = DiscoveryResponse {
            version_info: "99".into(),
            resources: clusters(&["z"]),
            type_url: CLUSTER.into(),
            nonce: "hand-made".into(),
            ..Default::default()
        };
        assert_eq!(xds.send_raw(CLUSTER, raw.clone()), 1);
        assert_eq!(c.recv().await, raw);
        assert_eq!(xds.last_nonce(CLUSTER).as_deref(), Some("hand-made"));
        c.send(CLUSTER, "99", "hand-made", &[]).await;
        let ack = blocking(|| xds.wait_for(|r| r.response_nonce == "hand-made", T));
        assert!(!ack.stale);
        c.quiet().await;

        // drop_streams ends the stream with status OK.
        assert_eq!(xds.open_streams(), 1);
        xds.drop_streams();
        let end = tokio::time::timeout(Duration::from_secs(10), c.rx.message())
            .await
            .expect("stream did not end");
        assert!(matches!(end, Ok(None)), "{end:?}");
        assert_eq!(xds.connections(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_before_the_snapshot_is_served_when_it_is_set_and_restart_keeps_the_port(
    ) {
        let mut xds = XdsServer::start();
        let addr = xds.addr();
        let mut c = Client::connect(&xds).await;
        c.send(ROUTE, "", "", &["r1"]).await;
        c.quiet().await;
        let route = resources_from_yaml(&yaml(&[route_config("r1", "a"), route_config("r2", "b")]));
        xds.set(ROUTE, "7", route);
        let r = c.recv().await;
        assert_eq!(names(&r), ["r1"]);
        assert_eq!(r.version_info, "7");

        blocking(|| xds.stop());
        let end = tokio::time::timeout(Duration::from_secs(10), c.rx.message())
            .await
            .expect("stream did not end");
        assert!(!matches!(end, Ok(Some(_))), "{end:?}");
        assert!(Client::try_connect(&xds).await.is_err());

        blocking(|| xds.restart());
        assert_eq!(xds.addr(), addr);
        let mut c = Client::connect(&xds).await;
        c.send(ROUTE, "7", "", &["r2"]).await;
        let r = c.recv().await;
        assert_eq!(names(&r), ["r2"]);
        assert_eq!(xds.connections(), 2);
        assert_eq!(
            blocking(|| xds.wait_for(|r| r.stream == 2, T)).version_info,
            "7"
        );
    }

    impl Client {
        async fn try_connect(
            xds: &XdsServer,
        ) -> Result<
            AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
            tonic::transport::Error,
        > {
            AggregatedDiscoveryServiceClient::connect(xds.url()).await
        }
    }
}
