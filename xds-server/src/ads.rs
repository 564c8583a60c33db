//! The Aggregated Discovery Service (state of the world) over [`SnapshotCache`].
//!
//! One task per stream: it interprets requests with [`TypeState`] and pushes whatever the
//! proxy's group snapshot has that the proxy lacks, clusters before endpoints, one response
//! in flight per type. Incremental (delta) xDS is not served yet (issue #3).

use crate::cache::{CLUSTER_TYPE, ENDPOINT_TYPE, SnapshotCache};
use crate::protocol::{PUSH_ORDER, RequestOutcome, TypeState};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use std::collections::BTreeMap;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The ADS gRPC service.
#[derive(Clone, Default)]
pub struct Ads {
    cache: SnapshotCache,
}

impl Ads {
    /// An ADS service serving `cache`.
    pub fn new(cache: SnapshotCache) -> Ads {
        Ads { cache }
    }

    /// The tonic service, to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(self)
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
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(serve_stream(self.cache.clone(), inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("delta xDS is not served yet"))
    }
}

async fn serve_stream(
    cache: SnapshotCache,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let stream = cache.open_stream();
    let mut changes = cache.subscribe();
    let mut states: BTreeMap<String, TypeState> = BTreeMap::new();
    let mut group: Option<String> = None;
    loop {
        tokio::select! {
            message = inbound.message() => {
                let request = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "ADS stream closed");
                        break;
                    }
                };
                if group.is_none() {
                    // The node is sent at least on the first request of the stream.
                    let node = request.node.clone().unwrap_or_default();
                    let g = if node.cluster.is_empty() { crate::cache::DEFAULT_GROUP.to_string() } else { node.cluster.clone() };
                    tracing::info!(node = %node.id, group = %g, "proxy connected");
                    cache.report(stream, |p| {
                        p.node_id = node.id.clone();
                        p.group = g.clone();
                    });
                    group = Some(g);
                }
                let state = states.entry(request.type_url.clone()).or_default();

                let error = request.error_detail.as_ref().map(|s| s.message.as_str());
                match state.on_request(&request.version_info, &request.response_nonce, error, &request.resource_names) {
                    RequestOutcome::Ack { version } => {
                        cache.report(stream, |p| {
                            p.acked.insert(request.type_url.clone(), version);
                            p.rejected.remove(&request.type_url);
                        });
                    }
                    RequestOutcome::Nack { rejected, kept_version, error } => {
                        tracing::warn!(type_url = %request.type_url, %rejected, %kept_version, %error, "proxy rejected a version");
                        let rejection = state.rejected.clone();
                        cache.report(stream, |p| {
                            if let Some(r) = rejection {
                                p.rejected.insert(request.type_url.clone(), r);
                            }
                        });
                    }
                    RequestOutcome::Subscribe | RequestOutcome::Resubscribe | RequestOutcome::Stale => {}
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let generation = *changes.borrow_and_update();
        let Some(g) = &group else { continue };
        let Some(snapshot) = cache.snapshot_for(g) else {
            continue;
        };
        for type_url in PUSH_ORDER {
            let (Some(state), Some(resources)) = (states.get_mut(type_url), snapshot.get(type_url))
            else {
                continue;
            };
            if !state.wants(&resources.version) {
                continue;
            }
            let items = resources
                .items
                .iter()
                .filter(|(name, _)| {
                    // Endpoints are requested by name; clusters are a wildcard subscription.
                    type_url != ENDPOINT_TYPE
                        || state.subscribed.as_ref().is_none_or(|s| s.contains(*name))
                })
                .map(|(_, any)| any.clone())
                .collect();
            // A cluster version the proxy does not run yet means changed clusters, which
            // Envoy re-warms: they wait for their endpoints even if those did not change.
            let clusters_changed =
                type_url == CLUSTER_TYPE && state.acked.as_deref() != Some(&resources.version);
            let nonce = state.sent(&resources.version);
            cache.report(stream, |p| {
                *p.responses.entry(type_url.to_string()).or_default() += 1
            });
            let response = DiscoveryResponse {
                version_info: resources.version.clone(),
                resources: items,
                type_url: type_url.to_string(),
                nonce,
                ..Default::default()
            };
            if tx.send(Ok(response)).await.is_err() {
                cache.close_stream(stream);
                return;
            }
            if clusters_changed && let Some(eds) = states.get_mut(ENDPOINT_TYPE) {
                eds.resend();
            }
        }
        cache.report(stream, |p| p.synced_generation = generation);
    }
    cache.close_stream(stream);
}
