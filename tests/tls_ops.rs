//! SIP over TLS, the server side's security and operations: mutual TLS
//! (`[tls] client_ca`, `crl`), handshakes in progress per source
//! (`[tls] max_handshakes_per_source`) and their timeout, certificates
//! reloaded for new connections while established ones carry on, and the
//! TLS metrics. Certificates are made by the test (rcgen, see
//! `support/tls.rs`); clients are tokio-rustls or raw TCP sockets.

#[allow(dead_code)] // the registry part is for tests/registry.rs
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/kamailio_tls.rs"]
mod kamailio_tls;
#[path = "support/process.rs"]
mod process;
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use process::promtool_accepts;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kamailio_tls::{tls_modules, TlsFiles, TlsKamailio};
use sipedge::metrics::{
    TLS_CERTIFICATE_EXPIRY_SECONDS, TLS_CONNECTIONS, TLS_CRL_NEXT_UPDATE_SECONDS,
};
use sipedge::transport::tls::Handshake;
use support::*;
use tls_support::{
    binary_toml, closed_within, edge_toml, serial_and_not_after, silent_from, Ca, Edge,
    EdgeSockets, Issued, Scratch, TlsTrunk,
};

/// A running proxy with a TLS listener (serving `sip.test` from `ca`,
/// serial 1) and one UDP node, its config in `dir/proxy.toml` (what a
/// reload re-reads).
struct Setup {
    edge: Edge,
    ca: Ca,
    server: Issued,
    dir: Scratch,
}

impl std::ops::Deref for Setup {
    type Target = Edge;
    fn deref(&self) -> &Edge {
        &self.edge
    }
}

impl Setup {
    /// `tls_extra(dir, ca)`: more `[tls]` keys, given the directory and
    /// the CA (to write client CA and CRL files).
    async fn start(name: &str, tls_extra: impl FnOnce(&Path, &Ca) -> String) -> Setup {
        let dir = Scratch::new(name);
        let ca = Ca::new("sipedge test CA");
        let server = ca.issue(&dir, "server", &["sip.test"], 1, (2024, 2035));
        let extra = tls_extra(&dir, &ca);
        // Unspecified: clients come from 127.0.0.1 and 127.0.0.2.
        let sockets = EdgeSockets::bind("0.0.0.0");
        let node = Peer::bind("node0").await;
        let text = edge_toml(&sockets, &[node.addr], &server.cert, &server.key, &extra);
        let edge = sockets.run(&text, Some(&dir.join("proxy.toml")), false, vec![node]);
        Setup {
            edge,
            ca,
            server,
            dir,
        }
    }

    /// The UDP node.
    fn node(&self) -> &Peer {
        &self.nodes[0]
    }

    fn handshakes(&self, outcome: Handshake) -> u64 {
        self.proxy.metrics().tls_inbound_handshakes(outcome)
    }

    /// The value of the exposition's series `name{labels}`.
    fn series(&self, name: &str, labels: &str) -> Option<f64> {
        let text = self.proxy.metrics().encode();
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    }

    /// A call from `trunk` answered by the node and acknowledged; the
    /// dialogs of both ends.
    async fn call(&self, trunk: &mut TlsTrunk) -> (Dialog, Dialog) {
        let mut call = Dialog::uac_at(trunk.addr, &format!("sip:fax@{}", self.addr)).over_tls();
        trunk.send(call.invite(SDP_AUDIO)).await;
        let inv = self.node().recv_request("INVITE").await;
        let fs = Dialog::uas(self.node(), &inv, &unique("fs-"));
        self.node()
            .send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
            .await;
        let ok = trunk.recv_response(200).await;
        call.learn_2xx(&ok);
        let (ack, _) = call.request("ACK", None);
        trunk.send(ack).await;
        self.node().recv_request("ACK").await;
        (call, fs)
    }

