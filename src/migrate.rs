//! `sipedge migrate`: a Kamailio configuration in, the equivalent commented
//! `proxy.toml` out. Pure: text in, TOML text and warnings out; the
//! command in `main.rs` reads and writes the files.
//!
//! What is read: the preprocessor (`#!define`, `#!substdef`, `#!ifdef`
//! blocks), `listen` (with `udp:`/`tcp:`/`tls:` and `advertise`),
//! `advertised_address`, the core settings the README's migration table
//! names, `modparam` lines of the modules sipedge replaces, and the
//! `ds_select_dst`/`ds_select_domain`/`ds_select` calls (set and
//! algorithm). Every mapped key is written under a comment naming the
//! cfg line it comes from; every setting with no equivalent is a warning;
//! the routing script is listed by block and call, never guessed.
//!
//! The mapping itself is [`MODPARAMS`] and [`GLOBALS`]: one row per
//! Kamailio setting, and a test holds the README's migration table to it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{
    CtlSocket, Failover, Probe, ProbingMode, ReplyCode, COUNT_RANGES, DURATION_RANGES,
    SOCKET_BUFFER_RANGE,
};
use crate::dispatcher::Algorithm;

// ---------------------------------------------------------------------------
// The mapping table
// ---------------------------------------------------------------------------

/// How one Kamailio setting becomes sipedge's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    /// To the dotted TOML key, its value converted.
    Key(&'static str, Conv),
    /// Nothing to write: sipedge does this by itself (the reason says how).
    Builtin(&'static str),
    /// No equivalent: a warning with the reason.
    Unsupported(&'static str),
}

/// How a Kamailio value is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv {
    /// Whole seconds to a duration.
    Secs,
    /// Milliseconds to a duration.
    Millis,
    /// A count (range from [`COUNT_RANGES`] when it has one).
    Count,
    /// A string as is.
    Str,
    /// A path, relative ones made absolute against the cfg's directory.
    Path,
    /// `ds_probing_mode` 0-3.
    ProbingMode,
    /// `ds_ping_reply_codes`: `class=2;code=403` to `["2xx", 403]`.
    ReplyCodes,
    /// A ctl `binrpc` socket, one entry of `[admin] ctl`.
    CtlSocket,
    /// Octal permissions as written (`0600`).
    Octal,
    /// Kamailio's 0/1 switch to a TOML boolean.
    Bool,
    /// `ds_dns_mode`'s bits: 8 (SRV) to `dispatcher.dns_srv`; 2 and 4
    /// (resolve at every use, on a timer) warned about.
    DnsMode,
    /// siptrace's `duplicate_uri` (`sip:HOST:PORT[;transport=tcp]`) to
    /// `[capture] hep` (`udp:HOST:PORT` or `tcp:`).
    HepUri,
    /// One of pike's three settings, folded into `[security] rate_limit`.
    Pike(PikePart),
}

/// The parts of `[security] rate_limit`, from pike's three settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PikePart {
    Requests,
    Per,
    BlockFor,
}

/// `modparam(module, param, value)` rows. A module missing here makes all
/// its parameters a warning.
pub const MODPARAMS: &[(&str, &str, Map)] = &[
    ("dispatcher", "list_file", Map::Key("dispatcher.list_file", Conv::Path)),
    ("dispatcher", "ds_ping_method", Map::Key("probe.method", Conv::Str)),
    ("dispatcher", "ds_ping_interval", Map::Key("probe.interval", Conv::Secs)),
    ("dispatcher", "ds_ping_from", Map::Key("probe.ping_from", Conv::Str)),
    ("dispatcher", "ds_probing_threshold", Map::Key("probe.failure_threshold", Conv::Count)),
    ("dispatcher", "ds_inactive_threshold", Map::Key("probe.success_threshold", Conv::Count)),
    ("dispatcher", "ds_probing_mode", Map::Key("probe.mode", Conv::ProbingMode)),
    ("dispatcher", "ds_ping_reply_codes", Map::Key("probe.reply_codes", Conv::ReplyCodes)),
    ("dispatcher", "flags", Map::Builtin("failover over the set (flag 2) is always on")),
    ("dispatcher", "xavp_dst", Map::Builtin("script storage; sipedge keeps the set itself")),
    ("dispatcher", "xavp_ctx", Map::Builtin("script storage; sipedge keeps the set itself")),
    ("dispatcher", "dst_avp", Map::Builtin("script storage; sipedge keeps the set itself")),
    ("dispatcher", "grp_avp", Map::Builtin("script storage; sipedge keeps the set itself")),
    ("dispatcher", "cnt_avp", Map::Builtin("script storage; sipedge keeps the set itself")),
    ("dispatcher", "dstid_avp", Map::Builtin("script storage; sipedge keeps the set itself")),
    ("dispatcher", "attrs_avp", Map::Builtin("script storage; sipedge keeps the set itself")),
    ("dispatcher", "sock_avp", Map::Builtin("script storage; sipedge keeps the set itself")),
    ("dispatcher", "ds_timer_mode", Map::Builtin("probes run on sipedge's own timer")),
    ("dispatcher", "force_dst", Map::Builtin("the chosen node is always the next hop")),
    ("dispatcher", "ds_append_branch", Map::Builtin("failover branches are built in")),
    ("dispatcher", "db_url", Map::Unsupported("sipedge reads a dispatcher.list file, not a database: export the table to a list file (setid uri flags priority attrs) and give it with --list")),
    ("dispatcher", "ds_db_url", Map::Unsupported("sipedge reads a dispatcher.list file, not a database: export the table to a list file and give it with --list")),
    ("dispatcher", "ds_hash_size", Map::Builtin("call load (algorithm 10) is counted from sipedge's own dialog table ([dialogs])")),
    ("dispatcher", "ds_default_socket", Map::Unsupported("sipedge sends from the socket the routing table picks (Kamailio's mhomed=1)")),
    ("dispatcher", "ds_ping_latency_stats", Map::Key("probe.latency_stats", Conv::Bool)),
    ("dispatcher", "ds_latency_estimator_alpha", Map::Key("probe.latency_estimator_alpha", Conv::Count)),
    ("dispatcher", "ds_dns_mode", Map::Key("dispatcher.dns_srv", Conv::DnsMode)),
    ("dispatcher", "ds_dns_interval", Map::Unsupported("names are resolved at start and on each reload; reload to follow a changed address")),
    ("dispatcher", "ds_dns_ttl", Map::Builtin("the pool's names are resolved at start and on each reload, whatever the TTL")),
    ("tm", "fr_timer", Map::Key("failover.fr_timeout", Conv::Millis)),
    ("tm", "fr_inv_timer", Map::Key("failover.fr_inv_timeout", Conv::Millis)),
    ("tm", "auto_inv_100", Map::Builtin("100 Trying is always sent for an INVITE")),
    ("tm", "noisy_ctimer", Map::Builtin("a branch without a final reply is always CANCELled after fr_inv_timeout")),
    ("tm", "restart_fr_on_each_reply", Map::Builtin("fr_inv_timeout starts at the first provisional reply")),
    ("tm", "retr_timer1", Map::Unsupported("T1 is RFC 3261's 500 ms")),
    ("tm", "retr_timer2", Map::Unsupported("T2 is RFC 3261's 4 s")),
    ("tm", "wt_timer", Map::Unsupported("the wait timer is RFC 3261's (Timer K/D)")),
    ("rr", "enable_full_lr", Map::Builtin("Record-Route always carries ;lr")),
    ("rr", "append_fromtag", Map::Builtin("in-dialog requests are routed by Call-ID, no From tag needed")),
    ("rr", "enable_double_rr", Map::Builtin("two Record-Routes whenever the two sides' transports differ")),
    ("ctl", "binrpc", Map::Key("admin.ctl", Conv::CtlSocket)),
    ("ctl", "mode", Map::Key("admin.ctl_mode", Conv::Octal)),
    ("ctl", "user", Map::Key("admin.ctl_user", Conv::Str)),
    ("ctl", "group", Map::Key("admin.ctl_group", Conv::Str)),
    ("ctl", "fifo", Map::Unsupported("the fifo transport is not served; kamcmd uses the binrpc socket")),
    ("tls", "certificate", Map::Key("tls.certificate", Conv::Path)),
    ("tls", "private_key", Map::Key("tls.key", Conv::Path)),
    ("tls", "ca_list", Map::Key("tls.client_ca", Conv::Path)),
    ("tls", "crl", Map::Key("tls.crl", Conv::Path)),
    ("tls", "tls_method", Map::Builtin("TLS 1.2 and 1.3, always (RFC 8996)")),
    ("tls", "verify_certificate", Map::Builtin("with [tls] client_ca set a client certificate is verified and required")),
    ("tls", "require_certificate", Map::Builtin("with [tls] client_ca set a client certificate is verified and required")),
    ("tls", "config", Map::Unsupported("tls.cfg is not read by migrate: copy its [server:default] certificate / private_key to [tls] certificate / key (README: Migrating)")),
    ("pike", "reqs_density_per_unit", Map::Key("security.rate_limit", Conv::Pike(PikePart::Requests))),
    ("pike", "sampling_time_unit", Map::Key("security.rate_limit", Conv::Pike(PikePart::Per))),
    ("pike", "remove_latency", Map::Key("security.rate_limit", Conv::Pike(PikePart::BlockFor))),
    ("siptrace", "duplicate_uri", Map::Key("capture.hep", Conv::HepUri)),
    ("siptrace", "hep_capture_id", Map::Key("capture.capture_id", Conv::Count)),
    ("siptrace", "auth_key", Map::Key("capture.auth_key", Conv::Str)),
    ("siptrace", "hep_mode_on", Map::Builtin("[capture] always sends HEP")),
    ("siptrace", "hep_version", Map::Builtin("[capture] sends HEP v3, which every Homer since 5 reads")),
    ("siptrace", "trace_on", Map::Builtin("[capture] runs whenever its hep collector is set")),
    ("siptrace", "trace_mode", Map::Builtin("[capture] copies every message received and sent, as trace_mode 1 does")),
    ("siptrace", "trace_flag", Map::Builtin("no script flags: [capture] what = \"all\", \"calls\" or \"failures\" selects")),
    ("siptrace", "db_url", Map::Unsupported("sipedge captures to a HEP collector only: let Homer store the messages")),
    ("siptrace", "trace_to_database", Map::Unsupported("sipedge captures to a HEP collector only: let Homer store the messages")),
    ("permissions", "db_url", Map::Unsupported("sipedge's trusted sources are networks in the config: copy the address table's rows to [security] trusted = [\"198.51.100.0/24\", ...]")),
    ("permissions", "address_table", Map::Unsupported("copy the address table's rows to [security] trusted")),
    ("permissions", "trusted_table", Map::Unsupported("copy the trusted table's source addresses to [security] trusted")),
    ("permissions", "db_mode", Map::Builtin("[security] trusted is read from the config")),
];

