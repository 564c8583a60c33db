//! An `endpoint-load-metrics` header (from an upstream).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = shadowmesh_filter::orca::OrcaReport::parse(s) {
            let u = r.utilization();
            assert!(u.is_finite() && u >= 0.0);
        }
    }
});
