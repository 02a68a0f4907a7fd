//! The TLS client side of `bench/tls/run.sh` (a crate of its own, never part
//! of the sipedge binary): opens TLS connections to a proxy on loopback and
//! measures the proxy's memory and CPU from /proc around them.
//!
//! ```text
//! tls_bench idle       TARGET CA_PEM --count N --pids P1,P2.. [options]
//! tls_bench handshakes TARGET CA_PEM --count N --pids P1,P2.. [options]
//!   --tls12            TLS 1.2 only (ECDHE-ECDSA-AES128-GCM-SHA256);
//!                      default TLS 1.3 only (TLS_AES_128_GCM_SHA256)
//!   --plain            plain TCP, no TLS (the baseline: what the stream
//!                      machinery costs without TLS); CA_PEM is then ignored
//!   --concurrency C    handshakes in flight at once (default 4, 1-64)
//!   --sources S        spread connections over 127.0.0.2 ..= 127.0.0.(S+1)
//!                      (default 8, 1-200)
//!   --max-seconds T    stop starting connections after T s (default 60, <= 600)
//!   --label NAME       put in the result line
//! ```
//!
//! Both modes use one suite and X25519 key shares for every proxy (P-256 is
//! offered too: TLS 1.2 servers want the certificate's curve listed), no session
//! resumption, so every handshake is a full one. A connection counts once a
//! double-CRLF ping drew the proxy's CRLF pong (RFC 5626 §3.5.1): the
//! proxy then has finished its side of the handshake too.
//!
//! `idle` opens N connections, keeps them open, waits for the proxy to
//! settle and prints the proxy's summed PSS and RSS before and after (from
//! `/proc/PID/smaps_rollup`), then pings every connection again (how many
//! are still open) and closes them. `handshakes` makes N connections one
//! after the other (C at a time), each closed after its pong, and prints
//! handshakes/s and the proxy's CPU (utime+stime of the given processes)
//! per handshake. Loopback targets only; every wait is bounded.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// One connect + handshake + ping/pong must finish within this.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

struct Opts {
    idle: bool,
    target: SocketAddr,
    ca: String,
    count: usize,
    pids: Vec<u32>,
    tls12: bool,
    plain: bool,
    concurrency: usize,
    sources: u8,
    max_seconds: u64,
    label: String,
}

fn usage(why: &str) -> ! {
    eprintln!("tls_bench: {why}");
    eprintln!(
        "usage: tls_bench idle|handshakes TARGET CA_PEM --count N --pids P1,P2.. \
         [--tls12|--plain] [--concurrency C] [--sources S] [--max-seconds T] [--label NAME]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        usage("missing arguments");
    }
    let idle = match args[0].as_str() {
        "idle" => true,
        "handshakes" => false,
        m => usage(&format!("unknown mode {m}")),
    };
    let target: SocketAddr = args[1]
        .parse()
        .unwrap_or_else(|_| usage("TARGET must be ip:port"));
    if !target.ip().is_loopback() {
        usage("TARGET must be a loopback address");
    }
    let mut o = Opts {
        idle,
        target,
        ca: args[2].clone(),
        count: 0,
        pids: Vec::new(),
        tls12: false,
        plain: false,
        concurrency: 4,
        sources: 8,
        max_seconds: 60,
        label: "proxy".into(),
    };
    let mut it = args[3..].iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| usage(&format!("{a} wants a value")))
        };
        let num = |v: String, lo: u64, hi: u64| -> u64 {
            match v.parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => n,
                _ => usage(&format!("{a}: {lo}-{hi}")),
            }
        };
        match a.as_str() {
            "--count" => o.count = num(val(), 1, 100_000) as usize,
            "--concurrency" => o.concurrency = num(val(), 1, 64) as usize,
            "--sources" => o.sources = num(val(), 1, 200) as u8,
            "--max-seconds" => o.max_seconds = num(val(), 1, 600),
            "--label" => o.label = val(),
            "--tls12" => o.tls12 = true,
            "--plain" => o.plain = true,
            "--pids" => {
                o.pids = val()
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .parse()
                            .unwrap_or_else(|_| usage("--pids: numbers"))
                    })
                    .collect()
            }
            _ => usage(&format!("unknown option {a}")),
        }
    }
    if o.count == 0 || o.pids.is_empty() {
        usage("--count and --pids are required");
    }
    o
}

