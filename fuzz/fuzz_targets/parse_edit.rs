//! Fuzz target `parse_edit`: arbitrary bytes through the SIP message layer.
//!
//! - Stream framing and datagram parsing must never panic.
//! - A message that parses answers every typed accessor without panicking,
//!   and an editor with no edits re-emits it byte for byte.
//! - A request that passes `validate()` (and may still be forwarded) gets
//!   the proxy's forwarding edit (new top Via, Record-Route, Max-Forwards
//!   one lower or 70, Route pop, received/rport); the output must re-parse and
//!   the edit must have held while every other header and the body stayed
//!   exactly as received.
//! - A response with a Via gets its top Via value removed, with the same
//!   kind of check.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sipedge::sip::{
    frame_stream, Editor, HeaderName, Host, Message, NameAddr, Response, Rport, StreamFrame, Uri,
    Via, DEFAULT_MAX_MESSAGE,
};

const NEW_VIA: &[u8] = b"SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKfuzz;rport";
const NEW_RR: &[u8] = b"<sip:203.0.113.5;lr>";
const SRC_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const SRC_PORT: u16 = 4000;

fuzz_target!(|data: &[u8]| {
    stream(data);
    let Ok(m) = Message::parse(data) else {
        return;
    };
    accessors(&m, data);
    identity(&m);
    if m.is_request() {
        forward(&m);
        respond(&m);
    } else {
        relay_response(&m);
    }
});

fn src() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SRC_IP), SRC_PORT)
}

/// Stream framing: never panics, lengths stay inside the buffer, and a
/// framed message goes through the parser (which may refuse it).
fn stream(data: &[u8]) {
    for max in [DEFAULT_MAX_MESSAGE, 256] {
        match frame_stream(data, max) {
            Ok(StreamFrame::Message { len }) => {
                assert!(
                    len > 0 && len <= data.len() && len <= max,
                    "frame len {len}"
                );
                if let Ok(m) = Message::parse(&data[..len]) {
                    accessors(&m, &data[..len]);
                }
            }
            Ok(StreamFrame::KeepAlive { len, ping }) => {
                assert!(len >= 1 && len <= data.len(), "keep-alive len {len}");
                assert!(data[..len].iter().all(|&b| b == b'\r' || b == b'\n'));
                assert_eq!(ping, len == 4);
            }
            Err(_) => {}
        }
    }
}

fn via_accessors(v: &Via<'_>) {
    let _ = (
        v.protocol,
        v.version,
        v.transport,
        v.host_raw,
        v.host.ip(),
        v.port,
    );
    let _ = v.as_bytes();
    let _ = v.params_bytes();
    for p in v.params() {
        let _ = p.map(|p| (p.name, p.value));
    }
    let _ = v.branch();
    let _ = v.has_rfc3261_branch();
    let _ = v.rport();
    let _ = v.received();
    let _ = v.is_reliable();
}

fn uri_accessors(u: &Uri<'_>) {
    let _ = (
        u.scheme,
        u.user,
        u.host_raw,
        u.host.map(|h| h.ip()),
        u.port,
        u.headers,
    );
    let _ = u.as_bytes();
    for p in u.params() {
        let _ = p.map(|p| (p.name, p.value));
    }
    let _ = u.param(b"lr");
    let _ = u.param(b"transport");
    let _ = u.is_sip();
}

fn addr_accessors(a: &NameAddr<'_>) {
    let _ = (a.display, a.uri, a.angle);
    for p in a.params() {
        let _ = p.map(|p| (p.name, p.value));
    }
    let _ = a.tag();
    if let Ok(u) = Uri::parse(a.uri) {
        uri_accessors(&u);
    }
}

