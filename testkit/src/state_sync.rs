//! A deployment with State Synchronization on loopback: the `shadowmesh-xds` binary (the
//! relay, with tokens), a primary and a shadow `cart` process, a shadow-side Envoy (ATRE as
//! subscriber) in front of the shadow, and the edge Envoy (ATRE as publisher) routing to the
//! primary or, through the shadow-side Envoy, to the shadow. And shopping sessions that
//! count their own writes, so every stale read is seen.

use crate::envoy::{Bootstrap, EnvoyOptions, EnvoyProcess, FilterChoice};
use crate::loadgen::{self, HttpClient};
use crate::xds_process::{ApiClient, XdsProcess, eventually, free_addr};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The operator token of the deployment's control plane.
pub const OPERATOR_TOKEN: &str = "op-ssm-3b9d0f6a2c71";
/// The edges' telemetry token (reports, publishes, lookups): speaks for `edge-*`, fronts the
/// service.
pub const TELEMETRY_TOKEN: &str = "tm-ssm-7e24c15d98a0";
/// The shadow side's telemetry token (pulls): speaks for `shadow-side-*`, serves the
/// service.
pub const SHADOW_SIDE_TOKEN: &str = "tm-ssm-shadow-4c0a9e61";
/// The service.
pub const SERVICE: &str = "checkout";

/// How the deployment is set up.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// `async` or `event`.
    pub mode: &'static str,
    /// The allowlist of critical keys.
    pub keys: Vec<&'static str>,
    /// Largest value of one key.
    pub max_value_bytes: usize,
    /// Profile bytes per session (state written once).
    pub profile_bytes: usize,
    /// The primary's concurrency (20 ms a request).
    pub primary_concurrency: usize,
    /// The edge Envoy's filter.
    pub edge: EdgeFilter,
    /// Time the carts take per request (ms).
    pub service_ms: u64,
    /// Stats the edge Envoy rejects (`stats_matcher` exclusion by name suffix), as an
    /// operator's stats filter would: Envoy then hands out null stats for them.
    pub edge_rejected_stats: Vec<&'static str>,
    /// The edge filter's `primary.max_in_flight`; `None`: the primary's concurrency, as an
    /// operator who read "Choosing max_in_flight" sets it.
    pub edge_max_in_flight: Option<u32>,
}

/// What runs in the edge Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeFilter {
    /// ATRE with state synchronization (the deployment under test).
    AtreWithSync,
    /// Three listeners side by side, for latency comparisons: no Wasm filter (`ingress`),
    /// ATRE alone (`ingress-atre`) and ATRE with state sync (`ingress-sync`) — one Envoy,
    /// so all three share its worker threads, the carts and the shadow side
    /// ([`SyncStack::side_by_side`]).
    SideBySide,
    /// A filter whose VM faults (the fail-open check).
    Faulting,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            mode: "async",
            keys: vec!["cart", "writes", "profile"],
            max_value_bytes: 8_192,
            profile_bytes: 2_048,
            primary_concurrency: 8,
            edge: EdgeFilter::AtreWithSync,
            service_ms: 20,
            edge_rejected_stats: Vec::new(),
            edge_max_in_flight: None,
        }
    }
}

