//! Property tests of every parser of outside input in the control plane: filter telemetry
//! (through the ingest guard), the admin API's JSON bodies (through the router), the tokens
//! file and the configuration file. None may panic; a refusal names a field and changes
//! nothing; what the guard accepts keeps the bounds it documents.

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use shadowmesh_wire::TelemetryReport;
use shadowmesh_xds::ControlPlane;
use shadowmesh_xds::config::ServerConfig;
use shadowmesh_xds::http::Tokens;
use shadowmesh_xds::ingest::{IngestGuard, ReportLimits};
use tower::ServiceExt;

const NOW: u64 = 1_800_000_000_000;

fn base_report() -> serde_json::Value {
    serde_json::json!({
        "schema": shadowmesh_wire::TELEMETRY_SCHEMA,
        "proxy": "edge-1", "seq": 1,
        "window_start_ms": NOW - 1_000, "window_end_ms": NOW,
        "services": [{
            "service": "checkout", "requests": 100, "redirected": 10, "fallbacks": 0,
            "state": "normal", "redirect_share": 0.1,
            "primary": {"cluster": "checkout_primary", "requests": 90, "in_flight": 1,
                        "load_score": 0.5, "latency_ms": {"count": 90, "mean": 5.0, "p50": 5.0,
                        "p90": 6.0, "p99": 7.0, "max": 8.0}, "orca_utilization": 0.4,
                        "orca_reports": 3, "orca_malformed": 0, "capacity_in_flight": 8.0},
            "shadow": {"cluster": "checkout_shadow", "requests": 10, "in_flight": 0,
                       "load_score": 0.1, "latency_ms": {"count": 10, "mean": 5.0, "p50": 5.0,
                       "p90": 6.0, "p99": 7.0, "max": 8.0}, "orca_utilization": null,
                       "orca_reports": 0, "orca_malformed": 0}
        }]
    })
}

/// The numeric and string positions of the report a forger would change.
const FIELDS: &[&[&str]] = &[
    &["seq"],
    &["window_start_ms"],
    &["window_end_ms"],
    &["proxy"],
    &["services", "0", "service"],
    &["services", "0", "requests"],
    &["services", "0", "redirected"],
    &["services", "0", "fallbacks"],
    &["services", "0", "redirect_share"],
    &["services", "0", "primary", "requests"],
    &["services", "0", "primary", "load_score"],
    &["services", "0", "primary", "in_flight"],
    &["services", "0", "primary", "latency_ms", "p99"],
    &["services", "0", "primary", "orca_utilization"],
    &["services", "0", "primary", "capacity_in_flight"],
    &["services", "0", "shadow", "load_score"],
];

fn set(doc: &mut serde_json::Value, path: &[&str], v: serde_json::Value) {
    let mut cur = doc;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[*p],
        };
    }
    *cur = v;
}

