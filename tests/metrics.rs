//! `/metrics` of a running proxy, scraped over HTTP from its admin
//! listener on 127.0.0.1: the `process_*` family with the process's real
//! values, the per-node call counters moved by calls to two fake nodes
//! (one fails over with 503, one answers), the reject reason of a local
//! 481 to a BYE, the Kamailio dispatcher names when asked for, and Debian's
//! `promtool check metrics` taking the whole exposition.

#[path = "support/process.rs"]
mod process;
mod support;

use process::promtool_accepts;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sipedge::metrics::{
    CallOutcome, RejectReason, DESTINATION_CALLS_TOTAL, DESTINATION_CALL_OUTCOMES_TOTAL,
    DIALOGS_MAX, INVITES_REJECTED_TOTAL, KAMAILIO_DISPATCHER_LIST_TARGET,
    PROCESS_CPU_SECONDS_TOTAL, PROCESS_MAX_FDS, PROCESS_OPEN_FDS, PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_START_TIME_SECONDS, PROCESS_THREADS, PROCESS_VIRTUAL_MEMORY_BYTES,
    REQUESTS_REJECTED_TOTAL,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One sample of the exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a text exposition (label values here hold no `,` or
/// `"`: URIs, reasons, flags).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').expect("label=value");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The value of the one sample of `name` with (at least) these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

/// GET `path` from the admin listener at `addr`; the status line and body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, conn.read_to_string(&mut answer))
        .await
        .expect("the admin listener answers")
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole HTTP answer");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The admin listener in front of `h`'s proxy, on 127.0.0.1 port 0.
async fn admin(h: &Harness, cancel: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend: Arc<dyn sipedge::admin::Backend> = h.proxy.clone();
    tokio::spawn(sipedge::admin::serve(listener, backend, cancel.clone()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_the_process_the_calls_per_node_and_every_reject_reason() {
    let h = Harness::start(Options {
        extra_toml: "[dialogs]\nmax = 5000\n\n[metrics]\nkamailio_names = true\n",
        ..Options::default()
    })
    .await;
    let cancel = CancellationToken::new();
    let admin = admin(&h, &cancel).await;
    let node_uri = |i: usize| format!("sip:{}", h.nodes[i].addr);

    // A call: node 0 answers 503 and is failed over from, node 1 answers.
    let mut call = h.trunk_call();
    h.trunk.send(call.invite(SDP_AUDIO), h.addr).await;
    let inv0 = h.nodes[0].recv_request("INVITE").await;
    h.nodes[0]
        .send(
            reply(&inv0, 503, "Service Unavailable", Some(&unique("fs0-"))),
            inv0.from,
        )
        .await;
    h.nodes[0].recv_request("ACK").await;
    let inv1 = h.nodes[1].recv_request("INVITE").await;
    let fs1 = Dialog::uas(&h.nodes[1], &inv1, &unique("fs1-"));
    h.nodes[1]
        .send(fs1.answer(&inv1, 200, "OK", Some(SDP_NODE)), inv1.from)
        .await;
    let got = h.trunk.recv_until(|r| r.status() == Some(200)).await;
    call.learn_2xx(got.last().unwrap());
    let (ack, _) = call.request("ACK", None);
    h.trunk.send(ack, h.addr).await;
    h.nodes[1].recv_request("ACK").await;

    // A BYE for a dialog nobody knows: a local 481, not an INVITE.
    let mut stray = Dialog::uac(&h.trunk, "sip:someone@192.0.2.50:5060");
    stray.remote_tag = Some("unknown-dialog".to_owned());
    let (bye, _) = stray.request("BYE", None);
    h.trunk.send(bye, h.addr).await;
    h.trunk.recv_response(481).await;

    let started = std::time::SystemTime::now();
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    let s = parse(&text);

    // Per node: each try once, and how it ended.
    for (i, calls, outcome) in [
        (0, 1.0, CallOutcome::FailedOver),
        (1, 1.0, CallOutcome::Answered),
    ] {
        let uri = node_uri(i);
        let node = [("set", "1"), ("uri", uri.as_str())];
        assert_eq!(value(&s, DESTINATION_CALLS_TOTAL, &node), calls, "node {i}");
        for o in CallOutcome::ALL {
            let want = if *o == outcome { 1.0 } else { 0.0 };
            let labels = [("set", "1"), ("uri", uri.as_str()), ("outcome", o.as_str())];
            assert_eq!(
                value(&s, DESTINATION_CALL_OUTCOMES_TOTAL, &labels),
                want,
                "node {i} {o:?}"
            );
        }
    }

    // The 481 to the BYE is counted under its reason, not as an INVITE.
    let reason = [("reason", RejectReason::UnknownDialog.as_str())];
    assert_eq!(value(&s, REQUESTS_REJECTED_TOTAL, &reason), 1.0);
    assert_eq!(value(&s, INVITES_REJECTED_TOTAL, &reason), 0.0);
    assert_eq!(value(&s, DIALOGS_MAX, &[]), 5000.0);

    // The process: this test process, which runs the proxy.
    let now = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let rss = value(&s, PROCESS_RESIDENT_MEMORY_BYTES, &[]);
    assert!(rss > 1_000_000.0, "{rss}");
    assert!(value(&s, PROCESS_VIRTUAL_MEMORY_BYTES, &[]) >= rss);
    // stdio, the sockets of the proxy, trunk, nodes and admin listener.
    let open = value(&s, PROCESS_OPEN_FDS, &[]);
    assert!(open >= 8.0, "{open}");
    assert!(value(&s, PROCESS_MAX_FDS, &[]) >= open);
    assert!(value(&s, PROCESS_THREADS, &[]) >= 2.0);
    // Clock ticks of 10 ms: a test this short may not have used one.
    let cpu = value(&s, PROCESS_CPU_SECONDS_TOTAL, &[]);
    assert!((0.0..600.0).contains(&cpu), "{cpu}");
    let start = value(&s, PROCESS_START_TIME_SECONDS, &[]);
    // btime is whole seconds; the test binary started minutes ago at most.
    assert!(
        start <= now + 1.0 && start > now - 600.0,
        "start {start}, now {now}"
    );

    // Kamailio's names: every destination, with dispatcher.list's FLAGS.
    for i in 0..2 {
        let uri = node_uri(i);
        let target = s
            .iter()
            .find(|x| x.name == KAMAILIO_DISPATCHER_LIST_TARGET && x.labels["uri"] == uri)
            .unwrap_or_else(|| panic!("no target {uri} in\n{text}"));
        assert_eq!(target.labels["setid"], "1");
        assert_eq!(target.value, 1.0);
        let flags = &target.labels["flags"];
        assert!(
            flags.len() == 2 && "ATID".contains(&flags[..1]) && "PX".contains(&flags[1..]),
            "{flags}"
        );
    }

    promtool_accepts(&text);
    cancel.cancel();
}

/// Without `[metrics] kamailio_names` the Kamailio family is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_names_are_off_by_default() {
    let h = Harness::start(Options::default()).await;
    let cancel = CancellationToken::new();
    let admin = admin(&h, &cancel).await;
    let (_, text) = get(admin, "/metrics").await;
    assert!(text.contains(DESTINATION_CALLS_TOTAL), "{text}");
    assert!(text.contains(PROCESS_OPEN_FDS), "{text}");
    assert!(!text.contains(KAMAILIO_DISPATCHER_LIST_TARGET), "{text}");
    cancel.cancel();
}

/// `promtool` run in `dir` with `args` succeeds.
fn promtool_in(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus) is installed");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The alerts of `deploy/prometheus/alerts.yml` pass `promtool check
/// rules` and their unit tests (`promtool test rules alerts.test.yml`),
/// which check every alert both quiet and firing; the rules and the
/// dashboard name only metrics sipedge exports, and the dashboard shows
/// the families operators asked for (per-node calls, misadvertised nodes,
/// TCP, TLS, rejects by reason, process).
#[test]
fn alert_rules_cover_every_alert_and_name_only_exported_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules_dir = root.join("deploy/prometheus");
    promtool_in(&rules_dir, &["check", "rules", "alerts.yml"]);
    promtool_in(&rules_dir, &["test", "rules", "alerts.test.yml"]);

    let rules = std::fs::read_to_string(rules_dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir.join("alerts.test.yml")).unwrap();
    // Each alert's test cases: (alert, fires) in order.
    let mut cases: Vec<(String, bool)> = Vec::new();
    let mut lines = tests.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix("alertname: ") {
            let exp = lines.next().unwrap_or_default();
            cases.push((name.to_owned(), exp != "exp_alerts: []"));
        }
    }
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in &alerts {
        for fires in [false, true] {
            assert!(
                cases.iter().any(|(a, f)| a == alert && *f == fires),
                "alerts.test.yml has no case where {alert} {}",
                if fires { "fires" } else { "stays quiet" }
            );
        }
    }
    for (alert, _) in &cases {
        assert!(
            alerts.contains(&alert.as_str()),
            "{alert} is tested but not defined"
        );
    }

    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/sipedge.json")).unwrap();
    for text in [&rules, &dashboard] {
        for name in text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("sipedge_") || w.starts_with("process_"))
        {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                sipedge::metrics::ALL_NAMES.contains(&base)
                    || sipedge::metrics::PROCESS_NAMES.contains(&base),
                "{name} is not a metric sipedge exports"
            );
        }
    }
    use sipedge::metrics as m;
    for name in [
        m::DESTINATION_CALLS_TOTAL,
        m::DESTINATION_CALL_OUTCOMES_TOTAL,
        m::NODE_MISADVERTISED_TOTAL,
        m::TCP_CONNECTIONS,
        m::TCP_EVENTS_TOTAL,
        m::TLS_HANDSHAKES_TOTAL,
        m::TLS_CONNECTIONS,
        m::TLS_CERTIFICATE_EXPIRY_SECONDS,
        m::TLS_CRL_NEXT_UPDATE_SECONDS,
        m::REQUESTS_REJECTED_TOTAL,
        m::DIALOGS_MAX,
        m::PROCESS_RESIDENT_MEMORY_BYTES,
        m::PROCESS_CPU_SECONDS_TOTAL,
        m::PROCESS_OPEN_FDS,
    ] {
        assert!(dashboard.contains(name), "no panel shows {name}");
    }
    for name in [
        m::DESTINATION_STATE,
        m::DESTINATION_UP,
        m::NODE_MISADVERTISED_TOTAL,
        m::REQUESTS_REJECTED_TOTAL,
        m::DIALOGS,
        m::DIALOGS_MAX,
        m::TLS_CERTIFICATE_EXPIRY_SECONDS,
        m::TLS_CRL_NEXT_UPDATE_SECONDS,
        m::TLS_HANDSHAKES_TOTAL,
    ] {
        assert!(rules.contains(name), "no alert watches {name}");
    }
}

