//! The control plane's HTTP/JSON surface, in one table. Every error is an [`ApiError`]
//! answered as `{"field", "message"}`, whatever the status.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | `GET` | `/v1/services` | | every service ([`ServiceView`]) by name |
//! | `GET` | `/v1/services/{service}` | | one service |
//! | `PUT` | `/v1/services/{service}` | `{"primary": [E…], "shadows": S}` (`shadows` optional) | create or replace, one generation; the new [`ServiceView`] |
//! | `DELETE` | `/v1/services/{service}` | | remove it and its clusters (`204`) |
//! | `GET` | `/v1/services/{service}/shadows` | | its shadow set S, generation and readiness record |
//! | `PUT` | `/v1/services/{service}/shadows` | S | set its shadows and their readiness, one generation |
//! | `DELETE` | `/v1/services/{service}/shadows` | | release them |
//! | `POST` | `/v1/telemetry` | a filter's `TelemetryReport` | the `TelemetryAck`: every service's readiness |
//! | `GET` | `/v1/telemetry` | | the last reports kept, oldest first (`?last=N`, default 100) |
//! | `GET` | `/v1/telemetry/refusals` | | reports refused per proxy: `skewed`, `replayed`, `invalid` |
//! | `GET` | `/v1/proxies` | | every connected Envoy: group, mode, ACKed versions, NACKs |
//! | `GET` | `/v1/forecast` | | the overload list, most likely first |
//! | `GET` | `/v1/forecast/{series}` | | the series' forecast over the horizon, with its interval |
//! | `POST` | `/v1/forecast/{series}/history` | `{"points": [[unix_seconds, demand], …]}` | learn history from elsewhere (a metrics store) |
//! | `PUT`, `GET` | `/v1/capacity/{series}` | `{"capacity": 300.0}` | demand (req/s) the series takes before overload (`PUT`: `204`) |
//! | `GET`, `POST` | `/v1/events` | a scheduled event | the events calendar (`POST`: `201`) |
//! | `GET` | `/v1/pool` | | every spare: spec, state, failures, pid |
//! | `GET` | `/v1/provisioning` | | the provisioner's plan per service, expected cost and benefit, activations with their lead, the decision log (`?log=N` lines, default 100) |
//! | `POST` | `/v1/state/publish` | a filter's `StatePublish` (session deltas, whole states, watched sessions) | `StatePublishAck`: acknowledged versions, sessions to resend whole ([`crate::relay`]) |
//! | `POST` | `/v1/state/lookup` | a filter's `StateLookup` | `StateLookupAnswer`: the session's state, and whether its last change came from a shadow |
//! | `POST` | `/v1/state/pull` | a shadow-side filter's `StatePull` (long poll, `wait_ms`) | `StatePullAnswer`: changes after its cursor, or a full snapshot |
//! | `GET` | `/v1/state` | | the relay per service: sessions, sequence, gaps, resyncs, subscribers and how far behind |
//! | `GET` | `/metrics` | | Prometheus text format |
//! | `GET` | `/healthz` | | `ok` while the process serves (for liveness probes; no token) |
//! | `GET` | `/readyz` | | `ready` while the state store takes writes; else `503` with the store's error (for readiness probes; no token) |
//!
//! Every route needs an operator token when tokens are configured, except `POST
//! /v1/telemetry` and `POST /v1/state/{publish,pull,lookup}`, which a telemetry token may
//! also use ([`auth`]), and the probes `/healthz` and `/readyz`, which tell nothing but
//! that the process answers and whether its store works.
//!
//! `E` is an endpoint `{"address": "10.0.0.7:8080", "healthy": true, "weight": 1}`; `S` a
//! shadow set `{"endpoints": [E…], "warm": true, "max_in_flight": 32, "expires_at_ms":
//! null}` ([`crate::registry::ShadowSet`]). A rejected request changes nothing.

pub mod auth;
mod conn;
mod error;
mod forecast;
mod metrics;
mod observe;
mod provisioning;
mod reports;
pub mod serve;
mod services;
mod state;

pub use auth::{Identity, NameSet, Role, Scope, Tokens};
pub use error::{ApiError, JsonBody, MAX_BODY_BYTES, Name, parse_json};
pub use metrics::HttpMetrics;
pub use serve::{ServeLimits, serve};
pub use services::ServiceView;

