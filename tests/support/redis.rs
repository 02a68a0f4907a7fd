//! A real `redis-server` (Debian's) for the registry tests: started on a
//! free loopback port in a temporary directory, with no persistence,
//! killed on drop. Fails clearly when `redis-server` is not on PATH
//! (`apt-get install redis-server`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server gets to accept connections.
const START: Duration = Duration::from_secs(20);

pub struct RedisServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(crate::support::unique("sipedge-redis-"));
        std::fs::create_dir_all(&dir).expect("create the redis temp dir");
        // A port another process takes between our probe and the server's
        // bind makes the server exit: try another.
        for _ in 0..10 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("find a free port")
                .port();
            let mut server = RedisServer {
                child: None,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                dir: dir.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any free port");
    }

    /// Runs the server on `self.addr`; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: the registry tests need Debian's \
                 redis-server (apt-get install redis-server)"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on {} did not answer within {START:?}",
            self.addr
        );
    }

    fn ping(&self) -> bool {
        if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            return false;
        }
        self.client()
            .get_connection_with_timeout(Duration::from_millis(500))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis URL")
    }

    /// A plain connection, as any other client of the registry (Kamailio,
    /// an operator's redis-cli) would have.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis")
    }

    /// `GET key`.
    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.conn())
            .expect("GET")
    }

    /// `TTL key` in seconds (-2: no such key).
    pub fn ttl(&self, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query(&mut self.conn())
            .expect("TTL")
    }

    /// `SET key value EX seconds`, as the article's Kamailio script does.
    pub fn set(&self, key: &str, value: &str, seconds: u64) {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(seconds)
            .query::<()>(&mut self.conn())
            .expect("SET");
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server could not bind {} again",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
