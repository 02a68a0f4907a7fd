//! Header names a proxy needs, with their compact forms (RFC 3261 §7.3.3
//! and the IANA registry), matched case-insensitively.

use std::fmt;

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

use HeaderName::*;

// Candidates by lower-cased first byte: (lower-case full name, header).
const A: &[(&[u8], HeaderName)] = &[(b"allow", Allow), (b"allow-events", AllowEvents)];
const C: &[(&[u8], HeaderName)] = &[
    (b"call-id", CallId),
    (b"cseq", CSeq),
    (b"contact", Contact),
    (b"content-length", ContentLength),
    (b"content-type", ContentType),
    (b"content-encoding", ContentEncoding),
];
const E: &[(&[u8], HeaderName)] = &[(b"expires", Expires), (b"event", Event)];
const F: &[(&[u8], HeaderName)] = &[(b"from", From)];
const M: &[(&[u8], HeaderName)] = &[(b"max-forwards", MaxForwards)];
const P: &[(&[u8], HeaderName)] = &[(b"proxy-require", ProxyRequire), (b"path", Path)];
const R: &[(&[u8], HeaderName)] = &[
    (b"route", Route),
    (b"record-route", RecordRoute),
    (b"require", Require),
    (b"refer-to", ReferTo),
    (b"referred-by", ReferredBy),
    (b"retry-after", RetryAfter),
];
const S: &[(&[u8], HeaderName)] = &[
    (b"supported", Supported),
    (b"server", Server),
    (b"subject", Subject),
    (b"session-expires", SessionExpires),
];
const T: &[(&[u8], HeaderName)] = &[(b"to", To), (b"timestamp", Timestamp)];
const U: &[(&[u8], HeaderName)] = &[(b"user-agent", UserAgent), (b"unsupported", Unsupported)];
const V: &[(&[u8], HeaderName)] = &[(b"via", Via)];

impl HeaderName {
    /// Classifies a header name as it appears on the wire.
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        let Some(&first) = name.first() else {
            return Other;
        };
        let first = first.to_ascii_lowercase();
        if name.len() == 1 {
            return match first {
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
            };
        }
        let cands = match first {
            b'a' => A,
            b'c' => C,
            b'e' => E,
            b'f' => F,
            b'm' => M,
            b'p' => P,
            b'r' => R,
            b's' => S,
            b't' => T,
            b'u' => U,
            b'v' => V,
            _ => return Other,
        };
        for &(full, h) in cands {
            if full.len() == name.len() && full.eq_ignore_ascii_case(name) {
                return h;
            }
        }
        Other
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
    }

    #[test]
    fn every_full_name_round_trips() {
        for h in [
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
        ] {
            assert_eq!(HeaderName::from_bytes(h.as_str().as_bytes()), h, "{h}");
            assert_eq!(
                HeaderName::from_bytes(h.as_str().to_ascii_uppercase().as_bytes()),
                h
            );
        }
    }
}
