//! The `sipedge` binary: command line, config loading, exit codes. The
//! logic lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand};
use sipedge::config::{self, Config, ConfigError};
use sipedge::proxy::Proxy;
use sipedge::transport::{bind_tcp, bind_udp, TcpOptions, UdpOptions};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc, as Kamailio is best run with TLSF
/// (`-x tlsf`): per-call state is many small, short-lived allocations.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a config that cannot be read or is invalid; clap uses
/// the same for a bad command line, so scripts see one "fix your input".
const EXIT_BAD_CONFIG: u8 = 2;

/// SIP edge proxy for a FreeSWITCH HA pool (replaces Kamailio's dispatcher).
#[derive(Debug, Parser)]
#[command(name = "sipedge", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Config file (TOML). Without it the built-in proxy.toml.example is
    /// used, which listens on 127.0.0.1:5060.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate FILE and exit: 0 if it is valid, 2 if not.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Talk to a running sipedge's admin listener (the kamcmd habits).
    Ctl {
        /// Admin URL, e.g. http://127.0.0.1:9090 (`[admin] listen`).
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9090")]
        admin: String,
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Debug, Subcommand)]
enum CtlAction {
    /// dispatcher.list, as a table.
    List,
    /// dispatcher.set_state STATE SET URI|all, e.g. `d 1 sip:10.0.1.10:5080`
    /// drains a node; STATE is a, i, t or d, optionally followed by p.
    SetState {
        state: String,
        set: u32,
        uri: String,
    },
    /// dispatcher.reload: re-read the destinations.
    Reload,
    /// dispatcher.ping_active: `on`, `off`, or nothing to read it.
    PingActive { state: Option<String> },
}

/// Exit status of `ctl` when the command failed (connection or RPC fault).
const EXIT_CTL_FAILED: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match config::read_config(&file) {
            Ok(_) => {
                println!("ok: {}", file.display());
                ExitCode::SUCCESS
            }
            Err(err) => bad_config(&err),
        },
        Some(Command::Ctl { admin, action }) => ctl(&admin, action),
        None => {
            let (name, loaded) = match &cli.config {
                Some(path) => (path.display().to_string(), config::read_config(path)),
                None => (
                    config::EXAMPLE_NAME.to_owned(),
                    config::from_toml(config::EXAMPLE_TOML, config::EXAMPLE_NAME),
                ),
            };
            match loaded {
                Ok(config) => {
                    println!("config          {name}");
                    println!("{config}");
                    run(&name, &config, cli.config.clone())
                }
                Err(err) => bad_config(&err),
            }
        }
    }
}

/// Exit status when the proxy cannot start (a socket cannot be bound).
const EXIT_START_FAILED: u8 = 1;

/// How long a shutdown waits for INVITEs in progress before cancelling.
const DRAIN: Duration = Duration::from_secs(10);

fn run(name: &str, config: &Config, path: Option<PathBuf>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `[runtime] workers`, 1 by default: at SIP rates the per-datagram
    // work is small, and with more workers idle ones are woken to steal it
    // (a third of the CPU at 500 calls/s on 2 cores).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.workers)
        .thread_name("sipedge-worker")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sipedge: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    runtime.block_on(serve(name, config.clone(), path))
}

