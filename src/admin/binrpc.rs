//! Kamailio's BINRPC wire format, sans I/O: what the `ctl` module and
//! `kamcmd` speak. Frames a byte stream into packets, decodes a request to
//! its method and parameters, encodes replies and faults, and translates
//! between BINRPC records and the JSON values the methods of [`super::rpc`]
//! take and return, so one dispatch table serves both protocols.
//!
//! Read against Kamailio's `modules/ctl/binrpc.h` (header and record
//! encoding), `binrpc_run.c` (how `rpc->add`, `struct_add` and `fault`
//! lay out an answer) and `utils/kamcmd/kamcmd.c` (how the client sends
//! arguments and prints records).
//!
//! # Packet
//! `0xA1` (magic 0xA, version 1), then one byte `TTTT LL CC`: the packet
//! type (0 request, 1 reply, 3 fault), the length of the body length field
//! minus one and the length of the cookie minus one; then the body length
//! and the cookie, big endian, on those many bytes; then the body, a
//! sequence of records. A reply carries the request's cookie.
//!
//! # Records
//! One byte `S SSS TTTT`: a flag, a 3-bit size and the type. Without the
//! flag the size is the value's length in bytes; with it, the size is the
//! length of a big-endian length field that follows. Integers (type 0) are
//! big endian on 0 to 4 bytes; strings (1) carry a terminating NUL counted
//! in their length; doubles (2) are the value times 1000 as a 64-bit
//! integer on 0 to 8 bytes (all four size bits, no flag); bytes (6) are a
//! string without the NUL. Structures (3) and arrays (4) are a start tag
//! (size 0), their members, and an end tag (flag set, size 0). A structure
//! member is a name (type 5, written like a string) followed by its value;
//! kamcmd also reads unnamed values inside a structure, which is how
//! Kamailio sends what its RPC API calls an array (`[`): as a structure.
//!
//! # Limits
//! Nothing here panics on any input: lengths are checked against what is
//! there, nesting is capped at [`MAX_DEPTH`], and the caller caps a
//! packet's body at a size it chooses before reading it.

use std::fmt;

use serde_json::Value;

/// The first byte of every packet: magic 0xA, version 1.
pub const MAGIC_VERSION: u8 = 0xA1;

/// The shortest possible header: magic, type byte, one length byte, one
/// cookie byte.
pub const MIN_HEADER: usize = 4;

/// Deepest nesting of structures and arrays decoded. `dispatcher.list`
/// needs six.
pub const MAX_DEPTH: usize = 32;

const T_INT: u8 = 0;
const T_STR: u8 = 1;
const T_DOUBLE: u8 = 2;
const T_STRUCT: u8 = 3;
const T_ARRAY: u8 = 4;
const T_AVP: u8 = 5;
const T_BYTES: u8 = 6;

/// The flag bit of a record's first byte.
const FLAG: u8 = 0x80;

/// The kind of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Reply,
    Fault,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Request => 0,
            Kind::Reply => 1,
            Kind::Fault => 3,
        }
    }
}

/// A packet header, as read by [`parse_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Bytes of the header itself: the body starts there.
    pub header_len: usize,
    pub body_len: usize,
    pub cookie: u32,
}

impl Header {
    /// Header and body.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Why bytes are not a BINRPC packet. The texts follow Kamailio's
/// `binrpc_error` where one fits; they end up in fault messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("corrupted packet: not a BINRPC packet (first byte {0:#04x})")]
    Magic(u8),
    #[error("corrupted packet: unknown packet type {0}")]
    PacketType(u8),
    #[error("corrupted packet: body length {0} too large")]
    BodyLength(u64),
    #[error("more data needed: a record runs past the end of the packet")]
    Truncated,
    #[error("bad record: unknown record type {0}")]
    RecordType(u8),
    #[error("bad record: {0}")]
    Record(&'static str),
    #[error("bad record: nested more than {MAX_DEPTH} deep")]
    TooDeep,
    #[error("record doesn't match type: the method name must be a string")]
    MethodType,
    #[error("end of packet encountered: no method name")]
    NoMethod,
}

/// One BINRPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Int(i32),
    /// A string (type 1). Not UTF-8 bytes come out replaced.
    Str(String),
    Bytes(Vec<u8>),
    /// Kamailio's fixed point: three decimals survive the wire.
    Double(f64),
    Struct(Vec<Member>),
    Array(Vec<Record>),
}

