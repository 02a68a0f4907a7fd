//! Serving: binds the listeners a config names ([`bind`]), builds the
//! proxy around them and runs it with the admin listener and the signal
//! handlers as one set of tasks ([`Server`], [`run`]) until a shutdown
//! future resolves; then drains calls in progress, stops every task and
//! waits for each. The binary only parses the command line and picks the
//! shutdown signals; tests can run the same code on port 0.
//!
//! # Signals
//! | signal | action |
//! |---|---|
//! | SIGTERM, SIGINT, SIGQUIT | drain and stop (the binary's shutdown future) |
//! | SIGHUP | re-read the destinations, as `dispatcher.reload` |
//! | SIGUSR1 | write a state summary to the log ([`Proxy::log_state`]) |
//! | SIGUSR2, SIGALRM | logged and ignored |
//!
//! Every one of them is handled from [`Server::new`] on: the default
//! action of most would end the process with no drain.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::proxy::{Proxy, ProxyError};
use crate::transport::{bind_stream, bind_tcp, bind_udp, TcpOptions, Transport, UdpOptions};

/// How long a shutdown waits for INVITEs in progress before cancelling.
pub const DRAIN: Duration = Duration::from_secs(10);

/// How long the tasks get to stop once cancelled (the admin listener lets
/// requests in flight finish for up to 5 s) before they are aborted.
pub const STOP: Duration = Duration::from_secs(8);

/// Why the server could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {source}")]
    BindUdp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {source}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the admin listener {addr}: {source}")]
    BindAdmin {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The config's content, not the host, is at fault.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("cannot register the admin listener with the runtime: {0}")]
    Admin(#[source] io::Error),
    /// `[admin] ctl`: in use, not a socket, or not bindable.
    #[error(transparent)]
    Ctl(#[from] crate::admin::CtlError),
    /// A task panicked before the shutdown.
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Every listener the config names, bound and not yet served.
#[derive(Debug)]
pub struct Bound {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
    pub tls: Vec<TcpListener>,
    pub admin: Option<TcpListener>,
    /// `[admin] ctl`, in the config's order.
    pub ctl: Vec<crate::admin::CtlListener>,
}

/// Binds `[listen] udp`, `[listen] tcp`, `[listen] tls`, `[admin] listen`
/// and `[admin] ctl`.
pub fn bind(config: &Config) -> Result<Bound, ServerError> {
    let udp_options = UdpOptions {
        recv_buffer: config.listen.recv_buffer,
        send_buffer: config.listen.send_buffer,
        freebind: config.listen.freebind,
    };
    let udp = config
        .listen
        .udp
        .iter()
        .map(|&addr| {
            bind_udp(addr, udp_options).map_err(|source| ServerError::BindUdp { addr, source })
        })
        .collect::<Result<_, _>>()?;
    let tcp_options = TcpOptions {
        freebind: config.listen.freebind,
        ..TcpOptions::default()
    };
    let tcp = config
        .listen
        .tcp
        .iter()
        .map(|&addr| {
            bind_tcp(addr, &tcp_options).map_err(|source| ServerError::BindTcp { addr, source })
        })
        .collect::<Result<_, _>>()?;
    let tls = config
        .listen
        .tls
        .iter()
        .map(|&addr| {
            bind_stream(addr, &tcp_options, Transport::Tls)
                .map_err(|source| ServerError::BindTcp { addr, source })
        })
        .collect::<Result<_, _>>()?;
    let admin = match config.admin.as_ref().and_then(|a| a.listen) {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| ServerError::BindAdmin { addr, source })?,
        ),
        None => None,
    };
    let ctl = match &config.admin {
        Some(a) => a
            .ctl
            .iter()
            .map(|socket| crate::admin::bind_ctl(socket, a.ctl_mode, a.ctl_owner()))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Bound {
        udp,
        tcp,
        tls,
        admin,
        ctl,
    })
}

/// The addresses a [`Server`] listens on (what the binary prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// `[admin] ctl`, port 0 resolved.
    pub ctl: Vec<crate::config::CtlSocket>,
}

