//! The log on stderr: text or JSON lines, the level, colour only where a
//! person reads it. journald stores a line with ANSI escapes as binary
//! (`journalctl` shows `[N B blob data]`), so colour needs a terminal and
//! no `NO_COLOR` (<https://no-color.org>).
//!
//! The filter: `--log-level` when given (a level or a full `EnvFilter`
//! directive), else `RUST_LOG`, else `info`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How each log line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One human-readable line per event; fields as `key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `message` and the event's fields (`call_id`, `node`, `peer`...).
    Json,
}

/// `--log-level` that is neither a level nor a filter directive.
#[derive(Debug, thiserror::Error)]
#[error(
    "--log-level {given:?}: expected error, warn, info, debug, trace, off \
     or a filter directive such as \"info,sipedge::proxy=debug\"{detail}"
)]
pub struct LevelError {
    given: String,
    detail: String,
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The filter for `level` (`--log-level`), else `rust_log` (`RUST_LOG`),
/// else `info`. A bare word must be a level: `EnvFilter` would take a
/// typo such as `verbose` for a module name and log nothing.
pub fn filter(level: Option<&str>, rust_log: Option<&str>) -> Result<EnvFilter, LevelError> {
    if let Some(given) = level {
        let bare = given.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(given)) {
            return Err(LevelError {
                given: given.to_owned(),
                detail: String::new(),
            });
        }
        return EnvFilter::builder()
            .parse(given.to_ascii_lowercase())
            .map_err(|e| LevelError {
                given: given.to_owned(),
                detail: format!(": {e}"),
            });
    }
    // A bad RUST_LOG keeps its good directives, as tracing always did.
    Ok(rust_log
        .filter(|v| !v.trim().is_empty())
        .map_or_else(|| EnvFilter::new("info"), EnvFilter::new))
}

/// Colour on stderr: only on a terminal, and not with `NO_COLOR` set to
/// anything but the empty string.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the process's log subscriber, writing to stderr.
pub fn init(format: Format, level: Option<&str>) -> Result<(), LevelError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(level, rust_log.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Text => {
            let ansi = colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            builder.with_ansi(ansi).init();
        }
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(colour(true, None));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }

    #[test]
    fn levels_and_directives_are_taken_and_typos_refused() {
        for ok in [
            "warn",
            "INFO",
            "off",
            "info,sipedge::proxy=debug",
            "sipedge=trace",
        ] {
            assert!(filter(Some(ok), None).is_ok(), "{ok}");
        }
        for bad in ["verbose", "warning", "info,sipedge=loud"] {
            assert!(filter(Some(bad), None).is_err(), "{bad}");
        }
        assert_eq!(
            filter(Some("warn"), Some("debug")).unwrap().to_string(),
            "warn"
        );
        assert_eq!(filter(None, Some("debug")).unwrap().to_string(), "debug");
        assert_eq!(filter(None, Some(" ")).unwrap().to_string(), "info");
        assert_eq!(filter(None, None).unwrap().to_string(), "info");
    }
}
