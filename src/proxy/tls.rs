//! Certificates on reload: what SIGHUP and `dispatcher.reload` do to
//! TLS. The config was read and checked whole before (a bad file refuses
//! the reload, and nothing changes); here the identities built from it
//! are put in force for new connections, while established ones keep the
//! identity they were made with.

use std::time::{Duration, SystemTime};

use super::Proxy;
use crate::config::Config;
use crate::transport::tls::ServerIdentity;

/// A certificate closer than this to its end is warned about at start and
/// on every reload (the alert in `deploy/prometheus/alerts.yml`
/// uses the same 14 days).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

impl Proxy {
    /// Puts `cfg`'s TLS identities in force for new connections: the
    /// server side's (`[tls] certificate`, `key`, `client_ca`, `crl`).
    /// The outbound side's client config belongs here too, rebuilt from
    /// the same `cfg` in the same reload. Returns what changed, for the
    /// reload's log line.
    pub fn reload_tls(&self, cfg: &Config) -> Option<String> {
        let inbound = self.transports.tls_inbound()?;
        let Some(server) = cfg.tls.as_ref().and_then(|t| t.server.as_ref()) else {
            tracing::warn!(
                "reload: [tls] is gone from the config, but the TLS listeners stay until a \
                 restart: they keep serving the certificate they have"
            );
            return None;
        };
        warn_expiring(&server.0, SystemTime::now());
        inbound.replace(server.0.clone());
        let crl = server.0.crl.iter().map(|c| c.file.as_str());
        let files: Vec<&str> = server
            .0
            .expiries
            .iter()
            .map(|e| e.file.as_str())
            .chain(crl)
            .collect();
        Some(format!("TLS identity reloaded from {}", files.join(", ")))
    }
}

/// Logs (at start, on every reload, and in `check-config`) each
/// certificate file that has expired, or will within
/// [`EXPIRY_WARNING`], and a CRL file past its `nextUpdate` (CRLs are
/// short-lived and refreshed by the operator's own job, so only a stale
/// one is worth a line: it refuses clients).
pub(crate) fn warn_expiring(identity: &ServerIdentity, now: SystemTime) {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if let Some(crl) = identity.crl.as_ref().filter(|c| c.next_update <= now) {
        tracing::warn!(
            "tls crl {} is past its nextUpdate: clients whose certificates its CAs issued are \
             refused until a fresh CRL is in the file and sipedge is reloaded",
            crl.file
        );
    }
    for e in &identity.expiries {
        let left = e.not_after.saturating_sub(now);
        let (kind, file) = (e.certificate, &e.file);
        if left <= 0 {
            tracing::warn!("tls {kind} certificate {file} has expired");
        } else if left.unsigned_abs() < EXPIRY_WARNING.as_secs() {
            tracing::warn!(
                "tls {kind} certificate {file} expires in {} days",
                left / (24 * 3600)
            );
        }
    }
}
