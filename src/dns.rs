//! Locating a SIP server named by a host name (RFC 3263 §4), the way
//! Kamailio does by default (`dns_try_naptr` off): a URI with a port gets
//! A/AAAA for that port; without one, SRV `_sip._udp` (`_sip._tcp` for
//! TCP) in priority order, weight breaking ties, then A/AAAA of the target
//! with its port; no SRV record at all: A/AAAA on 5060. Answers are cached
//! for their TTL, so a request to a known name is forwarded at once,
//! without leaving the receive path.
//!
//! Only requests the nodes send out need this (calls to carriers, and
//! in-dialog requests towards a trunk's Contact): the pool itself is IP
//! addresses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::transport::Transport;

/// Answers are kept at most this long, whatever their TTL says.
const MAX_CACHE: Duration = Duration::from_secs(300);

/// One query's wait for its answer, per name server.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no resolver: {0}")]
    NoResolver(String),
    #[error("{name}: {reason}")]
    Lookup { name: String, reason: String },
    #[error("{0}: no address")]
    NoAddress(String),
}

/// What is resolved: a host, the URI's port if it has one, the transport
/// (it picks the SRV service).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Box<str>,
    pub port: Option<u16>,
    pub transport: Transport,
}

/// The resolver and its cache.
pub struct Dns {
    resolver: Result<TokioResolver, String>,
    cache: crate::FastMap<Target, (SocketAddr, Instant)>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Dns {
    /// Name servers `servers`, or the system's (`/etc/resolv.conf`) when
    /// empty. A system without a usable resolver configuration still
    /// starts: every lookup then fails (and is answered 478).
    pub fn new(servers: &[SocketAddr]) -> Dns {
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| e.to_string())
        } else {
            let mut cfg = ResolverConfig::new();
            for s in servers {
                cfg.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
            }
            Ok(TokioResolver::builder_with_config(
                cfg,
                TokioConnectionProvider::default(),
            ))
        };
        let resolver = builder.map(|mut b| {
            // A call waits on this: give up within seconds (the caller's
            // INVITE is retransmitted meanwhile), not the resolver's 5 s
            // times its attempts per server.
            let opts = b.options_mut();
            opts.timeout = LOOKUP_TIMEOUT;
            opts.attempts = 1;
            b.build()
        });
        if let Err(e) = &resolver {
            tracing::warn!("no DNS resolver, host names will not resolve: {e}");
        }
        Dns {
            resolver,
            cache: Default::default(),
        }
    }

    /// The address `target` resolved to, while its answer is fresh.
    pub fn cached(&self, target: &Target) -> Option<SocketAddr> {
        let e = self.cache.get(target)?;
        (e.1 > Instant::now()).then_some(e.0)
    }

    /// Resolves `target` (RFC 3263 §4.2) and caches the answer.
    pub async fn resolve(&self, target: &Target) -> Result<SocketAddr, DnsError> {
        let resolver = self
            .resolver
            .as_ref()
            .map_err(|e| DnsError::NoResolver(e.clone()))?;
        let host = fqdn(&target.host);
        let (addr, until) = match target.port {
            Some(port) => address(resolver, &host, port).await?,
            None => {
                let service = match target.transport {
                    Transport::Udp => "_sip._udp",
                    Transport::Tcp => "_sip._tcp",
                    // RFC 3263 §4.1: TLS is the sips service over TCP.
                    Transport::Tls => "_sips._tcp",
                };
                match srv(resolver, &format!("{service}.{host}")).await? {
                    Some((t, port, srv_until)) => {
                        let (addr, until) = address(resolver, &t, port).await?;
                        (addr, until.min(srv_until))
                    }
                    None => {
                        let port = crate::value::default_port(target.transport);
                        address(resolver, &host, port).await?
                    }
                }
            }
        };
        let until = until.min(Instant::now() + MAX_CACHE);
        self.cache.insert(target.clone(), (addr, until));
        // Expired answers go when the table is looked after; it only holds
        // names the nodes call, so it stays small.
        if self.cache.len() > 4096 {
            let now = Instant::now();
            self.cache.retain(|_, e| e.1 > now);
        }
        Ok(addr)
    }
}

