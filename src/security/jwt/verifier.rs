//! Verifying tokens: one algorithm, required claims, a leeway, a size cap before decoding,
//! and a cache of verified tokens tied to the key set's generation.
use std::{path::Path, sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};

use super::{AuthFailure, Claims, KeyError, KeySet, Principal, format_err, read_key};

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

    /// As [`TokenVerifier::verify`], remembering the last good token of one connection in
    /// `memo`: a connection usually repeats one token, and a byte compare is cheaper than
    /// hashing the token into the shared cache. The memo obeys the same rules as the
    /// cache: the clock is checked on every use, and a key rotation makes it a miss.
    /// `token` is the header's bytes: the memo holds only text, so only a miss needs the
    /// check that they are ([`token_text`]).
    pub fn verify_memoized(
        &self,
        memo: &TokenMemo,
        token: &[u8],
        now: u64,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let generation = self.keys.read().0;
        if let Some(hit) = memo.get(token, generation)
            && self.in_time(&hit, now)
        {
            return Ok(hit);
        }
        let token = token_text(token)?;
        let principal = self.verify(token, now)?;
        memo.set(token, generation, principal.clone());
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
            subject: claims.sub.into(),
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

/// The last token one connection presented and what it verified to, under which key
/// set generation (see [`TokenVerifier::verify_memoized`]).
#[derive(Debug, Default)]
pub struct TokenMemo(parking_lot::Mutex<Option<Memo>>);

#[derive(Debug)]
struct Memo {
    token: Box<str>,
    generation: u64,
    principal: Arc<Principal>,
}

/// A token sent as header bytes, as text: visible ASCII (what `HeaderValue::to_str`
/// accepts), else `Malformed`.
pub fn token_text(token: &[u8]) -> Result<&str, AuthFailure> {
    std::str::from_utf8(token)
        .ok()
        .filter(|t| t.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .ok_or(AuthFailure::Malformed)
}

impl TokenMemo {
    fn get(&self, token: &[u8], generation: u64) -> Option<Arc<Principal>> {
        match &*self.0.lock() {
            Some(m) if m.generation == generation && m.token.as_bytes() == token => {
                Some(m.principal.clone())
            }
            _ => None,
        }
    }

    fn set(&self, token: &str, generation: u64, principal: Arc<Principal>) {
        *self.0.lock() = Some(Memo {
            token: token.into(),
            generation,
            principal,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{
        certs::jwt_key_pair,
        jwt::{TokenIssuer, jwk_from_pem, unix_now},
    };
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
    fn the_connection_memo_obeys_the_clock_and_key_rotation() {
        let (issuer, verifier) = pair();
        let memo = TokenMemo::default();
        let token = issuer.issue("alice", "users:read", Duration::from_secs(60));
        let now = unix_now();
        assert_eq!(
            verifier
                .verify_memoized(&memo, token.as_bytes(), now)
                .unwrap()
                .subject
                .as_ref(),
            "alice"
        );
        assert!(memo.get(token.as_bytes(), 0).is_some(), "remembered");
        assert!(
            verifier
                .verify_memoized(&memo, token.as_bytes(), now)
                .is_ok()
        );
        // The clock is checked on every use of the memo.
        assert_eq!(
            verifier
                .verify_memoized(&memo, token.as_bytes(), now + 60 + 31)
                .unwrap_err(),
            AuthFailure::Expired
        );
        // Another token on the connection is verified, not taken from the memo.
        let other = issuer.issue("bob", "users:read", Duration::from_secs(60));
        assert_eq!(
            verifier
                .verify_memoized(&memo, other.as_bytes(), now)
                .unwrap()
                .subject
                .as_ref(),
            "bob"
        );
        // A key rotation makes the memo a miss: the retired key stops working.
        let next = jwt_key_pair().unwrap();
        verifier.replace_keys(KeySet::from_pem(next.cert.as_bytes()).unwrap());
        assert_eq!(
            verifier
                .verify_memoized(&memo, other.as_bytes(), now)
                .unwrap_err(),
            AuthFailure::BadSignature
        );
    }

    #[test]
    fn a_token_that_is_not_visible_ascii_is_malformed_memo_or_not() {
        let (issuer, verifier) = pair();
        let memo = TokenMemo::default();
        let token = issuer.issue("alice", "users:read", Duration::from_secs(60));
        let now = unix_now();
        assert!(
            verifier
                .verify_memoized(&memo, token.as_bytes(), now)
                .is_ok()
        );
        // The memoized token with one byte more (obs-text, a control byte): a miss, and
        // refused as malformed before any parsing.
        for extra in [0x80u8, 0x7f, 0x01] {
            let mut bytes = token.clone().into_bytes();
            bytes.push(extra);
            assert_eq!(
                verifier.verify_memoized(&memo, &bytes, now).unwrap_err(),
                AuthFailure::Malformed,
                "{extra:#x}"
            );
        }
        assert_eq!(token_text(b"a\tb c~"), Ok("a\tb c~"));
        assert_eq!(token_text("é".as_bytes()), Err(AuthFailure::Malformed));
    }

    #[test]
    fn cached_tokens_still_expire() {
        let (issuer, verifier) = pair();
        let token = issuer.issue("alice", "users:read", Duration::from_secs(60));
        let now = unix_now();
        assert_eq!(&*verifier.verify(&token, now).unwrap().subject, "alice");
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
