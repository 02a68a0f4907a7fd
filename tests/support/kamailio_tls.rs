//! Debian's Kamailio with its tls module (`kamailio-tls-modules`, tls.so on
//! OpenSSL) as a real third-party TLS SIP peer of sipedge, run by
//! [`Kamailio::run`] on free loopback ports with a `tls.cfg` written here
//! ([`TlsFiles`]):
//!
//! - [`TlsKamailio::trunk`]: a carrier's trunk that relays calls to
//!   sipedge over TLS (`tests/fixtures/kamailio/tls_trunk.cfg`), checking
//!   sipedge's certificate and presenting a client certificate if given;
//! - [`TlsKamailio::node`]: a FreeSWITCH-like node that takes calls over
//!   TLS, requiring a client certificate if told so, and relays them to a
//!   UDP user agent behind it (`tls_endpoint.cfg`).
//!
//! Included with `#[path]` beside `mod support;`, `mod kamailio;` and
//! `mod tls_support;`. [`Pki`] is the certificate set of the Kamailio
//! interop tests; [`start_edge`] the sipedge they talk to.
//!
//! A missing `tls.so` fails the test; [`tls_modules_or_skip`] lets
//! `SIPEDGE_ALLOW_KAMAILIO_TLS_SKIP=1` skip instead (a developer's machine
//! without the package); CI sets nothing, so a missing peer fails there.
#![allow(dead_code)] // each test file uses a part of it

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use crate::kamailio::{fixture, free_udp_port, module_dir, temp_dir, Kamailio};
use crate::support::{Inbox, Peer, Received};
use crate::tls_support::{edge_toml, path, Ca, Edge, EdgeSockets, Issued, Scratch, SIPEDGE_NAME};

/// The environment variable that lets the tests skip without `tls.so`.
pub const ALLOW_SKIP: &str = "SIPEDGE_ALLOW_KAMAILIO_TLS_SKIP";

/// The name in the Kamailio node's server certificate.
pub const NODE_NAME: &str = "kamailio.test";

/// tm's `fr_timer` in the trunk (ms): how long Kamailio waits for sipedge
/// before answering its caller 408.
pub const TRUNK_FR_TIMER_MS: u64 = 2_000;

/// Kamailio's module directory (as `mpath`) holding `tls.so`; panics
/// saying which package is missing.
pub fn tls_modules() -> String {
    module_dir("tls.so")
        .map(|d| format!("{}/", d.display()))
        .unwrap_or_else(|| {
            panic!(
                "Kamailio's tls.so is not installed: the TLS interop tests need Debian's \
                 kamailio and kamailio-tls-modules (apt-get install kamailio \
                 kamailio-tls-modules), or {ALLOW_SKIP}=1 to skip those that allow it"
            )
        })
}

/// [`tls_modules`]; `None` (said loudly) when `tls.so` is missing and
/// [`ALLOW_SKIP`] is `1`.
pub fn tls_modules_or_skip(test: &str) -> Option<String> {
    if module_dir("tls.so").is_none() && std::env::var(ALLOW_SKIP).as_deref() == Ok("1") {
        eprintln!(
            "\n*** SKIPPED {test}: Kamailio's tls.so is not installed ({ALLOW_SKIP}=1) ***\n"
        );
        return None;
    }
    Some(tls_modules())
}

/// What a Kamailio's `tls.cfg` names.
pub struct TlsFiles<'a> {
    /// Its own certificate: what its TLS listener serves.
    pub server: &'a Issued,
    /// Its TLS listener requires a client certificate chaining to this
    /// CA; `None`: none asked for.
    pub client_ca: Option<&'a Path>,
    /// It checks the servers it connects to against this CA (as
    /// [`SIPEDGE_NAME`], also its SNI); `None`: no check.
    pub ca_list: Option<&'a Path>,
    /// Presented when it connects and the server asks.
    pub client: Option<&'a Issued>,
}

impl TlsFiles<'_> {
    /// The `tls.cfg` text: its server and client profiles.
    fn tls_cfg(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut t = format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = {v}\n\
             require_certificate = {v}\ncertificate = {}\nprivate_key = {}\n",
            path(&self.server.cert),
            path(&self.server.key),
            v = yes(self.client_ca.is_some()),
        );
        if let Some(ca) = self.client_ca {
            t += &format!("ca_list = {}\n", path(ca));
        }
        t += &format!(
            "\n[client:default]\nmethod = TLSv1.2+\nverify_certificate = {v}\n\
             require_certificate = {v}\n",
            v = yes(self.ca_list.is_some()),
        );
        if let Some(ca) = self.ca_list {
            t += &format!("ca_list = {}\nserver_name = {SIPEDGE_NAME}\n", path(ca));
        }
        if let Some(c) = self.client {
            t += &format!(
                "certificate = {}\nprivate_key = {}\n",
                path(&c.cert),
                path(&c.key)
            );
        }
        t
    }
}

/// A running Kamailio with a UDP and a TLS listener.
pub struct TlsKamailio {
    pub kamailio: Kamailio,
    /// Its UDP side (where a caller sends, what `kamailio.addr` is too).
    pub udp: SocketAddr,
    /// Its TLS listener.
    pub tls: SocketAddr,
}

