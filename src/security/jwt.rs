//! Bearer tokens: ES256 JWTs issued from `jwt.key` and verified against `jwt.pub`.
//!
//! Verification allows one algorithm, requires `exp`, `iss`, `aud` and `sub`, honours
//! `nbf` with a leeway, caps the token size before decoding, and caches verified tokens
//! (bounded, never past `exp`) because an ES256 check costs ~50 µs. Tokens are never logged.
use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// The verifier's clock (Unix seconds), for callers of [`TokenVerifier::verify`].
pub use crate::api::unix_now;

/// The claims Jisu reads. `scope` is space-separated (RFC 8693 style).
/// Missing claims deserialize to defaults so the validator can name them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub aud: serde_json::Value,
    #[serde(default)]
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default)]
    pub scope: String,
    /// RFC 8705 confirmation: the token is bound to one client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim (RFC 7800) with the certificate thumbprint of RFC 8705.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Confirmation {
    /// base64url (no padding) of the SHA-256 of the client certificate (DER).
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// base64url (no padding) of a certificate thumbprint, as `cnf.x5t#S256` carries it.
pub fn thumbprint_b64(sha256: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256)
}

/// A verified caller, as handlers and logs see it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub expires_at: u64,
    pub not_before: Option<u64>,
    /// The client certificate the token is bound to (RFC 8705), if any.
    pub cert_thumbprint: Option<[u8; 32]>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why a token was refused. [`AuthFailure::label`] is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing bearer token: send `authorization: Bearer <jwt>`")]
    Missing,
    #[error("malformed authorization header or token")]
    Malformed,
    #[error("bearer token too large")]
    TooLarge,
    #[error("bearer token expired")]
    Expired,
    #[error("bearer token not valid yet (nbf)")]
    NotYetValid,
    #[error("bearer token signature invalid")]
    BadSignature,
    #[error("bearer token algorithm not accepted")]
    WrongAlgorithm,
    #[error("bearer token issuer not accepted")]
    WrongIssuer,
    #[error("bearer token audience not accepted")]
    WrongAudience,
    #[error("bearer token lacks a required claim (exp, iss, aud, sub)")]
    MissingClaim,
    #[error("bearer token is bound to another client certificate")]
    CertificateMismatch,
    #[error("bearer token signed with a key this server does not know (kid)")]
    UnknownKey,
}

impl AuthFailure {
    /// Lower-case label for metrics (`jisu_auth_failures_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::TooLarge => "too_large",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::WrongAlgorithm => "wrong_algorithm",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::MissingClaim => "missing_claim",
            AuthFailure::CertificateMismatch => "cert_mismatch",
            AuthFailure::UnknownKey => "unknown_key",
        }
    }

    /// Upper-case `ErrorInfo.reason`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "TOKEN_MISSING",
            AuthFailure::Malformed => "TOKEN_MALFORMED",
            AuthFailure::TooLarge => "TOKEN_TOO_LARGE",
            AuthFailure::Expired => "TOKEN_EXPIRED",
            AuthFailure::NotYetValid => "TOKEN_NOT_YET_VALID",
            AuthFailure::BadSignature => "TOKEN_BAD_SIGNATURE",
            AuthFailure::WrongAlgorithm => "TOKEN_WRONG_ALGORITHM",
            AuthFailure::WrongIssuer => "TOKEN_WRONG_ISSUER",
            AuthFailure::WrongAudience => "TOKEN_WRONG_AUDIENCE",
            AuthFailure::MissingClaim => "TOKEN_MISSING_CLAIM",
            AuthFailure::CertificateMismatch => "TOKEN_CERT_MISMATCH",
            AuthFailure::UnknownKey => "TOKEN_UNKNOWN_KEY",
        }
    }
}

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

fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn format_err(path: &Path, e: jsonwebtoken::errors::Error) -> KeyError {
    KeyError::Format {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

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
    fn key_for(&self, kid: Option<&str>) -> Result<&DecodingKey, AuthFailure> {
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

/// Settings of a [`TokenVerifier`].
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub max_token_bytes: usize,
    pub cache_capacity: u64,
}

/// Verifies bearer tokens and caches the verified ones.
#[derive(Clone)]
pub struct TokenVerifier {
    /// Shared by every clone, so a reload reaches them all; numbered, so a verification
    /// that read a key set which has since been replaced cannot cache its result.
    keys: Arc<parking_lot::RwLock<(u64, Arc<KeySet>)>>,
    /// Woken when a token names a `kid` no key has (a JWKS fetcher may look again).
    unknown_kid: Arc<tokio::sync::Notify>,
    validation: Arc<Validation>,
    leeway: u64,
    max_token_bytes: usize,
    /// Verified tokens with the generation of the key set that verified them: an entry
    /// of an older generation is a miss.
    cache: moka::sync::Cache<Arc<str>, (u64, Arc<Principal>)>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("validation", &self.validation)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    pub fn from_pem(
        public_pem: &[u8],
        settings: &VerifierSettings,
    ) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self::new(KeySet::from_pem(public_pem)?, settings))
    }

    /// A verifier over a key set (PEM key, JWK set or both).
    pub fn new(keys: KeySet, settings: &VerifierSettings) -> Self {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Self {
            keys: Arc::new(parking_lot::RwLock::new((0, Arc::new(keys)))),
            unknown_kid: Arc::new(tokio::sync::Notify::new()),
            validation: Arc::new(validation),
            leeway: settings.leeway.as_secs(),
            max_token_bytes: settings.max_token_bytes,
            cache: moka::sync::Cache::builder()
                .max_capacity(settings.cache_capacity)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }

    pub fn from_file(path: &Path, settings: &VerifierSettings) -> Result<Self, KeyError> {
        Self::from_pem(&read_key(path)?, settings).map_err(|e| format_err(path, e))
    }

    /// Replaces the verification key (every clone sees it) and forgets every token verified
    /// with the old one. A key that does not parse changes nothing.
    pub fn replace_key(&self, public_pem: &[u8]) -> Result<(), jsonwebtoken::errors::Error> {
        self.replace_keys(KeySet::from_pem(public_pem)?);
        Ok(())
    }

    /// Replaces every key (every clone sees it) and forgets the tokens verified so far.
    pub fn replace_keys(&self, keys: KeySet) {
        let mut current = self.keys.write();
        *current = (current.0 + 1, Arc::new(keys));
        drop(current);
        // Only frees memory: entries of older generations are misses anyway, including
        // ones a verification already under way inserts after this line.
        self.cache.invalidate_all();
    }

    /// Completes when a token names an unknown `kid` (for a JWKS fetcher).
    pub async fn unknown_kid_seen(&self) {
        self.unknown_kid.notified().await;
    }

    /// Verifies `token` (without the `Bearer ` prefix) at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Principal>, AuthFailure> {
        if token.len() > self.max_token_bytes {
            return Err(AuthFailure::TooLarge);
        }
        if token.is_empty() {
            return Err(AuthFailure::Missing);
        }
        let (generation, keys) = self.keys.read().clone();
        if let Some((cached_generation, hit)) = self.cache.get(token) {
            // A cached token is still checked against the clock on every use, and only
            // under the key set that verified it.
            if cached_generation == generation && self.in_time(&hit, now) {
                return Ok(hit);
            }
            self.cache.invalidate(token);
        }
        let principal = self.verify_with(&keys, token, now)?;
        self.cache
            .insert(Arc::from(token), (generation, principal.clone()));
        Ok(principal)
    }

    /// Verifies `token` with `keys`, without the cache.
    fn verify_with(
        &self,
        keys: &KeySet,
        token: &str,
        now: u64,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| classify(e.kind()))?;
        let key = keys.key_for(header.kid.as_deref()).inspect_err(|_| {
            self.unknown_kid.notify_one();
        })?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| classify(e.kind()))?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(AuthFailure::MissingClaim);
        }
        let cert_thumbprint = match &claims.cnf {
            None => None,
            Some(cnf) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&cnf.x5t_s256)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(AuthFailure::Malformed)?;
                Some(bytes)
            }
        };
        let audiences = match &claims.aud {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let principal = Arc::new(Principal {
            subject: claims.sub,
            issuer: claims.iss,
            audiences,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
            expires_at: claims.exp,
            not_before: claims.nbf,
            cert_thumbprint,
        });
        // jsonwebtoken checks exp/nbf against its own clock; re-check against `now`.
        if !self.in_time(&principal, now) {
            return Err(if principal.expires_at + self.leeway <= now {
                AuthFailure::Expired
            } else {
                AuthFailure::NotYetValid
            });
        }
        Ok(principal)
    }

    fn in_time(&self, p: &Principal, now: u64) -> bool {
        now < p.expires_at + self.leeway && p.not_before.is_none_or(|nbf| nbf <= now + self.leeway)
    }
}

