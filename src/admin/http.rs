//! The admin HTTP/1.1 listener (hyper 1.x): routing, limits, graceful stop.
//!
//! Handed an already-bound listener, so tests bind port 0 and the binary
//! decides where to listen. Each connection runs in its own task, kept in
//! a `JoinSet`; at most [`Limits::max_connections`] at once (further
//! clients wait in the listen backlog). A slow or idle client cannot hold
//! a connection: hyper's header read timeout also covers the wait for the
//! next request on a kept-alive connection, and the body must arrive
//! within its own timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{rpc, Backend};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const APPLICATION_JSON: &str = "application/json";

/// The listener's bounds. [`Limits::default`] suits production; tests
/// shorten the timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON-RPC request body; larger ones get 413. The biggest
    /// real request (`set_state` with a long URI) is well under 1 KiB.
    pub max_body: usize,
    /// Time a client has to send a request's headers, counted from the
    /// connection's start or the end of its previous response: also the
    /// idle timeout of kept-alive connections.
    pub header_read_timeout: Duration,
    /// Time a client has to send the request body once its headers are in.
    pub body_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long [`serve`] waits for requests in flight after the stop.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves the admin routes on `listener` with [`Limits::default`] until
/// `cancel` fires, then lets requests in flight finish (up to
/// [`Limits::shutdown_grace`]) and returns.
pub async fn serve(listener: TcpListener, backend: Arc<dyn Backend>, cancel: CancellationToken) {
    serve_with(listener, backend, cancel, Limits::default()).await;
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    cancel: CancellationToken,
    limits: Limits,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    // Connection tasks live here: counted for the connection bound, and
    // aborted when `serve` returns, so none outlives the listener.
    let mut connections = JoinSet::new();
    let max_connections = limits.max_connections.max(1);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= max_connections {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = connections.join_next() => continue,
            }
        }
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of
                    // spinning, keep serving once it clears.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let backend = Arc::clone(&backend);
        let service = service_fn(move |req| {
            let backend = Arc::clone(&backend);
            async move { Ok::<_, Infallible>(route(req, backend, limits, peer).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets, malformed requests: the client's
                // problem, not an event for the operator.
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
    drop(listener);
    // Idle connections close at once; requests in flight get the grace
    // period; dropping the set aborts whatever is left.
    let drain = async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    };
    if tokio::time::timeout(limits.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!("admin connections still open after the grace period; closing them");
    }
}

/// One request to one response. Never fails: every problem is a status.
async fn route(
    req: Request<Incoming>,
    backend: Arc<dyn Backend>,
    limits: Limits,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let is_get = matches!(*req.method(), Method::GET | Method::HEAD);
    let is_post = req.method() == Method::POST;
    let path = match req.uri().path() {
        "/metrics" => Path::Metrics,
        "/health/live" => Path::Live,
        "/health/ready" => Path::Ready,
        "/RPC" | "/rpc" => Path::Rpc,
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    match path {
        Path::Metrics if is_get => match blocking(backend, |b| b.metrics_text()).await {
            Some(body) => respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, body),
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n"),
        },
        Path::Live if is_get => text(StatusCode::OK, "ok\n"),
        Path::Ready if is_get => match blocking(backend, |b| b.ready()).await {
            Some(r) if r.ready => text(StatusCode::OK, format!("{}\n", r.reason)),
            Some(r) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", r.reason)),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "readiness unknown\n"),
        },
        Path::Metrics | Path::Live | Path::Ready => not_allowed("GET, HEAD"),
        Path::Rpc if is_post => rpc(req, backend, limits, peer).await,
        Path::Rpc => not_allowed("POST"),
    }
}

/// The known paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Metrics,
    Live,
    Ready,
    Rpc,
}

async fn rpc(
    req: Request<Incoming>,
    backend: Arc<dyn Backend>,
    limits: Limits,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return closing(too_large(limits));
    }
    let body = Limited::new(req.into_body(), limits.max_body);
    let body = match tokio::time::timeout(limits.body_read_timeout, body.collect()).await {
        Err(_) => {
            return closing(text(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time\n",
            ))
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(too_large(limits))
        }
        Ok(Err(_)) => {
            return closing(text(
                StatusCode::BAD_REQUEST,
                "could not read the request body\n",
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let span = tracing::info_span!("admin_rpc", %peer);
    let reply =
        tokio::task::spawn_blocking(move || span.in_scope(|| rpc::handle(&body, &*backend)))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "admin RPC handler failed");
                rpc::internal_error()
            });
    let status =
        StatusCode::from_u16(reply.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply.body {
        Some(body) => respond(status, APPLICATION_JSON, body),
        None => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
    }
}

/// Runs a backend call off the async workers (see [`Backend`]); `None` if
/// it panicked.
async fn blocking<T: Send + 'static>(
    backend: Arc<dyn Backend>,
    f: impl FnOnce(&dyn Backend) -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(move || f(&*backend)).await {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::error!(error = %e, "admin backend call failed");
            None
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, TEXT_PLAIN, body)
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn too_large(limits: Limits) -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {} bytes\n", limits.max_body),
    )
}

/// Marks a response after which the connection closes: the unread rest of
/// the body would otherwise be taken for the next request.
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
