//! The client side of `sipedge ctl`: sends one JSON-RPC request to the
//! admin listener and returns a typed answer, or an error that carries the
//! server's code and message for the CLI to print.
//!
//! One TCP connection per call (like `kamcmd`): an operator's command, not
//! a hot path, and nothing is left open between commands. The answers are
//! read with the types of [`super::rpc`], which skip fields they do not
//! know, so the same client also reads a real Kamailio's `jsonrpcs` answer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sipedge::admin::ctl::CtlError> {
//! use sipedge::admin::ctl::{format_list, Client};
//! let client = Client::new("http://127.0.0.1:9090")?;
//! client.set_state("dp", 1, "sip:10.0.1.10:5080").await?;
//! print!("{}", format_list(&client.list().await?));
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::rpc::{method, ErrorObject, HashResult, ListResult, PingState};
use crate::dispatcher::health::{SetState, SetStateError, State};

/// How long one call may take, connect to last byte, unless changed with
/// [`Client::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The path used when the admin URL names none (or `/`): Kamailio's
/// `jsonrpcs` convention.
pub const DEFAULT_PATH: &str = "/RPC";

/// Largest answer read. `dispatcher.list` of a thousand destinations with
/// attributes is well under 1 MiB.
const MAX_REPLY: usize = 16 * 1024 * 1024;

/// How much of a non-JSON error page an error message quotes.
const SNIPPET: usize = 200;

