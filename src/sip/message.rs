//! The zero-copy message view: start line, an index of header byte ranges,
//! the body. Typed accessors parse a header only when asked.

use std::sync::OnceLock;

use super::addr::NameAddr;
use super::error::SipError;
use super::header::{HeaderName, HEADER_NAME_COUNT};
use super::method::Method;
use super::scan::{self, CommaValues};
use super::uri::{Scheme, Uri};
use super::via::Via;

/// The first line of a message.
#[derive(Debug, Clone, Copy)]
pub enum StartLine<'a> {
    Request {
        method: Method<'a>,
        /// The Request-URI as received.
        uri: &'a [u8],
    },
    Response {
        code: u16,
        /// The reason phrase exactly as received (possibly empty, any bytes).
        reason: &'a [u8],
    },
}

/// Where one header line sits in the message, in 16 bytes: offsets are
/// into the message bytes (`u32`: messages are capped far below 4 GiB), and
/// a line starts where the previous one ended, so only its end is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub name: HeaderName,
    pub name_len: u16,
    pub value_start: u32,
    pub value_end: u32,
    /// Just past the line's LF, including folded continuation lines.
    pub line_end: u32,
}

const EMPTY: Entry = Entry {
    name: HeaderName::Other,
    name_len: 0,
    value_start: 0,
    value_end: 0,
    line_end: 0,
};

/// Header lines kept inline before the index spills to the heap: typical
/// INVITEs have 10-20, so parsing them allocates nothing.
const INLINE_HEADERS: usize = 32;

#[derive(Clone)]
struct HeaderIndex {
    inline: [Entry; INLINE_HEADERS],
    len: usize,
    spill: Vec<Entry>,
}

impl HeaderIndex {
    fn new() -> Self {
        Self {
            inline: [EMPTY; INLINE_HEADERS],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, e: Entry) {
        if self.len < INLINE_HEADERS {
            self.inline[self.len] = e;
        } else {
            self.spill.push(e);
        }
        self.len += 1;
    }

    fn get(&self, i: usize) -> &Entry {
        if i < INLINE_HEADERS {
            &self.inline[i]
        } else {
            &self.spill[i - INLINE_HEADERS]
        }
    }

    fn last_mut(&mut self) -> Option<&mut Entry> {
        match self.len {
            0 => None,
            n if n <= INLINE_HEADERS => Some(&mut self.inline[n - 1]),
            _ => self.spill.last_mut(),
        }
    }
}

const NONE: u16 = u16::MAX;

/// A parsed SIP message borrowing its bytes.
#[derive(Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    start: StartLine<'a>,
    uri_start: u32,
    /// Just past the start line: where the first header line begins.
    headers_start: u32,
    headers: HeaderIndex,
    /// Index of the first header of each known name, `NONE` if absent.
    first: [u16; HEADER_NAME_COUNT],
    /// Bit per known name: seen on more than one line.
    repeated: u32,
    /// Start of the empty line that ends the headers.
    headers_end: u32,
    body_start: u32,
    content_length: Option<u32>,
    /// The top Via, parsed on first use and kept: validation, the
    /// received/rport edit, response building and transaction matching all
    /// ask for it, a pure forwarding edit never does.
    top_via: OnceLock<Result<Via<'a>, SipError>>,
    /// The Request-URI, parsed on first use (validation, routing and the
    /// local-OPTIONS check all read it).
    ruri: OnceLock<Result<Uri<'a>, SipError>>,
    /// The To header, parsed on first use (validation and the in-dialog
    /// test both read it).
    to: OnceLock<Result<NameAddr<'a>, SipError>>,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("start", &self.start)
            .field("headers", &self.headers.len)
            .field("len", &self.buf.len())
            .finish()
    }
}

/// A CSeq value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub number: u32,
    pub method: Method<'a>,
}

/// One header line as indexed.
#[derive(Debug, Clone, Copy)]
pub struct HeaderField<'a> {
    pub name: HeaderName,
    /// The name exactly as written (case and compact form kept).
    pub name_bytes: &'a [u8],
    /// The value without surrounding whitespace; folded lines included.
    pub value: &'a [u8],
}

