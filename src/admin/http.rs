//! The admin HTTP/1.1 listener (hyper 1.x): routing, limits, graceful stop.
//!
//! Handed an already-bound listener, so tests bind port 0 and the binary
//! decides where to listen. Each connection runs in its own task, kept in
//! a `JoinSet`. A slow or idle client cannot hold a connection for long:
//! hyper's header read timeout also covers the wait for the next request
//! on a kept-alive connection, and the body must arrive within its own
//! timeout.
//!
//! The listener never stops accepting: a keepalived check of
//! `/health/ready` that waited in the listen backlog behind idle clients
//! would time out and move the VIP for nothing. At
//! [`Limits::max_connections`] a new connection makes the oldest one
//! leave instead: the oldest idle one is closed at once (it has no request
//! in progress: no answer is lost), or, when every connection is in a
//! request, the oldest finishes its request and closes. Connections
//! finishing a request this way are bounded too (as many again); beyond
//! that the oldest is cut.
//!
//! [`Access`] decides who may use the RPC and `/metrics`: a bearer token
//! compared in constant time, 401 with `WWW-Authenticate: Bearer`
//! otherwise. `/health/*` never asks for it (load balancers, keepalived).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{rpc, Backend};
use crate::metrics::AdminEvent;

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
    /// Connections served at once; at the cap a new one makes the oldest
    /// leave (see the module docs), it never waits.
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

/// Who may use the RPC and `/metrics`.
#[derive(Clone, Default)]
pub struct Access {
    /// HMAC-SHA256 of a fixed text under the token: what a presented token
    /// must reproduce. Comparing MACs takes the same time whatever the
    /// token's length or the first differing byte.
    token: Option<Arc<[u8]>>,
    metrics_need_token: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("metrics_need_token", &self.metrics_need_token)
            .finish()
    }
}

/// The text a token's MAC is computed over.
const TOKEN_PROOF: &[u8] = b"sipedge admin bearer token";

fn token_mac(token: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(token).expect("HMAC takes a key of any length");
    mac.update(TOKEN_PROOF);
    mac
}

impl Access {
    /// No token: anyone who reaches the listener may use everything.
    pub fn open() -> Access {
        Access::default()
    }

    /// `POST /RPC` needs `Authorization: Bearer <token>`; `/metrics` too
    /// when `metrics_need_token`.
    pub fn token(token: &[u8], metrics_need_token: bool) -> Access {
        Access {
            token: Some(token_mac(token).finalize().into_bytes().to_vec().into()),
            metrics_need_token,
        }
    }

