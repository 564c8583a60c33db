//! The hostile mix that runs beside the ingest soak: forged identities, reports that try to
//! push a proxy's replay window past the clock, a relay flood, clients that pipeline pulls
//! and never read, silent ADS sockets — and the honest clients that must never be refused
//! meanwhile: a publisher and a subscriber of session state (every acknowledged write must
//! be found at the end) and an ADS client that must be served.

use serde::Serialize;
use shadowmesh_testkit::ads_client::{self, SimProxy};
use shadowmesh_testkit::xds_process::ApiClient;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The tokens the mix uses, beside the soak's own.
pub const FORGER: &str = "tm-soak-forger-0a9d71c3";
/// The honest publisher (edge of `cart`).
pub const EDGE: &str = "tm-soak-edge-58c2e19b";
/// The honest subscriber (shadow side of `cart`).
pub const SHADOW: &str = "tm-soak-shadow-3f7a0d26";
/// The flood's publisher (of service `flood`, a legitimate but abusive tenant).
pub const FLOOD: &str = "tm-soak-flood-c61e84a0";

/// Token lines for the tokens file.
pub fn token_lines() -> String {
    format!(
        "telemetry {FORGER} proxies=forger-* fronts=other serves=other\n\
         telemetry {EDGE} proxies=soak-edge fronts=cart\n\
         telemetry {SHADOW} proxies=soak-shadow serves=cart\n\
         telemetry {FLOOD} proxies=flooder fronts=flood serves=flood\n"
    )
}

/// What the mix did and what the honest clients saw.
#[derive(Debug, Default, Serialize)]
pub struct HostileReport {
    /// Reports as another proxy, under the forger's token: all must be 403.
    pub forged_sent: u64,
    /// Of them, answered 403.
    pub forged_refused: u64,
    /// Reports numbered past the server's clock: all must be 400.
    pub pushed_sent: u64,
    /// Of them, answered 400.
    pub pushed_refused: u64,
    /// Flood publishes (1.8 MB each) accepted.
    pub flood_publishes: u64,
    /// Connections that pipelined pulls and never read, checked after 20 s.
    pub slow_readers: u64,
    /// Of them, closed by the server by then.
    pub slow_readers_closed: u64,
    /// Silent ADS connections opened.
    pub idle_ads: u64,
    /// Of them, closed by the server.
    pub idle_ads_closed: u64,
    /// Honest publishes (and their answers other than 200).
    pub honest_publishes: u64,
    /// Honest publishes or pulls refused (must be 0).
    pub honest_refused: u64,
    /// Honest session versions acknowledged by the relay.
    pub honest_acknowledged: u64,
    /// Acknowledged versions not found at the end (must be 0).
    pub honest_lost: u64,
    /// Honest ADS connections tried.
    pub ads_checks: u64,
    /// Of them, not served a response within 5 s (must be 0).
    pub ads_failures: u64,
    /// The relay's bytes at the end.
    pub relay_bytes: u64,
}

impl HostileReport {
    /// Whether every attack was refused and every honest client served.
    pub fn passed(&self) -> bool {
        self.forged_refused == self.forged_sent
            && self.pushed_refused == self.pushed_sent
            && self.honest_refused == 0
            && self.honest_lost == 0
            && self.honest_acknowledged > 0
            && self.ads_failures == 0
            && self.slow_readers_closed == self.slow_readers
            // The 16 held at the end have not had their idle deadline yet.
            && self.idle_ads_closed + IDLE_ADS_HELD >= self.idle_ads
            && self.idle_ads > IDLE_ADS_HELD
    }
}

/// The running mix.
pub struct Hostile {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<HostileReport>>,
    acked: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    edge: ApiClient,
}

const SESSIONS: usize = 200;

/// Silent ADS sockets held at once.
const IDLE_ADS_HELD: u64 = 16;

fn state_publish(
    publisher: &str,
    service: &str,
    deltas: serde_json::Value,
    watch: &[String],
) -> String {
    serde_json::json!({
        "schema": shadowmesh_wire::STATE_SCHEMA, "publisher": publisher, "service": service,
        "epoch": 0, "incarnation": 1, "deltas": deltas, "watch": watch,
    })
    .to_string()
}