    /// BYE from `trunk` reaches the node, its 200 comes back.
    async fn hang_up(&self, trunk: &mut TlsTrunk, call: &mut Dialog, fs: &Dialog) {
        let (bye, _) = call.request("BYE", None);
        trunk.send(bye).await;
        let bye = self.node().recv_request("BYE").await;
        self.node()
            .send(fs.answer(&bye, 200, "OK", None), bye.from)
            .await;
        let ok = trunk.recv_response(200).await;
        assert_eq!(ok.cseq().1, "BYE");
    }
}

/// With `client_ca` and `crl`: a client without a certificate, with one
/// from another CA, an expired one and a revoked one are refused (each
/// counted under its reason, no SIP answer); the right one is accepted
/// and its call completes; the TLS metrics move and promtool takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_valid_client_certificates() {
    let s = Setup::start("tls-mtls", |dir, ca| {
        let clients_ca = ca.write(&dir.join("clients-ca.pem"));
        let crl = ca.crl(&dir.join("crl.pem"), &[12]);
        format!(
            "client_ca = \"{}\"\ncrl = \"{}\"",
            clients_ca.display(),
            crl.display()
        )
    })
    .await;
    let other = Ca::new("another CA");
    let expired = s.ca.issue(&s.dir, "expired", &[], 11, (2020, 2021));
    let revoked = s.ca.issue(&s.dir, "revoked", &[], 12, (2024, 2090));
    let foreign = other.issue(&s.dir, "foreign", &[], 10, (2024, 2090));
    let good = s.ca.issue(&s.dir, "good", &[], 10, (2024, 2090));

    for (client, outcome) in [
        (None, Handshake::NoCertificate),
        (Some(&foreign), Handshake::UnknownCa),
        (Some(&expired), Handshake::Expired),
        (Some(&revoked), Handshake::Revoked),
    ] {
        // TLS 1.3: the client is done before the server has checked its
        // certificate; the refusal closes the connection unanswered.
        if let Ok(mut t) = TlsTrunk::connect_from(None, s.tls_addr, s.ca.der(), client).await {
            let me = t.addr;
            let _ = t
                .try_send(format!(
                    "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKmtls;rport\r\n\
                 From: <sip:t@{me}>;tag=1\r\nTo: <sip:x@sip.test>\r\nCall-ID: mtls\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                    s.tls_addr
                ))
                .await;
            t.expect_closed().await;
        }
        eventually(&format!("counted as {outcome:?}"), || {
            s.handshakes(outcome) == 1
        })
        .await;
    }
    assert_eq!(s.handshakes(Handshake::Ok), 0);
    assert_eq!(s.proxy.tcp().connections(), 0, "every refused slot is back");

    let mut trunk = TlsTrunk::connect(s.tls_addr, s.ca.der(), Some(&good)).await;
    let (mut call, fs) = s.call(&mut trunk).await;
    assert_eq!(s.handshakes(Handshake::Ok), 1);
    assert_eq!(
        s.series(TLS_CONNECTIONS, "direction=\"inbound\""),
        Some(1.0)
    );
    s.hang_up(&mut trunk, &mut call, &fs).await;

    let text = s.proxy.metrics().encode();
    for line in [
        "sipedge_tls_handshakes_total{direction=\"inbound\",reason=\"revoked\",result=\"failed\"} 1",
        "sipedge_tls_handshakes_total{direction=\"inbound\",reason=\"none\",result=\"ok\"} 1",
        "sipedge_tls_handshakes_total{direction=\"inbound\",reason=\"timeout\",result=\"timeout\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    // Both configured files, with the time to their notAfter.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let server_left = s
        .series(
            TLS_CERTIFICATE_EXPIRY_SECONDS,
            &format!(
                "certificate=\"server\",file=\"{}\"",
                s.server.cert.display()
            ),
        )
        .expect("the server certificate's expiry");
    let (_, not_after) = serial_and_not_after(&s.server.der);
    assert!(
        (server_left - (not_after as f64 - now)).abs() < 60.0,
        "{server_left}"
    );
    assert!(
        text.contains(&format!(
            "{TLS_CERTIFICATE_EXPIRY_SECONDS}{{certificate=\"client_ca\",file=\"{}\"}}",
            s.dir.join("clients-ca.pem").display()
        )),
        "{text}"
    );
    promtool_accepts(&text);

    trunk.close().await;
    eventually("the closed connection leaves the gauge", || {
        s.series(TLS_CONNECTIONS, "direction=\"inbound\"") == Some(0.0)
    })
    .await;
}