/// Every accessor on a parsed message: none may panic, and the few
/// relations that must hold between them do.
fn accessors(m: &Message<'_>, data: &[u8]) {
    let bytes = m.as_bytes();
    assert!(bytes.len() <= data.len());
    assert_eq!(m.len(), bytes.len());
    assert_eq!(m.is_empty(), bytes.is_empty());
    let _ = m.start_line();
    assert_eq!(m.is_request(), m.method().is_some());
    assert_eq!(m.is_request(), m.status().is_none());
    assert_eq!(m.is_request(), m.request_uri_bytes().is_some());
    if let Ok(u) = m.request_uri() {
        uri_accessors(&u);
    }
    let body = m.body();
    assert!(bytes.ends_with(body));
    if let Some(cl) = m.content_length() {
        assert_eq!(body.len(), cl, "body length vs Content-Length");
    }
    assert_eq!(m.headers().count(), m.header_count());
    for h in m.headers() {
        assert_eq!(HeaderName::from_bytes(h.name_bytes), h.name);
        let _ = m.header_by_name(h.name_bytes);
    }
    for name in HeaderName::ALL {
        let _ = m.header(name);
        let lines = m.count(name);
        let values = m.values(name).count();
        if name != HeaderName::Other {
            assert_eq!(
                lines,
                m.headers().filter(|h| h.name == name).count(),
                "count({name:?})"
            );
            if name.is_list() {
                assert!(values >= lines, "values({name:?})");
            } else {
                assert_eq!(values, lines, "values({name:?})");
            }
        }
        let _ = name.as_str();
    }
    for v in m.values(HeaderName::Via) {
        if let Ok(v) = Via::parse(v) {
            via_accessors(&v);
        }
    }
    for name in [
        HeaderName::Route,
        HeaderName::RecordRoute,
        HeaderName::Contact,
    ] {
        for v in m.values(name) {
            if let Ok(a) = NameAddr::parse(v) {
                addr_accessors(&a);
            }
        }
    }
    let top_via = m.top_via();
    if let Ok(v) = &top_via {
        via_accessors(v);
    }
    let cseq = m.cseq();
    let call_id = m.call_id();
    let from = m.from();
    let to = m.to();
    for a in [&from, &to].into_iter().flatten() {
        addr_accessors(a);
    }
    let _ = m.from_tag();
    let _ = m.to_tag();
    let mf = m.max_forwards();
    if let Ok(Some(r)) = m.first_route() {
        let _ = r.is_loose();
        addr_accessors(&r.addr);
        uri_accessors(&r.uri);
    }
    if let Ok(()) = m.validate() {
        // validate() promises these parse.
        assert!(top_via.is_ok(), "validated but top_via: {top_via:?}");
        assert!(cseq.is_ok() && call_id.is_ok() && from.is_ok() && to.is_ok());
        assert!(mf.is_ok());
        if m.is_request() {
            assert!(m.request_uri().is_ok());
            assert_eq!(
                cseq.unwrap().method.as_bytes(),
                m.method().unwrap().as_bytes()
            );
        }
    }
}

/// No edits: the output is the message exactly as received.
fn identity(m: &Message<'_>) {
    let mut ed = Editor::new();
    let out = ed.edit(m).finish();
    assert_eq!(out, m.as_bytes(), "no-edit output differs");
}

fn line_values<'a>(m: &Message<'a>, name: HeaderName) -> Vec<&'a [u8]> {
    m.headers()
        .filter(|h| h.name == name)
        .map(|h| h.value)
        .collect()
}

/// The headers the forwarding edit must not touch, in order.
fn untouched<'a>(m: &Message<'a>, edited: &[HeaderName]) -> Vec<(&'a [u8], &'a [u8])> {
    m.headers()
        .filter(|h| !edited.contains(&h.name))
        .map(|h| (h.name_bytes, h.value))
        .collect()
}

/// How many values one Route line holds, as the message layer splits them.
fn route_line_value_count(value: &[u8]) -> usize {
    let mut mini = b"OPTIONS sip:x SIP/2.0\r\nRoute: ".to_vec();
    mini.extend_from_slice(value);
    mini.extend_from_slice(b"\r\n\r\n");
    let m = Message::parse(&mini).expect("one Route line re-parses");
    assert_eq!(m.header_count(), 1);
    m.values(HeaderName::Route).count()
}

