//! Every RFC 4475 / RFC 5118 torture message, sent as its exact
//! bytes from the fake trunk to the running proxy over UDP, gets what its
//! `EXPECTED.tsv` row allows, and the ones that are forwarded reach a node
//! with every byte the proxy must not touch intact.
//!
//! - The fixtures are `tests/fixtures/{rfc4475,rfc5118}/*.dat` (copies of
//!   `../shared/conformance`, provenance in `tests/fixtures/PROVENANCE.md`);
//!   `EXPECTED.tsv` is parsed at run time and its `proxy_action` column is
//!   mapped to a set of allowed outcomes by the rules in [`alternative`] and
//!   [`allowed_outcomes`].
//! - Each message gets a fresh proxy (`fr_timeout` long enough that no
//!   failover or 503 happens while the test looks), then one of these is
//!   observed: a final answer at the trunk or a sent-by socket, the request
//!   at a node (checked byte for byte, see [`check_forward`]), or nothing at
//!   all with the `dropped` / `stray_responses` counter moved.
//! - Where answers go: the fixtures' Vias name foreign hosts (192.0.2.x,
//!   host.example.com...). The proxy answers to the source address when the
//!   top Via has `rport`, otherwise to the source IP (127.0.0.1) and the
//!   sent-by port (5060 when absent), RFC 3261 §18.2.2. The test does not
//!   touch the bytes; it binds 127.0.0.1:<port> for every port a fixture's
//!   top Via leads to (5060, 5050, 6050, 19823). A port that cannot be bound
//!   (another program has it) makes the answers to those messages "not
//!   observable": for them only the node side and the `answered_*` counters
//!   are checked, and the report says so.
//! - Messages the proxy gets wrong today are listed in [`KNOWN_BAD`]: their
//!   misbehaviour is printed, not failed. Any other message misbehaving
//!   fails the test, and so does a `KNOWN_BAD` entry that now passes (so the
//!   list shrinks as the proxy is fixed).
//!
//! `cargo test --test proxy_conformance -- --nocapture` prints the table.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use sipedge::sip::{Message, Rport};
use support::{Harness, Inbox, Options, Peer, Received, QUIET, WAIT};
use tokio::time::Instant;

/// Messages the proxy currently mishandles, with what goes wrong. Their
/// check runs and prints; it does not fail the test. Remove an entry when
/// the proxy is fixed (the test fails while a listed message passes).
const KNOWN_BAD: &[(&str, &str)] = &[];

/// After the decisive event (a forward or a final answer), how long to keep
/// listening for a contradicting one (a second answer, an answer as well as
/// a forward). Shorter than Timer A (500 ms), so a retransmission of a
/// forwarded INVITE does not show up, though one would be accepted.
const TRAIL: Duration = Duration::from_millis(150);

/// Every fixture: 50 in rfc4475, 12 in rfc5118.
const FIXTURES: usize = 62;

// ---------------------------------------------------------------------------
// EXPECTED.tsv -> allowed outcomes
// ---------------------------------------------------------------------------

/// What the forwarded Request-Line must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartLineRule {
    /// Byte for byte the received one.
    Exact,
    /// A liberal proxy accepting a malformed Request-Line (lwsstart, trws,
    /// lwsruri) must not send the malformation on: `METHOD SP URI SP
    /// VERSION`, single spaces, no trailing space, the URI with its
    /// whitespace removed. For a well-formed Request-Line this is `Exact`.
    Canonical,
    /// escruri: a proxy that accepts must not forward the escaped headers
    /// of the Request-URI (`?Route=...` removed), nor turn them into real
    /// headers (the header comparison catches that).
    StripUriHeaders,
}

/// One outcome a row allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// The request reaches a node (headers and body intact).
    Forward(StartLineRule),
    /// This final answer goes back.
    Answer(u16),
    /// Nothing goes anywhere, and a counter (`dropped`, `stray_responses`)
    /// shows it.
    Drop,
}

