//! Pool providers: how a spare is brought up and down. One trait, two providers:
//!
//! * [`StaticProvider`] — the spares already run (listed in the configuration); activating
//!   one is warming it up (the probe) and joining the shadow cluster, releasing it leaves
//!   it running.
//! * [`ProcessProvider`] — the control plane starts and stops spare processes from a
//!   command template (the default the demo uses). Processes outlive the control plane:
//!   after a restart it adopts the ones still running (pids are kept in the state store),
//!   so shadows are not released mid-surge.
//!
//! **Kubernetes** maps onto the same trait: a warm pool is a Deployment (or one per
//! spare class) scaled to zero; `start` patches its replica count up (or binds one pod of
//! an already-running pool with a label the shadow Service selects), `stop` scales it down;
//! the warm-up probe becomes the pod's readiness as published in its EndpointSlices (ready
//! and serving), and `adopt` is "the pod still exists and is ready". The spare's address
//! is the pod IP from the EndpointSlice instead of a configured one.

use crate::store::StateStore;
use shadowmesh_provisioner::SpareSpec;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

/// A boxed future (providers are used behind `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a provider could not start or stop a spare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

/// Brings spares up and down.
pub trait PoolProvider: Send + Sync {
    /// `static` or `process` (logs and metrics).
    fn kind(&self) -> &'static str;
    /// Starts `spare`; returns once it is started (being warm is the probe's job).
    fn start<'a>(&'a self, spare: &'a SpareSpec) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Stops `spare`.
    fn stop<'a>(&'a self, spare: &'a SpareSpec) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// After a restart of the control plane: whether `spare`, started by an earlier run,
    /// is still running (and is now this run's to stop).
    fn adopt(&self, spare: &SpareSpec) -> bool;
    /// The spare's process id, where the provider has one.
    fn pid(&self, _spare: &SpareSpec) -> Option<u32> {
        None
    }
}

/// Spares that run by themselves.
#[derive(Debug, Default)]
pub struct StaticProvider;

impl PoolProvider for StaticProvider {
    fn kind(&self) -> &'static str {
        "static"
    }
    fn start<'a>(&'a self, _spare: &'a SpareSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn stop<'a>(&'a self, _spare: &'a SpareSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn adopt(&self, _spare: &SpareSpec) -> bool {
        true
    }
}

/// Store document with the pids of running spare processes.
const PIDS_DOCUMENT: &str = "process_pool_pids";

/// Spares as processes started from a command template. Placeholders in any argument:
/// `{id}`, `{address}`, `{host}`, `{port}`, `{warmup_ms}`, `{capacity}`,
/// `{max_in_flight}`, `{class}`.
pub struct ProcessProvider {
    command: Vec<String>,
    pids: Mutex<BTreeMap<String, u32>>,
    store: Option<StateStore>,
}

impl std::fmt::Debug for ProcessProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessProvider")
            .field("command", &self.command)
            .finish()
    }
}

/// How long a spare process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl ProcessProvider {
    /// A provider running `command` (program and arguments, with placeholders), keeping
    /// pids in `store` when given (for adoption after a restart).
    pub fn new(command: Vec<String>, store: Option<StateStore>) -> ProcessProvider {
        let pids = store
            .as_ref()
            .and_then(|s| {
                s.document::<BTreeMap<String, u32>>(PIDS_DOCUMENT)
                    .ok()
                    .flatten()
            })
            .unwrap_or_default();
        ProcessProvider {
            command,
            pids: Mutex::new(pids),
            store,
        }
    }

    /// The command line for `spare`.
    pub fn argv(&self, spare: &SpareSpec) -> Vec<String> {
        let (host, port) = spare
            .address
            .rsplit_once(':')
            .unwrap_or((spare.address.as_str(), ""));
        let warmup_ms = ((spare.warmup_secs * 1000.0).round() as u64).to_string();
        self.command
            .iter()
            .map(|a| {
                a.replace("{id}", &spare.id)
                    .replace("{address}", &spare.address)
                    .replace("{host}", host)
                    .replace("{port}", port)
                    .replace("{warmup_ms}", &warmup_ms)
                    .replace("{capacity}", &spare.capacity.to_string())
                    .replace("{max_in_flight}", &spare.max_in_flight.to_string())
                    .replace("{class}", &spare.class)
            })
            .collect()
    }

    fn save(&self, pids: &BTreeMap<String, u32>) {
        if let Some(store) = &self.store
            && let Err(e) = store.save_document(PIDS_DOCUMENT, pids)
        {
            tracing::error!(error = %e, "cannot store spare pids; a restart will not adopt them");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u32>> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn alive(pid: u32) -> bool {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, None).is_ok()
        // A zombie still answers kill(0); it is not running.
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true)
}

impl PoolProvider for ProcessProvider {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn start<'a>(&'a self, spare: &'a SpareSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let argv = self.argv(spare);
            let Some((program, args)) = argv.split_first() else {
                return Err(ProviderError("the command template is empty".into()));
            };
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                // Spares outlive the control plane: a restarted one adopts them.
                .kill_on_drop(false)
                .spawn()
                .map_err(|e| ProviderError(format!("cannot start {program}: {e}")))?;
            let pid = child
                .id()
                .ok_or_else(|| ProviderError("the spare exited at once".into()))?;
            // Reap it whenever it exits, so it never lingers as a zombie.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            let mut pids = self.lock();
            pids.insert(spare.id.clone(), pid);
            self.save(&pids);
            tracing::info!(spare = %spare.id, pid, "spare process started");
            Ok(())
        })
    }

    fn stop<'a>(&'a self, spare: &'a SpareSpec) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let Some(pid) = self.lock().get(&spare.id).copied() else {
                return Ok(());
            };
            let target = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while alive(pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if alive(pid) {
                let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
            }
            let mut pids = self.lock();
            pids.remove(&spare.id);
            self.save(&pids);
            tracing::info!(spare = %spare.id, pid, "spare process stopped");
            Ok(())
        })
    }

    fn adopt(&self, spare: &SpareSpec) -> bool {
        let mut pids = self.lock();
        match pids.get(&spare.id) {
            Some(pid) if alive(*pid) => true,
            Some(_) => {
                pids.remove(&spare.id);
                self.save(&pids);
                false
            }
            None => false,
        }
    }

    fn pid(&self, spare: &SpareSpec) -> Option<u32> {
        self.lock().get(&spare.id).copied()
    }
}
