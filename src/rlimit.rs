//! The open-file limit (RLIMIT_NOFILE) against what the config may open:
//! under the usual soft limit of 1024, `[tcp] max_connections = 4096`
//! would make accepts (TCP and admin alike) fail with EMFILE long before
//! the cap. At start the soft limit is raised to what is needed, up to the
//! hard limit; when even that is short, a warning says so and how to fix
//! it.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::config::Config;

/// Descriptors beyond the sockets the config names: the runtime (epoll,
/// eventfds), DNS queries, outgoing connects in flight, stdio and logs.
pub const MARGIN: u64 = 128;

/// Descriptors the config may hold at once: every TCP connection it
/// admits, one per node (outgoing TCP), the admin connections, every
/// socket and listener, and [`MARGIN`].
pub fn fds_needed(config: &Config) -> u64 {
    let admin = config.admin.as_ref().map_or(0, |a| {
        let http = a
            .listen
            .map_or(0, |_| crate::admin::Limits::default().max_connections + 1);
        let ctl = a.ctl.len() * (crate::admin::CTL_MAX_CONNECTIONS + 1);
        http + ctl
    });
    let sockets = config.listen.udp.len() + config.listen.tcp.len();
    let nodes = config.dispatcher.destinations.len();
    [config.tcp.max_connections, nodes, admin, sockets]
        .into_iter()
        .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
        .fold(MARGIN, u64::saturating_add)
}

/// What [`ensure_nofile`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFile {
    /// The soft limit was high enough already.
    Enough { soft: u64 },
    /// The soft limit was raised.
    Raised { from: u64, to: u64 },
    /// Even the hard limit is below what is needed: raised to it, and
    /// warned about.
    Short { soft: u64, hard: u64, needed: u64 },
}

/// Raises the soft RLIMIT_NOFILE to `needed` (never lowers it, never past
/// the hard limit) and logs what it did.
pub fn ensure_nofile(needed: u64) -> nix::Result<NoFile> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let outcome = decide(soft, hard, needed);
    match outcome {
        NoFile::Enough { .. } => {}
        NoFile::Raised { to, .. } => setrlimit(Resource::RLIMIT_NOFILE, to, hard)?,
        NoFile::Short { hard, .. } if hard > soft => {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        }
        NoFile::Short { .. } => {}
    }
    match outcome {
        NoFile::Enough { .. } => {}
        NoFile::Raised { from, to } => {
            tracing::info!("open-file limit (RLIMIT_NOFILE) raised from {from} to {to}");
        }
        NoFile::Short { soft, hard, needed } => tracing::warn!(
            "open-file limit (RLIMIT_NOFILE) is {} (hard limit {hard}, was {soft}), but the \
             config may need {needed} ([tcp] max_connections plus sockets, admin and a margin \
             of {MARGIN}): TCP and admin accepts beyond it fail with EMFILE; raise the hard \
             limit (systemd LimitNOFILE=, ulimit -Hn) or lower [tcp] max_connections",
            hard.max(soft)
        ),
    }
    Ok(outcome)
}

/// The decision alone: raise to `needed` when the hard limit allows.
pub fn decide(soft: u64, hard: u64, needed: u64) -> NoFile {
    if soft >= needed {
        NoFile::Enough { soft }
    } else if hard >= needed {
        NoFile::Raised {
            from: soft,
            to: needed,
        }
    } else {
        NoFile::Short { soft, hard, needed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_what_is_needed_within_the_hard_limit() {
        assert_eq!(
            decide(65_536, 65_536, 4_300),
            NoFile::Enough { soft: 65_536 }
        );
        assert_eq!(
            decide(1024, 524_288, 4_300),
            NoFile::Raised {
                from: 1024,
                to: 4_300
            }
        );
        assert_eq!(
            decide(1024, 4096, 4_300),
            NoFile::Short {
                soft: 1024,
                hard: 4096,
                needed: 4_300
            }
        );
    }

    #[test]
    fn the_budget_counts_connections_sockets_and_admin() {
        let mut c = crate::config::from_toml(crate::config::EXAMPLE_TOML, "example").unwrap();
        let base = fds_needed(&c);
        // The example: 4096 connections, a UDP socket and a TCP listener,
        // two nodes, no admin.
        assert_eq!(base, 4096 + 2 + 2 + MARGIN);
        c.tcp.max_connections = 10_000;
        assert_eq!(fds_needed(&c), base + 10_000 - 4096);
    }
}