/// One alternative of a `proxy_action` (the text between " or "s, or a
/// parenthetical that offers one). `None`: a phrase that allows nothing by
/// itself. An unknown phrase is an error: extend this table rather than
/// guess.
fn alternative(alt: &str, is_response: bool) -> Result<Option<Allowed>, String> {
    let alt = alt.trim();
    // "NNN", "NNN acceptable" (mismatch02), "NNN if R-URI unknown" (intmeth).
    let code = alt
        .strip_suffix(" acceptable")
        .or_else(|| alt.strip_suffix(" if R-URI unknown"))
        .unwrap_or(alt);
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
        let code: u16 = code.parse().unwrap();
        if (100..700).contains(&code) {
            return Ok(Some(Allowed::Answer(code)));
        }
    }
    Ok(Some(match alt {
        "forward" | "accept" => Allowed::Forward(StartLineRule::Exact),
        // badbranch: RFC 2543 transaction matching = processed as a normal
        // request, i.e. forwarded.
        "fall back to RFC 2543 matching" => Allowed::Forward(StartLineRule::Exact),
        a if a.starts_with("liberal accept") => Allowed::Forward(StartLineRule::Canonical),
        "strip escaped headers" => Allowed::Forward(StartLineRule::StripUriHeaders),
        // zeromf: RFC 3261 §16.3 lets a proxy answer an OPTIONS itself.
        "answer OPTIONS itself" => Allowed::Answer(200),
        // esc02: the R-URI's host is not ours and not routable -> 404.
        "reject per R-URI" => Allowed::Answer(404),
        "drop" => Allowed::Drop,
        // noreason (a 100 response): "process" means consume it; a 100 is
        // hop-by-hop, so nothing goes anywhere. For a request it would mean
        // forward.
        "process" if is_response => Allowed::Drop,
        "process" => Allowed::Forward(StartLineRule::Exact),
        // The explanation that follows "process".
        "100 is hop-by-hop" => return Ok(None),
        other => return Err(format!("unrecognised alternative {other:?}")),
    }))
}

/// Maps a `proxy_action` to the outcomes it allows:
/// 1. Parentheticals are set aside. One starting with "or " offers more
///    alternatives; "liberal accept", "NNN acceptable" and "NNN if R-URI
///    unknown" offer one; every other parenthetical is a note or a
///    constraint for the proxy (e.g. "REGISTER only; drop trailing octets",
///    checked by the body comparison) or names another role's answer
///    ("registrar: 400", "UAS: 415"), and allows nothing.
/// 2. The rest is split at ';' into clauses; a clause starting "TCP:" is
///    about stream transports and skipped (this test is UDP).
/// 3. Each clause is split at " or " into alternatives ([`alternative`]).
fn allowed_outcomes(action: &str, is_response: bool) -> Result<Vec<Allowed>, String> {
    let (mut top, mut groups, mut depth) = (String::new(), Vec::<String>::new(), 0usize);
    for c in action.chars() {
        match c {
            '(' => {
                if depth == 0 {
                    groups.push(String::new());
                    top.push(' ');
                } else {
                    groups.last_mut().unwrap().push(c);
                }
                depth += 1;
            }
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in {action:?}"))?;
                if depth > 0 {
                    groups.last_mut().unwrap().push(c);
                }
            }
            _ if depth > 0 => groups.last_mut().unwrap().push(c),
            _ => top.push(c),
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {action:?}"));
    }
    let mut alts: Vec<String> = Vec::new();
    for clause in top.split(';').map(str::trim) {
        if clause.is_empty() || clause.starts_with("TCP:") {
            continue;
        }
        alts.extend(clause.split(" or ").map(str::to_owned));
    }
    for g in groups.iter().map(|g| g.trim()) {
        if let Some(rest) = g.strip_prefix("or ") {
            alts.extend(rest.split(" or ").map(str::to_owned));
        } else if g == "liberal accept"
            || g.ends_with(" acceptable")
            || g.ends_with(" if R-URI unknown")
        {
            alts.push(g.to_owned());
        }
    }
    let mut out = Vec::new();
    for a in &alts {
        if let Some(x) = alternative(a, is_response).map_err(|e| format!("{e} in {action:?}"))? {
            if !out.contains(&x) {
                out.push(x);
            }
        }
    }
    // "forward (liberal accept)": the parenthetical qualifies the forward,
    // which must then not pass a malformed Request-Line on. (For a
    // well-formed one, Canonical is the same as Exact.)
    if out.contains(&Allowed::Forward(StartLineRule::Canonical)) {
        out.retain(|a| *a != Allowed::Forward(StartLineRule::Exact));
    }
    if out.is_empty() {
        return Err(format!("{action:?} allows nothing"));
    }
    Ok(out)
}

