//! The binary's log: plain text off a terminal (journald stores
//! lines with ANSI escapes as binary), colour on one unless `NO_COLOR`,
//! `--log-format json` lines that parse, `--log-level` over `RUST_LOG`,
//! and a call's story — the node chosen, each failover with its reason,
//! the final answer — once each at info, with the Call-ID.

#[path = "support/process.rs"]
mod process;
mod support;

use process::signal;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// The longest a wait for something that must happen lasts (a busy 2-core
/// machine can stall the binary; a passing test never waits this long).
const MUST_ARRIVE: Duration = Duration::from_secs(10);

const ESC: &str = "\x1b[";

/// A config on 127.0.0.1 port 0 with `nodes` in a dispatcher.list.
fn write_config(dir: &Path, nodes: &[SocketAddr]) -> PathBuf {
    let list: String = nodes.iter().map(|n| format!("1 sip:{n}\n")).collect();
    std::fs::write(dir.join("pool.list"), list).unwrap();
    let cfg = dir.join("sipedge.toml");
    std::fs::write(
        &cfg,
        "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         [dispatcher]\nalgorithm = \"priority\"\nlist_file = \"pool.list\"\n",
    )
    .unwrap();
    cfg
}

/// The binary on `cfg` with `args`, stderr to `stderr`; NO_COLOR and
/// RUST_LOG unset unless `env` sets them. Returns once it listens on UDP.
fn spawn(cfg: &Path, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipedge"));
    cmd.args(["--config", cfg.to_str().unwrap()])
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let udp = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on udp:").map(str::to_owned))
        .expect("a `listening on udp:` line");
    // Keep draining stdout: a full pipe must not block the binary.
    std::thread::spawn(move || lines.for_each(drop));
    (child, udp.parse().unwrap())
}

/// Every stderr line of `child`, as it comes.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Lines from `rx` until one contains every one of `what`; all of them.
fn read_until(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, what: &[&str]) -> String {
    let end = Instant::now() + MUST_ARRIVE;
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                seen.push(line.clone());
                if what.iter().all(|w| line.contains(w)) {
                    return line;
                }
            }
            Err(_) => panic!("no log line with {what:?} in:\n{}", seen.join("\n")),
        }
    }
}

fn terminate(mut child: Child) {
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status on SIGTERM");
}

/// A call from `trunk` through the proxy at `udp`: the node that gets the
/// INVITE first answers 503, the other 200. Returns the Call-ID and the
/// nodes' URIs in the order they were tried.
async fn failover_call(trunk: &Peer, udp: SocketAddr, nodes: [&Peer; 2]) -> (String, [String; 2]) {
    let mut call = Dialog::uac(trunk, &format!("sip:fax@{udp}"));
    trunk.send(call.invite(SDP_AUDIO), udp).await;
    let (first, invite) = tokio::select! {
        r = nodes[0].recv_until_request("INVITE", MUST_ARRIVE) => (0, r),
        r = nodes[1].recv_until_request("INVITE", MUST_ARRIVE) => (1, r),
    };
    assert_eq!(invite.call_id(), call.call_id);
    nodes[first]
        .send(
            reply(&invite, 503, "Service Unavailable", Some("n1")),
            invite.from,
        )
        .await;
    let second = 1 - first;
    let invite = nodes[second]
        .recv_until_request("INVITE", MUST_ARRIVE)
        .await;
    assert_eq!(invite.call_id(), call.call_id, "failed over");
    nodes[second]
        .send(reply(&invite, 200, "OK", Some("n2")), invite.from)
        .await;
    trunk.recv_until(|r| r.status() == Some(200)).await;
    let uri = |i: usize| format!("sip:{}", nodes[i].addr);
    (call.call_id.clone(), [uri(first), uri(second)])
}

async fn peers() -> (Peer, Peer, Peer) {
    (
        Peer::bind("trunk").await,
        Peer::bind("node0").await.answering_probes(),
        Peer::bind("node1").await.answering_probes(),
    )
}