/// Client config: only the CA of the bench certificate, one suite, X25519,
/// no resumption (every handshake a full one).
fn client_config(ca_pem: &str, tls12: bool) -> Arc<rustls::ClientConfig> {
    use rustls::crypto::ring as r;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem).unwrap_or_else(|e| usage(&format!("{ca_pem}: {e}")));
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(c.unwrap_or_else(|e| usage(&format!("{ca_pem}: {e}"))))
            .unwrap_or_else(|e| usage(&format!("{ca_pem}: {e}")));
    }
    let (suite, version) = if tls12 {
        (
            r::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            &rustls::version::TLS12,
        )
    } else {
        (
            r::cipher_suite::TLS13_AES_128_GCM_SHA256,
            &rustls::version::TLS13,
        )
    };
    #[allow(deprecated)]
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        // X25519 is the key share; P-256 is listed too because TLS 1.2
        // servers (OpenSSL) only pick an ECDSA P-256 certificate when the
        // client names that curve.
        kx_groups: vec![r::kx_group::X25519, r::kx_group::SECP256R1],
        ..r::default_provider()
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("suite and version agree")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

impl Opts {
    fn version(&self) -> &'static str {
        match (self.plain, self.tls12) {
            (true, _) => "tcp",
            (false, true) => "1.2",
            (false, false) => "1.3",
        }
    }
}

fn source(i: usize, sources: u8) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources as usize) as u8)),
        0,
    )
}

/// A connection to the proxy: TLS, or plain TCP for the baseline.
enum Conn {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Conn {
    async fn ping(&mut self) -> Result<(), String> {
        match self {
            Conn::Tls(t) => ping(t.as_mut()).await,
            Conn::Plain(t) => ping(t).await,
        }
    }

    async fn close(&mut self) {
        let t = Duration::from_millis(500);
        let _ = match self {
            // close_notify and FIN; the proxy closes its side.
            Conn::Tls(s) => tokio::time::timeout(t, s.shutdown()).await,
            Conn::Plain(s) => tokio::time::timeout(t, s.shutdown()).await,
        };
    }

    /// The negotiated suite and key exchange group.
    fn describe(&self) -> (String, String) {
        let Conn::Tls(tls) = self else {
            return ("none".into(), "none".into());
        };
        let (_, conn) = tls.get_ref();
        let suite = conn
            .negotiated_cipher_suite()
            .map_or("?".into(), |s| format!("{:?}", s.suite()));
        let group = conn
            .negotiated_key_exchange_group()
            .map_or("?".into(), |g| format!("{:?}", g.name()));
        (suite, group)
    }
}

/// Connect from `src`, handshake (unless plain), ping, wait for the pong.
async fn open(
    connector: &Option<TlsConnector>,
    target: SocketAddr,
    src: SocketAddr,
) -> Result<Conn, String> {
    let step = async {
        let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        sock.bind(src).map_err(|e| format!("bind {src}: {e}"))?;
        let tcp = sock
            .connect(target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).ok();
        let mut conn = match connector {
            None => Conn::Plain(tcp),
            Some(c) => {
                let name = ServerName::IpAddress(target.ip().into());
                let tls = c
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                Conn::Tls(Box::new(tls))
            }
        };
        conn.ping().await?;
        Ok(conn)
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| "timeout".to_string())?
}

async fn ping<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<(), String> {
    s.write_all(b"\r\n\r\n")
        .await
        .map_err(|e| format!("ping: {e}"))?;
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong)
        .await
        .map_err(|e| format!("pong: {e}"))?;
    if &pong != b"\r\n" {
        return Err(format!("pong: got {pong:?}"));
    }
    Ok(())
}

/// Summed (PSS, RSS) in bytes of the processes, from smaps_rollup.
fn memory(pids: &[u32]) -> (u64, u64) {
    let (mut pss, mut rss) = (0, 0);
    for pid in pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            eprintln!("tls_bench: process {pid} is gone");
            continue;
        };
        for line in text.lines() {
            let kb = |l: &str| -> u64 {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("Pss:") {
                pss += kb(line);
            } else if line.starts_with("Rss:") {
                rss += kb(line);
            }
        }
    }
    (pss, rss)
}

/// Summed utime+stime in seconds of the processes (all their threads).
fn cpu_seconds(pids: &[u32]) -> f64 {
    // USER_HZ is 100 on Linux for every architecture sipedge runs on.
    const TICKS: f64 = 100.0;
    let mut ticks = 0u64;
    for pid in pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            eprintln!("tls_bench: process {pid} is gone");
            continue;
        };
        // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
        let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / TICKS
}

fn own_cpu_seconds() -> f64 {
    cpu_seconds(&[std::process::id()])
}

