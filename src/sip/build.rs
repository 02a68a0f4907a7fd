//! Messages sipedge writes itself: responses to a received request (100
//! Trying, 4xx/5xx from the proxy, 200 to a keep-alive OPTIONS) and the
//! OPTIONS requests of the health prober.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};

use super::edit::received_patch;
use super::header::HeaderName;
use super::message::Message;
use super::method::Method;

/// A response to `req` built from its Via, From, To, Call-ID and CSeq
/// (RFC 3261 §8.2.6.2).
#[derive(Debug, Clone, Copy)]
pub struct Response<'r, 'm> {
    req: &'r Message<'m>,
    code: u16,
    reason: &'r [u8],
    to_tag: &'r [u8],
    received: Option<SocketAddr>,
    extra: &'r [(&'r str, &'r [u8])],
}

impl<'r, 'm> Response<'r, 'm> {
    /// `to_tag` is added to the To header of a response above 100 when the
    /// request's To has no tag yet.
    pub fn new(req: &'r Message<'m>, code: u16, reason: &'r [u8], to_tag: &'r [u8]) -> Self {
        Response {
            req,
            code,
            reason,
            to_tag,
            received: None,
            extra: &[],
        }
    }

    /// The request's source: its top Via gets `received`/`rport` as the
    /// transport layer would have added them (RFC 3261 §18.2.1, RFC 3581).
    pub fn received(mut self, src: SocketAddr) -> Self {
        self.received = Some(src);
        self
    }

    /// More header lines (e.g. `Unsupported` for a 420, `Retry-After`).
    pub fn headers(mut self, extra: &'r [(&'r str, &'r [u8])]) -> Self {
        self.extra = extra;
        self
    }

    /// Appends the response to `out`.
    pub fn write(&self, out: &mut BytesMut) {
        let req = self.req;
        let buf = req.as_bytes();
        let _ = write!(out, "SIP/2.0 {} ", self.code);
        out.put_slice(self.reason);
        out.put_slice(b"\r\n");
        let top = req.first_index(HeaderName::Via);
        let patch = self
            .received
            .zip(req.top_via().ok())
            .map(|(src, via)| received_patch(buf, via, src));
        for i in 0..req.header_count() {
            let e = *req.entry(i);
            let line = req.line_range(i);
            match e.name {
                HeaderName::Via if Some(i) == top => {
                    let mut c = line.0;
                    for (at, end, text) in patch.iter().flat_map(|p| p.parts()) {
                        out.put_slice(&buf[c..at]);
                        out.put_slice(text);
                        c = end;
                    }
                    out.put_slice(&buf[c..line.1]);
                }
                HeaderName::To => {
                    let has_tag = req.to_tag().ok().flatten().is_some();
                    if self.code > 100 && !has_tag && !self.to_tag.is_empty() {
                        let ve = e.value_end as usize;
                        out.put_slice(&buf[line.0..ve]);
                        out.put_slice(b";tag=");
                        out.put_slice(self.to_tag);
                        out.put_slice(&buf[ve..line.1]);
                    } else {
                        out.put_slice(&buf[line.0..line.1]);
                    }
                }
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    out.put_slice(&buf[line.0..line.1])
                }
                _ => {}
            }
            // A request whose last header line ended without a line break
            // cannot exist (headers end with an empty line), so every copied
            // line is terminated.
        }
        for (name, value) in self.extra {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"Content-Length: 0\r\n\r\n");
    }
}

/// An out-of-dialog request with no body, as the health prober sends it
/// (OPTIONS by default; Kamailio's `ds_ping_method`).
#[derive(Debug, Clone, Copy)]
pub struct OptionsRequest<'a> {
    pub method: Method<'a>,
    /// Request-URI and To: the destination being probed.
    pub target: &'a [u8],
    /// Via transport token: `UDP`, `TCP`.
    pub transport: &'a str,
    /// Via sent-by: our advertised `host[:port]`.
    pub sent_by: &'a [u8],
    /// Full branch, starting with `z9hG4bK`.
    pub branch: &'a [u8],
    pub from_uri: &'a [u8],
    pub from_tag: &'a [u8],
    pub call_id: &'a [u8],
    pub cseq: u32,
    pub user_agent: Option<&'a [u8]>,
}

