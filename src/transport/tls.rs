//! SIP over TLS (RFC 3261 §26.2, RFC 5630): the server side. Our
//! identity (certificate chain and key, optionally the CAs and CRLs that
//! client certificates are checked against; checked at start, swapped on
//! reload) and the listeners, whose accepted connections, once the
//! handshake is done, run the same stream machinery as TCP (`tcp.rs`):
//! framing, CRLF keep-alives, idle and message timeouts, the connection
//! caps.
//!
//! rustls with the ring provider; TLS 1.2 and 1.3 only.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

use super::tcp::{source, RefusalLog};
use super::{TcpTransport, Transport};

/// Which `[tls]` file a [`TlsSetupError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    Certificate,
    Key,
    ClientCa,
    Crl,
}

/// Why our identity cannot be used: which file, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct TlsSetupError {
    pub file: PemFile,
    pub reason: String,
}

/// The TLS versions sipedge speaks: 1.2 as the floor (RFC 8996 retired
/// 1.0 and 1.1; carriers' SBCs all do 1.2).
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider every TLS config here uses: ring, which builds from
/// the registry with no C toolchain beyond cc. rustls 0.23.48 deprecates
/// it for lacking post-quantum key exchange (X25519MLKEM768); moving to
/// aws-lc-rs is this one function and the Cargo features.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The `[tls]` files of the server side, read: contents, and the path
/// each was read from (for the expiry metric's `file` label).
#[derive(Debug, Clone, Copy)]
pub struct ServerFiles<'a> {
    /// PEM chain, leaf first.
    pub chain: (&'a str, &'a [u8]),
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: &'a [u8],
    /// PEM bundle of the CAs client certificates must chain to (mutual
    /// TLS); `None`: no client certificate asked for.
    pub client_ca: Option<(&'a str, &'a [u8])>,
    /// PEM CRLs the client's certificate is checked against.
    pub crl: Option<(&'a str, &'a [u8])>,
}

/// When a configured certificate file stops being valid: the earliest
/// `notAfter` of the certificates in it (a chain is only as valid as its
/// first certificate to expire; a CA bundle's alert should fire on any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// What it is, as the metric's `certificate` label: `server`,
    /// `client_ca`.
    pub certificate: &'static str,
    /// The file, as configured and resolved.
    pub file: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// When `[tls] crl` goes stale: the earliest `nextUpdate` of its CRLs.
/// Past it, rustls (as OpenSSL's `CRL_CHECK`) refuses every client whose
/// issuer's CRL it is, until a fresh file is reloaded. CRLs live days, not
/// years, so this is watched apart from the certificates' expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlUpdate {
    /// The file, as configured and resolved.
    pub file: String,
    /// Unix seconds.
    pub next_update: i64,
}

/// Our server identity, built from [`ServerFiles`]: what the listeners
/// serve, and the expiry of each file's certificates.
pub struct ServerIdentity {
    pub config: Arc<rustls::ServerConfig>,
    pub expiries: Vec<CertExpiry>,
    /// `[tls] crl`'s next update; `None` without a CRL, or when none of
    /// its CRLs has a `nextUpdate` (optional in X.509 v2 CRLs).
    pub crl: Option<CrlUpdate>,
    /// Client certificates required (`client_ca`).
    pub mutual: bool,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the config's own Debug: it would walk the key material.
        f.debug_struct("ServerIdentity")
            .field("expiries", &self.expiries)
            .field("crl", &self.crl)
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

/// The items of one kind (certificates, CRLs) in a PEM file. Refused,
/// with the reason, when the file is not `what` (e.g. "PEM certificates")
/// or holds none (`missing` says what to give).
pub(super) fn pem_items<T: PemObject>(
    pem: &[u8],
    what: &str,
    missing: &str,
) -> Result<Vec<T>, String> {
    let items = T::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not {what}: {e}"))?;
    if items.is_empty() {
        return Err(missing.to_owned());
    }
    Ok(items)
}

/// The certificates of a PEM file, refused when there are none.
fn certificates(pem: &[u8], file: PemFile) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let missing = match file {
        PemFile::ClientCa => {
            "no \"BEGIN CERTIFICATE\" block; give the PEM certificates of the CAs client \
             certificates are issued by"
        }
        _ => "no \"BEGIN CERTIFICATE\" block; give the PEM chain, leaf first",
    };
    pem_items(pem, "PEM certificates", missing).map_err(|reason| TlsSetupError { file, reason })
}

