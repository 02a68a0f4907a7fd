//! Debian's own `kamcmd` (package `kamailio`) against the built binary's
//! BINRPC control sockets (`[admin] ctl`): the runbook commands
//! print what they print against Kamailio, a drain over kamcmd moves new
//! calls, bad arguments and unknown methods get Kamailio's faults, garbage
//! on the socket is answered and the proxy keeps serving; the unix socket
//! replaces a stale one, refuses a live one, carries its mode and goes
//! away on exit. And the same commands against a real Kamailio (Debian's
//! `kamailio` with the `ctl` and `dispatcher` modules) with the same
//! dispatcher.list print the same.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sipedge::admin::binrpc::{self, Kind, Record};

/// The longest a wait for something that must happen lasts: generous, a
/// busy 2-core machine can stall the binary; a passing test never waits
/// this long.
const MUST_ARRIVE: Duration = Duration::from_secs(10);

const KAMCMD: &str = "/usr/sbin/kamcmd";

/// `kamcmd -s SOCKET ARGS...`, cut off after 20 s should it hang.
fn kamcmd(socket: &str, args: &[&str]) -> Output {
    assert!(
        Path::new(KAMCMD).exists(),
        "{KAMCMD} is missing: install Debian's kamailio package"
    );
    Command::new("timeout")
        .args(["20", KAMCMD, "-s", socket])
        .args(args)
        .output()
        .expect("run kamcmd")
}

/// kamcmd's standard output; its standard error must be empty and its
/// status 0 (it exits 0 after printing a fault too, as against Kamailio).
fn printed(socket: &str, args: &[&str]) -> String {
    let out = kamcmd(socket, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "kamcmd {args:?}: {:?}\n{stdout}{stderr}",
        out.status
    );
    stdout
}

/// A fake node: a UDP socket. Waits up to `within` for the INVITE of
/// `call_id` and answers it 486 (a final answer the proxy relays, not one
/// it fails over on), so the call ends and the proxy has nothing to drain
/// at exit. The INVITE's text, if one came.
fn answer_invite(node: &UdpSocket, call_id: &str, within: Duration) -> Option<String> {
    let end = Instant::now() + within;
    let mut buf = [0u8; 65_535];
    while Instant::now() < end {
        node.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .ok()?;
        let Ok((n, from)) = node.recv_from(&mut buf) else {
            return None;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.starts_with("INVITE ") && msg.contains(call_id) {
            let mut busy = String::from("SIP/2.0 486 Busy Here\r\n");
            for line in msg.lines() {
                let name = line
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                match name.as_str() {
                    "via" | "from" | "call-id" | "cseq" => busy.push_str(&format!("{line}\r\n")),
                    "to" => busy.push_str(&format!("{line};tag=busy\r\n")),
                    _ => {}
                }
            }
            busy.push_str("Content-Length: 0\r\n\r\n");
            node.send_to(busy.as_bytes(), from).unwrap();
            return Some(msg);
        }
    }
    None
}

fn send_invite(trunk: &UdpSocket, proxy: &str, call_id: &str) {
    let me = trunk.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:fax@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:trunk@{me}>;tag=a1\r\nTo: <sip:fax@{proxy}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{me}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    trunk.send_to(invite.as_bytes(), proxy).unwrap();
}

/// Starts the binary; returns it and every `listening on KIND:ADDR` line
/// it printed, up to and including the last ctl one (`ctls` of them).
fn spawn(cfg: &Path, ctls: usize) -> (Running, Vec<(String, String)>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut found = Vec::new();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some((kind, addr)) = line
            .strip_prefix("listening on ")
            .and_then(|l| l.split_once(':'))
        {
            found.push((kind.to_owned(), addr.to_owned()));
        }
        if found.iter().filter(|(k, _)| k == "ctl").count() == ctls {
            break;
        }
    }
    (Running(Some(child)), found)
}

/// The running binary: killed if the test fails before [`stop`].
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn listening<'a>(found: &'a [(String, String)], prefix: &str) -> &'a str {
    found
        .iter()
        .find(|(k, a)| k == "ctl" && a.starts_with(prefix) || k == prefix)
        .map(|(_, a)| a.as_str())
        .unwrap_or_else(|| panic!("no `listening on` line for {prefix}: {found:?}"))
}

