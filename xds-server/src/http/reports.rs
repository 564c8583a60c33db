//! `/v1/telemetry`: reports from the ATRE filters in, readiness records out.

use super::services::now_ms;
use super::{Api, ApiError, JsonBody};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use shadowmesh_wire::{TELEMETRY_SCHEMA, TelemetryAck, TelemetryReport};

pub(super) fn routes() -> Router<Api> {
    Router::new().route("/v1/telemetry", post(post_report).get(get_reports))
}

/// Accepts a filter's report and answers with the readiness record of each service it
/// reports.
async fn post_report(
    State(api): State<Api>,
    report: Result<JsonBody<TelemetryReport>, ApiError>,
) -> Result<Json<TelemetryAck>, ApiError> {
    let report = match report {
        Ok(JsonBody(r)) if r.schema == TELEMETRY_SCHEMA => r,
        Ok(JsonBody(r)) => {
            api.hub.refuse();
            return Err(ApiError::invalid(
                "schema",
                format!("expected {TELEMETRY_SCHEMA:?}, got {:?}", r.schema),
            ));
        }
        Err(e) => {
            api.hub.refuse();
            tracing::warn!(field = %e.field, error = %e.message, "malformed telemetry report");
            return Err(e);
        }
    };
    tracing::debug!(proxy = %report.proxy, seq = report.seq, "telemetry report");
    // The answer carries the services this filter reports (its configured ones), not the
    // whole registry: its size follows the filter's configuration, not the mesh's.
    let now = now_ms();
    let shadows = report
        .services
        .iter()
        .filter_map(|s| api.registry.service_with_readiness(&s.service, now))
        .map(|(_, record)| record)
        .collect();
    api.hub.publish(report);
    Ok(Json(TelemetryAck { shadows }))
}

async fn get_reports(State(api): State<Api>) -> Json<Vec<TelemetryReport>> {
    Json(api.hub.reports())
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
        let good = serde_json::to_string(&TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: "p".into(),
            seq: 1,
            window_start_ms: 0,
            window_end_ms: 1,
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
        assert_eq!(ack.shadows[0].max_in_flight, 8);
        assert_eq!(plane.hub.reports().len(), 1);
    }
}
