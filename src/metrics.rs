//! The Prometheus metrics of sipedge, served as text by the admin
//! `/metrics` endpoint.
//!
//! Every metric name is a documented `pub const` below, so the dashboard
//! (`deploy/grafana/sipedge.json`), alerts and tests refer to one spelling.
//! Label values come from the enums of this module, never from the network:
//! a sender cannot create series (an unknown SIP method is counted as
//! `other`). The series of fixed label sets are resolved once in
//! [`Metrics::new`], so counting on the hot path is one atomic add, without
//! hashing or allocation, and each of them is exported from the start at 0
//! (a `rate()` over a series that appears late misses its first increments).
//!
//! Each [`Metrics`] owns its [`Registry`] instead of the process-wide
//! default one, so tests can build as many as they like.
//!
//! Per-node series carry `set` and `uri` labels, bounded by the
//! configuration: [`Metrics::register_destination`] creates them and
//! [`Metrics::remove_destination`] drops them when a reload removes the
//! node. The `sipedge_destination_*` and `sipedge_probe_*` families appear
//! once a destination is registered.

use std::marker::PhantomData;
use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::dialog::Removal;
use crate::dispatcher::health::{ProbeResult, State};
use crate::dispatcher::latency::LatencyStats;
use crate::sip::{Method, SipError};
use crate::transport::tls::{CertExpiry, CrlUpdate, Handshake};

mod process;

/// Whether a destination takes new calls: 1 when its state is `active` or
/// `trying` (Kamailio's `ds_select_dst` still selects a trying node), else
/// 0. Labels: `set`, `uri`.
pub const DESTINATION_UP: &str = "sipedge_destination_up";
/// The state of a destination as a one-hot gauge: 1 on the series of the
/// current state, 0 on the others. Labels: `set`, `uri`, `state`
/// ([`State`]).
pub const DESTINATION_STATE: &str = "sipedge_destination_state";
/// Dialogs pinned to a destination: what a drain of that node waits for.
/// Labels: `set`, `uri`.
pub const DESTINATION_CALLS_ACTIVE: &str = "sipedge_destination_calls_active";
/// 1 when a destination is out of rotation (inactive) and not probed under
/// `[probe] mode` and its flags: nothing brings it back but an operator
/// (`dispatcher.set_state`), so it deserves an alert. Labels: `set`, `uri`.
pub const DESTINATION_STRANDED: &str = "sipedge_destination_stranded";
/// OPTIONS probes sent to a destination, by outcome. Labels: `set`, `uri`,
/// `result` ([`ProbeLabel`]).
pub const PROBE_TOTAL: &str = "sipedge_probe_total";
/// Round trip of the answered OPTIONS probes. Labels: `set`, `uri`.
/// Buckets: [`PROBE_BUCKETS`].
pub const PROBE_DURATION_SECONDS: &str = "sipedge_probe_duration_seconds";
/// A destination's OPTIONS round-trip statistics (Kamailio's `LATENCY`
/// in `dispatcher.list`), in seconds: average, standard deviation, the
/// EWMA estimator and the maximum. Labels: `set`, `uri`, `stat`
/// ([`LatencyStat`]). Kept across a reload for nodes that stay; 0 until
/// the first answer, and always 0 with `[probe] latency_stats = false`.
pub const DESTINATION_LATENCY_SECONDS: &str = "sipedge_destination_latency_seconds";
/// Probes of a destination that got no answer in time, or a 408
/// (Kamailio's `LATENCY.TIMEOUT`). Labels: `set`, `uri`.
pub const DESTINATION_PROBE_TIMEOUTS_TOTAL: &str = "sipedge_destination_probe_timeouts_total";
/// Requests received, by method. Label: `method` ([`MethodLabel`]).
pub const REQUESTS_TOTAL: &str = "sipedge_requests_total";
/// Responses sent, relayed from a node or a trunk and answered by sipedge
/// itself. Labels: `class` ([`ResponseClass`]), `origin`
/// ([`ResponseOrigin`]).
pub const RESPONSES_TOTAL: &str = "sipedge_responses_total";
/// New INVITEs moved on to the next node. Label: `reason`
/// ([`FailoverReason`]).
pub const FAILOVERS_TOTAL: &str = "sipedge_failovers_total";
/// Forwarded requests (not new INVITEs) sipedge answered upstream itself
/// because the next hop did not: 408 on timeout, 503 on a transport error.
/// Label: `reason` ([`ForwardFailure`]).
pub const FORWARD_FAILURES_TOTAL: &str = "sipedge_forward_failures_total";
/// INVITEs answered with a final error by sipedge itself. Label: `reason`
/// ([`RejectReason`]).
pub const INVITES_REJECTED_TOTAL: &str = "sipedge_invites_rejected_total";
/// Messages dropped without an answer. Label: `reason` ([`DropReason`]).
pub const DROPPED_MESSAGES_TOTAL: &str = "sipedge_dropped_messages_total";
/// Entries in the Call-ID -> node table.
pub const DIALOGS: &str = "sipedge_dialogs";
/// Entries that left the Call-ID -> node table, or were never stored. Label:
/// `reason` ([`EvictReason`]).
pub const DIALOGS_EVICTED_TOTAL: &str = "sipedge_dialogs_evicted_total";
/// Client transactions alive (forwarded requests awaiting or lingering on
/// their answer).
pub const TRANSACTIONS: &str = "sipedge_transactions";
/// Time from a new INVITE's arrival to the first final response relayed
/// for it, failovers included. Buckets: [`INVITE_SETUP_BUCKETS`].
pub const INVITE_SETUP_SECONDS: &str = "sipedge_invite_setup_seconds";
/// Always 1; the `version` label tells which build answers the scrape.
pub const BUILD_INFO: &str = "sipedge_build_info";
/// SIP over TCP connections open now, inbound and outgoing.
pub const TCP_CONNECTIONS: &str = "sipedge_tcp_connections";
/// What happened to TCP connections. Label: `event` ([`TcpEvent`]).
pub const TCP_EVENTS_TOTAL: &str = "sipedge_tcp_events_total";
/// A pool node's 2xx answers to an INVITE that advertise an address no
/// peer can use: a wildcard, a loopback one (from a node not on loopback),
/// or neither the node's own nor one of its `advertised` aliases. Such a
/// call connects and then carries no media (a fax sends zero pages).
/// Labels: `uri` (the node's configured URI), `where` ([`AdvertisedIn`]).
pub const NODE_MISADVERTISED_TOTAL: &str = "sipedge_node_misadvertised_total";
/// Operations on the shared call registry (`[dialogs] registry`), by
/// outcome. Labels: `op` (`get`, `set`, `del`; `state`: an operator's
/// `dispatcher.set_state` shared, or the states read back when
/// subscribing), `result` (`ok`; `miss` and
/// `foreign`, an entry naming no pool member, for reads; `error`,
/// `timeout`; `dropped`: the write queue was full, or too many reads were
/// waiting). Exported only with a registry configured.
pub const REGISTRY_OPERATIONS_TOTAL: &str = "sipedge_registry_operations_total";
/// 1 when the shared call registry answered its last operation, 0 when
/// that failed or timed out (or nothing was asked yet). Exported only with
/// a registry configured.
pub const REGISTRY_UP: &str = "sipedge_registry_up";
/// What the admin listener refused or cut short: requests without the
/// `[admin]` bearer token (answered 401), connections closed to make room
/// at its connection cap; on the BINRPC ctl sockets, bytes that were not
/// a request (answered with a 400 fault) and connections refused at their
/// cap. Label: `event` ([`AdminEvent`]).
pub const ADMIN_EVENTS_TOTAL: &str = "sipedge_admin_events_total";
/// ICMP errors read for datagrams sipedge sent over UDP, by what was made
/// of them. Only those from the destination's own address fail the
/// transaction in flight over (and make a node suspect); the others are
/// ignored, and a rising `forged` count is someone forging ICMP. Label:
/// `result` ([`IcmpResult`]).
pub const ICMP_ERRORS_TOTAL: &str = "sipedge_icmp_errors_total";
/// TLS handshakes by outcome. Labels: `direction` (`inbound`: on our TLS
/// listeners; `outbound`: connections we open to nodes and trunks),
/// `result` (`ok`, `failed`, `timeout`) and `reason` (`none` for `ok`;
/// `timeout`; for `failed`: `no_certificate`, `bad_certificate`,
/// `unknown_ca`, `wrong_name` (outbound: RFC 5922 identity), `expired`,
/// `revoked`, `alert` (the peer refused us), `protocol`, `closed`,
/// `limit`, `other`: [`crate::transport::tls::Handshake`]).
pub const TLS_HANDSHAKES_TOTAL: &str = "sipedge_tls_handshakes_total";
/// SIP over TLS connections open now (handshake done). Label: `direction`.
pub const TLS_CONNECTIONS: &str = "sipedge_tls_connections";
/// Seconds until each configured certificate file stops being valid (the
/// earliest `notAfter` in it; negative once expired), as of the scrape.
/// Labels: `certificate` (`server`: `[tls] certificate`; `client_ca`:
/// `[tls] client_ca`; `client`: `[tls] client_certificate`), `file`. The files in force: set at start, replaced
/// on a reload.
pub const TLS_CERTIFICATE_EXPIRY_SECONDS: &str = "sipedge_tls_certificate_expiry_seconds";
/// Seconds until `[tls] crl` goes stale (the earliest `nextUpdate` of its
/// CRLs; negative once past, when every client of that CA is refused with
/// `reason="crl_expired"` until a fresh file is reloaded), as of the
/// scrape. Label: `file`. Absent without a CRL, or when no CRL in the
/// file has a `nextUpdate`.
pub const TLS_CRL_NEXT_UPDATE_SECONDS: &str = "sipedge_tls_crl_next_update_seconds";
/// New INVITEs sent to a destination: each try of a call counts once on
/// its node, so a call that failed over from A to B counts on both.
/// `rate()` of it is the calls per second per node. Labels: `set`, `uri`.
pub const DESTINATION_CALLS_TOTAL: &str = "sipedge_destination_calls_total";
/// How each try counted in [`DESTINATION_CALLS_TOTAL`] ended on its node.
/// Labels: `set`, `uri`, `outcome` ([`CallOutcome`]). Every try ends in
/// one outcome once decided, but for one rare case: a node failed over
/// from that answers 2xx after all counts `failed_over` and `answered`,
/// and the try it overtook (cancelled) counts none.
pub const DESTINATION_CALL_OUTCOMES_TOTAL: &str = "sipedge_destination_call_outcomes_total";
/// Requests of every method sipedge answered with a final error itself,
/// by reason: the INVITEs of [`INVITES_REJECTED_TOTAL`] and the others (a
/// BYE for a dialog nobody knows: `unknown_dialog`). The 487 to an INVITE
/// the caller cancelled is the caller's choice, not counted. Label:
/// `reason` ([`RejectReason`]).
pub const REQUESTS_REJECTED_TOTAL: &str = "sipedge_requests_rejected_total";
/// The cap on entries of the Call-ID -> node table (`[dialogs] max`):
/// compare [`DIALOGS`] with it.
pub const DIALOGS_MAX: &str = "sipedge_dialogs_max";

/// Total user and system CPU time of the process, in seconds (the name,
/// type and help of Prometheus' client libraries, as all the `process_*`
/// below).
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Resident memory in bytes.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Virtual memory size in bytes.
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// Open file descriptors (sockets and TCP connections included).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The soft RLIMIT_NOFILE: where accepts start failing with EMFILE.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// When the process started, in seconds since the epoch.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// OS threads of the process.
pub const PROCESS_THREADS: &str = "process_threads";

/// With `[metrics] kamailio_names = true`: each destination as
/// kamailio_exporter's `dispatcher.list` collector shows it, so the
/// dashboards and alerts written for a Kamailio dispatcher work as they
/// are: always 1, labels `setid`, `uri` (as `dispatcher.list` shows it)
/// and `flags` (its FLAGS: `AP`, `IP`, `DX`...).
pub const KAMAILIO_DISPATCHER_LIST_TARGET: &str = "kamailio_dispatcher_list_target";

/// The `process_*` families (Linux): not sipedge's own names, so apart
/// from [`ALL_NAMES`].
pub const PROCESS_NAMES: &[&str] = &[
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_BYTES,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME_SECONDS,
    PROCESS_THREADS,
];

/// HEP packets sent to the `[capture]` collector.
pub const CAPTURE_SENT_TOTAL: &str = "sipedge_capture_sent_total";
/// Captured messages never sent to the collector. Label: `reason`
/// ([`CaptureDrop`]). Zero without `[capture]`.
pub const CAPTURE_DROPPED_TOTAL: &str = "sipedge_capture_dropped_total";

