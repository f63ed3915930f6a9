//! ADS, delta (incremental xDS): one gRPC stream carrying every resource
//! type, each response a change set — resources added or updated, names
//! removed — instead of the whole world. Dual-engine mode takes Istio's
//! ambient workload API (`istio.workload.Address`,
//! `istio.security.Authorization`) this way.
//!
//! Transport only. The [`DeltaHandler`] (the mode's store/compiler side)
//! says which types to take, applies each change set and says whether it
//! was acceptable; this module ACKs or NACKs every response by its nonce and
//! reconnects with jittered exponential backoff. On a new stream the first
//! request of each type lists the resources the handler holds
//! (`initial_resource_versions`), so the server sends only what changed
//! while we were away, including removals. While disconnected nothing is
//! touched: the configuration in force keeps serving.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use serde::Serialize;
use tokio::sync::mpsc;

use super::transport::{self, nack_status, AdsConfig, AdsError};

/// The mode-specific side of a delta stream.
pub trait DeltaHandler: Send {
    /// The types to subscribe to, each as a wildcard, in request order.
    fn type_urls(&self) -> Vec<String>;
    /// `name -> version` of every resource of `type_url` held now. Sent on
    /// the first request of a new stream so the server skips what we have
    /// and tells us what was removed meanwhile.
    fn initial_resource_versions(&self, type_url: &str) -> HashMap<String, String>;
    /// A response for `type_url`: `added` are new or changed resources,
    /// `removed` names resources that are gone. `Ok` ACKs it; `Err(detail)`
    /// NACKs it, the detail naming the resource and field. Resources the
    /// handler accepted from a NACKed response count as held (they are in
    /// the next stream's `initial_resource_versions`).
    fn on_response(
        &mut self,
        type_url: &str,
        added: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<(), String>;
    /// Transport state changed (for the config dump and counters).
    fn on_status(&mut self, status: &DeltaStatus);
    /// How many resources of `type_url` are held, for the status. Override
    /// when counting is cheaper than listing.
    fn resource_count(&self, type_url: &str) -> usize {
        self.initial_resource_versions(type_url).len()
    }
}

/// Per type: what was received, ACKed and NACKed (shown in the config dump).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeltaTypeStatus {
    /// Nonce of the last response received on the current stream.
    pub nonce: String,
    /// The server's `system_version_info` of that response (debugging aid;
    /// delta versions are per resource).
    pub system_version_info: String,
    pub last_result: Option<&'static str>,
    pub last_error: Option<String>,
    pub responses: u64,
    pub acks: u64,
    pub nacks: u64,
    /// Resources added/updated and removed over all responses.
    pub added: u64,
    pub removed: u64,
    /// Resources the handler holds now.
    pub resources: usize,
}

/// The delta stream's state.
pub type DeltaStatus = transport::StreamStatus<DeltaTypeStatus>;

/// Run the delta ADS client until the future is dropped (shutdown).
pub async fn run<H: DeltaHandler>(config: AdsConfig, handler: &mut H) {
    let mut reconnect = transport::Reconnect::new(&config, "delta ADS");
    loop {
        reconnect.opening();
        let mut got_response = false;
        let result = run_stream(&config, handler, &mut reconnect.status, &mut got_response).await;
        reconnect.ended(result, got_response);
        handler.on_status(&reconnect.status);
        reconnect.pause().await;
    }
}

/// The first request of `type_url` on a stream: a wildcard subscription,
/// spelt as an empty `resource_names_subscribe`. That is the spelling Istiod
/// reads as wildcard for its workload types and the one ztunnel sends; an
/// explicit `*` is a later addition to the protocol.
fn initial_request(
    node: &Node,
    type_url: &str,
    initial_resource_versions: HashMap<String, String>,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: type_url.to_string(),
        initial_resource_versions,
        ..Default::default()
    }
}

/// ACK (no `error_detail`) or NACK of the response with `nonce`. Delta has
/// no per-type version: the nonce alone says which response is answered.
fn reply(type_url: &str, nonce: &str, error_detail: Option<String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        error_detail: error_detail.map(nack_status),
        ..Default::default()
    }
}

/// What the transport itself rejects before the handler sees a response: a
/// type we did not ask for, a resource without a name, or a resource whose
/// payload is of another type than the response.
fn check_response(response: &DeltaDiscoveryResponse, subscribed: &[String]) -> Result<(), String> {
    let type_url = &response.type_url;
    if !subscribed.iter().any(|t| t == type_url) {
        return Err(format!(
            "response for type {type_url:?}, which was not subscribed"
        ));
    }
    for (i, r) in response.resources.iter().enumerate() {
        if r.name.is_empty() {
            return Err(format!("resources[{i}]: name is empty"));
        }
        if let Some(any) = &r.resource {
            if &any.type_url != type_url {
                return Err(format!(
                    "resource {:?} (resources[{i}]): resource.type_url is {:?} in a response for {type_url:?}",
                    r.name, any.type_url
                ));
            }
        }
    }
    Ok(())
}

