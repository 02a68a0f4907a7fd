//! A real Kamailio (Debian's `kamailio` with `ndb_redis` from
//! `kamailio-redis-modules`) running the call-registry script of the
//! deployment sipedge replaces (`tests/fixtures/kamailio/registry.cfg`)
//! on a free loopback port, against the tests' Redis; killed on drop.
//! Fails clearly when `kamailio` is not on PATH. [`Kamailio::run`] runs
//! any other script the same way (the TLS interop tests).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a starting Kamailio gets to answer.
const START: Duration = Duration::from_secs(20);

pub struct Kamailio {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Kamailio {
    /// Kamailio on a free loopback UDP port, dispatching to `nodes` (set
    /// 1, in this order, priority algorithm 8) and keeping its call
    /// registry in the Redis on `redis_port`.
    pub fn start(nodes: &[SocketAddr], redis_port: u16) -> Kamailio {
        let dir = temp_dir();
        let list = dir.join("dispatcher.list");
        let lines: String = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("1 sip:{n} 0 {}\n", nodes.len() - i))
            .collect();
        std::fs::write(&list, lines).expect("write dispatcher.list");
        let port = free_udp_port();
        let cfg = fixture("registry.cfg")
            .replace("@SIP_PORT@", &port.to_string())
            .replace("@REDIS_PORT@", &redis_port.to_string())
            .replace("@LIST_FILE@", list.to_str().expect("utf-8 temp dir"))
            .replace("@MODULES@", &modules());
        Kamailio::run(dir, &cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// Kamailio running `cfg` (written to `dir`, which it owns and removes
    /// on drop), ready once it answers an OPTIONS on UDP `addr`.
    pub fn run(dir: PathBuf, cfg: &str, addr: SocketAddr) -> Kamailio {
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
                "kamailio is not on PATH: the interop tests need Debian's kamailio \
                 (apt-get install kamailio kamailio-redis-modules kamailio-tls-modules)"
            ),
            Err(e) => panic!("cannot run kamailio: {e}"),
        };
        let mut k = Kamailio { child, addr, dir };
        k.wait_ready();
        k
    }

    /// Until Kamailio answers an OPTIONS (405 from the script).
    fn wait_ready(&mut self) {
        let dir = self.dir.clone();
        crate::support::until_options_answered(
            &mut self.child,
            self.addr,
            &format!("sip:{}", self.addr),
            |_| true,
            START,
            || kamailio_log(&dir),
        );
    }

    /// What Kamailio logged so far.
    pub fn log(&self) -> String {
        kamailio_log(&self.dir)
    }
}

fn kamailio_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default()
}

/// A fresh directory for one Kamailio's config, log and runtime files.
pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(crate::support::unique("sipedge-kamailio-"));
    std::fs::create_dir_all(&dir).expect("create the kamailio temp dir");
    dir
}

/// A loopback UDP port free right now.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .expect("find a free port")
        .port()
}

/// The text of `tests/fixtures/kamailio/<name>`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kamailio")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read the kamailio config {}: {e}", path.display()))
}

/// Debian's module directory holding `module` (per architecture), if any.
pub fn module_dir(module: &str) -> Option<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/lib/kamailio/modules")];
    if let Ok(lib) = std::fs::read_dir("/usr/lib") {
        dirs.extend(lib.flatten().map(|e| e.path().join("kamailio/modules")));
    }
    dirs.into_iter().find(|d| d.join(module).is_file())
}

/// Debian's module directory holding `ndb_redis.so`, as `mpath`.
fn modules() -> String {
    module_dir("ndb_redis.so")
        .map(|d| format!("{}/", d.display()))
        .unwrap_or_else(|| {
            panic!(
                "no kamailio module directory with ndb_redis.so: the interop test needs \
                 Debian's kamailio-redis-modules (apt-get install kamailio-redis-modules)"
            )
        })
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its worker children too (a
        // SIGKILL would leave them running).
        crate::support::terminate(&mut self.child);
        if std::thread::panicking() {
            eprintln!("kamailio's log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
