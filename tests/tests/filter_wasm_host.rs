//! The compiled ATRE filter (`shadowmesh_filter.wasm`) driven deterministically by the
//! in-process wasmtime host: two VMs sharing data model two Envoy workers, and the clock
//! moves only when the test moves it.

use shadowmesh_e2e::wasm_host::{HostShared, WasmHost, WasmVm};
use shadowmesh_testkit::envoy::wasm_module;
use shadowmesh_wire::{RedirectState, ShadowRecord, TelemetryAck, TelemetryReport};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

const ROUTE: &str = "x-shadowmesh-cluster";
const SVC: &str = "shadowmesh.service.checkout.";

fn host() -> &'static WasmHost {
    static HOST: OnceLock<WasmHost> = OnceLock::new();
    HOST.get_or_init(|| WasmHost::load(&wasm_module("shadowmesh_filter").unwrap()).unwrap())
}

fn config(ready: bool) -> String {
    serde_json::json!({
        "tick_ms": 100,
        "services": [{
            "name": "checkout",
            "hosts": ["checkout.local"],
            "primary": {"cluster": "checkout_primary", "max_in_flight": 16},
            "shadow": {"cluster": "checkout_shadow", "max_in_flight": 16, "ready": ready},
            "session": {"cookie": "sid"},
            "gain": 1.0
        }],
        "telemetry": {"cluster": "shadowmesh_control", "interval_ms": 500}
    })
    .to_string()
}

fn workers(n: usize, ready: bool) -> (Arc<HostShared>, Vec<WasmVm>) {
    let shared = HostShared::new(1_700_000_000_000);
    let vms = (0..n)
        .map(|_| {
            let mut vm = host().vm(&shared).unwrap();
            assert!(vm.configure(&config(ready)).unwrap());
            vm
        })
        .collect();
    (shared, vms)
}

/// Sends a request; returns its context and where it goes: the routing header the filter
/// left, or `checkout_primary` when it left none (the route's default is the primary).
fn get(vm: &mut WasmVm, extra: &[(&str, &str)]) -> (i32, Option<String>) {
    let mut headers = vec![(":authority", "checkout.local"), (":path", "/")];
    headers.extend_from_slice(extra);
    let ctx = vm.request(&headers).unwrap();
    (
        ctx,
        Some(
            vm.request_header(ctx, ROUTE)
                .unwrap_or_else(|| "checkout_primary".into()),
        ),
    )
}