/// A Route (or Record-Route) entry: the name-addr and its parsed URI.
#[derive(Debug, Clone, Copy)]
pub struct RouteEntry<'a> {
    pub addr: NameAddr<'a>,
    pub uri: Uri<'a>,
}

impl RouteEntry<'_> {
    /// Loose routing (`;lr`, RFC 3261 §16.12).
    pub fn is_loose(&self) -> bool {
        self.uri.param(b"lr").is_some()
    }
}

fn parse_version(v: &[u8]) -> Result<(), SipError> {
    if v.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    // SIP/<digits>.<digits> is a version we do not speak (505); anything
    // else is not a version at all.
    let looks_like = v.len() > 4
        && v[..4].eq_ignore_ascii_case(b"SIP/")
        && v[4..].iter().all(|&b| b.is_ascii_digit() || b == b'.')
        && v[4..].iter().filter(|&&b| b == b'.').count() == 1;
    Err(if looks_like {
        SipError::UnsupportedVersion
    } else {
        SipError::BadStartLine
    })
}

/// Parses a decimal value of at most `max`, leading zeros allowed.
pub(crate) fn parse_decimal(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = &s[s.iter().position(|&b| b != b'0').unwrap_or(s.len())..];
    if digits.len() > 19 {
        return None;
    }
    let v = digits
        .iter()
        .fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
    (v <= max).then_some(v)
}

/// Content-Length values allowed by the parser (a datagram or a capped
/// stream frame never comes close).
pub(crate) const MAX_CONTENT_LENGTH: u64 = u32::MAX as u64;

impl<'a> Message<'a> {
    /// Parses one message from a datagram: the message is the whole
    /// datagram. A Content-Length shorter than the body truncates it (RFC
    /// 3261 §18.3: the extra octets are dropped), a longer one is an error,
    /// a missing one means "the rest of the datagram". Leading CRLFs are
    /// skipped (§7.5).
    #[inline(always)]
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, SipError> {
        let skip = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let buf = &buf[skip..];
        if buf.len() >= u32::MAX as usize {
            return Err(SipError::TooLarge);
        }
        let mut m = Message::parse_head(buf, false)?;
        let rest = (buf.len() - m.body_start as usize) as u32;
        let end = match m.content_length {
            Some(cl) if cl > rest => return Err(SipError::BodyShorterThanContentLength),
            Some(cl) => m.body_start + cl,
            None => buf.len() as u32,
        };
        m.buf = &buf[..end as usize];
        Ok(m)
    }