/// Node `i`'s (set 1) tries so far, and those that ended as `outcome`.
fn node_counts(h: &Harness, i: usize, outcome: CallOutcome) -> (u64, u64) {
    let pool = h.proxy.pool();
    let (_, _, series) = pool.sets().next().expect("the set that takes calls");
    (series[i].calls_routed(), series[i].call_outcomes(outcome))
}

/// The other outcomes: the node's own 486 goes to the caller (rejected),
/// the caller cancels a ringing call (cancelled: the node's 487), a node
/// that rings past `fr_inv_timeout` (timeout: sipedge's 408). Neither
/// moves the call to the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_cancelled_and_timed_out_tries_count_on_their_node() {
    let h = Harness::start(Options::default()).await;
    let node = &h.nodes[0];

    let mut busy = h.trunk_call();
    h.trunk.send(busy.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_request("INVITE").await;
    node.send(
        reply(&inv, 486, "Busy Here", Some(&unique("fs-"))),
        inv.from,
    )
    .await;
    h.trunk.recv_until(|r| r.status() == Some(486)).await;
    assert_eq!(node_counts(&h, 0, CallOutcome::Rejected), (1, 1));

    let mut ringing = h.trunk_call();
    h.trunk.send(ringing.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_until_request("INVITE", WAIT).await;
    let tag = unique("fs-");
    node.send(reply(&inv, 180, "Ringing", Some(&tag)), inv.from)
        .await;
    h.trunk.recv_until(|r| r.status() == Some(180)).await;
    h.trunk.send(ringing.cancel(), h.addr).await;
    let cancel = node.recv_until_request("CANCEL", WAIT).await;
    node.send(reply(&cancel, 200, "OK", Some(&tag)), cancel.from)
        .await;
    node.send(reply(&inv, 487, "Request Terminated", Some(&tag)), inv.from)
        .await;
    h.trunk.recv_until(|r| r.status() == Some(487)).await;
    assert_eq!(node_counts(&h, 0, CallOutcome::Cancelled), (2, 1));
    assert_eq!(node_counts(&h, 1, CallOutcome::Answered), (0, 0));

    let h = Harness::start(Options {
        fr_inv_timeout: "400ms",
        ..Options::default()
    })
    .await;
    let node = &h.nodes[0];
    let mut silent = h.trunk_call();
    h.trunk.send(silent.invite(SDP_AUDIO), h.addr).await;
    let inv = node.recv_request("INVITE").await;
    node.send(reply(&inv, 180, "Ringing", Some(&unique("fs-"))), inv.from)
        .await;
    h.trunk.recv_until(|r| r.status() == Some(408)).await;
    assert_eq!(node_counts(&h, 0, CallOutcome::Timeout), (1, 1));
    for o in [
        CallOutcome::Answered,
        CallOutcome::FailedOver,
        CallOutcome::Rejected,
    ] {
        assert_eq!(node_counts(&h, 0, o).1, 0, "{o:?}");
    }
    assert_eq!(node_counts(&h, 1, CallOutcome::Timeout), (0, 0));
}
