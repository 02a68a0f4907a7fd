//! JSON-RPC 2.0 with Kamailio's `dispatcher.*` methods, result shapes and
//! fault messages.
//!
//! Read against Kamailio's `dispatcher.c` (`dispatcher_rpc_list`,
//! `ds_rpc_print_set`, `dispatcher_rpc_set_state_helper`,
//! `dispatcher_rpc_reload`, `dispatcher_rpc_ping_active`,
//! `dispatcher_rpc_add`, `dispatcher_rpc_remove`, `dispatcher_rpc_hash`),
//! `dispatch.c` (`ds_get_hash`, `ds_reinit_duid_state`,
//! `ds_reinit_state`, `ds_reinit_state_all`) and `jsonrpcs_mod.c`
//! (`jsonrpc_fault`, `jsonrpc_send`, `jsonrpc_scan`, its error table).
//!
//! # Methods
//! | method                   | params                          | result                                   |
//! |--------------------------|---------------------------------|------------------------------------------|
//! | `dispatcher.list`        | `[]` or `["short"]`/`["full"]`  | `{"NRSETS":n,"RECORDS":[{"SET":{...}}]}` |
//! | `dispatcher.set_state`   | `[state, set, uri or "all"]`    | `"Ok. Dispatcher state updated."`        |
//! | `dispatcher.reload`      | `[]`                            | `"Ok. Dispatcher successfully reloaded."`|
//! | `dispatcher.ping_active` | `[]` (query) or `[0]`/`[1]`     | `{"NewPingState":1,"OldPingState":0}`    |
//! | `dispatcher.set_duid_state` | `[state, set, duid or "all"]`| `"Ok. Dispatcher state updated."`        |
//! | `dispatcher.add`         | `[set, uri, flags?, priority?, attrs?]` | `"Ok. Dispatcher destination added."` |
//! | `dispatcher.remove`      | `[set, uri]`                    | `"Ok. Dispatcher destination removed."`  |
//! | `dispatcher.hash`        | `[count, value, value2?]`       | `{"hashid":u32,"slot":hashid % count}`   |
//! | `core.uptime`            | `[]`                            | `{"now":..,"up_since":..,"uptime":secs}` |
//! | `core.version`           | `[]`                            | `"sipedge 0.1.0 (x86_64/linux)"`         |
//! | `core.echo`              | any strings or numbers          | the same, as strings, in an array        |
//! | `system.listMethods`     | `[]`                            | every method name, in an array           |
//! | `system.methodHelp`      | `[name]`                        | one line of help (400 faults as Kamailio)|
//!
//! One table ([`dispatch`]) serves this endpoint and the BINRPC socket
//! ([`super::binrpc`]), so both always have the same methods.
//!
//! A destination is `{"DEST":{"URI":..,"FLAGS":"AP","PRIORITY":10}}`, with
//! `"ATTRS":{"BODY","DUID","MAXLOAD","WEIGHT","RWEIGHT","SOCKET",
//! "SOCKNAME","OBPROXY"}` after `PRIORITY` when the list line had
//! attributes (Kamailio 5.x's fields; the `LATENCY` and `RUNTIME` blocks
//! only appear there with latency stats or the call-load table, which
//! sipedge does not have). Keys come out in Kamailio's order; an unset
//! `DUID`, `SOCKET`, `SOCKNAME` or `OBPROXY` is `null`, as `jsonrpcs`
//! writes Kamailio's unset strings. `short`
//! leaves `ATTRS` out, `full` always prints it (Kamailio's host, DNS and
//! overload fields of `full` are not there).
//!
//! # Faults
//! Method faults are Kamailio's: code 500 and its message (`No
//! Destination Sets`, `Invalid State Parameter`, `Unknown State Value`,
//! `State Update Failed`, `Reload Failed`, `Ongoing reload`, `Adding
//! dispatcher dst failed`, `Removing dispatcher dst failed`), plus a
//! `data` string saying what exactly was wrong, which Kamailio does not
//! give. Protocol faults use the JSON-RPC 2.0 codes with the messages of
//! Kamailio's error table: -32700 `Parse Error`, -32600 `Invalid Request`,
//! -32601 `Method Not Found` (Kamailio itself sends 500 here), -32602
//! `Invalid Parameters` (Kamailio's dispatcher sends 500 with the same
//! text), -32603 `Internal Error`.
//!
//! HTTP status, as Kamailio's `jsonrpc_fault` sets it: 200 for a result,
//! 500 for a fault; except that a request that is not JSON-RPC at all
//! (-32700, -32600) gets 400, where Kamailio sends no JSON answer.
//!
//! # Deliberate differences from Kamailio
//! - Sets are listed by ascending id; Kamailio walks its AVL tree children
//!   first, so its order is neither ascending nor the file's.
//! - `set_state` with `all` on an unknown set is a fault; Kamailio ignores
//!   the error of `ds_reinit_state_all` and says `Ok`.
//! - The state argument is checked whole (`ax` is refused, not read as
//!   `a`): see [`SetState::parse`].
//! - Wrong parameter counts and types are refused rather than read as 0 or
//!   ignored, and `params` must be an array (Kamailio also takes an object,
//!   reading its members in order).
//! - A request without `id` is a notification: it is carried out and
//!   answered with HTTP 204 and no body (JSON-RPC 2.0); Kamailio answers
//!   it.
//! - `dispatcher.add` and `dispatcher.remove` are not throttled by
//!   Kamailio's `reload_delta` (5 s between two of them, `Ongoing
//!   reload`); only one runs at a time. `add` refuses what a list line
//!   would be refused for, a destination sipedge cannot use, and one the
//!   set already has (Kamailio says `Ok` and adds nothing, or a
//!   duplicate); `remove` refuses a URI the set does not have (Kamailio
//!   says `Ok`) and the last destination of the set that takes calls.
//!   Both change memory only, as in Kamailio: a reload restores the file.
//! - Batches (a JSON array) are refused with -32600; Kamailio cannot parse
//!   them either.
//!
//! Compatible on the wire in the other direction: state given as a number
//! (`0`, `1`, `2`, `3`) is read as its digit, as Kamailio's `.S` scan
//! converts it, and a set id may be a number or a string of digits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AttrsView, Backend, BackendError, DestinationView, Escaped, Target};
use crate::dispatcher::health::{SetState, SetStateError};

/// The method names, as Kamailio registers them.
pub mod method {
    pub const LIST: &str = "dispatcher.list";
    pub const SET_STATE: &str = "dispatcher.set_state";
    pub const RELOAD: &str = "dispatcher.reload";
    pub const PING_ACTIVE: &str = "dispatcher.ping_active";
    pub const SET_DUID_STATE: &str = "dispatcher.set_duid_state";
    pub const ADD: &str = "dispatcher.add";
    pub const REMOVE: &str = "dispatcher.remove";
    pub const HASH: &str = "dispatcher.hash";
    pub const CORE_UPTIME: &str = "core.uptime";
    pub const CORE_VERSION: &str = "core.version";
    pub const CORE_ECHO: &str = "core.echo";
    pub const LIST_METHODS: &str = "system.listMethods";
    pub const METHOD_HELP: &str = "system.methodHelp";
}

/// JSON-RPC error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// What Kamailio's dispatcher RPCs send with every fault.
    pub const KAMAILIO_FAULT: i64 = 500;
}

