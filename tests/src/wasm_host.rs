//! An in-process Proxy-Wasm (ABI 0.2.1) host on wasmtime, for fast deterministic tests of
//! the *compiled* filter.
//!
//! It implements the subset of the ABI the Shadowmesh filters use, with Envoy's semantics
//! where they matter to us: shared data is one key-value store with CAS tokens shared by
//! several VMs (Envoy's workers), metrics are shared by name, the clock only moves when the
//! test moves it, and HTTP calls are recorded for the test to answer. Every other import
//! returns `InternalFailure`, so an unexpected hostcall shows up as a handled error, not as
//! a silently successful no-op.
//!
//! The truth is still real Envoy (see `tests/tests/atre_envoy.rs`); this host exists to
//! drive corner cases Envoy cannot be made to produce on demand (CAS races, hostcall
//! failures, exact tick timing).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::{Caller, Engine, Extern, Instance, Linker, Memory, Module, Store, TypedFunc, Val};
use wasmtime::{Result, bail, format_err as anyhow};

/// Proxy-Wasm status codes.
mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
}

/// A metric as the host keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram (the host keeps the sample count and the last sample).
    Histogram,
}

/// State every VM of one "Envoy" shares: shared data, metrics, the clock.
#[derive(Default)]
pub struct HostShared {
    data: Mutex<HashMap<String, (Vec<u8>, u32)>>,
    metrics: Mutex<HashMap<String, (MetricKind, i64)>>,
    now_ns: AtomicU64,
    /// When set, `proxy_get_shared_data` and `proxy_set_shared_data` fail with
    /// `InternalFailure` (fault injection).
    pub fail_shared_data: AtomicBool,
}

impl HostShared {
    /// A new host at wall-clock time `start_ms`.
    pub fn new(start_ms: u64) -> Arc<HostShared> {
        let h = HostShared::default();
        h.now_ns.store(start_ms * 1_000_000, Ordering::SeqCst);
        Arc::new(h)
    }

    /// Advances the clock.
    pub fn advance_ms(&self, ms: u64) {
        self.now_ns.fetch_add(ms * 1_000_000, Ordering::SeqCst);
    }

    /// Current time in ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst) / 1_000_000
    }

    /// A metric's value by its full name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics.lock().unwrap().get(name).map(|m| m.1)
    }

    /// A shared-data value.
    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.data.lock().unwrap().get(key).map(|v| v.0.clone())
    }

    /// Writes shared data as another worker (or the control plane) would.
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let mut d = self.data.lock().unwrap();
        let cas = d.get(key).map_or(1, |v| v.1 + 1);
        d.insert(key.to_string(), (value.to_vec(), cas));
    }
}

/// An outgoing `proxy_http_call` the filter made.
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// Token to answer with.
    pub token: u32,
    /// Target cluster.
    pub upstream: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Timeout in ms.
    pub timeout_ms: u32,
}

#[derive(Default)]
struct Stream {
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
}

/// Per-VM host state.
struct VmState {
    shared: Arc<HostShared>,
    memory: Option<Memory>,
    allocate: Option<TypedFunc<i32, i32>>,
    plugin_config: Vec<u8>,
    tick_period_ms: u32,
    logs: Vec<(i32, String)>,
    metric_ids: Vec<String>,
    properties: HashMap<String, Vec<u8>>,
    streams: HashMap<i32, Stream>,
    current: i32,
    http_calls: Vec<HttpCall>,
    next_token: u32,
    call_response: (Vec<(String, String)>, Vec<u8>),
}

/// One filter VM (one Envoy worker).
pub struct WasmVm {
    store: Store<VmState>,
    instance: Instance,
    root_id: i32,
    next_ctx: i32,
}

const ROOT_ID: i32 = 1;

fn memory(caller: &mut Caller<'_, VmState>) -> Result<Memory> {
    caller
        .data()
        .memory
        .ok_or_else(|| anyhow!("no memory export"))
}

fn read(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    let mem = memory(caller)?;
    let mut buf = vec![0; len as usize];
    mem.read(&caller, ptr as u32 as usize, &mut buf)?;
    Ok(buf)
}

