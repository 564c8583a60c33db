//! The real `shadowmesh-xds` binary with a state store that cannot write: its disk full, or
//! a commit failing halfway. Every refused write changes nothing — not the answers, not
//! what a restart finds — `/readyz` says so while `/healthz` stays live, and the store takes
//! writes again once space returns, without a restart. (Issue 21, rows 11 and 12.)
//!
//! The full disk is a 4 MiB tmpfs mounted for the test (the tests run as root, as CI does);
//! a commit fails halfway when the process's file-size limit stops the store's file from
//! growing (`EFBIG`, as `ENOSPC` would; the binary blocks `SIGXFSZ`).

use shadowmesh_testkit::xds_process::{ApiClient, PlaneSetup, eventually, wait_up};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const OPERATOR: &str = "op-store-5b1e90c2d7";

/// A small tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} (the test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills the disk with a ballast file until no byte more fits.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // tmpfs allocates whole pages: once a page-sized write fails, less than a page is free.
        while f.write(&block[..4096]).is_ok_and(|n| n > 0) {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

async fn call(api: &ApiClient, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    api.call(method, path, body).await.expect("an answer")
}

fn service(address: &str) -> String {
    format!(r#"{{"primary": [{{"address": "{address}"}}]}}"#)
}

/// Answers to writes of one of each kind, all taken.
const ACCEPTED: [u16; 3] = [200, 204, 201];

/// One write of each kind named `name`: the service (primary on `port`), its capacity (40)
/// and an event of that kind. Their statuses.
async fn writes(api: &ApiClient, name: &str, port: u16) -> [u16; 3] {
    let service = call(
        api,
        "PUT",
        &format!("/v1/services/{name}"),
        Some(&service(&format!("127.0.0.1:{port}"))),
    )
    .await;
    let capacity = call(
        api,
        "PUT",
        &format!("/v1/capacity/{name}"),
        Some(r#"{"capacity": 40}"#),
    )
    .await;
    let event = call(api, "POST", "/v1/events", Some(&event(name))).await;
    [service.0, capacity.0, event.0]
}

/// A service of 3,000 endpoints from port `first`: stored, ~150 KB of JSON.
fn big_service(first: u16) -> String {
    let endpoints: Vec<String> = (0..3_000)
        .map(|i| format!(r#"{{"address": "127.0.0.1:{}"}}"#, first + i))
        .collect();
    format!(r#"{{"primary": [{}]}}"#, endpoints.join(","))
}

fn event(kind: &str) -> String {
    format!(r#"{{"kind": "{kind}", "start": 4102444800, "duration_secs": 3600, "uplift": 2.0}}"#)
}

/// The names of the services the API lists.
async fn service_names(api: &ApiClient) -> Vec<String> {
    let list = api
        .get_json("/v1/services")
        .await
        .expect("the service list");
    let mut names: Vec<String> = match list {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect(),
        other => panic!("{other}"),
    };
    names.sort();
    names
}

/// The kinds of the events in the calendar.
async fn event_names(api: &ApiClient) -> Vec<String> {
    let list = api.get_json("/v1/events").await.expect("the calendar");
    let mut names: Vec<String> = list
        .as_array()
        .expect("a list of events")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_changes_nothing_and_the_store_recovers_when_space_returns() {
    let setup = PlaneSetup::new("store-full", "");
    let tokens = setup.tokens(&format!("operator {OPERATOR}\n"));
    let state = setup.dir.join("state");
    let disk = SmallDisk::mount(&state, "4m");
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--tokens-file",
        tokens.to_str().unwrap(),
    ];
    let mut plane = setup.start(&args);
    let api = setup.client(Some(OPERATOR));
    let probe = setup.client(None);
    wait_up(&probe).await;
    assert_eq!(call(&probe, "GET", "/readyz", None).await.0, 200);

    // Before the disk fills: accepted writes.
    assert_eq!(writes(&api, "alpha", 9001).await, ACCEPTED);

    // Nearly full (half a MiB free, room for a small commit): refused before it starts.
    let ballast = disk.fill();
    {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&ballast)
            .unwrap();
        let size = file.metadata().unwrap().len();
        file.set_len(size - (512 << 10)).unwrap();
        // Closed here: an open ballast would keep its pages after it is removed.
    }
    let (status, body) = call(
        &api,
        "PUT",
        "/v1/services/beta",
        Some(&service("127.0.0.1:9002")),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("bytes free"), "{body}");
    // Full: every write refused as unavailable (503), naming the store, and nothing changed.
    disk.fill();
    assert_eq!(writes(&api, "beta", 9002).await, [503; 3]);
    let (status, body) = call(&api, "DELETE", "/v1/services/alpha", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state store"), "{body}");
    assert_eq!(service_names(&api).await, ["alpha"]);
    assert_eq!(call(&api, "GET", "/v1/capacity/beta", None).await.0, 404);
    assert_eq!(event_names(&api).await, ["alpha"]);
    // Readiness says why; liveness is unaffected (ADS goes on serving from memory).
    let (status, body) = call(&probe, "GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["field"], "state_dir", "{body}");
    assert!(
        error["message"].as_str().unwrap().contains("bytes free"),
        "{body}"
    );
    assert_eq!(call(&probe, "GET", "/healthz", None).await.0, 200);

    // Space returns: ready again, and writes are taken — without a restart.
    std::fs::remove_file(&ballast).unwrap();
    eventually("/readyz ready again", Duration::from_secs(10), async || {
        (call(&probe, "GET", "/readyz", None).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(writes(&api, "delta", 9004).await, ACCEPTED);

    // A restart finds exactly the writes that were acknowledged.
    plane.kill_9();
    let _plane = setup.start(&args);
    wait_up(&probe).await;
    assert_eq!(service_names(&api).await, ["alpha", "delta"]);
    assert_eq!(call(&api, "GET", "/v1/capacity/beta", None).await.0, 404);
    let capacity = api
        .get_json("/v1/capacity/delta")
        .await
        .expect("delta's capacity");
    assert_eq!(capacity["capacity"], 40.0);
    assert_eq!(event_names(&api).await, ["alpha", "delta"]);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_halfway_changes_nothing_and_the_next_write_is_taken() {
    let setup = PlaneSetup::new("store-efbig", "");
    let tokens = setup.tokens(&format!("operator {OPERATOR}\n"));
    let state = setup.dir.join("state");
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--tokens-file",
        tokens.to_str().unwrap(),
    ];
    let mut plane = setup.start(&args);
    let api = setup.client(Some(OPERATOR));
    let probe = setup.client(None);
    wait_up(&api).await;
    let put = |path: &'static str, body: String| {
        let api = api.clone();
        async move { call(&api, "PUT", path, Some(&body)).await }
    };
    assert_eq!(put("/v1/services/alpha", big_service(10_000)).await.0, 200);

    // The store's file may not grow (a file-size limit, as `ulimit -f` sets; the process
    // blocks SIGXFSZ, so it is an error, not a kill): a write larger than the file's free
    // pages fails in its commit, as on a disk that filled up meanwhile.
    let file = state.join(shadowmesh_xds::store::STORE_FILE);
    let size = std::fs::metadata(&file).unwrap().len();
    plane.limit_file_size(Some(size)).unwrap();
    let (status, body) = put("/v1/services/beta", big_service(20_000)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("File too large"), "{body}");
    assert!(plane.exited().is_none(), "the process died of the limit");
    assert_eq!(service_names(&api).await, ["alpha"]);
    // Not ready while the stored services cannot be brought in line, however often asked
    // (a small probe write would fit; the registry's whole rewrite does not).
    for _ in 0..20 {
        let (status, body) = call(&probe, "GET", "/readyz", None).await;
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The file may grow again: ready, and the next writes are taken, without a restart.
    plane.limit_file_size(None).unwrap();
    eventually("/readyz ready again", Duration::from_secs(10), async || {
        (call(&probe, "GET", "/readyz", None).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(put("/v1/services/delta", big_service(30_000)).await.0, 200);
    assert_eq!(
        put("/v1/capacity/delta", r#"{"capacity": 40}"#.into())
            .await
            .0,
        204
    );
    assert_eq!(service_names(&api).await, ["alpha", "delta"]);

    // A restart finds what was acknowledged, and not the failed commit.
    plane.kill_9();
    let _plane = setup.start(&args);
    wait_up(&api).await;
    assert_eq!(service_names(&api).await, ["alpha", "delta"]);
    let delta = api.get_json("/v1/services/delta").await.unwrap();
    assert_eq!(delta["primary"].as_array().map(Vec::len), Some(3_000));
    assert_eq!(call(&api, "GET", "/v1/capacity/delta", None).await.0, 200);
}