/// The fault messages: Kamailio's texts.
pub mod message {
    pub const PARSE_ERROR: &str = "Parse Error";
    pub const INVALID_REQUEST: &str = "Invalid Request";
    pub const METHOD_NOT_FOUND: &str = "Method Not Found";
    pub const INVALID_PARAMS: &str = "Invalid Parameters";
    pub const INTERNAL_ERROR: &str = "Internal Error";
    pub const NO_SETS: &str = "No Destination Sets";
    pub const INVALID_STATE: &str = "Invalid State Parameter";
    pub const UNKNOWN_STATE: &str = "Unknown State Value";
    pub const STATE_UPDATE_FAILED: &str = "State Update Failed";
    pub const RELOAD_FAILED: &str = "Reload Failed";
    pub const ONGOING_RELOAD: &str = "Ongoing reload";
    pub const ADD_FAILED: &str = "Adding dispatcher dst failed";
    pub const REMOVE_FAILED: &str = "Removing dispatcher dst failed";
    pub const METHOD_NAME_EXPECTED: &str = "Method Name Expected";
    pub const COMMAND_NOT_FOUND: &str = "command not found";
}

/// `dispatcher.set_state`'s result (Kamailio 5.4 and later; older releases
/// returned an empty result).
pub const SET_STATE_OK: &str = "Ok. Dispatcher state updated.";
/// `dispatcher.reload`'s result (Kamailio 5.5 and later).
pub const RELOAD_OK: &str = "Ok. Dispatcher successfully reloaded.";
/// `dispatcher.add`'s result.
pub const ADD_OK: &str = "Ok. Dispatcher destination added.";
/// `dispatcher.remove`'s result.
pub const REMOVE_OK: &str = "Ok. Dispatcher destination removed.";

/// The `dispatcher.hash` result: Kamailio's hash of the values and the
/// slot it picks among `COUNT` (0 when `COUNT` is not positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashResult {
    pub hashid: u32,
    pub slot: u32,
}

/// The `dispatcher.list` result. Field order is Kamailio's; unknown fields
/// (Kamailio's `LATENCY`, `RUNTIME`, `full` extras) are ignored when
/// reading, so the client also reads a real Kamailio's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResult {
    #[serde(rename = "NRSETS")]
    pub nrsets: u32,
    #[serde(rename = "RECORDS")]
    pub records: Vec<SetRecord>,
}

/// `{"SET": {...}}`: Kamailio wraps each array member in an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRecord {
    #[serde(rename = "SET")]
    pub set: SetEntry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetEntry {
    #[serde(rename = "ID")]
    pub id: u32,
    #[serde(rename = "TARGETS")]
    pub targets: Vec<TargetRecord>,
}

/// `{"DEST": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRecord {
    #[serde(rename = "DEST")]
    pub dest: Dest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dest {
    #[serde(rename = "URI")]
    pub uri: String,
    /// State letter (`A`/`I`/`T`/`D`), then `P` probing or `X` not
    /// (Kamailio also has `N`, never pinged).
    #[serde(rename = "FLAGS")]
    pub flags: String,
    #[serde(rename = "PRIORITY")]
    pub priority: i32,
    #[serde(rename = "ATTRS", default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<AttrsView>,
    /// With `[probe] latency_stats` (Kamailio `ds_ping_latency_stats`), in
    /// every list mode as Kamailio prints it.
    #[serde(rename = "LATENCY", default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Under `call-load`, the node's active calls, as Kamailio prints them
    /// with `ds_hash_size` set (which its algorithm 10 needs).
    #[serde(rename = "RUNTIME", default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
}

/// Kamailio's `RUNTIME` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    #[serde(rename = "DLGLOAD")]
    pub dlgload: i64,
}

/// Kamailio's `LATENCY` block: milliseconds; `AVG`, `STD`, `EST` are
/// doubles, `MAX` and `TIMEOUT` integers (its `"fffdd"`), in this order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    #[serde(rename = "AVG")]
    pub avg: f64,
    #[serde(rename = "STD")]
    pub std: f64,
    #[serde(rename = "EST")]
    pub est: f64,
    #[serde(rename = "MAX")]
    pub max: i64,
    #[serde(rename = "TIMEOUT")]
    pub timeout: u32,
}

impl From<&crate::dispatcher::latency::LatencyStats> for Latency {
    fn from(s: &crate::dispatcher::latency::LatencyStats) -> Latency {
        Latency {
            avg: s.average(),
            std: s.stdev(),
            est: s.estimate(),
            max: s.max(),
            timeout: s.timeouts(),
        }
    }
}

/// The `dispatcher.ping_active` result: `{"OldPingState":1}` for a query,
/// `{"NewPingState":0,"OldPingState":1}` after a change; 1 on, 0 off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingState {
    #[serde(
        rename = "NewPingState",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub new: Option<i64>,
    #[serde(rename = "OldPingState")]
    pub old: i64,
}

/// A JSON-RPC error object. `data` is a string from this server; any JSON
/// is accepted when reading another server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    fn new(code: i64, message: &str, data: impl Into<String>) -> ErrorObject {
        ErrorObject {
            code,
            message: message.to_owned(),
            data: Some(Value::String(data.into())),
        }
    }

    fn parse(e: &serde_json::Error) -> ErrorObject {
        ErrorObject::new(code::PARSE_ERROR, message::PARSE_ERROR, e.to_string())
    }

    fn invalid_request(why: &str) -> ErrorObject {
        ErrorObject::new(code::INVALID_REQUEST, message::INVALID_REQUEST, why)
    }

    fn invalid_params(why: impl Into<String>) -> ErrorObject {
        ErrorObject::new(code::INVALID_PARAMS, message::INVALID_PARAMS, why)
    }

    fn fault(message: &str, why: impl Into<String>) -> ErrorObject {
        ErrorObject::new(code::KAMAILIO_FAULT, message, why)
    }

    /// A fault with a code other than Kamailio's usual 500.
    fn with_code(code: i64, message: &str, why: impl Into<String>) -> ErrorObject {
        ErrorObject::new(code, message, why)
    }

    /// The HTTP status that carries this error (see the module docs).
    fn http_status(&self) -> u16 {
        match self.code {
            code::PARSE_ERROR | code::INVALID_REQUEST => 400,
            _ => 500,
        }
    }
}

/// A method's result. Typed, so keys serialize in Kamailio's order (a
/// `serde_json::Value` object would sort them).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
enum RpcResult {
    List(ListResult),
    Text(&'static str),
    Ping(PingState),
    Hash(HashResult),
    Uptime(Uptime),
    /// Several values: Kamailio's `rpc->add` called once per value.
    Strings(Vec<String>),
}

/// The answer envelope, members in Kamailio's order: `jsonrpc`, then
/// `result` or `error`, then `id`.
#[derive(Serialize)]
struct Envelope<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RpcResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorObject>,
    id: &'a Value,
}

/// What the HTTP layer sends back for one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub http_status: u16,
    /// `None` for a notification: HTTP 204, no body.
    pub body: Option<Vec<u8>>,
}