impl TlsKamailio {
    fn start(
        fixture_name: &str,
        modules: &str,
        files: &TlsFiles<'_>,
        more: &[(&str, String)],
    ) -> TlsKamailio {
        let dir = temp_dir();
        let tls_cfg_path = dir.join("tls.cfg");
        std::fs::write(&tls_cfg_path, files.tls_cfg()).expect("write tls.cfg");
        let udp_port = free_udp_port();
        let tls_port = free_tcp_port();
        let mut cfg = fixture(fixture_name)
            .replace("@UDP_PORT@", &udp_port.to_string())
            .replace("@TLS_PORT@", &tls_port.to_string())
            .replace("@MODULES@", modules)
            .replace("@TLS_CFG@", path(&tls_cfg_path));
        for (k, v) in more {
            cfg = cfg.replace(k, v);
        }
        let udp = SocketAddr::from((Ipv4Addr::LOCALHOST, udp_port));
        TlsKamailio {
            kamailio: Kamailio::run(dir, &cfg, udp),
            udp,
            tls: SocketAddr::from((Ipv4Addr::LOCALHOST, tls_port)),
        }
    }

    /// A carrier's Kamailio relaying what its UDP side gets to sipedge's
    /// TLS listener `sipedge`.
    pub fn trunk(modules: &str, files: &TlsFiles<'_>, sipedge: SocketAddr) -> TlsKamailio {
        TlsKamailio::start(
            "tls_trunk.cfg",
            modules,
            files,
            &[
                ("@SIPEDGE_HOST@", sipedge.ip().to_string()),
                ("@SIPEDGE_PORT@", sipedge.port().to_string()),
                ("@FR_TIMER@", TRUNK_FR_TIMER_MS.to_string()),
            ],
        )
    }

    /// A TLS node relaying what it gets to the UDP user agent `uas`.
    pub fn node(modules: &str, files: &TlsFiles<'_>, uas: SocketAddr) -> TlsKamailio {
        TlsKamailio::start(
            "tls_endpoint.cfg",
            modules,
            files,
            &[("@UAS@", uas.to_string())],
        )
    }
}

/// A loopback TCP port free right now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// The test CA of the Kamailio interop tests and what it signed, as PEM
/// files in a scratch directory.
pub struct Pki {
    pub dir: Scratch,
    /// The CA certificate, PEM (for `ca_list` / `client_ca`).
    pub ca_pem: PathBuf,
    pub ca_der: CertificateDer<'static>,
    /// sipedge's server certificate: [`SIPEDGE_NAME`] and 127.0.0.1.
    pub sipedge: Issued,
    /// The Kamailios' server certificate: [`NODE_NAME`] and 127.0.0.1.
    pub kamailio: Issued,
    /// A client certificate for the carrier's Kamailio (mutual TLS).
    pub client: Issued,
    /// A client certificate from another CA, which sipedge must refuse.
    pub foreign_client: Issued,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let dir = Scratch::new("kam-pki");
        let ca = Ca::new("sipedge kamailio test CA");
        let other_ca = Ca::new("another CA");
        let ca_pem = ca.write(&dir.join("ca.pem"));
        let server = |stem: &str, name: &str| {
            let sans = [name, "127.0.0.1"];
            ca.with_usages(&dir, stem, name, &sans, vec![ServerAuth, ClientAuth])
        };
        let carrier = ["carrier.test"];
        Pki {
            ca_der: ca.der(),
            ca_pem,
            sipedge: server("sipedge", SIPEDGE_NAME),
            kamailio: server("kamailio", NODE_NAME),
            client: ca.with_usages(&dir, "client", carrier[0], &carrier, vec![ClientAuth]),
            foreign_client: other_ca.with_usages(
                &dir,
                "foreign-client",
                carrier[0],
                &carrier,
                vec![ClientAuth],
            ),
            dir,
        }
    }

    /// A carrier's Kamailio trunk to sipedge's TLS listener `sipedge`,
    /// checking it against the test CA, presenting `client` if given.
    pub fn trunk(
        &self,
        modules: &str,
        sipedge: SocketAddr,
        client: Option<&Issued>,
    ) -> TlsKamailio {
        let files = TlsFiles {
            server: &self.kamailio,
            client_ca: None,
            ca_list: Some(&self.ca_pem),
            client,
        };
        TlsKamailio::trunk(modules, &files, sipedge)
    }

    /// A Kamailio TLS node (no client certificate asked for) relaying to
    /// `uas`.
    pub fn node(&self, modules: &str, uas: SocketAddr) -> TlsKamailio {
        let files = TlsFiles {
            server: &self.kamailio,
            client_ca: None,
            ca_list: Some(&self.ca_pem),
            client: None,
        };
        TlsKamailio::node(modules, &files, uas)
    }
}

/// sipedge with a UDP socket and a TLS listener (certificate
/// [`Pki::sipedge`]), health probing off. `tls_extra`: more `[tls]` keys.
/// `destinations`: the `[[dispatcher.destination]]` tables; `None` is two
/// UDP nodes of the test's own ([`Edge::nodes`], node 0 first, answering
/// probes).
pub async fn start_edge(pki: &Pki, tls_extra: &str, destinations: Option<&str>) -> Edge {
    let sockets = EdgeSockets::bind("127.0.0.1");
    let mut nodes = Vec::new();
    if destinations.is_none() {
        nodes.push(Peer::bind("node0").await.answering_probes());
        nodes.push(Peer::bind("node1").await.answering_probes());
    }
    let node_addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let more = format!("{tls_extra}\n\n{}", destinations.unwrap_or_default());
    let text = edge_toml(
        &sockets,
        &node_addrs,
        &pki.sipedge.cert,
        &pki.sipedge.key,
        &more,
    );
    sockets.run(&text, None, false, nodes)
}

/// The final response `code` to what `peer` sent, after any other
/// responses.
pub async fn final_response(peer: &Peer, code: u16) -> Received {
    peer.recv_until(|r| r.status() == Some(code))
        .await
        .pop()
        .unwrap()
}
