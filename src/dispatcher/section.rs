//! The `[dispatcher]` section of the configuration: the pool and how a
//! node is picked. It lives here rather than in [`crate::config`] so that
//! the dispatcher does not import the config module, which reads
//! `dispatcher.list` files with [`super::list`]; `config` re-exports it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::{health, list};
use crate::value::{Host, SipUri};

/// `[dispatcher]`: the FreeSWITCH pool and how a node is picked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherConfig {
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    #[serde(default, rename = "destination")]
    pub destinations: Vec<Destination>,
    /// A Kamailio `dispatcher.list` read as-is instead of the
    /// `[[dispatcher.destination]]` entries (not both).
    #[serde(default)]
    pub list_file: Option<std::path::PathBuf>,
    /// The destination set that receives new calls from the trunk
    /// (`ds_select_dst(set, ...)`).
    #[serde(default = "default_set")]
    pub set: u32,
    /// A destination named by a host name without a port is located by
    /// SRV (`_sip._udp`, `_sip._tcp`, `_sips._tcp`; RFC 3263) rather than
    /// A/AAAA on the default port: Kamailio's `ds_dns_mode` bit 8.
    #[serde(default)]
    pub dns_srv: bool,
    /// The destinations were filled in from `list_file` (see
    /// `Config::load_list_file` in [`crate::config`]).
    #[serde(skip)]
    pub loaded_from_list: bool,
    /// The list file as errors name it (its path as read).
    #[serde(skip)]
    pub list_path: Option<String>,
    /// The list file's other sets: probed and shown by `dispatcher.list`,
    /// settable, but no trunk call goes to them.
    #[serde(skip)]
    pub other_sets: Vec<(u32, Vec<Destination>)>,
    /// Lines of other sets sipedge cannot use (a host name, TCP), each
    /// with its reason: left out, and worth a warning at start.
    #[serde(skip)]
    pub skipped: Vec<String>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            algorithm: default_algorithm(),
            destinations: Vec::new(),
            list_file: None,
            set: default_set(),
            dns_srv: false,
            loaded_from_list: false,
            list_path: None,
            other_sets: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

/// How a new INVITE picks its node, with Kamailio's `ds_select_dst`
/// algorithm numbers so operators can map their old config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Kamailio 4.
    RoundRobin,
    /// Kamailio 0: the same Call-ID always lands on the same node.
    HashCallid,
    /// Kamailio 8: highest `priority` first, the others only on failover.
    Priority,
    /// Kamailio 9: share of new calls by `weight`.
    Weight,
    /// Kamailio 10: the node with the fewest active calls (dialogs pinned
    /// to it); a node at its `maxload` gets none.
    CallLoad,
    /// Kamailio 11: share of new calls by `rweight`, spread over the nodes
    /// that take calls; with `congestion_control` the latency estimator
    /// lowers it.
    RelativeWeight,
    /// Kamailio 13: round-robin over the highest priority, each priority
    /// lowered by the node's estimated probe latency.
    Latency,
}

impl Algorithm {
    /// The `ds_select_dst` algorithm number Kamailio uses for the same thing.
    pub fn kamailio_number(self) -> u8 {
        match self {
            Algorithm::HashCallid => 0,
            Algorithm::RoundRobin => 4,
            Algorithm::Priority => 8,
            Algorithm::Weight => 9,
            Algorithm::CallLoad => 10,
            Algorithm::RelativeWeight => 11,
            Algorithm::Latency => 13,
        }
    }

