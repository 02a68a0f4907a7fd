//! Edge protection for the published ingress, what Kamailio operators do
//! with `permissions`, `pike` and a few script lines: trusted source
//! networks, scanner User-Agents dropped silently, and a per-source rate
//! limit on initial requests with a block (pike's idea). Pool members are
//! always let through; in-dialog requests are matched to their dialog
//! whatever their source (a trunk's failover address), and the proxy only
//! ever routes them to the pinned node or along its own Route set.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::value::{de_duration, Cidr};

/// At most this many sources are tracked by the rate limit; past it,
/// stale entries are dropped, and a new source is let through untracked
/// rather than grow the table without bound.
pub const MAX_TRACKED: usize = 65_536;

/// `[security]`: who may start calls, scanners, and a per-source rate
/// limit (Kamailio's `permissions` and `pike`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Networks initial requests may come from ("198.51.100.0/24",
    /// "2001:db8::/48", or an address); empty: any. Pool members always.
    #[serde(default, deserialize_with = "de_networks")]
    pub trusted: Vec<Cidr>,
    /// Drop requests from untrusted sources instead of answering 403.
    #[serde(default)]
    pub silent_drop: bool,
    /// Requests whose User-Agent contains one of these (any case) are
    /// dropped silently.
    #[serde(default = "default_scanners")]
    pub block_user_agents: Vec<String>,
    /// Per-source limit on initial requests; off when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            trusted: Vec::new(),
            silent_drop: false,
            block_user_agents: default_scanners(),
            rate_limit: None,
        }
    }
}

/// `rate_limit = { requests = 50, per = "2s", block_for = "60s" }`: a
/// source sending more than `requests` initial requests within `per` is
/// ignored for `block_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(deserialize_with = "de_duration")]
    pub per: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub block_for: Duration,
}

