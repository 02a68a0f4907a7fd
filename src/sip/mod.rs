//! The SIP message layer: a zero-copy view over one message's bytes and an
//! editor that produces the forwarded bytes. No tokio here, so it can be
//! fuzzed and benchmarked alone.
//!
//! - [`Message`]: parse (datagram framing), header index, typed accessors,
//!   [`Message::validate`] for a proxy's sanity checks.
//! - [`frame_stream`]: framing for TCP (Content-Length, keep-alives, cap).
//! - [`Editor`]: splices the forwarding edits (Via, Record-Route, Route,
//!   Max-Forwards, Request-URI, received/rport) into a reusable buffer,
//!   leaving every other byte as received.
//! - [`Response`] and [`OptionsRequest`]: local responses and probes.

mod addr;
mod build;
mod edit;
mod error;
mod framing;
mod header;
mod message;
mod method;
mod scan;
mod uri;
mod via;

pub use addr::NameAddr;
pub use build::{HopRequest, OptionsRequest, Response};
pub use edit::{Edit, Editor};
pub use error::SipError;
pub use framing::{frame_stream, StreamFrame, DEFAULT_MAX_MESSAGE};
pub use header::HeaderName;
pub use message::{CSeq, HeaderField, Message, RouteEntry, StartLine, Values};
pub use method::Method;
pub(crate) use scan::is_token_str;
pub use scan::{CommaValues, Param, Params};
pub use uri::{Host, Scheme, Uri};
pub use via::{Rport, Via};