/// A CRL past its `nextUpdate` vouches for nobody (OpenSSL's "CRL has
/// expired", which Kamailio's `CRL_CHECK` refuses on): a client with a
/// valid certificate is refused and counted as `crl_expired`, the gauge
/// of the CRL's next update is negative; once a fresh CRL is in the file
/// and reloaded, the same client's call completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_crl_refuses_clients_until_a_fresh_one_is_reloaded() {
    let s = Setup::start("tls-crl-stale", |dir, ca| {
        let clients_ca = ca.write(&dir.join("clients-ca.pem"));
        let crl = ca.crl_until(&dir.join("crl.pem"), &[], 2025);
        format!(
            "client_ca = \"{}\"\ncrl = \"{}\"",
            clients_ca.display(),
            crl.display()
        )
    })
    .await;
    let crl_file = format!("file=\"{}\"", s.dir.join("crl.pem").display());
    let next_update = |s: &Setup| s.series(TLS_CRL_NEXT_UPDATE_SECONDS, &crl_file);
    let stale = next_update(&s).expect("the CRL's next update exported");
    assert!(stale < 0.0, "2025-01-01 is past: {stale}");
    let good = s.ca.issue(&s.dir, "good", &[], 10, (2024, 2090));

    if let Ok(mut t) = TlsTrunk::connect_from(None, s.tls_addr, s.ca.der(), Some(&good)).await {
        // TLS 1.3: refused after the client's Finished, so unanswered.
        t.expect_closed().await;
    }
    eventually("counted as crl_expired", || {
        s.handshakes(Handshake::CrlExpired) == 1
    })
    .await;
    assert_eq!(s.handshakes(Handshake::Ok), 0);
    let text = s.proxy.metrics().encode();
    let line = "sipedge_tls_handshakes_total{direction=\"inbound\",reason=\"crl_expired\",\
                result=\"failed\"} 1";
    assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    promtool_accepts(&text);

    s.ca.crl_until(&s.dir.join("crl.pem"), &[], 2100);
    s.proxy.reload().expect("the reload with a fresh CRL");
    let fresh = next_update(&s).expect("the fresh CRL's next update");
    assert!(fresh > 365.0 * 86400.0, "{fresh}");

    let mut trunk = TlsTrunk::connect(s.tls_addr, s.ca.der(), Some(&good)).await;
    let (mut call, fs) = s.call(&mut trunk).await;
    s.hang_up(&mut trunk, &mut call, &fs).await;
    assert_eq!(s.handshakes(Handshake::Ok), 1);
    assert_eq!(s.handshakes(Handshake::CrlExpired), 1);
}

