//! sipedge: a SIP edge proxy in front of a pool of FreeSWITCH media servers.
//!
//! It replaces a Kamailio box running `dispatcher`, `tm`, `rr` and `sl`: it
//! probes the nodes, sends each new INVITE to a live one, fails over on
//! silence, 5xx or transport errors, and pins every in-dialog request to the
//! node that answered. The README says what it does, for operators and
//! for contributors; the tests hold it to that.
//!
//! # Layout
//! - [`sip`]: the SIP message layer, free of tokio so it can be fuzzed and
//!   benchmarked alone. A zero-copy [`sip::Message`] view (start line, header
//!   index, body), typed accessors that parse on demand (Via, CSeq, Call-ID,
//!   tags, Max-Forwards, Route, Request-URI), datagram and stream framing,
//!   an [`sip::Editor`] that splices the forwarding edits into a reusable
//!   buffer, and builders for local responses and OPTIONS probes.
//! - [`value`]: the leaf of shared value types (hosts, `host[:port]`, the
//!   destination `sip:` URI, address blocks, durations, FNV-1a), imported
//!   by `config`, `dispatcher` and `security` alike.
//! - [`config`]: the TOML configuration (`proxy.toml.example`), its
//!   validation and the errors that name file, key and reason.
//! - [`transport`]: the [`transport::Transports`] facade: every socket,
//!   receive loop and send (UDP sockets set up for a busy SIP edge, one
//!   thread each; SIP over TCP; SIP over TLS on TCP's connection code,
//!   inbound and outbound with RFC 5922 server identities),
//!   one inbound event type for the proxy,
//!   the [`transport::Peer`] every message carries, and
//!   [`transport::PerTransport`] for data kept per transport.
//! - [`capture`]: packet capture to a Homer / HEP collector: the HEP v3
//!   encoder and the `what` filter (both sans-I/O), the bounded queue the
//!   transports feed without waiting, the task that sends.
//! - [`dns`]: RFC 3263 location of host names in the nodes' outgoing
//!   requests (SRV, A/AAAA), cached.
//! - [`transaction`]: the sans-I/O transaction machines (a new INVITE's
//!   client side with failover, the relay client of every other forwarded
//!   request, the trunk's INVITE server transaction and its §17.2.3 key)
//!   and the client transaction table, keyed by the branch we add.
//! - [`timer`]: the one timer schedule and the one sleep-until loop that
//!   serve the transactions, the prober and the dialog expiry.
//! - [`dispatcher`]: the node pool and the selection algorithms.
//! - [`security`]: edge protection: trusted networks, scanner User-Agents,
//!   a per-source rate limit (Kamailio's `permissions` and `pike`).
//! - [`dialog`]: the Call-ID -> node table and its expiry task; the
//!   shared call registry in Redis behind it ([`dialog::registry`]), which
//!   also carries the operators' drains to the other instances.
//! - [`proxy`]: the stateful proxy, the transports' handler: request and
//!   response paths, the pure in-dialog routing decision (`route.rs`), the
//!   one forwarding edit (`forward.rs`), the driver of the transaction
//!   machines (`invite.rs`), every local answer (`rescue.rs`), our
//!   advertised identity (`me.rs`), the opaque route hint (`hint.rs`,
//!   `[cluster] secret`), the prober and the reload (the destinations,
//!   and the TLS identities it puts in force: `tls.rs`).
//! - [`metrics`]: the Prometheus metrics: names as documented constants,
//!   labels from enums, handles resolved once, an own registry per
//!   instance, text exposition.
//! - [`migrate`]: `sipedge migrate`, a Kamailio configuration read into the
//!   equivalent commented proxy.toml (pure: text in, TOML and warnings
//!   out), with the one table of Kamailio settings and their sipedge keys.
//! - [`rlimit`]: the open-file limit raised at start to what `[tcp]
//!   max_connections` and the sockets need (or a warning why not).
//! - [`logging`]: the log on stderr: text or JSON lines, `--log-level`,
//!   colour only on a terminal without `NO_COLOR`.
//! - [`notify`]: systemd's `sd_notify` protocol (`READY=1`, `RELOADING=1`,
//!   `STOPPING=1`, `STATUS=`, the watchdog) for a `Type=notify` unit.
//! - [`server`]: binding the configured listeners and running the proxy,
//!   the admin listener and the signal handlers (SIGHUP reload, SIGUSR1
//!   state summary) as one task set, with a drain on shutdown (what
//!   [`cli`] calls).
//! - [`cli`]: the `sipedge` command line (run, `check-config`, `migrate`,
//!   `ctl`, the man pages and completions), config loading and exit codes;
//!   `src/main.rs` only picks the allocator and calls [`cli::main`].
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/health/live`,
//!   `/health/ready`, JSON-RPC at `/RPC` with Kamailio's `dispatcher.*`
//!   methods and result shapes, an optional bearer token), the BINRPC
//!   control sockets kamcmd talks to (`[admin] ctl`, the same methods),
//!   both behind the [`admin::Backend`] trait, and the `sipedge ctl`
//!   client.
//!
//! # Where new things go
//! - A new transport (WebSocket): one module in [`transport`] behind
//!   the [`transport::Transports`] facade, one [`transport::Transport`]
//!   variant and its arm in the facade's `send`; a stream transport runs
//!   its streams on `transport/tcp.rs`'s connection code, as `tls.rs`
//!   does. The proxy only sees [`transport::Peer`]s.
//! - A new dispatcher algorithm: [`dispatcher`] (its inputs, such as
//!   per-node call counts or latency, reach it as arguments).
//! - A shared call registry (Redis): behind the [`dialog::Dialogs`]
//!   interface, read without blocking the receive path; `proxy/route.rs`
//!   decides with what it returns.
//! - Packet capture (HEP): a hook in [`transport::Transports`], where every
//!   message is received (the handler call) and sent (`send`), one place
//!   each.
//! - A new metric: [`metrics`], as a documented constant.
#![forbid(unsafe_code)]

pub mod admin;
pub mod capture;
pub mod cli;
pub mod config;
pub mod dialog;
pub mod dispatcher;
pub mod dns;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod proxy;
pub mod rlimit;
pub mod security;
pub mod server;
pub mod sip;
pub mod timer;
pub mod transaction;
pub mod transport;
pub mod value;

/// The concurrent maps keyed by what the network sends (Call-IDs, branches):
/// foldhash is several times faster than std's SipHash on these short keys
/// and, seeded per process, still not predictable by a sender.
pub(crate) type FastMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

/// A [`FastMap`] with room for `n` entries from the start: the transaction
/// tables hold every transaction of the last 32 s (RFC 3261 Timer B/F and
/// RFC 6026 Timer L/M), and growing them by rehashing at load costs page
/// faults and copies on the receive path.
pub(crate) fn fast_map_with_capacity<K: Eq + std::hash::Hash, V>(n: usize) -> FastMap<K, V> {
    dashmap::DashMap::with_capacity_and_hasher(n, Default::default())
}
