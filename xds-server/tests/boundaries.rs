//! Boundaries of the core rules, each where a one-line change of the rule (a `<` for a
//! `<=`, a dropped term) would otherwise go unnoticed: found by a mutation review.

use shadowmesh_wire::{
    ClusterTelemetry, RedirectState, ServiceTelemetry, TELEMETRY_SCHEMA, TelemetryReport,
};
use shadowmesh_xds::ingest::{IngestGuard, ReportLimits};
use shadowmesh_xds::registry::{ShadowRegistry, ShadowSet};
use shadowmesh_xds::xds::SnapshotCache;
use shadowmesh_xds::xds::builders::EndpointSpec;

const NOW: u64 = 1_800_000_000_000;

fn report(proxy: &str, seq: u64) -> TelemetryReport {
    TelemetryReport {
        schema: TELEMETRY_SCHEMA.into(),
        proxy: proxy.into(),
        seq,
        window_start_ms: NOW - 1_000,
        window_end_ms: NOW,
        services: vec![ServiceTelemetry {
            service: "checkout".into(),
            requests: 100,
            redirected: 10,
            fallbacks: 0,
            state: RedirectState::Normal,
            redirect_share: 0.1,
            primary: ClusterTelemetry::default(),
            shadow: ClusterTelemetry::default(),
        }],
    }
}

fn field(g: &IngestGuard, r: TelemetryReport) -> String {
    g.check(r, NOW).unwrap_err().field
}

#[test]
fn requests_just_over_the_ceiling_are_refused() {
    let g = IngestGuard::new(ReportLimits::default());
    let mut r = report("p", 1);
    r.services[0].requests = ReportLimits::default().max_requests + 1;
    assert_eq!(field(&g, r), "services[0].requests");
}

#[test]
fn fallbacks_over_requests_are_refused() {
    let g = IngestGuard::new(ReportLimits::default());
    let mut r = report("p", 1);
    r.services[0].fallbacks = 101;
    assert!(g.check(r, NOW).is_err());
}

#[test]
fn share_over_one_is_refused() {
    let g = IngestGuard::new(ReportLimits::default());
    let mut r = report("p", 1);
    r.services[0].redirect_share = 1.5;
    assert_eq!(field(&g, r), "services[0].redirect_share");
}

#[test]
fn window_over_max_is_refused() {
    let g = IngestGuard::new(ReportLimits::default());
    let mut r = report("p", 1);
    r.window_start_ms = NOW - ReportLimits::default().max_window_ms - 1;
    assert_eq!(field(&g, r), "window_start_ms");
}

#[test]
fn empty_proxy_is_refused() {
    let g = IngestGuard::new(ReportLimits::default());
    assert_eq!(field(&g, report("", 1)), "proxy");
}

#[test]
fn the_newest_proxy_survives_eviction() {
    let g = IngestGuard::new(ReportLimits {
        max_proxies: 3,
        ..ReportLimits::default()
    });
    for p in 0..4 {
        g.check(report(&format!("p{p}"), 1), NOW).unwrap();
    }
    // p3 was just seen: its replay must still be refused after p4 evicts someone.
    g.check(report("p4", 1), NOW).unwrap();
    assert!(g.check(report("p4", 1), NOW).is_err(), "p4 replay");
    assert!(g.check(report("p3", 1), NOW).is_err(), "p3 forgotten");
}

#[test]
fn a_primary_change_takes_a_new_generation() {
    let r = ShadowRegistry::new(SnapshotCache::default());
    let ep = |s: &str| EndpointSpec::healthy(s.parse().unwrap());
    r.set_primary("checkout", &[ep("10.0.0.1:80")]).unwrap();
    let g1 = r
        .set_shadows("checkout", &ShadowSet::warm(vec![ep("10.0.0.9:80")], 4))
        .unwrap()
        .generation;
    let g2 = r
        .set_primary("checkout", &[ep("10.0.0.2:80")])
        .unwrap()
        .generation;
    assert!(g2 > g1);
    assert_eq!(r.readiness(0)[0].generation, g2);
}

#[test]
fn a_fifteen_character_token_is_refused() {
    use shadowmesh_xds::http::auth::Tokens;
    assert!(Tokens::parse("operator 0123456789abcde").is_err());
    assert!(Tokens::parse("operator 0123456789abcdef").is_ok());
}

#[test]
fn a_proxy_that_keeps_reporting_outlives_a_flood_of_invented_ones() {
    let g = IngestGuard::new(ReportLimits {
        max_proxies: 3,
        ..ReportLimits::default()
    });
    g.check(report("edge-1", 1), NOW).unwrap();
    for i in 0..20 {
        g.check(report(&format!("forged-{i}"), 1), NOW).unwrap();
        // The real proxy reports between the forgeries: it is never the least recent.
        g.check(report("edge-1", 2 + i), NOW).unwrap();
    }
    // Its replay window survived: an old report is still a replay.
    assert!(
        g.check(report("edge-1", 1), NOW).is_err(),
        "edge-1 was forgotten"
    );
}
