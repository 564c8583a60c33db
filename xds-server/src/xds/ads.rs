//! The Aggregated Discovery Service over [`SnapshotCache`], both variants of the protocol:
//! state of the world (`StreamAggregatedResources`) and incremental
//! (`DeltaAggregatedResources`).
//!
//! One task per stream. It interprets requests with the per-type protocol state of
//! [`super::protocol`] and, after every request and every snapshot change, pushes whatever
//! the proxy's group snapshot has that the proxy lacks: clusters before endpoints, one
//! response in flight per type, removals only after their replacements are ACKed
//! (make-before-break), and the endpoints of a changed cluster again (Envoy re-warms it).
//!
//! What a client sends is bounded before it is kept or logged: a request is at most
//! [`MAX_REQUEST_BYTES`]; a NACK's `error_detail` is cut to [`MAX_ERROR_DETAIL_BYTES`]; a
//! node id, group, version, nonce or resource name longer than [`MAX_NAME_BYTES`], or more
//! than [`MAX_RESOURCE_NAMES`] names subscribed on a stream, refuse the stream
//! (`INVALID_ARGUMENT`); only the types the server pushes ([`PUSH_ORDER`]) get protocol
//! state; a stream that sends no request within its first-request deadline is ended
//! (`DEADLINE_EXCEEDED`); and what is logged of it is escaped. At shutdown every stream
//! ends with `UNAVAILABLE`.

use super::cache::SnapshotCache;
use super::listener::{AdsConnection, OpenStream};
use super::metrics::{ModeLabels, TypeLabels, XdsMetrics};
use super::protocol::{
    DeltaTypeState, PUSH_ORDER, Rejection, RequestOutcome, TypeState, sotw_response,
};
use super::resource::{CLUSTER_TYPE, ENDPOINT_TYPE, ResourceMap, Resources};
use super::status::XdsMode;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use prost::Message;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Longest NACK `error_detail` message kept (in `/v1/proxies`) and logged; the rest is
/// cut, its length said.
pub const MAX_ERROR_DETAIL_BYTES: usize = 1024;

/// Longest string a client may send that is kept or logged: node id, group, version,
/// nonce, resource name (Envoy's are far shorter).
pub const MAX_NAME_BYTES: usize = 1024;

/// Most resource names one stream may subscribe to per type (or report holding): twice
/// and more the endpoints of 10,000 services.
pub const MAX_RESOURCE_NAMES: usize = 65_536;

/// Largest request a client may send (decoded). A subscription to every resource of a
/// 10,000-service mesh takes about a megabyte.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Time a new stream has to send its first request, unless [`Ads::first_request_within`]
/// sets another.
pub const DEFAULT_FIRST_REQUEST: std::time::Duration = std::time::Duration::from_secs(10);

/// The ADS gRPC service.
#[derive(Clone)]
pub struct Ads {
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    closing: CancellationToken,
    first_request: std::time::Duration,
}

impl Default for Ads {
    fn default() -> Self {
        Ads::new(SnapshotCache::default())
    }
}

impl Ads {
    /// An ADS service serving `cache`, with metrics of its own.
    pub fn new(cache: SnapshotCache) -> Ads {
        Ads::with_metrics(cache, Arc::default())
    }

    /// An ADS service serving `cache` and recording into `metrics`.
    pub fn with_metrics(cache: SnapshotCache, metrics: Arc<XdsMetrics>) -> Ads {
        Ads {
            cache,
            metrics,
            closing: CancellationToken::new(),
            first_request: DEFAULT_FIRST_REQUEST,
        }
    }

    /// The same service, whose new streams must send their first request within `deadline`
    /// (a stream that never does would hold its connection, and a proxy entry, for ever).
    pub fn first_request_within(self, deadline: std::time::Duration) -> Ads {
        Ads {
            first_request: deadline,
            ..self
        }
    }

    /// The same service, whose streams end with `UNAVAILABLE` once `closing` is cancelled.
    pub fn closing_with(self, closing: CancellationToken) -> Ads {
        Ads { closing, ..self }
    }

    /// Its metrics.
    pub fn metrics(&self) -> Arc<XdsMetrics> {
        self.metrics.clone()
    }

