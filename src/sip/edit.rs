//! The editor: builds the forwarded bytes by splicing a few edits into a
//! copy of the received message. Untouched bytes (header-name case, compact
//! forms, folding, reason phrases, binary bodies) go out exactly as they
//! came in. The buffers are reused, so a warm editor does not allocate.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};

use super::error::SipError;
use super::header::HeaderName;
use super::message::Message;
use super::scan::{self, CommaValues};
use super::via::Via;

/// One edit: replace `buf[at..end]` with `scratch[ins.0..ins.1]`.
#[derive(Debug, Clone, Copy)]
struct Splice {
    at: u32,
    end: u32,
    ins: (u32, u32),
}

/// Reusable buffers for editing messages.
#[derive(Debug, Default)]
pub struct Editor {
    out: BytesMut,
    scratch: Vec<u8>,
    splices: Vec<Splice>,
}

impl Editor {
    pub fn new() -> Self {
        Self::with_capacity(4096)
    }

    pub fn with_capacity(n: usize) -> Self {
        Editor {
            out: BytesMut::with_capacity(n),
            scratch: Vec::with_capacity(512),
            splices: Vec::with_capacity(8),
        }
    }

    /// Starts editing `msg`; the output of a previous edit is discarded.
    /// The output borrows only the editor, so it outlives `msg`.
    pub fn edit<'e, 'r, 'm>(&'e mut self, msg: &'r Message<'m>) -> Edit<'e, 'r, 'm> {
        self.scratch.clear();
        self.splices.clear();
        Edit {
            ed: self,
            msg,
            via_removed: false,
            route_popped: false,
        }
    }

    /// The last output as owned bytes (for a transaction to keep for
    /// retransmission). The editor's buffer is then rebuilt on next use.
    pub fn take(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    /// The last output.
    pub fn output(&self) -> &[u8] {
        &self.out
    }
}

/// Edits in progress on one message; [`Edit::finish`] writes the result.
pub struct Edit<'e, 'r, 'm> {
    ed: &'e mut Editor,
    msg: &'r Message<'m>,
    via_removed: bool,
    route_popped: bool,
}

/// Up to two in-place changes to a Via value: its `rport` and `received`
/// parameters. Kept inline so building a response needs no allocation.
pub(crate) struct ViaPatch {
    parts: [(u32, u32, Text); 2],
    n: usize,
}

impl ViaPatch {
    pub(crate) fn parts(&self) -> impl Iterator<Item = (usize, usize, &[u8])> {
        self.parts[..self.n]
            .iter()
            .map(|(a, e, t)| (*a as usize, *e as usize, t.as_bytes()))
    }
}

/// A small inline text buffer (a parameter with an address and a port).
#[derive(Clone, Copy)]
pub(crate) struct Text {
    buf: [u8; 64],
    len: usize,
}

impl Text {
    const fn new() -> Self {
        Text {
            buf: [0; 64],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, b: &[u8]) {
        // Callers write at most ";received=" and an address: 64 is enough.
        let end = (self.len + b.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&b[..end - self.len]);
        self.len = end;
    }

    /// Decimal digits without `fmt` (on the path of every request).
    fn push_u32(&mut self, mut n: u32) {
        let mut d = [0u8; 10];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }

    fn push_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                for (i, o) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b".");
                    }
                    self.push_u32(u32::from(o));
                }
            }
            // Rare enough for fmt; RFC 5118 §4.5: no brackets in received.
            IpAddr::V6(a) => {
                let _ = write!(self, "{a}");
            }
        }
    }
}

impl std::fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let b = s.as_bytes();
        let dst = self
            .buf
            .get_mut(self.len..self.len + b.len())
            .ok_or(std::fmt::Error)?;
        dst.copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}

