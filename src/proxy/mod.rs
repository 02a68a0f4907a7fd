//! The stateful proxy (RFC 3261 §16): the transports' receive loops (one
//! thread per UDP socket, a task per TCP connection) call it as their
//! [`Handler`], and it runs the request path, the response path and each
//! new INVITE's state machine (failover) to the end; one tokio task runs
//! the timers.
//!
//! - `request`: classify a request (local, in-dialog, initial from the
//!   trunk or from a node) and forward it; drives the relay clients
//!   (retransmissions, the 408/503 owed upstream).
//! - `route`: where an in-dialog request goes, a pure decision.
//! - `forward`: the one forwarding edit, with the TCP fallback.
//! - `hint`: our Record-Route's opaque node hint, sealed and opened
//!   (`[cluster] secret`).
//! - `invite`: the driver of a new INVITE: feeds the server transaction
//!   and the failover machine of [`crate::transaction`] and carries out
//!   what they ask (send, relay, answer, pin, mark, count).
//! - `response`: match a response to its client transaction and relay it.
//! - `icmp`: what waits on each destination (INVITE legs, forwarded
//!   requests), for the ICMP errors from that destination's host.
//! - `advertise`: report a node's 2xx that advertises an unusable address.
//! - `rescue`: every local final error: why -> status, phrase, header
//!   and counter.
//! - `shared`: operators' `dispatcher.set_state` shared with the other
//!   instances through the registry.

mod admin;
mod advertise;
mod forward;
mod hint;
mod icmp;
mod invite;
mod me;
mod pool;
mod probe;
mod request;
mod rescue;
mod response;
mod route;
mod shared;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dialog::Dialogs;
use crate::dispatcher::DispatcherError;
use crate::sip::{Message, Response, Rport, Via};
use crate::timer::Schedule;
use crate::transaction::{BranchGen, ClientTxns, TIMER_SLACK};
use crate::transport::{Handler, Inbound, Peer, PerTransport, TcpTransport, Transport, Transports};
use invite::Call;
pub use pool::{EditError, Pool, ReloadError};
pub(crate) use tls::warn_expiring;

/// Room in the transaction tables from the start: what 500 calls/s keep
/// over the 32 s a finished transaction lingers (about 3 MB for the client
/// transactions, 1 MB for the server ones).
const TABLE_CAPACITY: usize = 16_384;

/// What the timer schedule holds.
#[derive(Debug)]
enum Timer {
    /// A forwarded request's client transaction (Timer E/A, its wait for
    /// a final), by branch.
    Relay(crate::transaction::Token),
    /// A new INVITE's next deadline (Timer A, fr_timeout, fr_inv_timeout).
    Call(std::sync::Weak<Call>),
    /// The prober's next round, due at that instant.
    ProbeRound(tokio::time::Instant),
    /// Calls failed on nodes in `urgent_probes`: probe them now.
    ProbeUrgent,
    /// A probe in flight may have run out of `[probe] timeout`.
    ProbeTimeout,
    /// The first round's answers had their time (readiness).
    FirstRoundDone,
    /// systemd's watchdog keep-alive is due: sent by the timer task, so a
    /// stuck task (every transaction timer stalled) stops it.
    Watchdog,
    /// Forget finished transactions whose retransmission window is over.
    Sweep,
}