/// The earliest `notAfter` of `certs`, in Unix seconds.
pub(super) fn earliest_not_after(
    certs: &[CertificateDer<'_>],
    file: PemFile,
) -> Result<i64, TlsSetupError> {
    let mut earliest = i64::MAX;
    for (i, der) in certs.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsSetupError {
            file,
            reason: format!("certificate {} is not X.509: {e}", i + 1),
        })?;
        earliest = earliest.min(cert.validity().not_after.timestamp());
    }
    Ok(earliest)
}

/// Our server identity from its files: refused when a file holds nothing
/// usable, when the key is not the leaf certificate's, or when the client
/// CAs or CRLs are not usable.
pub fn server_identity(files: &ServerFiles<'_>) -> Result<ServerIdentity, TlsSetupError> {
    let cert_err = |reason: String| TlsSetupError {
        file: PemFile::Certificate,
        reason,
    };
    let chain = certificates(files.chain.1, PemFile::Certificate)?;
    let mut expiries = vec![CertExpiry {
        certificate: "server",
        file: files.chain.0.to_owned(),
        not_after: earliest_not_after(&chain, PemFile::Certificate)?,
    }];
    let key = PrivateKeyDer::from_pem_slice(files.key).map_err(|e| TlsSetupError {
        file: PemFile::Key,
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \
                 \"BEGIN EC PRIVATE KEY\")"
                    .into()
            }
            e => format!("not a PEM private key: {e}"),
        },
    })?;
    let mut crl = None;
    let verifier = match files.client_ca {
        None => {
            if files.crl.is_some() {
                return Err(TlsSetupError {
                    file: PemFile::Crl,
                    reason: "only used with client_ca (CRLs are checked against client \
                             certificates)"
                        .into(),
                });
            }
            rustls::server::WebPkiClientVerifier::no_client_auth()
        }
        Some((path, pem)) => {
            let cas = certificates(pem, PemFile::ClientCa)?;
            expiries.push(CertExpiry {
                certificate: "client_ca",
                file: path.to_owned(),
                not_after: earliest_not_after(&cas, PemFile::ClientCa)?,
            });
            let crls = files.crl.map(|(_, pem)| crls(pem)).transpose()?;
            // rustls judges the CRLs first, so its reasons are the ones an
            // operator sees.
            let verifier = client_verifier(cas, crls.clone())?;
            if let (Some((path, _)), Some(crls)) = (files.crl, &crls) {
                crl = earliest_next_update(crls)?.map(|next_update| CrlUpdate {
                    file: path.to_owned(),
                    next_update,
                });
            }
            verifier
        }
    };
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| cert_err(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsSetupError {
                file: PemFile::Key,
                reason: "does not match the certificate (the first in the chain must be the \
                         leaf whose key this is)"
                    .into(),
            },
            rustls::Error::General(reason) => TlsSetupError {
                file: PemFile::Key,
                reason: format!("not a usable private key: {reason}"),
            },
            e => cert_err(format!("not usable: {e}")),
        })?;
    Ok(ServerIdentity {
        config: Arc::new(config),
        expiries,
        crl,
        mutual: files.client_ca.is_some(),
    })
}

