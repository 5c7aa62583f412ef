//! The API listener's accept loop: one hyper HTTP/1 connection per accepted
//! socket, with the `server.read_timeout` / `server.write_timeout` bounds and
//! the live connection count.
//!
//! `axum::serve` exposes neither hyper's header read timeout nor a write
//! bound, so this loop does what it does (accept, serve, graceful shutdown)
//! plus:
//! - **read_timeout**: hyper's header read timeout (a request's headers must
//!   arrive within it; an idle keep-alive connection is closed after it), and
//!   the request body must arrive within it after the headers
//!   (`tower_http::timeout::DeadlineBody`). A request may thus take up to
//!   twice `read_timeout` to read in full.
//! - **write_timeout**: a write that makes no progress for that long (the
//!   client stopped reading its response) closes the connection. It bounds
//!   stalls, not the total time to send a large response, and not the
//!   handler's own time (queries have `analytics.query.timeout`).
//! - `analytics_active_connections` counts open client connections: +1 at
//!   accept, −1 when the connection's socket is dropped.
//!
//! Invariant: after `shutdown` fires no connection is accepted; open ones
//! finish their in-flight request and close; [`serve`] returns once all of
//! them have.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::DeadlineBody;

/// The connection-level bounds of `server.*`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
/// Handlers can extract `ConnectInfo<SocketAddr>` (the peer address).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    active_connections: IntGauge,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning; the connections that exist keep being served.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let io = CountedStream::new(stream, limits.write_timeout, active_connections.clone());
        connections.spawn(serve_connection(
            io,
            peer,
            router.clone(),
            limits,
            closing.clone(),
        ));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection(
    io: CountedStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    closing: CancellationToken,
) {
    let read_timeout = limits.read_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(|body| Body::new(DeadlineBody::new(read_timeout, body)));
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let mut closing_seen = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(error = %error, peer = %peer, "connection ended with an error");
                }
                break;
            }
            () = closing.cancelled(), if !closing_seen => {
                closing_seen = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A client socket that counts itself in `analytics_active_connections` and
/// fails a write that has made no progress for `write_timeout`.
struct CountedStream {
    stream: TcpStream,
    write_timeout: Duration,
    /// Armed while a write is pending; reset by any progress.
    write_stall: Option<Pin<Box<Sleep>>>,
    gauge: IntGauge,
}

impl CountedStream {
    fn new(stream: TcpStream, write_timeout: Duration, gauge: IntGauge) -> Self {
        gauge.inc();
        CountedStream {
            stream,
            write_timeout,
            write_stall: None,
            gauge,
        }
    }

    /// Called when a write (or flush) is pending: arms the stall timer, or
    /// reports the timeout once it has elapsed.
    fn poll_stall(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timeout = self.write_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stall.as_mut().poll(context));
        self.write_stall = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "server.write_timeout: the client did not read the response",
        )))
    }
}

impl CountedStream {
    /// Passes a write-side poll through: while it is pending the write
    /// timeout runs, and any progress disarms it.
    fn bound_write<T>(
        &mut self,
        context: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                ready!(self.poll_stall(context))?;
                Poll::Pending
            }
            done => {
                self.write_stall = None;
                done
            }
        }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(context, buffer);
        self.bound_write(context, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(context, buffers);
        self.bound_write(context, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(context);
        self.bound_write(context, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}
