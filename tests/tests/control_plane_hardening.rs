//! The `shadowmesh-xds` binary as an attacker and an unlucky operator meet it: tokens and
//! roles (with Envoy's filter reporting under its own token), forged and absurd input
//! refused while the process lives on, acknowledged writes surviving `kill -9` with Envoy
//! keeping the same snapshot, SIGTERM draining a request in flight, idle sockets neither
//! starving ADS nor staying open, and ADS over mutual TLS with real Envoy.

use shadowmesh_testkit::envoy::{
    AdsBootstrap, AdsClientTls, EnvoyOptions, EnvoyProcess, FilterChoice,
};
use shadowmesh_testkit::xds_process::{
    ApiClient, PlaneSetup, XdsProcess, eventually, free_addr, now_ms, telemetry_report, wait_up,
};
use std::time::Duration;

const OPERATOR: &str = "op-4f1c9a7e2b6d8053";
const TELEMETRY: &str = "tm-91d2e7c4a5b8f630";

type Setup = PlaneSetup;

async fn up(api: &ApiClient) {
    wait_up(api).await;
}

fn report(proxy: &str, seq: u64, end_ms: u64) -> serde_json::Value {
    telemetry_report(proxy, seq, end_ms, "checkout")
}

/// The value of a Prometheus sample whose line starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn envoy_with(yaml: String) -> EnvoyProcess {
    EnvoyProcess::launch(yaml, EnvoyOptions::default())
        .await
        .unwrap()
}

fn bootstrap(setup: &Setup, filter: FilterChoice) -> AdsBootstrap {
    AdsBootstrap {
        node_id: "edge-1".into(),
        node_cluster: "edge".into(),
        xds_port: setup.ads.port(),
        control_port: setup.http.port(),
        filter,
        delta: false,
        services: Vec::new(),
        tls: None,
    }
}

/// Whether Envoy's cluster `cluster` has a member at `address`.
fn envoy_has_member(envoy: &EnvoyProcess, cluster: &str, address: &str) -> bool {
    envoy
        .admin_get("/clusters")
        .map(|t| {
            t.lines()
                .any(|l| l.starts_with(&format!("{cluster}::{address}::")))
        })
        .unwrap_or(false)
}

const CHECKOUT: &str = r#"
[[services]]
name = "checkout"
primary = [{ address = "127.0.0.1:9" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_of_its_role_and_envoy_reports_with_its_own() {
    let setup = Setup::new("auth", CHECKOUT);
    let tokens = setup.dir.join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "# roles\noperator {OPERATOR}\ntelemetry {TELEMETRY} proxies=* fronts=* serves=*\n"
        ),
    )
    .unwrap();
    let plane = setup.start(&["--tokens-file", tokens.to_str().unwrap()]);
    let (anonymous, operator, telemetry) = (
        setup.client(None),
        setup.client(Some(OPERATOR)),
        setup.client(Some(TELEMETRY)),
    );
    up(&anonymous).await;
    let shadows = r#"{"endpoints":[{"address":"127.0.0.1:10"}],"warm":true,"max_in_flight":8}"#;
    for (client, method, path, body, want) in [
        (&anonymous, "GET", "/v1/services", None, 401),
        (
            &anonymous,
            "PUT",
            "/v1/services/checkout/shadows",
            Some(shadows),
            401,
        ),
        (&anonymous, "GET", "/metrics", None, 401),
        (&telemetry, "GET", "/v1/services", None, 403),
        (
            &telemetry,
            "PUT",
            "/v1/services/checkout/shadows",
            Some(shadows),
            403,
        ),
        (
            &telemetry,
            "PUT",
            "/v1/capacity/checkout",
            Some(r#"{"capacity":1}"#),
            403,
        ),
        (&operator, "GET", "/v1/services", None, 200),
        (
            &operator,
            "PUT",
            "/v1/services/checkout/shadows",
            Some(shadows),
            200,
        ),
    ] {
        let (status, answer) = client.call(method, path, body).await.unwrap();
        assert_eq!(status, want, "{method} {path}: {answer}");
        if status >= 400 {
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["field"], "authorization", "{answer}");
        }
    }

    // The filter's report carries the telemetry token: Envoy's reports are accepted, and
    // its readiness comes back. A second Envoy with the same node id (a restart) is not
    // mistaken for a replay of the first.
    let mut plugin = shadowmesh_testkit::atre_plugin(8);
    plugin["telemetry"]["token"] = TELEMETRY.into();
    let envoy_reports = async || {
        let reports = operator.get_json("/v1/telemetry?last=1000").await?;
        let n = reports
            .as_array()?
            .iter()
            .filter(|r| r["proxy"] == "edge-1")
            .count();
        Some(n)
    };
    for life in 1..=2 {
        let before = envoy_reports().await.unwrap();
        let envoy = envoy_with(
            bootstrap(&setup, FilterChoice::Atre(plugin.to_string()))
                .render()
                .unwrap(),
        )
        .await;
        eventually("reports from Envoy", Duration::from_secs(30), async || {
            (envoy_reports().await? >= before + 2).then_some(())
        })
        .await;
        let refusals = operator.get_json("/v1/telemetry/refusals").await.unwrap();
        assert!(
            refusals.get("edge-1").is_none(),
            "life {life}: Envoy's reports were refused: {refusals}"
        );
        drop(envoy);
    }
    let log = plane.log();
    assert!(
        !log.contains(OPERATOR) && !log.contains(TELEMETRY),
        "a token was logged"
    );
}