/// A member of a structure: named (an AVP) or, as Kamailio sends array
/// elements, not.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: Option<String>,
    pub value: Record,
}

impl Member {
    pub fn named(name: impl Into<String>, value: Record) -> Member {
        Member {
            name: Some(name.into()),
            value,
        }
    }

    pub fn plain(value: Record) -> Member {
        Member { name: None, value }
    }
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub cookie: u32,
    pub method: String,
    pub params: Vec<Record>,
}

/// Reads a header from the start of `buf`. `Ok(None)`: more bytes are
/// needed to know. The body may not be there yet: see
/// [`Header::packet_len`].
///
/// # Errors
/// A first byte that is not [`MAGIC_VERSION`], an unknown packet type, or
/// a body length above `i32::MAX` (Kamailio keeps it in an `int`).
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != MAGIC_VERSION {
        return Err(Error::Magic(first));
    }
    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    let kind = match second >> 4 {
        0 => Kind::Request,
        1 => Kind::Reply,
        3 => Kind::Fault,
        other => return Err(Error::PacketType(other)),
    };
    let len_len = usize::from((second >> 2) & 3) + 1;
    let cookie_len = usize::from(second & 3) + 1;
    let header_len = 2 + len_len + cookie_len;
    let Some(fields) = buf.get(2..header_len) else {
        return Ok(None);
    };
    let (len_bytes, cookie_bytes) = fields.split_at(len_len);
    let body_len = be(len_bytes);
    if body_len > i32::MAX as u64 {
        return Err(Error::BodyLength(body_len));
    }
    Ok(Some(Header {
        kind,
        header_len,
        body_len: usize::try_from(body_len).map_err(|_| Error::BodyLength(body_len))?,
        // At most four bytes: fits.
        cookie: be(cookie_bytes) as u32,
    }))
}

/// Big endian, at most 4 bytes (the header's fields).
fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, &b| (n << 8) | u64::from(b))
}

/// Decodes a request packet: the header, then a method name (a string) and
/// the parameters. `packet` must hold exactly one whole packet.
///
/// # Errors
/// Anything [`parse_header`] refuses, a packet that is not a request, a
/// length that does not match, a body that does not decode, or a first
/// record that is not a string.
pub fn decode_request(packet: &[u8]) -> Result<Request, Error> {
    let header = parse_header(packet)?.ok_or(Error::Truncated)?;
    if header.kind != Kind::Request {
        return Err(Error::PacketType(header.kind.code()));
    }
    let body = packet
        .get(header.header_len..header.packet_len())
        .ok_or(Error::Truncated)?;
    let mut records = decode_body(body)?.into_iter();
    let method = match records.next() {
        Some(Record::Str(method)) => method,
        Some(_) => return Err(Error::MethodType),
        None => return Err(Error::NoMethod),
    };
    Ok(Request {
        cookie: header.cookie,
        method,
        params: records.collect(),
    })
}

/// Decodes a body: every top-level record in order (a reply's values, or
/// a request's method and parameters). Structures may hold named and
/// unnamed members, as kamcmd reads them.
///
/// # Errors
/// See [`Error`]: truncated or unknown records, a stray end tag or name,
/// nesting deeper than [`MAX_DEPTH`].
pub fn decode_body(body: &[u8]) -> Result<Vec<Record>, Error> {
    let mut reader = Reader { buf: body, pos: 0 };
    let mut out = Vec::new();
    while reader.pos < body.len() {
        match reader.token()? {
            Token::Value(v) => out.push(v),
            Token::Start(kind) => out.push(reader.container(kind, 1)?),
            Token::End(_) => return Err(Error::Record("an end tag outside a structure")),
            Token::Name(_) => return Err(Error::Record("a member name outside a structure")),
        }
    }
    Ok(out)
}

