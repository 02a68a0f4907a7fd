//! One Via value: `SIP/2.0/UDP host:port;branch=...;rport;received=...`
//! (RFC 3261 §20.42, RFC 3581), LWS tolerated where the grammar allows.

use super::scan::{self, Param, Params};
use super::uri::{parse_host, parse_port, Host};

/// The `rport` parameter (RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rport {
    Absent,
    /// `;rport` without a value: the client asks to be told its port.
    Requested,
    Value(u16),
}

/// A Via value that does not follow the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadVia;

#[derive(Debug, Clone, Copy)]
pub struct Via<'a> {
    raw: &'a [u8],
    pub protocol: &'a [u8],
    pub version: &'a [u8],
    pub transport: &'a [u8],
    pub host_raw: &'a [u8],
    pub host: Host<'a>,
    pub port: Option<u16>,
    params: &'a [u8],
    // Found in the one pass that validates the parameters, because the
    // proxy asks for them on every message.
    branch: Option<&'a [u8]>,
    rport: Option<Param<'a>>,
    received: Option<Param<'a>>,
}

fn token_at(s: &[u8], i: usize) -> Result<(&[u8], usize), BadVia> {
    let n = scan::token_len(&s[i..]);
    if n == 0 {
        return Err(BadVia);
    }
    Ok((&s[i..i + n], i + n))
}

fn expect(s: &[u8], i: usize, b: u8) -> Result<usize, BadVia> {
    let i = scan::skip_lws(s, i);
    if s.get(i) != Some(&b) {
        return Err(BadVia);
    }
    Ok(scan::skip_lws(s, i + 1))
}

impl<'a> Via<'a> {
    /// Parses one Via value (already split from its neighbours).
    pub fn parse(raw: &'a [u8]) -> Result<Via<'a>, BadVia> {
        let s = raw;
        let i = scan::skip_lws(s, 0);
        let (protocol, i) = token_at(s, i)?;
        let i = expect(s, i, b'/')?;
        let (version, i) = token_at(s, i)?;
        let i = expect(s, i, b'/')?;
        let (transport, i) = token_at(s, i)?;
        let j = scan::skip_lws(s, i);
        if j == i {
            return Err(BadVia);
        }
        let mut i = j;
        let h_start = i;
        if s.get(i) == Some(&b'[') {
            i += memchr::memchr(b']', &s[i..]).ok_or(BadVia)? + 1;
        } else {
            i += s[i..]
                .iter()
                .position(|&b| !scan::is_host_char(b))
                .unwrap_or(s.len() - i);
        }
        let host_raw = &s[h_start..i];
        let host = parse_host(host_raw).map_err(|_| BadVia)?;
        let mut port = None;
        let k = scan::skip_lws(s, i);
        if s.get(k) == Some(&b':') {
            let p = scan::skip_lws(s, k + 1);
            let n = s[p..].iter().take_while(|b| b.is_ascii_digit()).count();
            port = Some(parse_port(&s[p..p + n]).map_err(|_| BadVia)?);
            i = p + n;
        }
        let params = &s[i..];
        let (mut branch, mut rport, mut received) = (None, None, None);
        for p in Params::new(params) {
            let p = p.map_err(|_| BadVia)?;
            let slot = match p.name.len() {
                6 if p.name.eq_ignore_ascii_case(b"branch") => {
                    if branch.is_none() {
                        branch = p.value;
                    }
                    continue;
                }
                5 if p.name.eq_ignore_ascii_case(b"rport") => &mut rport,
                8 if p.name.eq_ignore_ascii_case(b"received") => &mut received,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(p);
            }
        }
        if let Some(Param { value: Some(v), .. }) = rport {
            parse_port(v).map_err(|_| BadVia)?;
        }
        Ok(Via {
            raw,
            protocol,
            version,
            transport,
            host_raw,
            host,
            port,
            params,
            branch,
            rport,
            received,
        })
    }

    /// The value exactly as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    pub fn params(&self) -> Params<'a> {
        Params::new(self.params)
    }

    /// The raw parameter list (from the first `;`, possibly empty).
    pub fn params_bytes(&self) -> &'a [u8] {
        self.params
    }

    pub fn branch(&self) -> Option<&'a [u8]> {
        self.branch
    }

    /// True when the branch carries the RFC 3261 magic cookie.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > 7 && b[..7].eq_ignore_ascii_case(b"z9hG4bK"))
    }

    pub fn rport(&self) -> Rport {
        match self.rport {
            None => Rport::Absent,
            Some(Param { value: None, .. }) => Rport::Requested,
            // Validated in parse.
            Some(Param { value: Some(v), .. }) => {
                parse_port(v).map_or(Rport::Requested, Rport::Value)
            }
        }
    }

    /// The `rport` parameter as written (name and value positions).
    pub(crate) fn rport_param(&self) -> Option<Param<'a>> {
        self.rport
    }

    /// The `received` parameter as written.
    pub(crate) fn received_param(&self) -> Option<Param<'a>> {
        self.received
    }

    pub fn received(&self) -> Option<&'a [u8]> {
        self.received.and_then(|p| p.value)
    }

    /// True for a reliable (stream) transport: TCP, TLS, SCTP, WS, WSS.
    pub fn is_reliable(&self) -> bool {
        !self.transport.eq_ignore_ascii_case(b"UDP")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_and_spaced() {
        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, Host::Ipv4("192.0.2.2".parse().unwrap()));
        assert_eq!(v.branch(), Some(&b"390skdjuw"[..]));
        assert!(!v.has_rfc3261_branch());
        let v = Via::parse(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.host_raw, b"spindle.example.com");
        assert_eq!(v.branch(), Some(&b"z9hG4bK9ikj8"[..]));
        assert!(v.is_reliable());
    }

    #[test]
    fn rport_received_ipv6() {
        let v = Via::parse(
            b"SIP/2.0/UDP [2001:db8::9:1]:5070;received=[2001:db8::9:255];branch=z9hG4bKas3;rport",
        )
        .unwrap();
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.rport(), Rport::Requested);
        assert_eq!(v.received(), Some(&b"[2001:db8::9:255]"[..]));
        let v = Via::parse(b"SIP/2.0/UDP 10.0.0.1;rport=5061;received=2001:db8::9:255").unwrap();
        assert_eq!(v.rport(), Rport::Value(5061));
        assert_eq!(v.received(), Some(&b"2001:db8::9:255"[..]));
    }

    #[test]
    fn rejects() {
        for bad in [
            &b"SIP/2.0/UDP 192.0.2.15;;"[..],
            b"SIP/2.0/UDP",
            b"SIP/2.0 192.0.2.1",
            b"SIP/2.0/UDP 192.0.2.1:",
            b"SIP/2.0/UDP 192.0.2.1:70000",
            b"SIP/2.0/UDP 192.0.2.1;rport=x",
            b"SIP/2.0/UDP [::1",
            b"",
        ] {
            assert!(Via::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