#[test]
fn an_open_api_on_a_non_loopback_address_is_refused_unless_overridden() {
    let setup = Setup::new("open", "");
    let port = free_addr().port();
    let listen = format!("0.0.0.0:{port}");
    let bin = shadowmesh_testkit::workspace_binary("shadowmesh-xds").unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(&bin)
            .args(["--check", "--config", setup.config.to_str().unwrap()])
            .args(["--http-listen", &listen])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--tokens-file"), "{err}");
    assert!(run(&["--allow-unauthenticated"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_absurd_input_is_refused_and_the_process_lives_on() {
    let setup = Setup::new("forged", CHECKOUT);
    let mut plane = setup.start(&[]);
    let api = setup.client(None);
    up(&api).await;
    let post = async |path: &str, body: &serde_json::Value| {
        api.call("POST", path, Some(&body.to_string()))
            .await
            .unwrap()
    };
    let now = now_ms();
    let mut huge = report("edge-1", 10, now);
    huge["services"][0]["requests"] = u64::MAX.into();
    let mut reversed = report("edge-1", 11, now);
    reversed["window_start_ms"] = (now + 5_000).into();
    let mut share = report("edge-1", 12, now);
    share["services"][0]["redirect_share"] = (-7.5e300).into();
    let mut negative = report("edge-1", 13, now);
    negative["services"][0]["primary"]["load_score"] = (-1.0).into();
    let mut bad_name = report("edge-1", 14, now);
    bad_name["services"][0]["service"] = "../etc".into();
    for (body, field) in [
        (report("edge-1", 1, now + 3_600_000), "window_end_ms"),
        (report("edge-1", 2, now - 3_600_000), "window_end_ms"),
        (huge, "services[0].requests"),
        (reversed, "window_start_ms"),
        (share, "services[0].redirect_share"),
        (negative, "services[0].primary.load_score"),
        (bad_name, "services[0].service"),
    ] {
        let (status, answer) = post("/v1/telemetry", &body).await;
        assert_eq!(status, 400, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["field"], field, "{answer}");
    }
    // One valid report counts once, however often it is replayed.
    let valid = report("edge-1", 20, now_ms());
    assert_eq!(post("/v1/telemetry", &valid).await.0, 200);
    for _ in 0..10 {
        assert_eq!(post("/v1/telemetry", &valid).await.0, 409);
    }
    let refusals = api.get_json("/v1/telemetry/refusals").await.unwrap();
    assert_eq!(refusals["edge-1"]["skewed"], 2, "{refusals}");
    assert_eq!(refusals["edge-1"]["replayed"], 10, "{refusals}");
    assert_eq!(refusals["edge-1"]["invalid"], 5, "{refusals}");
    let metrics = api.call("GET", "/metrics", None).await.unwrap().1;
    for (outcome, n) in [
        ("accepted", 1.0),
        ("replayed", 10.0),
        ("skewed", 2.0),
        ("invalid", 5.0),
    ] {
        let line = format!("shadowmesh_http_telemetry_reports_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&metrics, &line), Some(n), "{outcome}");
    }

    // Events that overflowed or poisoned the forecast before.
    for (event, field) in [
        (
            serde_json::json!({"kind": "sale", "start": 1_900_000_000i64, "duration_secs": i64::MAX}),
            "duration_secs",
        ),
        (
            serde_json::json!({"kind": "sale", "start": i64::MAX, "duration_secs": 60}),
            "start",
        ),
        (
            serde_json::json!({"kind": "sale", "start": 1_900_000_000i64, "duration_secs": 60, "uplift": 1e300}),
            "uplift",
        ),
    ] {
        let (status, answer) = post("/v1/events", &event).await;
        assert_eq!(status, 400, "{event}: {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["field"], field, "{answer}");
    }
    // A readiness generation cannot be chosen by the client: the server assigns it, so a
    // huge one cannot lock the record.
    let (status, _) = api
        .call(
            "PUT",
            "/v1/services/checkout/shadows",
            Some(r#"{"endpoints":[{"address":"127.0.0.1:10"}],"warm":true,"max_in_flight":8,"generation":18446744073709551615}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "an unknown field is refused");
    assert!(
        plane.exited().is_none(),
        "the process died: {}",
        plane.log()
    );
    let risks = api.get_json("/v1/forecast").await;
    assert!(
        risks.is_some_and(|r| r.is_array()),
        "the overload list is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_envoy_keeps_the_same_snapshot() {
    let setup = Setup::new("durable", "state_dir = \"state\"\n");
    // A relative state_dir is relative to the working directory: run there.
    let config = std::fs::read_to_string(&setup.config).unwrap().replace(
        "state_dir = \"state\"",
        &format!("state_dir = \"{}\"", setup.dir.join("state").display()),
    );
    std::fs::write(&setup.config, config).unwrap();
    let mut plane = setup.start(&[]);
    let api = setup.client(None);
    up(&api).await;
    let service = r#"{"primary":[{"address":"127.0.0.1:9"}],"shadows":{"endpoints":[{"address":"127.0.0.1:10"}],"warm":true,"max_in_flight":8}}"#;
    let event = r#"{"kind":"sale","start":1900000000,"duration_secs":3600,"uplift":3.0,"series":["checkout"]}"#;
    for (method, path, body, want) in [
        ("PUT", "/v1/services/checkout", service, 200),
        (
            "PUT",
            "/v1/services/search",
            r#"{"primary":[{"address":"127.0.0.1:11"}]}"#,
            200,
        ),
        ("PUT", "/v1/capacity/checkout", r#"{"capacity":300}"#, 204),
        ("POST", "/v1/events", event, 201),
    ] {
        let (status, answer) = api.call(method, path, Some(body)).await.unwrap();
        assert_eq!(status, want, "{method} {path}: {answer}");
    }
    // What the API wrote, without the readiness lease's expiry (the clock's, not state).
    let written = async || {
        let mut services = api.get_json("/v1/services").await?;
        for s in services.as_object_mut()?.values_mut() {
            s["readiness"].as_object_mut()?.remove("expires_at_ms");
        }
        Some(services)
    };
    let services = written().await.unwrap();
    let envoy = envoy_with(bootstrap(&setup, FilterChoice::None).render().unwrap()).await;
    eventually(
        "Envoy with the shadow",
        Duration::from_secs(30),
        async || envoy_has_member(&envoy, "checkout_shadow_pool", "127.0.0.1:10").then_some(()),
    )
    .await;
    // The versions Envoy ACKed, once this server has answered it for clusters and
    // endpoints both (an ACK of what Envoy had before proves nothing about this server).
    let acked = |proxies: serde_json::Value| -> Option<serde_json::Value> {
        let p = proxies.as_array()?.first()?;
        let answered = p["responses"]
            .as_object()?
            .values()
            .filter(|n| n.as_u64() > Some(0));
        let acked = p["acked"].as_object()?;
        (answered.count() >= 2 && acked.len() >= 2).then(|| p["acked"].clone())
    };
    let before = eventually("Envoy's ACK", Duration::from_secs(30), async || {
        acked(api.get_json("/v1/proxies").await?)
    })
    .await;

    plane.kill_9();
    let _plane = setup.start(&[]);
    up(&api).await;
    assert_eq!(written().await.unwrap(), services);
    assert_eq!(
        api.get_json("/v1/capacity/checkout").await.unwrap()["capacity"],
        300.0
    );
    let events = api.get_json("/v1/events").await.unwrap();
    assert_eq!(
        events,
        serde_json::json!([serde_json::from_str::<serde_json::Value>(event).unwrap()])
    );
    // Envoy reconnects and ACKs the same versions: it was served the same snapshot, not an
    // empty one first (an empty one would be a different version, and drop the shadow).
    let after = eventually(
        "Envoy's ACK after the restart",
        Duration::from_secs(30),
        async || acked(api.get_json("/v1/proxies").await?),
    )
    .await;
    assert_eq!(after, before);
    assert!(envoy_has_member(
        &envoy,
        "checkout_shadow_pool",
        "127.0.0.1:10"
    ));
    let removed = envoy
        .stat("cluster_manager.cluster_removed")
        .unwrap()
        .unwrap_or(0);
    assert_eq!(removed, 0, "Envoy never lost a cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish_and_exits_zero() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let setup = Setup::new("sigterm", CHECKOUT);
    let mut plane = setup.start(&[]);
    let api = setup.client(None);
    up(&api).await;
    // A request whose body is half sent: in flight when the signal arrives.
    let body = br#"{"capacity": 250}"#;
    let mut conn = tokio::net::TcpStream::connect(setup.http).await.unwrap();
    let head = format!(
        "PUT /v1/capacity/checkout HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..5]).await.unwrap();
    // In flight: this `/metrics` request and the half-sent one.
    eventually(
        "the request in flight",
        Duration::from_secs(10),
        async || {
            let text = api.call("GET", "/metrics", None).await.ok()?.1;
            (metric(&text, "shadowmesh_http_requests_in_flight")? >= 2.0).then_some(())
        },
    )
    .await;
    let pid = plane.pid();
    let terminate = tokio::task::spawn_blocking(move || {
        let status = plane.terminate(Duration::from_secs(20));
        (status, plane)
    });
    // The server stops accepting…
    eventually("the listener closed", Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(setup.http)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // …but answers the request in flight.
    conn.write_all(&body[5..]).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 204"), "pid {pid}: {answer}");
    let (status, plane) = terminate.await.unwrap();
    let status = status.unwrap();
    assert!(status.success(), "{status:?}");
    let log = plane.log();
    assert!(
        log.contains("SIGTERM") && log.contains("shut down cleanly"),
        "{log}"
    );
}

/// Raises this test process's open-files limit so it can open the idle sockets.
fn raise_own_open_files(to: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < to {
        setrlimit(Resource::RLIMIT_NOFILE, to.min(hard), hard).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_neither_starve_ads_nor_stay_open() {
    raise_own_open_files(4_096);
    let setup = Setup::new(
        "idle",
        &format!("{CHECKOUT}\n[http]\nmax_connections = 512\nheader_read_timeout_secs = 3\n"),
    );
    // 1,024 descriptors, as a default `ulimit -n` gives.
    let plane = XdsProcess::start_with_open_files(&setup.config, &setup.log, &[], 1_024).unwrap();
    let api = setup.client(None);
    up(&api).await;
    drop(api); // its pooled connection would count against the cap
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        idle.push(tokio::net::TcpStream::connect(setup.http).await.unwrap());
    }
    // ADS is still reachable: Envoy gets its clusters.
    let envoy = envoy_with(bootstrap(&setup, FilterChoice::None).render().unwrap()).await;
    eventually(
        "Envoy with its clusters",
        Duration::from_secs(30),
        async || envoy_has_member(&envoy, "checkout_primary", "127.0.0.1:9").then_some(()),
    )
    .await;
    // Idle connections are closed after the header-read timeout; the API answers again.
    let mut first = idle.swap_remove(0);
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read(&mut first, &mut buf),
    )
    .await
    .expect("an idle connection is closed by the server");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    drop(idle);
    let api = setup.client(None);
    eventually(
        "the API answering again",
        Duration::from_secs(30),
        async || matches!(api.call("GET", "/v1/services", None).await, Ok((200, _))).then_some(()),
    )
    .await;
    let metrics = api.call("GET", "/metrics", None).await.unwrap().1;
    let refused = metric(&metrics, "shadowmesh_http_connections_refused_total").unwrap();
    assert!(refused >= 500.0, "{refused} connections refused at the cap");
    drop(plane);
}

/// Runs a simulated proxy over `channel`: whether it received any response within 10 s.
async fn ads_answers(channel: Result<tonic::transport::Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else { return false };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = shadowmesh_testkit::ads_client::SimProxy {
        index: 0,
        node_id: "intruder".into(),
        group: "edge".into(),
        delta: false,
    };
    let stream = tokio::spawn(shadowmesh_testkit::ads_client::run(proxy, channel, tx));
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    stream.abort();
    matches!(got, Ok(Some(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_over_mutual_tls_serves_envoy_with_a_certificate_and_no_one_else() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let setup = Setup::new("mtls", CHECKOUT);
    let pki = shadowmesh_testkit::pki::issue(&setup.dir);
    let mut config = std::fs::read_to_string(&setup.config).unwrap();
    config.push_str(&format!(
        "\n[ads_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        pki.server.0.display(),
        pki.server.1.display(),
        pki.ca.display()
    ));
    std::fs::write(&setup.config, config).unwrap();
    let _plane = setup.start(&[]);
    up(&setup.client(None)).await;

    // Envoy with a certificate from the CA gets its clusters over mTLS.
    let mut yaml = bootstrap(&setup, FilterChoice::None);
    yaml.tls = Some(AdsClientTls {
        ca_file: pki.ca.clone(),
        cert_file: pki.client.0.clone(),
        key_file: pki.client.1.clone(),
        sni: shadowmesh_testkit::pki::SERVER_NAME.into(),
    });
    let envoy = envoy_with(yaml.render().unwrap()).await;
    eventually(
        "Envoy with its clusters over mTLS",
        Duration::from_secs(30),
        async || envoy_has_member(&envoy, "checkout_primary", "127.0.0.1:9").then_some(()),
    )
    .await;

    // Anyone else gets nothing: plaintext, TLS without a certificate, a certificate from
    // another CA.
    let ca = Certificate::from_pem(std::fs::read(&pki.ca).unwrap());
    let tls = || {
        ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name(shadowmesh_testkit::pki::SERVER_NAME)
    };
    let endpoint = |scheme: &str| {
        Channel::from_shared(format!("{scheme}://{}", setup.ads))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
    };
    let plaintext = endpoint("http").connect().await;
    assert!(!ads_answers(plaintext).await, "plaintext ADS was served");
    let anonymous = endpoint("https").tls_config(tls()).unwrap().connect().await;
    assert!(
        !ads_answers(anonymous).await,
        "a client without a certificate was served"
    );
    let rogue = Identity::from_pem(
        std::fs::read(&pki.rogue_client.0).unwrap(),
        std::fs::read(&pki.rogue_client.1).unwrap(),
    );
    let rogue = endpoint("https")
        .tls_config(tls().identity(rogue))
        .unwrap()
        .connect()
        .await;
    assert!(
        !ads_answers(rogue).await,
        "a certificate from another CA was served"
    );
    // The same client with the CA's certificate is served: the refusals above are the
    // certificate's doing, not the client's.
    let good = Identity::from_pem(
        std::fs::read(&pki.client.0).unwrap(),
        std::fs::read(&pki.client.1).unwrap(),
    );
    let good = endpoint("https")
        .tls_config(tls().identity(good))
        .unwrap()
        .connect()
        .await;
    assert!(
        ads_answers(good).await,
        "a client with a valid certificate was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_a_long_poll_at_once_instead_of_cutting_it() {
    // A relay long poll waits up to `max_wait_ms`, which may be longer than the HTTP grace:
    // at shutdown it is answered (nothing new, the same cursor) rather than reset.
    let setup = Setup::new(
        "sigterm-poll",
        &format!("{CHECKOUT}\n[relay]\nmax_wait_ms = 25000\n[http]\nshutdown_grace_secs = 60\n"),
    );
    let mut plane = setup.start(&[]);
    let api = setup.client(None);
    up(&api).await;
    let pull = |epoch: u64, cursor: u64, wait_ms: u64| {
        serde_json::json!({"schema": shadowmesh_wire::STATE_SCHEMA, "subscriber": "shadow-1",
            "service": "checkout", "epoch": epoch, "cursor": cursor, "wait_ms": wait_ms})
        .to_string()
    };
    // The first pull learns the relay's epoch and cursor; the second waits.
    let (status, first) = api
        .call("POST", "/v1/state/pull", Some(&pull(0, 0, 0)))
        .await
        .unwrap();
    assert_eq!(status, 200, "{first}");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let (epoch, cursor) = (
        first["epoch"].as_u64().unwrap(),
        first["cursor"].as_u64().unwrap(),
    );
    let waiting = {
        let api = api.clone();
        let body = pull(epoch, cursor, 25_000);
        tokio::spawn(async move {
            let answer = api.call("POST", "/v1/state/pull", Some(&body)).await;
            (answer, std::time::Instant::now())
        })
    };
    eventually(
        "the long poll in flight",
        Duration::from_secs(10),
        async || {
            let text = api.call("GET", "/metrics", None).await.ok()?.1;
            (metric(&text, "shadowmesh_http_requests_in_flight")? >= 2.0).then_some(())
        },
    )
    .await;
    let signalled = std::time::Instant::now();
    plane.send_sigterm().unwrap();
    let (answer, at) = waiting.await.unwrap();
    let (status, body) = answer.expect("the long poll answered");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["cursor"].as_u64(), Some(cursor), "{body}");
    assert!(
        at.duration_since(signalled) < Duration::from_secs(10),
        "the poll waited {:?} after SIGTERM (it may wait 25 s)",
        at.duration_since(signalled)
    );
    let status = tokio::task::spawn_blocking(move || plane.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("an exit");
    assert!(status.success(), "{status:?}");
}