    /// Reads just enough of a message that [`Message::parse`] refused to
    /// answer it: the SIP version and Content-Length are not checked, the
    /// body is the rest of the datagram. For building the error response
    /// (400, 505) only; never forward what this returns.
    pub fn parse_for_error_reply(buf: &'a [u8]) -> Option<Message<'a>> {
        Message::parse_head(buf, true).ok()
    }

    /// Parses the start line and the headers; the body is whatever follows.
    #[inline(always)]
    fn parse_head(buf: &'a [u8], lenient: bool) -> Result<Message<'a>, SipError> {
        let nl = memchr::memchr(b'\n', buf).ok_or(SipError::UnterminatedHeaders)?;
        let line = strip_cr(&buf[..nl]);
        let (start, uri_start) = parse_start_line(line, lenient)?;
        let mut m = Message {
            buf,
            start,
            uri_start,
            headers_start: (nl + 1) as u32,
            headers: HeaderIndex::new(),
            first: [NONE; HEADER_NAME_COUNT],
            repeated: 0,
            headers_end: 0,
            body_start: 0,
            content_length: None,
            top_via: OnceLock::new(),
            ruri: OnceLock::new(),
            to: OnceLock::new(),
        };
        let mut pos = nl + 1;
        loop {
            let rest = &buf[pos..];
            match rest {
                // The error-reply view takes the end of the data as the end
                // of the headers (RFC 4475's baddn lacks its empty line).
                [] if lenient => {
                    m.headers_end = pos as u32;
                    m.body_start = pos as u32;
                    break;
                }
                [] | [b'\r'] => return Err(SipError::UnterminatedHeaders),
                [b'\r', b'\n', ..] | [b'\n', ..] => {
                    // The empty line: headers end here.
                    m.headers_end = pos as u32;
                    m.body_start = (pos + if rest[0] == b'\r' { 2 } else { 1 }) as u32;
                    break;
                }
                [b' ' | b'\t', ..] => {
                    // A folded continuation of the previous header's value.
                    let nl = pos + line_len(rest)?;
                    let prev = m.headers.last_mut().ok_or(SipError::BadHeaderLine)?;
                    let t = scan::trim(&buf[pos..nl]);
                    if !t.is_empty() {
                        let t_start = scan::offset_in(buf, t) as u32;
                        if prev.value_start == prev.value_end {
                            prev.value_start = t_start;
                        }
                        prev.value_end = t_start + t.len() as u32;
                    }
                    prev.line_end = (nl + 1) as u32;
                    pos = nl + 1;
                }
                _ => {
                    // name *WSP ":" *WSP value: the token scan finds the
                    // colon too, so short lines need one memchr only.
                    let n = scan::token_len(rest);
                    let mut i = n;
                    while i < rest.len() && scan::is_wsp(rest[i]) {
                        i += 1;
                    }
                    if n == 0 || rest.get(i) != Some(&b':') {
                        return Err(SipError::BadHeaderLine);
                    }
                    i += 1;
                    while i < rest.len() && scan::is_wsp(rest[i]) {
                        i += 1;
                    }
                    let nl = i + line_len(&rest[i..])?;
                    let value = scan::trim_end(&rest[i..nl]);
                    let name = HeaderName::from_token_prefix(rest, n);
                    let name_len = u16::try_from(n).map_err(|_| SipError::BadHeaderLine)?;
                    // The index holds u16 positions; no message within the
                    // size caps comes near this many lines.
                    let idx = u16::try_from(m.headers.len)
                        .ok()
                        .filter(|&i| i != NONE)
                        .ok_or(SipError::TooLarge)?;
                    if m.first[name as usize] == NONE {
                        m.first[name as usize] = idx;
                    } else {
                        m.repeated |= 1 << name as u32;
                    }
                    m.headers.push(Entry {
                        name,
                        name_len,
                        value_start: (pos + i) as u32,
                        value_end: (pos + i + value.len()) as u32,
                        line_end: (pos + nl + 1) as u32,
                    });
                    pos += nl + 1;
                }
            }
        }
        match m.parse_content_length() {
            Ok(cl) => m.content_length = cl,
            Err(e) if !lenient => return Err(e),
            Err(_) => {}
        }
        Ok(m)
    }

    fn parse_content_length(&self) -> Result<Option<u32>, SipError> {
        let mut cl = None;
        for e in self.entries_named(HeaderName::ContentLength) {
            let v = parse_decimal(self.value_of(e), MAX_CONTENT_LENGTH)
                .ok_or(SipError::BadContentLength)? as u32;
            // Repeated values must agree (RFC 4475 §3.3.9).
            if cl.is_some_and(|c| c != v) {
                return Err(SipError::BadContentLength);
            }
            cl = Some(v);
        }
        Ok(cl)
    }

    /// The message's bytes: from the start line to the end of the body as
    /// framed (trailing datagram octets beyond Content-Length excluded).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn start_line(&self) -> &StartLine<'a> {
        &self.start
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<Method<'a>> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The Request-URI bytes of a request.
    pub fn request_uri_bytes(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The parsed Request-URI (a response has none: `BadStartLine`).
    pub fn request_uri(&self) -> Result<Uri<'a>, SipError> {
        *self.ruri.get_or_init(|| {
            let raw = self.request_uri_bytes().ok_or(SipError::BadStartLine)?;
            Uri::parse(raw).map_err(|_| SipError::BadRequestUri)
        })
    }

    pub fn body(&self) -> &'a [u8] {
        &self.buf[self.body_start as usize..]
    }

    /// Content-Length as given (absent: `None`).
    pub fn content_length(&self) -> Option<usize> {
        self.content_length.map(|c| c as usize)
    }

    /// Number of header lines.
    pub fn header_count(&self) -> usize {
        self.headers.len
    }

    /// Every header line, in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderField<'a>> + '_ {
        (0..self.headers.len).map(|i| {
            let e = self.headers.get(i);
            let start = self.line_start(i);
            HeaderField {
                name: e.name,
                name_bytes: &self.buf[start..start + e.name_len as usize],
                value: self.value_of(e),
            }
        })
    }

