//! HEP v3 (the Homer Encapsulation Protocol, as Homer, Kamailio's
//! `siptrace`/`sipcapture`, OpenSIPS, FreeSWITCH and sngrep speak it): one
//! captured SIP message as a TLV packet. Sans-I/O: bytes in, bytes out,
//! no clock, no socket.
//!
//! The layout: `HEP3`, the total length (u16, network order, the header
//! included), then chunks, each `vendor (u16) | type (u16) | length (u16,
//! its 6-byte header included) | value`. Vendor 0 holds the generic
//! chunk types used here.

use std::net::{IpAddr, SocketAddr};

/// The magic every HEP v3 packet starts with.
pub const MAGIC: &[u8; 4] = b"HEP3";
/// The packet header: the magic and the total length.
pub const HEADER_LEN: usize = 6;
/// A chunk's header: vendor, type, length.
pub const CHUNK_HEADER_LEN: usize = 6;

/// The generic chunk types (vendor 0) this encoder writes.
pub mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTO: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const TIME_SECS: u16 = 0x0009;
    pub const TIME_MICROS: u16 = 0x000a;
    pub const PROTO_TYPE: u16 = 0x000b;
    pub const CAPTURE_ID: u16 = 0x000c;
    pub const AUTH_KEY: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
    pub const CORRELATION_ID: u16 = 0x0011;
}

/// Address families as HEP carries them (the Linux `AF_*` numbers, what
/// Kamailio sends and Homer expects).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// The captured protocol type of a SIP message (chunk 11).
pub const PROTO_TYPE_SIP: u8 = 1;

/// The IP protocol of the captured message (chunk 2): the IANA number for
/// UDP and TCP. TLS runs on TCP, but Kamailio's `siptrace` and
/// `sipcapture` mark it 22 so a collector can tell it apart; sipedge does
/// the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpProto {
    Udp,
    Tcp,
    Tls,
}

impl IpProto {
    pub fn number(self) -> u8 {
        match self {
            IpProto::Udp => 17,
            IpProto::Tcp => 6,
            IpProto::Tls => 22,
        }
    }
}

/// One captured message.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: IpProto,
    /// When it was received or sent: seconds since the epoch and the
    /// microseconds past them.
    pub secs: u32,
    pub micros: u32,
    pub capture_id: u32,
    pub auth_key: Option<&'a [u8]>,
    /// The Call-ID, which Homer groups a call's messages by.
    pub correlation_id: Option<&'a [u8]>,
    /// The whole SIP message.
    pub payload: &'a [u8],
}

/// The packet would not fit HEP's 16-bit total length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a HEP packet of {0} bytes exceeds the 65535 the length field holds")]
pub struct TooLarge(pub usize);

/// Appends `p` as one HEP v3 packet to `out` (left as it was on error).
/// The two addresses are written in one family: an IPv4 one is mapped
/// into IPv6 when the other is IPv6 (a dual-stack socket sees both).
pub fn encode(p: &Packet<'_>, out: &mut Vec<u8>) -> Result<(), TooLarge> {
    let (src, dst) = same_family(p.src.ip(), p.dst.ip());
    let addr_len = match src {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    };
    let opt_len = |v: Option<&[u8]>| v.map_or(0, |v| CHUNK_HEADER_LEN + v.len());
    let total = HEADER_LEN
        + 2 * (CHUNK_HEADER_LEN + 1) // family, IP protocol
        + 2 * (CHUNK_HEADER_LEN + addr_len)
        + 2 * (CHUNK_HEADER_LEN + 2) // ports
        + 2 * (CHUNK_HEADER_LEN + 4) // time
        + (CHUNK_HEADER_LEN + 1) // protocol type
        + (CHUNK_HEADER_LEN + 4) // capture id
        + opt_len(p.correlation_id)
        + opt_len(p.auth_key)
        + CHUNK_HEADER_LEN
        + p.payload.len();
    let Ok(total16) = u16::try_from(total) else {
        return Err(TooLarge(total));
    };
    out.reserve(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&total16.to_be_bytes());
    let family = if addr_len == 4 { AF_INET } else { AF_INET6 };
    put(out, chunk::IP_FAMILY, &[family]);
    put(out, chunk::IP_PROTO, &[p.proto.number()]);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put(out, chunk::IPV4_SRC, &s.octets());
            put(out, chunk::IPV4_DST, &d.octets());
        }
        (s, d) => {
            put(out, chunk::IPV6_SRC, &v6(s).octets());
            put(out, chunk::IPV6_DST, &v6(d).octets());
        }
    }
    put(out, chunk::SRC_PORT, &p.src.port().to_be_bytes());
    put(out, chunk::DST_PORT, &p.dst.port().to_be_bytes());
    put(out, chunk::TIME_SECS, &p.secs.to_be_bytes());
    put(out, chunk::TIME_MICROS, &p.micros.to_be_bytes());
    put(out, chunk::PROTO_TYPE, &[PROTO_TYPE_SIP]);
    put(out, chunk::CAPTURE_ID, &p.capture_id.to_be_bytes());
    // Before the payload, as Kamailio writes them: some dissectors stop
    // at the payload.
    if let Some(id) = p.correlation_id {
        put(out, chunk::CORRELATION_ID, id);
    }
    if let Some(key) = p.auth_key {
        put(out, chunk::AUTH_KEY, key);
    }
    put(out, chunk::PAYLOAD, p.payload);
    Ok(())
}

