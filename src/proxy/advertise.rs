//! Misadvertised nodes: a pool node's 2xx to an INVITE (the initial one or
//! a re-INVITE, the T.38 one above all) whose Contact or SDP `c=` line
//! names an address no peer can use: a wildcard (0.0.0.0, ::), a loopback
//! address while the node itself is not on loopback, or an address that
//! is neither the node's own nor one of its `advertised` aliases. Such a
//! call connects and then carries nothing (a fax "negotiates and then
//! transfers zero pages"), so the operator gets a warning naming the node,
//! the header and the address (once per node and place per hour) and
//! `sipedge_node_misadvertised_total{uri,where}` counts every such 2xx.
//! Nothing is rewritten: the 2xx goes on byte for byte.
//!
//! The check reads the message in place; a node that advertises what it
//! should costs a Contact parse and a scan of the SDP's lines, without
//! allocating.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dispatcher::Dispatcher;
use crate::metrics::{AdvertisedIn, Metrics, MetricsError, MisadvertisedMetrics};
use crate::sip::{HeaderName, Message, Method, NameAddr, Uri};

/// At most one warning per node and place this often: a misconfigured node
/// misadvertises in every call, and one line an hour says it as well as
/// thousands.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(3600);

/// Why an address is not one the node may advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    /// 0.0.0.0 or ::: never an address to send to.
    Wildcard,
    /// Loopback, from a node that is not on loopback itself.
    Loopback,
    /// Neither the node's own address nor one of its aliases.
    Foreign,
}

impl Problem {
    fn explain(self) -> &'static str {
        match self {
            Problem::Wildcard => "a wildcard address, which no peer can send to",
            Problem::Loopback => {
                "a loopback address, which reaches the trunk's own host, not the node"
            }
            Problem::Foreign => {
                "neither the node's own address nor one of its `advertised` aliases"
            }
        }
    }
}

/// What one pool node may advertise, its counters, and when it was last
/// warned about.
pub(crate) struct NodeAdvert {
    /// The node's configured URI (the `uri` label, and the logs).
    uri: Box<str>,
    /// The node's own address (canonical, as the dispatcher keeps it).
    own: IpAddr,
    /// Its `advertised` aliases (canonical).
    aliases: Box<[IpAddr]>,
    metrics: MisadvertisedMetrics,
    /// Shared with the same node (same URI) across reloads, so a reload
    /// does not bring the warning back early.
    warned: Arc<WarnClock>,
}

impl NodeAdvert {
    /// Node `i` of `dispatcher`; its warning clock carries over from the
    /// node with the same URI in `previous`.
    pub(crate) fn new(
        dispatcher: &Dispatcher,
        i: usize,
        metrics: &Metrics,
        previous: &[NodeAdvert],
    ) -> Result<NodeAdvert, MetricsError> {
        let uri = dispatcher.uri(i);
        let aliases: Box<[IpAddr]> = dispatcher.advertised(i).into();
        for alias in aliases.iter().filter(|a| a.is_unspecified()) {
            tracing::warn!(
                node = %uri,
                %alias,
                "advertised alias is a wildcard address: it allows nothing, a node \
                 advertising it is still reported"
            );
        }
        Ok(NodeAdvert {
            own: dispatcher.addr(i).ip(),
            aliases,
            metrics: metrics.register_misadvertised(uri)?,
            warned: previous
                .iter()
                .find(|p| *p.uri == *uri)
                .map_or_else(Default::default, |p| p.warned.clone()),
            uri: uri.into(),
        })
    }

    /// The node's configured URI.
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// The node's series, to remove them when a reload drops the node.
    pub(crate) fn metrics(&self) -> &MisadvertisedMetrics {
        &self.metrics
    }

    /// Whether the node may advertise `ip`; `None` when it may.
    pub(crate) fn judge(&self, ip: IpAddr) -> Option<Problem> {
        let ip = ip.to_canonical();
        // First: a wildcard alias allows nothing.
        if ip.is_unspecified() {
            return Some(Problem::Wildcard);
        }
        if ip == self.own || self.aliases.contains(&ip) {
            return None;
        }
        if ip.is_loopback() {
            // A pool on loopback (a test set-up) talks loopback.
            return (!self.own.is_loopback()).then_some(Problem::Loopback);
        }
        Some(Problem::Foreign)
    }