/// One fixture with its row.
struct Case {
    dir: &'static str,
    name: String,
    action: String,
    data: Vec<u8>,
    allowed: Vec<Allowed>,
}

fn fixture_dir(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
}

/// Every `.dat` of `dir` with its `EXPECTED.tsv` row; each file has exactly
/// one row and each row a file.
fn load(dir: &'static str) -> Vec<Case> {
    let path = fixture_dir(dir);
    let tsv = std::fs::read_to_string(path.join("EXPECTED.tsv")).expect("EXPECTED.tsv");
    let mut rows = BTreeMap::new();
    for line in tsv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "{dir}/EXPECTED.tsv: {line:?}");
        assert!(
            rows.insert(cols[0].to_owned(), cols[2].to_owned())
                .is_none(),
            "{dir}: two rows for {}",
            cols[0]
        );
    }
    let mut cases = Vec::new();
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(&path).expect("fixture dir") {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "dat") {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let action = rows
                .get(&name)
                .unwrap_or_else(|| panic!("{dir}/{name}.dat has no EXPECTED.tsv row"))
                .clone();
            let data = std::fs::read(&p).unwrap();
            let allowed = allowed_outcomes(&action, data.starts_with(b"SIP/"))
                .unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
            files.insert(name.clone());
            cases.push(Case {
                dir,
                name,
                action,
                data,
                allowed,
            });
        }
    }
    for name in rows.keys() {
        assert!(files.contains(name), "{dir}: row {name} has no .dat");
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

// ---------------------------------------------------------------------------
// Raw message bytes (independent of the parser under test)
// ---------------------------------------------------------------------------

/// A message split as bytes: start line, header fields (each with its
/// continuation lines and inner CRLFs, without the final CRLF), and
/// everything after the empty line.
struct Raw<'a> {
    start: &'a [u8],
    fields: Vec<&'a [u8]>,
    rest: &'a [u8],
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_raw(data: &[u8]) -> Raw<'_> {
    let (head, rest) = match find(data, b"\r\n\r\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        // baddn has no empty line: all of it is the head.
        None => (data, &data[data.len()..]),
    };
    let mut lines = Vec::new();
    let mut at = 0;
    while at <= head.len() {
        let end = find(&head[at..], b"\r\n").map_or(head.len(), |i| at + i);
        lines.push((at, end));
        at = end + 2;
    }
    let start = &head[..lines[0].1];
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for &(s, e) in &lines[1..] {
        let folded = matches!(head.get(s), Some(b' ' | b'\t'));
        match spans.last_mut() {
            Some(last) if folded => last.1 = e,
            _ => spans.push((s, e)),
        }
    }
    Raw {
        start,
        fields: spans.iter().map(|&(s, e)| &head[s..e]).collect(),
        rest,
    }
}

/// A header field's name, lower case, without the whitespace before ':'.
fn field_name(field: &[u8]) -> String {
    let name = field.split(|&b| b == b':').next().unwrap_or_default();
    String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase()
}

/// A header field's value with line folding turned into spaces.
fn field_value(field: &[u8]) -> String {
    let v = field
        .iter()
        .position(|&b| b == b':')
        .map_or(&[][..], |i| &field[i + 1..]);
    String::from_utf8_lossy(v)
        .replace("\r\n", " ")
        .trim()
        .to_owned()
}

/// The headers a forwarding proxy edits (RFC 3261 §16.6): everything else
/// must arrive byte for byte, in order.
fn proxy_edits(field: &[u8]) -> bool {
    matches!(
        field_name(field).as_str(),
        "via" | "v" | "route" | "record-route" | "max-forwards"
    )
}