/// Off a terminal (here a file, as under systemd), no line carries an
/// ANSI escape, fields included; on a terminal (a pty from `script`) the
/// level is coloured, unless NO_COLOR is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_are_plain_off_a_terminal_and_coloured_on_one_without_no_color() {
    let dir = Scratch::new("text");
    let (trunk, n0, n1) = peers().await;
    let cfg = write_config(&dir, &[n0.addr, n1.addr]);
    let file = dir.join("stderr.log");
    let out = std::fs::File::create(&file).unwrap();
    let (child, udp) = spawn(&cfg, &[], &[], out.into());
    let (call_id, _) = failover_call(&trunk, udp, [&n0, &n1]).await;
    terminate(child);
    let log = std::fs::read_to_string(&file).unwrap();
    assert!(!log.contains(ESC), "escapes in a file:\n{log}");
    let routed = log
        .lines()
        .find(|l| l.contains("INVITE routed to node"))
        .unwrap_or_else(|| panic!("no routed line:\n{log}"));
    assert!(routed.contains(" INFO "), "{routed}");
    assert!(routed.contains(&format!("call_id={call_id}")), "{routed}");

    // On a terminal: coloured, and NO_COLOR (any non-empty value) stops it.
    assert!(
        on_a_terminal(&cfg, None).contains(ESC),
        "no colour on a tty"
    );
    let plain = on_a_terminal(&cfg, Some("1"));
    assert!(!plain.contains(ESC), "NO_COLOR=1 on a tty:\n{plain:?}");
    assert!(plain.contains("shutting down"), "{plain}");
}

/// The binary on `cfg` with a pty as stdout and stderr (`script`), stopped
/// by SIGTERM once it listens; everything it wrote.
fn on_a_terminal(cfg: &Path, no_color: Option<&str>) -> String {
    let bin = env!("CARGO_BIN_EXE_sipedge");
    let inner = format!("echo PID $$; exec {bin} --config {}", cfg.display());
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &inner, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut script = cmd.spawn().expect("script (util-linux) runs");
    let mut out = BufReader::new(script.stdout.take().unwrap());
    let mut seen = String::new();
    let mut pid = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if let Some(p) = line.trim().strip_prefix("PID ") {
            pid = Some(p.to_owned());
        }
        if line.contains("listening on udp:") {
            break;
        }
        line.clear();
    }
    let pid = pid.unwrap_or_else(|| panic!("no PID line from script:\n{seen}"));
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
    out.read_to_string(&mut seen).unwrap();
    let status = script.wait().unwrap();
    assert!(status.success(), "sipedge under script: {status}\n{seen}");
    seen
}

/// `--log-format json`: every line is one JSON object with its time,
/// level and message; the call's story is there once each with its
/// Call-ID: the node chosen, the failover with its reason and code, the
/// next node, the final answer and the node it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_tell_a_failover_calls_story_once() {
    let dir = Scratch::new("json");
    let (trunk, n0, n1) = peers().await;
    let cfg = write_config(&dir, &[n0.addr, n1.addr]);
    let (mut child, udp) = spawn(&cfg, &["--log-format", "json"], &[], Stdio::piped());
    let rx = stderr_lines(&mut child);
    let (call_id, [first, second]) = failover_call(&trunk, udp, [&n0, &n1]).await;
    let mut seen = Vec::new();
    read_until(&rx, &mut seen, &["INVITE answered by node", &call_id]);
    terminate(child);
    // The rest, up to the exit.
    seen.extend(rx.iter());
    let lines: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        for key in ["timestamp", "level", "message"] {
            assert!(l.get(key).is_some_and(|v| v.is_string()), "{key}: {l}");
        }
    }
    let story: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["call_id"] == call_id.as_str())
        .collect();
    let messages: Vec<&str> = story.iter().filter_map(|l| l["message"].as_str()).collect();
    assert_eq!(
        messages,
        [
            "INVITE routed to node",
            "INVITE failed over",
            "INVITE routed to node",
            "INVITE answered by node"
        ],
        "{story:#?}"
    );
    assert!(story.iter().all(|l| l["level"] == "INFO"), "{story:#?}");
    assert_eq!(story[0]["node"], first.as_str());
    assert_eq!(story[0]["set"], 1);
    assert_eq!(story[0]["peer"], format!("udp:{}", trunk.addr).as_str());
    assert_eq!(story[1]["node"], first.as_str());
    assert_eq!(story[1]["reason"], "code");
    assert_eq!(story[1]["code"], 503);
    assert_eq!(story[2]["node"], second.as_str());
    assert_eq!(story[3]["node"], second.as_str());
    assert_eq!(story[3]["code"], 200);
}