/// How often finished transactions are swept out (they linger 32 s; a
/// few seconds more cost only memory).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the proxy could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Dispatcher(#[from] DispatcherError),
    #[error("no UDP socket to serve on")]
    NoSocket,
    #[error("cannot register the socket with the runtime: {0}")]
    Socket(#[from] io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("probe: {0}")]
    ReplyCodes(#[from] crate::dispatcher::health::ReplyCodesError),
    #[error("probe: {0}")]
    Health(#[from] crate::dispatcher::health::HealthConfigError),
    #[error(transparent)]
    Registry(#[from] crate::dialog::registry::RegistryError),
    /// TLS listeners, but no `[tls]` identity loaded (a config that did
    /// not come through `config::read_config`).
    #[error("TLS listeners need [tls] certificate and key, read by config::read_config")]
    TlsNotLoaded,
}

/// Shared state of a running proxy.
/// The tables the request path, the response path, the INVITE driver,
/// the prober and the admin backend share: one value, `Proxy::tables`.
struct Tables {
    /// Client transactions, by the branch we add.
    txns: ClientTxns<Arc<Call>>,
    /// New INVITEs from the trunk, by their server transaction's key
    /// ([`crate::transaction::server_key`]).
    invites: crate::FastMap<Box<[u8]>, Arc<Call>>,
    /// Call-ID -> node.
    dialogs: Arc<Dialogs>,
    /// Retransmissions of forwarded requests and the INVITEs' deadlines.
    timers: Schedule<Timer>,
    /// Our branch and tag values.
    branches: BranchGen,
}

pub struct Proxy {
    cfg: Config,
    /// The tables every part shares: transactions, dialogs, the schedule.
    tables: Tables,
    /// Our advertised identity: host, ports, Via, the "is it us" test.
    me: me::Me,
    /// Seals and opens the node hint of our Record-Route: `[cluster]
    /// secret`'s, else the built-in key (opaque, not authentic).
    hint_keys: hint::HintKeys,
    /// Every socket, its receive loop and every send.
    transports: Transports<Proxy>,
    /// Host names in the requests the nodes send out.
    dns: crate::dns::Dns,
    /// Who may send initial requests, scanners, the rate limit.
    security: crate::security::Security,
    rt: tokio::runtime::Handle,
    /// The destinations in force; replaced by a reload.
    pool: arc_swap::ArcSwap<Pool>,
    /// Where `dispatcher.reload` and SIGHUP re-read the config from.
    reload: pool::Reload,
    shutting_down: AtomicBool,
    /// INVITEs not answered with a final response yet (what a shutdown
    /// waits for; finished ones only linger for retransmissions).
    calls_deciding: std::sync::atomic::AtomicUsize,
    /// Destinations the kernel reported unreachable (ICMP), not yet shown
    /// to the INVITEs waiting on them: that happens outside any call's lock
    /// (a send inside one may be what reads the error).
    icmp_pending: Mutex<Vec<SocketAddr>>,
    /// What waits on each destination, for those ICMP errors.
    icmp_watch: icmp::IcmpWatch<invite::Call>,
    metrics: crate::metrics::Metrics,
    /// The probes in flight.
    prober: probe::Prober,
    /// systemd's notifications (`Type=notify`); none unless set.
    notifier: std::sync::OnceLock<crate::notify::Notifier>,
}

impl Proxy {
    /// Builds the proxy around already-bound UDP sockets (tests bind port
    /// 0), with no TCP listener. Must run inside a tokio runtime.
    pub fn new(cfg: Config, sockets: Vec<std::net::UdpSocket>) -> Result<Arc<Proxy>, ProxyError> {
        Proxy::with_tcp(cfg, sockets, Vec::new())
    }

    /// Builds the proxy around already-bound UDP sockets and TCP listeners
    /// (from [`crate::transport::bind_tcp`]), and starts accepting on the
    /// listeners. Must run inside a tokio runtime.
    pub fn with_tcp(
        cfg: Config,
        sockets: Vec<std::net::UdpSocket>,
        listeners: Vec<std::net::TcpListener>,
    ) -> Result<Arc<Proxy>, ProxyError> {
        Proxy::with_listeners(cfg, sockets, listeners, Vec::new())
    }

    /// [`with_tcp`](Self::with_tcp) plus TLS listeners (also from
    /// [`crate::transport::bind_tcp`]), which serve `[tls]`'s identity.
    pub fn with_listeners(
        cfg: Config,
        sockets: Vec<std::net::UdpSocket>,
        listeners: Vec<std::net::TcpListener>,
        tls_listeners: Vec<std::net::TcpListener>,
    ) -> Result<Arc<Proxy>, ProxyError> {
        let metrics = crate::metrics::Metrics::new()?;
        metrics.set_dialogs_max(cfg.dialogs.max);
        if cfg.metrics.kamailio_names {
            metrics.enable_kamailio_names()?;
        }
        let tcp_options = crate::transport::TcpOptions {
            idle_timeout: cfg.tcp.idle_timeout,
            connect_timeout: cfg.tcp.connect_timeout,
            max_connections: cfg.tcp.max_connections,
            max_per_source: cfg.tcp.max_connections_per_source,
            reserved: cfg.tcp.reserved(),
            message_timeout: cfg.tcp.message_timeout,
            freebind: cfg.listen.freebind,
            ..Default::default()
        };
        let mut transports = Transports::new(sockets, listeners, tcp_options)?;
        if let Some(capture) = &cfg.capture {
            let (capture, sender) = crate::capture::Capture::new(capture.settings());
            transports = transports.with_capture(capture, sender);
        }
        if let Some(tls) = &cfg.tls {
            let Some(server) = &tls.server else {
                return Err(ProxyError::TlsNotLoaded);
            };
            let inbound = crate::transport::tls::TlsInbound::new(
                server.0.clone(),
                tls.handshake_timeout,
                tls.max_handshakes_per_source,
            );
            warn_expiring(&server.0, std::time::SystemTime::now());
            transports = transports.with_tls(tls_listeners, inbound)?;
        } else if !tls_listeners.is_empty() {
            return Err(ProxyError::TlsNotLoaded);
        }
        let first = *transports
            .local_addrs(Transport::Udp)
            .first()
            .ok_or(ProxyError::NoSocket)?;
        let adv_host = cfg.listen.advertise.host.to_string();
        // Port 0 (tests, scripts) means "whatever was bound".
        let adv_port = match cfg.listen.advertised_port() {
            0 => first.port(),
            p => p,
        };
        let adv_ports = PerTransport::from_fn(|t| {
            match (
                t,
                cfg.listen.advertise.port,
                transports.local_addrs(t).first(),
            ) {
                (Transport::Udp, ..) => adv_port,
                // `advertise`'s port is the plain SIP one; TLS has its own.
                (Transport::Tls, _, Some(a)) => a.port(),
                (_, Some(p), _) if p != 0 => p,
                (_, _, Some(a)) => a.port(),
                _ => adv_port,
            }
        });
        let me = me::Me::new(adv_host, adv_ports);
        let pool = Pool::build(&cfg, me.sent_by(), &metrics, None, 0)?;
        pool::configure_tls_client(&cfg, transports.tls_client());
        let registry = match &cfg.dialogs.registry {
            Some(url) => {
                metrics.enable_registry()?;
                Some(crate::dialog::Registry::new(
                    &crate::dialog::registry::Settings {
                        url: url.clone(),
                        prefix: cfg.dialogs.registry_prefix.clone(),
                        ttl: cfg.dialogs.ttl,
                        timeout: cfg.dialogs.registry_timeout,
                        queue: cfg.dialogs.registry_queue,
                    },
                )?)
            }
            None => None,
        };
        let dialogs = Dialogs::new(cfg.dialogs.ttl, cfg.dialogs.max).with_registry(registry);
        let proxy = Arc::new(Proxy {
            tables: Tables {
                txns: ClientTxns::with_capacity(TABLE_CAPACITY),
                invites: crate::fast_map_with_capacity(TABLE_CAPACITY),
                dialogs: Arc::new(dialogs),
                timers: Schedule::new(TIMER_SLACK),
                branches: BranchGen::default(),
            },
            me,
            hint_keys: hint::HintKeys::from_secrets(cfg.cluster.secrets()),
            transports,
            dns: crate::dns::Dns::new(&cfg.dns.servers),
            security: crate::security::Security::new(&cfg.security),
            rt: tokio::runtime::Handle::current(),
            pool: arc_swap::ArcSwap::from_pointee(pool),
            reload: Default::default(),
            shutting_down: AtomicBool::new(false),
            calls_deciding: Default::default(),
            icmp_pending: Mutex::new(Vec::new()),
            icmp_watch: Default::default(),
            metrics,
            prober: Default::default(),
            notifier: Default::default(),
            cfg,
        });
        // Starts accepting on the TCP listeners.
        proxy.transports.attach(Arc::downgrade(&proxy))?;
        Ok(proxy)
    }

    pub fn dialogs(&self) -> &Dialogs {
        &self.tables.dialogs
    }

    /// New INVITEs get 503 from now on; calls in progress go on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        if let Some(n) = self.notifier() {
            let deciding = self.calls_deciding.load(Ordering::Relaxed);
            n.stopping(&format!(
                "draining: {deciding} INVITE(s) being decided, new INVITEs get 503"
            ));
        }
    }

    /// Tells systemd through `notifier` (READY=1 after the first probe
    /// round, reloads, the drain, the watchdog). Set once, before
    /// [`Proxy::run`]; a second one is ignored.
    pub fn set_notifier(&self, notifier: crate::notify::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// The notifier, when one is set and systemd listens.
    fn notifier(&self) -> Option<&crate::notify::Notifier> {
        self.notifier.get().filter(|n| n.is_enabled())
    }

    /// What `STATUS=` tells `systemctl status`: the pool and the calls.
    fn status_line(&self) -> String {
        let pool = self.pool();
        let active = (0..pool.len())
            .filter(|&i| pool.accepts_new_calls(i))
            .count();
        format!(
            "{active} of {} destinations take calls, {} calls pinned",
            pool.len(),
            self.tables.dialogs.len()
        )
    }

    /// Resolves once every INVITE has its final answer.
    pub async fn drained(&self) {
        while self.calls_deciding.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The first listening socket's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.transports
            .local_addrs(Transport::Udp)
            .first()
            .copied()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Every listening UDP socket's address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.transports.local_addrs(Transport::Udp).to_vec()
    }

    /// Handles one message from `src` as if read from a UDP socket, on the
    /// caller's thread: what the receive threads do, for fuzzing the whole
    /// proxy and for tools. Must run inside the proxy's runtime.
    pub fn handle_datagram(self: &Arc<Self>, data: &[u8], src: SocketAddr) {
        self.handle_message(data, Peer::udp(src));
        self.flush_icmp();
    }

    /// Client and server transactions held now (the bounds a flood must
    /// not break).
    pub fn transaction_counts(&self) -> (usize, usize) {
        (self.tables.txns.len(), self.tables.invites.len())
    }

    /// Every TCP listener's address.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        self.transports.local_addrs(Transport::Tcp)
    }

    /// Every TLS listener's address.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        self.transports.local_addrs(Transport::Tls)
    }

    /// The TCP transport's counters and open connections.
    pub fn tcp(&self) -> &TcpTransport {
        self.transports.tcp()
    }

    /// The client side of TLS: its outbound handshake counters
    /// (`stats()`), the identities it checks.
    pub fn tls_client(&self) -> &crate::transport::TlsClient {
        self.transports.tls_client()
    }

    /// The TLS listeners' identity in force, handshakes in progress and
    /// counters (`None` without TLS listeners).
    pub fn tls_inbound(&self) -> Option<&Arc<crate::transport::tls::TlsInbound>> {
        self.transports.tls_inbound()
    }

    /// Serves until `cancel` fires: the transports' receive loops, the
    /// dialog expiry task and the timer task (which runs the transaction
    /// machines' timers, the prober and the transaction sweeper). Returns
    /// once every one of them has stopped.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tasks = JoinSet::new();
        let (p, c) = (self.clone(), cancel.clone());
        tasks.spawn(async move { p.transports.run(c).await });
        tasks.spawn(self.tables.dialogs.clone().run_expiry(cancel.clone()));
        if let Some(registry) = self.tables.dialogs.registry().cloned() {
            let c = cancel.clone();
            let r = registry.clone();
            tasks.spawn(async move { r.run_writer(c).await });
            let (p, c) = (self.clone(), cancel.clone());
            tasks.spawn(async move {
                registry
                    .run_state_listener(
                        c,
                        || p.shared_destinations(),
                        |change| p.apply_shared_state(change),
                    )
                    .await
            });
        }
        self.start_prober();
        if let Some(every) = self.notifier().and_then(|n| n.watchdog_interval()) {
            let first = tokio::time::Instant::now() + every;
            self.tables.timers.schedule(first, Timer::Watchdog);
        }
        let first_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
        self.tables.timers.schedule(first_sweep, Timer::Sweep);
        tasks.spawn(self.clone().run_timers(cancel.clone()));
        cancel.cancelled().await;
        self.shutting_down.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
    }

    /// Forgets finished transactions once their retransmissions are over,
    /// and schedules the next sweep.
    fn sweep(&self, now: tokio::time::Instant) {
        self.tables.txns.sweep(now);
        self.tables.invites.retain(|_, c| !c.expired(now));
        self.tables.timers.schedule(now + SWEEP_EVERY, Timer::Sweep);
    }

    /// One message from `src`: a UDP datagram, or one framed off a TCP
    /// stream.
    fn handle_message(self: &Arc<Self>, data: &[u8], src: Peer) {
        // RFC 5626 keep-alives and stray line ends.
        if data.iter().all(|&b| b == b'\r' || b == b'\n') {
            return;
        }
        match Message::parse(data) {
            Ok(msg) if msg.is_request() => {
                if let Some(m) = msg.method() {
                    self.metrics.request(m);
                }
                self.on_request(&msg, src);
            }
            Ok(msg) => {
                self.on_response(&msg, src);
            }
            Err(e) => self.on_unparsable(data, src, e),
        }
    }

    /// Fails over the INVITEs and answers 503 to the forwarded requests
    /// waiting on a destination reported unreachable: those the ICMP
    /// watch holds for it, never a scan of the tables (a flood of errors
    /// that pass the offender check must stay cheap).
    fn flush_icmp(&self) {
        let dead = match self.icmp_pending.lock() {
            Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
            _ => return,
        };
        for addr in dead {
            for w in self.icmp_watch.take(addr) {
                match w {
                    icmp::Waiter::Call(call) => {
                        if let Some(call) = call.upgrade().filter(|c| c.is_deciding()) {
                            self.call_unreachable(&call, addr);
                        }
                    }
                    icmp::Waiter::Relay(branch) if self.relay_waiting(branch.as_bytes()) => {
                        self.relay_unreachable(branch.as_bytes());
                    }
                    icmp::Waiter::Relay(_) => {}
                }
            }
        }
    }

    /// `w` was sent to `to`: an ICMP error from there reaches it.
    fn watch_icmp(&self, to: SocketAddr, w: icmp::Waiter<invite::Call>) {
        self.icmp_watch.watch(to, w, |w| match w {
            icmp::Waiter::Call(c) => c.upgrade().is_some_and(|c| c.is_deciding()),
            icmp::Waiter::Relay(b) => self.relay_waiting(b.as_bytes()),
        });
    }

    /// The forwarded request on `branch` still waits for its final.
    fn relay_waiting(&self, branch: &[u8]) -> bool {
        self.tables
            .txns
            .with(branch, |t| match t {
                crate::transaction::ClientTxn::Relay(r) => {
                    r.with_state(|st| st.client.next_wake().is_some())
                }
                _ => false,
            })
            .unwrap_or(false)
    }

    /// Pauses or resumes probing (`dispatcher.ping_active`); `None` only
    /// reads. Returns whether probing runs.
    ///
    /// Resuming probes every node at once: a keepalived standby that just
    /// took the VIP over has only its states from before the pause.
    pub fn ping_active(&self, active: Option<bool>) -> bool {
        if let Some(a) = active {
            let was = self.prober.active.swap(a, Ordering::Relaxed);
            tracing::info!("probing {}", if a { "resumed" } else { "paused" });
            if a && !was {
                self.probe_all_now();
            }
        }
        self.prober.active.load(Ordering::Relaxed)
    }

    /// Ready for traffic: the first probe round has been sent and answered
    /// in time, and some node takes new calls. `Err` says why not.
    ///
    /// With probing paused (a keepalived standby) the node states are not
    /// fresh, and on the standby they cannot be: its probes leave from the
    /// VIP, so the answers go to the box holding it. Judged by them, a
    /// standby could stay not ready for good, and the VIP would never come
    /// to it when the master fails. So a paused proxy is ready while it
    /// serves; once it holds the VIP, probing resumes and tells the truth.
    pub fn ready(&self) -> Result<(), String> {
        if !self.prober.active.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !self.prober.first_round_done.load(Ordering::Relaxed) {
            return Err("the first probe round has not finished".into());
        }
        let pool = self.pool();
        if !(0..pool.len()).any(|i| pool.accepts_new_calls(i)) {
            return Err("no destination is active".into());
        }
        Ok(())
    }

    /// The metrics, with the gauges brought up to date (for a scrape).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        let pool = self.pool();
        for (_, d, series) in pool.sets() {
            for (i, m) in series.iter().enumerate() {
                m.set_calls_active(self.tables.dialogs.pinned_to(d.addr(i)));
                m.set_state(d.status(i).state);
                m.set_stranded(d.stranded(i));
            }
        }
        if self.cfg.metrics.kamailio_names {
            // As `dispatcher.list` shows them (URI as written, FLAGS).
            self.metrics
                .set_kamailio_targets(pool.sets().flat_map(|(set, d, _)| {
                    (0..d.len()).map(move |i| (set, d.written(i), d.status(i).flags().as_str()))
                }));
        }
        self.metrics.set_dialogs(self.tables.dialogs.len());
        self.metrics.set_transactions(self.tables.txns.len());
        self.metrics
            .sync_dialog_evictions(&self.tables.dialogs.stats());
        if let Some(registry) = self.tables.dialogs.registry() {
            self.metrics.sync_registry(registry);
        }
        self.metrics
            .sync_tcp(self.tcp().stats(), self.tcp().connections());
        if let Some(capture) = self.transports.capture() {
            self.metrics.sync_capture(capture.stats());
        }
        self.metrics
            .sync_tls_outbound(self.transports.tls_client().stats());
        if let Some(tls) = self.transports.tls_inbound() {
            let identity = tls.identity();
            let mut expiries = identity.expiries.clone();
            expiries.extend(self.transports.tls_client().expiries());
            self.metrics.sync_tls_inbound(
                tls.stats(),
                &expiries,
                identity.crl.as_ref(),
                std::time::SystemTime::now(),
            );
        }
        &self.metrics
    }

    /// A call failed on node `i`: feeds its health, and asks the prober to
    /// check it now when the health says so.
    fn call_failed(&self, pool: &Pool, i: usize, failure: crate::dispatcher::health::Failure) {
        if pool.call_failed(i, failure) {
            // Calls go to the first set.
            self.probe_urgently([(pool.generation, 0, i)]);
        }
    }

    /// Sends `bytes` to `to` over its transport (see [`Transports::send`]).
    fn send_to(&self, bytes: &[u8], to: Peer) -> io::Result<()> {
        self.transports.send(bytes, to)
    }

    /// Answers `req` locally (RFC 3261 §8.2.6), to where §18.2.2 says a
    /// response to it goes.
    fn reply(&self, req: &Message<'_>, src: Peer, code: u16, reason: &[u8]) {
        self.reply_with(req, src, code, reason, &[]);
    }

    /// [`Proxy::reply`] with extra header lines.
    fn reply_with(
        &self,
        req: &Message<'_>,
        src: Peer,
        code: u16,
        reason: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        if let Some((out, to)) = self.local_response(req, src, code, reason, headers) {
            let _ = self.send_to(&out, to);
        }
    }

    /// A response to `req` from `src` built here (RFC 3261 §8.2.6), counted,
    /// and where §18.2.2 says it goes; `None` (counted as a drop) when the
    /// request has no Via to answer along.
    fn local_response(
        &self,
        req: &Message<'_>,
        src: Peer,
        code: u16,
        reason: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Option<(BytesMut, Peer)> {
        let Ok(via) = req.top_via() else {
            self.metrics.dropped(crate::metrics::DropReason::Malformed);
            return None;
        };
        let tag = self.tables.branches.tag();
        let mut out = BytesMut::with_capacity(req.len().min(2048) + 128);
        Response::new(req, code, reason, tag.as_bytes())
            .received(src.addr)
            .headers(headers)
            .write(&mut out);
        self.metrics
            .response_status(crate::metrics::ResponseOrigin::Local, code);
        Some((out, reply_target(via, src)))
    }
}

