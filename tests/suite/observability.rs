//! observability/: promtool validates the config and rules and runs their unit tests, and
//! a real Prometheus (Debian's package) scrapes a running Jisu and answers PromQL.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::{ALL_SCOPES, TestServer, http_get};
use jisu::pb::GetUserRequest;

const OBSERVABILITY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/observability");

fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} not found: run scripts/test (installs Debian's prometheus package)",
        path.display()
    );
    path
}

fn run_promtool(args: &[&str]) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(OBSERVABILITY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_config_and_rules_and_passes_rule_unit_tests() {
    run_promtool(&["check", "config", "prometheus.yml"]);
    run_promtool(&["check", "rules", "rules/jisu.rules.yml"]);
    run_promtool(&["test", "rules", "rules_test.yml"]);
}

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    start_prometheus_with(target, &[])
}

fn start_prometheus_with(target: std::net::SocketAddr, flags: &[&str]) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: jisu\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn real_prometheus_scrapes_jisu_and_computes_the_error_ratio() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let mut users = server.client(ALL_SCOPES).await.users();
    for id in ["USER0001", "USER0002", "USER0003", "USER0999"] {
        let _ = users.get_user(GetUserRequest { user_id: id.into() }).await;
    }
    let prometheus = start_prometheus(server.metrics_addr);
    let query = encode(
        r#"sum(grpc_server_handled_total{grpc_method="GetUser",grpc_code!="OK"}) / sum(grpc_server_handled_total{grpc_method="GetUser"})"#,
    );
    // Wait (bounded) for Prometheus to start and scrape once, then read the answer.
    let answer = prometheus_until(
        &prometheus,
        &format!("/api/v1/query?query={query}"),
        |json| json["data"]["result"][0]["value"][1].as_str().is_some(),
    )
    .await;
    let ratio: f64 = answer["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ratio, 0.25);
    let (_, up) = http_get(
        prometheus.addr,
        &format!("/api/v1/query?query={}", encode("up{job=\"jisu\"}")),
    )
    .await;
    assert!(
        up.contains(r#""value":["#) && up.contains(r#","1"]"#),
        "{up}"
    );
    server.stop().await;
}

/// Waits (bounded) until Prometheus answers `path` with JSON that `done` accepts.
async fn prometheus_until(
    prometheus: &Prometheus,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(prometheus.addr)
            .await
            .is_ok()
        {
            let (_, body) = http_get(prometheus.addr, path).await;
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&body)
                && done(&json)
            {
                return json;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never answered {path} as expected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The latency histogram carries the trace id of a failed call as an exemplar, over
/// OpenMetrics, and a real Prometheus with exemplar storage keeps it (what the
/// dashboard's latency panels show, linked to Jaeger).
#[tokio::test]
async fn real_prometheus_stores_trace_id_exemplars_of_failed_calls() {
    let served = crate::common::Binary::default()
        .env("JISU_DEBUG__SAMPLE_RATIO", "0")
        .start();
    let reader = served.client("users:read").await;
    use crate::common::Calls as _;
    reader.get_user("USER0001").await.unwrap();
    let denied = reader
        .create_user("Ada", "ada@example.com")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let trace_id = crate::common::trace_of(&denied);

    let metrics_addr: std::net::SocketAddr = served.metrics_addr.parse().unwrap();
    let prometheus = start_prometheus_with(metrics_addr, &["--enable-feature=exemplar-storage"]);
    let query = encode(r#"grpc_server_handling_seconds_bucket{grpc_method="CreateUser"}"#);
    let now = jisu::api::unix_now();
    let path = format!(
        "/api/v1/query_exemplars?query={query}&start={}&end={}",
        now - 3600,
        now + 3600
    );
    let answer = prometheus_until(&prometheus, &path, |json| {
        json["data"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    let exemplars: Vec<&serde_json::Value> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|series| series["exemplars"].as_array().unwrap())
        .collect();
    assert_eq!(exemplars.len(), 1, "{answer}");
    assert_eq!(
        exemplars[0]["labels"]["trace_id"],
        trace_id.as_str(),
        "{answer}"
    );
    // The successful, unsampled GetUser leads nowhere: it has none.
    let query = encode(r#"grpc_server_handling_seconds_bucket{grpc_method="GetUser"}"#);
    let path = format!(
        "/api/v1/query_exemplars?query={query}&start={}&end={}",
        now - 3600,
        now + 3600
    );
    let none = prometheus_until(&prometheus, &path, |json| json["status"] == "success").await;
    assert_eq!(none["data"], serde_json::json!([]), "{none}");
    // The scrape itself was OpenMetrics, and every series came through: up is 1.
    let up = prometheus_until(
        &prometheus,
        &format!("/api/v1/query?query={}", encode("up{job=\"jisu\"}")),
        |json| json["data"]["result"][0]["value"][1].as_str().is_some(),
    )
    .await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    // The provisioned dashboard asks for them on its latency panels, and Grafana's
    // Prometheus data source links their trace ids to Jaeger.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(OBSERVABILITY).join("grafana/dashboards/jisu-red.json"))
            .unwrap(),
    )
    .unwrap();
    let latency: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter(|t| {
            t["expr"]
                .as_str()
                .unwrap_or("")
                .contains("handling_seconds_bucket")
        })
        .collect();
    assert!(!latency.is_empty());
    assert!(latency.iter().all(|t| t["exemplar"] == true), "{latency:?}");
    let datasource = std::fs::read_to_string(
        Path::new(OBSERVABILITY).join("grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    assert!(datasource.contains("exemplarTraceIdDestinations"));
    assert!(datasource.contains("datasourceUid: jaeger"));
}
