//! One HTTP connection's socket as hyper sees it, with what hyper does not enforce itself:
//!
//! * **A write deadline.** hyper writes an answer for as long as the peer takes to read
//!   it; a client that pipelines requests and never reads holds its connection (and a
//!   slot of the cap, and the answers' memory) forever. A write that makes no progress
//!   for `write_timeout` fails the connection.
//! * **hyper's own error answers in the API's error shape.** A request hyper cannot parse
//!   (a raw `>` in the path, headers over the buffer) is answered by hyper itself with an
//!   empty body before any route sees it; that answer is replaced by the same status with
//!   the `{"field", "message"}` body every other error has.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A socket with a write deadline and JSON error answers.
pub(super) struct GuardedIo<T> {
    inner: T,
    write_timeout: Duration,
    /// Armed while a write waits for the peer to read.
    stalled: Option<Pin<Box<Sleep>>>,
    /// An answer replacing hyper's own, still to be written (bytes, written so far).
    replacement: Option<(Vec<u8>, usize)>,
}

impl<T> GuardedIo<T> {
    pub(super) fn new(inner: T, write_timeout: Duration) -> GuardedIo<T> {
        GuardedIo {
            inner,
            write_timeout,
            stalled: None,
            replacement: None,
        }
    }
}

/// hyper's own error answer (`HTTP/1.1 4xx …` with an empty body: every answer of the routes
/// carries a JSON body), as the replacement in the API's error shape.
fn replacement_for(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix("HTTP/1.1 ")?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 || !code.starts_with('4') && !code.starts_with('5') {
        return None;
    }
    let empty = lines.any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    if !empty || buf.len() != head_end + 4 {
        return None;
    }
    let message = match code {
        "400" => {
            "the request could not be parsed as HTTP/1.1 (a raw character not allowed in a path or header?)"
        }
        "431" => "the request's headers are too large",
        "408" => "the request's headers did not arrive in time",
        "505" => "only HTTP/1.1 is served",
        _ => reason,
    };
    let body = serde_json::json!({"field": "", "message": message}).to_string();
    Some(
        format!(
            "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> GuardedIo<T> {
    /// Fails once a write has made no progress for the deadline.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let timeout = self.write_timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not read its answer in time",
            ));
        }
        Ok(())
    }

    /// Writes what is left of a replacement answer.
    fn drain_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    self.stalled = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.check_stall(cx)?;
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain_replacement(cx))?;
        if let Some(bytes) = replacement_for(buf) {
            this.replacement = Some((bytes, 0));
            // The original counts as written; the replacement goes out in its place.
            let _ = this.drain_replacement(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                this.check_stall(cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain_replacement(cx))?;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                this.check_stall(cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain_replacement(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_empty_error_answers_are_replaced() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let r = String::from_utf8(replacement_for(hyper_400).unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["field"], "");
        assert!(r.contains(&format!("content-length: {}\r\n", body.len())));
        // The routes' answers are left alone: a body, a success, a 204.
        for answer in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 20\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n{}",
        ] {
            assert!(replacement_for(answer).is_none(), "{answer:?}");
        }
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_fails_the_write_after_the_deadline() {
        use tokio::io::AsyncWriteExt;
        let (a, _b) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(a, Duration::from_millis(100));
        let started = std::time::Instant::now();
        let chunk = vec![0u8; 1024];
        let err = loop {
            if let Err(e) = io.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