/// The body a UDP receiver frames (RFC 3261 §18.3): Content-Length octets
/// (extra octets are discarded), or the rest of the datagram without one.
fn framed_body<'a>(raw: &Raw<'a>) -> &'a [u8] {
    let cl = raw
        .fields
        .iter()
        .find(|f| matches!(field_name(f).as_str(), "content-length" | "l"))
        .and_then(|f| field_value(f).parse::<usize>().ok());
    match cl {
        Some(n) => &raw.rest[..n.min(raw.rest.len())],
        None => raw.rest,
    }
}

/// `METHOD SP URI SP VERSION` with the URI's whitespace removed.
fn canonical_start(start: &[u8], strip_uri_headers: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(start);
    let tokens: Vec<&str> = text.split_ascii_whitespace().collect();
    if tokens.len() < 3 {
        return start.to_vec();
    }
    let mut uri = tokens[1..tokens.len() - 1].concat();
    if strip_uri_headers {
        if let Some(i) = uri.find('?') {
            uri.truncate(i);
        }
    }
    format!("{} {uri} {}", tokens[0], tokens[tokens.len() - 1]).into_bytes()
}

/// The status code of a response, by its bytes.
fn status_of(data: &[u8]) -> Option<u16> {
    let rest = data.strip_prefix(b"SIP/2.0 ")?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn show(b: &[u8]) -> String {
    let s = b.escape_ascii().to_string();
    if s.len() > 160 {
        format!("{}...", &s[..160])
    } else {
        s
    }
}

/// What is wrong with `fwd` as the forwarded copy of `orig` under `rule`
/// (empty: nothing).
fn check_forward(
    orig: &[u8],
    fwd: &Received,
    rule: StartLineRule,
    proxy: SocketAddr,
) -> Vec<String> {
    let (o, f) = (split_raw(orig), split_raw(&fwd.data));
    let mut problems = Vec::new();
    if fwd.from != proxy {
        problems.push(format!("sent from {}, not the proxy {proxy}", fwd.from));
    }
    let want_start = match rule {
        StartLineRule::Exact => o.start.to_vec(),
        StartLineRule::Canonical => canonical_start(o.start, false),
        StartLineRule::StripUriHeaders => canonical_start(o.start, true),
    };
    if f.start != want_start.as_slice() {
        problems.push(format!(
            "start line {:?}, expected {:?}",
            show(f.start),
            show(&want_start)
        ));
    }
    // RFC 3261 §16.6 step 8: our Via is the top one.
    let top_via = f
        .fields
        .iter()
        .find(|x| matches!(field_name(x).as_str(), "via" | "v"));
    if top_via.is_none_or(|v| find(v, proxy.to_string().as_bytes()).is_none()) {
        problems.push(format!(
            "top Via is not the proxy's: {:?}",
            top_via.map(|v| show(v))
        ));
    }
    let want: Vec<&[u8]> = o
        .fields
        .iter()
        .copied()
        .filter(|x| !proxy_edits(x))
        .collect();
    let got: Vec<&[u8]> = f
        .fields
        .iter()
        .copied()
        .filter(|x| !proxy_edits(x))
        .collect();
    if want != got {
        let i = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
        problems.push(format!(
            "untouchable headers differ at #{i}: expected {:?}, got {:?} ({} vs {} headers)",
            want.get(i).map(|x| show(x)),
            got.get(i).map(|x| show(x)),
            want.len(),
            got.len()
        ));
    }
    let body = framed_body(&o);
    if f.rest != body {
        let i = body.iter().zip(f.rest).take_while(|(a, b)| a == b).count();
        problems.push(format!(
            "body differs: {} octets expected, {} forwarded, first difference at {i}",
            body.len(),
            f.rest.len()
        ));
    }
    problems
}

// ---------------------------------------------------------------------------
// Observing the proxy
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Trunk,
    SentBy(u16),
    Node(usize),
}

/// Where the proxy answers a message (RFC 3261 §18.2.2, RFC 3581), read
/// from its top Via with the crate's parser: only used to know which socket
/// must be listening, never to judge the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyTo {
    /// `rport`: the source address, i.e. the trunk.
    Trunk,
    /// 127.0.0.1 and the sent-by port.
    Port(u16),
    /// No usable Via: nothing can be answered.
    Nowhere,
}