/// How long [`resolve_now`] waits for all its names: an SRV answer and
/// then its target's address, each bounded by [`LOOKUP_TIMEOUT`].
const RESOLVE_NOW_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `targets` together, from sync code (reading the config, at
/// start or on a reload), with name servers `servers` (empty: the
/// system's): one answer per target, in order. Waits at most
/// [`RESOLVE_NOW_TIMEOUT`]; inside the proxy's runtime the wait moves this
/// worker's other tasks elsewhere, so calls are not held up.
pub fn resolve_now(
    servers: &[SocketAddr],
    targets: &[Target],
) -> Vec<Result<SocketAddr, DnsError>> {
    if targets.is_empty() {
        return Vec::new();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (servers, asked) = (servers.to_vec(), targets.to_vec());
    // Its own thread and runtime: callable with or without a runtime
    // around, and a resolver that hangs is left behind, not waited for.
    let spawned = std::thread::Builder::new()
        .name("sipedge-resolve".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let answers = match runtime {
                Ok(rt) => rt.block_on(async {
                    let dns = Dns::new(&servers);
                    let lookups = asked.iter().map(|t| dns.resolve(t));
                    futures_util::future::join_all(lookups).await
                }),
                Err(e) => asked
                    .iter()
                    .map(|_| Err(DnsError::NoResolver(e.to_string())))
                    .collect(),
            };
            let _ = tx.send(answers);
        });
    let wait = || rx.recv_timeout(RESOLVE_NOW_TIMEOUT).ok();
    let answers = match spawned {
        Err(e) => return unanswered(targets, &e.to_string()),
        Ok(_) => match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        },
    };
    answers.unwrap_or_else(|| unanswered(targets, "no answer in time"))
}

fn unanswered(targets: &[Target], reason: &str) -> Vec<Result<SocketAddr, DnsError>> {
    targets
        .iter()
        .map(|t| {
            Err(DnsError::Lookup {
                name: t.host.to_string(),
                reason: reason.to_owned(),
            })
        })
        .collect()
}

/// A name as absolute, so the system's search domains are not tried.
fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_owned()
    } else {
        format!("{host}.")
    }
}

/// The best SRV target (lowest priority, then highest weight): its name,
/// port and how long the answer holds. `None` when the name has no SRV
/// records.
async fn srv(
    resolver: &TokioResolver,
    name: &str,
) -> Result<Option<(String, u16, Instant)>, DnsError> {
    match resolver.srv_lookup(name).await {
        Ok(answer) => {
            let best = answer
                .iter()
                .min_by_key(|s| (s.priority(), std::cmp::Reverse(s.weight())))
                .map(|s| (s.target().to_utf8(), s.port()));
            Ok(best.map(|(t, p)| (t, p, answer.as_lookup().valid_until())))
        }
        Err(e) if e.is_no_records_found() => Ok(None),
        Err(e) => Err(DnsError::Lookup {
            name: name.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The first A/AAAA address of `host`, with `port`.
async fn address(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<(SocketAddr, Instant), DnsError> {
    let answer = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| DnsError::Lookup {
            name: host.to_owned(),
            reason: e.to_string(),
        })?;
    let ip = answer
        .iter()
        .next()
        .ok_or_else(|| DnsError::NoAddress(host.to_owned()))?;
    Ok((SocketAddr::new(ip, port), answer.valid_until()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_absolute() {
        assert_eq!(fqdn("carrier.example"), "carrier.example.");
        assert_eq!(fqdn("carrier.example."), "carrier.example.");
    }

    #[tokio::test]
    async fn an_unreachable_name_server_is_an_error_not_a_hang() {
        // A closed loopback port: the lookup fails (refused or timed out
        // by the resolver's own bounded retries).
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let dns = Dns::new(&[addr]);
        let t = Target {
            host: "nowhere.example".into(),
            port: Some(5060),
            transport: Transport::Udp,
        };
        let r = tokio::time::timeout(Duration::from_secs(30), dns.resolve(&t)).await;
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
        assert_eq!(dns.cached(&t), None);
    }
}
