//! The operator's HTTP/JSON admin API over the [`Controller`] and the [`SnapshotCache`],
//! and the Prometheus endpoint.
//!
//! | method | path | body | what |
//! |---|---|---|---|
//! | `GET` | `/v1/services` | | every service: endpoints, shadows, cluster names |
//! | `PUT` | `/v1/services/{service}` | `{"primary": [E…], "shadows": [E…]}` | create or replace (`shadows` optional) |
//! | `DELETE` | `/v1/services/{service}` | | remove the service and its clusters |
//! | `PUT` | `/v1/services/{service}/shadows` | `{"endpoints": [E…]}` | set its shadow nodes |
//! | `DELETE` | `/v1/services/{service}/shadows` | | release them |
//! | `GET` | `/v1/proxies` | | every connected Envoy: group, mode, ACKed versions, NACKs |
//! | `GET` | `/metrics` | | Prometheus text format ([`crate::metrics`]) |
//!
//! `E` is an endpoint: `{"address": "10.0.0.7:8080", "healthy": true, "weight": 1}`.
//! Invalid input is answered `400` with `{"error": "...", "field": "..."}` naming the
//! offending field (e.g. `shadows[1].weight`); an unknown service `404`. Nothing is changed
//! by a rejected request.

use crate::cache::SnapshotCache;
use crate::controller::{ClusterNames, Controller, ServiceEndpoints, SpecError};
use crate::metrics::XdsMetrics;
use crate::resources::EndpointSpec;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Shared state of the admin routes.
#[derive(Clone)]
pub struct Admin {
    /// Where changes go.
    pub controller: Controller,
    /// Where proxy state comes from.
    pub cache: SnapshotCache,
    /// What `/metrics` shows.
    pub metrics: Arc<XdsMetrics>,
}

/// `PUT /v1/services/{service}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutService {
    primary: Vec<EndpointSpec>,
    #[serde(default)]
    shadows: Option<Vec<EndpointSpec>>,
}

/// `PUT /v1/services/{service}/shadows`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutShadows {
    endpoints: Vec<EndpointSpec>,
}

/// One service in `GET /v1/services`.
#[derive(Debug, Serialize)]
struct ServiceView {
    #[serde(flatten)]
    endpoints: ServiceEndpoints,
    clusters: ClusterNames,
}

fn error(status: StatusCode, e: SpecError) -> Response {
    (status, Json(e)).into_response()
}

/// Parses a JSON body, naming the offending field on error.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, SpecError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { "body".into() } else { field };
        SpecError::new(field, e.into_inner().to_string())
    })
}

/// `404` for an unknown service, `400` for anything else wrong.
fn rejected(e: SpecError) -> Response {
    let status = if e.unknown_service {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, e)
}

fn done(result: Result<(), SpecError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => rejected(e),
    }
}

impl Admin {
    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/services", get(list_services))
            .route(
                "/v1/services/{service}",
                put(put_service).delete(delete_service),
            )
            .route(
                "/v1/services/{service}/shadows",
                put(put_shadows).delete(delete_shadows),
            )
            .route("/v1/proxies", get(list_proxies))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

async fn list_services(State(a): State<Admin>) -> Json<BTreeMap<String, ServiceView>> {
    Json(
        a.controller
            .services()
            .into_iter()
            .map(|(name, endpoints)| {
                let clusters = ClusterNames::of(&name);
                (
                    name,
                    ServiceView {
                        endpoints,
                        clusters,
                    },
                )
            })
            .collect(),
    )
}

async fn put_service(
    State(a): State<Admin>,
    Path(service): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let spec: PutService = match parse(&body) {
        Ok(s) => s,
        Err(e) => return rejected(e),
    };
    // Validate everything before changing anything.
    if let Some(shadows) = &spec.shadows
        && let Err(e) = crate::controller::validate_endpoints("shadows", shadows)
    {
        return rejected(e);
    }
    if let Err(e) = a.controller.set_primary(&service, &spec.primary) {
        return rejected(e);
    }
    done(
        spec.shadows
            .map_or(Ok(()), |s| a.controller.set_shadows(&service, &s)),
    )
}

async fn delete_service(State(a): State<Admin>, Path(service): Path<String>) -> Response {
    done(a.controller.remove_service(&service))
}

async fn put_shadows(
    State(a): State<Admin>,
    Path(service): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    match parse::<PutShadows>(&body) {
        Ok(s) => done(
            a.controller
                .set_shadows(&service, &s.endpoints)
                .map_err(|e| {
                    // The body calls the list `endpoints`.
                    SpecError {
                        field: e.field.replacen("shadows", "endpoints", 1),
                        ..e
                    }
                }),
        ),
        Err(e) => rejected(e),
    }
}

async fn delete_shadows(State(a): State<Admin>, Path(service): Path<String>) -> Response {
    done(a.controller.clear_shadows(&service))
}

async fn list_proxies(State(a): State<Admin>) -> Json<Vec<crate::cache::ProxyStatus>> {
    Json(a.cache.proxies())
}

async fn metrics(State(a): State<Admin>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        a.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        let cache = SnapshotCache::default();
        let metrics = Arc::new(XdsMetrics::default());
        Admin {
            controller: Controller::with_metrics(cache.clone(), metrics.clone()),
            cache,
            metrics,
        }
    }

    async fn call(a: &Admin, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        crate::test_util::call(a.router(), method, path, body).await
    }

    #[tokio::test]
    async fn services_are_created_listed_and_rejected_with_the_field_named() {
        let a = admin();
        let (s, _) = call(
            &a,
            "PUT",
            "/v1/services/checkout",
            r#"{"primary": [{"address": "10.0.0.1:80"}]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, body) = call(
            &a,
            "PUT",
            "/v1/services/checkout/shadows",
            r#"{"endpoints": [{"address": "10.0.0.9:80", "weight": 3}, {"address": "10.0.0.8:80", "weight": 0}]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"endpoints[1].weight""#), "{body}");
        let (s, body) = call(
            &a,
            "PUT",
            "/v1/services/checkout/shadows",
            r#"{"endpoints": [{"address": "10.0.0.9"}]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"endpoints[0].address""#), "{body}");
        let (s, body) = call(
            &a,
            "PUT",
            "/v1/services/nope/shadows",
            r#"{"endpoints": []}"#,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        let (s, _) = call(
            &a,
            "PUT",
            "/v1/services/checkout/shadows",
            r#"{"endpoints": [{"address": "10.0.0.9:80", "weight": 3, "healthy": false}]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, body) = call(&a, "GET", "/v1/services", "").await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["checkout"]["shadows"][0]["weight"], 3);
        assert_eq!(v["checkout"]["shadows"][0]["healthy"], false);
        assert_eq!(v["checkout"]["clusters"]["shadow"], "checkout_shadow");
        let (_, metrics) = call(&a, "GET", "/metrics", "").await;
        assert!(
            metrics.contains("shadowmesh_xds_snapshot_updates_total 2"),
            "{metrics}"
        );
        let (s, _) = call(&a, "DELETE", "/v1/services/checkout", "").await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (_, body) = call(&a, "GET", "/v1/services", "").await;
        assert_eq!(body, "{}");
    }
}