fn reply_to(data: &[u8]) -> ReplyTo {
    let Some(msg) = Message::parse_for_error_reply(data) else {
        return ReplyTo::Nowhere;
    };
    match msg.top_via() {
        Ok(v) if v.rport() == Rport::Absent => ReplyTo::Port(v.port.unwrap_or(5060)),
        Ok(_) => ReplyTo::Trunk,
        Err(_) => ReplyTo::Nowhere,
    }
}

/// The next datagram on any of `peers` before `until`.
async fn next_event(peers: &[(Source, &Peer)], until: Instant) -> Option<(Source, Received)> {
    let wait = until.saturating_duration_since(Instant::now());
    type Recv<'a> = Pin<Box<dyn Future<Output = Option<Received>> + 'a>>;
    let mut futs: Vec<Option<Recv<'_>>> = peers
        .iter()
        .map(|(_, p)| Some(Box::pin(p.recv_within(wait)) as Recv<'_>))
        .collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Some(r)) => return Poll::Ready(Some((peers[i].0, r))),
                    Poll::Ready(None) => *slot = None,
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    })
    .await
}

/// The counters read before and after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// `sipedge_dropped_messages_total`, every reason.
    discarded: u64,
    /// Local answers (`sipedge_responses_total{origin="local"}`) of class
    /// 4xx, 5xx.
    answered: [u64; 2],
}

/// The classes of local answers the counters tell apart.
const COUNTED_CLASSES: [u16; 2] = [4, 5];

fn counts(h: &Harness) -> Counts {
    use sipedge::metrics::{ResponseClass, ResponseOrigin};
    let m = h.proxy.metrics();
    Counts {
        discarded: h.dropped(),
        answered: [
            m.responses(ResponseOrigin::Local, ResponseClass::ClientError),
            m.responses(ResponseOrigin::Local, ResponseClass::ServerError),
        ],
    }
}

/// Everything seen after sending one message.
#[derive(Debug, Default)]
struct Observation {
    /// Requests that reached a node (retransmitted copies folded).
    forwards: Vec<(usize, Received)>,
    /// Final responses at the trunk or a sent-by socket, with their status
    /// line.
    finals: Vec<(Source, u16, String)>,
    provisionals: Vec<(Source, u16)>,
    /// Anything else: a request at the trunk, a response at a node, an
    /// unparsable answer.
    unexpected: Vec<String>,
    /// A discard counter moved.
    discarded: bool,
    /// An answer counter moved: its code.
    counted_answer: Option<u16>,
    /// The socket the answer goes to could not be bound.
    unobservable: Option<u16>,
    /// The proxy's address (every datagram counted came from it).
    proxy: Option<SocketAddr>,
}

async fn observe(case: &Case, sent_by: &BTreeMap<u16, Peer>) -> Observation {
    let h = Harness::start(Options {
        // No failover and no 503 while the test looks at a forwarded INVITE.
        fr_timeout: "30s",
        ..Options::default()
    })
    .await;
    let mut obs = Observation {
        proxy: Some(h.addr),
        ..Observation::default()
    };
    if let ReplyTo::Port(p) = reply_to(&case.data) {
        if !sent_by.contains_key(&p) {
            obs.unobservable = Some(p);
        }
    }
    for p in sent_by.values() {
        // Left over from an earlier message's proxy (ignored anyway: they
        // come from another address).
        while p.recv_within(Duration::ZERO).await.is_some() {}
    }
    let mut peers: Vec<(Source, &Peer)> = vec![(Source::Trunk, &h.trunk)];
    peers.extend(sent_by.iter().map(|(port, p)| (Source::SentBy(*port), p)));
    peers.extend(
        h.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (Source::Node(i), n)),
    );

    let before = counts(&h);
    h.trunk.send(&case.data, h.addr).await;
    let start = Instant::now();
    let mut deadline = start + WAIT;
    let mut decided = false;
    let mut counted_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if counted_at.is_none() && counts(&h) != before {
            counted_at = Some(now);
        }
        // A counter moved and nothing arrived for QUIET since: done.
        if !decided && counted_at.is_some_and(|t| now >= t + QUIET) {
            break;
        }
        let slice = deadline.min(now + Duration::from_millis(20));
        let Some((src, r)) = next_event(&peers, slice).await else {
            continue;
        };
        if r.from != h.addr {
            eprintln!(
                "{}: ignoring a datagram from {} (an earlier message's proxy) at {src:?}: {}",
                case.name,
                r.from,
                r.first_line()
            );
            continue;
        }
        let status = status_of(&r.data);
        let is_response = r.data.starts_with(b"SIP/");
        match (src, status) {
            (Source::Node(i), None) if !is_response => {
                if !obs.forwards.iter().any(|(_, f)| f.data == r.data) {
                    obs.forwards.push((i, r));
                }
            }
            (Source::Trunk | Source::SentBy(_), Some(c)) if c >= 200 => {
                obs.finals.push((src, c, r.first_line()));
            }
            (Source::Trunk | Source::SentBy(_), Some(c)) => obs.provisionals.push((src, c)),
            _ => obs
                .unexpected
                .push(format!("at {src:?}: {:?}", show(r.first_line().as_bytes()))),
        }
        if !decided && (!obs.forwards.is_empty() || !obs.finals.is_empty()) {
            decided = true;
            deadline = Instant::now() + TRAIL;
        }
    }
    let after = counts(&h);
    obs.discarded = after.discarded != before.discarded;
    obs.counted_answer = (0..COUNTED_CLASSES.len())
        .find(|&i| after.answered[i] != before.answered[i])
        .map(|i| COUNTED_CLASSES[i]);
    obs
}

