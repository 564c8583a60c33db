//! `/v1/proxies` and `/metrics`: what the connected Envoys have, and every metric.

use super::Api;
use crate::xds::ProxyStatus;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/proxies", get(list_proxies))
        .route("/metrics", get(metrics))
}

async fn list_proxies(State(api): State<Api>) -> Json<Vec<ProxyStatus>> {
    Json(api.cache.proxies())
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &api.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
