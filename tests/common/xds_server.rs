//! A test control plane: an ADS server (State of the World,
//! `envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`)
//! on 127.0.0.1 that serves snapshots the test sets, records every request it
//! receives (ACKs, NACKs, subscriptions) and lets the test misbehave on purpose
//! (end streams, go away, send hand-made responses).
//!
//! It runs its own tokio runtime on a background thread, so plain `#[test]`
//! functions drive it synchronously.
//!
//! Serving rules (the SotW rules Envoy follows):
//! - Listener and Cluster are wildcard types: a request with no names (or with
//!   `*`) subscribes to all of them, and every response carries all of them.
//! - Other types (ClusterLoadAssignment, RouteConfiguration, ...) are served
//!   by name: a response carries the requested resources that exist.
//! - The server answers the first request for a type on a stream (if it has a
//!   snapshot for the type) and any request that changes the subscription. An
//!   ACK or NACK that changes nothing gets no answer.
//! - A request whose `response_nonce` is not the last nonce this stream was
//!   sent for the type is stale: it is recorded and otherwise ignored.
//! - [`XdsServer::set`] pushes the new snapshot at once to every open stream
//!   subscribed to the type, each push with a fresh nonce.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Types whose subscriptions are wildcard when the request names nothing.
const WILDCARD_TYPES: [&str; 2] = [LISTENER, CLUSTER];

/// How long `stop()` lets the server thread finish before giving up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One `DiscoveryRequest` as the server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Which stream it came on: 1 for the first stream ever opened, and so on
    /// (counting across `restart()`).
    pub stream: u64,
    pub type_url: String,
    pub version_info: String,
    pub response_nonce: String,
    pub resource_names: Vec<String>,
    /// `(code, message)` of a NACK.
    pub error_detail: Option<(i32, String)>,
    /// `node.id` if this request carried a node.
    pub node_id: Option<String>,
    /// The stream's gRPC metadata `clusterid`.
    pub cluster_id_metadata: Option<String>,
    /// The server judged the nonce stale (not the last one sent on the stream
    /// for this type) and ignored the request.
    pub stale: bool,
    pub at: Instant,
}

impl RecordedRequest {
    pub fn is_nack(&self) -> bool {
        self.error_detail.is_some()
    }
}

/// One `DiscoveryResponse` the server sent.
#[derive(Debug, Clone)]
pub struct SentResponse {
    pub stream: u64,
    pub type_url: String,
    pub version_info: String,
    pub nonce: String,
    /// Names of the resources it carried.
    pub resource_names: Vec<String>,
    /// Sent by [`XdsServer::send_raw`].
    pub raw: bool,
    pub at: Instant,
}

struct Snapshot {
    version: String,
    /// `(name, resource)` in the order given.
    resources: Vec<(String, Any)>,
}

#[derive(Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The nonce of the last response this stream was sent for the type.
    last_nonce: Option<String>,
}

impl Subscription {
    fn wants_anything(&self) -> bool {
        self.wildcard || !self.names.is_empty()
    }
}

struct OpenStream {
    /// The only sender of the response stream: dropping it ends the stream
    /// (gRPC status OK).
    tx: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    /// Dropping it stops the task that reads the stream's requests.
    _closed: oneshot::Sender<()>,
    subscriptions: HashMap<String, Subscription>,
}

#[derive(Default)]
struct State {
    snapshots: HashMap<String, Snapshot>,
    streams: BTreeMap<u64, OpenStream>,
    requests: Vec<RecordedRequest>,
    responses: Vec<SentResponse>,
    streams_opened: u64,
    nonces: u64,
    authorizations: Vec<Option<String>>,
}

