//! The ADS listener of the real `shadowmesh-xds` binary against clients that connect and
//! say nothing (plaintext, and after a finished TLS handshake), that open thousands of
//! streams on one connection, that NACK with a 15 MB reason — and SIGTERM with a real
//! Envoy connected and with a client that never closes its stream. (Issue 21, rows 7–10;
//! the identity and HTTP rows are in `identities_and_limits.rs`, the store's in
//! `store_hardening.rs`.)

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use shadowmesh_testkit::envoy::{
    AdsBootstrap, AdsClientTls, EnvoyOptions, EnvoyProcess, FilterChoice,
};
use shadowmesh_testkit::xds_process::{ApiClient, PlaneSetup, eventually, wait_up};
use shadowmesh_xds::xds::CLUSTER_TYPE;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHECKOUT: &str = r#"
[[services]]
name = "checkout"
primary = [{ address = "127.0.0.1:9" }]
"#;

fn bootstrap(setup: &PlaneSetup) -> AdsBootstrap {
    AdsBootstrap {
        node_id: "edge-1".into(),
        node_cluster: "edge".into(),
        xds_port: setup.ads.port(),
        control_port: setup.http.port(),
        filter: FilterChoice::None,
        delta: false,
        services: Vec::new(),
        tls: None,
    }
}

async fn envoy(bootstrap: &AdsBootstrap) -> EnvoyProcess {
    EnvoyProcess::launch(bootstrap.render().unwrap(), EnvoyOptions::default())
        .await
        .unwrap()
}

/// Whether Envoy has the primary endpoint of `checkout` (from ADS).
fn has_checkout(envoy: &EnvoyProcess) -> bool {
    envoy.admin_get("/clusters").is_ok_and(|t| {
        t.lines()
            .any(|l| l.starts_with("checkout_primary::127.0.0.1:9::"))
    })
}

/// The value of a Prometheus sample whose line starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The ADS streams the control plane knows of (`/v1/proxies`).
async fn proxies(api: &ApiClient) -> Vec<serde_json::Value> {
    api.get_json("/v1/proxies")
        .await
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Waits until the server closes `conn` (read → EOF or error); false after `timeout`.
async fn closed_by_server(conn: &mut (impl AsyncRead + Unpin), timeout: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // Whatever the server sends first (its SETTINGS) is read past.
            Ok(Ok(_)) => {}
        }
    }
}

/// Envoy, connecting after the `silent` clients that fill the cap, gets its clusters; and
/// every silent client is closed by the server.
async fn served_past(envoy: &EnvoyProcess, silent: &mut [impl AsyncRead + Unpin], what: &str) {
    let opened = Instant::now();
    eventually(
        &format!("Envoy with its clusters past {what}"),
        Duration::from_secs(40),
        async || has_checkout(envoy).then_some(()),
    )
    .await;
    for (i, conn) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_server(conn, Duration::from_secs(20)).await,
            "silent client {i} of {what} still connected {:?} after Envoy started",
            opened.elapsed()
        );
    }
}

/// The HTTP/2 connection preface a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;
const REFUSED_STREAM: u32 = 0x7;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const INITIAL_WINDOW_SIZE: u8 = 0x4;

/// An HPACK header block of literal fields (never indexed, no Huffman): what a raw client
/// needs to open a gRPC stream.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0x10);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The HEADERS frame opening a state-of-the-world ADS stream with id `stream`.
fn open_ads_stream(stream: u32) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS,
        stream,
        &header_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (
                ":path",
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            ),
            (":authority", "xds"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]),
    )
}