/// What one record header announces.
enum Token {
    Value(Record),
    Start(u8),
    End(u8),
    Name(String),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn token(&mut self) -> Result<Token, Error> {
        let first = self.take(1)?[0];
        let kind = first & 0x0f;
        let size = first >> 4;
        if kind == T_DOUBLE {
            // All four bits are the size: up to 8 bytes, never a length field.
            if size > 8 {
                return Err(Error::Record("a double longer than 8 bytes"));
            }
            let bytes = self.take(usize::from(size))?;
            // Kamailio reads it unsigned into a long long: 8 bytes carry a
            // negative value, fewer a positive one.
            let fixed = bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)) as i64;
            return Ok(Token::Value(Record::Double(fixed as f64 / 1000.0)));
        }
        let flagged = first & FLAG != 0;
        let len = if flagged {
            let field = self.take(usize::from(size & 7))?;
            let len = field.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
            if len > (self.buf.len() - self.pos) as u64 {
                return Err(Error::Truncated);
            }
            // Bounded by the rest of the buffer just above.
            len as usize
        } else {
            usize::from(size)
        };
        match kind {
            T_INT => {
                // Kamailio keeps the low 32 bits of a longer one.
                let bytes = self.take(len)?;
                let n = bytes.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b));
                Ok(Token::Value(Record::Int(n as i32)))
            }
            T_STR | T_AVP => {
                let bytes = self.take(len)?;
                // The length counts the terminating NUL.
                let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
                let text = String::from_utf8_lossy(text).into_owned();
                Ok(if kind == T_STR {
                    Token::Value(Record::Str(text))
                } else {
                    Token::Name(text)
                })
            }
            T_BYTES => Ok(Token::Value(Record::Bytes(self.take(len)?.to_vec()))),
            T_STRUCT | T_ARRAY => match (flagged, len) {
                (false, 0) => Ok(Token::Start(kind)),
                (true, 0) => Ok(Token::End(kind)),
                _ => Err(Error::Record("a structure or array tag with a size")),
            },
            other => Err(Error::RecordType(other)),
        }
    }

    /// The members of a structure or array whose start tag was just read,
    /// up to and including its end tag.
    fn container(&mut self, kind: u8, depth: usize) -> Result<Record, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let mut members = Vec::new();
        loop {
            let member = match self.token()? {
                Token::End(k) if k == kind => break,
                Token::End(_) => return Err(Error::Record("mismatched end tag")),
                Token::Value(v) => Member::plain(v),
                Token::Start(k) => Member::plain(self.container(k, depth + 1)?),
                Token::Name(_) if kind == T_ARRAY => {
                    return Err(Error::Record("a member name inside an array"))
                }
                Token::Name(name) => match self.token()? {
                    Token::Value(v) => Member::named(name, v),
                    Token::Start(T_STRUCT) => {
                        Member::named(name, self.container(T_STRUCT, depth + 1)?)
                    }
                    _ => return Err(Error::Record("a member name not followed by a value")),
                },
            };
            members.push(member);
        }
        Ok(if kind == T_ARRAY {
            Record::Array(members.into_iter().map(|m| m.value).collect())
        } else {
            Record::Struct(members)
        })
    }
}

/// Encodes a reply packet with these top-level records.
pub fn encode_reply(cookie: u32, records: &[Record]) -> Vec<u8> {
    let mut body = Vec::new();
    for r in records {
        write_record(&mut body, r);
    }
    packet(Kind::Reply, cookie, &body)
}

/// Encodes a fault: an integer code and a message, as Kamailio's
/// `rpc->fault` does (kamcmd prints `error: CODE - MESSAGE`).
pub fn encode_fault(cookie: u32, code: i32, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    write_record(&mut body, &Record::Int(code));
    write_record(&mut body, &Record::Str(message.to_owned()));
    packet(Kind::Fault, cookie, &body)
}

/// Encodes a request, as kamcmd does (tests and clients).
pub fn encode_request(cookie: u32, method: &str, params: &[Record]) -> Vec<u8> {
    let mut body = Vec::new();
    write_record(&mut body, &Record::Str(method.to_owned()));
    for p in params {
        write_record(&mut body, p);
    }
    packet(Kind::Request, cookie, &body)
}

