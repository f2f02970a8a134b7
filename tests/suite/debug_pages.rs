//! Diagnosis without a collector: the real binary keeps its failed calls in memory, and
//! `jisu trace`, the debug pages' JSON and the pages themselves (in Debian's Chromium)
//! find a failed call by the trace id its caller got.
use std::process::Command;

use crate::common::{Binary, Calls, MANIFEST, jisu_trace, samples, scrape, trace_of, value};
use jisu::{
    config::Settings,
    security::certs,
    startup::{Application, StartupError},
};
use tonic::Code;

async fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A duplicate email: ALREADY_EXISTS after the store's `create_user` ran.
async fn failed_create(client: &jisu::client::JisuClient, email: &str) -> String {
    client.create_user("Ada", email).await.unwrap();
    let err = client.create_user("Ada again", email).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    trace_of(&err)
}

#[tokio::test]
async fn a_failed_call_is_found_by_its_trace_id_without_a_collector() {
    // No OTLP endpoint: nothing is exported anywhere. Three failures fit in memory.
    let served = Binary::default()
        .env("JISU_DEBUG__KEPT_TRACES", "3")
        .env("JISU_DEBUG__SAMPLE_RATIO", "0")
        .start();
    let reader = served.client("users:read").await;
    let ok = reader.get_user("USER0001").await.unwrap();
    assert_eq!(ok.id, "USER0001");
    // Four refusals (the token lacks users:write), then a failure with store work.
    let mut refused = Vec::new();
    for _ in 0..4 {
        let err = reader
            .create_user("Ada", "ada@example.com")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        refused.push(trace_of(&err));
    }
    let writer = served.client("users:read users:write").await;
    let failed = failed_create(&writer, "grace@example.com").await;

    // The list: newest first, bounded (the two oldest refusals were dropped).
    let (code, out, err) = jisu_trace(&served.debug_addr, &["--errors"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(listed, [&failed, &refused[3], &refused[2]], "{out}");
    assert!(
        out.lines().nth(1).unwrap().contains("AlreadyExists"),
        "{out}"
    );

    // One trace: the SERVER span, why it was kept, the caller's message, the store work.
    let (code, out, err) = jisu_trace(&served.debug_addr, &[&failed]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(&format!("trace {failed}")), "{out}");
    assert!(
        lines[1].starts_with("jisucloud.v1.UserService/CreateUser  [server]  AlreadyExists"),
        "{out}"
    );
    assert!(lines[1].ends_with("kept: error"), "{out}");
    assert!(out.contains(" enduser.id=tester "), "{out}");
    assert!(
        out.contains("message: a user with this email already exists"),
        "{out}"
    );
    assert!(
        out.contains("└─ store create_user  [internal]  OK"),
        "{out}"
    );
    assert!(
        out.contains("db.system.name=sqlite db.operation.name=create_user"),
        "{out}"
    );

    // Not kept: a dropped refusal, and a success (sampling off). Which rejection: the
    // server's own words.
    for id in [&refused[0], &trace_of_ok(&reader).await] {
        let (code, _, err) = jisu_trace(&served.debug_addr, &[id]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!("no call of trace {id} is kept here")),
            "{err}"
        );
    }
    let (code, _, err) = jisu_trace(&served.debug_addr, &["not-a-trace"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a trace id"), "{err}");

    // The JSON behind the pages.
    let (status, rpcz) = get_json(&served.debug_addr, "/debug/api/rpcz").await;
    assert_eq!(status, 200);
    assert_eq!(rpcz["window_secs"], 60);
    let create = rpcz["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"] == "CreateUser")
        .unwrap_or_else(|| panic!("{rpcz}"));
    assert_eq!(create["calls"], 6, "{create}");
    assert_eq!(
        create["errors"],
        serde_json::json!([["AlreadyExists", 1], ["PermissionDenied", 4]])
    );
    let (status, body) = get_json(&served.debug_addr, "/debug/api/traces/00").await;
    assert_eq!(status, 400, "{body}");

    // What the store holds is on /metrics.
    let m = samples(&scrape(served.metrics_addr.parse().unwrap()).await);
    assert!(value(&m, "jisu_debug_traces_bytes", &[]) > 1000.0);
}

async fn trace_of_ok(client: &jisu::client::JisuClient) -> String {
    let reply = client
        .users()
        .get_user(jisu::pb::GetUserRequest {
            user_id: "USER0002".into(),
        })
        .await
        .unwrap();
    reply
        .metadata()
        .get("x-trace-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn successes_are_sampled_into_their_own_ring() {
    let served = Binary::default()
        .env("JISU_DEBUG__SAMPLE_RATIO", "1")
        .env("JISU_DEBUG__SAMPLED_TRACES", "2")
        .start();
    let client = served.client("users:read").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(trace_of_ok(&client).await);
    }
    let (status, list) = get_json(&served.debug_addr, "/debug/api/traces?limit=10").await;
    assert_eq!(status, 200);
    let kept: Vec<(&str, &str)> = list["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["trace_id"].as_str().unwrap(),
                t["kept_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kept, [(&*ids[2], "sample"), (&*ids[1], "sample")]);
    let (_, failures) = get_json(&served.debug_addr, "/debug/api/traces?failures=true").await;
    assert_eq!(failures["traces"], serde_json::json!([]));
}

#[tokio::test]
async fn the_debug_pages_stay_on_loopback_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    certs::init(dir.path(), &[], false).unwrap();
    let mut settings = Settings::for_certs(dir.path());
    settings.database_url = Some(jisu::config::DatabaseUrl::new("memory:"));
    settings.debug.listen = "0.0.0.0:0".parse().unwrap();
    match Application::build(settings.clone()).await {
        Err(StartupError::Deployment(why)) => {
            assert!(
                why.contains("debug.listen 0.0.0.0:0 is not a loopback address"),
                "{why}"
            );
            assert!(why.contains("debug.allow_remote"), "{why}");
        }
        other => panic!("expected a deployment error, got {other:?}"),
    }
    settings.debug.allow_remote = true;
    let app = Application::build(settings.clone()).await.unwrap();
    assert!(app.debug_addr().unwrap().ip().is_unspecified());
    drop(app);
    settings.debug.enabled = false;
    let app = Application::build(settings).await.unwrap();
    assert_eq!(app.debug_addr(), None);

    // A browser tricked by a rebound DNS name sends that name as Host: refused.
    let served = Binary::default().start();
    let addr: std::net::SocketAddr = served.debug_addr.parse().unwrap();
    let answer = |host: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET /debug/api/rpcz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).await.unwrap();
        response
    };
    assert!(
        answer("attacker.example:9469")
            .await
            .starts_with("HTTP/1.1 421")
    );
    let ok = answer("localhost:9469").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.to_ascii_lowercase().contains("cache-control: no-store"),
        "{ok}"
    );
}