fn read_str(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<String> {
    Ok(String::from_utf8(read(caller, ptr, len)?)?)
}

fn write_u32(caller: &mut Caller<'_, VmState>, ptr: i32, v: u32) -> Result<()> {
    let mem = memory(caller)?;
    mem.write(caller, ptr as u32 as usize, &v.to_le_bytes())?;
    Ok(())
}

/// Copies `bytes` into guest memory allocated by the guest, and stores pointer and size.
fn return_bytes(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32> {
    let alloc = caller
        .data()
        .allocate
        .clone()
        .ok_or_else(|| anyhow!("no allocator"))?;
    let ptr = alloc.call(&mut *caller, bytes.len() as i32)?;
    let mem = memory(caller)?;
    mem.write(&mut *caller, ptr as u32 as usize, bytes)?;
    write_u32(caller, ptr_ptr, ptr as u32)?;
    write_u32(caller, size_ptr, bytes.len() as u32)?;
    Ok(status::OK)
}

fn serialize_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend(k.as_bytes());
        out.push(0);
        out.extend(v.as_bytes());
        out.push(0);
    }
    out
}

fn deserialize_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let u32_at = |i: usize| -> Result<usize> {
        Ok(u32::from_le_bytes(
            bytes
                .get(i..i + 4)
                .ok_or_else(|| anyhow!("short map"))?
                .try_into()?,
        ) as usize)
    };
    let n = u32_at(0)?;
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = String::from_utf8(
            bytes
                .get(at..at + k)
                .ok_or_else(|| anyhow!("short map"))?
                .to_vec(),
        )?;
        at += k + 1;
        let value = String::from_utf8(
            bytes
                .get(at..at + v)
                .ok_or_else(|| anyhow!("short map"))?
                .to_vec(),
        )?;
        at += v + 1;
        out.push((key, value));
    }
    Ok(out)
}

/// Map types of the ABI.
fn header_map(state: &mut VmState, map_type: i32) -> Option<&mut Vec<(String, String)>> {
    match map_type {
        0 => state
            .streams
            .get_mut(&state.current)
            .map(|s| &mut s.request_headers),
        2 => state
            .streams
            .get_mut(&state.current)
            .map(|s| &mut s.response_headers),
        6 => Some(&mut state.call_response.0),
        _ => None,
    }
}

