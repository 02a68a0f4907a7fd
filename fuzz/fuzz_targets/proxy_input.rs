//! The whole proxy on arbitrary input: datagrams from the trunk's address
//! and from a node's, through the request and response paths (validation,
//! security, routing, the INVITE state machine, relaying). Nothing may
//! panic, and the tables stay within their caps.
//!
//! Input: records of [source byte][u16 little-endian length][bytes]. The
//! proxy sends on loopback only (its nodes are 127.0.0.1 ports nothing
//! listens on).

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sipedge::proxy::Proxy;

const CONFIG: &str = r#"
[listen]
udp = ["127.0.0.1:0"]
advertise = "127.0.0.1"
[dispatcher]
algorithm = "round-robin"
[[dispatcher.destination]]
uri = "sip:127.0.0.1:9"
[[dispatcher.destination]]
uri = "sip:127.0.0.1:7"
[security]
rate_limit = { requests = 1000000, per = "1s", block_for = "1s" }
[limits]
transactions = 1000
[dialogs]
max = 500
"#;

struct World {
    rt: tokio::runtime::Runtime,
    proxy: Arc<Proxy>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = sipedge::config::from_toml(CONFIG, "fuzz").expect("config");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        let proxy = rt.block_on(async { Proxy::new(cfg, vec![socket]).expect("proxy") });
        World { rt, proxy }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let sources: [SocketAddr; 3] = [
        "192.0.2.10:5060".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:7".parse().unwrap(),
    ];
    let _rt = w.rt.enter();
    let mut rest = data;
    while rest.len() >= 3 {
        let src = sources[usize::from(rest[0]) % sources.len()];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        rest = &rest[3..];
        let n = len.min(rest.len());
        w.proxy.handle_datagram(&rest[..n], src);
        rest = &rest[n..];
    }
    // New calls stop at the transaction cap (each call holds one server
    // transaction and at least one client one); the dialog table at its
    // own. In-dialog requests are never shed, and their transactions go
    // with the sweeper (not running here), so the client table is not
    // checked.
    let (_, server) = w.proxy.transaction_counts();
    assert!(server <= 1000, "server transactions {server}");
    let dialogs = w.proxy.dialogs().len();
    assert!(dialogs <= 500, "dialogs {dialogs}");
});