/// The transports deliver here; what each call does is in the methods
/// it names.
impl Handler for Proxy {
    fn on_message(self: &Arc<Self>, msg: Inbound<'_>) {
        self.handle_message(msg.data, msg.from);
    }

    /// ICMP from `to`'s own host says it is unreachable (or a TCP connect
    /// to it failed): the node is marked suspect (never down: that takes a
    /// probe or a failure of another kind) and the INVITE waiting on it
    /// fails over at once (in `flush_icmp`, outside any call's lock: a
    /// send inside one may be what read the error).
    fn on_unreachable(&self, to: SocketAddr) {
        tracing::debug!(addr = %to, "ICMP: destination unreachable");
        let pool = self.pool();
        if let Some(i) = pool.find(to) {
            self.call_failed(&pool, i, crate::dispatcher::health::Failure::Unreachable);
        }
        // Any destination: a forwarded request to a trunk waits on it too.
        if let Ok(mut p) = self.icmp_pending.lock() {
            if !p.contains(&to) {
                p.push(to);
            }
        }
    }

    /// Counts every ICMP error. The ignored ones are logged at debug
    /// level only: a flood of them must not become a flood of log lines
    /// (the counter shows it).
    fn on_icmp(&self, report: crate::transport::IcmpReport) {
        use crate::transport::IcmpVerdict;
        self.metrics.icmp_error(report.verdict.into());
        if report.verdict != IcmpVerdict::Accepted {
            tracing::debug!(
                to = %report.to,
                offender = ?report.offender,
                "ICMP error ignored ({:?}): not from the destination's host",
                report.verdict
            );
        }
    }