/// A value as seen from its own start. After the value before it is removed
/// a value starts the header line, and the line parser skips bytes the
/// comma splitter keeps at a value's start (a bare CR before LWS, as in
/// `V:,\r \n r`): only those leading bytes may differ, never what follows.
fn norm(v: &[u8]) -> &[u8] {
    let i = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(v.len());
    &v[i..]
}

fn norms<'a>(vs: &[&'a [u8]]) -> Vec<&'a [u8]> {
    vs.iter().map(|v| norm(v)).collect()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The proxy's forwarding edit on a request it would forward.
fn forward(m: &Message<'_>) {
    if m.validate().is_err() {
        return;
    }
    let mf = m.max_forwards().expect("validated");
    if mf == Some(0) {
        let mut ed = Editor::new();
        let mut e = ed.edit(m);
        assert!(e.decrement_max_forwards().is_err());
        return;
    }
    let orig_top = m.top_via().expect("validated");
    let mut ed = Editor::new();
    let mut e = ed.edit(m);
    e.insert_via(NEW_VIA);
    e.insert_record_route(NEW_RR);
    e.decrement_max_forwards()
        .expect("decrement on a validated Max-Forwards > 0");
    let popped = e.pop_route();
    assert_eq!(popped, m.count(HeaderName::Route) > 0);
    assert!(!e.pop_route(), "second pop_route");
    e.set_received(src())
        .expect("set_received on a validated Via");
    let out = e.finish().to_vec();

    let o = Message::parse(&out)
        .unwrap_or_else(|err| panic!("forwarded output does not parse ({err:?}):\n{}", show(&out)));
    assert_eq!(o.as_bytes(), &out[..], "output framed short");
    if let Err(err) = o.validate() {
        panic!("forwarded output fails validate ({err:?}):\n{}", show(&out));
    }
    assert_eq!(o.method(), m.method());
    assert_eq!(o.request_uri_bytes(), m.request_uri_bytes());

    // New top Via.
    let top = o.top_via().expect("top Via");
    assert_eq!(top.as_bytes(), NEW_VIA);
    assert_eq!(top.host, Host::Ipv4(Ipv4Addr::new(203, 0, 113, 5)));
    assert_eq!(top.port, Some(5060));
    assert_eq!(top.branch(), Some(&b"z9hG4bKfuzz"[..]));

    // The received Via: received/rport set, nothing else changed.
    let mv: Vec<_> = m.values(HeaderName::Via).collect();
    let ov: Vec<_> = o.values(HeaderName::Via).collect();
    assert_eq!(ov.len(), mv.len() + 1, "Via values:\n{}", show(&out));
    assert_eq!(ov[2..], mv[1..], "lower Via values changed");
    assert_eq!(o.count(HeaderName::Via), m.count(HeaderName::Via) + 1);
    let patched = Via::parse(ov[1]).expect("patched Via parses");
    assert_eq!(patched.transport, orig_top.transport);
    assert_eq!(patched.host_raw, orig_top.host_raw);
    assert_eq!(patched.port, orig_top.port);
    assert_eq!(patched.branch(), orig_top.branch());
    let rport_asked = orig_top.rport() != Rport::Absent;
    if rport_asked {
        assert_eq!(patched.rport(), Rport::Value(SRC_PORT), "{}", show(ov[1]));
    }
    let needs_received =
        rport_asked || orig_top.host.ip().map(|ip| ip.to_canonical()) != Some(IpAddr::V4(SRC_IP));
    if needs_received {
        let has = patched.params().flatten().any(|p| {
            p.name.eq_ignore_ascii_case(b"received") && p.value == Some(&b"192.0.2.7"[..])
        });
        assert!(has, "no received=192.0.2.7 in {}", show(ov[1]));
    } else {
        assert_eq!(ov[1], mv[0], "Via changed though no received was due");
    }

    // Record-Route on top of the existing ones.
    let mrr: Vec<_> = m.values(HeaderName::RecordRoute).collect();
    let orr: Vec<_> = o.values(HeaderName::RecordRoute).collect();
    assert_eq!(orr.len(), mrr.len() + 1);
    assert_eq!(orr[0], NEW_RR);
    assert_eq!(orr[1..], mrr[..]);
    assert_eq!(
        o.count(HeaderName::RecordRoute),
        m.count(HeaderName::RecordRoute) + 1
    );

    // Max-Forwards one lower, or 70 added.
    assert_eq!(
        o.max_forwards(),
        Ok(Some(mf.map_or(70, |n| n - 1))),
        "{}",
        show(&out)
    );
    assert_eq!(o.count(HeaderName::MaxForwards), 1);

    // The first Route value popped, the others as they were.
    let mr: Vec<_> = m.values(HeaderName::Route).collect();
    let or: Vec<_> = o.values(HeaderName::Route).collect();
    assert_eq!(
        norms(&or),
        norms(&mr[mr.len().min(1)..]),
        "Route values:\n{}",
        show(&out)
    );
    let mrl = line_values(m, HeaderName::Route);
    let orl = line_values(&o, HeaderName::Route);
    let mut route_line_removed = 0;
    if let Some(first) = mrl.first() {
        if route_line_value_count(first) == 1 {
            route_line_removed = 1;
            assert_eq!(orl[..], mrl[1..], "Route lines");
        } else {
            assert_eq!(orl.len(), mrl.len(), "Route lines");
            assert_eq!(orl[1..], mrl[1..], "Route lines");
            assert!(first.ends_with(orl[0]) && orl[0].len() < first.len());
        }
    } else {
        assert!(orl.is_empty());
    }

    // Header count, untouched headers, body.
    assert_eq!(
        o.header_count(),
        m.header_count() + 2 + usize::from(mf.is_none()) - route_line_removed,
        "header count:\n{}",
        show(&out)
    );
    let edited = [
        HeaderName::Via,
        HeaderName::Route,
        HeaderName::RecordRoute,
        HeaderName::MaxForwards,
    ];
    assert_eq!(
        untouched(&o, &edited),
        untouched(m, &edited),
        "other headers changed:\n{}",
        show(&out)
    );
    assert_eq!(o.content_length(), m.content_length());
    assert_eq!(o.body(), m.body(), "body changed");
}

