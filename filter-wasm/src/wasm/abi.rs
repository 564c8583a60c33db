//! Non-panicking bindings to the Proxy-Wasm 0.2.1 hostcalls the filter uses.
//!
//! `proxy_wasm::hostcalls` returns `Result`, yet `panic!`s on any status it did not
//! expect (for instance `InternalFailure` from shared data). A panic in the data path is a
//! VM fault, so the filter binds the same imports itself and turns every status into a
//! value. Memory the host hands back was allocated through the SDK's exported
//! `proxy_on_memory_allocate`, i.e. by this module's global allocator, so it is adopted
//! as a `Vec` exactly like the SDK does.

use std::ptr::null_mut;

/// A Proxy-Wasm status code other than `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    /// A CAS write lost the race.
    pub const CAS_MISMATCH: Status = Status(8);
}

/// Map types.
pub mod map {
    /// Request headers of the current stream.
    pub const REQUEST_HEADERS: u32 = 0;
    /// Response headers of the current stream.
    pub const RESPONSE_HEADERS: u32 = 2;
    /// Response headers of an HTTP call.
    pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
}

/// Buffer types.
pub mod buffer {
    /// Body of an HTTP call response.
    pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;
    /// The plugin configuration.
    pub const PLUGIN_CONFIGURATION: u32 = 7;
}

/// Metric types.
pub mod metric {
    /// Counter.
    pub const COUNTER: u32 = 0;
    /// Gauge.
    pub const GAUGE: u32 = 1;
    /// Histogram.
    pub const HISTOGRAM: u32 = 2;
}

/// Log levels.
pub mod level {
    /// Debug.
    pub const DEBUG: u32 = 1;
    /// Info.
    pub const INFO: u32 = 2;
    /// Warning.
    pub const WARN: u32 = 3;
    /// Error.
    pub const ERROR: u32 = 4;
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_metric(id: u32, value: *mut u64) -> u32;
}

fn check(code: u32) -> Result<(), Status> {
    if code == 0 { Ok(()) } else { Err(Status(code)) }
}

/// Adopts a host-returned buffer (allocated by our own allocator via the SDK's export).
///
/// # Safety
/// `data` must be null or point to `size` bytes allocated by this module's allocator.
unsafe fn adopt(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        // SAFETY: per the ABI, the host allocated exactly `size` bytes with
        // proxy_on_memory_allocate, which hands out Vec<u8> buffers of that capacity.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

/// Logs a message (errors ignored: there is nowhere else to report them).
pub fn log(level: u32, message: &str) {
    // SAFETY: pointer and length of a live &str.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// Host wall-clock time in nanoseconds since the Unix epoch (0 on error).
pub fn now_ns() -> u64 {
    let mut t = 0u64;
    // SAFETY: valid out-pointer.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        0 => t,
        _ => 0,
    }
}

/// Sets the tick period.
pub fn set_tick_period_ms(ms: u32) -> Result<(), Status> {
    // SAFETY: plain value.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Reads a buffer; `None` when empty or absent.
pub fn get_buffer(kind: u32, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: valid out-pointers; the returned buffer is adopted below.
    match unsafe { proxy_get_buffer_bytes(kind, start, max, &mut data, &mut size) } {
        0 => Ok(unsafe { adopt(data, size) }),
        1 => Ok(None),
        code => Err(Status(code)),
    }
}

/// One header value (raw bytes); `None` when absent.
pub fn get_header(map: u32, key: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: key is a live &str; valid out-pointers; buffer adopted below.
    match unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut data, &mut size) }
    {
        0 => Ok(unsafe { adopt(data, size) }),
        1 => Ok(None),
        code => Err(Status(code)),
    }
}

/// One header value as UTF-8 (non-UTF-8 values read as absent).
pub fn get_header_str(map: u32, key: &str) -> Option<String> {
    get_header(map, key)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
}

/// Sets a header, replacing any existing values.
pub fn replace_header(map: u32, key: &str, value: &str) -> Result<(), Status> {
    // SAFETY: live &str pointers.
    check(unsafe {
        proxy_replace_header_map_value(map, key.as_ptr(), key.len(), value.as_ptr(), value.len())
    })
}

/// Removes a header.
pub fn remove_header(map: u32, key: &str) -> Result<(), Status> {
    // SAFETY: live &str pointer.
    check(unsafe { proxy_remove_header_map_value(map, key.as_ptr(), key.len()) })
}

/// Reads a property such as `["node", "id"]`; `None` when absent.
pub fn get_property(path: &[&str]) -> Option<Vec<u8>> {
    // Segments separated by NUL, with none after the last: Envoy finds no property at
    // `node\0id\0` (an empty last segment).
    let encoded = path.join("\0").into_bytes();
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: valid pointers; buffer adopted below.
    match unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) } {
        0 => unsafe { adopt(data, size) },
        _ => None,
    }
}

/// Shared data value and CAS token.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0u32);
    // SAFETY: valid pointers; buffer adopted below.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) }
    {
        0 => Ok((unsafe { adopt(data, size) }, (cas != 0).then_some(cas))),
        1 => Ok((None, None)),
        code => Err(Status(code)),
    }
}

/// Writes shared data; with `Some(cas)`, only if nobody wrote it since that read.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: live slices.
    check(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Defines (or looks up) a metric.
pub fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: live &str and out-pointer.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds to a counter or gauge.
pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_increment_metric(id, offset) })
}

/// Sets a gauge or records a histogram sample.
pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_record_metric(id, value) })
}

/// Reads a counter or gauge.
pub fn get_metric(id: u32) -> Result<u64, Status> {
    let mut value = 0;
    // SAFETY: plain value and out-pointer.
    check(unsafe { proxy_get_metric(id, &mut value) })?;
    Ok(value)
}

/// Resumes the current stream's request, paused by returning `Action::Pause`.
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: plain value (0 = the HTTP request stream).
    check(unsafe { proxy_continue_stream(0) })
}

/// Resumes the current stream's response, paused by returning `Action::Pause`.
pub fn resume_response() -> Result<(), Status> {
    // SAFETY: plain value (1 = the HTTP response stream).
    check(unsafe { proxy_continue_stream(1) })
}
