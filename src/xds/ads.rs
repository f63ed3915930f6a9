//! ADS, State of the World: one gRPC stream carrying every resource type.
//!
//! Transport only. What to subscribe to and whether a response is acceptable
//! is the [`SotwHandler`]'s business (the mode's compiler side); this module
//! keeps versions and nonces per type, ACKs or NACKs every response, and
//! reconnects with jittered exponential backoff. While disconnected nothing
//! is touched: the configuration in force keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use serde::Serialize;
use tokio::sync::mpsc;

use super::transport::{self, nack_status};
// The client settings and helpers moved to `transport` (shared with delta
// ADS); these paths stay for the callers of the SotW client.
pub use super::transport::{AdsConfig, AdsError, Backoff, TlsSettings, MAX_MESSAGE_BYTES};

/// What the client asks for of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Every resource of the type (CDS, LDS).
    Wildcard,
    /// These names only (EDS, RDS). Shared: the handler hands the same set
    /// after every response, so a large unchanged subscription (50k EDS
    /// names) is neither copied nor compared name by name (`Arc`'s equality
    /// checks the pointer first).
    Names(Arc<BTreeSet<String>>),
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

/// The SotW stream's state.
pub type AdsStatus = transport::StreamStatus<TypeStatus>;

/// Run the ADS client until the future is dropped (shutdown).
pub async fn run<H: SotwHandler>(config: AdsConfig, handler: &mut H) {
    let mut reconnect = transport::Reconnect::new(&config, "ADS");
    loop {
        reconnect.opening();
        let mut got_response = false;
        let result = run_stream(&config, handler, &mut reconnect.status, &mut got_response).await;
        reconnect.ended(result, got_response);
        handler.on_status(&reconnect.status);
        reconnect.pause().await;
    }
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
        error_detail: error_detail.map(nack_status),
        ..Default::default()
    }
}

async fn run_stream<H: SotwHandler>(
    config: &AdsConfig,
    handler: &mut H,
    status: &mut AdsStatus,
    got_response: &mut bool,
) -> Result<(), AdsError> {
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

    let mut responses =
        transport::open_stream::<_, DiscoveryResponse>(config, transport::SOTW_ADS_PATH, rx)
            .await?;
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
