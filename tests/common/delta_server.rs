//! A test control plane for delta ADS
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`)
//! on 127.0.0.1. It keeps resources per type (any type URL; payloads are
//! opaque bytes in `Any`), pushes change sets the test makes, records every
//! request (ACKs and NACKs by nonce, subscriptions, initial resource
//! versions, the stream's metadata) and can be stopped and restarted on the
//! same port.
//!
//! It runs its own tokio runtime on a background thread (shared with
//! [`super::xds_server`]), so plain `#[test]` functions drive it
//! synchronously.
//!
//! Serving rules (the delta xDS rules):
//! - The first request of a type on a stream opens a subscription: a
//!   wildcard if it names nothing (legacy wildcard, what Istiod and ztunnel
//!   use) or subscribes `*` (unless it also unsubscribes `*`, ztunnel's
//!   "subscribe to nothing yet"); otherwise the names it subscribes.
//! - That first request is always answered, even with an empty change set:
//!   every stored resource the subscription selects whose version differs
//!   from the request's `initial_resource_versions` (so what the client
//!   already has is not sent again), and as removed every name the client
//!   listed that the server no longer has.
//! - Later requests answer a nonce (ACK, or NACK with `error_detail`) and
//!   may change the subscription; a change is answered with what it newly
//!   selects. A request whose nonce is not the last one sent on the stream
//!   for the type is stale: recorded and otherwise ignored.
//! - [`DeltaServer::push`] changes the stored resources and sends the
//!   change (what each subscription selects of it) at once to every open
//!   stream subscribed to the type that it concerns, each with a fresh
//!   nonce. A push while
//!   stopped only changes the store; a restarted server then serves the
//!   difference to reconnecting clients.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use kmesh::xds::transport::MAX_MESSAGE_BYTES;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use super::xds_server::{serve, serve_again, Running, TlsIdentity};

/// One `DeltaDiscoveryRequest` as the server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Which stream it came on: 1 for the first stream ever opened, and so
    /// on (counting across restarts).
    pub stream: u64,
    pub type_url: String,
    pub response_nonce: String,
    /// `(code, message)` of a NACK.
    pub error_detail: Option<(i32, String)>,
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_resource_versions: BTreeMap<String, String>,
    pub node: Option<Node>,
    /// The nonce was not the last one sent on the stream for this type.
    pub stale: bool,
    pub at: Instant,
}

impl RecordedRequest {
    /// The first request of a type on a stream (it answers no response).
    pub fn is_initial(&self) -> bool {
        self.response_nonce.is_empty()
    }
    pub fn is_ack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error_detail.is_none()
    }
    pub fn is_nack(&self) -> bool {
        self.error_detail.is_some()
    }
    pub fn node_id(&self) -> Option<&str> {
        self.node.as_ref().map(|n| n.id.as_str())
    }
}

/// One `DeltaDiscoveryResponse` the server sent.
#[derive(Debug, Clone)]
pub struct SentResponse {
    pub stream: u64,
    pub type_url: String,
    pub nonce: String,
    /// `(name, version)` of the resources it carried, in order.
    pub added: Vec<(String, String)>,
    pub removed: Vec<String>,
    /// Sent by [`DeltaServer::send_raw`].
    pub raw: bool,
    pub at: Instant,
}

/// What a stream's gRPC metadata carried when it opened.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub stream: u64,
    /// `clusterid`.
    pub cluster_id: Option<String>,
    /// `authorization` (`Bearer <token>`).
    pub authorization: Option<String>,
}

struct Stored {
    version: String,
    resource: Any,
}

/// One stream's subscription to one type.
#[derive(Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// `name -> version` the client has, as far as the server knows: its
    /// initial_resource_versions, then whatever was sent.
    client_has: BTreeMap<String, String>,
    last_nonce: Option<String>,
}

impl Subscription {
    /// From the first request of a type on a stream.
    fn open(req: &DeltaDiscoveryRequest) -> Subscription {
        let star = |list: &[String]| list.iter().any(|n| n == "*");
        let legacy_wildcard =
            req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty();
        Subscription {
            wildcard: legacy_wildcard
                || (star(&req.resource_names_subscribe) && !star(&req.resource_names_unsubscribe)),
            names: req
                .resource_names_subscribe
                .iter()
                .filter(|n| *n != "*")
                .cloned()
                .collect(),
            client_has: req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            last_nonce: None,
        }
    }

