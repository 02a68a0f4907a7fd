//! The `sipedge` command: command line, logging, config loading, the
//! shutdown signal, exit codes. Serving is [`crate::server`]; the binary
//! (`src/main.rs`) only picks the allocator and calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Config, ConfigError};
use crate::notify::Notifier;
use crate::server::{self, Server, ServerError};
use clap::{Parser, Subcommand};

/// Exit status for a config that cannot be read or is invalid; clap uses
/// the same for a bad command line, so scripts see one "fix your input".
const EXIT_BAD_CONFIG: u8 = 2;

/// SIP edge proxy for a FreeSWITCH HA pool (replaces Kamailio's dispatcher).
#[derive(Debug, Parser)]
#[command(name = "sipedge", version)]
struct Cli {
    /// Config file (TOML). Without it the built-in proxy.toml.example is
    /// used, which listens on 127.0.0.1:5060.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log lines on stderr as text (coloured only on a terminal without
    /// NO_COLOR) or as one JSON object per line.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value_t,
        global = true
    )]
    log_format: crate::logging::Format,

    /// error, warn, info, debug, trace, off, or a filter directive such as
    /// "info,crate::proxy=debug". Given, it wins over RUST_LOG; without
    /// either: info.
    #[arg(long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,

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
    /// Read a Kamailio configuration and write the equivalent proxy.toml.
    ///
    /// Reads `listen` (and `advertise`), the core settings, the modparams
    /// of dispatcher, tm, rr, ctl, tls, pike and permissions,
    /// `ds_select_dst(SET, ALG)`, and the `#!define` / `#!substdef` /
    /// `#!ifdef` preprocessor. Every key written names the kamailio.cfg line
    /// it comes from; a setting with no sipedge equivalent is a warning, on
    /// stderr and as a `# WARNING` line; the routing script is listed by
    /// line, not translated. Exit 0 when written (warnings allowed), 2 when
    /// an input cannot be read or the output cannot be written.
    ///
    /// Example: sipedge migrate /etc/kamailio/kamailio.cfg -o /etc/sipedge/proxy.toml
    Migrate {
        /// The kamailio.cfg to read.
        #[arg(value_name = "KAMAILIO_CFG")]
        cfg: PathBuf,
        /// The dispatcher.list to point `[dispatcher] list_file` at (loaded
        /// to check it); default: the cfg's `list_file`, if it exists.
        #[arg(long, value_name = "DISPATCHER_LIST")]
        list: Option<PathBuf>,
        /// Where to write the proxy.toml; default: standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// NAME or NAME=VALUE, as Kamailio's `-A` (for `#!ifdef` blocks and
        /// defines given on Kamailio's command line); repeatable.
        #[arg(short = 'D', long = "define", value_name = "NAME[=VALUE]")]
        defines: Vec<String>,
        /// `[listen] advertise` to write, HOST[:PORT] (the VIP), over what
        /// the cfg says; needed when it listens on a wildcard address with
        /// no `advertise`.
        #[arg(long, value_name = "HOST[:PORT]")]
        advertise: Option<String>,
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

/// `sipedge generate man|completions DIR`: writes the man pages or the
/// shell completions of [`Cli`] into DIR (the Debian package is built with
/// them). Parsed apart from [`Cli`], so neither offers it.
#[derive(Debug, Parser)]
#[command(name = "sipedge generate")]
struct GenerateCli {
    #[arg(value_enum)]
    what: Generated,
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Generated {
    /// sipedge.1 and one page per subcommand (sipedge-ctl.1, ...).
    Man,
    /// sipedge.bash, _sipedge (zsh) and sipedge.fish.
    Completions,
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

/// Runs the command line the process was started with.
pub fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        let g = GenerateCli::parse_from(std::env::args_os().skip(1));
        return generate(g.what, &g.dir);
    }
    let cli = Cli::parse();
    if cli.config.is_some() && cli.command.is_some() {
        // `--config` is the proxy's; the subcommands name their own files
        // (clap's `args_conflicts_with_subcommands` would refuse the
        // global logging options too).
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--config runs the proxy: it cannot be used with a subcommand",
            )
            .exit();
    }
    if let Err(e) = crate::logging::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("sipedge: {e}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    match cli.command {
        Some(Command::CheckConfig { file }) => match config::read_config(&file) {
            Ok(config) => {
                for name in config.resolved_names() {
                    println!("resolved: {name}");
                }
                // Valid, but about to stop working: said on stderr, as at start.
                if let Some(server) = config.tls.as_ref().and_then(|t| t.server.as_ref()) {
                    crate::proxy::warn_expiring(&server.0, std::time::SystemTime::now());
                }
                println!("ok: {}", file.display());
                ExitCode::SUCCESS
            }
            Err(err) => bad_config(&err),
        },
        Some(Command::Migrate {
            cfg,
            list,
            output,
            defines,
            advertise,
        }) => migrate(
            &cfg,
            list.as_deref(),
            output.as_deref(),
            &defines,
            advertise,
        ),
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
    // Before any socket: a soft limit of 1024 under max_connections = 4096
    // would fail accepts with EMFILE long before the cap.
    if let Err(e) = crate::rlimit::ensure_nofile(crate::rlimit::fds_needed(config)) {
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
    // Under systemd (Type=notify): READY=1 once serving, the watchdog.
    let server = Server::new(config, bound, path)?.with_notifier(Notifier::from_env());
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
    use crate::admin::ctl::{format_list, format_ping, Client};
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
        let text = |r: Result<String, crate::admin::ctl::CtlError>| r.map_err(|e| e.to_string());
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

/// `sipedge migrate`: read the cfg (and the list), write the TOML, say
/// what was not mapped, and whether check-config takes the result.
fn migrate(
    cfg: &std::path::Path,
    list: Option<&std::path::Path>,
    output: Option<&std::path::Path>,
    defines: &[String],
    advertise: Option<String>,
) -> ExitCode {
    use crate::migrate::{Kamailio, ListChoice, Options};
    use std::path::Path;
    let fail = |file: &Path, why: String| {
        eprintln!("sipedge migrate: {}: {why}", file.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    };
    let text = match config::read_small_file(cfg) {
        Ok(t) => t,
        Err(e) => return fail(cfg, format!("cannot read it: {e}")),
    };
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let opts = Options {
        name: cfg.file_name().map_or_else(
            || cfg.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        base: absolute(cfg).parent().map(Path::to_path_buf),
        defines: defines
            .iter()
            .map(|d| match d.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (d.clone(), None),
            })
            .collect(),
        advertise,
    };
    let parsed = Kamailio::parse(&text, &opts);
    // A list is checked by loading it: the file and line of a bad entry.
    let load = |p: &Path| -> Result<(), String> {
        let text = config::read_small_file(p).map_err(|e| format!("cannot read it: {e}"))?;
        crate::dispatcher::list::parse(&text)
            .map(|_| ())
            .map_err(|e| format!("line {}: {}", e.line, e.reason))
    };
    let choice = match (list, parsed.list_file()) {
        (Some(l), _) => match load(l) {
            Ok(()) => ListChoice::Given(absolute(l).display().to_string()),
            Err(why) => return fail(l, why),
        },
        (None, Some(from_cfg)) => match load(Path::new(from_cfg)) {
            Ok(()) => ListChoice::FromCfg(from_cfg.to_owned()),
            Err(why) => ListChoice::Unusable(from_cfg.to_owned(), why),
        },
        (None, None) => ListChoice::None,
    };
    let migration = parsed.to_toml(&choice);
    for w in &migration.warnings {
        eprintln!("warning: {w}");
    }
    let name = match output {
        Some(out) => {
            if let Err(e) = std::fs::write(out, &migration.toml) {
                return fail(out, format!("cannot write it: {e}"));
            }
            out.display().to_string()
        }
        None => {
            print!("{}", migration.toml);
            "(standard output)".to_owned()
        }
    };
    // What check-config would say, so the operator knows what is left.
    let base = output
        .map(absolute)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(".").to_path_buf());
    let checked = config::from_toml(&migration.toml, &name)
        .and_then(|mut c| c.load_list_file(&base, &name).map(|()| c));
    match checked {
        Ok(_) => eprintln!(
            "sipedge migrate: {name}: written, {} warning(s); check-config accepts it",
            migration.warnings.len()
        ),
        Err(e) => eprintln!(
            "sipedge migrate: {name}: written, {} warning(s); check-config does not accept it \
             yet: {e}",
            migration.warnings.len()
        ),
    }
    ExitCode::SUCCESS
}

/// What the man page says beyond the options: the files the package
/// installs, the signals and the exit codes (roff).
const MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/sipedge/proxy.toml\fR
The configuration, read by the packaged systemd unit; every key is
described in \fI/usr/share/doc/sipedge/proxy.toml.example\fR.
.TP
\fI/etc/sipedge/dispatcher.list\fR
Kamailio's dispatcher.list format, when \fB[dispatcher] list_file\fR names it.
.TP
\fI/usr/lib/sysctl.d/50\-sipedge.conf\fR
The kernel's socket buffer limits, raised to what sipedge asks for.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Re\-read the destinations (\fB[dispatcher]\fR and its list) and the TLS
certificates; a file that does not validate is refused and the pool in
force stays.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR, \fBSIGQUIT\fR
Drain: new INVITEs get 503 while the INVITEs being decided finish, up to
10 s; established calls are not waited for (their in\-dialog requests
reach the node again after a restart through the route hint).
.TP
\fBSIGUSR1\fR
Log a summary of the state.
.SH EXIT STATUS
.TP
\fB0\fR
Stopped after a drain, or the subcommand succeeded.
.TP
\fB1\fR
A socket could not be bound, the proxy stopped on a failure, or a
\fBctl\fR command failed.
.TP
\fB2\fR
Bad command line or configuration; the message names the file, the key
and the reason.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter (default \fBinfo\fR).
.TP
\fBSIPEDGE_ADMIN_TOKEN_FILE\fR
The admin bearer token file for \fBsipedge ctl\fR.
.SH SEE ALSO
\fBkamcmd\fR(8), \fBkeepalived\fR(8)
"#;

/// `sipedge generate`: the package's man pages and completions, so they
/// always match the command line they describe.
fn generate(what: Generated, dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    use std::io::Write;
    let written = std::fs::create_dir_all(dir).and_then(|()| match what {
        Generated::Man => {
            // Subcommand pages first; then the main page again, with the
            // sections clap knows nothing about before its VERSION.
            clap_mangen::generate_to(Cli::command(), dir)?;
            let man = clap_mangen::Man::new(Cli::command().disable_help_subcommand(true));
            let mut page = Vec::new();
            man.render_title(&mut page)?;
            man.render_name_section(&mut page)?;
            man.render_synopsis_section(&mut page)?;
            man.render_description_section(&mut page)?;
            man.render_options_section(&mut page)?;
            man.render_subcommands_section(&mut page)?;
            page.write_all(MAN_EXTRA.as_bytes())?;
            man.render_version_section(&mut page)?;
            std::fs::write(dir.join(man.get_filename()), page)
        }
        Generated::Completions => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut Cli::command(), "sipedge", dir)?;
            }
            Ok(())
        }
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipedge generate: {}: {e}", dir.display());
            ExitCode::from(EXIT_START_FAILED)
        }
    }
}

fn bad_config(err: &ConfigError) -> ExitCode {
    eprintln!("sipedge: {err}");
    ExitCode::from(EXIT_BAD_CONFIG)
}