/// A proxy built around its listeners, not serving yet.
pub struct Server {
    proxy: Arc<Proxy>,
    admin: Option<tokio::net::TcpListener>,
    ctl: Vec<crate::admin::CtlListener>,
    /// Who may use the RPC and `/metrics` (`[admin] token_file`).
    access: crate::admin::Access,
    /// Registered before anything serves: their default action would end
    /// the process.
    #[cfg(unix)]
    signals: Signals,
}

/// The signals handled beside the shutdown ones (see the module docs).
#[cfg(unix)]
struct Signals {
    hup: Option<tokio::signal::unix::Signal>,
    usr1: Option<tokio::signal::unix::Signal>,
    usr2: Option<tokio::signal::unix::Signal>,
    alrm: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn register() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let on = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot handle {name}: {e}");
                None
            }
        };
        Signals {
            hup: on(SignalKind::hangup(), "SIGHUP"),
            usr1: on(SignalKind::user_defined1(), "SIGUSR1"),
            usr2: on(SignalKind::user_defined2(), "SIGUSR2"),
            alrm: on(SignalKind::alarm(), "SIGALRM"),
        }
    }
}

impl Server {
    /// Builds the proxy (and starts accepting on its TCP listeners). A
    /// `config_path` is what a reload re-reads. Must run inside a tokio
    /// runtime.
    pub fn new(
        config: Config,
        bound: Bound,
        config_path: Option<PathBuf>,
    ) -> Result<Server, ServerError> {
        #[cfg(unix)]
        let signals = Signals::register();
        // `core.uptime` counts from here.
        crate::admin::started();
        for line in &config.dispatcher.skipped {
            tracing::warn!("dispatcher.list line left out (another set): {line}");
        }
        let access = match &config.admin {
            Some(admin) => {
                if admin.unauthenticated_beyond_loopback() {
                    tracing::warn!(
                        "[admin] listen = \"{}\" without a token (allow_unauthenticated): \
                         anyone who reaches it can drain every node",
                        admin.listen.map(|l| l.to_string()).unwrap_or_default()
                    );
                }
                match admin.token() {
                    Some(token) => crate::admin::Access::token(token, admin.metrics_require_token),
                    None => crate::admin::Access::open(),
                }
            }
            None => crate::admin::Access::open(),
        };
        let admin = bound
            .admin
            .map(tokio::net::TcpListener::from_std)
            .transpose()
            .map_err(ServerError::Admin)?;
        let proxy = Proxy::with_listeners(config, bound.udp, bound.tcp, bound.tls)?;
        if let Some(path) = config_path {
            proxy.set_config_path(path);
        }
        Ok(Server {
            proxy,
            admin,
            ctl: bound.ctl,
            access,
            #[cfg(unix)]
            signals,
        })
    }

