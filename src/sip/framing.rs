//! Stream (TCP) framing: where one message ends in a byte stream (RFC 3261
//! §18.3), with RFC 5626 CRLF keep-alives and a size cap.

use super::error::SipError;
use super::header::HeaderName;
use super::message::{parse_decimal, MAX_CONTENT_LENGTH};
use super::scan;

/// Default cap on one message's size on a stream.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrame {
    /// CR/LF bytes between messages. `ping` is an RFC 5626 double-CRLF
    /// keep-alive, which the transport answers with a single CRLF.
    KeepAlive { len: usize, ping: bool },
    /// A whole message of `len` bytes: pass `&buf[..len]` to
    /// [`Message::parse`](super::Message::parse).
    Message { len: usize },
}

/// Frames the front of `buf`. Returns `Incomplete` until the header section
/// and `Content-Length` body bytes are there, `TooLarge` beyond `max`, and
/// `BadContentLength` when the length is unusable (the stream cannot be
/// resynchronised then: close it). A missing Content-Length means an empty
/// body.
pub fn frame_stream(buf: &[u8], max: usize) -> Result<StreamFrame, SipError> {
    match buf {
        [] | [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Err(SipError::Incomplete),
        [b'\r', b'\n', b'\r', b'\n', ..] => {
            return Ok(StreamFrame::KeepAlive { len: 4, ping: true })
        }
        [b'\r', b'\n', ..] => {
            return Ok(StreamFrame::KeepAlive {
                len: 2,
                ping: false,
            })
        }
        [b'\r' | b'\n', ..] => {
            return Ok(StreamFrame::KeepAlive {
                len: 1,
                ping: false,
            })
        }
        _ => {}
    }
    let window = &buf[..buf.len().min(max)];
    let mut pos = 0;
    let mut content_length: Option<u64> = None;
    let mut first_line = true;
    let body_start = loop {
        let Some(nl) = memchr::memchr(b'\n', &window[pos..]).map(|i| pos + i) else {
            return Err(if buf.len() >= max {
                SipError::TooLarge
            } else {
                SipError::Incomplete
            });
        };
        let line = &window[pos..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break nl + 1;
        }
        if !first_line && !scan::is_wsp(line[0]) {
            if let Some(colon) = memchr::memchr(b':', line) {
                if HeaderName::from_bytes(scan::trim_end(&line[..colon]))
                    == HeaderName::ContentLength
                {
                    let v = scan::trim(&line[colon + 1..]);
                    // The same rule as the datagram parser.
                    let n =
                        parse_decimal(v, MAX_CONTENT_LENGTH).ok_or(SipError::BadContentLength)?;
                    if content_length.is_some_and(|c| c != n) {
                        return Err(SipError::BadContentLength);
                    }
                    content_length = Some(n);
                }
            }
        }
        first_line = false;
        pos = nl + 1;
    };
    let total = body_start as u64 + content_length.unwrap_or(0);
    if total > max as u64 {
        return Err(SipError::TooLarge);
    }
    if (buf.len() as u64) < total {
        return Err(SipError::Incomplete);
    }
    Ok(StreamFrame::Message {
        len: total as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\nVia: SIP/2.0/TCP h\r\n\r\nhello";

    #[test]
    fn incomplete_until_body_complete() {
        for n in 0..MSG.len() {
            assert_eq!(
                frame_stream(&MSG[..n], 1024),
                Err(SipError::Incomplete),
                "{n}"
            );
        }
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(
            frame_stream(&two, 1024),
            Ok(StreamFrame::Message { len: MSG.len() })
        );
    }

    #[test]
    fn keepalives() {
        assert_eq!(
            frame_stream(b"\r\n\r\nOPT", 1024),
            Ok(StreamFrame::KeepAlive { len: 4, ping: true })
        );
        assert_eq!(
            frame_stream(b"\r\nOPT", 1024),
            Ok(StreamFrame::KeepAlive {
                len: 2,
                ping: false
            })
        );
        assert_eq!(frame_stream(b"\r\n", 1024), Err(SipError::Incomplete));
        assert_eq!(
            frame_stream(b"\nX", 1024),
            Ok(StreamFrame::KeepAlive {
                len: 1,
                ping: false
            })
        );
    }

    #[test]
    fn caps_and_bad_lengths() {
        assert_eq!(frame_stream(MSG, 20), Err(SipError::TooLarge));
        assert_eq!(frame_stream(MSG, 50), Err(SipError::TooLarge));
        let big = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999\r\n\r\n";
        assert_eq!(frame_stream(big, 1024), Err(SipError::TooLarge));
        let neg = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(frame_stream(neg, 1024), Err(SipError::BadContentLength));
        let two = b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nab";
        assert_eq!(frame_stream(two, 1024), Err(SipError::BadContentLength));
        let zeros = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 000000000002\r\n\r\nab";
        assert_eq!(
            frame_stream(zeros, 1024),
            Ok(StreamFrame::Message { len: zeros.len() })
        );
        let none = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\nNEXT";
        assert_eq!(
            frame_stream(none, 1024),
            Ok(StreamFrame::Message {
                len: none.len() - 4
            })
        );
    }
}
