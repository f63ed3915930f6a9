//! What every ADS stream shares, whichever protocol variant it speaks (State
//! of the World in [`super::ads`], delta in [`super::delta`]): the client
//! settings, the gRPC channel (TLS or plaintext, message size limits), the
//! stream metadata Istiod authenticates (bearer token, `ClusterID`), the
//! reconnect backoff and the error text shown in the config dump.

use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::grpc_stream;

/// Istiod's config pushes can be tens of MB; tonic's default limit is 4 MB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The ADS methods (envoy.service.discovery.v3.AggregatedDiscoveryService).
pub(super) const SOTW_ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
pub(super) const DELTA_ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// gRPC status code for "the config was invalid" in a NACK's error_detail.
pub(crate) const INVALID_ARGUMENT: i32 = 3;

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

/// An error with its causes ("transport error: connection refused"), since
/// tonic's own text stops at the outermost layer.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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

/// The `error_detail` of a NACK: the handler's text says which resource and
/// field were rejected.
pub(crate) fn nack_status(message: String) -> RpcStatus {
    RpcStatus {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

/// Opens one ADS stream (`path`: SotW or delta) on a fresh channel: the
/// requests queued on `outgoing` go out, with the stream's metadata; the
/// responses come back framed by [`grpc_stream`] up to [`MAX_MESSAGE_BYTES`].
pub(crate) async fn open_stream<Out, In>(
    config: &AdsConfig,
    path: &'static str,
    outgoing: tokio::sync::mpsc::Receiver<Out>,
) -> Result<grpc_stream::MessageStream<In>, AdsError>
where
    Out: prost::Message + Send + 'static,
    In: prost::Message + Default,
{
    let mut channel = connect(config).await?;
    let request = stream_request(
        config,
        tokio_stream::wrappers::ReceiverStream::new(outgoing),
    )?;
    Ok(grpc_stream::open(&mut channel, path, request, MAX_MESSAGE_BYTES).await?)
}

/// The channel an ADS stream runs on (TLS and keepalives per `config`).
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

/// Wraps the request stream with the metadata Istiod reads when the stream
/// opens: `ClusterID`, and the bearer token (read now, since Istio rotates
/// the mounted file).
pub(crate) fn stream_request<T>(
    config: &AdsConfig,
    stream: T,
) -> Result<tonic::Request<T>, AdsError> {
    let mut req = tonic::Request::new(stream);
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
    Ok(req)
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

    #[test]
    fn stream_metadata_carries_cluster_id_and_the_trimmed_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "abc.def.ghi\n").unwrap();
        let config = AdsConfig {
            uri: "http://127.0.0.1:1".into(),
            tls: None,
            token_file: Some(token),
            node: Node::default(),
            cluster_id: "Kubernetes".into(),
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
        };
        let req = stream_request(&config, ()).unwrap();
        let meta = req.metadata();
        assert_eq!(
            meta.get("clusterid").and_then(|v| v.to_str().ok()),
            Some("Kubernetes")
        );
        assert_eq!(
            meta.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer abc.def.ghi")
        );
        let missing = AdsConfig {
            token_file: Some(dir.path().join("absent")),
            ..config
        };
        let req = stream_request(&missing, ()).unwrap();
        assert!(req.metadata().get("authorization").is_none());
    }
}

/// One ADS connection's state, for the config dump and metrics; `T` is the
/// per-type status of the flavour (SotW or delta).
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct StreamStatus<T> {
    pub address: String,
    pub connected: bool,
    /// Streams opened after the first one.
    pub reconnects: u64,
    pub last_stream_error: Option<String>,
    pub types: std::collections::BTreeMap<String, T>,
}

/// The reconnect loop's bookkeeping, shared by the SotW and delta clients:
/// count reconnects, record why a stream ended, back off (reset once a
/// stream got a response). While disconnected nothing is touched: the
/// configuration in force keeps serving.
pub(super) struct Reconnect<T> {
    pub status: StreamStatus<T>,
    backoff: Backoff,
    flavour: &'static str,
    streams: u64,
}

impl<T: Default> Reconnect<T> {
    pub fn new(config: &AdsConfig, flavour: &'static str) -> Self {
        Self {
            status: StreamStatus {
                address: config.uri.clone(),
                ..StreamStatus::default()
            },
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            flavour,
            streams: 0,
        }
    }

    /// Call before opening each stream.
    pub fn opening(&mut self) {
        if self.streams > 0 {
            self.status.reconnects += 1;
        }
        self.streams += 1;
    }

    /// A stream ended (`got_response`: it delivered at least one response).
    pub fn ended(&mut self, result: Result<(), AdsError>, got_response: bool) {
        let flavour = self.flavour;
        match result {
            Ok(()) => {
                tracing::info!(uri = %self.status.address, "{flavour} stream closed by the server; reopening");
                self.status.last_stream_error = Some("stream closed by the server".into());
            }
            Err(e) => {
                let message = error_chain(&e);
                tracing::warn!(error = %message, "{flavour} stream failed; the configuration in force keeps serving");
                self.status.last_stream_error = Some(message);
            }
        }
        self.status.connected = false;
        if got_response {
            self.backoff.reset();
        }
    }

    /// Waits before the next attempt.
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.backoff.next_wait()).await;
    }
}