fn any_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        (0u64..NOW * 2).prop_map(serde_json::Value::from),
        "[a-z./_-]{0,140}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn arbitrary_bytes_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(r) = shadowmesh_xds::http::parse_json::<TelemetryReport>(&bytes) {
            let _ = IngestGuard::new(ReportLimits::default()).check(r, NOW);
        }
        let _ = Tokens::parse(&String::from_utf8_lossy(&bytes));
        let _ = ServerConfig::parse(&String::from_utf8_lossy(&bytes), "fuzz.toml");
    }

    /// Changes to up to three fields: either refused naming a field, or accepted with every
    /// documented bound holding.
    #[test]
    fn what_the_guard_accepts_keeps_its_bounds(
        changes in proptest::collection::vec((0..FIELDS.len(), any_value()), 0..3)
    ) {
        let mut doc = base_report();
        for (i, v) in &changes {
            set(&mut doc, FIELDS[*i], v.clone());
        }
        let Ok(report) = serde_json::from_value::<TelemetryReport>(doc) else { return Ok(()) };
        let limits = ReportLimits::default();
        let guard = IngestGuard::new(limits.clone());
        match guard.check(report, NOW) {
            Err(refusal) => prop_assert!(!refusal.field.is_empty() && !refusal.message.is_empty()),
            Ok(checked) => {
                let r = &checked.report;
                prop_assert_eq!(checked.received_ms, NOW, "dated by the server");
                prop_assert!(r.window_start_ms <= r.window_end_ms);
                prop_assert!(r.window_end_ms.abs_diff(NOW) <= limits.max_skew_ms);
                for s in &r.services {
                    prop_assert!(s.requests <= limits.max_requests);
                    prop_assert!(s.redirected <= s.requests && s.fallbacks <= s.requests);
                    prop_assert!((0.0..=1.0).contains(&s.redirect_share));
                    for c in [&s.primary, &s.shadow] {
                        prop_assert!(c.load_score.is_finite() && c.load_score >= 0.0);
                        prop_assert!(c.latency_ms.p99.is_finite() && c.latency_ms.p99 >= 0.0);
                        prop_assert!(c.orca_utilization.is_none_or(|u| (0.0..=100.0).contains(&u)));
                        prop_assert!(c.capacity_in_flight.is_none_or(|k| (1.0..=f64::from(u32::MAX)).contains(&k)));
                    }
                }
            }
        }
    }
}

/// One request through the router: (status, body).
async fn call(router: &axum::Router, method: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Services as listed, without the readiness lease's expiry (the clock's, not state).
async fn services(router: &axum::Router) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&call(router, "GET", "/v1/services", Vec::new()).await.1).unwrap();
    for s in v.as_object_mut().unwrap().values_mut() {
        s["readiness"]
            .as_object_mut()
            .unwrap()
            .remove("expires_at_ms");
    }
    v
}

const WRITES: &[(&str, &str)] = &[
    ("PUT", "/v1/services/checkout"),
    ("PUT", "/v1/services/checkout/shadows"),
    ("PUT", "/v1/capacity/checkout"),
    ("POST", "/v1/events"),
    ("POST", "/v1/forecast/checkout/history"),
    ("POST", "/v1/telemetry"),
];

fn admin_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        // Near-valid documents: the right shapes with arbitrary values.
        (any_value(), any_value(), any_value()).prop_map(|(a, b, c)| {
            serde_json::to_vec(&serde_json::json!({
                "primary": [{"address": a, "weight": b}],
                "shadows": {"endpoints": [{"address": "127.0.0.1:9"}], "warm": c, "max_in_flight": b},
                "capacity": a, "kind": "sale", "start": a, "duration_secs": b, "uplift": c,
                "points": [[a, b]],
            }))
            .unwrap()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any body on any write route: answered (never a 5xx), in the one error shape when
    /// refused, and a refused write changes nothing.
    #[test]
    fn admin_writes_answer_in_one_shape_and_refusals_change_nothing(
        route in 0..WRITES.len(), body in admin_body()
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let plane = ControlPlane::default();
            let router = plane.router();
            let seed = br#"{"primary":[{"address":"10.0.0.1:80"}]}"#.to_vec();
            assert_eq!(call(&router, "PUT", "/v1/services/checkout", seed).await.0, 200);
            let before = services(&router).await;
            let events_before = call(&router, "GET", "/v1/events", Vec::new()).await.1;
            let (method, path) = WRITES[route];
            let (status, answer) = call(&router, method, path, body).await;
            prop_assert!(status < 500, "{method} {path}: {status} {answer}");
            if status >= 400 {
                let v: serde_json::Value = serde_json::from_str(&answer)
                    .map_err(|e| TestCaseError::fail(format!("{answer}: {e}")))?;
                prop_assert!(v.get("field").is_some() && v.get("message").is_some(), "{answer}");
                prop_assert_eq!(services(&router).await, before);
                prop_assert_eq!(call(&router, "GET", "/v1/events", Vec::new()).await.1, events_before);
            }
            Ok(())
        })?;
    }
}
