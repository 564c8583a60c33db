//! `/v1/pool` and `/v1/provisioning`: the Shadow Node Provisioner over HTTP.

use super::{Api, ApiError};
use crate::provisioning::{Provisioning, ProvisioningView, SpareView};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/pool", get(pool))
        .route("/v1/provisioning", get(provisioning))
}

fn configured(api: &Api) -> Result<&Provisioning, ApiError> {
    api.provisioning.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "",
            "no provisioner is configured (see [provisioner] and [pool] in the configuration)",
        )
    })
}

async fn pool(State(api): State<Api>) -> Result<Json<Vec<SpareView>>, ApiError> {
    Ok(Json(configured(&api)?.pool()))
}

/// `?log=N`: decision log lines to include.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewQuery {
    #[serde(default = "default_log_lines")]
    log: usize,
}

fn default_log_lines() -> usize {
    100
}

async fn provisioning(
    State(api): State<Api>,
    query: Result<Query<ViewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ProvisioningView>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("log", e.body_text()))?;
    Ok(Json(configured(&api)?.view(q.log.min(1_000))))
}
