//! `/v1/forecast`, `/v1/capacity`, `/v1/events`: the Predictive Traffic Analyzer over HTTP.

use super::{Api, ApiError, JsonBody, Name};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use shadowmesh_predictor::analyzer::{OverloadRisk, SeriesForecast};
use shadowmesh_predictor::events::ScheduledEvent;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/forecast", get(list_risks))
        .route("/v1/forecast/{series}", get(series_forecast))
        .route("/v1/forecast/{series}/history", post(backfill))
        .route("/v1/capacity/{series}", put(put_capacity).get(get_capacity))
        .route("/v1/events", get(list_events).post(post_event))
}

async fn list_risks(State(api): State<Api>) -> Json<Vec<OverloadRisk>> {
    Json(api.forecaster.overload_risks())
}

async fn series_forecast(
    State(api): State<Api>,
    Name(series): Name,
) -> Result<Json<Vec<SeriesForecast>>, ApiError> {
    let points = api.forecaster.forecast(&series);
    if points.is_empty() {
        return Err(ApiError::not_found(
            "series",
            format!("no data for {series:?}"),
        ));
    }
    Ok(Json(points))
}

/// `POST /v1/forecast/{series}/history`: `{"points": [[unix_seconds, demand], …]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct History {
    points: Vec<(i64, f64)>,
}

async fn backfill(
    State(api): State<Api>,
    Name(series): Name,
    JsonBody(h): JsonBody<History>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::forecaster::validate_series(&series)?;
    let learned = api.forecaster.backfill(&series, &h.points)?;
    Ok(Json(serde_json::json!({ "learned": learned })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Capacity {
    capacity: f64,
}

async fn put_capacity(
    State(api): State<Api>,
    Name(series): Name,
    JsonBody(c): JsonBody<Capacity>,
) -> Result<StatusCode, ApiError> {
    api.forecaster.set_capacity(&series, c.capacity)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_capacity(
    State(api): State<Api>,
    Name(series): Name,
) -> Result<Json<serde_json::Value>, ApiError> {
    match api.forecaster.capacity(&series) {
        Some(capacity) => Ok(Json(serde_json::json!({ "capacity": capacity }))),
        None => Err(ApiError::not_found(
            "series",
            format!("no capacity set for {series:?}"),
        )),
    }
}

async fn list_events(State(api): State<Api>) -> Json<Vec<ScheduledEvent>> {
    Json(api.forecaster.events())
}

async fn post_event(
    State(api): State<Api>,
    JsonBody(event): JsonBody<ScheduledEvent>,
) -> Result<StatusCode, ApiError> {
    api.forecaster.add_event(event)?;
    Ok(StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use crate::ControlPlane;
    use crate::http::test_util::call;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn capacities_and_events_are_validated_and_the_list_is_served() {
        let plane = ControlPlane::default();
        let call = async |method: &str, path: &str, body: &str| {
            call(plane.router(), method, path, body).await
        };
        let (s, body) = call("PUT", "/v1/capacity/checkout", r#"{"capacity": -5}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"capacity""#), "{body}");
        let (s, body) = call("PUT", "/v1/capacity/checkout", r#"{"capacty": 5}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        let (s, _) = call("PUT", "/v1/capacity/checkout", r#"{"capacity": 300}"#).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, body) = call(
            "POST",
            "/v1/events",
            r#"{"kind": "sale", "start": 0, "duration_secs": 0}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"duration_secs""#), "{body}");
        let (s, _) = call(
            "POST",
            "/v1/events",
            r#"{"kind": "sale", "start": 0, "duration_secs": 3600, "uplift": 1.5}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (_, events) = call("GET", "/v1/events", "").await;
        assert!(events.contains(r#""kind":"sale""#), "{events}");
        let (s, _) = call("GET", "/v1/forecast/nothing", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, list) = call("GET", "/v1/forecast", "").await;
        assert_eq!((s, list.as_str()), (StatusCode::OK, "[]"));
        // History: refused whole when any point is bad, learned otherwise.
        let (s, body) = call(
            "POST",
            "/v1/forecast/checkout/history",
            r#"{"points": [[0, 10.0], [60, -1.0]]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"points[1]""#), "{body}");
        let (s, body) = call(
            "POST",
            "/v1/forecast/checkout/history",
            r#"{"points": [[0, 10.0], [60, 12.0]]}"#,
        )
        .await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"learned":2}"#));
        let (s, _) = call("GET", "/v1/forecast/checkout", "").await;
        assert_eq!(s, StatusCode::OK);
    }
}
