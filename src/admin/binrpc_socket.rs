//! The BINRPC control sockets (`[admin] ctl`, Kamailio's `ctl` module):
//! binding them ([`bind_ctl`]: a stale unix socket replaced, a live one
//! refused, permissions and owner set) and serving them ([`serve_ctl`]:
//! one request after another per connection, each answered through the
//! same dispatch as the JSON-RPC endpoint, [`super::rpc::dispatch`]).
//! The wire format is [`super::binrpc`].
//!
//! No authentication, as in Kamailio: a unix socket is guarded by its
//! file permissions, a TCP or UDP one by staying on loopback (the config
//! refuses another address without `allow_unauthenticated`).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::binrpc::{self, Ordered};
use super::rpc::{self, code, ErrorObject};
use super::{Backend, Escaped};
use crate::config::{CtlSocket, FileMode};
use crate::metrics::AdminEvent;

/// Largest request body read: kamcmd's own cap is 128 KiB of body, our
/// methods take a few short strings.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Connections served at once per socket; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a connection may sit between requests (kamcmd's interactive
/// mode keeps one open while its user types).
pub const IDLE: Duration = Duration::from_secs(600);

/// How long the rest of a request may take once its first byte came.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Kamailio's `MAX_FAULT_LEN` less its NUL: longer fault texts are cut.
const MAX_FAULT: usize = 255;

/// Why a ctl socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "ctl socket {0}: another process answers on it (is sipedge or kamailio already \
         running?); stop it or choose another path"
    )]
    InUse(String),
    #[error("ctl socket {0}: the path exists and is not a socket; not replacing it")]
    NotASocket(String),
    #[error(
        "ctl socket {socket}: the directory {dir} does not exist (create it, or \
         RuntimeDirectory=sipedge in the systemd unit gives /run/sipedge)"
    )]
    NoDirectory { socket: String, dir: String },
    #[error("cannot bind ctl socket {socket}: {source}")]
    Bind {
        socket: String,
        #[source]
        source: io::Error,
    },
    #[error("ctl socket {socket}: cannot set its permissions or owner: {source}")]
    Permissions {
        socket: String,
        #[source]
        source: io::Error,
    },
}

/// A bound ctl socket, not served yet. A unix one removes its file when
/// dropped (if the file is still the one it bound).
#[derive(Debug)]
pub enum CtlListener {
    Unix(std::os::unix::net::UnixListener, Unlink),
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl CtlListener {
    /// What it listens on, port 0 resolved (what the binary prints).
    pub fn socket(&self) -> CtlSocket {
        match self {
            CtlListener::Unix(_, unlink) => CtlSocket::Unix(unlink.path.clone()),
            CtlListener::Tcp(l) => CtlSocket::Tcp(l.local_addr().unwrap_or_else(|_| unspecified())),
            CtlListener::Udp(s) => CtlSocket::Udp(s.local_addr().unwrap_or_else(|_| unspecified())),
        }
    }
}

fn unspecified() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Removes a unix socket's file on drop, unless another process has put
/// its own there since (same device and inode as bound).
#[derive(Debug)]
pub struct Unlink {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for Unlink {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds one `[admin] ctl` socket. A unix socket's path may hold a stale
/// socket of a process that died (replaced), but not a live one (refused:
/// two proxies would fight over the operator's commands) nor anything
/// else. Its permissions are `mode`, its owner `owner` (uid, gid) where
/// given.
///
/// # Errors
/// [`CtlError`]: the path is in use or not a socket, the bind failed, or
/// the permissions could not be set.
pub fn bind_ctl(
    socket: &CtlSocket,
    mode: FileMode,
    owner: (Option<u32>, Option<u32>),
) -> Result<CtlListener, CtlError> {
    let bind_error = |source| CtlError::Bind {
        socket: socket.to_string(),
        source,
    };
    match socket {
        CtlSocket::Tcp(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(bind_error)?;
            l.set_nonblocking(true).map_err(bind_error)?;
            Ok(CtlListener::Tcp(l))
        }
        CtlSocket::Udp(addr) => {
            let s = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
            s.set_nonblocking(true).map_err(bind_error)?;
            Ok(CtlListener::Udp(s))
        }
        CtlSocket::Unix(path) => {
            clear_stale(path, socket)?;
            let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
                match path
                    .parent()
                    .filter(|_| e.kind() == io::ErrorKind::NotFound)
                {
                    Some(dir) => CtlError::NoDirectory {
                        socket: socket.to_string(),
                        dir: dir.display().to_string(),
                    },
                    None => bind_error(e),
                }
            })?;
            let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
            // From here on, a failure removes the file again.
            let unlink = Unlink {
                path: path.clone(),
                id: (meta.dev(), meta.ino()),
            };
            let perm_error = |source| CtlError::Permissions {
                socket: socket.to_string(),
                source,
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))
                .map_err(perm_error)?;
            if owner != (None, None) {
                std::os::unix::fs::chown(path, owner.0, owner.1).map_err(perm_error)?;
            }
            l.set_nonblocking(true).map_err(bind_error)?;
            Ok(CtlListener::Unix(l, unlink))
        }
    }
}