    /// The algorithm Kamailio numbers `n` (`ds_select_dst(set, n)`), if
    /// sipedge has it.
    pub fn from_kamailio_number(n: u8) -> Option<Algorithm> {
        [
            Algorithm::HashCallid,
            Algorithm::RoundRobin,
            Algorithm::Priority,
            Algorithm::Weight,
            Algorithm::CallLoad,
            Algorithm::RelativeWeight,
            Algorithm::Latency,
        ]
        .into_iter()
        .find(|a| a.kamailio_number() == n)
    }

    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::HashCallid => "hash-callid",
            Algorithm::Priority => "priority",
            Algorithm::Weight => "weight",
            Algorithm::CallLoad => "call-load",
            Algorithm::RelativeWeight => "relative-weight",
            Algorithm::Latency => "latency",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[dispatcher.destination]]`: a FreeSWITCH node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub uri: SipUri,
    /// Higher is tried first, as in Kamailio's `dispatcher.list`.
    #[serde(default)]
    pub priority: i32,
    /// 1..=100, used by [`Algorithm::Weight`] (Kamailio attr `weight=`).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Most active calls for [`Algorithm::CallLoad`] (Kamailio attr
    /// `maxload=`); none: no limit.
    #[serde(default)]
    pub maxload: Option<u32>,
    /// 1..=100, used by [`Algorithm::RelativeWeight`] (Kamailio attr
    /// `rweight=`).
    #[serde(default)]
    pub rweight: Option<u32>,
    /// Kamailio attr `cc=1`: algorithm 11 takes `weight` minus the node's
    /// congestion (estimated latency above its average, ms) as its
    /// relative weight, and algorithm 13 that congestion as its latency.
    #[serde(default)]
    pub congestion_control: bool,
    /// From URI of this node's probes (dispatcher.list attr `ping_from`).
    #[serde(default)]
    pub ping_from: Option<String>,
    /// The node also takes SIP over TCP: requests larger than
    /// `listen.udp_mtu` go to it by TCP (RFC 3261 §18.1.1).
    #[serde(default)]
    pub tcp: bool,
    /// Addresses besides its own that the node may put in its Contact and
    /// SDP `c=` lines (a public or VIP address); anything else in a 2xx is
    /// logged and counted as misadvertised.
    #[serde(default)]
    pub advertised: Vec<IpAddr>,
    /// Over TLS: check the node's certificate (RFC 5922). `false` accepts
    /// any certificate: lab use only, logged as a warning at start and on
    /// every reload (dispatcher.list attr `tls_verify=0`).
    #[serde(default = "default_tls_verify")]
    pub tls_verify: bool,
    /// Over TLS: the name the node's certificate must carry, sent as SNI
    /// (dispatcher.list attr `tls_server_name=`). Without it the node's IP
    /// address must be in the certificate (an iPAddress SAN), and no SNI is
    /// sent.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// The dispatcher.list `flags` column this node starts with (1
    /// inactive, 2 trying, 4 disabled, 8 probing); a TOML destination
    /// starts active and probed.
    #[serde(skip, default = "default_list_flags")]
    pub list_flags: u32,
    /// The dispatcher.list attributes column, shown by `dispatcher.list`.
    #[serde(skip)]
    pub attrs: Option<list::Attrs>,
    /// The URI as the dispatcher.list line wrote it (user part and
    /// parameters kept, `sip:` added to a scheme-less one): what
    /// `dispatcher.list` shows, `set_state` matches and probes are sent
    /// to, as in Kamailio. Routing only uses `uri`'s host and port.
    #[serde(skip)]
    pub written: Option<String>,
    /// Its dispatcher.list line, for errors found after the file was read.
    #[serde(skip)]
    pub line: Option<usize>,
    /// Where its host name resolved to when the config was read (A/AAAA,
    /// or SRV with `dns_srv`); `None` for an IP literal.
    #[serde(skip)]
    pub resolved: Option<SocketAddr>,
}

fn default_tls_verify() -> bool {
    true
}

fn default_list_flags() -> u32 {
    health::Status::ACTIVE_PROBING.to_list_flags()
}

impl Destination {
    /// A node at `uri` with the defaults: priority 0, no weight, probed.
    pub fn new(uri: SipUri) -> Destination {
        Destination {
            uri,
            priority: 0,
            weight: None,
            maxload: None,
            rweight: None,
            congestion_control: false,
            ping_from: None,
            tcp: false,
            advertised: Vec::new(),
            tls_verify: true,
            tls_server_name: None,
            list_flags: default_list_flags(),
            attrs: None,
            written: None,
            line: None,
            resolved: None,
        }
    }

    /// Where it is reached: its IP literal and port, or the address its
    /// host name resolved to; `None` for a name not resolved (yet).
    pub fn addr(&self) -> Option<SocketAddr> {
        match &self.uri.host {
            Host::Ip(ip) => Some(SocketAddr::new(*ip, self.uri.port_or_default())),
            Host::Name(_) => self.resolved,
        }
    }

    /// What to ask DNS for its host name (none for an IP literal): A/AAAA
    /// on the URI's port, or with `srv` and no port in the URI, SRV first
    /// (RFC 3263 §4.2).
    pub fn dns_target(&self, srv: bool) -> Option<crate::dns::Target> {
        self.host_name().map(|name| crate::dns::Target {
            host: name.into(),
            port: match self.uri.port {
                None if srv => None,
                _ => Some(self.uri.port_or_default()),
            },
            transport: self.uri.transport.unwrap_or_default(),
        })
    }

    /// Its host name, when it has one rather than an IP literal.
    pub fn host_name(&self) -> Option<&str> {
        match &self.uri.host {
            Host::Name(name) => Some(name),
            Host::Ip(_) => None,
        }
    }
}

fn default_algorithm() -> Algorithm {
    Algorithm::RoundRobin
}

fn default_set() -> u32 {
    1
}
