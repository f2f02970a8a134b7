//! What a token says (its claims, the `cnf` binding) and what a verified one means to the
//! server (the [`Principal`]), and why a token is refused ([`AuthFailure`]).
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
    /// Shared, so a call's record can note it without a copy.
    pub subject: Arc<str>,
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