/// A child process killed when dropped.
pub struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a `cart` process on `port`.
pub fn start_cart(
    name: &str,
    port: u16,
    concurrency: usize,
    profile_bytes: usize,
    service_ms: u64,
) -> Result<ChildGuard> {
    let bin = crate::workspace_binary("cart")?;
    let child = Command::new(bin)
        .args(["--name", name, "--port", &port.to_string()])
        .args(["--service-ms", &service_ms.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--profile-bytes", &profile_bytes.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(ChildGuard(child))
}

/// The running deployment.
pub struct SyncStack {
    /// The control plane (relay).
    pub plane: XdsProcess,
    /// Operator client of its API.
    pub api: ApiClient,
    /// The primary cart.
    pub primary: ChildGuard,
    /// Its address (`GET /stats`: requests in the service, integrated over time).
    pub primary_addr: SocketAddr,
    /// The shadow cart.
    pub shadow: ChildGuard,
    shadow_envoy: Option<EnvoyProcess>,
    /// The edge Envoy.
    pub edge: EnvoyProcess,
    /// Options it was built with.
    pub options: SyncOptions,
    edge_yaml: String,
    dir: PathBuf,
    config: PathBuf,
    shadow_port: u16,
    shadow_listener: u16,
    control_port: u16,
}

fn state_sync(role: &str, options: &SyncOptions) -> serde_json::Value {
    let token = if role == "subscriber" {
        SHADOW_SIDE_TOKEN
    } else {
        TELEMETRY_TOKEN
    };
    serde_json::json!({
        "role": role, "mode": options.mode, "cluster": "shadowmesh_control",
        "token": token, "keys": options.keys,
        "max_value_bytes": options.max_value_bytes,
        "max_session_bytes": options.max_value_bytes * 4,
        "max_sessions": 10_000, "wait_ms": 1_000, "timeout_ms": 1_000,
    })
}

/// The shadow-side Envoy's bootstrap: its listener on `listener` (fixed, so the edge can
/// reach a restarted one), routing to the shadow cart.
fn shadow_side_yaml(
    shadow_port: u16,
    control_port: u16,
    listener: u16,
    options: &SyncOptions,
) -> Result<String> {
    let mut plugin = crate::atre_plugin(64);
    let svc = &mut plugin["services"][0];
    svc["shadow"]["ready"] = false.into();
    svc["state_sync"] = state_sync("subscriber", options);
    plugin["proxy_id"] = "shadow-side-1".into();
    plugin["telemetry"] = serde_json::Value::Null;
    let yaml = Bootstrap {
        node_id: "shadow-side-1".into(),
        primary_port: shadow_port,
        shadow_port,
        control_port,
        filter: FilterChoice::Atre(plugin.to_string()),
    }
    .render()?;
    // The ingress listener is the one `port_value: 0` indented as a listener address.
    replace_once(
        &yaml,
        "    address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n    filter_chains:",
        &format!(
            "    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}\n    filter_chains:"
        ),
    )
}

/// `text` with `what`, which must occur exactly once, replaced by `with`: the bootstrap
/// edits here are textual, and a template that changed shape must fail loudly.
fn replace_once(text: &str, what: &str, with: &str) -> Result<String> {
    let found = text.matches(what).count();
    anyhow::ensure!(
        found == 1,
        "expected `{}` once in the bootstrap, found it {found} times",
        what.trim()
    );
    Ok(text.replacen(what, with, 1))
}

/// `yaml` with a `stats_matcher` that rejects stats whose names end with `suffixes`.
fn reject_stats(yaml: &str, suffixes: &[&str]) -> Result<String> {
    const STATS_CONFIG: &str = "stats_config:\n";
    let mut matcher = String::from("  stats_matcher:\n    exclusion_list:\n      patterns:\n");
    for s in suffixes {
        matcher.push_str(&format!("      - suffix: {}\n", serde_json::to_string(s)?));
    }
    replace_once(yaml, STATS_CONFIG, &format!("{STATS_CONFIG}{matcher}"))
}

/// The front-proxy bootstrap `base` (its listener `ingress`) with the listeners of the
/// bootstraps `more` beside it, each renamed `ingress-<name>` and given a Wasm VM of its own
/// (`vm_id: shadowmesh-<name>`: a VM's shared data is its own, so two filters configured
/// for the same service do not share a load window, lease or session table).
fn side_by_side_yaml(base: &str, more: &[(&str, &str)]) -> Result<String> {
    const LISTENERS: &str = "  listeners:\n";
    const CLUSTERS: &str = "\n  clusters:\n";
    const INGRESS: &str = "  - name: ingress\n";
    const VM_ID: &str = "vm_id: shadowmesh\n";
    let mut listeners = String::new();
    for (name, yaml) in more {
        let start = yaml
            .find(LISTENERS)
            .context("no listeners in the bootstrap")?
            + LISTENERS.len();
        let end = yaml
            .find(CLUSTERS)
            .context("no clusters in the bootstrap")?;
        let block = replace_once(
            &yaml[start..end],
            INGRESS,
            &format!("  - name: ingress-{name}\n"),
        )?;
        listeners.push('\n');
        listeners.push_str(&replace_once(
            &block,
            VM_ID,
            &format!("vm_id: shadowmesh-{name}\n"),
        )?);
    }
    replace_once(base, CLUSTERS, &format!("{listeners}{CLUSTERS}"))
}

impl SyncStack {
    /// The listeners of an [`EdgeFilter::SideBySide`] edge: no filter, ATRE, ATRE with
    /// state sync.
    pub async fn side_by_side(&self) -> [SocketAddr; 3] {
        let mut out = [self.edge.listener; 3];
        for (slot, name) in out
            .iter_mut()
            .zip(["ingress", "ingress-atre", "ingress-sync"])
        {
            *slot = eventually(name, Duration::from_secs(30), async || {
                self.edge.listener_named(name).ok().flatten()
            })
            .await;
        }
        out
    }

    /// Starts everything in `dir` (created).
    pub async fn start(name: &str, options: SyncOptions) -> Result<SyncStack> {
        let dir =
            std::env::temp_dir().join(format!("shadowmesh-ssm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (http, ads) = (free_addr(), free_addr());
        let tokens = dir.join("tokens");
        std::fs::write(
            &tokens,
            format!(
                "operator {OPERATOR_TOKEN}\n\
                 telemetry {TELEMETRY_TOKEN} proxies=edge-* fronts={SERVICE}\n\
                 telemetry {SHADOW_SIDE_TOKEN} proxies=shadow-side-* serves={SERVICE}\n"
            ),
        )?;
        let config = dir.join("xds.toml");
        std::fs::write(
            &config,
            format!(
                "http_listen = \"{http}\"\nads_listen = \"{ads}\"\ntokens_file = \"{}\"\n",
                tokens.display()
            ),
        )?;
        let plane = XdsProcess::start(&config, &dir.join("xds.log"), &[])?;
        let api = ApiClient::new(http, Some(OPERATOR_TOKEN));
        wait_healthy(&api).await;
        let (primary_port, shadow_port, shadow_listener) =
            (free_addr().port(), free_addr().port(), free_addr().port());
        let primary = start_cart(
            "cart-primary",
            primary_port,
            options.primary_concurrency,
            options.profile_bytes,
            options.service_ms,
        )?;
        let shadow = start_cart(
            "cart-shadow",
            shadow_port,
            64,
            options.profile_bytes,
            options.service_ms,
        )?;
        let shadow_envoy = EnvoyProcess::launch(
            shadow_side_yaml(shadow_port, http.port(), shadow_listener, &options)?,
            EnvoyOptions::default(),
        )
        .await?;
        let edge_max_in_flight = options
            .edge_max_in_flight
            .unwrap_or(options.primary_concurrency as u32);
        let edge_plugin = |proxy_id: &str, sync: bool| {
            let mut plugin = crate::atre_plugin(edge_max_in_flight);
            plugin["proxy_id"] = proxy_id.into();
            plugin["telemetry"]["token"] = TELEMETRY_TOKEN.into();
            if sync {
                plugin["services"][0]["state_sync"] = state_sync("publisher", &options);
            }
            FilterChoice::Atre(plugin.to_string())
        };
        let edge_bootstrap = |filter| Bootstrap {
            node_id: "edge-1".into(),
            primary_port,
            shadow_port: shadow_listener,
            control_port: http.port(),
            filter,
        };
        let mut edge_yaml = match options.edge {
            EdgeFilter::AtreWithSync => edge_bootstrap(edge_plugin("edge-1", true)).render()?,
            EdgeFilter::Faulting => edge_bootstrap(FilterChoice::Faulting).render()?,
            EdgeFilter::SideBySide => side_by_side_yaml(
                &edge_bootstrap(FilterChoice::None).render()?,
                &[
                    (
                        "atre",
                        &edge_bootstrap(edge_plugin("edge-atre", false)).render()?,
                    ),
                    (
                        "sync",
                        &edge_bootstrap(edge_plugin("edge-sync", true)).render()?,
                    ),
                ],
            )?,
        };
        if !options.edge_rejected_stats.is_empty() {
            edge_yaml = reject_stats(&edge_yaml, &options.edge_rejected_stats)?;
        }
        let edge = EnvoyProcess::launch(edge_yaml.clone(), EnvoyOptions::default()).await?;
        let stack = SyncStack {
            edge_yaml,
            plane,
            api,
            primary,
            primary_addr: format!("127.0.0.1:{primary_port}").parse()?,
            shadow,
            shadow_envoy: Some(shadow_envoy),
            edge,
            options,
            dir,
            config,
            shadow_port,
            shadow_listener,
            control_port: http.port(),
        };
        for (what, port) in [("primary cart", primary_port), ("shadow cart", shadow_port)] {
            let client = loadgen::client();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            eventually(what, Duration::from_secs(30), async || {
                loadgen::get(
                    &client,
                    addr,
                    "cart",
                    "/cart",
                    &[("x-session-id".into(), "probe".into())],
                )
                .await
                .ok()
            })
            .await;
        }
        Ok(stack)
    }

    /// `kill -9` of the control plane (and the relay's memory), then a new one on the same
    /// ports; returns once it answers.
    pub async fn restart_relay(&mut self) -> Result<()> {
        self.plane.kill_9();
        self.plane = XdsProcess::start(&self.config, &self.dir.join("xds.log"), &[])?;
        wait_healthy(&self.api).await;
        Ok(())
    }

    /// Stops the shadow-side Envoy and starts a new one (empty memory) on the same port.
    pub async fn restart_shadow_envoy(&mut self) -> Result<()> {
        let yaml = shadow_side_yaml(
            self.shadow_port,
            self.control_port,
            self.shadow_listener,
            &self.options,
        )?;
        // The old one must be gone before the new one binds the port.
        drop(self.shadow_envoy.take());
        self.shadow_envoy = Some(
            EnvoyProcess::launch(yaml, EnvoyOptions::default())
                .await
                .context("restarting the shadow-side Envoy")?,
        );
        Ok(())
    }

    /// The shadow-side Envoy.
    pub fn shadow_envoy(&self) -> &EnvoyProcess {
        self.shadow_envoy
            .as_ref()
            .expect("the shadow-side Envoy runs between restarts")
    }

    /// Stops the edge Envoy and starts a new one (empty shared data, a new incarnation);
    /// its listener is on a new port ([`SyncStack::edge`]).
    pub async fn restart_edge(&mut self) -> Result<()> {
        let new = EnvoyProcess::launch(self.edge_yaml.clone(), EnvoyOptions::default())
            .await
            .context("restarting the edge Envoy")?;
        drop(std::mem::replace(&mut self.edge, new));
        Ok(())
    }

    /// The relay's view (`GET /v1/state`).
    pub async fn relay_state(&self) -> Option<serde_json::Value> {
        self.api.get_json("/v1/state").await
    }
}

async fn wait_healthy(api: &ApiClient) {
    eventually("the control plane", Duration::from_secs(30), async || {
        matches!(api.call("GET", "/healthz", None).await, Ok((200, _))).then_some(())
    })
    .await;
}

/// A filter counter of `envoy` (Envoy names Wasm metrics `wasmcustom.<name>`).
pub fn filter_stat(envoy: &EnvoyProcess, metric: &str) -> u64 {
    let name = format!("shadowmesh.service.{SERVICE}.{metric}");
    envoy
        .stat(&format!("wasmcustom.{name}"))
        .ok()
        .flatten()
        .or_else(|| envoy.stat(&name).ok().flatten())
        .unwrap_or(0)
}

/// What the sessions saw.
#[derive(Clone, Default)]
pub struct SessionsReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (status or transport).
    pub errors: u64,
    /// Answers with fewer writes than the client had made: older state than it wrote.
    pub stale_reads: u64,
    /// Of those, served by the shadow (a redirected request).
    pub stale_on_shadow: u64,
    /// Requests served by the shadow.
    pub by_shadow: u64,
    /// Requests served by the shadow for a session that had written before (its state
    /// had to follow it).
    pub by_shadow_after_writes: u64,
    /// Sessions served by both.
    pub sessions_moved: u64,
    /// Latency of each request (µs), in order of completion.
    pub latencies_us: Vec<u64>,
    /// The first stale reads, described.
    pub stale_examples: Vec<String>,
}

impl std::fmt::Debug for SessionsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsReport")
            .field("ok", &self.ok)
            .field("errors", &self.errors)
            .field("stale_reads", &self.stale_reads)
            .field("stale_on_shadow", &self.stale_on_shadow)
            .field("by_shadow", &self.by_shadow)
            .field("by_shadow_after_writes", &self.by_shadow_after_writes)
            .field("sessions_moved", &self.sessions_moved)
            .field("stale_examples", &self.stale_examples)
            .finish()
    }
}

/// One shopping session: adds, reads and removes items in turn and checks every answer's
/// write count against its own.
struct Shopper {
    session: String,
    headers: Vec<(String, String)>,
    writes: u64,
    n: u64,
    served: BTreeMap<String, u64>,
}

impl Shopper {
    fn new(session: String) -> Shopper {
        Shopper {
            headers: vec![("x-session-id".to_string(), session.clone())],
            session,
            writes: 0,
            n: 0,
            served: BTreeMap::new(),
        }
    }

    /// One request through `edge`, accounted in `report`.
    async fn step(
        &mut self,
        client: &HttpClient,
        edge: SocketAddr,
        report: &Mutex<SessionsReport>,
    ) {
        self.n += 1;
        let n = self.n;
        let (method, path) = match n % 4 {
            0 => ("GET", "/cart".to_string()),
            1 | 2 => ("POST", format!("/cart/add?sku=sku-{}", n % 3)),
            _ => ("POST", format!("/cart/remove?sku=sku-{}", (n + 1) % 3)),
        };
        let t0 = Instant::now();
        let answer = loadgen::request_with(client, method, edge, &path, None, &self.headers).await;
        let took = t0.elapsed().as_micros() as u64;
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        r.latencies_us.push(took);
        let Ok((200, body)) = answer else {
            r.errors += 1;
            return;
        };
        r.ok += 1;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let seen = v["writes"].as_u64().unwrap_or(0);
        let by = v["served_by"].as_str().unwrap_or("").to_string();
        let expected = if method == "POST" {
            self.writes + 1
        } else {
            self.writes
        };
        if seen < expected {
            r.stale_reads += 1;
            if by == "cart-shadow" {
                r.stale_on_shadow += 1;
            }
            if r.stale_examples.len() < 5 {
                r.stale_examples.push(format!(
                    "{}: {method} {path} served by {by} saw {seen} writes, {expected} made",
                    self.session
                ));
            }
        }
        if by == "cart-shadow" {
            r.by_shadow += 1;
            if self.writes > 0 {
                r.by_shadow_after_writes += 1;
            }
        }
        *self.served.entry(by).or_default() += 1;
        if method == "POST" {
            // The session's count follows what the service says it has now.
            self.writes = seen.max(expected);
        }
    }

    /// At the end: counts the session as moved if both sides served it.
    fn finish(self, report: &Mutex<SessionsReport>) {
        if self.served.len() > 1 {
            report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sessions_moved += 1;
        }
    }
}

/// Runs `sessions` shopping sessions through `edge` for `duration`, each waiting `think`
/// between requests: each adds, reads and removes items in turn and checks every answer's
/// write count against its own.
pub async fn run_sessions(
    edge: SocketAddr,
    sessions: usize,
    duration: Duration,
    prefix: &str,
    think: Duration,
) -> SessionsReport {
    run_interleaved(&[edge], sessions, duration, prefix, think)
        .await
        .pop()
        .unwrap_or_default()
}

/// Like [`run_sessions`] through several edges at once, finely interleaved: each of the
/// `sessions` tasks sends one request through each edge in turn (its own session per edge,
/// the order rotating), then waits `think`. Every edge sees the same load at the same
/// moments, so a machine whose speed drifts slows them alike: the reports (one per edge)
/// compare like with like.
pub async fn run_interleaved(
    edges: &[SocketAddr],
    sessions: usize,
    duration: Duration,
    prefix: &str,
    think: Duration,
) -> Vec<SessionsReport> {
    let reports: Arc<Vec<Mutex<SessionsReport>>> =
        Arc::new(edges.iter().map(|_| Mutex::default()).collect());
    let client: HttpClient = loadgen::client();
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let (client, reports, edges) = (client.clone(), reports.clone(), edges.to_vec());
        let mut shoppers: Vec<Shopper> = (0..edges.len())
            .map(|e| {
                Shopper::new(if edges.len() == 1 {
                    format!("{prefix}-{i:04}")
                } else {
                    format!("{prefix}-{e}-{i:04}")
                })
            })
            .collect();
        tasks.spawn(async move {
            let mut first = true;
            let mut turn = i;
            while Instant::now() < deadline {
                if !first && !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
                first = false;
                for k in 0..edges.len() {
                    let e = (turn + k) % edges.len();
                    shoppers[e].step(&client, edges[e], &reports[e]).await;
                }
                turn += 1;
            }
            for (shopper, report) in shoppers.into_iter().zip(reports.iter()) {
                shopper.finish(report);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    reports
        .iter()
        .map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|e| e.into_inner())))
        .collect()
}
