//! The shared call registry: the Call-ID -> node table in Redis, so every
//! proxy of a pair (and a proxy after a restart) routes the in-dialog
//! requests of a call another one set up.
//!
//! Keys and values are the ones of the Kamailio script sipedge replaces
//! (`SET call:<Call-ID> <node> EX 7200` on the 200, `GET` for in-dialog
//! requests), so a Kamailio and sipedge can share one Redis during a
//! migration, in both directions: the key is the prefix followed by the
//! Call-ID bytes as on the wire, the value the node's dispatcher URI as
//! configured (`sip:10.0.1.10:5080`), the expiry `[dialogs] ttl`.
//!
//! # Never in the way of a call
//! - Writes ([`Registry::set`], [`Registry::del`]) never wait: they go to
//!   one writer task through a bounded queue; a full queue drops the write
//!   (counted). The writer sends what has queued up as one pipeline.
//! - Reads ([`Registry::get`]) run on a task of their own (the request
//!   path defers the request to it, as it does for DNS) and give up after
//!   `[dialogs] registry_timeout`; an error or a timeout reads as "no
//!   entry", so the local table and the route hint go on serving.
//! - The connection is the `redis` crate's `ConnectionManager`: it comes
//!   back by itself. A command that meets a failed connection is tried
//!   once more on the fresh attempt the failure started, so the first read
//!   after Redis returns already works.
//! - Failures are counted per operation and logged when the registry goes
//!   from reachable to unreachable and back, not once per operation.
//!
//! # Drains that reach every proxy
//! The same Redis carries the operators' `dispatcher.set_state`: the
//! instance that takes the command writes it as the destination's key
//! (`<prefix>dispatcher:<set>:<uri>` = the state, `d` or `ap`...) and
//! publishes it on the channel `<prefix>dispatcher`
//! ([`Registry::publish_state`]); every instance listens there
//! ([`Registry::run_state_listener`]) and, each time it (re)subscribes,
//! reads the keys of its destinations, so one that was away catches up.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Writes sent to Redis as one pipeline, at most.
const WRITE_BATCH: usize = 256;

/// Reads waiting on Redis at once, at most: a burst of in-dialog requests
/// for unknown Call-IDs (or a sender making them up) while Redis is slow
/// does not pile up tasks; the reads over it count as dropped.
const MAX_READS: usize = 1024;

/// How long the state listener waits before subscribing again.
const RESUBSCRIBE: Duration = Duration::from_millis(500);

/// What the registry needs from the configuration (`[dialogs]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Put before the Call-ID to make the key (`call:`).
    pub prefix: String,
    /// `EX` of every write.
    pub ttl: Duration,
    /// The longest an operation may take (connecting included).
    pub timeout: Duration,
    /// Writes waiting for the writer task, at most.
    pub queue: usize,
}

/// Why the registry could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("call registry {url}: {source}")]
pub struct RegistryError {
    url: String,
    source: redis::RedisError,
}

/// A registry operation (the `op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Set,
    Del,
    /// An operator's state change shared with the other instances
    /// (written and published, or read back when subscribing).
    State,
}

impl Op {
    pub const ALL: &'static [Op] = &[Op::Get, Op::Set, Op::Del, Op::State];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Del => "del",
            Op::State => "state",
        }
    }
}

/// How an operation ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Done; for a read, an entry naming a pool member was found.
    Ok,
    /// A read found no entry.
    Miss,
    /// A read found an entry that names no pool member (another pool's
    /// node, a host name, garbage): treated as no entry.
    Foreign,
    /// Redis refused or the connection failed.
    Error,
    /// No answer within `registry_timeout`.
    Timeout,
    /// Not attempted: the write queue was full, or too many reads were
    /// waiting already.
    Dropped,
}

impl Outcome {
    pub const ALL: &'static [Outcome] = &[
        Outcome::Ok,
        Outcome::Miss,
        Outcome::Foreign,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Miss => "miss",
            Outcome::Foreign => "foreign",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Dropped => "dropped",
        }
    }
}

