//! The `shadowmesh-xds` binary against a holder of *some* telemetry token and against
//! clients that never read: a token speaks only for its proxies and services (reports,
//! publishes, pulls, lookups), no report pushes a proxy's replay window past the server's
//! clock (Envoy's own reports go on being accepted), a foreign publisher cannot merge into a
//! session, a relay flood stays within its byte limits while another service keeps its
//! sessions, answers come in pages, and pipelining clients that never read are closed.
//! (Issue 21; the ADS and store rows are in `ads_hardening.rs` and `store_hardening.rs`, the
//! `--check` rows in `xds-server/tests/cli.rs`.)

use shadowmesh_testkit::envoy::{AdsBootstrap, EnvoyOptions, EnvoyProcess, FilterChoice};
use shadowmesh_testkit::xds_process::{
    ApiClient, PlaneSetup, eventually, now_ms, telemetry_report, wait_up,
};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const OPERATOR: &str = "op-4f1c9a7e2b6d8053";
/// Edge `edge-7`, in front of checkout's primary.
const EDGE_7: &str = "tm-edge7-91d2e7c4a5b8";
/// Another edge of checkout.
const EDGE_8: &str = "tm-edge8-0c3f5a1e77d2";
/// The shadow side of checkout.
const SHADOW_SIDE: &str = "tm-shadow-5e8b20d4c19a";
/// A token of another service's proxies: its holder is the attacker.
const MALLORY: &str = "tm-mallory-6a0d93f2e4c1";
/// The edge of the other service.
const SEARCH_EDGE: &str = "tm-search-2b7c4e9a0f31";

const TOKENS: &str = "operator op-4f1c9a7e2b6d8053
telemetry tm-edge7-91d2e7c4a5b8 proxies=edge-7 fronts=checkout
telemetry tm-edge8-0c3f5a1e77d2 proxies=edge-8 fronts=checkout
telemetry tm-shadow-5e8b20d4c19a proxies=shadow-* serves=checkout
telemetry tm-mallory-6a0d93f2e4c1 proxies=mallory-* fronts=search serves=search
telemetry tm-search-2b7c4e9a0f31 proxies=search-edge fronts=search
";

const CHECKOUT: &str = r#"
[[services]]
name = "checkout"
primary = [{ address = "127.0.0.1:9" }]
"#;

fn start(name: &str, extra: &str) -> (PlaneSetup, shadowmesh_testkit::xds_process::XdsProcess) {
    let setup = PlaneSetup::new(name, &format!("{CHECKOUT}{extra}"));
    let tokens = setup.tokens(TOKENS);
    let plane = setup.start(&["--tokens-file", tokens.to_str().unwrap()]);
    (setup, plane)
}

async fn post(api: &ApiClient, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = api
        .call("POST", path, Some(&body.to_string()))
        .await
        .expect("the API answers");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:.200}"));
    (status, value)
}

fn publish(
    publisher: &str,
    service: &str,
    incarnation: u64,
    deltas: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "schema": shadowmesh_wire::STATE_SCHEMA, "publisher": publisher, "service": service,
        "epoch": 0, "incarnation": incarnation, "deltas": deltas,
    })
}

fn delta(session: &str, version: u64, key: &str, value: &str) -> serde_json::Value {
    serde_json::json!({"session": session, "version": version,
                       "ops": [{"key": key, "value": value}]})
}

fn pull(subscriber: &str, service: &str, epoch: u64, cursor: u64) -> serde_json::Value {
    serde_json::json!({
        "schema": shadowmesh_wire::STATE_SCHEMA, "subscriber": subscriber, "service": service,
        "epoch": epoch, "cursor": cursor, "wait_ms": 0,
    })
}

fn lookup(service: &str, session: &str) -> serde_json::Value {
    serde_json::json!({"schema": shadowmesh_wire::STATE_SCHEMA, "service": service,
                       "session": session})
}