impl State {
    fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("n{}", self.nonces)
    }

    /// Sends `type_url`'s snapshot to `stream` as its subscription selects.
    /// Returns the nonce, or None when there is nothing to send (no snapshot,
    /// nothing subscribed, stream gone).
    fn respond(&mut self, stream: u64, type_url: &str) -> Option<String> {
        let snapshot = self.snapshots.get(type_url)?;
        let open = self.streams.get(&stream)?;
        let sub = open.subscriptions.get(type_url)?;
        if !sub.wants_anything() {
            return None;
        }
        let (names, resources): (Vec<String>, Vec<Any>) = snapshot
            .resources
            .iter()
            .filter(|(name, _)| sub.wildcard || sub.names.contains(name))
            .cloned()
            .unzip();
        let version = snapshot.version.clone();
        let nonce = self.next_nonce();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        let open = self.streams.get_mut(&stream)?;
        // A closed receiver means the stream is going away; its reader task
        // removes it.
        let _ = open.tx.send(Ok(response));
        if let Some(sub) = open.subscriptions.get_mut(type_url) {
            sub.last_nonce = Some(nonce.clone());
        }
        self.responses.push(SentResponse {
            stream,
            type_url: type_url.to_string(),
            version_info: version,
            nonce: nonce.clone(),
            resource_names: names,
            raw: false,
            at: Instant::now(),
        });
        Some(nonce)
    }

    fn on_request(&mut self, stream: u64, cluster_id: Option<String>, req: DiscoveryRequest) {
        let type_url = req.type_url.clone();
        let Some(open) = self.streams.get_mut(&stream) else {
            return;
        };
        let first = !open.subscriptions.contains_key(&type_url);
        let sub = open.subscriptions.entry(type_url.clone()).or_default();
        let stale = !req.response_nonce.is_empty()
            && sub.last_nonce.as_deref() != Some(req.response_nonce.as_str());
        self.requests.push(RecordedRequest {
            stream,
            type_url: type_url.clone(),
            version_info: req.version_info.clone(),
            response_nonce: req.response_nonce.clone(),
            resource_names: req.resource_names.clone(),
            error_detail: req
                .error_detail
                .as_ref()
                .map(|s| (s.code, s.message.clone())),
            node_id: req.node.as_ref().map(|n| n.id.clone()),
            cluster_id_metadata: cluster_id,
            stale,
            at: Instant::now(),
        });
        if stale {
            return;
        }
        let wildcard = req.resource_names.iter().any(|n| n == "*")
            || (req.resource_names.is_empty() && WILDCARD_TYPES.contains(&type_url.as_str()));
        let names: BTreeSet<String> = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        let changed = first || sub.wildcard != wildcard || sub.names != names;
        sub.wildcard = wildcard;
        sub.names = names;
        if changed {
            self.respond(stream, &type_url);
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

struct Ads {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let cluster_id = request
            .metadata()
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.shared.lock().authorizations.push(authorization);
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
        let id = {
            let mut state = self.shared.lock();
            state.streams_opened += 1;
            let id = state.streams_opened;
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
                    // The server ended the stream (drop_streams / stop).
                    _ = &mut closed_rx => break,
                    msg = incoming.message() => match msg {
                        Ok(Some(req)) => {
                            shared.lock().on_request(id, cluster_id.clone(), req);
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

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the test control plane speaks State of the World only",
        ))
    }
}

/// The server thread of one `start()`/`restart()` (of this server or of
/// [`super::delta_server`]).
pub(super) struct Running {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl Running {
    /// Stops serving: the listener and every connection close at once.
    pub(super) fn stop(self) {
        let _ = self.stop.send(());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !self.thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if self.thread.is_finished() {
            if self.thread.join().is_err() {
                eprintln!("test gRPC server: server thread panicked");
            }
        } else {
            eprintln!("test gRPC server: server thread did not stop within {STOP_TIMEOUT:?}");
        }
    }
}

/// PEM certificate chain and key of a server that speaks TLS.
pub(super) type TlsIdentity = Arc<(Vec<u8>, Vec<u8>)>;

/// The test ADS server. Dropping it stops the server and closes every stream.
pub struct XdsServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Option<Running>,
    /// PEM certificate chain and key when serving TLS.
    tls: Option<TlsIdentity>,
}

impl XdsServer {
    /// Starts a server on 127.0.0.1 on a free port.
    pub fn start() -> XdsServer {
        XdsServer::start_with(None)
    }

    /// Like [`XdsServer::start`], serving gRPC over TLS with this PEM
    /// certificate chain and key.
    pub fn start_tls(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> XdsServer {
        XdsServer::start_with(Some(Arc::new((cert_pem, key_pem))))
    }

    fn start_with(tls: Option<TlsIdentity>) -> XdsServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (running, addr) = serve(
            routes(&shared),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            tls.clone(),
        )
        .unwrap_or_else(|e| panic!("xDS test server: cannot listen on 127.0.0.1: {e}"));
        XdsServer {
            shared,
            addr,
            running: Some(running),
            tls,
        }
    }

    /// The `authorization` metadata of every stream opened so far.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.lock().authorizations.clone()
    }

    /// Where the server listens (the same address across `restart()`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for a client's XDS_ADDRESS-style setting.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the snapshot of `type_url` and pushes it to every open stream
    /// subscribed to the type. Returns the nonces of those pushes.
    pub fn set(&self, type_url: &str, version: &str, resources: Vec<Any>) -> Vec<String> {
        let resources = resources
            .into_iter()
            .map(|any| (resource_name(&any), any))
            .collect();
        let mut state = self.shared.lock();
        state.snapshots.insert(
            type_url.to_string(),
            Snapshot {
                version: version.to_string(),
                resources,
            },
        );
        let subscribed: Vec<u64> = state
            .streams
            .iter()
            .filter(|(_, s)| s.subscriptions.contains_key(type_url))
            .map(|(id, _)| *id)
            .collect();
        let nonces = subscribed
            .into_iter()
            .filter_map(|id| state.respond(id, type_url))
            .collect();
        drop(state);
        self.shared.changed.notify_all();
        nonces
    }

    /// Sets every type found in `yaml` (an xDS file: `resources:` list of
    /// `"@type"` items) at `version`, in the order CDS, EDS, LDS, RDS, then
    /// any others. Types absent from the YAML keep their snapshot.
    pub fn set_yaml(&self, version: &str, yaml: &str) -> Vec<String> {
        let mut by_type: BTreeMap<String, Vec<Any>> = BTreeMap::new();
        for any in resources_from_yaml(yaml) {
            by_type.entry(any.type_url.clone()).or_default().push(any);
        }
        let mut nonces = Vec::new();
        for t in [CLUSTER, ENDPOINT, LISTENER, ROUTE] {
            if let Some(resources) = by_type.remove(t) {
                nonces.extend(self.set(t, version, resources));
            }
        }
        for (t, resources) in by_type {
            nonces.extend(self.set(&t, version, resources));
        }
        nonces
    }

    /// Sends a hand-made response as is (nonce, version, type_url untouched)
    /// to every open stream subscribed to `type_url`, or to every open stream
    /// if none is. The streams then count its nonce as their latest for
    /// `type_url`. Returns how many streams it went to.
    pub fn send_raw(&self, type_url: &str, response: DiscoveryResponse) -> usize {
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
        let names: Vec<String> = response.resources.iter().map(resource_name).collect();
        for id in &targets {
            if let Some(open) = state.streams.get_mut(id) {
                let _ = open.tx.send(Ok(response.clone()));
                if let Some(sub) = open.subscriptions.get_mut(type_url) {
                    sub.last_nonce = Some(response.nonce.clone());
                }
            }
            state.responses.push(SentResponse {
                stream: *id,
                type_url: type_url.to_string(),
                version_info: response.version_info.clone(),
                nonce: response.nonce.clone(),
                resource_names: names.clone(),
                raw: true,
                at: Instant::now(),
            });
        }
        targets.len()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Every response sent so far, in order.
    pub fn responses(&self) -> Vec<SentResponse> {
        self.shared.lock().responses.clone()
    }

    /// The nonce of the last response sent for `type_url` on any stream.
    pub fn last_nonce(&self, type_url: &str) -> Option<String> {
        self.shared
            .lock()
            .responses
            .iter()
            .rev()
            .find(|r| r.type_url == type_url)
            .map(|r| r.nonce.clone())
    }

    /// Streams opened so far (across restarts).
    pub fn connections(&self) -> usize {
        usize::try_from(self.shared.lock().streams_opened).unwrap_or(usize::MAX)
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
                "xDS test server: no matching request within {timeout:?}\n{}",
                self.history()
            )
        })
    }

    /// Waits for an ACK of `type_url` at `version`: a request without
    /// error_detail whose version is `version` and whose nonce is one this
    /// server sent with that version.
    pub fn wait_for_ack(
        &self,
        type_url: &str,
        version: &str,
        timeout: Duration,
    ) -> RecordedRequest {
        self.wait_acked(type_url, version, false, timeout)
    }

    /// Waits for a NACK of a response of `type_url` sent at `version`.
    pub fn wait_for_nack(
        &self,
        type_url: &str,
        version: &str,
        timeout: Duration,
    ) -> RecordedRequest {
        self.wait_acked(type_url, version, true, timeout)
    }

    /// Ends every open stream from the server side (gRPC status OK, as a
    /// control plane that closes streams to rebalance). The server keeps
    /// listening; clients are expected to reconnect.
    pub fn drop_streams(&self) {
        self.shared.lock().streams.clear();
        self.shared.changed.notify_all();
    }

    /// Stops the server abruptly, as a crashed control plane: the listener
    /// and every connection close without gRPC trailers. Snapshots and
    /// records are kept for `restart()`.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
        self.shared.lock().streams.clear();
        self.shared.changed.notify_all();
    }

    /// Stops (if running) and serves again on the same address, with the
    /// snapshots as they are now (`set()` while stopped is allowed).
    pub fn restart(&mut self) {
        self.stop();
        self.running = Some(serve_again(
            || routes(&self.shared),
            self.addr,
            self.tls.clone(),
        ));
    }

    /// Whether the server is serving (not stopped).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Requests and responses so far, one per line, for failure messages.
    pub fn history(&self) -> String {
        let state = self.shared.lock();
        let mut events: Vec<(Instant, String)> = Vec::new();
        for r in &state.requests {
            let mut line = format!(
                "<- stream {} {} version={:?} nonce={:?} names={:?}",
                r.stream,
                short_type(&r.type_url),
                r.version_info,
                r.response_nonce,
                r.resource_names
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
                    "-> stream {} {} version={:?} nonce={:?} resources={:?}{}",
                    r.stream,
                    short_type(&r.type_url),
                    r.version_info,
                    r.nonce,
                    r.resource_names,
                    if r.raw { " (raw)" } else { "" }
                ),
            ));
        }
        events.sort_by_key(|(at, _)| *at);
        let mut out = format!(
            "xDS test server {}: {} stream(s) opened, {} open\n",
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

    fn wait_acked(
        &self,
        type_url: &str,
        version: &str,
        nack: bool,
        timeout: Duration,
    ) -> RecordedRequest {
        let found = self.wait_state(timeout, |state| {
            state
                .requests
                .iter()
                .find(|r| {
                    r.type_url == type_url
                        && r.is_nack() == nack
                        && (nack || r.version_info == version)
                        && state.responses.iter().any(|s| {
                            s.stream == r.stream
                                && s.type_url == type_url
                                && s.version_info == version
                                && s.nonce == r.response_nonce
                        })
                })
                .cloned()
        });
        found.unwrap_or_else(|| {
            panic!(
                "xDS test server: no {} of {} version {version:?} within {timeout:?}\n{}",
                if nack { "NACK" } else { "ACK" },
                short_type(type_url),
                self.history()
            )
        })
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

impl Drop for XdsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The resources of an xDS file's text (`resources:` list of `"@type"`
/// items), as `Any`s for [`XdsServer::set`].
pub fn resources_from_yaml(yaml: &str) -> Vec<Any> {
    kmesh::xds::file::parse_resources(yaml)
        .unwrap_or_else(|e| panic!("test xDS YAML does not parse: {e}\n{yaml}"))
        .into_iter()
        .map(|a| Any {
            type_url: a.type_url,
            value: a.value,
        })
        .collect()
}

/// The name of a resource: field 1 (a string) of Listener, Cluster,
/// RouteConfiguration (`name`) and ClusterLoadAssignment (`cluster_name`).
pub fn resource_name(any: &Any) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }
    Named::decode(any.value.as_slice())
        .map(|n| n.name)
        .unwrap_or_default()
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

fn routes(shared: &Arc<Shared>) -> Routes {
    Routes::new(AggregatedDiscoveryServiceServer::new(Ads {
        shared: shared.clone(),
    }))
}

/// [`serve`] on `addr` again after a stop, waiting (up to 10 s) for the
/// port to be free.
pub(super) fn serve_again(
    routes: impl Fn() -> Routes,
    addr: SocketAddr,
    tls: Option<TlsIdentity>,
) -> Running {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match serve(routes(), addr, tls.clone()) {
            Ok((running, _)) => return running,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("test gRPC server: cannot listen again on {addr}: {e}"),
        }
    }
}