/// A write for the writer task.
enum Write {
    Set {
        key: Box<[u8]>,
        value: Box<str>,
    },
    Del {
        key: Box<[u8]>,
    },
    /// `SET key value` (no expiry: a drain lasts until undone) and
    /// `PUBLISH <channel> message`.
    State {
        key: Box<str>,
        value: Box<str>,
        message: Box<str>,
    },
}

impl Write {
    fn op(&self) -> Op {
        match self {
            Write::Set { .. } => Op::Set,
            Write::Del { .. } => Op::Del,
            Write::State { .. } => Op::State,
        }
    }
}

/// An operator's state change for a destination, as another instance
/// shared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedState {
    pub set: u32,
    pub uri: String,
    /// As `dispatcher.set_state` takes it (`d`, `ap`...).
    pub state: String,
    /// Published just now (apply it as is); `false`: read back from the
    /// destination's key when (re)subscribing (what was decided while
    /// this instance was away).
    pub live: bool,
}

/// Whether Redis answered the last operation (for the log and the gauge).
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The shared registry, one per proxy (held by [`super::Dialogs`]).
pub struct Registry {
    client: redis::Client,
    conn: ConnectionManager,
    /// The URL without credentials, for logs.
    shown: String,
    prefix: Box<[u8]>,
    ttl_secs: u64,
    timeout: Duration,
    writes: mpsc::Sender<Write>,
    /// The writer task's end, taken when it starts.
    queue: Mutex<Option<mpsc::Receiver<Write>>>,
    reads: Semaphore,
    counts: [[AtomicU64; Outcome::ALL.len()]; Op::ALL.len()],
    state: AtomicU8,
    /// A drop was logged since the writer last got through.
    drop_logged: AtomicBool,
    /// Tells this instance's own publications from the others'.
    instance: u64,
    /// `<prefix>dispatcher`: where state changes are published.
    channel: Box<str>,
}

impl Registry {
    /// Sets the registry up without connecting: the first operation
    /// connects, so a proxy starts (and serves) while Redis is down. Must
    /// run inside a tokio runtime.
    pub fn new(s: &Settings) -> Result<Registry, RegistryError> {
        let err = |source| RegistryError {
            url: redacted(&s.url),
            source,
        };
        let client = redis::Client::open(s.url.as_str()).map_err(err)?;
        // One connection attempt per (re)connect, no back-off of its own:
        // every operation is bounded by `timeout` anyway, and a failed
        // attempt is replaced by a fresh one at the next operation, so
        // the connection is back as soon as Redis is.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(s.timeout))
            .set_response_timeout(Some(s.timeout));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(err)?;
        let (writes, queue) = mpsc::channel(s.queue.max(1));
        let instance = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        Ok(Registry {
            client,
            conn,
            instance,
            channel: format!("{}dispatcher", s.prefix).into(),
            shown: redacted(&s.url),
            prefix: s.prefix.as_bytes().into(),
            ttl_secs: s.ttl.as_secs().max(1),
            timeout: s.timeout,
            writes,
            queue: Mutex::new(Some(queue)),
            reads: Semaphore::new(MAX_READS),
            counts: Default::default(),
            state: AtomicU8::new(UNKNOWN),
            drop_logged: AtomicBool::new(false),
        })
    }

    /// The URL, without a password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Operations of `op` that ended with `outcome` so far.
    pub fn count(&self, op: Op, outcome: Outcome) -> u64 {
        self.counts[op as usize][outcome as usize].load(Relaxed)
    }

    /// Whether Redis answered the last operation (false before the first).
    pub fn is_up(&self) -> bool {
        self.state.load(Relaxed) == UP
    }

    fn counted(&self, op: Op, outcome: Outcome) {
        self.counts[op as usize][outcome as usize].fetch_add(1, Relaxed);
    }

    fn key(&self, call_id: &[u8]) -> Box<[u8]> {
        [&self.prefix[..], call_id].concat().into()
    }

