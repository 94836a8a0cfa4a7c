//! Connections: the accept loop under a cap on open connections, each connection served by
//! hyper's HTTP/1.1 with a header-read timeout, a declared body over the limit refused
//! before it is read, and the two phases of a shutdown (drain, then cut).
//!
//! A connection that times out reading a request's headers gets a 408 (an OpenAI error
//! object) when part of a request had arrived, and is simply closed when it was idle. A
//! response that refuses a request whose body was not read (408, 413) closes the
//! connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The request line and headers together are at most this long (431 beyond).
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most header fields in a request (431 beyond).
pub const MAX_HEADERS: usize = 100;
/// How long a connection refused for being slow or too large gets to take its answer
/// before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// Longest pause after a failed `accept` (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The `endpoint` label of what is refused before it reaches the router.
const CONNECTION: &str = "connection";

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Answering requests.
    Serving,
    /// Shutting down: connections without a request in flight close now, the others after
    /// their response.
    Draining,
    /// The grace period is over: every connection closes now.
    Cutting,
}

/// What every connection is held to.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Time to receive a request's line and headers (and the longest idle keep-alive).
    pub header_read_timeout: Duration,
    /// Longest a write may wait for room in the socket's send buffer; past it the
    /// connection is closed.
    pub send_timeout: Duration,
    /// A declared `Content-Length` above this is answered 413 without reading the body.
    pub max_body_bytes: usize,
}

/// The open connections: a slot each, and the phase they follow.
#[derive(Debug)]
pub struct Connections {
    router: Router,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    capacity: u32,
    phase: watch::Sender<Phase>,
}

impl Connections {
    /// Room for `capacity` connections at once, answered by `router`; what is refused
    /// before it reaches the router is counted in `metrics` (endpoint `connection`).
    pub fn new(
        router: Router,
        limits: ConnectionLimits,
        metrics: Arc<Metrics>,
        capacity: u32,
    ) -> Self {
        Self {
            router,
            limits: Arc::new(limits),
            metrics,
            slots: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            phase: watch::Sender::new(Phase::Serving),
        }
    }

    /// Accepts connections until `shutdown` resolves; at the cap, waits for a free slot
    /// (new clients wait in the listen backlog). The listener closes on return.
    pub async fn accept_until(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                biased;
                () = &mut shutdown => return,
                slot = self.slots.clone().acquire_owned() => slot,
            };
            let Ok(slot) = slot else { return };
            let stream = tokio::select! {
                biased;
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        if !is_one_connection_error(&e) {
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(
                stream,
                slot,
                self.router.clone(),
                self.limits.clone(),
                self.metrics.clone(),
                self.phase.subscribe(),
            ));
        }
    }

    /// Moves every connection to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Waits up to `limit` for every connection to close; whether they all did.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let all = self.slots.acquire_many(self.capacity);
        matches!(tokio::time::timeout(limit, all).await, Ok(Ok(_)))
    }
}

/// Errors of `accept` that concern one connection only, not the listener.
fn is_one_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What a connection has done, shared by its reader, its requests and its task.
#[derive(Debug, Default)]
struct Traffic {
    /// Bytes read from the client.
    bytes_read: AtomicU64,
    /// `bytes_read` when the last response was ready.
    bytes_answered: AtomicU64,
    /// Requests whose response has not been sent to the end.
    in_flight: AtomicUsize,
    /// The last response refused a request whose body was not read.
    refused: AtomicBool,
}

impl Traffic {
    /// Whether part of a request arrived after the last response.
    fn has_partial_request(&self) -> bool {
        self.bytes_read.load(Ordering::Acquire) > self.bytes_answered.load(Ordering::Acquire)
    }
}

/// Serves one connection until it ends, the server cuts it, or its headers time out.
async fn serve(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    router: Router,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    mut phase: watch::Receiver<Phase>,
) {
    let stream = Arc::new(stream);
    let traffic = Arc::new(Traffic::default());
    let io = SharedStream {
        stream: stream.clone(),
        traffic: traffic.clone(),
        send_timeout: limits.send_timeout,
        stalled: None,
    };
    let service = {
        let (limits, metrics, traffic) = (limits.clone(), metrics.clone(), traffic.clone());
        hyper::service::service_fn(move |request| {
            answer(
                request,
                router.clone(),
                limits.clone(),
                metrics.clone(),
                traffic.clone(),
            )
        })
    };
    let mut connection = Box::pin(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .serve_connection(TokioIo::new(io), service),
    );
    if *phase.borrow_and_update() != Phase::Serving {
        return;
    }
    let ended = loop {
        tokio::select! {
            ended = connection.as_mut() => break Some(ended),
            changed = phase.changed() => match changed.map(|()| *phase.borrow_and_update()) {
                Ok(Phase::Serving) => {}
                Ok(Phase::Draining) if traffic.in_flight.load(Ordering::Acquire) > 0 => {
                    connection.as_mut().graceful_shutdown();
                }
                // Draining with nothing in flight, cutting, or the server gone.
                _ => break None,
            },
        }
    };
    // hyper's handle on the socket goes with the connection.
    drop(connection);
    let Some(ended) = ended else { return };
    if let Err(error) = &ended {
        // hyper answered these itself: 431 for a head over the limits, else 400.
        if error.is_parse_too_large() {
            metrics.request(CONNECTION, 431);
        } else if error.is_parse() {
            metrics.request(CONNECTION, 400);
        }
    }
    let slow_head = ended.as_ref().is_err_and(|e| e.is_timeout()) && traffic.has_partial_request();
    if !slow_head && !traffic.refused.load(Ordering::Acquire) {
        return;
    }
    let Ok(mut stream) = Arc::try_unwrap(stream) else {
        return;
    };
    if slow_head {
        metrics.request(CONNECTION, 408);
        let error = ApiError::read_timeout("headers", limits.header_read_timeout);
        let _ = tokio::time::timeout(LINGER, stream.write_all(&raw_response(&error))).await;
    }
    linger_close(stream).await;
}