    /// Where header line `i` starts.
    pub(crate) fn line_start(&self, i: usize) -> usize {
        match i {
            0 => self.headers_start as usize,
            _ => self.headers.get(i - 1).line_end as usize,
        }
    }

    /// Header line `i` with its line break and folded continuations.
    pub(crate) fn line_range(&self, i: usize) -> (usize, usize) {
        (self.line_start(i), self.headers.get(i).line_end as usize)
    }

    fn value_of(&self, e: &Entry) -> &'a [u8] {
        &self.buf[e.value_start as usize..e.value_end as usize]
    }

    pub(crate) fn entry(&self, i: usize) -> &Entry {
        self.headers.get(i)
    }

    /// Index of the first header line called `name`.
    pub(crate) fn first_index(&self, name: HeaderName) -> Option<usize> {
        if name == HeaderName::Other {
            return None;
        }
        let i = self.first[name as usize];
        (i != NONE).then_some(i as usize)
    }

    pub(crate) fn entries_named(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = &Entry> + use<'_, 'a> {
        let from = self.first_index(name).unwrap_or(self.headers.len);
        (from..self.headers.len)
            .map(|i| self.headers.get(i))
            .filter(move |e| e.name == name)
    }

    pub(crate) fn headers_end(&self) -> usize {
        self.headers_end as usize
    }

    /// Start of the first header line (just past the start line).
    pub(crate) fn first_header_start(&self) -> usize {
        self.headers_start as usize
    }

    pub(crate) fn uri_range(&self) -> Option<(usize, usize)> {
        self.request_uri_bytes()
            .map(|u| (self.uri_start as usize, self.uri_start as usize + u.len()))
    }

    /// The value of the first header called `name` (whole line value; list
    /// headers are not split).
    pub fn header(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.first_index(name)
            .map(|i| self.value_of(self.headers.get(i)))
    }

    /// The value of the first header with this name as written
    /// (case-insensitive), for names sipedge does not know.
    pub fn header_by_name(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers()
            .find(|h| h.name_bytes.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// How many header lines are called `name`.
    pub fn count(&self, name: HeaderName) -> usize {
        self.entries_named(name).count()
    }

    /// Every value of `name` across all its header lines; list headers
    /// (Via, Route, Record-Route, ...) are split at their commas.
    pub fn values(&self, name: HeaderName) -> Values<'a, '_> {
        Values {
            msg: self,
            name,
            next: self.first_index(name).unwrap_or(self.headers.len),
            cur: None,
        }
    }

    /// The topmost Via value (parsed once, on first use).
    pub fn top_via(&self) -> Result<&Via<'a>, SipError> {
        self.top_via
            .get_or_init(|| {
                let v = self
                    .values(HeaderName::Via)
                    .next()
                    .ok_or(SipError::MissingHeader(HeaderName::Via))?;
                Via::parse(v).map_err(|_| SipError::BadVia)
            })
            .as_ref()
            .map_err(|e| *e)
    }

    fn required(&self, name: HeaderName) -> Result<&'a [u8], SipError> {
        self.header(name).ok_or(SipError::MissingHeader(name))
    }

    pub fn call_id(&self) -> Result<&'a [u8], SipError> {
        let v = self.required(HeaderName::CallId)?;
        // callid = word ["@" word]: no whitespace or controls inside.
        if v.is_empty() || v.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err(SipError::BadHeader(HeaderName::CallId));
        }
        Ok(v)
    }

    pub fn cseq(&self) -> Result<CSeq<'a>, SipError> {
        let v = self.required(HeaderName::CSeq)?;
        let n = v.iter().take_while(|b| b.is_ascii_digit()).count();
        let number = parse_decimal(&v[..n], u64::from(u32::MAX)).ok_or(SipError::BadCSeq)? as u32;
        let i = scan::skip_lws(v, n);
        if i == n {
            return Err(SipError::BadCSeq);
        }
        let m = &v[i..];
        if !scan::is_token_str(m) {
            return Err(SipError::BadCSeq);
        }
        Ok(CSeq {
            number,
            method: Method::from_bytes(m),
        })
    }

    pub fn from(&self) -> Result<NameAddr<'a>, SipError> {
        let v = self.required(HeaderName::From)?;
        NameAddr::parse(v).map_err(|_| SipError::BadHeader(HeaderName::From))
    }

    pub fn to(&self) -> Result<NameAddr<'a>, SipError> {
        *self.to.get_or_init(|| {
            let v = self.required(HeaderName::To)?;
            NameAddr::parse(v).map_err(|_| SipError::BadHeader(HeaderName::To))
        })
    }

    pub fn from_tag(&self) -> Result<Option<&'a [u8]>, SipError> {
        self.from().map(|a| a.tag())
    }

    pub fn to_tag(&self) -> Result<Option<&'a [u8]>, SipError> {
        self.to().map(|a| a.tag())
    }

    /// Max-Forwards, 0 to 255 (absent: `None`).
    pub fn max_forwards(&self) -> Result<Option<u8>, SipError> {
        match self.header(HeaderName::MaxForwards) {
            None => Ok(None),
            Some(v) => parse_decimal(v, 255)
                .map(|n| Some(n as u8))
                .ok_or(SipError::BadMaxForwards),
        }
    }

    /// The first Route entry, if any.
    pub fn first_route(&self) -> Result<Option<RouteEntry<'a>>, SipError> {
        self.values(HeaderName::Route)
            .next()
            .map(parse_route)
            .transpose()
    }

    /// Checks what a proxy must be able to rely on before acting on the
    /// message: the mandatory headers (Via, From, To, Call-ID, CSeq) are
    /// there once and parse, the CSeq method matches a request's method,
    /// Max-Forwards is 0-255, and a SIP Request-URI carries no `?headers`
    /// (RFC 4475 §3.1.2.11). Of the Via values, those the proxy routes by
    /// must parse: the top one, and for a response the one below it (where
    /// the response goes once ours is removed). Like Kamailio, the others
    /// pass through unexamined.
    pub fn validate(&self) -> Result<(), SipError> {
        use HeaderName::*;
        if let StartLine::Request { .. } = self.start {
            let uri = self.request_uri()?;
            if uri.is_sip() && uri.headers.is_some() {
                return Err(SipError::BadRequestUri);
            }
        }
        for name in [Via, From, To, CallId, CSeq] {
            if self.first_index(name).is_none() {
                return Err(SipError::MissingHeader(name));
            }
        }
        for name in [From, To, CallId, CSeq, MaxForwards] {
            if self.repeated & (1 << name as u32) != 0 {
                return Err(SipError::DuplicateHeader(name));
            }
        }
        self.top_via()?;
        if !self.is_request() {
            if let Some(v) = self.values(Via).nth(1) {
                super::via::Via::parse(v).map_err(|_| SipError::BadVia)?;
            }
        }
        let cseq = self.cseq()?;
        if let Some(method) = self.method() {
            if cseq.method.as_bytes() != method.as_bytes() {
                return Err(SipError::CSeqMethodMismatch);
            }
        }
        self.call_id()?;
        self.from()?;
        self.to()?;
        self.max_forwards()?;
        Ok(())
    }
}

