//! Certificates made by the tests (rcgen): a test CA, and leaf
//! certificates it signs with whatever names a test needs, written as PEM
//! files into a scratch directory the caller removes.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A test CA.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, as DER and as PEM files.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub chain_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/<file>`.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// A leaf for `sans` (DNS names, or IP addresses when they parse as
    /// one), written to `dir/<stem>.pem` and `dir/<stem>.key`.
    pub fn leaf(&self, dir: &Path, stem: &str, sans: &[&str]) -> Leaf {
        self.sign(dir, stem, leaf_params(sans))
    }

    /// [`leaf`](Self::leaf), but valid only during 2020.
    pub fn expired_leaf(&self, dir: &Path, stem: &str, sans: &[&str]) -> Leaf {
        let mut params = leaf_params(sans);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(dir, stem, params)
    }

    fn sign(&self, dir: &Path, stem: &str, params: rcgen::CertificateParams) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf::write(dir, stem, &cert, &key, Some(self))
    }
}

/// A self-signed leaf for `sans`, trusted by nobody.
pub fn self_signed(dir: &Path, stem: &str, sans: &[&str]) -> Leaf {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf_params(sans).self_signed(&key).unwrap();
    Leaf::write(dir, stem, &cert, &key, None)
}

fn leaf_params(sans: &[&str]) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName((*s).try_into().unwrap()),
        })
        .collect();
    p
}

impl Leaf {
    fn write(
        dir: &Path,
        stem: &str,
        cert: &rcgen::Certificate,
        key: &rcgen::KeyPair,
        ca: Option<&TestCa>,
    ) -> Leaf {
        let chain_file = dir.join(format!("{stem}.pem"));
        let key_file = dir.join(format!("{stem}.key"));
        let ca_pem = ca.map(TestCa::pem).unwrap_or_default();
        std::fs::write(&chain_file, format!("{}{ca_pem}", cert.pem())).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(ca.map(TestCa::der));
        Leaf {
            chain,
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            chain_file,
            key_file,
        }
    }
}