/// The outcome, described; `Err` when the row does not allow it.
fn judge(case: &Case, obs: &Observation, proxy: SocketAddr) -> Result<String, String> {
    let allows = |a: Allowed| case.allowed.contains(&a);
    if !obs.unexpected.is_empty() {
        return Err(format!("unexpected datagrams: {:?}", obs.unexpected));
    }
    match (obs.forwards.as_slice(), obs.finals.as_slice()) {
        ([], []) => {
            if let Some(port) = obs.unobservable {
                // The answer went to a port we could not bind: judge by the
                // local-answer counters, by class (4xx, 5xx).
                let note = format!("answer not observable (127.0.0.1:{port} is taken)");
                let class_allowed = |class: u16| {
                    case.allowed
                        .iter()
                        .any(|a| matches!(a, Allowed::Answer(c) if c / 100 == class))
                };
                return match obs.counted_answer {
                    Some(c) if class_allowed(c) => Ok(format!("{note}; counted a {c}xx")),
                    Some(c) => Err(format!("{note}; counted a {c}xx, not allowed")),
                    None if obs.discarded && allows(Allowed::Drop) => Ok("dropped".into()),
                    None if case.allowed.iter().any(|a| matches!(a, Allowed::Answer(_))) => {
                        Ok(format!("{note}; no forward"))
                    }
                    None => Err(format!("{note}; nothing forwarded")),
                };
            }
            if !obs.discarded {
                return Err("nothing arrived anywhere and no counter moved (silent drop)".into());
            }
            if allows(Allowed::Drop) {
                Ok("dropped (counted)".into())
            } else {
                Err("dropped (counted)".into())
            }
        }
        ([(node, fwd)], []) => {
            let what = format!("forwarded to node{node}");
            let rules: Vec<StartLineRule> = case
                .allowed
                .iter()
                .filter_map(|a| match a {
                    Allowed::Forward(r) => Some(*r),
                    _ => None,
                })
                .collect();
            if rules.is_empty() {
                return Err(what);
            }
            let mut why = Vec::new();
            for rule in rules {
                let problems = check_forward(&case.data, fwd, rule, proxy);
                if problems.is_empty() {
                    return Ok(what);
                }
                why.push(format!("{rule:?}: {}", problems.join("; ")));
            }
            Err(format!("{what}, but {}", why.join(" | ")))
        }
        ([], [(src, code, line)]) => {
            let what = format!("answered {line:?} at {src:?}");
            if allows(Allowed::Answer(*code)) {
                Ok(what)
            } else {
                Err(what)
            }
        }
        (f, a) => Err(format!(
            "contradictory: forwarded to nodes {:?} and answered {:?}",
            f.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            a.iter().map(|(_, _, line)| line).collect::<Vec<_>>()
        )),
    }
}

