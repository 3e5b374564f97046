//! The cluster's certificates: a CA made by `citadel init`, certificates it issues to the
//! operator and to each host, and the rustls configurations that make every connection between
//! them mutually authenticated — a peer whose certificate does not chain to this cluster's CA
//! (another cluster's, or a self-signed forgery with the right names) fails the handshake.
//!
//! Who a peer is comes from its certificate's DNS name: `host.<NAME>.citadel` or
//! `operator.<NAME>.citadel`. ECDSA P-256 keys; the ring provider is passed explicitly rather
//! than installed process-wide.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not valid PEM: {error}")]
    Pem { what: &'static str, error: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS setup: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("`{0}` is not a valid name for a certificate (a DNS label: letters, digits, `-`)")]
    Name(String),
    #[error("not a host bundle: {0}")]
    Bundle(String),
}

/// Who a certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Operator(String),
    Host(String),
}

impl Identity {
    /// The DNS name that carries the identity in the certificate.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Operator(n) => format!("operator.{n}.citadel"),
            Identity::Host(n) => format!("host.{n}.citadel"),
        }
    }

    /// Reads an identity back from a DNS name made by [`Identity::dns_name`].
    pub fn from_dns_name(name: &str) -> Option<Identity> {
        let rest = name.strip_suffix(".citadel")?;
        let (kind, who) = rest.split_once('.')?;
        match kind {
            "operator" => Some(Identity::Operator(who.to_string())),
            "host" => Some(Identity::Host(who.to_string())),
            _ => None,
        }
    }

    fn name(&self) -> &str {
        match self {
            Identity::Operator(n) | Identity::Host(n) => n,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster's certificate authority.
#[derive(Clone, Debug)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

fn label_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Ca {
    /// A new CA for the cluster `cluster` (its name goes in the subject, for people).
    pub fn create(cluster: &str) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("citadel cluster {cluster} CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `who`, valid as client and server, for its DNS name and `addrs`.
    pub fn issue(&self, who: &Identity, addrs: &[IpAddr]) -> Result<Issued, PkiError> {
        if !label_ok(who.name()) {
            return Err(PkiError::Name(who.name().to_string()));
        }
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let mut params = CertificateParams::new(vec![who.dns_name()])?;
        params
            .subject_alt_names
            .extend(addrs.iter().map(|a| SanType::IpAddress(*a)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, who.dns_name());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "the CA certificate")? {
        roots.add(cert)?;
    }
    Ok(roots)
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Pem {
            what,
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what,
            error: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem {
        what: "the private key",
        error: e.to_string(),
    })
}

/// What an agent listens with: its own certificate, and clients must present one chained to
/// the cluster's CA.
pub fn server_config(ca_pem: &str, own: &Issued) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .build()?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&own.cert_pem, "the certificate")?, key(&own.key_pem)?)?;
    Ok(Arc::new(config))
}

/// What the CLI and agents connect with: the cluster's CA as the only root, and their own
/// certificate as the client's.
pub fn client_config(ca_pem: &str, own: &Issued) -> Result<Arc<ClientConfig>, PkiError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(&own.cert_pem, "the certificate")?, key(&own.key_pem)?)?;
    Ok(Arc::new(config))
}

/// The name a client checks a host's certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, PkiError> {
    ServerName::try_from(Identity::Host(host.to_string()).dns_name())
        .map_err(|_| PkiError::Name(host.to_string()))
}

/// Who a peer is, from the DNS name in its certificate (DER, as rustls gives it). Only
/// meaningful once the handshake has verified the certificate against the cluster's CA.
pub fn identity_of(cert_der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Identity::from_dns_name(d),
        _ => None,
    })
}

/// What a host needs to join the cluster, in one file to copy to it: its name, the cluster's
/// CA certificate, and its own certificate and key. TOML, so a person can see what it is.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Bundle {
    pub host: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl Bundle {
    pub fn new(ca: &Ca, host: &str, addrs: &[IpAddr]) -> Result<Bundle, PkiError> {
        let issued = ca.issue(&Identity::Host(host.to_string()), addrs)?;
        Ok(Bundle {
            host: host.to_string(),
            ca: ca.cert_pem.clone(),
            cert: issued.cert_pem,
            key: issued.key_pem,
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Reads a bundle and checks that its parts are what they claim (PEM that rustls accepts,
    /// a certificate for `host`).
    pub fn from_toml(text: &str) -> Result<Bundle, PkiError> {
        let bundle: Bundle = toml::from_str(text).map_err(|e| PkiError::Bundle(e.to_string()))?;
        let issued = bundle.issued();
        server_config(&bundle.ca, &issued)?;
        if bundle.identity() != Some(Identity::Host(bundle.host.clone())) {
            return Err(PkiError::Bundle(format!(
                "its certificate is not for host `{}`",
                bundle.host
            )));
        }
        Ok(bundle)
    }

    /// Who the bundle's certificate says it is.
    pub fn identity(&self) -> Option<Identity> {
        identity_of(certs(&self.cert, "the certificate").ok()?.first()?)
    }

    pub fn issued(&self) -> Issued {
        Issued {
            cert_pem: self.cert.clone(),
            key_pem: self.key.clone(),
        }
    }
}