/// Every metric name above, for tests and tools that check an exposition.
pub const ALL_NAMES: &[&str] = &[
    DESTINATION_UP,
    DESTINATION_STATE,
    DESTINATION_CALLS_ACTIVE,
    DESTINATION_STRANDED,
    PROBE_TOTAL,
    PROBE_DURATION_SECONDS,
    DESTINATION_LATENCY_SECONDS,
    DESTINATION_PROBE_TIMEOUTS_TOTAL,
    REQUESTS_TOTAL,
    RESPONSES_TOTAL,
    FAILOVERS_TOTAL,
    FORWARD_FAILURES_TOTAL,
    INVITES_REJECTED_TOTAL,
    DROPPED_MESSAGES_TOTAL,
    DIALOGS,
    DIALOGS_EVICTED_TOTAL,
    TRANSACTIONS,
    INVITE_SETUP_SECONDS,
    BUILD_INFO,
    TCP_CONNECTIONS,
    TCP_EVENTS_TOTAL,
    NODE_MISADVERTISED_TOTAL,
    REGISTRY_OPERATIONS_TOTAL,
    REGISTRY_UP,
    ADMIN_EVENTS_TOTAL,
    ICMP_ERRORS_TOTAL,
    TLS_HANDSHAKES_TOTAL,
    TLS_CONNECTIONS,
    TLS_CERTIFICATE_EXPIRY_SECONDS,
    TLS_CRL_NEXT_UPDATE_SECONDS,
    DESTINATION_CALLS_TOTAL,
    DESTINATION_CALL_OUTCOMES_TOTAL,
    REQUESTS_REJECTED_TOTAL,
    DIALOGS_MAX,
    CAPTURE_SENT_TOTAL,
    CAPTURE_DROPPED_TOTAL,
];

/// Buckets of [`PROBE_DURATION_SECONDS`]: an OPTIONS round trip on a LAN
/// is about a millisecond; seconds mean a node that is about to time out.
pub const PROBE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
];

/// Buckets of [`INVITE_SETUP_SECONDS`]: a FreeSWITCH fax endpoint answers
/// in milliseconds, a failover adds `fr_timeout` (2 s by default), a call
/// that rings adds seconds more.
pub const INVITE_SETUP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The content type of [`Metrics::encode`]'s output, for the HTTP answer.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Why the metrics could not be set up. Names and labels are constants, so
/// this means a programming error; it is still an error, not a panic.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metric's options (name, labels, buckets) were refused.
    #[error("cannot define metric {metric}: {source}")]
    Define {
        metric: &'static str,
        source: prometheus::Error,
    },
    /// The registry refused it, e.g. a name registered twice.
    #[error("cannot register metric {metric}: {source}")]
    Register {
        metric: &'static str,
        source: prometheus::Error,
    },
    /// A series could not be created (wrong number of label values).
    #[error("cannot create a series of metric {metric}: {source}")]
    Series {
        metric: &'static str,
        source: prometheus::Error,
    },
}

/// A label enum: a fixed list of values whose position in `ALL` is the
/// index of its pre-resolved series.
trait Label: Copy + 'static {
    const VALUES: &'static [Self];
    /// The generic spelling of `as_str`, for the tests.
    #[cfg(test)]
    fn label(self) -> &'static str;
    fn index(self) -> usize;
}

/// Declares a label enum with `ALL` and `as_str()`; each variant names its
/// label value.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value written in the exposition.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }
        }

        impl Label for $name {
            const VALUES: &'static [Self] = $name::ALL;

            #[cfg(test)]
            fn label(self) -> &'static str {
                self.as_str()
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// A destination's state labels its series: `active`, `trying`,
/// `inactive`, `disabled` (the health machine's own names).
impl Label for State {
    const VALUES: &'static [Self] = State::ALL;

    #[cfg(test)]
    fn label(self) -> &'static str {
        self.as_str()
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An inbound TLS handshake's outcome labels its series by `result` and
/// `reason` (the transport's own fixed set).
impl Label for Handshake {
    const VALUES: &'static [Self] = &Handshake::ALL;

    #[cfg(test)]
    fn label(self) -> &'static str {
        self.reason()
    }

    fn index(self) -> usize {
        Handshake::index(self)
    }
}

label_enum! {
    /// The `result` label of one OPTIONS probe: the health machine's
    /// [`ProbeResult`] with the verdict on its reply code.
    pub enum ProbeLabel {
        /// Answered with a code that counts as alive.
        Ok => "ok",
        /// No answer within the probe timeout.
        Timeout => "timeout",
        /// Answered, with a code that does not count as alive.
        BadCode => "bad_code",
        /// The probe could not be sent (e.g. ICMP port unreachable).
        TransportError => "transport_error",
    }
}

impl ProbeLabel {
    /// The label of `result`; `alive`: its reply code counts as alive
    /// (`reply_codes`).
    pub fn of(result: ProbeResult, alive: bool) -> ProbeLabel {
        match result {
            ProbeResult::Reply(_) if alive => ProbeLabel::Ok,
            ProbeResult::Reply(_) => ProbeLabel::BadCode,
            ProbeResult::Timeout(_) => ProbeLabel::Timeout,
            ProbeResult::TransportError => ProbeLabel::TransportError,
        }
    }
}

label_enum! {
    /// The `stat` label of [`DESTINATION_LATENCY_SECONDS`].
    pub enum LatencyStat {
        Avg => "avg",
        Std => "std",
        Est => "est",
        Max => "max",
    }
}

label_enum! {
    /// The `method` label: the methods of RFC 3261 and its extensions that
    /// a FreeSWITCH pool sees; anything else is `Other`, so the number of
    /// series stays fixed whatever a sender writes.
    pub enum MethodLabel {
        Invite => "INVITE",
        Ack => "ACK",
        Bye => "BYE",
        Cancel => "CANCEL",
        Options => "OPTIONS",
        Register => "REGISTER",
        Prack => "PRACK",
        Update => "UPDATE",
        Info => "INFO",
        Refer => "REFER",
        Notify => "NOTIFY",
        Subscribe => "SUBSCRIBE",
        Message => "MESSAGE",
        Publish => "PUBLISH",
        /// An extension method, or a known one in another case (methods are
        /// case-sensitive, RFC 3261 §7.1).
        Other => "other",
    }
}

impl MethodLabel {
    /// Classifies a method token as received.
    pub fn from_token(token: &[u8]) -> MethodLabel {
        Method::from_bytes(token).into()
    }
}

impl From<Method<'_>> for MethodLabel {
    fn from(m: Method<'_>) -> MethodLabel {
        match m {
            Method::Invite => MethodLabel::Invite,
            Method::Ack => MethodLabel::Ack,
            Method::Bye => MethodLabel::Bye,
            Method::Cancel => MethodLabel::Cancel,
            Method::Options => MethodLabel::Options,
            Method::Register => MethodLabel::Register,
            Method::Prack => MethodLabel::Prack,
            Method::Update => MethodLabel::Update,
            Method::Info => MethodLabel::Info,
            Method::Refer => MethodLabel::Refer,
            Method::Notify => MethodLabel::Notify,
            Method::Subscribe => MethodLabel::Subscribe,
            Method::Message => MethodLabel::Message,
            Method::Publish => MethodLabel::Publish,
            Method::Extension(_) => MethodLabel::Other,
        }
    }
}

impl From<&[u8]> for MethodLabel {
    fn from(token: &[u8]) -> MethodLabel {
        MethodLabel::from_token(token)
    }
}

label_enum! {
    /// The `class` label of a response: its status code's first digit.
    pub enum ResponseClass {
        Provisional => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
        GlobalFailure => "6xx",
    }
}

impl ResponseClass {
    /// The class of a status code; `None` outside 100..=699.
    pub fn from_status(code: u16) -> Option<ResponseClass> {
        match code {
            100..=199 => Some(ResponseClass::Provisional),
            200..=299 => Some(ResponseClass::Success),
            300..=399 => Some(ResponseClass::Redirection),
            400..=499 => Some(ResponseClass::ClientError),
            500..=599 => Some(ResponseClass::ServerError),
            600..=699 => Some(ResponseClass::GlobalFailure),
            _ => None,
        }
    }
}

label_enum! {
    /// Who wrote a response sipedge sent.
    pub enum ResponseOrigin {
        /// A node's or a trunk's response passed on.
        Relayed => "relayed",
        /// Answered by sipedge itself (100 Trying, 481, 503...).
        Local => "local",
    }
}

label_enum! {
    /// Why a new INVITE moved on to the next node.
    pub enum FailoverReason {
        /// No reply at all within `fr_timeout`.
        Timeout => "timeout",
        /// A final reply with one of the failover codes (5xx by default).
        Code => "code",
        /// The INVITE could not be sent to the node.
        Transport => "transport",
    }
}

label_enum! {
    /// Why a forwarded request got a local answer upstream.
    pub enum ForwardFailure {
        /// No final within `fr_timeout` (`fr_inv_timeout` after a
        /// provisional to an INVITE, Timer F otherwise): 408.
        Timeout => "timeout",
        /// ICMP unreachable, a refused connect or a send error: 503.
        Transport => "transport",
    }
}

label_enum! {
    /// Why sipedge answered a request (an INVITE for
    /// [`INVITES_REJECTED_TOTAL`], any for [`REQUESTS_REJECTED_TOTAL`])
    /// with a final error itself; each is some `proxy::rescue::Refusal`'s
    /// label. No `loop` (482): loops end
    /// at Max-Forwards 0, loop detection being optional (RFC 3261 §16.3).
    pub enum RejectReason {
        /// No node left to try (503).
        AllDown => "all_down",
        /// Max-Forwards reached 0 (483).
        MaxForwards => "max_forwards",
        /// The request failed validation (400).
        Malformed => "malformed",
        /// Not SIP/2.0 (505).
        UnsupportedVersion => "unsupported_version",
        /// Over the size cap (513).
        TooLarge => "too_large",
        /// sipedge is draining (503).
        ShuttingDown => "shutting_down",
        /// A Request-URI scheme other than sip/sips (416).
        UnsupportedUri => "unsupported_uri",
        /// A Proxy-Require extension we do not support (420).
        BadExtension => "bad_extension",
        /// An in-dialog request (a re-INVITE, a BYE...) or a CANCEL for a
        /// dialog or transaction nobody knows (481).
        UnknownDialog => "unknown_dialog",
        /// An in-dialog request only our Record-Route's node hint would route, whose
        /// MAC does not verify with `[cluster] secret`: missing, forged,
        /// cut, or made for another Call-ID (481).
        BadRouteHint => "bad_route_hint",
        /// The host name a node's request goes to did not resolve (478).
        Unresolvable => "unresolvable",
        /// No final answer in time (408): `fr_inv_timeout` after the node
        /// rang, or a forwarded request's next hop stayed silent.
        Timeout => "timeout",
        /// A forwarded request's next hop could not be reached (503).
        Unreachable => "unreachable",
        /// From a source `[security] trusted` does not list (403).
        Forbidden => "forbidden",
        /// `[limits] transactions` reached (503 with Retry-After).
        Overload => "overload",
        /// A node's INVITE whose Request-URI has nowhere further to go, e.g.
        /// sipedge itself (404).
        NoRoute => "no_route",
    }
}

impl From<SipError> for RejectReason {
    /// The reason for a request answered by `rescue` with
    /// [`SipError::status`].
    fn from(e: SipError) -> RejectReason {
        match e {
            SipError::TooManyHops => RejectReason::MaxForwards,
            SipError::UnsupportedVersion => RejectReason::UnsupportedVersion,
            SipError::TooLarge => RejectReason::TooLarge,
            _ => RejectReason::Malformed,
        }
    }
}

label_enum! {
    /// Why a message was dropped without an answer.
    pub enum DropReason {
        /// Did not parse, and too broken to answer.
        Unparsable => "unparsable",
        /// Parsed but invalid, and not answerable (an ACK, no usable Via).
        Malformed => "malformed",
        /// A response whose next hop cannot be read from its Via.
        NoRouteForResponse => "no_route_for_response",
        /// A response matching no transaction of ours.
        StrayResponse => "stray_response",
        /// A response with one of our branches from a source its request
        /// did not go to (not the node, its `advertised` addresses or its
        /// connection; for a carrier, not it or a `[security] trusted`
        /// network): a forgery, never acted on.
        ForeignResponse => "foreign_response",
        /// The socket refused to send it.
        SendError => "send_error",
        /// From a source `[security] trusted` does not list (with
        /// `silent_drop`, or an ACK).
        Untrusted => "untrusted",
        /// A scanner's User-Agent (`[security] block_user_agents`).
        Scanner => "scanner",
        /// From a source over `[security] rate_limit`, or blocked by it.
        RateLimited => "rate_limited",
    }
}

