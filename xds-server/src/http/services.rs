//! `/v1/services[/{service}[/shadows]]`: the [`ShadowRegistry`] over HTTP.

use super::{Api, ApiError, JsonBody, Name};
use crate::registry::{ClusterNames, ServiceState, ShadowSet};
use crate::xds::builders::EndpointSpec;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shadowmesh_wire::ShadowRecord;
use std::collections::BTreeMap;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/services", get(list))
        .route(
            "/v1/services/{service}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route(
            "/v1/services/{service}/shadows",
            get(get_shadows).put(put_shadows).delete(delete_shadows),
        )
}

/// One service as the HTTP API shows it: what the registry holds, the cluster names Envoy
/// knows it by, and the readiness record the filters get.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceView {
    /// Primary endpoints.
    pub primary: Vec<EndpointSpec>,
    /// Shadows and their readiness.
    pub shadows: ShadowSet,
    /// Generation of the last change.
    pub generation: u64,
    /// Envoy cluster names.
    pub clusters: ClusterNames,
    /// The readiness record as a filter would get it now.
    pub readiness: ShadowRecord,
}

/// `PUT /v1/services/{service}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutService {
    primary: Vec<EndpointSpec>,
    #[serde(default)]
    shadows: Option<ShadowSet>,
}

fn view(name: &str, state: ServiceState, readiness: ShadowRecord) -> ServiceView {
    ServiceView {
        primary: state.primary,
        shadows: state.shadows,
        generation: state.generation,
        clusters: ClusterNames::of(name),
        readiness,
    }
}

pub(super) fn now_ms() -> u64 {
    crate::clock::unix_now_ms()
}

fn current(api: &Api, name: &str) -> Result<Json<ServiceView>, ApiError> {
    let (state, readiness) = api
        .registry
        .service_with_readiness(name, now_ms())
        .ok_or_else(|| ApiError::not_found("service", format!("no service {name:?}")))?;
    Ok(Json(view(name, state, readiness)))
}

async fn list(State(api): State<Api>) -> Json<BTreeMap<String, ServiceView>> {
    // Services and records read together: each entry's generation is its record's.
    Json(
        api.registry
            .services_with_readiness(now_ms())
            .into_iter()
            .map(|(name, s, readiness)| {
                let v = view(&name, s, readiness);
                (name, v)
            })
            .collect(),
    )
}

/// The answer to a write: the state this request wrote, not whatever is there by now.
fn written(api: &Api, name: &str, state: ServiceState) -> Json<ServiceView> {
    let readiness = api.registry.readiness_record(name, &state, now_ms());
    Json(view(name, state, readiness))
}

async fn get_service(
    State(api): State<Api>,
    Name(name): Name,
) -> Result<Json<ServiceView>, ApiError> {
    current(&api, &name)
}

async fn put_service(
    State(api): State<Api>,
    Name(name): Name,
    JsonBody(spec): JsonBody<PutService>,
) -> Result<Json<ServiceView>, ApiError> {
    let state = api
        .registry
        .set_service(&name, &spec.primary, spec.shadows)?;
    Ok(written(&api, &name, state))
}

async fn delete_service(State(api): State<Api>, Name(name): Name) -> Result<StatusCode, ApiError> {
    api.registry.remove_service(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A service's shadows as `GET`/`PUT …/shadows` answer them.
#[derive(Debug, Serialize)]
struct ShadowsView {
    #[serde(flatten)]
    shadows: ShadowSet,
    generation: u64,
    readiness: ShadowRecord,
}

fn shadows_view(Json(v): Json<ServiceView>) -> Json<ShadowsView> {
    Json(ShadowsView {
        shadows: v.shadows,
        generation: v.generation,
        readiness: v.readiness,
    })
}

async fn get_shadows(
    State(api): State<Api>,
    Name(name): Name,
) -> Result<Json<ShadowsView>, ApiError> {
    current(&api, &name).map(shadows_view)
}

async fn put_shadows(
    State(api): State<Api>,
    Name(name): Name,
    JsonBody(shadows): JsonBody<ShadowSet>,
) -> Result<Json<ShadowsView>, ApiError> {
    let state = api.registry.set_shadows(&name, &shadows)?;
    Ok(shadows_view(written(&api, &name, state)))
}

async fn delete_shadows(
    State(api): State<Api>,
    Name(name): Name,
) -> Result<Json<ShadowsView>, ApiError> {
    let state = api.registry.clear_shadows(&name)?;
    Ok(shadows_view(written(&api, &name, state)))
}

#[cfg(test)]
mod tests {
    use crate::ControlPlane;
    use crate::http::test_util::call;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn services_and_shadows_are_one_resource_with_fields_named_on_error() {
        let plane = ControlPlane::default();
        let call = async |method: &str, path: &str, body: &str| {
            call(plane.router(), method, path, body).await
        };
        let (s, body) = call(
            "PUT",
            "/v1/services/checkout",
            r#"{"primary": [{"address": "10.0.0.1:80"}]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let (s, body) = call(
            "PUT",
            "/v1/services/checkout/shadows",
            r#"{"endpoints": [{"address": "10.0.0.9:80", "weight": 3}, {"address": "10.0.0.8:80", "weight": 0}]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"endpoints[1].weight""#), "{body}");
        let (s, body) = call(
            "PUT",
            "/v1/services/checkout/shadows",
            r#"{"endpoints": [{"address": "10.0.0.9"}]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"endpoints[0].address""#), "{body}");
        let (s, body) = call(
            "PUT",
            "/v1/services/checkout",
            r#"{"primary": [], "shadows": {"endpoints": [], "warm": true, "max_in_flight": 4}}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"shadows.warm""#), "{body}");
        let (s, body) = call("PUT", "/v1/services/nope/shadows", r#"{"endpoints": []}"#).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        let (s, body) = call(
            "PUT",
            "/v1/services/checkout/shadows",
            r#"{"endpoints": [{"address": "10.0.0.9:80", "weight": 3}], "warm": true, "max_in_flight": 12}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["readiness"]["warm"], true);
        assert_eq!(v["readiness"]["max_in_flight"], 12);
        assert_eq!(v["readiness"]["generation"], v["generation"]);
        let (s, body) = call("GET", "/v1/services", "").await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["checkout"]["shadows"]["endpoints"][0]["weight"], 3);
        assert_eq!(v["checkout"]["clusters"]["shadow"], "checkout_shadow");
        assert_eq!(v["checkout"]["readiness"]["cluster"], "checkout_shadow");
        let (_, metrics) = call("GET", "/metrics", "").await;
        assert!(
            metrics.contains("shadowmesh_xds_snapshot_updates_total 3"),
            "{metrics}"
        );
        let (s, body) = call("DELETE", "/v1/services/checkout/shadows", "").await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains(r#""warm":false"#), "{body}");
        let (s, _) = call("DELETE", "/v1/services/checkout", "").await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (_, body) = call("GET", "/v1/services", "").await;
        assert_eq!(body, "{}");
    }
}