    /// Checks a response from this node: only a 2xx to an INVITE is
    /// looked at. Its Contact URIs, and with `Content-Type:
    /// application/sdp` its `c=` lines; each place counts once per 2xx.
    pub(crate) fn check(&self, msg: &Message<'_>) {
        let invite_2xx = msg.status().is_some_and(|c| (200..300).contains(&c))
            && msg.cseq().is_ok_and(|c| c.method == Method::Invite);
        if !invite_2xx {
            return;
        }
        let bad = |ip: IpAddr| self.judge(ip).map(|p| (ip, p));
        if let Some((ip, problem)) = contact_addrs(msg).find_map(bad) {
            self.report(AdvertisedIn::Contact, ip, problem, msg);
        }
        if is_sdp(msg) {
            if let Some((ip, problem)) = sdp_connection_addrs(msg.body()).find_map(bad) {
                self.report(AdvertisedIn::Sdp, ip, problem, msg);
            }
        }
    }

    fn report(&self, place: AdvertisedIn, ip: IpAddr, problem: Problem, msg: &Message<'_>) {
        self.metrics.misadvertised(place);
        if !self.warned.due(place, Instant::now()) {
            return;
        }
        let header = match place {
            AdvertisedIn::Contact => "Contact",
            AdvertisedIn::Sdp => "SDP c= line",
        };
        let call_id = msg.call_id().unwrap_or_default();
        tracing::warn!(
            node = %self.uri,
            header,
            address = %ip,
            call_id = %crate::admin::Escaped(&String::from_utf8_lossy(call_id)),
            "node {} advertises {ip} in the {header} of its {} to an INVITE: {}; the call \
             connects and then carries nothing (a fax transfers zero pages). Fix the node's \
             advertised address (FreeSWITCH ext-sip-ip / ext-rtp-ip), or list it in this \
             destination's `advertised` if it is right. Counted in \
             sipedge_node_misadvertised_total; said again in an hour at the earliest",
            self.uri,
            msg.status().unwrap_or_default(),
            problem.explain(),
        );
    }
}

/// When each place was last warned about, for one node. A lock taken only
/// when a node misadvertises.
#[derive(Debug, Default)]
pub(crate) struct WarnClock {
    last: Mutex<[Option<Instant>; 2]>,
}

impl WarnClock {
    /// Whether a warning about `place` is due at `now`; if so, the next
    /// one is [`WARN_EVERY`] away.
    pub(crate) fn due(&self, place: AdvertisedIn, now: Instant) -> bool {
        // A panic elsewhere while holding it leaves only a timestamp.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut last[match place {
            AdvertisedIn::Contact => 0,
            AdvertisedIn::Sdp => 1,
        }];
        if slot.is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY) {
            return false;
        }
        *slot = Some(now);
        true
    }
}

/// The address of each Contact URI of `msg`. Host names are not addresses
/// (and are not resolved here); `*` and unparsable values are skipped.
pub(crate) fn contact_addrs<'a, 'm>(
    msg: &'m Message<'a>,
) -> impl Iterator<Item = IpAddr> + use<'a, 'm> {
    msg.values(HeaderName::Contact).filter_map(|v| {
        let addr = NameAddr::parse(v).ok()?;
        Uri::parse(addr.uri).ok()?.host?.ip()
    })
}

/// Whether the body is SDP: `Content-Type: application/sdp`, in any case,
/// parameters ignored. A multipart body is not looked into.
pub(crate) fn is_sdp(msg: &Message<'_>) -> bool {
    msg.header(HeaderName::ContentType).is_some_and(|v| {
        let media_type = v.split(|&b| b == b';').next().unwrap_or_default();
        media_type
            .trim_ascii()
            .eq_ignore_ascii_case(b"application/sdp")
    })
}

/// The address of each `c=IN IP4 <addr>` / `c=IN IP6 <addr>` line of an
/// SDP body, session and media level alike (RFC 4566 §5.7; a multicast
/// `/ttl/count` suffix is dropped). A name instead of an address, another
/// network or address type, or a line that does not parse is skipped.
pub(crate) fn sdp_connection_addrs(body: &[u8]) -> impl Iterator<Item = IpAddr> + '_ {
    body.split(|&b| b == b'\n')
        .filter_map(|line| connection_addr(line.trim_ascii().strip_prefix(b"c=")?))
}

