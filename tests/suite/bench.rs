//! `jisu bench` against the real binary: closed and open loop, the JSON report, the status
//! distribution, and the comparison targets of the benchmark suite (bare, bare-tls, REST).

use std::process::{Command, Stdio};

use crate::common::Binary;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_jisu"))
        .arg("bench")
        .args(["--threads", "1", "--warmup", "0s", "--format", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn certs(server: &crate::common::Served) -> &str {
    server.certs.to_str().unwrap()
}

/// The three gRPC generators: through the Jisu client, `--lean` (straight over h2) and
/// `--frames` (HTTP/2 frames written by the generator), the last also over two
/// connections sharing one schedule.
const DRIVERS: [&[&str]; 4] = [
    &[],
    &["--lean"],
    &["--frames"],
    &["--frames", "--connections", "2"],
];

#[test]
fn closed_loop_reports_counts_latency_and_status() {
    let server = Binary::default().start();
    for driver in DRIVERS {
        closed_loop(&server, driver);
    }
}

fn closed_loop(server: &crate::common::Served, driver: &[&str]) {
    let ep = server.endpoint();
    let bench = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(driver);
        bench(&all)
    };
    let r = bench(&[
        "--endpoint",
        &ep,
        "--certs",
        certs(server),
        "--total",
        "300",
        "-c",
        "8",
    ]);
    assert_eq!(r["count"], 300, "{driver:?}");
    assert_eq!(r["status"], serde_json::json!({"OK": 300}), "{driver:?}");
    let l = &r["latency_ms"];
    for q in ["min", "p50", "p90", "p99", "p999", "max"] {
        assert!(l[q].as_f64().unwrap() > 0.0, "{q}: {r}");
    }
    assert!(l["p50"].as_f64() <= l["p99"].as_f64());
    assert!(r["qps"].as_f64().unwrap() > 0.0);
    assert_eq!(
        r["payload_bytes"],
        serde_json::json!({"request": 15, "response": 73})
    );
    assert!(
        r["client_cpu_us_per_call"].as_f64().unwrap() > 0.0,
        "{driver:?}"
    );

    // Failures are counted by code, with a sample message.
    let r = bench(&[
        "--endpoint",
        &ep,
        "--certs",
        certs(server),
        "--total",
        "50",
        "--data",
        r#"{"user_id": "USER9999"}"#,
    ]);
    assert_eq!(
        r["status"],
        serde_json::json!({"NotFound": 50}),
        "{driver:?}"
    );
    assert!(
        r["errors"]["NotFound"]
            .as_str()
            .unwrap()
            .contains("USER9999")
    );
    // A token without the scope: every call PermissionDenied.
    let out = Command::new(env!("CARGO_BIN_EXE_jisu"))
        .args(["token", "issue", "--certs", certs(server)])
        .args(["--sub", "b", "--scope", "orders:read"])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let r = bench(&[
        "--endpoint",
        &ep,
        "--certs",
        certs(server),
        "--total",
        "20",
        "--token",
        token.trim(),
    ]);
    assert_eq!(
        r["status"],
        serde_json::json!({"PermissionDenied": 20}),
        "{driver:?}"
    );
}

#[test]
fn open_loop_sends_on_schedule_and_streams_count_messages() {
    let server = Binary::default().start();
    let ep = server.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let timeline = dir.path().join("timeline.csv");
    for driver in DRIVERS {
        open_loop(&ep, certs(&server), &timeline, driver);
    }

    for driver in DRIVERS {
        let mut args = vec![
            "--endpoint",
            &ep,
            "--certs",
            certs(&server),
            "--call",
            "users.ListUsers",
            "--stream-messages",
            "50",
            "--total",
            "10",
        ];
        args.extend_from_slice(driver);
        let r = bench(&args);
        assert_eq!(r["count"], 10, "{driver:?}");
        assert_eq!(r["status"], serde_json::json!({"OK": 10}), "{driver:?}");
        assert_eq!(r["messages"], 500, "{driver:?}");
    }
}

fn open_loop(ep: &str, certs: &str, timeline: &std::path::Path, driver: &[&str]) {
    let mut args = vec![
        "--endpoint",
        ep,
        "--certs",
        certs,
        "--rps",
        "200",
        "--duration",
        "1s",
        "--timeline",
        timeline.to_str().unwrap(),
    ];
    args.extend_from_slice(driver);
    let r = bench(&args);
    // The schedule, whatever the machine's speed: 200 slots in 1 s, each sent (late ones
    // counted as late, never dropped).
    let count = r["count"].as_u64().unwrap();
    assert_eq!(count, 200, "calls at 200/s for 1 s: {driver:?}");
    assert!(r["mode"].as_str().unwrap().contains("open loop"));
    let late = r["late_sends"].as_u64().expect("late sends reported");
    assert!(late <= count, "{late} late of {count}");
    // The timeline: every measured call, in slot order, each slot 5 ms after the last,
    // each leaving no earlier than its slot and answered after it left; the late sends
    // are the rows that left over 1 ms after their slot.
    let csv = std::fs::read_to_string(timeline).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("due_us,sent_us,done_us,code"));
    let rows: Vec<[i64; 4]> = lines
        .map(|l| {
            let v: Vec<i64> = l.split(',').map(|f| f.parse().unwrap()).collect();
            v.try_into().unwrap()
        })
        .collect();
    assert_eq!(rows.len() as u64, count, "{csv}");
    for (k, [due, sent, done, code]) in rows.iter().copied().enumerate() {
        assert!(
            (due - 5_000 * k as i64).abs() <= 1,
            "slot {k} due at {due} µs"
        );
        assert!(due <= sent && sent <= done, "slot {k}: {due} {sent} {done}");
        assert_eq!(code, 0, "slot {k} answered OK: {driver:?}");
    }
    let late_rows = rows.iter().filter(|r| r[1] - r[0] > 1_000).count() as u64;
    assert_eq!(late_rows, late, "late sends in the timeline and the report");
}

