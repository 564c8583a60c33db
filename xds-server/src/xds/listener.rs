//! The ADS listener's accept loop with a connection cap: past `max_connections` open
//! streams, a new connection is closed on accept instead of taking a file descriptor the
//! process may need elsewhere (the HTTP listener has its own cap, so neither side can
//! starve the other). An accept error — out of file descriptors, most likely — backs off
//! for 50 ms instead of spinning.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default for `[ads] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Accepted connections, at most `max` open at once.
pub(super) struct CappedIncoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    refused: u64,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CappedIncoming {
    pub(super) fn new(listener: TcpListener, max: usize) -> CappedIncoming {
        CappedIncoming {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
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
                        return Poll::Ready(Some(Ok(CappedConn {
                            stream,
                            _slot: slot,
                        })));
                    }
                    Err(_) => {
                        this.refused += 1;
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

/// An accepted connection holding its slot until it closes.
pub(super) struct CappedConn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for CappedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for CappedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn past_the_cap_connections_are_closed_and_a_slot_frees_on_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = CappedIncoming::new(listener, 2);
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        // The third is accepted by the kernel, then closed by the cap: its reader sees EOF.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let accept_more = tokio::time::timeout(Duration::from_millis(300), incoming.next());
        assert!(accept_more.await.is_err(), "no third connection is yielded");
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await;
        assert!(matches!(n, Ok(0) | Err(_)), "the third was closed: {n:?}");
        // Closing one frees its slot for the next.
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        let yielded = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(yielded, Ok(Some(Ok(_)))));
    }
}
