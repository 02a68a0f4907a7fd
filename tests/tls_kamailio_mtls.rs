//! Mutual TLS with a real third-party client: carriers' Kamailios (5.6,
//! tls module) relaying calls to sipedge with `[tls] client_ca` set. The
//! one presenting a client certificate from the test CA gets its call
//! through; one without a certificate and one with a certificate from
//! another CA are refused in the handshake.
//!
//! What Kamailio does with the refusal: under TLS 1.3 its handshake is
//! over (from its side) once it sent its Finished, so it writes the
//! INVITE and only then reads sipedge's alert; tm never hears back and
//! answers its caller 408 at `fr_timer` (2 s here). Its log names the
//! alert (`certificate required`, `unknown ca`).

mod support;

#[allow(dead_code)] // the registry part is for tests/registry.rs
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/kamailio_tls.rs"]
mod kamailio_tls;
#[path = "support/tls.rs"]
mod tls_support;

use std::time::Duration;

use kamailio_tls::*;
use support::*;

/// A call from `caller` through `kam` that sipedge must refuse: Kamailio
/// answers 408 (see the file's doc), after its `fr_timer`.
async fn refused(caller: &Peer, kam: &TlsKamailio) {
    let mut call = Dialog::uac(caller, &format!("sip:fax@{}", kam.udp));
    let sent = tokio::time::Instant::now();
    caller.send(call.invite(SDP_AUDIO), kam.udp).await;
    let last = caller
        .recv_until(|r| r.status().is_some_and(|c| c >= 200))
        .await
        .pop()
        .unwrap();
    assert_eq!(
        last.status(),
        Some(408),
        "Kamailio's answer when sipedge refuses its handshake:\n{}\nKamailio log:\n{}",
        last.text(),
        kam.kamailio.log()
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(TRUNK_FR_TIMER_MS - 100),
        "a 408 before fr_timer is not the refusal this test expects"
    );
    caller.send(call.ack_non2xx(&last), kam.udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_mutual_tls_only_the_carrier_with_a_certificate_gets_through() {
    let Some(modules) =
        tls_modules_or_skip("kamailio_mutual_tls_only_the_carrier_with_a_certificate_gets_through")
    else {
        return;
    };
    let pki = Pki::new();
    let client_ca = format!("client_ca = \"{}\"", pki.ca_pem.display());
    let edge = start_edge(&pki, &client_ca, None).await;
    let without = pki.trunk(&modules, edge.tls_addr, None);
    let foreign = pki.trunk(&modules, edge.tls_addr, Some(&pki.foreign_client));
    let carrier = pki.trunk(&modules, edge.tls_addr, Some(&pki.client));

    // The two refusals side by side: each waits out Kamailio's fr_timer.
    let (c1, c2) = (Peer::bind("caller1").await, Peer::bind("caller2").await);
    tokio::join!(refused(&c1, &without), refused(&c2, &foreign));
    for (kam, alert) in [
        (&without, "alert certificate required"),
        (&foreign, "alert unknown ca"),
    ] {
        assert!(
            kam.kamailio.log().contains(alert),
            "Kamailio saw sipedge's TLS alert ({alert}); its log:\n{}",
            kam.kamailio.log()
        );
    }
    edge.nodes[0].expect_nothing(Duration::ZERO).await;
    edge.nodes[1].expect_nothing(Duration::ZERO).await;

    // The carrier with the right certificate: a whole call.
    let caller = Peer::bind("caller").await;
    let node = &edge.nodes[0];
    let mut call = Dialog::uac(&caller, &format!("sip:fax@{}", carrier.udp));
    caller.send(call.invite(SDP_AUDIO), carrier.udp).await;
    let inv = node.recv_request("INVITE").await;
    assert_our_via_over(&inv, edge.addr, "UDP");
    let fs = Dialog::uas(node, &inv, &unique("fs-"));
    node.send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let ok = final_response(&caller, 200).await;
    call.learn_2xx(&ok);
    let (ack, _) = call.request("ACK", None);
    caller.send(ack, carrier.udp).await;
    node.recv_request("ACK").await;
    let (bye, _) = call.request("BYE", None);
    caller.send(bye, carrier.udp).await;
    let bye = node.recv_request("BYE").await;
    node.send(fs.answer(&bye, 200, "OK", None), bye.from).await;
    let ok = final_response(&caller, 200).await;
    assert_eq!(ok.cseq_method(), "BYE");
    edge.nodes[1].expect_nothing(Duration::ZERO).await;
}
