//! Bearer tokens: ES256 JWTs issued from `jwt.key` and verified against `jwt.pub` (or a
//! JWK set). One job per file: [`claims`] (what a token says and why one is refused),
//! [`keys`] (the key set), [`issuer`] (minting), [`verifier`] (checking and caching).
//!
//! Verification allows one algorithm, requires `exp`, `iss`, `aud` and `sub`, honours
//! `nbf` with a leeway, caps the token size before decoding, and caches verified tokens
//! (bounded, never past `exp`) because an ES256 check costs ~50 µs. Tokens are never logged.
pub mod claims;
pub mod issuer;
pub mod keys;
pub mod verifier;

pub use claims::{AuthFailure, Claims, Confirmation, Principal, thumbprint_b64};
pub use issuer::TokenIssuer;
pub use keys::{KeyError, KeySet, jwk_from_pem};
use keys::{format_err, read_key};
pub use verifier::{TokenMemo, TokenVerifier, VerifierSettings, token_text};

/// The verifier's clock (Unix seconds), for callers of [`TokenVerifier::verify`].
pub use crate::api::unix_now;
