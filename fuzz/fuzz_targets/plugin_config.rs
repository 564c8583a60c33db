//! The ATRE plugin configuration (from the operator, via Envoy).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = shadowmesh_filter::config::PluginConfig::parse(data);
});