fn describe_allowed(allowed: &[Allowed]) -> String {
    let v: Vec<String> = allowed
        .iter()
        .map(|a| match a {
            Allowed::Forward(StartLineRule::Exact) => "forward".to_owned(),
            Allowed::Forward(r) => format!("forward({r:?})"),
            Allowed::Answer(c) => c.to_string(),
            Allowed::Drop => "drop".to_owned(),
        })
        .collect();
    v.join("|")
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_messages_get_the_answer_expected_tsv_names() {
    let mut cases = load("rfc4475");
    cases.extend(load("rfc5118"));
    assert_eq!(cases.len(), FIXTURES);
    for (name, _) in KNOWN_BAD {
        assert!(
            cases.iter().any(|c| c.name == *name),
            "KNOWN_BAD names {name}, which is no fixture"
        );
    }

    // One listening socket per sent-by port an answer can go to.
    let mut ports: BTreeSet<u16> = BTreeSet::from([5060]);
    for c in &cases {
        if let ReplyTo::Port(p) = reply_to(&c.data) {
            ports.insert(p);
        }
    }
    let mut sent_by = BTreeMap::new();
    for port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match Peer::bind_at(&format!("sent-by:{port}"), addr).await {
            Ok(p) => {
                sent_by.insert(port, p);
            }
            Err(e) => println!("cannot bind {addr} ({e}): answers sent there are not observable"),
        }
    }

    let mut failures = Vec::new();
    let mut known = Vec::new();
    let mut fixed = Vec::new();
    let mut passed = 0;
    for case in &cases {
        let obs = observe(case, &sent_by).await;
        let verdict = judge(case, &obs, obs.proxy.expect("set by observe"));
        let bad = KNOWN_BAD.iter().find(|(n, _)| *n == case.name);
        let allowed = describe_allowed(&case.allowed);
        let label = format!("{}/{}", case.dir, case.name);
        match (&verdict, bad) {
            (Ok(what), None) => {
                passed += 1;
                println!("ok         {label:40} allowed {allowed:28} {what}");
            }
            (Ok(what), Some(_)) => {
                println!("FIXED      {label:40} allowed {allowed:28} {what}");
                fixed.push(label);
            }
            (Err(what), Some((_, note))) => {
                println!("KNOWN BAD  {label:40} allowed {allowed:28} got: {what} ({note})");
                known.push(label);
            }
            (Err(what), None) => {
                println!("FAIL       {label:40} allowed {allowed:28} got: {what}");
                failures.push(format!(
                    "{label}: EXPECTED.tsv says {:?} ({allowed}); got: {what}",
                    case.action
                ));
            }
        }
    }
    println!(
        "{passed}/{} as expected, {} known bad: {known:?}",
        cases.len(),
        known.len()
    );
    assert!(
        failures.is_empty() && fixed.is_empty(),
        "{} message(s) not handled as EXPECTED.tsv says:\n{}\n\
         KNOWN_BAD messages that pass now (remove them from the list): {fixed:?}",
        failures.len(),
        failures.join("\n")
    );
}