/// Answers one request: 413 at once for a declared body over the limit, else the router's
/// response, which closes the connection when it refuses an unread body.
async fn answer(
    request: Request<Incoming>,
    mut router: Router,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    traffic: Arc<Traffic>,
) -> Result<Response<Body>, Infallible> {
    let in_flight = InFlight::new(traffic.clone());
    let mut response = if declared_length(&request)
        .is_some_and(|n| n > limits.max_body_bytes as u64)
    {
        metrics.request(CONNECTION, 413);
        ApiError::too_large(limits.max_body_bytes).into_response()
    } else {
        let Ok(response) = tower_service::Service::call(&mut router, request.map(Body::new)).await;
        response
    };
    traffic.bytes_answered.store(
        traffic.bytes_read.load(Ordering::Acquire),
        Ordering::Release,
    );
    if matches!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        traffic.refused.store(true, Ordering::Release);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response.map(|body| {
        Body::new(CountedBody {
            body,
            _in_flight: in_flight,
        })
    }))
}

/// The `Content-Length` the request declares.
fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An error written straight to the socket (hyper has given the connection up).
fn raw_response(error: &ApiError) -> Vec<u8> {
    let body = error.body().to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        error.status.as_u16(),
        error.status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes()
}

/// Ends the sending side, then reads and drops what the client still sends for a moment,
/// so that closing does not reset the connection before the client has read the answer.
async fn linger_close(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        let _ = stream.shutdown().await;
        let mut sink = [0; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Counts a request in flight until its response body is dropped.
#[derive(Debug)]
struct InFlight(Arc<Traffic>);

impl InFlight {
    fn new(traffic: Arc<Traffic>) -> Self {
        traffic.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(traffic)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted in flight until it is sent or dropped.
struct CountedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper reads and writes it, while the connection's task keeps a handle to
/// answer a timed-out request after hyper has given up. Counts the bytes read; a write
/// that waits `send_timeout` for room fails (`TimedOut`), ending the connection.
struct SharedStream {
    stream: Arc<TcpStream>,
    traffic: Arc<Traffic>,
    send_timeout: Duration,
    /// When the pending write gives up; armed when a write first has to wait.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SharedStream {
    /// Waits until the socket has room for a write, or fails once it has waited
    /// `send_timeout`.
    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stream.poll_write_ready(cx)?.is_ready() {
            return Poll::Ready(Ok(()));
        }
        let timeout = self.send_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no room to send for {timeout:?}: the client is not reading"),
        )))
    }

    /// `written`, after which a later wait starts a new stall deadline.
    fn progressed(&mut self, written: io::Result<usize>) -> Poll<io::Result<usize>> {
        if written.is_ok() {
            self.stalled = None;
        }
        Poll::Ready(written)
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    self.traffic
                        .bytes_read
                        .fetch_add(n as u64, Ordering::AcqRel);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_writable(cx))?;
            match this.stream.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return this.progressed(written),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_writable(cx))?;
            match this.stream.try_write_vectored(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return this.progressed(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The socket closes when the connection's task ends.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write the peer takes nothing of fails with `TimedOut` once the send timeout has
    /// passed, whatever the socket buffers held before.
    #[tokio::test]
    async fn a_write_the_client_takes_nothing_of_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, (server, _)) = (client.unwrap(), accepted.unwrap());
        let mut shared = SharedStream {
            stream: Arc::new(server),
            traffic: Arc::default(),
            send_timeout: Duration::from_millis(300),
            stalled: None,
        };
        let chunk = vec![b'x'; 64 << 10];
        let start = tokio::time::Instant::now();
        let mut sent = 0usize;
        let error = loop {
            match shared.write(&chunk).await {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{sent} bytes taken"
            );
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(sent > 0);
        drop(client);
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_is_not_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut client, (server, _)) = (client.unwrap(), accepted.unwrap());
        let mut shared = SharedStream {
            stream: Arc::new(server),
            traffic: Arc::default(),
            send_timeout: Duration::from_secs(2),
            stalled: None,
        };
        // The reader takes 64 KiB every 5 ms, slower than the writer: the send buffer is
        // full most of the time, yet room comes well within the timeout.
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0; 64 << 10];
            let mut total = 0;
            loop {
                match client.read(&mut buffer).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let chunk = vec![b'x'; 64 << 10];
        let total = 16 << 20;
        let mut sent = 0;
        while sent < total {
            sent += shared.write(&chunk).await.unwrap();
        }
        drop(shared);
        assert_eq!(reader.await.unwrap(), sent);
    }
}