    /// `SET <prefix><call_id> <uri> EX <ttl>`, queued for the writer.
    pub fn set(&self, call_id: &[u8], uri: &str) {
        self.enqueue(Write::Set {
            key: self.key(call_id),
            value: uri.into(),
        });
    }

    /// `DEL <prefix><call_id>`, queued for the writer.
    pub fn del(&self, call_id: &[u8]) {
        self.enqueue(Write::Del {
            key: self.key(call_id),
        });
    }

    /// The key a destination's shared state lives under.
    fn state_key(&self, set: u32, uri: &str) -> String {
        format!("{}:{set}:{uri}", self.channel)
    }

    /// Shares an operator's `dispatcher.set_state` of destination `uri`
    /// in `set` (`state` as the command takes it) with the other
    /// instances; queued for the writer like every write.
    pub fn publish_state(&self, set: u32, uri: &str, state: &str) {
        self.enqueue(Write::State {
            key: self.state_key(set, uri).into(),
            value: state.into(),
            message: format!("{:x} {set} {state} {uri}", self.instance).into(),
        });
    }

    /// Listens for the other instances' state changes until `cancel`
    /// fires, handing each to `apply`: the live ones as published, and,
    /// each time the subscription is (re)made, the stored state of every
    /// destination `destinations` lists. A lost subscription is made
    /// again within a second or so of Redis answering.
    pub async fn run_state_listener(
        &self,
        cancel: CancellationToken,
        destinations: impl Fn() -> Vec<(u32, String)>,
        apply: impl Fn(SharedState),
    ) {
        use futures_util::StreamExt;
        loop {
            let subscribed = tokio::time::timeout(self.timeout, async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel[..]).await?;
                redis::RedisResult::Ok(pubsub)
            })
            .await;
            if let Ok(Ok(pubsub)) = subscribed {
                // Subscribed first, read second: nothing falls in between.
                self.catch_up(&destinations(), &apply).await;
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        _ = cancel.cancelled() => return,
                        m = messages.next() => m,
                    };
                    // None: the connection is gone; subscribe again.
                    let Some(msg) = msg else { break };
                    if let Some(change) = state_message(msg.get_payload_bytes(), self.instance) {
                        apply(change);
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RESUBSCRIBE) => {}
            }
        }
    }

    /// Reads every destination's stored state (one pipeline) for `apply`.
    async fn catch_up(&self, destinations: &[(u32, String)], apply: &impl Fn(SharedState)) {
        if destinations.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (set, uri) in destinations {
            pipe.cmd("GET").arg(self.state_key(*set, uri));
        }
        let stored = self
            .attempt(|mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async::<Vec<Option<String>>>(&mut c).await }
            })
            .await;
        match stored {
            Ok(values) => {
                self.counted(Op::State, Outcome::Ok);
                for ((set, uri), state) in destinations.iter().zip(values) {
                    if let Some(state) = state {
                        apply(SharedState {
                            set: *set,
                            uri: uri.clone(),
                            state,
                            live: false,
                        });
                    }
                }
            }
            Err(outcome) => self.counted(Op::State, outcome),
        }
    }

    fn enqueue(&self, w: Write) {
        let op = w.op();
        if self.writes.try_send(w).is_err() {
            self.counted(op, Outcome::Dropped);
            if !self.drop_logged.swap(true, Relaxed) {
                tracing::warn!(
                    "call registry {}: write queue full, dropping writes (counted)",
                    self.shown
                );
            }
        }
    }

    /// The node the registry has for `call_id`, if its value names an
    /// address `member` accepts (a pool member). `None` also when Redis
    /// fails or is slower than the timeout.
    pub async fn get(
        &self,
        call_id: &[u8],
        member: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        let Ok(_permit) = self.reads.try_acquire() else {
            self.counted(Op::Get, Outcome::Dropped);
            return None;
        };
        let key = self.key(call_id);
        let value = self
            .attempt(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("GET")
                        .arg(&key[..])
                        .query_async::<Option<Vec<u8>>>(&mut c)
                        .await
                }
            })
            .await;
        let value = match value {
            Ok(v) => v,
            Err(outcome) => {
                self.counted(Op::Get, outcome);
                return None;
            }
        };
        let Some(value) = value else {
            self.counted(Op::Get, Outcome::Miss);
            return None;
        };
        match value_addr(&value).filter(|a| member(*a)) {
            Some(node) => {
                self.counted(Op::Get, Outcome::Ok);
                Some(node)
            }
            None => {
                self.counted(Op::Get, Outcome::Foreign);
                tracing::debug!(
                    value = %String::from_utf8_lossy(&value),
                    "call registry entry names no pool member: ignored"
                );
                None
            }
        }
    }

    /// Runs `f` on the connection within the timeout, once more if it met
    /// a failed connection (the failure started a fresh attempt), and
    /// follows the up/down state. `Err`: [`Outcome::Error`] or
    /// [`Outcome::Timeout`], for the caller to count.
    async fn attempt<T, F, Fut>(&self, f: F) -> Result<T, Outcome>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let result = tokio::time::timeout(self.timeout, async {
            match f(self.conn.clone()).await {
                Err(e) if e.is_io_error() => f(self.conn.clone()).await,
                r => r,
            }
        })
        .await;
        match result {
            Ok(Ok(v)) => {
                self.reached();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.failed(&e);
                Err(Outcome::Error)
            }
            Err(_) => {
                self.failed(&format_args!("no answer within {:?}", self.timeout));
                Err(Outcome::Timeout)
            }
        }
    }

    fn reached(&self) {
        if self.state.swap(UP, Relaxed) == DOWN {
            tracing::info!("call registry {} reachable again", self.shown);
        }
    }

    fn failed(&self, why: &dyn std::fmt::Display) {
        if self.state.swap(DOWN, Relaxed) != DOWN {
            tracing::warn!(
                "call registry {} unreachable ({why}); calls go on with the local table \
                 and the route hints, failures are counted",
                self.shown
            );
        }
    }

    /// The writer task: sends the queued writes, in order, as pipelines,
    /// until `cancel` fires; then what is still queued, once. Run one per
    /// registry.
    pub async fn run_writer(&self, cancel: CancellationToken) {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut queue) = queue else { return };
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => break,
                n = queue.recv_many(&mut batch, WRITE_BATCH) => n,
            };
            if n == 0 {
                return;
            }
            self.write(&mut batch).await;
        }
        // The last BYEs' deletes, as far as one more round trip goes.
        queue.close();
        while let Ok(w) = queue.try_recv() {
            batch.push(w);
        }
        if !batch.is_empty() {
            self.write(&mut batch).await;
        }
    }

    /// Sends `batch` (drained) as one pipeline and counts each write.
    async fn write(&self, batch: &mut Vec<Write>) {
        let mut pipe = redis::pipe();
        for w in batch.iter() {
            match w {
                Write::Set { key, value } => pipe
                    .cmd("SET")
                    .arg(&key[..])
                    .arg(&value[..])
                    .arg("EX")
                    .arg(self.ttl_secs)
                    .ignore(),
                Write::Del { key } => pipe.cmd("DEL").arg(&key[..]).ignore(),
                Write::State {
                    key,
                    value,
                    message,
                } => pipe
                    .cmd("SET")
                    .arg(&key[..])
                    .arg(&value[..])
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&self.channel[..])
                    .arg(&message[..])
                    .ignore(),
            };
        }
        let done = self
            .attempt(|mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async::<()>(&mut c).await }
            })
            .await;
        let outcome = match done {
            Ok(()) => {
                self.drop_logged.store(false, Relaxed);
                Outcome::Ok
            }
            Err(outcome) => outcome,
        };
        for w in batch.drain(..) {
            self.counted(w.op(), outcome);
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.shown)
            .field("up", &self.is_up())
            .finish()
    }
}

