//! Debian's baresip (package `baresip-core`, libre's SIP stack) as a real
//! SIP user agent over TLS: a caller whose account sends everything to
//! sipedge's TLS listener (its outbound proxy), or a node that answers
//! what sipedge sends to its TLS listener. Everything stays on 127.0.0.1:
//! its SIP listeners, its media (`net_interface`), its DNS server.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::Scratch;
use crate::tls_support::{path, Issued};

/// How long baresip gets to answer its first OPTIONS.
const START: Duration = Duration::from_secs(10);

/// A running baresip, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Baresip {
    child: Child,
    dir: Scratch,
    /// Its UDP and TCP listeners.
    pub sip: SocketAddr,
    /// Its TLS listener (libre puts it one port above `sip`).
    pub tls: SocketAddr,
}

/// What a baresip is for.
pub enum Role<'a> {
    /// Calls `target` at start, through `proxy` (a `sip:` URI with
    /// `;transport=tls`) as its outbound proxy, as `user`.
    Caller {
        user: &'a str,
        proxy: &'a str,
        target: &'a str,
    },
    /// Answers calls to `user` at once (`answermode=auto`).
    Callee { user: &'a str },
}

impl Baresip {
    /// Starts baresip serving `cert` (its TLS listener's certificate,
    /// also presented to servers that ask) and trusting `ca`.
    pub fn start(role: Role<'_>, cert: &Issued, ca: &Path) -> Baresip {
        let dir = Scratch::new("baresip");
        // libre reads the certificate and its key from one file.
        let mut pem = std::fs::read(&cert.cert).unwrap();
        pem.extend(std::fs::read(&cert.key).unwrap());
        std::fs::write(dir.join("identity.pem"), pem).unwrap();
        // 30 s of silence at 8 kHz: a source that ends would end the call.
        write_silence(&dir.join("silence.wav"), 30);
        let port = free_port_pair();
        let (account, commands, menu) = match role {
            Role::Caller {
                user,
                proxy,
                target,
            } => (
                format!("<sip:{user}@sip.test;transport=tls>;outbound=\"{proxy}\";regint=0"),
                vec!["-e".to_owned(), format!("/dial {target}")],
                "module_app menu.so\n",
            ),
            Role::Callee { user } => (
                format!("<sip:{user}@127.0.0.1;transport=tls>;regint=0;answermode=auto"),
                Vec::new(),
                "",
            ),
        };
        let config = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:{port}\n\
             sip_certificate {identity}\n\
             sip_cafile {ca}\n\
             net_interface 127.0.0.1\n\
             dns_server 127.0.0.1:9\n\
             audio_source aufile,{silence}\n\
             audio_player aufile,{heard}\n\
             audio_alert aufile,{heard}\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aufile.so\n\
             module_app account.so\n\
             {menu}",
            identity = path(&dir.join("identity.pem")),
            ca = path(ca),
            silence = path(&dir.join("silence.wav")),
            heard = path(&dir.join("heard.wav")),
        );
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
        let log = std::fs::File::create(dir.join("baresip.log")).unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(&*dir)
            .arg("-s") // SIP trace into the log
            .args(&commands)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "baresip is not on PATH: this test needs Debian's baresip-core \
                 (apt-get install baresip-core)"
            ),
            Err(e) => panic!("cannot run baresip: {e}"),
        };
        let mut b = Baresip {
            child,
            dir,
            sip: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            tls: SocketAddr::from((Ipv4Addr::LOCALHOST, port + 1)),
        };
        if let Role::Callee { user } = role {
            b.wait_ready(user);
        }
        b
    }

    /// Until baresip answers an OPTIONS for `user` on its UDP listener.
    fn wait_ready(&mut self, user: &str) {
        let log = self.dir.join("baresip.log");
        crate::support::until_options_answered(
            &mut self.child,
            self.sip,
            &format!("sip:{user}@{}", self.sip),
            |r| r.starts_with(b"SIP/2.0 200"),
            START,
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
    }

    /// What baresip logged so far (its SIP trace included; complete once
    /// it has exited).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }

    /// Stops baresip and returns its whole log.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log()
    }

    fn terminate(&mut self) {
        crate::support::terminate(&mut self.child);
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            eprintln!("baresip's log:\n{}", self.log());
        }
    }
}

/// A loopback port `p` with `p` free for UDP and TCP and `p + 1` for TCP
/// right now (libre listens on all three).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let p = udp.local_addr().unwrap().port();
        if p == u16::MAX {
            continue;
        }
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, p));
        let tls = TcpListener::bind((Ipv4Addr::LOCALHOST, p + 1));
        if tcp.is_ok() && tls.is_ok() {
            return p;
        }
    }
    panic!("no two free loopback ports in a row");
}

/// A mono 16-bit 8 kHz WAV file of `seconds` of silence.
fn write_silence(to: &Path, seconds: u32) {
    let data = 8_000 * 2 * seconds;
    let mut w = Vec::with_capacity(44 + data as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&8_000u32.to_le_bytes()); // sample rate
    w.extend_from_slice(&16_000u32.to_le_bytes()); // byte rate
    w.extend_from_slice(&2u16.to_le_bytes()); // block align
    w.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(44 + data as usize, 0);
    std::fs::write(to, w).unwrap();
}