impl OptionsRequest<'_> {
    pub fn write(&self, out: &mut BytesMut) {
        let m = self.method.as_bytes();
        out.put_slice(m);
        out.put_u8(b' ');
        out.put_slice(self.target);
        out.put_slice(b" SIP/2.0\r\nVia: SIP/2.0/");
        out.put_slice(self.transport.as_bytes());
        out.put_u8(b' ');
        out.put_slice(self.sent_by);
        out.put_slice(b";branch=");
        out.put_slice(self.branch);
        out.put_slice(b";rport\r\nMax-Forwards: 70\r\nFrom: <");
        out.put_slice(self.from_uri);
        out.put_slice(b">;tag=");
        out.put_slice(self.from_tag);
        out.put_slice(b"\r\nTo: <");
        out.put_slice(self.target);
        out.put_slice(b">\r\nCall-ID: ");
        out.put_slice(self.call_id);
        let _ = write!(out, "\r\nCSeq: {} ", self.cseq);
        out.put_slice(m);
        out.put_slice(b"\r\n");
        if let Some(ua) = self.user_agent {
            out.put_slice(b"User-Agent: ");
            out.put_slice(ua);
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"Content-Length: 0\r\n\r\n");
    }
}

/// CANCEL or ACK for a non-2xx final, built from the INVITE exactly as it
/// was sent on the branch (RFC 3261 §9.1, §17.1.1.3): the same
/// Request-URI, top Via (ours, with the branch), From, Call-ID, CSeq
/// number and Route headers, byte for byte (header-name forms and
/// non-UTF-8 bytes included); an ACK takes the To of the response it
/// acknowledges.
#[derive(Debug, Clone, Copy)]
pub struct HopRequest<'r, 'm> {
    pub invite: &'r Message<'m>,
    /// `Method::Cancel` or `Method::Ack`.
    pub method: Method<'r>,
    /// The To header value of the response (ACK only); the INVITE's To
    /// otherwise.
    pub to: Option<&'r [u8]>,
}

