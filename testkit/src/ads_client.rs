//! A simulated Envoy on the ADS protocol, for benchmarks and protocol tests: it subscribes
//! to clusters (wildcard) and to the endpoints of every cluster it receives, like Envoy,
//! and ACKs every response at once.
//!
//! It behaves like Envoy on the wire but does no Envoy work: responses are not validated
//! and endpoint assignments are not decoded (only clusters are, for their names). A
//! thousand of them fit in one process beside the server; the real-Envoy tests are in
//! `tests/tests/xds_envoy.rs`.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use shadowmesh_xds::xds::{CLUSTER_TYPE, ENDPOINT_TYPE};
use std::collections::BTreeSet;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

/// One response as the simulated proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Which proxy (index given to [`run`]).
    pub proxy: usize,
    /// Type URL.
    pub type_url: String,
    /// `version_info` (SotW) or `system_version_info` (delta).
    pub version: String,
    /// Names of the resources in it (clusters only; endpoint assignments are not decoded,
    /// so for them this is empty in SotW and the resource names in delta).
    pub names: Vec<String>,
    /// Names removed (delta).
    pub removed: Vec<String>,
    /// Encoded size of the response.
    pub bytes: usize,
    /// When its ACK was sent.
    pub acked_at: Instant,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimProxy {
    /// Index reported in [`Received::proxy`].
    pub index: usize,
    /// `node.id`.
    pub node_id: String,
    /// `node.cluster` (the proxy group).
    pub group: String,
    /// Incremental (delta) instead of state of the world.
    pub delta: bool,
}

fn node(p: &SimProxy) -> Option<Node> {
    Some(Node {
        id: p.node_id.clone(),
        cluster: p.group.clone(),
        ..Default::default()
    })
}

fn cluster_names(resources: impl Iterator<Item = Vec<u8>>) -> Vec<String> {
    resources
        .filter_map(|v| Cluster::decode(v.as_slice()).ok())
        .map(|c| c.name)
        .collect()
}

/// Connects to the ADS server on `channel` and runs until the stream ends, sending one
/// [`Received`] per response to `seen`.
pub async fn run(
    p: SimProxy,
    channel: Channel,
    seen: mpsc::UnboundedSender<Received>,
) -> Result<(), tonic::Status> {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    if p.delta {
        run_delta(p, &mut client, seen).await
    } else {
        run_sotw(p, &mut client, seen).await
    }
}

async fn run_sotw(
    p: SimProxy,
    client: &mut AggregatedDiscoveryServiceClient<Channel>,
    seen: mpsc::UnboundedSender<Received>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::unbounded_channel();
    let subscribe =
        |type_url: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
            node: node(&p),
            type_url: type_url.to_string(),
            resource_names: names,
            version_info: version,
            response_nonce: nonce,
            ..Default::default()
        };
    let _ = tx.send(subscribe(
        CLUSTER_TYPE,
        vec![],
        String::new(),
        String::new(),
    ));
    let mut inbound = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut eds_names: Option<Vec<String>> = None;
    // Latest EDS (version, nonce): a subscription change repeats them, as Envoy does.
    let mut eds_last = (String::new(), String::new());
    while let Some(r) = inbound.next().await {
        let r: DiscoveryResponse = r?;
        let bytes = r.encoded_len();
        let names = if r.type_url == CLUSTER_TYPE {
            cluster_names(r.resources.into_iter().map(|a| a.value))
        } else {
            Vec::new()
        };
        let names_for_eds = (r.type_url == CLUSTER_TYPE).then(|| names.clone());
        let ack_names = if r.type_url == ENDPOINT_TYPE {
            eds_last = (r.version_info.clone(), r.nonce.clone());
            eds_names.clone().unwrap_or_default()
        } else {
            Vec::new()
        };
        let _ = tx.send(subscribe(
            &r.type_url,
            ack_names,
            r.version_info.clone(),
            r.nonce.clone(),
        ));
        let acked_at = Instant::now();
        // Like Envoy: the endpoints of every cluster received, as one subscription.
        if let Some(names) = names_for_eds
            && eds_names.as_ref() != Some(&names)
        {
            eds_names = Some(names.clone());
            let (version, nonce) = eds_last.clone();
            let _ = tx.send(subscribe(ENDPOINT_TYPE, names, version, nonce));
        }
        let _ = seen.send(Received {
            proxy: p.index,
            type_url: r.type_url,
            version: r.version_info,
            names,
            removed: Vec::new(),
            bytes,
            acked_at,
        });
    }
    Ok(())
}

async fn run_delta(
    p: SimProxy,
    client: &mut AggregatedDiscoveryServiceClient<Channel>,
    seen: mpsc::UnboundedSender<Received>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(DeltaDiscoveryRequest {
        node: node(&p),
        type_url: CLUSTER_TYPE.to_string(),
        ..Default::default()
    });
    let mut inbound = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut clusters: BTreeSet<String> = BTreeSet::new();
    let mut eds_started = false;
    while let Some(r) = inbound.next().await {
        let r: DeltaDiscoveryResponse = r?;
        let bytes = r.encoded_len();
        let names: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        });
        let acked_at = Instant::now();
        if r.type_url == CLUSTER_TYPE {
            let added: Vec<String> = names
                .iter()
                .filter(|n| clusters.insert((*n).clone()))
                .cloned()
                .collect();
            let removed: Vec<String> = r
                .removed_resources
                .iter()
                .filter(|n| clusters.remove(*n))
                .cloned()
                .collect();
            if !eds_started || !added.is_empty() || !removed.is_empty() {
                let _ = tx.send(DeltaDiscoveryRequest {
                    node: (!eds_started).then(|| node(&p)).flatten(),
                    type_url: ENDPOINT_TYPE.to_string(),
                    // An empty first subscription would be a wildcard.
                    resource_names_subscribe: if !eds_started && added.is_empty() {
                        vec!["-".into()]
                    } else {
                        added
                    },
                    resource_names_unsubscribe: removed,
                    ..Default::default()
                });
                eds_started = true;
            }
        }
        let _ = seen.send(Received {
            proxy: p.index,
            type_url: r.type_url,
            version: r.system_version_info,
            names,
            removed: r.removed_resources,
            bytes,
            acked_at,
        });
    }
    Ok(())
}