    fn on_send_failed(&self, _to: Peer) {
        self.metrics.dropped(crate::metrics::DropReason::SendError);
    }

    fn after_batch(&self) {
        self.flush_icmp();
    }

    /// Sources `[security] trusted` lists explicitly, and the pool's
    /// nodes (their addresses and advertised ones).
    fn privileged(&self, ip: std::net::IpAddr) -> bool {
        if self.security.lists_trusted() && self.security.is_trusted(ip) {
            return true;
        }
        let pool = self.pool();
        (0..pool.len())
            .any(|i| pool.addr(i).ip().to_canonical() == ip || pool.advertised(i).contains(&ip))
    }
}

thread_local! {
    /// One editor per thread, reused: once warm, editing a forwarded or
    /// relayed message allocates no buffers.
    static EDITOR: std::cell::RefCell<crate::sip::Editor> =
        std::cell::RefCell::new(crate::sip::Editor::new());
}

/// Runs `f` with this thread's editor (a fresh one if it is in use, so a
/// nested call can never panic).
fn with_editor<R>(f: impl FnOnce(&mut crate::sip::Editor) -> R) -> R {
    EDITOR.with(|e| match e.try_borrow_mut() {
        Ok(mut ed) => f(&mut ed),
        Err(_) => f(&mut crate::sip::Editor::new()),
    })
}