async fn idle(o: &Opts, connector: Option<TlsConnector>) {
    let deadline = Instant::now() + Duration::from_secs(o.max_seconds);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (pss0, rss0) = memory(&o.pids);
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..o.concurrency {
        let (next, connector, target, sources, count) = (
            next.clone(),
            connector.clone(),
            o.target,
            o.sources,
            o.count,
        );
        workers.spawn(async move {
            let (mut held, mut failed) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() > deadline {
                    return (held, failed);
                }
                match open(&connector, target, source(i, sources)).await {
                    Ok(t) => held.push(t),
                    Err(e) => failed.push(e),
                }
            }
        });
    }
    let (mut held, mut failed) = (Vec::new(), Vec::new());
    while let Some(r) = workers.join_next().await {
        let (h, f) = r.expect("worker panicked");
        held.extend(h);
        failed.extend(f);
    }
    let open_s = t0.elapsed().as_secs_f64();
    // Let the proxy finish whatever the last handshakes left (its
    // allocator returning scratch memory) before reading its memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pss1, rss1) = memory(&o.pids);
    // Still open? One more ping on every connection, in parallel.
    let mut alive = 0usize;
    let mut pings = tokio::task::JoinSet::new();
    for mut t in held.drain(..) {
        pings.spawn(async move {
            let ok = tokio::time::timeout(STEP_TIMEOUT, t.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            (ok, t)
        });
    }
    let mut back = Vec::new();
    while let Some(r) = pings.join_next().await {
        let (ok, t) = r.expect("ping task panicked");
        alive += usize::from(ok);
        back.push(t);
    }
    let (suite, group) = back
        .first()
        .map_or(("?".into(), "?".into()), Conn::describe);
    let n = back.len().max(1) as f64;
    println!(
        "TLSBENCH mode=idle label={} version={} suite={suite} group={group} target={} \
         connections={} failed={} alive_after={alive} open_s={open_s:.2} \
         pss_before_kb={} pss_after_kb={} rss_before_kb={} rss_after_kb={} \
         pss_bytes_per_conn={:.0} rss_bytes_per_conn={:.0}",
        o.label,
        o.version(),
        o.target,
        back.len(),
        failed.len(),
        pss0 / 1024,
        pss1 / 1024,
        rss0 / 1024,
        rss1 / 1024,
        (pss1 as f64 - pss0 as f64) / n,
        (rss1 as f64 - rss0 as f64) / n,
    );
    report_failures(&failed);
    for mut t in back {
        t.close().await;
    }
}

async fn handshakes(o: &Opts, connector: Option<TlsConnector>) {
    let deadline = Instant::now() + Duration::from_secs(o.max_seconds);
    let (cpu0, own0) = (cpu_seconds(&o.pids), own_cpu_seconds());
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..o.concurrency {
        let (next, connector, target, sources, count) = (
            next.clone(),
            connector.clone(),
            o.target,
            o.sources,
            o.count,
        );
        workers.spawn(async move {
            let (mut ok, mut failed, mut seen) = (0usize, Vec::new(), None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() > deadline {
                    return (ok, failed, seen);
                }
                match open(&connector, target, source(i, sources)).await {
                    Ok(mut t) => {
                        ok += 1;
                        if seen.is_none() {
                            seen = Some(t.describe());
                        }
                        t.close().await;
                    }
                    Err(e) => failed.push(e),
                }
            }
        });
    }
    let (mut ok, mut failed, mut seen) = (0usize, Vec::new(), None);
    while let Some(r) = workers.join_next().await {
        let (k, f, s) = r.expect("worker panicked");
        ok += k;
        failed.extend(f);
        seen = seen.or(s);
    }
    let secs = t0.elapsed().as_secs_f64();
    // The proxy's work on the last closes lands within a few ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = cpu_seconds(&o.pids) - cpu0;
    let own = own_cpu_seconds() - own0;
    let (suite, group) = seen.unwrap_or(("?".into(), "?".into()));
    println!(
        "TLSBENCH mode=handshakes label={} version={} suite={suite} group={group} target={} \
         ok={ok} failed={} seconds={secs:.2} hs_per_s={:.0} proxy_cpu_s={cpu:.2} \
         proxy_us_per_hs={:.0} proxy_core_pct={:.0} client_cpu_s={own:.2}",
        o.label,
        o.version(),
        o.target,
        failed.len(),
        ok as f64 / secs,
        cpu * 1e6 / ok.max(1) as f64,
        100.0 * cpu / secs,
    );
    report_failures(&failed);
}

fn report_failures(failed: &[String]) {
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for f in failed {
        *kinds.entry(f.as_str()).or_default() += 1;
    }
    for (k, n) in kinds.iter().take(5) {
        eprintln!("tls_bench: {n} x {k}");
    }
}

fn main() {
    let o = parse_opts();
    let connector = (!o.plain).then(|| TlsConnector::from(client_config(&o.ca, o.tls12)));
    // One client thread: the other core is the proxy's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if o.idle {
            idle(&o, connector).await
        } else {
            handshakes(&o, connector).await
        }
    });
}
