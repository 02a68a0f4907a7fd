//! The request path: sanity checks, then one of
//! - OPTIONS to sipedge itself: 200 (trunk keep-alives);
//! - CANCEL: 200, and the INVITE's state machine cancels its branch;
//! - ACK for a non-2xx final: absorbed by the INVITE's server transaction;
//! - in-dialog (To tag): pinned node (from the trunk) or loose-routed to the
//!   trunk (from a node);
//! - initial from a node: relayed to its Request-URI (egress);
//! - initial INVITE from anyone else: the INVITE state machine (pool,
//!   failover);
//! - other initial requests from outside: the pool's first choice.

use std::net::SocketAddr;
use std::sync::Arc;

use super::forward::RecordRoute;
use super::invite::Call;
use super::rescue::Refusal;
use super::route::{self, uri_hop, uri_transport, Hop, OurRoutes};
use super::{with_editor, Pool, Proxy, Timer};
use crate::dialog::Pin;
use crate::sip::{HeaderName, Message, Method, Scheme, SipError, Uri};
use crate::transaction::relay::{RelayAction, RelayClient};
use crate::transaction::{server_key, ClientTxn, Relay, RelayState, Token};
use crate::transport::{Peer, SendFault, Transport};
use tokio_util::sync::CancellationToken;

/// How a request is sent on.
struct Forward<'p> {
    to: Peer,
    /// Add our Record-Route(s), with the hint of this node.
    record_route: Option<(&'p Pool, usize)>,
    /// How many leading Route values are ours: consume them.
    pop_routes: usize,
    repin: Option<SocketAddr>,
    /// The node takes TCP: a request over `listen.udp_mtu` switches to it.
    tcp_fallback: bool,
}

/// How a request goes on once its next hop is known (after a DNS lookup,
/// maybe, on another task).
#[derive(Clone, Copy)]
pub(super) struct Onward {
    /// Record-Route with this node's hint (an initial request from it).
    pub node: Option<usize>,
    pub pop_routes: usize,
    pub repin: Option<SocketAddr>,
}

impl Onward {
    fn forward(self, pool: &Pool, to: Peer) -> Forward<'_> {
        Forward {
            to,
            record_route: self.node.map(|n| (pool, n)),
            pop_routes: self.pop_routes,
            repin: self.repin,
            tcp_fallback: false,
        }
    }
}

thread_local! {
    /// One server-key buffer per thread, reused.
    static KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `msg`'s server transaction key ([`server_key`]); `None`
/// when it has none (no readable Via).
fn with_key<R>(msg: &Message<'_>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    KEY.with(|k| match k.try_borrow_mut() {
        Ok(mut k) => server_key(msg, &mut k).map(|()| f(&k)),
        Err(_) => {
            let mut k = Vec::new();
            server_key(msg, &mut k).map(|()| f(&k))
        }
    })
}

/// What [`route::in_dialog`] asks, answered from the pool in force and
/// the hint keys, for one request's Call-ID.
struct PoolLookup<'a> {
    pool: &'a Pool,
    keys: &'a super::hint::HintKeys,
    call_id: &'a [u8],
}

impl route::Lookup for PoolLookup<'_> {
    fn member(&self, a: SocketAddr) -> Option<route::Member> {
        let i = self.pool.find(a)?;
        Some(route::Member {
            transport: self.pool.transport(i),
            takes_tcp: self.pool.takes_tcp(i),
        })
    }

    /// The node listing `a`'s IP among its `advertised` addresses; when
    /// several do (one NAT address in front of them), the one on `a`'s
    /// port.
    fn advertiser(&self, a: SocketAddr) -> Option<SocketAddr> {
        let ip = a.ip().to_canonical();
        let mut on_ip = (0..self.pool.len())
            .filter(|&i| self.pool.advertised(i).contains(&ip))
            .map(|i| self.pool.addr(i));
        let first = on_ip.next()?;
        match on_ip.next() {
            None => Some(first),
            Some(second) => [first, second]
                .into_iter()
                .chain(on_ip)
                .find(|n| n.port() == a.port()),
        }
    }

    fn open(&self, hint: &route::Hint) -> Option<SocketAddr> {
        self.keys.open(&hint.token?, self.call_id)
    }
}

