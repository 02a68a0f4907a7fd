//! SIP over TLS: the client side (connections we open, to nodes and to
//! trunks). What we trust (`[tls] ca_list`, else the system roots), the
//! certificate we present when the server asks (`[tls] client_certificate`
//! / `client_key`, else our server identity), and who each peer must
//! prove to be: RFC 5922 §7, checked by [`SipServerVerifier`] after
//! webpki has checked the chain.
//!
//! The configs sit in an [`ArcSwapOption`] so a reload swaps them without
//! touching open connections; the identity each address must show sits in
//! a table the proxy fills from its destinations ([`TlsClient::set_peers`]).
//! An address not in it must show its IP address (an iPAddress SAN).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls::{
    earliest_not_after, pem_items, provider, CertExpiry, Counted, Handshake, PemFile, TlsStats,
    VERSIONS,
};

/// Which file a [`ClientSetupError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFile {
    /// `[tls] ca_list`.
    CaList,
    /// `[tls] client_certificate` (or `certificate`).
    Certificate,
    /// `[tls] client_key` (or `key`).
    Key,
}

/// Why the client side cannot be set up: which file, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ClientSetupError {
    pub file: ClientFile,
    pub reason: String,
}

/// What the client configs are made of (file contents, not paths).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientSettings<'a> {
    /// PEM bundle of the CAs we trust; `None`: the system roots.
    pub ca_list_pem: Option<&'a [u8]>,
    /// PEM chain (leaf first) and key presented when a server asks.
    pub identity: Option<(&'a [u8], &'a [u8])>,
    /// The chain's file when it is not the server certificate's (`[tls]
    /// client_certificate`): its expiry is exported as `certificate="client"`.
    pub identity_file: Option<&'a str>,
    /// Accept a `*.example.com` identity for `a.example.com`.
    pub wildcards: bool,
    /// A handshake not done in this long fails (the INVITE fails over).
    pub handshake_timeout: Duration,
}

/// The handshake timeout with no `[tls]` section (its default there too).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The two client configs made from one [`ClientSettings`]: one checks
/// the server, one (for `tls_verify = false` destinations) does not.
#[derive(Clone)]
pub struct ClientConfigs {
    verified: Arc<rustls::ClientConfig>,
    unverified: Arc<rustls::ClientConfig>,
    handshake_timeout: Duration,
    wildcards: bool,
    /// For the start-up line: how many CAs, and whether a client
    /// certificate is presented.
    pub roots: usize,
    pub presents_certificate: bool,
    /// The client certificate's expiry, when it has a file of its own.
    pub expiries: Vec<CertExpiry>,
}

impl std::fmt::Debug for ClientConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the configs' own Debug: it would walk the key material.
        f.debug_struct("ClientConfigs")
            .field("roots", &self.roots)
            .field("presents_certificate", &self.presents_certificate)
            .finish()
    }
}