fn packet(kind: Kind, cookie: u32, body: &[u8]) -> Vec<u8> {
    // A body above 4 GiB cannot be described; ours are far below (the
    // server caps what it sends).
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let len_bytes = minimal(body_len).max(1);
    let cookie_bytes = minimal(cookie).max(1);
    let mut out = Vec::with_capacity(2 + len_bytes + cookie_bytes + body.len());
    out.push(MAGIC_VERSION);
    // Both lengths are 1..=4: the casts keep two bits each.
    out.push((kind.code() << 4) | (((len_bytes - 1) as u8) << 2) | (cookie_bytes - 1) as u8);
    out.extend_from_slice(&body_len.to_be_bytes()[4 - len_bytes..]);
    out.extend_from_slice(&cookie.to_be_bytes()[4 - cookie_bytes..]);
    out.extend_from_slice(body);
    out
}

/// Bytes needed for `n` big endian, 0 for 0.
fn minimal(n: u32) -> usize {
    4 - (n.leading_zeros() / 8) as usize
}

/// Record header for a value of `len` bytes: in the size bits when under
/// 8, else in a length field.
fn write_head(out: &mut Vec<u8>, kind: u8, len: usize) {
    if len < 8 {
        // len < 8: fits the three size bits.
        out.push(((len as u8) << 4) | kind);
    } else {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let n = minimal(len);
        out.push(FLAG | ((n as u8) << 4) | kind);
        out.extend_from_slice(&len.to_be_bytes()[4 - n..]);
    }
}

