//! The control plane's TOML configuration.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = shadowmesh_xds::config::ServerConfig::parse(s, "fuzz.toml");
    }
});