/// Binds `addr` (SO_REUSEADDR, so a restart can take the same port while old
/// connections linger in TIME_WAIT) and serves `routes` on a new thread with
/// its own runtime. Returns once the socket listens.
pub(super) fn serve(
    routes: Routes,
    addr: SocketAddr,
    tls: Option<TlsIdentity>,
) -> io::Result<(Running, SocketAddr)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name(format!("grpc-server-{}", addr.port()))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match listen(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(listener.local_addr());
                let mut builder = tonic::transport::Server::builder();
                if let Some(tls) = &tls {
                    let identity = tonic::transport::Identity::from_pem(&tls.0, &tls.1);
                    builder = builder
                        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                        .unwrap_or_else(|e| panic!("test gRPC server TLS config: {e}"));
                }
                let server = builder
                    .add_routes(routes)
                    .serve_with_incoming(TcpIncoming::from(listener));
                tokio::select! {
                    result = server => {
                        if let Err(e) = result {
                            eprintln!("test gRPC server on {addr}: {e}");
                        }
                    }
                    _ = stop_rx => {}
                }
            });
            // Drops every task still running (connections, stream readers):
            // their sockets close.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
    match ready_rx.recv() {
        Ok(Ok(bound)) => Ok((
            Running {
                stop: stop_tx,
                thread,
            },
            bound,
        )),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(
                "test gRPC server thread exited before listening",
            ))
        }
    }
}

fn listen(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// A CA and a server certificate for 127.0.0.1 and `istiod.test`, made in
/// `dir` with the openssl command line: `(server cert PEM, server key PEM,
/// path of the CA PEM)`.
pub fn tls_material(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (Debian openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=istiod.test",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:istiod.test\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    (
        std::fs::read(dir.join("server.pem")).unwrap(),
        std::fs::read(dir.join("server.key")).unwrap(),
        dir.join("ca.pem"),
    )
}