impl Proxy {
    pub(super) fn on_request(self: &Arc<Self>, msg: &Message<'_>, src: Peer) {
        // One snapshot of the pool for the whole request.
        let pool = self.pool();
        let from_node = self.node_of(&pool, msg, src);
        // Scanners, untrusted and flooding sources go before any work (or
        // any answer) is spent on them.
        if from_node.is_none() && !self.admitted(msg, src) {
            return;
        }
        if let Err(e) = msg.validate() {
            return self.refuse(msg, src, Refusal::Invalid(e));
        }
        let Some(method) = msg.method() else { return };
        let Ok(uri) = msg.request_uri() else { return };
        if method == Method::Options && uri.user.is_none() && self.me.is_me(&uri) {
            return self.reply(msg, src, 200, b"OK");
        }
        if method == Method::Ack
            && self
                .server_invite(msg)
                .is_some_and(|c| self.invite_acked(&c))
        {
            // ACK for a non-2xx final: ends the server transaction.
            return;
        }
        if msg.max_forwards() == Ok(Some(0)) {
            return self.refuse(msg, src, Refusal::Invalid(SipError::TooManyHops));
        }
        if uri.scheme == Scheme::Other {
            return self.refuse(msg, src, Refusal::UnsupportedUri);
        }
        if msg.values(HeaderName::ProxyRequire).any(|v| !v.is_empty()) {
            // We support no extensions that need a proxy's help (RFC 3261
            // §16.3 step 4).
            let list = msg.header(HeaderName::ProxyRequire).unwrap_or_default();
            return self.refuse(msg, src, Refusal::BadExtension(list));
        }
        if method == Method::Cancel {
            return self.on_cancel(msg, src);
        }
        let in_dialog = msg.to_tag().ok().flatten().is_some();
        if in_dialog {
            return self.in_dialog(&pool, msg, src, from_node);
        }
        if let Some(node) = from_node {
            return self.egress(&pool, msg, src, node);
        }
        if method == Method::Invite {
            return self.new_invite(msg, src);
        }
        if self.overloaded() {
            return self.refuse(msg, src, Refusal::Overload);
        }
        // Other out-of-dialog requests only ever go to the pool: sipedge is
        // not an open relay.
        match pool.plan(msg.call_id().unwrap_or_default()).next() {
            Some(i) => {
                let to = Peer::new(pool.addr(i), pool.transport(i));
                self.forward(
                    msg,
                    src,
                    Forward {
                        to,
                        record_route: None,
                        pop_routes: self.our_routes(msg).count,
                        repin: None,
                        tcp_fallback: pool.takes_tcp(i),
                    },
                );
            }
            None => self.refuse(msg, src, Refusal::AllDown),
        }
    }

    /// At `[limits] transactions`: new calls are shed, established ones
    /// go on.
    fn overloaded(&self) -> bool {
        self.tables.txns.len() >= self.cfg.limits.transactions
    }

    /// The pool member `msg` comes from, if any.
    fn node_of(&self, pool: &Pool, msg: &Message<'_>, src: Peer) -> Option<usize> {
        pool.find(src.addr).or_else(|| {
            // A node's own TCP connections come from an ephemeral port: its
            // Via names the node, from the address the connection has.
            if !src.transport.is_stream() {
                return None;
            }
            let via = msg.top_via().ok()?;
            let sent_by = SocketAddr::new(via.host.ip()?, via.port.unwrap_or(5060));
            (sent_by.ip().to_canonical() == src.addr.ip().to_canonical())
                .then(|| pool.find(sent_by))
                .flatten()
        })
    }

