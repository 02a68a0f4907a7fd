//! The message layer's one error type.

use super::header::HeaderName;

/// What was wrong with a message. `Incomplete` (a stream needs more bytes)
/// is kept apart from every kind of invalid input; [`SipError::status`]
/// gives the response a proxy sends for the invalid ones. The Display text
/// is short ASCII so it can serve as a reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// Not enough bytes yet (stream framing only).
    #[error("Incomplete message")]
    Incomplete,
    /// Bigger than the configured cap.
    #[error("Message too large")]
    TooLarge,
    #[error("Bad start line")]
    BadStartLine,
    #[error("Version not supported")]
    UnsupportedVersion,
    #[error("Bad Request-URI")]
    BadRequestUri,
    /// A header line without a colon, or with an invalid name.
    #[error("Bad header line")]
    BadHeaderLine,
    /// The header section has no terminating empty line.
    #[error("Headers not terminated")]
    UnterminatedHeaders,
    #[error("Missing {0} header")]
    MissingHeader(HeaderName),
    /// A single-valued header given more than once (RFC 4475 §3.3.8).
    #[error("Duplicate {0} header")]
    DuplicateHeader(HeaderName),
    #[error("Bad {0} header")]
    BadHeader(HeaderName),
    #[error("Bad Via header")]
    BadVia,
    #[error("Bad CSeq header")]
    BadCSeq,
    #[error("CSeq method does not match")]
    CSeqMethodMismatch,
    #[error("Bad Max-Forwards header")]
    BadMaxForwards,
    /// Max-Forwards is 0: the request may not be forwarded.
    #[error("Too Many Hops")]
    TooManyHops,
    #[error("Bad Content-Length")]
    BadContentLength,
    /// Content-Length says more bytes than the datagram carries.
    #[error("Content-Length exceeds body")]
    BodyShorterThanContentLength,
}

impl SipError {
    /// True when the input may still become valid with more bytes.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, SipError::Incomplete)
    }

    /// The status code a proxy answers a request with when it fails this
    /// way (responses that fail are dropped instead).
    pub fn status(&self) -> u16 {
        match self {
            SipError::UnsupportedVersion => 505,
            SipError::TooManyHops => 483,
            SipError::TooLarge => 513,
            _ => 400,
        }
    }
}
