//! The admin interface: an HTTP listener with `/metrics`, health checks and
//! a JSON-RPC 2.0 endpoint that speaks Kamailio's `dispatcher.*` RPCs, the
//! BINRPC control sockets Kamailio's `kamcmd` talks to, plus the client
//! side of `sipedge ctl`.
//!
//! An operator migrating from Kamailio keeps their habits and scripts:
//! `dispatcher.list` returns Kamailio's `NRSETS`/`RECORDS`/`SET`/`TARGETS`/
//! `DEST` structure, `dispatcher.set_state ip 1 sip:...` drains or restores
//! a node, `dispatcher.reload` and `dispatcher.ping_active` do what they
//! did there, with the same result strings and fault messages.
//!
//! The module depends on the running proxy only through [`Backend`], a
//! small synchronous trait: the proxy implements it, tests implement it
//! with an in-memory pool. The backend returns plain values and typed
//! errors; all JSON and HTTP shaping happens here.
//!
//! # Layout
//! - [`serve`] / [`serve_with`] (`http.rs`): the hyper 1.x listener, its
//!   routes and its limits ([`Limits`]).
//! - [`rpc`]: JSON-RPC parsing, the four methods, Kamailio's result shapes
//!   and fault codes. The result types are shared with the client.
//! - [`ctl`]: the `sipedge ctl` client: one JSON-RPC exchange per call,
//!   typed results, and a table renderer for `dispatcher.list`.
//! - [`binrpc`]: Kamailio's BINRPC wire format, sans I/O; `binrpc_socket.rs`
//!   binds the `[admin] ctl` sockets ([`bind_ctl`]) and serves them
//!   ([`serve_ctl`]) through [`rpc::dispatch`], so `kamcmd` reaches the
//!   same methods as `POST /RPC`.
//!
//! # Routes
//! | route                      | answer                                              |
//! |----------------------------|-----------------------------------------------------|
//! | `GET /metrics`             | 200, [`Backend::metrics_text`], Prometheus text     |
//! | `GET /health/live`         | 200 `ok` while the process serves                   |
//! | `GET /health/ready`        | 200 or 503 from [`Backend::ready`], reason as body  |
//! | `POST /RPC` (or `/rpc`)    | JSON-RPC 2.0, one request per POST (see [`rpc`])    |
//! | any other path             | 404; a known path with another method: 405 + Allow  |
//!
//! `HEAD` is accepted wherever `GET` is.

use std::fmt;

use crate::dispatcher::health::{SetState, Status};
pub use crate::dispatcher::list::AttrsView;

pub mod binrpc;
mod binrpc_socket;
pub mod ctl;
mod http;
pub mod rpc;

pub use binrpc_socket::{
    bind_ctl, serve_ctl, CtlError, CtlListener, MAX_CONNECTIONS as CTL_MAX_CONNECTIONS,
};

pub use http::{serve, serve_with, serve_with_access, Access, Limits};

/// When this process started serving, for `core.uptime`: the first call
/// fixes it ([`crate::server::Server::new`] makes it early).
pub fn started() -> std::time::SystemTime {
    static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::SystemTime::now)
}