/// The health machine's settings from `[probe]`.
fn health_config(
    probe: &crate::config::Probe,
) -> Result<crate::dispatcher::health::HealthConfig, ProxyError> {
    use crate::dispatcher::health::{HealthConfig, ReplyCodes};
    Ok(HealthConfig::new(
        probe.failure_threshold,
        probe.success_threshold,
        ReplyCodes::parse(&probe.reply_codes)?,
    )?
    .with_mode(probe.mode)
    .with_latency(
        u16::try_from(probe.latency_estimator_alpha)
            .ok()
            .and_then(crate::dispatcher::latency::Alpha::from_permille)
            .filter(|_| probe.latency_stats),
    ))
}

/// Where a response to a request that came from `src` goes (RFC 3261
/// §18.2.2 with RFC 3581): over UDP the source address, and the source
/// port when the client asked with `rport`, else the sent-by port; over
/// TCP the connection it came in on, else a new one to the source address
/// and the sent-by port.
fn reply_target(via: &Via<'_>, src: Peer) -> Peer {
    let sent_by = SocketAddr::new(src.addr.ip(), via.port.unwrap_or(5060));
    match (src.transport, via.rport()) {
        (Transport::Tcp | Transport::Tls, _) => Peer {
            addr: sent_by,
            ..src
        },
        (Transport::Udp, Rport::Absent) => Peer::udp(sent_by),
        (Transport::Udp, _) => src,
    }
}

