//! Header names a proxy needs, with their compact forms (RFC 3261 §7.3.3
//! and the IANA registry), matched case-insensitively.

use std::fmt;

use super::scan;

/// A header name. `Other` covers every name the proxy does not interpret;
/// its bytes stay in the message's header index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    Via,
    Route,
    RecordRoute,
    MaxForwards,
    CallId,
    CSeq,
    From,
    To,
    Contact,
    ContentLength,
    ContentType,
    ContentEncoding,
    ProxyRequire,
    Require,
    Supported,
    Unsupported,
    UserAgent,
    Server,
    Allow,
    AllowEvents,
    Event,
    Expires,
    Subject,
    ReferTo,
    ReferredBy,
    SessionExpires,
    RetryAfter,
    Timestamp,
    Path,
    Other,
}

/// Number of variants, for per-name lookup tables.
pub(crate) const HEADER_NAME_COUNT: usize = HeaderName::Other as usize + 1;
// The parser keeps one bit per name in a u32.
const _: () = assert!(HEADER_NAME_COUNT <= 32);

use HeaderName::*;

/// A name of up to 16 bytes as a little-endian integer, zero-padded.
const fn lit(s: &[u8]) -> u128 {
    let mut v = 0u128;
    let mut i = 0;
    while i < s.len() {
        v |= (s[i] as u128) << (8 * i);
        i += 1;
    }
    v
}

/// Sets bit 0x20 in each of the first `n` bytes: folds ASCII letters to
/// lower case and leaves `-` as it is.
const fn fold_mask(n: usize) -> u128 {
    let mut v = 0u128;
    let mut i = 0;
    while i < n {
        v |= 0x20u128 << (8 * i);
        i += 1;
    }
    v
}

/// The low `n` bytes of a u128, for n in 0..=16.
static KEEP: [u128; 17] = {
    let mut t = [0u128; 17];
    let mut i = 1;
    while i < 17 {
        t[i] = (t[i - 1] << 8) | 0xff;
        i += 1;
    }
    t
};

static FOLD: [u128; 17] = {
    let mut t = [0u128; 17];
    let mut i = 0;
    while i < 17 {
        t[i] = fold_mask(i);
        i += 1;
    }
    t
};

/// Classifies `n` name bytes held zero-padded in `x`, which must be a
/// token (for tokens, OR-ing 0x20 folds only letters, so one compare per
/// candidate decides).
#[inline(always)]
fn classify(x: u128, n: usize) -> HeaderName {
    let f = x | FOLD[n];
    macro_rules! pick {
        ($($lit:literal => $h:expr),+) => {
            {
                $(if f == const { lit($lit) } { return $h; })+
            }
        };
    }
    match n {
        1 => {
            return match f as u8 {
                b'v' => Via,
                b'i' => CallId,
                b'f' => From,
                b't' => To,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'e' => ContentEncoding,
                b'k' => Supported,
                b's' => Subject,
                b'o' => Event,
                b'r' => ReferTo,
                b'b' => ReferredBy,
                b'x' => SessionExpires,
                b'u' => AllowEvents,
                _ => Other,
            }
        }
        2 => pick!(b"to" => To),
        3 => pick!(b"via" => Via),
        4 => pick!(b"from" => From, b"cseq" => CSeq, b"path" => Path),
        5 => pick!(b"route" => Route, b"allow" => Allow, b"event" => Event),
        6 => pick!(b"server" => Server),
        7 => pick!(
            b"call-id" => CallId,
            b"contact" => Contact,
            b"expires" => Expires,
            b"require" => Require,
            b"subject" => Subject
        ),
        8 => pick!(b"refer-to" => ReferTo),
        9 => pick!(b"supported" => Supported, b"timestamp" => Timestamp),
        10 => pick!(b"user-agent" => UserAgent),
        11 => pick!(
            b"retry-after" => RetryAfter,
            b"referred-by" => ReferredBy,
            b"unsupported" => Unsupported
        ),
        12 => pick!(
            b"max-forwards" => MaxForwards,
            b"record-route" => RecordRoute,
            b"content-type" => ContentType,
            b"allow-events" => AllowEvents
        ),
        13 => pick!(b"proxy-require" => ProxyRequire),
        14 => pick!(b"content-length" => ContentLength),
        15 => pick!(b"session-expires" => SessionExpires),
        16 => pick!(b"content-encoding" => ContentEncoding),
        _ => {}
    }
    Other
}

impl HeaderName {
    /// Every name, `Other` last (for per-name tables and tests).
    pub const ALL: [HeaderName; HEADER_NAME_COUNT] = [
        Via,
        Route,
        RecordRoute,
        MaxForwards,
        CallId,
        CSeq,
        From,
        To,
        Contact,
        ContentLength,
        ContentType,
        ContentEncoding,
        ProxyRequire,
        Require,
        Supported,
        Unsupported,
        UserAgent,
        Server,
        Allow,
        AllowEvents,
        Event,
        Expires,
        Subject,
        ReferTo,
        ReferredBy,
        SessionExpires,
        RetryAfter,
        Timestamp,
        Path,
        Other,
    ];