async fn run_stream<H: DeltaHandler>(
    config: &AdsConfig,
    handler: &mut H,
    status: &mut DeltaStatus,
    got_response: &mut bool,
) -> Result<(), AdsError> {
    // A new stream has no nonces yet; what the handler holds is announced in
    // the first request of each type.
    for t in status.types.values_mut() {
        t.nonce.clear();
    }
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let subscribed = handler.type_urls();
    for type_url in &subscribed {
        let held = handler.initial_resource_versions(type_url);
        tracing::debug!(%type_url, held = held.len(), "delta subscribe");
        status.types.entry(type_url.clone()).or_default();
        tx.send(initial_request(&config.node, type_url, held))
            .await
            .map_err(|_| AdsError::QueueClosed)?;
    }

    let mut responses =
        transport::open_stream::<_, DeltaDiscoveryResponse>(config, transport::DELTA_ADS_PATH, rx)
            .await?;
    status.connected = true;
    status.last_stream_error = None;
    handler.on_status(status);
    tracing::info!(uri = %config.uri, "delta ADS stream open");

    while let Some(response) = responses.message().await? {
        *got_response = true;
        let answer = handle_response(handler, status, &subscribed, response);
        tx.send(answer).await.map_err(|_| AdsError::QueueClosed)?;
        handler.on_status(status);
    }
    Ok(())
}