label_enum! {
    /// Something that happened to a TCP connection.
    pub enum TcpEvent {
        /// An inbound connection was accepted.
        Accepted => "accepted",
        /// An inbound connection was refused: `[tcp] max_connections`.
        RefusedCap => "refused_cap",
        /// An inbound connection was refused: its source had `[tcp]
        /// max_connections_per_source` open.
        RefusedPerSource => "refused_per_source",
        /// An inbound connection from an untrusted source was refused: only
        /// the `[tcp] reserved_trusted` slots were left.
        RefusedReserved => "refused_reserved",
        /// An outgoing connection was established.
        Connected => "connected",
        /// An outgoing connect failed or timed out (a transport failure:
        /// the INVITE failed over).
        ConnectFailed => "connect_failed",
        /// Closed on a message whose framing was invalid.
        ClosedMalformed => "closed_malformed",
        /// Closed on a message over the size cap.
        ClosedOversized => "closed_oversized",
        /// Closed by `[tcp] idle_timeout`.
        ClosedIdle => "closed_idle",
        /// Closed on a message not whole within `[tcp] message_timeout` of
        /// its first byte (a slowloris).
        ClosedSlow => "closed_slow",
        /// A send refused: the peer is not reading fast enough.
        SendQueueFull => "send_queue_full",
    }
}

label_enum! {
    /// Why a captured message did not reach the HEP collector
    /// ([`CAPTURE_DROPPED_TOTAL`]).
    pub enum CaptureDrop {
        /// The capture queue was full (the collector, or the capture task,
        /// is not keeping up); never waited for.
        QueueFull => "queue_full",
        /// The collector could not be reached: not connected (TCP, between
        /// reconnects), unresolvable, or a send failed.
        Collector => "collector",
        /// Too large for one HEP packet (65535 bytes).
        TooLarge => "too_large",
    }
}

label_enum! {
    /// Something the admin listener refused or cut short
    /// ([`ADMIN_EVENTS_TOTAL`]).
    pub enum AdminEvent {
        /// A request that needs the token came without one: 401.
        TokenMissing => "token_missing",
        /// A request that needs the token came with another one: 401.
        TokenWrong => "token_wrong",
        /// At the connection cap, the oldest connection (an idle one
        /// first) was closed so a new client, a health check say, gets in.
        ConnectionEvicted => "connection_evicted",
        /// A ctl socket got bytes that are not a BINRPC request, or one
        /// over its size cap: a 400 fault.
        CtlBadRequest => "ctl_bad_request",
        /// A ctl socket was at its connection cap: the new one closed.
        CtlConnectionRefused => "ctl_connection_refused",
    }
}

label_enum! {
    /// What an ICMP error was taken for ([`ICMP_ERRORS_TOTAL`]).
    pub enum IcmpResult {
        /// From the destination's own address: acted on.
        Accepted => "accepted",
        /// From another address (forged, or a router's): ignored.
        Forged => "forged",
        /// An error of our own side or one that says nothing about
        /// reachability (e.g. "fragmentation needed"): ignored.
        Other => "other",
    }
}

impl From<crate::transport::IcmpVerdict> for IcmpResult {
    fn from(v: crate::transport::IcmpVerdict) -> IcmpResult {
        use crate::transport::IcmpVerdict as V;
        match v {
            V::Accepted => IcmpResult::Accepted,
            V::Forged => IcmpResult::Forged,
            V::Other => IcmpResult::Other,
        }
    }
}

label_enum! {
    /// Where a node's 2xx advertised an address ([`NODE_MISADVERTISED_TOTAL`]).
    pub enum AdvertisedIn {
        /// The Contact URI: where the trunk sends the call's in-dialog
        /// requests (the T.38 re-INVITE, BYE).
        Contact => "contact",
        /// An SDP `c=` line: where the media (RTP, T.38 UDPTL) goes.
        Sdp => "sdp",
    }
}

label_enum! {
    /// Why an entry left the Call-ID -> node table, or never entered it.
    pub enum EvictReason {
        /// Its TTL passed.
        Ttl => "ttl",
        /// The BYE was answered.
        Bye => "bye",
        /// The table was at its cap: the new Call-ID was not stored.
        Cap => "cap",
        /// The INVITE failed: the dialog never started.
        Failed => "failed",
    }
}

label_enum! {
    /// How a try of a new INVITE ended on its node
    /// ([`DESTINATION_CALL_OUTCOMES_TOTAL`]).
    pub enum CallOutcome {
        /// The node answered 2xx: the call is its.
        Answered => "answered",
        /// The call moved on to the next node: no answer within
        /// `fr_timeout`, a failover code, a transport error (the
        /// per-node side of [`FAILOVERS_TOTAL`]).
        FailedOver => "failed_over",
        /// The node's own final error (not a failover code, or after it
        /// rang) went to the caller: busy, declined, not found...
        Rejected => "rejected",
        /// The node rang but sent no final answer within
        /// `fr_inv_timeout`: sipedge answered 408.
        Timeout => "timeout",
        /// The caller cancelled before the node answered finally (its 487,
        /// or sipedge's).
        Cancelled => "cancelled",
    }
}

impl From<Removal> for EvictReason {
    fn from(r: Removal) -> EvictReason {
        match r {
            Removal::Bye => EvictReason::Bye,
            Removal::Failed => EvictReason::Failed,
        }
    }
}

/// One pre-resolved series per value of a label enum.
#[derive(Debug, Clone)]
struct PerLabel<E, M> {
    series: Box<[M]>,
    _label: PhantomData<fn(E)>,
}

impl<E: Label, M> PerLabel<E, M> {
    fn resolve(
        metric: &'static str,
        series: impl Fn(E) -> prometheus::Result<M>,
    ) -> Result<Self, MetricsError> {
        let series = E::VALUES
            .iter()
            .map(|&e| series(e).map_err(|source| MetricsError::Series { metric, source }))
            .collect::<Result<_, _>>()?;
        Ok(PerLabel {
            series,
            _label: PhantomData,
        })
    }

    /// Always `Some`: `series` has one entry per value, in `VALUES` order.
    fn get(&self, e: E) -> Option<&M> {
        self.series.get(e.index())
    }

    fn iter(&self) -> impl Iterator<Item = (E, &M)> {
        E::VALUES.iter().copied().zip(self.series.iter())
    }
}

/// The label names of per-destination series.
const DEST_LABELS: [&str; 2] = ["set", "uri"];

/// The series of one destination, from [`Metrics::register_destination`].
/// Cheap to clone; a handle passed to [`Metrics::remove_destination`]
/// writes to series nobody exports any more.
#[derive(Debug, Clone)]
pub struct DestinationMetrics {
    set: Box<str>,
    uri: Box<str>,
    up: IntGauge,
    state: PerLabel<State, IntGauge>,
    calls_active: IntGauge,
    stranded: IntGauge,
    probes: PerLabel<ProbeLabel, IntCounter>,
    probe_duration: Histogram,
    latency: PerLabel<LatencyStat, Gauge>,
    probe_timeouts: IntCounter,
    calls: IntCounter,
    outcomes: PerLabel<CallOutcome, IntCounter>,
}

impl DestinationMetrics {
    /// The `set` label value.
    pub fn set(&self) -> &str {
        &self.set
    }

    /// The `uri` label value.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Moves the one-hot state to `state` and updates `up`.
    pub fn set_state(&self, state: State) {
        // Clear first: a scrape in between sees no state rather than two.
        for (s, g) in self.state.iter() {
            if s != state {
                g.set(0);
            }
        }
        if let Some(g) = self.state.get(state) {
            g.set(1);
        }
        self.up.set(i64::from(state.accepts_new_calls()));
    }

    /// Counts a probe; `alive` says whether its reply code counts as alive
    /// (see [`ProbeLabel::of`]); `rtt` is the round trip when the node
    /// answered, `None` otherwise, so timeouts do not pose as slow answers
    /// in the histogram.
    pub fn probe(&self, result: ProbeResult, alive: bool, rtt: Option<Duration>) {
        if let Some(c) = self.probes.get(ProbeLabel::of(result, alive)) {
            c.inc();
        }
        if let Some(rtt) = rtt {
            self.probe_duration.observe(rtt.as_secs_f64());
        }
    }

    /// Shows the node's latency statistics (milliseconds, as kept) in
    /// seconds; the timeout counter catches up with theirs.
    pub fn latency(&self, stats: &LatencyStats) {
        for (stat, g) in self.latency.iter() {
            let ms = match stat {
                LatencyStat::Avg => stats.average(),
                LatencyStat::Std => stats.stdev(),
                LatencyStat::Est => stats.estimate(),
                LatencyStat::Max => stats.max() as f64,
            };
            g.set(ms / 1000.0);
        }
        // The statistics outlive a reload and so does this series (same
        // labels): only ever add the difference.
        let (kept, shown) = (u64::from(stats.timeouts()), self.probe_timeouts.get());
        if kept > shown {
            self.probe_timeouts.inc_by(kept - shown);
        }
    }

    /// Whether the node is stranded (see [`DESTINATION_STRANDED`]).
    pub fn set_stranded(&self, stranded: bool) {
        self.stranded.set(i64::from(stranded));
    }

    /// Sets the number of dialogs pinned to this node.
    pub fn set_calls_active(&self, n: usize) {
        self.calls_active.set(saturating_i64(n));
    }

    /// A dialog was pinned to this node.
    pub fn call_started(&self) {
        self.calls_active.inc();
    }

    /// A dialog pinned to this node ended or moved away.
    pub fn call_ended(&self) {
        self.calls_active.dec();
    }

    /// A new INVITE was sent to this node.
    pub fn call_routed(&self) {
        self.calls.inc();
    }

    /// A try counted by [`DestinationMetrics::call_routed`] ended so.
    pub fn call_outcome(&self, outcome: CallOutcome) {
        inc(&self.outcomes, outcome);
    }

    /// New INVITEs sent to this node so far.
    pub fn calls_routed(&self) -> u64 {
        self.calls.get()
    }

    /// Tries on this node that ended as `outcome` so far.
    pub fn call_outcomes(&self, outcome: CallOutcome) -> u64 {
        get(&self.outcomes, outcome)
    }
}

/// The [`NODE_MISADVERTISED_TOTAL`] series of one node, from
/// [`Metrics::register_misadvertised`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MisadvertisedMetrics {
    uri: Box<str>,
    counts: PerLabel<AdvertisedIn, IntCounter>,
}

impl MisadvertisedMetrics {
    /// The `uri` label value.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Counts a 2xx that misadvertised an address in `place`.
    pub fn misadvertised(&self, place: AdvertisedIn) {
        inc(&self.counts, place);
    }
}

/// One direction's TLS series, brought up to its counters.
fn sync_tls_direction(
    handshakes: &PerLabel<Handshake, IntCounter>,
    connections: &IntGauge,
    stats: &crate::transport::tls::TlsStats,
) {
    connections.set(saturating_i64(stats.open()));
    for (h, c) in handshakes.iter() {
        let (total, seen) = (stats.handshakes(h), c.get());
        if total > seen {
            c.inc_by(total - seen);
        }
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// All of sipedge's metrics, in their own registry. `Send + Sync`: share it
/// as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: PerLabel<MethodLabel, IntCounter>,
    responses_relayed: PerLabel<ResponseClass, IntCounter>,
    responses_local: PerLabel<ResponseClass, IntCounter>,
    failovers: PerLabel<FailoverReason, IntCounter>,
    forward_failures: PerLabel<ForwardFailure, IntCounter>,
    invites_rejected: PerLabel<RejectReason, IntCounter>,
    requests_rejected: PerLabel<RejectReason, IntCounter>,
    dropped: PerLabel<DropReason, IntCounter>,
    dialogs: IntGauge,
    dialogs_max: IntGauge,
    dialogs_evicted: PerLabel<EvictReason, IntCounter>,
    transactions: IntGauge,
    tcp_connections: IntGauge,
    tcp_events: PerLabel<TcpEvent, IntCounter>,
    capture_sent: IntCounter,
    capture_dropped: PerLabel<CaptureDrop, IntCounter>,
    tls_inbound_handshakes: PerLabel<Handshake, IntCounter>,
    tls_inbound_connections: IntGauge,
    tls_outbound_handshakes: PerLabel<Handshake, IntCounter>,
    tls_outbound_connections: IntGauge,
    tls_expiry: IntGaugeVec,
    tls_crl_next_update: IntGaugeVec,
    admin_events: PerLabel<AdminEvent, IntCounter>,
    icmp_errors: PerLabel<IcmpResult, IntCounter>,
    node_misadvertised: IntCounterVec,
    invite_setup: Histogram,
    dest_up: IntGaugeVec,
    dest_state: IntGaugeVec,
    dest_calls_active: IntGaugeVec,
    dest_stranded: IntGaugeVec,
    dest_latency: GaugeVec,
    dest_probe_timeouts: IntCounterVec,
    probes: IntCounterVec,
    probe_duration: HistogramVec,
    dest_calls: IntCounterVec,
    dest_outcomes: IntCounterVec,
    /// Registered by [`Metrics::enable_kamailio_names`] only.
    kamailio_targets: IntGaugeVec,
    /// Registered by [`Metrics::enable_registry`] only.
    registry_ops: IntCounterVec,
    registry_up: IntGauge,
}

// The proxy's tasks run on several threads and all count.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Metrics>();
    shared::<DestinationMetrics>();
    shared::<MisadvertisedMetrics>();
};