/// `check-config` takes a config whose CRL is stale (it is valid) and
/// says on stderr what will happen, as the proxy says at start; with a
/// fresh CRL it says nothing of the kind.
#[test]
fn check_config_warns_about_a_stale_crl() {
    let dir = Scratch::new("tls-crl-check");
    let ca = Ca::new("sipedge test CA");
    let server = ca.issue(&dir, "server", &["sip.test"], 1, (2024, 2035));
    let clients_ca = ca.write(&dir.join("clients-ca.pem"));
    let crl = ca.crl_until(&dir.join("crl.pem"), &[], 2025);
    let cfg = dir.join("proxy.toml");
    std::fs::write(
        &cfg,
        binary_toml(
            "127.0.0.1:9",
            "",
            &format!(
                "certificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\ncrl = \"{}\"\n",
                server.cert.display(),
                server.key.display(),
                clients_ca.display(),
                crl.display()
            ),
        ),
    )
    .unwrap();
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .args(["check-config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(stdout.contains("ok: "), "{stdout}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = check();
    assert!(
        stderr.contains(&format!("tls crl {} is past its nextUpdate", crl.display())),
        "{stderr}"
    );
    ca.crl_until(&crl, &[], 2100);
    let stderr = check();
    assert!(!stderr.contains("nextUpdate"), "{stderr}");
}

/// `max_handshakes_per_source = 3`: three connections from 127.0.0.1
/// that never send a ClientHello hold its three handshake slots; a fourth
/// is closed at once, unanswered, while a client from 127.0.0.2 is still
/// served; the handshake timeout then closes the three silent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_capped_per_source() {
    let s = Setup::start("tls-hs-cap", |_, _| {
        "max_handshakes_per_source = 3\nhandshake_timeout = \"4s\"".to_owned()
    })
    .await;
    let tls = s.proxy.tls_inbound().expect("TLS listeners").clone();
    let one: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let opened = tokio::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(silent_from("127.0.0.1", s.tls_addr).await);
    }
    eventually("three handshakes in progress", || {
        tls.handshakes_from(one) == 3
    })
    .await;

    let mut fourth = silent_from("127.0.0.1", s.tls_addr).await;
    assert_eq!(
        closed_within(&mut fourth, Duration::from_secs(1)).await,
        0,
        "closed before any TLS"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "by the cap, not the timeout"
    );
    eventually("counted as limit", || s.handshakes(Handshake::Limit) == 1).await;
    assert_eq!(tls.handshakes_from(one), 3);

    // Another source is not held up by this one's handshakes.
    let mut other = TlsTrunk::connect_from(Some("127.0.0.2"), s.tls_addr, s.ca.der(), None)
        .await
        .expect("a handshake from another source");
    let me = other.addr;
    other
        .send(format!(
            "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKcap1;rport\r\n\
             From: <sip:t@{me}>;tag=1\r\nTo: <sip:{}>\r\nCall-ID: cap-1\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            s.tls_addr, s.tls_addr
        ))
        .await;
    assert_eq!(other.recv_response(200).await.call_id(), "cap-1");

    // The silent ones go at the handshake timeout.
    for c in &mut silent {
        closed_within(c, WAIT).await;
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(4),
        "held until the timeout"
    );
    eventually("counted as timeouts, slots back", || {
        s.handshakes(Handshake::Timeout) == 3 && tls.handshakes_from(one) == 0
    })
    .await;
    assert_eq!(s.handshakes(Handshake::Ok), 1);
}

/// A reload (what `dispatcher.reload` and SIGHUP run) puts a renewed
/// certificate in force for new connections while an established call's
/// connection keeps going and its BYE completes; a bad new key is
/// refused with the file, the key and the reason, and the identity in
/// force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_renews_the_certificate_for_new_connections() {
    let s = Setup::start("tls-reload", |_, _| String::new()).await;
    let mut trunk = TlsTrunk::connect(s.tls_addr, s.ca.der(), None).await;
    assert_eq!(serial_and_not_after(&trunk.served[0]).0, "01");
    let (mut call, fs) = s.call(&mut trunk).await;

    let renewed = s.ca.issue(&s.dir, "server", &["sip.test"], 2, (2024, 2036));
    s.proxy.reload().expect("the reload with the renewed files");
    let fresh = TlsTrunk::connect(s.tls_addr, s.ca.der(), None).await;
    let (serial, not_after) = serial_and_not_after(&fresh.served[0]);
    assert_eq!(serial, "02");
    assert_eq!(not_after, serial_and_not_after(&renewed.der).1);
    let left = s
        .series(
            TLS_CERTIFICATE_EXPIRY_SECONDS,
            &format!("certificate=\"server\",file=\"{}\"", renewed.cert.display()),
        )
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!((left - (not_after as f64 - now)).abs() < 60.0, "{left}");

    // The established call carries on over its connection.
    s.hang_up(&mut trunk, &mut call, &fs).await;

    // A key that is not one: refused, saying where and why.
    std::fs::write(&renewed.key, "not a key\n").unwrap();
    let err = s
        .proxy
        .reload()
        .expect_err("a bad key is refused")
        .to_string();
    assert!(err.contains("tls.key"), "{err}");
    assert!(err.contains(&renewed.key.display().to_string()), "{err}");
    assert!(err.contains("no PEM private key"), "{err}");
    let again = TlsTrunk::connect(s.tls_addr, s.ca.der(), None).await;
    assert_eq!(serial_and_not_after(&again.served[0]).0, "02");
}

