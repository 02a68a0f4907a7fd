//! URIs: SIP/SIPS (RFC 3261 §19.1), tel (RFC 3966) and any other
//! absoluteURI, viewed in place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::scan::{self, Params};

/// A host as written in a URI or Via sent-by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    Ipv4(Ipv4Addr),
    /// An IPv6 reference; written with brackets on the wire.
    Ipv6(Ipv6Addr),
    /// A host name, kept as received.
    Name(&'a [u8]),
}

impl Host<'_> {
    /// The address, when the host is a literal one.
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
            Host::Name(_) => None,
        }
    }
}

/// A syntactically invalid host or port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHost;

/// Parses `host` (an IPv6 reference in brackets, an IPv4 address or a host
/// name). RFC 5118 §4.10: an IPv6 reference must follow RFC 4291, so the
/// 3-colon form the RFC 3261 ABNF admits is refused.
pub fn parse_host(h: &[u8]) -> Result<Host<'_>, BadHost> {
    match h.first() {
        None => Err(BadHost),
        Some(b'[') => {
            if h.len() < 3 || h[h.len() - 1] != b']' {
                return Err(BadHost);
            }
            let inner = std::str::from_utf8(&h[1..h.len() - 1]).map_err(|_| BadHost)?;
            inner
                .parse::<Ipv6Addr>()
                .map(Host::Ipv6)
                .map_err(|_| BadHost)
        }
        Some(_) => {
            if let Some(a) = parse_ipv4(h) {
                return Ok(Host::Ipv4(a));
            }
            // All digits and dots but not a valid IPv4 address: refuse
            // rather than take it for a host name.
            if h.iter().all(|&b| b.is_ascii_digit() || b == b'.')
                || !h.iter().all(|&b| scan::is_host_char(b))
            {
                return Err(BadHost);
            }
            Ok(Host::Name(h))
        }
    }
}

/// Dotted-quad IPv4, each octet 0-255 without leading zeros (which some
/// stacks read as octal), like `Ipv4Addr::from_str` but on bytes.
fn parse_ipv4(h: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut idx, mut val, mut digits) = (0usize, 0u32, 0u32);
    for &b in h {
        match b {
            b'0'..=b'9' => {
                if digits == 1 && val == 0 {
                    return None;
                }
                val = val * 10 + u32::from(b - b'0');
                digits += 1;
                if val > 255 {
                    return None;
                }
            }
            b'.' if digits > 0 && idx < 3 => {
                octets[idx] = val as u8;
                (idx, val, digits) = (idx + 1, 0, 0);
            }
            _ => return None,
        }
    }
    if idx != 3 || digits == 0 {
        return None;
    }
    octets[3] = val as u8;
    Some(Ipv4Addr::from(octets))
}

/// Parses a decimal port (1 to 5 digits, at most 65535).
pub fn parse_port(p: &[u8]) -> Result<u16, BadHost> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err(BadHost);
    }
    let v = p.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
    u16::try_from(v).map_err(|_| BadHost)
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 reference.
/// Returns the raw host bytes, the parsed host and the port.
pub fn parse_hostport(s: &[u8]) -> Result<(&[u8], Host<'_>, Option<u16>), BadHost> {
    let (host_raw, rest) = if s.first() == Some(&b'[') {
        let close = memchr::memchr(b']', s).ok_or(BadHost)?;
        s.split_at(close + 1)
    } else {
        match memchr::memchr(b':', s) {
            Some(i) => s.split_at(i),
            None => (s, &b""[..]),
        }
    };
    let port = match rest {
        [] => None,
        [b':', p @ ..] => Some(parse_port(p)?),
        _ => return Err(BadHost),
    };
    Ok((host_raw, parse_host(host_raw)?, port))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    /// Any other absoluteURI scheme (RFC 4475 §3.3.2/3: a proxy answers 416).
    Other,
}

/// A URI viewed in place.
#[derive(Debug, Clone, Copy)]
pub struct Uri<'a> {
    raw: &'a [u8],
    pub scheme: Scheme,
    /// SIP/SIPS userinfo without the password; the number of a tel URI.
    pub user: Option<&'a [u8]>,
    /// The host as written (brackets kept for IPv6); `None` for tel and
    /// other schemes.
    pub host_raw: Option<&'a [u8]>,
    pub host: Option<Host<'a>>,
    pub port: Option<u16>,
    /// `;name=value` parameters, from the first `;` (may be empty).
    params: &'a [u8],
    /// The `?headers` part without the `?`.
    pub headers: Option<&'a [u8]>,
}

/// A URI that does not follow the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadUri;

impl From<BadHost> for BadUri {
    fn from(_: BadHost) -> Self {
        BadUri
    }
}

