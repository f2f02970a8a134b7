//! Fault tests with real processes on loopback, bounded in time: the client's balancing,
//! retries and circuit breakers against killed, failing and stopping replicas. Each test
//! prints what it measured (calls attempted, failed, retried); run with `--nocapture`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::common::{Binary, Calls, FaultyStore, Served, samples};
use futures::StreamExt;
use jisu::{
    client::{ClientConfig, JisuClient, Resilience},
    config::Settings,
    pb::{CreateOrderRequest, GetUserRequest, OrderItem, StreamOrderUpdatesRequest},
    security::{certs, jwt::TokenIssuer},
    startup::Application,
    store::{MemoryStore, Store},
    telemetry::metrics::Metrics,
};
use tonic::Code;

/// A server in this process over a given backend, sharing a certs dir with others.
struct InProcess {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcess {
    async fn start(certs: &std::path::Path, store: Arc<dyn Store>) -> Self {
        let mut settings = Settings::for_certs(certs);
        settings.demo_data = true;
        settings.data_dir = certs.join(format!("data-{}", rand::random::<u32>()));
        let app = Application::build_with_store(settings, store, "test")
            .await
            .unwrap();
        let addr = app.grpc_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = app
                .run_until_stopped(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Quick health probes and short cool-downs, so a test sees the whole cycle. The retry
/// budget is sized for 8 callers failing at once when a replica dies (the default of 10
/// tokens suits a client whose traffic is mostly successes between incidents).
fn fast() -> Resilience {
    Resilience {
        health_interval: Duration::from_millis(100),
        breaker_cooldown: Duration::from_millis(200),
        breaker_failures: 3,
        budget_tokens: 100.0,
        ..Resilience::default()
    }
}

fn client_config(certs: &std::path::Path, endpoints: &[String], metrics: &Metrics) -> ClientConfig {
    let token = TokenIssuer::from_file(&certs.join("jwt.key"), "jisu", "jisucloud")
        .unwrap()
        .issue(
            "faults",
            "users:read orders:read orders:write",
            Duration::from_secs(600),
        );
    let mut config = ClientConfig::from_certs_dir(&endpoints[0], certs, "client")
        .unwrap()
        .with_token(token);
    config.more_endpoints = endpoints[1..].to_vec();
    config.resilience = fast();
    config.metrics = Some(metrics.client());
    config.timeout = Duration::from_secs(5);
    config
}

/// `n` real `jisu serve` replicas sharing one CA, and a client balancing over them.
struct Cluster {
    _dir: tempfile::TempDir,
    certs_dir: std::path::PathBuf,
    replicas: Vec<Served>,
    endpoints: Vec<String>,
    metrics: Metrics,
    client: JisuClient,
}

impl Cluster {
    async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        certs::init(&certs_dir, &[], false).unwrap();
        let replicas: Vec<Served> = (0..n)
            .map(|_| Binary::default().certs(&certs_dir).start())
            .collect();
        let endpoints: Vec<String> = replicas.iter().map(|r| r.endpoint()).collect();
        let metrics = Metrics::new();
        let client = JisuClient::connect(client_config(&certs_dir, &endpoints, &metrics))
            .await
            .unwrap();
        Self {
            _dir: dir,
            certs_dir,
            replicas,
            endpoints,
            metrics,
            client,
        }
    }
}

fn retries(metrics: &Metrics) -> f64 {
    samples(&metrics.render())
        .iter()
        .filter(|s| s.name == "jisu_client_retries_total")
        .map(|s| s.value)
        .sum()
}

/// Steady GetUser load from `workers` tasks until `stop`; counts calls and failures.
fn load(
    client: &JisuClient,
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (calls, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = (0..workers)
        .map(|w| {
            let (client, stop, calls, failed) =
                (client.clone(), stop.clone(), calls.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = client
                        .users()
                        .get_user(GetUserRequest {
                            user_id: format!("USER{:04}", (n as usize + w) % 100 + 1),
                        })
                        .await;
                    calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(status) = r {
                        eprintln!("failed call: {status:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (calls, failed, tasks)
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_no_call_and_gets_traffic_back() {
    let Cluster {
        _dir,
        certs_dir,
        mut replicas,
        endpoints: _,
        metrics,
        client,
    } = Cluster::start(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failed, tasks) = load(&client, 8, &stop);
    let served = |i: usize| client.replicas()[i].served();
    wait_until("traffic on every replica", Duration::from_secs(10), || {
        (0..3).all(|i| served(i) > 50)
    })
    .await;

    // SIGKILL replica 1 in the middle of the load.
    let addr = replicas[1].addr.clone();
    replicas[1].kill();
    let at_kill = served(1);
    let others_at_kill = served(0) + served(2);
    wait_until("the others carry the load", Duration::from_secs(10), || {
        served(0) + served(2) > others_at_kill + 500
    })
    .await;
    assert!(
        served(1) <= at_kill + 8,
        "no calls answered by a dead replica"
    );

    // It comes back on the same address: probed back in, it gets traffic again.
    replicas[1] = Binary::default().certs(&certs_dir).listen(&addr).start();
    wait_until(
        "the restarted replica serves again",
        Duration::from_secs(15),
        || served(1) > at_kill + 50,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (calls, failed) = (
        calls.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!(
        "replica killed under load: {calls} calls attempted, {failed} failed, {} retried; \
         served per replica {:?}",
        retries(&metrics),
        (0..3).map(served).collect::<Vec<_>>()
    );
    assert_eq!(failed, 0, "no idempotent call failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_replica_is_avoided_and_with_all_down_calls_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::init(&certs_dir, &[], false).unwrap();
    let sick = InProcess::start(&certs_dir, Arc::new(FaultyStore::unavailable())).await;
    let healthy = InProcess::start(&certs_dir, Arc::new(MemoryStore::new())).await;
    let endpoints = vec![sick.endpoint(), healthy.endpoint()];
    let metrics = Metrics::new();
    let client = JisuClient::connect(client_config(&certs_dir, &endpoints, &metrics))
        .await
        .unwrap();
    let mut failed = 0;
    for n in 0..200 {
        let r = client
            .users()
            .get_user(GetUserRequest {
                user_id: format!("USER{:04}", n % 100 + 1),
            })
            .await;
        if r.is_err() {
            failed += 1;
        }
    }
    let sick_replica = &client.replicas()[0];
    println!(
        "one replica answering UNAVAILABLE: 200 calls, {failed} failed, {} retried, circuit open: {}",
        retries(&metrics),
        sick_replica.is_open()
    );
    assert_eq!(failed, 0, "retries succeed on the healthy replica");
    assert!(retries(&metrics) >= 1.0);
    assert!(sick_replica.is_open(), "the sick replica's circuit opened");

    // Now everything is down: once the circuits open, calls fail fast, not at the deadline.
    sick.stop().await;
    healthy.stop().await;
    let mut last = None;
    let mut codes = Vec::new();
    for _ in 0..20 {
        let r = client.get_user("USER0001").await;
        let status = r.unwrap_err();
        codes.push(status.code());
        last = Some(status);
    }
    println!("all replicas down: codes {codes:?}");
    assert!(codes.iter().all(|c| *c == Code::Unavailable), "{codes:?}");
    // Failing fast is a fact of the client's state, not a time: no replica is usable
    // (circuits open, health checks failing), so the call is refused without being sent.
    let last = last.unwrap();
    assert!(
        last.message()
            .contains("every circuit is open; failing fast"),
        "{last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_unary_call_and_every_stream_gets_a_status() {
    let Cluster {
        _dir,
        certs_dir,
        mut replicas,
        endpoints,
        metrics,
        client,
    } = Cluster::start(2).await;
    // Streams open on the replica that will be stopped.
    let first = JisuClient::connect(client_config(&certs_dir, &endpoints[..1], &Metrics::new()))
        .await
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let order = first
            .orders()
            .create_order(CreateOrderRequest {
                user_id: "USER0001".into(),
                items: vec![OrderItem {
                    product_id: "P".into(),
                    product_name: String::new(),
                    quantity: 1,
                    price: 1.0,
                }],
                idempotency_key: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut s = first
            .orders()
            .stream_order_updates(StreamOrderUpdatesRequest {
                order_id: order.order_id,
            })
            .await
            .unwrap()
            .into_inner();
        s.next().await.unwrap().unwrap();
        streams.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failed, tasks) = load(&client, 8, &stop);
    wait_until("load on both", Duration::from_secs(10), || {
        client.replicas()[0].served() > 100 && client.replicas()[1].served() > 100
    })
    .await;
    let status = tokio::task::spawn_blocking({
        let mut r = replicas.remove(0);
        move || r.terminate(Duration::from_secs(15))
    });
    // Every open stream receives a final status.
    for mut s in streams {
        let end = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("a status before the grace period ends");
        let status = end.expect("a status, not a silent end").unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let exit = status
        .await
        .unwrap()
        .expect("exited within the grace period");
    assert!(exit.success(), "exit 0 after draining: {exit:?}");
    let served_after = client.replicas()[1].served();
    wait_until(
        "the survivor carries the load",
        Duration::from_secs(10),
        || client.replicas()[1].served() > served_after + 300,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (calls, failed) = (
        calls.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!(
        "SIGTERM under load: {calls} unary calls attempted, {failed} failed, {} retried; \
         3 streams ended with UNAVAILABLE; exit {exit:?}",
        retries(&metrics)
    );
    assert_eq!(failed, 0, "no unary call failed");
}

/// An embedding process: when `run_until_stopped` fails after it has started background
/// tasks (here the credential watcher cannot watch a directory that has gone), every task
/// has ended by the time it returns — nothing keeps the store or a port.
#[tokio::test]
async fn a_server_that_fails_to_start_serving_leaves_no_task_behind() {
    let certs = tempfile::tempdir().unwrap();
    certs::init(certs.path(), &[], false).unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"all\"\neffect = \"allow\"\nmethods = [\"jisucloud.v1.*\"]\n",
    )
    .unwrap();
    let mut settings = Settings::for_certs(certs.path());
    settings.auth.policy = Some(policy);
    let store: Arc<dyn jisu::store::Store> = Arc::new(jisu::store::MemoryStore::new());
    let app = Application::build_with_store(settings, store.clone(), "test")
        .await
        .unwrap();
    let metrics_addr = app.metrics_addr();
    drop(policy_dir);
    let err = app
        .run_until_stopped(std::future::pending())
        .await
        .expect_err("the watcher cannot start");
    assert!(
        matches!(err, jisu::startup::StartupError::DataDir { .. }),
        "{err}"
    );
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "a background task (the store probe) outlived the server"
    );
    assert!(
        tokio::net::TcpStream::connect(metrics_addr).await.is_err(),
        "/metrics still listening"
    );
}