/// The node address a registry value names: a SIP URI with an IP literal
/// host, as Kamailio's `$du` is stored (`sip:10.0.1.10:5080`), possibly
/// with parameters (`;transport=tcp`), a user part or angle brackets; the
/// port defaults to 5060 (5061 for sips). `None` for a host name (pool
/// members are addresses) or anything that is not such a URI.
pub fn value_addr(value: &[u8]) -> Option<SocketAddr> {
    use crate::sip::Scheme;
    let v = value.trim_ascii();
    let v = v
        .strip_prefix(b"<")
        .and_then(|v| v.strip_suffix(b">"))
        .unwrap_or(v);
    let uri = crate::sip::Uri::parse(v).ok()?;
    let default_port = match uri.scheme {
        Scheme::Sip => 5060,
        Scheme::Sips => 5061,
        _ => return None,
    };
    let ip = uri.host?.ip()?;
    Some(SocketAddr::new(ip, uri.port.unwrap_or(default_port)))
}

/// A published `<instance> <set> <state> <uri>`; `None` for one `own`
/// instance published (already applied) or anything malformed.
fn state_message(payload: &[u8], own: u64) -> Option<SharedState> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split_ascii_whitespace();
    let instance = u64::from_str_radix(parts.next()?, 16).ok()?;
    let set = parts.next()?.parse().ok()?;
    let state = parts.next()?.to_owned();
    let uri = parts.next()?.to_owned();
    (instance != own && parts.next().is_none()).then_some(SharedState {
        set,
        uri,
        state,
        live: true,
    })
}

