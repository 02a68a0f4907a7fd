//! HEP capture (`[capture]`) over real sockets: the proxy copies every
//! SIP message it receives or sends to a HEP collector. The test is the
//! collector; it decodes each packet with its own reading of the HEP v3
//! layout and compares every field with what the fake trunk and nodes
//! really sent and received. Then the same packets go to Debian's
//! `sngrep` listening for HEP (`-L`), which checks the password and
//! writes what it accepted to a pcap; Debian's `tshark` reads that pcap
//! and must show the call's ladder with the addresses, ports and times
//! sipedge captured. (tshark 4.0 has no HEP dissector of its own, so
//! sngrep is the HEP decoder and tshark the SIP one.)
//!
//! Both tools are required: `.ci/run` installs them. Without them these
//! tests fail, unless `SIPEDGE_ALLOW_CAPTURE_TOOLS_SKIP=1`.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sipedge::metrics::CaptureDrop;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};

// ---------------------------------------------------------------------------
// A HEP v3 reader written from the spec (not the encoder's)
// ---------------------------------------------------------------------------

/// One HEP packet, every chunk sipedge writes.
#[derive(Debug, Clone)]
struct Hep {
    family: u8,
    proto: u8,
    src: SocketAddr,
    dst: SocketAddr,
    /// Microseconds since the epoch (chunks 9 and 10).
    time_us: u64,
    proto_type: u8,
    capture_id: u32,
    auth_key: Option<Vec<u8>>,
    correlation: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Hep {
    fn first_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.payload);
        text.lines().next().unwrap_or_default().to_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.payload);
        text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    fn cseq_method(&self) -> String {
        self.header("CSeq")
            .and_then(|c| c.split_whitespace().nth(1).map(str::to_owned))
            .unwrap_or_default()
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b.try_into().expect("a 2-byte chunk"))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("a 4-byte chunk"))
}

/// Reads one packet; panics on anything the spec does not allow.
fn decode(raw: &[u8]) -> Hep {
    assert_eq!(&raw[..4], b"HEP3", "magic");
    assert_eq!(usize::from(be16(&raw[4..6])), raw.len(), "total length");
    let mut at = 6;
    let (mut family, mut proto, mut proto_type, mut capture_id) = (None, None, None, None);
    let (mut src_ip, mut dst_ip, mut sport, mut dport) = (None, None, None, None);
    let (mut secs, mut micros) = (None, None);
    let (mut auth_key, mut correlation, mut payload) = (None, None, None);
    while at < raw.len() {
        let vendor = be16(&raw[at..at + 2]);
        let kind = be16(&raw[at + 2..at + 4]);
        let len = usize::from(be16(&raw[at + 4..at + 6]));
        assert_eq!(vendor, 0, "generic chunks only");
        assert!(
            len >= 6 && at + len <= raw.len(),
            "chunk {kind} length {len}"
        );
        let v = &raw[at + 6..at + len];
        match kind {
            1 => family = Some(v[0]),
            2 => proto = Some(v[0]),
            3 | 4 => {
                let ip = IpAddr::from(<[u8; 4]>::try_from(v).expect("4-byte IPv4"));
                *(if kind == 3 { &mut src_ip } else { &mut dst_ip }) = Some(ip);
            }
            5 | 6 => {
                let ip = IpAddr::from(<[u8; 16]>::try_from(v).expect("16-byte IPv6"));
                *(if kind == 5 { &mut src_ip } else { &mut dst_ip }) = Some(ip);
            }
            7 => sport = Some(be16(v)),
            8 => dport = Some(be16(v)),
            9 => secs = Some(be32(v)),
            10 => micros = Some(be32(v)),
            11 => proto_type = Some(v[0]),
            12 => capture_id = Some(be32(v)),
            14 => auth_key = Some(v.to_vec()),
            15 => payload = Some(v.to_vec()),
            17 => correlation = Some(v.to_vec()),
            other => panic!("unexpected chunk {other}"),
        }
        at += len;
    }
    let micros = micros.expect("chunk 10");
    assert!(micros < 1_000_000);
    Hep {
        family: family.expect("chunk 1"),
        proto: proto.expect("chunk 2"),
        src: SocketAddr::new(src_ip.expect("source address"), sport.expect("chunk 7")),
        dst: SocketAddr::new(
            dst_ip.expect("destination address"),
            dport.expect("chunk 8"),
        ),
        time_us: u64::from(secs.expect("chunk 9")) * 1_000_000 + u64::from(micros),
        proto_type: proto_type.expect("chunk 11"),
        capture_id: capture_id.expect("chunk 12"),
        auth_key,
        correlation,
        payload: payload.expect("chunk 15"),
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

type Captured = Arc<Mutex<Vec<Hep>>>;

fn snapshot(c: &Captured) -> Vec<Hep> {
    c.lock().unwrap().clone()
}

/// The packet carrying exactly `payload` from `src` to `dst`; panics
/// naming what was captured.
fn find<'a>(got: &'a [Hep], payload: &[u8], src: SocketAddr, dst: SocketAddr) -> &'a Hep {
    got.iter()
        .find(|h| h.payload == payload && h.src == src && h.dst == dst)
        .unwrap_or_else(|| {
            let seen: Vec<String> = got
                .iter()
                .map(|h| format!("{} -> {}: {}", h.src, h.dst, h.first_line()))
                .collect();
            panic!(
                "no HEP packet {src} -> {dst} carrying:\n{}\ncaptured:\n{}",
                String::from_utf8_lossy(payload),
                seen.join("\n")
            )
        })
}