/// SIGTERM; the binary must exit 0.
fn stop(mut running: Running) {
    let mut child = running.0.take().expect("running");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status on SIGTERM");
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sipedge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One destination of [`kamailio_list`]: URI, flags, priority, and the
/// `duid` when the list line has `duid=...` as its attributes.
type Dest<'a> = (&'a str, &'a str, i32, Option<&'a str>);

/// What kamcmd prints for `dispatcher.list` of one set, destinations in
/// the order given, without latency statistics (`ds_ping_latency_stats`
/// off; [`kamcmd_prints_the_same_as_against_kamailio`] covers them).
fn kamailio_list(dests: &[Dest<'_>]) -> String {
    let mut out =
        String::from("{\n\tNRSETS: 1\n\tRECORDS: {\n\t\tSET: {\n\t\t\tID: 1\n\t\t\tTARGETS: {\n");
    for (uri, flags, priority, attrs) in dests {
        out.push_str(&format!(
            "\t\t\t\tDEST: {{\n\t\t\t\t\tURI: {uri}\n\t\t\t\t\tFLAGS: {flags}\n\t\t\t\t\tPRIORITY: {priority}\n"
        ));
        if let Some(duid) = attrs {
            out.push_str(&format!(
                "\t\t\t\t\tATTRS: {{\n\t\t\t\t\t\tBODY: duid={duid}\n\t\t\t\t\t\tDUID: {duid}\n\
                 \t\t\t\t\t\tMAXLOAD: 0\n\t\t\t\t\t\tWEIGHT: 0\n\t\t\t\t\t\tRWEIGHT: 0\n\
                 \t\t\t\t\t\tSOCKET: <null string>\n\t\t\t\t\t\tSOCKNAME: <null string>\n\t\t\t\t\t\tOBPROXY: <null string>\n\t\t\t\t\t}}\n"
            ));
        }
        out.push_str("\t\t\t\t}\n");
    }
    out.push_str("\t\t\t}\n\t\t}\n\t}\n}\n");
    out
}

#[test]
fn kamcmd_runbook_over_unix_tcp_and_udp() {
    let dir = TempDir::new("kamcmd");
    let sock = dir.0.join("ctl.sock");
    // A stale socket from a process that died: replaced at start.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let nodes: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let uri = |i: usize| format!("sip:{}", nodes[i].local_addr().unwrap());
    let list = dir.0.join("pool.list");
    // No probing (flags 0, probing mode 0): states change only by command
    // (the nodes answer each call 486, on which nothing fails over).
    std::fs::write(
        &list,
        format!("1 {} 0 10\n1 {} 0 5 duid=b\n", uri(0), uri(1)),
    )
    .unwrap();
    let cfg = dir.0.join("sipedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
             [dispatcher]\nalgorithm = \"priority\"\nlist_file = \"pool.list\"\n\
             [probe]\nmode = 0\n\
             latency_stats = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             ctl = [\"unix:{}\", \"tcp:127.0.0.1:0\", \"udp:127.0.0.1:0\"]\n\
             ctl_mode = \"0660\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let (child, found) = spawn(&cfg, 3);
    let proxy = listening(&found, "udp").to_owned();
    let unix = listening(&found, "unix:").to_owned();
    let tcp = listening(&found, "tcp:").to_owned();
    let udp = listening(&found, "udp:").to_owned();
    assert_eq!(unix, format!("unix:{}", sock.display()));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "ctl_mode");

    // dispatcher.list: Kamailio's structure as kamcmd prints it, the same
    // over each socket.
    let want = kamailio_list(&[(&uri(0), "AX", 10, None), (&uri(1), "AX", 5, Some("b"))]);
    assert_eq!(printed(&unix, &["dispatcher.list"]), want);
    assert_eq!(printed(&tcp, &["dispatcher.list"]), want);
    assert_eq!(printed(&udp, &["dispatcher.list"]), want);

    // Node 0 has the higher priority: it takes the first call.
    let trunk = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_invite(&trunk, &proxy, "kamcmd-call-1");
    assert!(answer_invite(&nodes[0], "kamcmd-call-1", MUST_ARRIVE).is_some());

    // The runbook's drain: the next call goes to node 1.
    assert_eq!(
        printed(&unix, &["dispatcher.set_state", "ip", "1", &uri(0)]),
        "Ok. Dispatcher state updated.\n"
    );
    assert_eq!(
        printed(&tcp, &["dispatcher.list"]),
        kamailio_list(&[(&uri(0), "IP", 10, None), (&uri(1), "AX", 5, Some("b")),])
    );
    send_invite(&trunk, &proxy, "kamcmd-call-2");
    assert!(answer_invite(&nodes[1], "kamcmd-call-2", MUST_ARRIVE).is_some());
    assert_eq!(
        answer_invite(&nodes[0], "kamcmd-call-2", Duration::from_millis(300)),
        None
    );

    // Kamailio's faults, as kamcmd prints them.
    assert_eq!(
        printed(&unix, &["dispatcher.nope"]),
        "error: 500 - command dispatcher.nope not found\n"
    );
    assert_eq!(
        printed(&unix, &["dispatcher.set_state", "ip"]),
        "error: 500 - Invalid Parameters\n"
    );
    assert_eq!(
        printed(&tcp, &["dispatcher.set_state", "x", "1", "all"]),
        "error: 500 - Unknown State Value\n"
    );
    assert_eq!(
        printed(
            &tcp,
            &["dispatcher.set_state", "a", "1", "sip:192.0.2.1:5060"]
        ),
        "error: 500 - State Update Failed\n"
    );
    assert_eq!(
        printed(&tcp, &["system.methodHelp"]),
        "error: 400 - Method Name Expected\n"
    );

    // The core methods kamcmd users reach for.
    let uptime = printed(&unix, &["core.uptime"]);
    let lines: Vec<&str> = uptime.lines().collect();
    assert_eq!(lines.len(), 5, "{uptime}");
    assert_eq!((lines[0], lines[4]), ("{", "}"), "{uptime}");
    assert!(lines[1].starts_with("\tnow: "), "{uptime}");
    assert!(lines[2].starts_with("\tup_since: "), "{uptime}");
    let secs: u64 = lines[3]
        .strip_prefix("\tuptime: ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{uptime}"));
    assert!(secs < 600, "{uptime}");
    let version = printed(&tcp, &["core.version"]);
    assert!(version.starts_with("sipedge "), "{version}");
    assert_eq!(printed(&udp, &["core.echo", "a", "s:7"]), "a\n7\n");
    let methods = printed(&unix, &["system.listMethods"]);
    for m in [
        "dispatcher.list",
        "dispatcher.set_state",
        "dispatcher.reload",
        "dispatcher.ping_active",
        "core.uptime",
        "core.version",
        "core.echo",
        "system.listMethods",
        "system.methodHelp",
    ] {
        assert!(methods.lines().any(|l| l == m), "{m} missing: {methods}");
    }
    // kamcmd's own alias for it.
    assert_eq!(printed(&unix, &["ls"]), methods);

    // Interactive kamcmd: several commands over one connection.
    let mut session = Command::new("timeout")
        .args(["20", KAMCMD, "-s", &tcp])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    session
        .stdin
        .take()
        .unwrap()
        .write_all(b"core.version\ndispatcher.ping_active\nversion\n")
        .unwrap();
    let out = session.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(version.trim_end()).count(), 2, "{text}");
    assert!(text.contains("{\n\tOldPingState: 1\n}\n"), "{text}");

    // dispatcher.reload: node 2 joins, node 0 leaves.
    std::fs::write(
        &list,
        format!("1 {} 0 5 duid=b\n1 {} 0 1\n", uri(1), uri(2)),
    )
    .unwrap();
    assert_eq!(
        printed(&tcp, &["dispatcher.reload"]),
        "Ok. Dispatcher successfully reloaded.\n"
    );
    assert_eq!(
        printed(&unix, &["dispatcher.list"]),
        kamailio_list(&[(&uri(1), "AX", 5, Some("b")), (&uri(2), "AX", 1, None),])
    );

    // A second sipedge on the same socket is refused: this one answers.
    let out = Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_sipedge"), "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process answers on it"), "{err}");
    assert_eq!(printed(&unix, &["core.version"]), version, "still served");

    stop(child);
    assert!(!sock.exists(), "the unix socket is removed on exit");
}