/// Handles one POSTed body: parses it, runs the method against `backend`,
/// and builds the answer. Never panics on any input.
pub fn handle(body: &[u8], backend: &dyn Backend) -> Reply {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error_reply(&Value::Null, &ErrorObject::parse(&e)),
    };
    let fields = match request {
        Value::Object(fields) => fields,
        Value::Array(_) => {
            return error_reply(
                &Value::Null,
                &ErrorObject::invalid_request("batch requests are not supported"),
            )
        }
        _ => {
            return error_reply(
                &Value::Null,
                &ErrorObject::invalid_request("the request is not a JSON object"),
            )
        }
    };
    // The id first, so the other errors can echo it.
    let id = match fields.get("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => {
            return error_reply(
                &Value::Null,
                &ErrorObject::invalid_request("\"id\" must be a string, a number or null"),
            )
        }
    };
    let echo = id.unwrap_or(&Value::Null);
    if fields.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return error_reply(
            echo,
            &ErrorObject::invalid_request("\"jsonrpc\" must be \"2.0\""),
        );
    }
    let Some(method) = fields.get("method").and_then(Value::as_str) else {
        return error_reply(
            echo,
            &ErrorObject::invalid_request("\"method\" must be a string"),
        );
    };
    let outcome = match fields.get("params") {
        None => call(method, &[], backend),
        Some(Value::Array(params)) => call(method, params, backend),
        Some(Value::Object(_)) => Err(ErrorObject::invalid_params(
            "params must be an array: these methods take positional parameters",
        )),
        Some(_) => {
            return error_reply(
                echo,
                &ErrorObject::invalid_request("\"params\" must be an array or an object"),
            )
        }
    };
    let Some(id) = id else {
        return Reply {
            http_status: 204,
            body: None,
        };
    };
    match outcome {
        Ok(result) => reply(
            200,
            &Envelope {
                jsonrpc: "2.0",
                result: Some(&result),
                error: None,
                id,
            },
        ),
        Err(error) => error_reply(id, &error),
    }
}

/// The answer when handling failed outside [`handle`] (the blocking task
/// panicked): -32603, id unknown.
pub fn internal_error() -> Reply {
    error_reply(
        &Value::Null,
        &ErrorObject::new(
            code::INTERNAL_ERROR,
            message::INTERNAL_ERROR,
            "the request handler failed",
        ),
    )
}

fn error_reply(id: &Value, error: &ErrorObject) -> Reply {
    reply(
        error.http_status(),
        &Envelope {
            jsonrpc: "2.0",
            result: None,
            error: Some(error),
            id,
        },
    )
}

fn reply(http_status: u16, envelope: &Envelope<'_>) -> Reply {
    // Serializing these types cannot fail (string keys, no maps of
    // non-string keys, no floats from us); the fallback keeps it that way.
    let body = serde_json::to_vec(envelope).unwrap_or_else(|_| {
        br#"{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal Error"},"id":null}"#
            .to_vec()
    });
    Reply {
        http_status,
        body: Some(body),
    }
}

/// One method: its name as Kamailio registers it, the one-line help
/// `system.methodHelp` gives, and the function that runs it. The single
/// table both the JSON-RPC endpoint and the BINRPC socket dispatch on, so
/// a method added here is on both and in `system.listMethods`.
struct Method {
    name: &'static str,
    help: &'static str,
    run: fn(&[Value], &dyn Backend) -> Result<RpcResult, ErrorObject>,
}

const METHODS: &[Method] = &[
    Method {
        name: method::LIST,
        help: "Print the destination sets: NRSETS and RECORDS, [short|full]",
        run: |p, b| list(p, b).map(RpcResult::List),
    },
    Method {
        name: method::SET_STATE,
        help: "Set the state of a destination: state set-id uri|all",
        run: |p, b| set_state(p, b).map(RpcResult::Text),
    },
    Method {
        name: method::RELOAD,
        help: "Reload the destination list",
        run: |p, b| reload(p, b).map(RpcResult::Text),
    },
    Method {
        name: method::PING_ACTIVE,
        help: "Query or set the global probing switch: [0|1]",
        run: |p, b| ping_active(p, b).map(RpcResult::Ping),
    },
    Method {
        name: method::SET_DUID_STATE,
        help: "Set the state of a destination by duid: state set-id duid|all",
        run: |p, b| set_state_by(p, b, true).map(RpcResult::Text),
    },
    Method {
        name: method::ADD,
        help: "Add a destination in memory: set-id uri [flags [priority [attrs]]]",
        run: |p, b| add(p, b).map(RpcResult::Text),
    },
    Method {
        name: method::REMOVE,
        help: "Remove a destination from memory: set-id uri",
        run: |p, b| remove(p, b).map(RpcResult::Text),
    },
    Method {
        name: method::HASH,
        help: "Compute the hash of the values: count value1 [value2]",
        run: |p, _| hash(p).map(RpcResult::Hash),
    },
    Method {
        name: method::CORE_UPTIME,
        help: "Returns uptime of SIP server.",
        run: |p, _| uptime(p).map(RpcResult::Uptime),
    },
    Method {
        name: method::CORE_VERSION,
        help: "Returns the version string of the server.",
        run: |p, _| no_params(p).map(|()| RpcResult::Text(version())),
    },
    Method {
        name: method::CORE_ECHO,
        help: "Returns back its parameters.",
        run: |p, _| echo(p).map(RpcResult::Strings),
    },
    Method {
        name: method::LIST_METHODS,
        help: "Lists all RPC methods supported by the server.",
        run: |p, _| {
            no_params(p)?;
            Ok(RpcResult::Strings(
                METHODS.iter().map(|m| m.name.to_owned()).collect(),
            ))
        },
    },
    Method {
        name: method::METHOD_HELP,
        help: "Print the help string for given method.",
        run: |p, _| method_help(p).map(RpcResult::Text),
    },
];

/// What a method returned, ready to serialize (keys in Kamailio's order).
/// The BINRPC socket reads it back with [`super::binrpc::Ordered`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Answer(RpcResult);

/// Runs `method` with `params` against `backend`: the one dispatch of
/// both the JSON-RPC endpoint and the BINRPC socket.
///
/// # Errors
/// The method's fault, or -32601 when there is no such method.
pub fn dispatch(
    method: &str,
    params: &[Value],
    backend: &dyn Backend,
) -> Result<Answer, ErrorObject> {
    match METHODS.iter().find(|m| m.name == method) {
        Some(m) => (m.run)(params, backend).map(Answer),
        None => Err(ErrorObject::new(
            code::METHOD_NOT_FOUND,
            message::METHOD_NOT_FOUND,
            format!("no method {method:?}"),
        )),
    }
}

fn call(method: &str, params: &[Value], backend: &dyn Backend) -> Result<RpcResult, ErrorObject> {
    dispatch(method, params, backend).map(|Answer(r)| r)
}

/// `core.version`: Kamailio's `full_version` shape, name version
/// (arch/os): `sipedge 0.1.0 (x86_64/linux)`.
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "sipedge {} ({}/{})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            std::env::consts::OS
        )
    })
}

/// `core.uptime`'s result, members in Kamailio's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uptime {
    /// Now, as C's `ctime` writes it without the newline (UTC).
    pub now: String,
    pub up_since: String,
    /// Whole seconds.
    pub uptime: i64,
}

fn no_params(params: &[Value]) -> Result<(), ErrorObject> {
    if params.is_empty() {
        Ok(())
    } else {
        Err(ErrorObject::invalid_params("expected no parameters"))
    }
}

fn uptime(params: &[Value]) -> Result<Uptime, ErrorObject> {
    no_params(params)?;
    let started = super::started();
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(started).map_or(0, |d| d.as_secs());
    Ok(Uptime {
        now: ctime(now),
        up_since: ctime(started),
        uptime: i64::try_from(secs).unwrap_or(i64::MAX),
    })
}

/// `core.echo`: every parameter back, as a string (Kamailio's `.s` scan:
/// numbers as their digits).
fn echo(params: &[Value]) -> Result<Vec<String>, ErrorObject> {
    params
        .iter()
        .map(|p| match p {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(ErrorObject::invalid_params(
                "parameters must be strings or numbers",
            )),
        })
        .collect()
}

