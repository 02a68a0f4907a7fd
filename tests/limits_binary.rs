//! The built binary under its limits: the open-file limit raised at start
//! (or reported), and TCP refusals logged at most once per source per
//! interval. Only loopback, only port 0.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes `text` as a config in a fresh directory and returns its path.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sipedge-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Reads the child's stdout up to its TCP listening line (printed after
/// the UDP ones) and returns that address.
fn wait_listening(child: &mut Child) -> SocketAddr {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("listening on tcp:")
                .map(|a| a.parse().unwrap())
        })
        .expect("a TCP listening line");
    // Drained to the end: a closed pipe would fail a later print.
    std::thread::spawn(move || lines.for_each(drop));
    addr
}

/// SIGTERM, then everything it wrote on stderr; it must exit 0.
fn stop(mut child: Child) -> String {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{stderr}");
    stderr
}

/// The binary started under a soft open-file limit of 256 with `[tcp]
/// max_connections = 1000` raises its soft limit to what that needs; with
/// a hard limit of 300 it cannot, and says so on stderr.
#[test]
fn the_open_file_limit_is_raised_or_reported() {
    let cfg = config_file(
        "nofile",
        "[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         [[dispatcher.destination]]\nuri = \"sip:127.0.0.1:9\"\n[tcp]\nmax_connections = 1000\n",
    );
    // Started under `ulimit`, read back from /proc while it runs.
    let run = |ulimit: &str| {
        let mut child = Command::new("sh")
            .args([
                "-c",
                &format!("ulimit {ulimit} && exec \"$0\" --config \"$1\""),
                env!("CARGO_BIN_EXE_sipedge"),
                cfg.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_listening(&mut child);
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let soft: u64 = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{limits}"));
        (soft, stop(child))
    };
    let (soft, stderr) = run("-Sn 256");
    // 1000 connections, 2 sockets, 1 node and the margin.
    assert!(soft >= 1003 + 128, "soft limit {soft}\n{stderr}");
    assert!(stderr.contains("raised from 256"), "{stderr}");
    let (soft, stderr) = run("-n 300");
    assert_eq!(soft, 300);
    assert!(
        stderr.contains("open-file limit (RLIMIT_NOFILE) is 300 (hard limit 300"),
        "{stderr}"
    );
    assert!(stderr.contains("lower [tcp] max_connections"), "{stderr}");
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}

/// 300 connections from one source to a binary with `max_connections =
/// 8`: 7 are admitted (one slot is reserved for trusted sources), the rest
/// refused and closed, and the log has one line about it, not 293.
#[test]
fn tcp_refusals_are_logged_once_per_source() {
    let cfg = config_file(
        "refusals",
        "[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         [[dispatcher.destination]]\nuri = \"sip:127.0.0.1:9\"\n[tcp]\nmax_connections = 8\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let to = wait_listening(&mut child);
    let from: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..300 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&from.into()).unwrap();
        s.connect_timeout(&to.into(), Duration::from_secs(5))
            .expect("connect");
        let s: std::net::TcpStream = s.into();
        s.set_nonblocking(true).unwrap();
        held.push((s, false));
    }
    // Every refused connection is closed by the proxy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = 0;
    while closed < 293 {
        assert!(Instant::now() < deadline, "{closed} of 293 refusals seen");
        for (s, seen) in held.iter_mut().filter(|(_, seen)| !*seen) {
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => {
                    *seen = true;
                    closed += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(closed, 293, "7 admitted, the rest refused");
    let stderr = stop(child);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("refused")).collect();
    // One line per source per 10 s; a slow run may cross one boundary.
    assert!(
        (1..=2).contains(&lines.len()),
        "{} refusal lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(lines[0].contains("from 127.0.0.2"), "{}", lines[0]);
    assert!(lines[0].contains("reserved_trusted"), "{}", lines[0]);
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}
