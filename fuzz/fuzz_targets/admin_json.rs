//! Admin API bodies: services, shadow sets, events.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = shadowmesh_xds::http::parse_json::<shadowmesh_xds::registry::ShadowSet>(data);
    let _ = shadowmesh_xds::http::parse_json::<shadowmesh_predictor::events::ScheduledEvent>(data);
    if let Ok(set) = shadowmesh_xds::http::parse_json::<shadowmesh_xds::registry::ShadowSet>(data) {
        let _ = shadowmesh_xds::registry::validate_endpoints("endpoints", &set.endpoints);
    }
});