impl HopRequest<'_, '_> {
    /// Appends the request to `out`; `None` when the INVITE lacks what it
    /// takes (never for one we built and sent).
    pub fn write(&self, out: &mut BytesMut) -> Option<()> {
        let inv = self.invite;
        let buf = inv.as_bytes();
        let m = self.method.as_bytes();
        let ruri = inv.request_uri_bytes()?;
        let via = inv.top_via().ok()?;
        let cseq = inv.cseq().ok()?;
        out.put_slice(m);
        out.put_u8(b' ');
        out.put_slice(ruri);
        out.put_slice(b" SIP/2.0\r\nVia: ");
        out.put_slice(via.as_bytes());
        out.put_slice(b"\r\nMax-Forwards: 70\r\n");
        for i in 0..inv.header_count() {
            let (start, end) = inv.line_range(i);
            match inv.entry(i).name {
                HeaderName::To => {
                    if let Some(to) = self.to {
                        out.put_slice(b"To: ");
                        out.put_slice(to);
                        out.put_slice(b"\r\n");
                    } else {
                        out.put_slice(&buf[start..end]);
                    }
                }
                HeaderName::From | HeaderName::CallId | HeaderName::Route => {
                    out.put_slice(&buf[start..end])
                }
                _ => {}
            }
        }
        let _ = write!(out, "CSeq: {} ", cseq.number);
        out.put_slice(m);
        out.put_slice(b"\r\nContent-Length: 0\r\n\r\n");
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
v: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKa;rport\r\n\
Via: SIP/2.0/UDP x.example;branch=z9hG4bKb\r\n\
To: Bob <sip:bob@b.example>\r\n\
f: <sip:alice@a.example>;tag=1\r\n\
Contact: <sip:alice@10.0.0.9>\r\n\
i: c1\r\n\
CSeq: 7 INVITE\r\n\
l: 3\r\n\r\nabc";

    #[test]
    fn response_copies_dialog_headers() {
        let m = Message::parse(REQ).unwrap();
        let mut out = BytesMut::new();
        Response::new(&m, 503, b"All media servers unavailable", b"xyz")
            .received("192.0.2.7:4000".parse().unwrap())
            .headers(&[("Retry-After", b"30")])
            .write(&mut out);
        assert_eq!(
            &out[..],
            &b"SIP/2.0 503 All media servers unavailable\r\n\
v: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKa;rport=4000;received=192.0.2.7\r\n\
Via: SIP/2.0/UDP x.example;branch=z9hG4bKb\r\n\
To: Bob <sip:bob@b.example>;tag=xyz\r\n\
f: <sip:alice@a.example>;tag=1\r\n\
i: c1\r\n\
CSeq: 7 INVITE\r\n\
Retry-After: 30\r\n\
Content-Length: 0\r\n\r\n"[..]
        );
        let r = Message::parse(&out).unwrap();
        r.validate().unwrap();
        out.clear();
        Response::new(&m, 100, b"Trying", b"xyz").write(&mut out);
        let r = Message::parse(&out).unwrap();
        assert_eq!(r.to_tag().unwrap(), None);
        assert_eq!(r.status(), Some(100));
    }

    #[test]
    fn cancel_and_ack_copy_the_sent_invite_byte_for_byte() {
        // As we send it: our Via on top, a Route left after ours, a
        // non-UTF-8 display name, compact forms.
        let sent: &[u8] = b"INVITE sip:f@10.0.1.10:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKse1;rport\r\n\
v: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKa;rport=4000;received=192.0.2.7\r\n\
Max-Forwards: 69\r\n\
Route: <sip:next.example;lr>\r\n\
f: \"Caf\xe9\" <sip:alice@a.example>;tag=1\r\n\
To: <sip:f@example.com>\r\n\
i: c1\r\n\
CSeq: 7 INVITE\r\n\
Content-Type: application/sdp\r\n\
l: 3\r\n\r\nabc";
        let inv = Message::parse(sent).unwrap();
        let mut out = BytesMut::new();
        HopRequest {
            invite: &inv,
            method: Method::Cancel,
            to: None,
        }
        .write(&mut out)
        .unwrap();
        assert_eq!(
            &out[..],
            &b"CANCEL sip:f@10.0.1.10:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKse1;rport\r\n\
Max-Forwards: 70\r\n\
Route: <sip:next.example;lr>\r\n\
f: \"Caf\xe9\" <sip:alice@a.example>;tag=1\r\n\
To: <sip:f@example.com>\r\n\
i: c1\r\n\
CSeq: 7 CANCEL\r\n\
Content-Length: 0\r\n\r\n"[..]
        );
        Message::parse(&out).unwrap().validate().unwrap();
        out.clear();
        HopRequest {
            invite: &inv,
            method: Method::Ack,
            to: Some(b"<sip:f@example.com>;tag=n1"),
        }
        .write(&mut out)
        .unwrap();
        let ack = Message::parse(&out).unwrap();
        ack.validate().unwrap();
        assert_eq!(ack.method(), Some(Method::Ack));
        assert_eq!(ack.to_tag().unwrap(), Some(&b"n1"[..]));
        assert_eq!(ack.cseq().unwrap().number, 7);
        assert_eq!(ack.values(HeaderName::Via).count(), 1);
    }

    #[test]
    fn options_probe_parses() {
        let mut out = BytesMut::new();
        OptionsRequest {
            method: Method::Options,
            target: b"sip:10.0.1.10:5080",
            transport: "UDP",
            sent_by: b"203.0.113.5:5060",
            branch: b"z9hG4bK-probe-1",
            from_uri: b"sip:sipedge@203.0.113.5",
            from_tag: b"t1",
            call_id: b"probe-1@203.0.113.5",
            cseq: 42,
            user_agent: Some(b"sipedge"),
        }
        .write(&mut out);
        let m = Message::parse(&out).unwrap();
        m.validate().unwrap();
        assert_eq!(m.method(), Some(Method::Options));
        assert_eq!(m.cseq().unwrap().number, 42);
        assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bK-probe-1"[..]));
        assert_eq!(m.max_forwards().unwrap(), Some(70));
    }
}
