//! The admin interface over real TCP on 127.0.0.1: `serve` on port 0 in
//! front of an in-memory pool (a stand-in for the proxy, which implements
//! the same `Backend` trait), raw HTTP/1.1 requests in, status, headers and
//! JSON out; then the `sipedge ctl` client against the same server.
//!
//! The JSON shapes are compared with what Kamailio's `dispatcher.*` RPCs
//! emit through `jsonrpcs` (structure, values and key order).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sipedge::admin::ctl::{format_list, format_ping, Client, CtlError};
use sipedge::admin::rpc::{ListResult, PingState, RELOAD_OK, SET_STATE_OK};
use sipedge::admin::{
    serve, serve_with, serve_with_access, Access, AttrsView, Backend, BackendError,
    DestinationView, Limits, Readiness, Target,
};
use sipedge::dispatcher::health::{SetState, State, Status};
use sipedge::metrics::AdminEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest any test waits for something that must happen.
const WAIT: Duration = Duration::from_secs(5);

/// How long a test waits for something that must not happen.
const QUIET: Duration = Duration::from_millis(300);

const METRICS: &str = "# HELP sipedge_up 1\n# TYPE sipedge_up gauge\nsipedge_up 1\n";

// ---------------------------------------------------------------- the pool

/// The proxy's stand-in: destinations behind a mutex, set_state applied as
/// the trait documents it (first URI match, ASCII case-insensitive).
struct Pool {
    state: Mutex<PoolState>,
    /// When set, the next reload reports that it started, then waits for
    /// the release (a request held in progress).
    hold_reload: Mutex<Option<Hold>>,
}

struct Hold {
    entered: tokio::sync::oneshot::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

struct PoolState {
    dests: Vec<DestinationView>,
    ping: bool,
    ready: Readiness,
    reloads: usize,
    reload_outcome: ReloadOutcome,
    /// What the listener counted, by event.
    events: Vec<AdminEvent>,
}

#[derive(Clone, Copy)]
enum ReloadOutcome {
    Ok,
    Busy,
    BadList,
}

impl Pool {
    fn new(dests: Vec<DestinationView>) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(PoolState {
                dests,
                ping: true,
                ready: Readiness::not_ready("waiting for the first probe round"),
                reloads: 0,
                reload_outcome: ReloadOutcome::Ok,
                events: Vec::new(),
            }),
            hold_reload: Mutex::new(None),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut PoolState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

impl Backend for Pool {
    fn metrics_text(&self) -> String {
        METRICS.to_owned()
    }

    fn ready(&self) -> Readiness {
        self.with(|s| s.ready.clone())
    }

    fn destinations(&self) -> Vec<DestinationView> {
        self.with(|s| s.dests.clone())
    }

    fn set_state(&self, set: u32, target: &Target, cmd: SetState) -> Result<usize, BackendError> {
        self.with(|s| {
            let apply = |d: &mut DestinationView| {
                d.status = Status {
                    state: cmd.state,
                    probing: cmd.probing.unwrap_or(d.status.probing),
                };
            };
            let members: Vec<&mut DestinationView> =
                s.dests.iter_mut().filter(|d| d.set == set).collect();
            if members.is_empty() {
                return Err(BackendError::UnknownSet(set));
            }
            match target {
                Target::All => {
                    let n = members.len();
                    members.into_iter().for_each(apply);
                    Ok(n)
                }
                Target::Uri(uri) => {
                    let d = members
                        .into_iter()
                        .find(|d| d.uri.eq_ignore_ascii_case(uri))
                        .ok_or_else(|| BackendError::UnknownDestination {
                            set,
                            uri: uri.clone(),
                        })?;
                    apply(d);
                    Ok(1)
                }
                Target::Duid(duid) => {
                    let d = members
                        .into_iter()
                        .find(|d| {
                            d.attrs
                                .as_ref()
                                .is_some_and(|a| a.duid.eq_ignore_ascii_case(duid))
                        })
                        .ok_or_else(|| BackendError::UnknownDuid {
                            set,
                            duid: duid.clone(),
                        })?;
                    apply(d);
                    Ok(1)
                }
            }
        })
    }

    fn reload(&self) -> Result<(), BackendError> {
        // Runs on a blocking thread (see `Backend`): waiting is fine.
        let hold = self.hold_reload.lock().unwrap().take();
        if let Some(hold) = hold {
            let _ = hold.entered.send(());
            let _ = hold.release.recv();
        }
        self.with(|s| match s.reload_outcome {
            ReloadOutcome::Ok => {
                s.reloads += 1;
                Ok(())
            }
            ReloadOutcome::Busy => Err(BackendError::ReloadInProgress),
            ReloadOutcome::BadList => Err(BackendError::Reload(
                "dispatcher.list:3: set id \"x\" is not a number".into(),
            )),
        })
    }

