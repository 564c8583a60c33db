//! Building the Envoy resources the control plane serves.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CustomClusterType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateConfig;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::Message;
use std::net::SocketAddr;

/// Largest load-balancing weight the controller accepts for one endpoint.
pub const MAX_WEIGHT: u32 = 10_000;

/// One endpoint of a cluster, as the controller sees it. In JSON:
/// `{"address": "10.0.0.7:8080", "healthy": true, "weight": 1}` (`healthy` and `weight`
/// are optional, with these defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Address (`ip:port`).
    #[serde(rename = "address")]
    pub addr: SocketAddr,
    /// Whether Envoy may send traffic to it.
    #[serde(default = "default_healthy")]
    pub healthy: bool,
    /// Load-balancing weight, 1 ..= [`MAX_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_healthy() -> bool {
    true
}

fn default_weight() -> u32 {
    1
}

impl EndpointSpec {
    /// A healthy endpoint with weight 1.
    pub fn healthy(addr: SocketAddr) -> EndpointSpec {
        EndpointSpec {
            addr,
            healthy: true,
            weight: 1,
        }
    }
}

/// A cluster whose endpoints come from EDS over the same ADS stream.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: seconds(1),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn seconds(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

/// The EDS cluster of a shadow pool: like [`eds_cluster`], plus outlier detection that
/// ejects a shadow after two local-origin failures (connect failures, resets), so a shadow
/// that dies unannounced stops receiving traffic within a second.
pub fn shadow_pool_cluster(name: &str) -> Cluster {
    Cluster {
        outlier_detection: Some(OutlierDetection {
            consecutive_local_origin_failure: Some(UInt32Value { value: 2 }),
            split_external_local_origin_errors: true,
            interval: seconds(1),
            base_ejection_time: seconds(5),
            max_ejection_percent: Some(UInt32Value { value: 100 }),
            ..Default::default()
        }),
        ..eds_cluster(name)
    }
}

/// An aggregate cluster: `members` in priority order (the first with healthy hosts takes
/// the traffic). Shadowmesh routes redirected requests to `[shadow pool, primary]`, so a
/// request retried after its shadow failed goes to the primary.
pub fn aggregate_cluster(name: &str, members: &[&str]) -> Cluster {
    let config = AggregateConfig {
        clusters: members.iter().map(|m| m.to_string()).collect(),
    };
    Cluster {
        name: name.to_string(),
        connect_timeout: seconds(1),
        lb_policy: LbPolicy::ClusterProvided as i32,
        // When a shadow dies under load every in-flight request is retried at once.
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_retries: Some(UInt32Value { value: 256 }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
            name: "envoy.clusters.aggregate".to_string(),
            typed_config: Some(Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"
                        .to_string(),
                value: config.encode_to_vec(),
            }),
        })),
        ..Default::default()
    }
}

/// The endpoints of cluster `name`.
pub fn load_assignment(name: &str, endpoints: &[EndpointSpec]) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|e| LbEndpoint {
            health_status: if e.healthy {
                HealthStatus::Healthy as i32
            } else {
                HealthStatus::Unhealthy as i32
            },
            load_balancing_weight: Some(UInt32Value {
                value: e.weight.max(1),
            }),
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: e.addr.ip().to_string(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(e.addr.port()))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}
