//! Telemetry ingest: the HTTP endpoint the ATRE filters report to, and the shadow
//! readiness records the control plane hands back in the answer.
//!
//! Endpoints (all JSON):
//!
//! | method | path | what |
//! |---|---|---|
//! | `POST` | `/v1/telemetry` | a filter's [`TelemetryReport`]; answered with a [`TelemetryAck`] |
//! | `GET` | `/v1/telemetry` | the last reports kept (newest last) |
//! | `GET` | `/v1/shadows` | current shadow records |
//! | `PUT` | `/v1/shadows/{service}` | set a service's [`ShadowRecord`] (operator or SNP) |
//! | `DELETE` | `/v1/shadows/{service}` | forget it (filters fall back to their configuration) |

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use shadowmesh_wire::{ShadowRecord, TELEMETRY_SCHEMA, TelemetryAck, TelemetryReport};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// How many reports are kept for `GET /v1/telemetry` and for tests.
const KEPT_REPORTS: usize = 4_096;

/// The control plane's telemetry and readiness state. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct TelemetryHub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<HubState>,
    /// Learns demand from every accepted report.
    forecaster: Option<crate::forecast::Forecaster>,
    /// Bumped on every accepted report, so callers can await new reports.
    received: watch::Sender<u64>,
}

#[derive(Default)]
struct HubState {
    reports: VecDeque<TelemetryReport>,
    shadows: BTreeMap<String, ShadowRecord>,
    rejected: u64,
}

/// A client error with a message saying what was wrong.
#[derive(Debug, Serialize)]
struct ApiError {
    error: String,
}

fn bad_request(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(ApiError { error: msg.into() }),
    )
        .into_response()
}

impl TelemetryHub {
    /// A hub whose accepted reports also feed `forecaster`.
    pub fn with_forecaster(forecaster: crate::forecast::Forecaster) -> TelemetryHub {
        TelemetryHub {
            inner: Arc::new(Inner {
                forecaster: Some(forecaster),
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; keep serving.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts one report and returns the answer for the filter.
    pub fn ingest(&self, report: TelemetryReport) -> TelemetryAck {
        if let Some(f) = &self.inner.forecaster {
            f.ingest(&report);
        }
        let mut s = self.lock();
        if s.reports.len() == KEPT_REPORTS {
            s.reports.pop_front();
        }
        s.reports.push_back(report);
        let ack = TelemetryAck {
            shadows: s.shadows.values().cloned().collect(),
        };
        drop(s);
        self.inner.received.send_modify(|n| *n += 1);
        ack
    }

    /// All reports kept, oldest first.
    pub fn reports(&self) -> Vec<TelemetryReport> {
        self.lock().reports.iter().cloned().collect()
    }

    /// Number of reports rejected as malformed.
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
    }

    /// Sets (or replaces) a service's shadow record; its generation must not go backwards.
    pub fn set_shadow(&self, record: ShadowRecord) -> Result<(), String> {
        if record.service.is_empty() {
            return Err("field `service`: must not be empty".into());
        }
        if record.cluster.is_empty() {
            return Err("field `cluster`: must not be empty".into());
        }
        let mut s = self.lock();
        if let Some(old) = s.shadows.get(&record.service)
            && old.generation > record.generation
        {
            return Err(format!(
                "field `generation`: {} is older than the current {}",
                record.generation, old.generation
            ));
        }
        s.shadows.insert(record.service.clone(), record);
        Ok(())
    }

    /// Removes a service's shadow record; true if there was one.
    pub fn clear_shadow(&self, service: &str) -> bool {
        self.lock().shadows.remove(service).is_some()
    }

    /// Current shadow records.
    pub fn shadows(&self) -> Vec<ShadowRecord> {
        self.lock().shadows.values().cloned().collect()
    }

    /// Waits until `pred` holds for the kept reports (checked on every new report).
    pub async fn wait_for<F: FnMut(&[TelemetryReport]) -> bool>(&self, mut pred: F) {
        let mut rx = self.inner.received.subscribe();
        loop {
            if pred(self.reports().as_slice()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/telemetry", post(post_report).get(get_reports))
            .route("/v1/shadows", get(get_shadows))
            .route(
                "/v1/shadows/{service}",
                put(put_shadow).delete(delete_shadow),
            )
            .with_state(self.clone())
    }
}

async fn post_report(State(hub): State<TelemetryHub>, body: axum::body::Bytes) -> Response {
    let report: TelemetryReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            hub.lock().rejected += 1;
            tracing::warn!(error = %e, "malformed telemetry report");
            return bad_request(format!("malformed telemetry report: {e}"));
        }
    };
    if report.schema != TELEMETRY_SCHEMA {
        hub.lock().rejected += 1;
        return bad_request(format!(
            "field `schema`: expected {TELEMETRY_SCHEMA:?}, got {:?}",
            report.schema
        ));
    }
    tracing::debug!(proxy = %report.proxy, seq = report.seq, "telemetry report");
    Json(hub.ingest(report)).into_response()
}

async fn get_reports(State(hub): State<TelemetryHub>) -> Json<Vec<TelemetryReport>> {
    Json(hub.reports())
}

async fn get_shadows(State(hub): State<TelemetryHub>) -> Json<Vec<ShadowRecord>> {
    Json(hub.shadows())
}

async fn put_shadow(
    State(hub): State<TelemetryHub>,
    Path(service): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let record: ShadowRecord = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("malformed shadow record: {e}")),
    };
    if record.service != service {
        return bad_request(format!(
            "field `service`: {:?} does not match the path's {service:?}",
            record.service
        ));
    }
    match hub.set_shadow(record) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => bad_request(e),
    }
}

