//! Certificates minted with rcgen: a private CA, server and client leaves, and the ES256
//! key pair for tokens. `jisu certs init` writes them; tests mint their own in a temp dir.
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

/// Errors while minting or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0} already exists; pass --force to overwrite")]
    Exists(PathBuf),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid client name {0:?}: use letters, digits, '-', '_' and '.'")]
    BadName(String),
    #[error("{path} is not a certificate or CRL this CA issued: {detail}")]
    Unreadable { path: PathBuf, detail: String },
}

/// The files `jisu certs init` writes, relative to the certs directory.
pub const INIT_FILES: [&str; 8] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
    "jwt.key",
    "jwt.pub",
];

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// Both: a service that serves and also calls other services with the same identity
    /// (the Jisu server certificate: OrderService calls UserService with it).
    Service,
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// DNS names and IP addresses (IPs are detected).
    pub sans: Vec<String>,
    /// URI SANs such as `spiffe://jisu.local/ns/default/sa/orders`.
    pub uris: Vec<String>,
    pub usage: Usage,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A leaf valid from a minute ago for `ttl`.
    pub fn new(common_name: impl Into<String>, usage: Usage, ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.into(),
            sans: Vec::new(),
            uris: Vec::new(),
            usage,
            not_before: now - time::Duration::minutes(1),
            not_after: now + ttl,
        }
    }
}

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem").field("key", &"<redacted>").finish()
    }
}

/// A certificate authority that can sign leaves.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    pem: Pem,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const ONE_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

