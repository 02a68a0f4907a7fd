//! Every final error sipedge answers itself, in one place (issue 11, the
//! linkerd `ServerRescue` habit): a [`Refusal`] says why, its
//! [`Refusal::answer`] gives the status, reason phrase, extra header and
//! `sipedge_invites_rejected_total` label, and [`Proxy::refuse`] counts and
//! sends it. A message too broken to answer is dropped and counted instead;
//! never a panic.
//!
//! The INVITE state machine (`crate::transaction::invite`) answers its own
//! 503 when no node is left, counted there as `all_down` too.

use std::borrow::Cow;
use std::sync::Arc;

use super::Proxy;
use crate::metrics::{DropReason, RejectReason};
use crate::sip::{HeaderName, Message, Method, SipError};
use crate::transport::Peer;

/// Why sipedge answers a request itself with a final error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal<'a> {
    /// It failed validation or the forwarding edit: [`SipError::status`]
    /// (400, 483 at Max-Forwards 0, 505, 513), the error as the phrase.
    Invalid(SipError),
    /// A Request-URI scheme other than sip/sips (416).
    UnsupportedUri,
    /// Proxy-Require names extensions we lack (420, RFC 3261 §16.3 step
    /// 4): this Proxy-Require value, listed back in Unsupported.
    BadExtension(&'a [u8]),
    /// An in-dialog request or CANCEL nobody knows (481).
    UnknownDialog,
    /// No node takes the request (503).
    AllDown,
    /// Draining before exit: new INVITEs get 503.
    ShuttingDown,
    /// `[limits] transactions` reached: 503 with Retry-After (RFC 3261
    /// §21.5.4: the sender may retry elsewhere or later).
    Overload,
    /// From a source `[security] trusted` does not list (403).
    Forbidden,
    /// A node's request whose Request-URI has nowhere further to go (404).
    NoRoute,
    /// The host name a node's request goes to did not resolve (478, as
    /// Kamailio answers).
    Unresolvable,
}

/// What a [`Refusal`] is answered with.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer<'a> {
    pub code: u16,
    pub phrase: Cow<'static, [u8]>,
    /// One extra header of the response.
    pub header: Option<(&'static str, &'a [u8])>,
    /// Counted when the request is an INVITE.
    pub label: RejectReason,
}

impl<'a> Refusal<'a> {
    /// The one table of local final answers.
    pub(super) fn answer(self) -> Answer<'a> {
        let (code, phrase, header, label): (u16, &'static [u8], _, _) = match self {
            Refusal::Invalid(err) => {
                return Answer {
                    code: err.status(),
                    // SipError's Display is short ASCII, fit for a phrase.
                    phrase: Cow::Owned(err.to_string().into_bytes()),
                    header: None,
                    label: err.into(),
                };
            }
            Refusal::UnsupportedUri => (
                416,
                b"Unsupported URI Scheme",
                None,
                RejectReason::UnsupportedUri,
            ),
            Refusal::BadExtension(list) => (
                420,
                b"Bad Extension",
                Some(("Unsupported", list)),
                RejectReason::BadExtension,
            ),
            Refusal::UnknownDialog => (
                481,
                b"Call/Transaction Does Not Exist",
                None,
                RejectReason::UnknownDialog,
            ),
            Refusal::AllDown => (
                503,
                b"All media servers unavailable",
                None,
                RejectReason::AllDown,
            ),
            Refusal::ShuttingDown => (503, b"Shutting down", None, RejectReason::ShuttingDown),
            Refusal::Overload => (
                503,
                b"Service Unavailable",
                Some(("Retry-After", b"5".as_slice())),
                RejectReason::Overload,
            ),
            Refusal::Forbidden => (403, b"Forbidden", None, RejectReason::Forbidden),
            Refusal::NoRoute => (404, b"Not Found", None, RejectReason::NoRoute),
            Refusal::Unresolvable => (
                478,
                b"Unresolvable destination",
                None,
                RejectReason::Unresolvable,
            ),
        };
        Answer {
            code,
            phrase: Cow::Borrowed(phrase),
            header,
            label,
        }
    }
}

impl Proxy {
    /// `data` did not parse.
    pub(super) fn on_unparsable(self: &Arc<Self>, data: &[u8], src: Peer, err: SipError) {
        let Some(req) = Message::parse_for_error_reply(data).filter(Message::is_request) else {
            // A response, or too broken to answer (no start line, no Via).
            self.metrics.dropped(DropReason::Unparsable);
            tracing::debug!(%src, "dropped unparsable message: {err}");
            return;
        };
        self.refuse(&req, src, Refusal::Invalid(err));
    }