/// The CRLs of a PEM file, refused when there are none.
fn crls(pem: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsSetupError> {
    pem_items(pem, "PEM CRLs", "no \"BEGIN X509 CRL\" block").map_err(|reason| TlsSetupError {
        file: PemFile::Crl,
        reason,
    })
}

/// The earliest `nextUpdate` of `crls`, in Unix seconds; `None` when none
/// has one.
fn earliest_next_update(
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<Option<i64>, TlsSetupError> {
    let mut earliest = None;
    for (i, der) in crls.iter().enumerate() {
        let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| TlsSetupError {
            file: PemFile::Crl,
            reason: format!("CRL {} is not an X.509 CRL: {e}", i + 1),
        })?;
        if let Some(next) = crl.next_update() {
            let next = next.timestamp();
            earliest = Some(earliest.map_or(next, |e: i64| e.min(next)));
        }
    }
    Ok(earliest)
}

/// Client certificates required and checked against `cas`, and the end
/// entity's revocation against `crls`, as Kamailio's OpenSSL
/// `X509_V_FLAG_CRL_CHECK` does: a client whose issuer has no CRL there is
/// refused, and so is one whose issuer's CRL is past its `nextUpdate`
/// (OpenSSL's "CRL has expired"); a stale list cannot vouch for anyone.
fn client_verifier(
    cas: Vec<CertificateDer<'static>>,
    crls: Option<Vec<CertificateRevocationListDer<'static>>>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsSetupError> {
    let ca_err = |reason: String| TlsSetupError {
        file: PemFile::ClientCa,
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for (i, ca) in cas.into_iter().enumerate() {
        roots
            .add(ca)
            .map_err(|e| ca_err(format!("certificate {} is not a usable CA: {e}", i + 1)))?;
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crls) = crls {
        builder = builder
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .enforce_revocation_expiration();
    }
    builder.build().map_err(|e| match e {
        rustls::server::VerifierBuilderError::InvalidCrl(e) => TlsSetupError {
            file: PemFile::Crl,
            reason: format!(
                "not a usable CRL: {}",
                rustls::Error::InvalidCertRevocationList(e)
            ),
        },
        e => ca_err(format!("not usable: {e}")),
    })
}

/// How an inbound handshake ended: the `result` and `reason` labels of
/// `sipedge_tls_handshakes_total`. A fixed set: never text from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Done; the connection carries SIP.
    Ok,
    /// Not done within `[tls] handshake_timeout`.
    Timeout,
    /// Mutual TLS and the client sent no certificate.
    NoCertificate,
    /// The client's certificate is malformed, badly signed or not for
    /// client use.
    BadCertificate,
    /// The peer's certificate does not chain to what we trust (`[tls]
    /// client_ca` inbound, `ca_list` or the system roots outbound).
    UnknownCa,
    /// Outbound: the server's certificate does not name the peer we
    /// connected to (RFC 5922 §7).
    WrongName,
    /// The client's certificate is expired or not valid yet.
    Expired,
    /// The client's certificate is in `[tls] crl`, or its issuer has no
    /// CRL there.
    Revoked,
    /// The client's issuer's CRL in `[tls] crl` is past its `nextUpdate`:
    /// our file is stale, not the client's certificate.
    CrlExpired,
    /// The peer ended the handshake with an alert (it refused our
    /// certificate, or wanted one we did not have).
    Alert,
    /// Not TLS, or TLS we do not speak (an old version, no common cipher).
    Protocol,
    /// The client closed the connection before the handshake was done.
    Closed,
    /// Refused before the handshake: `[tls] max_handshakes_per_source`.
    Limit,
    /// Anything else.
    Other,
}

impl Handshake {
    /// Every value, in the order of [`TlsStats`]'s counters.
    pub const ALL: [Handshake; 14] = [
        Handshake::Ok,
        Handshake::Timeout,
        Handshake::NoCertificate,
        Handshake::BadCertificate,
        Handshake::UnknownCa,
        Handshake::WrongName,
        Handshake::Expired,
        Handshake::Revoked,
        Handshake::CrlExpired,
        Handshake::Alert,
        Handshake::Protocol,
        Handshake::Closed,
        Handshake::Limit,
        Handshake::Other,
    ];

    /// The `result` label: `ok`, `timeout` or `failed`.
    pub fn result(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Timeout => "timeout",
            _ => "failed",
        }
    }

    /// The `reason` label (`none` for a handshake that succeeded).
    pub fn reason(self) -> &'static str {
        match self {
            Handshake::Ok => "none",
            Handshake::Timeout => "timeout",
            Handshake::NoCertificate => "no_certificate",
            Handshake::BadCertificate => "bad_certificate",
            Handshake::UnknownCa => "unknown_ca",
            Handshake::WrongName => "wrong_name",
            Handshake::Expired => "expired",
            Handshake::Revoked => "revoked",
            Handshake::CrlExpired => "crl_expired",
            Handshake::Alert => "alert",
            Handshake::Protocol => "protocol",
            Handshake::Closed => "closed",
            Handshake::Limit => "limit",
            Handshake::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// What a failed handshake's error means (tokio-rustls wraps the
    /// rustls error in the `io::Error`).
    pub fn of_error(e: &io::Error) -> Handshake {
        use rustls::{CertificateError as C, Error as E};
        if let Some(e) = e.get_ref().and_then(|e| e.downcast_ref::<E>()) {
            return match e {
                E::NoCertificatesPresented => Handshake::NoCertificate,
                E::InvalidCertificate(c) => match c {
                    C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. } => Handshake::Expired,
                    C::Revoked | C::UnknownRevocationStatus => Handshake::Revoked,
                    C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                        Handshake::CrlExpired
                    }
                    C::UnknownIssuer => Handshake::UnknownCa,
                    C::NotValidForName | C::NotValidForNameContext { .. } => Handshake::WrongName,
                    _ => Handshake::BadCertificate,
                },
                E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::InvalidMessage(_)
                | E::PeerIncompatible(_)
                | E::PeerMisbehaved(_)
                | E::DecryptError
                | E::PeerSentOversizedRecord => Handshake::Protocol,
                E::AlertReceived(_) => Handshake::Alert,
                _ => Handshake::Other,
            };
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Handshake::Closed,
            _ => Handshake::Other,
        }
    }
}

