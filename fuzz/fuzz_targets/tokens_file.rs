//! A tokens file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = shadowmesh_xds::http::Tokens::parse(s);
    }
});