fn write_text(out: &mut Vec<u8>, kind: u8, text: &str) {
    write_head(out, kind, text.len() + 1);
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

fn write_record(out: &mut Vec<u8>, record: &Record) {
    match record {
        Record::Int(n) => {
            let n = *n as u32;
            let len = minimal(n);
            out.push(((len as u8) << 4) | T_INT);
            out.extend_from_slice(&n.to_be_bytes()[4 - len..]);
        }
        Record::Str(s) => write_text(out, T_STR, s),
        Record::Bytes(b) => {
            write_head(out, T_BYTES, b.len());
            out.extend_from_slice(b);
        }
        Record::Double(f) => {
            // Kamailio's `(long long)(f * 1000)`: truncated toward zero,
            // saturating here where C would be undefined.
            let fixed = (f * 1000.0) as i64 as u64;
            let len = 8 - (fixed.leading_zeros() / 8) as usize;
            out.push(((len as u8) << 4) | T_DOUBLE);
            out.extend_from_slice(&fixed.to_be_bytes()[8 - len..]);
        }
        Record::Struct(members) => {
            out.push(T_STRUCT);
            for m in members {
                if let Some(name) = &m.name {
                    write_text(out, T_AVP, name);
                }
                write_record(out, &m.value);
            }
            out.push(FLAG | T_STRUCT);
        }
        Record::Array(items) => {
            out.push(T_ARRAY);
            for item in items {
                write_record(out, item);
            }
            out.push(FLAG | T_ARRAY);
        }
    }
}

/// A parameter as the JSON-RPC methods take it: integers and strings as
/// themselves, a double as a JSON number, bytes as text, a structure as an
/// object (unnamed members as an array) and an array as an array.
pub fn to_json(record: &Record) -> Value {
    match record {
        Record::Int(n) => Value::from(*n),
        Record::Str(s) => Value::String(s.clone()),
        Record::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Record::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Record::Struct(members) if members.iter().all(|m| m.name.is_some()) => Value::Object(
            members
                .iter()
                .map(|m| (m.name.clone().unwrap_or_default(), to_json(&m.value)))
                .collect(),
        ),
        Record::Struct(members) => {
            Value::Array(members.iter().map(|m| to_json(&m.value)).collect())
        }
        Record::Array(items) => Value::Array(items.iter().map(to_json).collect()),
    }
}

/// A method's result as Kamailio's RPC layer would have sent it over
/// BINRPC. `result` is the JSON-RPC result, members in the order the
/// method wrote them ([`Ordered`] keeps it).
///
/// - A top-level array is several top-level records (Kamailio's
///   `system.listMethods` calls `rpc->add` once per name; `jsonrpcs`
///   gathers such values into an array).
/// - An object is a structure of named members.
/// - An array inside is a structure: Kamailio's `[` is a structure on
///   this wire; an object element of it contributes its members (what
///   `struct_add` on an array handle writes, e.g. each `SET` of
///   `dispatcher.list`), any other element is an unnamed member.
/// - Integers that fit 32 bits are integers (from 2^31 to 2^32 - 1 as
///   their 32 bits, signed, as Kamailio sends an `unsigned int`), other
///   numbers doubles (as Kamailio sends its `long` values); booleans are 0 or 1; null is
///   Kamailio's `<null string>`.
pub fn from_result(result: &Ordered) -> Vec<Record> {
    match result {
        Ordered::List(items) => items.iter().map(record_of).collect(),
        other => vec![record_of(other)],
    }
}

fn record_of(value: &Ordered) -> Record {
    match value {
        Ordered::Null => Record::Str("<null string>".into()),
        Ordered::Bool(b) => Record::Int(i32::from(*b)),
        Ordered::Int(n) => match (i32::try_from(*n), u32::try_from(*n)) {
            (Ok(i), _) => Record::Int(i),
            // Kamailio's `u` (unsigned int, `dispatcher.hash`'s hashid)
            // goes out as the same 32 bits, read back as signed.
            (_, Ok(u)) => Record::Int(u as i32),
            _ => Record::Double(*n as f64),
        },
        Ordered::Float(f) => Record::Double(*f),
        Ordered::Str(s) => Record::Str(s.clone()),
        Ordered::Map(members) => Record::Struct(
            members
                .iter()
                .map(|(k, v)| Member::named(k.clone(), record_of(v)))
                .collect(),
        ),
        Ordered::List(items) => {
            let mut members = Vec::new();
            for item in items {
                match item {
                    Ordered::Map(inner) => members.extend(
                        inner
                            .iter()
                            .map(|(k, v)| Member::named(k.clone(), record_of(v))),
                    ),
                    other => members.push(Member::plain(record_of(other))),
                }
            }
            Record::Struct(members)
        }
    }
}

/// A JSON value that keeps the members of an object in the order they
/// were written (`serde_json::Value` sorts them), read from a method's
/// serialized result.
#[derive(Debug, Clone, PartialEq)]
pub enum Ordered {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Ordered>),
    Map(Vec<(String, Ordered)>),
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> serde::de::Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Null)
    }
    fn visit_none<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Ordered, E> {
        Ok(Ordered::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Ordered, E> {
        Ok(Ordered::Int(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Ordered, E> {
        Ok(i64::try_from(n).map_or(Ordered::Float(n as f64), Ordered::Int))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Ordered, E> {
        Ok(Ordered::Float(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Ordered, E> {
        Ok(Ordered::Str(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Ordered, E> {
        Ok(Ordered::Str(s))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Ordered::List(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry()? {
            members.push(member);
        }
        Ok(Ordered::Map(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(packet: &[u8]) -> &[u8] {
        let h = parse_header(packet).unwrap().unwrap();
        &packet[h.header_len..h.packet_len()]
    }

    #[test]
    fn header_examples_from_binrpc_h() {
        // One length byte, one cookie byte.
        let p = encode_reply(0x12, &[Record::Int(7)]);
        assert_eq!(p, [0xA1, 0x10, 0x02, 0x12, 0x10, 0x07]);
        let h = parse_header(&p).unwrap().unwrap();
        assert_eq!(
            h,
            Header {
                kind: Kind::Reply,
                header_len: 4,
                body_len: 2,
                cookie: 0x12
            }
        );
        // A four-byte cookie, a zero cookie still takes one byte.
        let p = encode_fault(0xdead_beef, 500, "x");
        assert_eq!(&p[..7], [0xA1, 0x33, 0x06, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(encode_request(0, "m", &[])[..4], [0xA1, 0x00, 0x03, 0x00]);
        // A 300-byte body needs two length bytes.
        let p = encode_reply(1, &[Record::Str("a".repeat(296))]);
        assert_eq!(&p[..5], [0xA1, 0x14, 0x01, 0x2c, 0x01]);
        assert_eq!(parse_header(&p).unwrap().unwrap().body_len, 300);
    }

    #[test]
    fn header_needs_more_or_refuses() {
        assert_eq!(parse_header(&[]), Ok(None));
        assert_eq!(parse_header(&[0xA1]), Ok(None));
        assert_eq!(parse_header(&[0xA1, 0x0f, 0, 0, 0]), Ok(None));
        assert_eq!(parse_header(b"GET / HTTP/1.1"), Err(Error::Magic(b'G')));
        assert_eq!(parse_header(&[0xA1, 0x20, 1, 1]), Err(Error::PacketType(2)));
        assert_eq!(
            parse_header(&[0xA1, 0x0c, 0xff, 0xff, 0xff, 0xff, 1]),
            Err(Error::BodyLength(0xffff_ffff))
        );
    }

    #[test]
    fn ints_are_minimal_big_endian() {
        for (n, bytes) in [
            (0, vec![0x00]),
            (7, vec![0x10, 0x07]),
            (0x1234, vec![0x20, 0x12, 0x34]),
            (i32::MAX, vec![0x40, 0x7f, 0xff, 0xff, 0xff]),
            (-1, vec![0x40, 0xff, 0xff, 0xff, 0xff]),
        ] {
            let body = body_of(&encode_reply(1, &[Record::Int(n)])).to_vec();
            assert_eq!(body, bytes, "{n}");
            assert_eq!(decode_body(&body).unwrap(), [Record::Int(n)]);
        }
        // binrpc.h's suboptimal forms read the same.
        assert_eq!(
            decode_body(&[0x90, 0x02, 0x12, 0x34]).unwrap(),
            [Record::Int(0x1234)]
        );
        assert_eq!(
            decode_body(&[0xA0, 0x00, 0x02, 0x12, 0x34]).unwrap(),
            [Record::Int(0x1234)]
        );
    }

    #[test]
    fn strings_carry_their_nul_and_long_ones_a_length_field() {
        let body = body_of(&encode_reply(1, &[Record::Str("abcdef".into())])).to_vec();
        assert_eq!(body, b"\x71abcdef\x00");
        let body = body_of(&encode_reply(1, &[Record::Str("abcdefhij".into())])).to_vec();
        assert_eq!(body, b"\x91\x0aabcdefhij\x00");
        let body = body_of(&encode_reply(1, &[Record::Str(String::new())])).to_vec();
        assert_eq!(body, [0x11, 0x00]);
        let long = "x".repeat(70_000);
        let body = body_of(&encode_reply(1, &[Record::Str(long.clone())])).to_vec();
        assert_eq!(&body[..4], [0xB1, 0x01, 0x11, 0x71]);
        assert_eq!(decode_body(&body).unwrap(), [Record::Str(long)]);
        assert_eq!(
            decode_body(b"\x11\x00").unwrap(),
            [Record::Str(String::new())]
        );
        // Not UTF-8: replaced, not refused.
        assert_eq!(
            decode_body(b"\x31\xff\x41\x00").unwrap(),
            [Record::Str("\u{fffd}A".into())]
        );
    }

    #[test]
    fn bytes_have_no_nul() {
        let body = body_of(&encode_reply(1, &[Record::Bytes(b"abcdef".to_vec())])).to_vec();
        assert_eq!(body, b"\x66abcdef");
        assert_eq!(
            decode_body(&body).unwrap(),
            [Record::Bytes(b"abcdef".to_vec())]
        );
        assert_eq!(to_json(&Record::Bytes(b"ab".to_vec())), Value::from("ab"));
    }

    #[test]
    fn doubles_are_fixed_point_thousandths() {
        for (f, bytes) in [
            (0.0, vec![0x02]),
            (1.5, vec![0x22, 0x05, 0xdc]),
            (20.104, vec![0x22, 0x4e, 0x88]),
        ] {
            let body = body_of(&encode_reply(1, &[Record::Double(f)])).to_vec();
            assert_eq!(body, bytes, "{f}");
            assert_eq!(decode_body(&body).unwrap(), [Record::Double(f)]);
        }
        let body = body_of(&encode_reply(1, &[Record::Double(-2.0)])).to_vec();
        assert_eq!(body.len(), 9);
        assert_eq!(body[0], 0x82, "eight bytes, no length field");
        assert_eq!(decode_body(&body).unwrap(), [Record::Double(-2.0)]);
        assert!(decode_body(&[0x92]).is_err(), "nine bytes is too long");
    }

    #[test]
    fn structs_hold_named_and_plain_members() {
        // binrpc.h's example: struct { intval: 3, s: "abc" }.
        let s = Record::Struct(vec![
            Member::named("intval", Record::Int(3)),
            Member::named("s", Record::Str("abc".into())),
        ]);
        let body = body_of(&encode_reply(1, std::slice::from_ref(&s))).to_vec();
        assert_eq!(body, b"\x03\x75intval\x00\x10\x03\x25s\x00\x41abc\x00\x83");
        assert_eq!(decode_body(&body).unwrap(), [s]);
        // Nested, and unnamed members (Kamailio's arrays).
        let nested = Record::Struct(vec![
            Member::named("NRSETS", Record::Int(1)),
            Member::named(
                "RECORDS",
                Record::Struct(vec![
                    Member::plain(Record::Str("x".into())),
                    Member::named("SET", Record::Struct(vec![])),
                ]),
            ),
        ]);
        let body = body_of(&encode_reply(1, std::slice::from_ref(&nested))).to_vec();
        assert_eq!(decode_body(&body).unwrap(), [nested]);
    }

    #[test]
    fn arrays_round_trip() {
        let a = Record::Array(vec![Record::Int(1), Record::Int(2)]);
        let body = body_of(&encode_reply(1, std::slice::from_ref(&a))).to_vec();
        assert_eq!(body, [0x04, 0x10, 0x01, 0x10, 0x02, 0x84]);
        assert_eq!(decode_body(&body).unwrap(), [a]);
        let combo = decode_body(b"\x04\x10\x07\x41abc\x00\x84").unwrap();
        assert_eq!(
            combo,
            [Record::Array(vec![
                Record::Int(7),
                Record::Str("abc".into())
            ])]
        );
        assert_eq!(to_json(&combo[0]), serde_json::json!([7, "abc"]));
    }

    #[test]
    fn requests_decode_to_method_and_params() {
        // What `kamcmd dispatcher.set_state ip 1 sip:10.0.1.10:5080` sends.
        let packet = encode_request(
            0x4d2,
            "dispatcher.set_state",
            &[
                Record::Str("ip".into()),
                Record::Int(1),
                Record::Str("sip:10.0.1.10:5080".into()),
            ],
        );
        let request = decode_request(&packet).unwrap();
        assert_eq!(request.cookie, 0x4d2);
        assert_eq!(request.method, "dispatcher.set_state");
        let params: Vec<Value> = request.params.iter().map(to_json).collect();
        assert_eq!(
            params,
            serde_json::json!(["ip", 1, "sip:10.0.1.10:5080"])
                .as_array()
                .unwrap()
                .clone()
        );
        assert_eq!(to_json(&Record::Double(1.5)), serde_json::json!(1.5));
    }

    #[test]
    fn bad_requests_are_errors() {
        let reply = encode_reply(1, &[Record::Str("m".into())]);
        assert_eq!(decode_request(&reply), Err(Error::PacketType(1)));
        assert_eq!(
            decode_request(&encode_reply(1, &[])[..]).map(|r| r.method),
            Err(Error::PacketType(1))
        );
        let mut no_method = encode_request(1, "m", &[]);
        no_method.truncate(4);
        no_method[2] = 0;
        assert_eq!(decode_request(&no_method), Err(Error::NoMethod));
        let mut int_method = vec![0xA1, 0x00, 0x02, 0x01, 0x10, 0x05];
        assert_eq!(decode_request(&int_method), Err(Error::MethodType));
        int_method[2] = 9;
        assert_eq!(decode_request(&int_method), Err(Error::Truncated));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            &[0x20, 0x12],                                     // int cut short
            &[0x71, b'a'],                                     // string cut short
            &[0x91],                                           // length field missing
            &[0xF1, 0xff],                                     // length field cut short
            &[0xF1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // huge length
            &[0x03, 0x10, 0x01],                               // struct never ended
            &[0x83],                                           // end without start
            &[0x84],                                           // array end without start
            &[0x03, 0x84],                                     // mismatched end
            &[0x35, b'a', b'b', 0],                            // a name at top level
            &[0x03, 0x25, b'a', 0, 0x83],                      // a name without a value
            &[0x03, 0x25, b'a', 0, 0x04, 0x84, 0x83],          // an array as a member value
            &[0x04, 0x25, b'a', 0, 0x10, 0x01, 0x84],          // a name in an array
            &[0x07],                                           // unknown type
            &[0x13, 0x00],                                     // struct start with a size
            &[0x93, 0x01, 0x00],                               // struct end with a size
        ];
        for bytes in cases {
            assert!(decode_body(bytes).is_err(), "{bytes:02x?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n(0x03u8, 100_000)
            .chain(std::iter::repeat_n(0x83u8, 100_000))
            .collect();
        assert_eq!(decode_body(&deep), Err(Error::TooDeep));
    }

    #[test]
    fn every_prefix_and_every_byte_flip_is_handled() {
        let packet = encode_reply(
            7,
            &[Record::Struct(vec![
                Member::named("a", Record::Int(-5)),
                Member::named("b", Record::Double(2.25)),
                Member::named(
                    "c",
                    Record::Struct(vec![Member::plain(Record::Str("x".repeat(20)))]),
                ),
            ])],
        );
        let body = body_of(&packet).to_vec();
        for cut in 0..body.len() {
            let _ = decode_body(&body[..cut]);
        }
        for i in 0..packet.len() {
            for bit in 0..8 {
                let mut p = packet.clone();
                p[i] ^= 1 << bit;
                if let Ok(Some(h)) = parse_header(&p) {
                    if let Some(b) = p.get(h.header_len..h.packet_len()) {
                        let _ = decode_body(b);
                    }
                }
                let _ = decode_request(&p);
            }
        }
    }

    #[test]
    fn results_map_as_kamailios_rpc_layer_writes_them() {
        let json = r#"{"NRSETS":1,"RECORDS":[{"SET":{"ID":1,"TARGETS":[
            {"DEST":{"URI":"sip:a","FLAGS":"AP","PRIORITY":0}}]}}]}"#;
        let ordered: Ordered = serde_json::from_str(json).unwrap();
        let records = from_result(&ordered);
        assert_eq!(
            records,
            [Record::Struct(vec![
                Member::named("NRSETS", Record::Int(1)),
                Member::named(
                    "RECORDS",
                    Record::Struct(vec![Member::named(
                        "SET",
                        Record::Struct(vec![
                            Member::named("ID", Record::Int(1)),
                            Member::named(
                                "TARGETS",
                                Record::Struct(vec![Member::named(
                                    "DEST",
                                    Record::Struct(vec![
                                        Member::named("URI", Record::Str("sip:a".into())),
                                        Member::named("FLAGS", Record::Str("AP".into())),
                                        Member::named("PRIORITY", Record::Int(0)),
                                    ])
                                )])
                            ),
                        ])
                    )])
                ),
            ])]
        );
        // A top-level array: one record per element.
        let names: Ordered = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert_eq!(
            from_result(&names),
            [Record::Str("a".into()), Record::Str("b".into())]
        );
        let scalars: Ordered =
            serde_json::from_str(r#"[true, null, 5000000000, 1.25, [1, {"k": 2}]]"#).unwrap();
        assert_eq!(
            from_result(&scalars),
            [
                Record::Int(1),
                Record::Str("<null string>".into()),
                Record::Double(5e9),
                Record::Double(1.25),
                Record::Struct(vec![
                    Member::plain(Record::Int(1)),
                    Member::named("k", Record::Int(2))
                ]),
            ]
        );
        assert_eq!(
            from_result(&Ordered::Str("Ok.".into())),
            [Record::Str("Ok.".into())]
        );
    }

    #[test]
    fn struct_params_become_objects_or_arrays() {
        let named = Record::Struct(vec![Member::named("a", Record::Int(1))]);
        assert_eq!(to_json(&named), serde_json::json!({"a": 1}));
        let plain = Record::Struct(vec![Member::plain(Record::Int(1))]);
        assert_eq!(to_json(&plain), serde_json::json!([1]));
    }
}