// ---------------------------------------------------------------------------
// sngrep and tshark
// ---------------------------------------------------------------------------

fn tools_present() -> bool {
    // sngrep's version flag is -V (its -v inverts the match); tshark's -v.
    let have = |tool: &str, version: &str| {
        std::process::Command::new(tool)
            .arg(version)
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("sngrep", "-V") && have("tshark", "-v") {
        return true;
    }
    if std::env::var("SIPEDGE_ALLOW_CAPTURE_TOOLS_SKIP").as_deref() == Ok("1") {
        eprintln!("sngrep or tshark missing: skipped (SIPEDGE_ALLOW_CAPTURE_TOOLS_SKIP=1)");
        return false;
    }
    panic!(
        "sngrep and tshark are needed (apt-get install sngrep tshark; .ci/run does), or set \
         SIPEDGE_ALLOW_CAPTURE_TOOLS_SKIP=1"
    );
}

/// A free UDP port on 127.0.0.1 (bound, then let go for sngrep).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn udp_port_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| {
        t.lines().any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").ends_with(&needle))
        })
    })
}

/// sngrep listening for HEP on 127.0.0.1:`port` with `password`, saving
/// what it accepts to a pcap.
struct Sngrep {
    child: std::process::Child,
    port: u16,
    pcap: PathBuf,
    dir: PathBuf,
}

impl Sngrep {
    async fn start(password: &str) -> Sngrep {
        let dir = std::env::temp_dir().join(unique("sipedge-capture-"));
        std::fs::create_dir_all(&dir).unwrap();
        let rc = dir.join("sngreprc");
        // Only this file: the host's own sngreprc must not change the test.
        std::fs::write(&rc, format!("set eep.listen.pass {password}\n")).unwrap();
        let pcap = dir.join("sngrep.pcap");
        let port = free_udp_port();
        let child = std::process::Command::new("sngrep")
            .arg("-f")
            .arg(&rc)
            .args(["-N", "-q", "-L", &format!("udp:127.0.0.1:{port}"), "-O"])
            .arg(&pcap)
            .env("HOME", &dir)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start sngrep");
        eventually("sngrep listening for HEP", || udp_port_bound(port)).await;
        Sngrep {
            child,
            port,
            pcap,
            dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops it the way an operator would (SIGTERM: it writes the pcap
    /// out) and returns the pcap.
    fn stop(&mut self) -> PathBuf {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = self.child.wait().expect("sngrep exits");
        assert!(status.success(), "sngrep: {status}");
        self.pcap.clone()
    }
}

impl Drop for Sngrep {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One SIP packet as tshark reads it from a pcap.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    time_us: u64,
    src: SocketAddr,
    dst: SocketAddr,
    call_id: String,
    line: String,
}

/// The SIP packets in `pcap`, by tshark (none if sngrep wrote no file).
fn tshark_frames(pcap: &Path) -> Vec<Frame> {
    if !pcap.exists() {
        return Vec::new();
    }
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-Y",
            "sip",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "udp.srcport",
            "-e",
            "tcp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "udp.dstport",
            "-e",
            "tcp.dstport",
            "-e",
            "sip.Call-ID",
            "-e",
            "sip.Request-Line",
            "-e",
            "sip.Status-Line",
        ])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 12, "{l}");
            let (secs, frac) = f[0].split_once('.').expect("epoch time");
            let time_us =
                secs.parse::<u64>().unwrap() * 1_000_000 + frac[..6].parse::<u64>().unwrap();
            let ip =
                |a: &str, b: &str| -> IpAddr { if a.is_empty() { b } else { a }.parse().unwrap() };
            let port =
                |a: &str, b: &str| -> u16 { if a.is_empty() { b } else { a }.parse().unwrap() };
            Frame {
                time_us,
                src: SocketAddr::new(ip(f[1], f[2]), port(f[3], f[4])),
                dst: SocketAddr::new(ip(f[5], f[6]), port(f[7], f[8])),
                call_id: f[9].to_owned(),
                line: if f[10].is_empty() { f[11] } else { f[10] }.to_owned(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

const CAPTURE_ID: u32 = 2001;
const AUTH_KEY: &str = "homer-s3cret";

/// The test's HEP collector on UDP: keeps every packet, and relays it
/// byte for byte to `relay` (the sngreps).
async fn udp_collector(relay: Vec<SocketAddr>) -> (SocketAddr, Captured) {
    udp_collector_on("127.0.0.1:0", relay).await
}

/// [`udp_collector`] bound to `bind` (`[::1]:0` for IPv6).
async fn udp_collector_on(bind: &str, relay: Vec<SocketAddr>) -> (SocketAddr, Captured) {
    let sock = UdpSocket::bind(bind).await.expect("bind the collector");
    let addr = sock.local_addr().unwrap();
    let got: Captured = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, _)) = sock.recv_from(&mut buf).await else {
                return;
            };
            keep.lock().unwrap().push(decode(&buf[..n]));
            for to in &relay {
                let _ = sock.send_to(&buf[..n], to).await;
            }
        }
    });
    (addr, got)
}