    /// Tells systemd (`Type=notify`) through `notifier`: see
    /// [`Proxy::set_notifier`].
    pub fn with_notifier(self, notifier: crate::notify::Notifier) -> Server {
        self.proxy.set_notifier(notifier);
        self
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    pub fn listening(&self) -> Listening {
        Listening {
            udp: self.proxy.local_addrs(),
            tcp: self.proxy.tcp_addrs().to_vec(),
            tls: self.proxy.tls_addrs().to_vec(),
            admin: self.admin.as_ref().and_then(|l| l.local_addr().ok()),
            ctl: self
                .ctl
                .iter()
                .map(crate::admin::CtlListener::socket)
                .collect(),
        }
    }

    /// Serves until `shutdown` resolves (or a task fails): the proxy, the
    /// admin listener and the signal handlers, in one task set. Then new
    /// INVITEs get 503 while those in progress get up to [`DRAIN`] to be
    /// answered, every task is cancelled and awaited (aborted after
    /// [`STOP`]).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let proxy = self.proxy;
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(proxy.clone().run(cancel.clone()));
        for listener in self.ctl {
            let backend: Arc<dyn crate::admin::Backend> = proxy.clone();
            tasks.spawn(crate::admin::serve_ctl(listener, backend, cancel.clone()));
        }
        if let Some(listener) = self.admin {
            let backend: Arc<dyn crate::admin::Backend> = proxy.clone();
            tasks.spawn(crate::admin::serve_with_access(
                listener,
                backend,
                cancel.clone(),
                crate::admin::Limits::default(),
                self.access,
            ));
        }
        #[cfg(unix)]
        {
            let Signals {
                hup,
                usr1,
                usr2,
                alrm,
            } = self.signals;
            if let Some(hup) = hup {
                tasks.spawn(reload_on_sighup(proxy.clone(), hup, cancel.clone()));
            }
            if let Some(usr1) = usr1 {
                let p = proxy.clone();
                tasks.spawn(on_signal(usr1, cancel.clone(), move || p.log_state()));
            }
            for (signal, name) in [(usr2, "SIGUSR2"), (alrm, "SIGALRM")] {
                if let Some(signal) = signal {
                    tasks.spawn(on_signal(signal, cancel.clone(), move || {
                        tracing::info!("{name} received: ignored");
                    }));
                }
            }
        }
        // Every task runs until cancelled: one that ends before is a bug
        // (a panic), and serving on without it would hide it.
        let failed = tokio::select! {
            () = shutdown => None,
            Some(ended) = tasks.join_next() => Some(ended),
        };
        match &failed {
            None => {
                tracing::info!("shutting down: new INVITEs get 503, draining calls in progress")
            }
            Some(ended) => tracing::error!("a server task ended early ({ended:?}): shutting down"),
        }
        proxy.begin_shutdown();
        if failed.is_none() {
            let _ = tokio::time::timeout(DRAIN, proxy.drained()).await;
        }
        cancel.cancel();
        let mut result = match failed {
            Some(Err(e)) => Err(ServerError::Task(e)),
            _ => Ok(()),
        };
        let stopped = tokio::time::timeout(STOP, async {
            let mut first_error = None;
            while let Some(ended) = tasks.join_next().await {
                if let Err(e) = ended {
                    first_error.get_or_insert(e);
                }
            }
            first_error
        })
        .await;
        match stopped {
            Ok(Some(e)) if result.is_ok() => result = Err(ServerError::Task(e)),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("tasks still running {STOP:?} after the shutdown: aborted");
                tasks.shutdown().await;
            }
        }
        result
    }
}

/// [`Server::new`] then [`Server::run`].
pub async fn run(
    config: Config,
    bound: Bound,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::new(config, bound, config_path)?.run(shutdown).await
}

/// Runs `action` on every delivery of `signal` until `cancel` fires.
#[cfg(unix)]
async fn on_signal(
    mut signal: tokio::signal::unix::Signal,
    cancel: CancellationToken,
    action: impl Fn() + Send + 'static,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            got = signal.recv() => match got {
                Some(()) => action(),
                None => {
                    // No more signals can come; ending would read as a
                    // failure.
                    cancel.cancelled().await;
                    return;
                }
            },
        }
    }
}

/// SIGHUP does what `dispatcher.reload` does: re-read the destinations.
#[cfg(unix)]
async fn reload_on_sighup(
    proxy: Arc<Proxy>,
    mut hup: tokio::signal::unix::Signal,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            got = hup.recv() => if got.is_none() {
                // No more signals can come; ending would read as a failure.
                cancel.cancelled().await;
                return;
            },
        }
        let p = proxy.clone();
        // It reads files: off the SIP workers.
        match tokio::task::spawn_blocking(move || p.reload()).await {
            Ok(Ok(n)) => tracing::info!("SIGHUP: {n} destinations in force"),
            Ok(Err(e)) => {
                tracing::warn!("SIGHUP: reload refused, pool and certificates unchanged: {e}")
            }
            Err(e) => tracing::warn!("SIGHUP: reload failed: {e}"),
        }
    }
}
