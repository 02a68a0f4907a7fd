//! The TOML configuration: serde structs, their validation, and errors that
//! name the file, the key and the reason.
//!
//! Loading is two steps. [`from_toml`] deserializes (types, unknown keys,
//! duration and address syntax) and then runs [`Config::validate`] for the
//! rules that look at more than one value (advertise vs destinations,
//! ranges, duplicates). Either step's error becomes a [`ConfigError`] whose
//! key is a dotted path such as `dispatcher.destination[1].uri`: serde only
//! reports a byte span, so [`KeyIndex`] maps spans back to keys.
//!
//! The value types the sections are made of (hosts, URIs, durations,
//! networks) live in [`crate::value`]; the `[dispatcher]` and `[security]`
//! sections live with the code they configure, which must not import this
//! module back; all are re-exported here under their config names.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::value::de_duration;

/// `proxy.toml.example`, built in so that `sipedge` without `--config`
/// starts on a fresh machine.
pub const EXAMPLE_TOML: &str = include_str!("../proxy.toml.example");

/// The name errors and summaries use for [`EXAMPLE_TOML`].
pub const EXAMPLE_NAME: &str = "proxy.toml.example (built in)";

// What the sections are made of, owned by the modules that use it, under
// the names the config has always given it.
pub use crate::dispatcher::health::{ProbingMode, ReplyCode};
pub use crate::dispatcher::{Algorithm, Destination, DispatcherConfig as Dispatcher};
pub use crate::security::{RateLimit, SecurityConfig as Security};
pub use crate::value::{
    parse_duration, AddressError, DisplayDuration, DurationError, Host, HostPort, SipUri,
    DEFAULT_SIP_PORT,
};

// ---------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    #[serde(default)]
    pub dispatcher: Dispatcher,
    #[serde(default)]
    pub failover: Failover,
    #[serde(default)]
    pub dialogs: Dialogs,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub probe: Probe,
    /// Absent: no admin listener (no metrics, no RPC).
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub tcp: Tcp,
    /// Absent: no TLS (needed by `[listen] tls`).
    #[serde(default)]
    pub tls: Option<Tls>,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub security: Security,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub metrics: MetricsOptions,
    /// Absent: no packet capture.
    #[serde(default)]
    pub capture: Option<Capture>,
}

/// `[metrics]`: what `/metrics` shows besides sipedge's own families.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsOptions {
    /// Also show each destination as kamailio_exporter does
    /// (`kamailio_dispatcher_list_target{setid,uri,flags}`), for the
    /// dashboards and alerts of a Kamailio dispatcher.
    #[serde(default)]
    pub kamailio_names: bool,
}

/// `[capture]`: a copy of every SIP message received or sent, as HEP v3,
/// to a Homer collector (or sngrep, or anything that listens for HEP;
/// Kamailio's `siptrace` with `hep_mode_on`). See [`crate::capture`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// `udp:HOST:PORT` or `tcp:HOST:PORT` (Kamailio `duplicate_uri`).
    pub hep: crate::capture::Collector,
    /// The node id the collector files our packets under (Kamailio
    /// `hep_capture_id`, default 1).
    #[serde(default = "default_capture_id")]
    pub capture_id: u32,
    /// The password the collector checks (HEP chunk 14; Kamailio
    /// `auth_key`). None by default.
    #[serde(default)]
    pub auth_key: Option<Secret>,
    /// `all` (default), `calls` or `failures`: see
    /// [`crate::capture::What`].
    #[serde(default)]
    pub what: crate::capture::What,
}

impl Capture {
    /// What the capture task needs.
    pub fn settings(&self) -> crate::capture::Settings {
        crate::capture::Settings {
            collector: self.hep.clone(),
            capture_id: self.capture_id,
            auth_key: self.auth_key.as_ref().map(|k| k.as_bytes().to_vec()),
            what: self.what,
        }
    }
}

fn default_capture_id() -> u32 {
    1
}

/// `[limits]`: caps that keep memory bounded under a flood.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client transactions at most (forwarded requests awaiting or
    /// lingering on their answer, 32 s each). At the cap new calls get
    /// `503` with `Retry-After`; requests of established calls still go
    /// through (Kamailio: `tm` `max_transactions`).
    #[serde(default = "default_max_transactions")]
    pub transactions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            transactions: default_max_transactions(),
        }
    }
}

fn default_max_transactions() -> usize {
    500_000
}

/// `[dns]`: resolving host names in the Request-URIs and Routes of
/// requests the nodes send out (RFC 3263 as Kamailio does it by default:
/// SRV, then A/AAAA; no NAPTR).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers, "address:port"; empty (the default) reads the
    /// system's `/etc/resolv.conf`.
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
}

/// `[tcp]`: SIP over TCP connections (listeners in `[listen] tcp`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    /// A connection without traffic this long is closed (Kamailio
    /// `tcp_connection_lifetime`).
    #[serde(default = "default_tcp_idle", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// An outgoing connect that takes longer is a transport failure: a new
    /// INVITE fails over (Kamailio `tcp_connect_timeout`).
    #[serde(default = "default_tcp_connect", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Open connections at most; inbound ones beyond are refused, logged
    /// and counted (Kamailio `tcp_max_connections`).
    #[serde(default = "default_tcp_max_connections")]
    pub max_connections: usize,
    /// Inbound connections from one source (an IPv4 address, an IPv6 /64)
    /// at most; trusted
    /// sources and pool members are exempt (a slowloris from one address
    /// cannot take every slot).
    #[serde(default = "default_tcp_per_source")]
    pub max_connections_per_source: usize,
    /// Of `max_connections`, the slots kept for `[security] trusted`
    /// sources and pool members. Default: an eighth of `max_connections`.
    #[serde(default)]
    pub reserved_trusted: Option<usize>,
    /// A message must arrive whole within this of its first byte, or its
    /// connection is closed (unlike `idle_timeout`, a byte now and then
    /// does not reset it).
    #[serde(
        default = "default_tcp_message_timeout",
        deserialize_with = "de_duration"
    )]
    pub message_timeout: Duration,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            idle_timeout: default_tcp_idle(),
            connect_timeout: default_tcp_connect(),
            max_connections: default_tcp_max_connections(),
            max_connections_per_source: default_tcp_per_source(),
            reserved_trusted: None,
            message_timeout: default_tcp_message_timeout(),
        }
    }
}

/// `[tls]`: our identity on the TLS listeners (Kamailio `tls.cfg`
/// `[server:default]` `certificate` / `private_key`, `ca_list` with
/// `require_certificate`, `crl`). The connections themselves follow
/// `[tcp]`: caps, idle and message timeouts. The files are read again on
/// a reload (SIGHUP, `dispatcher.reload`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first (relative paths: to the config
    /// file's directory).
    pub certificate: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM bundle of the CAs inbound clients' certificates must chain to:
    /// when set, a client without such a certificate is refused (mutual
    /// TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// PEM CRLs of `client_ca`'s CAs: a client certificate they revoke,
    /// or whose issuer has none here or one past its `nextUpdate`, is
    /// refused. Needs `client_ca`.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// A TLS handshake not done this long after the connection opened
    /// closes it (a client that opens and says nothing holds a slot only
    /// this long).
    #[serde(default = "default_tls_handshake", deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    /// PEM bundle of the CAs that sign the servers we connect to (nodes,
    /// trunks; Kamailio `ca_list`); absent: the system's CA store.
    #[serde(default)]
    pub ca_list: Option<PathBuf>,
    /// Accept `*.example.com` certificates for outbound identity (RFC
    /// 5922 §7.2 forbids it; off by default).
    #[serde(default)]
    pub wildcards: bool,
    /// PEM chain we present when a server we connect to asks for one
    /// (mutual TLS); default: `certificate`.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// Its key; default: `key`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Handshakes in progress from one source (an IPv4 address, an IPv6
    /// /64) at most; a connection beyond is closed at once, so a slow or
    /// hostile client cannot pin memory with half-done handshakes.
    #[serde(default = "default_tls_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
    /// The server identity built from the files at start.
    #[serde(skip)]
    pub server: Option<TlsServer>,
    /// The client configs (outbound TLS) built from the files at start.
    #[serde(skip)]
    pub client: Option<TlsClientConfigs>,
}

/// The rustls client configs made from `[tls]`'s files (compared by
/// identity, like [`TlsServer`]).
#[derive(Clone, Debug)]
pub struct TlsClientConfigs(pub crate::transport::tls_client::ClientConfigs);

impl PartialEq for TlsClientConfigs {
    fn eq(&self, _: &Self) -> bool {
        // Two loads are never the same.
        false
    }
}

impl Eq for TlsClientConfigs {}

fn default_tls_handshake() -> Duration {
    Duration::from_secs(5)
}
fn default_tls_handshakes_per_source() -> usize {
    8
}

/// The server identity made from `[tls]`'s files (compared by identity:
/// two loads are never the same).
#[derive(Clone)]
pub struct TlsServer(pub std::sync::Arc<crate::transport::tls::ServerIdentity>);

impl PartialEq for TlsServer {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TlsServer {}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the config's own Debug: it would walk the key material.
        f.write_str("TlsServer")
    }
}

impl Tls {
    /// Reads the files (relative to `base`) and checks that rustls takes
    /// them: the chain and its key belong together, the client CAs and
    /// CRLs are usable.
    fn resolve(&mut self, base: &Path) -> Result<(), Violation> {
        use crate::transport::tls::{PemFile, ServerFiles};
        let file_err = |key: &str, path: &Path, reason: String| Violation {
            key: key.to_owned(),
            rule: Rule::TlsFile {
                file: path.display().to_string(),
                reason,
            },
        };
        let read = |key: &str, path: &Path| {
            let path = base.join(path);
            read_small_file(&path).map_err(|e| file_err(key, &path, e.to_string()))
        };
        if self.crl.is_some() && self.client_ca.is_none() {
            return Err(Violation {
                key: "tls.crl".to_owned(),
                rule: Rule::CrlWithoutClientCa,
            });
        }
        let chain = read("tls.certificate", &self.certificate)?;
        let key = read("tls.key", &self.key)?;
        let client_ca = match &self.client_ca {
            Some(p) => Some(read("tls.client_ca", p)?),
            None => None,
        };
        let crl = match &self.crl {
            Some(p) => Some(read("tls.crl", p)?),
            None => None,
        };
        let chain_path = base.join(&self.certificate).display().to_string();
        let ca_path = self
            .client_ca
            .as_ref()
            .map(|p| base.join(p).display().to_string());
        let crl_path = self
            .crl
            .as_ref()
            .map(|p| base.join(p).display().to_string());
        let files = ServerFiles {
            chain: (&chain_path, chain.as_bytes()),
            key: key.as_bytes(),
            client_ca: ca_path
                .as_deref()
                .zip(client_ca.as_deref().map(str::as_bytes)),
            crl: crl_path.as_deref().zip(crl.as_deref().map(str::as_bytes)),
        };
        let server = crate::transport::tls::server_identity(&files).map_err(|e| {
            // A file is only named in an error once it was read.
            let (key, path) = match e.file {
                PemFile::Certificate => ("tls.certificate", Some(&self.certificate)),
                PemFile::Key => ("tls.key", Some(&self.key)),
                PemFile::ClientCa => ("tls.client_ca", self.client_ca.as_ref()),
                PemFile::Crl => ("tls.crl", self.crl.as_ref()),
            };
            let path = path.map(|p| base.join(p)).unwrap_or_default();
            file_err(key, &path, e.reason)
        })?;
        self.server = Some(TlsServer(std::sync::Arc::new(server)));
        self.client = Some(TlsClientConfigs(self.client_configs(base)?));
        Ok(())
    }

    /// The outbound side: `ca_list` and the client certificate and key
    /// (by default our server identity), read relative to `base`.
    pub fn client_configs(
        &self,
        base: &Path,
    ) -> Result<crate::transport::tls_client::ClientConfigs, Violation> {
        use crate::transport::tls_client::{client_configs, ClientFile, ClientSettings};
        let (cert_key, cert_path) = match &self.client_certificate {
            Some(p) => ("tls.client_certificate", p),
            None => ("tls.certificate", &self.certificate),
        };
        let (key_key, key_path) = match &self.client_key {
            Some(p) => ("tls.client_key", p),
            None => ("tls.key", &self.key),
        };
        let file_error = |key: &str, path: &Path, reason: String| Violation {
            key: key.to_owned(),
            rule: Rule::TlsFile {
                file: base.join(path).display().to_string(),
                reason,
            },
        };
        let read = |key: &str, path: &Path| {
            read_small_file(&base.join(path)).map_err(|e| file_error(key, path, e.to_string()))
        };
        let ca = match &self.ca_list {
            Some(p) => Some(read("tls.ca_list", p)?),
            None => None,
        };
        let chain = read(cert_key, cert_path)?;
        let key = read(key_key, key_path)?;
        let identity_file = self
            .client_certificate
            .as_ref()
            .map(|p| base.join(p).display().to_string());
        client_configs(&ClientSettings {
            ca_list_pem: ca.as_ref().map(String::as_bytes),
            identity: Some((chain.as_bytes(), key.as_bytes())),
            identity_file: identity_file.as_deref(),
            wildcards: self.wildcards,
            handshake_timeout: self.handshake_timeout,
        })
        .map_err(|e| {
            let (key, path) = match e.file {
                ClientFile::CaList => (
                    "tls.ca_list",
                    self.ca_list.as_deref().unwrap_or(Path::new("")),
                ),
                ClientFile::Certificate => (cert_key, cert_path.as_path()),
                ClientFile::Key => (key_key, key_path.as_path()),
            };
            file_error(key, path, e.reason)
        })
    }
}

impl Tcp {
    /// `reserved_trusted`, or its default.
    pub fn reserved(&self) -> usize {
        self.reserved_trusted.unwrap_or(self.max_connections / 8)
    }
}