/// The mapping of the trickier `proxy_action` texts, pinned: a change in
/// the rules or in EXPECTED.tsv that alters them shows up here.
#[test]
fn proxy_action_mapping() {
    use Allowed::*;
    use StartLineRule::*;
    let mut cases = load("rfc4475");
    cases.extend(load("rfc5118"));
    let get = |name: &str| {
        cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no fixture {name}"))
            .allowed
            .clone()
    };
    // "drop trailing octets" is a constraint on the forward, not a drop.
    assert_eq!(get("dblreq"), [Forward(Exact)]);
    // "(not forwarded)" does not allow a forward; "100" is no answer code.
    assert_eq!(get("noreason"), [Drop]);
    // Codes in explanations are not answers; the registrar's/UAS's are not
    // the proxy's.
    assert_eq!(get("ipv6-in-sdp"), [Answer(400)]);
    assert_eq!(get("unksm2"), [Forward(Exact)]);
    assert_eq!(get("sdp01"), [Forward(Exact)]);
    assert_eq!(get("invut"), [Forward(Exact)]);
    // TCP clauses are skipped.
    assert_eq!(get("clerr"), [Answer(400)]);
    assert_eq!(get("mcl01"), [Answer(400)]);
    // Parenthetical alternatives.
    assert_eq!(get("mismatch02"), [Answer(501), Answer(400)]);
    assert_eq!(get("novelsc"), [Answer(416), Answer(404)]);
    assert_eq!(get("zeromf"), [Answer(483), Answer(200)]);
    assert_eq!(get("intmeth"), [Forward(Exact), Answer(404)]);
    assert_eq!(get("esc02"), [Forward(Exact), Answer(404)]);
    assert_eq!(get("escruri"), [Answer(400), Forward(StripUriHeaders)]);
    assert_eq!(get("lwsstart"), [Answer(400), Forward(Canonical)]);
    assert_eq!(get("lwsruri"), [Answer(400), Forward(Canonical)]);
    assert_eq!(get("badbranch"), [Answer(400), Forward(Exact)]);
    assert_eq!(get("test"), [Drop, Answer(400)]);
    assert_eq!(
        get("wsinv"),
        [Answer(481), Answer(404), Answer(403), Forward(Exact)]
    );
    assert_eq!(get("ipv6-bug-abnf-3-colons"), [Answer(400), Forward(Exact)]);
    // Unknown phrasing is refused, not guessed.
    assert!(allowed_outcomes("maybe 400", false).is_err());
    assert!(allowed_outcomes("(registrar: 400)", false).is_err());
}

/// The checks catch misbehaviour: a touched header, trailing octets
/// forwarded, a wrong code, a silent drop, a double answer.
#[test]
fn judge_catches_misbehaviour() {
    let proxy: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let orig = b"OPTIONS sip:u@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\n\
To: <sip:u@example.com>\r\n\
From: <sip:c@example.com>;tag=1\r\n\
Call-ID: x\r\n\
CSeq: 1 OPTIONS\r\n\
l: 2\r\n\r\nabEXTRA"
        .to_vec();
    let case = Case {
        dir: "synthetic",
        name: "synthetic".into(),
        action: "forward or 400".into(),
        allowed: allowed_outcomes("forward or 400", false).unwrap(),
        data: orig.clone(),
    };
    let fwd = |text: &[u8]| Observation {
        forwards: vec![(
            0,
            Received {
                data: text.to_vec(),
                from: proxy,
            },
        )],
        ..Observation::default()
    };
    let good = b"OPTIONS sip:u@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKp;rport\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;received=127.0.0.1\r\n\
Max-Forwards: 69\r\n\
To: <sip:u@example.com>\r\n\
From: <sip:c@example.com>;tag=1\r\n\
Call-ID: x\r\n\
CSeq: 1 OPTIONS\r\n\
l: 2\r\n\r\nab";
    judge(&case, &fwd(good), proxy).expect("a correct forward");
    let text = String::from_utf8_lossy(good).into_owned();
    for bad in [
        text.replace("l: 2\r\n\r\nab", "l: 2\r\n\r\nabEXTRA"),
        text.replace("To: <sip:u@example.com>", "To: <sip:u@example.com> "),
        text.replace("Call-ID: x", "i: x"),
        text.replace(
            "OPTIONS sip:u@example.com SIP/2.0",
            "OPTIONS sip:u@example.com  SIP/2.0",
        ),
        text.replace(
            "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKp;rport\r\n",
            "",
        ),
    ] {
        assert!(judge(&case, &fwd(bad.as_bytes()), proxy).is_err(), "{bad}");
    }
    let answered = |codes: &[u16]| Observation {
        finals: codes
            .iter()
            .map(|&c| (Source::SentBy(5060), c, format!("SIP/2.0 {c} X")))
            .collect(),
        ..Observation::default()
    };
    judge(&case, &answered(&[400]), proxy).expect("an allowed answer");
    assert!(judge(&case, &answered(&[404]), proxy).is_err());
    assert!(judge(&case, &answered(&[400, 400]), proxy).is_err());
    assert!(judge(&case, &Observation::default(), proxy).is_err());
    let dropped = Observation {
        discarded: true,
        ..Observation::default()
    };
    assert!(judge(&case, &dropped, proxy).is_err());
}
