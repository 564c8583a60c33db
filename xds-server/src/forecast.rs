//! The Predictive Traffic Analyzer inside the control plane: every telemetry report the
//! ATRE filters send is folded into per-service and per-link demand series
//! ([`shadowmesh_predictor::telemetry::TelemetryIngest`]), and the overload list is served
//! to operators and, next, to the Shadow Node Provisioner.
//!
//! | method | path | body | what |
//! |---|---|---|---|
//! | `GET` | `/v1/forecast` | | the overload list, most likely first ([`OverloadRisk`]) |
//! | `GET` | `/v1/forecast/{series}` | | the series' forecast over the horizon, with its interval |
//! | `PUT` | `/v1/capacity/{series}` | `{"capacity": 300.0}` | demand (req/s) the series takes before overload |
//! | `GET`/`POST` | `/v1/events` | a [`ScheduledEvent`] | the events calendar |

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use shadowmesh_predictor::analyzer::{Analyzer, AnalyzerConfig, OverloadRisk, SeriesForecast};
use shadowmesh_predictor::events::ScheduledEvent;
use shadowmesh_predictor::model::ConfigError;
use shadowmesh_predictor::telemetry::TelemetryIngest;
use shadowmesh_wire::TelemetryReport;
use std::sync::{Arc, Mutex, MutexGuard};

struct ForecastState {
    analyzer: Analyzer,
    ingest: TelemetryIngest,
    refused: u64,
    anomalies: u64,
}

/// The analyzer and its telemetry intake, shared. Cheap to clone.
#[derive(Clone)]
pub struct Forecaster {
    inner: Arc<Mutex<ForecastState>>,
}

impl Forecaster {
    /// A forecaster with no series yet.
    pub fn new(config: AnalyzerConfig) -> Result<Forecaster, ConfigError> {
        Ok(Forecaster {
            inner: Arc::new(Mutex::new(ForecastState {
                analyzer: Analyzer::new(config)?,
                ingest: TelemetryIngest::default(),
                refused: 0,
                anomalies: 0,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ForecastState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds one telemetry report in; completed steps are learned.
    pub fn ingest(&self, report: &TelemetryReport) {
        let mut s = self.lock();
        let ForecastState {
            analyzer, ingest, ..
        } = &mut *s;
        let out = ingest.add(analyzer, report);
        s.refused += out.refused;
        s.anomalies += out.anomalies.len() as u64;
        for (series, a) in out.anomalies {
            tracing::warn!(%series, since = a.since, direction = ?a.direction, samples = a.samples_to_flag, "demand anomaly");
        }
    }

    /// The overload list.
    pub fn overload_risks(&self) -> Vec<OverloadRisk> {
        self.lock().analyzer.overload_risks()
    }

    /// A series' forecast over the configured horizon.
    pub fn forecast(&self, series: &str) -> Vec<SeriesForecast> {
        let s = self.lock();
        let steps = s.analyzer.config().model.horizon;
        s.analyzer.forecast(series, steps)
    }

    /// Sets a series' capacity.
    pub fn set_capacity(&self, series: &str, capacity: f64) -> Result<(), ConfigError> {
        self.lock().analyzer.set_capacity(series, capacity)
    }

    /// Adds an event to the calendar.
    pub fn add_event(&self, event: ScheduledEvent) -> Result<(), ConfigError> {
        self.lock().analyzer.add_event(event)
    }

    /// Series known.
    pub fn series(&self) -> Vec<String> {
        self.lock().analyzer.series().map(str::to_string).collect()
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/forecast", get(list_risks))
            .route("/v1/forecast/{series}", get(series_forecast))
            .route("/v1/capacity/{series}", put(put_capacity))
            .route("/v1/events", get(list_events).post(post_event))
            .with_state(self.clone())
    }
}

fn rejected(e: ConfigError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"field": e.field, "message": e.message})),
    )
        .into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| ConfigError {
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

async fn list_risks(State(f): State<Forecaster>) -> Json<Vec<OverloadRisk>> {
    Json(f.overload_risks())
}

async fn series_forecast(State(f): State<Forecaster>, Path(series): Path<String>) -> Response {
    let points = f.forecast(&series);
    if points.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"field": "series", "message": format!("no data for {series:?}")})),
        )
            .into_response();
    }
    Json(points).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Capacity {
    capacity: f64,
}

async fn put_capacity(
    State(f): State<Forecaster>,
    Path(series): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    match parse::<Capacity>(&body).and_then(|c| f.set_capacity(&series, c.capacity)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => rejected(e),
    }
}

async fn list_events(State(f): State<Forecaster>) -> Json<Vec<ScheduledEvent>> {
    Json(f.lock().analyzer.events().to_vec())
}

async fn post_event(State(f): State<Forecaster>, body: axum::body::Bytes) -> Response {
    match parse::<ScheduledEvent>(&body).and_then(|e| f.add_event(e)) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => rejected(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn call(f: &Forecaster, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        crate::test_util::call(f.router(), method, path, body).await
    }

    #[tokio::test]
    async fn capacities_and_events_are_validated_and_the_list_is_served() {
        let f = Forecaster::new(AnalyzerConfig::for_step(60, 10)).unwrap();
        let (s, body) = call(&f, "PUT", "/v1/capacity/checkout", r#"{"capacity": -5}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"capacity""#), "{body}");
        let (s, body) = call(&f, "PUT", "/v1/capacity/checkout", r#"{"capacty": 5}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        let (s, _) = call(&f, "PUT", "/v1/capacity/checkout", r#"{"capacity": 300}"#).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, body) = call(
            &f,
            "POST",
            "/v1/events",
            r#"{"kind": "sale", "start": 0, "duration_secs": 0}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"duration_secs""#), "{body}");
        let (s, _) = call(
            &f,
            "POST",
            "/v1/events",
            r#"{"kind": "sale", "start": 0, "duration_secs": 3600, "uplift": 1.5}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (_, events) = call(&f, "GET", "/v1/events", "").await;
        assert!(events.contains(r#""kind":"sale""#), "{events}");
        let (s, _) = call(&f, "GET", "/v1/forecast/nothing", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, list) = call(&f, "GET", "/v1/forecast", "").await;
        assert_eq!((s, list.as_str()), (StatusCode::OK, "[]"));
    }
}
