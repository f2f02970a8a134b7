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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ratio = loop {
        if tokio::net::TcpStream::connect(prometheus.addr)
            .await
            .is_ok()
        {
            let (_, body) =
                http_get(prometheus.addr, &format!("/api/v1/query?query={query}")).await;
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&body)
                && let Some(value) = json["data"]["result"][0]["value"][1].as_str()
            {
                break value.parse::<f64>().unwrap();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never returned a result"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