/// What the admin interface needs from the running proxy.
///
/// Every method is synchronous and expected to be quick (a lock or an
/// atomic read), except [`Backend::reload`], which may read files: the RPC
/// layer calls all of them from a blocking-capable thread
/// (`spawn_blocking`), never on the async workers, so a slow reload stalls
/// no SIP traffic.
pub trait Backend: Send + Sync + 'static {
    /// The Prometheus text exposition served at `/metrics`.
    fn metrics_text(&self) -> String;

    /// Whether `/health/ready` answers 200: the first probe round is done
    /// and at least one destination takes calls, or probing is paused (a
    /// keepalived standby). The reason is the body.
    fn ready(&self) -> Readiness;

    /// Every destination, in Kamailio's order within each set (highest
    /// priority first, see `DispatcherList::set_in_kamailio_order`). Sets
    /// may come in any order; the RPC layer sorts them by id.
    fn destinations(&self) -> Vec<DestinationView>;

    /// `dispatcher.set_state`: writes `state` to the destinations `target`
    /// names in set `set` and returns how many it wrote to (whether or not
    /// their state changed).
    ///
    /// [`Target::Uri`] names the first destination of the set, in the
    /// order of [`Backend::destinations`], whose URI equals the given one
    /// ignoring ASCII case: Kamailio's `ds_reinit_state` compares with
    /// `strncasecmp` over equal lengths and stops at the first match.
    /// [`SetState::probing`] `None` leaves the probing flag alone.
    ///
    /// # Errors
    /// [`BackendError::UnknownSet`] when no destination has set id `set`;
    /// [`BackendError::UnknownDestination`] when no destination of the set
    /// matches the URI.
    fn set_state(&self, set: u32, target: &Target, state: SetState) -> Result<usize, BackendError>;

    /// `dispatcher.reload`: re-reads the destination list. States of
    /// destinations that stay should carry over (the proxy's business).
    ///
    /// # Errors
    /// [`BackendError::ReloadInProgress`] if another reload runs;
    /// [`BackendError::Reload`] with the reason when the new list is
    /// refused (the old one stays in force).
    fn reload(&self) -> Result<(), BackendError>;

    /// `dispatcher.ping_active`: the global switch for OPTIONS probing
    /// (Kamailio's default is on). `Some(on)` sets it, `None` only reads.
    /// Returns the value it had *before* the call, which is what Kamailio
    /// reports as `OldPingState`.
    fn ping_active(&self, set: Option<bool>) -> bool;

    /// `dispatcher.add`: puts `entry` (its set, URI, flags, priority and
    /// attributes) in the pool, in memory only: the next reload re-reads
    /// the file. Sipedge cannot do it without a proxy behind, hence the
    /// default.
    ///
    /// # Errors
    /// [`BackendError::ReloadInProgress`] while a reload runs;
    /// [`BackendError::Refused`] with the reason (a destination sipedge
    /// cannot use, one the set already has).
    fn add_destination(&self, entry: &crate::dispatcher::list::Entry) -> Result<(), BackendError> {
        let _ = entry;
        Err(BackendError::Refused("no pool to add to".into()))
    }

    /// `dispatcher.remove`: takes every destination of set `set` with URI
    /// `uri` out of the pool, in memory only; returns how many.
    ///
    /// # Errors
    /// [`BackendError::ReloadInProgress`] while a reload runs;
    /// [`BackendError::Refused`] when nothing matches, or it would empty
    /// the set that takes calls.
    fn remove_destination(&self, set: u32, uri: &str) -> Result<usize, BackendError> {
        let _ = (set, uri);
        Err(BackendError::Refused("no pool to remove from".into()))
    }

    /// Counts something the listener refused or cut short (a request
    /// without the token, a connection closed at the cap). The proxy puts
    /// it in `sipedge_admin_events_total`; by default it is not counted.
    fn count(&self, _event: crate::metrics::AdminEvent) {}
}

/// Shows a string from the network or an operator's command for a log
/// line: control characters (a newline would start a forged line, an
/// escape sequence would repaint the terminal) and backslashes come out
/// escaped, `\n`, `\u{1b}`, `\\`; everything else as is.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// The answer of [`Backend::ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// One short line for a human reading the probe's output, e.g.
    /// `2 of 2 destinations active` or `waiting for the first probe round`.
    pub reason: String,
}

impl Readiness {
    pub fn ready(reason: impl Into<String>) -> Readiness {
        Readiness {
            ready: true,
            reason: reason.into(),
        }
    }

    pub fn not_ready(reason: impl Into<String>) -> Readiness {
        Readiness {
            ready: false,
            reason: reason.into(),
        }
    }
}

/// One destination as `dispatcher.list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationView {
    pub set: u32,
    /// The URI as configured (Kamailio shows it as loaded, `sip:` added
    /// when the list file had no scheme).
    pub uri: String,
    /// State and probing flag: the `FLAGS` column (`AP`, `IX`, ...).
    pub status: Status,
    pub priority: i32,
    /// `None` when the list line had no attributes: Kamailio then leaves
    /// `ATTRS` out of its output.
    pub attrs: Option<AttrsView>,
    /// Its probe round-trip statistics, when they are kept.
    pub latency: Option<crate::dispatcher::latency::LatencyStats>,
    /// Its active calls, shown under `call-load` (Kamailio's `DLGLOAD`).
    pub dlgload: Option<usize>,
}