/// What a raw client read from the server until it closed or went quiet.
#[derive(Debug, Default)]
struct Seen {
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`, if it sent one.
    max_concurrent_streams: Option<u32>,
    /// Streams answered with response headers (accepted).
    answered: usize,
    /// Streams reset with `REFUSED_STREAM`.
    refused: usize,
    /// Whether the server sent `GOAWAY`.
    goaway: bool,
}

/// Reads frames until EOF, an error or `quiet` without a byte.
async fn read_frames(mut conn: impl AsyncRead + Unpin, quiet: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match tokio::time::timeout(quiet, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return seen,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                SETTINGS if flags & 0x1 == 0 => {
                    for p in payload.chunks_exact(6) {
                        if u16::from_be_bytes([p[0], p[1]]) == MAX_CONCURRENT_STREAMS {
                            seen.max_concurrent_streams =
                                Some(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                        }
                    }
                }
                HEADERS => seen.answered += 1,
                RST_STREAM
                    if payload.len() == 4
                        && u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                            == REFUSED_STREAM =>
                {
                    seen.refused += 1
                }
                GOAWAY => seen.goaway = true,
                _ => {}
            }
        }
    }
}

/// A client that asks for the clusters with a flow-control window of zero: the answer can
/// never be sent, so its stream (and the connection) cannot end by itself.
async fn stuck_client(ads: SocketAddr) -> TcpStream {
    let mut stuck = TcpStream::connect(ads).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[0, INITIAL_WINDOW_SIZE, 0, 0, 0, 0]));
    out.extend(open_ads_stream(1));
    let request = DiscoveryRequest {
        node: Some(Node {
            id: "stuck".into(),
            cluster: "edge".into(),
            ..Default::default()
        }),
        type_url: CLUSTER_TYPE.into(),
        ..Default::default()
    };
    let message = prost::Message::encode_to_vec(&request);
    let mut grpc = vec![0];
    grpc.extend_from_slice(&(message.len() as u32).to_be_bytes());
    grpc.extend(message);
    out.extend(frame(DATA, 0, 1, &grpc));
    stuck.write_all(&out).await.unwrap();
    stuck
}

/// A raw HTTP/2 client that opens `streams` ADS streams at once on one connection and
/// sends nothing more: what the server answered, and the connection's write half (the
/// connection stays open while it lives).
async fn open_streams(ads: SocketAddr, streams: u32) -> (Seen, tokio::net::tcp::OwnedWriteHalf) {
    let conn = TcpStream::connect(ads).await.unwrap();
    let (reader, mut writer) = conn.into_split();
    let reading = tokio::spawn(read_frames(reader, Duration::from_secs(3)));
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..streams {
        out.extend(open_ads_stream(2 * i + 1));
    }
    // The server may close the connection halfway: the writes then fail, which is fine.
    let _ = writer.write_all(&out).await;
    (reading.await.unwrap(), writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_envoy_is_served_past_them() {
    // Row 7 (plaintext): as many silent clients as the cap allows — some that never send
    // the HTTP/2 preface, some that send it and open no stream.
    let setup = PlaneSetup::new(
        "ads-silent",
        &format!("{CHECKOUT}\n[ads]\nmax_connections = 8\nmax_connection_idle_secs = 3\n"),
    );
    let _plane = setup.start(&[]);
    let api = setup.client(None);
    wait_up(&api).await;
    let mut silent = Vec::new();
    for i in 0..8 {
        let mut conn = TcpStream::connect(setup.ads).await.unwrap();
        if i % 2 == 1 {
            conn.write_all(PREFACE).await.unwrap();
            conn.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        }
        silent.push(conn);
    }
    // Envoy connects after them and is served once they are closed.
    let envoy = envoy(&bootstrap(&setup)).await;
    served_past(&envoy, &mut silent, "8 silent connections").await;
    // Envoy's own connection, with its stream, stays past the idle deadline: its stream
    // counts on its connection. (Its attempts while the cap was full count too.)
    let connections = || {
        envoy
            .stat("cluster.shadowmesh_xds.upstream_cx_total")
            .unwrap()
    };
    let served = connections();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = api.call("GET", "/metrics", None).await.unwrap().1;
    let idle = metric(
        &text,
        "shadowmesh_xds_connections_closed_total{reason=\"idle\"}",
    );
    assert_eq!(
        idle,
        Some(8.0),
        "idle connections closed: the 8 silent ones only"
    );
    assert_eq!(
        connections(),
        served,
        "Envoy reconnected after it was served"
    );
    let names: Vec<_> = proxies(&api)
        .await
        .into_iter()
        .map(|p| p["node_id"].clone())
        .collect();
    assert_eq!(names, ["edge-1"]);
}

/// A TLS client that finishes the handshake with a valid certificate and then says nothing.
async fn silent_tls_client(
    ads: SocketAddr,
    pki: &shadowmesh_testkit::pki::Pki,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(&pki.client.0).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&pki.client.1).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(ads).await.unwrap();
    let name = ServerName::try_from(shadowmesh_testkit::pki::SERVER_NAME).unwrap();
    connector.connect(name, tcp).await.expect("the handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_after_a_finished_tls_handshake_are_closed_and_envoy_is_served() {
    // Row 7 (mTLS): four clients with valid certificates finish the handshake and stay
    // silent, filling the cap.
    let setup = PlaneSetup::new("ads-silent-tls", CHECKOUT);
    let pki = shadowmesh_testkit::pki::issue(&setup.dir);
    let mut config = std::fs::read_to_string(&setup.config).unwrap();
    config.push_str(&format!(
        "\n[ads]\nmax_connections = 4\n[ads_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        pki.server.0.display(),
        pki.server.1.display(),
        pki.ca.display()
    ));
    std::fs::write(&setup.config, config).unwrap();
    let _plane = setup.start(&[]);
    wait_up(&setup.client(None)).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(silent_tls_client(setup.ads, &pki).await);
    }
    let mut yaml = bootstrap(&setup);
    yaml.tls = Some(AdsClientTls {
        ca_file: pki.ca.clone(),
        cert_file: pki.client.0.clone(),
        key_file: pki.client.1.clone(),
        sni: shadowmesh_testkit::pki::SERVER_NAME.into(),
    });
    let envoy = envoy(&yaml).await;
    served_past(&envoy, &mut silent, "4 silent TLS clients").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_opens_at_most_its_stream_limit_of_proxies() {
    // Row 8: 3,000 streams opened at once on one connection by a raw client (one that does
    // not wait for the server's limit, as a well-behaved client library would).
    let setup = PlaneSetup::new("ads-streams", CHECKOUT);
    let _plane = setup.start(&[]);
    let api = setup.client(None);
    wait_up(&api).await;
    let (seen, conn) = open_streams(setup.ads, 3_000).await;
    assert_eq!(
        seen.max_concurrent_streams,
        Some(8),
        "the server's MAX_CONCURRENT_STREAMS: {seen:?}"
    );
    assert!(seen.answered <= 8, "{seen:?}");
    assert!(
        seen.refused > 0 || seen.goaway,
        "the streams past the limit were refused: {seen:?}"
    );
    let registered = proxies(&api).await.len();
    assert!(
        registered <= 8,
        "{registered} proxies registered by one connection"
    );
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_s_reason_is_cut_in_the_log_and_in_proxies_and_a_huge_node_id_refused() {
    // Row 9: NACKs carrying 3 MiB reasons (under the 4 MiB request limit), unauthenticated
    // (plaintext ADS), each starting with a forged log line.
    let setup = PlaneSetup::new("ads-nack", CHECKOUT);
    let _plane = setup.start(&[]);
    let api = setup.client(None);
    wait_up(&api).await;
    let logged_before = std::fs::metadata(&setup.log).unwrap().len();
    let reason = format!(
        "\nFORGED proxy accepted everything\n{}",
        "x".repeat(3 << 20)
    );
    let mut clients = Vec::new();
    for i in 0..4 {
        let (tx, responses, nonce) = ads_stream(setup.ads, &format!("nacker-{i}")).await;
        tx.send(DiscoveryRequest {
            type_url: CLUSTER_TYPE.into(),
            response_nonce: nonce,
            error_detail: Some(RpcStatus {
                code: 3,
                message: reason.clone(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .unwrap();
        clients.push((tx, responses));
    }
    let rejections = eventually("four NACKs recorded", Duration::from_secs(20), async || {
        let rejected: Vec<String> = proxies(&api)
            .await
            .iter()
            .filter_map(|p| {
                p["rejected"][CLUSTER_TYPE]["error"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        (rejected.len() == 4).then_some(rejected)
    })
    .await;
    for error in &rejections {
        assert!(
            error.len() <= 1_100,
            "a reason of {} bytes kept",
            error.len()
        );
        assert!(
            error.contains(&format!("({} bytes in all)", reason.len())),
            "{}",
            &error[error.len().saturating_sub(60)..]
        );
    }
    let logged = std::fs::metadata(&setup.log).unwrap().len() - logged_before;
    assert!(
        logged < 64 << 10,
        "the log grew by {logged} bytes for four NACKs"
    );
    let log = std::fs::read_to_string(&setup.log).unwrap();
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a client's reason forged a log line"
    );
    drop(clients);

    // A node id of 1 MiB is not kept either: the stream is refused.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", setup.ads))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "n".repeat(1 << 20),
            cluster: "edge".into(),
            ..Default::default()
        }),
        type_url: CLUSTER_TYPE.into(),
        ..Default::default()
    })
    .unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let refused = responses
        .message()
        .await
        .expect_err("the stream is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("node.id"), "{refused}");
    let kept = proxies(&api).await;
    assert!(
        kept.iter()
            .all(|p| p["node_id"].as_str().is_some_and(|id| id.len() < 64)),
        "a huge node id was kept"
    );
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_envoy_connected_ends_its_stream_exits_and_envoy_reconnects_to_the_next() {
    // Row 10: SIGTERM with a real Envoy on an ADS stream. The grace periods are long, so an
    // exit within them shows the streams were ended, not waited out.
    let setup = PlaneSetup::new(
        "ads-sigterm",
        &format!("{CHECKOUT}\n[ads]\nshutdown_grace_secs = 60\n[http]\nshutdown_grace_secs = 60\n"),
    );
    let state = setup.dir.join("state");
    let state_arg = state.to_str().unwrap().to_string();
    let mut plane = setup.start(&["--state-dir", &state_arg]);
    let api = setup.client(None);
    wait_up(&api).await;
    let envoy = envoy(&bootstrap(&setup)).await;
    eventually(
        "Envoy with its clusters",
        Duration::from_secs(30),
        async || has_checkout(&envoy).then_some(()),
    )
    .await;
    let signalled = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = plane.terminate(Duration::from_secs(20));
        (status, plane)
    });
    let (status, plane) = status.await.unwrap();
    let status = status.expect("an exit well within the 60 s grace periods");
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    let log = plane.log();
    assert!(log.contains("shut down cleanly"), "{log}");
    drop(plane);
    // Envoy keeps its last configuration while no control plane runs…
    assert!(has_checkout(&envoy), "Envoy lost its clusters");
    // …and the store's lock is free: the next process starts on the same state directory,
    // and Envoy reconnects to it.
    let _next = setup.start(&["--state-dir", &state_arg]);
    wait_up(&api).await;
    eventually("Envoy reconnected", Duration::from_secs(40), async || {
        proxies(&api)
            .await
            .iter()
            .any(|p| p["node_id"] == "edge-1")
            .then_some(())
    })
    .await;
    assert!(has_checkout(&envoy));
    let reconnects = envoy.stat("control_plane.connected_state").unwrap();
    assert_eq!(
        reconnects,
        Some(1),
        "Envoy's ADS stream is up (SIGTERM took {took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drops_a_connection_that_never_closes_after_the_grace_period() {
    // Row 10's bound: a client whose stream never ends (it reads nothing and answers no
    // GOAWAY) cannot hold the process past `[ads] shutdown_grace_secs`.
    let setup = PlaneSetup::new(
        "ads-stuck",
        // A long idle deadline: only the abort at the grace's end can close it.
        &format!("{CHECKOUT}\n[ads]\nshutdown_grace_secs = 2\nmax_connection_idle_secs = 60\n"),
    );
    let mut plane = setup.start(&[]);
    let api = setup.client(None);
    wait_up(&api).await;
    let stuck = stuck_client(setup.ads).await;
    // Beside it, a client that reads: its stream ends with UNAVAILABLE (retry elsewhere).
    let (reader, mut responses, _) = ads_stream(setup.ads, "reader").await;
    eventually(
        "both streams registered",
        Duration::from_secs(10),
        async || (proxies(&api).await.len() == 2).then_some(()),
    )
    .await;
    let status = tokio::task::spawn_blocking(move || {
        let status = plane.terminate(Duration::from_secs(15));
        (status, plane)
    });
    let ended = responses.message().await.expect_err("the stream ended");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended}");
    let (status, plane) = status.await.unwrap();
    let status = status.expect("an exit after the 2 s grace");
    assert!(status.success(), "{status:?}");
    let log = plane.log();
    assert!(log.contains("still open after the grace period"), "{log}");
    drop((stuck, reader));
}

/// A state-of-the-world stream of `node` that subscribed to the clusters and got them: its
/// request sender, its responses, and the nonce of the first.
async fn ads_stream(
    ads: SocketAddr,
    node: &str,
) -> (
    tokio::sync::mpsc::UnboundedSender<DiscoveryRequest>,
    tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>,
    String,
) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{ads}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(subscribe(node, CLUSTER_TYPE, Vec::new())).unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().expect("the clusters");
    (tx, responses, first.nonce)
}

/// A client with a small receive buffer that sends the preface and PINGs until the server's
/// PONGs fill its buffer and the server's writes wait, and then reads nothing.
async fn ping_flooder(ads: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(ads).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&out).await.unwrap();
    let pings: Vec<u8> = (0..4096).flat_map(|_| frame(PING, 0, 0, &[7; 8])).collect();
    // Until a batch waits 3 s: the server stopped reading (its PONGs fill our buffer and
    // its own). Or until it closed the connection.
    let started = Instant::now();
    while let Ok(Ok(())) =
        tokio::time::timeout(Duration::from_secs(3), conn.write_all(&pings)).await
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server kept reading PINGs it could not answer"
        );
    }
    conn
}

const PING: u8 = 0x6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_flood_pings_and_never_read_are_closed_at_the_write_deadline() {
    // Once hyper cannot flush its PONGs it stops reading, so a deadline checked on reads
    // alone never fires: four such clients held the cap for ever. The idle deadline is
    // long here, so only the write deadline can free the slots in time.
    let setup = PlaneSetup::new(
        "ads-flood",
        &format!(
            "{CHECKOUT}\n[ads]\nmax_connections = 4\nmax_connection_idle_secs = 120\nwrite_timeout_secs = 2\n"
        ),
    );
    let _plane = setup.start(&[]);
    let api = setup.client(None);
    wait_up(&api).await;
    let mut flooders = Vec::new();
    for _ in 0..4 {
        flooders.push(ping_flooder(setup.ads).await);
    }
    let envoy = envoy(&bootstrap(&setup)).await;
    served_past(&envoy, &mut flooders, "4 PING flooders that never read").await;
    let text = api.call("GET", "/metrics", None).await.unwrap().1;
    let stalled = metric(
        &text,
        "shadowmesh_xds_connections_closed_total{reason=\"write_timeout\"}",
    );
    assert!(
        stalled >= Some(4.0),
        "{stalled:?} closed at the write deadline"
    );
}

/// Opens a SotW stream as `node` and sends `requests`: the status that ended it, if it
/// ended within 10 s.
async fn stream_status(ads: SocketAddr, requests: Vec<DiscoveryRequest>) -> Option<tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{ads}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for r in requests {
        tx.send(r).unwrap();
    }
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .ok()?
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    });
    let status = ended.await.ok().flatten();
    drop(tx);
    status
}

fn subscribe(node: &str, type_url: &str, names: Vec<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node.into(),
            cluster: "edge".into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        resource_names: names,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_nonces_and_name_lists_beyond_their_bounds_refuse_the_stream() {
    // Row 9's siblings: what a client sends and the server keeps (a version in
    // `/v1/proxies`, names in a subscription) or logs is bounded too.
    let setup = PlaneSetup::new("ads-bounds", CHECKOUT);
    let _plane = setup.start(&[]);
    let api = setup.client(None);
    wait_up(&api).await;
    let huge = "v".repeat(2 << 20);
    let cases = [
        (
            "group",
            vec![DiscoveryRequest {
                node: Some(Node {
                    id: "big-group".into(),
                    cluster: huge.clone(),
                    ..Default::default()
                }),
                type_url: CLUSTER_TYPE.into(),
                ..Default::default()
            }],
        ),
        (
            "version_info",
            vec![DiscoveryRequest {
                version_info: huge.clone(),
                ..subscribe("big-version", CLUSTER_TYPE, Vec::new())
            }],
        ),
        (
            "response_nonce",
            vec![DiscoveryRequest {
                response_nonce: huge.clone(),
                ..subscribe("big-nonce", CLUSTER_TYPE, Vec::new())
            }],
        ),
        (
            "resource_names",
            vec![subscribe(
                "many-names",
                shadowmesh_xds::xds::ENDPOINT_TYPE,
                (0..100_000).map(|i| format!("c{i}")).collect(),
            )],
        ),
    ];
    for (field, requests) in cases {
        let status = stream_status(setup.ads, requests)
            .await
            .unwrap_or_else(|| panic!("the stream with a huge {field} went on"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains(field), "{status}");
    }
    let listed = api.call("GET", "/v1/proxies", None).await.unwrap().1;
    assert!(
        listed.len() < 64 << 10,
        "/v1/proxies is {} bytes",
        listed.len()
    );
    // Within the bounds, the same requests are served.
    let fine = stream_status(setup.ads, vec![subscribe("fine", CLUSTER_TYPE, Vec::new())]);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), fine)
            .await
            .is_err(),
        "a stream within the bounds stays open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_sends_no_request_is_ended_and_its_proxy_forgotten() {
    // A stream with no request held its connection (answering PINGs) and a nameless entry
    // in /v1/proxies for ever.
    let setup = PlaneSetup::new(
        "ads-silent-stream",
        &format!("{CHECKOUT}\n[ads]\nmax_connection_idle_secs = 2\n"),
    );
    let _plane = setup.start(&[]);
    let api = setup.client(None);
    wait_up(&api).await;
    let started = Instant::now();
    let status = stream_status(setup.ads, Vec::new())
        .await
        .expect("the silent stream was ended");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    eventually("its proxy forgotten", Duration::from_secs(10), async || {
        proxies(&api).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_process_starts_while_the_last_one_waits_out_its_ads_grace() {
    // The store's lock is released once HTTP has drained, not at exit: a replacement on the
    // same state directory starts while a stuck ADS client holds the old process.
    let setup = PlaneSetup::new(
        "ads-overlap",
        &format!("{CHECKOUT}\n[ads]\nshutdown_grace_secs = 30\n"),
    );
    let state = setup.dir.join("state");
    let state_arg = state.to_str().unwrap().to_string();
    let mut old = setup.start(&["--state-dir", &state_arg]);
    let api = setup.client(None);
    wait_up(&api).await;
    let stuck = stuck_client(setup.ads).await;
    eventually(
        "the stuck stream registered",
        Duration::from_secs(10),
        async || (proxies(&api).await.len() == 1).then_some(()),
    )
    .await;
    old.send_sigterm().unwrap();
    // The listeners are closed at once: the replacement takes the same addresses.
    eventually(
        "the old listener closed",
        Duration::from_secs(10),
        async || TcpStream::connect(setup.http).await.is_err().then_some(()),
    )
    .await;
    let next = eventually("the replacement up", Duration::from_secs(15), async || {
        let mut next = setup.start(&["--state-dir", &state_arg]);
        for _ in 0..40 {
            if let Some(status) = next.exited() {
                let log = next.log();
                assert!(
                    !log.contains("already open"),
                    "the store's lock was still held: {status:?}"
                );
                return None;
            }
            if api
                .call("GET", "/readyz", None)
                .await
                .is_ok_and(|(s, _)| s == 200)
            {
                return Some(next);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
    .await;
    assert!(
        old.exited().is_none(),
        "the old process was still in its ADS grace"
    );
    // The new one serves and writes.
    assert_eq!(
        api.call(
            "PUT",
            "/v1/services/beta",
            Some(r#"{"primary": [{"address": "127.0.0.1:9002"}]}"#)
        )
        .await
        .unwrap()
        .0,
        200
    );
    drop((stuck, next));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let setup = PlaneSetup::new(
        "ads-second-signal",
        &format!("{CHECKOUT}\n[ads]\nshutdown_grace_secs = 60\n"),
    );
    let mut plane = setup.start(&[]);
    let api = setup.client(None);
    wait_up(&api).await;
    let stuck = stuck_client(setup.ads).await;
    eventually(
        "the stuck stream registered",
        Duration::from_secs(10),
        async || (proxies(&api).await.len() == 1).then_some(()),
    )
    .await;
    plane.send_sigterm().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(plane.exited().is_none(), "waiting out the 60 s grace");
    let status = tokio::task::spawn_blocking(move || {
        let status = plane.terminate(Duration::from_secs(10));
        (status, plane)
    });
    let (status, plane) = status.await.unwrap();
    let status = status.expect("an exit at the second signal");
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(plane.log().contains("second signal"), "{}", plane.log());
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_pings_is_closed_at_the_idle_deadline() {
    // Talking is not a stream: a connection that sends PINGs (and reads the PONGs) but opens
    // no stream is idle all the same.
    let setup = PlaneSetup::new(
        "ads-pinger",
        &format!("{CHECKOUT}\n[ads]\nmax_connection_idle_secs = 2\n"),
    );
    let _plane = setup.start(&[]);
    wait_up(&setup.client(None)).await;
    // The deadline runs from the server's accept: measured from before the connect.
    let started = Instant::now();
    let mut conn = TcpStream::connect(setup.ads).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&out).await.unwrap();
    let mut buf = [0u8; 4096];
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a pinging client without a stream still connected"
        );
        if conn.write_all(&frame(PING, 0, 0, &[1; 8])).await.is_err() {
            break started.elapsed();
        }
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await
        {
            break started.elapsed();
        }
    };
    assert!(closed >= Duration::from_secs(2), "closed after {closed:?}");
}
