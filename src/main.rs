//! The `sipedge` binary: command line, config loading, exit codes. The
//! logic lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sipedge::config::{self, Config, ConfigError};

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
}

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
        None => {
            let (name, loaded) = match &cli.config {
                Some(path) => (path.display().to_string(), config::read_config(path)),
                None => (
                    config::EXAMPLE_NAME.to_owned(),
                    config::from_toml(config::EXAMPLE_TOML, config::EXAMPLE_NAME),
                ),
            };
            match loaded {
                Ok(config) => run(&name, &config),
                Err(err) => bad_config(&err),
            }
        }
    }
}

fn run(name: &str, config: &Config) -> ExitCode {
    println!("config          {name}");
    println!("{config}");
    // Say so rather than pretend to serve: nothing is bound yet.
    eprintln!(
        "sipedge: config is valid, but the proxy core is not implemented yet \
         (issue 3); not listening, exiting"
    );
    ExitCode::SUCCESS
}

fn bad_config(err: &ConfigError) -> ExitCode {
    eprintln!("sipedge: {err}");
    ExitCode::from(EXIT_BAD_CONFIG)
}
