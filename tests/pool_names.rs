//! Host names in the pool (dispatcher.list or `[[dispatcher.destination]]`),
//! resolved when the config is read, as Kamailio's dispatcher does by
//! default (`ds_dns_mode` 1): A/AAAA on the URI's port, or SRV first for a
//! name without a port with `dispatcher.dns_srv` (`ds_dns_mode` 8). A name
//! that does not resolve refuses the start at its line; on a reload a node
//! that stays keeps its address, a new one refuses the reload. The node is
//! then known by its address (routing, in-dialog requests, answers) and
//! named by its URI (dispatcher.list, set_state, metrics).
//!
//! The names are served by a fake DNS server (`[dns] servers`), a plain UDP
//! socket on 127.0.0.1 (tests/support/dns.rs).

mod support;

#[path = "support/dns.rs"]
mod dns_server;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use dns_server::{FakeDns, Zone};
use support::*;

/// A config on `listen` (its advertise too) reading `pool.list`, with the
/// fake DNS server and `extra` lines in `[dispatcher]`.
fn write_config(dir: &Path, listen: SocketAddr, dns: &FakeDns, extra: &str, list: &str) -> PathBuf {
    std::fs::write(dir.join("pool.list"), list).unwrap();
    let path = dir.join("sipedge.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nudp = [\"{listen}\"]\nadvertise = \"{listen}\"\n\n[dispatcher]\n\
             algorithm = \"priority\"\nlist_file = \"pool.list\"\n{extra}\n{}",
            dns.toml()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolve_at_start_by_a_or_srv_and_are_shown() {
    let dns = FakeDns::start(
        Zone::new()
            .a("fs-a.pool.test", Ipv4Addr::new(127, 0, 0, 11))
            .srv("_sip._udp.fs-b.pool.test", 10, 0, 5090, "host-b.pool.test")
            .a("host-b.pool.test", Ipv4Addr::new(127, 0, 0, 12))
            .a("fs-c.pool.test", Ipv4Addr::new(127, 0, 0, 13)),
    )
    .await;
    let dir = Scratch::new("names-start");
    let listen: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let list = "1 sip:fs-a.pool.test:5080 8 20\n\
                1 sip:fs-b.pool.test 8 10\n\
                2 sip:fs-c.pool.test 8 0\n";
    let path = write_config(&dir, listen, &dns, "dns_srv = true", list);
    let cfg = sipedge::config::read_config(&path).expect("names resolve");
    let d = &cfg.dispatcher.destinations;
    assert_eq!(d[0].resolved, Some("127.0.0.11:5080".parse().unwrap()));
    // No port and dns_srv: the SRV target and its port.
    assert_eq!(d[1].resolved, Some("127.0.0.12:5090".parse().unwrap()));
    assert_eq!(
        dns.count(
            "_sip._udp.fs-b.pool.test",
            hickory_proto::rr::RecordType::SRV
        ),
        1
    );
    // The other set is resolved too.
    assert_eq!(
        cfg.dispatcher.other_sets[0].1[0].resolved,
        Some("127.0.0.13:5060".parse().unwrap())
    );
    let summary = cfg.to_string();
    assert!(
        summary.contains("sip:fs-a.pool.test:5080 (127.0.0.11:5080)"),
        "{summary}"
    );
    let pool = sipedge::dispatcher::Dispatcher::new(&cfg.dispatcher).unwrap();
    assert_eq!(pool.find("127.0.0.12:5090".parse().unwrap()), Some(1));
    assert_eq!(pool.uri(1), "sip:fs-b.pool.test");

    // Without dns_srv the same name is A/AAAA on 5060, which it lacks.
    let path = write_config(&dir, listen, &dns, "", list);
    let err = sipedge::config::read_config(&path).unwrap_err().to_string();
    assert!(err.contains("pool.list:2:"), "{err}");
    assert!(
        err.contains("sip:fs-b.pool.test: its host name does not resolve"),
        "{err}"
    );

    // The binary's check-config shows what each name resolved to.
    let path = write_config(&dir, listen, &dns, "dns_srv = true", list);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "resolved: sip:fs-a.pool.test:5080 -> 127.0.0.11:5080",
        "resolved: sip:fs-b.pool.test -> 127.0.0.12:5090",
        "resolved: sip:fs-c.pool.test -> 127.0.0.13:5060",
    ] {
        assert!(stdout.contains(line), "{line} in\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_do_not_resolve_or_collide_are_refused_where_written() {
    let dns = FakeDns::start(
        Zone::new()
            .a("fs-a.pool.test", Ipv4Addr::new(127, 0, 0, 11))
            .a("alias.pool.test", Ipv4Addr::new(127, 0, 0, 11))
            .a("me.pool.test", Ipv4Addr::new(127, 0, 0, 1)),
    )
    .await;
    let dir = Scratch::new("names-refused");
    let listen: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let refused = |extra: &str, list: &str| {
        let path = write_config(&dir, listen, &dns, extra, list);
        sipedge::config::read_config(&path).unwrap_err().to_string()
    };
    let err = refused(
        "",
        "1 sip:fs-a.pool.test:5080\n1 sip:nowhere.pool.test:5080\n",
    );
    assert!(
        err.contains("pool.list:2: sip:nowhere.pool.test:5080: its host name does not resolve"),
        "{err}"
    );
    // Two names for one address: the node could not be told apart.
    let err = refused(
        "",
        "1 sip:fs-a.pool.test:5080\n1 sip:alias.pool.test:5080\n",
    );
    assert!(
        err.contains("resolves to 127.0.0.11:5080, where line"),
        "{err}"
    );
    let err = refused(
        "",
        "1 sip:127.0.0.11:5080 0 10\n1 sip:fs-a.pool.test:5080 0 0\n",
    );
    assert!(
        err.contains(
            "pool.list:2: sip:fs-a.pool.test:5080 resolves to 127.0.0.11:5080, where line 1"
        ),
        "{err}"
    );
    // A name that is this proxy.
    let err = refused("", "1 sip:fs-a.pool.test:5080\n1 sip:me.pool.test:5060\n");
    assert!(
        err.contains("pool.list:2: sip:me.pool.test:5060 is sipedge's own address"),
        "{err}"
    );
    // A line of another set that does not resolve is left out, with a
    // warning at start; the set that takes calls is what must work.
    let path = write_config(
        &dir,
        listen,
        &dns,
        "",
        "1 sip:fs-a.pool.test:5080\n2 sip:nowhere.pool.test\n",
    );
    let cfg = sipedge::config::read_config(&path).expect("another set's line is left out");
    assert!(cfg.dispatcher.other_sets.is_empty());
    assert!(
        cfg.dispatcher.skipped[0].contains("pool.list:2: sip:nowhere.pool.test (set 2)"),
        "{:?}",
        cfg.dispatcher.skipped
    );

    // A TOML destination is named by its key and line.
    let path = dir.join("toml.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nudp = [\"{listen}\"]\nadvertise = \"{listen}\"\n\n\
             [[dispatcher.destination]]\nuri = \"sip:fs-a.pool.test:5080\"\n\n\
             [[dispatcher.destination]]\nuri = \"sip:nowhere.pool.test:5080\"\n{}",
            dns.toml()
        ),
    )
    .unwrap();
    let err = sipedge::config::read_config(&path).unwrap_err().to_string();
    assert!(err.contains("toml.toml:9: dispatcher.destination[1].uri: sip:nowhere.pool.test:5080: its host name does not resolve"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_a_named_node_and_a_reload_follows_its_address() {
    let h = Harness::start(Options::default()).await;
    let (a, b) = (h.nodes[0].addr, h.nodes[1].addr);
    let ip = |s: SocketAddr| match s.ip() {
        std::net::IpAddr::V4(v4) => v4,
        _ => unreachable!(),
    };
    let dns = FakeDns::start(
        Zone::new()
            .a("fs-a.pool.test", ip(a))
            .a("fs-b.pool.test", ip(b)),
    )
    .await;
    let dir = Scratch::new("names-reload");
    let list = format!(
        "1 sip:fs-a.pool.test:{} 8 10\n1 sip:fs-b.pool.test:{} 8 0\n",
        a.port(),
        b.port()
    );
    let path = write_config(&dir, h.addr, &dns, "", &list);
    h.proxy.set_config_path(path.clone());
    assert_eq!(h.proxy.reload().expect("reload with names"), 2);
    let pool = h.proxy.dispatcher();
    assert_eq!(pool.uri(0), format!("sip:fs-a.pool.test:{}", a.port()));
    assert_eq!(pool.find(a), Some(0));
    drop(pool);

    // A call goes to the named node, and its in-dialog requests too.
    let mut est = establish(&h).await;
    let (bye, _) = est.call.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    let bye = h.nodes[0].recv_request("BYE").await;
    h.nodes[0]
        .send(est.node_side.answer(&bye, 200, "OK", None), bye.from)
        .await;
    h.trunk.recv_response(200).await;

    // fs-a moves to 127.0.0.2 (same port): a reload follows it, and the
    // next call goes there.
    let moved = Peer::bind_at(
        "node0-moved",
        SocketAddr::new("127.0.0.2".parse().unwrap(), a.port()),
    )
    .await
    .expect("bind 127.0.0.2 on node 0's port")
    .answering_probes();
    dns.set_zone(
        Zone::new()
            .a("fs-a.pool.test", Ipv4Addr::new(127, 0, 0, 2))
            .a("fs-b.pool.test", ip(b)),
    );
    assert_eq!(h.proxy.reload().expect("reload after the move"), 2);
    assert_eq!(h.proxy.dispatcher().addr(0), moved.addr);
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    h.trunk.recv_response(100).await;
    let inv = moved.recv_request("INVITE").await;
    assert_eq!(inv.call_id(), call.call_id);
    moved
        .send(reply(&inv, 486, "Busy Here", Some("busy")), inv.from)
        .await;
    h.trunk.recv_response(486).await;

    // DNS fails: the reload goes through, the node keeps its address.
    dns.set_zone(Zone::new().a("fs-b.pool.test", ip(b)));
    assert_eq!(
        h.proxy
            .reload()
            .expect("reload while fs-a does not resolve"),
        2
    );
    assert_eq!(h.proxy.dispatcher().addr(0), moved.addr);
    // A new name that does not resolve refuses the reload: nothing changes.
    std::fs::write(
        dir.join("pool.list"),
        format!("{list}1 sip:fs-c.pool.test:5099 8 0\n"),
    )
    .unwrap();
    let err = h.proxy.reload().unwrap_err().to_string();
    assert!(
        err.contains("pool.list:3: sip:fs-c.pool.test:5099: its host name does not resolve"),
        "{err}"
    );
    assert_eq!(h.proxy.dispatcher().len(), 2);

    // dispatcher.add resolves too (and refuses a name that does not).
    dns.set_zone(
        Zone::new()
            .a("fs-b.pool.test", ip(b))
            .a("fs-d.pool.test", Ipv4Addr::new(127, 0, 0, 3)),
    );
    let entry =
        sipedge::dispatcher::list::Entry::from_fields(1, "sip:fs-d.pool.test:5098", 0, 0, "")
            .unwrap();
    h.proxy
        .add_destination(&entry)
        .expect("add a named destination");
    let pool = h.proxy.dispatcher();
    assert_eq!(pool.find("127.0.0.3:5098".parse().unwrap()), Some(2));
    drop(pool);
    let entry =
        sipedge::dispatcher::list::Entry::from_fields(1, "sip:fs-e.pool.test:5097", 0, 0, "")
            .unwrap();
    let err = h.proxy.add_destination(&entry).unwrap_err().to_string();
    assert!(err.contains("fs-e.pool.test"), "{err}");
}