/// Makes way for a unix socket at `path`: nothing there, or a socket no
/// one answers on (removed).
fn clear_stale(path: &Path, socket: &CtlSocket) -> Result<(), CtlError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(CtlError::NotASocket(socket.to_string()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(CtlError::InUse(socket.to_string())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket, "removing a stale ctl socket");
            std::fs::remove_file(path).map_err(|source| CtlError::Bind {
                socket: socket.to_string(),
                source,
            })
        }
        Err(source) => Err(CtlError::Bind {
            socket: socket.to_string(),
            source,
        }),
    }
}

/// Serves one ctl socket until `cancel`; then stops its connections and
/// removes a unix socket's file.
pub async fn serve_ctl(
    listener: CtlListener,
    backend: Arc<dyn Backend>,
    cancel: CancellationToken,
) {
    let shown = listener.socket().to_string();
    let result = match listener {
        CtlListener::Unix(l, _unlink) => match tokio::net::UnixListener::from_std(l) {
            // `_unlink` lives until this arm ends: the file goes with it.
            Ok(l) => {
                accept_loop(&shown, &cancel, &backend, || async {
                    l.accept().await.map(|(s, _)| s)
                })
                .await
            }
            Err(e) => Err(e),
        },
        CtlListener::Tcp(l) => match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                accept_loop(&shown, &cancel, &backend, || async {
                    l.accept().await.map(|(s, _)| s)
                })
                .await
            }
            Err(e) => Err(e),
        },
        CtlListener::Udp(s) => match tokio::net::UdpSocket::from_std(s) {
            Ok(s) => {
                datagrams(&s, &cancel, &backend).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        // Only at start: the runtime refused the socket. Ending makes the
        // server stop, as for the other listeners.
        tracing::error!(socket = %shown, "cannot serve the ctl socket: {e}");
    }
}

