//! The destinations in force, swapped as a whole by `dispatcher.reload`
//! (or SIGHUP). Each message is handled against one snapshot, and a new
//! INVITE keeps its snapshot until it is decided, so node indices never
//! point into a different pool halfway; a node that stays across a reload
//! shares its health with the new pool.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use super::advertise::NodeAdvert;
use super::{health_config, Proxy, ProxyError};
use crate::config::{self, Config};
use crate::dispatcher::Dispatcher;
use crate::metrics::{DestinationMetrics, Metrics};
use crate::transport::{PerTransport, Transport};

/// One generation of the pool.
pub struct Pool {
    pub dispatcher: Dispatcher,
    /// Our Record-Route as reached over UDP and over TCP: all but the
    /// hint's value (per call and node, see [`super::hint`]) and the
    /// closing `>`.
    pub(super) record_route: PerTransport<Box<[u8]>>,
    /// Per-node series, by node index.
    pub(super) node_metrics: Vec<DestinationMetrics>,
    /// What each node may advertise in its 2xx, by node index.
    pub(super) adverts: Vec<NodeAdvert>,
    /// Counts reloads: a probe answered after one is not recorded into a
    /// node that now has another index.
    pub(super) generation: u64,
    /// The destination set id (`[dispatcher] set`).
    pub set: u32,
    /// The list file's other sets: probed, listed, settable; no calls.
    pub others: Vec<OtherSet>,
    /// The config this generation was built from: `dispatcher.add` and
    /// `dispatcher.remove` build the next one from it, edited.
    pub(super) source: Arc<Config>,
}

/// A destination set that receives no trunk calls.
pub struct OtherSet {
    pub id: u32,
    pub dispatcher: Dispatcher,
    pub(super) node_metrics: Vec<DestinationMetrics>,
}

impl Deref for Pool {
    type Target = Dispatcher;
    fn deref(&self) -> &Dispatcher {
        &self.dispatcher
    }
}