impl CertificateAuthority {
    /// A new self-signed CA (ECDSA P-256), valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + TEN_YEARS;
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// Loads a CA from its PEM certificate and key (as `certs init` wrote them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            pem: Pem {
                cert: cert_pem.to_owned(),
                key: key_pem.to_owned(),
            },
        })
    }

    /// The CA's own certificate and key.
    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// Signs a certificate revocation list (PEM).
    pub fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<String, CertError> {
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Loads the CA that `certs init` wrote into `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        Self::from_pem(&read(&dir.join("ca.pem"))?, &read(&dir.join("ca.key"))?)
    }

    /// Signs a new leaf with a fresh P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Pem, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(spec.sans.clone())?;
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.clone().try_into()?));
        }
        params.distinguished_name = name(&spec.common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match spec.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Service => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(rand::random::<[u8; 16]>().map(|b| b & 0x7f).to_vec().into());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Jisu");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// An ES256 key pair for tokens: PKCS#8 private key PEM and SPKI public key PEM.
pub fn jwt_key_pair() -> Result<Pem, CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    Ok(Pem {
        cert: key.public_key_pem(),
        key: key.serialize_pem(),
    })
}

/// The identity (URI SAN) of the development server certificate, seen by the services it
/// calls.
pub const SERVER_IDENTITY: &str = "spiffe://jisu.local/jisu-server";

/// The server's default SANs; `extra` are appended.
pub fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
    sans.extend(extra.iter().cloned());
    sans
}

/// Writes a full development set into `dir`: CA, server, `client` and the JWT key pair.
/// Refuses to overwrite any existing file unless `force`.
pub fn init(dir: &Path, extra_sans: &[String], force: bool) -> Result<(), CertError> {
    if !force && let Some(existing) = INIT_FILES.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
        return Err(CertError::Exists(existing));
    }
    fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    let ca = CertificateAuthority::generate("Jisu Development CA")?;
    let mut server = LeafSpec::new("jisu-server", Usage::Service, ONE_YEAR);
    server.sans = server_sans(extra_sans);
    server.uris = vec![SERVER_IDENTITY.into()];
    let server = ca.issue(&server)?;
    let client = ca.issue(&LeafSpec::new("client", Usage::Client, ONE_YEAR))?;
    let jwt = jwt_key_pair()?;
    write_pair(dir, "ca", ca.pem())?;
    write_pair(dir, "server", &server)?;
    write_pair(dir, "client", &client)?;
    write_secret(&dir.join("jwt.key"), &jwt.key)?;
    write_public(&dir.join("jwt.pub"), &jwt.cert)?;
    Ok(())
}

/// Issues a new server certificate and key from the CA in `dir` (the default SANs plus
/// `extra_sans`, the server's SPIFFE identity) and replaces `server.pem`/`server.key`; a
/// running server picks them up for new handshakes. Returns the new serial (hex).
pub fn rotate_server(
    dir: &Path,
    extra_sans: &[String],
    ttl: Option<Duration>,
) -> Result<String, CertError> {
    let ca = CertificateAuthority::load(dir)?;
    let mut server = LeafSpec::new("jisu-server", Usage::Service, ttl.unwrap_or(ONE_YEAR));
    server.sans = server_sans(extra_sans);
    server.uris = vec![SERVER_IDENTITY.into()];
    let pem = ca.issue(&server)?;
    // Key first: until the certificate follows, the pair does not match and a reload in
    // between keeps the old set.
    write_secret(&dir.join("server.key"), &pem.key)?;
    write_public(&dir.join("server.pem"), &pem.cert)?;
    let serial = crate::security::revocation::serial_of(&dir.join("server.pem"))?;
    Ok(hex::encode(serial))
}

/// Writes a new JWT signing key pair `NAME.key` (0600) / `NAME.pub` into `dir`.
pub fn write_jwt_key(dir: &Path, name: &str) -> Result<PathBuf, CertError> {
    check_name(name)?;
    let pair = jwt_key_pair()?;
    write_secret(&dir.join(format!("{name}.key")), &pair.key)?;
    write_public(&dir.join(format!("{name}.pub")), &pair.cert)?;
    Ok(dir.join(format!("{name}.key")))
}

/// Issues another client certificate `NAME.pem`/`NAME.key` (identity NAME) from the CA in
/// `dir`. Returns the certificate path.
pub fn issue_client(dir: &Path, name: &str, ttl: Option<Duration>) -> Result<PathBuf, CertError> {
    check_name(name)?;
    let ca = CertificateAuthority::load(dir)?;
    let leaf = ca.issue(&LeafSpec::new(name, Usage::Client, ttl.unwrap_or(ONE_YEAR)))?;
    write_pair(dir, name, &leaf)?;
    Ok(dir.join(format!("{name}.pem")))
}

/// A file stem `certs` may write: no path separators, no clash with `init`'s files.
fn check_name(name: &str) -> Result<(), CertError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
        && !INIT_FILES.iter().any(|f| f.split('.').next() == Some(name));
    if !valid {
        return Err(CertError::BadName(name.to_owned()));
    }
    Ok(())
}

pub(crate) fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| io(path, source))
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> CertError {
    CertError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `NAME.pem` (0644) and `NAME.key` (0600).
pub fn write_pair(dir: &Path, name: &str, pem: &Pem) -> Result<(), CertError> {
    write_public(&dir.join(format!("{name}.pem")), &pem.cert)?;
    write_secret(&dir.join(format!("{name}.key")), &pem.key)
}

pub(crate) fn write_public(path: &Path, contents: &str) -> Result<(), CertError> {
    write_mode(path, contents, 0o644)
}

fn write_secret(path: &Path, contents: &str) -> Result<(), CertError> {
    write_mode(path, contents, 0o600)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_mode(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|source| io(&tmp, source))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| io(&tmp, source))?;
    fs::rename(&tmp, path).map_err(|source| io(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_every_file_with_private_keys_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["jisu.example".into()], false).unwrap();
        for f in INIT_FILES {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            let expected = if f.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode, expected, "{f}");
        }
        assert!(matches!(
            init(dir.path(), &[], false),
            Err(CertError::Exists(_))
        ));
        init(dir.path(), &[], true).unwrap();
    }

    #[test]
    fn issue_client_rejects_names_that_escape_or_clash() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[], false).unwrap();
        for bad in ["../evil", "a/b", "", "ca", "server", ".hidden"] {
            assert!(matches!(
                issue_client(dir.path(), bad, None),
                Err(CertError::BadName(_))
            ));
        }
        let path = issue_client(dir.path(), "billing", None).unwrap();
        assert!(path.ends_with("billing.pem"));
        assert!(dir.path().join("billing.key").exists());
    }
}
