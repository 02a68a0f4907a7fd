//! systemd readiness: the real binary with `NOTIFY_SOCKET`
//! pointing at the test's own datagram socket (an abstract one, as
//! systemd's `@` names) and `WATCHDOG_USEC` set. `READY=1` comes only once
//! the listeners answer and the first probe round is done, `RELOADING=1`
//! (with `MONOTONIC_USEC`) and `READY=1` frame a reload by SIGHUP or RPC,
//! `WATCHDOG=1` keeps coming, and SIGTERM sends `STOPPING=1`.

#[path = "support/process.rs"]
mod process;

use process::signal;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest a wait for something that must happen lasts (a busy 2-core
/// machine can stall the binary; a passing test never waits this long).
const MUST_ARRIVE: Duration = Duration::from_secs(10);

/// The notify socket, read with a deadline.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind() -> (Notify, String) {
        let name = format!("sipedge-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        (
            Notify {
                sock,
                seen: Vec::new(),
            },
            format!("@{name}"),
        )
    }

    /// The next datagram within `wait`.
    fn next_within(&mut self, wait: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(text.clone());
        Some(text)
    }

    /// Datagrams until one starts with `prefix`, skipping watchdog
    /// keep-alives and status updates; returns it.
    fn until(&mut self, prefix: &str) -> String {
        let end = Instant::now() + MUST_ARRIVE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_within(left) {
                Some(m) if m.starts_with(prefix) => return m,
                Some(m) if m == "WATCHDOG=1" || m.starts_with("STATUS=") => continue,
                Some(m) => panic!("expected {prefix:?}, got {m:?}; all: {:?}", self.seen),
                None => panic!("no {prefix:?} within {MUST_ARRIVE:?}; got {:?}", self.seen),
            }
        }
    }

    /// Whatever has arrived by now.
    fn pending(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        self.sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).unwrap();
        self.seen.extend(got.iter().cloned());
        got
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd reads it.
fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    u64::try_from(t.tv_sec()).unwrap() * 1_000_000 + u64::try_from(t.tv_nsec()).unwrap() / 1_000
}

/// A node whose answers to probes the test releases: each OPTIONS is
/// reported on the channel, and answered 200 once `release` says so.
fn held_node() -> (UdpSocket, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let node = sock.try_clone().unwrap();
    let (seen_tx, seen_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_535];
        let mut released = false;
        while let Ok((n, from)) = node.recv_from(&mut buf) {
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !req.starts_with("OPTIONS ") {
                continue;
            }
            if seen_tx.send(()).is_err() {
                return;
            }
            if !released {
                if release_rx.recv().is_err() {
                    return;
                }
                released = true;
            }
            let _ = node.send_to(ok_to(&req).as_bytes(), from);
        }
    });
    (sock, seen_rx, release_tx)
}

/// A 200 to `req`, its Via, From, To, Call-ID and CSeq copied.
fn ok_to(req: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in req.split("\r\n").skip(1) {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if ["via", "v", "from", "f", "call-id", "i", "cseq"].contains(&name.as_str()) {
            out.push_str(line);
            out.push_str("\r\n");
        } else if name == "to" || name == "t" {
            out.push_str(line);
            out.push_str(";tag=node\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// Our keep-alive OPTIONS to the proxy itself answers 200: it listens.
fn proxy_answers(udp: &str) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = s.local_addr().unwrap();
    let req = format!(
        "OPTIONS sip:{udp} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKnotify1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:mon@{me}>;tag=m1\r\nTo: <sip:{udp}>\r\n\
         Call-ID: notify-keepalive\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    s.send_to(req.as_bytes(), udp).unwrap();
    s.set_read_timeout(Some(MUST_ARRIVE)).unwrap();
    let mut buf = [0u8; 4096];
    match s.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200"),
        Err(_) => false,
    }
}

fn spawn(cfg: &std::path::Path, notify: &str) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", notify)
        // 600 ms: a keep-alive due every 300 ms.
        .env("WATCHDOG_USEC", "600000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut udp, mut admin) = (None, None);
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(a) = line.strip_prefix("listening on udp:") {
            udp = Some(a.to_owned());
        }
        if let Some(a) = line.strip_prefix("listening on admin:") {
            admin = Some(a.to_owned());
        }
        if udp.is_some() && admin.is_some() {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, udp.expect("udp"), admin.expect("admin"))
}

#[test]
fn ready_reloading_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = std::env::temp_dir().join(format!("sipedge-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (node, probed, release) = held_node();
    std::fs::write(
        dir.join("pool.list"),
        format!("1 sip:{}\n", node.local_addr().unwrap()),
    )
    .unwrap();
    let cfg = dir.join("sipedge.toml");
    std::fs::write(
        &cfg,
        "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         [dispatcher]\nlist_file = \"pool.list\"\n\
         [probe]\ntimeout = \"1s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (mut notify, name) = Notify::bind();
    let (child, udp, admin) = spawn(&cfg, &name);

    // The first probe is out and held: the proxy answers, but is not
    // ready yet.
    probed
        .recv_timeout(MUST_ARRIVE)
        .expect("the first probe round reaches the node");
    assert!(proxy_answers(&udp), "the UDP listener answers");
    let early = notify.pending();
    assert!(
        !early.iter().any(|m| m.contains("READY=1")),
        "READY=1 before the first probe round was done: {early:?}"
    );
    release.send(()).unwrap();
    let ready = notify.until("READY=1");
    assert!(
        ready.contains("STATUS=1 of 1 destinations take calls"),
        "{ready:?}"
    );
    // The node answered that round: it is not being failed.
    let health = http_get(&admin, "/health/ready");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // Keep-alives, one every half WATCHDOG_USEC.
    notify.until("WATCHDOG=1");
    notify.until("WATCHDOG=1");

    // SIGHUP: RELOADING=1 with this clock's time, then READY=1.
    let before = monotonic_usec();
    signal(&child, "HUP");
    let reloading = notify.until("RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        usec >= before && usec <= monotonic_usec(),
        "{usec} not in [{before}, now]"
    );
    let again = notify.until("READY=1");
    assert!(again.contains("STATUS=reloaded;"), "{again:?}");

    // The RPC reload (what `sipedge ctl reload` and kamcmd call) too.
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["ctl", "--admin", &admin, "reload"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    notify.until("RELOADING=1");
    notify.until("READY=1");

    // A reload refused still ends in READY=1, saying why.
    std::fs::write(dir.join("pool.list"), "one sip:127.0.0.1:1\n").unwrap();
    signal(&child, "HUP");
    notify.until("RELOADING=1");
    let refused = notify.until("READY=1");
    assert!(refused.contains("STATUS=reload refused"), "{refused:?}");

    // SIGTERM: STOPPING=1 at the drain, then a clean exit.
    signal(&child, "TERM");
    let stopping = notify.until("STOPPING=1");
    assert!(stopping.contains("STATUS=draining"), "{stopping:?}");
    let mut child = child;
    assert_eq!(child.wait().unwrap().code(), Some(0));
    drop(node);
    let _ = std::fs::remove_dir_all(dir);
}

/// One HTTP GET to the admin listener; the whole response.
fn http_get(admin: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = admin.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(MUST_ARRIVE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