async fn serve(name: &str, config: Config, path: Option<PathBuf>) -> ExitCode {
    let shutdown = shutdown_signal();
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    for line in &config.dispatcher.skipped {
        tracing::warn!("dispatcher.list line left out (another set): {line}");
    }
    let mut sockets = Vec::new();
    for addr in &config.listen.udp {
        let options = UdpOptions {
            recv_buffer: config.listen.recv_buffer,
            send_buffer: config.listen.send_buffer,
            freebind: config.listen.freebind,
        };
        match bind_udp(*addr, options) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!("sipedge: cannot bind udp:{addr}: {e}");
                return ExitCode::from(EXIT_START_FAILED);
            }
        }
    }
    let mut listeners = Vec::new();
    for addr in &config.listen.tcp {
        let options = TcpOptions {
            freebind: config.listen.freebind,
            ..TcpOptions::default()
        };
        match bind_tcp(*addr, &options) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("sipedge: cannot bind tcp:{addr}: {e}");
                return ExitCode::from(EXIT_START_FAILED);
            }
        }
    }
    let admin = config.admin.clone();
    let proxy = match Proxy::with_tcp(config, sockets, listeners) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sipedge: {name}: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(path) = path {
        proxy.set_config_path(path);
    }
    for addr in proxy.local_addrs() {
        // Parseable by scripts and tests that start the binary on port 0.
        println!("listening on udp:{addr}");
    }
    for addr in proxy.tcp_addrs() {
        println!("listening on tcp:{addr}");
    }
    let cancel = CancellationToken::new();
    let server = tokio::spawn(proxy.clone().run(cancel.clone()));
    #[cfg(unix)]
    if let Some(hup) = hup {
        tokio::spawn(reload_on_sighup(proxy.clone(), hup));
    }
    if let Some(admin) = &admin {
        match tokio::net::TcpListener::bind(admin.listen).await {
            Ok(listener) => {
                if let Ok(addr) = listener.local_addr() {
                    println!("listening on admin:http://{addr}");
                }
                let backend: std::sync::Arc<dyn sipedge::admin::Backend> = proxy.clone();
                tokio::spawn(sipedge::admin::serve(listener, backend, cancel.clone()));
            }
            Err(e) => {
                eprintln!(
                    "sipedge: cannot bind the admin listener {}: {e}",
                    admin.listen
                );
                return ExitCode::from(EXIT_START_FAILED);
            }
        }
    }
    shutdown.await;
    tracing::info!("shutting down: new INVITEs get 503, draining calls in progress");
    proxy.begin_shutdown();
    let _ = tokio::time::timeout(DRAIN, proxy.drained()).await;
    cancel.cancel();
    let _ = server.await;
    ExitCode::SUCCESS
}

/// SIGHUP does what `dispatcher.reload` does: re-read the destinations.
/// The handler is registered by the caller before the proxy serves (the
/// default action of SIGHUP would end the process).
#[cfg(unix)]
async fn reload_on_sighup(proxy: std::sync::Arc<Proxy>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        let p = proxy.clone();
        // It reads files: off the SIP workers.
        match tokio::task::spawn_blocking(move || p.reload()).await {
            Ok(Ok(n)) => tracing::info!("SIGHUP: {n} destinations in force"),
            Ok(Err(e)) => tracing::warn!("SIGHUP: reload refused, pool unchanged: {e}"),
            Err(e) => tracing::warn!("SIGHUP: reload failed: {e}"),
        }
    }
}

/// Registers SIGTERM and SIGINT now, before the proxy answers anything (a
/// signal that arrives before its handler is in place would kill the
/// process with no drain), and returns the wait for either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `sipedge ctl`: one JSON-RPC exchange with the admin listener.
fn ctl(url: &str, action: CtlAction) -> ExitCode {
    use sipedge::admin::ctl::{format_list, format_ping, Client};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sipedge ctl: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_CTL_FAILED);
        }
    };
    let client = match Client::new(url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sipedge ctl: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let out = runtime.block_on(async {
        let text = |r: Result<String, sipedge::admin::ctl::CtlError>| r.map_err(|e| e.to_string());
        match action {
            CtlAction::List => text(client.list().await.map(|l| format_list(&l))),
            CtlAction::SetState { state, set, uri } => {
                text(client.set_state(&state, set, &uri).await)
            }
            CtlAction::Reload => text(client.reload().await),
            CtlAction::PingActive { state } => {
                let on = match state.as_deref() {
                    None => None,
                    Some("on" | "1") => Some(true),
                    Some("off" | "0") => Some(false),
                    Some(other) => {
                        return Err(format!("ping-active: {other:?} is not on, off, 1 or 0"))
                    }
                };
                text(client.ping_active(on).await.map(|p| format_ping(&p)))
            }
        }
    });
    match out {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sipedge ctl: {e}");
            ExitCode::from(EXIT_CTL_FAILED)
        }
    }
}

fn bad_config(err: &ConfigError) -> ExitCode {
    eprintln!("sipedge: {err}");
    ExitCode::from(EXIT_BAD_CONFIG)
}