/// `system.methodHelp NAME`, with Kamailio's 400 faults.
fn method_help(params: &[Value]) -> Result<&'static str, ErrorObject> {
    let [Value::String(name)] = params else {
        return Err(ErrorObject::with_code(
            400,
            message::METHOD_NAME_EXPECTED,
            "expected one method name",
        ));
    };
    METHODS
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.help)
        .ok_or_else(|| {
            ErrorObject::with_code(
                400,
                message::COMMAND_NOT_FOUND,
                format!("no method {name:?}"),
            )
        })
}

/// C's `ctime` without the newline, in UTC: `Sun Dec  6 12:57:21 2026`.
pub fn ctime(t: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm), from 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// How much of each destination `dispatcher.list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListMode {
    /// `ATTRS` when the line had attributes.
    Normal,
    /// Never `ATTRS`.
    Short,
    /// Always `ATTRS`.
    Full,
}

fn list(params: &[Value], backend: &dyn Backend) -> Result<ListResult, ErrorObject> {
    let mode = match params {
        [] => ListMode::Normal,
        [Value::String(s)] if s.eq_ignore_ascii_case("short") => ListMode::Short,
        [Value::String(s)] if s.eq_ignore_ascii_case("full") => ListMode::Full,
        _ => {
            return Err(ErrorObject::invalid_params(
                "expected no parameter or one of \"short\", \"full\"",
            ))
        }
    };
    let list = build_list(backend.destinations(), mode);
    if list.records.is_empty() {
        return Err(ErrorObject::fault(
            message::NO_SETS,
            "no destination is configured",
        ));
    }
    Ok(list)
}

fn build_list(destinations: Vec<DestinationView>, mode: ListMode) -> ListResult {
    let mut sets: BTreeMap<u32, Vec<TargetRecord>> = BTreeMap::new();
    for d in destinations {
        let attrs = match mode {
            ListMode::Short => None,
            ListMode::Normal => d.attrs,
            ListMode::Full => Some(d.attrs.unwrap_or_default()),
        };
        sets.entry(d.set).or_default().push(TargetRecord {
            dest: Dest {
                uri: d.uri,
                flags: d.status.flags().as_str().to_owned(),
                priority: d.priority,
                attrs,
                latency: d.latency.as_ref().map(Latency::from),
                runtime: d.dlgload.map(|n| Runtime {
                    dlgload: i64::try_from(n).unwrap_or(i64::MAX),
                }),
            },
        });
    }
    let records: Vec<SetRecord> = sets
        .into_iter()
        .map(|(id, targets)| SetRecord {
            set: SetEntry { id, targets },
        })
        .collect();
    ListResult {
        nrsets: u32::try_from(records.len()).unwrap_or(u32::MAX),
        records,
    }
}

/// Largest set id: Kamailio keeps set ids in a C `int`.
const MAX_SET_ID: u64 = i32::MAX as u64;

fn set_state(params: &[Value], backend: &dyn Backend) -> Result<&'static str, ErrorObject> {
    set_state_by(params, backend, false)
}

/// `dispatcher.set_state` (`by_duid` false) and `dispatcher.set_duid_state`
/// (true): Kamailio's `dispatcher_rpc_set_state_helper`, same arguments.
fn set_state_by(
    params: &[Value],
    backend: &dyn Backend,
    by_duid: bool,
) -> Result<&'static str, ErrorObject> {
    let [state, set, target] = params else {
        return Err(ErrorObject::invalid_params(if by_duid {
            "expected [state, set id, duid or \"all\"]"
        } else {
            "expected [state, set id, destination URI or \"all\"]"
        }));
    };
    let state_text = match state {
        Value::String(s) => s.clone(),
        // Kamailio's `.S` scan turns a number into its digits.
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return Err(ErrorObject::invalid_params("state must be a string")),
    };
    let set = integer(set)
        .filter(|&n| n <= MAX_SET_ID)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            ErrorObject::invalid_params("set id must be an integer from 0 to 2147483647")
        })?;
    let Value::String(target) = target else {
        return Err(ErrorObject::invalid_params(
            "destination must be a URI string or \"all\"",
        ));
    };
    let state = SetState::parse(&state_text).map_err(|e| match e {
        SetStateError::Empty => ErrorObject::fault(message::INVALID_STATE, e.to_string()),
        SetStateError::UnknownState(_) => ErrorObject::fault(message::UNKNOWN_STATE, e.to_string()),
    })?;
    let target = match Target::parse(target) {
        Target::Uri(duid) if by_duid => Target::Duid(duid),
        target => target,
    };
    match backend.set_state(set, &target, state) {
        Ok(count) => {
            tracing::info!(
                set,
                target = %Escaped(&target.to_string()),
                state = %state.state,
                probing = ?state.probing,
                count,
                "dispatcher.set_state"
            );
            Ok(SET_STATE_OK)
        }
        Err(e) => {
            tracing::warn!(
                set,
                target = %Escaped(&target.to_string()),
                error = %Escaped(&e.to_string()),
                "dispatcher.set_state refused"
            );
            Err(ErrorObject::fault(
                message::STATE_UPDATE_FAILED,
                e.to_string(),
            ))
        }
    }
}

fn reload(params: &[Value], backend: &dyn Backend) -> Result<&'static str, ErrorObject> {
    if !params.is_empty() {
        return Err(ErrorObject::invalid_params("expected no parameters"));
    }
    match backend.reload() {
        Ok(()) => {
            tracing::info!("dispatcher.reload done");
            Ok(RELOAD_OK)
        }
        Err(e) => {
            tracing::warn!(error = %Escaped(&e.to_string()), "dispatcher.reload failed");
            let message = match e {
                BackendError::ReloadInProgress => message::ONGOING_RELOAD,
                _ => message::RELOAD_FAILED,
            };
            Err(ErrorObject::fault(message, e.to_string()))
        }
    }
}

fn ping_active(params: &[Value], backend: &dyn Backend) -> Result<PingState, ErrorObject> {
    let new = match params {
        [] => None,
        [Value::Bool(on)] => Some(*on),
        [value] => match integer(value) {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => {
                return Err(ErrorObject::invalid_params(
                    "ping state must be 0 (off) or 1 (on)",
                ))
            }
        },
        _ => {
            return Err(ErrorObject::invalid_params(
                "expected no parameter (query) or one: 0 or 1",
            ))
        }
    };
    let old = backend.ping_active(new);
    if let Some(on) = new {
        tracing::info!(old, new = on, "dispatcher.ping_active");
    }
    Ok(PingState {
        new: new.map(i64::from),
        old: i64::from(old),
    })
}

/// A set id (Kamailio's `d`): 0 to 2147483647.
fn set_id(value: &Value) -> Result<u32, ErrorObject> {
    integer(value)
        .filter(|&n| n <= MAX_SET_ID)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            ErrorObject::invalid_params("set id must be an integer from 0 to 2147483647")
        })
}

/// A signed 32-bit integer (Kamailio's `d`), as a JSON number or a string
/// of digits with an optional `-`.
fn int32(value: &Value) -> Option<i32> {
    match value {
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Value::String(s) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        }
        _ => None,
    }
}

