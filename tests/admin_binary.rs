//! The built binary with its admin listener (issue 4): it prints where it
//! listens, `sipedge ctl` lists and drains a node over JSON-RPC, new calls
//! avoid the drained node, and SIGHUP reloads the dispatcher.list.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The longest a wait for something that must happen lasts: generous, a
/// busy 2-core machine can stall the binary; a passing test never waits
/// this long.
const MUST_ARRIVE: Duration = Duration::from_secs(10);

fn sipedge_ctl(admin: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["ctl", "--admin", admin])
        .args(args)
        .output()
        .expect("run sipedge ctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fake node: a UDP socket; returns the first request line of a method.
fn recv_method(node: &UdpSocket, method: &str, within: Duration) -> Option<String> {
    let end = Instant::now() + within;
    let mut buf = [0u8; 65_535];
    while Instant::now() < end {
        node.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .ok()?;
        let Ok(n) = node.recv(&mut buf) else {
            return None;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.starts_with(&format!("{method} ")) {
            return Some(msg);
        }
    }
    None
}

fn write_list(path: &Path, nodes: &[&UdpSocket], set2: Option<&UdpSocket>) {
    let mut list = String::from("# setid destination flags priority attrs\n");
    if let Some(n) = set2 {
        list.push_str(&format!("2 sip:{} 8 0 duid=gw\n", n.local_addr().unwrap()));
    }
    for n in nodes {
        list.push_str(&format!(
            "1 sip:{} 8 0 duid=n{}\n",
            n.local_addr().unwrap(),
            n.local_addr().unwrap().port()
        ));
    }
    std::fs::write(path, list).unwrap();
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status on SIGTERM");
}

#[test]
fn ctl_drains_a_node_and_sighup_reloads_the_list() {
    let dir = std::env::temp_dir().join(format!("sipedge-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nodes: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let list = dir.join("pool.list");
    // Set 2 (a gateway) is listed and probed, but takes no trunk calls.
    let gateway = UdpSocket::bind("127.0.0.1:0").unwrap();
    write_list(&list, &[&nodes[0], &nodes[1]], Some(&gateway));
    let cfg = dir.join("sipedge.toml");
    std::fs::write(
        &cfg,
        "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         [dispatcher]\nalgorithm = \"priority\"\nlist_file = \"pool.list\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (child, _lines, [udp, admin]) = spawn_sipedge(&cfg, ["udp", "admin"]);
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");

    // ctl list: both nodes, active and probed.
    let out = sipedge_ctl(&admin, &["list"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = text(&out);
    for n in &nodes[..2] {
        assert!(
            table.contains(&format!("sip:{}", n.local_addr().unwrap())),
            "{table}"
        );
    }
    assert!(table.contains("AP"), "{table}");
    let gw = format!("sip:{}", gateway.local_addr().unwrap());
    assert!(table.contains(&gw), "set 2 listed: {table}");
    assert!(
        recv_method(&gateway, "OPTIONS", MUST_ARRIVE).is_some(),
        "set 2 probed"
    );

    // Drain the node that would be tried first (reverse file order: node 1).
    let first = format!("sip:{}", nodes[1].local_addr().unwrap());
    let out = sipedge_ctl(&admin, &["set-state", "d", "1", &first]);
    assert!(out.status.success(), "{}", text(&out));
    let table = text(&sipedge_ctl(&admin, &["list"]));
    assert!(table.contains("DX"), "{table}");

    // A new call goes to node 0, not to the drained node 1.
    let trunk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = trunk.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:fax@{udp} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKadm1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:trunk@{me}>;tag=a1\r\nTo: <sip:fax@{udp}>\r\n\
         Call-ID: admin-bin-1\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{me}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    trunk.send_to(invite.as_bytes(), &udp).unwrap();
    let got = recv_method(&nodes[0], "INVITE", MUST_ARRIVE).expect("INVITE at node 0");
    assert!(got.contains("admin-bin-1"), "{got}");
    assert_eq!(
        recv_method(&nodes[1], "INVITE", Duration::from_millis(300)),
        None
    );
    assert_eq!(
        recv_method(&gateway, "INVITE", Duration::from_millis(100)),
        None
    );

    // /metrics from the running proxy: the INVITE and the drain show.
    let metrics = http_get(&admin, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let invites = metric_value(&metrics, "sipedge_requests_total{method=\"INVITE\"}");
    assert!(invites >= 1.0, "{metrics}");
    let drained =
        format!("sipedge_destination_state{{set=\"1\",state=\"disabled\",uri=\"{first}\"}}");
    assert_eq!(metric_value(&metrics, &drained), 1.0, "{metrics}");
    let live = http_get(&admin, "/health/live");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");

    // SIGHUP: node 1 leaves, node 2 joins.
    write_list(&list, &[&nodes[0], &nodes[2]], None);
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let want = format!("sip:{}", nodes[2].local_addr().unwrap());
    let end = Instant::now() + MUST_ARRIVE;
    let table = loop {
        let table = text(&sipedge_ctl(&admin, &["list"]));
        if table.contains(&want) || Instant::now() > end {
            break table;
        }
        // Polling the RPC until the reload shows, up to the deadline.
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(table.contains(&want), "{table}");
    assert!(!table.contains(&first), "{table}");

    // A bad command is refused with the RPC's answer and a failing status.
    let out = sipedge_ctl(&admin, &["set-state", "d", "1", "sip:192.0.2.1:5060"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("500"), "{}", text(&out));

    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// One HTTP/1.1 GET over a plain TCP connection; the whole answer.
fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(host).expect("connect to admin");
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
}

/// The value of the exposition line that starts with `series` (labels in
/// the order the encoder writes them: sorted by name).
fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Starts the built binary on `cfg` and reads its `listening on KIND:ADDR`
/// lines until it has one for each of `kinds`: the child, the rest of its
/// output, and the addresses in the order asked.
fn spawn_sipedge<const N: usize>(
    cfg: &std::path::Path,
    kinds: [&str; N],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
    [String; N],
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    for line in lines.by_ref().map_while(Result::ok) {
        for (kind, slot) in kinds.iter().zip(found.iter_mut()) {
            if let Some(a) = line.strip_prefix(&format!("listening on {kind}:")) {
                *slot = Some(a.to_owned());
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    let found = std::array::from_fn(|i| {
        found[i]
            .take()
            .unwrap_or_else(|| panic!("no `listening on {}:` line", kinds[i]))
    });
    (child, lines, found)
}

/// SIGTERM ends the binary cleanly (status 0, promptly) while it serves
/// UDP, TCP and the admin listener, with an admin connection open: every
/// task of the server stops and is awaited.
#[test]
fn sigterm_stops_every_listener_and_exits_0() {
    let dir = std::env::temp_dir().join(format!("sipedge-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = UdpSocket::bind("127.0.0.1:0").unwrap();
    write_list(&dir.join("pool.list"), &[&node], None);
    let cfg = dir.join("sipedge.toml");
    std::fs::write(
        &cfg,
        "[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         [dispatcher]\nlist_file = \"pool.list\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (mut child, _lines, [udp, tcp, admin]) = spawn_sipedge(&cfg, ["udp", "tcp", "admin"]);
    assert!(!udp.is_empty(), "udp line");
    let live = http_get(&admin, "/health/live");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    // Connections left open on both listeners.
    let _sip = std::net::TcpStream::connect(&tcp).expect("connect to the SIP listener");
    let _idle = std::net::TcpStream::connect(admin.trim_start_matches("http://"))
        .expect("connect to admin");

    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("still running 15 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "exit status on SIGTERM");
    // No call in progress: nothing to drain, and no task waits for its
    // abort deadline (server::STOP, 8 s).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
}
