//! The server side of the trunk's INVITE (RFC 3261 §17.2.1 with RFC 6026),
//! sans-I/O: what to do with a retransmitted INVITE or an ACK in each
//! state, and the key that matches a request to it (§17.2.3).

use std::time::Instant;

use bytes::Bytes;

use super::LINGER;
use crate::sip::Message;

/// The key of the INVITE server transaction that `msg` (the INVITE, its
/// CANCEL or its ACK) belongs to (RFC 3261 §17.2.3): the branch together
/// with the sent-by of the top Via (so two clients that happen to pick the
/// same branch are two transactions); for an RFC 2543 client (no magic
/// cookie), the Call-ID, CSeq number, From tag and top Via together. The
/// method is matched by the caller: INVITE and ACK look up the INVITE's
/// transaction, and a CANCEL the INVITE it cancels (§9.2). Written into
/// `key` (cleared first), a buffer the caller reuses: a lookup allocates
/// nothing.
pub fn server_key(msg: &Message<'_>, key: &mut Vec<u8>) -> Option<()> {
    use std::io::Write as _;
    key.clear();
    let via = msg.top_via().ok()?;
    if via.has_rfc3261_branch() {
        key.extend_from_slice(via.branch()?);
        key.push(b'|');
        match via.host.ip() {
            // An address in its one canonical text (IPv6 has several).
            Some(ip) => write!(key, "{ip}").ok()?,
            // Host names compare case-insensitively.
            None => key.extend(via.host_raw.iter().map(u8::to_ascii_lowercase)),
        }
        // An absent port is the transport's default: `h` and `h:5060` are
        // one sent-by.
        let tls = via.transport.eq_ignore_ascii_case(b"TLS");
        let port = via.port.unwrap_or(if tls { 5061 } else { 5060 });
        return write!(key, ":{port}").ok();
    }
    key.extend_from_slice(b"2543|");
    key.extend_from_slice(msg.call_id().ok()?);
    write!(key, "|{}|", msg.cseq().ok()?.number).ok()?;
    key.extend_from_slice(msg.from_tag().ok().flatten().unwrap_or_default());
    key.push(b'|');
    key.extend_from_slice(via.as_bytes());
    Some(())
}

/// The INVITE server transaction's state (RFC 6026 Figure 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerInvite {
    /// No final answer yet: a retransmitted INVITE gets the last
    /// provisional again (our 100 until the node rings).
    Proceeding { last: Option<Bytes> },
    /// A non-2xx final went out: a retransmitted INVITE gets it again, the
    /// ACK is absorbed (it ends here, hop by hop).
    Completed { last: Bytes, at: Instant },
    /// A 2xx went out: the node's UAS core resends it itself until the
    /// ACK, so a retransmitted INVITE is absorbed; the ACK for a 2xx is
    /// end to end and goes on to the node.
    Accepted { at: Instant },
}

/// What to do with a request that matched the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    /// Send this again to the trunk.
    Repeat(Bytes),
    /// Nothing to send; the request ends here.
    Absorb,
    /// Not this transaction's to take: route the request on.
    PassOn,
}

impl Default for ServerInvite {
    fn default() -> Self {
        ServerInvite::Proceeding { last: None }
    }
}

impl ServerInvite {
    /// A retransmitted INVITE.
    pub fn on_invite(&self) -> Matched {
        match self {
            ServerInvite::Proceeding { last: Some(b) }
            | ServerInvite::Completed { last: b, .. } => Matched::Repeat(b.clone()),
            ServerInvite::Proceeding { last: None } | ServerInvite::Accepted { .. } => {
                Matched::Absorb
            }
        }
    }

    /// An ACK whose key matches the INVITE's (RFC 3261 §17.2.1; RFC 6026
    /// §7.1: in Accepted it is passed on, it acknowledges a 2xx).
    pub fn on_ack(&self) -> Matched {
        match self {
            ServerInvite::Accepted { .. } => Matched::PassOn,
            _ => Matched::Absorb,
        }
    }

    /// A provisional went to the trunk; ignored once final.
    pub fn provisional(&mut self, sent: Bytes) {
        if let ServerInvite::Proceeding { last } = self {
            *last = Some(sent);
        }
    }