impl DestinationView {
    /// A destination without list attributes (a TOML one, or a test's).
    pub fn new(set: u32, uri: impl Into<String>, status: Status, priority: i32) -> DestinationView {
        DestinationView {
            set,
            uri: uri.into(),
            status,
            priority,
            attrs: None,
            latency: None,
            dlgload: None,
        }
    }
}

/// The third argument of `dispatcher.set_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One destination, by URI.
    Uri(String),
    /// `all`: every destination of the set.
    All,
    /// `dispatcher.set_duid_state`: the first destination of the set whose
    /// `duid` attribute is this, ignoring ASCII case (Kamailio's
    /// `ds_reinit_duid_state`).
    Duid(String),
}

impl Target {
    /// Kamailio's reading: exactly `all` (lower case, `strncmp`) means
    /// every destination; anything else is a URI.
    pub fn parse(s: &str) -> Target {
        if s == "all" {
            Target::All
        } else {
            Target::Uri(s.to_owned())
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Uri(uri) => f.write_str(uri),
            Target::All => f.write_str("all"),
            Target::Duid(duid) => write!(f, "duid={duid}"),
        }
    }
}

/// Why the backend refused an admin command. The RPC layer turns each into
/// Kamailio's fault (code 500 and its message) with this text as `data`.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("destination set {0} not found")]
    UnknownSet(u32),
    #[error("destination {uri} not found in set {set}")]
    UnknownDestination { set: u32, uri: String },
    #[error("destination duid {duid} not found in set {set}")]
    UnknownDuid { set: u32, duid: String },
    #[error("a reload is already in progress")]
    ReloadInProgress,
    /// `dispatcher.add` or `dispatcher.remove` changed nothing; why.
    #[error("{0}")]
    Refused(String),
    /// The new list was refused; the source says why (e.g. the list
    /// file's line and reason).
    #[error("reload failed: {0}")]
    Reload(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_all_is_exactly_lower_case_all() {
        assert_eq!(Target::parse("all"), Target::All);
        assert_eq!(Target::parse("ALL"), Target::Uri("ALL".into()));
        assert_eq!(
            Target::parse("sip:10.0.0.1"),
            Target::Uri("sip:10.0.0.1".into())
        );
        assert_eq!(Target::All.to_string(), "all");
    }

    #[test]
    fn attrs_view_carries_every_rpc_field() {
        let view = AttrsView {
            body: "duid=a;weight=5".into(),
            duid: "a".into(),
            maxload: 3,
            weight: 5,
            rweight: 7,
            socket: "udp:10.0.0.5:5060".into(),
            sockname: "lan".into(),
            obproxy: "sip:10.0.0.254".into(),
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "BODY": "duid=a;weight=5",
                "DUID": "a",
                "MAXLOAD": 3,
                "WEIGHT": 5,
                "RWEIGHT": 7,
                "SOCKET": "udp:10.0.0.5:5060",
                "SOCKNAME": "lan",
                "OBPROXY": "sip:10.0.0.254",
            })
        );
        assert_eq!(serde_json::from_value::<AttrsView>(json).unwrap(), view);
    }

    #[test]
    fn backend_errors_read_well() {
        assert_eq!(
            BackendError::UnknownDestination {
                set: 2,
                uri: "sip:a".into()
            }
            .to_string(),
            "destination sip:a not found in set 2"
        );
        let e = BackendError::Reload("dispatcher.list:3: bad".into());
        assert_eq!(e.to_string(), "reload failed: dispatcher.list:3: bad");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn escaped_shows_control_characters_as_escapes() {
        assert_eq!(
            Escaped("sip:a\nFORGED line\r\u{1b}[2J\\ é").to_string(),
            "sip:a\\nFORGED line\\r\\u{1b}[2J\\\\ é"
        );
        assert_eq!(Escaped("plain").to_string(), "plain");
    }

    #[test]
    fn readiness_constructors() {
        assert!(Readiness::ready("x").ready);
        assert!(!Readiness::not_ready("y").ready);
        assert_eq!(Readiness::not_ready("y").reason, "y");
    }
}