/// A shadow-side subscriber's pulls until it has applied everything: its cursor.
async fn catch_up(shadow: &ApiClient, subscriber: &str) -> (u64, u64) {
    let (mut epoch, mut cursor) = (0, 0);
    for _ in 0..100 {
        let (status, answer) = post(
            shadow,
            "/v1/state/pull",
            &pull(subscriber, "checkout", epoch, cursor),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let (e, c) = (
            answer["epoch"].as_u64().unwrap(),
            answer["cursor"].as_u64().unwrap(),
        );
        if (e, c) == (epoch, cursor) && answer["more"].is_null() {
            return (epoch, cursor);
        }
        assert!(
            answer["more"].is_null(),
            "a small relay answers in one page"
        );
        (epoch, cursor) = (e, c);
    }
    panic!("the subscriber never caught up");
}

fn acked(answer: &serde_json::Value, session: &str) -> u64 {
    answer["acked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a[0] == session)
        .map_or(0, |a| a[1].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_speaks_only_for_its_proxies_and_no_report_pushes_the_replay_window_past_the_clock()
{
    let (setup, _plane) = start("identity-reports", "");
    let (operator, edge7, mallory) = (
        setup.client(Some(OPERATOR)),
        setup.client(Some(EDGE_7)),
        setup.client(Some(MALLORY)),
    );
    wait_up(&operator).await;
    let now = now_ms();
    // Another proxy's token cannot report as edge-7, however it numbers the report.
    let (status, e) = post(
        &mallory,
        "/v1/telemetry",
        &telemetry_report("edge-7", u64::MAX, now, "checkout"),
    )
    .await;
    assert_eq!((status, e["field"].as_str()), (403, Some("proxy")), "{e}");
    // Nor report about a service it neither fronts nor serves, under its own name.
    let (status, e) = post(
        &mallory,
        "/v1/telemetry",
        &telemetry_report("mallory-1", now, now, "checkout"),
    )
    .await;
    assert_eq!(
        (status, e["field"].as_str()),
        (403, Some("services[0].service")),
        "{e}"
    );
    // edge-7's own token cannot push its window past the server's clock either.
    let (status, e) = post(
        &edge7,
        "/v1/telemetry",
        &telemetry_report("edge-7", u64::MAX, now, "checkout"),
    )
    .await;
    assert_eq!((status, e["field"].as_str()), (400, Some("seq")), "{e}");
    let (status, e) = post(
        &edge7,
        "/v1/telemetry",
        &telemetry_report("edge-7", now + 3_600_000, now, "checkout"),
    )
    .await;
    assert_eq!((status, e["field"].as_str()), (400, Some("seq")), "{e}");

    // Envoy, reporting as edge-7 with its token, is accepted from its first report on.
    let mut plugin = shadowmesh_testkit::atre_plugin(8);
    plugin["telemetry"]["token"] = EDGE_7.into();
    plugin["proxy_id"] = "edge-7".into();
    let yaml = AdsBootstrap {
        node_id: "edge-7".into(),
        node_cluster: "edge".into(),
        xds_port: setup.ads.port(),
        control_port: setup.http.port(),
        filter: FilterChoice::Atre(plugin.to_string()),
        delta: false,
        services: Vec::new(),
        tls: None,
    }
    .render()
    .unwrap();
    let _envoy = EnvoyProcess::launch(yaml, EnvoyOptions::default())
        .await
        .unwrap();
    let accepted = eventually(
        "three reports of Envoy's edge-7",
        Duration::from_secs(30),
        async || {
            let reports = operator.get_json("/v1/telemetry?last=1000").await?;
            let n = reports
                .as_array()?
                .iter()
                .filter(|r| r["proxy"] == "edge-7")
                .count();
            (n >= 3).then_some(n)
        },
    )
    .await;
    assert!(accepted >= 3);
    let refusals = operator.get_json("/v1/telemetry/refusals").await.unwrap();
    assert_eq!(refusals["edge-7"]["replayed"], 0, "{refusals}");
    assert_eq!(
        refusals["edge-7"]["skewed"], 2,
        "only the two pushed numbers: {refusals}"
    );
    let metrics = operator.call("GET", "/metrics", None).await.unwrap().1;
    assert!(
        metrics.contains("shadowmesh_http_telemetry_reports_total{outcome=\"forbidden\"} 2"),
        "forbidden reports are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_is_per_service_and_a_foreign_publisher_cannot_merge_into_a_session() {
    let (setup, _plane) = start("identity-relay", "");
    let (edge7, edge8, shadow, mallory) = (
        setup.client(Some(EDGE_7)),
        setup.client(Some(EDGE_8)),
        setup.client(Some(SHADOW_SIDE)),
        setup.client(Some(MALLORY)),
    );
    wait_up(&edge7).await;
    let (status, a) = post(
        &edge7,
        "/v1/state/publish",
        &publish(
            "edge-7",
            "checkout",
            1,
            serde_json::json!([delta("s1", 1, "cart", "book")]),
        ),
    )
    .await;
    assert_eq!(status, 200, "{a}");

    // Another service's token reads nothing of checkout: no lookup, no pull (under any
    // name), so it never becomes a subscriber whose cursor holds acknowledgements back.
    for (path, body, field) in [
        ("/v1/state/lookup", lookup("checkout", "s1"), "service"),
        (
            "/v1/state/pull",
            pull("mallory-1", "checkout", 0, 0),
            "service",
        ),
        (
            "/v1/state/pull",
            pull("shadow-1", "checkout", 0, 0),
            "subscriber",
        ),
    ] {
        let (status, e) = post(&mallory, path, &body).await;
        assert_eq!(
            (status, e["field"].as_str()),
            (403, Some(field)),
            "{path}: {e}"
        );
        assert!(
            !e.to_string().contains("book"),
            "{path} leaked the cart: {e}"
        );
    }
    // Nor does it publish for checkout.
    let mut forged = publish("mallory-1", "checkout", 999, serde_json::json!([]));
    forged["snapshots"] = serde_json::json!([{"session": "s1", "version": 1, "from_shadow": true,
        "state": {"cart": "book", "coupon": "FREE-100"}}]);
    let (status, e) = post(&mallory, "/v1/state/publish", &forged).await;
    assert_eq!((status, e["field"].as_str()), (403, Some("service")), "{e}");
    // An edge-side token cannot pull, a shadow-side one cannot publish.
    let (status, _) = post(&edge7, "/v1/state/pull", &pull("edge-7", "checkout", 0, 0)).await;
    assert_eq!(status, 403);
    let (status, _) = post(
        &shadow,
        "/v1/state/publish",
        &publish("shadow-1", "checkout", 1, serde_json::json!([])),
    )
    .await;
    assert_eq!(status, 403);

    // The real subscriber's acknowledgement is all that counts.
    catch_up(&shadow, "shadow-1").await;
    let mut watch = publish("edge-7", "checkout", 1, serde_json::json!([]));
    watch["watch"] = serde_json::json!(["s1"]);
    let (_, a) = post(&edge7, "/v1/state/publish", &watch).await;
    assert_eq!(
        acked(&a, "s1"),
        1,
        "acknowledged by the only subscriber: {a}"
    );

    // A second edge of checkout may write the session (a client may move between edges),
    // but its whole state never merges into the owner's: the owner's next change is asked
    // for its whole state, and that replaces the injected one.
    forged["publisher"] = "edge-8".into();
    let (status, a) = post(&edge8, "/v1/state/publish", &forged).await;
    assert_eq!(status, 200, "{a}");
    let (_, a) = post(
        &edge7,
        "/v1/state/publish",
        &publish(
            "edge-7",
            "checkout",
            1,
            serde_json::json!([delta("s1", 2, "cart", "book,pen")]),
        ),
    )
    .await;
    assert_eq!(a["resync"], serde_json::json!(["s1"]), "{a}");
    let mut whole = publish("edge-7", "checkout", 1, serde_json::json!([]));
    whole["snapshots"] =
        serde_json::json!([{"session": "s1", "version": 2, "state": {"cart": "book,pen"}}]);
    let (status, a) = post(&edge7, "/v1/state/publish", &whole).await;
    assert_eq!(status, 200, "{a}");
    let (_, answer) = post(&edge7, "/v1/state/lookup", &lookup("checkout", "s1")).await;
    assert_eq!(
        answer["state"]["state"],
        serde_json::json!({"cart": "book,pen"}),
        "{answer}"
    );
    assert_eq!(answer["state"]["from_shadow"], false, "{answer}");

    // Versions are bounded, never wrapped; the session is untouched by the refusal.
    for (deltas, field) in [
        (
            serde_json::json!([delta("s1", u64::MAX, "cart", "x")]),
            "deltas[0].version",
        ),
        (
            serde_json::json!([delta("s1", 1 << 40, "cart", "x")]),
            "deltas[0].version",
        ),
    ] {
        let (status, e) = post(
            &edge7,
            "/v1/state/publish",
            &publish("edge-7", "checkout", 1, deltas),
        )
        .await;
        assert_eq!((status, e["field"].as_str()), (400, Some(field)), "{e}");
    }
    let mut huge = publish("edge-7", "checkout", 1, serde_json::json!([]));
    huge["snapshots"] =
        serde_json::json!([{"session": "s1", "version": u64::MAX, "state": {"cart": "x"}}]);
    let (status, e) = post(&edge7, "/v1/state/publish", &huge).await;
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("snapshots[0].version")),
        "{e}"
    );
    let (_, answer) = post(&edge7, "/v1/state/lookup", &lookup("checkout", "s1")).await;
    assert_eq!(answer["state"]["state"]["cart"], "book,pen", "{answer}");
    // A lookup is checked like every message.
    let (status, e) = post(
        &edge7,
        "/v1/state/lookup",
        &lookup("checkout", &"k".repeat(1 << 20)),
    )
    .await;
    assert_eq!((status, e["field"].as_str()), (400, Some("session")), "{e}");
    let operator = setup.client(Some(OPERATOR));
    let (status, e) = post(
        &operator,
        "/v1/state/lookup",
        &lookup("no such/service", "s1"),
    )
    .await;
    assert_eq!((status, e["field"].as_str()), (400, Some("service")), "{e}");
}

/// Resident memory of process `pid` (bytes).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_flood_stays_within_its_byte_limits_and_answers_come_in_pages() {
    let (setup, plane) = start(
        "relay-flood",
        "[relay]\nmax_service_bytes = 8388608\nmax_bytes = 12582912\nmax_answer_bytes = 262144\n",
    );
    let (operator, edge7, search, shadow) = (
        setup.client(Some(OPERATOR)),
        setup.client(Some(EDGE_7)),
        setup.client(Some(SEARCH_EDGE)),
        setup.client(Some(SHADOW_SIDE)),
    );
    wait_up(&operator).await;
    // Another service's session, before the flood.
    let (status, _) = post(
        &search,
        "/v1/state/publish",
        &publish(
            "search-edge",
            "search",
            1,
            serde_json::json!([delta("q1", 1, "query", "shoes")]),
        ),
    )
    .await;
    assert_eq!(status, 200);
    // 60 publishes of 120 sessions × 15 KiB: 110 MB offered to one service.
    let value = "x".repeat(15 << 10);
    let flood = async |round: usize| {
        let deltas: Vec<_> = (0..120)
            .map(|i| delta(&format!("f{round}-{i}"), 1, "cart", &value))
            .collect();
        let (status, a) = post(
            &edge7,
            "/v1/state/publish",
            &publish("edge-7", "checkout", 1, deltas.into()),
        )
        .await;
        assert_eq!(status, 200, "{a:.200}");
    };
    for round in 0..10 {
        flood(round).await;
    }
    let warm = rss(plane.pid());
    for round in 10..60 {
        flood(round).await;
    }
    let after = rss(plane.pid());
    let stats = operator.get_json("/v1/state").await.unwrap();
    let bytes = stats["bytes"].as_u64().unwrap();
    assert!(bytes <= 12_582_912, "the relay holds {bytes} bytes");
    assert!(
        stats["services"]["checkout"]["bytes"].as_u64().unwrap() <= 8_388_608,
        "{stats:.300}"
    );
    assert!(stats["services"]["checkout"]["evicted"].as_u64().unwrap() > 0);
    assert_eq!(
        stats["services"]["search"]["sessions"], 1,
        "the other service keeps its session"
    );
    assert!(
        after <= warm + (48 << 20),
        "RSS grew from {} MB to {} MB after the warm-up",
        warm >> 20,
        after >> 20
    );
    // A subscriber starting from nothing gets the service in pages of at most 256 KiB.
    let (mut cursor, mut page_after, mut pages, mut sessions) = (0, None::<String>, 0, 0);
    let mut epoch = 0;
    loop {
        let mut message = pull("shadow-1", "checkout", epoch, cursor);
        if let Some(after) = &page_after {
            message["page_after"] = after.clone().into();
        }
        let (status, text) = shadow
            .call("POST", "/v1/state/pull", Some(&message.to_string()))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(
            text.len() <= 2 * 262_144,
            "an answer of {} bytes",
            text.len()
        );
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["full"], page_after.is_none(), "{:.200}", text);
        sessions += answer["snapshots"].as_array().unwrap().len();
        pages += 1;
        (epoch, cursor) = (
            answer["epoch"].as_u64().unwrap(),
            answer["cursor"].as_u64().unwrap(),
        );
        match answer["more"].as_str() {
            Some(after) => page_after = Some(after.to_string()),
            None => break,
        }
    }
    let held = stats["services"]["checkout"]["sessions"].as_u64().unwrap() as usize;
    assert_eq!(sessions, held, "every session in {pages} pages");
    assert!(pages > 10, "{pages} pages");
}

/// Opens a connection that sends `requests` pipelined and never reads.
fn non_reader(addr: std::net::SocketAddr, request: &[u8], requests: usize) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0;
    for _ in 0..requests {
        // The server stops reading once its answers back up: then so do we.
        if (&s).write_all(request).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent > 0);
    s
}

