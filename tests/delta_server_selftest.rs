//! The delta ADS client (`kmesh::xds::delta::run`) against the test delta
//! control plane (`common::delta_server`) on loopback: wildcard subscription
//! of the workload API types, ACK/NACK by nonce, removals, resuming after a
//! control-plane restart from `initial_resource_versions`, TLS with a bearer
//! token and ClusterID, and a response larger than gRPC's default limit.
//!
//! No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::delta_server::DeltaServer;
use common::xds_server::tls_material;
use envoy_types::pb::envoy::service::discovery::v3::Resource;
use envoy_types::pb::google::protobuf::Any;
use kmesh::workload::proto::workload::{address, Address, Workload};
use kmesh::workload::proto::{security::Authorization, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use kmesh::xds::delta::{self, DeltaHandler, DeltaStatus};
use kmesh::xds::identity::Identity;
use kmesh::xds::transport::{AdsConfig, TlsSettings};
use prost::Message;

/// Generous for the 2-core VMs; most waits end in milliseconds.
const T: Duration = Duration::from_secs(15);

// ---- payloads ----

fn workload(uid: &str, ip: [u8; 4]) -> Any {
    let address = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.to_string(),
            name: uid.rsplit('/').next().unwrap_or(uid).to_string(),
            namespace: "default".to_string(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        })),
    };
    Any {
        type_url: ADDRESS_TYPE_URL.to_string(),
        value: address.encode_to_vec(),
    }
}

fn policy(name: &str) -> Any {
    let authz = Authorization {
        name: name.to_string(),
        namespace: "default".to_string(),
        ..Default::default()
    };
    Any {
        type_url: AUTHORIZATION_TYPE_URL.to_string(),
        value: authz.encode_to_vec(),
    }
}

/// A payload the recording handler rejects.
fn invalid_address() -> Any {
    Any {
        type_url: ADDRESS_TYPE_URL.to_string(),
        value: b"\xff\xff not protobuf".to_vec(),
    }
}

fn entry(name: &str, version: &str, any: Any) -> (String, String, Any) {
    (name.to_string(), version.to_string(), any)
}

// ---- the client under test, with a recording handler ----

#[derive(Debug, Clone)]
struct Change {
    type_url: String,
    added: Vec<(String, String, usize)>,
    removed: Vec<String>,
}

#[derive(Default)]
struct Record {
    /// type_url -> name -> version: what the handler holds.
    held: BTreeMap<String, BTreeMap<String, String>>,
    changes: Vec<Change>,
    status: DeltaStatus,
}

/// Decodes each resource as its type; a resource that does not decode is
/// rejected by name (NACK) and the others of the response are applied.
struct Recorder(Arc<Mutex<Record>>);

impl Recorder {
    fn check(type_url: &str, r: &Resource) -> Result<(), String> {
        let Some(any) = &r.resource else {
            return Err(format!("{}: field resource is missing", r.name));
        };
        let decoded = if type_url == ADDRESS_TYPE_URL {
            Address::decode(any.value.as_slice()).map(|_| ())
        } else {
            Authorization::decode(any.value.as_slice()).map(|_| ())
        };
        decoded.map_err(|e| format!("{}: field resource.value does not decode: {e}", r.name))
    }
}

impl DeltaHandler for Recorder {
    fn type_urls(&self) -> Vec<String> {
        vec![ADDRESS_TYPE_URL.into(), AUTHORIZATION_TYPE_URL.into()]
    }

