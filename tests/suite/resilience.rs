//! The server under stress and faults: a panicking handler fails only its own call, and
//! past the concurrency limit calls are refused at once while health checks still pass.

use std::{sync::Arc, time::Duration};

use crate::common::{ALL_SCOPES, Calls, FaultyStore, TestServer, assert_status, samples, value};
use futures::StreamExt as _;
use jisu::pb::{CreateUserRequest, GetUserRequest, UploadHeader, UploadRequest, upload_request};
use tonic::Code;

#[tokio::test]
async fn a_panicking_handler_fails_only_its_own_call() {
    let server =
        TestServer::start_with_store(|_| {}, Arc::new(FaultyStore::panic_on("USER0666"))).await;
    let client = server.client(ALL_SCOPES).await;
    let mut users = client.users();
    // A stream on the same connection stays up through the panic.
    let created = users
        .create_user(CreateUserRequest {
            name: "Survivor".into(),
            email: "survivor@jisu.dev".into(),
            phone: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = assert_status(
        users
            .get_user(GetUserRequest {
                user_id: "USER0666".into(),
            })
            .await,
        Code::Internal,
        "INTERNAL",
    );
    assert_eq!(status.message(), "internal error", "no details leak");
    // Same connection, next call: fine.
    let got = users
        .get_user(GetUserRequest {
            user_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let m = samples(&server.scrape().await);
    assert_eq!(
        value(
            &m,
            "grpc_server_handled_total",
            &[("grpc_method", "GetUser"), ("grpc_code", "Internal")]
        ),
        1.0
    );
}

/// A unary call whose handler hangs is ended by the server at its limit per call: the
/// caller gets DEADLINE_EXCEEDED (which limit, in ErrorInfo) with the call's trace id, the
/// metrics count it, and the handler's work is dropped (nothing stays in flight).
#[tokio::test]
async fn a_hung_call_ends_at_the_servers_limit_counted_and_traced() {
    let server = TestServer::start_with_store(
        |s| s.server.max_call_duration_ms = 300,
        Arc::new(FaultyStore::stuck_on("USER0404")),
    )
    .await;
    // The client's own deadline (10 s) is far later: the answer is the server's.
    let client = server.client(ALL_SCOPES).await;
    let mut users = client.users();
    let status = assert_status(
        users
            .get_user(GetUserRequest {
                user_id: "USER0404".into(),
            })
            .await,
        Code::DeadlineExceeded,
        "MAX_CALL_DURATION",
    );
    assert!(status.message().contains("300 ms"), "{status:?}");
    let trace_id = status
        .metadata()
        .get("x-trace-id")
        .expect("x-trace-id on a deadline error")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    let m = samples(&server.scrape().await);
    assert_eq!(
        value(
            &m,
            "grpc_server_handled_total",
            &[
                ("grpc_method", "GetUser"),
                ("grpc_code", "DeadlineExceeded")
            ]
        ),
        1.0
    );
    assert_eq!(value(&m, "jisu_grpc_server_in_flight", &[]), 0.0);
}

/// A panic while a response stream is produced (after the handler returned) ends that
/// stream with INTERNAL and the usual ErrorInfo; the connection goes on.
#[tokio::test]
async fn a_panic_inside_a_response_stream_fails_only_that_stream() {
    let server =
        TestServer::start_with_store(|_| {}, Arc::new(FaultyStore::panic_on("ORDPANIC01"))).await;
    let client = server.client(ALL_SCOPES).await;
    let mut orders = client.orders();
    let subscribe = jisu::pb::TrackOrdersRequest {
        action: Some(jisu::pb::track_orders_request::Action::Subscribe(
            "ORDPANIC01".into(),
        )),
    };
    let mut events = orders
        .track_orders(futures::stream::iter([subscribe]).chain(futures::stream::pending()))
        .await
        .expect("the handler returned its stream")
        .into_inner();
    let status = assert_status(events.message().await, Code::Internal, "INTERNAL");
    assert_eq!(status.message(), "internal error", "no details leak");
    // Same connection, next call: fine.
    client
        .health()
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the connection goes on");
}

/// An upload that sends its header and then nothing, holding its handler.
fn hanging_upload(n: u8) -> impl futures::Stream<Item = UploadRequest> + Send + 'static {
    let header = UploadRequest {
        data: Some(upload_request::Data::Header(UploadHeader {
            name: "slow.bin".into(),
            size: 10,
            // Distinct content per upload (the same content would be ABORTED).
            sha256: format!("{n:x}").repeat(64),
            offset: 0,
        })),
    };
    futures::StreamExt::chain(futures::stream::iter([header]), futures::stream::pending())
}

#[tokio::test]
async fn past_the_concurrency_limit_calls_are_refused_at_once() {
    let server = TestServer::start_with(|s| s.server.max_concurrent_calls = 2).await;
    let client = server.client(ALL_SCOPES).await;
    // Two uploads that never finish hold both slots.
    let mut holders = Vec::new();
    for n in 0..2u8 {
        let mut files = client.files();
        holders.push(tokio::spawn(async move {
            files.upload(hanging_upload(n)).await
        }));
    }
    // Wait (bounded) until both are admitted (the in-flight gauge, read over /metrics,
    // which is never shed), then a third call is shed at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let in_flight = value(
            &samples(&server.scrape().await),
            "jisu_grpc_server_in_flight",
            &[],
        );
        if in_flight >= 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "uploads never admitted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = client.get_user("USER0001").await;
    // Refused, not queued: the hanging calls never free a slot, so an answer at all
    // proves it was not waiting for one.
    let status = assert_status(status, Code::ResourceExhausted, "OVERLOADED");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "50"
    );
    assert!(status.message().contains("limit of 2"), "{status:?}");
    // Health checks are never shed.
    let health = client
        .health()
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    // The holders go away: calls are admitted again.
    for h in &holders {
        h.abort();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let result = client.get_user("USER0001").await;
        match result {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "slots never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => {
                // No demo data here: NOT_FOUND means the call was admitted and handled.
                assert_eq!(other.unwrap_err().code(), Code::NotFound);
                break;
            }
        }
    }
    let m = samples(&server.scrape().await);
    assert!(
        value(
            &m,
            "grpc_server_handled_total",
            &[
                ("grpc_method", "GetUser"),
                ("grpc_code", "ResourceExhausted")
            ]
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_noisy_caller_is_rate_limited_and_the_others_are_not() {
    let server = TestServer::start_with(|s| {
        s.demo_data = true;
        s.server.rate_limit_per_second = 5;
        s.server.rate_limit_burst = 5;
    })
    .await;
    let noisy = server.client("users:read").await;
    let quiet = server
        .client_with_token(Some(server.issuer.issue(
            "quiet",
            "users:read",
            Duration::from_secs(60),
        )))
        .await;
    let get = |client: &jisu::client::JisuClient| {
        let mut users = client.users();
        async move {
            users
                .get_user(GetUserRequest {
                    user_id: "USER0001".into(),
                })
                .await
        }
    };
    let mut refused = None;
    for _ in 0..20 {
        if let Err(status) = get(&noisy).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("the noisy caller is limited within its burst");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("5 per second"), "{status:?}");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&pushback), "{pushback}");
    // Another subject has its own bucket.
    get(&quiet).await.expect("the quiet caller is served");
    // The noisy one is served again once its bucket refills.
    tokio::time::sleep(Duration::from_millis(pushback + 10)).await;
    get(&noisy).await.expect("served again after the pushback");
    let m = samples(&server.scrape().await);
    assert!(value(&m, "jisu_rate_limited_total", &[]) >= 1.0);
}

/// A TCP proxy that forwards both ways until told to hold the server's answers back,
/// then (when told) cuts the held connection; new connections are forwarded as before.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    hold: Arc<tokio::sync::watch::Sender<bool>>,
    cut: Arc<tokio::sync::Notify>,
}