fn classify(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey => AuthFailure::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthFailure::WrongAlgorithm
        }
        ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => AuthFailure::MissingClaim,
        _ => AuthFailure::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::certs::jwt_key_pair;
    use base64::Engine;

    fn settings() -> VerifierSettings {
        VerifierSettings {
            issuer: "jisu".into(),
            audience: "jisucloud".into(),
            leeway: Duration::from_secs(30),
            max_token_bytes: 4096,
            cache_capacity: 100,
        }
    }

    fn pair() -> (TokenIssuer, TokenVerifier) {
        let pem = jwt_key_pair().unwrap();
        (
            TokenIssuer::from_pem(pem.key.as_bytes(), "jisu", "jisucloud").unwrap(),
            TokenVerifier::from_pem(pem.cert.as_bytes(), &settings()).unwrap(),
        )
    }

    /// The rotation race: a verification that read the old key set finishes (and caches
    /// its result) after `replace_keys`; the retired key must not keep working from the
    /// cache. The interleaving is replayed step by step.
    #[test]
    fn a_token_cached_under_a_retired_key_set_is_not_honoured() {
        let (issuer, verifier) = pair();
        let token = issuer.issue("alice", "users:read", Duration::from_secs(60));
        let now = unix_now();
        let (generation, old_keys) = verifier.keys.read().clone();
        let principal = verifier.verify_with(&old_keys, &token, now).unwrap();
        let other = jwt_key_pair().unwrap();
        verifier.replace_keys(KeySet::from_pem(other.cert.as_bytes()).unwrap());
        verifier
            .cache
            .insert(Arc::from(token.as_str()), (generation, principal));
        assert_eq!(
            verifier.verify(&token, now).unwrap_err(),
            AuthFailure::BadSignature
        );
    }

    #[test]
    fn cached_tokens_still_expire() {
        let (issuer, verifier) = pair();
        let token = issuer.issue("alice", "users:read", Duration::from_secs(60));
        let now = unix_now();
        assert_eq!(verifier.verify(&token, now).unwrap().subject, "alice");
        // Second call is served from the cache, and the clock is still enforced.
        assert!(verifier.verify(&token, now).is_ok());
        assert_eq!(
            verifier.verify(&token, now + 60 + 31).unwrap_err(),
            AuthFailure::Expired
        );
    }

    #[test]
    fn keys_are_picked_by_kid_and_unknown_kids_refused() {
        let (a, b) = (jwt_key_pair().unwrap(), jwt_key_pair().unwrap());
        let jwks = serde_json::json!({"keys": [
            jwk_from_pem(&a.cert, "2026-a").unwrap(),
            jwk_from_pem(&b.cert, "2026-b").unwrap(),
        ]});
        let keys = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);
        let verifier = TokenVerifier::new(keys, &settings());
        let issue = |pem: &crate::security::certs::Pem, kid: Option<&str>| {
            let issuer = TokenIssuer::from_pem(pem.key.as_bytes(), "jisu", "jisucloud").unwrap();
            let issuer = match kid {
                Some(kid) => issuer.with_kid(kid),
                None => issuer,
            };
            issuer.issue("alice", "users:read", Duration::from_secs(60))
        };
        let now = unix_now();
        assert!(verifier.verify(&issue(&a, Some("2026-a")), now).is_ok());
        assert!(verifier.verify(&issue(&b, Some("2026-b")), now).is_ok());
        assert_eq!(
            verifier
                .verify(&issue(&a, Some("2026-b")), now)
                .unwrap_err(),
            AuthFailure::BadSignature
        );
        assert_eq!(
            verifier
                .verify(&issue(&a, Some("2025-x")), now)
                .unwrap_err(),
            AuthFailure::UnknownKey
        );
        assert_eq!(
            verifier.verify(&issue(&a, None), now).unwrap_err(),
            AuthFailure::UnknownKey,
            "no kid and several keys"
        );
        for bad in [
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
            "not json",
        ] {
            assert!(KeySet::from_jwks(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn size_is_capped_before_decoding() {
        let (_, verifier) = pair();
        let huge = "a".repeat(5000);
        assert_eq!(
            verifier.verify(&huge, unix_now()).unwrap_err(),
            AuthFailure::TooLarge
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let (issuer, verifier) = pair();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = issuer.claims("mallory", "users:write", Duration::from_secs(60));
        let token = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert!(verifier.verify(&token, unix_now()).is_err());
    }
}
