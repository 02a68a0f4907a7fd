//! The node hint of our Record-Route, opaque and authenticated with the
//! cluster secret.
//!
//! Our Record-Route reads `<sip:ADV;lr;node=3f9c…>`: the `node` value is
//! the node's address encrypted and authenticated together with the
//! call's Call-ID, so it names no address, and any instance with the same
//! key reads it back without having seen the call (a restart, a second
//! proxy behind the VIP), whatever order its pool lists the nodes in.
//!
//! The construction is AES-SIV (RFC 5297, deterministic authenticated
//! encryption; RustCrypto `aes-siv`, `Aes128Siv`), so nothing here is
//! home-made cryptography:
//! - the key is HKDF-SHA256 of the secret with a fixed label
//!   ([`KEY_INFO`]): 32 bytes, the CMAC half and the CTR half;
//! - the plaintext is the address and port (6 or 18 bytes, canonical), the
//!   one associated-data component the Call-ID;
//! - the value is `SIV tag ‖ ciphertext` in lower-case hex (a hop that
//!   folds the case of a parameter breaks nothing): 44 characters for an
//!   IPv4 node, 68 for IPv6. The 128-bit tag is the MAC: a forger must
//!   guess online, one request per guess, each answered 481 and counted.
//!
//! Deterministic on purpose: no nonce to carry or to get wrong, the same
//! call to the same node seals alike (a retransmission or failover leg
//! writes the same Record-Route), and since the Call-ID is in the tag two
//! calls to one node share nothing. Opening checks the tag in constant
//! time (the crate's). Each way is a few AES blocks whatever the pool's
//! size, on stack buffers: sealing is done once per INVITE leg, opening
//! only when the hint is what would route a request (no pin), with the
//! previous secret tried second.
//!
//! Without `[cluster] secret` the key is derived from [`BUILT_IN_KEY`]:
//! the hint is as opaque to a casual reader, but anyone with sipedge's
//! source can open or forge one, so it is not treated as authenticated
//! (see `route.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aes_siv::aead::inout::InOutBuf;
use aes_siv::siv::Aes128Siv;
use aes_siv::{Key, KeyInit, Tag};
use hkdf::Hkdf;
use sha2::Sha256;

/// The SIV tag: 128 bits, the whole of it (RFC 5297 truncates nothing).
pub(crate) const TAG_LEN: usize = 16;

/// The URI parameter of our Record-Route that carries the hint.
pub(crate) const PARAM: &[u8] = b"node";

/// The shortest sealed address: IPv4 and port.
const MIN_ADDR: usize = 6;

/// The longest sealed address: IPv6 and port.
const MAX_ADDR: usize = 18;

/// The longest hint, in bytes.
const MAX_LEN: usize = TAG_LEN + MAX_ADDR;

/// HKDF's `info`: a key derived from the same secret for another purpose
/// never opens a route hint, nor one of an earlier format.
const KEY_INFO: &[u8] = b"sipedge route hint 3 AES-SIV key";

/// The key without a `[cluster] secret`: public, so it only keeps node
/// addresses out of casual view.
pub(crate) const BUILT_IN_KEY: &[u8] = b"sipedge built-in route hint key (no [cluster] secret)";

/// A hint as carried in the URI (hex), without allocating.
#[derive(Clone, Copy)]
pub(crate) struct HintText {
    buf: [u8; 2 * MAX_LEN],
    len: u8,
}

impl HintText {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// A hint as read back from a Route: the tag, then the sealed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl Token {
    fn tag(&self) -> &[u8] {
        &self.bytes[..TAG_LEN]
    }

    fn sealed(&self) -> &[u8] {
        &self.bytes[TAG_LEN..usize::from(self.len)]
    }
}

/// The derived AES-SIV keys: the one that seals, and a previous secret's
/// still accepted (a rotation).
#[derive(Clone)]
pub(crate) struct HintKeys {
    sign: Key<Aes128Siv>,
    previous: Option<Key<Aes128Siv>>,
    authenticated: bool,
}

impl std::fmt::Debug for HintKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HintKeys(..)")
    }
}

impl HintKeys {
    /// Keys for `secret` and, when given, the `previous` one.
    pub(crate) fn new(secret: &[u8], previous: Option<&[u8]>) -> HintKeys {
        HintKeys {
            sign: derive(secret),
            previous: previous.map(derive),
            authenticated: true,
        }
    }

    /// The keys for `[cluster]`: its secrets, else the built-in key.
    pub(crate) fn from_secrets(secrets: Option<(&[u8], Option<&[u8]>)>) -> HintKeys {
        match secrets {
            Some((secret, previous)) => HintKeys::new(secret, previous),
            None => HintKeys {
                sign: derive(BUILT_IN_KEY),
                previous: None,
                authenticated: false,
            },
        }
    }