/// Core settings (`name=value` at the top level).
pub const GLOBALS: &[(&str, Map)] = &[
    (
        "tcp_connection_lifetime",
        Map::Key("tcp.idle_timeout", Conv::Secs),
    ),
    (
        "tcp_connect_timeout",
        Map::Key("tcp.connect_timeout", Conv::Secs),
    ),
    (
        "tcp_max_connections",
        Map::Key("tcp.max_connections", Conv::Count),
    ),
    ("maxbuffer", Map::Key("listen.recv_buffer", Conv::Count)),
    ("maxsndbuffer", Map::Key("listen.send_buffer", Conv::Count)),
    ("udp_mtu", Map::Key("listen.udp_mtu", Conv::Count)),
    (
        "udp_mtu_try_proto",
        Map::Builtin("set `tcp = true` on the destinations that take TCP"),
    ),
    ("mhomed", Map::Builtin("always on with several udp sockets")),
    (
        "children",
        Map::Builtin("one receive thread per [listen] udp socket"),
    ),
    (
        "tcp_children",
        Map::Builtin("TCP connections are served by the runtime"),
    ),
    (
        "debug",
        Map::Builtin("logging: RUST_LOG=info (or debug) in the environment"),
    ),
    (
        "log_stderror",
        Map::Builtin("sipedge logs to stderr (the journal under systemd)"),
    ),
    (
        "log_facility",
        Map::Builtin("sipedge logs to stderr (the journal under systemd)"),
    ),
    (
        "log_name",
        Map::Builtin("sipedge logs to stderr (the journal under systemd)"),
    ),
    (
        "fork",
        Map::Builtin("sipedge runs in the foreground (systemd)"),
    ),
    (
        "auto_aliases",
        Map::Builtin("sipedge's own addresses are its listeners and advertise"),
    ),
    (
        "alias",
        Map::Builtin("sipedge's own addresses are its listeners and advertise"),
    ),
    (
        "server_header",
        Map::Builtin("sipedge adds no Server header to relayed messages"),
    ),
    (
        "user_agent_header",
        Map::Builtin("probes carry sipedge's own User-Agent"),
    ),
    ("sip_warning", Map::Builtin("no Warning header is added")),
    ("mpath", Map::Builtin("no modules to load")),
    (
        "disable_tcp",
        Map::Builtin("TCP listens only where [listen] tcp says"),
    ),
    ("disable_sctp", Map::Builtin("no SCTP")),
    (
        "enable_tls",
        Map::Builtin("TLS listens only where [listen] tls says (with [tls])"),
    ),
    (
        "dns_try_naptr",
        Map::Builtin("no NAPTR; SRV then A/AAAA as Kamailio's default"),
    ),
    (
        "port",
        Map::Builtin("the default port of listen lines without one"),
    ),
    ("memdbg", Map::Builtin("no shared memory to tune")),
    ("memlog", Map::Builtin("no shared memory to tune")),
];

/// Calls of the routing script that sipedge's built-in flow covers, and
/// how; any other call is a warning.
const BUILTIN_CALLS: &[(&str, &str)] = &[
    ("route", "the built-in flow (README: the opening section)"),
    ("t_relay", "stateful relay, built in"),
    ("t_relay_to_udp", "stateful relay, built in"),
    ("t_relay_to_tcp", "stateful relay, built in"),
    ("forward", "stateful relay, built in"),
    ("record_route", "every forwarded request is Record-Routed"),
    (
        "loose_route",
        "in-dialog routing: Call-ID table, registry, route hint",
    ),
    (
        "has_totag",
        "in-dialog routing: Call-ID table, registry, route hint",
    ),
    (
        "sip_trace",
        "[capture] copies every message in and out (no script call)",
    ),
    (
        "sip_trace_mode",
        "[capture] copies every message in and out (no script call)",
    ),
    ("t_check_trans", "transactions, built in"),
    ("t_precheck_trans", "transactions, built in"),
    ("t_newtran", "transactions, built in"),
    ("mf_process_maxfwd_header", "Max-Forwards, built in (483)"),
    ("sanity_check", "malformed requests get 400, built in"),
    (
        "is_method",
        "the built-in flow (README: the opening section)",
    ),
    (
        "sl_send_reply",
        "local answers, built in (OPTIONS 200, 483, 503, 405...)",
    ),
    (
        "send_reply",
        "local answers, built in (OPTIONS 200, 483, 503, 405...)",
    ),
    (
        "t_reply",
        "local answers, built in (OPTIONS 200, 483, 503, 405...)",
    ),
    ("sl_reply_error", "local answers, built in"),
    ("ds_select_dst", "[dispatcher] set and algorithm"),
    ("ds_select_domain", "[dispatcher] set and algorithm"),
    ("ds_select", "[dispatcher] set and algorithm"),
    ("ds_next_dst", "failover on [failover] codes and timeouts"),
    (
        "ds_next_domain",
        "failover on [failover] codes and timeouts",
    ),
    (
        "ds_mark_dst",
        "a call timeout takes the node out and probes it",
    ),
    (
        "ds_is_from_list",
        "requests from a node are relayed to their Request-URI",
    ),
    ("t_on_failure", "failover, built in"),
    ("t_on_reply", "reply handling, built in"),
    ("t_on_branch", "branch handling, built in"),
    ("t_check_status", "[failover] codes"),
    ("t_is_canceled", "CANCEL, built in"),
    ("t_branch_timeout", "failover on fr_timeout, built in"),
    ("t_branch_replied", "failover on fr_timeout, built in"),
    ("remove_hf", "sipedge removes its own Route header"),
    ("pike_check_req", "[security] rate_limit"),
    ("xlog", "log lines are sipedge's own"),
    ("xinfo", "log lines are sipedge's own"),
    ("xnotice", "log lines are sipedge's own"),
    ("xwarn", "log lines are sipedge's own"),
    ("xerr", "log lines are sipedge's own"),
    ("xdbg", "log lines are sipedge's own"),
    ("log", "log lines are sipedge's own"),
];

/// Block keywords of the routing script.
const ROUTE_BLOCKS: &[&str] = &[
    "request_route",
    "route",
    "failure_route",
    "onreply_route",
    "reply_route",
    "branch_route",
    "branch_failure_route",
    "onsend_route",
    "event_route",
];

/// Words followed by `(` in a script that are not calls.
const KEYWORDS: &[&str] = &[
    "if", "while", "switch", "case", "return", "exit", "drop", "break", "default", "else", "and",
    "or", "not",
];

/// TOML sections in the order they are written.
const SECTIONS: &[&str] = &[
    "listen",
    "dispatcher",
    "failover",
    "probe",
    "tcp",
    "tls",
    "admin",
    "security",
    "dialogs",
    "capture",
];

/// siptrace's `duplicate_uri` as `[capture] hep`: Kamailio's SIP URI form
/// (`sip:10.0.0.9:9060;transport=tcp`; port 5060 when none, as Kamailio
/// reads it) to `tcp:10.0.0.9:9060`.
fn hep_uri(uri: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("sip:")
        .ok_or_else(|| format!("{uri}: not a sip: URI"))?;
    let mut parts = rest.split(';');
    let hostport = parts.next().unwrap_or_default();
    let tcp = parts.any(|p| p.eq_ignore_ascii_case("transport=tcp"));
    let has_port = match hostport.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && (!host.contains(':') || host.ends_with(']')) && !port.is_empty()
        }
        None => false,
    };
    let hostport = if has_port {
        hostport.to_owned()
    } else {
        format!("{hostport}:5060")
    };
    let hep = format!("{}:{hostport}", if tcp { "tcp" } else { "udp" });
    crate::capture::Collector::try_from(hep.clone()).map(|_| hep)
}

/// The row of `modparam(module, param, ...)`.
pub fn modparam_map(module: &str, param: &str) -> Option<Map> {
    MODPARAMS
        .iter()
        .find(|(m, p, _)| *m == module && p.eq_ignore_ascii_case(param))
        .map(|&(_, _, map)| map)
}

fn global_map(name: &str) -> Option<Map> {
    GLOBALS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, map)| map)
}

// ---------------------------------------------------------------------------
// Input, output
// ---------------------------------------------------------------------------

/// What the command line adds to the cfg.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// How the cfg is named in comments and warnings (`kamailio.cfg`).
    pub name: String,
    /// The cfg's directory, for relative paths in it (`list_file`,
    /// certificates); written out absolute.
    pub base: Option<std::path::PathBuf>,
    /// `-A NAME[=VALUE]` as Kamailio takes them (`--define`).
    pub defines: Vec<(String, Option<String>)>,
    /// `[listen] advertise` given on the command line (`--advertise`):
    /// wins over what the cfg says.
    pub advertise: Option<String>,
}

/// Where `[dispatcher] list_file` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListChoice {
    /// `--list PATH`, already loaded and checked.
    Given(String),
    /// The cfg's `list_file`, resolved, found and loaded.
    FromCfg(String),
    /// The cfg's `list_file`, resolved but unusable here (the reason).
    Unusable(String, String),
    /// Neither.
    None,
}

/// The result: the TOML text and the warnings (also in the text as
/// `# WARNING` lines).
#[derive(Debug, Clone)]
pub struct Migration {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// Where a setting came from: the line, the statement as written, and as
/// the preprocessor resolved it when that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Src {
    line: usize,
    text: String,
    resolved: Option<String>,
}

/// A key to write.
#[derive(Debug, Clone)]
struct Setting {
    key: String,
    value: String,
    srcs: Vec<Src>,
    note: Option<String>,
    /// Written commented out (the value needs the operator).
    commented: bool,
}

/// A parsed cfg, before the list file is chosen.
#[derive(Debug, Clone, Default)]
pub struct Kamailio {
    name: String,
    settings: Vec<Setting>,
    /// `# from ... : built in, ...` lines.
    builtin: Vec<(Src, String)>,
    warnings: Vec<(Option<usize>, String)>,
    /// The cfg's `list_file`, resolved, and its source.
    list_file: Option<(String, Src)>,
    script: Vec<Block>,
    /// `ds_select*` and `ds_next_*` calls: name, arguments, where.
    selects: Vec<(String, Vec<Arg>, Src)>,
}

/// A route block and the calls in it.
#[derive(Debug, Clone)]
struct Block {
    kind: String,
    first: usize,
    last: usize,
    calls: Vec<(String, usize)>,
}

// ---------------------------------------------------------------------------
// Preprocessor
// ---------------------------------------------------------------------------

/// The cfg after `#!` directives: one resolved line per input line
/// (directives and inactive lines blank), so line numbers stay.
struct Preprocessed {
    lines: Vec<String>,
    warnings: Vec<(Option<usize>, String)>,
}

fn preprocess(text: &str, opts: &Options) -> Preprocessed {
    let mut defines: HashMap<String, String> = HashMap::new();
    for (name, value) in &opts.defines {
        defines.insert(name.clone(), value.clone().unwrap_or_default());
    }
    let mut substs: Vec<(String, String, bool)> = Vec::new();
    let mut warnings = Vec::new();
    // Per open #!ifdef: (this branch active, the enclosing one active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let raw: Vec<&str> = text.lines().collect();
    let mut lines = vec![String::new(); raw.len()];
    let mut i = 0;
    while i < raw.len() {
        let no = i + 1;
        let mut line = raw[i].to_owned();
        let active = stack.last().is_none_or(|&(on, outer)| on && outer);
        let trimmed = line.trim_start();
        let directive = trimmed
            .strip_prefix("#!")
            .or_else(|| trimmed.strip_prefix("!!"));
        let Some(directive) = directive else {
            if active {
                lines[i] = apply(&line, &defines, &substs);
            }
            i += 1;
            continue;
        };
        // A define's value may go on over `\`-ended lines.
        let mut directive = directive.to_owned();
        while directive.ends_with('\\') && i + 1 < raw.len() {
            directive.pop();
            i += 1;
            directive.push(' ');
            directive.push_str(raw[i].trim());
        }
        line.clear();
        let (word, rest) = split_word(directive.trim());
        let rest = rest.trim();
        match word {
            "ifdef" | "ifndef" => {
                let name = rest.split_whitespace().next().unwrap_or("");
                let defined = defines.contains_key(name);
                if active && !defined {
                    warnings.push((
                        Some(no),
                        format!(
                            "#!{word} {name}: {name} is not defined in the file; read as not \
                             defined (Kamailio's -A {name} on its command line would change \
                             that: give it to migrate as --define {name})"
                        ),
                    ));
                }
                stack.push((defined == (word == "ifdef"), active));
            }
            "else" => {
                if let Some(top) = stack.last_mut() {
                    top.0 = !top.0;
                }
            }
            "endif" => {
                stack.pop();
            }
            _ if !active => {}
            "define" | "trydef" | "redefine" => {
                let (name, value) = split_word(rest);
                if word == "trydef" && defines.contains_key(name) {
                } else if !name.is_empty() {
                    let value = apply(value.trim(), &defines, &substs);
                    defines.insert(name.to_owned(), value);
                }
            }
            "undef" => {
                defines.remove(rest);
            }
            "subst" | "substdef" | "substdefs" => match parse_subst(rest) {
                Some((from, to, global)) => {
                    if word != "subst" {
                        let value = if word == "substdefs" {
                            format!("\"{to}\"")
                        } else {
                            to.clone()
                        };
                        defines.insert(from.clone(), value);
                    }
                    substs.push((from, to, global));
                }
                None => warnings.push((
                    Some(no),
                    format!("#!{word} {rest}: not understood (expected \"/NAME/value/g\")"),
                )),
            },
            "KAMAILIO" | "SER" | "OPENSER" | "MAXCOMPAT" | "ALL" => {}
            "include_file" | "import_file" => warnings.push((
                Some(no),
                format!("#!{word} {rest}: not followed; run migrate on a file with it inlined"),
            )),
            _ if word.starts_with("KAMAILIO") => {}
            _ => warnings.push((Some(no), format!("#!{word}: directive not understood"))),
        }
        i += 1;
    }
    Preprocessed { lines, warnings }
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(n) => (&s[..n], &s[n..]),
        None => (s, ""),
    }
}

