//! Who sipedge is on the wire, in one place: the advertised host and the
//! port per transport, as written in our Via and Record-Route, and the test
//! for a URI that names us (our own Route, an OPTIONS keep-alive to us).

use crate::sip::Uri;
use crate::transport::{PerTransport, Transport};

/// Our advertised identity.
#[derive(Debug)]
pub(crate) struct Me {
    host: String,
    /// A transport without a listener of its own advertises the UDP port.
    ports: PerTransport<u16>,
    /// `host:port` per transport.
    sent_by: PerTransport<String>,
    /// `SIP/2.0/<transport> <sent_by>;branch=`: our Via up to the branch
    /// value, built once.
    via_prefix: PerTransport<Box<[u8]>>,
}

impl Me {
    pub(crate) fn new(host: String, ports: PerTransport<u16>) -> Me {
        let sent_by = PerTransport::from_fn(|t| format!("{host}:{}", ports[t]));
        let via_prefix = PerTransport::from_fn(|t| {
            format!("SIP/2.0/{} {};branch=", t.via_name(), sent_by[t])
                .into_bytes()
                .into()
        });
        Me {
            host,
            ports,
            sent_by,
            via_prefix,
        }
    }

    /// Our `host:port` for each transport.
    pub(crate) fn sent_by(&self) -> &PerTransport<String> {
        &self.sent_by
    }

    /// Our Via over `t`, up to the branch value.
    pub(crate) fn via_prefix(&self, t: Transport) -> &[u8] {
        &self.via_prefix[t]
    }

    /// Is this Via sent-by (host as written, port) ours over `t`?
    pub(crate) fn is_my_sent_by(&self, t: Transport, host: &[u8], port: Option<u16>) -> bool {
        host.eq_ignore_ascii_case(self.host.as_bytes())
            && port.unwrap_or(crate::value::DEFAULT_SIP_PORT) == self.ports[t]
    }

    /// Is this URI one of ours (our advertised host and one of our ports;
    /// 5060 when it gives none)?
    pub(crate) fn is_me(&self, uri: &Uri<'_>) -> bool {
        let host = uri.host_raw.unwrap_or_default();
        let port = uri.port.unwrap_or(crate::value::DEFAULT_SIP_PORT);
        host.eq_ignore_ascii_case(self.host.as_bytes())
            && self.ports.iter().any(|(_, &p)| p == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_host_on_any_of_our_ports_is_us() {
        let mut ports = PerTransport::<u16>::default();
        ports[Transport::Udp] = 5060;
        ports[Transport::Tcp] = 5070;
        let me = Me::new("203.0.113.5".into(), ports);
        let uri = |s: &'static [u8]| Uri::parse(s).unwrap();
        assert!(me.is_me(&uri(b"sip:203.0.113.5;lr")));
        assert!(me.is_me(&uri(b"sip:203.0.113.5:5070;lr;transport=tcp")));
        assert!(!me.is_me(&uri(b"sip:203.0.113.5:5080")));
        assert!(!me.is_me(&uri(b"sip:203.0.113.6")));
        assert_eq!(me.sent_by()[Transport::Tcp], "203.0.113.5:5070");
        assert!(me.is_my_sent_by(Transport::Udp, b"203.0.113.5", None));
        assert!(me.is_my_sent_by(Transport::Tcp, b"203.0.113.5", Some(5070)));
        assert!(!me.is_my_sent_by(Transport::Udp, b"203.0.113.5", Some(5070)));
        assert!(!me.is_my_sent_by(Transport::Udp, b"203.0.113.6", Some(5060)));
        assert_eq!(
            me.via_prefix(Transport::Udp),
            b"SIP/2.0/UDP 203.0.113.5:5060;branch="
        );
    }
}