    fn ping_active(&self, set: Option<bool>) -> bool {
        self.with(|s| {
            let old = s.ping;
            if let Some(on) = set {
                s.ping = on;
            }
            old
        })
    }

    fn count(&self, event: AdminEvent) {
        self.with(|s| s.events.push(event));
    }
}

impl Pool {
    fn counted(&self, event: AdminEvent) -> usize {
        self.with(|s| s.events.iter().filter(|&&e| e == event).count())
    }
}

fn dest(set: u32, uri: &str, flags: u32, priority: i32) -> DestinationView {
    DestinationView::new(set, uri, Status::from_list_flags(flags), priority)
}

/// Two FreeSWITCH nodes in set 1 (the second one down), one in set 2 with
/// attributes. Set 2 comes first, as a backend may hand them over.
fn two_sets() -> Vec<DestinationView> {
    let mut c = dest(2, "sip:10.0.2.10:5080", 8, 5);
    c.attrs = Some(AttrsView {
        body: "duid=fs-c;weight=50;socket=udp:10.0.0.5:5060".into(),
        duid: "fs-c".into(),
        weight: 50,
        socket: "udp:10.0.0.5:5060".into(),
        ..AttrsView::default()
    });
    vec![
        c,
        dest(1, "sip:10.0.1.10:5080", 8, 10),
        dest(1, "sip:10.0.1.11:5080", 1 | 8, 0),
    ]
}

// -------------------------------------------------------------- the server

struct Server {
    addr: SocketAddr,
    pool: Arc<Pool>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(pool: Arc<Pool>) -> Server {
        Server::start_with(pool, None).await
    }

    async fn start_with(pool: Arc<Pool>, limits: Option<Limits>) -> Server {
        Server::start_full(pool, limits, None).await
    }

    async fn start_secured(pool: Arc<Pool>, access: Access) -> Server {
        Server::start_full(pool, None, Some(access)).await
    }

    async fn start_full(pool: Arc<Pool>, limits: Option<Limits>, access: Option<Access>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let backend: Arc<dyn Backend> = pool.clone();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                match (limits, access) {
                    (None, None) => serve(listener, backend, cancel).await,
                    (Some(limits), None) => serve_with(listener, backend, cancel, limits).await,
                    (limits, Some(access)) => {
                        let limits = limits.unwrap_or_default();
                        serve_with_access(listener, backend, cancel, limits, access).await
                    }
                }
            }
        });
        Server {
            addr,
            pool,
            cancel,
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> Client {
        Client::new(&self.url()).unwrap().with_timeout(WAIT)
    }

    /// One JSON-RPC request, `Connection: close`; the HTTP status and the
    /// parsed answer.
    async fn rpc(&self, request: &str) -> (u16, Value) {
        let response = self.post("/RPC", request).await;
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{request}"
        );
        (response.status, response.json())
    }

    async fn call(&self, method: &str, params: Value) -> (u16, Value) {
        let request = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        self.rpc(&request.to_string()).await
    }

    async fn post(&self, path: &str, body: &str) -> HttpResponse {
        exchange(
            self.addr,
            format!(
                "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
    }

    async fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path).await
    }