/// `"!NAME!value!g"` (any delimiter) to (NAME, value, global).
fn parse_subst(rest: &str) -> Option<(String, String, bool)> {
    let inner = rest.trim().strip_prefix('"')?.strip_suffix('"')?;
    let delim = inner.chars().next()?;
    let mut parts = inner[delim.len_utf8()..].split(delim);
    let from = parts.next()?.to_owned();
    let to = parts.next()?.to_owned();
    let flags = parts.next().unwrap_or("");
    (!from.is_empty()).then_some((from, to, flags.contains('g')))
}

/// Substitutions first (they reach inside strings), then defines (whole
/// identifiers outside strings), a few rounds for defines of defines.
fn apply(
    line: &str,
    defines: &HashMap<String, String>,
    substs: &[(String, String, bool)],
) -> String {
    let mut out = line.to_owned();
    for (from, to, global) in substs {
        out = if *global {
            out.replace(from.as_str(), to)
        } else {
            out.replacen(from.as_str(), to, 1)
        };
    }
    if defines.is_empty() {
        return out;
    }
    for _ in 0..4 {
        let next = replace_idents(&out, defines);
        if next == out {
            break;
        }
        out = next;
    }
    out
}

fn replace_idents(line: &str, defines: &HashMap<String, String>) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' && i + 1 < bytes.len() {
                out.push_str(&line[i..i + 2]);
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            out.push(c as char);
            i += 1;
        } else if c == b'"' || c == b'\'' {
            quote = Some(c);
            out.push(c as char);
            i += 1;
        } else if c == b'#' {
            out.push_str(&line[i..]);
            break;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &line[start..i];
            // `$var(NAME)` and the like are script variables, not defines.
            let in_pv = start > 0 && bytes[start - 1] == b'$';
            match defines.get(word) {
                Some(v) if !in_pv => out.push_str(v),
                _ => out.push_str(word),
            }
        } else {
            let ch = line[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Scanner: statements with their lines
// ---------------------------------------------------------------------------

/// Text with line numbers for offsets.
struct Text {
    text: String,
    starts: Vec<usize>,
}

impl Text {
    fn new(lines: &[String]) -> Text {
        let mut text = String::new();
        let mut starts = Vec::with_capacity(lines.len());
        for l in lines {
            starts.push(text.len());
            text.push_str(l);
            text.push('\n');
        }
        Text { text, starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }
}

/// Skips whitespace and comments (`#`, `//`, `/* */`) from `i`.
fn skip_space(b: &[u8], mut i: usize) -> usize {
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b[i..].starts_with(b"#") || b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = match find(b, i + 2, b"*/") {
                Some(end) => end + 2,
                None => b.len(),
            };
        } else {
            return i;
        }
    }
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    (from..b.len()).find(|&i| b[i..].starts_with(needle))
}

/// The end of the string starting at `i` (its quote), past the closing one.
fn skip_string(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != q {
        if b[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    (j + 1).min(b.len())
}

fn ident_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    i
}

/// One argument of a call or modparam.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    Str(String),
    Int(i64),
    /// Anything else (a variable, an expression), as written.
    Other(String),
}

impl Arg {
    fn text(&self) -> String {
        match self {
            Arg::Str(s) | Arg::Other(s) => s.clone(),
            Arg::Int(n) => n.to_string(),
        }
    }

    /// An integer, or a string holding one (`ds_select_dst("1", "4")`).
    fn int(&self) -> Option<i64> {
        match self {
            Arg::Int(n) => Some(*n),
            Arg::Str(s) => s.trim().parse().ok(),
            Arg::Other(_) => None,
        }
    }
}

/// Parses `( arg, arg, ... )` at `i` (the `(`); returns the args and the
/// offset past `)`.
fn parse_args(b: &[u8], i: usize) -> (Vec<Arg>, usize) {
    let mut args = Vec::new();
    let mut j = i + 1;
    let mut cur = String::new();
    let mut depth = 0usize;
    let mut strings: Vec<String> = Vec::new();
    let mut other = false;
    let push =
        |cur: &mut String, strings: &mut Vec<String>, other: &mut bool, args: &mut Vec<Arg>| {
            let t = cur.trim().to_owned();
            let arg = if !*other && !strings.is_empty() && t.is_empty() {
                // Adjacent strings are one: "a" "b".
                Arg::Str(strings.concat())
            } else if strings.is_empty() && !t.is_empty() {
                match parse_int(&t) {
                    Some(n) => Arg::Int(n),
                    None => Arg::Other(t),
                }
            } else if strings.is_empty() {
                Arg::Other(String::new())
            } else {
                Arg::Other(format!("{}{t}", strings.concat()))
            };
            args.push(arg);
            cur.clear();
            strings.clear();
            *other = false;
        };
    while j < b.len() {
        let c = b[j];
        match c {
            b'"' | b'\'' => {
                let end = skip_string(b, j);
                if depth == 0 {
                    if !cur.trim().is_empty() {
                        other = true;
                    }
                    strings.push(unescape(&b[j + 1..end.saturating_sub(1).max(j + 1)]));
                } else {
                    cur.push_str(&String::from_utf8_lossy(&b[j..end]));
                }
                j = end;
            }
            b'(' => {
                depth += 1;
                cur.push('(');
                j += 1;
            }
            b')' if depth > 0 => {
                depth -= 1;
                cur.push(')');
                j += 1;
            }
            b')' => {
                if !(args.is_empty() && cur.trim().is_empty() && strings.is_empty()) {
                    push(&mut cur, &mut strings, &mut other, &mut args);
                }
                return (args, j + 1);
            }
            b',' if depth == 0 => {
                push(&mut cur, &mut strings, &mut other, &mut args);
                j += 1;
            }
            b'#' => j = skip_space(b, j),
            b'/' if b[j..].starts_with(b"/*") || b[j..].starts_with(b"//") => j = skip_space(b, j),
            _ => {
                if !c.is_ascii_whitespace() {
                    if !strings.is_empty() {
                        other = true;
                    }
                    cur.push(c as char);
                } else {
                    cur.push(' ');
                }
                j += 1;
            }
        }
    }
    (args, j)
}

fn parse_int(t: &str) -> Option<i64> {
    if let Some(hex) = t.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok();
    }
    // A leading 0 is octal (file modes: `0600`).
    if t.len() > 1 && t.starts_with('0') {
        return i64::from_str_radix(&t[1..], 8).ok();
    }
    t.parse().ok()
}

fn unescape(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A statement's text on its lines as written, comments out, on one line.
fn original(raw: &[&str], first: usize, last: usize) -> String {
    let mut out = String::new();
    for l in raw.iter().take(last).skip(first - 1) {
        let t = strip_comment(l).trim().to_owned();
        if t.is_empty() {
            continue;
        }
        if !out.is_empty() && !out.ends_with('(') {
            out.push(' ');
        }
        out.push_str(&t);
    }
    out
}

/// The line without its `#` or `//` comment (quote-aware).
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => i = skip_string(b, i),
            b'#' => return &line[..i],
            b'/' if b[i..].starts_with(b"//") => return &line[..i],
            _ => i += 1,
        }
    }
    line
}

// ---------------------------------------------------------------------------
// Reading the cfg
// ---------------------------------------------------------------------------

/// One `listen` socket.
#[derive(Debug, Clone)]
struct Listen {
    proto: &'static str,
    addr: std::net::SocketAddr,
    advertise: Option<String>,
    src: Src,
}

impl Kamailio {
    /// Reads `text` (a kamailio.cfg).
    pub fn parse(text: &str, opts: &Options) -> Kamailio {
        let raw: Vec<&str> = text.lines().collect();
        let pre = preprocess(text, opts);
        let t = Text::new(&pre.lines);
        let mut k = Kamailio {
            name: if opts.name.is_empty() {
                "kamailio.cfg".to_owned()
            } else {
                opts.name.clone()
            },
            warnings: pre.warnings,
            ..Kamailio::default()
        };
        let mut r = Reader {
            raw: &raw,
            t: &t,
            globals: Vec::new(),
            modparams: Vec::new(),
            modules: Vec::new(),
        };
        r.scan(&mut k);
        let Reader {
            globals,
            modparams,
            modules,
            ..
        } = r;
        // Modparams first: a tls listener needs to know about [tls].
        k.map_modparams(&modparams, &modules, opts);
        k.map_globals(&globals, opts.advertise.as_deref());
        k.map_selects();
        k.warnings.sort_by_key(|(line, _)| line.unwrap_or(0));
        k
    }

    /// The cfg's `list_file`, resolved against its directory.
    pub fn list_file(&self) -> Option<&str> {
        self.list_file.as_ref().map(|(p, _)| p.as_str())
    }

    fn warn(&mut self, src: &Src, why: impl std::fmt::Display) {
        self.warnings
            .push((Some(src.line), format!("{}: {why}", src.text)));
    }

    fn set(&mut self, key: &str, value: String, src: Src) {
        self.settings.push(Setting {
            key: key.to_owned(),
            value,
            srcs: vec![src],
            note: None,
            commented: false,
        });
    }

    fn map_globals(&mut self, globals: &[(String, String, Src)], advertise: Option<&str>) {
        let disable_tcp = globals.iter().any(|(n, v, _)| {
            n.eq_ignore_ascii_case("disable_tcp") && matches!(v.trim(), "yes" | "1" | "on" | "true")
        });
        let default_port = globals
            .iter()
            .rev()
            .find(|(n, ..)| n == "port")
            .and_then(|(_, v, _)| v.trim().parse::<u16>().ok())
            .unwrap_or(crate::value::DEFAULT_SIP_PORT);
        let mut global_advertise: Option<String> = None;
        let mut advertised_port: Option<String> = None;
        let mut listens = Vec::new();
        for (name, value, src) in globals {
            let lname = name.to_ascii_lowercase();
            match lname.as_str() {
                "listen" => self.parse_listen(value, src, disable_tcp, default_port, &mut listens),
                "advertised_address" => global_advertise = Some(unquote(value)),
                "advertised_port" => advertised_port = Some(unquote(value)),
                _ => match global_map(&lname) {
                    Some(Map::Key(key, conv)) => {
                        let arg = value_arg(value);
                        self.convert(key, conv, &arg, src.clone(), None);
                    }
                    Some(Map::Builtin(why)) => self.builtin.push((src.clone(), why.to_owned())),
                    Some(Map::Unsupported(why)) => self.warn(src, format!("not mapped: {why}")),
                    None => self.warn(src, "not mapped: no sipedge setting known to migrate"),
                },
            }
        }
        let advertise_global = global_advertise.map(|a| match &advertised_port {
            Some(p) => format!("{a}:{p}"),
            None => a,
        });
        self.map_listens(listens, advertise_global, globals, advertise);
    }