#[test]
fn bad_arguments_are_clear_errors() {
    for (args, needle) in [
        (vec!["--call", "users.Nope"], "expected one of"),
        (vec!["--call", "orders.GetOrder"], "needs --data"),
        (vec!["--data", "{not json"], "not JSON"),
        (vec!["--data", r#"{"user_id": 5}"#], "does not fit"),
        (vec!["--lean", "--rest"], "cannot be used with"),
        (vec!["--frames", "--lean"], "cannot be used with"),
        (vec!["--frames", "--rest"], "cannot be used with"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_jisu"))
            .arg("bench")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Starts `jisu bench-target KIND` and returns it with its address.
fn target(kind: &str, certs: &str) -> (std::process::Child, String) {
    spawn_target(&[kind, "--certs", certs], Stdio::inherit())
}

/// Starts `jisu bench-target ARGS` with its stderr to `stderr`; returns it with its address
/// (the end of the first line it prints).
fn spawn_target(args: &[&str], stderr: Stdio) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_jisu"))
        .arg("bench-target")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let line = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (child, addr)
}

#[test]
fn the_comparison_targets_serve_the_same_answers() {
    let server = Binary::default().start();
    let (mut bare, addr) = target("bare", certs(&server));
    let r = bench(&[
        "--endpoint",
        &format!("http://{addr}"),
        "--insecure",
        "--total",
        "100",
    ]);
    assert_eq!(r["status"], serde_json::json!({"OK": 100}));
    assert_eq!(r["payload_bytes"]["response"], 73);
    assert!(r.get("server_cpu_ticks").is_none(), "no --server-pid: {r}");
    // The lean and frames generators over plaintext h2 as well.
    for driver in ["--lean", "--frames"] {
        let r = bench(&[
            "--endpoint",
            &format!("http://{addr}"),
            "--insecure",
            driver,
            "--total",
            "100",
        ]);
        assert_eq!(r["status"], serde_json::json!({"OK": 100}), "{driver}: {r}");
        assert_eq!(r["payload_bytes"]["response"], 73, "{driver}");
    }
    let _ = bare.kill();

    // The same handlers behind the mTLS listener; the generator reads the server's CPU
    // over the measured window when told its pid.
    let (mut bare_tls, addr) = target("bare-tls", certs(&server));
    let port = addr.rsplit(':').next().unwrap();
    let pid = bare_tls.id().to_string();
    let r = bench(&[
        "--endpoint",
        &format!("https://localhost:{port}"),
        "--certs",
        certs(&server),
        "--total",
        "1000",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r["status"], serde_json::json!({"OK": 1000}));
    assert_eq!(r["payload_bytes"]["response"], 73);
    assert!(r["server_cpu_ticks"].is_u64(), "{r}");
    // The machine's stolen time over the same window (Linux /proc/stat).
    assert!(r["steal_ticks"].is_u64(), "{r}");
    let _ = bare_tls.kill();

    let (mut rest, addr) = target("rest", certs(&server));
    let port = addr.rsplit(':').next().unwrap();
    let r = bench(&[
        "--endpoint",
        &format!("https://localhost:{port}"),
        "--rest",
        "--certs",
        certs(&server),
        "--total",
        "100",
    ]);
    assert_eq!(r["status"], serde_json::json!({"OK": 100}));
    assert!(r["payload_bytes"]["response"].as_u64().unwrap() > 100);
    let r = bench(&[
        "--endpoint",
        &format!("https://localhost:{port}"),
        "--rest",
        "--certs",
        certs(&server),
        "--total",
        "10",
        "--data",
        r#"{"user_id": "USER0404"}"#,
    ]);
    assert_eq!(r["status"], serde_json::json!({"NotFound": 10}));
    // The realistic payloads as REST: a batch of 100 as one POST, a page of 100 users.
    let ids: Vec<String> = (1..=100).map(|i| format!("USER{i:04}")).collect();
    let endpoint = format!("https://localhost:{port}");
    let rest_bench = |args: &[&str]| {
        let mut all = vec!["--endpoint", &endpoint, "--rest", "--certs", certs(&server)];
        all.extend_from_slice(args);
        bench(&all)
    };
    let batch = serde_json::json!({ "user_ids": ids }).to_string();
    let r = rest_bench(&[
        "--total",
        "20",
        "--call",
        "users.BatchGetUsers",
        "--data",
        &batch,
    ]);
    assert_eq!(r["status"], serde_json::json!({"OK": 20}), "{r}");
    let r = rest_bench(&[
        "--total",
        "20",
        "--call",
        "users.ListUsers",
        "--stream-messages",
        "100",
    ]);
    assert_eq!(r["status"], serde_json::json!({"OK": 20}), "{r}");
    assert_eq!(r["messages"], 2000, "100 users a page: {r}");
    let _ = rest.kill();
}

/// The benchmark's OTLP sink counts what a real OTLP client sends it (the spans of every
/// scope of every resource, their contents skipped) and says so on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_sink_counts_the_spans_it_receives() {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::{
            ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
        },
        common::v1::{AnyValue, KeyValue, any_value},
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use std::io::BufRead;
    let (mut child, addr) = spawn_target(&["otlp-sink", "--threads", "1"], Stdio::piped());
    let span = |i: usize| Span {
        trace_id: vec![1; 16],
        span_id: vec![i as u8 + 1; 8],
        name: format!("span {i}"),
        attributes: vec![KeyValue {
            key: "k".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("v".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let scope = |n: std::ops::Range<usize>| ScopeSpans {
        spans: n.map(span).collect(),
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                scope_spans: vec![scope(0..4), scope(4..6)],
                ..Default::default()
            },
            ResourceSpans {
                scope_spans: vec![scope(6..7)],
                ..Default::default()
            },
        ],
    };
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client.export(request).await.unwrap();
    // The sink reports its count once a second when it has changed (a bound on the wait,
    // so a sink that never counts fails the test instead of hanging it).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("otlp-sink:") {
                let _ = tx.send(line);
            }
        }
    });
    let reported = rx.recv_timeout(std::time::Duration::from_secs(30)).ok();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reported.as_deref(), Some("otlp-sink: 7 spans received"));
}