/// RFC 3261 §18.2.1 and RFC 3581 §4: a server that receives a request
/// adds `received` when the sent-by host is not the source address, and
/// when the client asked with `rport` it fills in the source port and
/// always adds `received`. An existing value is replaced.
pub(crate) fn received_patch(buf: &[u8], via: &Via<'_>, src: SocketAddr) -> ViaPatch {
    let ip = src.ip().to_canonical();
    let mut patch = ViaPatch {
        parts: [(0, 0, Text::new()); 2],
        n: 0,
    };
    let rport = via.rport_param();
    let received = via.received_param();
    let via_end = (scan::offset_in(buf, via.as_bytes()) + via.as_bytes().len()) as u32;
    let mut push = |at: usize, end: usize, prefix: &[u8], f: &dyn Fn(&mut Text)| {
        let part = &mut patch.parts[patch.n];
        part.0 = at as u32;
        part.1 = end as u32;
        part.2.push(prefix);
        f(&mut part.2);
        patch.n += 1;
    };
    let port = |t: &mut Text| t.push_u32(u32::from(src.port()));
    let addr = |t: &mut Text| t.push_ip(ip);
    if let Some(p) = rport {
        match p.value {
            Some(v) => {
                let at = scan::offset_in(buf, v);
                push(at, at + v.len(), b"", &port);
            }
            None => {
                let at = scan::offset_in(buf, p.name) + p.name.len();
                push(at, at, b"=", &port);
            }
        }
    }
    if rport.is_some() || via.host.ip().map(|h| h.to_canonical()) != Some(ip) {
        match received.and_then(|p| p.value) {
            Some(v) => {
                let at = scan::offset_in(buf, v);
                push(at, at + v.len(), b"", &addr);
            }
            None => {
                let at = via_end as usize;
                push(at, at, b";received=", &addr);
            }
        }
    }
    // Keep the parts in buffer order for the writers.
    if patch.n == 2 && patch.parts[1].0 < patch.parts[0].0 {
        patch.parts.swap(0, 1);
    }
    patch
}

impl<'e> Edit<'e, '_, '_> {
    fn splice(&mut self, at: usize, end: usize, parts: &[&[u8]]) {
        self.splice_iter(at, end, parts.iter().copied());
    }

