//! A bare rustls client that reports *how* the server answered a handshake: the TLS alert
//! it sent, or that it accepted the connection (it answered the HTTP/2 preface).
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{AlertDescription, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP/2 client preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Connects with `client` (certificate and key PEM, or none), completes the handshake as
/// far as the client sees it (in TLS 1.3 the server checks the client's certificate after
/// that), sends the HTTP/2 preface and reads. `Ok(alert)`: the server refused with this
/// alert; `Err(what)`: it did something else (accepted, closed silently, timed out).
pub async fn handshake_alert(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&str, &str)>,
) -> Result<AlertDescription, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(e) => return alert_of(&e).ok_or_else(|| format!("handshake failed: {e}")),
        };
        if let Err(e) = tls.write_all(PREFACE).await {
            return alert_of(&e).ok_or_else(|| format!("write failed: {e}"));
        }
        let mut buf = [0u8; 64];
        match tls.read(&mut buf).await {
            Ok(0) => Err("the server closed the connection without an alert".into()),
            Ok(n) => Err(format!(
                "the server accepted the connection ({n} bytes of HTTP/2)"
            )),
            Err(e) => alert_of(&e).ok_or_else(|| format!("read failed: {e}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

/// The TLS alert inside an I/O error from tokio-rustls, if that is what it is.
fn alert_of(e: &std::io::Error) -> Option<AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}
