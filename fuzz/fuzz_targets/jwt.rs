//! Arbitrary bearer tokens and JWK sets: verification answers with a refusal, never a
//! panic.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use jisu::security::{
    certs::jwt_key_pair,
    jwt::{KeySet, TokenVerifier, VerifierSettings, unix_now},
};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static TokenVerifier {
    static V: OnceLock<TokenVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let pair = jwt_key_pair().unwrap();
        TokenVerifier::from_pem(
            pair.cert.as_bytes(),
            &VerifierSettings {
                issuer: "jisu".into(),
                audience: "jisucloud".into(),
                leeway: Duration::from_secs(30),
                max_token_bytes: 8192,
                // No cache: every input goes through the parser.
                cache_capacity: 0,
            },
        )
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = verifier().verify(token, unix_now());
    }
    let _ = KeySet::from_jwks(data);
});