    /// [`Edit::splice`] with the inserted text as any sequence of pieces.
    fn splice_iter<'p>(&mut self, at: usize, end: usize, parts: impl Iterator<Item = &'p [u8]>) {
        let s = self.ed.scratch.len() as u32;
        for p in parts {
            self.ed.scratch.extend_from_slice(p);
        }
        let sp = Splice {
            at: at as u32,
            end: end as u32,
            ins: (s, self.ed.scratch.len() as u32),
        };
        // Stable insertion by position: edits at the same place keep the
        // order in which they were made.
        let i = self
            .ed
            .splices
            .iter()
            .rposition(|x| x.at <= sp.at)
            .map_or(0, |i| i + 1);
        self.ed.splices.insert(i, sp);
    }

    fn insert_line(&mut self, at: usize, name: HeaderName, value: &[u8]) {
        self.splice(at, at, &[name.as_str().as_bytes(), b": ", value, b"\r\n"]);
    }

    /// Inserts `Via: <value>` above the topmost Via (RFC 3261 §16.6 step 8).
    pub fn insert_via(&mut self, value: &[u8]) {
        self.insert_via_parts(&[value]);
    }

    /// [`Edit::insert_via`] with the value given in pieces (a constant
    /// prefix, the branch, a suffix), so the caller need not join them.
    pub fn insert_via_parts(&mut self, value: &[&[u8]]) {
        let at = match self.msg.first_index(HeaderName::Via) {
            Some(i) => self.msg.line_start(i),
            None => self.msg.headers_end(),
        };
        let name: [&[u8]; 2] = [HeaderName::Via.as_str().as_bytes(), b": "];
        let parts = name
            .into_iter()
            .chain(value.iter().copied())
            .chain(std::iter::once(&b"\r\n"[..]));
        self.splice_iter(at, at, parts);
    }

    /// Inserts `Record-Route: <value>` above any existing Record-Route (at
    /// the top of the headers when there is none).
    pub fn insert_record_route(&mut self, value: &[u8]) {
        self.insert_record_route_parts(&[value]);
    }

    /// [`Edit::insert_record_route`] with the value given in pieces (the
    /// constant part, a per-call parameter, the closing `>`). Two inserted
    /// in one edit keep their order: the first on top.
    pub fn insert_record_route_parts(&mut self, value: &[&[u8]]) {
        let at = match self.msg.first_index(HeaderName::RecordRoute) {
            Some(i) => self.msg.line_start(i),
            None => self.msg.first_header_start(),
        };
        let name: [&[u8]; 2] = [HeaderName::RecordRoute.as_str().as_bytes(), b": "];
        let parts = name
            .into_iter()
            .chain(value.iter().copied())
            .chain(std::iter::once(&b"\r\n"[..]));
        self.splice_iter(at, at, parts);
    }

    /// Adds a header line at the end of the headers.
    pub fn append_header(&mut self, name: &[u8], value: &[u8]) {
        let at = self.msg.headers_end();
        self.splice(at, at, &[name, b": ", value, b"\r\n"]);
    }

    /// Removes the first value of the first `name` header: the whole line
    /// when it holds one value, else that value and its comma.
    fn remove_first_value(&mut self, name: HeaderName) -> bool {
        let Some(i) = self.msg.first_index(name) else {
            return false;
        };
        let e = *self.msg.entry(i);
        let buf = self.msg.as_bytes();
        let value = &buf[e.value_start as usize..e.value_end as usize];
        let mut vals = CommaValues::new(value);
        vals.next();
        match vals.next() {
            Some(second) => {
                let end = scan::offset_in(buf, second);
                self.splice(e.value_start as usize, end, &[]);
            }
            None => {
                let (a, b) = self.msg.line_range(i);
                self.splice(a, b, &[])
            }
        }
        true
    }

    /// Removes the topmost Via value (a proxy relaying a response, RFC 3261
    /// §16.7 step 3). Returns false if there was none.
    pub fn remove_top_via(&mut self) -> bool {
        if self.via_removed {
            return false;
        }
        self.via_removed = self.remove_first_value(HeaderName::Via);
        self.via_removed
    }

    /// Removes the first Route value (our own, RFC 3261 §16.4). Returns
    /// false if there was none.
    pub fn pop_route(&mut self) -> bool {
        self.pop_routes(1) == 1
    }

    /// Removes the first `n` Route values: ours, one, or two after a
    /// double Record-Route (a call bridged between transports). Whole lines
    /// go when all their values do. Returns how many were removed.
    pub fn pop_routes(&mut self, n: usize) -> usize {
        if self.route_popped || n == 0 {
            return 0;
        }
        let Some(first) = self.msg.first_index(HeaderName::Route) else {
            return 0;
        };
        let mut left = n;
        for i in first..self.msg.header_count() {
            if left == 0 {
                break;
            }
            let e = *self.msg.entry(i);
            if e.name != HeaderName::Route {
                continue;
            }
            let buf = self.msg.as_bytes();
            let value = &buf[e.value_start as usize..e.value_end as usize];
            match CommaValues::new(value).nth(left) {
                // Values remain on this line: cut up to the first kept one.
                Some(kept) => {
                    let end = scan::offset_in(buf, kept);
                    self.splice(e.value_start as usize, end, &[]);
                    left = 0;
                }
                None => {
                    left -= CommaValues::new(value).count().min(left);
                    let (a, b) = self.msg.line_range(i);
                    self.splice(a, b, &[]);
                }
            }
        }
        let removed = n - left;
        self.route_popped = removed > 0;
        removed
    }

    /// Writes `received`/`rport` into the top Via of a received request.
    pub fn set_received(&mut self, src: SocketAddr) -> Result<(), SipError> {
        let via = self.msg.top_via()?;
        let patch = received_patch(self.msg.as_bytes(), via, src);
        for (at, end, text) in patch.parts() {
            self.splice(at, end, &[text]);
        }
        Ok(())
    }

    /// Decrements Max-Forwards, or adds `Max-Forwards: 70` when absent
    /// (RFC 3261 §16.6 step 3). Fails with `TooManyHops` at 0: the caller
    /// answers 483 instead of forwarding.
    pub fn decrement_max_forwards(&mut self) -> Result<(), SipError> {
        match self.msg.max_forwards()? {
            Some(0) => Err(SipError::TooManyHops),
            Some(n) => {
                let i = self
                    .msg
                    .first_index(HeaderName::MaxForwards)
                    .ok_or(SipError::BadMaxForwards)?;
                let e = *self.msg.entry(i);
                let mut t = Text::new();
                t.push_u32(u32::from(n - 1));
                self.splice(
                    e.value_start as usize,
                    e.value_end as usize,
                    &[t.as_bytes()],
                );
                Ok(())
            }
            None => {
                let at = self.msg.headers_end();
                self.insert_line(at, HeaderName::MaxForwards, b"70");
                Ok(())
            }
        }
    }

    /// Replaces the Request-URI.
    pub fn set_request_uri(&mut self, uri: &[u8]) -> Result<(), SipError> {
        let (a, b) = self.msg.uri_range().ok_or(SipError::BadStartLine)?;
        self.splice(a, b, &[uri]);
        Ok(())
    }

    /// Writes the edited message into the editor's buffer and returns it.
    pub fn finish(self) -> &'e [u8] {
        let buf = self.msg.as_bytes();
        let ed = self.ed;
        ed.out.clear();
        ed.out.reserve(buf.len() + ed.scratch.len());
        let mut cursor = 0usize;
        for sp in &ed.splices {
            // Edits never overlap; clamping keeps a misuse from panicking.
            let at = (sp.at as usize).max(cursor);
            ed.out.extend_from_slice(&buf[cursor..at]);
            ed.out
                .extend_from_slice(&ed.scratch[sp.ins.0 as usize..sp.ins.1 as usize]);
            cursor = (sp.end as usize).max(at);
        }
        ed.out.extend_from_slice(&buf[cursor..]);
        &ed.out[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP x.example;branch=z9hG4bKb\r\n\
Max-Forwards: 0068\r\n\
Route: <sip:edge.example;lr>, <sip:next.example;lr>\r\n\
To: <sip:bob@b.example>\r\n\
f: <sip:alice@a.example>;tag=1\r\n\
i: c1\r\n\
CSeq: 1 INVITE\r\n\
l: 3\r\n\r\nabc";

    fn edit(f: impl FnOnce(&mut Edit<'_, '_, '_>)) -> Vec<u8> {
        let m = Message::parse(REQ).unwrap();
        let mut ed = Editor::new();
        let mut e = ed.edit(&m);
        f(&mut e);
        e.finish().to_vec()
    }

    #[test]
    fn via_from_pieces_keeps_every_piece() {
        let out = edit(|e| {
            e.insert_via_parts(&[
                b"SIP/2.0/UDP ",
                b"203.0.113.5",
                b":5060",
                b";branch=",
                b"z9hG4bKx",
                b";rport",
            ]);
        });
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\r\nVia: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKx;rport\r\nVia: SIP/2.0/UDP 10.0.0.9"),
            "{text}"
        );
    }

    #[test]
    fn two_routes_popped_across_lines_and_double_record_route_in_order() {
        // Ours twice (a double Record-Route), on one line or on two.
        let two_lines = b"BYE sip:a@192.0.2.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKa\r\n\
Route: <sip:edge;lr>\r\n\
Route: <sip:edge;transport=tcp;lr>, <sip:next;lr>\r\n\
To: <sip:a@b>;tag=2\r\nFrom: <sip:b@a>;tag=1\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n";
        let m = Message::parse(two_lines).unwrap();
        let mut ed = Editor::new();
        let mut e = ed.edit(&m);
        assert_eq!(e.pop_routes(2), 2);
        assert_eq!(e.pop_routes(1), 0, "one pop per edit");
        e.insert_record_route(b"<sip:edge;lr>");
        // In pieces, as the proxy adds a per-call parameter.
        e.insert_record_route_parts(&[b"<sip:edge;transport=tcp;lr;node=", b"ab", b">"]);
        let out = String::from_utf8(e.finish().to_vec()).unwrap();
        assert!(out.contains("Route: <sip:next;lr>\r\n"), "{out}");
        assert!(!out.contains("\nRoute: <sip:edge"), "{out}");
        let first = out.find("Record-Route: <sip:edge;lr>").unwrap();
        let second = out
            .find("Record-Route: <sip:edge;transport=tcp;lr;node=ab>\r\n")
            .unwrap();
        assert!(first < second, "the first inserted stays on top: {out}");
        // More asked than there are: all go.
        let mut ed = Editor::new();
        let mut e = ed.edit(&m);
        assert_eq!(e.pop_routes(5), 3);
        let out = String::from_utf8(e.finish().to_vec()).unwrap();
        assert!(!out.contains("\nRoute:"), "{out}");
    }

    #[test]
    fn forwarding_edits() {
        let out = edit(|e| {
            e.insert_via(b"SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKnew;rport");
            e.insert_record_route(b"<sip:203.0.113.5;lr>");
            e.decrement_max_forwards().unwrap();
            assert!(e.pop_route());
            assert!(!e.pop_route());
            e.set_received("192.0.2.7:4000".parse().unwrap()).unwrap();
        });
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKnew;rport\r\n\
Record-Route: <sip:203.0.113.5;lr>\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKa;rport=4000;received=192.0.2.7, SIP/2.0/UDP x.example;branch=z9hG4bKb\r\n\
Max-Forwards: 67\r\n\
Route: <sip:next.example;lr>\r\n\
To: <sip:bob@b.example>\r\n\
f: <sip:alice@a.example>;tag=1\r\n\
i: c1\r\n\
CSeq: 1 INVITE\r\n\
l: 3\r\n\r\nabc"
        );
    }

    #[test]
    fn response_via_removal_and_uri() {
        let out = edit(|e| {
            e.remove_top_via();
            e.set_request_uri(b"sip:bob@10.0.1.10:5080").unwrap();
        });
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("INVITE sip:bob@10.0.1.10:5080 SIP/2.0\r\nVia: SIP/2.0/UDP x.example;branch=z9hG4bKb\r\n"));
    }

    #[test]
    fn max_forwards_absent_or_zero() {
        let m = Message::parse(
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        )
        .unwrap();
        let mut ed = Editor::new();
        let mut e = ed.edit(&m);
        e.decrement_max_forwards().unwrap();
        assert!(e.finish().ends_with(b"\r\nMax-Forwards: 70\r\n\r\n"));
        let m = Message::parse(b"OPTIONS sip:a@b SIP/2.0\r\nMax-Forwards: 0\r\n\r\n").unwrap();
        let mut e = ed.edit(&m);
        assert_eq!(e.decrement_max_forwards(), Err(SipError::TooManyHops));
    }

    #[test]
    fn received_rules() {
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let patch = |via: &[u8]| {
            let v = Via::parse(via).unwrap();
            let p = received_patch(via, &v, src);
            let mut out = Vec::new();
            let mut c = 0;
            for (a, e, t) in p.parts() {
                out.extend_from_slice(&via[c..a]);
                out.extend_from_slice(t);
                c = e;
            }
            out.extend_from_slice(&via[c..]);
            String::from_utf8(out).unwrap()
        };
        // Same host, no rport: untouched.
        assert_eq!(
            patch(b"SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1"),
            "SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1"
        );
        assert_eq!(
            patch(b"SIP/2.0/UDP h.example;branch=z9hG4bK1"),
            "SIP/2.0/UDP h.example;branch=z9hG4bK1;received=192.0.2.7"
        );
        assert_eq!(
            patch(b"SIP/2.0/UDP 192.0.2.7;rport=1;received=10.1.1.1;branch=z9hG4bK1"),
            "SIP/2.0/UDP 192.0.2.7;rport=4000;received=192.0.2.7;branch=z9hG4bK1"
        );
        let v6: SocketAddr = "[2001:db8::9]:5060".parse().unwrap();
        let via = b"SIP/2.0/UDP [2001:db8::1];rport";
        let p = received_patch(via, &Via::parse(via).unwrap(), v6);
        let texts: Vec<_> = p.parts().map(|(_, _, t)| t.to_vec()).collect();
        assert_eq!(
            texts,
            vec![b"=5060".to_vec(), b";received=2001:db8::9".to_vec()]
        );
    }
}
