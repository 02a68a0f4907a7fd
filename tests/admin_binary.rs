//! The built binary with its admin listener: it prints where it
//! listens, `sipedge ctl` lists and drains a node over JSON-RPC, new calls
//! avoid the drained node, and SIGHUP reloads the dispatcher.list. Then
//! the hardening: the bearer token, the refused public bind,
//! escaped RPC arguments in the log, health checks behind idle clients,
//! and the other signals.

#[path = "support/process.rs"]
mod process;

use process::signal;
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

    // ctl add, set-duid-state, remove, hash: the other dispatcher methods.
    let extra = format!("sip:{}", gateway.local_addr().unwrap());
    let out = sipedge_ctl(&admin, &["add", "1", &extra, "0", "-2", "duid=gw"]);
    assert_eq!(text(&out), "Ok. Dispatcher destination added.\n");
    let out = sipedge_ctl(&admin, &["set-duid-state", "d", "1", "gw"]);
    assert_eq!(text(&out), "Ok. Dispatcher state updated.\n");
    let table = text(&sipedge_ctl(&admin, &["list"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains(&extra) && l.contains("DX") && l.contains("-2")),
        "{table}"
    );
    let out = sipedge_ctl(&admin, &["remove", "1", &extra]);
    assert_eq!(text(&out), "Ok. Dispatcher destination removed.\n");
    let out = sipedge_ctl(&admin, &["remove", "1", &extra]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Removing dispatcher dst failed"),
        "{}",
        text(&out)
    );
    let out = sipedge_ctl(&admin, &["hash", "10", "abc"]);
    assert_eq!(text(&out), "hashid: 7167810\nslot: 0\n");

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
    spawn_with(cfg, kinds, Stdio::null())
}

/// [`spawn_sipedge`], and every line the binary logs (stderr), as it
/// comes.
fn spawn_logging<const N: usize>(
    cfg: &std::path::Path,
    kinds: [&str; N],
) -> (std::process::Child, Log, [String; N]) {
    let (mut child, _lines, found) = spawn_with(cfg, kinds, Stdio::piped());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (
        child,
        Log {
            rx,
            seen: Vec::new(),
        },
        found,
    )
}

/// The binary's log lines.
struct Log {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Log {
    /// Reads lines until one contains `what`; returns it.
    fn wait_for(&mut self, what: &str) -> String {
        let end = Instant::now() + MUST_ARRIVE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {what:?} in:\n{}", self.seen.join("\n")),
            }
        }
    }
}

