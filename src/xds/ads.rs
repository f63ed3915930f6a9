//! ADS, State of the World: one gRPC stream carrying every resource type.
//!
//! Transport only. What to subscribe to and whether a response is acceptable
//! is the [`SotwHandler`]'s business (the mode's compiler side); this module
//! keeps versions and nonces per type, ACKs or NACKs every response, and
//! reconnects with jittered exponential backoff. While disconnected nothing
//! is touched: the configuration in force keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Istiod's config pushes can be tens of MB; tonic's default limit is 4 MB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// gRPC status code for "the config was invalid" in a NACK's error_detail.
const INVALID_ARGUMENT: i32 = 3;

/// What the client asks for of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Every resource of the type (CDS, LDS).
    Wildcard,
    /// These names only (EDS, RDS).
    Names(BTreeSet<String>),
}

/// The mode-specific side of a SotW stream.
pub trait SotwHandler: Send {
    /// A response for `type_url` arrived with these resources. `Ok` ACKs it;
    /// `Err(detail)` NACKs it, naming the resource and field.
    fn on_response(
        &mut self,
        type_url: &str,
        resources: Vec<prost_types::Any>,
    ) -> Result<(), String>;
    /// The subscriptions wanted now, in the order they should be requested.
    fn subscriptions(&self) -> Vec<(String, Subscription)>;
    /// Transport state changed (for the config dump and counters).
    fn on_status(&mut self, status: &AdsStatus);
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM file with the control plane's root CA.
    pub root_cert: PathBuf,
    /// Name to verify in the server certificate (defaults to the host).
    pub domain: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AdsConfig {
    /// `http://host:port` (plaintext) or `https://host:port` (TLS).
    pub uri: String,
    pub tls: Option<TlsSettings>,
    /// Bearer token file sent as `authorization` on the stream (Istio's JWT).
    pub token_file: Option<PathBuf>,
    pub node: Node,
    /// Sent as the gRPC metadata `ClusterID`, as Istio proxies do.
    pub cluster_id: String,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    #[error("invalid xDS address {uri:?}: {message}")]
    Address { uri: String, message: String },
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {uri}: {source}")]
    Connect {
        uri: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("ADS stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("ADS request queue closed")]
    QueueClosed,
}

/// Per type: what was received, ACKed and NACKed (shown in the config dump).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// The version last ACKed (also sent when re-subscribing or NACKing).
    pub acked_version: String,
    /// Nonce of the last response received on the current stream.
    pub nonce: String,
    pub last_result: Option<&'static str>,
    pub last_error: Option<String>,
    pub responses: u64,
    pub acks: u64,
    pub nacks: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AdsStatus {
    pub address: String,
    pub connected: bool,
    /// Streams opened after the first one.
    pub reconnects: u64,
    pub last_stream_error: Option<String>,
    pub types: BTreeMap<String, TypeStatus>,
}

/// Exponential backoff with jitter: each wait is uniform in [d/2, d], and d
/// doubles up to the maximum. Reset once a stream has received a response.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            | 1;
        Self {
            initial,
            max,
            current: initial,
            seed,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    pub fn next_wait(&mut self) -> Duration {
        // xorshift: jitter needs no cryptographic quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.current;
        let half = d / 2;
        let jitter = half.mul_f64((self.seed % 1000) as f64 / 1000.0);
        self.current = (self.current * 2).min(self.max);
        half + jitter
    }
}

/// Run the ADS client until the future is dropped (shutdown).
pub async fn run<H: SotwHandler>(config: AdsConfig, handler: &mut H) {
    let mut status = AdsStatus {
        address: config.uri.clone(),
        ..Default::default()
    };
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut first = true;
    loop {
        if !first {
            status.reconnects += 1;
        }
        first = false;
        let mut got_response = false;
        match run_stream(&config, handler, &mut status, &mut got_response).await {
            Ok(()) => {
                tracing::info!(uri = %config.uri, "ADS stream closed by the server; reopening");
                status.last_stream_error = Some("stream closed by the server".into());
            }
            Err(e) => {
                let message = error_chain(&e);
                tracing::warn!(error = %message, "ADS stream failed; the configuration in force keeps serving");
                status.last_stream_error = Some(message);
            }
        }
        status.connected = false;
        handler.on_status(&status);
        if got_response {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// An error with its causes ("transport error: connection refused"), since
/// tonic's own text stops at the outermost layer.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

async fn connect(config: &AdsConfig) -> Result<Channel, AdsError> {
    let address_error = |message: String| AdsError::Address {
        uri: config.uri.clone(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(config.uri.clone())
        .map_err(|e| address_error(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        let pem = std::fs::read(&tls.root_cert).map_err(|source| AdsError::ReadFile {
            path: tls.root_cert.clone(),
            source,
        })?;
        let mut tls_config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(domain) = &tls.domain {
            tls_config = tls_config.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(tls_config)
            .map_err(|e| address_error(e.to_string()))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|source| AdsError::Connect {
            uri: config.uri.clone(),
            source,
        })
}

fn request(
    config: &AdsConfig,
    type_url: &str,
    subscription: &Subscription,
    status: &TypeStatus,
    error_detail: Option<String>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: status.acked_version.clone(),
        node: Some(config.node.clone()),
        resource_names: match subscription {
            Subscription::Wildcard => Vec::new(),
            Subscription::Names(names) => names.iter().cloned().collect(),
        },
        type_url: type_url.to_string(),
        response_nonce: status.nonce.clone(),
        error_detail: error_detail.map(|message| RpcStatus {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

async fn run_stream<H: SotwHandler>(
    config: &AdsConfig,
    handler: &mut H,
    status: &mut AdsStatus,
    got_response: &mut bool,
) -> Result<(), AdsError> {
    let channel = connect(config).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    // A new stream has no nonces yet; versions carry over (the server may
    // then skip resending what we already have).
    for t in status.types.values_mut() {
        t.nonce.clear();
    }
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let mut sent: BTreeMap<String, Subscription> = BTreeMap::new();
    for (type_url, sub) in handler.subscriptions() {
        let t = status.types.entry(type_url.clone()).or_default();
        tx.send(request(config, &type_url, &sub, t, None))
            .await
            .map_err(|_| AdsError::QueueClosed)?;
        sent.insert(type_url, sub);
    }

    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Ok(v) = MetadataValue::try_from(config.cluster_id.as_str()) {
        req.metadata_mut().insert("clusterid", v);
    }
    // A missing token file is not an error: plaintext test control planes
    // and clusters without token auth have none. One that exists but cannot
    // be read is.
    if let Some(path) = config.token_file.as_ref().filter(|p| p.exists()) {
        let token = std::fs::read_to_string(path).map_err(|source| AdsError::ReadFile {
            path: path.clone(),
            source,
        })?;
        if let Ok(v) = MetadataValue::try_from(format!("Bearer {}", token.trim())) {
            req.metadata_mut().insert("authorization", v);
        }
    }
    let mut responses = client.stream_aggregated_resources(req).await?.into_inner();
    status.connected = true;
    status.last_stream_error = None;
    handler.on_status(status);
    tracing::info!(uri = %config.uri, "ADS stream open");

    while let Some(response) = responses.message().await? {
        *got_response = true;
        handle_response(config, handler, status, &tx, &sent, response).await?;
        // A response may change what we need (new EDS names, LDS after CDS...).
        for (type_url, sub) in handler.subscriptions() {
            if sent.get(&type_url) == Some(&sub) {
                continue;
            }
            let t = status.types.entry(type_url.clone()).or_default();
            tx.send(request(config, &type_url, &sub, t, None))
                .await
                .map_err(|_| AdsError::QueueClosed)?;
            sent.insert(type_url, sub);
        }
        handler.on_status(status);
    }
    Ok(())
}

async fn handle_response<H: SotwHandler>(
    config: &AdsConfig,
    handler: &mut H,
    status: &mut AdsStatus,
    tx: &mpsc::Sender<DiscoveryRequest>,
    sent: &BTreeMap<String, Subscription>,
    response: DiscoveryResponse,
) -> Result<(), AdsError> {
    let type_url = response.type_url.clone();
    let mut anys = Vec::with_capacity(response.resources.len());
    let mut wrong_type = None;
    for (i, r) in response.resources.into_iter().enumerate() {
        if r.type_url != type_url && wrong_type.is_none() {
            wrong_type = Some(format!(
                "resources[{i}] has type {:?} in a response for {type_url:?}",
                r.type_url
            ));
        }
        anys.push(prost_types::Any {
            type_url: r.type_url,
            value: r.value,
        });
    }
    let result = match wrong_type {
        Some(e) => Err(e),
        None => handler.on_response(&type_url, anys),
    };
    let t = status.types.entry(type_url.clone()).or_default();
    t.responses += 1;
    t.nonce = response.nonce;
    let error_detail = match result {
        Ok(()) => {
            t.acked_version = response.version_info.clone();
            t.acks += 1;
            t.last_result = Some("ACK");
            t.last_error = None;
            tracing::debug!(%type_url, version = %response.version_info, "ACK");
            None
        }
        Err(detail) => {
            t.nacks += 1;
            t.last_result = Some("NACK");
            t.last_error = Some(detail.clone());
            tracing::warn!(%type_url, version = %response.version_info, error = %detail, "NACK");
            Some(detail)
        }
    };
    let sub = sent
        .get(&type_url)
        .cloned()
        .unwrap_or(Subscription::Wildcard);
    tx.send(request(config, &type_url, &sub, t, error_detail))
        .await
        .map_err(|_| AdsError::QueueClosed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut bound = Duration::from_secs(1);
        for _ in 0..10 {
            let w = b.next_wait();
            assert!(
                w >= bound / 2 && w <= bound,
                "{w:?} not in [{:?}, {bound:?}]",
                bound / 2
            );
            bound = (bound * 2).min(Duration::from_secs(30));
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }
}