/// A local response to a validated request: must build and parse.
fn respond(m: &Message<'_>) {
    if m.validate().is_err() {
        return;
    }
    let mut out = BytesMut::new();
    Response::new(m, 486, b"Busy Here", b"fuzztag")
        .received(src())
        .write(&mut out);
    let r = Message::parse(&out)
        .unwrap_or_else(|err| panic!("local response does not parse ({err:?}):\n{}", show(&out)));
    assert_eq!(r.status(), Some(486));
    assert_eq!(r.call_id(), m.call_id());
    assert_eq!(r.cseq(), m.cseq());
    assert_eq!(
        r.values(HeaderName::Via).count(),
        m.values(HeaderName::Via).count()
    );
    assert_eq!(r.body(), b"");
}

/// A proxy relaying a response: the top Via value goes, nothing else.
fn relay_response(m: &Message<'_>) {
    if m.count(HeaderName::Via) == 0 {
        return;
    }
    let mut ed = Editor::new();
    let mut e = ed.edit(m);
    assert!(e.remove_top_via());
    assert!(!e.remove_top_via());
    let out = e.finish().to_vec();
    let o = Message::parse(&out)
        .unwrap_or_else(|err| panic!("relayed response does not parse ({err:?}):\n{}", show(&out)));
    assert_eq!(o.status(), m.status());
    let mv: Vec<_> = m.values(HeaderName::Via).collect();
    let ov: Vec<_> = o.values(HeaderName::Via).collect();
    assert_eq!(norms(&ov), norms(&mv[1..]), "Via values:\n{}", show(&out));
    assert_eq!(
        untouched(&o, &[HeaderName::Via]),
        untouched(m, &[HeaderName::Via])
    );
    assert_eq!(o.body(), m.body());
}
