//! JWT signing keys that rotate without downtime: a JWK set file with several keys picked
//! by `kid` (overlapping keys during a rotation), and a JWK set URL fetched in the
//! background whose early refetches (unknown `kid`) respect a floor.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::common::{Calls, TestServer, assert_status, eventually, reloads};
use jisu::security::jwt::TokenIssuer;
use tonic::{Code, Status};

fn jisu(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jisu"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jisu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn token(dir: &Path, key: &str, kid: &str) -> String {
    TokenIssuer::from_file(&dir.join(key), "jisu", "jisucloud")
        .unwrap()
        .with_kid(kid)
        .issue("rotor", "users:read", Duration::from_secs(300))
}

async fn get_user(server: &TestServer, token: String) -> Result<(), Status> {
    server
        .client_with_token(Some(token))
        .await
        .get_user("USER0001")
        .await
        .map(drop)
}

#[tokio::test]
async fn a_jwks_file_rotates_signing_keys_with_an_overlap() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap().to_owned();
    jisu(&["certs", "init", "--dir", &dir]);
    jisu(&["certs", "jwt-key", "next", "--dir", &dir]);
    let jwks = certs.path().join("jwks.json");
    let write_jwks = |keys: &[&str]| {
        let mut args = vec!["certs", "jwks"];
        args.extend_from_slice(keys);
        std::fs::write(&jwks, jisu(&args)).unwrap();
    };
    let current = format!("current={dir}/jwt.pub");
    let next = format!("next={dir}/next.pub");
    write_jwks(&[&current]);
    let path = jwks.clone();
    let server = TestServer::start_with_certs(certs.path(), move |s| {
        s.demo_data = true;
        s.auth.jwks = Some(path);
    })
    .await;
    let (old, new) = (
        token(certs.path(), "jwt.key", "current"),
        token(certs.path(), "next.key", "next"),
    );
    get_user(&server, old.clone()).await.expect("current key");
    assert_status(
        get_user(&server, new.clone()).await,
        Code::Unauthenticated,
        "TOKEN_UNKNOWN_KEY",
    );
    // A token signed by the next key but claiming the current kid: bad signature.
    let forged = token(certs.path(), "next.key", "current");
    assert_status(
        get_user(&server, forged).await,
        Code::Unauthenticated,
        "TOKEN_BAD_SIGNATURE",
    );

    write_jwks(&[&current, &next]);
    server.wait_for_reload("jwt", "ok", 1.0).await;
    get_user(&server, old.clone())
        .await
        .expect("old key during the overlap");
    get_user(&server, new.clone())
        .await
        .expect("new key during the overlap");

    write_jwks(&[&next]);
    server.wait_for_reload("jwt", "ok", 2.0).await;
    assert_status(
        get_user(&server, old).await,
        Code::Unauthenticated,
        "TOKEN_UNKNOWN_KEY",
    );
    get_user(&server, new)
        .await
        .expect("new key after the retirement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_refetched_for_unknown_kids_no_more_than_the_floor_allows() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap().to_owned();
    jisu(&["certs", "init", "--dir", &dir]);
    jisu(&["certs", "jwt-key", "next", "--dir", &dir]);
    let served = Arc::new(parking_lot::Mutex::new(jisu(&[
        "certs",
        "jwks",
        &format!("a={dir}/jwt.pub"),
    ])));
    let fetches = Arc::new(AtomicUsize::new(0));
    let app = {
        let (served, fetches) = (served.clone(), fetches.clone());
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (served, fetches) = (served.clone(), fetches.clone());
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    served.lock().clone()
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = TestServer::start_with_certs(certs.path(), move |s| {
        s.demo_data = true;
        s.auth.jwks_url = Some(url);
        s.auth.jwks_refresh_secs = 3600;
        s.auth.jwks_min_refresh_secs = 2;
    })
    .await;
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "fetched once at start-up"
    );
    get_user(&server, token(certs.path(), "jwt.key", "a"))
        .await
        .expect("key a");

    // Key b appears at the URL; the first token with kid b is refused and triggers a
    // refetch (after the floor); a flood of tokens with made-up kids does not add more.
    *served.lock() = jisu(&[
        "certs",
        "jwks",
        &format!("a={dir}/jwt.pub"),
        &format!("b={dir}/next.pub"),
    ]);
    let b = token(certs.path(), "next.key", "b");
    assert_status(
        get_user(&server, b.clone()).await,
        Code::Unauthenticated,
        "TOKEN_UNKNOWN_KEY",
    );
    for i in 0..30 {
        let junk = token(certs.path(), "next.key", &format!("junk-{i}"));
        assert_status(
            get_user(&server, junk).await,
            Code::Unauthenticated,
            "TOKEN_UNKNOWN_KEY",
        );
    }
    eventually("key b fetched", Duration::from_secs(15), async || {
        get_user(&server, b.clone()).await.is_ok()
    })
    .await;
    let after_b = fetches.load(Ordering::SeqCst);
    assert!(after_b <= 3, "{after_b} fetches for 31 unknown-kid tokens");
    println!(
        "31 unknown-kid tokens cost {} fetch(es) past the start-up one",
        after_b - 1
    );
    assert!(reloads(&server.scrape().await, "jwks_url", "ok") >= 1.0);
}

#[tokio::test]
async fn a_server_that_cannot_fetch_its_keys_says_so_and_does_not_start() {
    let certs = tempfile::tempdir().unwrap();
    jisu::security::certs::init(certs.path(), &[], false).unwrap();
    let mut settings = jisu::config::Settings::for_certs(certs.path());
    // Port 9 (discard) on loopback: nothing listens there.
    settings.auth.jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
    let store = Arc::new(jisu::store::MemoryStore::new());
    let err = jisu::startup::Application::build_with_store(settings, store, "test")
        .await
        .expect_err("no keys, no server");
    let message = err.to_string();
    assert!(
        message.contains("JWT keys from http://127.0.0.1:9/jwks.json: cannot fetch"),
        "{message}"
    );
}