    /// Applies a later request's subscribe/unsubscribe lists. Returns
    /// whether anything changed.
    fn update(&mut self, req: &DeltaDiscoveryRequest) -> bool {
        let before = (self.wildcard, self.names.clone());
        for name in &req.resource_names_subscribe {
            if name == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                // The client drops what it unsubscribed from.
                self.client_has.remove(name);
            }
        }
        before != (self.wildcard, self.names.clone())
    }

    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct OpenStream {
    /// The only sender of the response stream: dropping it ends the stream
    /// (gRPC status OK).
    tx: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
    /// Dropping it stops the task that reads the stream's requests.
    _closed: oneshot::Sender<()>,
    subscriptions: HashMap<String, Subscription>,
}

#[derive(Default)]
struct State {
    /// type_url -> name -> resource.
    store: HashMap<String, BTreeMap<String, Stored>>,
    streams: BTreeMap<u64, OpenStream>,
    stream_infos: Vec<StreamInfo>,
    requests: Vec<RecordedRequest>,
    responses: Vec<SentResponse>,
    streams_opened: u64,
    nonces: u64,
}

impl State {
    fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("d{}", self.nonces)
    }

    fn resource(&self, type_url: &str, name: &str) -> Option<Resource> {
        let stored = self.store.get(type_url)?.get(name)?;
        Some(Resource {
            name: name.to_string(),
            version: stored.version.clone(),
            resource: Some(stored.resource.clone()),
            ..Default::default()
        })
    }

    /// What `stream` lacks of `type_url`: selected resources at another
    /// version than the client has, and names the client has that are gone.
    fn difference(&self, stream: u64, type_url: &str) -> (Vec<Resource>, Vec<String>) {
        let Some(sub) = self
            .streams
            .get(&stream)
            .and_then(|s| s.subscriptions.get(type_url))
        else {
            return (Vec::new(), Vec::new());
        };
        let empty = BTreeMap::new();
        let stored = self.store.get(type_url).unwrap_or(&empty);
        let added = stored
            .iter()
            .filter(|(name, r)| sub.wants(name) && sub.client_has.get(*name) != Some(&r.version))
            .filter_map(|(name, _)| self.resource(type_url, name))
            .collect();
        let removed = sub
            .client_has
            .keys()
            .filter(|name| !stored.contains_key(*name))
            .cloned()
            .collect();
        (added, removed)
    }

    /// Sends a response to `stream` and counts what it carries as had by
    /// the client. Returns its nonce, or None when the stream is gone.
    fn send(&mut self, stream: u64, response: DeltaDiscoveryResponse, raw: bool) -> Option<String> {
        let open = self.streams.get_mut(&stream)?;
        let sub = open
            .subscriptions
            .entry(response.type_url.clone())
            .or_default();
        for r in &response.resources {
            sub.client_has.insert(r.name.clone(), r.version.clone());
        }
        for name in &response.removed_resources {
            sub.client_has.remove(name);
        }
        sub.last_nonce = Some(response.nonce.clone());
        self.responses.push(SentResponse {
            stream,
            type_url: response.type_url.clone(),
            nonce: response.nonce.clone(),
            added: response
                .resources
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect(),
            removed: response.removed_resources.clone(),
            raw,
            at: Instant::now(),
        });
        let nonce = response.nonce.clone();
        // A closed receiver means the stream is going away; its reader task
        // removes it.
        let _ = open.tx.send(Ok(response));
        Some(nonce)
    }

    fn send_change(
        &mut self,
        stream: u64,
        type_url: &str,
        added: Vec<Resource>,
        removed: Vec<String>,
    ) -> Option<String> {
        let nonce = self.next_nonce();
        let response = DeltaDiscoveryResponse {
            system_version_info: nonce.clone(),
            resources: added,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.send(stream, response, false)
    }

    fn on_request(&mut self, stream: u64, req: DeltaDiscoveryRequest) {
        let type_url = req.type_url.clone();
        let Some(open) = self.streams.get_mut(&stream) else {
            return;
        };
        let first = !open.subscriptions.contains_key(&type_url);
        let stale = !first
            && !req.response_nonce.is_empty()
            && open
                .subscriptions
                .get(&type_url)
                .and_then(|s| s.last_nonce.as_deref())
                != Some(req.response_nonce.as_str());
        self.requests.push(RecordedRequest {
            stream,
            type_url: type_url.clone(),
            response_nonce: req.response_nonce.clone(),
            error_detail: req
                .error_detail
                .as_ref()
                .map(|s| (s.code, s.message.clone())),
            subscribe: req.resource_names_subscribe.clone(),
            unsubscribe: req.resource_names_unsubscribe.clone(),
            initial_resource_versions: req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            node: req.node.clone(),
            stale,
            at: Instant::now(),
        });
        if stale {
            return;
        }
        if first {
            open.subscriptions
                .insert(type_url.clone(), Subscription::open(&req));
            let (added, removed) = self.difference(stream, &type_url);
            self.send_change(stream, &type_url, added, removed);
            return;
        }
        let changed = open
            .subscriptions
            .get_mut(&type_url)
            .is_some_and(|sub| sub.update(&req));
        if changed {
            let (added, _) = self.difference(stream, &type_url);
            if !added.is_empty() {
                self.send_change(stream, &type_url, added, Vec::new());
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a request is recorded or a stream opens or closes.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct DeltaAds {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for DeltaAds {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the delta test control plane speaks delta xDS only",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let text = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (cluster_id, authorization) = (text("clusterid"), text("authorization"));
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
        let id = {
            let mut state = self.shared.lock();
            state.streams_opened += 1;
            let id = state.streams_opened;
            state.stream_infos.push(StreamInfo {
                stream: id,
                cluster_id,
                authorization,
            });
            state.streams.insert(
                id,
                OpenStream {
                    tx,
                    _closed: closed_tx,
                    subscriptions: HashMap::new(),
                },
            );
            id
        };
        self.shared.changed.notify_all();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // The server ended the stream (drop_streams / shutdown).
                    _ = &mut closed_rx => break,
                    msg = incoming.message() => match msg {
                        Ok(Some(req)) => {
                            shared.lock().on_request(id, req);
                            shared.changed.notify_all();
                        }
                        // The client closed its side or the connection broke.
                        Ok(None) | Err(_) => {
                            shared.lock().streams.remove(&id);
                            shared.changed.notify_all();
                            break;
                        }
                    },
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

fn routes(shared: &Arc<Shared>) -> Routes {
    Routes::new(
        AggregatedDiscoveryServiceServer::new(DeltaAds {
            shared: shared.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// The test delta ADS server. Dropping it stops the server and closes every
/// stream.
pub struct DeltaServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Option<Running>,
    tls: Option<TlsIdentity>,
}

impl DeltaServer {
    /// Starts a plaintext server on 127.0.0.1 on a free port.
    pub fn start() -> DeltaServer {
        DeltaServer::start_on(0, None)
    }

    /// Like [`DeltaServer::start`], serving gRPC over TLS with this PEM
    /// certificate chain and key.
    pub fn start_tls(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> DeltaServer {
        DeltaServer::start_on(0, Some((cert_pem, key_pem)))
    }

    /// Starts on 127.0.0.1:`port` (0: a free port), TLS when given a PEM
    /// certificate chain and key.
    pub fn start_on(port: u16, tls: Option<(Vec<u8>, Vec<u8>)>) -> DeltaServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let tls = tls.map(Arc::new);
        let (running, addr) = serve(
            routes(&shared),
            SocketAddr::from(([127, 0, 0, 1], port)),
            tls.clone(),
        )
        .unwrap_or_else(|e| panic!("delta test server: cannot listen on 127.0.0.1:{port}: {e}"));
        DeltaServer {
            shared,
            addr,
            running: Some(running),
            tls,
        }
    }

    /// Where the server listens (the same address across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://` when serving TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Changes the stored resources of `type_url` — `added` as `(name,
    /// version, payload)` replace what has the same name, `removed` names
    /// go — and sends the change to every open stream subscribed to the
    /// type that selects any of it. Returns the nonces of those responses
    /// (none while stopped or before a client subscribed).
    pub fn push(
        &self,
        type_url: &str,
        added: Vec<(String, String, Any)>,
        removed: Vec<String>,
    ) -> Vec<String> {
        let mut state = self.shared.lock();
        let store = state.store.entry(type_url.to_string()).or_default();
        let names: Vec<String> = added.iter().map(|(name, _, _)| name.clone()).collect();
        for (name, version, resource) in added {
            store.insert(name, Stored { version, resource });
        }
        for name in &removed {
            store.remove(name);
        }
        let subscribed: Vec<u64> = state
            .streams
            .iter()
            .filter(|(_, s)| s.subscriptions.contains_key(type_url))
            .map(|(id, _)| *id)
            .collect();
        let mut nonces = Vec::new();
        for id in subscribed {
            let Some(sub) = state
                .streams
                .get(&id)
                .and_then(|s| s.subscriptions.get(type_url))
            else {
                continue;
            };
            let wanted_removed: Vec<String> =
                removed.iter().filter(|n| sub.wants(n)).cloned().collect();
            let wanted_added: Vec<Resource> = names
                .iter()
                .filter(|n| sub.wants(n))
                .filter_map(|n| state.resource(type_url, n))
                .collect();
            // A stream the change does not concern gets nothing (an empty
            // push still goes to all: a test may want a bare nonce).
            let concerns = !wanted_added.is_empty() || !wanted_removed.is_empty();
            if concerns || (names.is_empty() && removed.is_empty()) {
                nonces.extend(state.send_change(id, type_url, wanted_added, wanted_removed));
            }
        }
        drop(state);
        self.shared.changed.notify_all();
        nonces
    }

    /// [`Self::push`] of one resource; returns the single nonce (panics if
    /// not exactly one stream is subscribed).
    pub fn push_one(&self, type_url: &str, name: &str, version: &str, resource: Any) -> String {
        let nonces = self.push(
            type_url,
            vec![(name.to_string(), version.to_string(), resource)],
            Vec::new(),
        );
        self.single(nonces)
    }

    /// [`Self::push`] of removals only; returns the single nonce.
    pub fn remove(&self, type_url: &str, names: &[&str]) -> String {
        let nonces = self.push(
            type_url,
            Vec::new(),
            names.iter().map(|n| n.to_string()).collect(),
        );
        self.single(nonces)
    }

    fn single(&self, nonces: Vec<String>) -> String {
        match <[String; 1]>::try_from(nonces) {
            Ok([nonce]) => nonce,
            Err(nonces) => panic!(
                "delta test server: expected one subscribed stream, sent {nonces:?}\n{}",
                self.history()
            ),
        }
    }

    /// Sends a hand-made response as is to every open stream subscribed to
    /// `type_url` (or every open stream if none is); the store is not
    /// changed. Returns how many streams it went to.
    pub fn send_raw(&self, type_url: &str, response: DeltaDiscoveryResponse) -> usize {
        let mut state = self.shared.lock();
        let mut targets: Vec<u64> = state
            .streams
            .iter()
            .filter(|(_, s)| s.subscriptions.contains_key(type_url))
            .map(|(id, _)| *id)
            .collect();
        if targets.is_empty() {
            targets = state.streams.keys().copied().collect();
        }
        targets
            .into_iter()
            .filter_map(|id| state.send(id, response.clone(), true))
            .count()
    }

    /// `name -> version` stored for `type_url` now.
    pub fn stored(&self, type_url: &str) -> BTreeMap<String, String> {
        self.shared
            .lock()
            .store
            .get(type_url)
            .map(|m| {
                m.iter()
                    .map(|(k, r)| (k.clone(), r.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Every response sent so far, in order.
    pub fn responses(&self) -> Vec<SentResponse> {
        self.shared.lock().responses.clone()
    }

    /// The response sent with `nonce`.
    pub fn response(&self, nonce: &str) -> Option<SentResponse> {
        self.shared
            .lock()
            .responses
            .iter()
            .find(|r| r.nonce == nonce)
            .cloned()
    }

    /// The first response of `type_url` on `stream` (the answer to the
    /// stream's initial request).
    pub fn first_response(&self, stream: u64, type_url: &str) -> Option<SentResponse> {
        self.shared
            .lock()
            .responses
            .iter()
            .find(|r| r.stream == stream && r.type_url == type_url)
            .cloned()
    }

    /// The metadata of every stream opened so far.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.shared.lock().stream_infos.clone()
    }

    /// Streams opened so far (across restarts).
    pub fn connections(&self) -> u64 {
        self.shared.lock().streams_opened
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.shared.lock().streams.len()
    }

    /// The first recorded request (from the start) that `pred` accepts,
    /// waiting up to `timeout` for one to arrive.
    pub fn try_wait_for(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
        timeout: Duration,
    ) -> Option<RecordedRequest> {
        self.wait_state(timeout, |state| {
            state.requests.iter().find(|r| pred(r)).cloned()
        })
    }

    /// [`Self::try_wait_for`] that panics, listing what was received and
    /// sent, when nothing matches within `timeout`.
    pub fn wait_for(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
        timeout: Duration,
    ) -> RecordedRequest {
        self.try_wait_for(pred, timeout).unwrap_or_else(|| {
            panic!(
                "delta test server: no matching request within {timeout:?}\n{}",
                self.history()
            )
        })
    }

    /// The first request of `type_url` on `stream`.
    pub fn wait_for_initial(
        &self,
        stream: u64,
        type_url: &str,
        timeout: Duration,
    ) -> RecordedRequest {
        self.wait_for(
            |r| r.stream == stream && r.type_url == type_url && r.is_initial(),
            timeout,
        )
    }

    /// The ACK or NACK of the response with `nonce`.
    pub fn wait_for_reply(&self, nonce: &str, timeout: Duration) -> RecordedRequest {
        self.wait_for(|r| r.response_nonce == nonce, timeout)
    }

    /// The ACK of the response with `nonce`; panics on a NACK.
    pub fn wait_for_ack(&self, nonce: &str, timeout: Duration) -> RecordedRequest {
        let reply = self.wait_for_reply(nonce, timeout);
        assert!(
            reply.is_ack(),
            "delta test server: nonce {nonce} was NACKed: {:?}\n{}",
            reply.error_detail,
            self.history()
        );
        reply
    }

    /// The NACK of the response with `nonce`; panics on an ACK.
    pub fn wait_for_nack(&self, nonce: &str, timeout: Duration) -> RecordedRequest {
        let reply = self.wait_for_reply(nonce, timeout);
        assert!(
            reply.is_nack(),
            "delta test server: nonce {nonce} was ACKed, a NACK was expected\n{}",
            self.history()
        );
        reply
    }

    /// Ends every open stream from the server side (gRPC status OK). The
    /// server keeps listening; clients are expected to reconnect.
    pub fn drop_streams(&self) {
        self.shared.lock().streams.clear();
        self.shared.changed.notify_all();
    }

    /// Stops the server abruptly, as a crashed control plane: the listener
    /// and every connection close. The store and the records are kept for
    /// [`Self::restart`].
    pub fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
        self.shared.lock().streams.clear();
        self.shared.changed.notify_all();
    }

    /// Stops (if running) and serves again on the same address, with the
    /// store as it is now.
    pub fn restart(&mut self) {
        self.shutdown();
        self.running = Some(serve_again(
            || routes(&self.shared),
            self.addr,
            self.tls.clone(),
        ));
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Requests and responses so far, one per line, for failure messages.
    pub fn history(&self) -> String {
        let state = self.shared.lock();
        let mut events: Vec<(Instant, String)> = Vec::new();
        for r in &state.requests {
            let mut line = format!(
                "<- stream {} {} nonce={:?} subscribe={:?} unsubscribe={:?} initial={:?}",
                r.stream,
                short_type(&r.type_url),
                r.response_nonce,
                r.subscribe,
                r.unsubscribe,
                r.initial_resource_versions
            );
            if let Some((code, msg)) = &r.error_detail {
                let _ = write!(line, " NACK({code}: {msg})");
            }
            if r.stale {
                line.push_str(" (stale)");
            }
            events.push((r.at, line));
        }
        for r in &state.responses {
            events.push((
                r.at,
                format!(
                    "-> stream {} {} nonce={:?} added={:?} removed={:?}{}",
                    r.stream,
                    short_type(&r.type_url),
                    r.nonce,
                    r.added,
                    r.removed,
                    if r.raw { " (raw)" } else { "" }
                ),
            ));
        }
        events.sort_by_key(|(at, _)| *at);
        let mut out = format!(
            "delta test server {}: {} stream(s) opened, {} open\n",
            self.addr,
            state.streams_opened,
            state.streams.len()
        );
        for (_, line) in events {
            out.push_str("  ");
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    fn wait_state<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(found) = check(&state) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for DeltaServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}