fn define_proxy_abi(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, VmState>, level: i32, ptr: i32, len: i32| -> Result<i32> {
            let msg = read_str(&mut c, ptr, len)?;
            c.data_mut().logs.push((level, msg));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, VmState>, ptr: i32| -> Result<i32> {
            let now = c.data().shared.now_ns.load(Ordering::SeqCst);
            let mem = memory(&mut c)?;
            mem.write(&mut c, ptr as u32 as usize, &now.to_le_bytes())?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, VmState>, ms: i32| -> i32 {
            c.data_mut().tick_period_ms = ms as u32;
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, VmState>,
         kind: i32,
         start: i32,
         max: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            let buf = match kind {
                7 => c.data().plugin_config.clone(),
                4 => c.data().call_response.1.clone(),
                6 => Vec::new(),
                _ => return Ok(status::NOT_FOUND),
            };
            let start = (start as usize).min(buf.len());
            let end = (start + max as usize).min(buf.len());
            if start == end {
                return Ok(status::NOT_FOUND);
            }
            return_bytes(&mut c, &buf[start..end], ptr_ptr, size_ptr)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, VmState>,
         ptr: i32,
         len: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            let path = read(&mut c, ptr, len)?;
            let key = String::from_utf8_lossy(&path).replace('\0', ".");
            let key = key.trim_end_matches('.').to_string();
            match c.data().properties.get(&key).cloned() {
                Some(v) => return_bytes(&mut c, &v, ptr_ptr, size_ptr),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, VmState>,
         map: i32,
         kp: i32,
         kl: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            let key = read_str(&mut c, kp, kl)?.to_ascii_lowercase();
            let value = match header_map(c.data_mut(), map) {
                Some(h) => h.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
                None => return Ok(status::BAD_ARGUMENT),
            };
            match value {
                Some(v) => return_bytes(&mut c, v.as_bytes(), ptr_ptr, size_ptr),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, VmState>, map: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            let Some(h) = header_map(c.data_mut(), map) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let bytes = serialize_pairs(h);
            return_bytes(&mut c, &bytes, ptr_ptr, size_ptr)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, VmState>, map: i32, ptr: i32, len: i32| -> Result<i32> {
            let pairs = deserialize_pairs(&read(&mut c, ptr, len)?)?;
            let Some(h) = header_map(c.data_mut(), map) else {
                return Ok(status::BAD_ARGUMENT);
            };
            *h = pairs;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> Result<i32> {
            let key = read_str(&mut c, kp, kl)?.to_ascii_lowercase();
            let value = read_str(&mut c, vp, vl)?;
            let Some(h) = header_map(c.data_mut(), map) else {
                return Ok(status::BAD_ARGUMENT);
            };
            h.retain(|(k, _)| *k != key);
            h.push((key, value));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> Result<i32> {
            let key = read_str(&mut c, kp, kl)?.to_ascii_lowercase();
            let value = read_str(&mut c, vp, vl)?;
            let Some(h) = header_map(c.data_mut(), map) else {
                return Ok(status::BAD_ARGUMENT);
            };
            h.push((key, value));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, kp: i32, kl: i32| -> Result<i32> {
            let key = read_str(&mut c, kp, kl)?.to_ascii_lowercase();
            let Some(h) = header_map(c.data_mut(), map) else {
                return Ok(status::BAD_ARGUMENT);
            };
            h.retain(|(k, _)| *k != key);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, VmState>,
         kp: i32,
         kl: i32,
         ptr_ptr: i32,
         size_ptr: i32,
         cas_ptr: i32|
         -> Result<i32> {
            if c.data().shared.fail_shared_data.load(Ordering::SeqCst) {
                return Ok(status::INTERNAL_FAILURE);
            }
            let key = read_str(&mut c, kp, kl)?;
            let entry = c.data().shared.data.lock().unwrap().get(&key).cloned();
            match entry {
                Some((value, cas)) => {
                    return_bytes(&mut c, &value, ptr_ptr, size_ptr)?;
                    write_u32(&mut c, cas_ptr, cas)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, VmState>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> Result<i32> {
            if c.data().shared.fail_shared_data.load(Ordering::SeqCst) {
                return Ok(status::INTERNAL_FAILURE);
            }
            let key = read_str(&mut c, kp, kl)?;
            let value = read(&mut c, vp, vl)?;
            let shared = c.data().shared.clone();
            let mut data = shared.data.lock().unwrap();
            let current = data.get(&key).map(|e| e.1);
            // Envoy: a CAS of 0 writes unconditionally; otherwise it must match.
            if cas != 0 && current != Some(cas as u32) {
                return Ok(status::CAS_MISMATCH);
            }
            data.insert(key, (value, current.unwrap_or(0) + 1));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, VmState>, kind: i32, np: i32, nl: i32, id_ptr: i32| -> Result<i32> {
            let name = read_str(&mut c, np, nl)?;
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(status::BAD_ARGUMENT),
            };
            c.data()
                .shared
                .metrics
                .lock()
                .unwrap()
                .entry(name.clone())
                .or_insert((kind, 0));
            let ids = &mut c.data_mut().metric_ids;
            let id = ids.iter().position(|n| *n == name).unwrap_or_else(|| {
                ids.push(name.clone());
                ids.len() - 1
            });
            write_u32(&mut c, id_ptr, id as u32)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Caller<'_, VmState>, id: i32, by: i64| -> i32 {
            update_metric(&c, id, |kind, v| match kind {
                MetricKind::Histogram => None,
                _ => Some(v + by),
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Caller<'_, VmState>, id: i32, value: i64| -> i32 {
            update_metric(&c, id, |kind, v| match kind {
                MetricKind::Counter => None,
                MetricKind::Gauge => Some(value),
                // Histograms: the host keeps the sample count.
                MetricKind::Histogram => Some(v + 1),
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, VmState>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         _tp: i32,
         _tl: i32,
         timeout: i32,
         token_ptr: i32|
         -> Result<i32> {
            let upstream = read_str(&mut c, up, ul)?;
            let headers = deserialize_pairs(&read(&mut c, hp, hl)?)?;
            let body = read(&mut c, bp, bl)?;
            let state = c.data_mut();
            state.next_token += 1;
            let token = state.next_token;
            state.http_calls.push(HttpCall {
                token,
                upstream,
                headers,
                body,
                timeout_ms: timeout as u32,
            });
            write_u32(&mut c, token_ptr, token)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_, VmState>, ctx: i32| -> i32 {
            c.data_mut().current = ctx;
            status::OK
        },
    )?;
    for name in ["proxy_continue_stream", "proxy_close_stream"] {
        linker.func_wrap("env", name, |_: Caller<'_, VmState>, _: i32| -> i32 {
            status::OK
        })?;
    }
    linker.func_wrap("env", "proxy_done", |_: Caller<'_, VmState>| -> i32 {
        status::OK
    })?;
    // WASI: what Rust's std needs to start and to seed RandomState.
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "random_get",
        |mut c: Caller<'_, VmState>, ptr: i32, len: i32| -> Result<i32> {
            // Distinct across VMs and calls, like a real entropy source; deterministic per run order.
            static CALLS: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
            let mut x = CALLS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mem = memory(&mut c)?;
            mem.write(&mut c, ptr as u32 as usize, &bytes)?;
            Ok(0)
        },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(
            "wasi_snapshot_preview1",
            name,
            |mut c: Caller<'_, VmState>, a: i32, b: i32| -> Result<i32> {
                write_u32(&mut c, a, 0)?;
                write_u32(&mut c, b, 0)?;
                Ok(0)
            },
        )?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(
            "wasi_snapshot_preview1",
            name,
            |_: Caller<'_, VmState>, _: i32, _: i32| -> i32 { 0 },
        )?;
    }
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut c: Caller<'_, VmState>, _fd: i32, iovs: i32, n: i32, written: i32| -> Result<i32> {
            let mut total = 0;
            for i in 0..n {
                let iov = read(&mut c, iovs + i * 8, 8)?;
                total += u32::from_le_bytes(iov[4..8].try_into()?);
            }
            write_u32(&mut c, written, total)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "proc_exit",
        |_: Caller<'_, VmState>, code: i32| -> Result<()> { bail!("proc_exit({code})") },
    )?;
    Ok(())
}

fn update_metric(
    c: &Caller<'_, VmState>,
    id: i32,
    f: impl FnOnce(MetricKind, i64) -> Option<i64>,
) -> i32 {
    let Some(name) = c.data().metric_ids.get(id as usize) else {
        return status::NOT_FOUND;
    };
    let mut metrics = c.data().shared.metrics.lock().unwrap();
    let Some(entry) = metrics.get_mut(name) else {
        return status::NOT_FOUND;
    };
    match f(entry.0, entry.1) {
        Some(v) => {
            entry.1 = v;
            status::OK
        }
        None => status::BAD_ARGUMENT,
    }
}

/// Compiles modules once per engine.
pub struct WasmHost {
    engine: Engine,
    module: Module,
    linker: Linker<VmState>,
}

impl WasmHost {
    /// Loads a compiled `.wasm` (e.g. `target/wasm32-wasip1/release/shadowmesh_filter.wasm`).
    pub fn load(path: &Path) -> Result<WasmHost> {
        let engine = Engine::default();
        let module = Module::from_file(&engine, path)
            .map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
        let mut linker = Linker::new(&engine);
        define_proxy_abi(&mut linker)?;
        // Any other import exists but fails, like an unimplemented hostcall would.
        // (Defining a name twice is an error, which is how the implemented ones are skipped.)
        for import in module.imports() {
            if let wasmtime::ExternType::Func(ty) = import.ty() {
                let results = ty.results().len();
                let _ = linker.func_new(
                    import.module(),
                    import.name(),
                    ty.clone(),
                    move |_, _, out| {
                        if results > 0 {
                            out[0] = Val::I32(status::INTERNAL_FAILURE);
                        }
                        Ok(())
                    },
                );
            }
        }
        Ok(WasmHost {
            engine,
            module,
            linker,
        })
    }

    /// Instantiates one VM (one Envoy worker) sharing `shared` with the others.
    pub fn vm(&self, shared: &Arc<HostShared>) -> Result<WasmVm> {
        let state = VmState {
            shared: shared.clone(),
            memory: None,
            allocate: None,
            plugin_config: Vec::new(),
            tick_period_ms: 0,
            logs: Vec::new(),
            metric_ids: Vec::new(),
            properties: HashMap::new(),
            streams: HashMap::new(),
            current: 0,
            http_calls: Vec::new(),
            next_token: 0,
            call_response: (Vec::new(), Vec::new()),
        };
        let mut store = Store::new(&self.engine, state);
        let instance = self.linker.instantiate(&mut store, &self.module)?;
        let memory = match instance.get_export(&mut store, "memory") {
            Some(Extern::Memory(m)) => m,
            _ => bail!("module exports no memory"),
        };
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate =
            Some(instance.get_typed_func(&mut store, "proxy_on_memory_allocate")?);
        instance
            .get_typed_func::<(), ()>(&mut store, "_initialize")?
            .call(&mut store, ())?;
        Ok(WasmVm {
            store,
            instance,
            root_id: ROOT_ID,
            next_ctx: ROOT_ID + 1,
        })
    }
}

impl WasmVm {
    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
        params: P,
    ) -> Result<R> {
        let f = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)?;
        f.call(&mut self.store, params)
    }

    /// Sets a property (path joined with `.`), e.g. `node.id`.
    pub fn set_property(&mut self, path: &str, value: &[u8]) {
        self.store
            .data_mut()
            .properties
            .insert(path.to_string(), value.to_vec());
    }

    /// Creates the root context and configures it; returns what `on_configure` returned.
    pub fn configure(&mut self, plugin_config: &str) -> Result<bool> {
        self.store.data_mut().plugin_config = plugin_config.as_bytes().to_vec();
        self.call::<(i32, i32), ()>("proxy_on_context_create", (self.root_id, 0))?;
        let started: i32 = self.call("proxy_on_vm_start", (self.root_id, 0))?;
        if started == 0 {
            return Ok(false);
        }
        let ok: i32 = self.call(
            "proxy_on_configure",
            (self.root_id, plugin_config.len() as i32),
        )?;
        Ok(ok != 0)
    }

    /// Tick period the filter asked for.
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// Runs one tick.
    pub fn tick(&mut self) -> Result<()> {
        self.call::<i32, ()>("proxy_on_tick", self.root_id)
    }

    /// Starts a stream with these request headers; returns its context id.
    pub fn request(&mut self, headers: &[(&str, &str)]) -> Result<i32> {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.call::<(i32, i32), ()>("proxy_on_context_create", (ctx, self.root_id))?;
        let state = self.store.data_mut();
        state.streams.insert(
            ctx,
            Stream {
                request_headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                response_headers: Vec::new(),
            },
        );
        state.current = ctx;
        let action: i32 = self.call("proxy_on_request_headers", (ctx, headers.len() as i32, 0))?;
        if action != 0 {
            bail!("filter paused the request (action {action})");
        }
        Ok(ctx)
    }

    /// The request headers of a stream as the filter left them.
    pub fn request_header(&self, ctx: i32, name: &str) -> Option<String> {
        self.store
            .data()
            .streams
            .get(&ctx)?
            .request_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Delivers response headers.
    pub fn respond(&mut self, ctx: i32, headers: &[(&str, &str)]) -> Result<()> {
        let state = self.store.data_mut();
        if let Some(s) = state.streams.get_mut(&ctx) {
            s.response_headers = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
        state.current = ctx;
        let _: i32 = self.call("proxy_on_response_headers", (ctx, headers.len() as i32, 1))?;
        Ok(())
    }

    /// Ends a stream the way Envoy does: done, log, delete.
    pub fn finish(&mut self, ctx: i32) -> Result<()> {
        self.store.data_mut().current = ctx;
        let _: i32 = self.call("proxy_on_done", ctx)?;
        self.call::<i32, ()>("proxy_on_log", ctx)?;
        self.call::<i32, ()>("proxy_on_delete", ctx)?;
        self.store.data_mut().streams.remove(&ctx);
        Ok(())
    }

    /// HTTP calls made so far (drained).
    pub fn take_http_calls(&mut self) -> Vec<HttpCall> {
        std::mem::take(&mut self.store.data_mut().http_calls)
    }

    /// Answers an HTTP call.
    pub fn http_call_response(&mut self, token: u32, status: u16, body: &[u8]) -> Result<()> {
        let state = self.store.data_mut();
        state.call_response = (vec![(":status".into(), status.to_string())], body.to_vec());
        self.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            (self.root_id, token as i32, 1, body.len() as i32, 0),
        )
    }

    /// Log lines so far.
    pub fn logs(&self) -> &[(i32, String)] {
        &self.store.data().logs
    }
}
