//! Serving the HTTP surface with limits: a cap on open connections (so idle sockets cannot
//! take every file descriptor and starve the ADS listener), a time limit for reading each
//! request's headers (which also closes a connection, new or keep-alive, idle that long), a time
//! limit per request, a time limit for a peer to read its answer (`conn.rs`: a client that
//! pipelines requests and never reads is closed), a number of requests per connection, and a
//! graceful shutdown that stops accepting and lets requests in flight finish.

use super::conn::GuardedIo;
use super::metrics::{HttpMetrics, InFlight};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits of the HTTP listener (`[http]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeLimits {
    /// Connections open at once; further ones are closed on accept.
    pub max_connections: usize,
    /// Seconds to send a request's headers — and the most a keep-alive connection stays
    /// idle between requests.
    pub header_read_timeout_secs: u64,
    /// Seconds a request may take from its headers to its answer.
    pub request_timeout_secs: u64,
    /// Seconds a write of an answer may wait for the peer to read; then the connection is
    /// closed.
    pub write_timeout_secs: u64,
    /// Requests one connection may make; the last answer closes it.
    pub max_requests_per_connection: u64,
    /// Seconds requests in flight get to finish at shutdown.
    pub shutdown_grace_secs: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 512,
            header_read_timeout_secs: 10,
            request_timeout_secs: 30,
            write_timeout_secs: 10,
            max_requests_per_connection: 10_000,
            shutdown_grace_secs: 10,
        }
    }
}

impl ServeLimits {
    /// Checks the fields; errors are (field, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (field, v, max) in [
            ("max_connections", self.max_connections as u64, 1 << 20),
            (
                "header_read_timeout_secs",
                self.header_read_timeout_secs,
                3_600,
            ),
            ("request_timeout_secs", self.request_timeout_secs, 3_600),
            ("write_timeout_secs", self.write_timeout_secs, 3_600),
            (
                "max_requests_per_connection",
                self.max_requests_per_connection,
                u32::MAX as u64,
            ),
            ("shutdown_grace_secs", self.shutdown_grace_secs, 3_600),
        ] {
            let min = u64::from(field != "shutdown_grace_secs");
            if !(min..=max).contains(&v) {
                return Err((field.into(), format!("{v} is outside {min}..={max}")));
            }
        }
        Ok(())
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves; then stops
/// accepting, lets requests in flight finish (up to the grace period) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    metrics: HttpMetrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let in_flight = metrics.requests_in_flight.clone();
    // A request that takes too long is answered in the one JSON error shape, like any other.
    let router = router
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let entered = InFlight::enter(&in_flight);
                async move {
                    let response = next.run(request).await;
                    drop(entered);
                    response
                }
            },
        ))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async {
                        super::ApiError::new(
                            axum::http::StatusCode::REQUEST_TIMEOUT,
                            "",
                            "the request took too long",
                        )
                    },
                ))
                .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(
                    limits.request_timeout_secs,
                ))),
        );
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // HTTP/1.1 only (the filters' reports and operators' JSON need nothing more): hyper's
    // header-read timer then runs from the moment a connection is accepted and again
    // whenever a keep-alive connection waits for its next request. (Protocol detection
    // for h2c would wait for a first byte with no timer at all.)
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs))
        // A request's headers fit in 64 KiB (hyper's default lets a silent client park
        // ~400 KB per connection).
        .max_buf_size(64 << 10);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            metrics.connections_refused.inc();
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    max = limits.max_connections,
                    "HTTP connection cap reached; closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(counted(router.clone(), limits.max_requests_per_connection));
        let io = GuardedIo::new(stream, Duration::from_secs(limits.write_timeout_secs));
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        let open = InFlight::enter(&metrics.connections_open);
        tokio::spawn(async move {
            let _ = conn.await;
            drop((slot, open));
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(limits.shutdown_grace_secs)) => {
            tracing::warn!("HTTP requests still in flight after the grace period; closing");
        }
    }
    Ok(())
}

/// `router` for one connection: its `max`-th answer says `connection: close` (and hyper
/// closes after it), so no connection lives on requests forever.
fn counted(
    router: Router,
    max: u64,
) -> impl tower::Service<
    axum::extract::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    use tower::ServiceExt;
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    ServiceExt::<axum::extract::Request<hyper::body::Incoming>>::map_response(
        router,
        move |mut response: axum::response::Response| {
            let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n >= max {
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            response
        },
    )
}
