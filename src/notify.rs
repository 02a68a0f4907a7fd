//! systemd's service notification protocol (`sd_notify(3)`), for a
//! `Type=notify` unit: `READY=1` once serving, `RELOADING=1` and `READY=1`
//! around a reload, `STOPPING=1` at the drain, `STATUS=` lines, and
//! `WATCHDOG=1` keep-alives when the unit sets `WatchdogSec=`.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the socket named
//! by `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); no
//! crate needed. Without `NOTIFY_SOCKET` (not under systemd, or in tests)
//! every call does nothing. Sending is best effort: a lost notification
//! must never stop the proxy, and systemd says what it missed.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Where notifications go, and the watchdog interval systemd asked for.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
    /// Half of `WATCHDOG_USEC`: how often `WATCHDOG=1` is due.
    watchdog: Option<Duration>,
    /// `READY=1` of the start sent (the first one counts; later ones
    /// follow a reload).
    started: AtomicBool,
    /// The last `STATUS=` sent: an unchanged one is not sent again.
    status: Mutex<String>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

/// The environment a notifier is built from (`NOTIFY_SOCKET`,
/// `WATCHDOG_USEC`, `WATCHDOG_PID`), as read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Env {
    pub notify_socket: Option<String>,
    pub watchdog_usec: Option<String>,
    pub watchdog_pid: Option<String>,
}

impl Env {
    /// This process's environment.
    pub fn current() -> Env {
        let var = |k| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            notify_socket: var("NOTIFY_SOCKET"),
            watchdog_usec: var("WATCHDOG_USEC"),
            watchdog_pid: var("WATCHDOG_PID"),
        }
    }

    /// How often `WATCHDOG=1` is due for process `pid`: half of
    /// `WATCHDOG_USEC` (as sd_watchdog_enabled(3) advises), when it is set
    /// for this process (`WATCHDOG_PID` absent or ours).
    pub fn watchdog_interval(&self, pid: u32) -> Option<Duration> {
        let usec: u64 = self.watchdog_usec.as_deref()?.trim().parse().ok()?;
        if usec == 0 {
            return None;
        }
        match self
            .watchdog_pid
            .as_deref()
            .map(|p| p.trim().parse::<u32>())
        {
            None => {}
            Some(Ok(p)) if p == pid => {}
            Some(_) => return None,
        }
        Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
    }
}

/// The socket address `NOTIFY_SOCKET` names: a path, or `@name` for a
/// Linux abstract socket. `None` for anything else (vsock: not supported).
pub fn parse_address(value: &str) -> Option<SocketAddr> {
    if value.starts_with('/') {
        return SocketAddr::from_pathname(value).ok();
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(name) = value.strip_prefix('@') {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes()).ok();
    }
    None
}

/// `MONOTONIC_USEC=`'s value: CLOCK_MONOTONIC now, in microseconds
/// (systemd matches a reload's `RELOADING=1` with its own request by it).
fn monotonic_usec() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let secs = u64::try_from(now.tv_sec()).ok()?;
    let micros = u64::try_from(now.tv_nsec()).ok()? / 1_000;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// A `STATUS=` value is one line: a line break would start a new key.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

impl Notifier {
    /// From this process's environment: see [`Notifier::from_env_vars`].
    pub fn from_env() -> Notifier {
        Notifier::from_env_vars(&Env::current(), std::process::id())
    }

    /// A notifier for `env` in process `pid`; one that does nothing when
    /// `NOTIFY_SOCKET` is unset or names no usable socket (a warning).
    pub fn from_env_vars(env: &Env, pid: u32) -> Notifier {
        let Some(value) = env.notify_socket.as_deref() else {
            return Notifier::default();
        };
        let target = match (parse_address(value), UnixDatagram::unbound()) {
            (Some(addr), Ok(socket)) => Some(Target { socket, addr }),
            (None, _) => {
                tracing::warn!("NOTIFY_SOCKET={value:?}: not a path or @name; not notifying");
                None
            }
            (_, Err(e)) => {
                tracing::warn!("NOTIFY_SOCKET: cannot open a datagram socket: {e}");
                None
            }
        };
        Notifier {
            watchdog: target.as_ref().and(env.watchdog_interval(pid)),
            target,
            ..Notifier::default()
        }
    }