/// Builds the client configs; refused (with the file at fault) when the
/// CA bundle holds no usable certificate or the client certificate and
/// key are unusable or do not belong together.
pub fn client_configs(s: &ClientSettings<'_>) -> Result<ClientConfigs, ClientSetupError> {
    let roots = match s.ca_list_pem {
        Some(pem) => ca_roots(pem)?,
        None => system_roots(),
    };
    let roots = Arc::new(roots);
    let identity = match s.identity {
        Some((chain, key)) => Some(client_identity(chain, key)?),
        None => None,
    };
    let mut expiries = Vec::new();
    if let (Some((chain, _)), Some(file)) = (&identity, s.identity_file) {
        let not_after =
            earliest_not_after(chain, PemFile::Certificate).map_err(|e| ClientSetupError {
                file: ClientFile::Certificate,
                reason: e.reason,
            })?;
        expiries.push(CertExpiry {
            certificate: "client",
            file: file.to_owned(),
            not_after,
        });
    }
    let build = |verify: bool| -> Result<Arc<rustls::ClientConfig>, ClientSetupError> {
        let verifier = SipServerVerifier::new(roots.clone(), s.wildcards, verify);
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| ClientSetupError {
                file: ClientFile::CaList,
                reason: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let config = match &identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| ClientSetupError {
                    file: ClientFile::Key,
                    reason: match e {
                        rustls::Error::InconsistentKeys(_) => {
                            "does not match the client certificate (the first in the chain \
                             must be the leaf whose key this is)"
                                .into()
                        }
                        e => format!("not usable: {e}"),
                    },
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    };
    Ok(ClientConfigs {
        verified: build(true)?,
        unverified: build(false)?,
        handshake_timeout: s.handshake_timeout,
        wildcards: s.wildcards,
        roots: roots.len(),
        presents_certificate: identity.is_some(),
        expiries,
    })
}

/// The CAs of a PEM bundle.
fn ca_roots(pem: &[u8]) -> Result<RootCertStore, ClientSetupError> {
    let err = |reason: String| ClientSetupError {
        file: ClientFile::CaList,
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = pem_items(
        pem,
        "a PEM certificate bundle",
        "no \"BEGIN CERTIFICATE\" block; give the CA certificates in PEM",
    )
    .map_err(err)?;
    let mut roots = RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots
            .add(c)
            .map_err(|e| err(format!("certificate {} is not a usable CA: {e}", i + 1)))?;
    }
    Ok(roots)
}

/// The system's trusted CAs (what the distribution ships); the ones that
/// do not parse are skipped, as browsers do.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("tls: system CA store: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!("tls: {ignored} system CA certificates skipped");
    }
    if added == 0 {
        tracing::warn!(
            "tls: no system CA certificate found; outbound TLS will trust nobody until \
             [tls] ca_list is set"
        );
    }
    roots
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_identity(chain_pem: &[u8], key_pem: &[u8]) -> Result<Identity, ClientSetupError> {
    let chain = pem_items(
        chain_pem,
        "a PEM certificate chain",
        "no \"BEGIN CERTIFICATE\" block; give the PEM chain, leaf first",
    )
    .map_err(|reason| ClientSetupError {
        file: ClientFile::Certificate,
        reason,
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| ClientSetupError {
        file: ClientFile::Key,
        reason: format!("not a PEM private key: {e}"),
    })?;
    Ok((chain, key))
}

/// Who a peer must prove to be, and whether to check at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SIP domain to find in its certificate (and the SNI we send);
    /// `None`: its IP address, in an iPAddress SAN (and no SNI).
    pub server_name: Option<Arc<str>>,
    /// `false`: any certificate (lab use; logged loudly where set).
    pub verify: bool,
}

impl Default for PeerIdentity {
    fn default() -> Self {
        PeerIdentity {
            server_name: None,
            verify: true,
        }
    }
}

/// The client side of TLS: the configs in force, the identity table, the
/// handshake counters. One per [`super::Transports`].
pub struct TlsClient {
    configs: ArcSwapOption<ClientConfigs>,
    /// The destinations' identities (replaced whole on reload).
    peers: ArcSwap<HashMap<SocketAddr, PeerIdentity>>,
    /// Host names requests went to over TLS (a trunk's `sips:` Contact),
    /// by the address they resolved to: RFC 5922 checks the name the URI
    /// gave. Bounded; the destinations' entries win.
    resolved: dashmap::DashMap<SocketAddr, Arc<str>>,
    /// What the certificate of our open connection to each address says
    /// (checked ones only): a request for another name may reuse it only
    /// if the certificate names that one too.
    proved: dashmap::DashMap<SocketAddr, Proved>,
    stats: Arc<TlsStats>,
}

/// What an open connection's certificate was checked against, and what
/// it says.
#[derive(Clone)]
struct Proved {
    name: Option<Arc<str>>,
    ids: Arc<CertIdentities>,
}

/// Entries [`TlsClient::resolved`] and `proved` hold at most; each is
/// cleared when full (one per TLS peer address in use: 4096 carriers' SBCs
/// is far beyond a pool's; the price of clearing is a new handshake).
const RESOLVED_NAMES: usize = 4096;

impl Default for TlsClient {
    fn default() -> Self {
        TlsClient {
            configs: ArcSwapOption::empty(),
            peers: ArcSwap::from_pointee(HashMap::new()),
            resolved: dashmap::DashMap::new(),
            proved: dashmap::DashMap::new(),
            stats: Arc::default(),
        }
    }
}

impl TlsClient {
    /// Puts `configs` in force for new connections (at start and on
    /// reload); open connections keep theirs.
    pub fn set_configs(&self, configs: ClientConfigs) {
        self.configs.store(Some(Arc::new(configs)));
    }

    /// Replaces the identity table (from the destinations, at start and
    /// on reload).
    pub fn set_peers(&self, peers: HashMap<SocketAddr, PeerIdentity>) {
        self.peers.store(Arc::new(peers));
    }

    /// A request goes over TLS to `name`, which resolved to `addr`: a
    /// connection opened to `addr` must show `name`.
    pub fn resolved(&self, addr: SocketAddr, name: &str) {
        let addr = canonical(addr);
        if self.resolved.get(&addr).is_some_and(|n| **n == *name) {
            return;
        }
        if self.resolved.len() >= RESOLVED_NAMES {
            self.resolved.clear();
        }
        self.resolved.insert(addr, name.into());
    }

    /// What `to` must prove to be: the destination's identity, else the
    /// host name it was reached by, else its IP address.
    pub fn identity(&self, to: SocketAddr) -> PeerIdentity {
        let to = canonical(to);
        if let Some(id) = self.peers.load().get(&to) {
            return id.clone();
        }
        PeerIdentity {
            server_name: self.resolved.get(&to).map(|n| n.clone()),
            verify: true,
        }
    }

    /// May a request to `to` go on the connection we opened to it? Only
    /// if that connection's certificate proves who `to` must be now (a
    /// second name on the same address, a reload that changed
    /// `tls_server_name`); otherwise a new connection is opened and
    /// checked. Connections the peer opened, and unchecked ones, always.
    pub fn may_reuse(&self, to: SocketAddr) -> bool {
        let to = canonical(to);
        let Some(proved) = self.proved.get(&to).map(|p| p.clone()) else {
            return true;
        };
        let id = self.identity(to);
        // The usual case, without building a name: the one it was checked
        // against.
        if !id.verify || id.server_name == proved.name {
            return true;
        }
        let wildcards = self.configs.load().as_ref().is_some_and(|c| c.wildcards);
        server_name(&id, to).is_ok_and(|name| proved.ids.matches(&name, wildcards))
    }

    /// The expiry of the client certificate in force, when it has a file
    /// of its own (`[tls] client_certificate`).
    pub fn expiries(&self) -> Vec<CertExpiry> {
        self.configs
            .load()
            .as_ref()
            .map_or_else(Vec::new, |c| c.expiries.clone())
    }

    /// The outbound handshakes by outcome, and the connections open.
    pub fn stats(&self) -> &TlsStats {
        &self.stats
    }

    /// The configs in force; with none set (no `[tls]` section), the
    /// system roots and no client certificate, made on first use.
    fn configs(&self) -> io::Result<Arc<ClientConfigs>> {
        if let Some(c) = self.configs.load_full() {
            return Ok(c);
        }
        let made = client_configs(&ClientSettings {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ..ClientSettings::default()
        })
        .map_err(|e| io::Error::other(e.reason))?;
        let made = Arc::new(made);
        self.configs
            .compare_and_swap(&None::<Arc<_>>, Some(made.clone()));
        Ok(made)
    }

    /// The TLS handshake over a connected `tcp` to `to`, within the
    /// handshake timeout, counted by outcome. The error says why (for the
    /// log and for failover, which treats it like a refused connect).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        to: SocketAddr,
    ) -> io::Result<Counted<TlsStream<TcpStream>>> {
        let configs = self.configs()?;
        let id = self.identity(to);
        let name = server_name(&id, to)?;
        let config = if id.verify {
            configs.verified.clone()
        } else {
            configs.unverified.clone()
        };
        let connect = TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(configs.handshake_timeout, connect).await {
            Ok(Ok(s)) => {
                self.stats.count(Handshake::Ok);
                let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first());
                match leaf.and_then(|c| CertIdentities::parse(c.as_ref())) {
                    Some(ids) if id.verify => {
                        if self.proved.len() >= RESOLVED_NAMES {
                            self.proved.clear();
                        }
                        let proved = Proved {
                            name: id.server_name.clone(),
                            ids: Arc::new(ids),
                        };
                        self.proved.insert(canonical(to), proved);
                    }
                    _ => {
                        self.proved.remove(&canonical(to));
                    }
                }
                Ok(Counted::new(s, self.stats.clone()))
            }
            Ok(Err(e)) => {
                let reason = Handshake::of_error(&e);
                self.stats.count(reason);
                tracing::warn!(
                    "tls:{to}: outbound handshake failed ({}): {e}",
                    reason.reason()
                );
                Err(e)
            }
            Err(_) => {
                self.stats.count(Handshake::Timeout);
                tracing::warn!(
                    "tls:{to}: outbound handshake not done in {:?}",
                    configs.handshake_timeout
                );
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            }
        }
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The name a connection to `to` checks and sends as SNI: the configured
/// domain, else the IP address (rustls sends no SNI for an IP).
fn server_name(id: &PeerIdentity, to: SocketAddr) -> io::Result<ServerName<'static>> {
    match &id.server_name {
        Some(n) => ServerName::try_from(n.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{n}: {e}"))),
        None => Ok(ServerName::IpAddress(to.ip().to_canonical().into())),
    }
}

/// Checks a server the way RFC 5922 §7 says: the chain with webpki (to
/// our roots, validity dates, signatures), then the identity with
/// [`CertIdentities::matches`]. With `verify` off, nothing but the
/// handshake signatures (the peer still proves it holds the key).
#[derive(Debug)]
pub struct SipServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    wildcards: bool,
    verify: bool,
}