impl Hostile {
    /// Starts the mix against the plane at `http` (tokens above) and `ads`.
    pub fn start(
        http: SocketAddr,
        ads: SocketAddr,
        report_body: fn(u64, u64, u64) -> String,
    ) -> Hostile {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(HostileReport::default()));
        let acked = Arc::new(Mutex::new(vec![0u64; SESSIONS]));
        let mut tasks = Vec::new();
        let running = {
            let stop = stop.clone();
            move || !stop.load(Ordering::Relaxed)
        };
        // Forged identities and pushed numbers, 5 a second each.
        {
            let (forger, own) = (
                ApiClient::new(http, Some(FORGER)),
                ApiClient::new(http, Some(super::TELEMETRY)),
            );
            let (report, running) = (report.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while running() {
                    n += 1;
                    let now = super::now_ms();
                    let forged = report_body(n % 1_000, now, now);
                    let a = forger.call("POST", "/v1/telemetry", Some(&forged)).await;
                    let pushed = report_body(n % 1_000, u64::MAX - n, now);
                    let b = own.call("POST", "/v1/telemetry", Some(&pushed)).await;
                    {
                        let mut r = report.lock().unwrap();
                        r.forged_sent += 1;
                        r.forged_refused += u64::from(matches!(a, Ok((403, _))));
                        r.pushed_sent += 1;
                        r.pushed_refused += u64::from(matches!(b, Ok((400, _))));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        // The flood: 1.8 MB of sessions for `flood` four times a second.
        {
            let flood = ApiClient::new(http, Some(FLOOD));
            let (report, running) = (report.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let value = "x".repeat(15 << 10);
                let mut round = 0u64;
                while running() {
                    round += 1;
                    let deltas: Vec<_> = (0..120)
                        .map(|i| {
                            serde_json::json!({"session": format!("f{round}-{i}"), "version": 1,
                                                    "ops": [{"key": "cart", "value": value}]})
                        })
                        .collect();
                    let body = state_publish("flooder", "flood", deltas.into(), &[]);
                    if let Ok((200, _)) = flood.call("POST", "/v1/state/publish", Some(&body)).await
                    {
                        report.lock().unwrap().flood_publishes += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }));
        }
        // Slow readers: every 5 s, 8 connections pipelining 20 full pulls of `flood`, held
        // (never read) for 20 s.
        {
            let (report, running) = (report.clone(), running.clone());
            tasks.push(tokio::task::spawn_blocking(move || {
                let body = serde_json::json!({"schema": shadowmesh_wire::STATE_SCHEMA,
                    "subscriber": "flooder", "service": "flood", "epoch": 0, "cursor": 0,
                    "wait_ms": 0})
                .to_string();
                let request = format!(
                    "POST /v1/state/pull HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {FLOOD}\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut held: std::collections::VecDeque<(
                    std::time::Instant,
                    std::net::TcpStream,
                )> = Default::default();
                while running() {
                    for _ in 0..8 {
                        if let Ok(s) = std::net::TcpStream::connect(http) {
                            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                            for _ in 0..20 {
                                if (&s).write_all(request.as_bytes()).is_err() {
                                    break;
                                }
                            }
                            held.push_back((std::time::Instant::now(), s));
                        }
                    }
                    while held
                        .front()
                        .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(20))
                    {
                        let (_, s) = held.pop_front().unwrap();
                        let closed = drained_to_end(&s);
                        let mut r = report.lock().unwrap();
                        r.slow_readers += 1;
                        r.slow_readers_closed += u64::from(closed);
                    }
                    std::thread::sleep(Duration::from_secs(5));
                }
            }));
        }
        // Silent ADS sockets: IDLE_ADS_HELD held, each replaced when the server closes it.
        {
            let (report, running) = (report.clone(), running.clone());
            tasks.push(tokio::task::spawn_blocking(move || {
                let mut held: Vec<std::net::TcpStream> = Vec::new();
                while running() {
                    held.retain(|s| {
                        let closed = closed_by_peer(s);
                        if closed {
                            report.lock().unwrap().idle_ads_closed += 1;
                        }
                        !closed
                    });
                    while (held.len() as u64) < IDLE_ADS_HELD {
                        match std::net::TcpStream::connect(ads) {
                            Ok(s) => {
                                report.lock().unwrap().idle_ads += 1;
                                held.push(s);
                            }
                            Err(_) => break,
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }));
        }
        // Honest ADS: every 10 s a new connection must be served within 5 s.
        {
            let (report, running) = (report.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while running() {
                    n += 1;
                    let served = async {
                        let channel =
                            tonic::transport::Channel::from_shared(format!("http://{ads}"))
                                .ok()?
                                .connect()
                                .await
                                .ok()?;
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                        let proxy = SimProxy {
                            index: 0,
                            node_id: format!("soak-ads-{n}"),
                            group: "edge".into(),
                            delta: false,
                        };
                        let task = tokio::spawn(ads_client::run(proxy, channel, tx));
                        let got = rx.recv().await;
                        task.abort();
                        got
                    };
                    let ok = tokio::time::timeout(Duration::from_secs(5), served)
                        .await
                        .ok()
                        .flatten()
                        .is_some();
                    {
                        let mut r = report.lock().unwrap();
                        r.ads_checks += 1;
                        r.ads_failures += u64::from(!ok);
                    }
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }));
        }
        // The honest subscriber: long polls, applying everything.
        {
            let shadow = ApiClient::new(http, Some(SHADOW));
            let (report, running) = (report.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let (mut epoch, mut cursor, mut page_after) = (0u64, 0u64, None::<String>);
                while running() {
                    let mut m = serde_json::json!({"schema": shadowmesh_wire::STATE_SCHEMA,
                        "subscriber": "soak-shadow", "service": "cart", "epoch": epoch,
                        "cursor": cursor, "wait_ms": 500});
                    if let Some(after) = &page_after {
                        m["page_after"] = after.clone().into();
                    }
                    match shadow
                        .call("POST", "/v1/state/pull", Some(&m.to_string()))
                        .await
                    {
                        Ok((200, text)) => {
                            if let Ok(a) = serde_json::from_str::<serde_json::Value>(&text) {
                                epoch = a["epoch"].as_u64().unwrap_or(0);
                                cursor = a["cursor"].as_u64().unwrap_or(0);
                                page_after = a["more"].as_str().map(str::to_string);
                            }
                        }
                        _ => report.lock().unwrap().honest_refused += 1,
                    }
                }
            }));
        }
        // The honest publisher: one write of one of 200 sessions every 50 ms, watching it.
        let edge = ApiClient::new(http, Some(EDGE));
        {
            let (edge, report, acked, running) =
                (edge.clone(), report.clone(), acked.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let mut versions = vec![0u64; SESSIONS];
                let mut n = 0usize;
                while running() {
                    let i = n % SESSIONS;
                    n += 1;
                    let session = format!("h{i:03}");
                    let next = versions[i] + 1;
                    let delta = serde_json::json!([{"session": session, "version": next,
                        "ops": [{"key": "cart", "value": next.to_string()}]}]);
                    let body =
                        state_publish("soak-edge", "cart", delta, std::slice::from_ref(&session));
                    let answer = edge.call("POST", "/v1/state/publish", Some(&body)).await;
                    let resend = {
                        let mut r = report.lock().unwrap();
                        r.honest_publishes += 1;
                        match answer.ok().and_then(|(s, t)| (s == 200).then_some(t)) {
                            Some(text) => {
                                versions[i] = next;
                                let a: serde_json::Value =
                                    serde_json::from_str(&text).unwrap_or_default();
                                for pair in a["acked"].as_array().into_iter().flatten() {
                                    let v = pair[1].as_u64().unwrap_or(0);
                                    if pair[0] == session.as_str() && v > 0 {
                                        r.honest_acknowledged += 1;
                                        let mut acked = acked.lock().unwrap();
                                        acked[i] = acked[i].max(v);
                                    }
                                }
                                a["resync"].as_array().is_some_and(|r| !r.is_empty())
                            }
                            None => {
                                r.honest_refused += 1;
                                false
                            }
                        }
                    };
                    if resend {
                        // Forgotten at the relay (it should not be: another service
                        // floods): its whole state again.
                        let whole = serde_json::json!({"schema": shadowmesh_wire::STATE_SCHEMA,
                            "publisher": "soak-edge", "service": "cart", "epoch": 0,
                            "incarnation": 1, "snapshots": [{"session": session,
                            "version": next, "state": {"cart": next.to_string()}}]});
                        let _ = edge
                            .call("POST", "/v1/state/publish", Some(&whole.to_string()))
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
        Hostile {
            stop,
            report,
            acked,
            tasks,
            edge,
        }
    }

    /// Stops the mix and checks every acknowledged write.
    pub async fn finish(self, operator: &ApiClient) -> HostileReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        let acked = self.acked.lock().unwrap().clone();
        let mut report = std::mem::take(&mut *self.report.lock().unwrap());
        for (i, &v) in acked.iter().enumerate() {
            if v == 0 {
                continue;
            }
            let body = serde_json::json!({"schema": shadowmesh_wire::STATE_SCHEMA,
                "service": "cart", "session": format!("h{i:03}")});
            let found = self
                .edge
                .call("POST", "/v1/state/lookup", Some(&body.to_string()))
                .await
                .ok()
                .and_then(|(s, t)| (s == 200).then_some(t))
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|a| a["state"]["version"].as_u64());
            if found.is_none_or(|f| f < v) {
                report.honest_lost += 1;
            }
        }
        report.relay_bytes = operator
            .get_json("/v1/state")
            .await
            .and_then(|s| s["bytes"].as_u64())
            .unwrap_or(0);
        report
    }
}

/// Whether the peer closed `s`, after reading what it had sent (for 3 s at most).
fn drained_to_end(mut s: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 1 << 16];
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

/// Whether the peer closed `s`, which it never sent anything on (a read sees the end or a
/// reset).
fn closed_by_peer(s: &std::net::TcpStream) -> bool {
    // What the server sent (an HTTP/2 server preface is sent at once) is read and dropped:
    // only the end of the stream, or a reset, says it closed the connection.
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 4096];
    let closed = loop {
        match (&*s).read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    let _ = s.set_nonblocking(false);
    closed
}