async fn delete_shadow(State(hub): State<TelemetryHub>, Path(service): Path<String>) -> StatusCode {
    if hub.clear_shadow(&service) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64) -> ShadowRecord {
        ShadowRecord {
            service: "checkout".into(),
            cluster: "checkout_shadow".into(),
            warm: true,
            max_in_flight: 8,
            generation,
            expires_at_ms: None,
        }
    }

    #[test]
    fn shadow_records_never_go_back_in_generation() {
        let hub = TelemetryHub::default();
        hub.set_shadow(record(2)).unwrap();
        let err = hub.set_shadow(record(1)).unwrap_err();
        assert!(err.contains("field `generation`"), "{err}");
        hub.set_shadow(record(2)).unwrap();
        assert_eq!(hub.shadows(), vec![record(2)]);
        let mut nameless = record(3);
        nameless.cluster.clear();
        assert!(
            hub.set_shadow(nameless)
                .unwrap_err()
                .contains("field `cluster`")
        );
        assert!(hub.clear_shadow("checkout"));
        assert!(!hub.clear_shadow("checkout"));
    }

    #[test]
    fn ingest_answers_with_current_records_and_keeps_reports() {
        let hub = TelemetryHub::default();
        hub.set_shadow(record(1)).unwrap();
        let report = TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: "p".into(),
            seq: 1,
            window_start_ms: 0,
            window_end_ms: 1,
            services: vec![],
        };
        let ack = hub.ingest(report.clone());
        assert_eq!(ack.shadows, vec![record(1)]);
        assert_eq!(hub.reports(), vec![report]);
    }

    #[tokio::test]
    async fn http_api_rejects_bad_input_with_the_reason() {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;
        let hub = TelemetryHub::default();
        let call = |method: &str, uri: &str, body: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let resp = hub
            .router()
            .oneshot(call("POST", "/v1/telemetry", "{oops"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(hub.rejected(), 1);
        let wrong_schema = r#"{"schema":"v0","proxy":"p","seq":1,"window_start_ms":0,"window_end_ms":1,"services":[]}"#;
        let resp = hub
            .router()
            .oneshot(call("POST", "/v1/telemetry", wrong_schema))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("field `schema`"));
        let mismatched = serde_json::to_string(&record(1)).unwrap();
        let resp = hub
            .router()
            .oneshot(call("PUT", "/v1/shadows/other", &mismatched))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let resp = hub
            .router()
            .oneshot(call("PUT", "/v1/shadows/checkout", &mismatched))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(hub.shadows(), vec![record(1)]);
    }
}