    /// The tonic service, to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(64 << 20)
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let link = ProxyLink::open(self, &request, XdsMode::Sotw);
        tokio::spawn(serve::<Sotw>(link, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let link = ProxyLink::open(self, &request, XdsMode::Delta);
        tokio::spawn(serve::<Delta>(link, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One proxy's stream as the cache, the metrics and its connection see it; closing it
/// (drop) forgets the proxy and its gauge, and ends its count on the connection.
struct ProxyLink {
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    closing: CancellationToken,
    first_request: std::time::Duration,
    stream: u64,
    mode: XdsMode,
    group: Option<String>,
    _open: Option<OpenStream>,
}

impl ProxyLink {
    fn open<R>(ads: &Ads, request: &Request<R>, mode: XdsMode) -> ProxyLink {
        ads.metrics
            .connected
            .get_or_create(&ModeLabels {
                mode: mode.as_str(),
            })
            .inc();
        let stream = ads.cache.open_stream();
        ads.cache.report(stream, |p| p.mode = mode);
        ProxyLink {
            cache: ads.cache.clone(),
            metrics: ads.metrics.clone(),
            closing: ads.closing.clone(),
            first_request: ads.first_request,
            stream,
            mode,
            group: None,
            // Absent when the service is not served by `serve_ads` (no idle deadline).
            _open: request
                .extensions()
                .get::<AdsConnection>()
                .map(AdsConnection::stream_opened),
        }
    }

    /// Learns the proxy's group from the first request (the node is sent at least there);
    /// refuses a node whose id or group is too long to keep.
    fn identify(&mut self, node: Option<&Node>) -> Result<(), Status> {
        if self.group.is_some() {
            return Ok(());
        }
        let node = node.cloned().unwrap_or_default();
        let group = self.cache.group_of(&node);
        name_fits("node.id", &node.id)?;
        name_fits("the node's group", &group)?;
        tracing::info!(node = ?node.id, ?group, mode = self.mode.as_str(), "proxy connected");
        self.cache.report(self.stream, |p| {
            p.node_id = node.id.clone();
            p.group = group.clone();
        });
        self.group = Some(group);
        Ok(())
    }

    fn labels(&self, type_url: &str) -> TypeLabels {
        TypeLabels::new(type_url, self.mode)
    }

    /// Records the proxy's answer to a response; `sent_at` is when that response went out.
    fn answered(&self, type_url: &str, outcome: &RequestOutcome, sent_at: Option<Instant>) {
        let ack = match outcome {
            RequestOutcome::Ack { version } => {
                self.cache.report(self.stream, |p| {
                    p.acked.insert(type_url.to_string(), version.clone());
                    p.rejected.remove(type_url);
                });
                true
            }
            RequestOutcome::Nack {
                rejected,
                kept_version,
                error,
            } => {
                tracing::warn!(%type_url, %rejected, ?kept_version, ?error, "proxy rejected a version");
                self.cache.report(self.stream, |p| {
                    p.rejected.insert(
                        type_url.to_string(),
                        Rejection {
                            version: rejected.clone(),
                            error: error.clone(),
                        },
                    );
                });
                false
            }
            _ => return,
        };
        let after = sent_at.map(|t| t.elapsed()).unwrap_or_default();
        self.metrics.answered(&self.labels(type_url), ack, after);
    }

    fn pushed(&self, type_url: &str, bytes: usize) {
        self.metrics.pushed(&self.labels(type_url), bytes);
        self.cache.report(self.stream, |p| {
            *p.responses.entry(type_url.to_string()).or_default() += 1
        });
    }
}

impl Drop for ProxyLink {
    fn drop(&mut self) {
        self.metrics
            .connected
            .get_or_create(&ModeLabels {
                mode: self.mode.as_str(),
            })
            .dec();
        self.cache.close_stream(self.stream);
    }
}

/// What a stream waits for next.
enum Event<R> {
    Request(R),
    SnapshotChanged,
    Closed,
    ShuttingDown,
    /// No first request within the deadline.
    Silent,
}

async fn next_event<R>(
    inbound: &mut Streaming<R>,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    closing: &CancellationToken,
    first_request: Option<&mut Pin<Box<tokio::time::Sleep>>>,
) -> Event<R> {
    let waiting = first_request.is_some();
    let silent = async {
        match first_request {
            Some(deadline) => deadline.as_mut().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = closing.cancelled() => Event::ShuttingDown,
        () = silent, if waiting => Event::Silent,
        message = inbound.message() => match message {
            Ok(Some(r)) => Event::Request(r),
            Ok(None) => Event::Closed,
            Err(e) => {
                tracing::debug!(error = %e, "ADS stream closed");
                Event::Closed
            }
        },
        changed = changes.changed() => match changed {
            Ok(()) => Event::SnapshotChanged,
            Err(_) => Event::Closed,
        },
    }
}

/// Refuses a string a client sent that is too long to keep or log.
fn name_fits(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes, over {MAX_NAME_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// Refuses a list of resource names that is too long, or holds a name too long.
fn names_fit<'a>(
    field: &str,
    names: impl ExactSizeIterator<Item = &'a String>,
) -> Result<(), Status> {
    if names.len() > MAX_RESOURCE_NAMES {
        return Err(Status::invalid_argument(format!(
            "{field} has {} names, over {MAX_RESOURCE_NAMES}",
            names.len()
        )));
    }
    for name in names {
        name_fits(field, name)?;
    }
    Ok(())
}

/// What differs between the two protocol variants; [`serve`] is the rest.
trait Variant {
    type Request: Send + 'static;
    type Response: Message + Send + 'static;
    /// Per-type protocol state of one stream.
    type State: Default + Send;

    fn node(request: &Self::Request) -> Option<&Node>;
    fn type_url(request: &Self::Request) -> &str;
    /// Refuses a request whose strings or names are beyond the bounds (see the module), given
    /// the type's state so far.
    fn check(state: &Self::State, request: &Self::Request) -> Result<(), Status>;
    /// Interprets a request; for an ACK/NACK also returns when its response was sent.
    fn on_request(
        state: &mut Self::State,
        request: &Self::Request,
    ) -> (RequestOutcome, Option<Instant>);
    /// The response bringing the proxy towards `desired`, if one is due, and the clusters
    /// it changes (whose endpoints must then be sent again).
    fn next_response(
        state: &mut Self::State,
        type_url: &str,
        desired: &Resources,
    ) -> Option<(Self::Response, Vec<String>)>;
    /// Endpoints of these changed clusters must be sent again.
    fn rewarm(state: &mut Self::State, clusters: &[String]);
}

/// Serves one stream of variant `V` until it ends.
async fn serve<V: Variant>(
    mut link: ProxyLink,
    mut inbound: Streaming<V::Request>,
    tx: mpsc::Sender<Result<V::Response, Status>>,
) {
    let mut changes = link.cache.subscribe();
    let mut types: BTreeMap<String, V::State> = BTreeMap::new();
    let mut first_request = Some(Box::pin(tokio::time::sleep(link.first_request)));
    loop {
        let event = next_event(
            &mut inbound,
            &mut changes,
            &link.closing,
            first_request.as_mut(),
        )
        .await;
        match event {
            Event::Closed => return,
            Event::Silent => {
                let _ = tx
                    .send(Err(Status::deadline_exceeded(format!(
                        "no request within {:?} of the stream's start",
                        link.first_request
                    ))))
                    .await;
                return;
            }
            Event::ShuttingDown => {
                // Envoy keeps its configuration and reconnects (to this address once a new
                // process listens, or to another control plane of its cluster).
                let _ = tx
                    .send(Err(Status::unavailable(
                        "the control plane is shutting down; reconnect",
                    )))
                    .await;
                return;
            }
            Event::SnapshotChanged => {}
            Event::Request(request) => {
                first_request = None;
                if let Err(refused) = link.identify(V::node(&request)) {
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                let type_url = V::type_url(&request);
                // Only the types pushed get state: a client naming endless others would
                // grow this map (and no response would ever answer them).
                if !PUSH_ORDER.contains(&type_url) {
                    continue;
                }
                let type_url = type_url.to_string();
                let state = types.entry(type_url.clone()).or_default();
                if let Err(refused) = V::check(state, &request) {
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                let (outcome, sent_at) = V::on_request(state, &request);
                link.answered(&type_url, &outcome, sent_at);
            }
        }
        let generation = *changes.borrow_and_update();
        let Some(snapshot) = link
            .group
            .as_deref()
            .and_then(|g| link.cache.snapshot_for(g))
        else {
            continue;
        };
        for type_url in PUSH_ORDER {
            let (Some(state), Some(desired)) = (types.get_mut(type_url), snapshot.get(type_url))
            else {
                continue;
            };
            let Some((response, changed_clusters)) = V::next_response(state, type_url, desired)
            else {
                continue;
            };
            link.pushed(type_url, response.encoded_len());
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
            // Envoy re-warms a changed cluster and waits for its endpoints, even unchanged.
            if !changed_clusters.is_empty()
                && let Some(eds) = types.get_mut(ENDPOINT_TYPE)
            {
                V::rewarm(eds, &changed_clusters);
            }
        }
        link.cache
            .report(link.stream, |p| p.synced_generation = generation);
    }
}

/// A NACK's reason as kept and logged: at most [`MAX_ERROR_DETAIL_BYTES`] of it.
fn error_detail(status: Option<&envoy_types::pb::google::rpc::Status>) -> Option<String> {
    let message = &status?.message;
    if message.len() <= MAX_ERROR_DETAIL_BYTES {
        return Some(message.clone());
    }
    let cut = message.floor_char_boundary(MAX_ERROR_DETAIL_BYTES);
    Some(format!(
        "{}… ({} bytes in all)",
        &message[..cut],
        message.len()
    ))
}

fn is_answer(outcome: &RequestOutcome) -> bool {
    matches!(
        outcome,
        RequestOutcome::Ack { .. } | RequestOutcome::Nack { .. }
    )
}

/// State of the world.
struct Sotw;

/// Per-type state of a state-of-the-world stream.
#[derive(Default)]
struct SotwType {
    protocol: TypeState,
    /// Resources of the last response the proxy ACKed (for make-before-break).
    applied: Option<ResourceMap>,
    /// Resources of the response in flight, and when it was sent.
    in_flight: Option<(ResourceMap, Instant)>,
}

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type State = SotwType;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DiscoveryRequest) -> &str {
        &request.type_url
    }

    fn check(_: &SotwType, request: &DiscoveryRequest) -> Result<(), Status> {
        name_fits("version_info", &request.version_info)?;
        name_fits("response_nonce", &request.response_nonce)?;
        names_fit("resource_names", request.resource_names.iter())
    }

    fn on_request(
        t: &mut SotwType,
        request: &DiscoveryRequest,
    ) -> (RequestOutcome, Option<Instant>) {
        let error = error_detail(request.error_detail.as_ref());
        let outcome = t.protocol.on_request(
            &request.version_info,
            &request.response_nonce,
            error.as_deref(),
            &request.resource_names,
        );
        if !is_answer(&outcome) {
            return (outcome, None);
        }
        let (items, sent_at) = t.in_flight.take().unzip();
        if matches!(outcome, RequestOutcome::Ack { .. }) {
            t.applied = items;
        }
        (outcome, sent_at)
    }

    fn next_response(
        t: &mut SotwType,
        type_url: &str,
        desired: &Resources,
    ) -> Option<(DiscoveryResponse, Vec<String>)> {
        let (version, items) = sotw_response(t.applied.as_ref(), desired);
        if !t.protocol.wants(&version) {
            return None;
        }
        let resources = items
            .iter()
            .filter(|(name, _)| {
                // Endpoints are requested by name; clusters are a wildcard subscription.
                type_url != ENDPOINT_TYPE
                    || t.protocol
                        .subscribed
                        .as_ref()
                        .is_none_or(|s| s.contains(*name))
            })
            .map(|(_, r)| r.any.clone())
            .collect();
        let changed_clusters = if type_url == CLUSTER_TYPE {
            items
                .iter()
                .filter(|(name, r)| {
                    t.applied
                        .as_ref()
                        .and_then(|a| a.get(*name))
                        .is_none_or(|old| old.version != r.version)
                })
                .map(|(name, _)| name.clone())
                .collect()
        } else {
            Vec::new()
        };
        let nonce = t.protocol.sent(&version);
        t.in_flight = Some((items, Instant::now()));
        let response = DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        };
        Some((response, changed_clusters))
    }

    fn rewarm(t: &mut SotwType, _clusters: &[String]) {
        // A state-of-the-world response carries every subscribed assignment anyway.
        t.protocol.resend();
    }
}

/// Incremental (delta).
struct Delta;

/// Per-type state of an incremental stream.
#[derive(Default)]
struct DeltaType {
    protocol: DeltaTypeState,
    sent_at: Option<Instant>,
}

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type State = DeltaType;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DeltaDiscoveryRequest) -> &str {
        &request.type_url
    }

    fn check(t: &DeltaType, request: &DeltaDiscoveryRequest) -> Result<(), Status> {
        name_fits("response_nonce", &request.response_nonce)?;
        names_fit(
            "resource_names_subscribe",
            request.resource_names_subscribe.iter(),
        )?;
        names_fit(
            "resource_names_unsubscribe",
            request.resource_names_unsubscribe.iter(),
        )?;
        names_fit(
            "initial_resource_versions",
            request.initial_resource_versions.keys(),
        )?;
        for version in request.initial_resource_versions.values() {
            name_fits("initial_resource_versions", version)?;
        }
        // Subscriptions add up over a stream's requests.
        let subscribed =
            t.protocol.subscription.names.len() + request.resource_names_subscribe.len();
        if subscribed > MAX_RESOURCE_NAMES {
            return Err(Status::invalid_argument(format!(
                "the stream would subscribe to {subscribed} names, over {MAX_RESOURCE_NAMES}"
            )));
        }
        Ok(())
    }

    fn on_request(
        t: &mut DeltaType,
        request: &DeltaDiscoveryRequest,
    ) -> (RequestOutcome, Option<Instant>) {
        let error = error_detail(request.error_detail.as_ref());
        let outcome = t.protocol.on_request(
            &request.response_nonce,
            error.as_deref(),
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
            &request.initial_resource_versions,
        );
        let sent_at = if is_answer(&outcome) {
            t.sent_at.take()
        } else {
            None
        };
        (outcome, sent_at)
    }

    fn next_response(
        t: &mut DeltaType,
        type_url: &str,
        desired: &Resources,
    ) -> Option<(DeltaDiscoveryResponse, Vec<String>)> {
        let plan = t.protocol.plan(desired)?;
        // Clusters the proxy already holds in another version: changed, re-warmed.
        let changed_clusters: Vec<String> = if type_url == CLUSTER_TYPE {
            plan.updated
                .iter()
                .filter(|(name, _)| t.protocol.known.contains_key(name))
                .map(|(name, _)| name.clone())
                .collect()
        } else {
            Vec::new()
        };
        let resources = plan
            .updated
            .iter()
            .filter_map(|(name, version)| {
                let r = desired.items.get(name)?;
                Some(DeltaResource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
            })
            .collect();
        let response = DeltaDiscoveryResponse {
            system_version_info: plan.version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: plan.removed.clone(),
            ..Default::default()
        };
        let nonce = t.protocol.sent(plan);
        t.sent_at = Some(Instant::now());
        Some((
            DeltaDiscoveryResponse { nonce, ..response },
            changed_clusters,
        ))
    }

    fn rewarm(t: &mut DeltaType, clusters: &[String]) {
        t.protocol.resend(clusters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    fn detail(message: String) -> Option<String> {
        error_detail(Some(&RpcStatus {
            code: 3,
            message,
            details: Vec::new(),
        }))
    }

    #[test]
    fn a_nack_reason_is_kept_whole_up_to_its_limit_and_cut_past_it() {
        assert_eq!(error_detail(None), None);
        let whole = "e".repeat(MAX_ERROR_DETAIL_BYTES);
        assert_eq!(detail(whole.clone()), Some(whole));
        let cut = detail("e".repeat(MAX_ERROR_DETAIL_BYTES + 1)).unwrap();
        assert_eq!(
            cut,
            format!(
                "{}… ({} bytes in all)",
                "e".repeat(MAX_ERROR_DETAIL_BYTES),
                MAX_ERROR_DETAIL_BYTES + 1
            )
        );
        // Never inside a character.
        let cut = detail(format!("{}é", "e".repeat(MAX_ERROR_DETAIL_BYTES - 1))).unwrap();
        assert!(cut.starts_with(&"e".repeat(MAX_ERROR_DETAIL_BYTES - 1)));
        assert!(cut.ends_with(&format!("({} bytes in all)", MAX_ERROR_DETAIL_BYTES + 1)));
    }

    #[test]
    fn names_and_name_lists_are_bounded_at_their_limits() {
        assert!(name_fits("x", &"n".repeat(MAX_NAME_BYTES)).is_ok());
        let e = name_fits("node.id", &"n".repeat(MAX_NAME_BYTES + 1)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("node.id"), "{e}");
        let names: Vec<String> = (0..MAX_RESOURCE_NAMES).map(|i| i.to_string()).collect();
        assert!(names_fit("resource_names", names.iter()).is_ok());
        let more: Vec<String> = (0..=MAX_RESOURCE_NAMES).map(|i| i.to_string()).collect();
        assert!(names_fit("resource_names", more.iter()).is_err());
        let long = ["n".repeat(MAX_NAME_BYTES + 1)];
        assert!(names_fit("resource_names", long.iter()).is_err());
    }
}
