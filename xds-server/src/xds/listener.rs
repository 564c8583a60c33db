//! The ADS listener's accept loop and its connections' limits.
//!
//! * A **connection cap**: past `max_connections` open connections, a new one is closed on
//!   accept instead of taking a file descriptor the process may need elsewhere (the HTTP
//!   listener has its own cap, so neither side can starve the other). An accept error — out
//!   of file descriptors, most likely — backs off for 50 ms instead of spinning.
//! * An **idle deadline**: a connection on which no ADS stream has been open for
//!   `max_connection_idle` — counted from the accept, so it covers a TLS handshake, the
//!   HTTP/2 preface and the first stream, and again from its last stream's end — is closed.
//!   (gRPC's `MAX_CONNECTION_IDLE`, with the accept counted as the start of idleness.)
//!   Without it a client that connects and says nothing holds a capped slot for ever: hyper's
//!   HTTP/2 server waits for the preface with no timer, and its keep-alive pings start only
//!   after it.
//!
//! * A **write deadline**: a write that makes no progress for `write_timeout` (a peer that
//!   stopped reading, with or without a stream open) fails the connection. Without it a
//!   client that floods PINGs and never reads parks the connection: hyper stops reading
//!   once it cannot flush the PONGs, so neither the idle deadline nor keep-alive fires.
//! * An **abort** at the end of shutdown: connections still open once the grace period is
//!   over fail their next read or write, which ends them.
//!
//! Every check runs on reads *and* writes: a connection that is stuck writing is polled
//! only there.
//!
//! The streams tell their connection when they open and close through [`AdsConnection`],
//! the connection information tonic puts into every request's extensions.