impl Metrics {
    /// Defines and registers every metric. Fails only on a programming
    /// error (an invalid or duplicate name).
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let r = &registry;

        let requests = register(
            r,
            REQUESTS_TOTAL,
            IntCounterVec::new(
                Opts::new(REQUESTS_TOTAL, "SIP requests received, by method."),
                &["method"],
            ),
        )?;
        let responses = register(
            r,
            RESPONSES_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    RESPONSES_TOTAL,
                    "SIP responses sent, by status class, relayed or answered locally.",
                ),
                &["class", "origin"],
            ),
        )?;
        let per_origin = |origin: ResponseOrigin| {
            PerLabel::resolve(RESPONSES_TOTAL, |c: ResponseClass| {
                responses.get_metric_with_label_values(&[c.as_str(), origin.as_str()])
            })
        };
        let failovers = register(
            r,
            FAILOVERS_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    FAILOVERS_TOTAL,
                    "New INVITEs moved on to the next node, by reason.",
                ),
                &["reason"],
            ),
        )?;
        let forward_failures = register(
            r,
            FORWARD_FAILURES_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    FORWARD_FAILURES_TOTAL,
                    "Forwarded requests answered upstream by sipedge (408, 503), by reason.",
                ),
                &["reason"],
            ),
        )?;
        let rejected = register(
            r,
            INVITES_REJECTED_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    INVITES_REJECTED_TOTAL,
                    "INVITEs answered with a final error by sipedge itself, by reason.",
                ),
                &["reason"],
            ),
        )?;
        let requests_rejected = register(
            r,
            REQUESTS_REJECTED_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    REQUESTS_REJECTED_TOTAL,
                    "Requests of every method answered with a final error by sipedge itself, \
                     by reason.",
                ),
                &["reason"],
            ),
        )?;
        let dropped = register(
            r,
            DROPPED_MESSAGES_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    DROPPED_MESSAGES_TOTAL,
                    "SIP messages dropped without an answer, by reason.",
                ),
                &["reason"],
            ),
        )?;
        let evicted = register(
            r,
            DIALOGS_EVICTED_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    DIALOGS_EVICTED_TOTAL,
                    "Call-ID -> node entries removed or not stored, by reason.",
                ),
                &["reason"],
            ),
        )?;
        let dialogs = register(
            r,
            DIALOGS,
            IntGauge::new(DIALOGS, "Entries in the Call-ID -> node table."),
        )?;
        let dialogs_max = register(
            r,
            DIALOGS_MAX,
            IntGauge::new(
                DIALOGS_MAX,
                "The cap on entries of the Call-ID -> node table.",
            ),
        )?;
        let transactions = register(
            r,
            TRANSACTIONS,
            IntGauge::new(TRANSACTIONS, "Client transactions alive."),
        )?;
        let tcp_connections = register(
            r,
            TCP_CONNECTIONS,
            IntGauge::new(TCP_CONNECTIONS, "SIP over TCP connections open now."),
        )?;
        let tcp_events = register(
            r,
            TCP_EVENTS_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    TCP_EVENTS_TOTAL,
                    "What happened to TCP connections, by event.",
                ),
                &["event"],
            ),
        )?;
        let capture_sent = register(
            r,
            CAPTURE_SENT_TOTAL,
            IntCounter::new(
                CAPTURE_SENT_TOTAL,
                "HEP packets sent to the capture collector.",
            ),
        )?;
        let capture_dropped = register(
            r,
            CAPTURE_DROPPED_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    CAPTURE_DROPPED_TOTAL,
                    "Captured messages not sent to the HEP collector, by reason.",
                ),
                &["reason"],
            ),
        )?;
        let tls_handshakes = register(
            r,
            TLS_HANDSHAKES_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    TLS_HANDSHAKES_TOTAL,
                    "TLS handshakes, by direction, result and reason.",
                ),
                &["direction", "result", "reason"],
            ),
        )?;
        let tls_connections = register(
            r,
            TLS_CONNECTIONS,
            IntGaugeVec::new(
                Opts::new(
                    TLS_CONNECTIONS,
                    "SIP over TLS connections open now, by direction.",
                ),
                &["direction"],
            ),
        )?;
        let tls_direction = |direction: &str| {
            tls_connections
                .get_metric_with_label_values(&[direction])
                .map_err(|source| MetricsError::Series {
                    metric: TLS_CONNECTIONS,
                    source,
                })
        };
        let tls_inbound_connections = tls_direction("inbound")?;
        let tls_outbound_connections = tls_direction("outbound")?;
        let tls_expiry = register(
            r,
            TLS_CERTIFICATE_EXPIRY_SECONDS,
            IntGaugeVec::new(
                Opts::new(
                    TLS_CERTIFICATE_EXPIRY_SECONDS,
                    "Seconds until each configured certificate file's earliest notAfter.",
                ),
                &["certificate", "file"],
            ),
        )?;
        let tls_crl_next_update = register(
            r,
            TLS_CRL_NEXT_UPDATE_SECONDS,
            IntGaugeVec::new(
                Opts::new(
                    TLS_CRL_NEXT_UPDATE_SECONDS,
                    "Seconds until the earliest nextUpdate of the CRLs in [tls] crl.",
                ),
                &["file"],
            ),
        )?;
        let admin_events = register(
            r,
            ADMIN_EVENTS_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    ADMIN_EVENTS_TOTAL,
                    "Admin requests refused for their token and connections closed at the cap, \
                     by event.",
                ),
                &["event"],
            ),
        )?;
        let icmp_errors = register(
            r,
            ICMP_ERRORS_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    ICMP_ERRORS_TOTAL,
                    "ICMP errors for datagrams sent, by what was made of them.",
                ),
                &["result"],
            ),
        )?;
        let node_misadvertised = register(
            r,
            NODE_MISADVERTISED_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    NODE_MISADVERTISED_TOTAL,
                    "A node's 2xx to an INVITE advertising an address no peer can use \
                     (wildcard, loopback, or not the node's own nor an advertised alias), \
                     by where.",
                ),
                &["uri", "where"],
            ),
        )?;
        let invite_setup = register(
            r,
            INVITE_SETUP_SECONDS,
            Histogram::with_opts(
                HistogramOpts::new(
                    INVITE_SETUP_SECONDS,
                    "Time from a new INVITE to the first final response relayed for it.",
                )
                .buckets(INVITE_SETUP_BUCKETS.to_vec()),
            ),
        )?;
        let build_info = register(
            r,
            BUILD_INFO,
            IntGauge::with_opts(
                Opts::new(BUILD_INFO, "Always 1; the version label names the build.")
                    .const_label("version", env!("CARGO_PKG_VERSION")),
            ),
        )?;
        build_info.set(1);

        let dest_up = register(
            r,
            DESTINATION_UP,
            IntGaugeVec::new(
                Opts::new(
                    DESTINATION_UP,
                    "1 if the destination takes new calls (active or trying).",
                ),
                &DEST_LABELS,
            ),
        )?;
        let dest_state = register(
            r,
            DESTINATION_STATE,
            IntGaugeVec::new(
                Opts::new(
                    DESTINATION_STATE,
                    "1 on the destination's current state, 0 on the others.",
                ),
                &["set", "uri", "state"],
            ),
        )?;
        let dest_calls_active = register(
            r,
            DESTINATION_CALLS_ACTIVE,
            IntGaugeVec::new(
                Opts::new(
                    DESTINATION_CALLS_ACTIVE,
                    "Dialogs pinned to the destination.",
                ),
                &DEST_LABELS,
            ),
        )?;
        let dest_stranded = register(
            r,
            DESTINATION_STRANDED,
            IntGaugeVec::new(
                Opts::new(
                    DESTINATION_STRANDED,
                    "1 if the destination is inactive and not probed: only an operator brings it back.",
                ),
                &DEST_LABELS,
            ),
        )?;
        let dest_latency = register(
            r,
            DESTINATION_LATENCY_SECONDS,
            GaugeVec::new(
                Opts::new(
                    DESTINATION_LATENCY_SECONDS,
                    "OPTIONS round-trip statistics of the destination (Kamailio's LATENCY).",
                ),
                &["set", "uri", "stat"],
            ),
        )?;
        let dest_probe_timeouts = register(
            r,
            DESTINATION_PROBE_TIMEOUTS_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    DESTINATION_PROBE_TIMEOUTS_TOTAL,
                    "Probes of the destination unanswered in time or answered 408.",
                ),
                &DEST_LABELS,
            ),
        )?;
        let probes = register(
            r,
            PROBE_TOTAL,
            IntCounterVec::new(
                Opts::new(PROBE_TOTAL, "OPTIONS probes sent, by result."),
                &["set", "uri", "result"],
            ),
        )?;
        let probe_duration = register(
            r,
            PROBE_DURATION_SECONDS,
            HistogramVec::new(
                HistogramOpts::new(
                    PROBE_DURATION_SECONDS,
                    "Round trip of answered OPTIONS probes.",
                )
                .buckets(PROBE_BUCKETS.to_vec()),
                &DEST_LABELS,
            ),
        )?;

        let dest_calls = register(
            r,
            DESTINATION_CALLS_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    DESTINATION_CALLS_TOTAL,
                    "New INVITEs sent to the destination, each try of a call once.",
                ),
                &DEST_LABELS,
            ),
        )?;
        let dest_outcomes = register(
            r,
            DESTINATION_CALL_OUTCOMES_TOTAL,
            IntCounterVec::new(
                Opts::new(
                    DESTINATION_CALL_OUTCOMES_TOTAL,
                    "How the tries of new INVITEs on the destination ended, by outcome.",
                ),
                &["set", "uri", "outcome"],
            ),
        )?;
        registry
            .register(Box::new(process::ProcessCollector::new()?))
            .map_err(|source| MetricsError::Register {
                metric: PROCESS_CPU_SECONDS_TOTAL,
                source,
            })?;

        let define = |metric: &'static str| move |source| MetricsError::Define { metric, source };
        let kamailio_targets = IntGaugeVec::new(
            Opts::new(KAMAILIO_DISPATCHER_LIST_TARGET, "Target status."),
            &["setid", "uri", "flags"],
        )
        .map_err(define(KAMAILIO_DISPATCHER_LIST_TARGET))?;
        let registry_ops = IntCounterVec::new(
            Opts::new(
                REGISTRY_OPERATIONS_TOTAL,
                "Operations on the shared call registry, by op and result.",
            ),
            &["op", "result"],
        )
        .map_err(define(REGISTRY_OPERATIONS_TOTAL))?;
        let registry_up = IntGauge::new(
            REGISTRY_UP,
            "1 when the shared call registry answered its last operation, else 0.",
        )
        .map_err(define(REGISTRY_UP))?;

        Ok(Metrics {
            registry_ops,
            registry_up,
            requests: PerLabel::resolve(REQUESTS_TOTAL, |m: MethodLabel| {
                requests.get_metric_with_label_values(&[m.as_str()])
            })?,
            responses_relayed: per_origin(ResponseOrigin::Relayed)?,
            responses_local: per_origin(ResponseOrigin::Local)?,
            failovers: PerLabel::resolve(FAILOVERS_TOTAL, |f: FailoverReason| {
                failovers.get_metric_with_label_values(&[f.as_str()])
            })?,
            forward_failures: PerLabel::resolve(FORWARD_FAILURES_TOTAL, |f: ForwardFailure| {
                forward_failures.get_metric_with_label_values(&[f.as_str()])
            })?,
            invites_rejected: PerLabel::resolve(INVITES_REJECTED_TOTAL, |x: RejectReason| {
                rejected.get_metric_with_label_values(&[x.as_str()])
            })?,
            requests_rejected: PerLabel::resolve(REQUESTS_REJECTED_TOTAL, |x: RejectReason| {
                requests_rejected.get_metric_with_label_values(&[x.as_str()])
            })?,
            dropped: PerLabel::resolve(DROPPED_MESSAGES_TOTAL, |d: DropReason| {
                dropped.get_metric_with_label_values(&[d.as_str()])
            })?,
            dialogs,
            dialogs_max,
            dialogs_evicted: PerLabel::resolve(DIALOGS_EVICTED_TOTAL, |e: EvictReason| {
                evicted.get_metric_with_label_values(&[e.as_str()])
            })?,
            transactions,
            tcp_connections,
            tcp_events: PerLabel::resolve(TCP_EVENTS_TOTAL, |e: TcpEvent| {
                tcp_events.get_metric_with_label_values(&[e.as_str()])
            })?,
            capture_sent,
            capture_dropped: PerLabel::resolve(CAPTURE_DROPPED_TOTAL, |d: CaptureDrop| {
                capture_dropped.get_metric_with_label_values(&[d.as_str()])
            })?,
            tls_inbound_handshakes: PerLabel::resolve(TLS_HANDSHAKES_TOTAL, |h: Handshake| {
                tls_handshakes.get_metric_with_label_values(&["inbound", h.result(), h.reason()])
            })?,
            tls_inbound_connections,
            tls_outbound_handshakes: PerLabel::resolve(TLS_HANDSHAKES_TOTAL, |h: Handshake| {
                tls_handshakes.get_metric_with_label_values(&["outbound", h.result(), h.reason()])
            })?,
            tls_outbound_connections,
            tls_expiry,
            tls_crl_next_update,
            admin_events: PerLabel::resolve(ADMIN_EVENTS_TOTAL, |e: AdminEvent| {
                admin_events.get_metric_with_label_values(&[e.as_str()])
            })?,
            icmp_errors: PerLabel::resolve(ICMP_ERRORS_TOTAL, |e: IcmpResult| {
                icmp_errors.get_metric_with_label_values(&[e.as_str()])
            })?,
            node_misadvertised,
            invite_setup,
            dest_up,
            dest_state,
            dest_calls_active,
            dest_stranded,
            dest_latency,
            dest_probe_timeouts,
            probes,
            probe_duration,
            dest_calls,
            dest_outcomes,
            kamailio_targets,
            registry,
        })
    }

    /// The registry, for the admin endpoint or to add collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The exposition in Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let families = self.registry.gather();
        let mut out = String::with_capacity(16 * 1024);
        // The encoder only refuses an empty or unnamed family, and gather()
        // never returns one; if it ever did, the families before it are
        // still a valid exposition.
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::error!("metrics exposition cut short: {e}");
        }
        out
    }

    /// Counts a received request; takes a [`MethodLabel`], a parsed
    /// [`Method`] or the raw method token.
    pub fn request(&self, method: impl Into<MethodLabel>) {
        inc(&self.requests, method.into());
    }

    /// Counts a response sent.
    pub fn response(&self, origin: ResponseOrigin, class: ResponseClass) {
        let family = match origin {
            ResponseOrigin::Relayed => &self.responses_relayed,
            ResponseOrigin::Local => &self.responses_local,
        };
        inc(family, class);
    }

    /// Counts a response sent, by its status code; a code outside
    /// 100..=699 (which the parser does not let through) is not counted.
    pub fn response_status(&self, origin: ResponseOrigin, code: u16) {
        if let Some(class) = ResponseClass::from_status(code) {
            self.response(origin, class);
        }
    }

    /// Counts a failover of a new INVITE.
    pub fn failover(&self, reason: FailoverReason) {
        inc(&self.failovers, reason);
    }

    /// Counts a forwarded request answered upstream by sipedge.
    pub fn forward_failed(&self, reason: ForwardFailure) {
        inc(&self.forward_failures, reason);
    }

    /// How many forwarded requests got a local answer for `reason`.
    pub fn forward_failures(&self, reason: ForwardFailure) -> u64 {
        get(&self.forward_failures, reason)
    }

    /// Counts an INVITE that sipedge answered with a final error.
    pub fn invite_rejected(&self, reason: RejectReason) {
        inc(&self.invites_rejected, reason);
    }

    /// Counts a request of any method that sipedge answered with a final
    /// error.
    pub fn request_rejected(&self, reason: RejectReason) {
        inc(&self.requests_rejected, reason);
    }

    /// How many requests of any method were rejected with `reason` so far.
    pub fn requests_rejected(&self, reason: RejectReason) -> u64 {
        get(&self.requests_rejected, reason)
    }

    /// Counts a message dropped without an answer.
    pub fn dropped(&self, reason: DropReason) {
        inc(&self.dropped, reason);
    }

    /// Brings the eviction counters up to the dialog table's own totals
    /// (it counts them itself; this runs at scrape time).
    pub fn sync_dialog_evictions(&self, stats: &crate::dialog::DialogStats) {
        for (reason, total) in [
            (EvictReason::Ttl, stats.evicted_ttl),
            (EvictReason::Bye, stats.removed_bye),
            (EvictReason::Failed, stats.removed_failed),
            (EvictReason::Cap, stats.rejected_full),
        ] {
            if let Some(c) = self.dialogs_evicted.get(reason) {
                let now = c.get();
                if total > now {
                    c.inc_by(total - now);
                }
            }
        }
    }

    /// Exports the shared call registry's families, every series at 0.
    pub fn enable_registry(&self) -> Result<(), MetricsError> {
        use crate::dialog::registry::{Op, Outcome};
        for op in Op::ALL {
            for outcome in Outcome::ALL {
                self.registry_ops
                    .get_metric_with_label_values(&[op.as_str(), outcome.as_str()])
                    .map_err(|source| MetricsError::Series {
                        metric: REGISTRY_OPERATIONS_TOTAL,
                        source,
                    })?;
            }
        }
        register(
            &self.registry,
            REGISTRY_OPERATIONS_TOTAL,
            Ok(self.registry_ops.clone()),
        )?;
        register(&self.registry, REGISTRY_UP, Ok(self.registry_up.clone()))?;
        Ok(())
    }

    /// Brings the registry families up to the registry's own counters (it
    /// counts them itself; this runs at scrape time).
    pub fn sync_registry(&self, registry: &crate::dialog::Registry) {
        use crate::dialog::registry::{Op, Outcome};
        for &op in Op::ALL {
            for &outcome in Outcome::ALL {
                let labels = [op.as_str(), outcome.as_str()];
                if let Ok(c) = self.registry_ops.get_metric_with_label_values(&labels) {
                    let (total, now) = (registry.count(op, outcome), c.get());
                    if total > now {
                        c.inc_by(total - now);
                    }
                }
            }
        }
        self.registry_up.set(i64::from(registry.is_up()));
    }

    /// How many failovers with `reason` so far (tests, logs).
    pub fn failovers(&self, reason: FailoverReason) -> u64 {
        get(&self.failovers, reason)
    }

    /// How many INVITEs were rejected with `reason` so far.
    pub fn invites_rejected(&self, reason: RejectReason) -> u64 {
        get(&self.invites_rejected, reason)
    }

    /// How many messages were dropped with `reason` so far.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        get(&self.dropped, reason)
    }

    /// How many responses of `class` were sent from `origin` so far.
    pub fn responses(&self, origin: ResponseOrigin, class: ResponseClass) -> u64 {
        let family = match origin {
            ResponseOrigin::Relayed => &self.responses_relayed,
            ResponseOrigin::Local => &self.responses_local,
        };
        get(family, class)
    }

    /// Sets the size of the Call-ID -> node table.
    pub fn set_dialogs(&self, n: usize) {
        self.dialogs.set(saturating_i64(n));
    }

    /// Sets the cap of the Call-ID -> node table (`[dialogs] max`).
    pub fn set_dialogs_max(&self, n: usize) {
        self.dialogs_max.set(saturating_i64(n));
    }

    /// Exports [`KAMAILIO_DISPATCHER_LIST_TARGET`] from now on
    /// (`[metrics] kamailio_names`); its series come from
    /// [`Metrics::set_kamailio_targets`].
    pub fn enable_kamailio_names(&self) -> Result<(), MetricsError> {
        register(
            &self.registry,
            KAMAILIO_DISPATCHER_LIST_TARGET,
            Ok(self.kamailio_targets.clone()),
        )?;
        Ok(())
    }

    /// Replaces the [`KAMAILIO_DISPATCHER_LIST_TARGET`] series with these
    /// destinations: (set id, URI as `dispatcher.list` shows it, FLAGS).
    /// The flags are a label, so a state change is a new series: the old
    /// ones go (this runs at scrape time).
    pub fn set_kamailio_targets<'a>(
        &self,
        targets: impl IntoIterator<Item = (u32, &'a str, &'a str)>,
    ) {
        self.kamailio_targets.reset();
        for (set, uri, flags) in targets {
            if let Ok(g) =
                self.kamailio_targets
                    .get_metric_with_label_values(&[&set.to_string(), uri, flags])
            {
                g.set(1);
            }
        }
    }

    /// Counts an entry leaving (or refused by) the Call-ID -> node table.
    pub fn dialog_evicted(&self, reason: EvictReason) {
        inc(&self.dialogs_evicted, reason);
    }

    /// Sets the number of client transactions alive.
    pub fn set_transactions(&self, n: usize) {
        self.transactions.set(saturating_i64(n));
    }

    /// Brings the TCP gauge and counters up to the transport's own (it
    /// counts them itself; this runs at scrape time).
    pub fn sync_tcp(&self, stats: &crate::transport::TcpStats, open: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.tcp_connections.set(saturating_i64(open));
        for (event, total) in [
            (TcpEvent::Accepted, &stats.accepted),
            (TcpEvent::RefusedCap, &stats.refused_cap),
            (TcpEvent::RefusedPerSource, &stats.refused_per_source),
            (TcpEvent::RefusedReserved, &stats.refused_reserved),
            (TcpEvent::ClosedSlow, &stats.closed_slow),
            (TcpEvent::Connected, &stats.connected),
            (TcpEvent::ConnectFailed, &stats.connect_failed),
            (TcpEvent::ClosedMalformed, &stats.closed_malformed),
            (TcpEvent::ClosedOversized, &stats.closed_oversized),
            (TcpEvent::ClosedIdle, &stats.closed_idle),
            (TcpEvent::SendQueueFull, &stats.send_queue_full),
        ] {
            if let Some(c) = self.tcp_events.get(event) {
                let (total, now) = (total.load(Relaxed), c.get());
                if total > now {
                    c.inc_by(total - now);
                }
            }
        }
    }

    /// Brings the capture counters up to the capture's own (it counts
    /// them itself; this runs at scrape time).
    pub fn sync_capture(&self, stats: &crate::capture::CaptureStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let raise = |c: &IntCounter, total: u64| {
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        };
        raise(&self.capture_sent, stats.sent.load(Relaxed));
        for (drop, total) in [
            (CaptureDrop::QueueFull, &stats.dropped_queue),
            (CaptureDrop::Collector, &stats.dropped_collector),
            (CaptureDrop::TooLarge, &stats.dropped_too_large),
        ] {
            if let Some(c) = self.capture_dropped.get(drop) {
                raise(c, total.load(Relaxed));
            }
        }
    }

    /// Captured messages dropped for `reason`, as last synced.
    pub fn capture_dropped(&self, reason: CaptureDrop) -> u64 {
        get(&self.capture_dropped, reason)
    }

    /// HEP packets sent, as last synced.
    pub fn capture_sent(&self) -> u64 {
        self.capture_sent.get()
    }

    /// Brings the inbound TLS series up to the listeners' own counters,
    /// and each configured certificate's and the CRL's time left as of
    /// `now` (this runs at scrape time; the files in force are the
    /// identity's).
    pub fn sync_tls_inbound(
        &self,
        stats: &crate::transport::tls::TlsStats,
        expiries: &[CertExpiry],
        crl: Option<&CrlUpdate>,
        now: std::time::SystemTime,
    ) {
        sync_tls_direction(
            &self.tls_inbound_handshakes,
            &self.tls_inbound_connections,
            stats,
        );
        let now = now
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        // A reload may name other files: only those in force are exported.
        self.tls_expiry.reset();
        for e in expiries {
            if let Ok(g) = self
                .tls_expiry
                .get_metric_with_label_values(&[e.certificate, &e.file])
            {
                g.set(e.not_after.saturating_sub(now));
            }
        }
        self.tls_crl_next_update.reset();
        if let Some(c) = crl {
            if let Ok(g) = self
                .tls_crl_next_update
                .get_metric_with_label_values(&[&c.file])
            {
                g.set(c.next_update.saturating_sub(now));
            }
        }
    }

    /// Brings the outbound TLS series up to the client side's counters.
    pub fn sync_tls_outbound(&self, stats: &crate::transport::tls::TlsStats) {
        sync_tls_direction(
            &self.tls_outbound_handshakes,
            &self.tls_outbound_connections,
            stats,
        );
    }

    /// Outbound TLS handshakes that ended as `outcome`, as last synced.
    pub fn tls_outbound_handshakes(&self, outcome: Handshake) -> u64 {
        get(&self.tls_outbound_handshakes, outcome)
    }

    /// Inbound TLS handshakes that ended as `outcome`, as last synced.
    pub fn tls_inbound_handshakes(&self, outcome: Handshake) -> u64 {
        get(&self.tls_inbound_handshakes, outcome)
    }

    /// How many times `event` happened to TCP connections, as last synced.
    pub fn tcp_events(&self, event: TcpEvent) -> u64 {
        get(&self.tcp_events, event)
    }

    /// Counts something the admin listener refused or cut short.
    pub fn admin_event(&self, event: AdminEvent) {
        inc(&self.admin_events, event);
    }

    /// How many times `event` happened at the admin listener.
    pub fn admin_events(&self, event: AdminEvent) -> u64 {
        get(&self.admin_events, event)
    }

    /// Counts an ICMP error read from a socket's error queue.
    pub fn icmp_error(&self, result: IcmpResult) {
        inc(&self.icmp_errors, result);
    }

    /// How many ICMP errors were taken for `result`.
    pub fn icmp_errors(&self, result: IcmpResult) -> u64 {
        get(&self.icmp_errors, result)
    }

    /// Creates (or finds) the [`NODE_MISADVERTISED_TOTAL`] series of the
    /// node whose configured URI is `uri`, at 0 for each [`AdvertisedIn`].
    pub fn register_misadvertised(&self, uri: &str) -> Result<MisadvertisedMetrics, MetricsError> {
        Ok(MisadvertisedMetrics {
            counts: PerLabel::resolve(NODE_MISADVERTISED_TOTAL, |w: AdvertisedIn| {
                self.node_misadvertised
                    .get_metric_with_label_values(&[uri, w.as_str()])
            })?,
            uri: uri.into(),
        })
    }

    /// Drops a node's [`NODE_MISADVERTISED_TOTAL`] series (a reload removed
    /// the node); clones of `node` keep counting, unexported.
    pub fn remove_misadvertised(&self, node: MisadvertisedMetrics) {
        for w in AdvertisedIn::ALL {
            // "No such series" only: already gone.
            let _ = self
                .node_misadvertised
                .remove_label_values(&[&*node.uri, w.as_str()]);
        }
    }

    /// How many 2xx of the node at `uri` misadvertised in `place` so far;
    /// 0 for a node without series (tests, logs). Reads without creating
    /// a series.
    pub fn misadvertised(&self, uri: &str, place: AdvertisedIn) -> u64 {
        use prometheus::core::Collector;
        let has = |m: &prometheus::proto::Metric, name: &str, value: &str| {
            m.get_label()
                .iter()
                .any(|l| l.name() == name && l.value() == value)
        };
        self.node_misadvertised
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .find(|m| has(m, "uri", uri) && has(m, "where", place.as_str()))
            .map_or(0, |m| m.get_counter().get_value() as u64)
    }

    /// Records the time from a new INVITE to its first final response.
    pub fn invite_setup(&self, elapsed: Duration) {
        self.invite_setup.observe(elapsed.as_secs_f64());
    }

    /// Creates (or finds, if already registered) the series of one
    /// destination: `set` is its destination set id, `uri` its configured
    /// URI. It starts `active`, as the dispatcher (like Kamailio without
    /// state flags) puts a new node in rotation; the caller sets another
    /// state when it knows one.
    pub fn register_destination(
        &self,
        set: u32,
        uri: &str,
    ) -> Result<DestinationMetrics, MetricsError> {
        let set = set.to_string();
        let (s, u) = (set.as_str(), uri);
        let dest = DestinationMetrics {
            up: self
                .dest_up
                .get_metric_with_label_values(&[s, u])
                .map_err(series(DESTINATION_UP))?,
            state: PerLabel::resolve(DESTINATION_STATE, |st: State| {
                self.dest_state
                    .get_metric_with_label_values(&[s, u, st.as_str()])
            })?,
            calls_active: self
                .dest_calls_active
                .get_metric_with_label_values(&[s, u])
                .map_err(series(DESTINATION_CALLS_ACTIVE))?,
            stranded: self
                .dest_stranded
                .get_metric_with_label_values(&[s, u])
                .map_err(series(DESTINATION_STRANDED))?,
            probes: PerLabel::resolve(PROBE_TOTAL, |res: ProbeLabel| {
                self.probes
                    .get_metric_with_label_values(&[s, u, res.as_str()])
            })?,
            probe_duration: self
                .probe_duration
                .get_metric_with_label_values(&[s, u])
                .map_err(series(PROBE_DURATION_SECONDS))?,
            latency: PerLabel::resolve(DESTINATION_LATENCY_SECONDS, |st: LatencyStat| {
                self.dest_latency
                    .get_metric_with_label_values(&[s, u, st.as_str()])
            })?,
            probe_timeouts: self
                .dest_probe_timeouts
                .get_metric_with_label_values(&[s, u])
                .map_err(series(DESTINATION_PROBE_TIMEOUTS_TOTAL))?,
            calls: self
                .dest_calls
                .get_metric_with_label_values(&[s, u])
                .map_err(series(DESTINATION_CALLS_TOTAL))?,
            outcomes: PerLabel::resolve(DESTINATION_CALL_OUTCOMES_TOTAL, |o: CallOutcome| {
                self.dest_outcomes
                    .get_metric_with_label_values(&[s, u, o.as_str()])
            })?,
            set: set.as_str().into(),
            uri: uri.into(),
        };
        // A node registered twice keeps the state it has.
        if dest.state.iter().all(|(_, g)| g.get() == 0) {
            dest.set_state(State::Active);
        }
        Ok(dest)
    }

    /// Drops every series of a destination (a reload removed it), so it no
    /// longer shows in the exposition. Other clones of `dest` keep working
    /// but are no longer exported.
    pub fn remove_destination(&self, dest: DestinationMetrics) {
        let (s, u) = (&*dest.set, &*dest.uri);
        // The only possible error is "no such series": removed already,
        // which is the state asked for.
        let _ = self.dest_up.remove_label_values(&[s, u]);
        let _ = self.dest_calls_active.remove_label_values(&[s, u]);
        let _ = self.dest_stranded.remove_label_values(&[s, u]);
        let _ = self.probe_duration.remove_label_values(&[s, u]);
        let _ = self.dest_probe_timeouts.remove_label_values(&[s, u]);
        let _ = self.dest_calls.remove_label_values(&[s, u]);
        for o in CallOutcome::ALL {
            let _ = self.dest_outcomes.remove_label_values(&[s, u, o.as_str()]);
        }
        for st in LatencyStat::ALL {
            let _ = self.dest_latency.remove_label_values(&[s, u, st.as_str()]);
        }
        for st in State::ALL {
            let _ = self.dest_state.remove_label_values(&[s, u, st.as_str()]);
        }
        for res in ProbeLabel::ALL {
            let _ = self.probes.remove_label_values(&[s, u, res.as_str()]);
        }
    }
}