/// One vendor-0 chunk. Its length fits: the total was checked.
fn put(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = (CHUNK_HEADER_LEN + value.len()) as u16;
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// Both IPv4 (mapped ones made plain) or both IPv6.
fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    match (a.to_canonical(), b.to_canonical()) {
        (a @ IpAddr::V4(_), b @ IpAddr::V4(_)) => (a, b),
        (a, b) => (IpAddr::V6(v6(a)), IpAddr::V6(v6(b))),
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A packet's chunks as `(vendor, type, value)`, or `None` if it is not a
/// well-formed HEP v3 packet (for tests and tools; sipedge only sends).
pub fn chunks(packet: &[u8]) -> Option<Vec<(u16, u16, &[u8])>> {
    let rest = packet.strip_prefix(MAGIC)?;
    let (len, mut rest) = rest.split_first_chunk::<2>()?;
    if usize::from(u16::from_be_bytes(*len)) != packet.len() {
        return None;
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (head, _) = rest.split_first_chunk::<6>()?;
        let vendor = u16::from_be_bytes([head[0], head[1]]);
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
        if len < CHUNK_HEADER_LEN || len > rest.len() {
            return None;
        }
        out.push((vendor, kind, &rest[CHUNK_HEADER_LEN..len]));
        rest = &rest[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet<'a>(src: &str, dst: &str, payload: &'a [u8]) -> Packet<'a> {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: IpProto::Udp,
            secs: 1_700_000_000,
            micros: 123_456,
            capture_id: 2001,
            auth_key: Some(b"s3cret"),
            correlation_id: Some(b"abc@host"),
            payload,
        }
    }

    fn value<'a>(chunks: &[(u16, u16, &'a [u8])], kind: u16) -> &'a [u8] {
        let mut found = chunks.iter().filter(|c| c.1 == kind);
        let c = found.next().unwrap_or_else(|| panic!("no chunk {kind}"));
        assert!(found.next().is_none(), "chunk {kind} twice");
        assert_eq!(c.0, 0, "vendor of chunk {kind}");
        c.2
    }

    #[test]
    fn ipv4_packet_follows_the_spec_byte_for_byte() {
        let sip = b"OPTIONS sip:a SIP/2.0\r\n\r\n";
        let mut out = vec![0xff]; // appended, not overwritten
        encode(&packet("10.0.0.1:5060", "10.0.0.2:5080", sip), &mut out).unwrap();
        let p = &out[1..];
        assert_eq!(&p[..4], b"HEP3");
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len());
        // The first chunk by hand: vendor 0, type 1, length 7, AF_INET.
        assert_eq!(&p[6..13], &[0, 0, 0, 1, 0, 7, 2]);
        // 6 + 7 + 7 + 10 + 10 + 8 + 8 + 10 + 10 + 7 + 10 + (6+8) + (6+6) + (6+payload)
        assert_eq!(
            p.len(),
            6 + 7 + 7 + 10 + 10 + 8 + 8 + 10 + 10 + 7 + 10 + 14 + 12 + 6 + sip.len()
        );
        let c = chunks(p).unwrap();
        assert_eq!(value(&c, chunk::IP_FAMILY), &[2]);
        assert_eq!(value(&c, chunk::IP_PROTO), &[17]);
        assert_eq!(value(&c, chunk::IPV4_SRC), &[10, 0, 0, 1]);
        assert_eq!(value(&c, chunk::IPV4_DST), &[10, 0, 0, 2]);
        assert_eq!(value(&c, chunk::SRC_PORT), &5060u16.to_be_bytes());
        assert_eq!(value(&c, chunk::DST_PORT), &5080u16.to_be_bytes());
        assert_eq!(value(&c, chunk::TIME_SECS), &1_700_000_000u32.to_be_bytes());
        assert_eq!(value(&c, chunk::TIME_MICROS), &123_456u32.to_be_bytes());
        assert_eq!(value(&c, chunk::PROTO_TYPE), &[1]);
        assert_eq!(value(&c, chunk::CAPTURE_ID), &2001u32.to_be_bytes());
        assert_eq!(value(&c, chunk::AUTH_KEY), b"s3cret");
        assert_eq!(value(&c, chunk::CORRELATION_ID), b"abc@host");
        assert_eq!(value(&c, chunk::PAYLOAD), sip);
        // The payload is the last chunk.
        assert_eq!(c.last().unwrap().1, chunk::PAYLOAD);
    }

    #[test]
    fn ipv6_and_mixed_families_use_the_v6_chunks() {
        let mut out = Vec::new();
        encode(
            &packet("[2001:db8::1]:5060", "[::ffff:10.0.0.2]:5080", b"x"),
            &mut out,
        )
        .unwrap();
        let c = chunks(&out).unwrap();
        assert_eq!(value(&c, chunk::IP_FAMILY), &[10]);
        assert_eq!(
            value(&c, chunk::IPV6_SRC),
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(
            value(&c, chunk::IPV6_DST),
            &"::ffff:10.0.0.2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert!(c
            .iter()
            .all(|c| c.1 != chunk::IPV4_SRC && c.1 != chunk::IPV4_DST));
        // A v4-mapped pair is plain IPv4.
        let mut out = Vec::new();
        encode(&packet("[::ffff:10.0.0.1]:1", "10.0.0.2:2", b"x"), &mut out).unwrap();
        let c = chunks(&out).unwrap();
        assert_eq!(value(&c, chunk::IP_FAMILY), &[2]);
        assert_eq!(value(&c, chunk::IPV4_SRC), &[10, 0, 0, 1]);
    }

    #[test]
    fn optional_chunks_are_left_out_and_protocols_numbered() {
        let mut p = packet("10.0.0.1:1", "10.0.0.2:2", b"x");
        p.auth_key = None;
        p.correlation_id = None;
        for (proto, n) in [(IpProto::Udp, 17), (IpProto::Tcp, 6), (IpProto::Tls, 22)] {
            p.proto = proto;
            let mut out = Vec::new();
            encode(&p, &mut out).unwrap();
            let c = chunks(&out).unwrap();
            assert_eq!(value(&c, chunk::IP_PROTO), &[n]);
            assert!(c
                .iter()
                .all(|c| c.1 != chunk::AUTH_KEY && c.1 != chunk::CORRELATION_ID));
        }
    }

    #[test]
    fn too_large_is_refused_and_leaves_the_buffer() {
        let big = vec![b'a'; 65_535];
        let mut out = b"keep".to_vec();
        let e = encode(&packet("10.0.0.1:1", "10.0.0.2:2", &big), &mut out).unwrap_err();
        assert!(e.0 > 65_535);
        assert_eq!(out, b"keep");
    }

    #[test]
    fn chunks_refuses_what_is_not_hep3() {
        let mut out = Vec::new();
        encode(&packet("10.0.0.1:1", "10.0.0.2:2", b"x"), &mut out).unwrap();
        assert!(chunks(&out[..out.len() - 1]).is_none());
        assert!(chunks(b"HEP2\0\x06").is_none());
        let mut bad = out.clone();
        bad[10] = 0; // first chunk's length below its header
        bad[11] = 3;
        assert!(chunks(&bad).is_none());
    }
}