impl SipServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, wildcards: bool, verify: bool) -> SipServerVerifier {
        SipServerVerifier {
            roots,
            algs: provider().signature_verification_algorithms,
            wildcards,
            verify,
        }
    }
}

impl ServerCertVerifier for SipServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.verify {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let ids = CertIdentities::parse(end_entity.as_ref()).ok_or(
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
        )?;
        if ids.matches(server_name, self.wildcards) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The identities a certificate carries, sorted the way RFC 5922 §7.1
/// reads them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertIdentities {
    /// Host parts of `sip:` URI SANs without a user part.
    pub sip_domains: Vec<String>,
    /// dNSName SANs.
    pub dns: Vec<String>,
    /// iPAddress SANs.
    pub ips: Vec<IpAddr>,
    /// The subject's common names.
    pub cn: Vec<String>,
    /// The certificate has a subjectAltName extension at all.
    pub has_san: bool,
}

impl CertIdentities {
    /// From a DER certificate; `None` when it does not parse.
    pub fn parse(der: &[u8]) -> Option<CertIdentities> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut ids = CertIdentities::default();
        if let Some(san) = cert.subject_alternative_name().ok()? {
            ids.has_san = true;
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => ids.sip_domains.extend(sip_domain(uri)),
                    GeneralName::DNSName(d) => ids.dns.push((*d).to_owned()),
                    GeneralName::IPAddress(b) => ids.ips.extend(ip_of(b)),
                    _ => {}
                }
            }
        }
        ids.cn = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect();
        Some(ids)
    }

    /// The SIP domain identities (RFC 5922 §7.1): the `sip:` URI SANs;
    /// the dNSName SANs "if and only if no other identity is found that
    /// matches the sip URI type", i.e. when there is no such URI SAN; the
    /// CN only when the certificate has no subjectAltName at all.
    pub fn domains(&self) -> &[String] {
        if !self.sip_domains.is_empty() {
            &self.sip_domains
        } else if self.has_san {
            &self.dns
        } else {
            &self.cn
        }
    }

    /// Does this certificate prove `name`? A domain against
    /// [`domains`](Self::domains) (RFC 5922 §7.2: the whole name,
    /// case-insensitive, no suffix match; a wildcard only with
    /// `wildcards`), an IP address against the iPAddress SANs.
    pub fn matches(&self, name: &ServerName<'_>, wildcards: bool) -> bool {
        match name {
            ServerName::DnsName(d) => self
                .domains()
                .iter()
                .any(|id| domain_matches(id, d.as_ref(), wildcards)),
            ServerName::IpAddress(ip) => {
                let ip = IpAddr::from(*ip).to_canonical();
                self.ips.iter().any(|i| i.to_canonical() == ip)
            }
            _ => false,
        }
    }
}