/// A node that never answers: the failover says `timeout`, and the last
/// answer is the proxy's own, with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_failover_and_a_local_answer_are_logged_with_their_reasons() {
    let dir = Scratch::new("timeout");
    let trunk = Peer::bind("trunk").await;
    // Bound (no ICMP error) and silent.
    let silent = Peer::bind("silent").await;
    let cfg = write_config(&dir, &[silent.addr]);
    let toml = std::fs::read_to_string(&cfg).unwrap() + "[failover]\nfr_timeout = \"300ms\"\n";
    std::fs::write(&cfg, toml).unwrap();
    let (mut child, udp) = spawn(&cfg, &["--log-format", "json"], &[], Stdio::piped());
    let rx = stderr_lines(&mut child);
    let mut call = Dialog::uac(&trunk, &format!("sip:fax@{udp}"));
    trunk.send(call.invite(SDP_AUDIO), udp).await;
    trunk.recv_until(|r| r.status() == Some(503)).await;
    let mut seen = Vec::new();
    let local = read_until(&rx, &mut seen, &["INVITE answered locally", &call.call_id]);
    terminate(child);
    let failed = seen
        .iter()
        .find(|l| l.contains("INVITE failed over") && l.contains(&call.call_id))
        .unwrap_or_else(|| panic!("no failover line:\n{}", seen.join("\n")));
    let failed: serde_json::Value = serde_json::from_str(failed).unwrap();
    assert_eq!(failed["reason"], "timeout");
    assert!(failed.get("code").is_none(), "{failed}");
    let local: serde_json::Value = serde_json::from_str(&local).unwrap();
    assert_eq!(local["code"], 503);
    assert_eq!(local["reason"], "all_down");
}

/// `--log-level warn` hides info (over RUST_LOG=debug) and keeps warnings;
/// a level that is no level is refused; the options work with a
/// subcommand too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_warn_hides_info_and_a_bad_level_is_refused() {
    let dir = Scratch::new("level");
    let (trunk, n0, n1) = peers().await;
    let cfg = write_config(&dir, &[n0.addr, n1.addr]);
    let (mut child, udp) = spawn(
        &cfg,
        &["--log-level", "warn"],
        &[("RUST_LOG", "debug")],
        Stdio::piped(),
    );
    let rx = stderr_lines(&mut child);
    failover_call(&trunk, udp, [&n0, &n1]).await;
    // A reload refused is a warning: it shows the log is live.
    std::fs::write(dir.join("pool.list"), "one sip:127.0.0.1:1\n").unwrap();
    signal(&child, "HUP");
    let mut seen = Vec::new();
    read_until(&rx, &mut seen, &["WARN", "reload refused"]);
    terminate(child);
    seen.extend(rx.iter());
    let log = seen.join("\n");
    assert!(!log.contains("INFO") && !log.contains("DEBUG"), "{log}");
    assert!(!log.contains("INVITE routed"), "{log}");

    let bad = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args([
            "--log-level",
            "verbose",
            "check-config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--log-level \"verbose\""), "{err}");

    std::fs::write(dir.join("pool.list"), format!("1 sip:{}\n", n0.addr)).unwrap();
    let ok = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args([
            "check-config",
            cfg.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .args(["--log-level", "info,sipedge=debug"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
}
