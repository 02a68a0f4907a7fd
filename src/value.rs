//! The leaf of shared value types: what the configuration, the dispatcher
//! and the security rules all speak of, each written once. Hosts and
//! `host[:port]`, the destination `sip:` URI, address blocks, durations
//! (parsed and shown as the config writes them, and shown in log lines),
//! and the FNV-1a hash.
//!
//! Address and URI parsing here is deliberately small and self-contained:
//! a destination is `sip:host[:port]`, nothing more, and does not depend on
//! the message layer in [`crate::sip`]. It imports nothing of the crate but
//! [`Transport`] (a destination URI's `;transport=`), itself a leaf.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Port used when neither the advertise address nor a socket gives one.
pub const DEFAULT_SIP_PORT: u16 = 5060;

/// SIP's port over TLS when a URI gives none (RFC 3261 §19.1.2).
pub const DEFAULT_SIPS_PORT: u16 = 5061;

/// The port a URI without one means over `transport`.
pub fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tls => DEFAULT_SIPS_PORT,
        Transport::Udp | Transport::Tcp => DEFAULT_SIP_PORT,
    }
}

// ---------------------------------------------------------------------------
// Durations: "500ms", "2s", "1m", "2h"
// ---------------------------------------------------------------------------

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write a number and a unit, e.g. \"2s\"")]
    Empty,
    #[error("\"{0}\" does not start with a whole number; write e.g. \"500ms\" or \"2s\"")]
    NoNumber(String),
    #[error("\"{0}\" has no unit; add one of ms, s, m, h (e.g. \"{0}s\")")]
    MissingUnit(String),
    #[error("\"{value}\" has unknown unit \"{unit}\"; use ms, s, m or h")]
    UnknownUnit { value: String, unit: String },
    #[error("\"{0}\" is too large")]
    Overflow(String),
}

/// Parses a whole number followed by `ms`, `s`, `m` or `h`. Fractions and
/// compound forms ("1m30s") are refused: "90s" says the same thing and an
/// operator reading the file never has to wonder.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::NoNumber(text.to_owned()));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| DurationError::Overflow(text.to_owned()))?;
    let millis_per_unit: u64 = match unit {
        "" => return Err(DurationError::MissingUnit(text.to_owned())),
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(DurationError::UnknownUnit {
                value: text.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::Overflow(text.to_owned()))
}

/// Shows a duration the way the config writes it: whole hours as "2h",
/// else whole seconds ("120s", as fr_inv_timeout is usually written), else
/// milliseconds. What it prints parses back to the same value.
pub struct DisplayDuration(pub Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [("h", 3_600_000), ("s", 1_000)] {
            if ms != 0 && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// Shows a duration for a log line, the way an operator would say it:
/// `2s`, `500ms`, `1.5s`; anything finer falls back to `Duration`'s
/// `Debug`. Unlike [`DisplayDuration`] it need not parse back, so it may
/// use decimals and never switches to hours.
pub struct LogDuration(pub Duration);

impl fmt::Display for LogDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let nanos = d.subsec_nanos();
        if nanos == 0 {
            write!(f, "{}s", d.as_secs())
        } else if !nanos.is_multiple_of(1_000_000) {
            write!(f, "{d:?}")
        } else if d.as_secs() == 0 {
            write!(f, "{}ms", nanos / 1_000_000)
        } else {
            let mut millis = nanos / 1_000_000;
            let mut width = 3;
            while millis.is_multiple_of(10) {
                millis /= 10;
                width -= 1;
            }
            write!(f, "{}.{millis:0width$}s", d.as_secs())
        }
    }
}

/// Serde `deserialize_with` for the config's durations (`"2s"`).
pub fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"500ms\", \"2s\", \"1m\" or \"2h\"")
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
            parse_duration(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(DurationVisitor)
}

// ---------------------------------------------------------------------------
// Addresses: host[:port] and sip:host[:port]
// ---------------------------------------------------------------------------