/// TLS counters of one direction (the listeners', or the connections we
/// open), read by the metrics at scrape time.
#[derive(Debug, Default)]
pub struct TlsStats {
    handshakes: [AtomicU64; Handshake::ALL.len()],
    /// TLS connections open now (handshake done).
    open: AtomicUsize,
}

impl TlsStats {
    pub fn handshakes(&self, outcome: Handshake) -> u64 {
        self.handshakes[outcome.index()].load(Ordering::Relaxed)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, outcome: Handshake) {
        self.handshakes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// What the TLS listeners share: the identity in force (swapped by a
/// reload; each accept takes the current one, established connections
/// keep theirs), the handshake bounds, the handshakes in progress per
/// source, the counters.
pub struct TlsInbound {
    identity: ArcSwap<ServerIdentity>,
    handshake_timeout: Duration,
    max_handshakes_per_source: usize,
    /// Handshakes in progress per source ([`source`]: an IPv6 /64).
    handshaking: DashMap<IpAddr, usize>,
    stats: Arc<TlsStats>,
    refusal_log: RefusalLog,
}

impl TlsInbound {
    pub fn new(
        identity: Arc<ServerIdentity>,
        handshake_timeout: Duration,
        max_handshakes_per_source: usize,
    ) -> Arc<TlsInbound> {
        Arc::new(TlsInbound {
            identity: ArcSwap::new(identity),
            handshake_timeout,
            max_handshakes_per_source,
            handshaking: DashMap::new(),
            stats: Arc::default(),
            refusal_log: RefusalLog::default(),
        })
    }

    /// The identity new connections get.
    pub fn identity(&self) -> Arc<ServerIdentity> {
        self.identity.load_full()
    }

    /// New connections get `identity` from now on; established ones keep
    /// the one they were accepted with.
    pub fn replace(&self, identity: Arc<ServerIdentity>) {
        self.identity.store(identity);
    }

    pub fn stats(&self) -> &TlsStats {
        &self.stats
    }

    /// Handshakes in progress from `ip`'s source.
    pub fn handshakes_from(&self, ip: IpAddr) -> usize {
        self.handshaking
            .get(&source(ip.to_canonical()))
            .map_or(0, |n| *n)
    }

    /// A handshake slot for `src`, or `None` at the per-source limit.
    fn begin_handshake(self: &Arc<Self>, src: IpAddr) -> Option<HandshakeSlot> {
        let mut n = self.handshaking.entry(src).or_insert(0);
        if *n >= self.max_handshakes_per_source {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot {
            tls: self.clone(),
            src,
        })
    }

    /// Counts a handshake's end; a failure is logged at debug, and at
    /// info at most once per source per [`super::tcp::REFUSAL_LOG_INTERVAL`].
    fn outcome(&self, peer: SocketAddr, outcome: Handshake, detail: &dyn std::fmt::Display) {
        self.stats.count(outcome);
        if outcome == Handshake::Ok {
            return;
        }
        let reason = outcome.reason();
        tracing::debug!(
            "tls:{peer}: handshake {}: {reason}: {detail}",
            outcome.result()
        );
        let src = source(peer.ip().to_canonical());
        if let Some(more) = self
            .refusal_log
            .should_log(src, tokio::time::Instant::now())
        {
            tracing::info!(
                "tls:{peer}: handshake {}: {reason} ({detail}; {more} more refused from {src} \
                 since its last line)",
                outcome.result()
            );
        }
    }
}

/// One handshake in progress from `src`, given back on drop.
struct HandshakeSlot {
    tls: Arc<TlsInbound>,
    src: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.tls.handshaking.entry(self.src)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// An established TLS stream (inbound or outbound), counted in its
/// [`TlsStats`]' open connections while it lives (the connection
/// machinery drops it when the connection ends).
pub struct Counted<S> {
    inner: S,
    stats: Arc<TlsStats>,
}

impl<S> Counted<S> {
    pub(super) fn new(inner: S, stats: Arc<TlsStats>) -> Counted<S> {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Counted { inner, stats }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Starts accepting TLS on an already-bound listener (from
/// [`super::bind_stream`]): a connection from a source with `[tls]
/// max_handshakes_per_source` handshakes in progress is closed at once;
/// the others are admitted against `tcp`'s caps (so a handshake in
/// progress holds a slot, counted per source), get the identity in force
/// and `handshake_timeout` to finish, and then run on `tcp`'s connection
/// machinery as [`Transport::Tls`]. Returns the local address.
pub fn serve(
    tcp: &TcpTransport,
    listener: std::net::TcpListener,
    tls: Arc<TlsInbound>,
) -> io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let t = tcp.clone();
    tcp.spawn(async move {
        let shutdown = t.shutdown_token().clone();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("tls:{local}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = tls.begin_handshake(source(peer.ip().to_canonical())) else {
                drop(stream);
                tls.outcome(
                    peer,
                    Handshake::Limit,
                    &format_args!(
                        "{} handshakes in progress from its source (max_handshakes_per_source)",
                        tls.max_handshakes_per_source
                    ),
                );
                continue;
            };
            if !t.admit_inbound(peer, local, Transport::Tls) {
                continue;
            }
            let (t2, tls, shutdown) = (t.clone(), tls.clone(), shutdown.clone());
            // The handshake on its own task: a slow client must not hold
            // up the accept loop.
            t.spawn(async move {
                let conn_local = super::tcp::prepare_stream(&stream, Some(local));
                let acceptor = TlsAcceptor::from(tls.identity().config.clone());
                let timeout = tls.handshake_timeout;
                let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    r = handshake => Some(r),
                };
                drop(slot);
                match outcome {
                    Some(Ok(Ok(stream))) => {
                        tls.outcome(peer, Handshake::Ok, &"");
                        let stream = Counted::new(stream, tls.stats.clone());
                        t2.start_inbound(stream, peer, conn_local, Transport::Tls);
                    }
                    Some(Ok(Err(e))) => {
                        tls.outcome(peer, Handshake::of_error(&e), &e);
                        t2.release_inbound(peer);
                    }
                    Some(Err(_)) => {
                        tls.outcome(
                            peer,
                            Handshake::Timeout,
                            &format_args!("not done in {timeout:?} (handshake_timeout)"),
                        );
                        t2.release_inbound(peer);
                    }
                    None => t2.release_inbound(peer),
                }
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_a_fixed_set_in_counter_order() {
        for (i, h) in Handshake::ALL.iter().enumerate() {
            assert_eq!(h.index(), i);
            assert!(["ok", "failed", "timeout"].contains(&h.result()));
        }
        assert_eq!(Handshake::Ok.reason(), "none");
        assert_eq!(Handshake::Limit.result(), "failed");
    }

    #[test]
    fn errors_map_to_reasons() {
        use rustls::{CertificateError as C, Error as E};
        let wrap = |e: E| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (E::NoCertificatesPresented, Handshake::NoCertificate),
            (
                E::InvalidCertificate(C::UnknownIssuer),
                Handshake::UnknownCa,
            ),
            (E::InvalidCertificate(C::Expired), Handshake::Expired),
            (E::InvalidCertificate(C::Revoked), Handshake::Revoked),
            (
                E::InvalidCertificate(C::ExpiredRevocationList),
                Handshake::CrlExpired,
            ),
            (
                E::InvalidCertificate(C::BadSignature),
                Handshake::BadCertificate,
            ),
            (
                E::InvalidCertificate(C::NotValidForName),
                Handshake::WrongName,
            ),
            (
                E::AlertReceived(rustls::AlertDescription::BadCertificate),
                Handshake::Alert,
            ),
            (E::DecryptError, Handshake::Protocol),
            (E::General("x".into()), Handshake::Other),
        ];
        for (e, want) in cases {
            assert_eq!(Handshake::of_error(&wrap(e)), want);
        }
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(Handshake::of_error(&eof), Handshake::Closed);
    }

    /// The CRL gauge follows the earliest `nextUpdate` of the file's CRLs
    /// (one per CA), and a server identity with a CRL carries it.
    #[test]
    fn the_crl_file_is_as_fresh_as_its_stalest_crl() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, &ca_key);
        let crl = |year| {
            rcgen::CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2024, 1, 1),
                next_update: rcgen::date_time_ymd(year, 1, 1),
                crl_number: rcgen::SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: Vec::new(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&issuer)
            .unwrap()
            .pem()
            .unwrap()
        };
        let pem = crl(2031) + &crl(2027);
        let parsed = crls(pem.as_bytes()).unwrap();
        // 2027-01-01T00:00:00Z
        assert_eq!(earliest_next_update(&parsed).unwrap(), Some(1_798_761_600));

        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["sip.test".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let (chain, key, ca) = (leaf.pem(), leaf_key.serialize_pem(), ca_cert.pem());
        let identity = server_identity(&ServerFiles {
            chain: ("chain.pem", chain.as_bytes()),
            key: key.as_bytes(),
            client_ca: Some(("ca.pem", ca.as_bytes())),
            crl: Some(("crl.pem", pem.as_bytes())),
        })
        .unwrap();
        assert_eq!(
            identity.crl,
            Some(CrlUpdate {
                file: "crl.pem".to_owned(),
                next_update: 1_798_761_600
            })
        );
        assert!(identity.mutual);
    }
}