fn default_scanners() -> Vec<String> {
    [
        "friendly-scanner",
        "sipvicious",
        "sipcli",
        "VaxSIPUserAgent",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn de_networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// What to do with a request from outside the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Not from a trusted network: 403, or dropped with `silent_drop`.
    Untrusted,
    /// A scanner's User-Agent: dropped silently.
    Scanner,
    /// The source is over its rate, or blocked: dropped silently.
    RateLimited,
}

struct Source {
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

/// The rules from `[security]`.
pub struct Security {
    trusted: Vec<Cidr>,
    pub silent_drop: bool,
    /// Lower-case substrings.
    agents: Vec<Box<[u8]>>,
    limit: Option<RateLimit>,
    sources: crate::FastMap<IpAddr, Source>,
    /// Sources blocked so far (each logged once per block).
    blocks: AtomicU64,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("trusted", &self.trusted)
            .field("tracked", &self.sources.len())
            .finish()
    }
}

impl Security {
    pub fn new(cfg: &SecurityConfig) -> Security {
        Security {
            trusted: cfg.trusted.clone(),
            silent_drop: cfg.silent_drop,
            agents: cfg
                .block_user_agents
                .iter()
                .map(|a| a.to_ascii_lowercase().into_bytes().into())
                .collect(),
            limit: cfg.rate_limit,
            sources: Default::default(),
            blocks: AtomicU64::new(0),
        }
    }

    /// Is `ip` in a trusted network? With none configured, everyone is.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.is_empty() || self.trusted.iter().any(|c| c.contains(ip))
    }

    /// Are trusted networks configured (else everyone is trusted)?
    pub fn lists_trusted(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// A scanner's User-Agent (case-insensitive substring)?
    pub fn is_scanner(&self, user_agent: Option<&[u8]>) -> bool {
        let Some(ua) = user_agent else { return false };
        self.agents
            .iter()
            .any(|a| ua.windows(a.len()).any(|w| w.eq_ignore_ascii_case(a)))
    }

    /// The verdict on a request from `ip` (not a pool member), initial or
    /// not, carrying `user_agent`; `now` is read only when the rate limit
    /// needs it (not a clock read per request).
    pub fn check(
        &self,
        ip: IpAddr,
        initial: bool,
        user_agent: Option<&[u8]>,
        now: impl FnOnce() -> Instant,
    ) -> Verdict {
        if self.is_scanner(user_agent) {
            return Verdict::Scanner;
        }
        if !initial {
            return Verdict::Pass;
        }
        let trusted_explicitly = !self.trusted.is_empty() && self.is_trusted(ip);
        if !self.is_trusted(ip) {
            return Verdict::Untrusted;
        }
        // Trusted carriers send at their own rate; the limit guards
        // against the rest of the internet.
        if trusted_explicitly {
            return Verdict::Pass;
        }
        match self.limit.is_some() && self.over_limit(ip.to_canonical(), now()) {
            true => Verdict::RateLimited,
            false => Verdict::Pass,
        }
    }

    /// Counts one initial request from `ip`; true when it is over the
    /// limit or blocked.
    fn over_limit(&self, ip: IpAddr, now: Instant) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_TRACKED {
            self.sources.retain(|_, s| {
                s.blocked_until.is_some_and(|b| b > now)
                    || now.duration_since(s.window_start) < limit.per
            });
            if self.sources.len() >= MAX_TRACKED {
                return false;
            }
        }
        let mut s = self.sources.entry(ip).or_insert(Source {
            window_start: now,
            count: 0,
            blocked_until: None,
        });
        if let Some(until) = s.blocked_until {
            if now < until {
                return true;
            }
            s.blocked_until = None;
            s.window_start = now;
            s.count = 0;
        }
        if now.duration_since(s.window_start) >= limit.per {
            s.window_start = now;
            s.count = 0;
        }
        s.count += 1;
        if s.count > limit.requests {
            s.blocked_until = Some(now + limit.block_for);
            self.blocks.fetch_add(1, Ordering::Relaxed);
            // Once per block, not per packet.
            tracing::warn!(
                "{ip}: over {} initial requests per {:?}, blocked for {:?}",
                limit.requests,
                limit.per,
                limit.block_for
            );
            return true;
        }
        false
    }

    /// Sources blocked by the rate limit so far.
    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }

    /// Sources the rate limit tracks now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn rules(trusted: &[&str], limit: Option<(u32, u64, u64)>) -> Security {
        Security::new(&SecurityConfig {
            trusted: trusted.iter().map(|t| cidr(t)).collect(),
            silent_drop: false,
            block_user_agents: vec!["friendly-scanner".into(), "sipvicious".into()],
            rate_limit: limit.map(|(requests, per, block)| RateLimit {
                requests,
                per: Duration::from_millis(per),
                block_for: Duration::from_millis(block),
            }),
        })
    }

    #[test]
    fn trust_scanners_and_in_dialog() {
        let s = rules(&["198.51.100.0/24"], None);
        let now = Instant::now();
        let (inside, outside) = (
            "198.51.100.9".parse().unwrap(),
            "203.0.113.9".parse().unwrap(),
        );
        assert_eq!(s.check(inside, true, None, || now), Verdict::Pass);
        assert_eq!(s.check(outside, true, None, || now), Verdict::Untrusted);
        // In-dialog requests go to their dialog whatever the source.
        assert_eq!(s.check(outside, false, None, || now), Verdict::Pass);
        assert_eq!(
            s.check(inside, true, Some(b"Friendly-Scanner 1.0"), || now),
            Verdict::Scanner
        );
        assert_eq!(
            s.check(inside, false, Some(b"x sipvicious"), || now),
            Verdict::Scanner
        );
        // No trusted list: everyone.
        assert_eq!(
            rules(&[], None).check(outside, true, None, || now),
            Verdict::Pass
        );
    }

    #[test]
    fn the_rate_limit_blocks_then_forgives() {
        let s = rules(&[], Some((3, 1000, 5000)));
        let t0 = Instant::now();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let other: IpAddr = "203.0.113.10".parse().unwrap();
        for i in 0..3 {
            assert_eq!(s.check(ip, true, None, || t0), Verdict::Pass, "request {i}");
        }
        assert_eq!(s.check(ip, true, None, || t0), Verdict::RateLimited);
        assert_eq!(s.blocks(), 1);
        // Blocked for block_for, even after the window.
        assert_eq!(
            s.check(ip, true, None, || t0 + Duration::from_secs(2)),
            Verdict::RateLimited
        );
        assert_eq!(s.blocks(), 1, "logged and counted once per block");
        // Others are not affected; in-dialog requests are not counted.
        assert_eq!(s.check(other, true, None, || t0), Verdict::Pass);
        assert_eq!(s.check(ip, false, None, || t0), Verdict::Pass);
        // After the block: a fresh window.
        assert_eq!(
            s.check(ip, true, None, || t0 + Duration::from_secs(6)),
            Verdict::Pass
        );
        // Explicitly trusted sources are not limited.
        let s = rules(&["203.0.113.0/24"], Some((1, 1000, 5000)));
        for _ in 0..10 {
            assert_eq!(s.check(ip, true, None, || t0), Verdict::Pass);
        }
    }

    #[test]
    fn tracking_is_bounded() {
        let s = rules(&[], Some((1000, 1000, 1000)));
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            s.check(ip, true, None, || t0);
        }
        assert!(s.tracked() <= MAX_TRACKED);
        // Once the window is over, the stale entries make room.
        let later = t0 + Duration::from_secs(2);
        s.check("192.0.2.1".parse().unwrap(), true, None, || later);
        assert!(s.tracked() < 10, "{}", s.tracked());
    }
}