/// A host as SIP writes it: IPv4, IPv6 (bracketed in URIs) or a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// 0.0.0.0, :: (and its IPv4-mapped form).
    pub fn is_unspecified(&self) -> bool {
        match self {
            Host::Ip(IpAddr::V4(ip)) => ip.is_unspecified(),
            Host::Ip(IpAddr::V6(ip)) => {
                ip.is_unspecified() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified())
            }
            Host::Name(_) => false,
        }
    }

    /// 127.0.0.0/8, ::1, IPv4-mapped loopback, and `localhost` names: none
    /// of these is reachable from another machine.
    pub fn is_loopback(&self) -> bool {
        match self {
            Host::Ip(IpAddr::V4(ip)) => ip.is_loopback(),
            Host::Ip(IpAddr::V6(ip)) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            Host::Name(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
        }
    }

    fn parse(text: &str) -> Result<Host, AddressError> {
        if text.is_empty() {
            return Err(AddressError::NoHost);
        }
        if let Ok(ip) = text.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        if is_hostname(text) {
            Ok(Host::Name(text.to_owned()))
        } else {
            Err(AddressError::BadHost(text.to_owned()))
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// RFC 3261 `hostname`: dot-separated labels of letters, digits and
/// hyphens, the last one starting with a letter (so "10.0.1" or
/// "300.1.1.1" are not mistaken for names), optional trailing dot.
fn is_hostname(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    name.split('.').all(label_ok)
        && name
            .rsplit('.')
            .next()
            .is_some_and(|top| top.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Why an address or destination URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no host given")]
    NoHost,
    #[error("\"{0}\" is neither an IPv4 address nor a host name")]
    BadHost(String),
    #[error("\"{0}\" in brackets is not an IPv6 address")]
    BadIpv6(String),
    #[error("\"[\" without a closing \"]\"")]
    UnclosedBracket,
    #[error("\"{0}\" after \"]\" is not a :port")]
    AfterBracket(String),
    #[error("an IPv6 address with a port must be in brackets, e.g. [2001:db8::1]:5060")]
    Ipv6NeedsBrackets,
    #[error("port \"{0}\" is not a number from 1 to 65535")]
    BadPort(String),
    #[error("\"{0}\" is not a sip: URI; write e.g. \"sip:10.0.1.10:5080\"")]
    NotSip(String),
    #[error("a sips: URI is over TLS; \";transport=udp\" contradicts it")]
    SipsOverUdp,
    #[error("a destination has no user part; write sip:host:port")]
    UserPart,
    #[error("the only URI parameter supported is \";transport=udp\", \";transport=tcp\" or \";transport=tls\", and no headers (\"?...\"); write sip:host:port[;transport=tcp]")]
    Params,
}

/// `host[:port]`, as written in `listen.advertise`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPort {
    pub host: Host,
    pub port: Option<u16>,
}

impl HostPort {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port`, and a bare IPv6
    /// address (no port: its colons leave no room for one).
    pub fn parse(text: &str) -> Result<HostPort, AddressError> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or(AddressError::UnclosedBracket)?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| AddressError::BadIpv6(inside.to_owned()))?;
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(parse_port(port)?),
                    None => return Err(AddressError::AfterBracket(after.to_owned())),
                },
            };
            return Ok(HostPort {
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        match text.matches(':').count() {
            0 => Ok(HostPort {
                host: Host::parse(text)?,
                port: None,
            }),
            1 => {
                let (host, port) = text.split_once(':').unwrap_or((text, ""));
                Ok(HostPort {
                    host: Host::parse(host)?,
                    port: Some(parse_port(port)?),
                })
            }
            _ => match text.parse::<Ipv6Addr>() {
                Ok(ip) => Ok(HostPort {
                    host: Host::Ip(IpAddr::V6(ip)),
                    port: None,
                }),
                Err(_) => Err(AddressError::Ipv6NeedsBrackets),
            },
        }
    }
}

impl TryFrom<String> for HostPort {
    type Error = AddressError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        HostPort::parse(&text)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_host_port(f, &self.host, self.port)
    }
}

/// `host[:port]`, for [`HostPort`] and [`SipUri`] alike.
fn write_host_port(f: &mut fmt::Formatter<'_>, host: &Host, port: Option<u16>) -> fmt::Result {
    write!(f, "{host}")?;
    if let Some(port) = port {
        write!(f, ":{port}")?;
    }
    Ok(())
}

fn parse_port(text: &str) -> Result<u16, AddressError> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(AddressError::BadPort(text.to_owned())),
    }
}

/// A destination URI: `sip:host[:port]`, optionally `;transport=tcp` (or
/// `udp`, `tls`), or `sips:host[:port]` (TLS, port 5061 by default).
/// Kamailio accepts user parts and other parameters here; sipedge refuses
/// them until it honours them, rather than silently ignore them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct SipUri {
    pub host: Host,
    pub port: Option<u16>,
    /// `;transport=`: every request to this node goes over it (TLS for
    /// a `sips:` URI).
    pub transport: Option<Transport>,
    /// Written `sips:` (kept for display: the URI names the node in
    /// metrics and RPC answers as the operator wrote it).
    pub sips: bool,
}

impl SipUri {
    pub fn parse(text: &str) -> Result<SipUri, AddressError> {
        let text = text.trim();
        // The scheme is case-insensitive (RFC 3261 §19.1.4).
        let scheme_end = text.find(':').unwrap_or(0);
        let scheme = text[..scheme_end].to_ascii_lowercase();
        let rest = &text[scheme_end.saturating_add(1).min(text.len())..];
        let sips = match scheme.as_str() {
            "sip" => false,
            "sips" => true,
            _ => return Err(AddressError::NotSip(text.to_owned())),
        };
        if rest.contains('@') {
            return Err(AddressError::UserPart);
        }
        if rest.contains('?') {
            return Err(AddressError::Params);
        }
        let (rest, params) = rest.split_once(';').unwrap_or((rest, ""));
        let mut transport = None;
        for p in params.split(';').filter(|p| !p.is_empty()) {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            match Transport::from_param(value.trim().as_bytes()) {
                Some(t) if name.trim().eq_ignore_ascii_case("transport") && transport.is_none() => {
                    transport = Some(t)
                }
                _ => return Err(AddressError::Params),
            }
        }
        // sips: is TLS; ";transport=tcp" on it is RFC 3261's old way of
        // saying the same (TLS over TCP).
        if sips {
            transport = match transport {
                None | Some(Transport::Tcp | Transport::Tls) => Some(Transport::Tls),
                Some(Transport::Udp) => return Err(AddressError::SipsOverUdp),
            };
        }
        // In a URI an IPv6 host is always bracketed (RFC 3261 §19.1.1), so
        // a bare one is an error rather than a port-less address.
        if !rest.starts_with('[') && rest.matches(':').count() > 1 {
            return Err(AddressError::Ipv6NeedsBrackets);
        }
        let HostPort { host, port } = HostPort::parse(rest)?;
        Ok(SipUri {
            host,
            port,
            transport,
            sips,
        })
    }

    /// The port to send to: the URI's, else 5061 over TLS, 5060 otherwise
    /// (RFC 3263 §4.2).
    pub fn port_or_default(&self) -> u16 {
        self.port
            .unwrap_or_else(|| default_port(self.transport.unwrap_or_default()))
    }
}

impl TryFrom<String> for SipUri {
    type Error = AddressError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        SipUri::parse(&text)
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.sips { "sips:" } else { "sip:" })?;
        write_host_port(f, &self.host, self.port)?;
        match self.transport {
            Some(Transport::Tls) if self.sips => {}
            Some(t) => write!(f, ";transport={t}")?,
            None => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Address blocks
// ---------------------------------------------------------------------------

/// An address block, `198.51.100.0/24` or `2001:db8::/48` (a bare address
/// is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not an address or network, e.g. \"198.51.100.0/24\" or \"2001:db8::/48\"")]
pub struct BadCidr(pub String);

impl FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(a)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(n), u128::from(a), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix));
    a & mask == b & mask
}

// ---------------------------------------------------------------------------
// FNV-1a
// ---------------------------------------------------------------------------

/// FNV-1a, 64-bit, fed in pieces. Fixed constants, so the same input maps
/// to the same value in every process and across restarts (std's hasher is
/// randomly keyed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The standard start.
    pub fn new() -> Fnv1a {
        Fnv1a(Self::OFFSET_BASIS)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a::new()
    }
}

/// FNV-1a, 64-bit, of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.write(bytes);
    h.finish()
}

/// A SIP transport sipedge speaks (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    /// SIP over TLS over TCP (RFC 3261 §26.2; RFC 5630: `transport=tls`
    /// is deprecated but what carriers and Kamailio still write).
    Tls,
}

impl Transport {
    /// Every transport, in the order `transport::PerTransport` stores them.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// Over a connection (TCP, TLS): stream framing, responses on the
    /// connection the request came in on.
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }

    /// As written in a Via (`SIP/2.0/UDP`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// A Via's transport token, case-insensitive; `None` for any other.
    pub fn from_via(token: &[u8]) -> Option<Transport> {
        if token.eq_ignore_ascii_case(b"UDP") {
            Some(Transport::Udp)
        } else if token.eq_ignore_ascii_case(b"TCP") {
            Some(Transport::Tcp)
        } else if token.eq_ignore_ascii_case(b"TLS") {
            Some(Transport::Tls)
        } else {
            None
        }
    }

    /// A URI's `transport=` value; `None` for any other.
    pub fn from_param(value: &[u8]) -> Option<Transport> {
        Transport::from_via(value)
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let n = cidr("198.51.100.0/24");
        assert!(n.contains("198.51.100.7".parse().unwrap()));
        assert!(!n.contains("198.51.101.7".parse().unwrap()));
        // IPv4-mapped IPv6, as a dual-stack socket reports IPv4 peers.
        assert!(n.contains("::ffff:198.51.100.7".parse().unwrap()));
        let v6 = cidr("2001:db8:100::/48");
        assert!(v6.contains("2001:db8:100:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db8:101::5".parse().unwrap()));
        assert!(!v6.contains("198.51.100.7".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("203.0.113.1".parse().unwrap()));
        assert!(cidr("192.0.2.1").contains("192.0.2.1".parse().unwrap()));
        assert!(!cidr("192.0.2.1").contains("192.0.2.2".parse().unwrap()));
        for bad in [
            "192.0.2.0/33",
            "2001:db8::/129",
            "example.com/24",
            "1.2.3/8",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn duration_syntax() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("s"),
            Err(DurationError::NoNumber("s".into()))
        );
        assert_eq!(
            parse_duration("2"),
            Err(DurationError::MissingUnit("2".into()))
        );
        assert!(matches!(
            parse_duration("1.5s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("2 s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("9999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn display_duration_round_trips() {
        for text in ["500ms", "2s", "120s", "2h", "90s", "1500ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(DisplayDuration(d).to_string(), text);
        }
        let minute = parse_duration("1m").unwrap();
        assert_eq!(DisplayDuration(minute).to_string(), "60s");
    }

    #[test]
    fn destination_uri_forms() {
        let uri = SipUri::parse("SIP:[2001:db8::10]:5080").unwrap();
        assert_eq!(uri.host, Host::Ip("2001:db8::10".parse().unwrap()));
        assert_eq!(uri.port, Some(5080));
        assert_eq!(uri.to_string(), "sip:[2001:db8::10]:5080");
        let uri = SipUri::parse("sip:fs-a.pool.example").unwrap();
        assert_eq!(uri.host, Host::Name("fs-a.pool.example".into()));
        assert_eq!(uri.port_or_default(), 5060);
        assert_eq!(
            SipUri::parse("sip:10.0.1.10").unwrap().to_string(),
            "sip:10.0.1.10"
        );
        let uri = SipUri::parse("sip:10.0.1.10:5080;Transport=TCP").unwrap();
        assert_eq!(uri.transport, Some(Transport::Tcp));
        assert_eq!(uri.to_string(), "sip:10.0.1.10:5080;transport=tcp");
        let uri = SipUri::parse("sip:10.0.1.10;transport=udp").unwrap();
        assert_eq!(uri.transport, Some(Transport::Udp));
        let tls = SipUri::parse("sip:10.0.1.10;transport=TLS").unwrap();
        assert_eq!(
            (tls.transport, tls.port_or_default(), tls.sips),
            (Some(Transport::Tls), 5061, false)
        );
        assert_eq!(tls.to_string(), "sip:10.0.1.10;transport=tls");
        let sips = SipUri::parse("SIPS:fs1.example.com").unwrap();
        assert_eq!(
            (sips.transport, sips.port_or_default()),
            (Some(Transport::Tls), 5061)
        );
        assert_eq!(sips.to_string(), "sips:fs1.example.com");
        let sips = SipUri::parse("sips:10.0.1.10:5071;transport=tcp").unwrap();
        assert_eq!(
            (sips.transport, sips.port_or_default()),
            (Some(Transport::Tls), 5071)
        );
        assert_eq!(
            SipUri::parse("sips:10.0.1.10;transport=udp"),
            Err(AddressError::SipsOverUdp)
        );
    }

    #[test]
    fn tls_names() {
        assert_eq!(Transport::from_via(b"tls"), Some(Transport::Tls));
        assert_eq!(Transport::from_param(b"TLS"), Some(Transport::Tls));
        assert_eq!(Transport::Tls.via_name(), "TLS");
        assert_eq!(Transport::Tls.to_string(), "tls");
        assert!(Transport::Tls.is_stream() && !Transport::Udp.is_stream());
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fnv1a_fed_in_pieces_is_the_whole() {
        let mut h = Fnv1a::default();
        h.write(b"foo");
        h.write(b"");
        h.write(b"bar");
        assert_eq!(h.finish(), fnv1a(b"foobar"));
    }

    #[test]
    fn log_duration_reads_as_said() {
        for (d, text) in [
            (Duration::from_secs(2), "2s"),
            (Duration::from_secs(7200), "7200s"),
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(2250), "2.25s"),
            (Duration::from_millis(1001), "1.001s"),
            (Duration::from_micros(1500), "1.5ms"),
        ] {
            assert_eq!(LogDuration(d).to_string(), text, "{d:?}");
        }
    }
}
