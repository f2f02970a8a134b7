//! Revocation of client certificates: `jisu certs revoke NAME` adds the serial of
//! `NAME.pem` to `crl.pem` in the certs directory, signed by the CA, and the server (which
//! watches that file) refuses the certificate from the next handshake on. A CRL has a
//! `nextUpdate`: the server refuses every client certificate once its CRL has expired
//! (fail closed), so re-sign it before then (`jisu certs crl`, or any `revoke`).
use std::{path::Path, time::Duration};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::{CertificateRevocationListDer, pem::PemObject};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use super::certs::{CertError, CertificateAuthority, io, read, write_public};

/// The CRL's file name in the certs directory (`tls.crl` by default).
/// The CRL's file name in a certificates directory (defined with the other defaults).
pub use crate::config::CRL_FILE;

/// How long a CRL is valid unless asked otherwise.
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the CRL holds after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    pub revoked: usize,
    pub crl_number: u64,
    pub next_update: OffsetDateTime,
    /// False when the serial was already on the list.
    pub added: bool,
}

fn unreadable(path: &Path, detail: impl std::fmt::Display) -> CertError {
    CertError::Unreadable {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// The serial number of the (first) certificate in `path`.
pub fn serial_of(path: &Path) -> Result<Vec<u8>, CertError> {
    let pem = read(path)?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| unreadable(path, e))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| unreadable(path, e))?;
    Ok(cert.raw_serial().to_vec())
}

/// The entries and number of the CRL at `path` (none when there is no file yet).
fn current(path: &Path) -> Result<(Vec<RevokedCertParams>, u64), CertError> {
    if !path.exists() {
        return Ok((Vec::new(), 0));
    }
    let der = CertificateRevocationListDer::from_pem_file(path).map_err(|e| unreadable(path, e))?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| unreadable(path, e))?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from(r.raw_serial().to_vec()),
            revocation_time: OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    Ok((revoked, number))
}

/// Re-signs the CRL in `dir` with `serial` added (when given), valid for `valid_for`.
pub fn update(
    dir: &Path,
    serial: Option<Vec<u8>>,
    valid_for: Duration,
) -> Result<CrlSummary, CertError> {
    let ca = CertificateAuthority::load(dir)?;
    let path = dir.join(CRL_FILE);
    let (mut revoked, number) = current(&path)?;
    let now = OffsetDateTime::now_utc();
    let mut added = false;
    if let Some(serial) = serial {
        let serial = SerialNumber::from(serial);
        if !revoked.iter().any(|r| r.serial_number == serial) {
            revoked.push(RevokedCertParams {
                serial_number: serial,
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            });
            added = true;
        }
    }
    let next_update = now + valid_for;
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update,
        crl_number: SerialNumber::from(number + 1),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let pem = ca.sign_crl(&params)?;
    write_public(&path, &pem)?;
    Ok(CrlSummary {
        revoked: params.revoked_certs.len(),
        crl_number: number + 1,
        next_update,
        added,
    })
}

/// Revokes the client certificate `NAME.pem` in `dir`.
pub fn revoke(dir: &Path, name: &str, valid_for: Duration) -> Result<CrlSummary, CertError> {
    let cert = dir.join(format!("{name}.pem"));
    if !cert.exists() {
        return Err(io(
            &cert,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such certificate"),
        ));
    }
    update(dir, Some(serial_of(&cert)?), valid_for)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_adds_the_serial_once_and_counts_crl_numbers_up() {
        let dir = tempfile::tempdir().unwrap();
        crate::security::certs::init(dir.path(), &[], false).unwrap();
        crate::security::certs::issue_client(dir.path(), "mallory", None).unwrap();
        let first = revoke(dir.path(), "mallory", DEFAULT_CRL_VALIDITY).unwrap();
        assert_eq!((first.revoked, first.crl_number, first.added), (1, 1, true));
        let again = revoke(dir.path(), "mallory", DEFAULT_CRL_VALIDITY).unwrap();
        assert_eq!(
            (again.revoked, again.crl_number, again.added),
            (1, 2, false)
        );
        let other = revoke(dir.path(), "client", DEFAULT_CRL_VALIDITY).unwrap();
        assert_eq!((other.revoked, other.crl_number), (2, 3));
        let (entries, _) = current(&dir.path().join(CRL_FILE)).unwrap();
        let mallory = SerialNumber::from(serial_of(&dir.path().join("mallory.pem")).unwrap());
        assert!(entries.iter().any(|e| e.serial_number == mallory));
        assert!(revoke(dir.path(), "nobody", DEFAULT_CRL_VALIDITY).is_err());
    }
}