fn connection_addr(value: &[u8]) -> Option<IpAddr> {
    let mut fields = value.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let (net, kind, addr) = (fields.next()?, fields.next()?, fields.next()?);
    if !net.eq_ignore_ascii_case(b"IN") {
        return None;
    }
    let addr = std::str::from_utf8(addr.split(|&b| b == b'/').next()?).ok()?;
    if kind.eq_ignore_ascii_case(b"IP4") {
        addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else if kind.eq_ignore_ascii_case(b"IP6") {
        addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Destination, SipUri};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn response(status: u16, cseq: &str, headers: &str, body: &str) -> Vec<u8> {
        format!(
            "SIP/2.0 {status} OK\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c1\r\n\
             CSeq: {cseq}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn addrs_of(raw: &[u8]) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let msg = Message::parse(raw).expect("parses");
        let sdp = if is_sdp(&msg) {
            sdp_connection_addrs(msg.body()).collect()
        } else {
            Vec::new()
        };
        (contact_addrs(&msg).collect(), sdp)
    }

    #[test]
    fn contact_addresses() {
        let raw = response(
            200,
            "1 INVITE",
            "Contact: \"FS\" <sip:fs@10.0.1.10:5080;transport=udp>;expires=60, \
             sip:[2001:db8::10]:5080\r\nm: <sip:fs@fs1.example>\r\nContact: *\r\n\
             Contact: <garbage\r\n",
            "",
        );
        let (contact, sdp) = addrs_of(&raw);
        // The name, the star and the broken value are skipped.
        assert_eq!(contact, [ip("10.0.1.10"), ip("2001:db8::10")]);
        assert!(sdp.is_empty());
    }

    #[test]
    fn sdp_connection_lines_at_both_levels() {
        let body = "v=0\r\no=FS 1 1 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 10.0.1.10\r\n\
                    t=0 0\r\nm=audio 20000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n\
                    m=image 20002 udptl t38\r\nc=in ip6 2001:DB8::10\r\n\
                    m=audio 20004 RTP/AVP 0\nc=IN IP4 233.252.0.1/127/2\n\
                    c=IN IP4 media.example\r\nc=ATM NSAP 47.0005\r\nc=IN IP4\r\n\
                    c=IN IP5 10.0.0.1\r\na=c=IN IP4 192.0.2.1\r\n c=IN IP4 192.0.2.2 \r\n";
        let raw = response(
            200,
            "2 INVITE",
            "Content-Type: Application/SDP ; charset=x\r\n",
            body,
        );
        let (contact, sdp) = addrs_of(&raw);
        assert!(contact.is_empty());
        // The o= line is not a connection; names, other networks, broken
        // lines and an a= attribute are skipped; surrounding blanks are not
        // a reason to miss one.
        assert_eq!(
            sdp,
            [
                ip("10.0.1.10"),
                ip("0.0.0.0"),
                ip("2001:db8::10"),
                ip("233.252.0.1"),
                ip("192.0.2.2"),
            ]
        );
        // Not SDP by its Content-Type: the body is not read.
        let raw = response(200, "2 INVITE", "Content-Type: text/plain\r\n", body);
        assert!(addrs_of(&raw).1.is_empty());
        let raw = response(200, "2 INVITE", "", body);
        assert!(addrs_of(&raw).1.is_empty());
    }

    #[test]
    fn extraction_never_panics_on_junk() {
        for body in [
            "",
            "c=",
            "c=IN",
            "c=IN IP4 /",
            "\n\n\r\n",
            "c=IN IP6 ::ffff:1.2.3.4/",
        ] {
            let _ = sdp_connection_addrs(body.as_bytes()).count();
        }
        assert_eq!(
            sdp_connection_addrs(b"c=IN IP4 \xff\xfe\r\nc=IN IP4 1.2.3.4").collect::<Vec<_>>(),
            [ip("1.2.3.4")]
        );
    }

    fn advert(uri: &str, aliases: &[&str]) -> (NodeAdvert, Metrics) {
        let metrics = Metrics::new().expect("metrics");
        let d = Dispatcher::new(&config::Dispatcher {
            destinations: vec![Destination {
                advertised: aliases.iter().map(|a| ip(a)).collect(),
                ..Destination::new(SipUri::parse(uri).unwrap())
            }],
            ..config::Dispatcher::default()
        })
        .expect("pool");
        let a = NodeAdvert::new(&d, 0, &metrics, &[]).expect("node");
        (a, metrics)
    }

    #[test]
    fn what_a_node_may_advertise() {
        let (a, _m) = advert("sip:10.0.1.10:5080", &["203.0.113.10", "2001:db8::10"]);
        assert_eq!(a.judge(ip("10.0.1.10")), None, "its own");
        assert_eq!(a.judge(ip("::ffff:10.0.1.10")), None, "its own, mapped");
        assert_eq!(a.judge(ip("203.0.113.10")), None, "an alias");
        assert_eq!(a.judge(ip("2001:db8::10")), None, "an alias");
        assert_eq!(a.judge(ip("0.0.0.0")), Some(Problem::Wildcard));
        assert_eq!(a.judge(ip("::")), Some(Problem::Wildcard));
        assert_eq!(a.judge(ip("127.0.0.1")), Some(Problem::Loopback));
        assert_eq!(a.judge(ip("::1")), Some(Problem::Loopback));
        assert_eq!(a.judge(ip("10.0.1.11")), Some(Problem::Foreign));
        assert_eq!(a.judge(ip("203.0.113.11")), Some(Problem::Foreign));

        // A node on loopback may advertise loopback, never a wildcard.
        let (a, _m) = advert("sip:127.0.0.1:5081", &["0.0.0.0"]);
        assert_eq!(a.judge(ip("127.0.0.1")), None);
        assert_eq!(a.judge(ip("127.0.0.2")), None);
        assert_eq!(a.judge(ip("::1")), None);
        assert_eq!(
            a.judge(ip("0.0.0.0")),
            Some(Problem::Wildcard),
            "alias or not"
        );
        assert_eq!(a.judge(ip("192.0.2.1")), Some(Problem::Foreign));
    }

    #[test]
    fn only_an_invite_2xx_is_counted_once_per_place() {
        let (a, m) = advert("sip:10.0.1.10:5080", &[]);
        let uri = "sip:10.0.1.10:5080";
        let sdp = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n";
        let bad = "Contact: <sip:fs@0.0.0.0>, <sip:fs@192.0.2.1>\r\n\
                   Content-Type: application/sdp\r\n";
        let count = |w| m.misadvertised(uri, w);
        for (status, cseq) in [(180, "1 INVITE"), (487, "1 INVITE"), (200, "3 UPDATE")] {
            a.check(&Message::parse(&response(status, cseq, bad, sdp)).unwrap());
        }
        assert_eq!(count(AdvertisedIn::Contact) + count(AdvertisedIn::Sdp), 0);
        a.check(&Message::parse(&response(200, "1 INVITE", bad, sdp)).unwrap());
        assert_eq!(count(AdvertisedIn::Contact), 1);
        assert_eq!(count(AdvertisedIn::Sdp), 1);
        let good = "Contact: <sip:fs@10.0.1.10:5080>\r\nContent-Type: application/sdp\r\n";
        let good_sdp = "v=0\r\nc=IN IP4 10.0.1.10\r\n";
        a.check(&Message::parse(&response(202, "2 INVITE", good, good_sdp)).unwrap());
        assert_eq!(count(AdvertisedIn::Contact) + count(AdvertisedIn::Sdp), 2);
    }

    #[test]
    fn one_warning_per_place_per_hour() {
        let clock = WarnClock::default();
        let t0 = Instant::now();
        assert!(clock.due(AdvertisedIn::Sdp, t0));
        assert!(!clock.due(AdvertisedIn::Sdp, t0 + Duration::from_secs(1)));
        assert!(clock.due(AdvertisedIn::Contact, t0), "places are apart");
        assert!(!clock.due(AdvertisedIn::Sdp, t0 + WARN_EVERY - Duration::from_secs(1)));
        assert!(clock.due(AdvertisedIn::Sdp, t0 + WARN_EVERY));
        assert!(!clock.due(AdvertisedIn::Sdp, t0 + WARN_EVERY));
        // A clock read out of order does not unlock it.
        assert!(!clock.due(AdvertisedIn::Sdp, t0));
    }

    #[test]
    fn the_warning_clock_survives_a_reload() {
        let (a, m) = advert("sip:10.0.1.10:5080", &[]);
        assert!(a.warned.due(AdvertisedIn::Sdp, Instant::now()));
        let d = Dispatcher::new(&config::Dispatcher {
            destinations: vec![Destination::new(
                SipUri::parse("sip:10.0.1.10:5080").unwrap(),
            )],
            ..config::Dispatcher::default()
        })
        .unwrap();
        let again = NodeAdvert::new(&d, 0, &m, std::slice::from_ref(&a)).unwrap();
        assert!(!again.warned.due(AdvertisedIn::Sdp, Instant::now()));
        let fresh = NodeAdvert::new(&d, 0, &m, &[]).unwrap();
        assert!(fresh.warned.due(AdvertisedIn::Sdp, Instant::now()));
    }
}