impl Pool {
    /// Builds generation `generation` from `[dispatcher]`; nodes also in
    /// `previous` keep their health.
    pub(super) fn build(
        cfg: &Config,
        sent_by: &PerTransport<String>,
        metrics: &Metrics,
        previous: Option<&Pool>,
        generation: u64,
    ) -> Result<Pool, ProxyError> {
        let dispatcher = Dispatcher::reloaded(
            &cfg.dispatcher,
            &health_config(&cfg.probe)?,
            previous.map(|p| &p.dispatcher),
        )?;
        let node_metrics = (0..dispatcher.len())
            .map(|i| metrics.register_destination(cfg.dispatcher.set, dispatcher.uri(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let before = previous.map_or(&[][..], |p| &p.adverts);
        let adverts = (0..dispatcher.len())
            .map(|i| NodeAdvert::new(&dispatcher, i, metrics, before))
            .collect::<Result<Vec<_>, _>>()?;
        let record_route = PerTransport::from_fn(|t| {
            // UDP is the default: no transport parameter.
            let param = match t {
                Transport::Udp => String::new(),
                t => format!("transport={t};"),
            };
            let hint = String::from_utf8_lossy(super::hint::PARAM);
            format!("<sip:{};{param}lr;{hint}=", sent_by[t])
                .into_bytes()
                .into()
        });
        let health = health_config(&cfg.probe)?;
        let mut others = Vec::new();
        for (id, dests) in &cfg.dispatcher.other_sets {
            let set_cfg = config::Dispatcher {
                algorithm: cfg.dispatcher.algorithm,
                destinations: dests.clone(),
                ..config::Dispatcher::default()
            };
            let before = previous.and_then(|p| p.others.iter().find(|o| o.id == *id));
            let dispatcher =
                Dispatcher::reloaded(&set_cfg, &health, before.map(|o| &o.dispatcher))?;
            let node_metrics = (0..dispatcher.len())
                .map(|i| metrics.register_destination(*id, dispatcher.uri(i)))
                .collect::<Result<Vec<_>, _>>()?;
            others.push(OtherSet {
                id: *id,
                dispatcher,
                node_metrics,
            });
        }
        Ok(Pool {
            dispatcher,
            record_route,
            node_metrics,
            adverts,
            generation,
            set: cfg.dispatcher.set,
            others,
            source: Arc::new(cfg.clone()),
        })
    }

    /// Our Record-Route for node `i`, as reached over `transport`, up to
    /// its hint's value (see [`super::forward::RecordRoute`]).
    pub(super) fn record_route(&self, i: usize, transport: Transport) -> Option<&[u8]> {
        (i < self.len()).then(|| &*self.record_route[transport])
    }

    /// Every set: (set id, its dispatcher, its per-node series); the one
    /// that takes calls first. `index` in [`Pool::set_at`] follows this.
    pub fn sets(&self) -> impl Iterator<Item = (u32, &Dispatcher, &[DestinationMetrics])> {
        std::iter::once((self.set, &self.dispatcher, self.node_metrics.as_slice())).chain(
            self.others
                .iter()
                .map(|o| (o.id, &o.dispatcher, o.node_metrics.as_slice())),
        )
    }

    /// The address destination `uri` (normalised) of set `set` is sent
    /// to now: what a reload keeps for a host name that does not resolve.
    pub fn address_of(&self, set: u32, uri: &str) -> Option<std::net::SocketAddr> {
        let (_, d, _) = self.sets().find(|(id, _, _)| *id == set)?;
        d.find_uri(uri).map(|i| d.addr(i))
    }

    /// Set number `index` in the order of [`Pool::sets`].
    pub fn set_at(&self, index: usize) -> Option<(u32, &Dispatcher, &[DestinationMetrics])> {
        self.sets().nth(index)
    }
}

/// Puts `[tls]`'s client side (trust, our client certificate) and the
/// identity each TLS destination must show in force, at start and on
/// every reload; `tls_verify = false` is logged each time, loudly.
pub(super) fn configure_tls_client(cfg: &Config, client: &crate::transport::TlsClient) {
    use crate::transport::PeerIdentity;
    if let Some(configs) = cfg.tls.as_ref().and_then(|t| t.client.as_ref()) {
        client.set_configs(configs.0.clone());
    }
    let mut peers = std::collections::HashMap::new();
    let sets = std::iter::once(&cfg.dispatcher.destinations)
        .chain(cfg.dispatcher.other_sets.iter().map(|(_, d)| d));
    for d in sets.flatten() {
        let (Some(addr), Some(Transport::Tls)) = (d.addr(), d.uri.transport) else {
            continue;
        };
        if !d.tls_verify {
            tracing::warn!(
                "{}: tls_verify = false: its certificate is not checked; anyone on the path \
                 can pose as this node (lab use only)",
                d.uri
            );
        }
        // RFC 5922 §7: a node named by a host name must show that name.
        let name = d.tls_server_name.as_deref().or(d.host_name());
        let id = PeerIdentity {
            server_name: name.map(Into::into),
            verify: d.tls_verify,
        };
        peers.insert(crate::dispatcher::canonical(addr), id);
    }
    client.set_peers(peers);
}

/// Why a reload was refused; the pool in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("a reload is already in progress")]
    InProgress,
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Pool(#[from] ProxyError),
}

/// What a reload needs besides the proxy: the config file it re-reads
/// (none: the built-in example), and a lock so two reloads never race.
#[derive(Debug, Default)]
pub(super) struct Reload {
    pub(super) path: std::sync::Mutex<Option<PathBuf>>,
    pub(super) one: std::sync::Mutex<()>,
    /// The config file as it was when it was named: what a reload
    /// compares the settings it cannot apply against.
    pub(super) at_start: std::sync::Mutex<Option<toml::Table>>,
}

impl Proxy {
    /// The pool in force (a cheap snapshot).
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.load_full()
    }

    /// The dispatcher in force (a snapshot that derefs to it).
    pub fn dispatcher(&self) -> Arc<Pool> {
        self.pool()
    }

    /// Where `dispatcher.reload` reads the destinations from: the config
    /// file the proxy was started with (its `[dispatcher]` section and the
    /// list file it names). Without one, reload re-reads the built-in
    /// example.
    pub fn set_config_path(&self, path: PathBuf) {
        if let Ok(mut t) = self.reload.at_start.lock() {
            *t = read_table(&path);
        }
        if let Ok(mut p) = self.reload.path.lock() {
            *p = Some(path);
        }
    }

    /// `dispatcher.reload`: re-reads the destinations (the `[dispatcher]`
    /// section and its list file) and swaps the pool, and the TLS
    /// certificates for new connections ([`Proxy::reload_tls`]). Nodes
    /// that stay keep their state; calls in progress keep their node and
    /// established connections their certificate. A config refused
    /// (a bad certificate file too) changes nothing. Other settings need a
    /// restart. Returns the number of destinations now in force.
    pub fn reload(&self) -> Result<usize, ReloadError> {
        let Ok(_one) = self.reload.one.try_lock() else {
            return Err(ReloadError::InProgress);
        };
        let Some(n) = self.notifier() else {
            return self.reload_now();
        };
        n.reloading();
        let result = self.reload_now();
        match &result {
            Ok(_) => n.reloaded(&format!("reloaded; {}", self.status_line())),
            Err(e) => n.reloaded(&format!("reload refused ({e}); {}", self.status_line())),
        }
        result
    }

    /// [`Proxy::reload`]'s work, under its lock.
    fn reload_now(&self) -> Result<usize, ReloadError> {
        let path = self.reload.path.lock().ok().and_then(|p| p.clone());
        let cfg = match &path {
            Some(path) => {
                config::reread_config(path, &|set, uri| self.pool().address_of(set, uri))?
            }
            None => config::from_toml(config::EXAMPLE_TOML, config::EXAMPLE_NAME)?,
        };
        let old = self.pool();
        let new = self.next_pool(&cfg, &old)?;
        let count = new.len();
        log_changes(&old, &new);
        if let Some(path) = &path {
            let at_start = self.reload.at_start.lock().ok().and_then(|t| t.clone());
            if let (Some(before), Some(now)) = (at_start, read_table(path)) {
                for key in needs_restart(&before, &now, &self.cfg, &cfg) {
                    tracing::warn!(
                        "{}: {key} changed: not applied by a reload, restart to apply it",
                        path.display()
                    );
                }
            }
        }
        self.install(&old, new);
        configure_tls_client(&cfg, self.transports.tls_client());
        if let Some(done) = self.reload_tls(&cfg) {
            tracing::info!("{done}");
        }
        tracing::info!(
            destinations = count,
            "dispatcher reloaded from {}",
            path.as_ref()
                .map_or(config::EXAMPLE_NAME.to_owned(), |p| p.display().to_string())
        );
        Ok(count)
    }

    /// The generation after `old`, built from `cfg`: nodes that stay keep
    /// their health.
    fn next_pool(&self, cfg: &Config, old: &Pool) -> Result<Pool, ProxyError> {
        Pool::build(
            cfg,
            self.me.sent_by(),
            &self.metrics,
            Some(old),
            old.generation + 1,
        )
    }

    /// Puts `new` in force in place of `old`: the series of nodes that
    /// left go with them.
    fn install(&self, old: &Pool, new: Pool) {
        for (id, d, series) in old.sets() {
            for (i, m) in series.iter().enumerate() {
                // By address, or by URI: a host name that now resolves
                // elsewhere is still that node (and its series).
                let stays = new.sets().any(|(nid, nd, _)| {
                    nid == id && (nd.find(d.addr(i)).is_some() || nd.find_uri(d.uri(i)).is_some())
                });
                if !stays {
                    self.metrics.remove_destination(m.clone());
                }
            }
        }
        for a in &old.adverts {
            if !new.adverts.iter().any(|n| n.uri() == a.uri()) {
                self.metrics.remove_misadvertised(a.metrics().clone());
            }
        }
        self.pool.store(Arc::new(new));
    }

    /// `dispatcher.add`: `entry` joins its set in memory (a new set if
    /// there is none with its id), until the next reload re-reads the
    /// file. It starts from its flags, like a list line, and is probed as
    /// `[probe] mode` says, the first time at once; the others keep their
    /// state.
    ///
    /// # Errors
    /// [`EditError::InProgress`] while a reload or another edit runs;
    /// [`EditError::Refused`] when sipedge cannot use the destination or
    /// the set already has it.
    pub fn add_destination(&self, entry: &crate::dispatcher::list::Entry) -> Result<(), EditError> {
        let mut dest = config::list_destination(entry).map_err(EditError::Refused)?;
        // Like Kamailio's `dispatcher.add`: resolved now, refused if not,
        // as the pool's config resolves its names.
        let source = self.pool().source.clone();
        if let Some(target) = dest.dns_target(source.dispatcher.dns_srv) {
            match crate::dns::resolve_now(&source.dns.servers, &[target]).pop() {
                Some(Ok(addr)) => dest.resolved = Some(addr),
                Some(Err(e)) => return Err(EditError::Refused(format!("{}: {e}", entry.uri))),
                None => return Err(EditError::Refused(format!("{}: not resolved", entry.uri))),
            }
        }
        self.edit_pool(|cfg| {
            let set = entry.set_id;
            let same = |d: &config::Destination| {
                d.uri.host == dest.uri.host && d.uri.port_or_default() == dest.uri.port_or_default()
            };
            let dests = if set == cfg.dispatcher.set {
                &mut cfg.dispatcher.destinations
            } else {
                match cfg
                    .dispatcher
                    .other_sets
                    .iter()
                    .position(|(id, _)| *id == set)
                {
                    Some(i) => &mut cfg.dispatcher.other_sets[i].1,
                    None => {
                        cfg.dispatcher.other_sets.push((set, Vec::new()));
                        let last = cfg.dispatcher.other_sets.len() - 1;
                        &mut cfg.dispatcher.other_sets[last].1
                    }
                }
            };
            if let Some(d) = dests.iter().find(|d| same(d)) {
                return Err(format!("set {set} already has {}", d.uri));
            }
            dests.push(dest.clone());
            Ok(())
        })?;
        if let Some(addr) = dest.addr() {
            self.probe_soon(entry.set_id, crate::dispatcher::canonical(addr));
        }
        Ok(())
    }

    /// `dispatcher.remove`: every destination of set `set` whose URI is
    /// `uri` (as shown by `dispatcher.list`, ignoring case) leaves the
    /// pool in memory; new calls no longer go there, calls in progress
    /// keep it. Returns how many went.
    ///
    /// # Errors
    /// [`EditError::Refused`] when the set has no such destination, or it
    /// is the last one of the set that takes calls.
    pub fn remove_destination(&self, set: u32, uri: &str) -> Result<usize, EditError> {
        let mut removed = 0;
        self.edit_pool(|cfg| {
            let matches = |d: &config::Destination| {
                d.written
                    .as_deref()
                    .is_some_and(|w| w.eq_ignore_ascii_case(uri))
                    || d.uri.to_string().eq_ignore_ascii_case(uri)
            };
            if set == cfg.dispatcher.set {
                let dests = &mut cfg.dispatcher.destinations;
                let before = dests.len();
                dests.retain(|d| !matches(d));
                removed = before - dests.len();
                if removed > 0 && dests.is_empty() {
                    return Err(format!(
                        "{uri} is the last destination of set {set}, which takes the calls"
                    ));
                }
            } else if let Some(i) = cfg
                .dispatcher
                .other_sets
                .iter()
                .position(|(id, _)| *id == set)
            {
                let dests = &mut cfg.dispatcher.other_sets[i].1;
                let before = dests.len();
                dests.retain(|d| !matches(d));
                removed = before - dests.len();
                if dests.is_empty() {
                    cfg.dispatcher.other_sets.remove(i);
                }
            }
            if removed == 0 {
                return Err(format!("destination {uri} not found in set {set}"));
            }
            Ok(())
        })?;
        Ok(removed)
    }

    /// Builds the next generation from the config in force as `edit`
    /// changes it, and puts it in force.
    fn edit_pool(
        &self,
        edit: impl FnOnce(&mut Config) -> Result<(), String>,
    ) -> Result<(), EditError> {
        let Ok(_one) = self.reload.one.try_lock() else {
            return Err(EditError::InProgress);
        };
        let old = self.pool();
        let mut cfg = Config::clone(&old.source);
        edit(&mut cfg).map_err(EditError::Refused)?;
        cfg.validate()
            .map_err(|v| EditError::Refused(v.rule.to_string()))?;
        let new = self
            .next_pool(&cfg, &old)
            .map_err(|e| EditError::Refused(e.to_string()))?;
        self.install(&old, new);
        Ok(())
    }
}

/// Why `dispatcher.add` or `dispatcher.remove` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("a reload is already in progress")]
    InProgress,
    #[error("{0}")]
    Refused(String),
}

/// The config file as a TOML table, if it reads and parses (it just did,
/// for the reload).
fn read_table(path: &std::path::Path) -> Option<toml::Table> {
    let text = std::fs::read_to_string(path).ok()?;
    text.parse().ok()
}

/// One log line per destination a reload adds, removes or changes (by
/// set and normalised URI), saying what changed.
fn log_changes(old: &Pool, new: &Pool) {
    for (id, d, _) in old.sets() {
        let after = new
            .sets()
            .find(|(nid, _, _)| *nid == id)
            .map(|(_, nd, _)| nd);
        for i in 0..d.len() {
            if after.and_then(|nd| nd.find_uri(d.uri(i))).is_none() {
                tracing::info!(set = id, uri = d.written(i), "reload: destination removed");
            }
        }
    }
    for (id, nd, _) in new.sets() {
        let before = old.sets().find(|(oid, _, _)| *oid == id).map(|(_, d, _)| d);
        for n in 0..nd.len() {
            let Some((d, i)) = before.and_then(|d| Some((d, d.find_uri(nd.uri(n))?))) else {
                tracing::info!(
                    set = id,
                    uri = nd.written(n),
                    address = %nd.addr(n),
                    flags = nd.status(n).flags().as_str(),
                    priority = nd.priority(n),
                    "reload: destination added"
                );
                continue;
            };
            let changes = crate::dispatcher::column_changes(d, i, nd, n);
            if !changes.is_empty() {
                tracing::info!(
                    set = id,
                    uri = nd.written(n),
                    "reload: destination changed: {}",
                    changes.join(", ")
                );
            }
        }
    }
}

/// The settings outside `[dispatcher]` that differ between the config
/// file at start (`before`, read as `old`) and now (`now`, read as
/// `new`), as dotted keys: a reload applies none of them. `[tls]`'s files
/// are reloaded, so only its two limits count. A key written differently
/// but read the same (a default made explicit) is not reported.
pub(super) fn needs_restart(
    before: &toml::Table,
    now: &toml::Table,
    old: &Config,
    new: &Config,
) -> Vec<String> {
    fn walk(path: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        // A table on one side only: each of its keys is a change.
        let empty = toml::Value::Table(toml::Table::new());
        let (a, b) = match (a, b) {
            (None, Some(toml::Value::Table(_))) => (Some(&empty), b),
            (Some(toml::Value::Table(_)), None) => (a, Some(&empty)),
            other => other,
        };
        match (a, b) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    walk(&format!("{path}.{k}"), a.get(k), b.get(k), out);
                }
            }
            (a, b) if a != b => out.push(path.to_owned()),
            _ => {}
        }
    }
    let differs = |section: &str| match section {
        "listen" => old.listen != new.listen,
        "failover" => old.failover != new.failover,
        "dialogs" => old.dialogs != new.dialogs,
        "runtime" => old.runtime != new.runtime,
        "probe" => old.probe != new.probe,
        "admin" => old.admin != new.admin,
        "tcp" => old.tcp != new.tcp,
        "tls" => old.tls != new.tls,
        "dns" => old.dns != new.dns,
        "security" => old.security != new.security,
        "limits" => old.limits != new.limits,
        "cluster" => old.cluster != new.cluster,
        _ => true,
    };
    let mut out = Vec::new();
    let sections: std::collections::BTreeSet<&String> = before.keys().chain(now.keys()).collect();
    for section in sections {
        if section == "dispatcher" || !differs(section) {
            continue;
        }
        walk(section, before.get(section), now.get(section), &mut out);
    }
    out.retain(|key| {
        !key.starts_with("tls.")
            || key == "tls.handshake_timeout"
            || key == "tls.max_handshakes_per_source"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> (toml::Table, Config) {
        (
            text.parse().unwrap(),
            config::from_toml(text, "t.toml").unwrap(),
        )
    }

    const BASE: &str = "[listen]\nudp = [\"127.0.0.1:5060\"]\nadvertise = \"127.0.0.1\"\n\
                        [[dispatcher.destination]]\nuri = \"sip:127.0.0.2\"\n";

    #[test]
    fn needs_restart_names_every_changed_key_outside_dispatcher() {
        let (t0, c0) = cfg(BASE);
        let changed = format!(
            "{}\n[[dispatcher.destination]]\nuri = \"sip:127.0.0.3\"\n\
             [failover]\nfr_timeout = \"3s\"\n[probe]\ninterval = \"5s\"\nmode = 2\n",
            BASE.replace("5060", "5070")
        );
        let (t1, c1) = cfg(&changed);
        assert_eq!(
            needs_restart(&t0, &t1, &c0, &c1),
            [
                "failover.fr_timeout",
                "listen.udp",
                "probe.interval",
                "probe.mode"
            ]
        );
        // A default written out is no change; neither is the same file.
        let (t2, c2) = cfg(&format!("{BASE}[failover]\nfr_timeout = \"2s\"\n"));
        assert_eq!(needs_restart(&t0, &t2, &c0, &c2), Vec::<String>::new());
        assert_eq!(needs_restart(&t0, &t0, &c0, &c0), Vec::<String>::new());
    }
}
