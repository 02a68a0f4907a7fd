//! The message layer against the RFC 4475 and RFC 5118 torture messages and
//! Kamailio's test messages (exact bytes in `tests/fixtures/`, provenance in
//! `tests/fixtures/PROVENANCE.md`).
//!
//! Every valid message must parse, pass validation, re-emit byte-identical
//! when no edit is applied, and keep every untouched byte through the
//! forwarding edit. Every invalid one must fail with the typed error that
//! leads to the answer its `EXPECTED.tsv` row names. The proxy-level answers
//! (which code goes on the wire) are checked end to end by the proxy tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sipedge::sip::{Editor, HeaderName, Message, Rport, Scheme, SipError};

/// What the message layer must do with a fixture.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A valid request: parses, validates, forwards.
    Request,
    /// A valid request whose datagram carries octets past Content-Length:
    /// they are dropped (RFC 3261 §18.3).
    Truncated,
    /// A valid response (whether the proxy relays or drops it is decided by
    /// its Via, not by the parser).
    Response,
    /// Parse or validation fails with this error; the row's answer must
    /// name its status code (requests) or "drop" (responses).
    Error(SipError),
    /// Valid syntax that the proxy rejects: `check` shows the accessor it
    /// uses sees what it needs.
    ProxyReject(u16, fn(&Message<'_>)),
}

use Expect::*;

fn rfc4475() -> Vec<(&'static str, Expect)> {
    vec![
        // §3.1.1 valid
        (
            "wsinv",
            ProxyReject(481, |m| {
                // In-dialog (To tag) with a Route to a foreign host: the proxy
                // answers 481 for an unknown dialog; the parser must see it all.
                assert_eq!(m.to_tag().unwrap(), Some(&b"1918181833n"[..]));
                assert_eq!(m.max_forwards().unwrap(), Some(68));
                assert_eq!(m.cseq().unwrap().number, 9);
                assert_eq!(m.values(HeaderName::Via).count(), 3);
                assert!(m.first_route().unwrap().unwrap().is_loose());
                assert_eq!(
                    m.header_by_name(b"UnknownHeaderWithUnusualValue"),
                    Some(&b";;,,;;,;"[..])
                );
            }),
        ),
        ("intmeth", Request),
        ("esc01", Request),
        ("escnull", Request),
        ("esc02", Request),
        ("lwsdisp", Request),
        ("longreq", Request),
        ("dblreq", Truncated),
        ("semiuri", Request),
        ("transports", Request),
        ("mpart01", Request),
        ("unreason", Response),
        ("noreason", Response),
        // §3.1.2 invalid syntax
        ("badinv01", Error(SipError::BadVia)),
        ("clerr", Error(SipError::BodyShorterThanContentLength)),
        ("ncl", Error(SipError::BadContentLength)),
        ("scalar02", Error(SipError::BadCSeq)),
        ("scalarlg", Error(SipError::BadCSeq)),
        ("quotbal", Error(SipError::BadHeader(HeaderName::To))),
        ("ltgtruri", Error(SipError::BadRequestUri)),
        ("lwsruri", Error(SipError::BadStartLine)),
        ("lwsstart", Error(SipError::BadStartLine)),
        ("trws", Error(SipError::BadStartLine)),
        ("escruri", Error(SipError::BadRequestUri)),
        ("baddate", Request),
        ("regbadct", Request),
        ("badaspec", Request),
        // The archive copy lacks its final empty line (see PROVENANCE.md).
        ("baddn", Error(SipError::UnterminatedHeaders)),
        ("badvers", Error(SipError::UnsupportedVersion)),
        ("mismatch01", Error(SipError::CSeqMethodMismatch)),
        ("mismatch02", Error(SipError::CSeqMethodMismatch)),
        ("bigcode", Error(SipError::BadStartLine)),
        // §3.2 / §3.3 valid syntax, rejected by the application
        (
            "badbranch",
            ProxyReject(400, |m| {
                let via = m.top_via().unwrap();
                assert_eq!(via.branch(), Some(&b"z9hG4bK"[..]));
                assert!(!via.has_rfc3261_branch());
            }),
        ),
        ("insuf", Error(SipError::MissingHeader(HeaderName::From))),
        (
            "unkscm",
            ProxyReject(416, |m| {
                assert_eq!(m.request_uri().unwrap().scheme, Scheme::Other)
            }),
        ),
        (
            "novelsc",
            ProxyReject(416, |m| {
                assert_eq!(m.request_uri().unwrap().scheme, Scheme::Other)
            }),
        ),
        ("unksm2", Request),
        (
            "bext01",
            ProxyReject(420, |m| {
                let v: Vec<_> = m.values(HeaderName::ProxyRequire).collect();
                assert_eq!(
                    v,
                    vec![
                        &b"noProxiesSupportThis"[..],
                        &b"norDoAnyProxiesSupportThis"[..]
                    ]
                );
            }),
        ),
        ("invut", Request),
        ("regaut01", Request),
        (
            "multi01",
            Error(SipError::DuplicateHeader(HeaderName::From)),
        ),
        ("mcl01", Error(SipError::BadContentLength)),
        ("bcast", Response),
        (
            "zeromf",
            ProxyReject(483, |m| {
                assert_eq!(m.max_forwards().unwrap(), Some(0));
                let mut ed = Editor::new();
                let mut e = ed.edit(m);
                let err = e.decrement_max_forwards().unwrap_err();
                assert_eq!((err, err.status()), (SipError::TooManyHops, 483));
            }),
        ),
        ("cparam01", Request),
        ("cparam02", Request),
        ("regescrt", Request),
        ("sdp01", Request),
        ("inv2543", Request),
        ("test", Error(SipError::BadStartLine)),
    ]
}

fn rfc5118() -> Vec<(&'static str, Expect)> {
    vec![
        ("ipv6-good", Request),
        ("ipv6-bad", Error(SipError::BadRequestUri)),
        ("port-ambiguous", Request),
        ("port-unambiguous", Request),
        (
            "via-received-param-with-delim",
            ProxyReject(481, |m| {
                assert!(m.to_tag().unwrap().is_some());
                assert_eq!(
                    m.top_via().unwrap().received(),
                    Some(&b"[2001:db8::9:255]"[..])
                );
            }),
        ),
        ("via-received-param-no-delim", Request),
        ("ipv6-in-sdp", Error(SipError::BodyShorterThanContentLength)),
        (
            "mult-ip-in-header",
            ProxyReject(481, |m| {
                assert!(m.to_tag().unwrap().is_some());
                assert_eq!(m.values(HeaderName::Via).count(), 3);
            }),
        ),
        ("mult-ip-in-sdp", Truncated),
        ("ipv4-mapped-ipv6", Truncated),
        // Policy: RFC 4291 text form only (ersip does the same).
        ("ipv6-bug-abnf-3-colons", Error(SipError::BadRequestUri)),
        ("ipv6-correct-abnf-2-colons", Request),
    ]
}

/// Kamailio's messages come without expectations: these are what reading
/// each one shows (many are deliberately broken, most use bare LF).
fn kamailio() -> Vec<(&'static str, Expect)> {
    use SipError::*;
    vec![
        // Content-Length counts CRLF line ends but the file has bare LF.
        ("bad_uri", Error(BodyShorterThanContentLength)),
        ("bad_via1", Error(MissingHeader(HeaderName::From))),
        // "INVITE sip:x@y.z SIP/2.0/UDP": not a SIP version.
        ("bad_via2", Error(BadStartLine)),
        ("bad_via3", Error(BadStartLine)),
        ("bc2", Request),
        ("bye00", Truncated),
        ("bye_chris", Request),
        ("dns", Error(BodyShorterThanContentLength)),
        ("inv_srv", Error(BodyShorterThanContentLength)),
        ("invite00", Error(BodyShorterThanContentLength)),
        ("invite01", Request),
        ("invite02", Truncated),
        ("invite03", Truncated),
        ("invite04", Truncated),
        ("invite05", Truncated),
        // No To header.
        ("invite1", Error(MissingHeader(HeaderName::To))),
        ("invite3-callid", Error(BodyShorterThanContentLength)),
        ("invite4-cseq", Error(BodyShorterThanContentLength)),
        // "Call-ID; ..." has no colon.
        ("invite5-callid", Error(BadHeaderLine)),
        ("invite6-badbranch-via", Error(BodyShorterThanContentLength)),
        ("long", Error(BodyShorterThanContentLength)),
        ("message", Error(BodyShorterThanContentLength)),
        // A bare "text/plain" line.
        ("message02", Error(BadHeaderLine)),
        ("message03", Truncated),
        // Cut off in the middle of a Via.
        ("ms-invite-00-rpl", Error(UnterminatedHeaders)),
        ("ms-invite-00", Error(BodyShorterThanContentLength)),
        ("ms-invite-01-rpl", Response),
        ("msbye", Request),
        ("nmr", Error(BodyShorterThanContentLength)),
        ("no_eom_reply", Error(UnterminatedHeaders)),
        // From tag "7618c7618^": '^' is not a token character.
        ("pingtel", Error(BadHeader(HeaderName::From))),
        ("register", Truncated),
        ("register02", Truncated),
        ("register03", Truncated),
        ("register04", Truncated),
        ("repl1", Response),
        // Two spaces before SIP/2.0.
        ("req-test1", Error(BadStartLine)),
        ("req-tm1", Error(BadStartLine)),
        // "?c=d" headers in the Request-URI.
        ("req1", Error(BadRequestUri)),
        ("req2", Error(BadRequestUri)),
        ("route", Error(BodyShorterThanContentLength)),
        ("rport", Error(BadHeaderLine)),
        ("sg", Truncated),
        ("short_nonce", Error(UnterminatedHeaders)),
        // A reply without From.
        ("short_reply", Error(MissingHeader(HeaderName::From))),
    ]
}

fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
}