fn in_flight(shared: &HostShared, side: &str) -> u64 {
    shared
        .shared_data(&format!("shadowmesh.v1.inflight.checkout.{side}"))
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

fn tick_all(shared: &HostShared, vms: &mut [WasmVm]) {
    shared.advance_ms(100);
    for vm in vms.iter_mut() {
        vm.tick().unwrap();
    }
}

#[test]
fn invalid_configuration_is_refused_with_the_field_in_the_log() {
    let shared = HostShared::new(0);
    let mut vm = host().vm(&shared).unwrap();
    let bad = config(true)
        .replace("\"max_in_flight\":16,\"latency", "x")
        .replace("\"gain\":1.0", "\"gain\":7");
    assert!(!vm.configure(&bad).unwrap());
    let errors: Vec<_> = vm
        .logs()
        .iter()
        .filter(|(level, _)| *level == 4)
        .map(|(_, m)| m.as_str())
        .collect();
    assert!(
        errors.iter().any(|m| m.contains("`services[0].gain`")),
        "{errors:?}"
    );
}

#[test]
fn requests_go_to_the_primary_and_release_their_in_flight_slot() {
    let (shared, mut vms) = workers(1, true);
    let vm = &mut vms[0];
    assert_eq!(vm.tick_period_ms(), 100);
    let ctx = vm.request(&[(":authority", "checkout.local")]).unwrap();
    assert_eq!(
        vm.request_header(ctx, ROUTE),
        None,
        "primary: no header, the route's default"
    );
    tick_all(&shared, &mut vms);
    assert_eq!(in_flight(&shared, "primary"), 1, "published at the tick");
    let vm = &mut vms[0];
    vm.finish(ctx).unwrap();
    tick_all(&shared, &mut vms);
    assert_eq!(in_flight(&shared, "primary"), 0);
    let vm = &mut vms[0];
    // Another authority: not a managed service, no routing header is added.
    let ctx = vm.request(&[(":authority", "other.local")]).unwrap();
    assert_eq!(vm.request_header(ctx, ROUTE), None);
}

#[test]
fn a_client_supplied_routing_header_never_picks_the_cluster() {
    let (shared, mut vms) = workers(1, true);
    let vm = &mut vms[0];
    let ctx = vm
        .request(&[
            (":authority", "checkout.local"),
            (ROUTE, "shadowmesh_control"),
        ])
        .unwrap();
    assert_eq!(
        vm.request_header(ctx, ROUTE),
        None,
        "removed: the request takes the default route"
    );
    let ctx = vm
        .request(&[(":authority", "other.local"), (ROUTE, "checkout_shadow")])
        .unwrap();
    assert_eq!(
        vm.request_header(ctx, ROUTE),
        None,
        "removed for unmanaged authorities"
    );
    tick_all(&shared, &mut vms);
    assert_eq!(
        shared.metric("shadowmesh.spoofed_route_headers_total"),
        Some(2)
    );
}

/// Load seen by both workers adds up; one controller computes the plan; both redirect the
/// excess share, not everything.
#[test]
fn two_workers_redirect_the_excess_share_of_their_combined_load() {
    let (shared, mut vms) = workers(2, true);
    // 24 requests in flight (12 per worker) against a capacity of 16: load 1.5.
    let mut open = Vec::new();
    for i in 0..24 {
        let vm = &mut vms[i % 2];
        let (ctx, cluster) = get(vm, &[]);
        assert_eq!(cluster.as_deref(), Some("checkout_primary"));
        open.push((i % 2, ctx));
    }
    // First tick: the first worker takes the lease before the second has published its
    // deltas; second tick: the controller sees all 24 and writes the plan, both read it.
    tick_all(&shared, &mut vms);
    assert_eq!(in_flight(&shared, "primary"), 24);
    tick_all(&shared, &mut vms);
    let plan: serde_json::Value =
        serde_json::from_slice(&shared.shared_data("shadowmesh.v1.plan.checkout").unwrap())
            .unwrap();
    assert_eq!(plan["state"], "redirecting");
    // Share = 1 - 0.8 / 1.5 = 0.467, applied with gain 1.
    let share = plan["share"].as_f64().unwrap();
    assert!((share - 0.4667).abs() < 0.01, "share {share}");
    let mut shadow = 0;
    for i in 0..200 {
        let (ctx, cluster) = get(&mut vms[i % 2], &[]);
        if cluster.as_deref() == Some("checkout_shadow") {
            shadow += 1;
        }
        vms[i % 2].finish(ctx).unwrap();
    }
    assert!((90..=96).contains(&shadow), "{shadow} of 200 redirected");
    for (w, ctx) in open {
        vms[w].finish(ctx).unwrap();
    }
    tick_all(&shared, &mut vms);
    assert_eq!(in_flight(&shared, "primary"), 0);
    assert_eq!(in_flight(&shared, "shadow"), 0);
}

/// Exactly one worker reports per interval; the report counts every request of every
/// worker; the answer's readiness record reaches all workers.
#[test]
fn one_report_per_interval_and_readiness_flows_back() {
    let (shared, mut vms) = workers(2, true);
    for i in 0..30 {
        let (ctx, _) = get(&mut vms[i % 2], &[]);
        vms[i % 2].respond(ctx, &[(":status", "200")]).unwrap();
        shared.advance_ms(1);
        vms[i % 2].finish(ctx).unwrap();
    }
    for _ in 0..5 {
        tick_all(&shared, &mut vms);
    }
    let calls: Vec<_> = vms.iter_mut().map(|vm| vm.take_http_calls()).collect();
    let reporters: Vec<usize> = (0..2).filter(|i| !calls[*i].is_empty()).collect();
    assert_eq!(
        reporters.len(),
        1,
        "exactly one reporter: {:?}",
        calls.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let leader = reporters[0];
    let call = &calls[leader][0];
    assert_eq!(call.upstream, "shadowmesh_control");
    assert!(
        call.headers
            .contains(&(":path".into(), "/v1/telemetry".into()))
    );
    assert!(call.headers.contains(&(":method".into(), "POST".into())));
    let report: TelemetryReport = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(report.services[0].requests, 30);
    assert_eq!(report.services[0].primary.latency_ms.count, 30);
    assert_eq!(report.services[0].state, RedirectState::Normal);

    // The control plane answers: the shadow is not warm. Push the primary over its
    // threshold; every request the plan would redirect falls back to the primary.
    let ack = TelemetryAck {
        shadows: vec![ShadowRecord {
            service: "checkout".into(),
            cluster: "checkout_shadow".into(),
            warm: false,
            max_in_flight: 16,
            generation: 3,
            expires_at_ms: None,
        }],
    };
    vms[leader]
        .http_call_response(call.token, 200, &serde_json::to_vec(&ack).unwrap())
        .unwrap();
    let _open: Vec<i32> = (0..24).map(|_| get(&mut vms[0], &[]).0).collect();
    tick_all(&shared, &mut vms);
    tick_all(&shared, &mut vms);
    for vm in vms.iter_mut() {
        for _ in 0..20 {
            let (_, cluster) = get(vm, &[]);
            assert_eq!(cluster.as_deref(), Some("checkout_primary"));
        }
    }
    tick_all(&shared, &mut vms);
    let fallbacks = shared.metric(&format!("{SVC}fallbacks_total")).unwrap();
    // No entry into redirecting without a ready shadow, hence no fallbacks either: the
    // plan never wanted the shadow.
    assert_eq!(fallbacks, 0);
    let plan: serde_json::Value =
        serde_json::from_slice(&shared.shared_data("shadowmesh.v1.plan.checkout").unwrap())
            .unwrap();
    assert_eq!(plan["state"], "normal");
}

/// A shadow withdrawn *during* a surge: redirect decisions turn into counted fallbacks.
#[test]
fn withdrawn_shadow_turns_redirects_into_fallbacks() {
    let (shared, mut vms) = workers(1, true);
    let _open: Vec<i32> = (0..24).map(|_| get(&mut vms[0], &[]).0).collect();
    tick_all(&shared, &mut vms);
    tick_all(&shared, &mut vms);
    let redirected = (0..10)
        .filter(|_| get(&mut vms[0], &[]).1.as_deref() == Some("checkout_shadow"))
        .count();
    assert!(redirected > 0);
    let record = ShadowRecord {
        service: "checkout".into(),
        cluster: "checkout_shadow".into(),
        warm: false,
        max_in_flight: 16,
        generation: 9,
        expires_at_ms: None,
    };
    shared.set_shared_data(
        "shadowmesh.v1.shadow.checkout",
        &serde_json::to_vec(&record).unwrap(),
    );
    tick_all(&shared, &mut vms);
    let sent: Vec<_> = (0..20).map(|_| get(&mut vms[0], &[]).1).collect();
    assert!(
        sent.iter()
            .all(|c| c.as_deref() == Some("checkout_primary")),
        "{sent:?}"
    );
    tick_all(&shared, &mut vms);
    assert!(shared.metric(&format!("{SVC}fallbacks_total")).unwrap() > 0);
}

#[test]
fn malformed_orca_headers_are_counted_and_ignored() {
    let (shared, mut vms) = workers(1, true);
    let (ctx, _) = get(&mut vms[0], &[]);
    vms[0]
        .respond(
            ctx,
            &[
                (":status", "200"),
                ("endpoint-load-metrics", "TEXT cpu_utilization=oops"),
            ],
        )
        .unwrap();
    vms[0].finish(ctx).unwrap();
    let (ctx, _) = get(&mut vms[0], &[]);
    vms[0]
        .respond(
            ctx,
            &[
                (":status", "200"),
                ("endpoint-load-metrics", "JSON {\"cpu_utilization\":0.95}"),
            ],
        )
        .unwrap();
    vms[0].finish(ctx).unwrap();
    tick_all(&shared, &mut vms);
    assert_eq!(
        shared.metric(&format!("{SVC}orca_malformed_total")),
        Some(1)
    );
    // The well-formed report drives the load score on its own (two idle requests would not).
    assert_eq!(
        shared.metric(&format!("{SVC}primary_load_permille")),
        Some(950)
    );
}

/// Every shared-data hostcall fails: the filter must neither trap nor stop routing, and
/// it counts the failures.
#[test]
fn hostcall_failures_fail_open_to_the_primary() {
    let (shared, mut vms) = workers(1, true);
    shared.fail_shared_data.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let (ctx, cluster) = get(&mut vms[0], &[("cookie", "sid=abc")]);
        assert_eq!(cluster.as_deref(), Some("checkout_primary"));
        vms[0].finish(ctx).unwrap();
    }
    tick_all(&shared, &mut vms);
    shared.fail_shared_data.store(false, Ordering::SeqCst);
    tick_all(&shared, &mut vms);
    // The first tick's window flush failed and was counted (the in-flight delta netted to
    // zero: all five requests had finished, so there was nothing to publish)…
    assert_eq!(
        shared.metric("shadowmesh.shared_data_errors_total"),
        Some(1)
    );
    // …and kept: the next tick published them, nothing was lost.
    assert_eq!(shared.metric(&format!("{SVC}requests_total")), Some(5));
    // Nothing was left owing: no decrement was applied to a counter never incremented.
    assert_eq!(in_flight(&shared, "primary"), 0);
}