fn parse_route(v: &[u8]) -> Result<RouteEntry<'_>, SipError> {
    let addr = NameAddr::parse(v).map_err(|_| SipError::BadHeader(HeaderName::Route))?;
    let uri = Uri::parse(addr.uri).map_err(|_| SipError::BadHeader(HeaderName::Route))?;
    if uri.scheme == Scheme::Other {
        return Err(SipError::BadHeader(HeaderName::Route));
    }
    Ok(RouteEntry { addr, uri })
}

/// Iterator over every value of one header name (see [`Message::values`]).
pub struct Values<'a, 'm> {
    msg: &'m Message<'a>,
    name: HeaderName,
    next: usize,
    cur: Option<CommaValues<'a>>,
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if let Some(cur) = &mut self.cur {
                if let Some(v) = cur.next() {
                    return Some(v);
                }
                self.cur = None;
            }
            while self.next < self.msg.headers.len {
                let e = self.msg.headers.get(self.next);
                self.next += 1;
                if e.name == self.name {
                    let v = self.msg.value_of(e);
                    if !self.name.is_list() {
                        return Some(v);
                    }
                    self.cur = Some(CommaValues::new(v));
                    break;
                }
            }
            self.cur.as_ref()?;
        }
    }
}

/// Index of the LF that ends the line starting `s`.
#[inline]
fn line_len(s: &[u8]) -> Result<usize, SipError> {
    memchr::memchr(b'\n', s).ok_or(SipError::UnterminatedHeaders)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    match line.last() {
        Some(b'\r') => &line[..line.len() - 1],
        _ => line,
    }
}