use crate::forecaster::Forecaster;
use crate::hub::TelemetryHub;
use crate::registry::ShadowRegistry;
use crate::xds::SnapshotCache;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use std::sync::Arc;

/// What the HTTP routes work on. Cheap to clone (shared).
#[derive(Clone)]
pub struct Api {
    /// Services, shadows and their readiness.
    pub registry: ShadowRegistry,
    /// Where telemetry reports go.
    pub hub: TelemetryHub,
    /// The Predictive Traffic Analyzer.
    pub forecaster: Forecaster,
    /// Connected proxies' state.
    pub cache: SnapshotCache,
    /// Every metric of the control plane, for `/metrics`.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The provisioner's loop, if configured.
    pub provisioning: Option<crate::provisioning::Provisioning>,
    /// Who may do what (empty: everyone everything).
    pub tokens: Tokens,
    /// The checks telemetry reports pass.
    pub guard: Arc<crate::ingest::IngestGuard>,
    /// The HTTP surface's metrics.
    pub http_metrics: HttpMetrics,
    /// State synchronization's relay.
    pub relay: Arc<crate::relay::MemoryRelay>,
    /// The durable store, if there is one (for `/readyz`).
    pub store: Option<crate::store::StateStore>,
    /// Cancelled when shutdown begins: long polls answer at once.
    pub closing: tokio_util::sync::CancellationToken,
}

/// Every route of the table above, with JSON answers for unknown paths and methods.
pub fn router(api: Api) -> Router {
    Router::new()
        .merge(services::routes())
        .merge(reports::routes())
        .merge(forecast::routes())
        .merge(observe::routes())
        .merge(provisioning::routes())
        .merge(state::routes())
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            auth::authenticate,
        ))
        // Outside the authentication layer: a kubelet probe carries no token.
        .route(
            "/healthz",
            axum::routing::get(async || "ok").fallback(wrong_method),
        )
        .route(
            "/readyz",
            axum::routing::get(readiness).fallback(wrong_method),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(json_413))
        .with_state(api)
}

/// Extractors of raw bodies answer an oversize body in plain text: the one error shape
/// holds for them too.
async fn json_413(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        )
        .into_response();
    }
    response
}

/// Ready while the store takes writes and holds what the registry holds (a failed store is
/// reopened, and the registry's services written whole, here — at most once a second — so
/// readiness returns with the disk's room). Liveness stays `/healthz`: a full
/// disk is no reason to restart the process, which serves ADS from memory meanwhile.
async fn readiness(
    axum::extract::State(api): axum::extract::State<Api>,
) -> Result<&'static str, ApiError> {
    let Some(store) = &api.store else {
        return Ok("ready");
    };
    store
        .check()
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state_dir", e.to_string()))?;
    // The store takes a small write; the registry's services must be in it too.
    api.registry.sync_store()?;
    Ok("ready")
}

async fn unknown_path() -> ApiError {
    ApiError::not_found(
        "",
        "no such path (see the route table in xds-server/README.md)",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "",
        "method not allowed on this path",
    )
}

