//! Where token verification keys come from: the PEM key (`jwt.pub`), a JWK set file, or
//! a JWK set URL fetched in the background. The URL is fetched at start-up (a server
//! that cannot get its keys says so and does not start), every `jwks_refresh_secs`, and
//! early when a token names a `kid` no key has — at most once per
//! `jwks_min_refresh_secs`, so a flood of made-up kids costs one fetch per floor, not one
//! per call. A failed or invalid fetch keeps the keys in use and is counted in
//! `jisu_credential_reload_total{kind="jwks_url",result="error"}`.
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::jwt::{KeyError, KeySet, TokenVerifier};
use crate::{config::Settings, telemetry::metrics::Metrics};

/// Largest JWK set accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

fn key_error(source: &str, detail: impl std::fmt::Display) -> KeyError {
    KeyError::Keys {
        from: source.to_owned(),
        detail: detail.to_string(),
    }
}

/// The keys to start with, from the configured source, and (for a URL) the digest of
/// what was fetched, for [`spawn_refresh`].
pub async fn initial_keys(settings: &Settings) -> Result<(KeySet, Option<[u8; 32]>), KeyError> {
    if let Some(url) = &settings.auth.jwks_url {
        let (keys, digest) = fetch(&client(), url).await.map_err(|e| key_error(url, e))?;
        tracing::info!(%url, keys = keys.len(), "JWT keys fetched");
        return Ok((keys, Some(digest)));
    }
    let path = settings.jwt_keys_file();
    let bytes = std::fs::read(&path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let source = path.display().to_string();
    let keys = if settings.auth.jwks.is_some() {
        KeySet::from_jwks(&bytes).map_err(|e| key_error(&source, e))?
    } else {
        KeySet::from_pem(&bytes).map_err(|e| key_error(&source, e))?
    };
    Ok((keys, None))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a default HTTP client builds")
}

/// GETs and parses a JWK set; returns it with the digest of its bytes.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<(KeySet, [u8; 32]), String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let keys = KeySet::from_jwks(&body)?;
    Ok((keys, Sha256::digest(&body).into()))
}

/// Keeps the verifier's keys in step with `url` until aborted; `fetched` is the digest of
/// the set the verifier holds (an unchanged set is not swapped in again, which would
/// empty the verified-token cache for nothing).
pub fn spawn_refresh(
    url: String,
    verifier: TokenVerifier,
    metrics: Metrics,
    (every, floor): (Duration, Duration),
    fetched: Option<[u8; 32]>,
) -> tokio::task::JoinHandle<()> {
    let count = move |result: &'static str| {
        metrics
            .counter(
                "jisu_credential_reload_total",
                &[("kind", "jwks_url"), ("result", result)],
            )
            .increment(1);
    };
    tokio::spawn(async move {
        let client = client();
        let mut last_fetch = Instant::now();
        let mut last_digest = fetched;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = verifier.unknown_kid_seen() => {
                    // The floor: early refetches are spaced at least `floor` apart.
                    let since = last_fetch.elapsed();
                    if since < floor {
                        tokio::time::sleep(floor - since).await;
                    }
                }
            }
            last_fetch = Instant::now();
            match fetch(&client, &url).await {
                Ok((keys, digest)) => {
                    if last_digest != Some(digest) {
                        tracing::info!(%url, keys = keys.len(), "JWT keys refreshed");
                        verifier.replace_keys(keys);
                        last_digest = Some(digest);
                    }
                    count("ok");
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "JWT keys not refreshed; keeping the current ones");
                    count("error");
                }
            }
        }
    })
}