fn get<E: Label>(family: &PerLabel<E, IntCounter>, e: E) -> u64 {
    family.get(e).map_or(0, IntCounter::get)
}

fn inc<E: Label>(family: &PerLabel<E, IntCounter>, e: E) {
    if let Some(c) = family.get(e) {
        c.inc();
    }
}

fn series(metric: &'static str) -> impl Fn(prometheus::Error) -> MetricsError {
    move |source| MetricsError::Series { metric, source }
}

/// Registers a freshly defined collector and hands back its handle.
fn register<C>(
    registry: &Registry,
    metric: &'static str,
    defined: prometheus::Result<C>,
) -> Result<C, MetricsError>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let c = defined.map_err(|source| MetricsError::Define { metric, source })?;
    registry
        .register(Box::new(c.clone()))
        .map_err(|source| MetricsError::Register { metric, source })?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// One sample line of the text format.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// A scrape, parsed: the samples and the `# HELP` / `# TYPE` lines.
    #[derive(Debug, Default)]
    struct Scrape {
        samples: Vec<Sample>,
        help: BTreeMap<String, String>,
        types: BTreeMap<String, String>,
    }

    impl Scrape {
        fn of(m: &Metrics) -> Scrape {
            parse(&m.encode())
        }

        /// The value of the one sample with exactly these labels.
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let want: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let mut found = self
                .samples
                .iter()
                .filter(|s| s.name == name && s.labels == want);
            let first = found.next().map(|s| s.value);
            assert!(found.next().is_none(), "duplicate series {name} {want:?}");
            first
        }

        fn series_of(&self, name: &str) -> Vec<&Sample> {
            self.samples.iter().filter(|s| s.name == name).collect()
        }

        fn with_label(&self, key: &str, value: &str) -> Vec<&Sample> {
            self.samples
                .iter()
                .filter(|s| s.labels.get(key).map(String::as_str) == Some(value))
                .collect()
        }
    }

    /// A small parser of the text exposition format: comments, and
    /// `name{k="v",...} value` lines with `\\`, `\"` and `\n` escapes.
    fn parse(text: &str) -> Scrape {
        let mut out = Scrape::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP line");
                out.help.insert(name.into(), help.into());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE line");
                out.types.insert(name.into(), ty.into());
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            out.samples.push(parse_sample(line));
        }
        out
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).expect("sample line");
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            loop {
                let (i, c) = chars.next().expect("unterminated labels");
                match c {
                    '}' => {
                        rest = &body[i + 1..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("unterminated value").1 {
                                '"' => break,
                                '\\' => match chars.next().expect("escape").1 {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                c => value.push(c),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
        }
        let value = rest.trim().parse().expect("sample value");
        Sample {
            name,
            labels,
            value,
        }
    }

    fn metrics() -> Metrics {
        Metrics::new().expect("metrics")
    }

    const URI_A: &str = "sip:10.0.1.10:5080";
    const URI_B: &str = "sip:10.0.1.11:5080";

    fn expiry(certificate: &'static str, file: &str, not_after: i64) -> CertExpiry {
        CertExpiry {
            certificate,
            file: file.to_owned(),
            not_after,
        }
    }

    /// The TLS series follow the listeners' counters, and the expiry
    /// gauge shows the files in force only, as seconds left at the scrape.
    #[test]
    fn tls_series_follow_the_listeners() {
        use std::time::{Duration, SystemTime};
        let m = metrics();
        let stats = crate::transport::tls::TlsStats::default();
        stats.count(Handshake::Expired);
        stats.count(Handshake::Expired);
        stats.count(Handshake::Ok);
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        m.sync_tls_inbound(
            &stats,
            &[
                expiry("server", "a.pem", 1_000),
                expiry("client_ca", "ca.pem", 5_000),
            ],
            Some(&CrlUpdate {
                file: "crl.pem".to_owned(),
                next_update: 700,
            }),
            at(400),
        );
        assert_eq!(m.tls_inbound_handshakes(Handshake::Expired), 2);
        assert_eq!(m.tls_inbound_handshakes(Handshake::Ok), 1);
        let text = m.encode();
        for line in [
            "sipedge_tls_handshakes_total{direction=\"inbound\",reason=\"expired\",result=\"failed\"} 2",
            "sipedge_tls_handshakes_total{direction=\"inbound\",reason=\"timeout\",result=\"timeout\"} 0",
            "sipedge_tls_connections{direction=\"inbound\"} 0",
            "sipedge_tls_certificate_expiry_seconds{certificate=\"server\",file=\"a.pem\"} 600",
            "sipedge_tls_certificate_expiry_seconds{certificate=\"client_ca\",file=\"ca.pem\"} 4600",
            "sipedge_tls_crl_next_update_seconds{file=\"crl.pem\"} 300",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // A reload names another file; an expired one goes negative.
        m.sync_tls_inbound(&stats, &[expiry("server", "b.pem", 100)], None, at(400));
        let text = m.encode();
        assert!(!text.contains("a.pem"), "{text}");
        assert!(!text.contains("crl.pem"), "{text}");
        assert!(
            text.lines().any(|l| l
                == "sipedge_tls_certificate_expiry_seconds{certificate=\"server\",file=\"b.pem\"} -300"),
            "{text}"
        );
    }

    #[test]
    fn every_name_has_help_and_type_and_nothing_else_is_exported() {
        let m = metrics();
        let _dest = m.register_destination(1, URI_A).expect("destination");
        let _node = m.register_misadvertised(URI_A).expect("node");
        m.enable_registry().expect("registry");
        m.sync_tls_inbound(
            &crate::transport::tls::TlsStats::default(),
            &[expiry("server", "chain.pem", 0)],
            Some(&CrlUpdate {
                file: "crl.pem".to_owned(),
                next_update: 0,
            }),
            std::time::SystemTime::UNIX_EPOCH,
        );
        let s = Scrape::of(&m);
        let expected_type = |name: &str| match name {
            PROBE_DURATION_SECONDS | INVITE_SETUP_SECONDS => "histogram",
            n if n.ends_with("_total") => "counter",
            _ => "gauge",
        };
        for &name in ALL_NAMES {
            assert!(name.starts_with("sipedge_"), "{name}");
            assert!(
                s.help.get(name).is_some_and(|h| !h.is_empty()),
                "no HELP for {name}"
            );
            assert_eq!(
                s.types.get(name).map(String::as_str),
                Some(expected_type(name)),
                "TYPE of {name}"
            );
            let samples = s
                .samples
                .iter()
                .filter(|x| {
                    x.name == name
                        || x.name
                            .strip_prefix(name)
                            .is_some_and(|suffix| ["_bucket", "_sum", "_count"].contains(&suffix))
                })
                .count();
            assert!(samples > 0, "no sample of {name}");
        }
        for &name in PROCESS_NAMES {
            assert!(name.starts_with("process_"), "{name}");
            assert!(s.help.contains_key(name), "no HELP for {name}");
            assert_eq!(
                s.types.get(name).map(String::as_str),
                Some(expected_type(name)),
                "TYPE of {name}"
            );
        }
        let exported: Vec<&String> = s.types.keys().collect();
        let mut names: Vec<&str> = ALL_NAMES.iter().chain(PROCESS_NAMES).copied().collect();
        names.sort_unstable();
        assert_eq!(exported, names, "exported families");
    }

    #[test]
    fn kamailio_names_show_each_target_with_its_flags_only_when_enabled() {
        let m = metrics();
        m.set_kamailio_targets([(1, "sip:10.0.1.10:5080", "AP")]);
        assert!(!m.encode().contains(KAMAILIO_DISPATCHER_LIST_TARGET));
        m.enable_kamailio_names().expect("enable");
        let s = Scrape::of(&m);
        assert_eq!(
            s.types
                .get(KAMAILIO_DISPATCHER_LIST_TARGET)
                .map(String::as_str),
            Some("gauge")
        );
        let labels = |flags| {
            [
                ("setid", "1"),
                ("uri", "sip:10.0.1.10:5080"),
                ("flags", flags),
            ]
        };
        assert_eq!(
            s.value(KAMAILIO_DISPATCHER_LIST_TARGET, &labels("AP")),
            Some(1.0)
        );
        // A state change replaces the series: no stale flags.
        m.set_kamailio_targets([(1, "sip:10.0.1.10:5080", "IP")]);
        let s = Scrape::of(&m);
        assert_eq!(
            s.value(KAMAILIO_DISPATCHER_LIST_TARGET, &labels("IP")),
            Some(1.0)
        );
        assert_eq!(s.series_of(KAMAILIO_DISPATCHER_LIST_TARGET).len(), 1);
    }

    #[test]
    fn per_node_calls_and_outcomes_start_at_zero_and_leave_with_the_node() {
        let m = metrics();
        let a = m.register_destination(1, URI_A).expect("destination");
        let s = Scrape::of(&m);
        let node = [("set", "1"), ("uri", URI_A)];
        assert_eq!(s.value(DESTINATION_CALLS_TOTAL, &node), Some(0.0));
        for o in CallOutcome::ALL {
            let labels = [("set", "1"), ("uri", URI_A), ("outcome", o.as_str())];
            assert_eq!(
                s.value(DESTINATION_CALL_OUTCOMES_TOTAL, &labels),
                Some(0.0),
                "{o:?}"
            );
        }
        a.call_routed();
        a.call_routed();
        a.call_outcome(CallOutcome::FailedOver);
        a.call_outcome(CallOutcome::Answered);
        let s = Scrape::of(&m);
        assert_eq!(s.value(DESTINATION_CALLS_TOTAL, &node), Some(2.0));
        let failed = [("set", "1"), ("uri", URI_A), ("outcome", "failed_over")];
        assert_eq!(s.value(DESTINATION_CALL_OUTCOMES_TOTAL, &failed), Some(1.0));
        m.remove_destination(a.clone());
        let s = Scrape::of(&m);
        assert!(s.series_of(DESTINATION_CALLS_TOTAL).is_empty());
        assert!(s.series_of(DESTINATION_CALL_OUTCOMES_TOTAL).is_empty());
    }

    #[test]
    fn label_enums_index_their_series_in_order() {
        fn check<E: Label + std::fmt::Debug>() {
            let mut seen = std::collections::BTreeSet::new();
            for (i, &e) in E::VALUES.iter().enumerate() {
                assert_eq!(e.index(), i, "{e:?}");
                assert!(seen.insert(e.label()), "duplicate label {}", e.label());
            }
        }
        check::<State>();
        check::<ProbeLabel>();
        check::<MethodLabel>();
        check::<ResponseClass>();
        check::<ResponseOrigin>();
        check::<FailoverReason>();
        check::<RejectReason>();
        check::<DropReason>();
        check::<EvictReason>();
        check::<CallOutcome>();
        check::<AdvertisedIn>();
        assert_eq!(MethodLabel::ALL.len(), 15);
    }

    #[test]
    fn fixed_series_are_exported_at_zero_from_the_start() {
        let s = Scrape::of(&metrics());
        for m in MethodLabel::ALL {
            assert_eq!(
                s.value(REQUESTS_TOTAL, &[("method", m.as_str())]),
                Some(0.0),
                "{m:?}"
            );
        }
        for o in ResponseOrigin::ALL {
            for c in ResponseClass::ALL {
                let labels = [("class", c.as_str()), ("origin", o.as_str())];
                assert_eq!(s.value(RESPONSES_TOTAL, &labels), Some(0.0));
            }
        }
        let reasons = [
            (FAILOVERS_TOTAL, FailoverReason::ALL.len()),
            (FORWARD_FAILURES_TOTAL, ForwardFailure::ALL.len()),
            (INVITES_REJECTED_TOTAL, RejectReason::ALL.len()),
            (REQUESTS_REJECTED_TOTAL, RejectReason::ALL.len()),
            (DROPPED_MESSAGES_TOTAL, DropReason::ALL.len()),
            (DIALOGS_EVICTED_TOTAL, EvictReason::ALL.len()),
        ];
        for (name, n) in reasons {
            let series = s.series_of(name);
            assert_eq!(series.len(), n, "{name}");
            assert!(series.iter().all(|x| x.value == 0.0), "{name}");
        }
        assert_eq!(s.value(DIALOGS, &[]), Some(0.0));
        assert_eq!(s.value(TRANSACTIONS, &[]), Some(0.0));
        assert_eq!(
            s.value(&format!("{INVITE_SETUP_SECONDS}_count"), &[]),
            Some(0.0)
        );
        // No destination registered: no per-node family at all.
        assert!(!s.types.contains_key(DESTINATION_UP));
        assert!(!s.types.contains_key(PROBE_TOTAL));
    }

    #[test]
    fn requests_are_counted_by_method() {
        let m = metrics();
        m.request(b"INVITE".as_slice());
        m.request(Method::Invite);
        m.request(MethodLabel::Bye);
        m.request(b"OPTIONS".as_slice());
        let s = Scrape::of(&m);
        let count = |method: &str| s.value(REQUESTS_TOTAL, &[("method", method)]);
        assert_eq!(count("INVITE"), Some(2.0));
        assert_eq!(count("BYE"), Some(1.0));
        assert_eq!(count("OPTIONS"), Some(1.0));
        assert_eq!(count("ACK"), Some(0.0));
        assert_eq!(count("other"), Some(0.0));
    }

    #[test]
    fn every_known_method_token_has_its_own_series() {
        let m = metrics();
        for (i, method) in MethodLabel::ALL.iter().enumerate() {
            for _ in 0..=i {
                m.request(method.as_str().as_bytes());
            }
        }
        let s = Scrape::of(&m);
        for (i, method) in MethodLabel::ALL.iter().enumerate() {
            // "other" as a token is an extension method itself: still other.
            assert_eq!(
                s.value(REQUESTS_TOTAL, &[("method", method.as_str())]),
                Some((i + 1) as f64),
                "{method:?}"
            );
        }
    }

    #[test]
    fn unknown_methods_land_in_other() {
        let m = metrics();
        for token in [
            &b"FOO"[..],
            b"invite",
            b"",
            b"INVITE2",
            b"\xff\xfe",
            b"x\"y",
        ] {
            m.request(token);
        }
        let s = Scrape::of(&m);
        assert_eq!(s.value(REQUESTS_TOTAL, &[("method", "other")]), Some(6.0));
        assert_eq!(s.value(REQUESTS_TOTAL, &[("method", "INVITE")]), Some(0.0));
        assert_eq!(s.series_of(REQUESTS_TOTAL).len(), MethodLabel::ALL.len());
        assert!(s.with_label("method", "FOO").is_empty());
    }

    #[test]
    fn responses_are_counted_by_class_and_origin() {
        let m = metrics();
        m.response_status(ResponseOrigin::Relayed, 180);
        m.response_status(ResponseOrigin::Relayed, 200);
        m.response_status(ResponseOrigin::Relayed, 200);
        m.response(ResponseOrigin::Local, ResponseClass::Provisional);
        m.response_status(ResponseOrigin::Local, 503);
        m.response_status(ResponseOrigin::Local, 699);
        m.response_status(ResponseOrigin::Local, 99);
        m.response_status(ResponseOrigin::Local, 700);
        let s = Scrape::of(&m);
        let count = |class: &str, origin: &str| {
            s.value(RESPONSES_TOTAL, &[("class", class), ("origin", origin)])
        };
        assert_eq!(count("1xx", "relayed"), Some(1.0));
        assert_eq!(count("2xx", "relayed"), Some(2.0));
        assert_eq!(count("2xx", "local"), Some(0.0));
        assert_eq!(count("1xx", "local"), Some(1.0));
        assert_eq!(count("5xx", "local"), Some(1.0));
        assert_eq!(count("5xx", "relayed"), Some(0.0));
        assert_eq!(count("6xx", "local"), Some(1.0));
        let total: f64 = s.series_of(RESPONSES_TOTAL).iter().map(|x| x.value).sum();
        assert_eq!(total, 6.0, "99 and 700 are not counted");
    }

    #[test]
    fn response_class_boundaries() {
        assert_eq!(ResponseClass::from_status(99), None);
        assert_eq!(
            ResponseClass::from_status(100),
            Some(ResponseClass::Provisional)
        );
        assert_eq!(
            ResponseClass::from_status(199),
            Some(ResponseClass::Provisional)
        );
        assert_eq!(
            ResponseClass::from_status(200),
            Some(ResponseClass::Success)
        );
        assert_eq!(
            ResponseClass::from_status(399),
            Some(ResponseClass::Redirection)
        );
        assert_eq!(
            ResponseClass::from_status(487),
            Some(ResponseClass::ClientError)
        );
        assert_eq!(
            ResponseClass::from_status(500),
            Some(ResponseClass::ServerError)
        );
        assert_eq!(
            ResponseClass::from_status(699),
            Some(ResponseClass::GlobalFailure)
        );
        assert_eq!(ResponseClass::from_status(700), None);
    }

    /// Counts value `i` of a reason enum `i + 1` times and checks that each
    /// series got exactly its own count.
    fn check_reasons<E: Label + std::fmt::Debug>(name: &str, count: impl Fn(&Metrics, E)) {
        let m = metrics();
        for (i, &e) in E::VALUES.iter().enumerate() {
            for _ in 0..=i {
                count(&m, e);
            }
        }
        let s = Scrape::of(&m);
        for (i, &e) in E::VALUES.iter().enumerate() {
            assert_eq!(
                s.value(name, &[("reason", e.label())]),
                Some((i + 1) as f64),
                "{name} {e:?}"
            );
        }
        assert_eq!(s.series_of(name).len(), E::VALUES.len(), "{name}");
    }

    #[test]
    fn reason_counters_move_independently() {
        check_reasons(FAILOVERS_TOTAL, Metrics::failover);
        check_reasons(INVITES_REJECTED_TOTAL, Metrics::invite_rejected);
        check_reasons(DROPPED_MESSAGES_TOTAL, Metrics::dropped);
        check_reasons(DIALOGS_EVICTED_TOTAL, Metrics::dialog_evicted);
    }

    #[test]
    fn reasons_from_the_proxys_own_types() {
        assert_eq!(
            RejectReason::from(SipError::TooManyHops),
            RejectReason::MaxForwards
        );
        assert_eq!(
            RejectReason::from(SipError::UnsupportedVersion),
            RejectReason::UnsupportedVersion
        );
        assert_eq!(
            RejectReason::from(SipError::TooLarge),
            RejectReason::TooLarge
        );
        assert_eq!(
            RejectReason::from(SipError::BadCSeq),
            RejectReason::Malformed
        );
        assert_eq!(EvictReason::from(Removal::Bye), EvictReason::Bye);
        assert_eq!(EvictReason::from(Removal::Failed), EvictReason::Failed);
        assert_eq!(MethodLabel::from(Method::Prack), MethodLabel::Prack);
        assert_eq!(
            MethodLabel::from(Method::Extension(b"X")),
            MethodLabel::Other
        );
    }

    #[test]
    fn table_gauges_follow_their_setters() {
        let m = metrics();
        m.set_dialogs(42);
        m.set_transactions(7);
        let s = Scrape::of(&m);
        assert_eq!(s.value(DIALOGS, &[]), Some(42.0));
        assert_eq!(s.value(TRANSACTIONS, &[]), Some(7.0));
        m.set_dialogs(3);
        m.set_transactions(usize::MAX);
        let s = Scrape::of(&m);
        assert_eq!(s.value(DIALOGS, &[]), Some(3.0));
        assert_eq!(s.value(TRANSACTIONS, &[]), Some(i64::MAX as f64));
    }

    #[test]
    fn invite_setup_histogram_uses_its_buckets() {
        let m = metrics();
        m.invite_setup(Duration::from_millis(20));
        m.invite_setup(Duration::from_secs(3));
        m.invite_setup(Duration::from_secs(120));
        let s = Scrape::of(&m);
        let bucket = format!("{INVITE_SETUP_SECONDS}_bucket");
        let le = |le: &str| s.value(&bucket, &[("le", le)]);
        assert_eq!(le("0.005"), Some(0.0));
        assert_eq!(le("0.01"), Some(0.0));
        assert_eq!(le("0.025"), Some(1.0));
        assert_eq!(le("2.5"), Some(1.0));
        assert_eq!(le("5"), Some(2.0));
        assert_eq!(le("30"), Some(2.0));
        assert_eq!(le("+Inf"), Some(3.0));
        assert_eq!(s.series_of(&bucket).len(), INVITE_SETUP_BUCKETS.len() + 1);
        assert_eq!(
            s.value(&format!("{INVITE_SETUP_SECONDS}_count"), &[]),
            Some(3.0)
        );
        let sum = s.value(&format!("{INVITE_SETUP_SECONDS}_sum"), &[]);
        assert!(sum.is_some_and(|v| (v - 123.02).abs() < 1e-9), "{sum:?}");
    }

    #[test]
    fn destination_state_is_one_hot_and_drives_up() {
        let m = metrics();
        let d = m.register_destination(1, URI_A).expect("destination");
        let check = |current: State| {
            let s = Scrape::of(&m);
            for st in State::ALL {
                let labels = [("set", "1"), ("uri", URI_A), ("state", st.as_str())];
                let want = if *st == current { 1.0 } else { 0.0 };
                assert_eq!(s.value(DESTINATION_STATE, &labels), Some(want), "{st:?}");
            }
            // Up means "gets new calls": Kamailio still selects a trying node.
            let want_up = match current {
                State::Active | State::Trying => 1.0,
                State::Inactive | State::Disabled => 0.0,
            };
            let up = s.value(DESTINATION_UP, &[("set", "1"), ("uri", URI_A)]);
            assert_eq!(up, Some(want_up), "{current:?}");
        };
        // In rotation from the start, as the dispatcher has it.
        check(State::Active);
        for st in [
            State::Trying,
            State::Inactive,
            State::Disabled,
            State::Active,
            State::Trying,
        ] {
            d.set_state(st);
            check(st);
        }
        // Registering again finds the same series and keeps the state.
        let again = m.register_destination(1, URI_A).expect("again");
        check(State::Trying);
        again.set_state(State::Disabled);
        check(State::Disabled);
    }

    #[test]
    fn destination_calls_and_probes() {
        let m = metrics();
        let d = m.register_destination(2, URI_A).expect("destination");
        let labels = [("set", "2"), ("uri", URI_A)];
        d.set_calls_active(5);
        d.call_started();
        d.call_started();
        d.call_ended();
        d.probe(
            ProbeResult::Reply(200),
            true,
            Some(Duration::from_micros(800)),
        );
        d.probe(
            ProbeResult::Reply(200),
            true,
            Some(Duration::from_millis(3)),
        );
        d.probe(
            ProbeResult::Reply(404),
            false,
            Some(Duration::from_millis(40)),
        );
        d.probe(ProbeResult::Timeout(Duration::from_secs(2)), false, None);
        d.probe(ProbeResult::TransportError, false, None);
        d.probe(ProbeResult::Timeout(Duration::from_secs(2)), false, None);
        let s = Scrape::of(&m);
        assert_eq!(s.value(DESTINATION_CALLS_ACTIVE, &labels), Some(6.0));
        let result = |r: &str| s.value(PROBE_TOTAL, &[("set", "2"), ("uri", URI_A), ("result", r)]);
        assert_eq!(result("ok"), Some(2.0));
        assert_eq!(result("bad_code"), Some(1.0));
        assert_eq!(result("timeout"), Some(2.0));
        assert_eq!(result("transport_error"), Some(1.0));
        let bucket = format!("{PROBE_DURATION_SECONDS}_bucket");
        let le = |le: &str| s.value(&bucket, &[("set", "2"), ("uri", URI_A), ("le", le)]);
        assert_eq!(le("0.001"), Some(1.0));
        assert_eq!(le("0.0025"), Some(1.0));
        assert_eq!(le("0.005"), Some(2.0));
        assert_eq!(le("0.05"), Some(3.0));
        assert_eq!(le("2"), Some(3.0));
        assert_eq!(le("+Inf"), Some(3.0));
        let count = s.value(&format!("{PROBE_DURATION_SECONDS}_count"), &labels);
        assert_eq!(count, Some(3.0), "only answered probes have a round trip");
        let buckets = s
            .series_of(&bucket)
            .iter()
            .filter(|x| x.labels.get("uri").map(String::as_str) == Some(URI_A))
            .count();
        assert_eq!(buckets, PROBE_BUCKETS.len() + 1);
    }

    #[test]
    fn removed_destination_disappears_from_the_output() {
        let m = metrics();
        let a = m.register_destination(1, URI_A).expect("a");
        let b = m.register_destination(1, URI_B).expect("b");
        a.set_state(State::Active);
        a.probe(
            ProbeResult::Reply(200),
            true,
            Some(Duration::from_millis(1)),
        );
        a.call_started();
        b.set_state(State::Active);
        b.probe(
            ProbeResult::Reply(200),
            true,
            Some(Duration::from_millis(1)),
        );
        let s = Scrape::of(&m);
        // up, calls, stranded, 4 states, 4 results, 11 + 1 buckets, sum,
        // count, 4 latency stats, timeouts, calls, 5 call outcomes.
        let per_dest = 3 + 4 + 4 + PROBE_BUCKETS.len() + 3 + 4 + 1 + 1 + CallOutcome::ALL.len();
        assert_eq!(s.with_label("uri", URI_A).len(), per_dest);
        assert_eq!(s.with_label("uri", URI_B).len(), per_dest);

        let stale = a.clone();
        m.remove_destination(a);
        stale.probe(ProbeResult::Timeout(Duration::from_secs(2)), false, None);
        let s = Scrape::of(&m);
        assert!(
            s.with_label("uri", URI_A).is_empty(),
            "{:?}",
            s.with_label("uri", URI_A)
        );
        assert_eq!(s.with_label("uri", URI_B).len(), per_dest);
        assert_eq!(
            s.value(DESTINATION_UP, &[("set", "1"), ("uri", URI_B)]),
            Some(1.0)
        );

        // Removing the last one drops the per-node families entirely.
        m.remove_destination(b);
        let s = Scrape::of(&m);
        assert!(!s.types.contains_key(DESTINATION_UP));
        assert!(!s.types.contains_key(PROBE_DURATION_SECONDS));

        // Re-adding starts from scratch.
        let a = m.register_destination(1, URI_A).expect("a again");
        let s = Scrape::of(&m);
        let labels = [("set", "1"), ("uri", URI_A), ("result", "ok")];
        assert_eq!(s.value(PROBE_TOTAL, &labels), Some(0.0));
        assert_eq!(
            s.value(DESTINATION_CALLS_ACTIVE, &[("set", "1"), ("uri", URI_A)]),
            Some(0.0)
        );
        assert_eq!((a.set(), a.uri()), ("1", URI_A));
    }

    #[test]
    fn misadvertised_counts_per_node_and_place() {
        let m = metrics();
        let a = m.register_misadvertised(URI_A).expect("a");
        let b = m.register_misadvertised(URI_B).expect("b");
        let value = |uri: &str, w: &str| {
            Scrape::of(&m).value(NODE_MISADVERTISED_TOTAL, &[("uri", uri), ("where", w)])
        };
        // Exported at 0 from registration, so rate() sees the first one.
        for w in AdvertisedIn::ALL {
            assert_eq!(value(URI_A, w.as_str()), Some(0.0), "{w:?}");
        }
        a.misadvertised(AdvertisedIn::Sdp);
        a.misadvertised(AdvertisedIn::Sdp);
        b.misadvertised(AdvertisedIn::Contact);
        assert_eq!(value(URI_A, "sdp"), Some(2.0));
        assert_eq!(value(URI_A, "contact"), Some(0.0));
        assert_eq!(value(URI_B, "contact"), Some(1.0));
        assert_eq!(m.misadvertised(URI_A, AdvertisedIn::Sdp), 2);
        assert_eq!(m.misadvertised(URI_B, AdvertisedIn::Sdp), 0);
        assert_eq!((a.uri(), b.uri()), (URI_A, URI_B));
        // Registering again finds the same series.
        let again = m.register_misadvertised(URI_A).expect("again");
        again.misadvertised(AdvertisedIn::Sdp);
        assert_eq!(m.misadvertised(URI_A, AdvertisedIn::Sdp), 3);
        // Removed: gone from the output, and the getter creates nothing.
        m.remove_misadvertised(a);
        assert_eq!(value(URI_A, "sdp"), None);
        assert_eq!(m.misadvertised(URI_A, AdvertisedIn::Sdp), 0);
        assert_eq!(value(URI_A, "sdp"), None);
        assert_eq!(value(URI_B, "contact"), Some(1.0));
    }

    #[test]
    fn same_uri_in_two_sets_is_two_destinations() {
        let m = metrics();
        let one = m.register_destination(1, URI_A).expect("set 1");
        let two = m.register_destination(2, URI_A).expect("set 2");
        one.set_state(State::Active);
        two.set_state(State::Disabled);
        m.remove_destination(two);
        let s = Scrape::of(&m);
        assert_eq!(
            s.value(DESTINATION_UP, &[("set", "1"), ("uri", URI_A)]),
            Some(1.0)
        );
        assert_eq!(
            s.value(DESTINATION_UP, &[("set", "2"), ("uri", URI_A)]),
            None
        );
    }

    #[test]
    fn build_info_names_this_version() {
        let s = Scrape::of(&metrics());
        let info = s.series_of(BUILD_INFO);
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].value, 1.0);
        assert_eq!(
            info[0].labels.get("version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(info[0].labels.len(), 1);
    }

    #[test]
    fn each_instance_has_its_own_registry() {
        let a = metrics();
        let b = metrics();
        a.request(MethodLabel::Invite);
        a.set_dialogs(9);
        let (sa, sb) = (Scrape::of(&a), Scrape::of(&b));
        assert_eq!(sa.value(REQUESTS_TOTAL, &[("method", "INVITE")]), Some(1.0));
        assert_eq!(sb.value(REQUESTS_TOTAL, &[("method", "INVITE")]), Some(0.0));
        assert_eq!(sa.value(DIALOGS, &[]), Some(9.0));
        assert_eq!(sb.value(DIALOGS, &[]), Some(0.0));
        // Nothing lands in the process-wide default registry either.
        let global = prometheus::gather();
        assert!(global.iter().all(|f| !f.name().starts_with("sipedge_")));
    }

    #[test]
    fn registering_a_name_twice_is_an_error_not_a_panic() {
        let m = metrics();
        let err = register(
            m.registry(),
            DIALOGS,
            IntGauge::new(DIALOGS, "a second sipedge_dialogs"),
        )
        .expect_err("duplicate name");
        assert!(
            matches!(
                err,
                MetricsError::Register {
                    metric: DIALOGS,
                    ..
                }
            ),
            "{err}"
        );
        let err = register(m.registry(), "bad name", IntGauge::new("bad name", "x"))
            .expect_err("invalid name");
        assert!(matches!(err, MetricsError::Define { .. }), "{err}");
    }

    #[test]
    fn the_test_parser_reads_escapes() {
        let s = parse("# TYPE x counter\nx{a=\"q\\\"uo\\\\te\\n\",b=\"\"} 2.5\ny 1e3\n");
        assert_eq!(s.types.get("x").map(String::as_str), Some("counter"));
        assert_eq!(s.value("x", &[("a", "q\"uo\\te\n"), ("b", "")]), Some(2.5));
        assert_eq!(s.value("y", &[]), Some(1000.0));
    }
}