/// The binary: `check-config` refuses a CRL without client CAs; SIGHUP
/// re-reads the certificate files, a new connection gets the renewed
/// certificate while a call in progress on a connection made before
/// completes with its BYE; `sipedge ctl reload` with a bad key fails
/// saying why, and the renewed certificate stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_renews_the_certificate_of_the_binary() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = Scratch::new("tls-sighup");
    let ca = Ca::new("sipedge test CA");
    ca.issue(&dir, "server", &["sip.test"], 1, (2024, 2035));
    let node = Peer::bind("node0").await.answering_probes();
    let cfg = dir.join("proxy.toml");
    let text = binary_toml(
        &node.addr.to_string(),
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "certificate = \"server.pem\"\nkey = \"server.key\"\n",
    );
    let bin = env!("CARGO_BIN_EXE_sipedge");
    std::fs::write(&cfg, format!("{text}crl = \"server.pem\"\n")).unwrap();
    let out = Command::new(bin)
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tls.crl") && stderr.contains("client_ca"),
        "{stderr}"
    );
    std::fs::write(&cfg, &text).unwrap();
    let mut child = Command::new(bin)
        .args(["--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (udp, tls, admin) = tokio::task::spawn_blocking(move || {
        let (mut udp, mut tls, mut admin) = (None, None, None);
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = l.strip_prefix("listening on udp:") {
                udp = a.parse::<SocketAddr>().ok();
            }
            if let Some(a) = l.strip_prefix("listening on tls:") {
                tls = a.parse::<SocketAddr>().ok();
            }
            if let Some(a) = l.strip_prefix("listening on admin:") {
                admin = Some(a.to_owned());
            }
            if udp.is_some() && tls.is_some() && admin.is_some() {
                break;
            }
        }
        (
            udp.expect("a udp line"),
            tls.expect("a tls line"),
            admin.expect("an admin line"),
        )
    })
    .await
    .unwrap();

    let mut trunk = TlsTrunk::connect(tls, ca.der(), None).await;
    assert_eq!(serial_and_not_after(&trunk.served[0]).0, "01");
    let mut call = Dialog::uac_at(trunk.addr, &format!("sip:fax@{udp}")).over_tls();
    trunk.send(call.invite(SDP_AUDIO)).await;
    let inv = node.recv_request("INVITE").await;
    let fs = Dialog::uas(&node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    call.learn_2xx(&trunk.recv_response(200).await);
    let (ack, _) = call.request("ACK", None);
    trunk.send(ack).await;
    node.recv_request("ACK").await;

    let renewed = ca.issue(&dir, "server", &["sip.test"], 2, (2024, 2036));
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The reload runs off the signal's delivery: new connections until
    // one gets the renewed certificate.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = TlsTrunk::connect(tls, ca.der(), None).await;
        let got = serial_and_not_after(&t.served[0]);
        if got == serial_and_not_after(&renewed.der) {
            break;
        }
        assert_eq!(got.0, "01", "the old certificate until the reload");
        assert!(
            tokio::time::Instant::now() < deadline,
            "not renewed in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (bye, _) = call.request("BYE", None);
    trunk.send(bye).await;
    let bye = node.recv_request("BYE").await;
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    assert_eq!(trunk.recv_response(200).await.cseq().1, "BYE");

    // dispatcher.reload with a key that is not one: refused, saying why.
    std::fs::write(&renewed.key, "not a key\n").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["ctl", "--admin", &admin, "reload"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("tls.key") && said.contains("no PEM private key"),
        "{said}"
    );
    let t = TlsTrunk::connect(tls, ca.der(), None).await;
    assert_eq!(serial_and_not_after(&t.served[0]).0, "02");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Debian's Kamailio with its tls module as a carrier's trunk
/// (`tests/fixtures/kamailio/tls_trunk.cfg`) relaying to `sipedge` over
/// TLS, presenting `client` (chain and key, also its own TLS socket's) and
/// checking sipedge's certificate against `ca`.
fn kamailio_trunk(sipedge: SocketAddr, client: &Issued, ca: &Path) -> TlsKamailio {
    let files = TlsFiles {
        server: client,
        client_ca: None,
        ca_list: Some(ca),
        client: Some(client),
    };
    TlsKamailio::trunk(&tls_modules(), &files, sipedge)
}

/// Sends OPTIONS for `to` from `from` through `kamailio`, a new one every
/// second, until a final answer to one of them comes back; its status.
async fn options_through(kamailio: &TlsKamailio, from: &Peer, to: SocketAddr) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let me = from.addr;
    let mut sent = Vec::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer through kamailio; its log:\n{}",
            kamailio.kamailio.log()
        );
        let id = unique("kam-tls-");
        from.send(
            format!(
                "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{id};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:carrier@{me}>;tag=c\r\nTo: <sip:{to}>\r\n\
                 Call-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ),
            kamailio.udp,
        )
        .await;
        sent.push(id);
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Some(got) = from
            .recv_within(until.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            match got.status() {
                Some(s) if s >= 200 && sent.contains(&got.call_id()) => return s,
                _ => continue,
            }
        }
    }
}