    /// `[security]` on a request from outside the pool: false when it is
    /// dropped (counted) or refused with 403.
    fn admitted(&self, msg: &Message<'_>, src: Peer) -> bool {
        use crate::metrics::DropReason;
        use crate::security::Verdict;
        let initial = !matches!(msg.to_tag(), Ok(Some(_)));
        let ua = msg.header(HeaderName::UserAgent);
        match self
            .security
            .check(src.addr.ip(), initial, ua, std::time::Instant::now)
        {
            Verdict::Pass => return true,
            Verdict::Scanner => self.metrics.dropped(DropReason::Scanner),
            Verdict::RateLimited => self.metrics.dropped(DropReason::RateLimited),
            Verdict::Untrusted => {
                if self.security.silent_drop || msg.method() == Some(Method::Ack) {
                    self.metrics.dropped(DropReason::Untrusted);
                } else {
                    self.refuse(msg, src, Refusal::Forbidden);
                }
            }
        }
        false
    }

    /// Our Route values at the top of `msg` (RFC 3261 §16.4; two after a
    /// double Record-Route).
    pub(super) fn our_routes(&self, msg: &Message<'_>) -> OurRoutes {
        let mut ours = OurRoutes {
            count: 0,
            hint: None,
            transport: None,
        };
        let Ok(Some(first)) = msg.first_route() else {
            return ours;
        };
        if !self.me.is_me(&first.uri) {
            return ours;
        }
        ours.count = 1;
        ours.hint = first.uri.param(super::hint::PARAM).map(|h| route::Hint {
            token: h.and_then(super::hint::parse),
        });
        let second = msg
            .values(HeaderName::Route)
            .nth(1)
            .and_then(|v| crate::sip::NameAddr::parse(v).ok())
            .and_then(|a| Uri::parse(a.uri).ok());
        if let Some(second) = second.filter(|u| self.me.is_me(u)) {
            ours.count = 2;
            ours.transport = Some(uri_transport(&second));
        }
        ours
    }

    /// The trunk's INVITE server transaction `msg` belongs to (its
    /// retransmission, its CANCEL, its ACK).
    fn server_invite(&self, msg: &Message<'_>) -> Option<Arc<Call>> {
        with_key(msg, |k| self.tables.invites.get(k).map(|c| c.clone())).flatten()
    }

    fn on_cancel(&self, msg: &Message<'_>, src: Peer) {
        match self.server_invite(msg) {
            Some(call) => {
                self.reply(msg, src, 200, b"OK");
                self.call_cancelled(&call);
            }
            None => self.refuse(msg, src, Refusal::UnknownDialog),
        }
    }