    /// Keyed with a secret of the operator's: a hint that opens is
    /// authentic (with the built-in key anyone can make one).
    pub(crate) fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// The hint naming `node` in the call `call_id`, as its URI parameter
    /// value.
    pub(crate) fn seal(&self, node: SocketAddr, call_id: &[u8]) -> HintText {
        let (addr, len) = addr_bytes(node);
        let mut token = [0u8; MAX_LEN];
        let sealed = &mut token[TAG_LEN..TAG_LEN + len];
        sealed.copy_from_slice(&addr[..len]);
        let tag = Aes128Siv::new(&self.sign)
            .encrypt_inout_detached([call_id], InOutBuf::from(sealed))
            .expect("one associated-data component is within RFC 5297's limit");
        token[..TAG_LEN].copy_from_slice(&tag);
        let mut text = HintText {
            buf: [0; 2 * MAX_LEN],
            len: u8::try_from(2 * (TAG_LEN + len)).expect("at most 68"),
        };
        for (pair, b) in text.buf.chunks_exact_mut(2).zip(&token[..TAG_LEN + len]) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0f)];
        }
        text
    }

    /// The node `token` names in the call `call_id`, if it opens under
    /// either key; `None` when it is forged, cut, or another call's.
    pub(crate) fn open(&self, token: &Token, call_id: &[u8]) -> Option<SocketAddr> {
        std::iter::once(&self.sign)
            .chain(self.previous.as_ref())
            .find_map(|k| open_with(k, token, call_id))
    }
}