/// The host of a `sip:` URI with no user part (RFC 5922 §7.1: a URI with
/// a user names a user, not a domain; other schemes, `sips:` included,
/// are not SIP domain identities).
fn sip_domain(uri: &str) -> Option<String> {
    let u = crate::sip::Uri::parse(uri.as_bytes()).ok()?;
    if u.scheme != crate::sip::Scheme::Sip || u.user.is_some() {
        return None;
    }
    // Only the DNS name counts (§7.2): no port, no parameters.
    let host = std::str::from_utf8(u.host_raw?).ok()?;
    Some(host.to_owned())
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// RFC 5922 §7.2: DNS names compared whole and case-insensitively (a
/// final dot aside), never by suffix; `*.example.com` stands for one
/// label only when `wildcards` (RFC 5922 forbids it; carriers' CAs issue
/// them), and never for the bare `example.com`.
pub fn domain_matches(identity: &str, name: &str, wildcards: bool) -> bool {
    let identity = identity.strip_suffix('.').unwrap_or(identity);
    let name = name.strip_suffix('.').unwrap_or(name);
    if identity.eq_ignore_ascii_case(name) {
        return true;
    }
    if !wildcards {
        return false;
    }
    let Some(rest) = identity.strip_prefix("*.") else {
        return false;
    };
    // At least two labels after the wildcard: "*.com" is no identity.
    if !rest.contains('.') || rest.is_empty() {
        return false;
    }
    match name.split_once('.') {
        Some((label, parent)) => {
            !label.is_empty() && !label.contains('*') && parent.eq_ignore_ascii_case(rest)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    /// A self-signed certificate with these SANs and CN.
    fn cert(sans: Vec<SanType>, cn: Option<&str>) -> CertIdentities {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        let c = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
        CertIdentities::parse(c.der()).unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    fn name(s: &str) -> ServerName<'static> {
        ServerName::try_from(s.to_owned()).unwrap()
    }

    #[test]
    fn sip_uri_san_is_the_identity() {
        let c = cert(vec![uri("sip:Carrier.Example.com")], Some("other.example"));
        assert!(c.matches(&name("carrier.example.com"), false));
        assert!(!c.matches(&name("other.example"), false), "CN ignored");
    }

    #[test]
    fn dns_sans_count_only_without_a_sip_uri_san() {
        // RFC 5922 §7.1: a dNSName is an identity "if and only if no other
        // identity is found that matches the sip URI type".
        let c = cert(vec![uri("sip:example.com"), dns("sbc1.example.com")], None);
        assert!(c.matches(&name("example.com"), false));
        assert!(!c.matches(&name("sbc1.example.com"), false));
        let c = cert(vec![dns("sbc1.example.com")], None);
        assert!(c.matches(&name("SBC1.example.com."), false));
    }

    #[test]
    fn uri_sans_of_users_and_other_schemes_are_not_domains() {
        let c = cert(
            vec![
                uri("sip:alice@example.com"),
                uri("sips:example.com"),
                uri("https://example.com/"),
                dns("example.com"),
            ],
            None,
        );
        assert!(c.sip_domains.is_empty());
        // So the dNSName applies.
        assert!(c.matches(&name("example.com"), false));
        // Parameters and port are no part of the comparison.
        let c = cert(vec![uri("sip:example.com:5061;transport=tls")], None);
        assert!(c.matches(&name("example.com"), false));
    }

    #[test]
    fn cn_only_without_any_san() {
        let c = cert(Vec::new(), Some("fs1.example.com"));
        assert!(c.matches(&name("fs1.example.com"), false));
        let c = cert(
            vec![SanType::IpAddress("10.0.0.1".parse().unwrap())],
            Some("fs1.example.com"),
        );
        assert!(
            !c.matches(&name("fs1.example.com"), false),
            "a SAN hides the CN"
        );
    }

    #[test]
    fn no_suffix_match() {
        let c = cert(vec![dns("example.com")], None);
        assert!(!c.matches(&name("foo.example.com"), true));
        let c = cert(vec![dns("foo.example.com")], None);
        assert!(!c.matches(&name("example.com"), true));
    }

    #[test]
    fn wildcards_only_when_enabled() {
        let c = cert(vec![dns("*.example.com")], None);
        assert!(!c.matches(&name("fs1.example.com"), false));
        assert!(c.matches(&name("fs1.example.com"), true));
        assert!(
            !c.matches(&name("a.fs1.example.com"), true),
            "one label only"
        );
        assert!(!c.matches(&name("example.com"), true));
        assert!(!domain_matches("*.com", "example.com", true));
        assert!(!domain_matches(".example.com", "foo.example.com", true));
    }

    #[test]
    fn ip_destinations_need_an_ip_san() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let c = cert(
            vec![SanType::IpAddress(ip), dns("fs1.example.com")],
            Some("192.0.2.10"),
        );
        assert!(c.matches(&ServerName::IpAddress(ip.into()), false));
        let other: IpAddr = "192.0.2.11".parse().unwrap();
        assert!(!c.matches(&ServerName::IpAddress(other.into()), false));
        let c = cert(vec![dns("192.0.2.10")], Some("192.0.2.10"));
        assert!(!c.matches(&ServerName::IpAddress(ip.into()), false));
    }

    #[test]
    fn names_sent_and_checked() {
        let to: SocketAddr = "192.0.2.10:5061".parse().unwrap();
        let ip_only = server_name(&PeerIdentity::default(), to).unwrap();
        assert!(matches!(ip_only, ServerName::IpAddress(_)));
        let named = PeerIdentity {
            server_name: Some("fs1.example.com".into()),
            verify: true,
        };
        assert_eq!(server_name(&named, to).unwrap(), name("fs1.example.com"));
    }

    #[test]
    fn bad_files_are_named() {
        let s = ClientSettings {
            ca_list_pem: Some(b"nothing here"),
            ..ClientSettings::default()
        };
        assert_eq!(client_configs(&s).unwrap_err().file, ClientFile::CaList);
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let pem = ca.cert.pem();
        let other = KeyPair::generate().unwrap().serialize_pem();
        let s = ClientSettings {
            ca_list_pem: Some(pem.as_bytes()),
            identity: Some((pem.as_bytes(), other.as_bytes())),
            ..ClientSettings::default()
        };
        assert_eq!(client_configs(&s).unwrap_err().file, ClientFile::Key);
        let key = ca.signing_key.serialize_pem();
        let s = ClientSettings {
            ca_list_pem: Some(pem.as_bytes()),
            identity: Some((b"", key.as_bytes())),
            ..ClientSettings::default()
        };
        assert_eq!(
            client_configs(&s).unwrap_err().file,
            ClientFile::Certificate
        );
        let s = ClientSettings {
            ca_list_pem: Some(pem.as_bytes()),
            identity: Some((pem.as_bytes(), key.as_bytes())),
            ..ClientSettings::default()
        };
        let c = client_configs(&s).unwrap();
        assert!(c.presents_certificate && c.roots == 1);
        assert!(c.expiries.is_empty(), "the server certificate's own file");
    }

    #[test]
    fn a_client_certificate_of_its_own_has_its_expiry_exported() {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (pem, key) = (cert.pem(), key.serialize_pem());
        let s = ClientSettings {
            ca_list_pem: Some(pem.as_bytes()),
            identity: Some((pem.as_bytes(), key.as_bytes())),
            identity_file: Some("/etc/sipedge/tls/client.pem"),
            ..ClientSettings::default()
        };
        let c = client_configs(&s).unwrap();
        assert_eq!(
            c.expiries,
            vec![CertExpiry {
                certificate: "client",
                file: "/etc/sipedge/tls/client.pem".into(),
                // 2031-05-17T00:00:00Z
                not_after: 1_936_742_400,
            }]
        );
    }
}