async fn accept_loop<S, F, Fut>(
    shown: &str,
    cancel: &CancellationToken,
    backend: &Arc<dyn Backend>,
    mut accept: F,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<S>>,
{
    tracing::info!(socket = %shown, "BINRPC ctl socket serving");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = accept() => accepted,
        };
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok(stream) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let backend = backend.clone();
                    conns.spawn(async move {
                        connection(stream, backend).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    backend.count(AdminEvent::CtlConnectionRefused);
                    tracing::warn!(
                        socket = %shown,
                        "ctl connection refused: {MAX_CONNECTIONS} already open"
                    );
                }
            },
            Err(e) => {
                // Out of descriptors and the like: wait a little rather
                // than spin; the socket stays.
                tracing::warn!(socket = %shown, "ctl accept failed: {e}");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    conns.shutdown().await;
    Ok(())
}

/// One stream connection: requests in order, each answered before the
/// next is read. Ends at EOF, at a timeout, or after answering bytes that
/// are not BINRPC (the stream cannot be resynchronised).
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, backend: Arc<dyn Backend>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let header = loop {
            match binrpc::parse_header(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    backend.count(AdminEvent::CtlBadRequest);
                    let _ = stream.write_all(&bad_request(0, &e)).await;
                    return;
                }
            }
            if !read_more(&mut stream, &mut buf, &mut chunk).await {
                return;
            }
        };
        if header.body_len > MAX_REQUEST {
            backend.count(AdminEvent::CtlBadRequest);
            let why = format!(
                "bad request: body of {} bytes, at most {MAX_REQUEST}",
                header.body_len
            );
            let _ = stream
                .write_all(&binrpc::encode_fault(header.cookie, 400, &why))
                .await;
            return;
        }
        while buf.len() < header.packet_len() {
            if !read_more(&mut stream, &mut buf, &mut chunk).await {
                return;
            }
        }
        let packet: Vec<u8> = buf.drain(..header.packet_len()).collect();
        let reply = answer(packet, header.cookie, backend.clone()).await;
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Reads what comes next into `buf`; false at EOF, error or timeout.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> bool {
    let wait = if buf.is_empty() {
        IDLE
    } else {
        REQUEST_TIMEOUT
    };
    match tokio::time::timeout(wait, stream.read(chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// A UDP ctl socket: one request per datagram, answered to its sender.
async fn datagrams(
    socket: &tokio::net::UdpSocket,
    cancel: &CancellationToken,
    backend: &Arc<dyn Backend>,
) {
    let mut buf = vec![0u8; MAX_REQUEST + 16];
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let Ok((n, peer)) = received else {
            // An ICMP error from an earlier reply, and the like.
            continue;
        };
        let datagram = &buf[..n];
        let reply = match binrpc::parse_header(datagram) {
            Ok(Some(h)) if h.packet_len() <= n => {
                answer(
                    datagram[..h.packet_len()].to_vec(),
                    h.cookie,
                    backend.clone(),
                )
                .await
            }
            Ok(Some(h)) => {
                backend.count(AdminEvent::CtlBadRequest);
                bad_request(h.cookie, &binrpc::Error::Truncated)
            }
            Ok(None) => {
                backend.count(AdminEvent::CtlBadRequest);
                bad_request(0, &binrpc::Error::Truncated)
            }
            Err(e) => {
                backend.count(AdminEvent::CtlBadRequest);
                bad_request(0, &e)
            }
        };
        let reply = if reply.len() > 65_507 {
            binrpc::encode_fault(
                0,
                500,
                "internal server error: the reply is too big for a datagram",
            )
        } else {
            reply
        };
        let _ = socket.send_to(&reply, peer).await;
    }
}

fn bad_request(cookie: u32, e: &binrpc::Error) -> Vec<u8> {
    binrpc::encode_fault(cookie, 400, &format!("bad request: {e}"))
}

/// Runs [`respond`] where blocking is allowed (a reload reads files).
async fn answer(packet: Vec<u8>, cookie: u32, backend: Arc<dyn Backend>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || respond(&packet, backend.as_ref()))
        .await
        .unwrap_or_else(|_| binrpc::encode_fault(cookie, 500, "internal server error"))
}

/// One whole request packet in, its reply or fault out: decode, dispatch
/// through the JSON-RPC method table, encode. Never panics on any input.
pub fn respond(packet: &[u8], backend: &dyn Backend) -> Vec<u8> {
    let cookie = binrpc::parse_header(packet)
        .ok()
        .flatten()
        .map_or(0, |h| h.cookie);
    let request = match binrpc::decode_request(packet) {
        Ok(r) => r,
        Err(e) => {
            backend.count(AdminEvent::CtlBadRequest);
            return bad_request(cookie, &e);
        }
    };
    tracing::debug!(method = %Escaped(&request.method), "BINRPC request");
    let params: Vec<Value> = request.params.iter().map(binrpc::to_json).collect();
    match rpc::dispatch(&request.method, &params, backend) {
        Ok(answer) => {
            // Through JSON text, which keeps the members in the order the
            // method wrote them.
            let ordered = serde_json::to_vec(&answer)
                .ok()
                .and_then(|text| serde_json::from_slice::<Ordered>(&text).ok());
            match ordered {
                Some(result) => binrpc::encode_reply(cookie, &binrpc::from_result(&result)),
                None => binrpc::encode_fault(cookie, 500, "internal server error"),
            }
        }
        Err(e) => {
            let (code, text) = fault(&request.method, &e);
            binrpc::encode_fault(cookie, code, &text)
        }
    }
}

/// A JSON-RPC error as Kamailio's ctl module would have sent it: an
/// unknown method is its `500 command NAME not found`, parameter errors
/// the dispatcher's `500 Invalid Parameters`; method faults keep their
/// code and message. The JSON-RPC `data` detail is not on this wire
/// (kamcmd would print it as a third value).
fn fault(method: &str, e: &ErrorObject) -> (i32, String) {
    let (code, text) = match e.code {
        code::METHOD_NOT_FOUND => (500, format!("command {method} not found")),
        c => (
            i32::try_from(c).ok().filter(|c| *c > 0).unwrap_or(500),
            e.message.clone(),
        ),
    };
    (code, cut(text, MAX_FAULT))
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::binrpc::{decode_body, parse_header, Kind, Record};
    use crate::admin::{BackendError, DestinationView, Readiness, Target};
    use crate::dispatcher::health::{SetState, Status};

    struct One;

    impl Backend for One {
        fn metrics_text(&self) -> String {
            String::new()
        }
        fn ready(&self) -> Readiness {
            Readiness::ready("")
        }
        fn destinations(&self) -> Vec<DestinationView> {
            vec![DestinationView::new(
                1,
                "sip:10.0.0.1:5060",
                Status::from_list_flags(0),
                0,
            )]
        }
        fn set_state(&self, set: u32, _: &Target, _: SetState) -> Result<usize, BackendError> {
            Err(BackendError::UnknownSet(set))
        }
        fn reload(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn ping_active(&self, _: Option<bool>) -> bool {
            true
        }
    }

    fn call(method: &str, params: &[Record]) -> (Kind, Vec<Record>) {
        let reply = respond(&binrpc::encode_request(42, method, params), &One);
        let h = parse_header(&reply).unwrap().unwrap();
        assert_eq!(h.cookie, 42);
        assert_eq!(h.packet_len(), reply.len());
        (h.kind, decode_body(&reply[h.header_len..]).unwrap())
    }

    #[test]
    fn faults_read_as_kamailios() {
        assert_eq!(
            call("nope.nope", &[]),
            (
                Kind::Fault,
                vec![
                    Record::Int(500),
                    Record::Str("command nope.nope not found".into())
                ]
            )
        );
        assert_eq!(
            call("dispatcher.set_state", &[Record::Str("ip".into())]),
            (
                Kind::Fault,
                vec![Record::Int(500), Record::Str("Invalid Parameters".into())]
            )
        );
        assert_eq!(
            call(
                "dispatcher.set_state",
                &[
                    Record::Str("ip".into()),
                    Record::Int(9),
                    Record::Str("all".into())
                ]
            ),
            (
                Kind::Fault,
                vec![Record::Int(500), Record::Str("State Update Failed".into())]
            )
        );
        assert_eq!(
            call("system.methodHelp", &[]).1,
            vec![Record::Int(400), Record::Str("Method Name Expected".into())]
        );
        let long = "x".repeat(1000);
        let (_, fault) = call(&long, &[]);
        assert!(matches!(&fault[1], Record::Str(s) if s.len() == MAX_FAULT));
    }

    #[test]
    fn results_come_as_records() {
        let (kind, records) = call("dispatcher.reload", &[]);
        assert_eq!(kind, Kind::Reply);
        assert_eq!(records, [Record::Str(rpc::RELOAD_OK.into())]);
        let (_, records) = call("core.echo", &[Record::Str("a".into()), Record::Int(5)]);
        assert_eq!(records, [Record::Str("a".into()), Record::Str("5".into())]);
        let (_, names) = call("system.listMethods", &[]);
        assert!(names.contains(&Record::Str("dispatcher.list".into())));
        assert!(names.contains(&Record::Str("core.uptime".into())));
        let (_, help) = call("system.methodHelp", &[Record::Str("core.echo".into())]);
        assert_eq!(help, [Record::Str("Returns back its parameters.".into())]);
        let (_, uptime) = call("core.uptime", &[]);
        let Record::Struct(members) = &uptime[0] else {
            panic!("{uptime:?}")
        };
        let names: Vec<_> = members.iter().map(|m| m.name.as_deref().unwrap()).collect();
        assert_eq!(names, ["now", "up_since", "uptime"]);
    }

    #[test]
    fn unix_sockets_replace_stale_refuse_live_and_go_on_drop() {
        let dir = std::env::temp_dir().join(format!("sipedge-ctl-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let socket = CtlSocket::Unix(path.clone());
        let bind = || bind_ctl(&socket, FileMode(0o640), (None, None));

        // Stale: a socket nobody answers on.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(matches!(bind(), Err(CtlError::InUse(_))));
        drop(live);
        assert!(!path.exists(), "removed on drop");

        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(bind(), Err(CtlError::NotASocket(_))));
        assert!(path.exists(), "a file is left alone");
        std::fs::remove_file(&path).unwrap();

        let elsewhere = CtlSocket::Unix(dir.join("no/such/dir/ctl.sock"));
        let err = bind_ctl(&elsewhere, FileMode::default(), (None, None)).unwrap_err();
        assert!(matches!(err, CtlError::NoDirectory { .. }), "{err}");

        // A file replaced behind its back is not removed.
        let l = bind().unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(l);
        assert!(path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_is_a_400_fault() {
        for bytes in [
            &b"hello"[..],
            &[0xA1, 0x00, 0x05, 0x01, 0x10],
            &[0xA1, 0x00, 0x02, 0x01, 0x10, 0x05],
        ] {
            let reply = respond(bytes, &One);
            let h = parse_header(&reply).unwrap().unwrap();
            assert_eq!(h.kind, Kind::Fault, "{bytes:02x?}");
            assert_eq!(
                decode_body(&reply[h.header_len..]).unwrap()[0],
                Record::Int(400)
            );
        }
    }
}