    /// Under a service manager that listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often [`Notifier::watchdog`] is due, when systemd watches.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (`KEY=VALUE` lines) as one datagram; best effort.
    pub fn send(&self, state: &str) {
        let Some(t) = &self.target else { return };
        if let Err(e) = t.socket.send_to_addr(state.as_bytes(), &t.addr) {
            tracing::debug!("sd_notify: {e}");
        }
    }

    /// Serving: every listener bound and the first probe round done.
    /// Only the first call sends (`READY=1` after a reload is
    /// [`Notifier::reloaded`]'s).
    pub fn ready(&self, status: &str) {
        if self.target.is_none() || self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        self.send(&format!("READY=1\nSTATUS={}", self.remember(status)));
    }

    /// A reload starts.
    pub fn reloading(&self) {
        if self.target.is_none() {
            return;
        }
        match monotonic_usec() {
            Some(us) => self.send(&format!("RELOADING=1\nMONOTONIC_USEC={us}")),
            None => self.send("RELOADING=1"),
        }
    }

    /// A reload ended (applied or refused: `status` says which).
    pub fn reloaded(&self, status: &str) {
        if self.target.is_none() {
            return;
        }
        self.send(&format!("READY=1\nSTATUS={}", self.remember(status)));
    }

    /// The drain before exit begins.
    pub fn stopping(&self, status: &str) {
        if self.target.is_none() {
            return;
        }
        self.send(&format!("STOPPING=1\nSTATUS={}", self.remember(status)));
    }

    /// `STATUS=status`, when it differs from the last one sent.
    pub fn status(&self, status: &str) {
        if self.target.is_none() {
            return;
        }
        let line = one_line(status);
        {
            let mut last = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if *last == line {
                return;
            }
            last.clone_from(&line);
        }
        self.send(&format!("STATUS={line}"));
    }

    /// The watchdog keep-alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `status` as one line, noted as the last sent.
    fn remember(&self, status: &str) -> String {
        let line = one_line(status);
        let mut last = self.status.lock().unwrap_or_else(|p| p.into_inner());
        last.clone_from(&line);
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>) -> Env {
        Env {
            notify_socket: socket.map(Into::into),
            watchdog_usec: usec.map(Into::into),
            watchdog_pid: pid.map(Into::into),
        }
    }

    #[test]
    fn the_watchdog_is_half_of_watchdog_usec_and_only_for_its_pid() {
        let e = env(None, Some("30000000"), None);
        assert_eq!(e.watchdog_interval(7), Some(Duration::from_secs(15)));
        let e = env(None, Some("30000000"), Some("7"));
        assert_eq!(e.watchdog_interval(7), Some(Duration::from_secs(15)));
        assert_eq!(e.watchdog_interval(8), None, "another process's watchdog");
        assert_eq!(env(None, Some("0"), None).watchdog_interval(7), None);
        assert_eq!(env(None, Some("soon"), None).watchdog_interval(7), None);
        assert_eq!(env(None, None, None).watchdog_interval(7), None);
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let a = parse_address("/run/systemd/notify").unwrap();
        assert_eq!(
            a.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let a = parse_address("@sipedge-test").unwrap();
            assert_eq!(a.as_abstract_name(), Some(&b"sipedge-test"[..]));
        }
        assert!(parse_address("vsock:2:1234").is_none());
        assert!(parse_address("relative/path").is_none());
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_no_watchdog() {
        let n = Notifier::from_env_vars(&env(None, Some("1000000"), None), 1);
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("x");
        n.watchdog();
    }

    #[test]
    fn messages_reach_the_socket_ready_once_and_status_only_when_changed() {
        let dir = std::env::temp_dir().join(format!("sipedge-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let e = env(path.to_str(), Some("2000000"), None);
        let n = Notifier::from_env_vars(&e, std::process::id());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        n.ready("serving\nsecond line");
        n.ready("again");
        n.status("serving second line");
        n.status("2 of 2 active");
        n.reloading();
        n.reloaded("reloaded");
        n.stopping("draining");
        n.watchdog();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(len) = listener.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(got[0], "READY=1\nSTATUS=serving second line");
        assert_eq!(got[1], "STATUS=2 of 2 active");
        assert!(
            got[2].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{got:?}"
        );
        let usec: u64 = got[2].rsplit('=').next().unwrap().parse().unwrap();
        assert!(usec > 0);
        assert_eq!(got[3], "READY=1\nSTATUS=reloaded");
        assert_eq!(got[4], "STOPPING=1\nSTATUS=draining");
        assert_eq!(got[5], "WATCHDOG=1");
    }
}