    fn parse_listen(
        &mut self,
        value: &str,
        src: &Src,
        disable_tcp: bool,
        default_port: u16,
        out: &mut Vec<Listen>,
    ) {
        let mut words = value.split_whitespace();
        let sock = words.next().unwrap_or("");
        let mut advertise = None;
        while let Some(w) = words.next() {
            match w.to_ascii_lowercase().as_str() {
                "advertise" | "as" => advertise = words.next().map(unquote),
                "name" | "virtual" => {
                    let v = words.next().unwrap_or("");
                    self.builtin
                        .push((src.clone(), format!("{w} {v}: socket names are not used")));
                }
                other => self.warn(src, format!("listen option {other:?} not understood")),
            }
        }
        let (protos, rest): (&[&'static str], &str) = match sock.split_once(':') {
            Some((p, r)) if p.eq_ignore_ascii_case("udp") => (&["udp"], r),
            Some((p, r)) if p.eq_ignore_ascii_case("tcp") => (&["tcp"], r),
            Some((p, r)) if p.eq_ignore_ascii_case("tls") => (&["tls"], r),
            Some((p, _)) if ["sctp", "ws", "wss"].contains(&p.to_ascii_lowercase().as_str()) => {
                self.warn(src, format!("not mapped: sipedge does not speak {p}"));
                return;
            }
            _ if disable_tcp => (&["udp"], sock),
            _ => (&["udp", "tcp"], sock),
        };
        let addr = parse_sockaddr(rest, default_port);
        let Some(addr) = addr else {
            self.warn(
                src,
                format!(
                    "not mapped: {rest:?} is not an IP address (and port); sipedge binds \
                     addresses, not interface or host names"
                ),
            );
            return;
        };
        for proto in protos {
            let port = if *proto == "tls" && !rest.contains(':') {
                5061
            } else {
                addr.port()
            };
            out.push(Listen {
                proto,
                addr: std::net::SocketAddr::new(addr.ip(), port),
                advertise: advertise.clone(),
                src: src.clone(),
            });
        }
    }

    fn map_listens(
        &mut self,
        listens: Vec<Listen>,
        global_advertise: Option<String>,
        globals: &[(String, String, Src)],
        given: Option<&str>,
    ) {
        if listens.is_empty() {
            self.warnings.push((
                None,
                "no listen line: Kamailio listens on every interface; [listen] udp defaults to \
                 0.0.0.0:5060 and needs an advertise address"
                    .to_owned(),
            ));
        }
        let has_tls = self.settings.iter().any(|s| s.key == "tls.certificate")
            && self.settings.iter().any(|s| s.key == "tls.key");
        for proto in ["udp", "tcp", "tls"] {
            let mine: Vec<&Listen> = listens.iter().filter(|l| l.proto == proto).collect();
            if mine.is_empty() {
                continue;
            }
            let mut addrs: Vec<String> = Vec::new();
            let mut srcs = Vec::new();
            for l in &mine {
                let a = l.addr.to_string();
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
                if !srcs.contains(&l.src) {
                    srcs.push(l.src.clone());
                }
            }
            if proto == "tls" && !has_tls {
                self.warnings.push((
                    srcs.first().map(|s: &Src| s.line),
                    "listen=tls: written commented out: it needs [tls] certificate and key \
                     (tls.cfg is not read by migrate)"
                        .to_owned(),
                ));
            }
            let value = format!(
                "[{}]",
                addrs
                    .iter()
                    .map(|a| toml_str(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.settings.push(Setting {
                key: format!("listen.{proto}"),
                value,
                srcs,
                note: (proto == "tls" && !has_tls).then(|| {
                    "WARNING: needs [tls] certificate and key (tls.cfg is not read by migrate)"
                        .to_owned()
                }),
                commented: proto == "tls" && !has_tls,
            });
        }
        // One advertised address: the first listen's own, else the global
        // one, else the first listen address that is not a wildcard.
        let explicit = listens
            .iter()
            .find_map(|l| l.advertise.clone().map(|a| (a, l.src.clone())));
        let distinct: Vec<&String> = {
            let mut v: Vec<&String> = Vec::new();
            for a in listens.iter().filter_map(|l| l.advertise.as_ref()) {
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            v
        };
        if distinct.len() > 1 {
            let others = distinct[1..]
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.warnings.push((
                listens.first().map(|l| l.src.line),
                format!(
                    "several advertise addresses; sipedge has one ([listen] advertise): using \
                     {}, not {others}",
                    distinct[0]
                ),
            ));
        }
        let chosen = match (explicit, global_advertise) {
            (Some((a, src)), _) => Some((a, src, None)),
            (None, Some(a)) => {
                let src = globals
                    .iter()
                    .find(|(n, ..)| n.eq_ignore_ascii_case("advertised_address"))
                    .map(|(.., s)| s.clone());
                src.map(|s| (a, s, None))
            }
            (None, None) => listens
                .iter()
                .find(|l| !l.addr.ip().is_unspecified())
                .map(|l| {
                    (
                        l.addr.ip().to_string(),
                        l.src.clone(),
                        Some(
                            "no advertise in kamailio.cfg: Kamailio writes the listen address \
                         itself"
                                .to_owned(),
                        ),
                    )
                }),
        };
        if let Some(a) = given {
            self.settings.push(Setting {
                key: "listen.advertise".into(),
                value: toml_str(a),
                srcs: Vec::new(),
                note: Some(match &chosen {
                    Some((c, src, _)) => format!(
                        "given with --advertise (kamailio.cfg:{} says {c})",
                        src.line
                    ),
                    None => "given with --advertise".into(),
                }),
                commented: false,
            });
            return;
        }
        match chosen {
            Some((a, src, note)) => {
                let a = a.trim_matches('"').to_owned();
                self.settings.push(Setting {
                    key: "listen.advertise".into(),
                    value: toml_str(&a),
                    srcs: vec![src],
                    note,
                    commented: false,
                });
            }
            None => {
                self.warnings.push((
                    listens.first().map(|l| l.src.line),
                    "no advertise address: Kamailio writes each interface's own address; \
                     sipedge needs the one address the trunk and every node reach (the VIP): \
                     set [listen] advertise (or run migrate with --advertise)"
                        .to_owned(),
                ));
                self.settings.push(Setting {
                    key: "listen.advertise".into(),
                    value: toml_str("CHANGE-ME"),
                    srcs: Vec::new(),
                    note: Some("WARNING: set the address trunk and nodes reach".into()),
                    commented: true,
                });
            }
        }
    }

    /// Converts one value for `key` and records it (or the warning).
    fn convert(
        &mut self,
        key: &str,
        conv: Conv,
        arg: &Arg,
        src: Src,
        base: Option<&std::path::Path>,
    ) {
        let bad =
            |k: &mut Kamailio, why: String| k.warn(&src, format!("not mapped to {key}: {why}"));
        let value = match conv {
            Conv::Secs | Conv::Millis => {
                let Some(n) = arg.int().filter(|n| *n >= 0) else {
                    return bad(self, format!("{} is not a whole number", arg.text()));
                };
                let d = if conv == Conv::Secs {
                    Duration::from_secs(n as u64)
                } else {
                    Duration::from_millis(n as u64)
                };
                if let Some(&(_, min, max)) = DURATION_RANGES.iter().find(|(k, ..)| *k == key) {
                    if d < min || d > max {
                        return bad(
                            self,
                            format!("{d:?} is outside sipedge's range {min:?} to {max:?}"),
                        );
                    }
                }
                toml_str(&duration_text(d))
            }
            Conv::Count => {
                let Some(n) = arg.int().filter(|n| *n >= 0) else {
                    return bad(self, format!("{} is not a count", arg.text()));
                };
                if let Some(&(_, min, max)) = COUNT_RANGES.iter().find(|(k, ..)| *k == key) {
                    if (n as u64) < min || n as u64 > max {
                        return bad(
                            self,
                            format!("{n} is outside sipedge's range {min} to {max}"),
                        );
                    }
                }
                if key.ends_with("_buffer") && !SOCKET_BUFFER_RANGE.contains(&(n as usize)) {
                    let (min, max) = (SOCKET_BUFFER_RANGE.start(), SOCKET_BUFFER_RANGE.end());
                    return bad(
                        self,
                        format!("{n} is outside sipedge's range {min} to {max}"),
                    );
                }
                n.to_string()
            }
            Conv::Str => toml_str(&arg.text()),
            Conv::HepUri => match hep_uri(&arg.text()) {
                Ok(v) => toml_str(&v),
                Err(e) => return bad(self, e),
            },
            Conv::Bool => match arg.int() {
                Some(0) => "false".to_owned(),
                Some(1) => "true".to_owned(),
                _ => return bad(self, format!("{} is not 0 or 1", arg.text())),
            },
            Conv::DnsMode => {
                let Some(bits) = arg.int().filter(|n| (0..16).contains(n)) else {
                    return bad(
                        self,
                        format!("{} is not a ds_dns_mode (0 to 15)", arg.text()),
                    );
                };
                if bits & 6 != 0 {
                    self.warn(
                        &src,
                        format!(
                            "ds_dns_mode {bits}: resolving at every use (2) or on a timer (4) \
                             is not done; sipedge resolves the pool's names at start and on \
                             each reload (as with 1)"
                        ),
                    );
                }
                (bits & 8 != 0).to_string()
            }
            Conv::Octal => match arg {
                Arg::Int(n) => toml_str(&format!("{n:04o}")),
                other => toml_str(&other.text()),
            },
            Conv::Path => {
                let p = std::path::PathBuf::from(arg.text());
                let p = match base {
                    Some(b) if p.is_relative() => b.join(p),
                    _ => p,
                };
                let p = p.display().to_string();
                if key == "dispatcher.list_file" {
                    self.list_file = Some((p, src));
                    return;
                }
                toml_str(&p)
            }
            Conv::ProbingMode => match arg.int().map(ProbingMode::try_from) {
                Some(Ok(mode)) => mode.number().to_string(),
                _ => return bad(self, format!("{} is not 0, 1, 2 or 3", arg.text())),
            },
            Conv::ReplyCodes => match reply_codes(&arg.text()) {
                Ok(v) => v,
                Err(e) => return bad(self, e),
            },
            Conv::CtlSocket => {
                let s = arg.text().replace("localhost", "127.0.0.1");
                let s = s.replace(":*:", ":0.0.0.0:");
                if let Some(rest) = s.strip_prefix("unixd:") {
                    return bad(
                        self,
                        format!("unixd:{rest}: datagram unix sockets are not served"),
                    );
                }
                if let Err(e) = CtlSocket::try_from(s.clone()) {
                    return bad(self, e);
                }
                // Several binrpc lines make one list.
                if let Some(existing) = self.settings.iter_mut().find(|s| s.key == key) {
                    existing.value = format!(
                        "{}, {}]",
                        existing.value.trim_end_matches(']'),
                        toml_str(&s)
                    );
                    existing.srcs.push(src);
                    return;
                }
                format!("[{}]", toml_str(&s))
            }
            Conv::Pike(part) => {
                let Some(n) = arg.int().filter(|n| *n > 0) else {
                    return bad(self, format!("{} is not a positive number", arg.text()));
                };
                self.pike(part, n as u64, src);
                return;
            }
        };
        self.set(key, value, src);
    }

    /// An ndb_redis server (`name=reg;addr=127.0.0.1;port=6379;db=0`):
    /// sipedge's registry keeps the article's keys and values, but whether
    /// this script stores those is routing logic, so the key is offered
    /// commented out, with a warning.
    fn redis_registry(&mut self, spec: &str, src: &Src) {
        let field = |k: &str| {
            spec.split(';')
                .filter_map(|kv| kv.split_once('='))
                .find(|(key, _)| key.trim() == k)
                .map(|(_, v)| v.trim().to_owned())
        };
        let (Some(addr), port, db) = (field("addr"), field("port"), field("db")) else {
            return self.warn(src, "not mapped: an ndb_redis server without addr=");
        };
        let host = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr
        };
        let url = format!(
            "redis://{host}:{}/{}",
            port.as_deref().unwrap_or("6379"),
            db.as_deref().unwrap_or("0")
        );
        self.warn(
            src,
            format!(
                "written commented out as [dialogs] registry = \"{url}\": sipedge's registry \
                 stores call:<Call-ID> -> the node's URI (EX ttl) as the article's script does; \
                 uncomment it if this script's redis_cmd calls do the same"
            ),
        );
        self.settings.push(Setting {
            key: "dialogs.registry".into(),
            value: toml_str(&url),
            srcs: vec![src.clone()],
            note: Some(
                "WARNING: uncomment if the script stores SET call:$ci $du EX ttl on the 200, as \
                 the article's STORE_NODE"
                    .into(),
            ),
            commented: true,
        });
    }

    /// pike's settings as one `rate_limit`, pike's defaults for the rest.
    fn pike(&mut self, part: PikePart, n: u64, src: Src) {
        let existing = self
            .settings
            .iter()
            .position(|s| s.key == "security.rate_limit");
        let mut parts = match existing {
            Some(i) => pike_parts(&self.settings[i].value),
            None => (PIKE_DEFAULTS.0, PIKE_DEFAULTS.1, PIKE_DEFAULTS.2),
        };
        match part {
            PikePart::Requests => parts.0 = n,
            PikePart::Per => parts.1 = n,
            PikePart::BlockFor => parts.2 = n,
        }
        let value = format!(
            "{{ requests = {}, per = \"{}s\", block_for = \"{}s\" }}",
            parts.0, parts.1, parts.2
        );
        match existing {
            Some(i) => {
                self.settings[i].value = value;
                self.settings[i].srcs.push(src);
            }
            None => self.settings.push(Setting {
                key: "security.rate_limit".into(),
                value,
                srcs: vec![src],
                note: Some(
                    "pike's defaults for what kamailio.cfg does not set (30 requests per 2 s, \
                     120 s)"
                        .into(),
                ),
                commented: false,
            }),
        }
    }

    fn map_modparams(
        &mut self,
        params: &[(Vec<Arg>, Src)],
        modules: &[(String, Src)],
        opts: &Options,
    ) {
        let base = opts.base.as_deref();
        for (args, src) in params {
            let [module, param, value] = args.as_slice() else {
                self.warn(
                    src,
                    "modparam with other than three arguments: not understood",
                );
                continue;
            };
            let (Arg::Str(module), Arg::Str(param)) = (module, param) else {
                self.warn(src, "modparam: module and parameter must be strings");
                continue;
            };
            if module == "ndb_redis" && param == "server" {
                self.redis_registry(&value.text(), src);
                continue;
            }
            match modparam_map(module, param) {
                Some(Map::Key(key, conv)) => self.convert(key, conv, value, src.clone(), base),
                Some(Map::Builtin(why)) => self.builtin.push((src.clone(), why.to_owned())),
                Some(Map::Unsupported(why)) => self.warn(src, format!("not mapped: {why}")),
                None => self.warn(
                    src,
                    format!("not mapped: no sipedge setting for {module}'s {param}"),
                ),
            }
        }
        let loaded = |m: &str| modules.iter().any(|(name, _)| name == m);
        // pike loaded with no modparam: its defaults apply in Kamailio.
        if loaded("pike") && !self.settings.iter().any(|s| s.key == "security.rate_limit") {
            if let Some((_, src)) = modules.iter().find(|(n, _)| n == "pike") {
                self.pike(PikePart::Requests, PIKE_DEFAULTS.0, src.clone());
            }
        }
        // ctl loaded without binrpc: Kamailio's default socket, so kamcmd
        // without -s keeps working.
        if loaded("ctl") && !self.settings.iter().any(|s| s.key == "admin.ctl") {
            if let Some((_, src)) = modules.iter().find(|(n, _)| n == "ctl") {
                self.settings.push(Setting {
                    key: "admin.ctl".into(),
                    value: "[\"unix:/run/kamailio/kamailio_ctl\"]".into(),
                    srcs: vec![src.clone()],
                    note: Some("Kamailio's default binrpc socket (kamcmd's default -s)".into()),
                    commented: false,
                });
            }
        }
        // Kamailio's defaults where sipedge's differ, written out so the
        // behaviour stays the same.
        let (failover, probe) = (Failover::default(), Probe::default());
        let kamailio_defaults = [
            (
                "tm",
                "failover.fr_timeout",
                "\"30s\"".to_owned(),
                format!(
                    "tm's fr_timer default (30 s); sipedge's own is {}",
                    duration_text(failover.fr_timeout)
                ),
            ),
            (
                "dispatcher",
                "probe.failure_threshold",
                "1".to_owned(),
                format!(
                    "ds_probing_threshold default (1); sipedge's own is {}",
                    probe.failure_threshold
                ),
            ),
            (
                "dispatcher",
                "probe.mode",
                "0".to_owned(),
                format!(
                    "ds_probing_mode default (0: flagged destinations only); sipedge's own is {}",
                    probe.mode.number()
                ),
            ),
        ];
        for (module, key, value, why) in kamailio_defaults {
            if !loaded(module) || self.settings.iter().any(|s| s.key == key) {
                continue;
            }
            let src = modules
                .iter()
                .find(|(n, _)| n == module)
                .map(|(_, s)| s.clone());
            self.settings.push(Setting {
                key: key.into(),
                value,
                srcs: src.into_iter().collect(),
                note: Some(format!("not set in kamailio.cfg: Kamailio's {why}")),
                commented: false,
            });
        }
        if loaded("dispatcher") && !self.settings.iter().any(|s| s.key == "probe.interval") {
            if let Some((_, src)) = modules.iter().find(|(n, _)| n == "dispatcher") {
                self.warn(
                    src,
                    format!(
                        "no ds_ping_interval: Kamailio does not probe at all; sipedge always \
                         probes ([probe] interval, {} by default)",
                        duration_text(probe.interval)
                    ),
                );
            }
        }
        for (m, src) in modules {
            if !KNOWN_MODULES.contains(&m.as_str()) {
                let hint = match m.as_str() {
                    "ndb_redis" => {
                        "; a Redis call registry (SET call:<Call-ID> $du) is [dialogs] registry = \
                         \"redis://HOST:PORT/DB\""
                    }
                    "dialog" | "htable" => "; calls are pinned by sipedge's [dialogs] table",
                    _ => "",
                };
                self.warn(src, format!("module {m}: not mapped{hint}"));
            }
        }
    }

    fn map_selects(&mut self) {
        let mut chosen: Option<(i64, i64, usize)> = None;
        let mut next_dst = false;
        let calls = std::mem::take(&mut self.selects);
        let mut status: Option<(Vec<u16>, Src)> = None;
        for (name, args, src) in calls {
            if name == "ds_next_dst" || name == "ds_next_domain" {
                next_dst = true;
                continue;
            }
            if name == "t_check_status" {
                let pattern = args.first().map(Arg::text).unwrap_or_default();
                match status_codes(&pattern) {
                    Some(codes) => match &mut status {
                        Some((all, _)) => all.extend(codes),
                        None => status = Some((codes, src)),
                    },
                    None => self.warn(
                        &src,
                        format!(
                            "pattern {pattern:?} not read; [failover] codes stays \
                             [500, 502, 503, 504]"
                        ),
                    ),
                }
                continue;
            }
            let (Some(set), Some(alg)) = (
                args.first().and_then(Arg::int),
                args.get(1).and_then(Arg::int),
            ) else {
                self.warn(
                    &src,
                    "set and algorithm are not numbers migrate can read; set [dispatcher] set \
                     and algorithm by hand",
                );
                continue;
            };
            if args.len() > 2 {
                self.builtin.push((
                    src.clone(),
                    format!(
                        "limit {}: sipedge tries every active node of the set",
                        args[2].text()
                    ),
                ));
            }
            match chosen {
                None => {
                    chosen = Some((set, alg, src.line));
                    self.set("dispatcher.set", set.to_string(), src.clone());
                    match u8::try_from(alg)
                        .ok()
                        .and_then(Algorithm::from_kamailio_number)
                    {
                        Some(a) => self.set("dispatcher.algorithm", toml_str(a.as_str()), src),
                        None => self.warn(
                            &src,
                            format!(
                                "algorithm {alg} is not one sipedge has (README: Migrating); \
                                 [dispatcher] algorithm stays round-robin (4)"
                            ),
                        ),
                    }
                }
                Some((s, a, line)) if (s, a) != (set, alg) => self.warn(
                    &src,
                    format!(
                        "sipedge sends the trunk's calls to one set with one algorithm: using \
                         set {s} algorithm {a} from line {line}"
                    ),
                ),
                Some(_) => {}
            }
        }
        // The codes a failure_route fails over on, when it does.
        if let (Some((mut codes, src)), true) = (status, next_dst) {
            codes.sort_unstable();
            codes.dedup();
            codes.retain(|c| (300..=699).contains(c));
            if !codes.is_empty() {
                let list: Vec<String> = codes.iter().map(u16::to_string).collect();
                self.set("failover.codes", format!("[{}]", list.join(", ")), src);
            }
        }
        if chosen.is_some() && !next_dst {
            self.warnings.push((
                None,
                "the script never calls ds_next_dst(): Kamailio did not fail over; sipedge \
                 does, on [failover] codes and timeouts"
                    .to_owned(),
            ));
        }
        if chosen.is_none() {
            self.warnings.push((
                None,
                "no ds_select_dst(): [dispatcher] set 1 and algorithm round-robin (4) are \
                 sipedge's defaults"
                    .to_owned(),
            ));
        }
    }
}

/// The status codes a `t_check_status` regular expression matches, for
/// the simple ones failure routes use: `5[0-9][0-9]`, `^(500|503)$`,
/// `50[234]`, `5..`; `None` for anything else.
fn status_codes(pattern: &str) -> Option<Vec<u16>> {
    let p = pattern.trim().trim_start_matches('^').trim_end_matches('$');
    let p = p
        .strip_prefix('(')
        .and_then(|p| p.strip_suffix(')'))
        .unwrap_or(p);
    let mut codes = Vec::new();
    for alt in p.split('|') {
        // Each of the three positions: the digits it allows.
        let mut positions: Vec<Vec<u16>> = Vec::new();
        let mut chars = alt.chars().peekable();
        while let Some(c) = chars.next() {
            let digits: Vec<u16> = match c {
                '0'..='9' => vec![c as u16 - u16::from(b'0')],
                '.' => (0..10).collect(),
                '[' => {
                    let mut set = Vec::new();
                    let mut prev: Option<u16> = None;
                    loop {
                        match chars.next()? {
                            ']' => break,
                            '-' => {
                                let lo = prev?;
                                let hi = chars.next()?.to_digit(10)? as u16;
                                set.pop();
                                set.extend(lo..=hi);
                                prev = None;
                            }
                            d => {
                                let d = d.to_digit(10)? as u16;
                                set.push(d);
                                prev = Some(d);
                            }
                        }
                    }
                    set
                }
                _ => return None,
            };
            positions.push(digits);
        }
        let [a, b, c] = positions.as_slice() else {
            return None;
        };
        for x in a {
            for y in b {
                for z in c {
                    codes.push(x * 100 + y * 10 + z);
                }
            }
        }
    }
    Some(codes)
}

/// pike's defaults: 30 requests per 2 s, an address kept 120 s.
const PIKE_DEFAULTS: (u64, u64, u64) = (30, 2, 120);

fn pike_parts(value: &str) -> (u64, u64, u64) {
    let num = |k: &str| -> Option<u64> {
        let rest = value.split(k).nth(1)?;
        let digits: String = rest
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    (
        num("requests").unwrap_or(PIKE_DEFAULTS.0),
        num("per").unwrap_or(PIKE_DEFAULTS.1),
        num("block_for").unwrap_or(PIKE_DEFAULTS.2),
    )
}

/// Modules whose parameters and calls sipedge covers or that need nothing.
const KNOWN_MODULES: &[&str] = &[
    "tm",
    "tmx",
    "sl",
    "rr",
    "pv",
    "maxfwd",
    "textops",
    "siputils",
    "sanity",
    "xlog",
    "dispatcher",
    "ctl",
    "kex",
    "corex",
    "tls",
    "permissions",
    "pike",
    "jsonrpcs",
    "usrloc",
    "nathelper",
];

/// `class=2;code=403` to `["2xx", 403]`.
fn reply_codes(text: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not class=N or code=N"))?;
        let spec = match k.trim() {
            "class" => format!("{}xx", v.trim()),
            "code" => v.trim().to_owned(),
            _ => return Err(format!("{part:?} is not class=N or code=N")),
        };
        match spec.parse::<ReplyCode>() {
            Ok(ReplyCode::Class(c)) => out.push(format!("\"{c}xx\"")),
            Ok(ReplyCode::Code(c)) => out.push(c.to_string()),
            Err(e) => return Err(e.to_string()),
        }
    }
    // 2xx always counts, in Kamailio as in sipedge.
    if !out.iter().any(|s| s == "\"2xx\"") {
        out.insert(0, "\"2xx\"".to_owned());
    }
    Ok(format!("[{}]", out.join(", ")))
}

fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    t.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(t)
        .to_owned()
}

/// A global's value as an argument.
fn value_arg(v: &str) -> Arg {
    let t = v.trim().trim_end_matches(';').trim();
    if t.starts_with('"') && t.ends_with('"') && t.len() >= 2 {
        return Arg::Str(unescape(&t.as_bytes()[1..t.len() - 1]));
    }
    match parse_int(t) {
        Some(n) => Arg::Int(n),
        None => Arg::Other(t.to_owned()),
    }
}

/// `127.0.0.1:5060`, `[::1]:5060`, `127.0.0.1`, `*:5060`.
fn parse_sockaddr(s: &str, default_port: u16) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse().ok()?),
        _ => (s, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host == "*" || host.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        host.parse().ok()?
    };
    Some(SocketAddr::new(ip, port))
}

/// The scanner's state.
struct Reader<'a> {
    raw: &'a [&'a str],
    t: &'a Text,
    globals: Vec<(String, String, Src)>,
    modparams: Vec<(Vec<Arg>, Src)>,
    modules: Vec<(String, Src)>,
}