impl<'a> Uri<'a> {
    /// Parses a URI. Whitespace, `<` and `>` are never part of one.
    pub fn parse(raw: &'a [u8]) -> Result<Uri<'a>, BadUri> {
        if scan::has_non_uri_byte(raw) {
            return Err(BadUri);
        }
        let colon = memchr::memchr(b':', raw).ok_or(BadUri)?;
        let scheme_b = &raw[..colon];
        let valid_scheme = scheme_b.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme_b
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !valid_scheme {
            return Err(BadUri);
        }
        let rest = &raw[colon + 1..];
        let scheme = if scheme_b.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_b.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_b.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            if rest.is_empty() {
                return Err(BadUri);
            }
            return Ok(Uri {
                raw,
                scheme: Scheme::Other,
                user: None,
                host_raw: None,
                host: None,
                port: None,
                params: b"",
                headers: None,
            });
        };
        if scheme == Scheme::Tel {
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            if end == 0 {
                return Err(BadUri);
            }
            let params = &rest[end..];
            Params::new(params).validate().map_err(|_| BadUri)?;
            return Ok(Uri {
                raw,
                scheme,
                user: Some(&rest[..end]),
                host_raw: None,
                host: None,
                port: None,
                params,
                headers: None,
            });
        }
        // Neither uri-parameters nor headers may hold an unescaped '@', so
        // the first '@' ends the userinfo (which itself may hold ';', '?').
        let (user, hostpart) = match memchr::memchr(b'@', rest) {
            Some(at) => {
                let ui = &rest[..at];
                let user = match memchr::memchr(b':', ui) {
                    Some(c) => &ui[..c],
                    None => ui,
                };
                if user.is_empty() {
                    return Err(BadUri);
                }
                (Some(user), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let q = memchr::memchr(b'?', hostpart);
        let before_q = &hostpart[..q.unwrap_or(hostpart.len())];
        let headers = q.map(|q| &hostpart[q + 1..]);
        // The host may be an IPv6 reference, whose ':' are not a port.
        let hp_end = if before_q.first() == Some(&b'[') {
            let close = memchr::memchr(b']', before_q).ok_or(BadUri)?;
            close + memchr::memchr(b';', &before_q[close..]).unwrap_or(before_q.len() - close)
        } else {
            memchr::memchr(b';', before_q).unwrap_or(before_q.len())
        };
        let (host_raw, host, port) = parse_hostport(&before_q[..hp_end])?;
        let params = &before_q[hp_end..];
        Params::new(params).validate().map_err(|_| BadUri)?;
        Ok(Uri {
            raw,
            scheme,
            user,
            host_raw: Some(host_raw),
            host: Some(host),
            port,
            params,
            headers,
        })
    }

    /// The URI exactly as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// The URI parameters (`;lr`, `;transport=tcp`, ...).
    pub fn params(&self) -> Params<'a> {
        Params::new(self.params)
    }

    /// `Some(None)` for a parameter without value, `Some(Some(v))` with one.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.params().get(name)
    }

    /// True for sip: and sips: URIs.
    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u = Uri::parse(b"sip:alice:pw@[2001:db8::10]:5070;transport=tcp;lr?Subject=x").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host_raw, Some(&b"[2001:db8::10]"[..]));
        assert_eq!(u.host, Some(Host::Ipv6("2001:db8::10".parse().unwrap())));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param(b"transport"), Some(Some(&b"tcp"[..])));
        assert_eq!(u.param(b"lr"), Some(None));
        assert_eq!(u.headers, Some(&b"Subject=x"[..]));
    }

    #[test]
    fn rfc5118_port_ambiguity() {
        let u = Uri::parse(b"sip:user@[2001:db8::10:5070]").unwrap();
        assert_eq!(u.port, None);
        let u = Uri::parse(b"sip:user@[2001:db8::10]:5070").unwrap();
        assert_eq!(u.port, Some(5070));
        assert!(Uri::parse(b"sip:2001:db8::10").is_err());
        assert!(Uri::parse(b"sip:[2001:db8:::192.0.2.1]").is_err());
        assert!(Uri::parse(b"sip:[2001:db8::192.0.2.1]").is_ok());
    }

    #[test]
    fn semicolon_in_user_and_odd_schemes() {
        let u = Uri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.host, Some(Host::Name(b"example.com")));
        let u = Uri::parse(b"tel:+1-201-555-0123;phone-context=x").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user, Some(&b"+1-201-555-0123"[..]));
        let u = Uri::parse(b"nobodyKnowsThisScheme:totallyopaquecontent").unwrap();
        assert_eq!(u.scheme, Scheme::Other);
        assert!(Uri::parse(b"<sip:a@b>").is_err());
        assert!(Uri::parse(b"sip:a@b:99999").is_err());
        assert!(Uri::parse(b"sip:a@").is_err());
        assert!(Uri::parse(b"sip:a@1.2.3.999").is_err());
        assert!(Uri::parse(b"sip:a@1.2.3").is_err());
        assert!(Uri::parse(b"sip:a@1.2.3.4.5").is_err());
        assert!(Uri::parse(b"sip:a@01.2.3.4").is_err());
        assert_eq!(
            Uri::parse(b"sip:a@10.0.255.0").unwrap().host,
            Some(Host::Ipv4(Ipv4Addr::new(10, 0, 255, 0)))
        );
    }
}
