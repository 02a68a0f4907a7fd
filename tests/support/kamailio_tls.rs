//! A real Kamailio (Debian's `kamailio` with `kamailio-tls-modules`, tls.so
//! on OpenSSL) as a TLS node: it takes sipedge's calls over TLS, requiring
//! a client certificate from the test CA, and relays them over UDP to one
//! FreeSWITCH stand-in (`tests/fixtures/kamailio/tls_node.cfg`). On free
//! loopback ports; killed on drop. Fails clearly when `kamailio` or its
//! TLS module is missing.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting Kamailio gets to listen.
const START: Duration = Duration::from_secs(20);

pub struct KamailioTls {
    child: Child,
    /// Its TLS listener.
    pub tls: SocketAddr,
    dir: PathBuf,
}

impl KamailioTls {
    /// Kamailio in `dir` (which the caller removes) serving `chain` / `key`
    /// on TLS, trusting `ca` for client certificates, relaying to `node`.
    pub fn start(dir: &Path, chain: &Path, key: &Path, ca: &Path, node: SocketAddr) -> KamailioTls {
        let dir = dir.join("kamailio");
        std::fs::create_dir_all(&dir).expect("create the kamailio dir");
        let free = || {
            // A port free on TCP for the TLS listener.
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|s| s.local_addr())
                .expect("find a free port")
                .port()
        };
        let udp_port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| s.local_addr())
            .expect("find a free port")
            .port();
        let tls_port = free();
        let tls_cfg = dir.join("tls.cfg");
        std::fs::write(
            &tls_cfg,
            format!(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n\
                 require_certificate = yes\ncertificate = {}\nprivate_key = {}\nca_list = {}\n\n\
                 [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\n",
                chain.display(),
                key.display(),
                ca.display()
            ),
        )
        .expect("write tls.cfg");
        let template =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kamailio/tls_node.cfg");
        let cfg = std::fs::read_to_string(&template)
            .expect("read the kamailio config")
            .replace("@UDP_PORT@", &udp_port.to_string())
            .replace("@TLS_PORT@", &tls_port.to_string())
            .replace("@NODE_PORT@", &node.port().to_string())
            .replace("@TLS_CFG@", tls_cfg.to_str().expect("utf-8 temp dir"))
            .replace("@MODULES@", &modules());
        let cfg_path = dir.join("kamailio.cfg");
        std::fs::write(&cfg_path, cfg).expect("write kamailio.cfg");
        let log = std::fs::File::create(dir.join("kamailio.log")).expect("kamailio log");
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-Y")
            .arg(&dir)
            .arg("-w")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "kamailio is not on PATH: the TLS interop test needs Debian's kamailio and \
                 kamailio-tls-modules (apt-get install kamailio kamailio-tls-modules)"
            ),
            Err(e) => panic!("cannot run kamailio: {e}"),
        };
        let mut k = KamailioTls {
            child,
            tls: SocketAddr::from((Ipv4Addr::LOCALHOST, tls_port)),
            dir,
        };
        k.wait_listening();
        k
    }

    /// Until its TLS port accepts a connection.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kamailio exited ({status}); log:\n{}", self.log());
            }
            if std::net::TcpStream::connect_timeout(&self.tls, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "kamailio did not listen within {START:?}; log:\n{}",
            self.log()
        );
    }

    /// What Kamailio logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kamailio.log")).unwrap_or_default()
    }
}

/// Debian's module directory holding `tls.so` (per architecture).
fn modules() -> String {
    let mut dirs = vec![PathBuf::from("/usr/lib/kamailio/modules")];
    if let Ok(lib) = std::fs::read_dir("/usr/lib") {
        dirs.extend(lib.flatten().map(|e| e.path().join("kamailio/modules")));
    }
    dirs.into_iter()
        .find(|d| d.join("tls.so").is_file())
        .map(|d| format!("{}/", d.display()))
        .unwrap_or_else(|| {
            panic!(
                "no kamailio module directory with tls.so: the TLS interop test needs \
                 Debian's kamailio-tls-modules (apt-get install kamailio-tls-modules)"
            )
        })
}

impl Drop for KamailioTls {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its worker children too.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