/// Where a relayed response goes, read from the Via below ours: `received`
/// (else the sent-by address) and `rport` (else the sent-by port), over
/// the Via's transport. Over TCP that is only where to connect should the
/// request's connection be gone, so the sent-by port (RFC 3261 §18.2.2),
/// not `rport` (the closed connection's). `None` for a transport we do
/// not speak.
fn upstream_target(via: &Via<'_>) -> Option<Peer> {
    let transport = Transport::from_via(via.transport)?;
    let mut addr = upstream_addr(via)?;
    if transport.is_stream() {
        addr.set_port(via.port.unwrap_or(5060));
    }
    Some(Peer::new(addr, transport))
}

fn upstream_addr(via: &Via<'_>) -> Option<SocketAddr> {
    let ip = match via.received() {
        Some(r) => {
            let r = r
                .strip_prefix(b"[")
                .and_then(|r| r.strip_suffix(b"]"))
                .unwrap_or(r);
            std::str::from_utf8(r).ok()?.parse().ok()?
        }
        None => via.host.ip()?,
    };
    let port = match via.rport() {
        Rport::Value(p) => p,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_18_2_2() {
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let udp = Peer::udp(src);
        let via = Via::parse(b"SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1").unwrap();
        assert_eq!(
            reply_target(&via, udp),
            Peer::udp("192.0.2.7:5070".parse().unwrap())
        );
        let via = Via::parse(b"SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;rport").unwrap();
        assert_eq!(reply_target(&via, udp), udp);
        // TCP: the same connection, else the source address and sent-by port.
        let conn = Some(crate::transport::ConnId::for_tests(7));
        let via = Via::parse(b"SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK1;rport").unwrap();
        assert_eq!(
            reply_target(&via, Peer::tcp(src, conn)),
            Peer::tcp("192.0.2.7:5070".parse().unwrap(), conn)
        );
        let via = Via::parse(b"SIP/2.0/UDP h.example;received=192.0.2.7;rport=4000").unwrap();
        assert_eq!(upstream_target(&via), Some(udp));
        let via = Via::parse(b"SIP/2.0/TCP h.example;received=192.0.2.7;rport=4000").unwrap();
        assert_eq!(
            upstream_target(&via),
            Some(Peer::tcp("192.0.2.7:5060".parse().unwrap(), None)),
            "a new connection goes to the sent-by port"
        );
        let via = Via::parse(b"SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1").unwrap();
        assert_eq!(
            upstream_target(&via),
            Some(Peer::udp("10.0.0.1:5060".parse().unwrap()))
        );
        let via = Via::parse(b"SIP/2.0/UDP h.example;branch=z9hG4bK1").unwrap();
        assert_eq!(upstream_target(&via), None);
        let via = Via::parse(b"SIP/2.0/SCTP 10.0.0.1;branch=z9hG4bK1").unwrap();
        assert_eq!(upstream_target(&via), None, "a transport we do not speak");
    }
}