#[cfg(test)]
pub(crate) mod test_util {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    /// One request through `router`: status and body.
    pub async fn call(
        router: axum::Router,
        method: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::call;
    use crate::ControlPlane;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn tokens_gate_every_route_by_role_except_liveness() {
        let plane = ControlPlane {
            tokens: super::Tokens::parse(
                "operator op-0123456789abcdef\ntelemetry tm-0123456789abcdef proxies=* fronts=* serves=*\n",
            )
            .unwrap(),
            ..ControlPlane::default()
        };
        let router = plane.router();
        let send = |method: &str, path: &str, token: Option<&str>, body: &str| {
            let mut request = axum::http::Request::builder().method(method).uri(path);
            if let Some(t) = token {
                request = request.header("authorization", t);
            }
            let request = request
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let router = router.clone();
            async move {
                use tower::ServiceExt;
                router.oneshot(request).await.unwrap().status()
            }
        };
        let report = r#"{"proxy":"p","seq":1,"window_start_ms":0,"window_end_ms":1,"services":[]}"#;
        let op = Some("Bearer op-0123456789abcdef");
        let tm = Some("Bearer tm-0123456789abcdef");
        for (method, path, token, body, want) in [
            ("GET", "/v1/services", None, "", StatusCode::UNAUTHORIZED),
            (
                "GET",
                "/v1/services",
                Some("Bearer wrong-0123456789abcdef"),
                "",
                StatusCode::UNAUTHORIZED,
            ),
            (
                "GET",
                "/v1/services",
                Some("op-0123456789abcdef"),
                "",
                StatusCode::UNAUTHORIZED,
            ),
            ("GET", "/v1/services", op, "", StatusCode::OK),
            ("GET", "/v1/services", tm, "", StatusCode::FORBIDDEN),
            (
                "PUT",
                "/v1/services/checkout",
                tm,
                r#"{"primary":[]}"#,
                StatusCode::FORBIDDEN,
            ),
            ("GET", "/v1/telemetry", tm, "", StatusCode::FORBIDDEN),
            ("GET", "/metrics", None, "", StatusCode::UNAUTHORIZED),
            ("GET", "/v1/nothing", None, "", StatusCode::UNAUTHORIZED),
            (
                "POST",
                "/v1/telemetry",
                None,
                report,
                StatusCode::UNAUTHORIZED,
            ),
            ("GET", "/healthz", None, "", StatusCode::OK),
            // The scheme is case-insensitive; the token is not.
            (
                "GET",
                "/v1/services",
                Some("bearer op-0123456789abcdef"),
                "",
                StatusCode::OK,
            ),
            (
                "GET",
                "/v1/services",
                Some("BEARER op-0123456789abcdef"),
                "",
                StatusCode::OK,
            ),
            (
                "GET",
                "/v1/services",
                Some("Bearer OP-0123456789ABCDEF"),
                "",
                StatusCode::UNAUTHORIZED,
            ),
            // The state relay is the filters' too.
            (
                "POST",
                "/v1/state/publish",
                tm,
                "{}",
                StatusCode::BAD_REQUEST,
            ),
            ("POST", "/v1/state/pull", tm, "{}", StatusCode::BAD_REQUEST),
            (
                "POST",
                "/v1/state/lookup",
                tm,
                "{}",
                StatusCode::BAD_REQUEST,
            ),
            ("GET", "/v1/state", tm, "", StatusCode::FORBIDDEN),
        ] {
            assert_eq!(
                send(method, path, token, body).await,
                want,
                "{method} {path} {token:?}"
            );
        }
        // Oversize bodies and wrong methods answer in the one JSON shape, even on the raw
        // body route and the probe.
        let big = "x".repeat(super::MAX_BODY_BYTES + 1);
        let (status, body) = call(plane.router(), "POST", "/healthz", "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body.contains("\"message\""), "{body}");
        let open = ControlPlane::default().router();
        let (status, body) = call(open, "POST", "/v1/telemetry", &big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("\"message\""), "{body}");
        // A telemetry token's report is taken (not refused by the gate).
        let status = send("POST", "/v1/telemetry", tm, report).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED);
        assert_ne!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn every_error_is_the_same_json_shape() {
        let router = ControlPlane::default().router();
        let huge = "x".repeat(super::MAX_BODY_BYTES + 1);
        for (method, path, body, status) in [
            ("GET", "/v1/nothing", "", StatusCode::NOT_FOUND),
            ("PATCH", "/v1/services", "", StatusCode::METHOD_NOT_ALLOWED),
            (
                "PUT",
                "/v1/services/checkout",
                huge.as_str(),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            ("PUT", "/v1/services/checkout", "{", StatusCode::BAD_REQUEST),
            (
                "PUT",
                "/v1/services/checkout",
                r#"{"primary": []}junk"#,
                StatusCode::BAD_REQUEST,
            ),
            ("POST", "/v1/telemetry", "[]", StatusCode::BAD_REQUEST),
            (
                "PUT",
                "/v1/capacity/x",
                r#"{"capacity": -1}"#,
                StatusCode::BAD_REQUEST,
            ),
            ("GET", "/v1/services/nope", "", StatusCode::NOT_FOUND),
        ] {
            let (s, body) = call(router.clone(), method, path, body).await;
            assert_eq!(s, status, "{method} {path}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"));
            let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys, ["field", "message"], "{method} {path}: {body}");
            if status == StatusCode::BAD_REQUEST && path == "/v1/services/checkout" {
                assert_eq!(v["field"], "body", "{method} {path}: {body}");
            }
        }
    }
}
