//! The keys tokens are verified with — a PEM key and/or a JWK set picked by `kid` — and
//! reading them from files.
use std::{collections::HashMap, path::Path};

use jsonwebtoken::DecodingKey;

use super::AuthFailure;

/// Errors while loading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an EC P-256 key in PEM: {detail}")]
    Format { path: String, detail: String },
    #[error("JWT keys from {from}: {detail}")]
    Keys { from: String, detail: String },
}

pub(super) fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub(super) fn format_err(path: &Path, e: jsonwebtoken::errors::Error) -> KeyError {
    KeyError::Format {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// The keys tokens are verified with: a PEM key (`jwt.pub`) for tokens without `kid`,
/// and/or a JWK set whose keys are picked by the token's `kid` — several keys at once, so
/// a new signing key can be introduced before the old one is retired.
#[derive(Default)]
pub struct KeySet {
    default: Option<DecodingKey>,
    by_kid: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("default", &self.default.is_some())
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// One EC P-256 public key in PEM.
    pub fn from_pem(pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self {
            default: Some(DecodingKey::from_ec_pem(pem)?),
            by_kid: HashMap::new(),
        })
    }

    /// A JWK set (RFC 7517): every key must be an EC P-256 key with a `kid`, for ES256.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWK set: {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWK set holds no key".into());
        }
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or("every key needs a kid")?;
            let ec = matches!(
                &jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p)
                    if p.curve == jsonwebtoken::jwk::EllipticCurve::P256
            );
            if !ec {
                return Err(format!("key {kid:?} is not an EC P-256 key (ES256 only)"));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
            if by_kid.insert(kid.clone(), key).is_some() {
                return Err(format!("kid {kid:?} appears twice"));
            }
        }
        Ok(Self {
            default: None,
            by_kid,
        })
    }

    /// The key for a token: by `kid` when it has one, else the PEM key (or the only key).
    pub(super) fn key_for(&self, kid: Option<&str>) -> Result<&DecodingKey, AuthFailure> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .or(self.default.as_ref().filter(|_| self.by_kid.is_empty()))
                .ok_or(AuthFailure::UnknownKey),
            None => self
                .default
                .as_ref()
                .or_else(|| {
                    (self.by_kid.len() == 1)
                        .then(|| self.by_kid.values().next())
                        .flatten()
                })
                .ok_or(AuthFailure::UnknownKey),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_kid.len() + usize::from(self.default.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The JWK (RFC 7517) of an EC P-256 public key in PEM, named `kid`, for a JWK set.
pub fn jwk_from_pem(pem: &str, kid: &str) -> Result<serde_json::Value, String> {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM public key: {e}"))?;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref())
        .map_err(|e| format!("not a public key: {e}"))?;
    let point = &spki.subject_public_key.data;
    if point.len() != 65 || point[0] != 4 {
        return Err("not an uncompressed EC P-256 public key".into());
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": b64.encode(&point[1..33]),
        "y": b64.encode(&point[33..65]),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }))
}