    /// Answers `req` with the final error `refusal` chooses, counted in
    /// `sipedge_invites_rejected_total` when it is an INVITE (that metric
    /// counts calls).
    pub(super) fn refuse(&self, req: &Message<'_>, src: Peer, refusal: Refusal<'_>) {
        if let Refusal::Invalid(err) = refusal {
            // An ACK is never answered (RFC 3261 §17.2.1); without any Via
            // there is nothing to copy into a response.
            if req.method() == Some(Method::Ack) || req.header(HeaderName::Via).is_none() {
                self.metrics.dropped(DropReason::Malformed);
                tracing::debug!(%src, "dropped bad request: {err}");
                return;
            }
        }
        let answer = refusal.answer();
        if req.method() == Some(Method::Invite) {
            self.metrics.invite_rejected(answer.label);
        }
        tracing::debug!(%src, "answering {}: {refusal:?}", answer.code);
        if matches!(refusal, Refusal::Invalid(_)) && req.top_via().is_err() {
            // A Via we cannot read: answer where the request came from.
            let mut out = bytes::BytesMut::new();
            let tag = self.branches.tag();
            crate::sip::Response::new(req, answer.code, &answer.phrase, tag.as_bytes())
                .write(&mut out);
            self.metrics
                .response_status(crate::metrics::ResponseOrigin::Local, answer.code);
            let _ = self.send_to(&out, src);
            return;
        }
        self.reply_with(
            req,
            src,
            answer.code,
            &answer.phrase,
            answer.header.as_slice(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RejectReason as R;

    /// A refusal, its code, phrase, extra header and label.
    type Row = (Refusal<'static>, u16, &'static str, Header, R);
    type Header = Option<(&'static str, &'static [u8])>;

    /// Every refusal (every SipError class for `Invalid`) with what goes
    /// on the wire and the label it counts.
    fn table() -> Vec<Row> {
        use Refusal::*;
        vec![
            (
                Invalid(SipError::BadCSeq),
                400,
                "Bad CSeq header",
                None,
                R::Malformed,
            ),
            (
                Invalid(SipError::TooManyHops),
                483,
                "Too Many Hops",
                None,
                R::MaxForwards,
            ),
            (
                Invalid(SipError::UnsupportedVersion),
                505,
                "Version not supported",
                None,
                R::UnsupportedVersion,
            ),
            (
                Invalid(SipError::TooLarge),
                513,
                "Message too large",
                None,
                R::TooLarge,
            ),
            (
                UnsupportedUri,
                416,
                "Unsupported URI Scheme",
                None,
                R::UnsupportedUri,
            ),
            (
                BadExtension(b"foo"),
                420,
                "Bad Extension",
                Some(("Unsupported", b"foo")),
                R::BadExtension,
            ),
            (
                UnknownDialog,
                481,
                "Call/Transaction Does Not Exist",
                None,
                R::UnknownDialog,
            ),
            (
                AllDown,
                503,
                "All media servers unavailable",
                None,
                R::AllDown,
            ),
            (ShuttingDown, 503, "Shutting down", None, R::ShuttingDown),
            (
                Overload,
                503,
                "Service Unavailable",
                Some(("Retry-After", b"5")),
                R::Overload,
            ),
            (Forbidden, 403, "Forbidden", None, R::Forbidden),
            (NoRoute, 404, "Not Found", None, R::NoRoute),
            (
                Unresolvable,
                478,
                "Unresolvable destination",
                None,
                R::Unresolvable,
            ),
        ]
    }

    #[test]
    fn every_reject_reason_is_some_refusals_label() {
        let labels: Vec<R> = table().iter().map(|row| row.0.answer().label).collect();
        for reason in R::ALL {
            assert!(
                labels.contains(reason),
                "{reason:?} is produced by no refusal: a dead label"
            );
        }
    }

    #[test]
    fn each_refusal_has_its_answer() {
        for (refusal, code, phrase, header, label) in table() {
            let want = Answer {
                code,
                phrase: Cow::Borrowed(phrase.as_bytes()),
                header,
                label,
            };
            assert_eq!(refusal.answer(), want, "{refusal:?}");
        }
    }
}