    fn new_invite(self: &Arc<Self>, msg: &Message<'_>, src: Peer) {
        // Known: a retransmission, the server transaction knows what to do.
        // New: the key, owned from here on.
        let found = with_key(msg, |k| match self.tables.invites.get(k) {
            Some(c) => Ok(c.clone()),
            None => Err(Box::<[u8]>::from(k)),
        });
        let key = match found {
            None => return self.refuse(msg, src, Refusal::Invalid(SipError::BadVia)),
            Some(Ok(call)) => return self.invite_again(&call, src),
            Some(Err(key)) => key,
        };
        let shed = if self.overloaded() {
            Some(Refusal::Overload)
        } else if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Some(Refusal::ShuttingDown)
        } else {
            None
        };
        if let Some(refusal) = shed {
            // The call's whole story, as `invite.rs` logs a routed one's.
            tracing::info!(
                call_id = %String::from_utf8_lossy(msg.call_id().unwrap_or_default()),
                code = refusal.answer().code,
                reason = refusal.answer().label.map_or("", |l| l.as_str()),
                peer = %src,
                "INVITE answered locally"
            );
            return self.refuse(msg, src, refusal);
        }
        // One atomic look-up-or-insert: copies of an INVITE read by two
        // receive threads at once must not both start a call (a double fax).
        let call = match self.tables.invites.entry(key) {
            dashmap::Entry::Occupied(o) => {
                let call = o.get().clone();
                drop(o);
                return self.invite_again(&call, src);
            }
            dashmap::Entry::Vacant(v) => {
                let pool = self.pool();
                // Kamailio's call load (ds_load_add at the INVITE,
                // ds_load_remove at the BYE or a failure) is the dialog
                // table's own count: the Call-ID is pinned when a node is
                // picked and leaves at the BYE, the failure or its expiry,
                // so the count can neither drift nor underflow.
                let dialogs = &self.tables.dialogs;
                let load = |i: usize| dialogs.pinned_to(pool.addr(i));
                let call = Call::new(msg, src, pool.clone(), self.our_routes(msg).count, load);
                v.insert(call.clone());
                call
            }
        };
        self.start_invite(&call, msg);
    }

    /// A request from a pool member starting a call to the outside.
    fn egress(self: &Arc<Self>, pool: &Pool, msg: &Message<'_>, src: Peer, node: usize) {
        let Some(uri) = msg.request_uri().ok() else {
            return;
        };
        // A Request-URI naming sipedge itself has nowhere further to go:
        // relaying it to our own address would only loop.
        let hop = uri_hop(&uri).filter(|_| !self.me.is_me(&uri));
        let Some(hop) = hop else {
            return self.refuse(msg, src, Refusal::NoRoute);
        };
        let node_addr = pool.addr(node);
        let invite = msg.method() == Some(Method::Invite);
        if invite {
            self.pin(msg.call_id().unwrap_or_default(), node_addr);
        }
        let plan = Onward {
            node: Some(node),
            pop_routes: self.our_routes(msg).count,
            // Its 2xx confirms the call on the node (the registry learns it).
            repin: invite.then_some(node_addr),
        };
        self.forward_to_hop(pool, msg, src, hop, plan);
    }

    /// Forwards to `hop`; a host name is resolved first (RFC 3263), on
    /// the runtime when its answer is not cached, so the receive path
    /// never waits on DNS. An unresolvable name gets 478, as Kamailio
    /// answers.
    fn forward_to_hop(
        self: &Arc<Self>,
        pool: &Pool,
        msg: &Message<'_>,
        src: Peer,
        hop: Hop,
        plan: Onward,
    ) {
        let target = match hop {
            Hop::Addr(to) => return self.forward(msg, src, plan.forward(pool, to)),
            Hop::Name(t) => t,
        };
        if let Some(addr) = self.dns.cached(&target) {
            self.tls_name(&target, addr);
            let to = Peer::new(addr, target.transport);
            return self.forward(msg, src, plan.forward(pool, to));
        }
        let (me, pool) = (self.clone(), self.pool());
        let raw = bytes::Bytes::copy_from_slice(msg.as_bytes());
        self.rt.spawn(async move {
            let resolved = me.dns.resolve(&target).await;
            let Ok(msg) = Message::parse(&raw) else {
                return;
            };
            match resolved {
                Ok(addr) => {
                    me.tls_name(&target, addr);
                    let to = Peer::new(addr, target.transport);
                    me.forward(&msg, src, plan.forward(&pool, to));
                }
                Err(e) => {
                    tracing::info!("{}: {e}", target.host);
                    if msg.method() != Some(Method::Ack) {
                        me.refuse(&msg, src, Refusal::Unresolvable);
                    }
                }
            }
        });
    }

    /// Over TLS the peer must prove the name the URI gave (RFC 5922 §7.2),
    /// not the address it resolved to.
    fn tls_name(&self, target: &crate::dns::Target, addr: std::net::SocketAddr) {
        if target.transport == crate::transport::Transport::Tls {
            self.transports.tls_client().resolved(addr, &target.host);
        }
    }

    /// An in-dialog request: its Call-ID's node from the local table, else
    /// (from outside the pool, with a shared registry) from the registry,
    /// read on the runtime like a DNS answer so the receive path never
    /// waits on Redis; then routed. An ACK waits for the read too: without
    /// the entry it would go by an older fact or nowhere, and a 2xx's lost
    /// ACK costs the call. A node's request needs no read: it is
    /// loose-routed towards the trunk.
    fn in_dialog(
        self: &Arc<Self>,
        pool: &Pool,
        msg: &Message<'_>,
        src: Peer,
        from_node: Option<usize>,
    ) {
        let call_id = msg.call_id().unwrap_or_default();
        let pinned = self.tables.dialogs.get(call_id);
        if pinned.is_some() || from_node.is_some() || self.tables.dialogs.registry().is_none() {
            return self.route_in_dialog(pool, msg, src, from_node, pinned);
        }
        let (me, pool) = (self.clone(), self.pool());
        let raw = bytes::Bytes::copy_from_slice(msg.as_bytes());
        let call_id = bytes::Bytes::copy_from_slice(call_id);
        self.rt.spawn(async move {
            let pinned = me
                .tables
                .dialogs
                .lookup_shared(&call_id, |a| pool.find(a).is_some())
                .await;
            let Ok(msg) = Message::parse(&raw) else {
                return;
            };
            me.route_in_dialog(&pool, &msg, src, None, pinned);
        });
    }

    /// Routes an in-dialog request on its facts (`pinned`: the node its
    /// Call-ID has, locally or in the registry).
    fn route_in_dialog(
        self: &Arc<Self>,
        pool: &Pool,
        msg: &Message<'_>,
        src: Peer,
        from_node: Option<usize>,
        pinned: Option<SocketAddr>,
    ) {
        let call_id = msg.call_id().unwrap_or_default();
        let ruri = msg.request_uri().ok();
        let ours = self.our_routes(msg);
        // Only a node's request is loose-routed by the Route after ours.
        let next_route = from_node.and_then(|_| {
            let v = msg.values(HeaderName::Route).nth(ours.count)?;
            Uri::parse(crate::sip::NameAddr::parse(v).ok()?.uri).ok()
        });
        let trust = match (
            self.security.lists_trusted(),
            self.security.is_trusted(src.addr.ip()),
        ) {
            (false, _) => route::Trust::NoneListed,
            (true, true) => route::Trust::Listed,
            (true, false) => route::Trust::Stranger,
        };
        let facts = route::InDialog {
            from_node: from_node.map(|n| pool.addr(n)),
            trust,
            pinned,
            signed: self.hint_keys.authenticated(),
            ours,
            request_uri: ruri.as_ref(),
            next_route: next_route.as_ref(),
        };
        let lookup = PoolLookup {
            pool,
            keys: &self.hint_keys,
            call_id,
        };
        let (hop, pop_routes, repin, tcp_fallback) = match route::in_dialog(&facts, &lookup) {
            route::Decision::Forward {
                hop,
                pop_routes,
                repin,
                tcp_fallback,
            } => (hop, pop_routes, repin, tcp_fallback),
            route::Decision::UnknownDialog => return self.unknown_dialog(msg, src),
            route::Decision::BadHint => {
                tracing::debug!(%src, "in-dialog request with a bad route hint");
                if msg.method() == Some(Method::Ack) {
                    return;
                }
                return self.refuse(msg, src, Refusal::BadRouteHint);
            }
        };
        match hop {
            Hop::Addr(to) => self.forward(
                msg,
                src,
                Forward {
                    to,
                    record_route: None,
                    pop_routes,
                    repin,
                    tcp_fallback,
                },
            ),
            hop => {
                let plan = Onward {
                    node: None,
                    pop_routes,
                    repin,
                };
                self.forward_to_hop(pool, msg, src, hop, plan)
            }
        }
    }

    /// An in-dialog request with nowhere to go: 481 (an ACK is dropped).
    fn unknown_dialog(&self, msg: &Message<'_>, src: Peer) {
        if msg.method() != Some(Method::Ack) {
            self.refuse(msg, src, Refusal::UnknownDialog);
        }
    }

    /// Forwards statefully (responses relayed through a transaction; ACK
    /// statelessly).
    fn forward(self: &Arc<Self>, msg: &Message<'_>, src: Peer, f: Forward<'_>) {
        // RFC 3261 §16.11: a retransmitted request must go out with the same
        // branch, so the node's transaction absorbs it; derive ours from the
        // sender's RFC 3261 branch and address.
        let branch = match msg.top_via() {
            Ok(v) if v.has_rfc3261_branch() => self
                .tables
                .branches
                .derived(v.branch().unwrap_or_default(), src.addr),
            _ => self.tables.branches.next(),
        };
        if msg.method() == Some(Method::Invite) {
            // A stateful proxy answers 100 to an INVITE itself (§16.2).
            self.reply(msg, src, 100, b"Trying");
        }
        let hint = f
            .record_route
            .map(|(pool, node)| self.hint(pool.addr(node), msg.call_id().unwrap_or_default()));
        with_editor(|ed| {
            let rr = |t| {
                f.record_route.and_then(|(pool, node)| {
                    RecordRoute::for_node(pool, node, src.transport, t, hint?)
                })
            };
            let edited = self.forward_edit_mtu(
                ed,
                msg,
                src.addr,
                &branch,
                f.to.transport,
                f.tcp_fallback,
                rr,
                f.pop_routes,
            );
            match edited {
                Ok((out, t)) => {
                    let to = Peer {
                        transport: t,
                        ..f.to
                    };
                    self.send_forwarded(msg, out, branch, src, to, f.repin)
                }
                Err(err) => self.refuse(msg, src, Refusal::Invalid(err)),
            }
        });
    }

    /// Registers the client transaction (not for ACK), schedules its
    /// timers and sends; a send that fails at once answers 503 upstream.
    fn send_forwarded(
        &self,
        msg: &Message<'_>,
        out: &[u8],
        branch: Token,
        src: Peer,
        to: Peer,
        repin: Option<SocketAddr>,
    ) {
        let method = msg.method();
        if method == Some(Method::Ack) {
            let _ = self.send_to(out, to);
            return;
        }
        let now = std::time::Instant::now();
        let mut wake = None;
        let new = self.tables.txns.insert_new(&branch, || {
            let client = RelayClient::new(
                now,
                method == Some(Method::Invite),
                to.transport != Transport::Udp,
                self.cfg.failover.fr_timeout,
            );
            wake = client.next_wake();
            ClientTxn::Relay(Box::new(Relay {
                call_id: msg.call_id().unwrap_or_default().into(),
                is_bye: method == Some(Method::Bye),
                repin,
                upstream: src,
                to,
                state: RelayState::new(client, bytes::Bytes::copy_from_slice(out)).into(),
            }))
        });
        if let Some(at) = wake {
            self.tables
                .timers
                .schedule(tokio::time::Instant::from_std(at), Timer::Relay(branch));
        }
        // A retransmission from upstream goes on as a retransmission of
        // ours (same branch); its transaction's timers keep running.
        if new {
            self.watch_icmp(to.addr, super::icmp::Waiter::Relay(branch));
        }
        match self.send_to(out, to) {
            // Too large for a datagram once our headers are in: the
            // sender's message, no hop's failure (RFC 3261 §21.5.14).
            Err(e) if new && SendFault::of(&e) == SendFault::TooLarge => {
                let _ = self.tables.txns.remove(branch.as_bytes());
                self.refuse(msg, src, Refusal::Invalid(SipError::TooLarge));
            }
            Err(_) if new => self.relay_unreachable(branch.as_bytes()),
            _ => {}
        }
    }

    /// The timer of the forwarded request on `branch` fired at `now`:
    /// resend it, or answer 408 upstream when its wait is over.
    fn relay_timer(&self, branch: &Token, now: tokio::time::Instant) {
        let step = self.tables.txns.with(branch.as_bytes(), |t| match t {
            ClientTxn::Relay(r) => r.with_state(|st| {
                let action = st.client.on_timer(now.into_std());
                // The last use of the copy is the 408 built from it.
                let request = st.forget_if_done().unwrap_or_else(|| st.request.clone());
                Some((action, st.client.next_wake(), r.to, request, r.upstream))
            }),
            _ => None,
        });
        let Some((action, wake, to, request, upstream)) = step.flatten() else {
            return;
        };
        let stopping = self
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed);
        match action {
            Some(RelayAction::Resend) if !stopping => {
                let _ = self.send_to(&request, to);
            }
            Some(RelayAction::TimedOut) => {
                self.forward_failed(&request, upstream, crate::metrics::ForwardFailure::Timeout);
            }
            _ => {}
        }
        if let Some(at) = wake {
            self.tables
                .timers
                .schedule(tokio::time::Instant::from_std(at), Timer::Relay(*branch));
        }
    }

    /// The forwarded request on `branch` cannot reach its next hop: 503
    /// upstream at once (RFC 3261 §16.7 step 10 via §16.8's rules).
    pub(super) fn relay_unreachable(&self, branch: &[u8]) {
        let failed = self.tables.txns.with(branch, |t| match t {
            ClientTxn::Relay(r) => r.with_state(|st| {
                let answer = st.client.on_transport_error(std::time::Instant::now());
                answer.then(|| (st.forget_if_done().unwrap_or_default(), r.upstream))
            }),
            _ => None,
        });
        if let Some((request, upstream)) = failed.flatten() {
            self.forward_failed(
                &request,
                upstream,
                crate::metrics::ForwardFailure::Transport,
            );
        }
    }

    /// Answers a forwarded request upstream ourselves, as if its next hop
    /// had: 408 when it timed out, 503 when the transport failed. Built
    /// from the request as forwarded (our Via on top, the sender's marked
    /// with `received`/`rport`) and relayed like a response from there.
    fn forward_failed(&self, request: &[u8], upstream: Peer, why: crate::metrics::ForwardFailure) {
        use crate::metrics::ForwardFailure;
        let Ok(req) = Message::parse(request) else {
            return;
        };
        let refusal = match why {
            ForwardFailure::Timeout => Refusal::TimedOut,
            ForwardFailure::Transport => Refusal::Unreachable,
        };
        let answer = refusal.answer();
        self.metrics.forward_failed(why);
        self.count_refusal(&req, &answer);
        tracing::info!(
            call_id = %String::from_utf8_lossy(req.call_id().unwrap_or_default()),
            "{} to the next hop failed ({why:?}): {} upstream",
            String::from_utf8_lossy(req.method().map(|m| m.as_bytes()).unwrap_or_default()),
            answer.code
        );
        let tag = self.tables.branches.tag();
        let mut out = bytes::BytesMut::with_capacity(request.len().min(2048) + 64);
        crate::sip::Response::new(&req, answer.code, &answer.phrase, tag.as_bytes())
            .write(&mut out);
        if let Ok(resp) = Message::parse(&out) {
            let local = crate::metrics::ResponseOrigin::Local;
            self.send_upstream(&resp, Some(upstream), false, local);
        }
    }

    /// The one timer task: the relay clients' Timer E/A and their wait for
    /// a final (RFC 3261 §17.1.2.2), the new INVITEs' Timer A and
    /// fr_timeout / fr_inv_timeout, and the prober's rounds, urgent probes
    /// and timeouts.
    pub(super) async fn run_timers(self: Arc<Self>, cancel: CancellationToken) {
        self.tables
            .timers
            .run(&cancel, |now, due| {
                for t in due.drain(..) {
                    match t {
                        Timer::Relay(branch) => self.relay_timer(&branch, now),
                        Timer::Call(c) => {
                            if let Some(call) = c.upgrade() {
                                self.call_timer(&call, now);
                            }
                        }
                        Timer::ProbeRound(at) => self.probe_round(at, now),
                        Timer::ProbeUrgent => self.probe_urgent(),
                        Timer::ProbeTimeout => self.probe_timeouts(now),
                        Timer::FirstRoundDone => self.first_round_done(),
                        Timer::Watchdog => self.watchdog(now),
                        Timer::Sweep => self.sweep(now),
                    }
                }
                self.flush_icmp();
            })
            .await;
    }

    /// Pins a new call; a full table still lets the call through.
    pub(super) fn pin(&self, call_id: &[u8], node: SocketAddr) {
        if let Pin::Full = self.tables.dialogs.pin(call_id, node) {
            tracing::debug!("dialog table full: call not pinned");
        }
    }

    /// A node's 2xx confirmed the call on it (or its takeover): pinned
    /// here and, as the node's dispatcher URI, in the shared registry.
    pub(super) fn confirm(&self, pool: &Pool, call_id: &[u8], node: SocketAddr) {
        let pinned = match pool.find(node) {
            Some(i) => self.tables.dialogs.confirm(call_id, node, pool.uri(i)),
            // Gone from the pool by a reload: kept for this instance only.
            None => self.tables.dialogs.pin(call_id, node),
        };
        if let Pin::Full = pinned {
            tracing::debug!("dialog table full: call not pinned");
        }
    }
}