/// Writes `bytes` to a fresh connection; the BINRPC answer, if any.
fn exchange(stream: &mut (impl Read + Write), bytes: &[u8]) -> Option<(Kind, Vec<Record>)> {
    stream.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(h)) = binrpc::parse_header(&buf) {
            if buf.len() >= h.packet_len() {
                let body = binrpc::decode_body(&buf[h.header_len..h.packet_len()]).unwrap();
                return Some((h.kind, body));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One HTTP/1.1 GET; the whole answer.
fn http_get(host: &str, path: &str) -> String {
    let mut conn = std::net::TcpStream::connect(host).expect("connect to admin");
    conn.set_read_timeout(Some(MUST_ARRIVE)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
}

#[test]
fn garbage_on_the_ctl_socket_is_answered_and_serving_goes_on() {
    let dir = TempDir::new("kamcmd-garbage");
    let sock = dir.0.join("ctl.sock");
    let node = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = dir.0.join("sipedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
             [[dispatcher.destination]]\nuri = \"sip:{}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nctl = \"unix:{}\"\n",
            node.local_addr().unwrap(),
            sock.display()
        ),
    )
    .unwrap();
    let (child, found) = spawn(&cfg, 1);
    let unix = listening(&found, "unix:").to_owned();
    let connect = || {
        let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(MUST_ARRIVE)).unwrap();
        s
    };

    // Not BINRPC at all: a 400 fault, then the connection closes.
    let mut s = connect();
    let (kind, body) = exchange(&mut s, b"GET / HTTP/1.1\r\n\r\n").expect("a fault");
    assert_eq!(kind, Kind::Fault);
    assert_eq!(body[0], Record::Int(400));
    assert!(
        matches!(&body[1], Record::Str(t) if t.starts_with("bad request")),
        "{body:?}"
    );
    assert_eq!(exchange(&mut s, b""), None, "closed");

    // A well-framed packet with a bad record: a 400 fault with the cookie,
    // and the connection serves the next request.
    let mut s = connect();
    let (kind, body) = exchange(&mut s, &[0xA1, 0x00, 0x02, 0x77, 0x07, 0x00]).unwrap();
    assert_eq!((kind, &body[0]), (Kind::Fault, &Record::Int(400)));
    let (kind, body) = exchange(
        &mut s,
        &binrpc::encode_request(9, "core.echo", &[Record::Str("x".into())]),
    )
    .unwrap();
    assert_eq!((kind, body), (Kind::Reply, vec![Record::Str("x".into())]));

    // Too big a body announced: refused before it is read.
    let mut s = connect();
    let (kind, body) = exchange(&mut s, &[0xA1, 0x0c, 0x00, 0x10, 0x00, 0x00, 0x01]).unwrap();
    assert_eq!((kind, &body[0]), (Kind::Fault, &Record::Int(400)));

    // Truncated: half a request, then the client goes away.
    let mut s = connect();
    let request = binrpc::encode_request(5, "dispatcher.list", &[]);
    s.write_all(&request[..request.len() / 2]).unwrap();
    drop(s);

    // Every byte value after a valid header, on one connection each.
    for b in 0..=255u8 {
        let mut s = connect();
        let _ = exchange(&mut s, &[0xA1, 0x00, 0x03, 0x01, b, b, b]);
    }

    assert_eq!(
        printed(&unix, &["core.echo", "still", "serving"]),
        "still\nserving\n"
    );
    // Counted, for an operator to see.
    let admin = listening(&found, "admin");
    let metrics = http_get(admin.trim_start_matches("http://"), "/metrics");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sipedge_admin_events_total{event=\"ctl_bad_request\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{line}");
    stop(child);
    assert!(!sock.exists());
}

/// A real Kamailio (Debian's package) with the `ctl` and `dispatcher`
/// modules and the given dispatcher.list, in the foreground. Stopped with
/// SIGTERM on drop (its children follow).
struct Kamailio {
    child: Child,
    socket: String,
}

impl Kamailio {
    fn start(dir: &Path, list: &Path) -> Kamailio {
        let sock = dir.join("kamailio_ctl");
        // A free port for the SIP listener Kamailio insists on.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(
            &cfg,
            format!(
                "#!KAMAILIO\ndebug=1\nlog_stderror=yes\nchildren=1\ndisable_tcp=yes\n\
                 listen=udp:127.0.0.1:{port}\n\
                 mpath=\"/usr/lib/x86_64-linux-gnu/kamailio/modules/\"\n\
                 loadmodule \"tm.so\"\nloadmodule \"sl.so\"\nloadmodule \"ctl.so\"\n\
                 loadmodule \"dispatcher.so\"\n\
                 modparam(\"ctl\", \"binrpc\", \"unix:{}\")\n\
                 modparam(\"dispatcher\", \"list_file\", \"{}\")\n\
                 modparam(\"dispatcher\", \"reload_delta\", 0)\n\
                 modparam(\"dispatcher\", \"ds_ping_latency_stats\", 1)\n\
                 request_route {{ drop; }}\n",
                sock.display(),
                list.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/kamailio")
            .args(["-f", cfg.to_str().unwrap(), "-DD", "-E", "-w"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run /usr/sbin/kamailio (Debian's kamailio package)");
        let kamailio = Kamailio {
            child,
            socket: format!("unix:{}", sock.display()),
        };
        // Ready when its ctl socket answers (polling: Kamailio says
        // nothing a test could wait on).
        let end = Instant::now() + MUST_ARRIVE;
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < end,
                "kamailio did not open {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        kamailio
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The same kamcmd commands against Kamailio and against sipedge, with
/// the same dispatcher.list, print the same, byte for byte (`core.uptime`
/// the same shape). `core.version` differs by design (the name), as do
/// `dispatcher.list full` (Kamailio's DNS fields) and the order of sets.
/// Both keep latency statistics (`ds_ping_latency_stats`); nothing is
/// probed, so the `LATENCY` blocks match to the digit.
#[test]
fn kamcmd_prints_the_same_as_against_kamailio() {
    let dir = TempDir::new("kamcmd-vs-kamailio");
    let nodes: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let uri = |i: usize| format!("sip:{}", nodes[i].local_addr().unwrap());
    // Flags 0 and Kamailio's default probing mode: nobody probes, states
    // change only by command, on both sides.
    let list = dir.0.join("pool.list");
    std::fs::write(
        &list,
        format!("1 {} 0 10\n1 {} 0 5 duid=b\n", uri(0), uri(1)),
    )
    .unwrap();
    let kamailio = Kamailio::start(&dir.0, &list);
    // kamcmd only: no HTTP listener.
    let sock = dir.0.join("sipedge.sock");
    let cfg = dir.0.join("sipedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
             [dispatcher]\nalgorithm = \"priority\"\nlist_file = \"pool.list\"\n\
             [probe]\nmode = 0\n\
             [admin]\nctl = \"unix:{}\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let (child, found) = spawn(&cfg, 1);
    let sipedge = listening(&found, "unix:").to_owned();

    let drain = uri(0);
    let commands: &[&[&str]] = &[
        &["dispatcher.list"],
        &["dispatcher.list", "short"],
        &["dispatcher.ping_active"],
        &["dispatcher.ping_active", "0"],
        &["dispatcher.ping_active", "1"],
        &["dispatcher.set_state", "ip", "1", &drain],
        &["dispatcher.list"],
        &["dispatcher.set_state", "a", "1", "all"],
        &["dispatcher.list"],
        &["dispatcher.set_state", "ip"],
        &["dispatcher.set_state", "x", "1", "all"],
        // kamcmd sends an empty argument as the integer 0: inactive.
        &["dispatcher.set_state", "", "1", "all"],
        &["dispatcher.list"],
        &["dispatcher.set_state", "a", "1", "sip:192.0.2.1:5060"],
        &["-f", "%v|", "dispatcher.list", "short"],
        // Back to the file's states first: Kamailio's reload resets them,
        // sipedge keeps those of the nodes that stay.
        &["dispatcher.set_state", "a", "1", "all"],
        &["dispatcher.reload"],
        &["dispatcher.nope"],
        &["system.methodHelp"],
        &["system.methodHelp", "nope.nope"],
        &["system.methodHelp", "core.echo"],
        &["system.methodHelp", "core.uptime"],
        &["core.echo", "a", "s:7", "two words"],
        // kamcmd's own formatting of the records.
        &["-f", "[%v] [%v]\n", "core.echo", "a", "b", "c"],
        &["dispatcher.list"],
    ];
    for args in commands {
        assert_eq!(
            printed(&sipedge, args),
            printed(&kamailio.socket, args),
            "kamcmd {args:?}"
        );
    }
    let shape = |text: String| -> Vec<String> {
        text.lines()
            .map(|l| l.split(": ").next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        shape(printed(&sipedge, &["core.uptime"])),
        shape(printed(&kamailio.socket, &["core.uptime"]))
    );
    drop(kamailio);
    stop(child);
}

/// `dispatcher.add`, `dispatcher.remove`, `dispatcher.set_duid_state` and
/// `dispatcher.hash` print the same against Kamailio and sipedge, faults
/// included, and a reload restores the file on both. Kamailio runs with
/// `reload_delta` 0: by default it refuses a second add or remove within
/// 5 s (`Ongoing reload`), which sipedge does not.
#[test]
fn kamcmd_add_remove_and_hash_print_the_same_as_against_kamailio() {
    let dir = TempDir::new("kamcmd-add-vs-kamailio");
    let nodes: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let uri = |i: usize| format!("sip:{}", nodes[i].local_addr().unwrap());
    // Shown, matched and probed as written (user part and parameters).
    let written = |i: usize| {
        format!(
            "sip:callee@{};transport=udp",
            nodes[i].local_addr().unwrap()
        )
    };
    let list = dir.0.join("pool.list");
    std::fs::write(
        &list,
        format!("1 {} 0 10\n1 {} 0 5 duid=b\n", uri(0), written(1)),
    )
    .unwrap();
    let kamailio = Kamailio::start(&dir.0, &list);
    let sock = dir.0.join("sipedge.sock");
    let cfg = dir.0.join("sipedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
             [dispatcher]\nalgorithm = \"priority\"\nlist_file = \"pool.list\"\n\
             [probe]\nmode = 0\n\
             [admin]\nctl = \"unix:{}\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let (child, found) = spawn(&cfg, 1);
    let sipedge = listening(&found, "unix:").to_owned();

    let (one, two, three) = (written(1), uri(2), written(3));
    let commands: &[&[&str]] = &[
        &["dispatcher.hash", "10", "abc"],
        &["dispatcher.hash", "0", "abc", "def"],
        &["dispatcher.hash", "7", "h\u{e9}llo w\u{f6}rld", "x"],
        &["dispatcher.hash", "3", "s:42"],
        &["dispatcher.hash"],
        &["dispatcher.hash", "3"],
        &["dispatcher.add", "1", &two],
        &["dispatcher.add", "1", &three, "0", "7", "duid=c;weight=5"],
        &["dispatcher.list"],
        &["dispatcher.set_state", "tp", "1", &one],
        &["dispatcher.set_state", "ip", "1", &one.to_uppercase()],
        &["dispatcher.list", "short"],
        &["dispatcher.set_duid_state", "ip", "1", "c"],
        &["dispatcher.set_duid_state", "d", "1", "B"],
        &["dispatcher.set_duid_state", "i", "1", "nope"],
        &["dispatcher.set_duid_state", "i", "9", "b"],
        &["dispatcher.set_duid_state", "1", "b"],
        &["dispatcher.list"],
        &["dispatcher.remove", "1", &two],
        &["dispatcher.remove", "1", &three],
        &["dispatcher.list", "short"],
        &["dispatcher.add"],
        &["dispatcher.add", "1"],
        &["dispatcher.add", "x", "y"],
        &["dispatcher.remove", "1"],
        // Kamailio's reload resets states; sipedge keeps those of the
        // nodes that stay: back to the file's first.
        &["dispatcher.set_state", "a", "1", "all"],
        &["dispatcher.reload"],
        &["dispatcher.list"],
    ];
    for args in commands {
        assert_eq!(
            printed(&sipedge, args),
            printed(&kamailio.socket, args),
            "kamcmd {args:?}"
        );
    }
    // Where sipedge refuses what Kamailio silently accepts.
    let refusals: &[(&[&str], &str)] = &[
        (
            &["dispatcher.remove", "1", &two],
            "Removing dispatcher dst failed",
        ),
        (
            &["dispatcher.add", "1", &uri(0)],
            "Adding dispatcher dst failed",
        ),
        (
            &["dispatcher.add", "1", "sip:fs.invalid"],
            "Adding dispatcher dst failed",
        ),
    ];
    for (args, fault) in refusals {
        assert_eq!(
            printed(&sipedge, args),
            format!("error: 500 - {fault}\n"),
            "kamcmd {args:?}"
        );
    }
    drop(kamailio);
    stop(child);
}
