//! `/v1/telemetry`: reports from the ATRE filters in, readiness records out.

use super::services::now_ms;
use super::{Api, ApiError, Identity};
use crate::ingest::{ProxyRefusals, RefusalKind};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use shadowmesh_wire::{TelemetryAck, TelemetryReport};
use std::collections::BTreeMap;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/telemetry", post(post_report).get(get_reports))
        .route("/v1/telemetry/refusals", get(refusals))
}

/// Accepts a filter's report that passes the [`crate::ingest`] checks and answers with
/// the readiness record of each service it reports. Refused: 400 naming the field (409
/// for a replay, 403 for a proxy or service outside the token's scope), counted.
async fn post_report(
    State(api): State<Api>,
    axum::Extension(identity): axum::Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Json<TelemetryAck>, ApiError> {
    let size = body.len();
    let report = super::parse_json::<TelemetryReport>(&body);
    // Before the guard sees it: a report the token may not make must not move the replay
    // window (or any count) of the proxy it names.
    if let Ok(r) = &report
        && let Err(e) = authorized(&identity, r)
    {
        api.hub.refuse();
        api.http_metrics.report_forbidden();
        tracing::debug!(field = %e.field, error = %e.message, "telemetry report forbidden");
        return Err(e);
    }
    let checked = report.map_err(|e| (RefusalKind::Invalid, e)).and_then(|r| {
        api.guard.check(r, now_ms()).map_err(|r| {
            let status = if r.kind == RefusalKind::Replayed {
                axum::http::StatusCode::CONFLICT
            } else {
                axum::http::StatusCode::BAD_REQUEST
            };
            (r.kind, ApiError::new(status, r.field, r.message))
        })
    });
    let checked = match checked {
        Ok(c) => c,
        Err((kind, e)) => {
            api.hub.refuse();
            api.http_metrics.report_refused(kind);
            tracing::debug!(field = %e.field, error = %e.message, "telemetry report refused");
            return Err(e);
        }
    };
    api.http_metrics.report_accepted();
    let (report, received_ms) = (checked.report, checked.received_ms);
    tracing::debug!(proxy = %report.proxy, seq = report.seq, "telemetry report");
    // The answer carries the services this filter reports (its configured ones), not the
    // whole registry: its size follows the filter's configuration, not the mesh's.
    let shadows = report
        .services
        .iter()
        .filter_map(|s| api.registry.service_with_readiness(&s.service, received_ms))
        .map(|(_, record)| record)
        .collect();
    api.hub.publish(report, received_ms, size);
    Ok(Json(TelemetryAck { shadows }))
}

/// A token speaks for the proxy it names and about services it fronts or serves. (A name
/// that is no valid name at all is left to the guard: malformed is 400 whoever sends it.)
fn authorized(identity: &Identity, r: &TelemetryReport) -> Result<(), ApiError> {
    if crate::ingest::valid_proxy_name(&r.proxy) {
        identity.speaks_for("proxy", &r.proxy)?;
    }
    for (i, s) in r.services.iter().enumerate() {
        if crate::registry::validate_service(&s.service).is_ok() {
            identity.fronts_or_serves(&format!("services[{i}].service"), &s.service)?;
        }
    }
    Ok(())
}

/// `?last=N`: how many of the newest reports (default 100, at most 1,000).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Last {
    #[serde(default = "default_last")]
    last: usize,
}

fn default_last() -> usize {
    100
}

async fn get_reports(
    State(api): State<Api>,
    query: Result<axum::extract::Query<Last>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TelemetryReport>>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid("last", e.body_text()))?;
    Ok(Json(api.hub.last_reports(q.last.min(1_000))))
}

/// Refusals by proxy (the proxies the guard remembers, those with any refusal).
async fn refusals(State(api): State<Api>) -> Json<BTreeMap<String, ProxyRefusals>> {
    Json(api.guard.refusals())
}

#[cfg(test)]
mod tests {
    use crate::ControlPlane;
    use crate::http::test_util::call;
    use crate::registry::ShadowSet;
    use crate::xds::builders::EndpointSpec;
    use axum::http::StatusCode;
    use shadowmesh_wire::{
        ClusterTelemetry, RedirectState, ServiceTelemetry, TELEMETRY_SCHEMA, TelemetryAck,
        TelemetryReport,
    };

    #[tokio::test]
    async fn reports_are_answered_with_readiness_and_malformed_ones_refused() {
        let plane = ControlPlane::default();
        let ep = |a: &str| EndpointSpec::healthy(a.parse().unwrap());
        plane
            .registry
            .set_primary("checkout", &[ep("10.0.0.1:80")])
            .unwrap();
        plane
            .registry
            .set_shadows("checkout", &ShadowSet::warm(vec![ep("10.0.0.9:80")], 8))
            .unwrap();
        let (s, _) = call(plane.router(), "POST", "/v1/telemetry", "{oops").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let wrong_schema = r#"{"schema":"v0","proxy":"p","seq":1,"window_start_ms":0,"window_end_ms":1,"services":[]}"#;
        let (s, body) = call(plane.router(), "POST", "/v1/telemetry", wrong_schema).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""field":"schema""#), "{body}");
        assert_eq!(plane.hub.refused(), 2);
        assert!(plane.hub.reports().is_empty());
        let now = super::super::services::now_ms();
        let good = serde_json::to_string(&TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: "p".into(),
            seq: 1,
            window_start_ms: now - 1_000,
            window_end_ms: now,
            services: ["checkout", "unknown"]
                .into_iter()
                .map(|name| ServiceTelemetry {
                    service: name.into(),
                    requests: 0,
                    redirected: 0,
                    fallbacks: 0,
                    state: RedirectState::Normal,
                    redirect_share: 0.0,
                    primary: ClusterTelemetry::default(),
                    shadow: ClusterTelemetry::default(),
                })
                .collect(),
        })
        .unwrap();
        plane
            .registry
            .set_primary("other", &[ep("10.0.0.2:80")])
            .unwrap();
        let (s, body) = call(plane.router(), "POST", "/v1/telemetry", &good).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let ack: TelemetryAck = serde_json::from_str(&body).unwrap();
        assert_eq!(
            ack.shadows.len(),
            1,
            "only the reported services that exist"
        );
        assert_eq!(ack.shadows[0].service, "checkout");
        assert!(ack.shadows[0].warm);
        // The same report again is a replay: refused, counted, not published.
        let (s, body) = call(plane.router(), "POST", "/v1/telemetry", &good).await;
        assert_eq!(s, StatusCode::CONFLICT, "{body}");
        assert!(body.contains(r#""field":"seq""#), "{body}");
        assert_eq!(ack.shadows[0].max_in_flight, 8);
        assert_eq!(plane.hub.reports().len(), 1);
    }
}