/// A real third-party TLS client: Debian's Kamailio (tls module) relays a
/// carrier's OPTIONS to sipedge with mutual TLS. With a client
/// certificate from sipedge's `client_ca` it gets sipedge's 200 back;
/// with one from another CA sipedge refuses the handshake (counted as
/// `unknown_ca`) and Kamailio answers an error itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_tls_trunk_with_and_without_a_valid_client_certificate() {
    let s = Setup::start("tls-kamailio", |dir, ca| {
        format!(
            "client_ca = \"{}\"",
            ca.write(&dir.join("clients-ca.pem")).display()
        )
    })
    .await;
    let ca_file = s.dir.join("clients-ca.pem");
    let carrier = Peer::bind("carrier").await;

    let good = s.ca.issue(&s.dir, "carrier", &[], 20, (2024, 2090));
    let kamailio = kamailio_trunk(s.tls_addr, &good, &ca_file);
    let status = options_through(&kamailio, &carrier, s.tls_addr).await;
    assert_eq!(status, 200, "kamailio log:\n{}", kamailio.kamailio.log());
    // One, unless Kamailio had several OPTIONS queued while starting.
    let accepted = s.handshakes(Handshake::Ok);
    assert!(accepted >= 1);
    assert_eq!(s.handshakes(Handshake::UnknownCa), 0);
    drop(kamailio);

    let other = Ca::new("another CA");
    let foreign = other.issue(&s.dir, "foreign-carrier", &[], 21, (2024, 2090));
    let kamailio = kamailio_trunk(s.tls_addr, &foreign, &ca_file);
    let status = options_through(&kamailio, &carrier, s.tls_addr).await;
    assert_ne!(status, 200, "kamailio log:\n{}", kamailio.kamailio.log());
    eventually("the foreign certificate counted as unknown_ca", || {
        s.handshakes(Handshake::UnknownCa) >= 1
    })
    .await;
    assert_eq!(s.handshakes(Handshake::Ok), accepted);
}