fn spawn_with<const N: usize>(
    cfg: &std::path::Path,
    kinds: [&str; N],
    stderr: Stdio,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
    [String; N],
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(stderr)
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

// ------------------------------------------------------------ hardening

/// A token as `openssl rand -hex 16` makes one.
const TOKEN: &str = "5f0c2a9e41d7b3866e0f2d9c7a1b4e38";

/// A scratch directory with a one-node pool list and `sipedge.toml` made
/// of the `[listen]`/`[dispatcher]` basics and `admin` (an `[admin]`
/// section).
fn setup(name: &str, node: &UdpSocket, admin: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sipedge-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_list(&dir.join("pool.list"), &[node], None);
    std::fs::write(
        dir.join("sipedge.toml"),
        format!(
            "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
             [dispatcher]\nlist_file = \"pool.list\"\n{admin}"
        ),
    )
    .unwrap();
    dir
}

/// One HTTP/1.1 exchange on a fresh connection; the whole answer.
fn http(base: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(host).expect("connect to admin");
    conn.set_read_timeout(Some(MUST_ARRIVE)).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
}

/// A JSON-RPC POST as an operator's curl sends it, with extra headers.
fn rpc_post(base: &str, body: &str, headers: &str) -> String {
    http(
        base,
        &format!(
            "POST /RPC HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n{headers}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// `[admin] token_file`: the RPC wants the token, from `sipedge ctl`
/// (`--token-file` or `$SIPEDGE_ADMIN_TOKEN_FILE`) or an operator's curl
/// (`-H "Authorization: Bearer $(cat FILE)"`); health and metrics stay
/// open, and refusals are counted.
#[test]
fn the_admin_token_guards_the_rpc_of_the_binary() {
    let node = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = setup(
        "token",
        &node,
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
    );
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (child, _lines, [admin]) = spawn_sipedge(&dir.join("sipedge.toml"), ["admin"]);

    let out = sipedge_ctl(&admin, &["list"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));

    let token_arg = token_file.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["ctl", "--admin", &admin, "--token-file", token_arg, "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("sip:{}", node.local_addr().unwrap())));
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["ctl", "--admin", &admin, "ping-active"])
        .env("SIPEDGE_ADMIN_TOKEN_FILE", token_arg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let body = r#"{"jsonrpc":"2.0","method":"dispatcher.list","id":1}"#;
    let answer = rpc_post(&admin, body, &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"NRSETS\":1"), "{answer}");
    let answer = rpc_post(&admin, body, "");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"sipedge\""),
        "{answer}"
    );
    let answer = rpc_post(&admin, body, "Authorization: Bearer not-the-token\r\n");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    assert!(http_get(&admin, "/health/live").starts_with("HTTP/1.1 200"));
    let metrics = http_get(&admin, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let missing = metric_value(
        &metrics,
        "sipedge_admin_events_total{event=\"token_missing\"}",
    );
    assert!(missing >= 2.0, "ctl without a token and the bare curl");
    let wrong = metric_value(
        &metrics,
        "sipedge_admin_events_total{event=\"token_wrong\"}",
    );
    assert_eq!(wrong, 1.0);

    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// `check-config` and the start refuse an admin listener beyond loopback
/// without a token, and a token file that is missing, empty or short,
/// with the file, the key and the reason; `allow_unauthenticated` or a
/// token lets it through.
#[test]
fn a_public_admin_bind_needs_a_token() {
    let node = UdpSocket::bind("127.0.0.1:0").unwrap();
    let check = |admin: &str| {
        let dir = setup("public", &node, admin);
        std::fs::write(dir.join("good.token"), TOKEN).unwrap();
        std::fs::write(dir.join("empty.token"), "\n").unwrap();
        std::fs::write(dir.join("short.token"), "abc\n").unwrap();
        let cfg = dir.join("sipedge.toml");
        let checked = Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .args(["check-config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (cfg, checked)
    };
    let refused = [
        (
            "[admin]\nlisten = \"0.0.0.0:9090\"\n",
            "admin.listen",
            "0.0.0.0:9090 is not a loopback address and no token_file is given",
        ),
        (
            "[admin]\nlisten = \"192.0.2.7:9090\"\nallow_unauthenticated = false\n",
            "admin.listen",
            "allow_unauthenticated = true",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"missing.token\"\n",
            "admin.token_file",
            "missing.token: No such file",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"empty.token\"\n",
            "admin.token_file",
            "empty.token: 0 bytes is too short",
        ),
        (
            "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken_file = \"short.token\"\n",
            "admin.token_file",
            "short.token: 3 bytes is too short",
        ),
    ];
    for (admin, key, reason) in refused {
        let (cfg, out) = check(admin);
        assert_eq!(out.status.code(), Some(2), "{admin}: {}", text(&out));
        let said = text(&out);
        assert!(said.contains(cfg.to_str().unwrap()), "file: {said}");
        assert!(said.contains(&format!(": {key}: ")), "key: {said}");
        assert!(said.contains(reason), "reason: {said}");
        // The start refuses it the same way, before binding anything.
        let started = Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .args(["--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(
            started.status.code(),
            Some(2),
            "{admin}: {}",
            text(&started)
        );
        assert!(text(&started).contains(reason), "{}", text(&started));
    }
    for admin in [
        "[admin]\nlisten = \"0.0.0.0:9090\"\nallow_unauthenticated = true\n",
        "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken_file = \"good.token\"\n",
        "[admin]\nlisten = \"[::]:9090\"\ntoken_file = \"good.token\"\nmetrics_require_token = true\n",
        "[admin]\nlisten = \"127.0.0.1:9090\"\n",
        "[admin]\nlisten = \"[::1]:9090\"\n",
    ] {
        let (_, out) = check(admin);
        assert!(out.status.success(), "{admin}: {}", text(&out));
    }
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("sipedge-public-{}", std::process::id())),
    );
}

/// A newline in an RPC argument cannot start a log line of its own: the
/// argument is logged escaped.
#[test]
fn rpc_arguments_cannot_forge_log_lines() {
    let node = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = setup("forge", &node, "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let (child, mut log, [admin]) = spawn_logging(&dir.join("sipedge.toml"), ["admin"]);
    let forged = "sip:192.0.2.9:5060\nFORGED 2026-01-01T00:00:00Z  INFO admin: all fine\r\u{1b}[2K";
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "dispatcher.set_state",
        "params": ["d", 1, forged],
        "id": 1,
    })
    .to_string();
    let answer = rpc_post(&admin, &body, "");
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    let line = log.wait_for("dispatcher.set_state refused");
    assert!(line.contains(r"sip:192.0.2.9:5060\nFORGED"), "{line}");
    assert!(line.contains(r"\r\u{1b}[2K"), "{line}");
    // Whatever the binary logs next comes after: nothing in between.
    signal(&child, "USR1");
    log.wait_for("state summary: destination");
    let forged_lines: Vec<&String> = log
        .seen
        .iter()
        .filter(|l| l.contains("FORGED") && !l.contains("set_state refused"))
        .collect();
    assert!(forged_lines.is_empty(), "{forged_lines:?}");
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGUSR1 writes the state to the log, SIGUSR2 and SIGALRM are logged and
/// ignored (their default action ended the process), and the admin
/// listener answers health checks while 100 idle clients hold
/// connections; SIGQUIT drains and exits 0 like SIGTERM.
#[test]
fn signals_and_idle_clients_leave_the_binary_serving() {
    let node = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = setup("signals", &node, "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let (mut child, mut log, [admin]) = spawn_logging(&dir.join("sipedge.toml"), ["admin"]);
    let uri = format!("sip:{}", node.local_addr().unwrap());

    signal(&child, "USR1");
    let summary = log.wait_for("state summary");
    for field in ["dialogs=", "client_transactions=", "tcp_connections="] {
        assert!(summary.contains(field), "{summary}");
    }
    let dest = log.wait_for("state summary: destination");
    assert!(dest.contains(&uri), "{dest}");
    for sig in ["USR2", "ALRM"] {
        signal(&child, sig);
        log.wait_for(&format!("SIG{sig} received"));
    }
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let out = sipedge_ctl(&admin, &["list"]);
    assert!(out.status.success(), "{}", text(&out));

    // 100 clients that connect and send nothing (the cap is 64).
    let host = admin.trim_start_matches("http://");
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(host).unwrap())
        .collect();
    let started = Instant::now();
    let live = http_get(&admin, "/health/live");
    assert!(live.starts_with("HTTP/1.1 200"), "{live:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);

    let started = Instant::now();
    signal(&child, "QUIT");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running after SIGQUIT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "exit status on SIGQUIT");
    log.wait_for("shutting down");
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP with a changed list and config: one log line per
/// destination added, removed and changed (saying what changed), and a
/// warning per changed setting outside `[dispatcher]` that needs a
/// restart.
#[test]
fn sighup_logs_each_destination_change_and_each_setting_it_cannot_apply() {
    let dir = std::env::temp_dir().join(format!("sipedge-reloadlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nodes: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addr = |i: usize| nodes[i].local_addr().unwrap();
    let list = dir.join("pool.list");
    std::fs::write(
        &list,
        format!("1 sip:{} 0 10\n1 sip:{} 0 5\n", addr(0), addr(1)),
    )
    .unwrap();
    let cfg = dir.join("sipedge.toml");
    let toml = |fr: &str| {
        format!(
            "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
             [dispatcher]\nalgorithm = \"priority\"\nlist_file = \"pool.list\"\n\
             [failover]\nfr_timeout = \"{fr}\"\n[probe]\nmode = 0\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n"
        )
    };
    std::fs::write(&cfg, toml("2s")).unwrap();
    let (child, mut log, [_admin]) = spawn_logging(&cfg, ["admin"]);

    // Node 0: flags 0 -> 8 and priority 10 -> 3; node 1 leaves; node 2
    // joins; fr_timeout changes.
    std::fs::write(
        &list,
        format!("1 sip:callee@{} 8 3\n1 sip:{} 0 5\n", addr(0), addr(2)),
    )
    .unwrap();
    std::fs::write(&cfg, toml("4s")).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    log.wait_for("dispatcher reloaded from");
    let all = log.seen.join("\n");
    let line = |what: &str| {
        log.seen
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in:\n{all}"))
            .clone()
    };
    let changed = line("reload: destination changed");
    assert!(
        changed.contains(&format!("uri sip:{0} -> sip:callee@{0}", addr(0)))
            && changed.contains("flags 0 -> 8 (state now AP)")
            && changed.contains("priority 10 -> 3"),
        "{changed}"
    );
    assert!(line("reload: destination added").contains(&format!("sip:{}", addr(2))));
    assert!(line("reload: destination removed").contains(&format!("sip:{}", addr(1))));
    assert!(line("failover.fr_timeout changed").contains("restart"));
    assert_eq!(all.matches("reload: destination").count(), 3, "{all}");
    assert!(!all.contains("listen.udp"), "unchanged: {all}");
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}