/// Parses the start line; returns it and the Request-URI's offset.
fn parse_start_line(line: &[u8], lenient: bool) -> Result<(StartLine<'_>, u32), SipError> {
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        let sp = memchr::memchr(b' ', line).ok_or(SipError::BadStartLine)?;
        parse_version(&line[..sp])?;
        let rest = &line[sp + 1..];
        if rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
            return Err(SipError::BadStartLine);
        }
        let code = rest[..3]
            .iter()
            .fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) {
            return Err(SipError::BadStartLine);
        }
        let reason = match rest.get(3) {
            None => &rest[3..],
            Some(b' ') => &rest[4..],
            Some(_) => return Err(SipError::BadStartLine),
        };
        return Ok((StartLine::Response { code, reason }, 0));
    }
    // Exactly one SP between the three elements (RFC 4475 §3.1.2.9/10 let
    // us refuse extra or trailing whitespace rather than guess). The
    // error-reply view only needs to find the elements to answer 400.
    let line = if lenient { scan::trim_end(line) } else { line };
    let sp1 = memchr::memchr(b' ', line).ok_or(SipError::BadStartLine)?;
    let sp2 = memchr::memrchr(b' ', line).ok_or(SipError::BadStartLine)?;
    if sp1 == sp2 {
        return Err(SipError::BadStartLine);
    }
    let method = &line[..sp1];
    let uri = &line[sp1 + 1..sp2];
    let uri = if lenient { scan::trim(uri) } else { uri };
    if !scan::is_token_str(method) {
        return Err(SipError::BadStartLine);
    }
    match parse_version(&line[sp2 + 1..]) {
        Err(SipError::UnsupportedVersion) if lenient => {}
        r => r?,
    }
    if uri.is_empty() || (!lenient && uri.iter().any(|&b| b == b' ' || b == b'\t')) {
        return Err(SipError::BadStartLine);
    }
    Ok((
        StartLine::Request {
            method: Method::from_bytes(method),
            uri,
        },
        scan::offset_in(line, uri) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP c.example.com;branch=z9hG4bK3\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
i: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n\
l: 4\r\n\
\r\n\
bodyEXTRA";

    #[test]
    fn parses_and_frames() {
        let m = Message::parse(INV).unwrap();
        m.validate().unwrap();
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.body(), b"body");
        assert_eq!(m.as_bytes(), &INV[..INV.len() - 5]);
        assert_eq!(m.call_id().unwrap(), b"a84b4c76e66710");
        assert_eq!(
            m.cseq().unwrap(),
            CSeq {
                number: 314159,
                method: Method::Invite
            }
        );
        assert_eq!(m.from_tag().unwrap(), Some(&b"1928301774"[..]));
        assert_eq!(m.to_tag().unwrap(), None);
        assert_eq!(m.max_forwards().unwrap(), Some(70));
        assert_eq!(m.values(HeaderName::Via).count(), 3);
        assert_eq!(m.top_via().unwrap().host_raw, b"a.example.com");
        let r = m.first_route().unwrap().unwrap();
        assert_eq!(r.uri.host_raw, Some(&b"p1.example.com"[..]));
        assert!(r.is_loose());
        assert_eq!(m.values(HeaderName::Route).count(), 2);
        assert_eq!(m.request_uri().unwrap().user, Some(&b"bob"[..]));
    }

    #[test]
    fn responses_and_reason_phrases() {
        let m =
            Message::parse(b"SIP/2.0 486 BusyHere\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\n\r\n")
                .unwrap();
        assert!(matches!(
            m.start_line(),
            StartLine::Response {
                code: 486,
                reason: b"BusyHere"
            }
        ));
        let m = Message::parse(b"SIP/2.0 100 \r\n\r\n").unwrap();
        assert!(matches!(
            m.start_line(),
            StartLine::Response {
                code: 100,
                reason: b""
            }
        ));
        assert_eq!(
            Message::parse(b"SIP/2.0 4294967301 x\r\n\r\n").unwrap_err(),
            SipError::BadStartLine
        );
        assert_eq!(
            Message::parse(b"SIP/7.0 200 OK\r\n\r\n").unwrap_err(),
            SipError::UnsupportedVersion
        );
    }

    #[test]
    fn start_line_errors() {
        let e = |s: &[u8]| Message::parse(s).unwrap_err();
        assert_eq!(
            e(b"INVITE sip:a@b SIP/7.0\r\n\r\n"),
            SipError::UnsupportedVersion
        );
        assert_eq!(
            e(b"INVITE  sip:a@b SIP/2.0\r\n\r\n"),
            SipError::BadStartLine
        );
        assert_eq!(
            e(b"INVITE sip:a@b SIP/2.0 \r\n\r\n"),
            SipError::BadStartLine
        );
        assert_eq!(e(b"INVITE sip:a@b\r\n\r\n"), SipError::BadStartLine);
        assert_eq!(
            e(b"INVITE sip:a@b SIP/2.0\r\nVia x\r\n\r\n"),
            SipError::BadHeaderLine
        );
        assert_eq!(
            e(b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n"),
            SipError::UnterminatedHeaders
        );
        assert_eq!(
            e(b"INVITE sip:a@b SIP/2.0\r\nl: 5\r\n\r\nab"),
            SipError::BodyShorterThanContentLength
        );
        assert_eq!(
            e(b"INVITE sip:a@b SIP/2.0\r\nl: -1\r\n\r\n"),
            SipError::BadContentLength
        );
        assert_eq!(
            e(b"INVITE sip:a@b SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nab"),
            SipError::BadContentLength
        );
        assert_eq!(
            e(b"INVITE sip:a@b SIP/2.0\r\n continued\r\n\r\n"),
            SipError::BadHeaderLine
        );
    }

    #[test]
    fn error_reply_view_skips_version_and_length() {
        let b = b"INVITE sip:a@b SIP/7.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 99\r\n\r\nab";
        assert_eq!(Message::parse(b).unwrap_err(), SipError::UnsupportedVersion);
        let m = Message::parse_for_error_reply(b).unwrap();
        assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bK1"[..]));
        assert!(Message::parse_for_error_reply(b"INVITE\r\n\r\n").is_none());
        let m =
            Message::parse_for_error_reply(b"INVITE  sip:a@b  SIP/2.0 \r\nCall-ID: x\r\n").unwrap();
        assert_eq!(m.request_uri_bytes(), Some(&b"sip:a@b"[..]));
        assert_eq!(m.call_id().unwrap(), b"x");
    }

    #[test]
    fn bare_lf_and_leading_crlf() {
        let m = Message::parse(b"\r\nOPTIONS sip:a@b SIP/2.0\nCall-ID: x\n\n").unwrap();
        assert_eq!(m.call_id().unwrap(), b"x");
        assert_eq!(m.as_bytes(), b"OPTIONS sip:a@b SIP/2.0\nCall-ID: x\n\n");
    }
}
