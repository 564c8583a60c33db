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
        XdsProcess::spawn(config, log, args, Some(open_files))
    }

    fn spawn(
        config: &Path,
        log: &Path,
        args: &[&str],
        open_files: Option<u64>,
    ) -> anyhow::Result<XdsProcess> {
        let bin = crate::workspace_binary("shadowmesh-xds")?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = match open_files {
            // `exec` keeps the pid: signals reach the binary, not a shell.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
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
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no exit within {timeout:?} of SIGTERM"
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