impl Reader<'_> {
    fn src(&self, start: usize, end: usize) -> Src {
        let first = self.t.line_of(start);
        let last = self.t.line_of(end.saturating_sub(1).max(start));
        let text = original(self.raw, first, last);
        let resolved = collapse(&self.t.text[start..end]);
        Src {
            line: first,
            // A call inside a condition is shown by its line; only a
            // preprocessor change earns a second line.
            resolved: (!collapse(&text).contains(&resolved) && !resolved.is_empty())
                .then_some(resolved),
            text,
        }
    }

    fn scan(&mut self, k: &mut Kamailio) {
        let b = self.t.text.as_bytes();
        let mut i = 0;
        loop {
            i = skip_space(b, i);
            if i >= b.len() {
                break;
            }
            let start = i;
            let end = ident_end(b, i);
            if end == i {
                // Not a statement migrate knows: skip the line.
                let eol = find(b, i, b"\n").unwrap_or(b.len());
                let src = self.src(start, eol);
                k.warn(&src, "not understood");
                i = eol;
                continue;
            }
            let word = &self.t.text[i..end];
            let after = skip_space(b, end);
            if word == "modparam" && b.get(after) == Some(&b'(') {
                let (args, next) = parse_args(b, after);
                let src = self.src(start, next);
                self.modparams.push((args, src));
                i = skip_semicolon(b, next);
            } else if word == "loadmodule" || word == "loadmodulex" {
                let eol = find(b, end, b"\n").unwrap_or(b.len());
                let name = unquote(strip_comment(&self.t.text[end..eol]));
                let name = name
                    .rsplit('/')
                    .next()
                    .unwrap_or(&name)
                    .trim_end_matches(".so")
                    .to_owned();
                let src = self.src(start, eol);
                self.modules.push((name, src));
                i = eol;
            } else if ROUTE_BLOCKS.contains(&word) && matches!(b.get(after), Some(b'[' | b'{')) {
                i = self.block(k, word, start, after);
            } else if matches!(word, "include_file" | "import_file") {
                let eol = find(b, end, b"\n").unwrap_or(b.len());
                let src = self.src(start, eol);
                k.warn(&src, "not followed; run migrate on a file with it inlined");
                i = eol;
            } else if b.get(after) == Some(&b'=') {
                let eol = find(b, after, b"\n").unwrap_or(b.len());
                let value = strip_comment(&self.t.text[after + 1..eol])
                    .trim()
                    .to_owned();
                let src = self.src(start, eol);
                self.globals.push((word.to_owned(), value, src));
                i = eol;
            } else {
                let eol = find(b, i, b"\n").unwrap_or(b.len());
                let src = self.src(start, eol);
                k.warn(&src, "not understood");
                i = eol;
            }
        }
    }

    /// A route block at `start` (its keyword), `at` on `[` or `{`.
    fn block(&mut self, k: &mut Kamailio, word: &str, start: usize, mut at: usize) -> usize {
        let b = self.t.text.as_bytes();
        let mut kind = word.to_owned();
        if b[at] == b'[' {
            let close = find(b, at, b"]").unwrap_or(b.len());
            kind = format!("{word}[{}]", self.t.text[at + 1..close].trim());
            if close == b.len() {
                return close;
            }
            at = skip_space(b, close + 1);
        }
        if b.get(at) != Some(&b'{') {
            return at;
        }
        let mut depth = 0usize;
        let mut i = at;
        let mut calls = Vec::new();
        while i < b.len() {
            match b[i] {
                b'"' | b'\'' => {
                    i = skip_string(b, i);
                    continue;
                }
                b'#' => {
                    i = skip_space(b, i);
                    continue;
                }
                b'/' if b[i..].starts_with(b"/*") || b[i..].starts_with(b"//") => {
                    i = skip_space(b, i);
                    continue;
                }
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                b'$' => {
                    // A pseudo-variable: `$var(x)`, `$avp(n)`, `$(ru{s.len})`.
                    i = ident_end(b, i + 1);
                    if b.get(i) == Some(&b'(') {
                        i = parse_args(b, i).1;
                    }
                    continue;
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let end = ident_end(b, i);
                    let name = &self.t.text[i..end];
                    let after = skip_space(b, end);
                    if b.get(after) == Some(&b'(') && !KEYWORDS.contains(&name) {
                        let (args, next) = parse_args(b, after);
                        let line = self.t.line_of(i);
                        let failover_status =
                            name == "t_check_status" && kind.starts_with("failure_route");
                        if name.starts_with("ds_select")
                            || name.starts_with("ds_next")
                            || failover_status
                        {
                            let src = self.src(i, next);
                            k.selects.push((name.to_owned(), args, src));
                        }
                        calls.push((name.to_owned(), line));
                        // The arguments may hold calls of their own only
                        // in expressions migrate does not read.
                        i = next;
                        continue;
                    }
                    i = end;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        k.script.push(Block {
            kind,
            first: self.t.line_of(start),
            last: self.t.line_of(i.saturating_sub(1)),
            calls,
        });
        i
    }
}

fn skip_semicolon(b: &[u8], i: usize) -> usize {
    let j = skip_space(b, i);
    if b.get(j) == Some(&b';') {
        j + 1
    } else {
        i
    }
}

fn collapse(s: &str) -> String {
    let mut out = String::new();
    for l in s.lines() {
        let t = strip_comment(l).trim();
        if t.is_empty() {
            continue;
        }
        if !out.is_empty() && !out.ends_with('(') {
            out.push(' ');
        }
        out.push_str(t);
    }
    out
}

// ---------------------------------------------------------------------------
// Writing proxy.toml
// ---------------------------------------------------------------------------

impl Kamailio {
    /// The TOML, with `[dispatcher] list_file` as `list` says.
    pub fn to_toml(&self, list: &ListChoice) -> Migration {
        let name = &self.name;
        let mut warnings: Vec<(Option<usize>, String)> = self.warnings.clone();
        let mut settings = self.settings.clone();
        let cfg_src = self.list_file.as_ref().map(|(_, s)| s.clone());
        match list {
            ListChoice::Given(path) => settings.push(Setting {
                key: "dispatcher.list_file".into(),
                value: toml_str(path),
                srcs: cfg_src.into_iter().collect(),
                note: Some("given with --list".into()),
                commented: false,
            }),
            ListChoice::FromCfg(path) => settings.push(Setting {
                key: "dispatcher.list_file".into(),
                value: toml_str(path),
                srcs: cfg_src.into_iter().collect(),
                note: None,
                commented: false,
            }),
            ListChoice::Unusable(path, why) => {
                warnings.push((
                    cfg_src.as_ref().map(|s| s.line),
                    format!(
                        "list_file {path}: {why}; written as is: check-config needs it there \
                         (or run migrate with --list)"
                    ),
                ));
                settings.push(Setting {
                    key: "dispatcher.list_file".into(),
                    value: toml_str(path),
                    srcs: cfg_src.into_iter().collect(),
                    note: Some(format!("WARNING: {why}")),
                    commented: false,
                });
            }
            ListChoice::None => warnings.push((
                None,
                "no dispatcher list_file in kamailio.cfg: give the dispatcher.list with --list, \
                 or add [[dispatcher.destination]] blocks"
                    .to_owned(),
            )),
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# proxy.toml written by `sipedge migrate` (sipedge {}) from {name}.",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str(
            "# Each key names the kamailio.cfg line it comes from. `# WARNING` lines are\n\
             # settings with no sipedge equivalent; the routing script at the end is\n\
             # listed, not translated (sipedge's routing is built in). Check, then run\n\
             # `sipedge check-config FILE`.\n",
        );
        let mut by_section: BTreeMap<usize, Vec<&Setting>> = BTreeMap::new();
        for s in &settings {
            let section = s.key.split('.').next().unwrap_or("");
            let idx = SECTIONS
                .iter()
                .position(|x| *x == section)
                .unwrap_or(SECTIONS.len());
            by_section.entry(idx).or_default().push(s);
        }
        for (idx, mut list) in by_section {
            list.sort_by_key(|s| s.srcs.first().map_or(usize::MAX, |s| s.line));
            let _ = writeln!(out, "\n[{}]", SECTIONS.get(idx).copied().unwrap_or("other"));
            for s in list {
                for src in &s.srcs {
                    let _ = writeln!(out, "# from {name}:{} {}", src.line, src.text);
                    if let Some(r) = &src.resolved {
                        let _ = writeln!(out, "#   resolved: {r}");
                    }
                }
                if let Some(note) = &s.note {
                    let _ = writeln!(out, "# {note}");
                }
                let field = s.key.split_once('.').map_or(s.key.as_str(), |(_, f)| f);
                let hash = if s.commented { "# " } else { "" };
                let _ = writeln!(out, "{hash}{field} = {}", s.value);
            }
        }
        if !self.builtin.is_empty() {
            out.push_str("\n# Built in, nothing to write:\n");
            for (src, why) in &self.builtin {
                let _ = writeln!(out, "# from {name}:{} {}: {why}", src.line, src.text);
            }
        }
        warnings.sort_by_key(|(l, _)| l.unwrap_or(0));
        let mut texts = Vec::new();
        for (line, w) in &warnings {
            texts.push(match line {
                Some(l) => format!("{name}:{l}: {w}"),
                None => format!("{name}: {w}"),
            });
        }
        let mut script_warnings = Vec::new();
        if !self.script.is_empty() {
            out.push_str(
                "\n# Routing script, not translated: sipedge's routing is built in (README,\n\
                 # the opening section). Its blocks and calls, by line:\n",
            );
            for block in &self.script {
                let _ = writeln!(
                    out,
                    "# {name}:{}-{} {}",
                    block.first, block.last, block.kind
                );
                let mut seen: Vec<&str> = Vec::new();
                for (call, line) in &block.calls {
                    let builtin = BUILTIN_CALLS.iter().find(|(c, _)| c == call);
                    match builtin {
                        Some((_, why)) => {
                            if seen.contains(&call.as_str()) {
                                continue;
                            }
                            seen.push(call);
                            let lines: Vec<String> = block
                                .calls
                                .iter()
                                .filter(|(c, _)| c == call)
                                .map(|(_, l)| l.to_string())
                                .collect();
                            let _ = writeln!(out, "#   {call} ({}): {why}", lines.join(", "));
                        }
                        None => {
                            let w = format!(
                                "{name}:{line}: {call}(...) in {}: not translated (no sipedge \
                                 equivalent known to migrate)",
                                block.kind
                            );
                            let _ = writeln!(out, "# WARNING {w}");
                            script_warnings.push(w);
                        }
                    }
                }
            }
        }
        if !texts.is_empty() {
            out.push_str("\n# Not mapped:\n");
            for w in &texts {
                let _ = writeln!(out, "# WARNING {w}");
            }
        }
        texts.extend(script_warnings);
        Migration {
            toml: out,
            warnings: texts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: &str) -> Migration {
        run_with(cfg, &[])
    }

    fn run_with(cfg: &str, defines: &[(&str, Option<&str>)]) -> Migration {
        let opts = Options {
            name: "k.cfg".into(),
            base: Some("/etc/kamailio".into()),
            defines: defines
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.map(str::to_owned)))
                .collect(),
            advertise: None,
        };
        let k = Kamailio::parse(cfg, &opts);
        let list = match k.list_file() {
            Some(p) => ListChoice::FromCfg(p.to_owned()),
            None => ListChoice::None,
        };
        k.to_toml(&list)
    }

    /// The written TOML as a table (commented lines are comments).
    fn table(m: &Migration) -> toml::Table {
        m.toml.parse().expect("the output is TOML")
    }

    fn get<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
        let (section, field) = key.split_once('.').unwrap();
        t.get(section)?.get(field)
    }

    fn warned(m: &Migration, needle: &str) -> bool {
        m.warnings.iter().any(|w| w.contains(needle))
    }

    #[test]
    fn comments_of_every_kind_are_skipped() {
        let m = run(concat!(
            "# modparam(\"tm\", \"fr_timer\", 1000)\n",
            "// modparam(\"tm\", \"fr_timer\", 1100)\n",
            "/* modparam(\"tm\", \"fr_timer\", 1200)\n",
            "   modparam(\"tm\", \"fr_timer\", 1300) */\n",
            "modparam(\"tm\", \"fr_timer\", 1500) # the one\n",
        ));
        let t = table(&m);
        assert_eq!(
            get(&t, "failover.fr_timeout").unwrap().as_str(),
            Some("1500ms")
        );
        assert!(m
            .toml
            .contains("# from k.cfg:5 modparam(\"tm\", \"fr_timer\", 1500)\n"));
    }

    #[test]
    fn a_modparam_over_several_lines_is_one() {
        let m = run("modparam(\"dispatcher\",\n   \"ds_ping_interval\",\n   7)\n");
        assert_eq!(
            get(&table(&m), "probe.interval").unwrap().as_str(),
            Some("7s")
        );
        assert!(m
            .toml
            .contains("# from k.cfg:1 modparam(\"dispatcher\", \"ds_ping_interval\", 7)"));
    }

    #[test]
    fn siptrace_becomes_capture() {
        let m = run(concat!(
            "loadmodule \"siptrace.so\"\n",
            "modparam(\"siptrace\", \"duplicate_uri\", \"sip:10.0.0.9:9061;transport=tcp\")\n",
            "modparam(\"siptrace\", \"hep_mode_on\", 1)\n",
            "modparam(\"siptrace\", \"hep_version\", 3)\n",
            "modparam(\"siptrace\", \"hep_capture_id\", 2001)\n",
            "modparam(\"siptrace\", \"auth_key\", \"homer\")\n",
            "modparam(\"siptrace\", \"trace_on\", 1)\n",
        ));
        let t = table(&m);
        assert_eq!(
            get(&t, "capture.hep").unwrap().as_str(),
            Some("tcp:10.0.0.9:9061")
        );
        assert_eq!(
            get(&t, "capture.capture_id").unwrap().as_integer(),
            Some(2001)
        );
        assert_eq!(get(&t, "capture.auth_key").unwrap().as_str(), Some("homer"));
        assert_eq!(hep_uri("sip:10.0.0.9").unwrap(), "udp:10.0.0.9:5060");
        assert_eq!(
            hep_uri("sip:[2001:db8::9]:9060").unwrap(),
            "udp:[2001:db8::9]:9060"
        );
        assert!(hep_uri("10.0.0.9:9060").is_err());
        // What migrate writes, sipedge reads.
        let text = format!(
            "[listen]\nudp = [\"127.0.0.1:5060\"]\nadvertise = \"127.0.0.1\"\n\
             [[dispatcher.destination]]\nuri = \"sip:127.0.0.2\"\n[capture]\nhep = {}\n",
            get(&t, "capture.hep").unwrap()
        );
        let cfg = crate::config::from_toml(&text, "t.toml").unwrap();
        assert_eq!(cfg.capture.unwrap().hep.port, 9061);
    }

    #[test]
    fn quoting_single_double_escapes_and_hashes_in_strings() {
        let m = run(concat!(
            "modparam('dispatcher', 'ds_ping_from', 'sip:ping@x.example') # c\n",
            "modparam(\"ctl\", \"user\", \"a#b\\\"c\")\n",
        ));
        let t = table(&m);
        assert_eq!(
            get(&t, "probe.ping_from").unwrap().as_str(),
            Some("sip:ping@x.example")
        );
        assert_eq!(get(&t, "admin.ctl_user").unwrap().as_str(), Some("a#b\"c"));
    }

    #[test]
    fn ifdef_takes_the_defined_branch_when_the_define_is_in_the_file() {
        let cfg = concat!(
            "#!define WITH_FAST\n",
            "#!ifdef WITH_FAST\n",
            "modparam(\"tm\", \"fr_timer\", 1000)\n",
            "#!else\n",
            "modparam(\"tm\", \"fr_timer\", 9000)\n",
            "#!endif\n",
        );
        let m = run(cfg);
        assert_eq!(
            get(&table(&m), "failover.fr_timeout").unwrap().as_str(),
            Some("1s")
        );
        assert!(!warned(&m, "WITH_FAST"), "{:?}", m.warnings);
    }

    #[test]
    fn ifdef_of_a_name_not_in_the_file_takes_the_other_branch_and_warns() {
        let cfg = concat!(
            "#!ifdef WITH_FAST\n",
            "modparam(\"tm\", \"fr_timer\", 1000)\n",
            "#!else\n",
            "modparam(\"tm\", \"fr_timer\", 9000)\n",
            "#!endif\n",
        );
        let m = run(cfg);
        assert_eq!(
            get(&table(&m), "failover.fr_timeout").unwrap().as_str(),
            Some("9s")
        );
        assert!(warned(&m, "k.cfg:1: #!ifdef WITH_FAST"), "{:?}", m.warnings);
        // --define, like Kamailio's -A, selects the other branch.
        let m = run_with(cfg, &[("WITH_FAST", None)]);
        assert_eq!(
            get(&table(&m), "failover.fr_timeout").unwrap().as_str(),
            Some("1s")
        );
        assert!(!warned(&m, "WITH_FAST"));
    }

    #[test]
    fn nested_ifdef_inside_an_inactive_branch_stays_inactive() {
        let cfg = concat!(
            "#!ifdef NOPE\n",
            "#!ifndef ALSO_NOPE\n",
            "modparam(\"tm\", \"fr_timer\", 1000)\n",
            "#!endif\n",
            "#!endif\n",
        );
        let m = run(cfg);
        assert!(get(&table(&m), "failover.fr_timeout").is_none());
        assert!(!warned(&m, "ALSO_NOPE"), "only the active #!ifdef warns");
    }

    #[test]
    fn define_and_substdef_are_resolved_and_shown() {
        let m = run(concat!(
            "#!define PING 15\n",
            "#!define LIST \"lists/dispatcher.list\"\n",
            "#!substdef \"!MY_IP!192.0.2.7!g\"\n",
            "listen=udp:MY_IP:5060\n",
            "modparam(\"dispatcher\", \"ds_ping_interval\", PING)\n",
            "modparam(\"dispatcher\", \"ds_ping_from\", \"sip:p@MY_IP\")\n",
            "modparam(\"dispatcher\", \"list_file\", LIST)\n",
        ));
        let t = table(&m);
        assert_eq!(get(&t, "probe.interval").unwrap().as_str(), Some("15s"));
        assert_eq!(
            get(&t, "probe.ping_from").unwrap().as_str(),
            Some("sip:p@192.0.2.7")
        );
        assert_eq!(
            get(&t, "listen.udp").unwrap().as_array().unwrap()[0].as_str(),
            Some("192.0.2.7:5060")
        );
        assert_eq!(
            get(&t, "listen.advertise").unwrap().as_str(),
            Some("192.0.2.7")
        );
        // Relative to the cfg's directory.
        assert_eq!(
            get(&t, "dispatcher.list_file").unwrap().as_str(),
            Some("/etc/kamailio/lists/dispatcher.list")
        );
        assert!(m.toml.contains(
            "# from k.cfg:5 modparam(\"dispatcher\", \"ds_ping_interval\", PING)\n\
             #   resolved: modparam(\"dispatcher\", \"ds_ping_interval\", 15)\n"
        ));
        // A define is not replaced inside a string, a substdef is.
        let m = run("#!define X 1\nmodparam(\"ctl\", \"user\", \"X\")\n");
        assert_eq!(
            get(&table(&m), "admin.ctl_user").unwrap().as_str(),
            Some("X")
        );
    }

    #[test]
    fn listen_forms() {
        let m = run(concat!(
            "listen=127.0.0.1:5070\n",
            "listen=tcp:[::1]:5080\n",
            "listen=udp:eth0:5060\n",
            "listen=sctp:127.0.0.1:5060\n",
        ));
        let t = table(&m);
        let udp: Vec<_> = get(&t, "listen.udp").unwrap().as_array().unwrap().clone();
        assert_eq!(udp, vec![toml::Value::from("127.0.0.1:5070")]);
        let tcp: Vec<_> = get(&t, "listen.tcp").unwrap().as_array().unwrap().clone();
        assert_eq!(
            tcp,
            vec![
                toml::Value::from("127.0.0.1:5070"),
                toml::Value::from("[::1]:5080")
            ]
        );
        assert!(warned(&m, "k.cfg:3: listen=udp:eth0:5060: not mapped"));
        assert!(warned(
            &m,
            "k.cfg:4: listen=sctp:127.0.0.1:5060: not mapped"
        ));
        // disable_tcp: a listen without a protocol is UDP only.
        let m = run("disable_tcp=yes\nlisten=127.0.0.1:5070\n");
        assert!(get(&table(&m), "listen.tcp").is_none());
    }

    #[test]
    fn advertise_from_listen_or_global_and_a_wildcard_without_one_warns() {
        let m = run("listen=udp:0.0.0.0:5060 advertise 203.0.113.5:5060\n");
        assert_eq!(
            get(&table(&m), "listen.advertise").unwrap().as_str(),
            Some("203.0.113.5:5060")
        );
        let m = run("listen=udp:0.0.0.0:5060\nadvertised_address=\"203.0.113.6\"\n");
        assert_eq!(
            get(&table(&m), "listen.advertise").unwrap().as_str(),
            Some("203.0.113.6")
        );
        let m = run("listen=udp:0.0.0.0:5060\n");
        assert!(get(&table(&m), "listen.advertise").is_none());
        assert!(m.toml.contains("# advertise = \"CHANGE-ME\""));
        assert!(warned(&m, "no advertise address"));
    }

    #[test]
    fn advertise_from_the_command_line_wins() {
        let opts = Options {
            name: "k.cfg".into(),
            advertise: Some("198.51.100.9".into()),
            ..Options::default()
        };
        for cfg in [
            "listen=udp:0.0.0.0:5060\n",
            "listen=udp:10.0.0.1:5060 advertise 10.0.0.2\n",
        ] {
            let m = Kamailio::parse(cfg, &opts).to_toml(&ListChoice::None);
            assert_eq!(
                get(&table(&m), "listen.advertise").unwrap().as_str(),
                Some("198.51.100.9")
            );
            assert!(!warned(&m, "no advertise address"));
        }
    }

    #[test]
    fn ds_select_dst_gives_set_and_algorithm() {
        let m = run(
            "request_route {\n  if (!ds_select_dst(\"2\", \"9\")) { exit; }\n  ds_next_dst();\n}\n",
        );
        let t = table(&m);
        assert_eq!(get(&t, "dispatcher.set").unwrap().as_integer(), Some(2));
        assert_eq!(
            get(&t, "dispatcher.algorithm").unwrap().as_str(),
            Some("weight")
        );
        assert!(!warned(&m, "ds_next_dst"));
        // ds_select_domain and ds_select, unquoted numbers.
        for call in ["ds_select_domain(3, 0)", "ds_select(3, 0)"] {
            let m = run(&format!("request_route {{\n {call};\n}}\n"));
            let t = table(&m);
            assert_eq!(get(&t, "dispatcher.set").unwrap().as_integer(), Some(3));
            assert_eq!(
                get(&t, "dispatcher.algorithm").unwrap().as_str(),
                Some("hash-callid")
            );
            assert!(warned(&m, "never calls ds_next_dst"));
        }
    }

    #[test]
    fn ds_select_dst_it_cannot_read_or_map_warns() {
        let m = run("route[X] {\n ds_select_dst(\"$var(set)\", \"4\");\n}\n");
        assert!(get(&table(&m), "dispatcher.set").is_none());
        assert!(warned(
            &m,
            "k.cfg:2: ds_select_dst(\"$var(set)\", \"4\");: set and algorithm"
        ));
        let m = run("route[X] {\n ds_select_dst(\"1\", \"7\");\n}\n");
        assert!(get(&table(&m), "dispatcher.algorithm").is_none());
        assert!(warned(&m, "algorithm 7 is not one sipedge has"));
        let m =
            run("route[X] {\n ds_select_dst(\"1\", \"4\");\n ds_select_dst(\"2\", \"4\");\n}\n");
        assert!(warned(
            &m,
            "k.cfg:3: ds_select_dst(\"2\", \"4\");: sipedge sends"
        ));
    }

    #[test]
    fn routing_logic_is_listed_by_line_and_unknown_calls_warn() {
        let m = run(concat!(
            "request_route {\n",
            "    if (has_totag()) { t_relay(); exit; }\n",
            "    $var(x) = $(ru{s.len});\n",
            "    my_func(\"a)\", 2);\n",
            "}\n",
        ));
        assert!(m.toml.contains("# k.cfg:1-5 request_route\n"));
        assert!(m
            .toml
            .contains("#   t_relay (2): stateful relay, built in\n"));
        assert!(warned(
            &m,
            "k.cfg:4: my_func(...) in request_route: not translated"
        ));
        assert!(
            !warned(&m, "var("),
            "variables are not calls: {:?}",
            m.warnings
        );
        assert!(m.toml.contains("# WARNING k.cfg:4: my_func(...)"));
    }

    #[test]
    fn unmapped_settings_warn_in_the_output_and_the_list() {
        let m = run(concat!(
            "modparam(\"dispatcher\", \"db_url\", \"mysql://x\")\n",
            "modparam(\"foo\", \"bar\", 1)\n",
            "some_core_knob=3\n",
            "loadmodule \"acc.so\"\n",
        ));
        for line in 1..=4 {
            assert!(
                warned(&m, &format!("k.cfg:{line}: ")),
                "{line}: {:?}",
                m.warnings
            );
            assert!(m.toml.contains(&format!("# WARNING k.cfg:{line}: ")));
        }
        assert!(get(&table(&m), "dispatcher.db_url").is_none());
    }

    #[test]
    fn out_of_range_values_are_warnings_not_keys() {
        let m = run("modparam(\"tm\", \"fr_timer\", 10)\nmodparam(\"dispatcher\", \"ds_probing_mode\", 5)\n");
        let t = table(&m);
        assert!(get(&t, "failover.fr_timeout").is_none());
        assert!(warned(&m, "outside sipedge's range"));
        assert!(warned(&m, "is not 0, 1, 2 or 3"));
    }

    #[test]
    fn reply_codes_pike_and_ctl() {
        let m = run(concat!(
            "loadmodule \"pike.so\"\n",
            "loadmodule \"ctl.so\"\n",
            "modparam(\"dispatcher\", \"ds_ping_reply_codes\", \"code=403;class=3\")\n",
            "modparam(\"pike\", \"reqs_density_per_unit\", 40)\n",
            "modparam(\"pike\", \"remove_latency\", 60)\n",
            "modparam(\"ctl\", \"binrpc\", \"unixs:/run/k/ctl\")\n",
            "modparam(\"ctl\", \"binrpc\", \"tcp:localhost:2046\")\n",
            "modparam(\"ctl\", \"binrpc\", \"unixd:/run/k/ctld\")\n",
            "modparam(\"ctl\", \"mode\", 0660)\n",
        ));
        let t = table(&m);
        assert_eq!(
            get(&t, "probe.reply_codes").unwrap().to_string(),
            "[\"2xx\", 403, \"3xx\"]"
        );
        let rl = get(&t, "security.rate_limit").unwrap();
        assert_eq!(rl["requests"].as_integer(), Some(40));
        assert_eq!(rl["per"].as_str(), Some("2s"));
        assert_eq!(rl["block_for"].as_str(), Some("60s"));
        assert_eq!(
            get(&t, "admin.ctl").unwrap().to_string(),
            "[\"unixs:/run/k/ctl\", \"tcp:127.0.0.1:2046\"]"
        );
        assert!(warned(&m, "k.cfg:8: "));
        assert_eq!(get(&t, "admin.ctl_mode").unwrap().as_str(), Some("0660"));
    }

    #[test]
    fn an_ndb_redis_server_is_offered_as_the_registry_commented_out() {
        let m =
            run("modparam(\"ndb_redis\", \"server\", \"name=reg;addr=10.0.0.5;port=6380;db=2\")\n");
        assert!(get(&table(&m), "dialogs.registry").is_none());
        assert!(
            m.toml
                .contains("\n# registry = \"redis://10.0.0.5:6380/2\"\n"),
            "{}",
            m.toml
        );
        assert!(warned(&m, "k.cfg:1: "));
    }

    #[test]
    fn kamailio_defaults_that_differ_are_written() {
        let m = run("loadmodule \"tm.so\"\nloadmodule \"dispatcher.so\"\n");
        let t = table(&m);
        assert_eq!(
            get(&t, "failover.fr_timeout").unwrap().as_str(),
            Some("30s")
        );
        assert_eq!(
            get(&t, "probe.failure_threshold").unwrap().as_integer(),
            Some(1)
        );
        assert_eq!(get(&t, "probe.mode").unwrap().as_integer(), Some(0));
        assert!(warned(&m, "no ds_ping_interval"));
    }

    /// Whatever is cut off where, reading never panics: every prefix of
    /// a real cfg (unterminated strings, blocks, modparams, `#!ifdef`).
    #[test]
    fn truncated_input_never_panics() {
        let cfg = include_str!("../tests/fixtures/kamailio/active_active/kamailio.cfg");
        let mut n = 0;
        for (i, _) in cfg.char_indices().step_by(3) {
            let _ = run(&cfg[..i]);
            n += 1;
        }
        for junk in [
            "route[",
            "request_route {",
            "modparam(",
            "\"",
            "/*",
            "#!ifdef",
            "x=(",
            "}}}",
        ] {
            let _ = run(junk);
        }
        assert!(n > 1000);
    }

    #[test]
    fn t_check_status_in_a_failure_route_gives_the_failover_codes() {
        assert_eq!(status_codes("5[0-9][0-9]").unwrap().len(), 100);
        assert_eq!(status_codes("^(500|50[34])$").unwrap(), [500, 503, 504]);
        assert_eq!(status_codes("6..").unwrap().len(), 100);
        assert_eq!(status_codes("5[0-9]+"), None);
        let cfg = |pattern: &str| {
            format!(
                "failure_route[F] {{\n if (t_check_status(\"{pattern}\")) {{\n  ds_next_dst();\n }}\n}}\n"
            )
        };
        let m = run(&cfg("^(500|503|486)$"));
        assert_eq!(
            get(&table(&m), "failover.codes").unwrap().to_string(),
            "[486, 500, 503]"
        );
        assert!(m
            .toml
            .contains("# from k.cfg:2 if (t_check_status(\"^(500|503|486)$\")) {\ncodes = "));
        let m = run(&cfg("5[0-9]*"));
        assert!(get(&table(&m), "failover.codes").is_none());
        assert!(warned(&m, "k.cfg:2: "));
        // Outside a failure_route it is not a failover rule.
        let m = run("onreply_route[R] {\n if (t_check_status(\"503\")) { ds_next_dst(); }\n}\n");
        assert!(get(&table(&m), "failover.codes").is_none());
    }

    #[test]
    fn an_algorithm_number_maps_back() {
        for n in 0..=20u8 {
            if let Some(a) = Algorithm::from_kamailio_number(n) {
                assert_eq!(a.kamailio_number(), n);
            }
        }
    }

    /// The README's migration table agrees with [`MODPARAMS`] and
    /// [`GLOBALS`]: the row naming a setting migrate maps names its
    /// section and key.
    #[test]
    fn the_readme_table_agrees_with_the_mapping() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("## Migrating from Kamailio's dispatcher")
            .expect("the README has the migration section");
        let rows: Vec<&str> = readme[start..]
            .lines()
            .take_while(|l| !l.starts_with("## ") || l.contains("Migrating"))
            .filter(|l| l.starts_with("| "))
            .collect();
        let keys = MODPARAMS
            .iter()
            .map(|(_, p, m)| (*p, *m))
            .chain(GLOBALS.iter().map(|(p, m)| (*p, *m)));
        let mut checked = 0;
        let mut missing = Vec::new();
        for (param, map) in keys {
            let Map::Key(key, _) = map else { continue };
            let needles = [format!("`{param}`"), format!("\"{param}\"")];
            let Some(row) = rows.iter().find(|r| {
                r.split('|')
                    .nth(1)
                    .is_some_and(|left| needles.iter().any(|n| left.contains(n)))
            }) else {
                missing.push(param);
                continue;
            };
            let right = row.split('|').nth(2).unwrap_or("");
            let (section, field) = key.split_once('.').unwrap();
            assert!(
                right.contains(&format!("[{section}]")) && right.contains(field),
                "README row for {param} does not name {key}: {row}"
            );
            checked += 1;
        }
        // Every setting migrate maps to a key has its row.
        assert!(missing.is_empty(), "no README row names {missing:?}");
        assert!(checked >= 25, "only {checked} README rows found");
    }
}