/// Reads until the server closes (true) or `timeout` (false): how many bytes came.
fn drained(mut s: &std::net::TcpStream, timeout: Duration) -> (bool, usize) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let (mut buf, mut total) = (vec![0u8; 1 << 16], 0);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (true, total),
            Ok(n) => total += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (true, total),
        }
    }
    (false, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_pipeline_and_never_read_are_closed_and_the_probe_answers_again() {
    let (setup, _plane) = start(
        "non-readers",
        "[http]\nmax_connections = 8\nwrite_timeout_secs = 2\nmax_requests_per_connection = 1000\n\
         [relay]\nmax_answer_bytes = 1048576\n",
    );
    let edge7 = setup.client(Some(EDGE_7));
    wait_up(&edge7).await;
    // About 1 MiB of sessions: every pull from nothing is answered with a 1 MiB page.
    let value = "x".repeat(15 << 10);
    let deltas: Vec<_> = (0..70)
        .map(|i| delta(&format!("s{i}"), 1, "cart", &value))
        .collect();
    let (status, _) = post(
        &edge7,
        "/v1/state/publish",
        &publish("edge-7", "checkout", 1, deltas.into()),
    )
    .await;
    assert_eq!(status, 200);
    // A probe on a new connection each time (a pooled one would need no slot), and no
    // client of ours keeps one open.
    drop(edge7);
    let probe = |addr| {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200").then_some(())
    };
    eventually("an idle server", Duration::from_secs(15), async || {
        probe(setup.http)
    })
    .await;
    let body = pull("shadow-1", "checkout", 0, 0).to_string();
    let request = format!(
        "POST /v1/state/pull HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {SHADOW_SIDE}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let held: Vec<_> = (0..8)
        .map(|_| non_reader(setup.http, request.as_bytes(), 40))
        .collect();
    let started = Instant::now();
    // The cap is full of non-readers; within the write deadline (and a margin for the
    // answers still being written) they are closed, and the probe answers again.
    assert!(
        probe(setup.http).is_none(),
        "the cap is full of non-readers"
    );
    eventually(
        "/healthz answered past the non-reading clients",
        Duration::from_secs(15),
        async || probe(setup.http),
    )
    .await;
    let probe_after = started.elapsed();
    // Every one was closed without reading (draining one would let its writes progress),
    // so once all slots are free again each sees the end after what was buffered.
    let open_connections = |addr| {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {OPERATOR}\r\nconnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
            .lines()
            .find_map(|l| l.strip_prefix("shadowmesh_http_connections_open "))?
            .trim()
            .parse::<f64>()
            .ok()
    };
    eventually(
        "every non-reader closed",
        Duration::from_secs(15),
        async || (open_connections(setup.http)? <= 1.0).then_some(()),
    )
    .await;
    for (i, s) in held.iter().enumerate() {
        let (closed, bytes) = drained(s, Duration::from_secs(10));
        assert!(
            closed,
            "non-reader {i} still open after {:?}",
            started.elapsed()
        );
        assert!(
            bytes < 40 << 20,
            "non-reader {i} was sent all its {bytes} bytes"
        );
    }
    eprintln!(
        "probe answered {probe_after:?} after the non-readers filled the cap; drained at {:?}",
        started.elapsed()
    );

    // A connection's last allowed request is answered with `connection: close`.
    let mut s = std::net::TcpStream::connect(setup.http).unwrap();
    let probe = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    for _ in 0..1_005 {
        s.write_all(probe).unwrap();
    }
    let (closed, _) = drained(&s, Duration::from_secs(10));
    assert!(closed, "the connection outlived its 1,000 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_s_own_refusals_answer_in_the_json_error_shape() {
    let (setup, _plane) = start("raw-path", "");
    wait_up(&setup.client(None)).await;
    for request in [
        &b"GET /v1/services/a>b HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"NOT-HTTP\r\n\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(setup.http).unwrap();
        s.write_all(request).unwrap();
        let mut answer = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("not the JSON error shape ({e}): {answer}"));
        assert!(
            v["message"].is_string() && v["field"].is_string(),
            "{answer}"
        );
    }
}