/// A call failing over from a node answering 503 to one answering 200,
/// an in-dialog request no dialog matches (answered locally with 481 on
/// the rescue path), and the health probes: each message appears once
/// as HEP with its real addresses, protocol, time, Call-ID, capture id and
/// password, and payload byte for byte; sngrep accepts them with the
/// right password only, and tshark reads the ladder back from sngrep's
/// pcap with the same addresses, ports and times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_capture_shows_the_failover_ladder_to_sngrep_and_tshark() {
    if !tools_present() {
        return;
    }
    let mut sngrep = Sngrep::start(AUTH_KEY).await;
    let mut wrong = Sngrep::start("not-the-key").await;
    let (collector, got) = udp_collector(vec![sngrep.addr(), wrong.addr()]).await;
    let extra = format!(
        "[capture]\nhep = \"udp:{collector}\"\ncapture_id = {CAPTURE_ID}\nauth_key = \"{AUTH_KEY}\"\n"
    );
    let h = Harness::start(Options {
        extra_toml: Box::leak(extra.into_boxed_str()),
        ..Options::default()
    })
    .await;
    let start = now_us();

    // The call: node 0 answers 503, node 1 takes it.
    let mut call = h.trunk_call();
    let invite = call.invite(SDP_AUDIO);
    h.trunk.send(&invite, h.addr).await;
    let inv0 = h.nodes[0].recv_request("INVITE").await;
    let busy = reply(&inv0, 503, "Service Unavailable", Some(&unique("fs0-")));
    h.nodes[0].send(&busy, inv0.from).await;
    let ack0 = h.nodes[0].recv_request("ACK").await;
    let inv1 = h.nodes[1].recv_request("INVITE").await;
    let fs1 = Dialog::uas(&h.nodes[1], &inv1, &unique("fs1-"));
    let ok = fs1.answer(&inv1, 200, "OK", Some(SDP_NODE));
    h.nodes[1].send(&ok, inv1.from).await;
    let upstream = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(upstream.last().unwrap());
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(&ack, h.addr).await;
    let ack1 = h.nodes[1].recv_request("ACK").await;

    // A BYE for no known dialog: 481 from sipedge itself.
    let mut stray = Dialog::uac(&h.trunk, "sip:someone@192.0.2.50:5060");
    stray.remote_tag = Some("unknown-dialog".to_owned());
    let (bye, _) = stray.request("BYE", None);
    h.trunk.send(&bye, h.addr).await;
    let refused = h.trunk.recv_response(481).await;

    // Every message of the ladder, as its two ends saw it.
    let (proxy, trunk, n0, n1) = (h.addr, h.trunk.addr, h.nodes[0].addr, h.nodes[1].addr);
    let mut ladder: Vec<(Vec<u8>, SocketAddr, SocketAddr)> = vec![(invite, trunk, proxy)];
    for r in &upstream {
        ladder.push((r.data.clone(), proxy, trunk)); // 100 Trying (local), the 200
    }
    ladder.extend([
        (inv0.data.clone(), proxy, n0),
        (busy, n0, proxy),
        (ack0.data.clone(), proxy, n0),
        (inv1.data.clone(), proxy, n1),
        (ok, n1, proxy),
        (ack, trunk, proxy),
        (ack1.data.clone(), proxy, n1),
        (bye, trunk, proxy),
        (refused.data.clone(), proxy, trunk),
    ]);
    let probe_done = |got: &[Hep], node: SocketAddr| {
        got.iter()
            .any(|h| h.src == proxy && h.dst == node && h.first_line().starts_with("OPTIONS "))
            && got.iter().any(|h| {
                h.src == node
                    && h.dst == proxy
                    && h.cseq_method() == "OPTIONS"
                    && h.first_line().starts_with("SIP/2.0 200")
            })
    };
    eventually(
        "every message of the ladder and a probe round captured",
        || {
            let got = snapshot(&got);
            ladder.iter().all(|(p, s, d)| {
                got.iter()
                    .any(|h| &h.payload == p && h.src == *s && h.dst == *d)
            }) && probe_done(&got, n0)
                && probe_done(&got, n1)
        },
    )
    .await;
    let end = now_us();

    let all = snapshot(&got);
    for h in &all {
        let call_id = h
            .header("Call-ID")
            .expect("a Call-ID in every captured message");
        assert_eq!(h.family, 2, "IPv4");
        assert_eq!(h.proto, 17, "UDP");
        assert_eq!(h.proto_type, 1, "SIP");
        assert_eq!(h.capture_id, CAPTURE_ID);
        assert_eq!(h.auth_key.as_deref(), Some(AUTH_KEY.as_bytes()));
        assert_eq!(h.correlation.as_deref(), Some(call_id.as_bytes()));
        assert!(h.src == proxy || h.dst == proxy, "{} -> {}", h.src, h.dst);
    }
    let mut times = Vec::new();
    for (payload, src, dst) in &ladder {
        let h = find(&all, payload, *src, *dst);
        assert!(
            (start..=end).contains(&h.time_us),
            "{}: captured at {} outside [{start}, {end}]",
            h.first_line(),
            h.time_us
        );
        times.push((h.time_us, h.first_line()));
        let copies = all
            .iter()
            .filter(|x| &x.payload == payload && x.src == *src && x.dst == *dst)
            .count();
        // Once each: one hook per direction. (A forwarded INVITE may be
        // retransmitted by Timer A on a slow machine: sent twice.)
        let retransmitted = *src == proxy && h.first_line().starts_with("INVITE ");
        assert!(
            copies == 1 || retransmitted,
            "{} captured {copies} times",
            h.first_line()
        );
    }
    // Cause before effect: the INVITE in before it goes out, the 503 in
    // before the INVITE to node 1.
    let t = |i: usize| times[i].0;
    let first = upstream.len() + 1;
    assert!(t(0) <= t(first), "{times:?}");
    assert!(t(first + 1) <= t(first + 3), "{times:?}");

    let m = h.proxy.metrics();
    assert!(m.capture_sent() >= ladder.len() as u64);
    assert_eq!(m.capture_dropped(CaptureDrop::QueueFull), 0);

    // sngrep decoded the same packets (with the right password only);
    // tshark reads its pcap as SIP.
    let relayed = all.len();
    eventually("the relay done", || snapshot(&got).len() >= relayed).await;
    let frames = tshark_frames(&sngrep.stop());
    let wrong_frames = tshark_frames(&wrong.stop());
    assert!(
        wrong_frames.is_empty(),
        "sngrep accepted packets under another password: {wrong_frames:?}"
    );
    let want: Vec<Frame> = all
        .iter()
        .filter(|h| h.correlation.as_deref() == Some(call.call_id.as_bytes()))
        .map(|h| Frame {
            time_us: h.time_us,
            src: h.src,
            dst: h.dst,
            call_id: call.call_id.clone(),
            line: h.first_line(),
        })
        .collect();
    let seen: Vec<Frame> = frames
        .into_iter()
        .filter(|f| f.call_id == call.call_id)
        .collect();
    assert!(want.len() >= 10, "{want:#?}");
    assert_eq!(seen, want, "the ladder as sngrep and tshark show it");
    let _ = h;
}

