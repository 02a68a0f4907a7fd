//! Binding the listeners: a second sipedge must not bind
//! the UDP port a first one holds (SO_REUSEADDR on a UDP socket let both
//! run and split the traffic); it refuses to start and names the address.
//! A TCP listener keeps SO_REUSEADDR (a restart must not wait for
//! TIME_WAIT), and IP_FREEBIND still binds a VIP this host does not hold.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sipedge::transport::{bind_tcp, bind_udp, TcpOptions, UdpOptions};
use socket2::SockRef;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn udp_address_bound_twice_is_refused_with_addr_in_use() {
    let first = bind_udp(loopback(), UdpOptions::default()).expect("first bind");
    let at = first.local_addr().unwrap();
    let err = bind_udp(at, UdpOptions::default()).expect_err("a second bind of the same address");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("udp:{at}")), "{text}");
    assert!(text.contains("already in use"), "{text}");
    // Freebind (the keepalived setting) must not open the door either.
    let freebind = UdpOptions {
        freebind: true,
        ..UdpOptions::default()
    };
    let err = bind_udp(at, freebind).expect_err("a second bind with freebind");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
}

/// Neither option that lets a second socket share the port is on the UDP
/// socket; the TCP listener has SO_REUSEADDR only.
#[test]
fn reuse_options_udp_none_tcp_reuseaddr_only() {
    let udp = bind_udp(loopback(), UdpOptions::default()).unwrap();
    let s = SockRef::from(&udp);
    assert!(
        !s.reuse_address().unwrap(),
        "SO_REUSEADDR on the UDP socket"
    );
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    assert!(!s.reuse_port().unwrap(), "SO_REUSEPORT on the UDP socket");

    let tcp = bind_tcp(loopback(), &TcpOptions::default()).unwrap();
    let s = SockRef::from(&tcp);
    assert!(
        s.reuse_address().unwrap(),
        "no SO_REUSEADDR on the listener"
    );
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    assert!(!s.reuse_port().unwrap(), "SO_REUSEPORT on the listener");
}

#[test]
fn tcp_address_bound_twice_is_refused_with_addr_in_use() {
    let first = bind_tcp(loopback(), &TcpOptions::default()).expect("first bind");
    let at = first.local_addr().unwrap();
    let err = bind_tcp(at, &TcpOptions::default()).expect_err("a second listener");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("tcp:{at}")), "{text}");
    assert!(text.contains("already in use"), "{text}");
}

/// The standby's TCP listener binds the VIP too (the UDP case is a unit
/// test in `transport::udp`). 192.0.2.0/24 is on no interface here.
#[cfg(target_os = "linux")]
#[test]
fn freebind_tcp_listener_binds_an_address_this_host_does_not_hold() {
    let vip: SocketAddr = "192.0.2.78:0".parse().unwrap();
    let refused = bind_tcp(vip, &TcpOptions::default()).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::AddrNotAvailable);
    assert!(
        refused.to_string().contains("tcp:192.0.2.78:0"),
        "{refused}"
    );
    let opts = TcpOptions {
        freebind: true,
        ..TcpOptions::default()
    };
    let l = bind_tcp(vip, &opts).expect("freebind bind");
    assert_eq!(l.local_addr().unwrap().ip(), vip.ip());
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

/// A config file listening on `udp`, in its own directory.
fn write_config(name: &str, udp: SocketAddr) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sipedge-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nudp = [\"{udp}\"]\nadvertise = \"127.0.0.1\"\n\
             [[dispatcher.destination]]\nuri = \"sip:127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    cfg
}

fn spawn(cfg: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sipedge")
}

/// Waits for `child` to exit by itself (it must refuse to start); one
/// still running after a generous deadline is killed and the test fails.
/// Returns the status and everything it printed.
fn expect_exit(mut child: Child) -> (ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sipedge started on an address already in use (still running)");
        }
        // Polling the child's state, not waiting for an effect.
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut out);
    (status, out)
}

fn assert_refused(status: ExitStatus, out: &str, at: SocketAddr) {
    assert!(!status.success(), "exit status {status}:\n{out}");
    assert!(
        !out.contains("listening on udp:"),
        "it claims to listen:\n{out}"
    );
    assert!(
        out.contains(&format!("udp:{at}")),
        "address not named:\n{out}"
    );
    assert!(out.contains("already in use"), "cause not said:\n{out}");
}

#[test]
fn binary_refuses_a_udp_port_another_socket_holds() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = holder.local_addr().unwrap();
    let cfg = write_config("taken", at);
    let (status, out) = expect_exit(spawn(&cfg));
    assert_refused(status, &out, at);
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}

/// The reported case: the same config started twice. The first serves; the
/// second exits with an error naming the address.
#[test]
fn binary_started_twice_on_one_config_second_refuses() {
    // A free port for the config: bound then released (the first sipedge
    // takes it right after; a race with another process is unlikely and
    // would fail the first start loudly, not pass wrongly).
    let at = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = write_config("twice", at);
    let mut first = spawn(&cfg);
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on udp:").map(str::to_owned));
    if listening.as_deref() != Some(&at.to_string()) {
        let _ = first.kill();
        let _ = first.wait();
        panic!("the first sipedge did not start on {at}: {listening:?}");
    }

    let (status, out) = expect_exit(spawn(&cfg));

    let _ = first.kill();
    let _ = first.wait();
    assert_refused(status, &out, at);
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}
