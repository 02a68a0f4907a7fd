//! The authenticated node hint of our Record-Route (design.md: "opaque,
//! authenticated with the cluster secret").
//!
//! With `[cluster] secret`, our Record-Route reads
//! `<sip:ADV;lr;node=10.0.1.10:5080;mac=1f0c…>`: `mac` is HMAC-SHA256,
//! keyed with the secret, over the node's address and the call's Call-ID,
//! cut to [`TAG_LEN`] bytes and written as lower-case hex. The node stays
//! readable (an operator reading a trace sees where the call went; nothing
//! in it is secret), the MAC makes it unforgeable and ties it to its call:
//! a hint copied into another dialog does not verify. Every instance with
//! the same secret accepts a hint any of them made.
//!
//! Signing costs one HMAC per INVITE leg (the keyed states are computed
//! once, here); checking one is done only when the hint is what would route
//! a request (no pin).

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The MAC bytes kept: 80 bits. A forger must guess online, one request
/// per guess, each answered 481 and counted.
pub(crate) const TAG_LEN: usize = 10;

/// The URI parameter of our Record-Route that carries the MAC.
pub(crate) const PARAM: &[u8] = b"mac";

/// A MAC as carried in the URI: lower-case hex, so a hop that folds the
/// case of a parameter breaks nothing.
pub(crate) type TagText = [u8; 2 * TAG_LEN];

/// A MAC as read back from a Route.
pub(crate) type Tag = [u8; TAG_LEN];

/// Bound into every MAC: a MAC made with the same secret for another
/// purpose never passes for a route hint.
const CONTEXT: &[u8] = b"sipedge route hint 1\0";

/// The keyed HMAC states: the one that signs, and a previous secret still
/// accepted (a rotation).
#[derive(Clone)]
pub(crate) struct HintKeys {
    sign: Hmac<Sha256>,
    previous: Option<Hmac<Sha256>>,
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
            sign: keyed(secret),
            previous: previous.map(keyed),
        }
    }

    /// The MAC of a hint naming `node` in the call `call_id`, as its URI
    /// parameter value.
    pub(crate) fn sign(&self, node: SocketAddr, call_id: &[u8]) -> TagText {
        let full = digest(&self.sign, node, call_id).finalize().into_bytes();
        let mut out = [0u8; 2 * TAG_LEN];
        for (pair, b) in out.chunks_exact_mut(2).zip(&full[..TAG_LEN]) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0f)];
        }
        out
    }

    /// Whether `tag` is the MAC of `node` in `call_id` under either secret
    /// (compared in constant time).
    pub(crate) fn verify(&self, node: SocketAddr, call_id: &[u8], tag: &Tag) -> bool {
        std::iter::once(&self.sign)
            .chain(self.previous.as_ref())
            .any(|k| digest(k, node, call_id).verify_truncated_left(tag).is_ok())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length")
}

/// `key` fed with the hint's context, node and Call-ID.
fn digest(key: &Hmac<Sha256>, node: SocketAddr, call_id: &[u8]) -> Hmac<Sha256> {
    let mut m = key.clone();
    m.update(CONTEXT);
    // The address in binary, canonical (IPv4-mapped IPv6 as IPv4), so the
    // spelling in the URI does not matter; fixed lengths keep the fields
    // apart.
    match node.ip().to_canonical() {
        IpAddr::V4(a) => {
            m.update(&[4]);
            m.update(&a.octets());
        }
        IpAddr::V6(a) => {
            m.update(&[6]);
            m.update(&a.octets());
        }
    }
    m.update(&node.port().to_be_bytes());
    m.update(call_id);
    m
}

/// A `mac` parameter value read back: exactly [`TAG_LEN`] bytes of hex,
/// either case; anything else is no MAC.
pub(crate) fn parse_tag(text: &[u8]) -> Option<Tag> {
    if text.len() != 2 * TAG_LEN {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut tag = [0u8; TAG_LEN];
    for (b, pair) in tag.iter_mut().zip(text.chunks_exact(2)) {
        *b = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(tag)
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

    fn tag_of(text: TagText) -> Tag {
        parse_tag(&text).unwrap()
    }

    #[test]
    fn a_hint_verifies_for_its_node_and_call_only() {
        let k = keys();
        let n0 = node("10.0.1.10:5080");
        let text = k.sign(n0, CALL);
        assert!(text.iter().all(|c| HEX.contains(c)), "lower-case hex");
        let tag = tag_of(text);
        assert!(k.verify(n0, CALL, &tag));
        assert!(
            !k.verify(node("10.0.1.11:5080"), CALL, &tag),
            "another node"
        );
        assert!(
            !k.verify(node("10.0.1.10:5081"), CALL, &tag),
            "another port"
        );
        assert!(!k.verify(n0, b"another-call@host", &tag), "another call");
        let mut forged = tag;
        forged[TAG_LEN - 1] ^= 1;
        assert!(!k.verify(n0, CALL, &forged), "one bit off");
    }

    #[test]
    fn another_instance_with_the_same_secret_accepts_it_another_secret_does_not() {
        let n0 = node("10.0.1.10:5080");
        let tag = tag_of(keys().sign(n0, CALL));
        assert!(
            keys().verify(n0, CALL, &tag),
            "same secret, another instance"
        );
        let other = HintKeys::new(b"another secret of 32 bytes......", None);
        assert!(!other.verify(n0, CALL, &tag));
    }

    #[test]
    fn the_previous_secret_is_accepted_but_never_signs() {
        let old = keys();
        let n0 = node("10.0.1.10:5080");
        let rotated = HintKeys::new(
            b"the new secret, 32 bytes long...",
            Some(b"0123456789abcdef0123456789abcdef"),
        );
        let made_before = tag_of(old.sign(n0, CALL));
        assert!(rotated.verify(n0, CALL, &made_before));
        let made_after = tag_of(rotated.sign(n0, CALL));
        assert_ne!(made_after, made_before, "signed with the new secret");
        assert!(!old.verify(n0, CALL, &made_after));
    }

    #[test]
    fn the_address_is_signed_canonically() {
        let k = keys();
        let tag = tag_of(k.sign(node("10.0.1.10:5080"), CALL));
        assert!(k.verify(node("[::ffff:10.0.1.10]:5080"), CALL, &tag));
        let v6 = node("[2001:db8::10]:5080");
        assert!(k.verify(v6, CALL, &tag_of(k.sign(v6, CALL))));
    }

    #[test]
    fn only_a_whole_tag_in_hex_parses() {
        let text = keys().sign(node("10.0.1.10:5080"), CALL);
        let upper = text.to_ascii_uppercase();
        assert_eq!(parse_tag(&upper), parse_tag(&text), "any case");
        assert_eq!(parse_tag(&text[..2 * TAG_LEN - 1]), None, "truncated");
        assert_eq!(parse_tag(&text[..2 * TAG_LEN - 2]), None, "truncated");
        assert_eq!(parse_tag(b""), None);
        let mut longer = text.to_vec();
        longer.extend_from_slice(b"00");
        assert_eq!(parse_tag(&longer), None, "too long");
        assert_eq!(parse_tag(b"zz0123456789abcdef01"), None, "not hex");
        assert_eq!(parse_tag("é0123456789abcdef0".as_bytes()), None);
    }
}
