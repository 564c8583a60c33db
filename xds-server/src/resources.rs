//! Building the Envoy resources the control plane serves.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
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
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use std::net::SocketAddr;

/// One endpoint of a cluster, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Address.
    pub addr: SocketAddr,
    /// Whether Envoy may send traffic to it.
    pub healthy: bool,
    /// Load-balancing weight (≥ 1).
    pub weight: u32,
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
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
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
