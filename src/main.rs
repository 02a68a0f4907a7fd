//! The `sipedge` binary: command line, logging, config loading, the
//! shutdown signal, exit codes. Serving is [`sipedge::server`].
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sipedge::config::{self, Config, ConfigError};
use sipedge::server::{self, Server, ServerError};
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
        /// File holding the admin bearer token (`[admin] token_file`);
        /// also read from $SIPEDGE_ADMIN_TOKEN_FILE.
        #[arg(long, value_name = "FILE", env = "SIPEDGE_ADMIN_TOKEN_FILE")]
        token_file: Option<PathBuf>,
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
    /// dispatcher.set_duid_state STATE SET DUID|all: by the `duid` attribute.
    SetDuidState {
        state: String,
        set: u32,
        duid: String,
    },
    /// dispatcher.add SET URI [FLAGS [PRIORITY [ATTRS]]]: in memory only,
    /// until the next reload.
    Add {
        set: u32,
        uri: String,
        #[arg(default_value_t = 0)]
        flags: u32,
        #[arg(default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        attrs: Option<String>,
    },
    /// dispatcher.remove SET URI: in memory only, until the next reload.
    Remove { set: u32, uri: String },
    /// dispatcher.hash COUNT VALUE [VALUE2]: Kamailio's hash and its slot.
    Hash {
        #[arg(allow_negative_numbers = true)]
        count: i32,
        value: String,
        value2: Option<String>,
    },
    /// dispatcher.reload: re-read the destinations and the TLS certificates.
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
        Some(Command::Ctl {
            admin,
            token_file,
            action,
        }) => ctl(&admin, token_file.as_deref(), action),
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

/// Exit status when the proxy cannot start (a socket cannot be bound) or
/// stopped on a failure.
const EXIT_START_FAILED: u8 = 1;

fn run(name: &str, config: &Config, path: Option<PathBuf>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before any socket: a soft limit of 1024 under max_connections = 4096
    // would fail accepts with EMFILE long before the cap.
    if let Err(e) = sipedge::rlimit::ensure_nofile(sipedge::rlimit::fds_needed(config)) {
        tracing::warn!("cannot read or raise the open-file limit (RLIMIT_NOFILE): {e}");
    }
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
    match runtime.block_on(serve(config.clone(), path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServerError::Proxy(e)) => {
            eprintln!("sipedge: {name}: {e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(e) => {
            eprintln!("sipedge: {e}");
            ExitCode::from(EXIT_START_FAILED)
        }
    }
}

async fn serve(config: Config, path: Option<PathBuf>) -> Result<(), ServerError> {
    // Before anything is bound: a signal that came before its handler
    // would end the process with no drain.
    let shutdown = shutdown_signal();
    let bound = server::bind(&config)?;
    let server = Server::new(config, bound, path)?;
    let listening = server.listening();
    // Parseable by scripts and tests that start the binary on port 0.
    for addr in &listening.udp {
        println!("listening on udp:{addr}");
    }
    for addr in &listening.tcp {
        println!("listening on tcp:{addr}");
    }
    for addr in &listening.tls {
        println!("listening on tls:{addr}");
    }
    if let Some(addr) = listening.admin {
        println!("listening on admin:http://{addr}");
    }
    for socket in &listening.ctl {
        println!("listening on ctl:{socket}");
    }
    server.run(shutdown).await
}

/// Registers SIGTERM, SIGINT and SIGQUIT now, before the proxy answers
/// anything (a signal that arrives before its handler is in place would
/// kill the process with no drain), and returns the wait for any. SIGQUIT
/// drains too: its default (a core dump, no drain) drops calls, and an
/// operator who sends it wants the process gone, not a post-mortem.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        let quit = signal(SignalKind::quit()).ok();
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
                () = wait(quit) => {}
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
fn ctl(url: &str, token_file: Option<&std::path::Path>, action: CtlAction) -> ExitCode {
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
    let client = match Client::new(url).and_then(|c| match token_file {
        Some(path) => c.with_token_file(path),
        None => Ok(c),
    }) {
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
            CtlAction::SetDuidState { state, set, duid } => {
                text(client.set_duid_state(&state, set, &duid).await)
            }
            CtlAction::Add {
                set,
                uri,
                flags,
                priority,
                attrs,
            } => text(
                client
                    .add(set, &uri, flags, priority, attrs.as_deref())
                    .await,
            ),
            CtlAction::Remove { set, uri } => text(client.remove(set, &uri).await),
            CtlAction::Hash {
                count,
                value,
                value2,
            } => text(
                client
                    .hash(count, &value, value2.as_deref())
                    .await
                    .map(|h| format!("hashid: {}\nslot: {}", h.hashid, h.slot)),
            ),
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
