//! Every final error sipedge answers itself, in one place (the linkerd
//! `ServerRescue` habit): a [`Refusal`] says why, its [`Refusal::answer`]
//! gives the status, reason phrase, extra header and reject reason, and
//! [`Proxy::refuse`] counts and sends it: under its reason in
//! `sipedge_requests_rejected_total` whatever the method, and in
//! `sipedge_invites_rejected_total` too for an INVITE. A message too
//! broken to answer is dropped and counted instead; never a panic.
//!
//! The transaction machines say why (a new INVITE's
//! [`crate::transaction::invite::Outcome`], a forwarded request's
//! [`crate::transaction::relay::RelayAction`]); the answer is chosen here
//! too.

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
    /// An in-dialog request that only our Record-Route's hint would route,
    /// and its MAC does not verify (`[cluster] secret`): 481, as for a
    /// dialog nobody knows, counted apart.
    BadRouteHint,
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
    /// The trunk cancelled the INVITE and no node answered that (487).
    Cancelled,
    /// No final answer in time (408, RFC 3261 §16.7 step 10 / §16.8).
    TimedOut,
    /// A forwarded request's next hop cannot be reached (503, §16.8).
    Unreachable,
}

impl From<crate::transaction::invite::Outcome> for Refusal<'_> {
    fn from(o: crate::transaction::invite::Outcome) -> Self {
        use crate::transaction::invite::Outcome;
        match o {
            Outcome::AllDown => Refusal::AllDown,
            Outcome::Cancelled => Refusal::Cancelled,
            Outcome::TimedOut => Refusal::TimedOut,
            Outcome::TooLarge => Refusal::Invalid(SipError::TooLarge),
        }
    }
}

/// What a [`Refusal`] is answered with.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer<'a> {
    pub code: u16,
    pub phrase: Cow<'static, [u8]>,
    /// One extra header of the response.
    pub header: Option<(&'static str, &'a [u8])>,
    /// The reason it is counted under (`sipedge_requests_rejected_total`,
    /// and `sipedge_invites_rejected_total` for an INVITE); none for a
    /// cancelled INVITE (the caller's choice, not a rejection).
    pub label: Option<RejectReason>,
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
                    label: Some(err.into()),
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
            Refusal::BadRouteHint => (
                481,
                b"Call/Transaction Does Not Exist",
                None,
                RejectReason::BadRouteHint,
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
            Refusal::Cancelled => {
                return Answer {
                    code: 487,
                    phrase: Cow::Borrowed(b"Request Terminated"),
                    header: None,
                    label: None,
                };
            }
            Refusal::TimedOut => (408, b"Request Timeout", None, RejectReason::Timeout),
            Refusal::Unreachable => (503, b"Service Unavailable", None, RejectReason::Unreachable),
        };
        Answer {
            code,
            phrase: Cow::Borrowed(phrase),
            header,
            label: Some(label),
        }
    }
}

impl Proxy {
    /// Counts a local final answer to `req` under its reason: in
    /// `sipedge_requests_rejected_total` whatever the method, and in
    /// `sipedge_invites_rejected_total` too when `req` is an INVITE (that
    /// metric counts calls). The one place every local final error is
    /// counted.
    pub(super) fn count_refusal(&self, req: &Message<'_>, answer: &Answer<'_>) {
        let Some(label) = answer.label else {
            return;
        };
        self.metrics.request_rejected(label);
        if req.method() == Some(Method::Invite) {
            self.metrics.invite_rejected(label);
        }
    }

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

    /// Answers `req` with the final error `refusal` chooses, counted under
    /// its reason ([`Proxy::count_refusal`]).
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
        if req.method() == Some(Method::Ack) {
            // Never answered, whatever is wrong with it (RFC 3261 §17).
            self.metrics.dropped(DropReason::Malformed);
            tracing::debug!(%src, "dropped an ACK that would be refused: {refusal:?}");
            return;
        }
        let answer = refusal.answer();
        self.count_refusal(req, &answer);
        tracing::debug!(%src, "answering {}: {refusal:?}", answer.code);
        if matches!(refusal, Refusal::Invalid(_)) && req.top_via().is_err() {
            // A Via we cannot read: answer where the request came from.
            let mut out = bytes::BytesMut::new();
            let tag = self.tables.branches.tag();
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
    type Row = (Refusal<'static>, u16, &'static str, Header, Option<R>);
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
                Some(R::Malformed),
            ),
            (
                Invalid(SipError::TooManyHops),
                483,
                "Too Many Hops",
                None,
                Some(R::MaxForwards),
            ),
            (
                Invalid(SipError::UnsupportedVersion),
                505,
                "Version not supported",
                None,
                Some(R::UnsupportedVersion),
            ),
            (
                Invalid(SipError::TooLarge),
                513,
                "Message too large",
                None,
                Some(R::TooLarge),
            ),
            (
                UnsupportedUri,
                416,
                "Unsupported URI Scheme",
                None,
                Some(R::UnsupportedUri),
            ),
            (
                BadExtension(b"foo"),
                420,
                "Bad Extension",
                Some(("Unsupported", b"foo")),
                Some(R::BadExtension),
            ),
            (
                UnknownDialog,
                481,
                "Call/Transaction Does Not Exist",
                None,
                Some(R::UnknownDialog),
            ),
            (
                BadRouteHint,
                481,
                "Call/Transaction Does Not Exist",
                None,
                Some(R::BadRouteHint),
            ),
            (
                AllDown,
                503,
                "All media servers unavailable",
                None,
                Some(R::AllDown),
            ),
            (
                ShuttingDown,
                503,
                "Shutting down",
                None,
                Some(R::ShuttingDown),
            ),
            (
                Overload,
                503,
                "Service Unavailable",
                Some(("Retry-After", b"5")),
                Some(R::Overload),
            ),
            (Forbidden, 403, "Forbidden", None, Some(R::Forbidden)),
            (NoRoute, 404, "Not Found", None, Some(R::NoRoute)),
            (
                Unresolvable,
                478,
                "Unresolvable destination",
                None,
                Some(R::Unresolvable),
            ),
            (Cancelled, 487, "Request Terminated", None, None),
            (TimedOut, 408, "Request Timeout", None, Some(R::Timeout)),
            (
                Unreachable,
                503,
                "Service Unavailable",
                None,
                Some(R::Unreachable),
            ),
        ]
    }

    #[test]
    fn every_reject_reason_is_some_refusals_label() {
        let labels: Vec<R> = table()
            .iter()
            .filter_map(|row| row.0.answer().label)
            .collect();
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