    /// Classifies a header name as it appears on the wire.
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        if name.is_empty() || name.len() > 16 || !name.iter().all(|&b| scan::is_token(b)) {
            return Other;
        }
        let mut buf = [0u8; 16];
        buf[..name.len()].copy_from_slice(name);
        classify(u128::from_le_bytes(buf), name.len())
    }

    /// The parser's fast path: `rest` starts with a token of `n` bytes (the
    /// name) and usually has 16 bytes to load at once.
    #[inline]
    pub(crate) fn from_token_prefix(rest: &[u8], n: usize) -> HeaderName {
        match rest.get(..16) {
            _ if n > 16 => Other,
            Some(head) => {
                let x = u128::from_le_bytes(head.try_into().unwrap_or([0; 16]));
                classify(x & KEEP[n], n)
            }
            None => HeaderName::from_bytes(&rest[..n]),
        }
    }

    /// The canonical full name, as sipedge writes it in headers it adds.
    pub fn as_str(self) -> &'static str {
        match self {
            Via => "Via",
            Route => "Route",
            RecordRoute => "Record-Route",
            MaxForwards => "Max-Forwards",
            CallId => "Call-ID",
            CSeq => "CSeq",
            From => "From",
            To => "To",
            Contact => "Contact",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            ContentEncoding => "Content-Encoding",
            ProxyRequire => "Proxy-Require",
            Require => "Require",
            Supported => "Supported",
            Unsupported => "Unsupported",
            UserAgent => "User-Agent",
            Server => "Server",
            Allow => "Allow",
            AllowEvents => "Allow-Events",
            Event => "Event",
            Expires => "Expires",
            Subject => "Subject",
            ReferTo => "Refer-To",
            ReferredBy => "Referred-By",
            SessionExpires => "Session-Expires",
            RetryAfter => "Retry-After",
            Timestamp => "Timestamp",
            Path => "Path",
            Other => "(other)",
        }
    }

    /// True for headers whose value is a comma-separated list that the
    /// proxy splits (RFC 3261 §7.3.1): several values may share one line.
    pub fn is_list(self) -> bool {
        matches!(
            self,
            Via | Route
                | RecordRoute
                | Contact
                | ProxyRequire
                | Require
                | Supported
                | Unsupported
                | Allow
                | AllowEvents
                | Path
        )
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case_insensitive() {
        assert_eq!(HeaderName::from_bytes(b"v"), Via);
        assert_eq!(HeaderName::from_bytes(b"I"), CallId);
        assert_eq!(HeaderName::from_bytes(b"MaX-fOrWaRdS"), MaxForwards);
        assert_eq!(HeaderName::from_bytes(b"record-ROUTE"), RecordRoute);
        assert_eq!(HeaderName::from_bytes(b"l"), ContentLength);
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), Other);
        assert_eq!(HeaderName::from_bytes(b"NewFangledHeader"), Other);
        assert_eq!(HeaderName::from_bytes(b""), Other);
        assert_eq!(HeaderName::from_bytes(b"y"), Other);
        assert_eq!(HeaderName::from_bytes(b"content\rlength"), Other);
        assert_eq!(HeaderName::from_bytes(b"Call_ID"), Other);
    }

    #[test]
    fn fast_path_agrees_with_exact() {
        let names: &[&[u8]] = &[
            b"Via",
            b"v",
            b"CSEQ",
            b"call-id",
            b"Call-Info",
            b"Content-Length",
            b"content-lengtH",
            b"Content-Encoding",
            b"Content-Encodingx",
            b"X-Node",
            b"To",
            b"tO",
            b"Max-Forward",
            b"Session-Expires",
            b"P-Asserted-Identity",
            b"k",
            b"q",
        ];
        for &n in names {
            let mut line = n.to_vec();
            line.extend_from_slice(b": some value that is long enough\r\n");
            let exact = HeaderName::from_bytes(n);
            assert_eq!(HeaderName::from_token_prefix(&line, n.len()), exact);
            // At the very end of a buffer: fewer than 16 bytes to load.
            assert_eq!(HeaderName::from_token_prefix(n, n.len()), exact);
        }
    }

    #[test]
    fn every_full_name_round_trips() {
        // ALL lists every variant once, in declaration order.
        for (i, h) in HeaderName::ALL.into_iter().enumerate() {
            assert_eq!(h as usize, i, "{h:?}");
        }
        for h in HeaderName::ALL.into_iter().filter(|&h| h != Other) {
            assert_eq!(HeaderName::from_bytes(h.as_str().as_bytes()), h, "{h}");
            assert_eq!(
                HeaderName::from_bytes(h.as_str().to_ascii_uppercase().as_bytes()),
                h
            );
        }
    }
}