impl CuttingProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = Arc::new(tokio::sync::watch::channel(false).0);
        let cut = Arc::new(tokio::sync::Notify::new());
        let (h, c) = (hold.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                tokio::spawn(Self::pipe(client, server, h.subscribe(), c.clone()));
            }
        });
        Self { addr, hold, cut }
    }

    /// A Jisu client (all scopes) connected through the proxy, served once already.
    async fn client(
        &self,
        server: &TestServer,
        configure: impl FnOnce(&mut jisu::client::ClientConfig),
    ) -> jisu::client::JisuClient {
        let mut config = jisu::client::ClientConfig::from_certs_dir(
            &format!("https://127.0.0.1:{}", self.addr.port()),
            server.dir(),
            "client",
        )
        .unwrap();
        config.token = Some(server.token(ALL_SCOPES));
        configure(&mut config);
        let client = jisu::client::JisuClient::connect(config).await.unwrap();
        client
            .health()
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("served through the proxy");
        client
    }

    async fn pipe(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        hold: tokio::sync::watch::Receiver<bool>,
        cut: Arc<tokio::sync::Notify>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let mut armed = hold.clone();
        let up = async {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = cr.read(&mut buf).await {
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let down = async {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = sr.read(&mut buf).await {
                if *hold.borrow() {
                    // Held back: the answer never reaches the client.
                    continue;
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            () = up => {}
            () = down => {}
            () = async {
                let _ = armed.wait_for(|h| *h).await;
                cut.notified().await;
            } => {}
        }
        // Dropping both halves closes both connections.
    }
}

/// The replay defect: a CreateUser (no idempotency key) that the server applied, whose
/// connection was then cut before the answer arrived, must not be sent again: "the
/// connection closed" does not prove the request never left.
#[tokio::test]
async fn a_create_whose_answer_was_cut_off_is_not_sent_again() {
    let server = TestServer::start().await;
    let proxy = CuttingProxy::start(server.addr).await;
    let client = proxy.client(&server, |_| {}).await;

    proxy.hold.send_replace(true);
    let mut users = client.users();
    let call = tokio::spawn(async move {
        users
            .create_user(CreateUserRequest {
                name: "Once".into(),
                email: "once@jisu.dev".into(),
                phone: String::new(),
            })
            .await
    });
    let create = [
        ("grpc_method", "CreateUser"),
        ("grpc_code", "OK"),
        ("grpc_type", "unary"),
    ];
    crate::common::eventually(
        "the server applied the CreateUser",
        Duration::from_secs(10),
        async || {
            value(
                &samples(&server.scrape().await),
                "grpc_server_handled_total",
                &create,
            ) >= 1.0
        },
    )
    .await;
    proxy.hold.send_replace(false);
    proxy.cut.notify_one();
    let status = call.await.unwrap().expect_err("the answer was cut off");
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{status:?}"
    );
    let s = samples(&server.scrape().await);
    assert_eq!(
        value(
            &s,
            "grpc_server_started_total",
            &[("grpc_method", "CreateUser"), ("grpc_type", "unary")]
        ),
        1.0,
        "CreateUser arrived at the server more than once"
    );
    server.stop().await;
}

/// A call whose answer does not come within the caller's deadline ends as
/// DEADLINE_EXCEEDED for the caller and in the client's metrics, whether or not it may be
/// retried, and is not sent again: the deadline is spent. (tonic's channel enforces the
/// deadline itself and says CANCELLED "Timeout expired"; the metrics said UNAVAILABLE.)
#[tokio::test]
async fn a_call_past_the_callers_deadline_is_deadline_exceeded_and_not_sent_again() {
    let server = TestServer::start().await;
    let proxy = CuttingProxy::start(server.addr).await;
    let endpoint = format!("https://127.0.0.1:{}", proxy.addr.port());
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let rendered = recorder.handle();
    let metrics = jisu::client::metrics::ClientMetrics::new(Arc::new(recorder));
    let client = proxy
        .client(&server, |config| {
            config.timeout = Duration::from_millis(300);
            config.metrics = Some(metrics);
        })
        .await;

    // The server answers; the proxy holds every answer back.
    proxy.hold.send_replace(true);
    let mut users = client.users();
    let created = users
        .create_user(CreateUserRequest {
            name: "Late".into(),
            email: "late@jisu.dev".into(),
            phone: String::new(),
        })
        .await
        .expect_err("no answer came");
    let got = users
        .get_user(GetUserRequest {
            user_id: "USER0001".into(),
        })
        .await
        .expect_err("no answer came");
    for (method, status) in [("CreateUser", &created), ("GetUser", &got)] {
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "{method}: {status:?}"
        );
        assert_eq!(
            status.message(),
            format!("no answer from {endpoint} within the call's deadline (300 ms)"),
            "{method}"
        );
    }
    let client_metrics = samples(&rendered.render());
    for method in ["CreateUser", "GetUser"] {
        let labels = [("grpc_method", method), ("grpc_code", "DeadlineExceeded")];
        assert_eq!(
            value(&client_metrics, "grpc_client_handled_total", &labels),
            1.0,
            "{method}"
        );
        let started = async || {
            value(
                &samples(&server.scrape().await),
                "grpc_server_started_total",
                &[("grpc_method", method)],
            )
        };
        crate::common::eventually(
            "the server took the call",
            Duration::from_secs(10),
            async || started().await >= 1.0,
        )
        .await;
        assert_eq!(
            started().await,
            1.0,
            "{method} arrived at the server more than once"
        );
    }
    server.stop().await;
}