/// A string argument (Kamailio's `S`): a number is read as its digits, as
/// kamcmd sends `123` as an integer.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// `dispatcher.add SET URI [FLAGS [PRIORITY [ATTRS]]]` (Kamailio's
/// `dS*ddS`): checked as a list line with those fields would be.
fn add(params: &[Value], backend: &dyn Backend) -> Result<&'static str, ErrorObject> {
    const USAGE: &str = "expected [set id, URI, flags?, priority?, attributes?]";
    if !(2..=5).contains(&params.len()) {
        return Err(ErrorObject::invalid_params(USAGE));
    }
    let set = set_id(&params[0])?;
    let Some(Value::String(uri)) = params.get(1) else {
        return Err(ErrorObject::invalid_params("the URI must be a string"));
    };
    let flags = match params.get(2) {
        None => 0,
        Some(v) => integer(v)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n <= MAX_SET_ID as u32)
            .ok_or_else(|| {
                ErrorObject::invalid_params("flags must be an integer from 0 to 2147483647")
            })?,
    };
    let priority = match params.get(3) {
        None => 0,
        Some(v) => int32(v)
            .ok_or_else(|| ErrorObject::invalid_params("priority must be a 32-bit integer"))?,
    };
    let attrs = match params.get(4) {
        None => String::new(),
        Some(v) => {
            text(v).ok_or_else(|| ErrorObject::invalid_params("attributes must be a string"))?
        }
    };
    let refused = |why: String| {
        tracing::warn!(set, uri = %Escaped(uri), error = %Escaped(&why), "dispatcher.add refused");
        ErrorObject::fault(message::ADD_FAILED, why)
    };
    let entry = crate::dispatcher::list::Entry::from_fields(set, uri, flags, priority, &attrs)
        .map_err(|e| refused(e.to_string()))?;
    match backend.add_destination(&entry) {
        Ok(()) => {
            tracing::info!(
                set,
                uri = %Escaped(&entry.uri),
                flags,
                priority,
                attrs = %Escaped(&attrs),
                "dispatcher.add: destination added (in memory until the next reload)"
            );
            Ok(ADD_OK)
        }
        Err(BackendError::ReloadInProgress) => Err(ErrorObject::fault(
            message::ONGOING_RELOAD,
            BackendError::ReloadInProgress.to_string(),
        )),
        Err(e) => Err(refused(e.to_string())),
    }
}

/// `dispatcher.remove SET URI` (Kamailio's `dS`).
fn remove(params: &[Value], backend: &dyn Backend) -> Result<&'static str, ErrorObject> {
    let [set, uri] = params else {
        return Err(ErrorObject::invalid_params("expected [set id, URI]"));
    };
    let set = set_id(set)?;
    let Value::String(uri) = uri else {
        return Err(ErrorObject::invalid_params("the URI must be a string"));
    };
    match backend.remove_destination(set, uri) {
        Ok(count) => {
            tracing::info!(
                set,
                uri = %Escaped(uri),
                count,
                "dispatcher.remove: destination removed (in memory until the next reload)"
            );
            Ok(REMOVE_OK)
        }
        Err(BackendError::ReloadInProgress) => Err(ErrorObject::fault(
            message::ONGOING_RELOAD,
            BackendError::ReloadInProgress.to_string(),
        )),
        Err(e) => {
            tracing::warn!(set, uri = %Escaped(uri), error = %Escaped(&e.to_string()), "dispatcher.remove refused");
            Err(ErrorObject::fault(message::REMOVE_FAILED, e.to_string()))
        }
    }
}

/// `dispatcher.hash COUNT VALUE1 [VALUE2]` (Kamailio's `dS*S`).
fn hash(params: &[Value]) -> Result<HashResult, ErrorObject> {
    if !(2..=3).contains(&params.len()) {
        return Err(ErrorObject::invalid_params(
            "expected [slot count, value, second value?]",
        ));
    }
    let count = int32(&params[0])
        .ok_or_else(|| ErrorObject::invalid_params("slot count must be a 32-bit integer"))?;
    let values = params[1..]
        .iter()
        .map(text)
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| ErrorObject::invalid_params("values must be strings"))?;
    let second = values.get(1).map_or("", String::as_str);
    let hashid = crate::dispatcher::kamailio_hash(values[0].as_bytes(), second.as_bytes());
    let slot = u32::try_from(count).map_or(0, |n| if n > 0 { hashid % n } else { 0 });
    Ok(HashResult { hashid, slot })
}