fn default_tcp_idle() -> Duration {
    Duration::from_secs(300)
}
fn default_tcp_connect() -> Duration {
    Duration::from_secs(2)
}
fn default_tcp_max_connections() -> usize {
    4096
}
fn default_tcp_per_source() -> usize {
    32
}
fn default_tcp_message_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[probe]`: OPTIONS health probing of every destination (Kamailio
/// `ds_ping_*`, `ds_probing_threshold`, `ds_inactive_threshold`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Request method of the probe (Kamailio `ds_ping_method`).
    #[serde(default = "default_probe_method")]
    pub method: String,
    /// Time between two probes of a node (`ds_ping_interval`).
    #[serde(default = "default_probe_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    /// How long one probe waits for its answer, independent of the call
    /// timers (Kamailio only got a separate one in 6.1).
    #[serde(default = "default_probe_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Consecutive failures that take a node out (`ds_probing_threshold`).
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Consecutive successes that bring it back (`ds_inactive_threshold`).
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
    /// Replies that count as alive: codes and classes, e.g. `["2xx", 403]`
    /// (`ds_ping_reply_codes`).
    #[serde(default = "default_reply_codes")]
    pub reply_codes: Vec<ReplyCode>,
    /// From URI of the probes (`ds_ping_from`); default
    /// `sip:sipedge@<advertise>`. A destination's `ping_from` attribute
    /// overrides it.
    #[serde(default)]
    pub ping_from: Option<String>,
    /// Which destinations are probed: Kamailio's `ds_probing_mode`, same
    /// numbers. Default 1 (every destination), unlike Kamailio's 0: the
    /// deployment sipedge replaces sets `probing_mode 1` with a
    /// dispatcher.list whose flags are all 0, and TOML destinations start
    /// flagged, so they are probed under either.
    #[serde(default = "default_probing_mode")]
    pub mode: ProbingMode,
    /// Keep per-destination round-trip statistics from the probes
    /// (Kamailio `ds_ping_latency_stats`; on by default here: it is a few
    /// floating-point operations per probe). Shown in `dispatcher.list`
    /// and the metrics; algorithms 11 (with `cc=1`) and 13 read them.
    #[serde(default = "default_latency_stats")]
    pub latency_stats: bool,
    /// The latency estimator's weight of its previous value, in
    /// thousandths, 1 to 999 (Kamailio `ds_latency_estimator_alpha`, same
    /// scale and 5.6's default 900).
    #[serde(default = "default_latency_estimator_alpha")]
    pub latency_estimator_alpha: u32,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            method: default_probe_method(),
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
            reply_codes: default_reply_codes(),
            ping_from: None,
            mode: default_probing_mode(),
            latency_stats: true,
            latency_estimator_alpha: default_latency_estimator_alpha(),
        }
    }
}

impl Probe {
    /// The From URI probes carry: the configured one, else one naming us.
    pub fn ping_from_or(&self, advertise: &HostPort) -> String {
        match &self.ping_from {
            Some(from) => from.clone(),
            None => format!("sip:sipedge@{}", advertise.host),
        }
    }
}

/// `[admin]`: the HTTP listener for `/metrics`, `/health/*` and the
/// Kamailio-style JSON-RPC at `/RPC`, and the BINRPC sockets for kamcmd
/// (`ctl`); at least one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// TCP address to listen on; keep it on loopback or a management
    /// network: the RPC can drain nodes. Absent: no HTTP listener (kamcmd
    /// over `ctl` only).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token `POST /RPC` must carry
    /// (`Authorization: Bearer TOKEN`): its whole content, trimmed, at
    /// least [`MIN_SECRET_LEN`] bytes; relative to the config file.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `/metrics` wants the token too. Off by default, so existing
    /// Prometheus scrape jobs keep working.
    #[serde(default)]
    pub metrics_require_token: bool,
    /// Serve the RPC without a token on an address other than loopback.
    /// Refused unless set: anyone who reaches the port could drain nodes.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Kamailio `ctl` module sockets speaking BINRPC, for `kamcmd -s`:
    /// `unix:/run/sipedge/ctl.sock`, `tcp:127.0.0.1:2049`,
    /// `udp:127.0.0.1:2049`; one string or a list. None by default.
    #[serde(default, deserialize_with = "one_or_many_ctl")]
    pub ctl: Vec<CtlSocket>,
    /// Permissions of the unix sockets, octal (`"0660"`); Kamailio's
    /// `mode` modparam.
    #[serde(default)]
    pub ctl_mode: FileMode,
    /// Owner and group of the unix sockets: a name or a number (Kamailio's
    /// `user`, `group`). Unset: whoever runs sipedge.
    #[serde(default)]
    pub ctl_user: Option<String>,
    #[serde(default)]
    pub ctl_group: Option<String>,
    /// The token read from `token_file` when the file was loaded.
    #[serde(skip)]
    token: Option<Secret>,
    /// `ctl_user` and `ctl_group` as ids, looked up when the file was
    /// loaded.
    #[serde(skip)]
    ctl_owner: (Option<u32>, Option<u32>),
}

impl Admin {
    /// An admin listener on `listen` without a token (tests, loopback).
    pub fn new(listen: SocketAddr) -> Admin {
        Admin {
            listen: Some(listen),
            token_file: None,
            metrics_require_token: false,
            allow_unauthenticated: false,
            ctl: Vec::new(),
            ctl_mode: FileMode::default(),
            ctl_user: None,
            ctl_group: None,
            token: None,
            ctl_owner: (None, None),
        }
    }

    /// The uid and gid the unix ctl sockets are given (`None`: unchanged).
    pub fn ctl_owner(&self) -> (Option<u32>, Option<u32>) {
        self.ctl_owner
    }

    /// The token `POST /RPC` must carry; `None`: no authentication.
    pub fn token(&self) -> Option<&[u8]> {
        self.token.as_ref().map(Secret::as_bytes)
    }

    /// Whether anyone beyond this host may reach an RPC without a token.
    pub fn unauthenticated_beyond_loopback(&self) -> bool {
        self.token_file.is_none() && self.listen.is_some_and(|l| !l.ip().is_loopback())
    }

    /// Reads the token file (relative to `base`) and checks it.
    fn resolve(&mut self, base: &Path) -> Result<(), Violation> {
        self.token = one_secret(
            ("admin.token", None),
            ("admin.token_file", self.token_file.as_deref()),
            base,
        )?;
        let lookup =
            |key: &str, name: &Option<String>, user: bool| -> Result<Option<u32>, Violation> {
                let Some(name) = name else { return Ok(None) };
                if let Ok(id) = name.parse::<u32>() {
                    return Ok(Some(id));
                }
                let found = if user {
                    nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw()))
                } else {
                    nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw()))
                };
                match found {
                    Ok(Some(id)) => Ok(Some(id)),
                    Ok(None) | Err(_) => Err(Violation {
                        key: key.to_owned(),
                        rule: Rule::UnknownOwner {
                            kind: if user { "user" } else { "group" },
                            name: name.clone(),
                        },
                    }),
                }
            };
        self.ctl_owner = (
            lookup("admin.ctl_user", &self.ctl_user, true)?,
            lookup("admin.ctl_group", &self.ctl_group, false)?,
        );
        Ok(())
    }
}

/// Kamailio's default ctl TCP/UDP port.
pub const CTL_PORT: u16 = 2049;

/// One `[admin] ctl` socket, in the `ctl` module's syntax.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum CtlSocket {
    /// `unix:PATH` (or `unixs:PATH`, or a bare absolute path): a stream
    /// socket, what `kamcmd` uses by default.
    Unix(PathBuf),
    /// `tcp:ADDR[:PORT]`, port 2049 when not given.
    Tcp(SocketAddr),
    /// `udp:ADDR[:PORT]`: one request per datagram.
    Udp(SocketAddr),
}

/// Longest unix socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;

impl TryFrom<String> for CtlSocket {
    type Error = String;

    fn try_from(text: String) -> Result<CtlSocket, String> {
        let (proto, rest) = match text.split_once(':') {
            Some((p, r)) if !text.starts_with('/') => (p.to_ascii_lowercase(), r),
            _ => ("unix".to_owned(), text.as_str()),
        };
        let addr = |rest: &str| -> Result<SocketAddr, String> {
            rest.parse::<SocketAddr>()
                .or_else(|_| {
                    rest.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, CTL_PORT))
                })
                .map_err(|_| {
                    format!(
                        "{text:?}: expected an IP address and an optional port, e.g. \
                         \"tcp:127.0.0.1:{CTL_PORT}\" (host names are not resolved)"
                    )
                })
        };
        match proto.as_str() {
            "unix" | "unixs" => {
                let path = PathBuf::from(rest);
                if !path.is_absolute() {
                    return Err(format!(
                        "{text:?}: a unix socket needs an absolute path, e.g. \
                         \"unix:/run/sipedge/ctl.sock\""
                    ));
                }
                if rest.len() > MAX_UNIX_PATH {
                    return Err(format!(
                        "{text:?}: a unix socket path has at most {MAX_UNIX_PATH} bytes"
                    ));
                }
                Ok(CtlSocket::Unix(path))
            }
            "tcp" => addr(rest).map(CtlSocket::Tcp),
            "udp" => addr(rest).map(CtlSocket::Udp),
            "unixd" => Err(format!(
                "{text:?}: unix datagram sockets are not supported; use unix: (stream), \
                 which kamcmd uses by default"
            )),
            _ => Err(format!(
                "{text:?}: expected unix:PATH, tcp:ADDR[:PORT] or udp:ADDR[:PORT]"
            )),
        }
    }
}

impl fmt::Display for CtlSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlSocket::Unix(path) => write!(f, "unix:{}", path.display()),
            CtlSocket::Tcp(addr) => write!(f, "tcp:{addr}"),
            CtlSocket::Udp(addr) => write!(f, "udp:{addr}"),
        }
    }
}

/// `ctl = "unix:..."` or `ctl = ["unix:...", "tcp:..."]`.
fn one_or_many_ctl<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<CtlSocket>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<CtlSocket>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a socket string or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vec<CtlSocket>, E> {
            CtlSocket::try_from(s.to_owned())
                .map(|c| vec![c])
                .map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<CtlSocket>, A::Error> {
            let mut out: Vec<CtlSocket> = Vec::new();
            while let Some(socket) = seq.next_element::<CtlSocket>()? {
                if out.contains(&socket) {
                    return Err(serde::de::Error::custom(format!(
                        "{socket} is listed twice"
                    )));
                }
                out.push(socket);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Visitor)
}

/// Unix file permissions written in octal, as in `chmod`: `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct FileMode(pub u32);

impl Default for FileMode {
    /// Kamailio's: read and write for the owner only.
    fn default() -> FileMode {
        FileMode(0o600)
    }
}

impl TryFrom<String> for FileMode {
    type Error = String;

    fn try_from(text: String) -> Result<FileMode, String> {
        let digits = text.trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if !digits.is_empty() && digits.len() <= 4 && mode <= 0o777 => {
                Ok(FileMode(mode))
            }
            _ => Err(format!(
                "{text:?}: expected permissions in octal from \"0000\" to \"0777\", e.g. \"0660\""
            )),
        }
    }
}

/// `[runtime]`: how much of the machine sipedge uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads of the async runtime: timers (retransmissions,
    /// fr_timeout), probes, the admin listener. Each UDP socket has its own
    /// receive thread besides, which handles its datagrams start to end.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            workers: default_workers(),
        }
    }
}

/// `[listen]`: where sipedge receives SIP and what it writes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// UDP sockets to bind (Kamailio `listen=udp:...`).
    #[serde(default = "default_udp")]
    pub udp: Vec<SocketAddr>,
    /// Host (and optional port) written in Via and Record-Route (Kamailio
    /// `advertise`). No default: guessing it is how HA setups end up
    /// advertising 0.0.0.0.
    pub advertise: HostPort,
    /// SO_RCVBUF of each UDP socket, in bytes (Kamailio `-A MAXBUFFER`):
    /// a burst of INVITEs must not overflow the kernel queue. The kernel
    /// may cap it (`net.core.rmem_max`).
    #[serde(default = "default_socket_buffer")]
    pub recv_buffer: usize,
    /// SO_SNDBUF of each UDP socket, in bytes (`net.core.wmem_max`).
    #[serde(default = "default_socket_buffer")]
    pub send_buffer: usize,
    /// IP_FREEBIND / IPV6_FREEBIND: bind addresses this host does not hold
    /// yet, so a keepalived standby can listen on the VIP before it moves
    /// (Kamailio needs `net.ipv4.ip_nonlocal_bind` for this).
    #[serde(default)]
    pub freebind: bool,
    /// TCP listeners (Kamailio `listen=tcp:...`); none by default.
    #[serde(default)]
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners (Kamailio `listen=tls:...`); none by default. Need
    /// `[tls]`.
    #[serde(default)]
    pub tls: Vec<SocketAddr>,
    /// A request to a node larger than this many bytes goes over TCP when
    /// the node takes TCP (`tcp = true` on it; RFC 3261 §18.1.1, Kamailio
    /// `udp_mtu` with `udp_mtu_try_proto = TCP`). 0: never switch.
    #[serde(default = "default_udp_mtu")]
    pub udp_mtu: usize,
}

impl Listen {
    /// The port written next to the advertised host: the explicit one, else
    /// the first UDP socket's.
    pub fn advertised_port(&self) -> u16 {
        self.advertise
            .port
            .or_else(|| self.udp.first().map(SocketAddr::port))
            .unwrap_or(DEFAULT_SIP_PORT)
    }

    /// Is `host:port` sipedge itself: a listening address (a wildcard one
    /// on that port for a loopback host or the advertised one), or the
    /// advertised address on an advertised port?
    pub fn is_own(&self, host: &Host, port: u16) -> bool {
        let advertised = *host == self.advertise.host;
        if advertised && (port == self.advertised_port() || port == self.advertised_tcp_port()) {
            return true;
        }
        let Host::Ip(ip) = host else {
            return false;
        };
        let ip = ip.to_canonical();
        self.udp.iter().chain(&self.tcp).chain(&self.tls).any(|l| {
            l.port() == port
                && (l.ip().to_canonical() == ip
                    || (l.ip().is_unspecified() && (ip.is_loopback() || advertised)))
        })
    }

    /// The same for TCP: the explicit one, else the first TCP listener's.
    pub fn advertised_tcp_port(&self) -> u16 {
        self.advertise
            .port
            .or_else(|| self.tcp.first().map(SocketAddr::port))
            .unwrap_or(DEFAULT_SIP_PORT)
    }
}

fn default_udp_mtu() -> usize {
    1300
}

/// `[failover]`: when a new INVITE moves on to the next node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// No reply at all from a node (Kamailio `fr_timer`).
    #[serde(default = "default_fr_timeout", deserialize_with = "de_duration")]
    pub fr_timeout: Duration,
    /// Final reply overdue after a provisional one (Kamailio `fr_inv_timer`).
    #[serde(default = "default_fr_inv_timeout", deserialize_with = "de_duration")]
    pub fr_inv_timeout: Duration,
    /// Final codes that send the INVITE to the next node (Kamailio
    /// `t_check_status` in a failure_route).
    #[serde(default = "default_failover_codes")]
    pub codes: Vec<u16>,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            fr_timeout: default_fr_timeout(),
            fr_inv_timeout: default_fr_inv_timeout(),
            codes: default_failover_codes(),
        }
    }
}

/// `[dialogs]`: the Call-ID -> node table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialogs {
    #[serde(default = "default_dialog_ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
    /// Beyond this many entries new calls still work but are not pinned.
    #[serde(default = "default_dialog_max")]
    pub max: usize,
    /// The shared call registry, `redis://host:port/db`; off when absent.
    #[serde(default)]
    pub registry: Option<String>,
    /// Put before the Call-ID to make a registry key (the article's
    /// `call:`).
    #[serde(default = "default_registry_prefix")]
    pub registry_prefix: String,
    /// The longest a registry operation may take; then the call goes on
    /// as if it had no entry.
    #[serde(default = "default_registry_timeout", deserialize_with = "de_duration")]
    pub registry_timeout: Duration,
    /// Registry writes waiting to be sent, at most; more are dropped
    /// (counted).
    #[serde(default = "default_registry_queue")]
    pub registry_queue: usize,
}

impl Default for Dialogs {
    fn default() -> Self {
        Dialogs {
            ttl: default_dialog_ttl(),
            max: default_dialog_max(),
            registry: None,
            registry_prefix: default_registry_prefix(),
            registry_timeout: default_registry_timeout(),
            registry_queue: default_registry_queue(),
        }
    }
}

/// `[cluster]`: what the sipedge instances in front of one pool share.
/// The secret keys the opaque node hint in our Record-Route, so any
/// instance with the same secret routes a dialog another one set up, and
/// nobody else can read or name a node in it (`proxy::hint`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The secret (at least [`MIN_SECRET_LEN`] bytes), or:
    #[serde(default)]
    pub secret: Option<Secret>,
    /// a file holding it: its whole content, trimmed; relative to the
    /// config file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// An older secret still accepted, never used to sign: what a rotation
    /// needs (the same rules, the same two forms).
    #[serde(default)]
    pub previous_secret: Option<Secret>,
    #[serde(default)]
    pub previous_secret_file: Option<PathBuf>,
    /// The secrets in force, read when the file was loaded (see
    /// [`Cluster::secrets`]).
    #[serde(skip)]
    resolved: Option<(Secret, Option<Secret>)>,
}

/// A secret from the config: never shown by `Debug` (logs, panics).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Shorter than this is not a secret: 16 bytes (128 bits) match the
/// AES-128-SIV key derived from it (`proxy/hint.rs`) and leave a guess out
/// of reach.
pub const MIN_SECRET_LEN: usize = 16;

impl Cluster {
    /// The secret that seals route hints and the previous one still
    /// accepted; `None`: hints are not authenticated.
    pub fn secrets(&self) -> Option<(&[u8], Option<&[u8]>)> {
        let (current, previous) = self.resolved.as_ref()?;
        Some((current.as_bytes(), previous.as_ref().map(Secret::as_bytes)))
    }

    /// Reads the secrets (files relative to `base`) and checks them.
    fn resolve(&mut self, base: &Path) -> Result<(), Violation> {
        let current = one_secret(
            ("cluster.secret", self.secret.as_ref()),
            ("cluster.secret_file", self.secret_file.as_deref()),
            base,
        )?;
        let previous = one_secret(
            ("cluster.previous_secret", self.previous_secret.as_ref()),
            (
                "cluster.previous_secret_file",
                self.previous_secret_file.as_deref(),
            ),
            base,
        )?;
        self.resolved = match (current, previous) {
            (Some(c), p) => Some((c, p)),
            (None, None) => None,
            (None, Some(_)) => {
                let key = if self.previous_secret.is_some() {
                    "cluster.previous_secret"
                } else {
                    "cluster.previous_secret_file"
                };
                return Err(Violation {
                    key: key.to_owned(),
                    rule: Rule::PreviousWithoutSecret,
                });
            }
        };
        Ok(())
    }
}

/// A secret given inline or in a file (not both), checked.
fn one_secret(
    (inline_key, inline): (&str, Option<&Secret>),
    (file_key, file): (&str, Option<&Path>),
    base: &Path,
) -> Result<Option<Secret>, Violation> {
    let fail = |key: &str, rule| Violation {
        key: key.to_owned(),
        rule,
    };
    let (key, secret, from) = match (inline, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(fail(
                file_key,
                Rule::SecretTwice(inline_key.rsplit('.').next().unwrap_or_default().into()),
            ))
        }
        (Some(s), None) => (inline_key, s.0.trim().to_owned(), None),
        (None, Some(path)) => {
            let path = base.join(path);
            let shown = path.display().to_string();
            let text = read_small_file(&path).map_err(|e| {
                fail(
                    file_key,
                    Rule::SecretFile {
                        file: shown.clone(),
                        reason: e.to_string(),
                    },
                )
            })?;
            (file_key, text.trim().to_owned(), Some(shown))
        }
    };
    if secret.len() < MIN_SECRET_LEN {
        return Err(fail(
            key,
            Rule::ShortSecret {
                len: secret.len(),
                file: from,
            },
        ));
    }
    Ok(Some(Secret(secret)))
}

// Defaults follow Kamailio where an operator would expect it
// (proxy.toml.example gives each one).
fn default_udp() -> Vec<SocketAddr> {
    vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_SIP_PORT))]
}
fn default_fr_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_fr_inv_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_failover_codes() -> Vec<u16> {
    vec![500, 502, 503, 504]
}
fn default_dialog_ttl() -> Duration {
    Duration::from_secs(2 * 3600)
}
fn default_dialog_max() -> usize {
    1_000_000
}
fn default_registry_prefix() -> String {
    "call:".into()
}
fn default_registry_timeout() -> Duration {
    Duration::from_millis(300)
}
fn default_registry_queue() -> usize {
    10_000
}

fn default_latency_stats() -> bool {
    true
}

fn default_latency_estimator_alpha() -> u32 {
    u32::from(crate::dispatcher::latency::DEFAULT_ALPHA_PERMILLE)
}

fn default_probing_mode() -> ProbingMode {
    ProbingMode::All
}

fn default_probe_method() -> String {
    "OPTIONS".to_owned()
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_failure_threshold() -> u32 {
    3
}

fn default_success_threshold() -> u32 {
    1
}

fn default_reply_codes() -> Vec<ReplyCode> {
    vec![ReplyCode::Class(2)]
}

fn default_socket_buffer() -> usize {
    4 << 20
}

fn default_workers() -> usize {
    1
}

/// Socket buffer sizes accepted: below 64 KiB one large INVITE burst
/// overflows; above 1 GiB is a typo.
pub const SOCKET_BUFFER_RANGE: std::ops::RangeInclusive<usize> = (64 << 10)..=(1 << 30);

/// Worker threads accepted.
const WORKERS_RANGE: std::ops::RangeInclusive<usize> = 1..=256;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const HOUR: u64 = 3600;

/// The range each duration key accepts, inclusive: beyond it a value is a
/// typo (a timer of 584 million years overflows the clock; a dialog TTL of
/// 1 ms unpins every call). README "Limits" and proxy.toml.example show the
/// same ranges.
pub const DURATION_RANGES: &[(&str, Duration, Duration)] = &[
    ("failover.fr_timeout", ms(100), secs(600)),
    ("failover.fr_inv_timeout", ms(100), secs(HOUR)),
    ("dialogs.ttl", secs(60), secs(7 * 24 * HOUR)),
    ("dialogs.registry_timeout", ms(10), secs(60)),
    ("probe.interval", ms(50), secs(HOUR)),
    ("probe.timeout", ms(10), secs(60)),
    ("tcp.idle_timeout", secs(1), secs(24 * HOUR)),
    ("tcp.connect_timeout", ms(10), secs(60)),
    ("tcp.message_timeout", ms(100), secs(600)),
    ("tls.handshake_timeout", ms(100), secs(60)),
    ("security.rate_limit.per", ms(10), secs(HOUR)),
    ("security.rate_limit.block_for", ms(100), secs(24 * HOUR)),
];

/// The same for counts: beyond the maximum a value is a typo, or more
/// than one process can hold.
pub const COUNT_RANGES: &[(&str, u64, u64)] = &[
    ("dialogs.max", 1, 100_000_000),
    ("dialogs.registry_queue", 1, 10_000_000),
    ("limits.transactions", 100, 10_000_000),
    ("tcp.max_connections", 1, 1_000_000),
    ("tcp.max_connections_per_source", 1, 1_000_000),
    ("tls.max_handshakes_per_source", 1, 1_000_000),
    ("security.rate_limit.requests", 1, 1_000_000),
    ("probe.failure_threshold", 1, 100),
    ("probe.success_threshold", 1, 100),
    ("probe.latency_estimator_alpha", 1, 999),
];

/// `key`'s accepted range from `table`.
fn range_of<T: Copy>(table: &[(&str, T, T)], key: &str) -> Option<(T, T)> {
    table
        .iter()
        .find(|(k, ..)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// The largest file the config reads (itself, `dispatcher.list_file`,
/// secret files): a dispatcher.list of 40,000 lines fits.
pub const MAX_FILE_SIZE: u64 = 4 << 20;

/// Reads a file the config names, only when it is a regular file of at
/// most [`MAX_FILE_SIZE`]: `list_file = "/dev/zero"` would otherwise be
/// read until memory runs out (and a reload would do it to a live proxy);
/// a FIFO would block.
pub fn read_small_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let not_regular = || {
        Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a device, FIFO or directory?)",
        )
    };
    // Checked before opening: opening a FIFO waits for a writer.
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    let mut text = String::new();
    // One byte more than allowed tells "at the cap" from "beyond it",
    // whatever the size the file claims.
    file.take(MAX_FILE_SIZE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_FILE_SIZE >> 20),
        ));
    }
    Ok(text)
}

/// Reads and validates the config file at `path`.
pub fn read_config(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = read_small_file(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    read_config_text(&text, &file, path, &|_, _| None)
}

/// [`read_config`] for a reload: a destination whose host name does not
/// resolve now keeps the address `previous` gives for it (set, URI) rather
/// than refusing the reload.
pub fn reread_config(
    path: &Path,
    previous: &dyn Fn(u32, &str) -> Option<SocketAddr>,
) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = read_small_file(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    read_config_text(&text, &file, path, previous)
}

fn read_config_text(
    text: &str,
    file: &str,
    path: &Path,
    previous: &dyn Fn(u32, &str) -> Option<SocketAddr>,
) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut config = from_toml_at(text, file, base)?;
    config.load_list_file(base, file)?;
    config.resolve_names(text, file, previous)?;
    Ok(config)
}

/// Why a dispatcher.list line cannot be a sipedge destination (yet).
fn list_entry_problem(e: &crate::dispatcher::list::Entry) -> Option<String> {
    if e.host.is_unspecified() {
        return Some(format!("{}: a wildcard address is not a node", e.uri));
    }
    if let Some(v) = e.attrs.tls_verify() {
        if v != "0" && v != "1" {
            return Some(format!("{}: tls_verify={v}: give 0 or 1", e.uri));
        }
    }
    list_entry_transport(e).err()
}

/// A dispatcher.list line as a sipedge destination, or why it cannot be
/// one (also what `dispatcher.add` puts in the pool).
///
/// # Errors
/// Why sipedge cannot send to it (a wildcard address, a transport it
/// does not speak, a bad `tls_verify`). A host name is resolved later,
/// with the rest of the config ([`Config::resolve_names`]).
pub fn list_destination(e: &crate::dispatcher::list::Entry) -> Result<Destination, String> {
    if let Some(problem) = list_entry_problem(e) {
        return Err(problem);
    }
    Ok(destination(e))
}

fn destination(e: &crate::dispatcher::list::Entry) -> Destination {
    Destination {
        uri: SipUri {
            host: e.host.clone(),
            port: e.port,
            transport: list_entry_transport(e).ok().flatten(),
            sips: e.sips,
        },
        priority: e.priority,
        weight: e.attrs.weight().map(u32::from).filter(|w| *w > 0),
        maxload: e.attrs.maxload().filter(|m| *m > 0),
        rweight: e.attrs.rweight().map(u32::from).filter(|w| *w > 0),
        congestion_control: e.attrs.congestion_control(),
        ping_from: e.attrs.ping_from().map(str::to_owned),
        tcp: false,
        advertised: Vec::new(),
        tls_verify: e.attrs.tls_verify() != Some("0"),
        tls_server_name: e.attrs.tls_server_name().map(str::to_owned),
        list_flags: e.flags.bits(),
        attrs: (!e.attrs.is_empty()).then(|| e.attrs.clone()),
        written: Some(e.uri.clone()),
        line: Some(e.line),
        resolved: None,
    }
}

/// A violation about `dispatcher.destination[N]` of destinations read from
/// a list file, as the list line and the reason in the list's terms.
fn list_line_of(violation: &Violation, dests: &[Destination]) -> Option<(usize, String)> {
    let index: usize = violation
        .key
        .strip_prefix("dispatcher.destination[")?
        .split(']')
        .next()?
        .parse()
        .ok()?;
    let dest = dests.get(index)?;
    let line = dest.line?;
    let line_of = |i: usize| dests.get(i).and_then(|d| d.line).unwrap_or_default();
    // As the line wrote it (user part, parameters), not normalised.
    let written = |uri: &SipUri| dest.written.clone().unwrap_or_else(|| uri.to_string());
    let reason = match &violation.rule {
        Rule::DuplicateDestination { uri, first } => format!(
            "{} is listed twice in the set that takes calls (same host and port as line \
             {}); failover would retry the same node",
            written(uri),
            line_of(*first)
        ),
        Rule::SameAddress { uri, addr, first } => format!(
            "{} resolves to {addr}, where line {} already sends; a node is known by its \
             address, so the two could not be told apart",
            written(uri),
            line_of(*first)
        ),
        rule => rule.to_string(),
    };
    Some((line, reason))
}

/// The transport of a dispatcher.list URI: its `;transport=`, TLS for a
/// `sips:` one.
fn list_entry_transport(
    e: &crate::dispatcher::list::Entry,
) -> Result<Option<crate::transport::Transport>, String> {
    use crate::transport::Transport;
    let transport = crate::sip::Uri::parse(e.uri.as_bytes())
        .ok()
        .and_then(|u| u.param(b"transport").flatten().map(<[u8]>::to_vec));
    let t = match transport {
        None => None,
        Some(t) => Some(Transport::from_param(&t).ok_or_else(|| {
            format!(
                "{}: transport={} is not supported (udp, tcp or tls)",
                e.uri,
                String::from_utf8_lossy(&t)
            )
        })?),
    };
    match (e.sips, t) {
        (false, t) => Ok(t),
        (true, None | Some(Transport::Tcp | Transport::Tls)) => Ok(Some(Transport::Tls)),
        (true, Some(Transport::Udp)) => {
            Err(format!("{}: sips: over udp is a contradiction", e.uri))
        }
    }
}

impl Config {
    /// Reads `dispatcher.list_file` (relative to `base`, the config file's
    /// directory) as Kamailio's dispatcher.list and makes the entries of
    /// `dispatcher.set` the destinations, in Kamailio's order. Then checks
    /// the whole config again. `config_file` names the config in errors.
    pub fn load_list_file(&mut self, base: &Path, config_file: &str) -> Result<(), ConfigError> {
        let Some(list) = self.dispatcher.list_file.clone() else {
            return Ok(());
        };
        let path = if list.is_absolute() {
            list
        } else {
            base.join(list)
        };
        let file = path.display().to_string();
        let err = |detail: String| ConfigError::List {
            config: config_file.to_owned(),
            file: file.clone(),
            detail,
        };
        let text = read_small_file(&path).map_err(|e| err(format!(": cannot read it: {e}")))?;
        let parsed = crate::dispatcher::list::parse(&text)
            .map_err(|e| err(format!(":{}: {}", e.line, e.reason)))?;
        let set = self.dispatcher.set;
        let entries = parsed.set_in_kamailio_order(set);
        if entries.is_empty() {
            return Err(err(format!(
                ": no destination in set {set} (dispatcher.set); the file has sets {:?}",
                parsed.sets()
            )));
        }
        let mut destinations = Vec::with_capacity(entries.len());
        for &e in &entries {
            if let Some(problem) = list_entry_problem(e) {
                return Err(err(format!(":{}: {problem}", e.line)));
            }
            destinations.push(destination(e));
        }
        // The other sets are shown and probed; a line sipedge cannot use
        // there is left out with a warning rather than refusing the file.
        let mut other_sets = Vec::new();
        let mut skipped = Vec::new();
        for id in parsed.sets().into_iter().filter(|&id| id != set) {
            let mut dests = Vec::new();
            for e in parsed.set_in_kamailio_order(id) {
                match list_entry_problem(e) {
                    Some(problem) => skipped.push(format!("{file}:{}: {problem}", e.line)),
                    None => dests.push(destination(e)),
                }
            }
            if !dests.is_empty() {
                other_sets.push((id, dests));
            }
        }
        self.dispatcher.destinations = destinations;
        self.dispatcher.other_sets = other_sets;
        self.dispatcher.skipped = skipped;
        self.dispatcher.loaded_from_list = true;
        self.dispatcher.list_path = Some(file);
        // No TOML text: a violation outside the list names no line.
        self.validate()
            .map_err(|violation| self.located("", config_file, violation))
    }

    /// Each destination named by a host name, in every set, with the
    /// address it resolved to: `sip:fs1.internal:5080 -> 10.0.1.10:5080`.
    pub fn resolved_names(&self) -> Vec<String> {
        let sets = std::iter::once(&self.dispatcher.destinations)
            .chain(self.dispatcher.other_sets.iter().map(|(_, d)| d));
        sets.flatten()
            .filter_map(|d| Some(format!("{} -> {}", d.uri, d.resolved?)))
            .collect()
    }

    /// `violation` as an error at its place: the list line of a
    /// destination read from a list file (the operator wrote no
    /// `dispatcher.destination[N]`), else the key's line in `text`.
    fn located(&self, text: &str, config_file: &str, violation: Violation) -> ConfigError {
        if let (Some(list), Some((line, reason))) = (
            &self.dispatcher.list_path,
            list_line_of(&violation, &self.dispatcher.destinations),
        ) {
            return ConfigError::List {
                config: config_file.to_owned(),
                file: list.clone(),
                detail: format!(":{line}: {reason}"),
            };
        }
        let line = (!text.is_empty())
            .then(|| KeyIndex::new(text).line_of(text, &violation.key))
            .flatten();
        ConfigError::Invalid {
            at: Location {
                file: config_file.to_owned(),
                line,
            },
            violation: Box::new(violation),
        }
    }

    /// Resolves the host names of the destinations of every set, with
    /// `[dns] servers` (else the system's resolver and `/etc/hosts`): A/AAAA
    /// on the URI's port, or SRV first for a name without a port when
    /// `dispatcher.dns_srv` is on (Kamailio's `ds_dns_mode` 1, and 8 for
    /// SRV). Then checks the config again with the addresses (two names on
    /// one address, a name that is this proxy).
    ///
    /// A name that does not resolve, in the set that takes calls: an error
    /// at its list line or key, unless `previous` still has an address for
    /// that destination (a reload: the node keeps it, with a warning). In
    /// another set: left out with a warning, like other lines sipedge
    /// cannot use there. `text` is the config file's text, for lines.
    ///
    /// # Errors
    /// A name that does not resolve, or a rule the addresses break.
    pub fn resolve_names(
        &mut self,
        text: &str,
        config_file: &str,
        previous: &dyn Fn(u32, &str) -> Option<SocketAddr>,
    ) -> Result<(), ConfigError> {
        let srv = self.dispatcher.dns_srv;
        let target = |d: &Destination| d.dns_target(srv);
        let set = self.dispatcher.set;
        let mut places = Vec::new();
        let mut targets = Vec::new();
        for (i, d) in self.dispatcher.destinations.iter().enumerate() {
            if let Some(t) = target(d) {
                places.push((None, i));
                targets.push(t);
            }
        }
        for (k, (_, dests)) in self.dispatcher.other_sets.iter().enumerate() {
            for (i, d) in dests.iter().enumerate() {
                if let Some(t) = target(d) {
                    places.push((Some(k), i));
                    targets.push(t);
                }
            }
        }
        if targets.is_empty() {
            return Ok(());
        }
        let answers = crate::dns::resolve_now(&self.dns.servers, &targets);
        let mut gone: Vec<(usize, usize)> = Vec::new();
        for (&(other, i), answer) in places.iter().zip(answers) {
            let (id, d) = match other {
                None => (set, &mut self.dispatcher.destinations[i]),
                Some(k) => {
                    let (id, dests) = &mut self.dispatcher.other_sets[k];
                    (*id, &mut dests[i])
                }
            };
            let e = match answer {
                Ok(addr) => {
                    d.resolved = Some(addr);
                    continue;
                }
                Err(e) => e,
            };
            let uri = d.uri.to_string();
            let place = match (&self.dispatcher.list_path, d.line) {
                (Some(list), Some(line)) => format!("{list}:{line}"),
                _ => format!("{config_file}: dispatcher.destination[{i}]"),
            };
            if let Some(addr) = previous(id, &uri) {
                tracing::warn!("{place}: {uri}: {e}: keeps {addr}, its address before");
                d.resolved = Some(addr);
            } else if let Some(k) = other {
                self.dispatcher.skipped.push(format!(
                    "{place}: {uri} (set {id}): its host name does not resolve: {e}"
                ));
                gone.push((k, i));
            } else {
                let violation = Violation {
                    key: format!("dispatcher.destination[{i}].uri"),
                    rule: Rule::Unresolved {
                        uri: d.uri.clone(),
                        reason: e.to_string(),
                    },
                };
                return Err(self.located(text, config_file, violation));
            }
        }
        // Backwards, so the indices still to remove stay right.
        for &(k, i) in gone.iter().rev() {
            self.dispatcher.other_sets[k].1.remove(i);
        }
        self.dispatcher.other_sets.retain(|(_, d)| !d.is_empty());
        self.validate()
            .map_err(|violation| self.located(text, config_file, violation))
    }
}

/// Parses and validates `text`; `file` is only used to name it in errors.
/// Files it names (`[cluster] secret_file`) are read relative to the
/// working directory.
pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
    let mut config = from_toml_at(text, file, Path::new("."))?;
    config.resolve_names(text, file, &|_, _| None)?;
    Ok(config)
}

/// [`from_toml`] with the files it names read relative to `base`.
fn from_toml_at(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
    let mut config: Config = toml::from_str(text).map_err(|err| toml_error(text, file, &err))?;
    let invalid = |violation: Violation| {
        let line = KeyIndex::new(text).line_of(text, &violation.key);
        ConfigError::Invalid {
            at: Location {
                file: file.to_owned(),
                line,
            },
            violation: Box::new(violation),
        }
    };
    config.validate().map_err(invalid)?;
    config.cluster.resolve(base).map_err(invalid)?;
    if let Some(admin) = &mut config.admin {
        admin.resolve(base).map_err(invalid)?;
    }
    if let Some(tls) = &mut config.tls {
        tls.resolve(base).map_err(invalid)?;
    }
    Ok(config)
}

fn toml_error(text: &str, file: &str, err: &toml::de::Error) -> ConfigError {
    let reason = err.message().trim().to_owned();
    let span = err.span();
    let mut key = span
        .clone()
        .and_then(|span| KeyIndex::new(text).key_at(&span))
        .unwrap_or_default();
    // serde points a missing field at its table; name the field itself.
    if let Some(field) = quoted_after(&reason, "missing field `") {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(field);
    }
    if key.is_empty() {
        key.push_str("(top level)");
    }
    let (line, column) = span.map_or((1, 1), |span| line_column(text, span.start));
    ConfigError::Toml {
        file: file.to_owned(),
        key,
        line,
        column,
        reason,
    }
}

fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |tail| tail.chars().count() + 1);
    (line, column)
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a config file was refused. Display always names the file, and for
/// anything but an unreadable file the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, an unknown key, or a value whose own
    /// syntax is wrong (duration, address, URI). The reason is the TOML
    /// parser's message, which carries our typed errors' Display.
    #[error("{file}:{line}:{column}: {key}: {reason}")]
    Toml {
        file: String,
        key: String,
        line: usize,
        column: usize,
        reason: String,
    },
    /// Well-formed, but breaks a rule of [`Config::validate`]. Boxed: the
    /// rule carries addresses, and errors should stay small to return.
    #[error("{at}: {violation}")]
    Invalid {
        at: Location,
        violation: Box<Violation>,
    },
    /// `dispatcher.list_file` cannot be read or has a bad line.
    #[error("{config}: dispatcher.list_file: {file}{detail}")]
    List {
        config: String,
        file: String,
        /// `:LINE: reason`, or `: cannot read it: ...`.
        detail: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Toml { key, .. } => Some(key),
            ConfigError::Invalid { violation, .. } => Some(&violation.key),
            ConfigError::List { .. } => Some("dispatcher.list_file"),
        }
    }
}

/// A file, and the line of the offending key when it appears in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// A broken cross-field or range rule: which key, and which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {rule}")]
pub struct Violation {
    pub key: String,
    pub rule: Rule,
}

/// The rules [`Config::validate`] enforces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    #[error("no UDP socket to listen on; give at least one, e.g. udp = [\"0.0.0.0:5060\"]")]
    NoUdpSocket,
    #[error("an empty HEP password; give the collector's, or leave the key out")]
    EmptyAuthKey,
    #[error(
        "{0} is a wildcard address, which no peer can send to: signalling would connect \
         but the T.38 re-INVITE would be black-holed; advertise the concrete address the \
         trunk and the FreeSWITCH nodes reach this host on"
    )]
    WildcardAdvertise(Host),
    #[error(
        "{advertise} is a loopback address but destination {destination} is not: that node \
         would send in-dialog requests to itself, so signalling would connect but the T.38 \
         re-INVITE would be black-holed; advertise the address the nodes reach this host on \
         (loopback is only accepted when every destination is loopback too, for local testing)"
    )]
    LoopbackAdvertise {
        advertise: Host,
        destination: SipUri,
    },
    #[error(
        "no destination; add at least one [[dispatcher.destination]] with \
         uri = \"sip:host:port\" (a FreeSWITCH node)"
    )]
    NoDestination,
    #[error("{0} is a wildcard address, not a node sipedge can send to")]
    WildcardDestination(Host),
    #[error("{uri} is listed twice (first as dispatcher.destination[{first}]); failover would retry the same node")]
    DuplicateDestination { uri: SipUri, first: usize },
    #[error(
        "{uri} resolves to {addr}, where dispatcher.destination[{first}] already sends; a node \
         is known by its address, so the two could not be told apart"
    )]
    SameAddress {
        uri: SipUri,
        addr: SocketAddr,
        first: usize,
    },
    #[error(
        "{uri}: its host name does not resolve ({reason}); check the name, /etc/hosts or \
         [dns] servers, or give the node's IP address"
    )]
    Unresolved { uri: SipUri, reason: String },
    #[error("algorithm \"weight\" needs a weight (1-100) on every destination")]
    MissingWeight,
    #[error("weight {0} is out of range; use 1-100 (Kamailio's range)")]
    WeightOutOfRange(u32),
    #[error("{0} is not a final response code; use 300-699, e.g. 503")]
    BadFailoverCode(u16),
    #[error("must be longer than 0, e.g. \"2s\"")]
    ZeroDuration,
    #[error("must be at least 1; the table caps pinned calls, it cannot be turned off")]
    ZeroDialogMax,
    #[error("{0} bytes is out of range; use 65536 to 1073741824, e.g. 4194304 (4 MiB)")]
    BufferSize(usize),
    #[error("{0} is out of range; use 1 to 256 worker threads")]
    Workers(usize),
    #[error(
        "both list_file and [[dispatcher.destination]] are given; use one (the file is \
         read as Kamailio's dispatcher.list)"
    )]
    ListAndDestinations,
    #[error("\"{0}\" is not a SIP method; use a token such as \"OPTIONS\"")]
    BadProbeMethod(String),
    #[error("must be at least 1")]
    ZeroThreshold,
    #[error("give at least one code or class, e.g. [\"2xx\"]")]
    NoReplyCodes,
    #[error("\"{0}\" is not a sip: or sips: URI, e.g. \"sip:sipedge@203.0.113.5\"")]
    BadPingFrom(String),
    #[error(
        "{0} bytes is out of range; use 500 to 65507 (default 1300), or 0 to never switch to TCP"
    )]
    UdpMtu(usize),
    #[error("must be at least 1, e.g. 4096")]
    ZeroTcpConnections,
    #[error("\"{url}\" is not a Redis URL sipedge can use ({reason}); use e.g. \"redis://127.0.0.1:6379/0\"")]
    BadRegistry { url: String, reason: String },
    #[error("must be at least 1, e.g. 10000")]
    ZeroRegistryQueue,
    #[error("{value} is out of range; use {min} to {max}")]
    DurationRange {
        value: String,
        min: String,
        max: String,
    },
    #[error("{value} is out of range; use {min} to {max}")]
    CountRange { value: u64, min: u64, max: u64 },
    #[error(
        "{reserved} is more than max_connections ({max}): no slot would be left to \
         reserve from"
    )]
    ReservedOverCap { reserved: usize, max: usize },
    #[error(
        "{0} is sipedge's own address ([listen] or advertise): every call sent there would \
         come back to sipedge and loop until Max-Forwards runs out"
    )]
    SelfDestination(SipUri),
    #[error("must be at least 1, e.g. 50 (requests per `per`)")]
    ZeroRateLimit,
    #[error("{0} is too few to carry calls; use at least 100 (default 500000)")]
    TooFewTransactions(usize),
    #[error(
        "{0} is reached over TCP, but sipedge listens on no TCP address: its in-dialog \
         requests would find nobody at our Record-Route; add [listen] tcp = [\"ADDR:PORT\"]"
    )]
    TcpWithoutListener(SipUri),
    #[error(
        "TLS listeners need a certificate and key; add [tls] certificate = \"chain.pem\" \
         (leaf first) and key = \"key.pem\""
    )]
    TlsWithoutIdentity,
    #[error("{file}: {reason}")]
    TlsFile { file: String, reason: String },
    #[error("{0} is not reached over TLS; write sips:HOST or sip:HOST;transport=tls")]
    TlsOnly(SipUri),
    #[error("\"{0}\" is not a DNS name or IP address")]
    ServerName(String),
    #[error(
        "{0} is reached over TLS, but sipedge listens on no TLS address: its in-dialog \
         requests would find nobody at our Record-Route; add [listen] tls = [\"ADDR:PORT\"] \
         and [tls] certificate and key"
    )]
    TlsWithoutListener(SipUri),
    #[error(
        "a CRL is checked against client certificates, which are only asked for with \
         [tls] client_ca = \"carriers.pem\"; add it, or remove crl"
    )]
    CrlWithoutClientCa,
    #[error("both {0} and {0}_file are given; use one")]
    SecretTwice(String),
    #[error("cannot read {file}: {reason}")]
    SecretFile { file: String, reason: String },
    #[error(
        "{}{len} bytes is too short to be a secret; use at least {MIN_SECRET_LEN}, e.g. the \
         output of `openssl rand -hex 32`", file.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
    )]
    ShortSecret { len: usize, file: Option<String> },
    #[error(
        "a previous secret is only accepted beside the one that signs: give secret or \
         secret_file too"
    )]
    PreviousWithoutSecret,
    #[error(
        "{0} is not a loopback address and no token_file is given: anyone who reaches it \
         could drain every node; give token_file (e.g. \"/etc/sipedge/admin.token\", from \
         `openssl rand -hex 32`), listen on 127.0.0.1, or set allow_unauthenticated = true"
    )]
    AdminWithoutToken(SocketAddr),
    #[error(
        "{0} is not a loopback address and BINRPC has no authentication: anyone who reaches \
         it could drain every node; use a unix: socket or a loopback address, or set \
         allow_unauthenticated = true"
    )]
    CtlBeyondLoopback(String),
    #[error(
        "[admin] has neither listen nor ctl: give listen = \"127.0.0.1:9090\" for HTTP \
         (metrics, health, JSON-RPC), ctl = \"unix:/run/sipedge/ctl.sock\" for kamcmd, or \
         remove the section"
    )]
    AdminEmpty,
    #[error("no {kind} named {name:?} on this host")]
    UnknownOwner { kind: &'static str, name: String },
}

impl Config {
    /// Checks the rules that look at more than one value or at ranges. The
    /// first broken rule is reported, with the key it is about.
    pub fn validate(&self) -> Result<(), Violation> {
        let fail = |key: &str, rule: Rule| {
            Err(Violation {
                key: key.to_owned(),
                rule,
            })
        };
        if self.listen.udp.is_empty() {
            return fail("listen.udp", Rule::NoUdpSocket);
        }
        if let Some(capture) = &self.capture {
            if capture
                .auth_key
                .as_ref()
                .is_some_and(|k| k.as_bytes().is_empty())
            {
                return fail("capture.auth_key", Rule::EmptyAuthKey);
            }
        }
        if !self.listen.tls.is_empty() && self.tls.is_none() {
            return fail("listen.tls", Rule::TlsWithoutIdentity);
        }

        let dests = &self.dispatcher.destinations;
        if self.dispatcher.list_file.is_some()
            && !dests.is_empty()
            && !self.dispatcher.loaded_from_list
        {
            return fail("dispatcher.list_file", Rule::ListAndDestinations);
        }
        // With a list file the destinations are checked when it is read.
        if dests.is_empty() && self.dispatcher.list_file.is_none() {
            return fail("dispatcher.destination", Rule::NoDestination);
        }
        for (i, dest) in dests.iter().enumerate() {
            let key = |field: &str| format!("dispatcher.destination[{i}].{field}");
            // A host name is judged by the address it resolved to; before
            // that (config read but names not resolved yet), by its name.
            let addr = dest.addr();
            let host = addr.map_or_else(|| dest.uri.host.clone(), |a| Host::Ip(a.ip()));
            if host.is_unspecified() {
                return fail(&key("uri"), Rule::WildcardDestination(host));
            }
            let same = |d: &Destination| {
                d.uri.host == dest.uri.host && d.uri.port_or_default() == dest.uri.port_or_default()
            };
            if let Some(first) = dests[..i].iter().position(same) {
                let rule = Rule::DuplicateDestination {
                    uri: dest.uri.clone(),
                    first,
                };
                return fail(&key("uri"), rule);
            }
            let at = |d: &Destination| {
                addr.is_some_and(|a| {
                    d.addr().is_some_and(|b| {
                        b.ip().to_canonical() == a.ip().to_canonical() && b.port() == a.port()
                    })
                })
            };
            if let (Some(addr), Some(first)) = (addr, dests[..i].iter().position(at)) {
                let rule = Rule::SameAddress {
                    uri: dest.uri.clone(),
                    addr,
                    first,
                };
                return fail(&key("uri"), rule);
            }
            if self.listen.is_own(
                &host,
                addr.map_or_else(|| dest.uri.port_or_default(), |a| a.port()),
            ) {
                return fail(&key("uri"), Rule::SelfDestination(dest.uri.clone()));
            }
            let tls = dest.uri.transport == Some(crate::transport::Transport::Tls);
            if let Some(name) = &dest.tls_server_name {
                if !tls {
                    return fail(&key("tls_server_name"), Rule::TlsOnly(dest.uri.clone()));
                }
                if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                    return fail(&key("tls_server_name"), Rule::ServerName(name.clone()));
                }
            }
            if !dest.tls_verify && !tls {
                return fail(&key("tls_verify"), Rule::TlsOnly(dest.uri.clone()));
            }
            match dest.weight {
                Some(w) if !(1..=100).contains(&w) => {
                    return fail(&key("weight"), Rule::WeightOutOfRange(w))
                }
                None if self.dispatcher.algorithm == Algorithm::Weight => {
                    return fail(&key("weight"), Rule::MissingWeight)
                }
                _ => {}
            }
            if let Some(w) = dest.rweight.filter(|w| !(1..=100).contains(w)) {
                return fail(&key("rweight"), Rule::WeightOutOfRange(w));
            }
        }

        // Checked after the destinations so a loopback advertise is judged
        // against a complete, valid pool.
        let advertise = &self.listen.advertise.host;
        if advertise.is_unspecified() {
            return fail(
                "listen.advertise",
                Rule::WildcardAdvertise(advertise.clone()),
            );
        }
        if advertise.is_loopback() {
            // A name not resolved yet is judged once it is.
            let elsewhere = |d: &&Destination| d.addr().is_some_and(|a| !a.ip().is_loopback());
            if let Some(dest) = dests.iter().find(elsewhere) {
                let rule = Rule::LoopbackAdvertise {
                    advertise: advertise.clone(),
                    destination: dest.uri.clone(),
                };
                return fail("listen.advertise", rule);
            }
        }

        let failover = &self.failover;
        if let Some((i, &code)) = failover
            .codes
            .iter()
            .enumerate()
            .find(|(_, c)| !(300..=699).contains(*c))
        {
            return fail(&format!("failover.codes[{i}]"), Rule::BadFailoverCode(code));
        }
        let probe = &self.probe;
        // A method is an RFC 3261 token.
        if !crate::sip::is_token_str(probe.method.as_bytes()) {
            return fail("probe.method", Rule::BadProbeMethod(probe.method.clone()));
        }
        for (key, value) in [
            ("probe.failure_threshold", probe.failure_threshold),
            ("probe.success_threshold", probe.success_threshold),
        ] {
            if value == 0 {
                return fail(key, Rule::ZeroThreshold);
            }
        }
        if probe.reply_codes.is_empty() {
            return fail("probe.reply_codes", Rule::NoReplyCodes);
        }
        if let Some(from) = &probe.ping_from {
            let ok = crate::sip::Uri::parse(from.as_bytes()).is_ok_and(|u| {
                matches!(u.scheme, crate::sip::Scheme::Sip | crate::sip::Scheme::Sips)
            });
            if !ok {
                return fail("probe.ping_from", Rule::BadPingFrom(from.clone()));
            }
        }
        for (key, value) in [
            ("failover.fr_timeout", failover.fr_timeout),
            ("failover.fr_inv_timeout", failover.fr_inv_timeout),
            ("dialogs.ttl", self.dialogs.ttl),
            ("dialogs.registry_timeout", self.dialogs.registry_timeout),
            ("probe.interval", probe.interval),
            ("probe.timeout", probe.timeout),
            ("tcp.idle_timeout", self.tcp.idle_timeout),
            ("tcp.connect_timeout", self.tcp.connect_timeout),
            ("tcp.message_timeout", self.tcp.message_timeout),
        ]
        .into_iter()
        .chain(
            self.tls
                .iter()
                .map(|t| ("tls.handshake_timeout", t.handshake_timeout)),
        )
        .chain(self.security.rate_limit.iter().flat_map(|l| {
            [
                ("security.rate_limit.per", l.per),
                ("security.rate_limit.block_for", l.block_for),
            ]
        })) {
            if value.is_zero() {
                return fail(key, Rule::ZeroDuration);
            }
            if let Some((min, max)) = range_of(DURATION_RANGES, key) {
                if !(min..=max).contains(&value) {
                    let rule = Rule::DurationRange {
                        value: DisplayDuration(value).to_string(),
                        min: DisplayDuration(min).to_string(),
                        max: DisplayDuration(max).to_string(),
                    };
                    return fail(key, rule);
                }
            }
        }
        if self.dialogs.max == 0 {
            return fail("dialogs.max", Rule::ZeroDialogMax);
        }
        if let Some(url) = &self.dialogs.registry {
            if let Err(e) = redis::Client::open(url.as_str()) {
                let rule = Rule::BadRegistry {
                    url: crate::dialog::registry::redacted(url),
                    reason: e.to_string(),
                };
                return fail("dialogs.registry", rule);
            }
        }
        if self.dialogs.registry_queue == 0 {
            return fail("dialogs.registry_queue", Rule::ZeroRegistryQueue);
        }
        if self.tcp.max_connections == 0 {
            return fail("tcp.max_connections", Rule::ZeroTcpConnections);
        }
        if self.limits.transactions < 100 {
            return fail(
                "limits.transactions",
                Rule::TooFewTransactions(self.limits.transactions),
            );
        }
        if self.security.rate_limit.is_some_and(|l| l.requests == 0) {
            return fail("security.rate_limit.requests", Rule::ZeroRateLimit);
        }
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        for (key, value) in [
            ("dialogs.max", as_u64(self.dialogs.max)),
            (
                "dialogs.registry_queue",
                as_u64(self.dialogs.registry_queue),
            ),
            ("limits.transactions", as_u64(self.limits.transactions)),
            ("tcp.max_connections", as_u64(self.tcp.max_connections)),
            (
                "probe.failure_threshold",
                u64::from(self.probe.failure_threshold),
            ),
            (
                "probe.success_threshold",
                u64::from(self.probe.success_threshold),
            ),
            (
                "probe.latency_estimator_alpha",
                u64::from(self.probe.latency_estimator_alpha),
            ),
            (
                "tcp.max_connections_per_source",
                as_u64(self.tcp.max_connections_per_source),
            ),
        ]
        .into_iter()
        .chain(
            self.security
                .rate_limit
                .map(|l| ("security.rate_limit.requests", u64::from(l.requests))),
        )
        .chain(self.tls.as_ref().map(|t| {
            (
                "tls.max_handshakes_per_source",
                as_u64(t.max_handshakes_per_source),
            )
        })) {
            if let Some((min, max)) = range_of(COUNT_RANGES, key) {
                if !(min..=max).contains(&value) {
                    return fail(key, Rule::CountRange { value, min, max });
                }
            }
        }
        if self.tcp.reserved() > self.tcp.max_connections {
            let rule = Rule::ReservedOverCap {
                reserved: self.tcp.reserved(),
                max: self.tcp.max_connections,
            };
            return fail("tcp.reserved_trusted", rule);
        }
        for (key, value) in [
            ("listen.recv_buffer", self.listen.recv_buffer),
            ("listen.send_buffer", self.listen.send_buffer),
        ] {
            if !SOCKET_BUFFER_RANGE.contains(&value) {
                return fail(key, Rule::BufferSize(value));
            }
        }
        if !WORKERS_RANGE.contains(&self.runtime.workers) {
            return fail("runtime.workers", Rule::Workers(self.runtime.workers));
        }
        let mtu = self.listen.udp_mtu;
        if mtu != 0 && !(500..=65_507).contains(&mtu) {
            return fail("listen.udp_mtu", Rule::UdpMtu(mtu));
        }
        if let Some(admin) = &self.admin {
            match admin.listen {
                None if admin.ctl.is_empty() => return fail("admin", Rule::AdminEmpty),
                Some(listen)
                    if admin.unauthenticated_beyond_loopback() && !admin.allow_unauthenticated =>
                {
                    return fail("admin.listen", Rule::AdminWithoutToken(listen));
                }
                _ => {}
            }
            for socket in &admin.ctl {
                if let CtlSocket::Tcp(addr) | CtlSocket::Udp(addr) = socket {
                    if !addr.ip().is_loopback() && !admin.allow_unauthenticated {
                        return fail("admin.ctl", Rule::CtlBeyondLoopback(socket.to_string()));
                    }
                }
            }
        }
        // Likewise over TLS.
        if self.listen.tls.is_empty() {
            let tls_node = self
                .dispatcher
                .destinations
                .iter()
                .position(|d| d.uri.transport == Some(crate::transport::Transport::Tls));
            if let Some(i) = tls_node {
                let d = &self.dispatcher.destinations[i];
                return fail(
                    &format!("dispatcher.destination[{i}].uri"),
                    Rule::TlsWithoutListener(d.uri.clone()),
                );
            }
        }
        // A node reached over TCP sends its in-dialog requests to our TCP
        // Record-Route: something must listen there.
        if self.listen.tcp.is_empty() {
            let tcp_node =
                self.dispatcher.destinations.iter().position(|d| {
                    d.tcp || d.uri.transport == Some(crate::transport::Transport::Tcp)
                });
            if let Some(i) = tcp_node {
                let d = &self.dispatcher.destinations[i];
                let field = if d.tcp { "tcp" } else { "uri" };
                return fail(
                    &format!("dispatcher.destination[{i}].{field}"),
                    Rule::TcpWithoutListener(d.uri.clone()),
                );
            }
        }
        Ok(())
    }
}

/// A readable summary of the effective config (defaults filled in), for
/// the operator at start-up.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let udp: Vec<String> = self.listen.udp.iter().map(|a| a.to_string()).collect();
        writeln!(f, "listen udp      {}", udp.join(", "))?;
        if let (false, Some(tls)) = (self.listen.tls.is_empty(), &self.tls) {
            let addrs: Vec<String> = self.listen.tls.iter().map(|a| a.to_string()).collect();
            let clients = match (&tls.client_ca, &tls.crl) {
                (None, _) => "no client certificates".to_owned(),
                (Some(ca), None) => format!("mutual TLS, client_ca {}", ca.display()),
                (Some(ca), Some(crl)) => format!(
                    "mutual TLS, client_ca {}, crl {}",
                    ca.display(),
                    crl.display()
                ),
            };
            writeln!(
                f,
                "listen tls      {} (certificate {}, TLS 1.2+, {clients}, handshake_timeout {}, \
                 max_handshakes_per_source {})",
                addrs.join(", "),
                tls.certificate.display(),
                DisplayDuration(tls.handshake_timeout),
                tls.max_handshakes_per_source
            )?;
        }
        let tls_dests = self
            .dispatcher
            .destinations
            .iter()
            .filter(|d| d.uri.transport == Some(crate::transport::Transport::Tls));
        let (over_tls, unverified) =
            tls_dests.fold((0, 0), |(n, u), d| (n + 1, u + usize::from(!d.tls_verify)));
        if over_tls > 0 || self.tls.is_some() {
            let trust = match self.tls.as_ref().and_then(|t| t.ca_list.as_ref()) {
                Some(ca) => format!("CAs {}", ca.display()),
                None => "the system CA store".to_owned(),
            };
            let mut line = format!("outbound tls    trusts {trust}");
            if let Some(t) = &self.tls {
                let cert = t.client_certificate.as_ref().unwrap_or(&t.certificate);
                line += &format!(", client certificate {}", cert.display());
                if t.wildcards {
                    line += ", wildcards accepted";
                }
            }
            line += &format!(", {over_tls} destinations over TLS");
            if unverified > 0 {
                line += &format!(" ({unverified} with tls_verify = false: NOT CHECKED)");
            }
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "socket buffers  recv {} bytes, send {} bytes{}",
            self.listen.recv_buffer,
            self.listen.send_buffer,
            if self.listen.freebind {
                ", freebind (VIP)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "advertise       {}:{}",
            self.listen.advertise.host,
            self.listen.advertised_port()
        )?;
        let algorithm = self.dispatcher.algorithm;
        writeln!(
            f,
            "algorithm       {algorithm} (Kamailio ds_select_dst {})",
            algorithm.kamailio_number()
        )?;
        writeln!(f, "destinations    {}", self.dispatcher.destinations.len())?;
        for dest in &self.dispatcher.destinations {
            write!(f, "  {}", dest.uri)?;
            if let Some(addr) = dest.resolved {
                write!(f, " ({addr})")?;
            }
            write!(f, "  priority {}", dest.priority)?;
            if let Some(weight) = dest.weight {
                write!(f, "  weight {weight}")?;
            }
            writeln!(f)?;
        }
        let codes: Vec<String> = self.failover.codes.iter().map(u16::to_string).collect();
        writeln!(
            f,
            "failover        fr_timeout {}, fr_inv_timeout {}, codes [{}]",
            DisplayDuration(self.failover.fr_timeout),
            DisplayDuration(self.failover.fr_inv_timeout),
            codes.join(", ")
        )?;
        writeln!(
            f,
            "dialogs         ttl {}, max {}",
            DisplayDuration(self.dialogs.ttl),
            self.dialogs.max
        )?;
        match self.cluster.secrets() {
            Some((_, previous)) => writeln!(
                f,
                "route hint      authenticated by [cluster] secret, opaque (names no node \
                 address){}",
                if previous.is_some() {
                    " (previous secret still accepted)"
                } else {
                    ""
                }
            )?,
            None => writeln!(
                f,
                "route hint      unauthenticated (no [cluster] secret): opaque under a built-in \
                 key, which hides node addresses from casual view only; anyone with sipedge's \
                 source can read one, or forge one naming a pool node"
            )?,
        }
        match &self.dialogs.registry {
            Some(url) => writeln!(
                f,
                "registry        {} (keys {}<Call-ID>, timeout {}, queue {})",
                crate::dialog::registry::redacted(url),
                self.dialogs.registry_prefix,
                DisplayDuration(self.dialogs.registry_timeout),
                self.dialogs.registry_queue
            )?,
            None => writeln!(
                f,
                "registry        off (the Call-ID table is this instance's own)"
            )?,
        }
        if let Some(c) = &self.capture {
            let what = match c.what {
                crate::capture::What::All => "all",
                crate::capture::What::Calls => "calls",
                crate::capture::What::Failures => "failures",
            };
            writeln!(
                f,
                "capture         HEP v3 to {} (capture_id {}, {}, what {what})",
                c.hep,
                c.capture_id,
                if c.auth_key.is_some() {
                    "auth_key set"
                } else {
                    "no auth_key"
                },
            )?;
        }
        let codes: Vec<String> = self
            .probe
            .reply_codes
            .iter()
            .map(|c| c.to_string())
            .collect();
        writeln!(
            f,
            "probe           {} to {} every {}, timeout {}, down after {} failures, up after \
             {} successes, alive on [{}], from {}",
            self.probe.method,
            self.probe.mode.describe(),
            DisplayDuration(self.probe.interval),
            DisplayDuration(self.probe.timeout),
            self.probe.failure_threshold,
            self.probe.success_threshold,
            codes.join(", "),
            self.probe.ping_from_or(&self.listen.advertise),
        )?;
        match self.admin.as_ref().and_then(|a| a.listen.map(|l| (a, l))) {
            Some((admin, listen)) => writeln!(
                f,
                "admin           http://{}, {}",
                listen,
                match (admin.token_file.is_some(), admin.metrics_require_token) {
                    (true, true) => "RPC and /metrics need the bearer token",
                    (true, false) => "RPC needs the bearer token",
                    (false, _) if listen.ip().is_loopback() => "no token (loopback)",
                    (false, _) => "NO TOKEN: anyone who reaches it can drain nodes",
                }
            )?,
            None => writeln!(f, "admin           off")?,
        }
        if let Some(admin) = self.admin.as_ref().filter(|a| !a.ctl.is_empty()) {
            let sockets: Vec<String> = admin.ctl.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "ctl (kamcmd)    {}, unix mode {:04o}",
                sockets.join(", "),
                admin.ctl_mode.0
            )?;
        }
        write!(
            f,
            "runtime         {} worker thread(s)",
            self.runtime.workers
        )
    }
}

// ---------------------------------------------------------------------------
// Mapping byte spans back to dotted keys
// ---------------------------------------------------------------------------

/// Every key and array element of a document with its dotted path and
/// spans. Built from the same text with the TOML parser's spanned tree; the
/// recovering parse means even a syntax error gets the key it sits in.
struct KeyIndex {
    entries: Vec<KeyEntry>,
}

struct KeyEntry {
    path: String,
    depth: usize,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

impl KeyIndex {
    fn new(text: &str) -> KeyIndex {
        let (root, _errors) = DeTable::parse_recoverable(text);
        let mut index = KeyIndex {
            entries: Vec::new(),
        };
        index.walk_table(root.get_ref(), "", 0);
        index
    }

    fn walk_table(&mut self, table: &DeTable<'_>, prefix: &str, depth: usize) {
        for (key, value) in table.iter() {
            let name = key.get_ref();
            let bare = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let name = if bare {
                name.to_string()
            } else {
                format!("{name:?}")
            };
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            self.walk_value(
                value.get_ref(),
                path,
                depth + 1,
                Some(key.span()),
                value.span(),
            );
        }
    }

    fn walk_value(
        &mut self,
        value: &DeValue<'_>,
        path: String,
        depth: usize,
        key: Option<Range<usize>>,
        span: Range<usize>,
    ) {
        match value {
            DeValue::Table(table) => self.walk_table(table, &path, depth),
            DeValue::Array(array) => {
                for (i, item) in array.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    self.walk_value(item.get_ref(), item_path, depth + 1, None, item.span());
                }
            }
            _ => {}
        }
        self.entries.push(KeyEntry {
            path,
            depth,
            key,
            value: span,
        });
    }

    /// The deepest key whose name or value covers `span`. Tables opened by
    /// a `[header]` only span the header, so an error inside their body
    /// lands on the key that holds it, and a missing-field error (pointed
    /// at the header) on the table.
    fn key_at(&self, span: &Range<usize>) -> Option<String> {
        // The root table's span is empty: that is where serde points a
        // missing top-level section.
        if span.is_empty() {
            return None;
        }
        let covers = |outer: &Range<usize>| {
            !outer.is_empty() && outer.start <= span.start && span.end <= outer.end
        };
        self.entries
            .iter()
            .filter(|e| e.key.as_ref().is_some_and(covers) || covers(&e.value))
            .max_by_key(|e| e.depth)
            .map(|e| e.path.clone())
    }

    /// The line of `path`, or of its nearest ancestor present in the file
    /// (a rule can be about a key the operator left out).
    fn line_of(&self, text: &str, key: &str) -> Option<usize> {
        let mut path = key;
        loop {
            if let Some(entry) = self.entries.iter().find(|e| e.path == path) {
                let start = entry.key.as_ref().unwrap_or(&entry.value).start;
                return Some(line_column(text, start).0);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[listen]
udp = ["10.0.0.5:5060"]
advertise = "10.0.0.5"

[dispatcher]
algorithm = "round-robin"
[[dispatcher.destination]]
uri = "sip:10.0.1.10:5080"
[[dispatcher.destination]]
uri = "sip:10.0.1.11:5080"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        from_toml(text, "test.toml")
    }

    fn err(text: &str) -> ConfigError {
        match load(text) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(err) => err,
        }
    }

    fn rule(text: &str) -> (String, Rule) {
        match err(text) {
            ConfigError::Invalid { violation, .. } => (violation.key, violation.rule),
            other => panic!("not a rule violation: {other}"),
        }
    }

    #[test]
    fn base_config_loads_with_defaults() {
        let config = load(BASE).unwrap();
        assert_eq!(config.dispatcher.destinations.len(), 2);
        assert_eq!(config.failover.fr_timeout, Duration::from_secs(2));
        assert_eq!(config.failover.fr_inv_timeout, Duration::from_secs(120));
        assert_eq!(config.failover.codes, vec![500, 502, 503, 504]);
        assert_eq!(config.dialogs.ttl, Duration::from_secs(7200));
        assert_eq!(config.dialogs.max, 1_000_000);
        assert_eq!(config.listen.advertised_port(), 5060);
    }

    #[test]
    fn built_in_example_is_valid() {
        let config = from_toml(EXAMPLE_TOML, EXAMPLE_NAME).unwrap();
        assert!(config.listen.advertise.host.is_loopback());
    }

    #[test]
    fn udp_list_must_not_be_empty() {
        let text = BASE.replace(r#"udp = ["10.0.0.5:5060"]"#, "udp = []");
        assert_eq!(rule(&text), ("listen.udp".into(), Rule::NoUdpSocket));
    }

    #[test]
    fn udp_entry_must_be_a_socket_address() {
        let text = BASE.replace(r#""10.0.0.5:5060""#, r#""10.0.0.5:5060", "10.0.0.5""#);
        let err = err(&text);
        assert_eq!(err.key(), Some("listen.udp[1]"));
    }

    #[test]
    fn wildcard_advertise_is_refused() {
        for wildcard in ["0.0.0.0", "0.0.0.0:5060", "::", "[::]:5060"] {
            let text = BASE.replace(r#""10.0.0.5""#, &format!("{wildcard:?}"));
            let message = err(&text).to_string();
            let (key, rule) = rule(&text);
            assert_eq!(key, "listen.advertise");
            assert!(matches!(rule, Rule::WildcardAdvertise(_)), "{rule:?}");
            assert!(message.contains("listen.advertise"), "{message}");
            assert!(message.contains("black-holed"), "{message}");
        }
    }

    #[test]
    fn loopback_advertise_needs_loopback_destinations() {
        let text = BASE.replace(r#""10.0.0.5""#, r#""127.0.0.1""#);
        let (key, rule) = rule(&text);
        assert_eq!(key, "listen.advertise");
        assert!(matches!(rule, Rule::LoopbackAdvertise { .. }));
        assert!(rule
            .to_string()
            .contains("T.38 re-INVITE would be black-holed"));

        let local = text
            .replace("10.0.1.10", "127.0.0.1")
            .replace("10.0.1.11:5080", "localhost:5081");
        // The name resolves (/etc/hosts) to a loopback address: accepted.
        load(&local).unwrap();
        let v6 = local.replace(r#""127.0.0.1""#, r#""[::1]:5070""#);
        load(&v6).unwrap();
    }

    #[test]
    fn at_least_one_destination() {
        let text = BASE.split("[[dispatcher.destination]]").next().unwrap();
        assert_eq!(
            rule(text),
            ("dispatcher.destination".into(), Rule::NoDestination)
        );
        let no_section = BASE.split("[dispatcher]").next().unwrap();
        assert_eq!(rule(no_section).1, Rule::NoDestination);
    }

    #[test]
    fn destination_uri_must_be_sip_host_port() {
        for (bad, reason) in [
            ("http://10.0.1.11", "not a sip: URI"),
            ("10.0.1.11:5080", "not a sip: URI"),
            ("sips:10.0.1.11;transport=udp", "sips:"),
            ("sip:fs@10.0.1.11", "user part"),
            ("sip:10.0.1.11;lr", "transport=tcp"),
            ("sip:10.0.1.11?X=1", "transport=tcp"),
            ("sip:", "no host"),
            ("sip:10.0.1.11:0", "port"),
            ("sip:10.0.1.11:99999", "port"),
            ("sip:10.0.1.11:50x", "port"),
            ("sip:2001:db8::1", "brackets"),
            ("sip:[2001:db8::zz]:5080", "IPv6"),
            ("sip:[2001:db8::1", "closing"),
            ("sip:300.1.1.1", "neither an IPv4"),
            ("sip:fs_1.example", "neither an IPv4"),
        ] {
            let text = BASE.replace("sip:10.0.1.11:5080", bad);
            let err = err(&text);
            let message = err.to_string();
            assert_eq!(err.key(), Some("dispatcher.destination[1].uri"), "{bad}");
            assert!(message.contains(reason), "{bad}: {message}");
        }
    }

    #[test]
    fn security_and_limits_settings_and_their_rules() {
        let c = load(BASE).unwrap();
        assert!(c.security.trusted.is_empty());
        assert_eq!(c.security.block_user_agents.len(), 4);
        assert_eq!(c.security.rate_limit, None);
        assert_eq!(c.limits.transactions, 500_000);
        let text = format!(
            "{BASE}\n[security]\ntrusted = [\"198.51.100.0/24\", \"2001:db8::/32\"]\n\
             rate_limit = {{ requests = 50, per = \"2s\", block_for = \"60s\" }}\n"
        );
        let c = load(&text).unwrap();
        assert_eq!(c.security.trusted.len(), 2);
        let limit = c.security.rate_limit.unwrap();
        assert_eq!((limit.requests, limit.per), (50, Duration::from_secs(2)));
        // A bad network names the key and the reason.
        let text = format!("{BASE}\n[security]\ntrusted = [\"198.51.100.0/33\"]\n");
        let e = err(&text);
        assert_eq!(e.key(), Some("security.trusted"), "{e}");
        assert!(e.to_string().contains("198.51.100.0/33"), "{e}");
        for (section, key, want) in [
            (
                "[security]\nrate_limit = { requests = 0, per = \"2s\", block_for = \"1s\" }\n",
                "security.rate_limit.requests",
                Rule::ZeroRateLimit,
            ),
            (
                "[security]\nrate_limit = { requests = 5, per = \"0s\", block_for = \"1s\" }\n",
                "security.rate_limit.per",
                Rule::ZeroDuration,
            ),
            (
                "[limits]\ntransactions = 10\n",
                "limits.transactions",
                Rule::TooFewTransactions(10),
            ),
        ] {
            assert_eq!(rule(&format!("{BASE}\n{section}")), (key.to_string(), want));
        }
    }

    #[test]
    fn a_destination_that_is_sipedge_itself_is_refused() {
        let own = |host: &str, port: u16, listen: &str| {
            let text = BASE.replace("[listen]\n", &format!("[listen]\n{listen}\n"));
            let c = load(&text).unwrap();
            let host = Host::Ip(host.parse().unwrap());
            c.listen.is_own(&host, port)
        };
        // BASE: udp 10.0.0.5:5060, advertise 10.0.0.5.
        assert!(own("10.0.0.5", 5060, ""));
        assert!(!own("10.0.0.5", 5080, ""));
        assert!(!own("10.0.1.10", 5060, ""));
        // A TCP listener on another port is us too.
        assert!(own("10.0.0.5", 5070, "tcp = [\"10.0.0.5:5070\"]"));
        // A wildcard listener: its port on loopback or the advertised host.
        let wild = BASE.replace("udp = [\"10.0.0.5:5060\"]", "udp = [\"0.0.0.0:5062\"]");
        let c = load(&wild).unwrap();
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert!(c.listen.is_own(&ip("127.0.0.1"), 5062));
        assert!(c.listen.is_own(&ip("10.0.0.5"), 5062));
        assert!(!c.listen.is_own(&ip("10.0.0.9"), 5062));
        let text = BASE.replace("sip:10.0.1.11:5080", "sip:10.0.0.5");
        assert_eq!(
            rule(&text),
            (
                "dispatcher.destination[1].uri".to_string(),
                Rule::SelfDestination(SipUri::parse("sip:10.0.0.5").unwrap())
            )
        );
    }

    #[test]
    fn durations_and_counts_outside_their_range_are_refused() {
        for (line, key) in [
            ("[failover]\nfr_timeout = \"1h\"\n", "failover.fr_timeout"),
            ("[dialogs]\nttl = \"1ms\"\n", "dialogs.ttl"),
            ("[probe]\ninterval = \"2ms\"\n", "probe.interval"),
            ("[tcp]\nmessage_timeout = \"20m\"\n", "tcp.message_timeout"),
            (
                "[security]\nrate_limit = { requests = 5, per = \"1s\", block_for = \"720h\" }\n",
                "security.rate_limit.block_for",
            ),
        ] {
            let (k, r) = rule(&format!("{BASE}\n{line}"));
            assert_eq!(k, key, "{line}");
            assert!(matches!(r, Rule::DurationRange { .. }), "{line}: {r}");
        }
        for (line, key) in [
            (
                "[limits]\ntransactions = 100000000\n",
                "limits.transactions",
            ),
            (
                "[probe]\nfailure_threshold = 1000\n",
                "probe.failure_threshold",
            ),
            (
                "[probe]\nlatency_estimator_alpha = 1000\n",
                "probe.latency_estimator_alpha",
            ),
            (
                "[probe]\nlatency_estimator_alpha = 0\n",
                "probe.latency_estimator_alpha",
            ),
            (
                "[tcp]\nmax_connections_per_source = 0\n",
                "tcp.max_connections_per_source",
            ),
        ] {
            let (k, r) = rule(&format!("{BASE}\n{line}"));
            assert_eq!(k, key, "{line}");
            assert!(matches!(r, Rule::CountRange { .. }), "{line}: {r}");
        }
        // Every default is inside its own range.
        let c = load(BASE).unwrap();
        for (key, value) in [
            ("failover.fr_timeout", c.failover.fr_timeout),
            ("failover.fr_inv_timeout", c.failover.fr_inv_timeout),
            ("dialogs.ttl", c.dialogs.ttl),
            ("dialogs.registry_timeout", c.dialogs.registry_timeout),
            ("probe.interval", c.probe.interval),
            ("probe.timeout", c.probe.timeout),
            ("tcp.idle_timeout", c.tcp.idle_timeout),
            ("tcp.connect_timeout", c.tcp.connect_timeout),
            ("tcp.message_timeout", c.tcp.message_timeout),
        ] {
            let (min, max) = range_of(DURATION_RANGES, key).unwrap();
            assert!((min..=max).contains(&value), "{key}");
        }
    }

    #[test]
    fn tcp_settings_and_their_rules() {
        let c = load(BASE).unwrap();
        assert!(c.listen.tcp.is_empty());
        assert_eq!(c.listen.udp_mtu, 1300);
        assert_eq!(c.tcp, Tcp::default());
        assert_eq!(c.tcp.idle_timeout, Duration::from_secs(300));
        // A TCP node needs a TCP listener (its in-dialog requests).
        let tcp_node = BASE.replace("sip:10.0.1.11:5080", "sip:10.0.1.11:5080;transport=tcp");
        assert_eq!(
            rule(&tcp_node).0,
            "dispatcher.destination[1].uri".to_string()
        );
        assert!(matches!(rule(&tcp_node).1, Rule::TcpWithoutListener(_)));
        let with_listener = tcp_node.replace("[listen]\n", "[listen]\ntcp = [\"10.0.0.5:5060\"]\n");
        let c = load(&with_listener).unwrap();
        assert_eq!(c.listen.tcp, ["10.0.0.5:5060".parse().unwrap()]);
        for (line, key, want) in [
            (
                "[listen]\nudp_mtu = 100\n",
                "listen.udp_mtu",
                Rule::UdpMtu(100),
            ),
            (
                "[tcp]\nmax_connections = 0\n",
                "tcp.max_connections",
                Rule::ZeroTcpConnections,
            ),
            (
                "[tcp]\nidle_timeout = \"0s\"\n",
                "tcp.idle_timeout",
                Rule::ZeroDuration,
            ),
        ] {
            let text = if line.starts_with("[listen]") {
                BASE.replace("[listen]\n", line)
            } else {
                format!("{BASE}\n{line}")
            };
            assert_eq!(rule(&text), (key.to_string(), want), "{line}");
        }
        // The same address twice is one node, whatever the transport says.
        let dup = with_listener.replace(
            "sip:10.0.1.11:5080;transport=tcp",
            "sip:10.0.1.10:5080;transport=tcp",
        );
        assert!(
            matches!(rule(&dup).1, Rule::DuplicateDestination { .. }),
            "{dup}"
        );
    }

    #[test]
    fn wildcard_and_duplicate_destinations_are_refused() {
        let text = BASE.replace("sip:10.0.1.11:5080", "sip:0.0.0.0:5080");
        assert!(matches!(rule(&text).1, Rule::WildcardDestination(_)));
        let text = BASE.replace("sip:10.0.1.11:5080", "sip:10.0.1.10:5080");
        let (key, rule) = rule(&text);
        assert_eq!(key, "dispatcher.destination[1].uri");
        assert!(matches!(rule, Rule::DuplicateDestination { first: 0, .. }));
    }

    #[test]
    fn weight_rules() {
        let text = BASE.replace("round-robin", "weight");
        assert_eq!(
            rule(&text),
            (
                "dispatcher.destination[0].weight".into(),
                Rule::MissingWeight
            )
        );
        let text = BASE.replace(
            "uri = \"sip:10.0.1.11:5080\"",
            "uri = \"sip:10.0.1.11:5080\"\nweight = 0",
        );
        assert_eq!(
            rule(&text),
            (
                "dispatcher.destination[1].weight".into(),
                Rule::WeightOutOfRange(0)
            )
        );
        let text = BASE
            .replace("round-robin", "weight")
            .replace("5080\"", "5080\"\nweight = 50");
        let config = load(&text).unwrap();
        assert_eq!(config.dispatcher.algorithm.kamailio_number(), 9);
        let text = BASE.replace(
            "uri = \"sip:10.0.1.11:5080\"",
            "uri = \"sip:10.0.1.11:5080\"\nrweight = 101",
        );
        assert_eq!(
            rule(&text),
            (
                "dispatcher.destination[1].rweight".into(),
                Rule::WeightOutOfRange(101)
            )
        );
        for (name, number) in [("call-load", 10), ("relative-weight", 11), ("latency", 13)] {
            let text = BASE.replace("round-robin", name).replace(
                "5080\"",
                "5080\"\nrweight = 50\nmaxload = 3\ncongestion_control = true",
            );
            let config = load(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.dispatcher.algorithm.kamailio_number(), number);
            assert_eq!(config.dispatcher.algorithm.as_str(), name);
            let d = &config.dispatcher.destinations[0];
            assert_eq!(
                (d.rweight, d.maxload, d.congestion_control),
                (Some(50), Some(3), true)
            );
        }
    }

    #[test]
    fn unknown_algorithm_is_refused() {
        let err = err(&BASE.replace("round-robin", "random"));
        assert_eq!(err.key(), Some("dispatcher.algorithm"));
        assert!(err.to_string().contains("round-robin"), "{err}");
    }

    #[test]
    fn ctl_sockets_in_kamailios_syntax() {
        let parse = |s: &str| CtlSocket::try_from(s.to_owned());
        assert_eq!(
            parse("unix:/run/sipedge/ctl.sock"),
            Ok(CtlSocket::Unix("/run/sipedge/ctl.sock".into()))
        );
        assert_eq!(parse("unixs:/a"), Ok(CtlSocket::Unix("/a".into())));
        assert_eq!(parse("/a/b"), Ok(CtlSocket::Unix("/a/b".into())));
        assert_eq!(
            parse("tcp:127.0.0.1:2049"),
            Ok(CtlSocket::Tcp("127.0.0.1:2049".parse().unwrap()))
        );
        assert_eq!(
            parse("TCP:127.0.0.1"),
            Ok(CtlSocket::Tcp("127.0.0.1:2049".parse().unwrap()))
        );
        assert_eq!(
            parse("udp:[::1]:3000"),
            Ok(CtlSocket::Udp("[::1]:3000".parse().unwrap()))
        );
        assert_eq!(
            parse("tcp:[::1]"),
            Ok(CtlSocket::Tcp("[::1]:2049".parse().unwrap()))
        );
        for bad in [
            "tcp:localhost:2049",
            "unix:rel",
            "unixd:/a",
            "fifo:/a",
            "tcp:",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(&format!("unix:/{}", "a".repeat(107))).is_err());
        assert_eq!(
            parse("unix:/x").unwrap().to_string(),
            "unix:/x",
            "shown as written"
        );

        let admin =
            |extra: &str| toml::from_str::<Admin>(&format!("listen = \"127.0.0.1:9090\"\n{extra}"));
        let one = admin("ctl = \"tcp:127.0.0.1:2049\"").unwrap();
        assert_eq!(one.ctl.len(), 1);
        assert_eq!(one.ctl_mode, FileMode(0o600));
        let two = admin("ctl = [\"unix:/a\", \"udp:127.0.0.1\"]\nctl_mode = \"0660\"").unwrap();
        assert_eq!(two.ctl.len(), 2);
        assert_eq!(two.ctl_mode, FileMode(0o660));
        assert!(admin("").unwrap().ctl.is_empty(), "none by default");
        for bad in ["\"660x\"", "\"\"", "\"01777\"", "\"99\""] {
            assert!(admin(&format!("ctl_mode = {bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn failover_codes_must_be_final() {
        for code in [200, 180, 99, 700, 1000] {
            let text = format!("{BASE}\n[failover]\ncodes = [503, {code}]\n");
            assert_eq!(
                rule(&text),
                ("failover.codes[1]".into(), Rule::BadFailoverCode(code))
            );
        }
        let text = format!("{BASE}\n[failover]\ncodes = [300, 408, 503, 699]\n");
        load(&text).unwrap();
    }

    #[test]
    fn durations_must_be_positive() {
        for key in ["fr_timeout", "fr_inv_timeout"] {
            let text = format!("{BASE}\n[failover]\n{key} = \"0s\"\n");
            assert_eq!(rule(&text), (format!("failover.{key}"), Rule::ZeroDuration));
        }
        let text = format!("{BASE}\n[dialogs]\nttl = \"0ms\"\n");
        assert_eq!(rule(&text), ("dialogs.ttl".into(), Rule::ZeroDuration));
    }

    #[test]
    fn dialog_max_must_be_positive() {
        let text = format!("{BASE}\n[dialogs]\nmax = 0\n");
        assert_eq!(rule(&text), ("dialogs.max".into(), Rule::ZeroDialogMax));
    }

    #[test]
    fn probe_defaults_follow_the_design_table() {
        let cfg = load(BASE).unwrap();
        assert_eq!(cfg.probe.method, "OPTIONS");
        assert_eq!(cfg.probe.interval, Duration::from_secs(10));
        assert_eq!(cfg.probe.timeout, Duration::from_secs(2));
        assert_eq!(cfg.probe.failure_threshold, 3);
        assert_eq!(cfg.probe.success_threshold, 1);
        assert_eq!(cfg.probe.reply_codes, vec![ReplyCode::Class(2)]);
        assert_eq!(
            cfg.probe.ping_from_or(&cfg.listen.advertise),
            "sip:sipedge@10.0.0.5"
        );
        assert_eq!(cfg.admin, None);
        assert_eq!(cfg.dispatcher.set, 1);
        assert_eq!(cfg.dispatcher.list_file, None);
    }

    #[test]
    fn probe_section_is_read_and_checked() {
        let text = format!(
            "{BASE}\n[probe]\nmethod = \"INFO\"\ninterval = \"5s\"\ntimeout = \"500ms\"\n\
             failure_threshold = 2\nsuccess_threshold = 2\n\
             reply_codes = [\"2XX\", 403, \"404\"]\nping_from = \"sip:probe@10.0.0.5\"\n\
             [admin]\nlisten = \"127.0.0.1:9090\"\n"
        );
        let cfg = load(&text).unwrap();
        assert_eq!(cfg.probe.method, "INFO");
        assert_eq!(cfg.probe.timeout, Duration::from_millis(500));
        assert_eq!(
            cfg.probe.reply_codes,
            vec![
                ReplyCode::Class(2),
                ReplyCode::Code(403),
                ReplyCode::Code(404)
            ]
        );
        assert!(cfg.probe.reply_codes[0].matches(299));
        assert!(!cfg.probe.reply_codes[0].matches(300));
        assert!(cfg.probe.reply_codes[1].matches(403));
        assert_eq!(
            cfg.admin.and_then(|a| a.listen),
            Some("127.0.0.1:9090".parse().unwrap())
        );
        for (body, key, want) in [
            (
                "method = \"OPT IONS\"",
                "probe.method",
                Rule::BadProbeMethod("OPT IONS".into()),
            ),
            (
                "failure_threshold = 0",
                "probe.failure_threshold",
                Rule::ZeroThreshold,
            ),
            (
                "success_threshold = 0",
                "probe.success_threshold",
                Rule::ZeroThreshold,
            ),
            ("reply_codes = []", "probe.reply_codes", Rule::NoReplyCodes),
            ("interval = \"0s\"", "probe.interval", Rule::ZeroDuration),
            (
                "ping_from = \"mailto:x@y\"",
                "probe.ping_from",
                Rule::BadPingFrom("mailto:x@y".into()),
            ),
        ] {
            let text = format!("{BASE}\n[probe]\n{body}\n");
            assert_eq!(rule(&text), (key.into(), want), "{body}");
        }
        for bad in ["\"7xx\"", "99", "\"2x\"", "700"] {
            let text = format!("{BASE}\n[probe]\nreply_codes = [{bad}]\n");
            let msg = err(&text).to_string();
            assert!(msg.contains("probe.reply_codes"), "{bad}: {msg}");
            assert!(msg.contains("not a reply code or class"), "{bad}: {msg}");
        }
    }

    #[test]
    fn list_file_and_inline_destinations_exclude_each_other() {
        let text = BASE.replace(
            "algorithm = \"round-robin\"",
            "algorithm = \"round-robin\"\nlist_file = \"/etc/kamailio/dispatcher.list\"",
        );
        assert_eq!(
            rule(&text),
            ("dispatcher.list_file".into(), Rule::ListAndDestinations)
        );
        let only_file = "[listen]\nudp = [\"10.0.0.5:5060\"]\nadvertise = \"10.0.0.5\"\n\
                         [dispatcher]\nlist_file = \"dispatcher.list\"\nset = 2\n";
        let cfg = load(only_file).unwrap();
        assert_eq!(cfg.dispatcher.set, 2);
        assert!(cfg.dispatcher.destinations.is_empty());
    }

    #[test]
    fn socket_buffers_and_workers_have_ranges() {
        let text = BASE.replace(
            r#"udp = ["10.0.0.5:5060"]"#,
            "udp = [\"10.0.0.5:5060\"]\nrecv_buffer = 1024",
        );
        assert_eq!(
            rule(&text),
            ("listen.recv_buffer".into(), Rule::BufferSize(1024))
        );
        let text = BASE.replace(
            r#"udp = ["10.0.0.5:5060"]"#,
            "udp = [\"10.0.0.5:5060\"]\nsend_buffer = 4294967296",
        );
        assert_eq!(
            rule(&text),
            ("listen.send_buffer".into(), Rule::BufferSize(4 << 30))
        );
        let text = format!("{BASE}\n[runtime]\nworkers = 0\n");
        assert_eq!(rule(&text), ("runtime.workers".into(), Rule::Workers(0)));
        let text = format!("{BASE}\n[runtime]\nworkers = 2\n");
        let cfg = from_toml(&text, "t.toml").unwrap();
        assert_eq!(cfg.runtime.workers, 2);
        assert!(!cfg.listen.freebind);
        let text = BASE.replace(
            r#"udp = ["10.0.0.5:5060"]"#,
            "udp = [\"10.0.0.5:5060\"]\nfreebind = true",
        );
        assert!(from_toml(&text, "t.toml").unwrap().listen.freebind);
        assert_eq!(cfg.listen.recv_buffer, 4 << 20);
    }

    #[test]
    fn duration_errors_name_the_key() {
        let text = format!("{BASE}\n[failover]\nfr_timeout = \"2\"\n");
        let err = err(&text);
        assert_eq!(err.key(), Some("failover.fr_timeout"));
        assert!(err.to_string().contains("no unit"), "{err}");
        // A number instead of a string, and TOML's own syntax error for an
        // unquoted value, still name the key.
        let text = format!("{BASE}\n[failover]\nfr_timeout = 2\n");
        assert_eq!(err_key(&text), "failover.fr_timeout");
        let text = format!("{BASE}\n[failover]\nfr_timeout = 2s\n");
        assert_eq!(err_key(&text), "failover.fr_timeout");
    }

    fn err_key(text: &str) -> String {
        err(text).key().unwrap_or_default().to_owned()
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let text = BASE.replace("advertise =", "colour = 1\nadvertise =");
        assert_eq!(err_key(&text), "listen.colour");
        let text = BASE.replace(
            "uri = \"sip:10.0.1.11:5080\"",
            "uri = \"sip:10.0.1.11:5080\"\nwieght = 5",
        );
        assert_eq!(err_key(&text), "dispatcher.destination[1].wieght");
        let text = format!("{BASE}\n[websocket]\n");
        assert_eq!(err_key(&text), "websocket");
        // A known table missing a required key names that key.
        let text = format!("{BASE}\n[tls]\n");
        assert_eq!(err_key(&text), "tls.certificate");
    }

    #[test]
    fn advertised_aliases_are_ip_literals() {
        let with = |list: &str| {
            BASE.replace(
                "uri = \"sip:10.0.1.11:5080\"",
                &format!("uri = \"sip:10.0.1.11:5080\"\nadvertised = {list}"),
            )
        };
        let config = load(&with(r#"["203.0.113.10", "2001:db8::10"]"#)).unwrap();
        let dests = &config.dispatcher.destinations;
        assert!(dests[0].advertised.is_empty());
        assert_eq!(
            dests[1].advertised,
            [
                "203.0.113.10".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::10".parse().unwrap()
            ]
        );
        // A name, a port or brackets: refused, naming the element.
        for bad in [
            r#"["203.0.113.10", "fs1.example"]"#,
            r#"["203.0.113.10", "203.0.113.10:5060"]"#,
            r#"["203.0.113.10", "[2001:db8::10]"]"#,
            r#"["203.0.113.10", "203.0.113.256"]"#,
        ] {
            assert_eq!(
                err_key(&with(bad)),
                "dispatcher.destination[1].advertised[1]",
                "{bad}"
            );
        }
        assert_eq!(
            err_key(&with(r#""203.0.113.10""#)),
            "dispatcher.destination[1].advertised"
        );
    }

    #[test]
    fn missing_keys_are_named() {
        let text = BASE.replace("advertise = \"10.0.0.5\"", "");
        assert_eq!(err_key(&text), "listen.advertise");
        let text = BASE.replacen("uri = \"sip:10.0.1.11:5080\"", "priority = 1", 1);
        assert_eq!(err_key(&text), "dispatcher.destination[1].uri");
        assert_eq!(err_key("[dispatcher]\n"), "listen");
    }

    #[test]
    fn advertise_forms() {
        let hp = HostPort::parse("203.0.113.5:5070").unwrap();
        assert_eq!(hp.port, Some(5070));
        assert_eq!(hp.to_string(), "203.0.113.5:5070");
        let hp = HostPort::parse("2001:db8::5").unwrap();
        assert_eq!(hp.host, Host::Ip("2001:db8::5".parse().unwrap()));
        assert_eq!(hp.port, None);
        let hp = HostPort::parse("[2001:db8::5]:5070").unwrap();
        assert_eq!(hp.port, Some(5070));
        let hp = HostPort::parse("sip.example.com").unwrap();
        assert_eq!(hp.host, Host::Name("sip.example.com".into()));
        assert!(HostPort::parse("[2001:db8::5]x").is_err());
        assert!(HostPort::parse("").is_err());
        assert!(Host::Name("LocalHost.".into()).is_loopback());
        assert!(Host::Ip("::ffff:127.0.0.1".parse().unwrap()).is_loopback());
        assert!(Host::Ip("::ffff:0.0.0.0".parse().unwrap()).is_unspecified());
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = BASE.replace(r#""10.0.0.5""#, r#""0.0.0.0""#);
        let message = from_toml(&text, "/etc/sipedge/proxy.toml")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("/etc/sipedge/proxy.toml:4: listen.advertise: 0.0.0.0"),
            "{message}"
        );
        let message = err("[listen\n").to_string();
        assert!(message.starts_with("test.toml:1:"), "{message}");
    }

    #[test]
    fn summary_shows_effective_values() {
        let summary = load(BASE).unwrap().to_string();
        assert!(summary.contains("10.0.0.5:5060"), "{summary}");
        assert!(summary.contains("round-robin (Kamailio ds_select_dst 4)"));
        assert!(summary.contains("sip:10.0.1.11:5080"));
        assert!(summary.contains("fr_timeout 2s, fr_inv_timeout 120s"));
        assert!(summary.contains("ttl 2h, max 1000000"));
        assert!(
            summary.contains(
                "route hint      unauthenticated (no [cluster] secret): opaque under a built-in \
                 key, which hides node addresses from casual view only"
            ),
            "{summary}"
        );
        assert!(summary.contains("registry        off"), "{summary}");
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn cluster_secret_inline_or_from_a_file_and_never_shown() {
        assert_eq!(load(BASE).unwrap().cluster.secrets(), None);
        let text = format!("{BASE}[cluster]\nsecret = \"  {SECRET}\\n\"\n");
        let config = load(&text).unwrap();
        assert_eq!(
            config.cluster.secrets(),
            Some((SECRET.as_bytes(), None)),
            "trimmed"
        );
        assert!(!format!("{config:?}").contains(SECRET), "Debug hides it");
        assert!(config.to_string().contains(
            "route hint      authenticated by [cluster] secret, opaque (names no node address)\n"
        ));

        let dir = std::env::temp_dir().join(format!("sipedge-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("now.secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.join("old.secret"), "an older secret, 28 bytes..\n").unwrap();
        let text = format!(
            "{BASE}[cluster]\nsecret_file = \"now.secret\"\nprevious_secret_file = \"old.secret\"\n"
        );
        let config = from_toml_at(&text, "t.toml", &dir).unwrap();
        assert_eq!(
            config.cluster.secrets(),
            Some((
                SECRET.as_bytes(),
                Some(b"an older secret, 28 bytes..".as_slice())
            ))
        );
        assert!(config
            .to_string()
            .contains("(previous secret still accepted)"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cluster_secret_rules() {
        let with = |cluster: &str| format!("{BASE}[cluster]\n{cluster}\n");
        assert_eq!(
            rule(&with(&format!(
                "secret = \"{SECRET}\"\nsecret_file = \"/etc/sipedge/secret\""
            ))),
            (
                "cluster.secret_file".into(),
                Rule::SecretTwice("secret".into())
            )
        );
        assert_eq!(
            rule(&with("secret = \"  \"")),
            (
                "cluster.secret".into(),
                Rule::ShortSecret { len: 0, file: None }
            )
        );
        assert_eq!(
            rule(&with("secret = \"fifteen bytes..\"")).1,
            Rule::ShortSecret {
                len: 15,
                file: None
            }
        );
        assert!(load(&with("secret = \"sixteen bytes...\"")).is_ok());
        assert_eq!(
            rule(&with(&format!("previous_secret = \"{SECRET}\""))),
            (
                "cluster.previous_secret".into(),
                Rule::PreviousWithoutSecret
            )
        );
        assert_eq!(
            rule(&with(&format!(
                "secret = \"{SECRET}\"\nprevious_secret = \"short\""
            ))),
            (
                "cluster.previous_secret".into(),
                Rule::ShortSecret { len: 5, file: None }
            )
        );
        let (key, r) = rule(&with("secret_file = \"/nonexistent/sipedge.secret\""));
        assert_eq!(key, "cluster.secret_file");
        assert!(
            matches!(&r, Rule::SecretFile { file, .. } if file == "/nonexistent/sipedge.secret"),
            "{r:?}"
        );
        let message = err(&with("secret = \"short\"")).to_string();
        assert!(
            message.starts_with("test.toml:13: cluster.secret: 5 bytes is too short"),
            "{message}"
        );
    }

    #[test]
    fn the_registry_is_off_by_default_and_its_keys_are_checked() {
        let d = load(BASE).unwrap().dialogs;
        assert_eq!(d.registry, None);
        assert_eq!(d.registry_prefix, "call:");
        assert_eq!(d.registry_timeout, Duration::from_millis(300));
        assert_eq!(d.registry_queue, 10_000);
        let on = format!("{BASE}\n[dialogs]\nregistry = \"redis://:pw@10.0.0.9:6379/2\"\n");
        let summary = load(&on).unwrap().to_string();
        assert!(
            summary.contains(
                "registry        redis://:***@10.0.0.9:6379/2 (keys call:<Call-ID>, timeout 300ms"
            ),
            "{summary}"
        );
        assert!(!summary.contains("pw"), "{summary}");
        let text = format!("{on}registry_queue = 0\n");
        assert_eq!(
            rule(&text),
            ("dialogs.registry_queue".into(), Rule::ZeroRegistryQueue)
        );
        let text = format!("{on}registry_timeout = \"0s\"\n");
        assert_eq!(
            rule(&text),
            ("dialogs.registry_timeout".into(), Rule::ZeroDuration)
        );
        let text = format!("{BASE}\n[dialogs]\nregistry = \"10.0.0.9:6379\"\n");
        assert_eq!(rule(&text).0, "dialogs.registry");
    }
}
