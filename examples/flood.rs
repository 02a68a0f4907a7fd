//! A bounded SIP flood on loopback for `tests/load/flood.sh`: garbage,
//! scanner OPTIONS and INVITEs from sources outside `trusted`, from 32
//! source addresses (127.0.0.2 ..= 127.0.0.33), at a target rate for a
//! number of seconds. Loopback only; never more than 60 s.
//!
//! Usage: `flood TARGET RATE SECONDS` (e.g. `flood 127.0.0.1:5060 20000 10`).
//! Prints what it sent.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: flood TARGET(127.x.x.x:port) RATE(1-1000000) SECONDS(1-60)");
        std::process::exit(2)
    };
    let (Some(target), Some(rate), Some(secs)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
        args.get(3).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        usage()
    };
    if !target.ip().is_loopback() || !(1..=1_000_000).contains(&rate) || !(1..=60).contains(&secs) {
        usage()
    }
    let sockets: Vec<UdpSocket> = (2..=33u8)
        .filter_map(|i| UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, i), 0)).ok())
        .collect();
    if sockets.is_empty() {
        eprintln!("flood: cannot bind any 127.0.0.x source");
        std::process::exit(1);
    }
    for s in &sockets {
        let _ = s.set_nonblocking(true);
    }
    let total = rate * secs;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs + 5);
    let mut sent = [0u64; 3];
    let mut errors = 0u64;
    let mut garbage = [0u8; 200];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..total {
        // Pace: message i is due at i / rate seconds.
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        let now = Instant::now();
        if now > deadline {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let s = &sockets[(i as usize) % sockets.len()];
        let from = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let kind = (i % 3) as usize;
        let msg: Vec<u8> = match kind {
            0 => {
                for b in garbage.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                garbage.to_vec()
            }
            1 => request("OPTIONS", target, &from, i, Some("friendly-scanner")),
            _ => request("INVITE", target, &from, i, None),
        };
        match s.send_to(&msg, target) {
            Ok(_) => sent[kind] += 1,
            Err(_) => errors += 1,
        }
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "FLOOD sent_garbage={} sent_scanner={} sent_untrusted_invite={} send_errors={errors} seconds={took:.1} rate={:.0}",
        sent[0],
        sent[1],
        sent[2],
        (sent.iter().sum::<u64>()) as f64 / took.max(0.001)
    );
}

fn request(method: &str, to: SocketAddr, from: &str, i: u64, ua: Option<&str>) -> Vec<u8> {
    let ua = ua
        .map(|u| format!("User-Agent: {u}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} sip:fax@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKflood{i};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:flood@{from}>;tag=f{i}\r\nTo: <sip:fax@{to}>\r\n\
         Call-ID: flood-{i}@{from}\r\nCSeq: 1 {method}\r\n{ua}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}
