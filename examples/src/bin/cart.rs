//! `cart`: a stateful example service that adopts Shadowmesh's state-synchronization
//! contract — the whole adoption is the two functions marked CONTRACT below.
//!
//! A shopping cart per session (header `x-session-id`):
//!
//! | request | does |
//! |---|---|
//! | `GET /cart` | the cart |
//! | `POST /cart/add?sku=S` | one more of S |
//! | `POST /cart/remove?sku=S` | one less of S |
//! | `POST /cart/checkout` | empties the cart |
//! | `GET /catalog` | the catalogue: no session needed, no state |
//! | `GET /stats` | `{"served", "in_system_us", "service_us"}`: requests answered; the integral of requests in the service (waiting or served) over time, µs — its growth over an interval divided by the interval is the mean concurrency; and the time requests spent being served (holding one of the `--concurrency` slots, not waiting for one), µs — per request, the service's own speed, which no queue changes; not queued behind other requests, not counted |
//!
//! Every answer is `{"session", "items": {"sku": n}, "writes": n, "served_by"}`: `writes`
//! counts the session's writes, so a client that counts its own detects a stale read.
//! With `--profile-bytes N` each session also carries an N-byte profile, written once —
//! realistic state that the deltas need not repeat.
//!
//! The same binary is the primary and the shadow: state it is handed in a request wins
//! over what it holds when it is at least as new (the shadow holds nothing; a primary is
//! handed a session's state when its latest writes happened on a shadow).

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use shadowmesh_filter::session_state::{
    SESSION_STATE_HEADER, STATE_CHANGE_HEADER, decode_state, percent_encode_into,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// A stateful example service: shopping carts.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Name in `x-served-by` and answers.
    #[arg(long, default_value = "cart")]
    name: String,
    /// Port on 127.0.0.1 (0: any; the bound port is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Time to serve one request (ms).
    #[arg(long, default_value_t = 5)]
    service_ms: u64,
    /// Requests served at once; more wait.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes of the per-session profile written with a session's first write.
    #[arg(long, default_value_t = 0)]
    profile_bytes: usize,
}

#[derive(Clone, Default)]
struct Cart {
    items: BTreeMap<String, u32>,
    writes: u64,
    profile: String,
    /// Version of the last state handed in (0: none).
    version: u64,
}

struct App {
    args: Args,
    carts: Mutex<HashMap<String, Cart>>,
    permits: Semaphore,
    load: Mutex<InSystem>,
}

/// Requests in the service (waiting for a permit or being served), integrated over time.
struct InSystem {
    now: u64,
    since: std::time::Instant,
    integral_us: u128,
    served: u64,
    /// Time requests held a serving slot, µs.
    service_us: u128,
}

impl InSystem {
    fn advance(&mut self) {
        let at = std::time::Instant::now();
        self.integral_us += u128::from(self.now) * at.duration_since(self.since).as_micros();
        self.since = at;
    }
}

/// Counts a request in the service while it lives.
struct Counted<'a>(&'a Mutex<InSystem>);

impl<'a> Counted<'a> {
    fn enter(load: &'a Mutex<InSystem>) -> Counted<'a> {
        let mut l = load.lock().unwrap_or_else(|e| e.into_inner());
        l.advance();
        l.now += 1;
        Counted(load)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        l.advance();
        l.now = l.now.saturating_sub(1);
        l.served += 1;
    }
}

/// Counts the time a request holds a serving slot while it lives.
struct Serving<'a>(&'a Mutex<InSystem>, std::time::Instant);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        l.service_us += self.1.elapsed().as_micros();
    }
}

