//! TLS server configuration from PEM files (rustls with the ring provider).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ListenerConfig;
use crate::error::GateError;

pub fn server_config(l: &ListenerConfig) -> Result<rustls::ServerConfig, GateError> {
    let (Some(cert), Some(key)) = (&l.tls_cert, &l.tls_key) else {
        return Err(GateError::Tls(format!(
            "listener {:?} has no certificate",
            l.name
        )));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| GateError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| GateError::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| GateError::Tls(format!("{}: {e}", key.display())))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GateError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| GateError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
