//! The proxy as the admin interface sees it ([`crate::admin::Backend`]):
//! metrics, readiness, the pool for `dispatcher.list`, and the operator's
//! commands; and the state summary SIGUSR1 writes to the log.

use super::{EditError, Proxy, ReloadError};
use crate::admin::{AttrsView, Backend, BackendError, DestinationView, Readiness, Target};
use crate::dispatcher::health::SetState;

impl Backend for Proxy {
    fn metrics_text(&self) -> String {
        self.metrics().encode()
    }

    fn ready(&self) -> Readiness {
        match Proxy::ready(self) {
            Ok(()) => {
                let pool = self.pool();
                let active = (0..pool.len())
                    .filter(|&i| pool.accepts_new_calls(i))
                    .count();
                let paused = if Proxy::ping_active(self, None) {
                    ""
                } else {
                    "probing paused (standby): "
                };
                Readiness::ready(format!(
                    "{paused}{active} of {} destinations take calls",
                    pool.len()
                ))
            }
            Err(why) => Readiness::not_ready(why),
        }
    }

    fn destinations(&self) -> Vec<DestinationView> {
        let pool = self.pool();
        let mut out = Vec::new();
        for (set, d, _) in pool.sets() {
            // Kamailio lists a set highest priority first (ties as loaded).
            let mut order: Vec<usize> = (0..d.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(d.priority(i)));
            out.extend(order.into_iter().map(|i| {
                DestinationView {
                    attrs: d.attrs(i).and_then(|a| a.rpc()).map(AttrsView::from),
                    latency: d.latency(i),
                    dlgload: (d.algorithm() == crate::dispatcher::Algorithm::CallLoad)
                        .then(|| self.tables.dialogs.pinned_to(d.addr(i))),
                    ..DestinationView::new(set, d.written(i), d.status(i), d.priority(i))
                }
            }));
        }
        out
    }

    fn set_state(&self, set: u32, target: &Target, state: SetState) -> Result<usize, BackendError> {
        let pool = self.pool();
        let Some((_, d, _)) = pool.sets().find(|(id, d, _)| *id == set && !d.is_empty()) else {
            return Err(BackendError::UnknownSet(set));
        };
        let targets: Vec<usize> = match target {
            Target::All => (0..d.len()).collect(),
            Target::Duid(duid) => {
                let i = (0..d.len())
                    .find(|&i| {
                        d.attrs(i)
                            .and_then(|a| a.duid())
                            .is_some_and(|x| x.eq_ignore_ascii_case(duid))
                    })
                    .ok_or_else(|| BackendError::UnknownDuid {
                        set,
                        duid: duid.clone(),
                    })?;
                vec![i]
            }
            Target::Uri(uri) => {
                let i = (0..d.len()).find(|&i| d.named(i, uri)).ok_or_else(|| {
                    BackendError::UnknownDestination {
                        set,
                        uri: uri.clone(),
                    }
                })?;
                vec![i]
            }
        };
        for &i in &targets {
            d.set_state(i, state);
            // The other instances drain (or undrain) it too.
            self.publish_state(set, d.uri(i), state);
        }
        Ok(targets.len())
    }

    fn reload(&self) -> Result<(), BackendError> {
        match Proxy::reload(self) {
            Ok(_) => Ok(()),
            Err(ReloadError::InProgress) => Err(BackendError::ReloadInProgress),
            Err(e) => Err(BackendError::Reload(Box::new(e))),
        }
    }

    fn ping_active(&self, set: Option<bool>) -> bool {
        let before = Proxy::ping_active(self, None);
        if let Some(on) = set {
            Proxy::ping_active(self, Some(on));
        }
        before
    }

    fn add_destination(&self, entry: &crate::dispatcher::list::Entry) -> Result<(), BackendError> {
        Proxy::add_destination(self, entry).map_err(edit_error)
    }

    fn remove_destination(&self, set: u32, uri: &str) -> Result<usize, BackendError> {
        Proxy::remove_destination(self, set, uri).map_err(edit_error)
    }

    fn count(&self, event: crate::metrics::AdminEvent) {
        self.metrics.admin_event(event);
    }
}

fn edit_error(e: EditError) -> BackendError {
    match e {
        EditError::InProgress => BackendError::ReloadInProgress,
        EditError::Refused(why) => BackendError::Refused(why),
    }
}

impl Proxy {
    /// Writes what an operator asks a Kamailio for with `kill -USR1`
    /// (and `kamcmd dispatcher.list`, `tm.stats`, `core.tcp_info`) to the
    /// log: readiness, table sizes, TCP connections, then one line per
    /// destination with its `FLAGS` and pinned calls.
    pub fn log_state(&self) {
        let (client, server) = self.transaction_counts();
        let ready = match Proxy::ready(self) {
            Ok(()) => "ready".to_owned(),
            Err(why) => format!("not ready: {why}"),
        };
        tracing::info!(
            ready = %ready,
            probing = Proxy::ping_active(self, None),
            dialogs = self.dialogs().len(),
            client_transactions = client,
            invites = server,
            tcp_connections = self.tcp().connections(),
            "state summary"
        );
        let pool = self.pool();
        for (set, d, _) in pool.sets() {
            for i in 0..d.len() {
                tracing::info!(
                    set,
                    uri = d.written(i),
                    flags = d.status(i).flags().as_str(),
                    calls = self.dialogs().pinned_to(d.addr(i)),
                    "state summary: destination"
                );
            }
        }
    }
}