    /// A final response went to the trunk: a 2xx accepts, anything else
    /// completes. The first final wins (a second 2xx from a forked or
    /// late node does not change what a retransmitted INVITE gets).
    pub fn finished(&mut self, code: u16, sent: Bytes, now: Instant) {
        if !matches!(self, ServerInvite::Proceeding { .. }) {
            return;
        }
        *self = if (200..300).contains(&code) {
            ServerInvite::Accepted { at: now }
        } else {
            ServerInvite::Completed {
                last: sent,
                at: now,
            }
        };
    }

    /// Over, and only kept for retransmissions until then: the sweeper
    /// drops it after [`LINGER`] (Timer G/H/I, RFC 6026 Timer L).
    pub fn expired(&self, now: Instant) -> bool {
        match self {
            ServerInvite::Proceeding { .. } => false,
            ServerInvite::Completed { at, .. } | ServerInvite::Accepted { at } => {
                now.saturating_duration_since(*at) >= LINGER
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn invite(via: &str) -> Vec<u8> {
        format!(
            "INVITE sip:f@example.com SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@b>;tag=1\r\n\
             To: <sip:f@example.com>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn key(via: &str) -> Box<[u8]> {
        let raw = invite(via);
        let mut k = Vec::new();
        server_key(&Message::parse(&raw).unwrap(), &mut k).unwrap();
        k.into()
    }

    #[test]
    fn the_key_is_branch_and_sent_by() {
        let a = key("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1");
        assert_eq!(a, key("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;rport"));
        assert_eq!(
            key("SIP/2.0/UDP Trunk.Example;branch=z9hG4bK1"),
            key("SIP/2.0/UDP trunk.example:5060;branch=z9hG4bK1")
        );
        // Same branch from another sent-by: another transaction.
        assert_ne!(a, key("SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK1"));
        assert_ne!(a, key("SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1"));
        assert_ne!(a, key("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK2"));
        assert_eq!(
            key("SIP/2.0/TLS h;branch=z9hG4bK1"),
            key("SIP/2.0/TLS h:5061;branch=z9hG4bK1")
        );
        // RFC 2543: no magic cookie, matched on the dialog's identifiers.
        let old = key("SIP/2.0/UDP 192.0.2.1;branch=1234");
        assert!(old.starts_with(b"2543|"));
        assert_ne!(old, key("SIP/2.0/UDP 192.0.2.1;branch=1235"));
    }

    #[test]
    fn a_retransmitted_invite_in_every_state() {
        let now = Instant::now();
        let mut s = ServerInvite::default();
        assert_eq!(s.on_invite(), Matched::Absorb, "nothing sent yet");
        s.provisional(Bytes::from_static(b"100"));
        assert_eq!(s.on_invite(), Matched::Repeat(Bytes::from_static(b"100")));
        s.provisional(Bytes::from_static(b"180"));
        assert_eq!(s.on_invite(), Matched::Repeat(Bytes::from_static(b"180")));
        let mut rejected = s.clone();
        rejected.finished(486, Bytes::from_static(b"486"), now);
        assert_eq!(
            rejected.on_invite(),
            Matched::Repeat(Bytes::from_static(b"486"))
        );
        rejected.provisional(Bytes::from_static(b"late 180"));
        rejected.finished(200, Bytes::from_static(b"late 200"), now);
        assert_eq!(
            rejected.on_invite(),
            Matched::Repeat(Bytes::from_static(b"486")),
            "the first final wins"
        );
        s.finished(200, Bytes::from_static(b"200"), now);
        assert_eq!(s.on_invite(), Matched::Absorb, "RFC 6026 Accepted");
    }

    #[test]
    fn the_ack_ends_a_non_2xx_and_passes_on_after_a_2xx() {
        let now = Instant::now();
        let mut s = ServerInvite::default();
        assert_eq!(s.on_ack(), Matched::Absorb);
        s.finished(503, Bytes::new(), now);
        assert_eq!(s.on_ack(), Matched::Absorb);
        let mut s = ServerInvite::default();
        s.finished(200, Bytes::new(), now);
        assert_eq!(s.on_ack(), Matched::PassOn);
    }

    #[test]
    fn it_lingers_after_its_final_only() {
        let now = Instant::now();
        let mut s = ServerInvite::default();
        assert!(!s.expired(now + Duration::from_secs(3600)));
        s.finished(200, Bytes::new(), now);
        assert!(matches!(s, ServerInvite::Accepted { .. }));
        assert!(!s.expired(now + LINGER - Duration::from_millis(1)));
        assert!(s.expired(now + LINGER));
    }
}