fn open_with(key: &Key<Aes128Siv>, token: &Token, call_id: &[u8]) -> Option<SocketAddr> {
    let tag = Tag::try_from(token.tag()).ok()?;
    let mut addr = [0u8; MAX_ADDR];
    let addr = &mut addr[..token.sealed().len()];
    addr.copy_from_slice(token.sealed());
    Aes128Siv::new(key)
        .decrypt_inout_detached([call_id], InOutBuf::from(&mut *addr), &tag)
        .ok()?;
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match *addr {
        [a, b, c, d, p0, p1] => Some(SocketAddr::new(
            Ipv4Addr::new(a, b, c, d).into(),
            port(&[p0, p1]),
        )),
        _ => {
            let ip: [u8; 16] = addr[..16].try_into().ok()?;
            Some(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                port(&addr[16..]),
            ))
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The AES-SIV key for `secret`: HKDF-SHA256, no salt (the secret is
/// already uniform or, the built-in one, public), [`KEY_INFO`] as label.
fn derive(secret: &[u8]) -> Key<Aes128Siv> {
    let mut key = Key::<Aes128Siv>::default();
    Hkdf::<Sha256>::new(None, secret)
        .expand(KEY_INFO, &mut key)
        .expect("32 bytes is within HKDF-SHA256's output");
    key
}

/// The address in binary, canonical (IPv4-mapped IPv6 as IPv4) so the
/// spelling does not matter, then the port: 6 or 18 bytes.
fn addr_bytes(node: SocketAddr) -> ([u8; MAX_ADDR], usize) {
    let mut out = [0u8; MAX_ADDR];
    let ip_len = match node.ip().to_canonical() {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            out[..16].copy_from_slice(&a.octets());
            16
        }
    };
    out[ip_len..ip_len + 2].copy_from_slice(&node.port().to_be_bytes());
    (out, ip_len + 2)
}

/// A `node` parameter value read back: a whole hint in hex, either case
/// (the tag and an IPv4 or IPv6 address); anything else is no hint.
pub(crate) fn parse(text: &[u8]) -> Option<Token> {
    let len = text.len() / 2;
    if text.len() != 2 * (TAG_LEN + MIN_ADDR) && text.len() != 2 * MAX_LEN {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut token = Token {
        bytes: [0; MAX_LEN],
        len: u8::try_from(len).ok()?,
    };
    for (b, pair) in token.bytes.iter_mut().zip(text.chunks_exact(2)) {
        *b = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: &[u8] = b"a84b4c76e66710@pc33.atlanta.example.com";

    fn node(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn keys() -> HintKeys {
        HintKeys::new(b"0123456789abcdef0123456789abcdef", None)
    }

    fn token(text: HintText) -> Token {
        parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn a_hint_names_no_address_and_opens_for_its_call_only() {
        let k = keys();
        let n0 = node("10.0.1.10:5080");
        let text = k.seal(n0, CALL);
        let s = std::str::from_utf8(text.as_bytes()).unwrap();
        assert_eq!(s.len(), 44, "{s}");
        assert!(s.bytes().all(|c| HEX.contains(&c)), "lower-case hex: {s}");
        // Neither the address nor the port shows, in any spelling.
        for shown in ["0a00010a", "10.0.1.10", "13b0", "5080"] {
            assert!(!s.contains(shown), "{shown} in {s}");
        }
        let t = token(text);
        assert_eq!(k.open(&t, CALL), Some(n0));
        assert_eq!(k.open(&t, b"another-call@host"), None, "another call");
        assert_ne!(
            k.seal(node("10.0.1.11:5080"), CALL).as_bytes(),
            s.as_bytes()
        );
        // Any bit flipped, in the tag or in the sealed address: no hint.
        for i in 0..TAG_LEN + MIN_ADDR {
            let mut forged = t;
            forged.bytes[i] ^= 1;
            assert_eq!(k.open(&forged, CALL), None, "byte {i}");
        }
    }

    /// The format is a contract between instances and across versions:
    /// these values were computed independently (Python `cryptography`:
    /// `HKDF(SHA256, 32, salt=None, info=KEY_INFO)`, then
    /// `AESSIV(key).encrypt(address ‖ port, [Call-ID])`).
    #[test]
    fn the_hint_is_rfc_5297_aes_siv_under_an_hkdf_key() {
        let k = keys();
        assert_eq!(
            k.seal(node("10.0.1.10:5080"), CALL).as_bytes(),
            b"60e0b9cb25e63a8581e79dc12e392ac871b553472952"
        );
        assert_eq!(
            k.seal(node("[2001:db8::10]:5080"), CALL).as_bytes(),
            b"7d14a04198de274e3c4a7ddfbf0b7417cf3e17d08504ebd11cb385a6ae682d86d04a"
        );
    }

    #[test]
    fn the_same_call_to_the_same_node_seals_alike_another_call_does_not() {
        let k = keys();
        let n0 = node("10.0.1.10:5080");
        assert_eq!(k.seal(n0, CALL).as_bytes(), k.seal(n0, CALL).as_bytes());
        // Nothing links two calls to the same node.
        let other = k.seal(n0, b"another-call@host");
        assert_ne!(
            other.as_bytes()[2 * TAG_LEN..],
            k.seal(n0, CALL).as_bytes()[2 * TAG_LEN..]
        );
    }

    #[test]
    fn another_instance_with_the_same_secret_opens_it_another_secret_does_not() {
        let n0 = node("10.0.1.10:5080");
        let t = token(keys().seal(n0, CALL));
        assert_eq!(keys().open(&t, CALL), Some(n0), "another instance");
        let other = HintKeys::new(b"another secret of 32 bytes......", None);
        assert_eq!(other.open(&t, CALL), None);
        let built_in = HintKeys::from_secrets(None);
        assert!(!built_in.authenticated());
        assert_eq!(built_in.open(&t, CALL), None);
        let t = token(built_in.seal(n0, CALL));
        assert_eq!(HintKeys::from_secrets(None).open(&t, CALL), Some(n0));
        assert_eq!(keys().open(&t, CALL), None);
    }

    #[test]
    fn the_previous_secret_is_accepted_but_never_seals() {
        let old = keys();
        let n0 = node("10.0.1.10:5080");
        let rotated = HintKeys::new(
            b"the new secret, 32 bytes long...",
            Some(b"0123456789abcdef0123456789abcdef"),
        );
        let made_before = token(old.seal(n0, CALL));
        assert_eq!(rotated.open(&made_before, CALL), Some(n0));
        let made_after = token(rotated.seal(n0, CALL));
        assert_ne!(made_after, made_before, "sealed with the new secret");
        assert_eq!(old.open(&made_after, CALL), None);
    }

    #[test]
    fn addresses_are_sealed_canonically_ipv6_too() {
        let k = keys();
        let mapped = token(k.seal(node("[::ffff:10.0.1.10]:5080"), CALL));
        assert_eq!(k.open(&mapped, CALL), Some(node("10.0.1.10:5080")));
        let v6 = node("[2001:db8::10]:5080");
        let text = k.seal(v6, CALL);
        assert_eq!(text.as_bytes().len(), 68);
        assert_eq!(k.open(&token(text), CALL), Some(v6));
    }

    #[test]
    fn only_a_whole_hint_in_hex_parses() {
        let text = keys().seal(node("10.0.1.10:5080"), CALL);
        let text = text.as_bytes();
        let upper = text.to_ascii_uppercase();
        assert_eq!(parse(&upper), parse(text), "any case");
        assert_eq!(parse(&text[..text.len() - 1]), None, "truncated");
        assert_eq!(parse(&text[..text.len() - 2]), None, "truncated");
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"10.0.1.10:5080"), None, "an address");
        let mut longer = text.to_vec();
        longer.extend_from_slice(b"00");
        assert_eq!(parse(&longer), None, "too long");
        let mut not_hex = text.to_vec();
        not_hex[0] = b'z';
        assert_eq!(parse(&not_hex), None, "not hex");
        assert_eq!(
            parse("é0123456789abcdef0123456789abcdef0123456789".as_bytes()),
            None
        );
    }
}