    async fn request(&self, method: &str, path: &str) -> HttpResponse {
        exchange(
            self.addr,
            format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
    }

    async fn list(&self) -> Value {
        let (status, answer) = self.call("dispatcher.list", json!([])).await;
        assert_eq!(status, 200, "{answer}");
        answer["result"].clone()
    }

    /// FLAGS of every destination, in list order.
    async fn flags(&self) -> Vec<(u64, String, String)> {
        let list = self.list().await;
        let mut out = Vec::new();
        for record in list["RECORDS"].as_array().unwrap() {
            let set = &record["SET"];
            for target in set["TARGETS"].as_array().unwrap() {
                out.push((
                    set["ID"].as_u64().unwrap(),
                    target["DEST"]["URI"].as_str().unwrap().to_owned(),
                    target["DEST"]["FLAGS"].as_str().unwrap().to_owned(),
                ));
            }
        }
        out
    }

    /// Stops the server and waits until `serve` has returned.
    async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("serve returns after the cancel")
                .unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ------------------------------------------------------------ raw HTTP/1.1

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends raw bytes on a new connection and reads one response.
async fn exchange(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let head = request.starts_with(b"HEAD ");
    read_response(&mut stream, head).await
}

/// Reads one response: headers, then `Content-Length` bytes of body
/// (none for HEAD, 204 and 304).
async fn read_response(stream: &mut TcpStream, head: bool) -> HttpResponse {
    tokio::time::timeout(WAIT, async {
        let mut buf = Vec::new();
        let header_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before a response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head_text = std::str::from_utf8(&buf[..header_end]).unwrap().to_owned();
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        let length = if head || status == 204 || status == 304 {
            0
        } else {
            length
        };
        let mut body = buf[header_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(body.len(), length, "no more than Content-Length");
        HttpResponse {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("a response in time")
}

/// Waits until the server closes `stream` (EOF or reset), reading and
/// returning whatever it sent first.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection")
}

fn error_of(answer: &Value) -> (i64, String) {
    (
        answer["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error: {answer}")),
        answer["error"]["message"].as_str().unwrap().to_owned(),
    )
}

// ------------------------------------------------------------------- tests

/// `dispatcher.list` is what Kamailio's `jsonrpcs` sends: `NRSETS` then
/// `RECORDS`, each set wrapped as `{"SET":{...}}`, each destination as
/// `{"DEST":{URI,FLAGS,PRIORITY[,ATTRS]}}`, `ATTRS` only for a line with
/// attributes, with Kamailio 5.x's eight fields.
#[tokio::test]
async fn dispatcher_list_has_kamailios_shape() {
    let server = Server::start(Pool::new(two_sets())).await;
    let response = server
        .post(
            "/RPC",
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","id":1}"#,
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.json(),
        json!({
            "jsonrpc": "2.0",
            "result": {
                "NRSETS": 2,
                "RECORDS": [
                    {"SET": {"ID": 1, "TARGETS": [
                        {"DEST": {"URI": "sip:10.0.1.10:5080", "FLAGS": "AP", "PRIORITY": 10}},
                        {"DEST": {"URI": "sip:10.0.1.11:5080", "FLAGS": "IP", "PRIORITY": 0}}
                    ]}},
                    {"SET": {"ID": 2, "TARGETS": [
                        {"DEST": {"URI": "sip:10.0.2.10:5080", "FLAGS": "AP", "PRIORITY": 5,
                                  "ATTRS": {"BODY": "duid=fs-c;weight=50;socket=udp:10.0.0.5:5060",
                                            "DUID": "fs-c", "MAXLOAD": 0, "WEIGHT": 50,
                                            "RWEIGHT": 0, "SOCKET": "udp:10.0.0.5:5060",
                                            "SOCKNAME": null, "OBPROXY": null}}}
                    ]}}
                ]
            },
            "id": 1
        })
    );
    // Key order as Kamailio's srjson writes it (a JSON object is unordered,
    // but scripts that grep the text are not).
    let text = response.text();
    let order = [
        r#"{"jsonrpc":"2.0","result":{"NRSETS":2,"RECORDS":[{"SET":{"ID":1,"TARGETS":[{"DEST":{"URI":"#,
        r#""FLAGS":"AP","PRIORITY":10}}"#,
        r#""PRIORITY":5,"ATTRS":{"BODY":"#,
        r#""DUID":"fs-c","MAXLOAD":0,"WEIGHT":50,"RWEIGHT":0,"SOCKET":"udp:10.0.0.5:5060","SOCKNAME":null,"OBPROXY":null}"#,
        r#"]}}]},"id":1}"#,
    ];
    let mut at = 0;
    for piece in order {
        let found = text[at..]
            .find(piece)
            .unwrap_or_else(|| panic!("{piece} after byte {at} in {text}"));
        at += found + piece.len();
    }
    assert_eq!(at, text.len());

    // The result also reads back into the client's types.
    let typed: ListResult = serde_json::from_value(response.json()["result"].clone()).unwrap();
    assert_eq!(typed.nrsets, 2);
    assert_eq!(
        typed.records[1].set.targets[0]
            .dest
            .attrs
            .as_ref()
            .unwrap()
            .weight,
        50
    );
}

#[tokio::test]
async fn dispatcher_list_modes_and_empty_pool() {
    let server = Server::start(Pool::new(two_sets())).await;
    let (_, short) = server.call("dispatcher.list", json!(["short"])).await;
    assert!(short["result"]["RECORDS"][1]["SET"]["TARGETS"][0]["DEST"]
        .get("ATTRS")
        .is_none());
    let (_, full) = server.call("dispatcher.list", json!(["full"])).await;
    assert_eq!(
        full["result"]["RECORDS"][0]["SET"]["TARGETS"][1]["DEST"]["ATTRS"]["BODY"],
        ""
    );

    let server = Server::start(Pool::new(Vec::new())).await;
    let (status, answer) = server.call("dispatcher.list", json!([])).await;
    assert_eq!(status, 500);
    assert_eq!(error_of(&answer), (500, "No Destination Sets".into()));
}

#[tokio::test]
async fn set_state_changes_show_in_the_next_list() {
    let server = Server::start(Pool::new(two_sets())).await;
    let flags = |v: &[(u64, &str, &str)]| -> Vec<(u64, String, String)> {
        v.iter()
            .map(|(s, u, f)| (*s, u.to_string(), f.to_string()))
            .collect()
    };

    // Drain a node, probing on: the classic `ip`.
    let (status, answer) = server
        .call(
            "dispatcher.set_state",
            json!(["ip", 1, "sip:10.0.1.10:5080"]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "result": SET_STATE_OK, "id": 1})
    );
    assert_eq!(
        server.flags().await,
        flags(&[
            (1, "sip:10.0.1.10:5080", "IP"),
            (1, "sip:10.0.1.11:5080", "IP"),
            (2, "sip:10.0.2.10:5080", "AP"),
        ])
    );

    // `a` without `p` turns probing off, as in Kamailio; the URI matches
    // whatever its case; a numeric state and a string set id are read.
    let (status, _) = server
        .call(
            "dispatcher.set_state",
            json!(["a", "1", "SIP:10.0.1.11:5080"]),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call("dispatcher.set_state", json!([2, 2, "sip:10.0.2.10:5080"]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        server.flags().await,
        flags(&[
            (1, "sip:10.0.1.10:5080", "IP"),
            (1, "sip:10.0.1.11:5080", "AX"),
            (2, "sip:10.0.2.10:5080", "DX"),
        ])
    );

    // `all` sets the whole set and nothing else.
    let (status, _) = server
        .call("dispatcher.set_state", json!(["tp", 1, "all"]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        server.flags().await,
        flags(&[
            (1, "sip:10.0.1.10:5080", "TP"),
            (1, "sip:10.0.1.11:5080", "TP"),
            (2, "sip:10.0.2.10:5080", "DX"),
        ])
    );
    let state = server.pool.with(|s| s.dests[0].status);
    assert_eq!(
        state,
        Status {
            state: State::Disabled,
            probing: false
        }
    );
}

#[tokio::test]
async fn set_state_errors_carry_kamailios_codes() {
    let server = Server::start(Pool::new(two_sets())).await;
    let cases = [
        (
            json!(["ip", 9, "sip:10.0.1.10:5080"]),
            500,
            "State Update Failed",
            "destination set 9 not found",
        ),
        (
            json!(["ip", 9, "all"]),
            500,
            "State Update Failed",
            "destination set 9 not found",
        ),
        (
            json!(["ip", 1, "sip:10.0.9.9:5080"]),
            500,
            "State Update Failed",
            "destination sip:10.0.9.9:5080 not found in set 1",
        ),
        (
            json!(["ip", 1, "sip:10.0.1.10"]),
            500,
            "State Update Failed",
            "destination sip:10.0.1.10 not found in set 1",
        ),
        (
            json!(["x", 1, "all"]),
            500,
            "Unknown State Value",
            "unknown state \"x\"; expected a, i, t or d, optionally followed by p",
        ),
        (
            json!(["", 1, "all"]),
            500,
            "Invalid State Parameter",
            "empty state; expected a, i, t or d, optionally followed by p",
        ),
        (
            json!(["ip", 1]),
            -32602,
            "Invalid Parameters",
            "expected [state, set id, destination URI or \"all\"]",
        ),
        (
            json!(["ip", "one", "all"]),
            -32602,
            "Invalid Parameters",
            "set id must be an integer from 0 to 2147483647",
        ),
        (
            json!(["ip", -1, "all"]),
            -32602,
            "Invalid Parameters",
            "set id must be an integer from 0 to 2147483647",
        ),
        (
            json!([null, 1, "all"]),
            -32602,
            "Invalid Parameters",
            "state must be a string",
        ),
        (
            json!(["ip", 1, null]),
            -32602,
            "Invalid Parameters",
            "destination must be a URI string or \"all\"",
        ),
    ];
    let before = server.flags().await;
    for (params, code, message, data) in cases {
        let (status, answer) = server.call("dispatcher.set_state", params.clone()).await;
        assert_eq!(status, 500, "{params}");
        assert_eq!(error_of(&answer), (code, message.to_owned()), "{params}");
        assert_eq!(answer["error"]["data"], data, "{params}");
        assert_eq!(answer["id"], 1);
    }
    assert_eq!(server.flags().await, before, "no refusal changed a state");
}

#[tokio::test]
async fn reload_and_its_faults() {
    let server = Server::start(Pool::new(two_sets())).await;
    let (status, answer) = server.call("dispatcher.reload", json!([])).await;
    assert_eq!(status, 200);
    assert_eq!(answer["result"], RELOAD_OK);
    assert_eq!(server.pool.with(|s| s.reloads), 1);

    server.pool.with(|s| s.reload_outcome = ReloadOutcome::Busy);
    let (status, answer) = server.call("dispatcher.reload", json!([])).await;
    assert_eq!(status, 500);
    assert_eq!(error_of(&answer), (500, "Ongoing reload".into()));

    server
        .pool
        .with(|s| s.reload_outcome = ReloadOutcome::BadList);
    let (_, answer) = server.call("dispatcher.reload", json!([])).await;
    assert_eq!(error_of(&answer), (500, "Reload Failed".into()));
    assert_eq!(
        answer["error"]["data"],
        "reload failed: dispatcher.list:3: set id \"x\" is not a number"
    );

    server.pool.with(|s| s.reload_outcome = ReloadOutcome::Ok);
    let (_, answer) = server.call("dispatcher.reload", json!(["now"])).await;
    assert_eq!(error_of(&answer).0, -32602);
    assert_eq!(
        server.pool.with(|s| s.reloads),
        1,
        "refused calls did not reload"
    );
}

/// Kamailio: no parameter reads (`OldPingState` only), a parameter sets
/// and reports both, new first.
#[tokio::test]
async fn ping_active_query_and_switch() {
    let server = Server::start(Pool::new(two_sets())).await;
    let (status, answer) = server.call("dispatcher.ping_active", json!([])).await;
    assert_eq!(status, 200);
    assert_eq!(answer["result"], json!({"OldPingState": 1}));

    let response = server
        .post(
            "/RPC",
            r#"{"jsonrpc":"2.0","method":"dispatcher.ping_active","params":[0],"id":5}"#,
        )
        .await;
    assert_eq!(
        response.text(),
        r#"{"jsonrpc":"2.0","result":{"NewPingState":0,"OldPingState":1},"id":5}"#
    );
    assert!(!server.pool.with(|s| s.ping));
    let (_, answer) = server.call("dispatcher.ping_active", json!([])).await;
    assert_eq!(answer["result"], json!({"OldPingState": 0}));

    let (status, answer) = server.call("dispatcher.ping_active", json!([7])).await;
    assert_eq!(status, 500);
    assert_eq!(error_of(&answer), (-32602, "Invalid Parameters".into()));
    assert!(!server.pool.with(|s| s.ping));
}

#[tokio::test]
async fn protocol_errors_over_http() {
    let server = Server::start(Pool::new(two_sets())).await;
    let cases = [
        (
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","id":1"#,
            400,
            -32700,
            "Parse Error",
            json!(null),
        ),
        (
            r#"[{"jsonrpc":"2.0","method":"dispatcher.list","id":1}]"#,
            400,
            -32600,
            "Invalid Request",
            json!(null),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3}"#,
            400,
            -32600,
            "Invalid Request",
            json!(3),
        ),
        (
            r#"{"method":"dispatcher.list","id":"q"}"#,
            400,
            -32600,
            "Invalid Request",
            json!("q"),
        ),
        (
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","id":[1]}"#,
            400,
            -32600,
            "Invalid Request",
            json!(null),
        ),
        (
            r#"{"jsonrpc":"2.0","method":"dispatcher.oclist","params":[1],"id":4}"#,
            500,
            -32601,
            "Method Not Found",
            json!(4),
        ),
        (
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","params":{"a":1},"id":6}"#,
            500,
            -32602,
            "Invalid Parameters",
            json!(6),
        ),
    ];
    for (request, status, code, message, id) in cases {
        let (got, answer) = server.rpc(request).await;
        assert_eq!(got, status, "{request}");
        assert_eq!(error_of(&answer), (code, message.to_owned()), "{request}");
        assert_eq!(answer["id"], id, "{request}");
    }

    // A notification is carried out and answered with 204, no body.
    let response = server
        .post(
            "/RPC",
            r#"{"jsonrpc":"2.0","method":"dispatcher.ping_active","params":[0]}"#,
        )
        .await;
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    assert!(!server.pool.with(|s| s.ping));

    // Garbage on the wire: an HTTP error or a closed connection, and the
    // server goes on serving.
    for garbage in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"POST /RPC HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /RPC HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let answer = closed_by_server(&mut stream).await;
        if !answer.is_empty() {
            assert!(
                answer.starts_with(b"HTTP/1.1 4"),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    assert_eq!(server.flags().await.len(), 3);
}

#[tokio::test]
async fn metrics_route() {
    let server = Server::start(Pool::new(two_sets())).await;
    let response = server.get("/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some(sipedge::metrics::CONTENT_TYPE)
    );
    assert_eq!(response.text(), METRICS);

    let response = server.request("HEAD", "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-length"),
        Some(METRICS.len().to_string().as_str())
    );
    assert!(response.body.is_empty());

    // Prometheus keeps its connection: two scrapes on one connection.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream, false).await;
        assert_eq!((response.status, response.text()), (200, METRICS));
    }
}

#[tokio::test]
async fn health_live_and_ready_flip() {
    let server = Server::start(Pool::new(two_sets())).await;
    let live = server.get("/health/live").await;
    assert_eq!((live.status, live.text()), (200, "ok\n"));

    let ready = server.get("/health/ready").await;
    assert_eq!(
        (ready.status, ready.text()),
        (503, "waiting for the first probe round\n")
    );
    server
        .pool
        .with(|s| s.ready = Readiness::ready("2 of 3 destinations active"));
    let ready = server.get("/health/ready").await;
    assert_eq!(
        (ready.status, ready.text()),
        (200, "2 of 3 destinations active\n")
    );
    assert_eq!(
        ready.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    server
        .pool
        .with(|s| s.ready = Readiness::not_ready("no destination active"));
    let ready = server.get("/health/ready").await;
    assert_eq!(
        (ready.status, ready.text()),
        (503, "no destination active\n")
    );
    assert_eq!(server.get("/health/live").await.status, 200);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods() {
    let server = Server::start(Pool::new(two_sets())).await;
    for path in [
        "/",
        "/metric",
        "/health",
        "/RPC/",
        "/Rpc",
        "/health/ready/x",
    ] {
        assert_eq!(server.get(path).await.status, 404, "{path}");
    }
    assert_eq!(server.post("/nope", "{}").await.status, 404);
    for (method, path, allow) in [
        ("GET", "/RPC", "POST"),
        ("PUT", "/rpc", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("DELETE", "/health/ready", "GET, HEAD"),
        ("POST", "/health/live", "GET, HEAD"),
    ] {
        let response = server.request(method, path).await;
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(response.header("allow"), Some(allow), "{method} {path}");
    }
    // Lower-case /rpc and a query string are fine.
    let response = server
        .post(
            "/rpc?x=1",
            r#"{"jsonrpc":"2.0","method":"dispatcher.ping_active","id":1}"#,
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["result"]["OldPingState"], 1);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let server = Server::start(Pool::new(two_sets())).await;
    let limit = Limits::default().max_body;
    // Declared too large: refused before reading.
    let response = exchange(
        server.addr,
        format!(
            "POST /RPC HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            limit + 1
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(response.status, 413);
    assert_eq!(response.header("connection"), Some("close"));

    // Chunked, no length: cut off at the limit.
    let chunk = "x".repeat(8192);
    let mut request =
        String::from("POST /RPC HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..=(limit / 8192) {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let response = exchange(server.addr, request.as_bytes()).await;
    assert_eq!(response.status, 413);

    // Exactly at the limit is read (trailing blanks are valid JSON).
    let body = format!(
        r#"{{"jsonrpc":"2.0","method":"dispatcher.ping_active","id":1}}{}"#,
        " ".repeat(limit - 58)
    );
    assert_eq!(body.len(), limit);
    let (status, answer) = server.rpc(&body).await;
    assert_eq!(status, 200, "{answer}");
}

/// A client that stops sending is cut off: in the headers, in the body,
/// or idle between requests.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = Server::start_with(Pool::new(two_sets()), Some(limits)).await;

    // Half a request line, then nothing.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /met").await.unwrap();
    let started = tokio::time::Instant::now();
    let _ = closed_by_server(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Headers, then half the body.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /RPC HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{\"json")
        .await
        .unwrap();
    let response = read_response(&mut stream, false).await;
    assert_eq!(response.status, 408);
    assert_eq!(response.header("connection"), Some("close"));
    let _ = closed_by_server(&mut stream).await;

    // Idle after a complete exchange.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream, false).await.status, 200);
    let _ = closed_by_server(&mut stream).await;

    // And the server still answers.
    assert_eq!(server.get("/health/live").await.status, 200);
}

/// At `max_connections` a new client is served at once: the oldest idle
/// connection makes room, counted.
#[tokio::test]
async fn at_the_cap_the_oldest_idle_connection_leaves() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let server = Server::start_with(Pool::new(two_sets()), Some(limits)).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    first
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut first, false).await.status, 200);

    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut second, false).await.status, 200);
    let _ = closed_by_server(&mut first).await;
    assert_eq!(server.pool.counted(AdminEvent::ConnectionEvicted), 1);
}

/// A connection in the middle of a request is not cut when it is the one
/// that must leave: its answer comes, then it closes.
#[tokio::test]
async fn a_busy_connection_finishes_its_request_before_it_leaves() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let server = Server::start_with(Pool::new(two_sets()), Some(limits)).await;
    let body = r#"{"jsonrpc":"2.0","method":"dispatcher.reload","id":1}"#;
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    let (entered, entered_rx) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *server.pool.hold_reload.lock().unwrap() = Some(Hold {
        entered,
        release: release_rx,
    });
    busy.write_all(
        format!(
            "POST /RPC HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::timeout(WAIT, entered_rx)
        .await
        .expect("the reload starts")
        .unwrap();
    // The only place is taken by a request in progress: the new client
    // is served all the same.
    let live = server.get("/health/live").await;
    assert_eq!(live.status, 200);
    release.send(()).unwrap();
    let answer = read_response(&mut busy, false).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["result"], RELOAD_OK);
    let _ = closed_by_server(&mut busy).await;
}

/// keepalived's check must not wait behind idle clients: 100 connections
/// that send nothing and 100 that stop half-way through a request line
/// (more than the default cap of 64), and `/health/live` and
/// `/health/ready` still answer at once.
#[tokio::test]
async fn health_answers_while_idle_clients_hold_connections() {
    let server = Server::start(Pool::new(two_sets())).await;
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 1 {
            c.write_all(b"GET /hea").await.unwrap();
        }
        idle.push(c);
    }
    // Well under the 10 s header timeout that used to free a place.
    const DEADLINE: Duration = Duration::from_secs(2);
    for path in ["/health/live", "/health/ready", "/health/live"] {
        let started = tokio::time::Instant::now();
        let response = tokio::time::timeout(DEADLINE, server.get(path))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer within {DEADLINE:?}"));
        assert!(matches!(response.status, 200 | 503), "{path}");
        assert!(started.elapsed() < DEADLINE);
    }
    assert!(server.pool.counted(AdminEvent::ConnectionEvicted) >= 200 - 64);
    drop(idle);
}

// ------------------------------------------------------------ bearer token

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn post_with(server: &Server, path: &str, authorization: Option<&str>) -> HttpResponse {
    let body = r#"{"jsonrpc":"2.0","method":"dispatcher.ping_active","id":1}"#;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    exchange(
        server.addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

async fn get_with(server: &Server, path: &str, authorization: &str) -> HttpResponse {
    exchange(
        server.addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: {authorization}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
}

/// With a token, the RPC answers only a request that carries it: 401 and
/// the Bearer challenge otherwise, counted; health and (by default)
/// metrics stay open.
#[tokio::test]
async fn the_rpc_wants_the_bearer_token() {
    let server = Server::start_secured(
        Pool::new(two_sets()),
        Access::token(TOKEN.as_bytes(), false),
    )
    .await;

    let missing = post_with(&server, "/RPC", None).await;
    assert_eq!(missing.status, 401, "{}", missing.text());
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="sipedge""#)
    );
    for wrong in [
        "Bearer 0123456789abcdef0123456789abcdeX".to_owned(),
        format!("Bearer {TOKEN}0"),
        format!("Bearer {}", &TOKEN[..31]),
        format!("Basic {TOKEN}"),
        "Bearer".to_owned(),
    ] {
        let response = post_with(&server, "/rpc", Some(&wrong)).await;
        assert_eq!(response.status, 401, "{wrong}");
        assert!(
            response
                .header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer realm=\"sipedge\"")),
            "{wrong}"
        );
    }
    assert_eq!(server.pool.counted(AdminEvent::TokenWrong), 3);
    assert_eq!(server.pool.counted(AdminEvent::TokenMissing), 3);

    for good in [format!("Bearer {TOKEN}"), format!("bearer  {TOKEN} ")] {
        let response = post_with(&server, "/RPC", Some(&good)).await;
        assert_eq!(response.status, 200, "{good}: {}", response.text());
        assert_eq!(response.json()["result"]["OldPingState"], 1);
    }

    // Not guarded: health (keepalived, load balancers) and metrics.
    assert_eq!(server.get("/health/live").await.status, 200);
    assert_eq!(server.get("/health/ready").await.status, 503);
    assert_eq!(server.get("/metrics").await.status, 200);
    // An unknown path is still 404, token or not.
    assert_eq!(server.get("/RPC2").await.status, 404);

    // ctl sends it.
    let err = server.client().ping_active(None).await.unwrap_err();
    assert!(
        matches!(err, CtlError::HttpStatus { status: 401, .. }),
        "{err}"
    );
    let client = server.client().with_token(TOKEN).unwrap();
    assert_eq!(client.ping_active(None).await.unwrap().old, 1);
    let debug = format!("{client:?}");
    assert!(!debug.contains(TOKEN), "Debug shows the token: {debug}");
}

/// `metrics_require_token`: `/metrics` wants the token too, health not.
#[tokio::test]
async fn metrics_can_want_the_token_too() {
    let server =
        Server::start_secured(Pool::new(two_sets()), Access::token(TOKEN.as_bytes(), true)).await;
    let response = server.get("/metrics").await;
    assert_eq!(response.status, 401);
    assert!(response.header("www-authenticate").is_some());
    let response = get_with(&server, "/metrics", &format!("Bearer {TOKEN}")).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), METRICS);
    assert_eq!(server.get("/health/live").await.status, 200);
}

#[tokio::test]
async fn cancel_stops_the_listener() {
    let mut server = Server::start(Pool::new(two_sets())).await;
    // An idle kept-alive connection does not hold the stop up.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle, false).await.status, 200);

    server.stop().await;
    let _ = closed_by_server(&mut idle).await;
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "nothing listens any more"
    );
}

// --------------------------------------------------------------------- ctl

#[tokio::test]
async fn ctl_list_and_format() {
    let server = Server::start(Pool::new(two_sets())).await;
    let list = server.client().list().await.unwrap();
    assert_eq!(list.nrsets, 2);
    assert_eq!(
        list.records
            .iter()
            .map(|r| (r.set.id, r.set.targets.len()))
            .collect::<Vec<_>>(),
        [(1, 2), (2, 1)]
    );
    assert_eq!(
        format_list(&list),
        "\
SET  URI                 STATE     FLAGS  PRIORITY  PROBING  ATTRS
1    sip:10.0.1.10:5080  active    AP     10        yes      -
1    sip:10.0.1.11:5080  inactive  IP     0         yes      -
2    sip:10.0.2.10:5080  active    AP     5         yes      duid=fs-c;weight=50;socket=udp:10.0.0.5:5060
"
    );
    // A URL without a path goes to /RPC; one with /rpc works too.
    let lower = Client::new(&format!("{}/rpc", server.url())).unwrap();
    assert_eq!(lower.list().await.unwrap(), list);
    let bare = Client::new(&server.addr.to_string()).unwrap();
    assert_eq!(bare.list().await.unwrap(), list);
}

#[tokio::test]
async fn ctl_set_state_reload_ping_active() {
    let server = Server::start(Pool::new(two_sets())).await;
    let client = server.client();
    assert_eq!(
        client
            .set_state("dp", 1, "sip:10.0.1.10:5080")
            .await
            .unwrap(),
        SET_STATE_OK
    );
    assert_eq!(client.set_state("a", 2, "all").await.unwrap(), SET_STATE_OK);
    let flags: Vec<String> = client
        .list()
        .await
        .unwrap()
        .records
        .iter()
        .flat_map(|r| r.set.targets.iter().map(|t| t.dest.flags.clone()))
        .collect();
    assert_eq!(flags, ["DP", "IP", "AX"]);

    assert_eq!(client.reload().await.unwrap(), RELOAD_OK);
    assert_eq!(server.pool.with(|s| s.reloads), 1);

    let query = client.ping_active(None).await.unwrap();
    assert_eq!(query, PingState { new: None, old: 1 });
    assert_eq!(format_ping(&query), "probing: on\n");
    let off = client.ping_active(Some(false)).await.unwrap();
    assert_eq!(
        off,
        PingState {
            new: Some(0),
            old: 1
        }
    );
    assert_eq!(format_ping(&off), "probing: off (was on)\n");
    assert!(!server.pool.with(|s| s.ping));
    let on = client.ping_active(Some(true)).await.unwrap();
    assert_eq!(
        on,
        PingState {
            new: Some(1),
            old: 0
        }
    );
}

#[tokio::test]
async fn ctl_errors_carry_code_and_message() {
    let server = Server::start(Pool::new(two_sets())).await;
    let client = server.client();

    match client.set_state("ip", 7, "sip:10.0.1.10:5080").await {
        Err(e @ CtlError::Rpc { .. }) => {
            assert_eq!(e.rpc_code(), Some(500));
            assert_eq!(
                e.to_string(),
                "State Update Failed (code 500): destination set 7 not found"
            );
        }
        other => panic!("{other:?}"),
    }
    server.pool.with(|s| s.reload_outcome = ReloadOutcome::Busy);
    match client.reload().await {
        Err(CtlError::Rpc { code, message, .. }) => {
            assert_eq!((code, message.as_str()), (500, "Ongoing reload"));
        }
        other => panic!("{other:?}"),
    }
    match client.call("core.nope", json!([])).await {
        Err(CtlError::Rpc { code, message, .. }) => {
            assert_eq!((code, message.as_str()), (-32601, "Method Not Found"));
        }
        other => panic!("{other:?}"),
    }

    // Refused before anything is sent.
    let before = server.flags().await;
    assert!(matches!(
        client.set_state("xp", 1, "all").await,
        Err(CtlError::BadState(_))
    ));
    assert_eq!(server.flags().await, before);

    // Wrong path: the 404 page, not a JSON-RPC answer.
    let wrong = Client::new(&format!("{}/jsonrpc", server.url())).unwrap();
    match wrong.list().await {
        Err(CtlError::HttpStatus { status, body, .. }) => {
            assert_eq!((status, body.as_str()), (404, "not found"));
        }
        other => panic!("{other:?}"),
    }

    // Nobody listening.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = free.local_addr().unwrap();
    drop(free);
    match Client::new(&closed.to_string()).unwrap().list().await {
        Err(e @ CtlError::Connect { .. }) => {
            assert!(e
                .to_string()
                .starts_with(&format!("cannot connect to {closed}")));
        }
        other => panic!("{other:?}"),
    }

    // A listener that never answers.
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(&mute.local_addr().unwrap().to_string())
        .unwrap()
        .with_timeout(QUIET);
    match client.list().await {
        Err(CtlError::Timeout { after, .. }) => assert_eq!(after, QUIET),
        other => panic!("{other:?}"),
    }
    drop(mute);

    // Something that is not a JSON-RPC server at all.
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = other.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = other.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .await;
    });
    assert!(matches!(
        Client::new(&addr.to_string()).unwrap().list().await,
        Err(CtlError::InvalidReply { .. })
    ));
}