/// Hands the response to the handler, records the outcome and returns the
/// ACK or NACK to send.
fn handle_response<H: DeltaHandler>(
    handler: &mut H,
    status: &mut DeltaStatus,
    subscribed: &[String],
    response: DeltaDiscoveryResponse,
) -> DeltaDiscoveryRequest {
    let type_url = response.type_url.clone();
    let (added, removed) = (response.resources.len(), response.removed_resources.len());
    let result = check_response(&response, subscribed).and_then(|()| {
        handler.on_response(&type_url, response.resources, response.removed_resources)
    });
    let resources = handler.resource_count(&type_url);
    let t = status.types.entry(type_url.clone()).or_default();
    t.responses += 1;
    t.nonce = response.nonce;
    t.system_version_info = response.system_version_info;
    t.added += added as u64;
    t.removed += removed as u64;
    t.resources = resources;
    let error_detail = match result {
        Ok(()) => {
            t.acks += 1;
            t.last_result = Some("ACK");
            t.last_error = None;
            tracing::debug!(%type_url, nonce = %t.nonce, added, removed, "ACK");
            None
        }
        Err(detail) => {
            t.nacks += 1;
            t.last_result = Some("NACK");
            t.last_error = Some(detail.clone());
            tracing::warn!(%type_url, nonce = %t.nonce, error = %detail, "NACK");
            Some(detail)
        }
    };
    reply(&type_url, &t.nonce, error_detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use std::collections::BTreeMap;

    const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    const AUTHZ: &str = "type.googleapis.com/istio.security.Authorization";

    /// Holds resources by name; rejects any resource whose payload is
    /// `b"bad"`, applying the rest (as the design asks of real handlers).
    #[derive(Default)]
    struct Store {
        held: BTreeMap<String, BTreeMap<String, String>>,
        statuses: usize,
    }

    impl DeltaHandler for Store {
        fn type_urls(&self) -> Vec<String> {
            vec![ADDRESS.into(), AUTHZ.into()]
        }
        fn initial_resource_versions(&self, type_url: &str) -> HashMap<String, String> {
            self.held
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
            let held = self.held.entry(type_url.to_string()).or_default();
            let mut rejected = Vec::new();
            for r in added {
                if r.resource.as_ref().map(|a| a.value.as_slice()) == Some(b"bad") {
                    rejected.push(format!("{}: field value is bad", r.name));
                } else {
                    held.insert(r.name, r.version);
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
        fn on_status(&mut self, _status: &DeltaStatus) {
            self.statuses += 1;
        }
    }

    fn resource(type_url: &str, name: &str, version: &str, value: &[u8]) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(Any {
                type_url: type_url.into(),
                value: value.to_vec(),
            }),
            ..Default::default()
        }
    }

    fn response(
        type_url: &str,
        nonce: &str,
        added: Vec<Resource>,
        removed: &[&str],
    ) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: nonce.into(),
            resources: added,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn first_request_is_a_wildcard_with_the_node_and_no_nonce() {
        let node = Node {
            id: "ztunnel~10.0.0.1~p.ns~ns.svc.cluster.local".into(),
            ..Default::default()
        };
        let req = initial_request(&node, ADDRESS, HashMap::new());
        assert_eq!(req.type_url, ADDRESS);
        assert_eq!(
            req.node.as_ref().map(|n| n.id.as_str()),
            Some(node.id.as_str())
        );
        assert!(
            req.resource_names_subscribe.is_empty(),
            "wildcard = no names"
        );
        assert!(req.resource_names_unsubscribe.is_empty());
        assert!(req.response_nonce.is_empty());
        assert!(req.error_detail.is_none());
        assert!(req.initial_resource_versions.is_empty());
    }

    #[test]
    fn reconnect_request_lists_what_the_handler_holds() {
        let mut store = Store::default();
        let mut status = DeltaStatus::default();
        let subscribed = store.type_urls();
        let r = response(
            ADDRESS,
            "n1",
            vec![
                resource(ADDRESS, "a", "v1", b"x"),
                resource(ADDRESS, "b", "v2", b"y"),
            ],
            &[],
        );
        handle_response(&mut store, &mut status, &subscribed, r);
        let r = response(ADDRESS, "n2", vec![], &["a"]);
        handle_response(&mut store, &mut status, &subscribed, r);

        let req = initial_request(
            &Node::default(),
            ADDRESS,
            store.initial_resource_versions(ADDRESS),
        );
        assert_eq!(
            req.initial_resource_versions,
            HashMap::from([("b".to_string(), "v2".to_string())])
        );
        assert!(req.response_nonce.is_empty());
        assert_eq!(status.types[ADDRESS].resources, 1);
        assert_eq!(
            (status.types[ADDRESS].added, status.types[ADDRESS].removed),
            (2, 1)
        );
    }

    #[test]
    fn good_response_is_acked_by_its_nonce() {
        let mut store = Store::default();
        let mut status = DeltaStatus::default();
        let subscribed = store.type_urls();
        let r = response(
            AUTHZ,
            "n7",
            vec![resource(AUTHZ, "ns/deny", "3", b"p")],
            &[],
        );
        let ack = handle_response(&mut store, &mut status, &subscribed, r);
        assert_eq!(ack.type_url, AUTHZ);
        assert_eq!(ack.response_nonce, "n7");
        assert!(ack.error_detail.is_none());
        assert!(
            ack.node.is_none(),
            "the node goes in the first request only"
        );
        assert!(
            ack.resource_names_subscribe.is_empty() && ack.initial_resource_versions.is_empty()
        );
        let t = &status.types[AUTHZ];
        assert_eq!((t.responses, t.acks, t.nacks, t.resources), (1, 1, 0, 1));
        assert_eq!(t.last_result, Some("ACK"));
    }

    #[test]
    fn handler_error_is_a_nack_with_invalid_argument_and_the_detail() {
        let mut store = Store::default();
        let mut status = DeltaStatus::default();
        let subscribed = store.type_urls();
        let r = response(
            ADDRESS,
            "n3",
            vec![
                resource(ADDRESS, "good", "1", b"g"),
                resource(ADDRESS, "w1", "1", b"bad"),
            ],
            &[],
        );
        let nack = handle_response(&mut store, &mut status, &subscribed, r);
        assert_eq!(nack.response_nonce, "n3");
        let detail = nack.error_detail.expect("a NACK");
        assert_eq!(detail.code, 3);
        assert_eq!(detail.message, "w1: field value is bad");
        let t = &status.types[ADDRESS];
        assert_eq!((t.acks, t.nacks), (0, 1));
        assert_eq!(t.last_error.as_deref(), Some("w1: field value is bad"));
        // The good resource of the NACKed response is held and announced.
        assert_eq!(t.resources, 1);
    }

    #[test]
    fn transport_nacks_wrong_payload_type_unnamed_resource_and_unsubscribed_type() {
        let mut store = Store::default();
        let mut status = DeltaStatus::default();
        let subscribed = store.type_urls();
        let cases = [
            (
                response(ADDRESS, "n1", vec![resource(AUTHZ, "x", "1", b"p")], &[]),
                "resource \"x\" (resources[0]): resource.type_url",
            ),
            (
                response(ADDRESS, "n2", vec![resource(ADDRESS, "", "1", b"p")], &[]),
                "resources[0]: name is empty",
            ),
            (
                response("type.googleapis.com/other", "n3", vec![], &["a"]),
                "not subscribed",
            ),
        ];
        for (r, expected) in cases {
            let nonce = r.nonce.clone();
            let nack = handle_response(&mut store, &mut status, &subscribed, r);
            assert_eq!(nack.response_nonce, nonce);
            let message = nack.error_detail.map(|s| s.message).unwrap_or_default();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
        assert!(
            store.held.values().all(|m| m.is_empty()),
            "nothing reached the handler"
        );
    }
}