use super::metrics::XdsMetrics;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default for `[ads] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Accepted connections, at most `max` open at once.
pub(super) struct CappedIncoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    deadlines: Deadlines,
    metrics: Arc<XdsMetrics>,
    abort: CancellationToken,
    refused: u64,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CappedIncoming {
    /// Connections of `listener`, at most `max` open at once, each closed when it misses
    /// one of its `deadlines`, and all of them once `abort` is cancelled.
    pub(super) fn new(
        listener: TcpListener,
        max: usize,
        deadlines: Deadlines,
        metrics: Arc<XdsMetrics>,
        abort: CancellationToken,
    ) -> CappedIncoming {
        CappedIncoming {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            deadlines,
            metrics,
            abort,
            refused: 0,
            backoff: None,
        }
    }
}

impl Stream for CappedIncoming {
    type Item = io::Result<CappedConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = &mut this.backoff {
                ready!(sleep.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => match this.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        // Large responses end in a partial segment: without TCP_NODELAY
                        // it waits for the proxy's delayed ACK (40 ms).
                        let _ = stream.set_nodelay(true);
                        return Poll::Ready(Some(Ok(CappedConn::new(
                            stream,
                            slot,
                            this.deadlines,
                            this.metrics.clone(),
                            this.abort.clone(),
                        ))));
                    }
                    Err(_) => {
                        this.refused += 1;
                        this.metrics.connection_closed("cap");
                        if this.refused.is_power_of_two() {
                            tracing::warn!(
                                refused = this.refused,
                                max = this.max,
                                "ADS connection cap reached; closing new connections"
                            );
                        }
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept an ADS connection");
                    this.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                }
            }
        }
    }
}

/// The deadlines of every accepted connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    /// Longest time with no ADS stream open.
    pub(super) max_idle: Duration,
    /// Longest time a write may make no progress.
    pub(super) write_timeout: Duration,
}

/// How many ADS streams a connection has open, and since when none. (A lock, not two
/// atomics: a stream's end must set the count and the idle start as one.)
#[derive(Debug)]
struct Activity(Mutex<(u32, Instant)>);

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u32, Instant)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the connection has had no stream open at `now`; `None` while one is open.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        let (open, idle_since) = *self.lock();
        (open == 0).then(|| now.saturating_duration_since(idle_since))
    }
}

/// One ADS connection as its requests see it (tonic's connection information, in every
/// request's extensions): its peer, and the count of its open streams, which its idle
/// deadline reads.
#[derive(Debug, Clone)]
pub(super) struct AdsConnection {
    tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

impl AdsConnection {
    /// The peer's address.
    pub(super) fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.remote_addr()
    }

    /// Counts a stream open until the returned guard is dropped.
    pub(super) fn stream_opened(&self) -> OpenStream {
        self.activity.lock().0 += 1;
        OpenStream(self.activity.clone())
    }
}

/// An open ADS stream of a connection; dropping it ends the stream's count.
#[derive(Debug)]
pub(super) struct OpenStream(Arc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

/// An accepted connection holding its slot until it closes, and closing itself (an I/O
/// error, which ends hyper's connection) once it misses a deadline or is aborted.
pub(super) struct CappedConn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    connection: AdsConnection,
    deadlines: Deadlines,
    /// When to look at the idle deadline next.
    idle_check: Pin<Box<Sleep>>,
    /// Armed while a write waits for the peer to read.
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: Arc<XdsMetrics>,
    aborted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl CappedConn {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        deadlines: Deadlines,
        metrics: Arc<XdsMetrics>,
        abort: CancellationToken,
    ) -> CappedConn {
        let accepted = Instant::now();
        let connection = AdsConnection {
            tcp: stream.connect_info(),
            activity: Arc::new(Activity(Mutex::new((0, accepted)))),
        };
        CappedConn {
            stream,
            _slot: slot,
            connection,
            deadlines,
            idle_check: Box::pin(tokio::time::sleep_until(accepted + deadlines.max_idle)),
            stalled: None,
            metrics,
            aborted: Box::pin(abort.cancelled_owned()),
        }
    }

    /// Closes the connection for `reason` (a metric's label), with an I/O error of `kind`.
    fn close(&self, reason: &'static str, kind: io::ErrorKind, why: String) -> io::Error {
        self.metrics.connection_closed(reason);
        tracing::debug!(peer = ?self.connection.remote_addr(), %why, "closing an ADS connection");
        io::Error::new(kind, why)
    }

    /// An error once the server has aborted its connections or the connection has been
    /// idle for `max_idle`; else arms the timer of the next idle check. Polled with every
    /// read and write, so the task wakes when either fires.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.aborted.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the ADS server shut down",
            ));
        }
        let max_idle = self.deadlines.max_idle;
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = match self.connection.activity.idle_for(now) {
                Some(idle) if idle >= max_idle => {
                    let why = format!("no ADS stream for {max_idle:?}");
                    return Err(self.close("idle", io::ErrorKind::TimedOut, why));
                }
                Some(idle) => now + (max_idle - idle),
                // A stream is open: look again in a while (the stream's end does not wake
                // this task, so the timer stays armed).
                None => now + max_idle,
            };
            self.idle_check.as_mut().reset(next);
        }
        Ok(())
    }

    /// Follows a write's outcome: progress disarms the write deadline, a write that waits
    /// arms it, and one that waited `write_timeout` fails.
    fn track_write<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<T>) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Ready(v) => {
                self.stalled = None;
                Poll::Ready(Ok(v))
            }
            Poll::Pending => {
                let timeout = self.deadlines.write_timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    let why = format!("the peer read nothing for {timeout:?}");
                    return Poll::Ready(Err(self.close(
                        "write_timeout",
                        io::ErrorKind::TimedOut,
                        why,
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl Connected for CappedConn {
    type ConnectInfo = AdsConnection;

    fn connect_info(&self) -> AdsConnection {
        self.connection.clone()
    }
}

impl AsyncRead for CappedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => this.track_write(cx, Poll::Ready(n)),
            Poll::Pending => this.track_write(cx, Poll::Pending),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => this.track_write(cx, Poll::Ready(n)),
            Poll::Pending => this.track_write(cx, Poll::Pending),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => this.track_write(cx, Poll::Ready(())),
            Poll::Pending => this.track_write(cx, Poll::Pending),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    fn incoming(listener: TcpListener, max: usize, idle: Duration) -> CappedIncoming {
        incoming_until(listener, max, idle, CancellationToken::new())
    }

    fn incoming_until(
        listener: TcpListener,
        max: usize,
        idle: Duration,
        abort: CancellationToken,
    ) -> CappedIncoming {
        let deadlines = Deadlines {
            max_idle: idle,
            write_timeout: Duration::from_secs(10),
        };
        CappedIncoming::new(listener, max, deadlines, Arc::default(), abort)
    }

    #[tokio::test]
    async fn past_the_cap_connections_are_closed_and_a_slot_frees_on_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(listener, 2, Duration::from_secs(60));
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        // The third is accepted by the kernel, then closed by the cap: its reader sees EOF.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let accept_more = tokio::time::timeout(Duration::from_millis(300), incoming.next());
        assert!(accept_more.await.is_err(), "no third connection is yielded");
        let mut buf = [0u8; 1];
        let n = c.read(&mut buf).await;
        assert!(matches!(n, Ok(0) | Err(_)), "the third was closed: {n:?}");
        // Closing one frees its slot for the next.
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        let yielded = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(yielded, Ok(Some(Ok(_)))));
    }

    /// Reads `conn` until it fails or `after` passes: the error, if any.
    async fn read_error(conn: &mut CappedConn, after: Duration) -> Option<io::Error> {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(after, conn.read(&mut buf)).await {
            Ok(Err(e)) => Some(e),
            Ok(Ok(n)) => panic!("read {n} bytes from a silent client"),
            Err(_) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_stream_is_closed_at_its_idle_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(listener, 4, Duration::from_secs(10));
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        assert!(
            read_error(&mut conn, Duration::from_millis(9_900))
                .await
                .is_none()
        );
        let e = read_error(&mut conn, Duration::from_millis(200)).await;
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_keeps_its_connection_and_idleness_counts_from_its_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(listener, 4, Duration::from_secs(10));
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let info = conn.connect_info();
        tokio::time::advance(Duration::from_secs(5)).await;
        let stream = info.stream_opened();
        let second = info.stream_opened();
        assert!(
            read_error(&mut conn, Duration::from_secs(60))
                .await
                .is_none()
        );
        drop(stream);
        assert!(
            read_error(&mut conn, Duration::from_secs(60))
                .await
                .is_none(),
            "one stream is still open"
        );
        drop(second);
        assert!(
            read_error(&mut conn, Duration::from_millis(9_900))
                .await
                .is_none()
        );
        let e = read_error(&mut conn, Duration::from_millis(10_200)).await;
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn an_aborted_connection_fails_its_next_read_and_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let abort = CancellationToken::new();
        let mut incoming = incoming_until(listener, 4, Duration::from_secs(10), abort.clone());
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let _stream = conn.connect_info().stream_opened();
        assert!(
            read_error(&mut conn, Duration::from_secs(60))
                .await
                .is_none()
        );
        abort.cancel();
        let e = read_error(&mut conn, Duration::from_millis(10)).await;
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::ConnectionAborted));
        let written = tokio::io::AsyncWriteExt::write(&mut conn, b"x").await;
        assert_eq!(
            written.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionAborted)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_at_the_write_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(listener, 4, Duration::from_secs(60));
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        // A stream is open: only the write deadline can close it.
        let _stream = conn.connect_info().stream_opened();
        let chunk = vec![0u8; 1 << 16];
        let started = Instant::now();
        let error = loop {
            match tokio::io::AsyncWriteExt::write(&mut conn, &chunk).await {
                Ok(_) => assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "writes progress"
                ),
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(
            started.elapsed() >= Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