/// A non-negative integer given as a JSON number or a string of ASCII
/// digits (`kamctl rpc` and shell scripts send either).
fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::admin::Readiness;
    use crate::dispatcher::health::{State, Status};

    /// Records what it was asked; answers from fixed data.
    struct Fake {
        dests: Vec<DestinationView>,
        calls: Mutex<Vec<String>>,
        set_state_answer: fn() -> Result<usize, BackendError>,
        reload_answer: fn() -> Result<(), BackendError>,
        ping: Mutex<bool>,
    }

    impl Fake {
        fn new(dests: Vec<DestinationView>) -> Fake {
            Fake {
                dests,
                calls: Mutex::new(Vec::new()),
                set_state_answer: || Ok(1),
                reload_answer: || Ok(()),
                ping: Mutex::new(true),
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Backend for Fake {
        fn metrics_text(&self) -> String {
            String::new()
        }
        fn ready(&self) -> Readiness {
            Readiness::ready("")
        }
        fn destinations(&self) -> Vec<DestinationView> {
            self.dests.clone()
        }
        fn set_state(
            &self,
            set: u32,
            target: &Target,
            state: SetState,
        ) -> Result<usize, BackendError> {
            self.calls.lock().unwrap().push(format!(
                "set_state {set} {target} {} {:?}",
                state.state, state.probing
            ));
            (self.set_state_answer)()
        }
        fn reload(&self) -> Result<(), BackendError> {
            self.calls.lock().unwrap().push("reload".into());
            (self.reload_answer)()
        }
        fn ping_active(&self, set: Option<bool>) -> bool {
            let mut ping = self.ping.lock().unwrap();
            let old = *ping;
            if let Some(on) = set {
                *ping = on;
            }
            old
        }
        fn add_destination(&self, e: &crate::dispatcher::list::Entry) -> Result<(), BackendError> {
            self.calls.lock().unwrap().push(format!(
                "add {} {} {} {} {}",
                e.set_id,
                e.uri,
                e.flags.bits(),
                e.priority,
                e.attrs
            ));
            if e.uri.contains("busy") {
                return Err(BackendError::ReloadInProgress);
            }
            Ok(())
        }
        fn remove_destination(&self, set: u32, uri: &str) -> Result<usize, BackendError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("remove {set} {uri}"));
            if uri.contains("nope") {
                return Err(BackendError::Refused(format!(
                    "destination {uri} not found in set {set}"
                )));
            }
            Ok(1)
        }
    }

    fn dest(set: u32, uri: &str, flags: u32, priority: i32) -> DestinationView {
        DestinationView::new(set, uri, Status::from_list_flags(flags), priority)
    }

    fn pool() -> Vec<DestinationView> {
        let mut a = dest(2, "sip:10.0.2.10:5080", 8, 5);
        a.attrs = Some(AttrsView {
            body: "duid=fs-c;weight=50".into(),
            duid: "fs-c".into(),
            weight: 50,
            ..AttrsView::default()
        });
        vec![
            a,
            dest(1, "sip:10.0.1.10:5080", 8, 10),
            dest(1, "sip:10.0.1.11:5080", 1, 0),
        ]
    }

    /// Runs one request; returns the HTTP status and the parsed body.
    fn run(backend: &dyn Backend, request: &str) -> (u16, Value) {
        let reply = handle(request.as_bytes(), backend);
        let body = reply.body.expect("a body");
        (reply.http_status, serde_json::from_slice(&body).unwrap())
    }

    fn text(backend: &dyn Backend, request: &str) -> String {
        String::from_utf8(handle(request.as_bytes(), backend).body.unwrap()).unwrap()
    }

    fn error_of(answer: &Value) -> (i64, &str) {
        (
            answer["error"]["code"].as_i64().unwrap(),
            answer["error"]["message"].as_str().unwrap(),
        )
    }

    fn call_with(fake: &Fake, method: &str, params: &str) -> Value {
        run(
            fake,
            &format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params},"id":1}}"#),
        )
        .1
    }

    #[test]
    fn add_reads_kamailios_arguments() {
        let fake = Fake::new(pool());
        for (params, call) in [
            (
                r#"[1,"sip:10.0.1.12:5080"]"#,
                "add 1 sip:10.0.1.12:5080 0 0 ",
            ),
            (r#"["2","10.0.1.12",8]"#, "add 2 sip:10.0.1.12 8 0 "),
            (
                r#"[1,"sip:u@10.0.1.12;transport=tcp",8,-3,"duid=x;weight=5"]"#,
                "add 1 sip:u@10.0.1.12;transport=tcp 8 -3 duid=x;weight=5",
            ),
        ] {
            let answer = call_with(&fake, method::ADD, params);
            assert_eq!(answer["result"], ADD_OK, "{params}");
            assert_eq!(fake.calls().last().unwrap(), call);
        }
        let before = fake.calls().len();
        refused_as_invalid(
            &fake,
            method::ADD,
            &[
                "[]",
                "[1]",
                r#"["x","sip:10.0.1.12"]"#,
                r#"[1,5]"#,
                r#"[1,"sip:a",-1]"#,
                r#"[1,"sip:a",1,"x"]"#,
                r#"[1,"sip:a",1,1,"a",6]"#,
            ],
        );
        // A line Kamailio would mangle, or one the backend refuses.
        for (bad, data) in [
            (
                r#"[1,"tel:123"]"#,
                "destination \"tel:123\" is not a sip: or sips: URI",
            ),
            (
                r#"[1,"sip:a b"]"#,
                "destination \"sip:a b\" is not a valid SIP URI",
            ),
            (
                r#"[1,"sip:10.0.0.1",0,0,"weight=500"]"#,
                "weight \"500\" is not an integer from 0 to 100",
            ),
        ] {
            let answer = call_with(&fake, method::ADD, bad);
            assert_eq!(error_of(&answer), (500, message::ADD_FAILED), "{bad}");
            assert_eq!(answer["error"]["data"], data);
        }
        assert_eq!(fake.calls().len(), before);
        let answer = call_with(&fake, method::ADD, r#"[1,"sip:busy@10.0.0.1"]"#);
        assert_eq!(error_of(&answer), (500, message::ONGOING_RELOAD));
    }

    #[test]
    fn remove_reads_kamailios_arguments() {
        let fake = Fake::new(pool());
        let answer = call_with(&fake, method::REMOVE, r#"["1","sip:10.0.1.11:5080"]"#);
        assert_eq!(answer["result"], REMOVE_OK);
        assert_eq!(fake.calls(), ["remove 1 sip:10.0.1.11:5080"]);
        let answer = call_with(&fake, method::REMOVE, r#"[1,"sip:nope"]"#);
        assert_eq!(error_of(&answer), (500, message::REMOVE_FAILED));
        assert_eq!(
            answer["error"]["data"],
            "destination sip:nope not found in set 1"
        );
        refused_as_invalid(
            &fake,
            method::REMOVE,
            &[
                "[]",
                "[1]",
                r#"[1,"sip:a","b"]"#,
                r#"["a","sip:a"]"#,
                "[1,2]",
            ],
        );
    }

    /// Each of `bads` as `method`'s params: Kamailio's invalid-params
    /// fault.
    fn refused_as_invalid(fake: &Fake, method: &str, bads: &[&str]) {
        for bad in bads {
            let answer = call_with(fake, method, bad);
            assert_eq!(
                error_of(&answer),
                (code::INVALID_PARAMS, message::INVALID_PARAMS),
                "{bad}"
            );
        }
    }

    #[test]
    fn set_duid_state_names_the_duid() {
        let fake = Fake::new(pool());
        let answer = call_with(&fake, method::SET_DUID_STATE, r#"["ip",2,"fs-c"]"#);
        assert_eq!(answer["result"], SET_STATE_OK);
        let answer = call_with(&fake, method::SET_DUID_STATE, r#"["d",2,"all"]"#);
        assert_eq!(answer["result"], SET_STATE_OK);
        assert_eq!(
            fake.calls(),
            [
                "set_state 2 duid=fs-c inactive Some(true)",
                "set_state 2 all disabled Some(false)"
            ]
        );
        let answer = call_with(&fake, method::SET_DUID_STATE, r#"["ip",2]"#);
        assert_eq!(
            error_of(&answer),
            (code::INVALID_PARAMS, message::INVALID_PARAMS)
        );
    }

    /// Kamailio 5.6.3's answers, from `kamcmd dispatcher.hash`.
    #[test]
    fn hash_is_kamailios() {
        let fake = Fake::new(pool());
        let answer = call_with(&fake, method::HASH, r#"[10,"abc"]"#);
        assert_eq!(answer["result"], json!({"hashid": 7_167_810, "slot": 0}));
        let answer = call_with(&fake, method::HASH, r#"[0,"abc","def"]"#);
        assert_eq!(answer["result"], json!({"hashid": 14_047_601, "slot": 0}));
        let answer = call_with(&fake, method::HASH, r#"["7","héllo wörld","x"]"#);
        assert_eq!(
            answer["result"],
            json!({"hashid": 2_820_193_995_u32, "slot": 3})
        );
        // A number is read as its digits; a negative count picks slot 0.
        assert_eq!(
            call_with(&fake, method::HASH, r#"[-4,123]"#)["result"],
            call_with(&fake, method::HASH, r#"[0,"123"]"#)["result"]
        );
        refused_as_invalid(
            &fake,
            method::HASH,
            &[
                "[]",
                "[3]",
                r#"["x","a"]"#,
                r#"[3,"a","b","c"]"#,
                r#"[3,{}]"#,
            ],
        );
    }

    #[test]
    fn list_is_kamailio_shaped_sorted_by_set_with_keys_in_order() {
        let fake = Fake::new(pool());
        let body = text(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","id":7}"#,
        );
        assert_eq!(
            body,
            concat!(
                r#"{"jsonrpc":"2.0","result":{"NRSETS":2,"RECORDS":["#,
                r#"{"SET":{"ID":1,"TARGETS":["#,
                r#"{"DEST":{"URI":"sip:10.0.1.10:5080","FLAGS":"AP","PRIORITY":10}},"#,
                r#"{"DEST":{"URI":"sip:10.0.1.11:5080","FLAGS":"IX","PRIORITY":0}}]}},"#,
                r#"{"SET":{"ID":2,"TARGETS":["#,
                r#"{"DEST":{"URI":"sip:10.0.2.10:5080","FLAGS":"AP","PRIORITY":5,"#,
                r#""ATTRS":{"BODY":"duid=fs-c;weight=50","DUID":"fs-c","MAXLOAD":0,"#,
                r#""WEIGHT":50,"RWEIGHT":0,"SOCKET":null,"SOCKNAME":null,"OBPROXY":null}}}]}}"#,
                r#"]},"id":7}"#
            )
        );
    }

    #[test]
    fn list_modes() {
        let fake = Fake::new(pool());
        let (_, short) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","params":["short"],"id":1}"#,
        );
        assert!(short["result"]["RECORDS"][1]["SET"]["TARGETS"][0]["DEST"]
            .get("ATTRS")
            .is_none());
        let (_, full) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","params":["FULL"],"id":1}"#,
        );
        assert_eq!(
            full["result"]["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"]["ATTRS"],
            json!({"BODY":"","DUID":null,"MAXLOAD":0,"WEIGHT":0,"RWEIGHT":0,
                   "SOCKET":null,"SOCKNAME":null,"OBPROXY":null})
        );
        for bad in [r#"["long"]"#, r#"[1]"#, r#"["short","x"]"#] {
            let (status, answer) = run(
                &fake,
                &format!(r#"{{"jsonrpc":"2.0","method":"dispatcher.list","params":{bad},"id":1}}"#),
            );
            assert_eq!(
                (status, error_of(&answer).0),
                (500, code::INVALID_PARAMS),
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_pool_is_kamailios_no_destination_sets() {
        let fake = Fake::new(Vec::new());
        let (status, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","id":1}"#,
        );
        assert_eq!(status, 500);
        assert_eq!(error_of(&answer), (500, "No Destination Sets"));
    }

    #[test]
    fn set_state_reads_kamailios_arguments() {
        let fake = Fake::new(pool());
        let cases = [
            (
                r#"["ip", 1, "sip:10.0.1.10:5080"]"#,
                "set_state 1 sip:10.0.1.10:5080 inactive Some(true)",
            ),
            (r#"["a", "2", "all"]"#, "set_state 2 all active Some(false)"),
            (r#"[0, 1, "ALL"]"#, "set_state 1 ALL inactive Some(false)"),
            (
                r#"[2, 0, "sip:x"]"#,
                "set_state 0 sip:x disabled Some(false)",
            ),
            (
                r#"["Tp", 2147483647, "sip:x"]"#,
                "set_state 2147483647 sip:x trying Some(true)",
            ),
        ];
        for (params, call) in cases {
            let (status, answer) = run(
                &fake,
                &format!(
                    r#"{{"jsonrpc":"2.0","method":"dispatcher.set_state","params":{params},"id":"a"}}"#
                ),
            );
            assert_eq!(status, 200, "{params}");
            assert_eq!(
                answer,
                json!({"jsonrpc":"2.0","result":SET_STATE_OK,"id":"a"})
            );
            assert_eq!(fake.calls().last().map(String::as_str), Some(call));
        }
    }

    #[test]
    fn set_state_refusals() {
        let fake = Fake::new(pool());
        let cases = [
            (r#"["ip", 1]"#, code::INVALID_PARAMS, "Invalid Parameters"),
            (
                r#"["ip", 1, "sip:a", "x"]"#,
                code::INVALID_PARAMS,
                "Invalid Parameters",
            ),
            (
                r#"[["ip"], 1, "sip:a"]"#,
                code::INVALID_PARAMS,
                "Invalid Parameters",
            ),
            (
                r#"["ip", -1, "sip:a"]"#,
                code::INVALID_PARAMS,
                "Invalid Parameters",
            ),
            (
                r#"["ip", 2147483648, "sip:a"]"#,
                code::INVALID_PARAMS,
                "Invalid Parameters",
            ),
            (
                r#"["ip", 1.5, "sip:a"]"#,
                code::INVALID_PARAMS,
                "Invalid Parameters",
            ),
            (
                r#"["ip", "1x", "sip:a"]"#,
                code::INVALID_PARAMS,
                "Invalid Parameters",
            ),
            (
                r#"["ip", 1, 5]"#,
                code::INVALID_PARAMS,
                "Invalid Parameters",
            ),
            (r#"["", 1, "sip:a"]"#, 500, "Invalid State Parameter"),
            (r#"["x", 1, "sip:a"]"#, 500, "Unknown State Value"),
            (r#"["ax", 1, "sip:a"]"#, 500, "Unknown State Value"),
            (r#"[4, 1, "sip:a"]"#, 500, "Unknown State Value"),
        ];
        for (params, code, message) in cases {
            let (status, answer) = run(
                &fake,
                &format!(
                    r#"{{"jsonrpc":"2.0","method":"dispatcher.set_state","params":{params},"id":3}}"#
                ),
            );
            assert_eq!(status, 500, "{params}");
            assert_eq!(error_of(&answer), (code, message), "{params}");
            assert!(answer["error"]["data"].is_string(), "{params}");
            assert_eq!(answer["id"], 3);
        }
        assert!(fake.calls().is_empty(), "nothing reached the backend");

        let mut fake = Fake::new(pool());
        fake.set_state_answer = || {
            Err(BackendError::UnknownDestination {
                set: 1,
                uri: "sip:nope".into(),
            })
        };
        let (status, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.set_state","params":["d",1,"sip:nope"],"id":1}"#,
        );
        assert_eq!(status, 500);
        assert_eq!(error_of(&answer), (500, "State Update Failed"));
        assert_eq!(
            answer["error"]["data"],
            "destination sip:nope not found in set 1"
        );
    }

    #[test]
    fn reload_results_and_faults() {
        let mut fake = Fake::new(pool());
        let (status, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.reload","id":1}"#,
        );
        assert_eq!(status, 200);
        assert_eq!(answer["result"], RELOAD_OK);
        assert_eq!(fake.calls(), ["reload"]);

        fake.reload_answer = || Err(BackendError::ReloadInProgress);
        let (_, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.reload","id":1}"#,
        );
        assert_eq!(error_of(&answer), (500, "Ongoing reload"));

        fake.reload_answer = || Err(BackendError::Reload("dispatcher.list:2: bad".into()));
        let (status, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.reload","id":1}"#,
        );
        assert_eq!(status, 500);
        assert_eq!(error_of(&answer), (500, "Reload Failed"));
        assert_eq!(
            answer["error"]["data"],
            "reload failed: dispatcher.list:2: bad"
        );

        let (_, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.reload","params":[1],"id":1}"#,
        );
        assert_eq!(error_of(&answer).0, code::INVALID_PARAMS);
        assert_eq!(fake.calls().len(), 3, "the refused call did not reload");
    }

    #[test]
    fn ping_active_queries_and_sets() {
        let fake = Fake::new(pool());
        let ask = |params: &str| {
            text(
                &fake,
                &format!(
                    r#"{{"jsonrpc":"2.0","method":"dispatcher.ping_active","params":{params},"id":1}}"#
                ),
            )
        };
        assert_eq!(
            ask("[]"),
            r#"{"jsonrpc":"2.0","result":{"OldPingState":1},"id":1}"#
        );
        assert_eq!(
            ask("[0]"),
            r#"{"jsonrpc":"2.0","result":{"NewPingState":0,"OldPingState":1},"id":1}"#
        );
        assert_eq!(
            ask("[]"),
            r#"{"jsonrpc":"2.0","result":{"OldPingState":0},"id":1}"#
        );
        assert!(ask(r#"["1"]"#).contains(r#"{"NewPingState":1,"OldPingState":0}"#));
        assert!(ask("[false]").contains(r#"{"NewPingState":0,"OldPingState":1}"#));
        for bad in ["[2]", "[-1]", r#"["on"]"#, "[0, 1]", "[null]"] {
            let answer: Value = serde_json::from_str(&ask(bad)).unwrap();
            assert_eq!(error_of(&answer).0, code::INVALID_PARAMS, "{bad}");
        }
        assert!(!*fake.ping.lock().unwrap(), "refusals changed nothing");
    }

    #[test]
    fn protocol_errors() {
        let fake = Fake::new(pool());
        let cases: [(&str, i64, Value); 11] = [
            ("{", code::PARSE_ERROR, Value::Null),
            ("", code::PARSE_ERROR, Value::Null),
            ("\u{0}\u{ff}", code::PARSE_ERROR, Value::Null),
            (
                r#"[{"jsonrpc":"2.0","method":"dispatcher.list","id":1}]"#,
                code::INVALID_REQUEST,
                Value::Null,
            ),
            ("[]", code::INVALID_REQUEST, Value::Null),
            ("42", code::INVALID_REQUEST, Value::Null),
            (
                r#"{"method":"dispatcher.list","id":1}"#,
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                r#"{"jsonrpc":"1.0","method":"dispatcher.list","id":"x"}"#,
                code::INVALID_REQUEST,
                json!("x"),
            ),
            (
                r#"{"jsonrpc":"2.0","method":5,"id":1}"#,
                code::INVALID_REQUEST,
                json!(1),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"dispatcher.list","id":{}}"#,
                code::INVALID_REQUEST,
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"dispatcher.list","params":"x","id":2}"#,
                code::INVALID_REQUEST,
                json!(2),
            ),
        ];
        for (request, code, id) in cases {
            let (status, answer) = run(&fake, request);
            assert_eq!(status, 400, "{request}");
            assert_eq!(error_of(&answer).0, code, "{request}");
            assert_eq!(answer["id"], id, "{request}");
            assert_eq!(answer["jsonrpc"], "2.0");
        }
        let (status, answer) = run(&fake, r#"{"jsonrpc":"2.0","method":"core.nope","id":9}"#);
        assert_eq!(status, 500);
        assert_eq!(
            error_of(&answer),
            (code::METHOD_NOT_FOUND, "Method Not Found")
        );
        assert_eq!(answer["id"], 9);
        let (_, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.list","params":{"mode":"short"},"id":1}"#,
        );
        assert_eq!(error_of(&answer).0, code::INVALID_PARAMS);
        // Deep nesting is a parse error (serde_json's recursion limit), not
        // a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(error_of(&run(&fake, &deep).1).0, code::PARSE_ERROR);
    }

    #[test]
    fn notifications_run_but_get_no_body() {
        let fake = Fake::new(pool());
        let reply = handle(
            br#"{"jsonrpc":"2.0","method":"dispatcher.ping_active","params":[0]}"#,
            &fake,
        );
        assert_eq!(
            reply,
            Reply {
                http_status: 204,
                body: None
            }
        );
        assert!(!*fake.ping.lock().unwrap());
        // Even a failing notification gets no answer; a null id does.
        let reply = handle(br#"{"jsonrpc":"2.0","method":"nope"}"#, &fake);
        assert_eq!(reply.body, None);
        let (_, answer) = run(&fake, r#"{"jsonrpc":"2.0","method":"nope","id":null}"#);
        assert_eq!(answer["id"], Value::Null);
        assert_eq!(error_of(&answer).0, code::METHOD_NOT_FOUND);
    }

    #[test]
    fn fractional_and_string_ids_are_echoed() {
        let fake = Fake::new(pool());
        let (_, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.ping_active","id":"abc"}"#,
        );
        assert_eq!(answer["id"], "abc");
        let (_, answer) = run(
            &fake,
            r#"{"jsonrpc":"2.0","method":"dispatcher.ping_active","id":1.5}"#,
        );
        assert_eq!(answer["id"], 1.5);
    }

    #[test]
    fn internal_error_is_32603() {
        let reply = internal_error();
        assert_eq!(reply.http_status, 500);
        let answer: Value = serde_json::from_slice(&reply.body.unwrap()).unwrap();
        assert_eq!(error_of(&answer), (code::INTERNAL_ERROR, "Internal Error"));
    }

    #[test]
    fn list_result_reads_a_real_kamailio_answer() {
        // Extra blocks and fields of Kamailio's output are skipped.
        let kamailio = json!({"NRSETS":1,"RECORDS":[{"SET":{"ID":1,"TARGETS":[
            {"DEST":{"URI":"sip:192.168.0.1:5060","FLAGS":"AP","PRIORITY":12,
              "ATTRS":{"BODY":"rweight=50;weight=50;cc=1","DUID":"","MAXLOAD":0,
                       "WEIGHT":50,"RWEIGHT":50,"SOCKET":"","SOCKNAME":"","OBPROXY":""},
              "LATENCY":{"AVG":20.104,"STD":1.273,"EST":45.005,"MAX":132,"TIMEOUT":3}}}]}}]});
        let list: ListResult = serde_json::from_value(kamailio).unwrap();
        let dest = &list.records[0].set.targets[0].dest;
        assert_eq!(dest.flags, "AP");
        assert_eq!(dest.attrs.as_ref().map(|a| a.rweight), Some(50));
    }

    #[test]
    fn core_and_system_methods_over_json() {
        let fake = Fake::new(pool());
        let ask = |method: &str, params: &str| {
            text(
                &fake,
                &format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params},"id":1}}"#),
            )
        };
        let names: Value = serde_json::from_str(&ask("system.listMethods", "[]")).unwrap();
        let names: Vec<&str> = names["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(names, METHODS.iter().map(|m| m.name).collect::<Vec<_>>());
        assert!(names.contains(&"dispatcher.set_state") && names.contains(&"core.uptime"));
        assert!(ask("core.version", "[]").contains(&format!(r#""result":"{}""#, version())));
        assert!(version().starts_with("sipedge "));
        assert!(ask("core.echo", r#"["a",7]"#).contains(r#""result":["a","7"]"#));
        let uptime = ask("core.uptime", "[]");
        let (now, since, secs) = (
            uptime.find(r#""now":"#).unwrap(),
            uptime.find(r#""up_since":"#).unwrap(),
            uptime.find(r#""uptime":"#).unwrap(),
        );
        assert!(now < since && since < secs, "Kamailio's order: {uptime}");
        assert!(ask("system.methodHelp", r#"["dispatcher.reload"]"#)
            .contains(r#""result":"Reload the destination list""#));
        for (params, message) in [
            ("[]", "Method Name Expected"),
            (r#"["x.y"]"#, "command not found"),
        ] {
            let answer: Value = serde_json::from_str(&ask("system.methodHelp", params)).unwrap();
            assert_eq!(error_of(&answer), (400, message), "{params}");
        }
        let answer: Value = serde_json::from_str(&ask("core.version", "[1]")).unwrap();
        assert_eq!(error_of(&answer).0, code::INVALID_PARAMS);
    }

    #[test]
    fn ctime_is_cs_ctime() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(ctime(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        // 2026-12-06 13:04:24 UTC, a Sunday; and a leap day.
        assert_eq!(
            ctime(UNIX_EPOCH + Duration::from_secs(1_796_562_264)),
            "Sun Dec  6 13:04:24 2026"
        );
        assert_eq!(
            ctime(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue Feb 29 00:00:00 2000"
        );
    }

    #[test]
    fn flags_follow_status() {
        let mut d = dest(1, "sip:a", 0, 0);
        d.status = Status {
            state: State::Disabled,
            probing: true,
        };
        let list = build_list(vec![d], ListMode::Normal);
        assert_eq!(list.records[0].set.targets[0].dest.flags, "DP");
    }
}