/// The fixture files of a directory, by name without extension.
fn files(dir: &str, ext: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(fixtures(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// `EXPECTED.tsv`: name -> proxy_action.
fn expected_tsv(dir: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixtures(dir).join("EXPECTED.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let cols: Vec<_> = l.split('\t').collect();
            (cols[0].to_owned(), cols[2].to_owned())
        })
        .collect()
}

/// Applies the forwarding edit and checks that it held and that nothing
/// else changed: the start line, every other header (name bytes and value
/// bytes, in order) and the body.
fn check_forwarding_edit(name: &str, m: &Message<'_>) {
    let mut ed = Editor::new();
    let mut e = ed.edit(m);
    e.insert_via(b"SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKconf;rport");
    e.insert_record_route(b"<sip:203.0.113.5;lr;n=a>");
    e.decrement_max_forwards().unwrap();
    let popped = e.pop_route();
    e.set_received("192.0.2.200:5999".parse().unwrap()).unwrap();
    let out = e.finish().to_vec();
    let f = Message::parse(&out).unwrap_or_else(|err| panic!("{name}: re-parse: {err:?}"));
    f.validate()
        .unwrap_or_else(|err| panic!("{name}: re-validate: {err:?}"));

    let via = f.top_via().unwrap();
    assert_eq!(via.host_raw, b"203.0.113.5", "{name}");
    assert_eq!(via.branch(), Some(&b"z9hG4bKconf"[..]), "{name}");
    let second = sipedge::sip::Via::parse(f.values(HeaderName::Via).nth(1).unwrap()).unwrap();
    assert_eq!(second.received(), Some(&b"192.0.2.200"[..]), "{name}");
    if m.top_via().unwrap().rport() != Rport::Absent {
        assert_eq!(second.rport(), Rport::Value(5999), "{name}");
    }
    let mf = m.max_forwards().unwrap().map_or(70, |n| n - 1);
    assert_eq!(f.max_forwards().unwrap(), Some(mf), "{name}");
    let rr: Vec<_> = f.values(HeaderName::RecordRoute).collect();
    assert_eq!(rr[0], b"<sip:203.0.113.5;lr;n=a>", "{name}");
    assert_eq!(
        rr.len(),
        m.values(HeaderName::RecordRoute).count() + 1,
        "{name}"
    );
    let routes = m.values(HeaderName::Route).count();
    assert_eq!(popped, routes > 0, "{name}");
    assert_eq!(
        f.values(HeaderName::Route).count(),
        routes.saturating_sub(1),
        "{name}"
    );
    assert!(
        f.values(HeaderName::Route)
            .eq(m.values(HeaderName::Route).skip(1)),
        "{name}: remaining Route values changed"
    );

    let untouched = |m: &Message<'_>| -> Vec<(Vec<u8>, Vec<u8>)> {
        m.headers()
            .filter(|h| {
                !matches!(
                    h.name,
                    HeaderName::Via
                        | HeaderName::Route
                        | HeaderName::RecordRoute
                        | HeaderName::MaxForwards
                )
            })
            .map(|h| (h.name_bytes.to_vec(), h.value.to_vec()))
            .collect()
    };
    assert_eq!(untouched(m), untouched(&f), "{name}: other headers changed");
    let start = |b: &[u8]| b[..memchr::memchr(b'\n', b).unwrap()].to_vec();
    assert_eq!(
        start(m.as_bytes()),
        start(&out),
        "{name}: start line changed"
    );
    assert_eq!(m.body(), f.body(), "{name}: body changed");
    assert!(out.ends_with(m.body()), "{name}");
}

fn run(
    dir: &str,
    ext: &str,
    table: Vec<(&'static str, Expect)>,
    tsv: Option<BTreeMap<String, String>>,
) {
    let files = files(dir, ext);
    let names: Vec<_> = table.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        {
            let mut n = names.clone();
            n.sort();
            n
        },
        "{dir}: every fixture has an expectation and vice versa"
    );
    if let Some(tsv) = &tsv {
        assert_eq!(tsv.len(), table.len(), "{dir}: EXPECTED.tsv rows");
    }
    for (name, expect) in table {
        let bytes = &files[name];
        let action = tsv.as_ref().map(|t| t[name].as_str());
        let parsed = Message::parse(bytes);
        match expect {
            Request | Truncated | ProxyReject(..) | Response => {
                let m = parsed.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                m.validate().unwrap_or_else(|e| panic!("{name}: {e:?}"));
                // Re-emitted byte for byte when nothing is edited.
                let mut ed = Editor::new();
                assert_eq!(ed.edit(&m).finish(), m.as_bytes(), "{name}");
                let framed_all = m.as_bytes() == &bytes[..];
                assert_eq!(framed_all, !matches!(expect, Truncated), "{name}");
                assert!(bytes.starts_with(m.as_bytes()), "{name}");
                match expect {
                    Response => {
                        assert!(!m.is_request(), "{name}");
                        if let Some(a) = action {
                            assert!(a.contains("drop") || a.contains("process"), "{name}: {a}");
                        }
                    }
                    ProxyReject(code, check) => {
                        check(&m);
                        if let Some(a) = action {
                            assert!(a.contains(&code.to_string()), "{name}: {a}");
                        }
                    }
                    _ => {
                        assert!(m.is_request(), "{name}");
                        if m.max_forwards().unwrap() != Some(0) {
                            check_forwarding_edit(name, &m);
                        }
                        if let Some(a) = action {
                            assert!(a.contains("forward"), "{name}: {a}");
                        }
                    }
                }
            }
            Error(want) => {
                let got = parsed.and_then(|m| m.validate().map(|_| m));
                let err = got.err().unwrap_or_else(|| panic!("{name}: parsed"));
                assert_eq!(err, want, "{name}");
                if let Some(a) = action {
                    let is_response = bytes.starts_with(b"SIP/");
                    let answer = if is_response {
                        "drop".to_owned()
                    } else {
                        err.status().to_string()
                    };
                    assert!(a.contains(&answer), "{name}: {answer} not in {a}");
                }
            }
        }
    }
}

#[test]
fn rfc4475_torture_messages() {
    run("rfc4475", "dat", rfc4475(), Some(expected_tsv("rfc4475")));
}

#[test]
fn rfc5118_ipv6_torture_messages() {
    run("rfc5118", "dat", rfc5118(), Some(expected_tsv("rfc5118")));
}

#[test]
fn kamailio_test_messages() {
    run("kamailio-misc", "sip", kamailio(), None);
}

/// The fixtures are the published bytes: checked against SHA256SUMS so an
/// editor or a line-ending conversion cannot quietly change them.
#[test]
fn fixtures_are_the_published_bytes() {
    for dir in ["rfc4475", "rfc5118", "kamailio-misc"] {
        let out = std::process::Command::new("sha256sum")
            .args(["--check", "--quiet", "SHA256SUMS"])
            .current_dir(fixtures(dir))
            .output()
            .expect("sha256sum runs");
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Every message sent over a stream frames to exactly the bytes a datagram
/// parse would use, one byte at a time being `Incomplete` before that.
#[test]
fn stream_framing_agrees_with_datagram_parse() {
    use sipedge::sip::{frame_stream, StreamFrame, DEFAULT_MAX_MESSAGE};
    for (dir, ext) in [
        ("rfc4475", "dat"),
        ("rfc5118", "dat"),
        ("kamailio-misc", "sip"),
    ] {
        for (name, bytes) in files(dir, ext) {
            let Ok(m) = Message::parse(&bytes) else {
                continue;
            };
            if m.content_length().is_none() {
                continue; // a stream needs Content-Length to frame a body
            }
            assert_eq!(
                frame_stream(&bytes, DEFAULT_MAX_MESSAGE),
                Ok(StreamFrame::Message { len: m.len() }),
                "{name}"
            );
            assert_eq!(
                frame_stream(&bytes[..m.len() - 1], DEFAULT_MAX_MESSAGE),
                Err(SipError::Incomplete),
                "{name}"
            );
        }
    }
}