/// The test's HEP collector on TCP: frames packets off each accepted
/// connection by HEP's length field; `close` drops the current one.
struct TcpCollector {
    addr: SocketAddr,
    got: Captured,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    close: Arc<tokio::sync::Notify>,
}

async fn tcp_collector() -> TcpCollector {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Captured = Arc::default();
    let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let close = Arc::new(tokio::sync::Notify::new());
    let (keep, count, closing) = (got.clone(), accepted.clone(), close.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 65_536];
            loop {
                let n = tokio::select! {
                    _ = closing.notified() => break,
                    n = s.read(&mut chunk) => n.unwrap_or(0),
                };
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 6 {
                    assert_eq!(&buf[..4], b"HEP3", "stream out of step");
                    let len = usize::from(be16(&buf[4..6]));
                    if buf.len() < len {
                        break;
                    }
                    let packet: Vec<u8> = buf.drain(..len).collect();
                    keep.lock().unwrap().push(decode(&packet));
                }
            }
        }
    });
    TcpCollector {
        addr,
        got,
        accepted,
        close,
    }
}

/// HEP over TCP with `what = "calls"` and the defaults (capture id 1, no
/// password): a call from a TCP trunk is captured with protocol 6 on its
/// TCP leg and 17 on the node's, the probes and keep-alives are not; when
/// the collector drops the connection sipedge reconnects and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_capture_of_calls_only_reconnects() {
    let c = tcp_collector().await;
    let extra = format!("[capture]\nhep = \"tcp:{}\"\nwhat = \"calls\"\n", c.addr);
    let h = Harness::start(Options {
        tcp: true,
        extra_toml: Box::leak(extra.into_boxed_str()),
        ..Options::default()
    })
    .await;
    let proxy_tcp = h.tcp_addr.expect("a TCP listener");
    let trunk = h
        .tcp_trunk_from("trunk", "127.0.0.1".parse().unwrap())
        .await;

    // A keep-alive from the trunk (answered locally, not a call).
    let ka = assemble(
        &format!("OPTIONS sip:{} SIP/2.0", h.addr),
        &[
            (
                "Via",
                format!("SIP/2.0/TCP {};branch={};rport", trunk.addr, branch()),
            ),
            ("Max-Forwards", "70".to_owned()),
            ("From", format!("<sip:ka@{}>;tag=ka", trunk.addr)),
            ("To", format!("<sip:{}>", h.addr)),
            ("Call-ID", unique("ka-")),
            ("CSeq", "1 OPTIONS".to_owned()),
        ],
        None,
    );
    trunk.send(&ka).await;
    trunk.recv_response(200).await;

    let mut call = Dialog::uac_at(trunk.addr, &format!("sip:fax@{}", h.addr)).over_tcp();
    let invite = call.invite(SDP_AUDIO);
    trunk.send(&invite).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    let fs = Dialog::uas(&h.nodes[0], &inv, &unique("fs-"));
    let ok = fs.answer(&inv, 200, "OK", Some(SDP_NODE));
    h.nodes[0].send(&ok, inv.from).await;
    let got = trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(got.last().unwrap());
    let (ack, _) = call.request("ACK", None);
    trunk.send(&ack).await;
    h.nodes[0].recv_request("ACK").await;

    let (proxy, n0) = (h.addr, h.nodes[0].addr);
    let wanted: [(&[u8], SocketAddr, SocketAddr, u8); 4] = [
        (&invite, trunk.addr, proxy_tcp, 6),
        (&inv.data, proxy, n0, 17),
        (&ok, n0, proxy, 17),
        (&ack, trunk.addr, proxy_tcp, 6),
    ];
    eventually("the call captured over TCP", || {
        let got = snapshot(&c.got);
        wanted.iter().all(|(p, s, d, proto)| {
            got.iter()
                .any(|h| h.payload == *p && h.src == *s && h.dst == *d && h.proto == *proto)
        })
    })
    .await;
    // The 200 relayed to the trunk went on its connection.
    let ok_up = got.last().unwrap();
    eventually("the 200 to the trunk captured", || {
        snapshot(&c.got).iter().any(|h| {
            h.payload == ok_up.data && h.src == proxy_tcp && h.dst == trunk.addr && h.proto == 6
        })
    })
    .await;
    // A probe round has run (the nodes answered it) by now or soon.
    eventually("a probe round", || {
        h.proxy.metrics().encode().contains("sipedge_probe_total{")
    })
    .await;
    for p in snapshot(&c.got) {
        assert_eq!(p.capture_id, 1, "the default capture id");
        assert_eq!(p.auth_key, None);
        assert_ne!(p.cseq_method(), "OPTIONS", "not a call: {}", p.first_line());
        assert_eq!(p.correlation.as_deref(), Some(call.call_id.as_bytes()));
    }

    // The collector drops the connection: sipedge reconnects (with
    // backoff) and the next call messages arrive on the new one.
    assert_eq!(c.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    c.close.notify_one();
    let before = snapshot(&c.got).len();
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut n = 0;
    loop {
        n += 1;
        let mut stray = Dialog::uac_at(trunk.addr, &format!("sip:fax@{}", h.addr)).over_tcp();
        stray.remote_tag = Some(unique("gone-"));
        let (bye, _) = stray.request("BYE", None);
        trunk.send(&bye).await;
        trunk.recv_response(481).await;
        let back = c.accepted.load(std::sync::atomic::Ordering::SeqCst) == 2
            && snapshot(&c.got)[before..].iter().any(|p| p.payload == bye);
        if back {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect after {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = h.proxy.metrics();
    assert!(m.capture_sent() >= 5);
    assert_eq!(m.capture_dropped(CaptureDrop::QueueFull), 0);
}

/// `what = "failures"`: a call answered at once sends nothing; a call
/// both nodes refuse with 503 (failover, then sipedge's own 503 upstream)
/// arrives whole, its INVITE included, held until the first 503 showed
/// the call failed; the probes never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_capture_sends_only_the_failed_call_whole() {
    let (collector, got) = udp_collector(Vec::new()).await;
    let extra = format!("[capture]\nhep = \"udp:{collector}\"\nwhat = \"failures\"\n");
    let h = Harness::start(Options {
        extra_toml: Box::leak(extra.into_boxed_str()),
        ..Options::default()
    })
    .await;
    let (proxy, trunk) = (h.addr, h.trunk.addr);

    // Answered by node 0 and hung up: never captured.
    let mut good = h.trunk_call();
    h.trunk.send(good.invite(SDP_AUDIO), proxy).await;
    let inv = h.nodes[0].recv_request("INVITE").await;
    let fs = Dialog::uas(&h.nodes[0], &inv, &unique("fs-"));
    h.nodes[0]
        .send(fs.answer(&inv, 200, "OK", Some(SDP_NODE)), inv.from)
        .await;
    let up = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    good.learn_2xx(up.last().unwrap());
    let (ack, _) = good.request("ACK", None);
    h.trunk.send(ack, proxy).await;
    h.nodes[0].recv_request("ACK").await;
    let (bye, _) = good.request("BYE", None);
    h.trunk.send(bye, proxy).await;
    let bye = h.nodes[0].recv_request("BYE").await;
    h.nodes[0]
        .send(reply(&bye, 200, "OK", None), bye.from)
        .await;
    h.trunk.recv_response(200).await;

    // Refused by both nodes: sipedge answers 503 itself.
    let mut bad = h.trunk_call();
    let invite = bad.invite(SDP_AUDIO);
    h.trunk.send(&invite, proxy).await;
    let mut ladder: Vec<(Vec<u8>, SocketAddr, SocketAddr)> = vec![(invite, trunk, proxy)];
    for node in &h.nodes {
        let inv = node.recv_request("INVITE").await;
        let busy = reply(&inv, 503, "Service Unavailable", Some(&unique("fs-")));
        node.send(&busy, inv.from).await;
        let ack = node.recv_request("ACK").await;
        ladder.extend([
            (inv.data.clone(), proxy, node.addr),
            (busy, node.addr, proxy),
            (ack.data.clone(), proxy, node.addr),
        ]);
    }
    let upstream = h.trunk.recv_until(|r| r.status() == Some(503)).await;
    for r in &upstream {
        ladder.push((r.data.clone(), proxy, trunk));
    }
    let ack = bad.ack_non2xx(upstream.last().unwrap());
    h.trunk.send(&ack, proxy).await;
    ladder.push((ack, trunk, proxy));

    eventually("the failed call captured whole", || {
        let got = snapshot(&got);
        ladder.iter().all(|(p, s, d)| {
            got.iter()
                .any(|h| &h.payload == p && h.src == *s && h.dst == *d)
        })
    })
    .await;
    for p in snapshot(&got) {
        assert_eq!(
            p.correlation.as_deref(),
            Some(bad.call_id.as_bytes()),
            "only the failed call: {} -> {}: {}",
            p.src,
            p.dst,
            p.first_line()
        );
    }
    assert_eq!(h.proxy.metrics().capture_dropped(CaptureDrop::QueueFull), 0);
}

/// Over IPv6 the packets carry the IPv6 address chunks (family 10) with
/// the real `::1` ends: a keep-alive in, and the 200 sipedge answers it
/// with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_capture_uses_the_ipv6_chunks() {
    let (collector, got) = udp_collector_on("[::1]:0", Vec::new()).await;
    let extra = format!("[capture]\nhep = \"udp:{collector}\"\n");
    let h = Harness::start(Options {
        ipv6: true,
        extra_toml: Box::leak(extra.into_boxed_str()),
        ..Options::default()
    })
    .await;
    let (ka, _, call_id) = h.keepalive(70);
    h.trunk.send(&ka, h.addr).await;
    let ok = h.trunk.recv_response(200).await;
    let (proxy, trunk) = (h.addr, h.trunk.addr);
    assert!(proxy.is_ipv6() && trunk.is_ipv6());
    eventually("the keep-alive and its answer captured", || {
        let got = snapshot(&got);
        got.iter()
            .any(|p| p.payload == ka && p.src == trunk && p.dst == proxy)
            && got
                .iter()
                .any(|p| p.payload == ok.data && p.src == proxy && p.dst == trunk)
    })
    .await;
    for p in snapshot(&got)
        .iter()
        .filter(|p| p.correlation.as_deref() == Some(call_id.as_bytes()))
    {
        assert_eq!((p.family, p.proto), (10, 17));
    }
}

/// A TLS trunk's messages are marked TLS (protocol 22, as Kamailio's
/// siptrace marks them) with the TLS connection's real ends; the same
/// INVITE relayed to a UDP node is marked UDP (17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_legs_are_marked_tls() {
    use tls_support::{edge_toml, Ca, EdgeSockets, Scratch, TlsTrunk};
    let (collector, got) = udp_collector(Vec::new()).await;
    let dir = Scratch::new("capture-tls");
    let ca = Ca::new("sipedge test CA");
    let server = ca.leaf(&dir, "server", &["sip.test"]);
    let sockets = EdgeSockets::bind("127.0.0.1");
    let node = Peer::bind("node0").await;
    let more = format!("[capture]\nhep = \"udp:{collector}\"\nwhat = \"calls\"\n");
    let text = edge_toml(&sockets, &[node.addr], &server.cert, &server.key, &more);
    let edge = sockets.run(&text, None, false, vec![node]);
    let mut trunk = TlsTrunk::connect(edge.tls_addr, ca.der(), None).await;
    let mut call = Dialog::uac_at(trunk.addr, &format!("sip:fax@{}", edge.addr)).over_tls();
    let invite = call.invite(SDP_AUDIO);
    trunk.send(&invite).await;
    let trying = trunk.recv_response(100).await;
    let relayed = edge.nodes[0].recv_request("INVITE").await;
    let (tls, trunk_addr, udp, node_addr) =
        (edge.tls_addr, trunk.addr, edge.addr, edge.nodes[0].addr);
    eventually(
        "the trunk's INVITE, our 100 and the relayed INVITE captured",
        || {
            let got = snapshot(&got);
            got.iter().any(|p| p.payload == invite)
                && got.iter().any(|p| p.payload == trying.data)
                && got.iter().any(|p| p.payload == relayed.data)
        },
    )
    .await;
    let got = snapshot(&got);
    let p = find(&got, &invite, trunk_addr, tls);
    assert_eq!((p.family, p.proto), (2, 22), "the trunk's INVITE over TLS");
    let p = find(&got, &trying.data, tls, trunk_addr);
    assert_eq!(p.proto, 22, "our 100 over TLS");
    let p = find(&got, &relayed.data, udp, node_addr);
    assert_eq!(p.proto, 17, "the INVITE to the UDP node");
    assert_eq!(p.correlation.as_deref(), Some(call.call_id.as_bytes()));
}
