//! A filter's telemetry report, through the control plane's guard.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(r) = shadowmesh_xds::http::parse_json::<shadowmesh_wire::TelemetryReport>(data) {
        let guard = shadowmesh_xds::ingest::IngestGuard::new(Default::default());
        let _ = guard.check(r, 1_800_000_000_000);
    }
});
