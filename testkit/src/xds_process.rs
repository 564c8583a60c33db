//! The real `shadowmesh-xds` binary as a child process, started from a configuration file:
//! for tests of what only the process shows — signals, `kill -9` and restart, the command
//! line's refusals, the listeners' limits.

use crate::loadgen;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A running `shadowmesh-xds`, killed outright (`SIGKILL`) when dropped. Its stderr (the
/// log, at `info`) goes to a file.
pub struct XdsProcess {
    child: Child,
    log: PathBuf,
}

impl XdsProcess {
    /// Starts the binary with `--config config` and `args`, logging to `log` (appended).
    pub fn start(config: &Path, log: &Path, args: &[&str]) -> anyhow::Result<XdsProcess> {
        XdsProcess::spawn(config, log, args, None)
    }

    /// Like [`XdsProcess::start`], with at most `open_files` file descriptors (soft and
    /// hard limit, as `ulimit -n` sets them).
    pub fn start_with_open_files(
        config: &Path,
        log: &Path,
        args: &[&str],
        open_files: u64,
    ) -> anyhow::Result<XdsProcess> {
        XdsProcess::spawn(config, log, args, Some(&format!("ulimit -n {open_files}")))
    }

    fn spawn(
        config: &Path,
        log: &Path,
        args: &[&str],
        prelude: Option<&str>,
    ) -> anyhow::Result<XdsProcess> {
        let bin = crate::workspace_binary("shadowmesh-xds")?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = match prelude {
            // `exec` keeps the pid: signals reach the binary, not a shell. (Limits carry
            // over the exec.)
            Some(prelude) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prelude} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        Ok(XdsProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Sets the process's file-size limit (`prlimit --fsize`, the soft limit, which can be
    /// raised again without privileges; `None`: unlimited).
    pub fn limit_file_size(&self, bytes: Option<u64>) -> anyhow::Result<()> {
        let limit = bytes.map_or("unlimited".to_string(), |b| b.to_string());
        let status = Command::new("prlimit")
            .arg(format!("--pid={}", self.child.id()))
            .arg(format!("--fsize={limit}:"))
            .status()?;
        anyhow::ensure!(status.success(), "prlimit --fsize={limit} failed");
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `SIGTERM` (what Kubernetes sends before it kills a pod) and waits up to
    /// `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.send_sigterm()?;
        self.wait_exit(timeout)
    }

    /// Sends `SIGTERM` without waiting.
    pub fn send_sigterm(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for XdsProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A free loopback address (bound then released: another process could take it, which on
/// an otherwise idle loopback it does not).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral loopback port")
}

/// Polls `f` every 50 ms until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client for the control plane's API that presents a bearer token.
#[derive(Clone)]
pub struct ApiClient {
    http: SocketAddr,
    token: Option<String>,
    client: loadgen::HttpClient,
}

impl ApiClient {
    /// A client of the API at `http`, presenting `token` (if any) on every request.
    pub fn new(http: SocketAddr, token: Option<&str>) -> ApiClient {
        ApiClient {
            http,
            token: token.map(str::to_string),
            client: loadgen::client(),
        }
    }

    /// One request: (status, body), or the transport error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let headers: Vec<(String, String)> = self
            .token
            .iter()
            .map(|t| ("authorization".to_string(), format!("Bearer {t}")))
            .collect();
        loadgen::request_with(&self.client, method, self.http, path, body, &headers).await
    }

    /// `GET path` parsed as JSON, if it answered 200.
    pub async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        match self.call("GET", path, None).await {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }
}

/// A fresh scratch directory for one test (removed first if a run left one).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadowmesh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// One control plane's directory, listeners and files, for tests of the binary.
pub struct PlaneSetup {
    /// Its scratch directory.
    pub dir: PathBuf,
    /// The HTTP listener.
    pub http: SocketAddr,
    /// The ADS listener.
    pub ads: SocketAddr,
    /// The configuration file.
    pub config: PathBuf,
    /// The log (stderr).
    pub log: PathBuf,
}

impl PlaneSetup {
    /// A configuration with the two listeners on free loopback ports and `extra` appended.
    pub fn new(name: &str, extra: &str) -> PlaneSetup {
        let dir = scratch(name);
        let (http, ads) = (free_addr(), free_addr());
        let config = dir.join("xds.toml");
        std::fs::write(
            &config,
            format!("http_listen = \"{http}\"\nads_listen = \"{ads}\"\n{extra}"),
        )
        .expect("the configuration file");
        PlaneSetup {
            log: dir.join("xds.log"),
            dir,
            http,
            ads,
            config,
        }
    }

    /// Writes `text` as the tokens file and returns its path.
    pub fn tokens(&self, text: &str) -> PathBuf {
        let path = self.dir.join("tokens");
        std::fs::write(&path, text).expect("the tokens file");
        path
    }

    /// Starts the binary on this configuration with `args`.
    pub fn start(&self, args: &[&str]) -> XdsProcess {
        XdsProcess::start(&self.config, &self.log, args).expect("shadowmesh-xds starts")
    }

    /// An API client presenting `token`.
    pub fn client(&self, token: Option<&str>) -> ApiClient {
        ApiClient::new(self.http, token)
    }
}

/// Waits until the API answers `/healthz`.
pub async fn wait_up(api: &ApiClient) {
    eventually(
        "the control plane's HTTP API",
        Duration::from_secs(30),
        async || matches!(api.call("GET", "/healthz", None).await, Ok((200, _))).then_some(()),
    )
    .await;
}

/// Now, Unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A one-second telemetry report of `proxy` about `service` (100 requests, calm).
pub fn telemetry_report(proxy: &str, seq: u64, end_ms: u64, service: &str) -> serde_json::Value {
    let side = |cluster: String, requests: u64| {
        let ms = |v: f64| if requests > 0 { v } else { 0.0 };
        serde_json::json!({
            "cluster": cluster, "requests": requests, "in_flight": u64::from(requests > 0),
            "load_score": ms(0.5),
            "latency_ms": {"count": requests, "mean": ms(5.0), "p50": ms(5.0), "p90": ms(6.0),
                           "p99": ms(7.0), "max": ms(8.0)},
            "orca_utilization": null, "orca_reports": 0, "orca_malformed": 0
        })
    };
    serde_json::json!({
        "schema": shadowmesh_wire::TELEMETRY_SCHEMA,
        "proxy": proxy, "seq": seq,
        "window_start_ms": end_ms - 1_000, "window_end_ms": end_ms,
        "services": [{
            "service": service, "requests": 100, "redirected": 0, "fallbacks": 0,
            "state": "normal", "redirect_share": 0.0,
            "primary": side(format!("{service}_primary"), 100),
            "shadow": side(format!("{service}_shadow"), 0),
        }]
    })
}
