//! Errors to SIP answers: a malformed request gets 400 (505 for another
//! SIP version) with the error as its reason phrase when a response can be
//! routed; everything else is dropped and counted, never a panic.

use std::sync::Arc;

use super::Proxy;
use crate::metrics::DropReason;
use crate::sip::{Message, Method, SipError};
use crate::transport::Peer;

impl Proxy {
    /// `data` did not parse.
    pub(super) fn on_unparsable(self: &Arc<Self>, data: &[u8], src: Peer, err: SipError) {
        let Some(req) = Message::parse_for_error_reply(data).filter(Message::is_request) else {
            // A response, or too broken to answer (no start line, no Via).
            self.metrics.dropped(DropReason::Unparsable);
            tracing::debug!(%src, "dropped unparsable message: {err}");
            return;
        };
        self.reject(&req, src, err);
    }

    /// Answers a request that failed validation.
    pub(super) fn reject(&self, req: &Message<'_>, src: Peer, err: SipError) {
        // An ACK is never answered (RFC 3261 §17.2.1); without any Via
        // there is nothing to copy into a response.
        if req.method() == Some(Method::Ack) || req.header(crate::sip::HeaderName::Via).is_none() {
            self.metrics.dropped(DropReason::Malformed);
            tracing::debug!(%src, "dropped bad request: {err}");
            return;
        }
        let code = err.status();
        self.rejected(req, err.into());
        tracing::debug!(%src, "answering {code}: {err}");
        if req.top_via().is_err() {
            // A Via we cannot read: answer where the request came from.
            let mut out = bytes::BytesMut::new();
            let tag = self.branches.tag();
            crate::sip::Response::new(req, code, err.to_string().as_bytes(), tag.as_bytes())
                .write(&mut out);
            self.metrics
                .response_status(crate::metrics::ResponseOrigin::Local, code);
            let _ = self.send_to(&out, src);
            return;
        }
        self.reply(req, src, code, err.to_string().as_bytes());
    }
}
