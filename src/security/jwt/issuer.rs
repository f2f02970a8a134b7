//! Minting tokens (for `jisu token issue`, the tests and the benchmark).
use std::{path::Path, time::Duration};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::{Claims, Confirmation, KeyError, format_err, read_key, thumbprint_b64, unix_now};

/// Mints tokens with the ES256 private key.
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
    /// Written into the header, so verifiers holding several keys pick this one.
    kid: Option<String>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    pub fn from_pem(
        pem: &[u8],
        issuer: &str,
        audience: &str,
    ) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self {
            key: EncodingKey::from_ec_pem(pem)?,
            issuer: issuer.into(),
            audience: audience.into(),
            kid: None,
        })
    }

    pub fn from_file(path: &Path, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        Self::from_pem(&read_key(path)?, issuer, audience).map_err(|e| format_err(path, e))
    }

    /// Names the signing key in every token's header (`kid`).
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Claims for `sub` with `scopes`, valid from now for `ttl`.
    pub fn claims(&self, sub: &str, scopes: &str, ttl: Duration) -> Claims {
        let now = unix_now();
        Claims {
            sub: sub.into(),
            iss: self.issuer.clone(),
            aud: self.audience.clone().into(),
            exp: now + ttl.as_secs(),
            nbf: Some(now),
            iat: Some(now),
            scope: scopes.split_whitespace().collect::<Vec<_>>().join(" "),
            cnf: None,
        }
    }

    /// A token usable only over a connection presenting the certificate whose SHA-256
    /// (of the DER) is `cert_sha256` (RFC 8705).
    pub fn issue_bound(
        &self,
        sub: &str,
        scopes: &str,
        ttl: Duration,
        cert_sha256: &[u8; 32],
    ) -> String {
        let mut claims = self.claims(sub, scopes, ttl);
        claims.cnf = Some(Confirmation {
            x5t_s256: thumbprint_b64(cert_sha256),
        });
        self.sign(&claims)
    }

    pub fn issue(&self, sub: &str, scopes: &str, ttl: Duration) -> String {
        self.sign(&self.claims(sub, scopes, ttl))
    }

    /// Signs arbitrary claims (tests use this for wrong-issuer or expired tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key)
            .expect("ES256 signing with a parsed key cannot fail")
    }
}
