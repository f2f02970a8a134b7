//! rustls configurations built by hand (so revocation and reload can be added) and the
//! caller's identity read from its certificate once per connection.
use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::{CryptoProvider, aws_lc_rs},
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject,
};
use sha2::{Digest, Sha256};

/// Errors while loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// The TLS configuration new connections get; replaced on a credential reload.
pub type SharedAcceptor = Arc<parking_lot::RwLock<tokio_rustls::TlsAcceptor>>;

/// The paths of the server's TLS material.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: &'a Path,
    /// Certificate revocation lists for client certificates; used when the file exists.
    pub crl: Option<&'a Path>,
}

/// The process's crypto provider (aws-lc-rs), passed explicitly everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| read_err(path, e))
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("CA in {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// Reads every CRL in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read_err(path, e))
}

/// The gRPC port's TLS config: TLS 1.3 (1.2 only when `allow_tls12`), ALPN `h2`, and a
/// client certificate that chains to `client_ca` with the clientAuth usage and is not on
/// the CRL (when there is one). An expired CRL fails every client of its CA (fail
/// closed); a certificate from a CA without a CRL is checked for its chain only.
pub fn server_config(
    files: &ServerTlsFiles<'_>,
    allow_tls12: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(files.client_ca)?),
        provider.clone(),
    );
    if let Some(crl) = files.crl.filter(|p| p.exists()) {
        let crls = load_crls(crl)?;
        // An emptied file is not "no revocations": refuse it like a broken one.
        if crls.is_empty() {
            return Err(TlsError::Config(format!("{} holds no CRL", crl.display())));
        }
        builder = builder
            .with_crls(crls)
            .enforce_revocation_expiration()
            .allow_unknown_revocation_status();
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(files.cert)?, load_key(files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client config presenting `cert`/`key` and trusting only `ca` (ALPN `h2`).
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The caller's identity: the first URI SAN (SPIFFE style), else the first DNS SAN, else
/// the subject CN. `None` when the certificate carries none of them.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let sans = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let uri = sans.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    let dns = || {
        sans.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
    };
    let cn = || {
        x509.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    };
    uri.or_else(dns).or_else(cn)
}

/// The `notAfter` of a certificate, as Unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(x509.validity().not_after.timestamp())
}

/// SHA-256 of the DER certificate (the RFC 8705 `x5t#S256` thumbprint, before base64url).
pub fn cert_thumbprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::certs::{CertificateAuthority, LeafSpec, Usage};
    use std::time::Duration;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn identity_prefers_uri_then_dns_then_cn() {
        let ca = CertificateAuthority::generate("t").unwrap();
        let mut spec = LeafSpec::new("cn-name", Usage::Client, Duration::from_secs(60));
        assert_eq!(
            peer_identity(&der(&ca.issue(&spec).unwrap().cert)).as_deref(),
            Some("cn-name")
        );
        spec.sans = vec!["svc.internal".into()];
        assert_eq!(
            peer_identity(&der(&ca.issue(&spec).unwrap().cert)).as_deref(),
            Some("svc.internal")
        );
        spec.uris = vec!["spiffe://jisu.local/sa/orders".into()];
        assert_eq!(
            peer_identity(&der(&ca.issue(&spec).unwrap().cert)).as_deref(),
            Some("spiffe://jisu.local/sa/orders")
        );
    }
}