/// `url` without its password (`redis://:secret@host` -> `redis://:***@host`).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_as_kamailio_stores_them_name_an_address() {
        let a: SocketAddr = "10.0.1.10:5080".parse().unwrap();
        for v in [
            &b"sip:10.0.1.10:5080"[..],
            b"sip:10.0.1.10:5080;transport=udp",
            b"sip:10.0.1.10:5080;transport=tcp;lr",
            b"<sip:10.0.1.10:5080>",
            b" sip:10.0.1.10:5080\r\n",
            b"sip:fs@10.0.1.10:5080",
            b"SIP:10.0.1.10:5080",
        ] {
            assert_eq!(value_addr(v), Some(a), "{}", String::from_utf8_lossy(v));
        }
        assert_eq!(
            value_addr(b"sip:10.0.1.10"),
            Some("10.0.1.10:5060".parse().unwrap())
        );
        assert_eq!(
            value_addr(b"sip:[2001:db8::1]:5080"),
            Some("[2001:db8::1]:5080".parse().unwrap())
        );
    }

    #[test]
    fn anything_else_names_no_node() {
        for v in [
            &b""[..],
            b"10.0.1.10:5080",
            b"sip:fs1.example:5080",
            b"tel:+15551230000",
            b"http://10.0.1.10:5080/",
            b"sip:10.0.1.10:99999",
            b"\xff\xfe",
        ] {
            assert_eq!(value_addr(v), None, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn state_messages_from_other_instances_only() {
        let msg = b"1f 1 d sip:10.0.1.10:5080";
        assert_eq!(
            state_message(msg, 7),
            Some(SharedState {
                set: 1,
                uri: "sip:10.0.1.10:5080".into(),
                state: "d".into(),
                live: true,
            })
        );
        assert_eq!(state_message(msg, 0x1f), None, "our own");
        for bad in [
            &b""[..],
            b"1f 1 d",
            b"zz 1 d sip:10.0.1.10:5080",
            b"1f x d sip:10.0.1.10:5080",
            b"1f 1 d sip:10.0.1.10:5080 extra",
            b"\xff 1 d sip:a",
        ] {
            assert_eq!(state_message(bad, 7), None, "{bad:?}");
        }
    }

    #[test]
    fn passwords_stay_out_of_the_logs() {
        assert_eq!(
            redacted("redis://:s3cret@10.0.0.9:6379/0"),
            "redis://:***@10.0.0.9:6379/0"
        );
        assert_eq!(
            redacted("redis://sipedge:s3cret@10.0.0.9/1"),
            "redis://sipedge:***@10.0.0.9/1"
        );
        assert_eq!(
            redacted("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