    /// `None` when `req` may go on, else what to count.
    fn refuse(&self, req: &Request<Incoming>) -> Option<AdminEvent> {
        let expected = self.token.as_ref()?;
        let Some(presented) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
        else {
            return Some(AdminEvent::TokenMissing);
        };
        match token_mac(presented).verify_slice(expected) {
            Ok(()) => None,
            Err(_) => Some(AdminEvent::TokenWrong),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750 §2.1;
/// the scheme in any case, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Serves the admin routes on `listener` with [`Limits::default`] and no
/// token until `cancel` fires, then lets requests in flight finish (up to
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
    serve_with_access(listener, backend, cancel, limits, Access::open()).await;
}

/// One served connection, as the accept loop sees it.
struct Slot {
    task: AbortHandle,
    /// Set while the connection's request is being answered.
    busy: Arc<AtomicBool>,
    /// Fired: finish the request in progress, then close.
    leave: CancellationToken,
    leaving: bool,
}

/// Marks a connection busy while a request on it is answered.
struct BusyGuard(Arc<AtomicBool>);

impl BusyGuard {
    fn enter(flag: &Arc<AtomicBool>) -> BusyGuard {
        flag.store(true, Ordering::Relaxed);
        BusyGuard(Arc::clone(flag))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Makes room for one more connection: see the module docs.
fn make_room(slots: &mut VecDeque<Slot>, max: usize, backend: &dyn Backend) {
    let staying = slots.iter().filter(|s| !s.leaving).count();
    if staying >= max {
        let idle = slots
            .iter()
            .position(|s| !s.leaving && !s.busy.load(Ordering::Relaxed));
        let oldest = idle.or_else(|| slots.iter().position(|s| !s.leaving));
        if let Some(i) = oldest {
            backend.count(AdminEvent::ConnectionEvicted);
            if idle.is_some() {
                slots[i].task.abort();
                slots.remove(i);
            } else {
                slots[i].leave.cancel();
                slots[i].leaving = true;
            }
        }
    }
    if slots.len() >= 2 * max {
        if let Some(i) = slots.iter().position(|s| s.leaving) {
            slots[i].task.abort();
            slots.remove(i);
        }
    }
}

/// [`serve_with`], the RPC (and maybe `/metrics`) behind `access`.
pub async fn serve_with_access(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    cancel: CancellationToken,
    limits: Limits,
    access: Access,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    // Connection tasks live here, aborted when `serve` returns, so none
    // outlives the listener; `slots` holds them oldest first.
    let mut connections = JoinSet::new();
    let mut slots: VecDeque<Slot> = VecDeque::new();
    // Parent of every connection's `leave`: the stop.
    let stopping = CancellationToken::new();
    let max_connections = limits.max_connections.max(1);
    let access = Arc::new(access);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    loop {
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
        while let Some(ended) = connections.try_join_next_with_id() {
            let id = match ended {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            slots.retain(|s| s.task.id() != id);
        }
        make_room(&mut slots, max_connections, &*backend);
        let busy = Arc::new(AtomicBool::new(false));
        let leave = stopping.child_token();
        let service = service_fn({
            let (backend, access, busy) = (Arc::clone(&backend), Arc::clone(&access), busy.clone());
            move |req| {
                let guard = BusyGuard::enter(&busy);
                let (backend, access) = (Arc::clone(&backend), Arc::clone(&access));
                async move {
                    let response = route(req, backend, &access, limits, peer).await;
                    drop(guard);
                    Ok::<_, Infallible>(response)
                }
            }
        });
        let task = connections.spawn({
            let (builder, leave) = (Arc::clone(&builder), leave.clone());
            async move {
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                let ended = tokio::select! {
                    ended = connection.as_mut() => ended,
                    () = leave.cancelled() => {
                        // Idle: closes now; in a request: after its answer.
                        connection.as_mut().graceful_shutdown();
                        match tokio::time::timeout(limits.shutdown_grace, connection).await {
                            Ok(ended) => ended,
                            Err(_) => return,
                        }
                    }
                };
                if let Err(e) = ended {
                    // Timeouts, resets, malformed requests: the client's
                    // problem, not an event for the operator.
                    tracing::debug!(%peer, error = %e, "admin connection ended");
                }
            }
        });
        slots.push_back(Slot {
            task,
            busy,
            leave,
            leaving: false,
        });
    }
    drop(listener);
    // Idle connections close at once (one half-way through its headers
    // too: hyper would wait for the rest); requests in flight get the
    // grace period; dropping the set aborts whatever is left.
    for slot in &slots {
        if !slot.busy.load(Ordering::Relaxed) {
            slot.task.abort();
        }
    }
    stopping.cancel();
    let drain = async { while connections.join_next().await.is_some() {} };
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
    access: &Access,
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
    let guarded = match path {
        Path::Rpc => true,
        Path::Metrics => access.metrics_need_token,
        Path::Live | Path::Ready => false,
    };
    if guarded {
        if let Some(event) = access.refuse(&req) {
            backend.count(event);
            tracing::debug!(%peer, ?path, reason = event.as_str(), "admin request refused: 401");
            return closing(unauthorized(event));
        }
    }
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

/// 401 with the challenge (RFC 6750 §3): `invalid_token` when a token
/// came and was wrong.
fn unauthorized(event: AdminEvent) -> Response<Full<Bytes>> {
    let (challenge, body) = match event {
        AdminEvent::TokenWrong => (
            r#"Bearer realm="sipedge", error="invalid_token""#,
            "wrong bearer token\n",
        ),
        _ => (
            r#"Bearer realm="sipedge""#,
            "this needs Authorization: Bearer <the [admin] token_file's token>\n",
        ),
    };
    let mut response = text(StatusCode::UNAUTHORIZED, body);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_reads_rfc_6750_credentials() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bEARER   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Basic YWJj"), None);
        assert_eq!(bearer(b""), None);
    }

    #[test]
    fn a_token_proves_itself_only() {
        let Access { token, .. } = Access::token(b"0123456789abcdef", false);
        let expected = token.unwrap();
        assert!(token_mac(b"0123456789abcdef")
            .verify_slice(&expected)
            .is_ok());
        for wrong in [&b"0123456789abcdeF"[..], b"0123456789abcde", b""] {
            assert!(token_mac(wrong).verify_slice(&expected).is_err());
        }
        assert!(!format!("{:?}", Access::token(b"secret-token-123", true)).contains("secret"));
    }
}