/// CONTRACT, in: the state the mesh hands over, if at least as new as what we hold.
fn adopt(cart: &mut Cart, header: Option<&str>) {
    let Some((version, state)) = header.and_then(decode_state) else {
        return;
    };
    if version < cart.version {
        return;
    }
    cart.version = version;
    cart.items = state
        .get("cart")
        .map(|c| {
            c.split(',')
                .filter_map(|p| {
                    let (sku, n) = p.split_once(':')?;
                    Some((sku.to_string(), n.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    cart.writes = state
        .get("writes")
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    cart.profile = state.get("profile").cloned().unwrap_or_default();
}

/// CONTRACT, out: the changed keys of a write, as `x-shadowmesh-state`.
fn changes(cart: &Cart, with_profile: bool) -> String {
    let items: Vec<String> = cart.items.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    let mut out = String::from("set cart=");
    percent_encode_into(&items.join(","), &mut out);
    out.push_str(&format!("; set writes={}", cart.writes));
    if with_profile {
        out.push_str("; set profile=");
        percent_encode_into(&cart.profile, &mut out);
    }
    out
}

fn answer(app: &App, status: u16, body: String, state: Option<String>) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-served-by", &app.args.name);
    if let Some(s) = state {
        r = r.header(STATE_CHANGE_HEADER, s);
    }
    r.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.method() == hyper::Method::GET && req.uri().path() == "/stats" {
        let mut l = app.load.lock().unwrap_or_else(|e| e.into_inner());
        l.advance();
        let body = serde_json::json!({
            "served": l.served,
            "in_system_us": l.integral_us as u64,
            "service_us": l.service_us as u64,
        });
        drop(l);
        return Ok(answer(&app, 200, body.to_string(), None));
    }
    let _counted = Counted::enter(&app.load);
    let _permit = app.permits.acquire().await;
    let _serving = Serving(&app.load, std::time::Instant::now());
    tokio::time::sleep(Duration::from_millis(app.args.service_ms)).await;
    if req.method() == hyper::Method::GET && req.uri().path() == "/catalog" {
        let body =
            serde_json::json!({"items": ["sku-0", "sku-1", "sku-2"], "served_by": app.args.name});
        return Ok(answer(&app, 200, body.to_string(), None));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(session) = header("x-session-id").filter(|s| !s.is_empty()) else {
        return Ok(answer(
            &app,
            400,
            r#"{"error":"x-session-id is required"}"#.into(),
            None,
        ));
    };
    let sku = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("sku=")))
        .unwrap_or("item")
        .to_string();
    let write = req.method() == hyper::Method::POST;
    let path = req.uri().path().to_string();
    let mut carts = app.carts.lock().unwrap_or_else(|e| e.into_inner());
    let cart = carts.entry(session.clone()).or_default();
    adopt(cart, header(SESSION_STATE_HEADER).as_deref());
    let first_write = write && cart.writes == 0;
    match (write, path.as_str()) {
        (false, "/cart") => {}
        (true, "/cart/add") => *cart.items.entry(sku).or_default() += 1,
        (true, "/cart/remove") => {
            if let Some(n) = cart.items.get_mut(&sku) {
                *n -= 1;
                if *n == 0 {
                    cart.items.remove(&sku);
                }
            }
        }
        (true, "/cart/checkout") => cart.items.clear(),
        _ => {
            return Ok(answer(
                &app,
                404,
                r#"{"error":"no such route"}"#.into(),
                None,
            ));
        }
    }
    let mut state = None;
    if write {
        cart.writes += 1;
        if first_write && app.args.profile_bytes > 0 {
            cart.profile = "p".repeat(app.args.profile_bytes);
        }
        state = Some(changes(cart, first_write && app.args.profile_bytes > 0));
    }
    let body = serde_json::json!({
        "session": session, "items": cart.items, "writes": cart.writes,
        "served_by": app.args.name,
    })
    .to_string();
    drop(carts);
    Ok(answer(&app, 200, body, state))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = Arc::new(App {
        permits: Semaphore::new(args.concurrency.max(1)),
        args,
        carts: Mutex::default(),
        load: Mutex::new(InSystem {
            now: 0,
            since: std::time::Instant::now(),
            integral_us: 0,
            served: 0,
            service_us: 0,
        }),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(app.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