/// The page a person opens: in a real headless Chromium (Debian's), with no console
/// error, the failed call listed, and its timeline showing the store's child span. The
/// screenshot stays in `target/artifacts/debug-traces.png`.
#[tokio::test]
async fn the_traces_page_shows_a_failed_call_in_a_real_browser() {
    let served = Binary::default()
        .env("JISU_DEBUG__SAMPLE_RATIO", "0")
        .start();
    let writer = served.client("users:read users:write").await;
    let failed = failed_create(&writer, "linus@example.com").await;
    let artifacts = std::path::Path::new(MANIFEST).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("debug-traces.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = std::path::Path::new(MANIFEST).join("tests/browser/check_debug_pages.mjs");
    let base = format!("http://{}", served.debug_addr);
    // Off the runtime: the server is another process, nothing here needs to run meanwhile.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .args([&base, &failed])
            .arg(&screenshot)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs (scripts/test installs tests/browser's packages and chromium)");
    let screenshot = artifacts.join("debug-traces.png");
    assert!(
        output.status.success(),
        "the browser check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["listed"], true, "{seen}");
    assert_eq!(seen["listedCode"], "AlreadyExists", "{seen}");
    assert_eq!(
        seen["traceRows"],
        serde_json::json!([
            {"name": "jisucloud.v1.UserService/CreateUser", "kind": "server", "status": "AlreadyExists"},
            {"name": "store create_user", "kind": "internal", "status": "OK"},
        ]),
        "{seen}"
    );
    assert!(seen["storeBar"]["width"].as_f64().unwrap() >= 1.0, "{seen}");
    let rpcz = seen["rpcz"].as_array().unwrap();
    let create = rpcz
        .iter()
        .find(|row| row[1] == "CreateUser")
        .unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(create[2], "2");
    assert_eq!(create[3], "AlreadyExists: 1");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