    fn initial_resource_versions(&self, type_url: &str) -> HashMap<String, String> {
        let rec = self.0.lock().unwrap();
        rec.held
            .get(type_url)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn on_response(
        &mut self,
        type_url: &str,
        added: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<(), String> {
        let mut rec = self.0.lock().unwrap();
        rec.changes.push(Change {
            type_url: type_url.to_string(),
            added: added
                .iter()
                .map(|r| {
                    let len = r.resource.as_ref().map_or(0, |a| a.value.len());
                    (r.name.clone(), r.version.clone(), len)
                })
                .collect(),
            removed: removed.clone(),
        });
        let held = rec.held.entry(type_url.to_string()).or_default();
        let mut rejected = Vec::new();
        for r in added {
            match Self::check(type_url, &r) {
                Ok(()) => {
                    held.insert(r.name, r.version);
                }
                Err(e) => rejected.push(e),
            }
        }
        for name in removed {
            held.remove(&name);
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(rejected.join("; "))
        }
    }

    fn on_status(&mut self, status: &DeltaStatus) {
        self.0.lock().unwrap().status = status.clone();
    }
}

/// `delta::run` on its own runtime; dropping the client stops it.
struct Client {
    record: Arc<Mutex<Record>>,
    _runtime: tokio::runtime::Runtime,
}

impl Client {
    fn start(config: AdsConfig) -> Client {
        let record = Arc::new(Mutex::new(Record::default()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut handler = Recorder(record.clone());
        runtime.spawn(async move { delta::run(config, &mut handler).await });
        Client {
            record,
            _runtime: runtime,
        }
    }

    fn held(&self, type_url: &str) -> BTreeMap<String, String> {
        self.record
            .lock()
            .unwrap()
            .held
            .get(type_url)
            .cloned()
            .unwrap_or_default()
    }

    fn changes(&self) -> Vec<Change> {
        self.record.lock().unwrap().changes.clone()
    }

    fn status(&self) -> DeltaStatus {
        self.record.lock().unwrap().status.clone()
    }

    /// Waits until `ok` holds of the record.
    fn wait(&self, what: &str, ok: impl Fn(&Record) -> bool) {
        let deadline = Instant::now() + T;
        while !ok(&self.record.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "client: {what} not within {T:?}; status {:?}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn identity() -> Identity {
    Identity {
        instance_ip: "10.0.0.7".into(),
        pod_name: "kmesh-abc".into(),
        pod_namespace: "kmesh-system".into(),
        cluster_id: "Kubernetes".into(),
        node_name: "node-1".into(),
    }
}

fn config(uri: String) -> AdsConfig {
    AdsConfig {
        uri,
        tls: None,
        token_file: None,
        node: identity().ztunnel_node(),
        cluster_id: "Kubernetes".into(),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
    }
}

/// Waits for both initial requests of `stream` and the ACKs of the server's
/// answers to them.
fn wait_subscribed(server: &DeltaServer, stream: u64) {
    for t in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        server.wait_for_initial(stream, t, T);
        let deadline = Instant::now() + T;
        let first = loop {
            if let Some(r) = server.first_response(stream, t) {
                break r;
            }
            assert!(Instant::now() < deadline, "no answer\n{}", server.history());
            std::thread::sleep(Duration::from_millis(5));
        };
        server.wait_for_ack(&first.nonce, T);
    }
}

fn names(list: &[(String, String, usize)]) -> Vec<(&str, &str)> {
    list.iter()
        .map(|(n, v, _)| (n.as_str(), v.as_str()))
        .collect()
}

fn versions(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn wildcard_subscription_then_pushes_are_acked_by_nonce_and_removals_arrive() {
    let server = DeltaServer::start();
    let client = Client::start(config(server.url()));

    // One stream, one wildcard subscription per type: no names, no nonce,
    // the ztunnel node, nothing held yet.
    for t in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        let first = server.wait_for_initial(1, t, T);
        assert!(
            first.subscribe.is_empty() && first.unsubscribe.is_empty(),
            "{first:?}"
        );
        assert!(first.initial_resource_versions.is_empty());
        assert_eq!(
            first.node_id(),
            Some("ztunnel~10.0.0.7~kmesh-abc.kmesh-system~kmesh-system.svc.cluster.local")
        );
    }
    wait_subscribed(&server, 1);

    let nonce = server
        .push(
            ADDRESS_TYPE_URL,
            vec![
                entry("default/a", "1", workload("default/a", [10, 1, 0, 1])),
                entry("default/b", "1", workload("default/b", [10, 1, 0, 2])),
            ],
            vec![],
        )
        .pop()
        .unwrap();
    let ack = server.wait_for_ack(&nonce, T);
    assert_eq!(ack.type_url, ADDRESS_TYPE_URL);
    assert!(ack.node.is_none() && ack.subscribe.is_empty());
    assert_eq!(
        client.held(ADDRESS_TYPE_URL),
        versions(&[("default/a", "1"), ("default/b", "1")])
    );

    let nonce = server.push_one(AUTHORIZATION_TYPE_URL, "default/deny", "7", policy("deny"));
    server.wait_for_ack(&nonce, T);
    assert_eq!(
        client.held(AUTHORIZATION_TYPE_URL),
        versions(&[("default/deny", "7")])
    );

    let nonce = server.remove(ADDRESS_TYPE_URL, &["default/a"]);
    server.wait_for_ack(&nonce, T);
    let last = client.changes().pop().unwrap();
    assert_eq!(last.type_url, ADDRESS_TYPE_URL);
    assert!(last.added.is_empty());
    assert_eq!(last.removed, vec!["default/a".to_string()]);
    assert_eq!(
        client.held(ADDRESS_TYPE_URL),
        versions(&[("default/b", "1")])
    );

    client.wait("the status to count the ACKs", |r| {
        r.status
            .types
            .get(ADDRESS_TYPE_URL)
            .is_some_and(|t| t.acks == 3)
    });
    let status = client.status();
    assert!(status.connected);
    assert_eq!(status.reconnects, 0);
    let t = &status.types[ADDRESS_TYPE_URL];
    assert_eq!((t.responses, t.nacks, t.resources), (3, 0, 1));
    assert_eq!((t.added, t.removed), (2, 1));
    assert_eq!(t.nonce, nonce);
    assert_eq!(server.connections(), 1);
}

#[test]
fn handler_error_is_nacked_with_the_detail_and_the_next_good_push_is_acked() {
    let server = DeltaServer::start();
    let client = Client::start(config(server.url()));
    wait_subscribed(&server, 1);

    let nonce = server
        .push(
            ADDRESS_TYPE_URL,
            vec![
                entry("default/good", "1", workload("default/good", [10, 1, 0, 3])),
                entry("default/broken", "1", invalid_address()),
            ],
            vec![],
        )
        .pop()
        .unwrap();
    let nack = server.wait_for_nack(&nonce, T);
    let (code, message) = nack.error_detail.unwrap();
    assert_eq!(code, 3, "INVALID_ARGUMENT");
    assert!(
        message.starts_with("default/broken: field resource.value does not decode"),
        "{message}"
    );
    // The good resource of the NACKed response was applied.
    assert_eq!(
        client.held(ADDRESS_TYPE_URL),
        versions(&[("default/good", "1")])
    );

    let nonce = server.push_one(
        ADDRESS_TYPE_URL,
        "default/broken",
        "2",
        workload("default/broken", [10, 1, 0, 4]),
    );
    server.wait_for_ack(&nonce, T);
    client.wait("the status to show the ACK", |r| {
        r.status
            .types
            .get(ADDRESS_TYPE_URL)
            .is_some_and(|t| t.last_result == Some("ACK") && t.nonce == nonce)
    });
    let t = &client.status().types[ADDRESS_TYPE_URL];
    assert_eq!((t.acks, t.nacks, t.resources), (2, 1, 2));
    assert_eq!(t.last_error, None);
}

#[test]
fn after_a_restart_on_the_same_port_the_client_resumes_from_what_it_holds() {
    let mut server = DeltaServer::start();
    let client = Client::start(config(server.url()));
    wait_subscribed(&server, 1);
    let nonce = server
        .push(
            ADDRESS_TYPE_URL,
            vec![
                entry("default/a", "1", workload("default/a", [10, 2, 0, 1])),
                entry("default/b", "1", workload("default/b", [10, 2, 0, 2])),
                entry("default/c", "1", workload("default/c", [10, 2, 0, 3])),
            ],
            vec![],
        )
        .pop()
        .unwrap();
    server.wait_for_ack(&nonce, T);
    let nonce = server.push_one(AUTHORIZATION_TYPE_URL, "default/p", "1", policy("p"));
    server.wait_for_ack(&nonce, T);

    server.shutdown();
    client.wait("the stream to drop", |r| !r.status.connected);
    // While the control plane is down: a changes, b goes, d comes, c stays.
    let sent = server.push(
        ADDRESS_TYPE_URL,
        vec![
            entry("default/a", "2", workload("default/a", [10, 2, 0, 9])),
            entry("default/d", "1", workload("default/d", [10, 2, 0, 4])),
        ],
        vec!["default/b".into()],
    );
    assert!(sent.is_empty(), "nothing is sent while stopped");
    let port = server.addr().port();
    server.restart();
    assert_eq!(server.addr().port(), port);

    // The client's first requests on the new stream say what it holds.
    let initial = server.wait_for_initial(2, ADDRESS_TYPE_URL, T);
    assert_eq!(
        initial.initial_resource_versions,
        versions(&[("default/a", "1"), ("default/b", "1"), ("default/c", "1")])
    );
    assert!(initial.subscribe.is_empty(), "still a wildcard");
    let initial = server.wait_for_initial(2, AUTHORIZATION_TYPE_URL, T);
    assert_eq!(
        initial.initial_resource_versions,
        versions(&[("default/p", "1")])
    );
    wait_subscribed(&server, 2);

    // Only the difference came back: a at its new version, d, and b as
    // removed; c (same version) and p were not sent again.
    let answer = server.first_response(2, ADDRESS_TYPE_URL).unwrap();
    let mut added = answer.added.clone();
    added.sort();
    assert_eq!(
        added,
        vec![
            ("default/a".to_string(), "2".to_string()),
            ("default/d".to_string(), "1".to_string())
        ]
    );
    assert_eq!(answer.removed, vec!["default/b".to_string()]);
    let answer = server.first_response(2, AUTHORIZATION_TYPE_URL).unwrap();
    assert!(answer.added.is_empty() && answer.removed.is_empty());

    let change = client
        .changes()
        .into_iter()
        .rev()
        .find(|c| c.type_url == ADDRESS_TYPE_URL)
        .unwrap();
    let mut got = names(&change.added);
    got.sort();
    assert_eq!(got, vec![("default/a", "2"), ("default/d", "1")]);
    assert_eq!(change.removed, vec!["default/b".to_string()]);
    assert_eq!(
        client.held(ADDRESS_TYPE_URL),
        versions(&[("default/a", "2"), ("default/c", "1"), ("default/d", "1")])
    );
    client.wait("the status to show the reconnect", |r| {
        r.status.connected && r.status.reconnects >= 1
    });
    assert_eq!(server.connections(), 2);
}

#[test]
fn tls_with_a_bearer_token_and_cluster_id() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = tls_material(dir.path());
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "header.payload.signature\n").unwrap();
    let server = DeltaServer::start_tls(cert, key);
    assert!(server.url().starts_with("https://"));

    let mut cfg = config(server.url());
    cfg.tls = Some(TlsSettings {
        root_cert: ca,
        domain: Some("istiod.test".into()),
    });
    cfg.token_file = Some(token);
    let _client = Client::start(cfg);
    wait_subscribed(&server, 1);
    let nonce = server.push_one(AUTHORIZATION_TYPE_URL, "default/p", "1", policy("p"));
    server.wait_for_ack(&nonce, T);

    let streams = server.streams();
    assert_eq!(streams.len(), 1);
    assert_eq!(
        streams[0].authorization.as_deref(),
        Some("Bearer header.payload.signature")
    );
    assert_eq!(streams[0].cluster_id.as_deref(), Some("Kubernetes"));
}

#[test]
fn a_20_mb_response_is_accepted() {
    let server = DeltaServer::start();
    let client = Client::start(config(server.url()));
    wait_subscribed(&server, 1);

    // One workload carrying 20 MB (well above gRPC's 4 MB default) in a
    // field the schema has, so the handler decodes it.
    let mut big = Workload {
        uid: "default/big".into(),
        name: "big".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    big.canonical_name = "x".repeat(20 * 1024 * 1024);
    let payload = Any {
        type_url: ADDRESS_TYPE_URL.to_string(),
        value: Address {
            r#type: Some(address::Type::Workload(big)),
        }
        .encode_to_vec(),
    };
    let size = payload.value.len();
    let nonce = server.push_one(ADDRESS_TYPE_URL, "default/big", "1", payload);
    server.wait_for_ack(&nonce, T);
    let change = client.changes().pop().unwrap();
    assert_eq!(change.added[0].2, size);
    assert!(size > 20 * 1024 * 1024);
}

/// The serving rules, checked with a plain gRPC client that sends exactly
/// the requests under test.
mod serving_rules {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    };
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    const TYPE: &str = "type.googleapis.com/test.Opaque";

    struct Stream {
        tx: mpsc::Sender<DeltaDiscoveryRequest>,
        rx: tonic::Streaming<DeltaDiscoveryResponse>,
    }

    impl Stream {
        async fn open(server: &DeltaServer) -> Stream {
            let mut client = AggregatedDiscoveryServiceClient::connect(server.url())
                .await
                .unwrap();
            let (tx, rx) = mpsc::channel(8);
            let rx = client
                .delta_aggregated_resources(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            Stream { tx, rx }
        }

        async fn send(&self, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) {
            self.send_req(DeltaDiscoveryRequest {
                type_url: TYPE.into(),
                resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
                resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
                response_nonce: nonce.into(),
                ..Default::default()
            })
            .await;
        }

        async fn send_req(&self, req: DeltaDiscoveryRequest) {
            self.tx.send(req).await.unwrap();
        }

        async fn recv(&mut self) -> DeltaDiscoveryResponse {
            tokio::time::timeout(T, self.rx.message())
                .await
                .expect("a response in time")
                .unwrap()
                .expect("the stream is open")
        }

        /// No response within a short while.
        async fn quiet(&mut self) {
            let got = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await;
            assert!(got.is_err(), "unexpected response: {got:?}");
        }
    }

    fn opaque(text: &str) -> Any {
        Any {
            type_url: TYPE.into(),
            value: text.as_bytes().to_vec(),
        }
    }

    fn added(resp: &DeltaDiscoveryResponse) -> Vec<(String, String)> {
        let mut v: Vec<_> = resp
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        v.sort();
        v
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn star_and_named_subscriptions_initial_versions_and_stale_nonces() {
        let server = DeltaServer::start();
        let none = server.push(
            TYPE,
            vec![entry("a", "1", opaque("a")), entry("b", "1", opaque("b"))],
            vec![],
        );
        assert!(none.is_empty(), "no client yet");

        // An explicit `*` is a wildcard.
        let mut wild = Stream::open(&server).await;
        wild.send(&["*"], &[], "").await;
        let first = wild.recv().await;
        assert_eq!(added(&first), pairs(&[("a", "1"), ("b", "1")]));
        assert!(first.removed_resources.is_empty());
        // A nonce that was never sent is stale: recorded, not answered.
        wild.send(&[], &[], "bogus").await;
        wild.send(&[], &[], &first.nonce).await;
        wild.quiet().await;
        let reqs = server.requests();
        assert!(reqs.iter().any(|r| r.response_nonce == "bogus" && r.stale));
        assert!(reqs
            .iter()
            .any(|r| r.response_nonce == first.nonce && r.is_ack() && !r.stale));

        // Subscribe-and-unsubscribe `*` is "nothing yet": answered empty;
        // a later name brings just that resource.
        let mut named = Stream::open(&server).await;
        named.send(&["*"], &["*"], "").await;
        let empty = named.recv().await;
        assert!(empty.resources.is_empty() && empty.removed_resources.is_empty());
        named.send(&["b"], &[], &empty.nonce).await;
        assert_eq!(added(&named.recv().await), pairs(&[("b", "1")]));

        // A push goes to the streams it concerns only.
        let nonces = server.push(TYPE, vec![entry("c", "1", opaque("c"))], vec![]);
        assert_eq!(nonces.len(), 1);
        let pushed = wild.recv().await;
        assert_eq!(pushed.nonce, nonces[0]);
        assert_eq!(added(&pushed), pairs(&[("c", "1")]));
        named.quiet().await;

        // initial_resource_versions: same version skipped, other version
        // resent, unknown name removed.
        let mut resumed = Stream::open(&server).await;
        resumed
            .send_req(DeltaDiscoveryRequest {
                type_url: TYPE.into(),
                initial_resource_versions: HashMap::from([
                    ("a".to_string(), "1".to_string()),
                    ("b".to_string(), "0".to_string()),
                    ("gone".to_string(), "3".to_string()),
                ]),
                ..Default::default()
            })
            .await;
        let diff = resumed.recv().await;
        assert_eq!(added(&diff), pairs(&[("b", "1"), ("c", "1")]));
        assert_eq!(diff.removed_resources, vec!["gone".to_string()]);

        // drop_streams ends every stream with status OK.
        server.drop_streams();
        let end = tokio::time::timeout(T, wild.rx.message()).await.unwrap();
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
}