/// Why a `ctl` call failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("bad admin URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    /// The token file could not be read, or holds no usable token.
    #[error("token file {file}: {reason}")]
    TokenFile { file: String, reason: String },
    /// Checked before sending, with the server's own parser.
    #[error("bad state: {0}")]
    BadState(#[from] SetStateError),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An HTTP error without a JSON-RPC answer, e.g. 404 for a wrong path.
    #[error("{addr} answered HTTP {status}: {body}")]
    HttpStatus {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("the answer from {addr} is larger than {limit} bytes")]
    TooLarge { addr: String, limit: usize },
    #[error("the answer from {addr} is not the expected JSON-RPC: {source}")]
    InvalidReply {
        addr: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the answer from {addr} has neither a result nor an error")]
    NoResult { addr: String },
    /// The server refused the call: JSON-RPC code, message and, from
    /// sipedge, a `data` string with the details.
    #[error(
        "{message} (code {code}){}",
        .data.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    Rpc {
        code: i64,
        message: String,
        data: Option<String>,
    },
}

impl CtlError {
    /// The JSON-RPC error code, when the server answered with one.
    pub fn rpc_code(&self) -> Option<i64> {
        match self {
            CtlError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A client for one admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// `host:port` to connect to (brackets kept for IPv6).
    connect: String,
    /// The `Host` header: the URL's authority as written.
    authority: String,
    /// Path and query of the RPC endpoint.
    path: String,
    timeout: Duration,
    /// `Bearer <token>`, marked sensitive: `Debug` does not show it.
    authorization: Option<HeaderValue>,
}

impl Client {
    /// `url` is `http://host[:port][/path]`, or just `host:port`. The port
    /// defaults to 80, the path to [`DEFAULT_PATH`].
    ///
    /// # Errors
    /// [`CtlError::BadUrl`] for anything else (`https` included: the
    /// listener speaks plain HTTP, keep it on loopback or a management
    /// network).
    pub fn new(url: &str) -> Result<Client, CtlError> {
        let bad = |reason| CtlError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let full = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = full.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported; use http://")),
            _ => return Err(bad("the scheme must be http")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        // `Authority::port` hides a port that does not fit a u16, so read
        // the text after the host (past an IPv6 literal's brackets).
        let after_host = match authority.as_str().rsplit_once(']') {
            Some((_, rest)) => rest,
            None => authority.as_str(),
        };
        let port = match after_host.split_once(':') {
            None => 80,
            Some((_, port)) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port must be 1 to 65535"))?,
        };
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => DEFAULT_PATH.to_owned(),
            Some(p) => p.to_owned(),
        };
        Ok(Client {
            connect: format!("{host}:{port}"),
            authority: authority.as_str().to_owned(),
            path,
            timeout: DEFAULT_TIMEOUT,
            authorization: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every call: what a
    /// server with `[admin] token_file` asks for.
    ///
    /// # Errors
    /// [`CtlError::TokenFile`] when the token is empty or cannot be a
    /// header value (control characters).
    pub fn with_token(mut self, token: &str) -> Result<Client, CtlError> {
        let bad = |reason: &str| CtlError::TokenFile {
            file: "(given)".into(),
            reason: reason.into(),
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(bad("empty"));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("not a valid header value"))?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// [`Client::with_token`] with the token read from `path` (its whole
    /// content, trimmed: the same file as the server's `token_file`).
    pub fn with_token_file(self, path: &std::path::Path) -> Result<Client, CtlError> {
        let file = path.display().to_string();
        let token = std::fs::read_to_string(path).map_err(|e| CtlError::TokenFile {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        self.with_token(&token).map_err(|e| match e {
            CtlError::TokenFile { reason, .. } => CtlError::TokenFile { file, reason },
            other => other,
        })
    }

    /// Replaces [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// `dispatcher.list`.
    pub async fn list(&self) -> Result<ListResult, CtlError> {
        let result = self.call(method::LIST, json!([])).await?;
        self.decode(result)
    }

    /// `dispatcher.set_state <state> <set> <uri|all>`; returns the server's
    /// confirmation text. The state is checked here first, with
    /// [`SetState::parse`], so a typo fails before anything is sent.
    pub async fn set_state(&self, state: &str, set: u32, uri: &str) -> Result<String, CtlError> {
        SetState::parse(state)?;
        let result = self
            .call(method::SET_STATE, json!([state, set, uri]))
            .await?;
        Ok(confirmation(result))
    }

    /// `dispatcher.set_duid_state <state> <set> <duid|all>`; returns the
    /// server's confirmation text. The state is checked here first.
    pub async fn set_duid_state(
        &self,
        state: &str,
        set: u32,
        duid: &str,
    ) -> Result<String, CtlError> {
        SetState::parse(state)?;
        let result = self
            .call(method::SET_DUID_STATE, json!([state, set, duid]))
            .await?;
        Ok(confirmation(result))
    }

    /// `dispatcher.add <set> <uri> [flags [priority [attrs]]]`, in memory
    /// until the next reload; returns the server's confirmation text.
    pub async fn add(
        &self,
        set: u32,
        uri: &str,
        flags: u32,
        priority: i32,
        attrs: Option<&str>,
    ) -> Result<String, CtlError> {
        let params = match attrs {
            Some(attrs) => json!([set, uri, flags, priority, attrs]),
            None => json!([set, uri, flags, priority]),
        };
        let result = self.call(method::ADD, params).await?;
        Ok(confirmation(result))
    }

    /// `dispatcher.remove <set> <uri>`, in memory until the next reload;
    /// returns the server's confirmation text.
    pub async fn remove(&self, set: u32, uri: &str) -> Result<String, CtlError> {
        let result = self.call(method::REMOVE, json!([set, uri])).await?;
        Ok(confirmation(result))
    }

    /// `dispatcher.hash <count> <value> [value2]`.
    pub async fn hash(
        &self,
        count: i32,
        value: &str,
        value2: Option<&str>,
    ) -> Result<HashResult, CtlError> {
        let params = match value2 {
            Some(v2) => json!([count, value, v2]),
            None => json!([count, value]),
        };
        let result = self.call(method::HASH, params).await?;
        self.decode(result)
    }

    /// `dispatcher.reload`; returns the server's confirmation text.
    pub async fn reload(&self) -> Result<String, CtlError> {
        let result = self.call(method::RELOAD, json!([])).await?;
        Ok(confirmation(result))
    }

    /// `dispatcher.ping_active`: `Some(on)` switches probing on or off,
    /// `None` asks.
    pub async fn ping_active(&self, on: Option<bool>) -> Result<PingState, CtlError> {
        let params = match on {
            None => json!([]),
            Some(on) => json!([i32::from(on)]),
        };
        let result = self.call(method::PING_ACTIVE, params).await?;
        self.decode(result)
    }

    /// Any method: sends `{"jsonrpc":"2.0","method":..,"params":..,"id":1}`
    /// and returns `result`, or the server's error as [`CtlError::Rpc`].
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, CtlError> {
        let request = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        let body = Bytes::from(request.to_string());
        let (status, reply) = tokio::time::timeout(self.timeout, self.exchange(body))
            .await
            .map_err(|_| CtlError::Timeout {
                addr: self.connect.clone(),
                after: self.timeout,
            })??;
        self.read_reply(status, &reply)
    }

    /// One HTTP/1.1 POST on a fresh connection.
    async fn exchange(&self, body: Bytes) -> Result<(StatusCode, Bytes), CtlError> {
        let http = |source: Box<dyn std::error::Error + Send + Sync>| CtlError::Http {
            addr: self.connect.clone(),
            source,
        };
        let stream =
            TcpStream::connect(&self.connect)
                .await
                .map_err(|source| CtlError::Connect {
                    addr: self.connect.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.into()))?;
        let driver = tokio::spawn(connection);
        let outcome = async {
            let mut request = Request::new(Full::new(body));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = self.path.parse().map_err(|_| CtlError::BadUrl {
                url: self.path.clone(),
                reason: "bad path",
            })?;
            let headers = request.headers_mut();
            headers.insert(
                HOST,
                HeaderValue::from_str(&self.authority).map_err(|e| http(e.into()))?,
            );
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(authorization) = &self.authorization {
                headers.insert(AUTHORIZATION, authorization.clone());
            }
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http(e.into()))?;
            let status = response.status();
            let reply = Limited::new(response.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        CtlError::TooLarge {
                            addr: self.connect.clone(),
                            limit: MAX_REPLY,
                        }
                    } else {
                        http(e)
                    }
                })?
                .to_bytes();
            Ok((status, reply))
        }
        .await;
        driver.abort();
        outcome
    }

    fn read_reply(&self, status: StatusCode, reply: &[u8]) -> Result<Value, CtlError> {
        let addr = || self.connect.clone();
        let mut envelope = match serde_json::from_slice::<serde_json::Map<String, Value>>(reply) {
            Ok(envelope) => envelope,
            // An error page from something that is not the RPC endpoint.
            Err(_) if !status.is_success() => {
                return Err(CtlError::HttpStatus {
                    addr: addr(),
                    status: status.as_u16(),
                    body: snippet(reply),
                })
            }
            Err(source) => {
                return Err(CtlError::InvalidReply {
                    addr: addr(),
                    source,
                })
            }
        };
        if let Some(error) = envelope.remove("error").filter(|e| !e.is_null()) {
            let error: ErrorObject =
                serde_json::from_value(error).map_err(|source| CtlError::InvalidReply {
                    addr: addr(),
                    source,
                })?;
            return Err(CtlError::Rpc {
                code: error.code,
                message: error.message,
                data: error.data.map(|d| match d {
                    Value::String(s) => s,
                    other => other.to_string(),
                }),
            });
        }
        envelope
            .remove("result")
            .ok_or_else(|| CtlError::NoResult { addr: addr() })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, result: Value) -> Result<T, CtlError> {
        serde_json::from_value(result).map_err(|source| CtlError::InvalidReply {
            addr: self.connect.clone(),
            source,
        })
    }
}

/// The text of a confirmation result; older Kamailio releases answer
/// `set_state` and `reload` with an empty result.
fn confirmation(result: Value) -> String {
    match result {
        Value::String(s) => s,
        Value::Null => "Ok.".to_owned(),
        Value::Object(o) if o.is_empty() => "Ok.".to_owned(),
        other => other.to_string(),
    }
}

/// The first [`SNIPPET`] characters of a body, one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text
        .chars()
        .take(SNIPPET)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > SNIPPET {
        out.push_str("...");
    }
    out
}

/// `dispatcher.list` as a table, one destination per line, sets in the
/// order received:
///
/// ```text
/// SET  URI                 STATE     FLAGS  PRIORITY  PROBING  ATTRS
/// 1    sip:10.0.1.10:5080  active    AP     10        yes      duid=fs-a
/// 1    sip:10.0.1.11:5080  inactive  IX     0         no       -
/// ```
pub fn format_list(list: &ListResult) -> String {
    const HEADER: [&str; 7] = [
        "SET", "URI", "STATE", "FLAGS", "PRIORITY", "PROBING", "ATTRS",
    ];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for record in &list.records {
        for target in &record.set.targets {
            let d = &target.dest;
            let mut letters = d.flags.chars();
            let state = letters
                .next()
                .and_then(State::from_letter)
                .map_or("unknown", State::as_str);
            let probing = match letters.next() {
                Some('P') => "yes",
                Some('X') => "no",
                Some('N') => "never",
                _ => "unknown",
            };
            let attrs = match &d.attrs {
                Some(a) if !a.body.is_empty() => a.body.clone(),
                _ => "-".to_owned(),
            };
            rows.push([
                record.set.id.to_string(),
                d.uri.clone(),
                state.to_owned(),
                d.flags.clone(),
                d.priority.to_string(),
                probing.to_owned(),
                attrs,
            ]);
        }
    }
    if rows.is_empty() {
        return "no destinations\n".to_owned();
    }
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}

/// A `dispatcher.ping_active` answer in words: `probing: on` for a
/// query, `probing: off (was on)` after a change.
pub fn format_ping(state: &PingState) -> String {
    let word = |v: i64| if v == 0 { "off" } else { "on" };
    match state.new {
        None => format!("probing: {}\n", word(state.old)),
        Some(new) => format!("probing: {} (was {})\n", word(new), word(state.old)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::rpc::{Dest, SetEntry, SetRecord, TargetRecord};
    use crate::admin::AttrsView;

    fn client(url: &str) -> Client {
        Client::new(url).unwrap()
    }

    #[test]
    fn urls() {
        let c = client("http://127.0.0.1:9090");
        assert_eq!(
            (c.connect.as_str(), c.authority.as_str(), c.path.as_str()),
            ("127.0.0.1:9090", "127.0.0.1:9090", "/RPC")
        );
        let c = client("127.0.0.1:9090");
        assert_eq!(
            (c.connect.as_str(), c.path.as_str()),
            ("127.0.0.1:9090", "/RPC")
        );
        let c = client("http://[::1]:9090/rpc");
        assert_eq!(
            (c.connect.as_str(), c.path.as_str()),
            ("[::1]:9090", "/rpc")
        );
        let c = client("http://admin.example/");
        assert_eq!(
            (c.connect.as_str(), c.path.as_str()),
            ("admin.example:80", "/RPC")
        );
        let c = client("localhost:9090/jsonrpc?x=1");
        assert_eq!(
            (c.connect.as_str(), c.path.as_str()),
            ("localhost:9090", "/jsonrpc?x=1")
        );
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            c.with_timeout(Duration::from_secs(1)).timeout,
            Duration::from_secs(1)
        );

        for (bad, reason) in [
            (
                "https://127.0.0.1:9090",
                "https is not supported; use http://",
            ),
            ("ftp://127.0.0.1", "the scheme must be http"),
            ("http://", "not a URL"),
            (
                "http://user:pw@127.0.0.1:9090",
                "credentials in the URL are not supported",
            ),
            ("http://127.0.0.1:99999", "the port must be 1 to 65535"),
            ("http://127.0.0.1:0", "the port must be 1 to 65535"),
            ("http://[::1]:x", "the port must be 1 to 65535"),
            ("", "not a URL"),
            ("http://a b", "not a URL"),
        ] {
            match Client::new(bad) {
                Err(CtlError::BadUrl { url, reason: r }) => {
                    assert_eq!((url.as_str(), r), (bad, reason), "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn error_texts() {
        let e = CtlError::Rpc {
            code: 500,
            message: "State Update Failed".into(),
            data: Some("destination sip:x not found in set 1".into()),
        };
        assert_eq!(
            e.to_string(),
            "State Update Failed (code 500): destination sip:x not found in set 1"
        );
        assert_eq!(e.rpc_code(), Some(500));
        let e = CtlError::Rpc {
            code: -32601,
            message: "Method Not Found".into(),
            data: None,
        };
        assert_eq!(e.to_string(), "Method Not Found (code -32601)");
        let e = CtlError::BadState(SetStateError::UnknownState("x".into()));
        assert!(e.to_string().starts_with("bad state: unknown state \"x\""));
        assert_eq!(e.rpc_code(), None);
    }

    #[test]
    fn replies() {
        let c = client("127.0.0.1:9");
        let ok = |body: &str| c.read_reply(StatusCode::OK, body.as_bytes());
        assert_eq!(
            ok(r#"{"jsonrpc":"2.0","result":"x","id":1}"#).unwrap(),
            Value::String("x".into())
        );
        match ok(r#"{"jsonrpc":"2.0","error":{"code":500,"message":"No Destination Sets"},"id":1}"#)
        {
            Err(CtlError::Rpc {
                code,
                message,
                data,
            }) => {
                assert_eq!(
                    (code, message.as_str(), data),
                    (500, "No Destination Sets", None)
                );
            }
            other => panic!("{other:?}"),
        }
        match ok(r#"{"error":{"code":1,"message":"m","data":{"k":2}}}"#) {
            Err(CtlError::Rpc { data, .. }) => assert_eq!(data.as_deref(), Some(r#"{"k":2}"#)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ok(r#"{"jsonrpc":"2.0","id":1}"#),
            Err(CtlError::NoResult { .. })
        ));
        assert!(matches!(ok("[1]"), Err(CtlError::InvalidReply { .. })));
        assert!(matches!(ok("<html>"), Err(CtlError::InvalidReply { .. })));
        assert!(matches!(
            ok(r#"{"error":{"code":"x"}}"#),
            Err(CtlError::InvalidReply { .. })
        ));
        match c.read_reply(StatusCode::NOT_FOUND, b"not found\n") {
            Err(e @ CtlError::HttpStatus { .. }) => {
                assert_eq!(e.to_string(), "127.0.0.1:9 answered HTTP 404: not found");
            }
            other => panic!("{other:?}"),
        }
        // A JSON-RPC error carried by an HTTP 500 is still the RPC error.
        assert!(matches!(
            c.read_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"error":{"code":500,"message":"m"}}"#
            ),
            Err(CtlError::Rpc { code: 500, .. })
        ));
        let long = "x".repeat(500);
        match c.read_reply(StatusCode::BAD_GATEWAY, long.as_bytes()) {
            Err(CtlError::HttpStatus { body, status, .. }) => {
                assert_eq!((body.len(), status), (SNIPPET + 3, 502));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn confirmations() {
        assert_eq!(confirmation(json!("Ok. x")), "Ok. x");
        assert_eq!(confirmation(json!({})), "Ok.");
        assert_eq!(confirmation(Value::Null), "Ok.");
        assert_eq!(confirmation(json!([1])), "[1]");
    }

    fn dest(uri: &str, flags: &str, priority: i32, body: Option<&str>) -> TargetRecord {
        TargetRecord {
            dest: Dest {
                uri: uri.into(),
                flags: flags.into(),
                priority,
                attrs: body.map(|b| AttrsView {
                    body: b.into(),
                    ..AttrsView::default()
                }),
                latency: None,
                runtime: None,
            },
        }
    }

    #[test]
    fn table() {
        let list = ListResult {
            nrsets: 2,
            records: vec![
                SetRecord {
                    set: SetEntry {
                        id: 1,
                        targets: vec![
                            dest("sip:10.0.1.10:5080", "AP", 10, Some("duid=fs-a;weight=50")),
                            dest("sip:10.0.1.11:5080", "IX", 0, None),
                        ],
                    },
                },
                SetRecord {
                    set: SetEntry {
                        id: 20,
                        targets: vec![
                            dest("sip:fs.example:5080;transport=tcp", "TP", -1, Some("")),
                            dest("sip:b", "DN", 5, None),
                            dest("sip:c", "Q", 5, None),
                        ],
                    },
                },
            ],
        };
        assert_eq!(
            format_list(&list),
            "\
SET  URI                                STATE     FLAGS  PRIORITY  PROBING  ATTRS
1    sip:10.0.1.10:5080                 active    AP     10        yes      duid=fs-a;weight=50
1    sip:10.0.1.11:5080                 inactive  IX     0         no       -
20   sip:fs.example:5080;transport=tcp  trying    TP     -1        yes      -
20   sip:b                              disabled  DN     5         never    -
20   sip:c                              unknown   Q      5         unknown  -
"
        );
        let empty = ListResult {
            nrsets: 0,
            records: Vec::new(),
        };
        assert_eq!(format_list(&empty), "no destinations\n");
    }

    #[test]
    fn ping_words() {
        assert_eq!(
            format_ping(&PingState { new: None, old: 1 }),
            "probing: on\n"
        );
        assert_eq!(
            format_ping(&PingState {
                new: Some(0),
                old: 1
            }),
            "probing: off (was on)\n"
        );
    }
}
