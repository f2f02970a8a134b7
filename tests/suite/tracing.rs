//! Traces over OTLP: the real binary exports to an OTLP receiver running inside the test;
//! the SERVER span continues the caller's W3C trace and carries the RPC attributes.

use std::time::Duration;

use crate::common::{
    Binary, Calls, MANIFEST, Served, assert_status, jisu_trace, samples, scrape, tool, trace_of,
    value,
};
use axum::response::IntoResponse as _;
use jisu::{
    client::{ClientConfig, JisuClient},
    pb::{CreateOrderRequest, GetUserRequest, OrderItem},
    security::{certs, jwt::TokenIssuer},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio::sync::mpsc;
use tonic::Code;

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

struct Receiver {
    spans: mpsc::UnboundedSender<Received>,
    /// How many spans each Export request carried, in order of arrival.
    requests: mpsc::UnboundedSender<usize>,
    /// When set, each Export that carries spans is answered only once another is in flight
    /// too (or after 20 s).
    overlap: Option<std::sync::Arc<Overlap>>,
    /// When set, each Export that carries spans is held this long, then answered with all
    /// its spans rejected (a partial success).
    reject_after: Option<Duration>,
}

/// Export requests with spans in flight at once: now, and the most so far.
#[derive(Default)]
struct Overlap {
    in_flight: std::sync::Mutex<(usize, usize)>,
    changed: tokio::sync::Notify,
}

impl Overlap {
    /// Holds one request until two are in flight (at most 20 s).
    async fn hold(&self) {
        {
            let mut n = self.in_flight.lock().unwrap();
            n.0 += 1;
            n.1 = n.1.max(n.0);
        }
        self.changed.notify_waiters();
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                // Registered before the check, so a change in between is not missed.
                let changed = self.changed.notified();
                if self.in_flight.lock().unwrap().0 >= 2 {
                    break;
                }
                changed.await;
            }
        })
        .await;
        self.in_flight.lock().unwrap().0 -= 1;
    }

    fn most(&self) -> usize {
        self.in_flight.lock().unwrap().1
    }
}

impl Receiver {
    /// Passes on each span with its process's `service.name`; how many it carried.
    fn forward(&self, request: ExportTraceServiceRequest) -> usize {
        let carried = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        let _ = self.requests.send(carried);
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let _ = self.spans.send(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        carried
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let carried = self.forward(request.into_inner());
        if let Some(hold) = self.reject_after
            && carried > 0
        {
            tokio::time::sleep(hold).await;
            return Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: carried as i64,
                    error_message: "held, then rejected".into(),
                }),
            }));
        }
        if let Some(overlap) = &self.overlap
            && carried > 0
        {
            overlap.hold().await;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a loopback port.
struct Collector {
    endpoint: String,
    spans: mpsc::UnboundedReceiver<Received>,
    requests: mpsc::UnboundedReceiver<usize>,
}

impl Collector {
    async fn start() -> Self {
        Self::serve(None, None).await
    }

    /// OTLP/gRPC, holding each Export that carries spans for `hold`, then answering that
    /// it rejected them all.
    async fn start_rejecting_after(hold: Duration) -> Self {
        Self::serve(None, Some(hold)).await
    }

    /// OTLP/gRPC, answering each Export that carries spans only once another is in flight.
    async fn start_overlapping() -> (Self, std::sync::Arc<Overlap>) {
        let overlap = std::sync::Arc::new(Overlap::default());
        (Self::serve(Some(overlap.clone()), None).await, overlap)
    }

    async fn serve(
        overlap: Option<std::sync::Arc<Overlap>>,
        reject_after: Option<Duration>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, spans) = mpsc::unbounded_channel();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let receiver = Receiver {
            spans: tx,
            requests: requests_tx,
            overlap,
            reject_after,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self {
            endpoint: format!("http://{addr}"),
            spans,
            requests,
        }
    }

    /// An OTLP/HTTP (protobuf) receiver on a loopback port: `POST /v1/traces`.
    async fn start_http() -> Self {
        use prost::Message as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, spans) = mpsc::unbounded_channel();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let receiver = std::sync::Arc::new(Receiver {
            spans: tx,
            requests: requests_tx,
            overlap: None,
            reject_after: None,
        });
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        let _ = receiver.forward(request);
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                            .into_response()
                    }
                    Err(e) => (http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            endpoint: format!("http://{addr}"),
            spans,
            requests,
        }
    }

    /// The env that makes a Jisu process export here quickly.
    fn binary(&self, service_name: &str) -> Binary<'static> {
        Binary::default()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone())
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env("OTEL_SERVICE_NAME", service_name)
    }

    /// Collects the spans of `trace_id` until `done` says the set is complete (bounded).
    async fn trace(&mut self, trace_id: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(&got) {
            let r = tokio::time::timeout_at(deadline, self.spans.recv())
                .await
                .unwrap_or_else(|_| panic!("trace {trace_id} incomplete: {got:#?}"))
                .unwrap();
            if hex(&r.span.trace_id) == trace_id {
                got.push(r);
            }
        }
        got
    }
}

/// GetUser(USER0001) sent as a sampled child of `parent_id` in `trace_id`.
fn in_trace(trace_id: &str, parent_id: &str) -> tonic::Request<GetUserRequest> {
    let mut req = tonic::Request::new(GetUserRequest {
        user_id: "USER0001".into(),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    req
}

/// One successful GetUser to `server`, sampled in `trace_id` (a client of its own, closed after).
async fn get_user_in_trace(server: &Served, trace_id: &str) {
    server
        .client("users:read")
        .await
        .users()
        .get_user(in_trace(trace_id, "eee19b7ec3c1b174"))
        .await
        .unwrap();
}

/// Whether a GetUser's SERVER span and its store span have both arrived.
fn get_user_with_store(got: &[Received]) -> bool {
    named(got, "jisucloud.v1.UserService/GetUser").is_some()
        && named(got, "store get_user").is_some()
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn s(v: &str) -> Option<Value> {
    Some(Value::StringValue(v.into()))
}

#[tokio::test]
async fn server_spans_continue_the_callers_trace_and_reach_the_collector() {
    let mut collector = Collector::start().await;
    // Quiet logs must not turn traces off: the log filter applies to logs only.
    let server = collector
        .binary("jisu-under-test")
        .env("RUST_LOG", "warn")
        .start();
    let token = TokenIssuer::from_file(&server.certs.join("jwt.key"), "jisu", "jisucloud")
        .unwrap()
        .issue("tracer", "users:read", Duration::from_secs(300));
    let config =
        ClientConfig::from_certs_dir(&format!("https://{}", server.addr), &server.certs, "client")
            .unwrap()
            .with_token(token);
    let client = JisuClient::connect(config).await.unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let reply = client
        .users()
        .get_user(in_trace(trace_id, parent_id))
        .await
        .unwrap();
    assert_eq!(reply.metadata().get("x-trace-id").unwrap(), trace_id);

    // An error carries its trace id too, and marks the span as an error.
    let missing = client.get_user("USER0999").await.unwrap_err();
    let error_trace = missing
        .metadata()
        .get("x-trace-id")
        .expect("x-trace-id on errors")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(error_trace.len(), 32);
    assert_ne!(error_trace, trace_id);

    let ok_trace = collector.trace(trace_id, get_user_with_store).await;
    let ok_span = named(&ok_trace, "jisucloud.v1.UserService/GetUser").cloned();
    // Store work is a child span of the call.
    let store = named(&ok_trace, "store get_user").unwrap();
    assert_eq!(store.parent_span_id, ok_span.as_ref().unwrap().span_id);
    assert_eq!(attr(store, "db.operation.name"), s("get_user"));
    let err_span = collector
        .trace(&error_trace, |got| {
            got.iter()
                .any(|r| r.span.name == "jisucloud.v1.UserService/GetUser")
        })
        .await
        .into_iter()
        .find(|r| r.span.name == "jisucloud.v1.UserService/GetUser")
        .map(|r| r.span);
    let span = ok_span.unwrap();
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(hex(&span.parent_span_id), parent_id);
    assert_eq!(attr(&span, "rpc.system"), s("grpc"));
    assert_eq!(attr(&span, "rpc.service"), s("jisucloud.v1.UserService"));
    assert_eq!(attr(&span, "rpc.method"), s("GetUser"));
    assert_eq!(attr(&span, "jisu.sampled_by"), s("head"));
    assert_eq!(
        attr(&span, "rpc.grpc.status_code"),
        Some(Value::IntValue(0))
    );
    assert_eq!(attr(&span, "enduser.id"), s("tracer"));
    assert_eq!(attr(&span, "jisu.authz.decision"), s("allow"));
    assert!(attr(&span, "jisu.authz.rule").is_some());
    assert_eq!(attr(&span, "tls.client.identity"), s("client"));
    assert_eq!(attr(&span, "server.address"), s("127.0.0.1"));
    assert!(attr(&span, "network.peer.address").is_some());

    let err = err_span.unwrap();
    assert_eq!(attr(&err, "rpc.grpc.status_code"), Some(Value::IntValue(5)));
    assert_eq!(
        err.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    assert!(
        err.parent_span_id.is_empty(),
        "a new trace starts without a parent"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn named<'a>(got: &'a [Received], name: &str) -> Option<&'a Span> {
    got.iter().find(|r| r.span.name == name).map(|r| &r.span)
}

fn order_request(user: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        user_id: user.into(),
        items: vec![OrderItem {
            product_id: "P1".into(),
            product_name: "widget".into(),
            quantity: 2,
            price: 9.5,
        }],
        idempotency_key: String::new(),
    }
}

/// The issue's "done when": one CreateOrder through a split deployment (orders and users in
/// two processes) is one trace: orders' SERVER span → its CLIENT span → users' SERVER span
/// → users' store span, and both processes count the call on /metrics.
#[tokio::test]
async fn create_order_across_two_processes_is_one_trace() {
    let mut collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::init(&certs_dir, &[], false).unwrap();
    let users = collector
        .binary("jisu-users")
        .certs(&certs_dir)
        .arg("--services")
        .arg("users")
        .start();
    let orders = collector
        .binary("jisu-orders")
        .certs(&certs_dir)
        .args(["--services", "orders", "--users-endpoint"])
        .arg(users.endpoint())
        .start();
    let client = orders.client("orders:write users:read").await;
    let reply = client
        .orders()
        .create_order(order_request("USER0001"))
        .await
        .unwrap();
    let trace_id = reply
        .metadata()
        .get("x-trace-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let order = reply.into_inner();
    assert_eq!(order.user_id, "USER0001");
    assert_eq!(order.status, "PENDING");

    let got = collector
        .trace(&trace_id, |got| {
            [
                "jisucloud.v1.OrderService/CreateOrder",
                "jisucloud.v1.UserService/GetUser",
                "store get_user",
                "store create_order",
            ]
            .iter()
            .all(|n| named(got, n).is_some())
                && got
                    .iter()
                    .filter(|r| r.span.name == "jisucloud.v1.UserService/GetUser")
                    .count()
                    == 2
        })
        .await;
    let find = |service: &str, name: &str, kind: i32| {
        got.iter()
            .find(|r| r.service == service && r.span.name == name && r.span.kind == kind)
            .map(|r| &r.span)
            .unwrap_or_else(|| panic!("no {kind} span {name} from {service}: {got:#?}"))
    };
    let (server, client_kind, internal) = (2, 3, 1);
    let create = find(
        "jisu-orders",
        "jisucloud.v1.OrderService/CreateOrder",
        server,
    );
    let call = find(
        "jisu-orders",
        "jisucloud.v1.UserService/GetUser",
        client_kind,
    );
    let get = find("jisu-users", "jisucloud.v1.UserService/GetUser", server);
    let store = find("jisu-users", "store get_user", internal);
    let insert = find("jisu-orders", "store create_order", internal);
    assert!(create.parent_span_id.is_empty(), "the chain starts here");
    assert_eq!(
        call.parent_span_id, create.span_id,
        "CLIENT span under CreateOrder"
    );
    assert_eq!(
        get.parent_span_id, call.span_id,
        "users continues the CLIENT span"
    );
    assert_eq!(store.parent_span_id, get.span_id);
    assert_eq!(insert.parent_span_id, create.span_id);
    assert_eq!(attr(call, "rpc.method"), s("GetUser"));
    assert_eq!(attr(call, "server.address"), s("127.0.0.1"));
    assert_eq!(attr(call, "rpc.grpc.status_code"), Some(Value::IntValue(0)));
    // Users sees the caller's token subject and the orders process's own certificate.
    assert_eq!(attr(get, "enduser.id"), s("tester"));
    assert_eq!(attr(get, "tls.client.identity"), s(certs::SERVER_IDENTITY));

    // Both processes count the call: orders as a client, users as a server.
    let orders_metrics = samples(&scrape(orders.metrics_addr.parse().unwrap()).await);
    let get_user = [
        ("grpc_service", "jisucloud.v1.UserService"),
        ("grpc_method", "GetUser"),
    ];
    let with_code = |code| {
        let mut l = get_user.to_vec();
        l.push(("grpc_code", code));
        l
    };
    assert_eq!(
        value(&orders_metrics, "grpc_client_started_total", &get_user),
        1.0
    );
    assert_eq!(
        value(
            &orders_metrics,
            "grpc_client_handled_total",
            &with_code("OK")
        ),
        1.0
    );
    assert_eq!(
        value(
            &orders_metrics,
            "grpc_client_handling_seconds_count",
            &get_user
        ),
        1.0
    );
    assert_eq!(
        value(&orders_metrics, "grpc_client_msg_received_total", &get_user),
        1.0
    );
    let users_metrics = samples(&scrape(users.metrics_addr.parse().unwrap()).await);
    assert_eq!(
        value(
            &users_metrics,
            "grpc_server_handled_total",
            &with_code("OK")
        ),
        1.0
    );

    // What the caller sees when the remote check says no.
    assert_status(
        client
            .orders()
            .create_order(order_request("USER0999"))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let narrow = orders.client("orders:write").await;
    let denied = assert_status(
        narrow
            .orders()
            .create_order(order_request("USER0001"))
            .await,
        Code::PermissionDenied,
        "USER_CHECK_DENIED",
    );
    assert!(denied.message().contains("users:read"), "{denied:?}");
    let orders_metrics = samples(&scrape(orders.metrics_addr.parse().unwrap()).await);
    assert_eq!(
        value(
            &orders_metrics,
            "grpc_client_handled_total",
            &with_code("NotFound")
        ),
        1.0
    );
    assert_eq!(
        value(
            &orders_metrics,
            "grpc_client_handled_total",
            &with_code("PermissionDenied")
        ),
        1.0
    );
}

/// With export off, every response still carries a trace id (the caller's, when it sent
/// one), and every log line written inside a call carries it with a span id.
#[tokio::test]
async fn trace_ids_without_export_in_responses_and_json_logs() {
    let server = Binary::default()
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .logs()
        .start();
    server.log_line("trace export off");
    let client = server.client("orders:write").await;
    let reply = client
        .orders()
        .create_order(order_request("USER0002"))
        .await
        .unwrap();
    let trace_id = reply
        .metadata()
        .get("x-trace-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(trace_id.len(), 32);
    assert!(trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let order_id = &reply.get_ref().order_id;
    let line = server.log_line(order_id);
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["trace_id"], trace_id, "{line}");
    assert_eq!(json["span_id"].as_str().map(str::len), Some(16), "{line}");
    assert_eq!(json["fields"]["message"], "order created", "{line}");

    // The caller's trace id is kept.
    let caller = "0af7651916cd43dd8448eb211c80319c";
    let mut req = tonic::Request::new(GetUserRequest {
        user_id: "USER0404".into(),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{caller}-b7ad6b7169203331-00").parse().unwrap(),
    );
    let status = assert_status(
        client.users().get_user(req).await,
        Code::PermissionDenied,
        "MISSING_SCOPE",
    );
    assert_eq!(status.metadata().get("x-trace-id").unwrap(), caller);
}

/// The exporter connects to the collector when the server starts, not at its first batch:
/// connected lazily, a server started into full load queued its first spans while a runtime
/// busy with calls set the connection up, and dropped them when the queue filled (670 at
/// 100 % sampling; BENCHMARKS.md, session 18). Shown by an empty Export arriving from a
/// server that has had no call.
#[tokio::test]
async fn the_exporter_connects_to_the_collector_at_start_before_any_call() {
    let mut collector = Collector::start().await;
    let server = collector.binary("jisu-under-test").start();
    let carried = tokio::time::timeout(Duration::from_secs(30), collector.requests.recv())
        .await
        .expect("no Export request from a server that has had no call: connected lazily")
        .unwrap();
    assert_eq!(
        carried, 0,
        "the first Export is the empty one sent at start"
    );
    drop(server);
}

/// The export thread does not wait out one Export's round trip before sending the next
/// batch: under load the server's runtime drives that round trip between calls (3–8 ms for
/// 512 spans at ~100,000 calls/s), and waiting for each let the queue overflow
/// (BENCHMARKS.md, session 19). Shown by a collector that answers an Export only once a
/// second is in flight: one span per batch, one call's spans.
#[tokio::test]
async fn the_next_batch_leaves_while_an_export_is_in_flight() {
    let (mut collector, overlap) = Collector::start_overlapping().await;
    let server = collector
        .binary("jisu-under-test")
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
        // Longer than the hold: a client giving up would let the next batch go too.
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
        .start();
    let trace_id = "5b8efff798038103d269b633813fc60c";
    get_user_in_trace(&server, trace_id).await;
    // The SERVER span and the store span: two batches of one.
    collector.trace(trace_id, get_user_with_store).await;
    assert_eq!(
        overlap.most(),
        2,
        "the second batch was sent only after the first's answer"
    );
    drop(server);
}

/// A server exporting to `collector` only at shutdown (no schedule, no full batch within
/// a test) takes one GetUser in `trace_id` and gets SIGTERM; it must exit cleanly, and the
/// call's spans must have reached the collector. Returns the exited server (its logs).
async fn one_call_then_sigterm(collector: &mut Collector, trace_id: &str) -> Served {
    let mut server = collector
        .binary("jisu-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .logs()
        .start();
    get_user_in_trace(&server, trace_id).await;
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(30)))
        .expect("the server exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    collector.trace(trace_id, get_user_with_store).await;
    server
}

/// Spans still queued at SIGTERM reach the collector before the process exits: the
/// shutdown exports the queue (no schedule and no full batch could have sent them). Seen
/// failing with the shutdown's export removed. That it waits for the Export's answer too is
/// the next test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_queued_at_sigterm_reach_the_collector_before_exit() {
    let mut collector = Collector::start().await;
    one_call_then_sigterm(&mut collector, "6c9fa2b3f0e14d7a8b2c3d4e5f607182").await;
}

/// The shutdown waits for the answer to its last Export before the process exits: the
/// collector holds it for 2 s (far longer than a process takes to exit) and then says it
/// rejected both spans; the server heard that answer (its warning with the count) before it
/// exited. A shutdown that only sent the request would have exited with the answer unread
/// (seen failing so, with the wait for in-flight exports removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_waits_for_its_last_exports_answer() {
    let mut collector = Collector::start_rejecting_after(Duration::from_secs(2)).await;
    let server = one_call_then_sigterm(&mut collector, "7d0ab3c4e1f25e8b9c3d4e5f60718293").await;
    let warning = server.log_line("the collector rejected spans");
    assert!(warning.contains("spans=2"), "{warning}");
}

/// A collector that is down (a closed port) costs the calls nothing: they succeed, their
/// latency stays that of a server with export off (measured side by side, same run), and
/// the lost spans are counted.
#[tokio::test]
async fn closed_collector_neither_fails_nor_slows_calls() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let exporting = Binary::default()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{closed}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "20")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "200")
        .start();
    let quiet = Binary::default().start();
    let a = exporting.client("users:read").await;
    let b = quiet.client("users:read").await;
    let mut with_export = Vec::new();
    let mut without = Vec::new();
    for round in 0..400 {
        // Interleaved, so both see the same machine load.
        for (client, times) in [(&a, &mut with_export), (&b, &mut without)] {
            let start = std::time::Instant::now();
            client
                .users()
                .get_user(GetUserRequest {
                    user_id: format!("USER{:04}", round % 100 + 1),
                })
                .await
                .expect("calls succeed while the collector is down");
            times.push(start.elapsed());
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    // Reported, not asserted (a test does not depend on the machine's speed): that the
    // request path never waits on export is shown below by where the spans were lost.
    let (m_export, m_quiet) = (median(&mut with_export), median(&mut without));
    println!("median with a dead collector {m_export:?} vs export off {m_quiet:?}");
    // The spans were produced and lost at export, not on the request path.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = samples(&scrape(exporting.metrics_addr.parse().unwrap()).await);
        let failed = value(
            &m,
            "jisu_otel_spans_dropped_total",
            &[("reason", "export_failed")],
        );
        if failed > 0.0 {
            assert_eq!(value(&m, "jisu_otel_spans_exported_total", &[]), 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no export failure counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Python grpcio client instrumented with OpenTelemetry (opentelemetry-instrumentation-
/// grpc) calls Jisu: the server span continues the Python CLIENT span.
#[tokio::test]
async fn python_opentelemetry_client_trace_continues_on_the_server() {
    let python = tool("JISU_PYTHON", "python");
    let mut collector = Collector::start().await;
    let server = collector.binary("jisu-under-test").start();
    let token = TokenIssuer::from_file(&server.certs.join("jwt.key"), "jisu", "jisucloud")
        .unwrap()
        .issue("python", "users:read", Duration::from_secs(300));
    let mut command = std::process::Command::new(python);
    command
        .arg(std::path::Path::new(MANIFEST).join("tests/interop/grpcio_client.py"))
        .args(["--otel", "--target", &server.addr, "--proto"])
        .arg(std::path::Path::new(MANIFEST).join("proto"))
        .arg("--certs")
        .arg(&server.certs)
        .env("JISU_TOKEN", token);
    // Off the runtime: the collector keeps receiving meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let trace_id = seen["trace_id"].as_str().unwrap();
    assert_eq!(
        seen["x_trace_id"], trace_id,
        "x-trace-id is the caller's trace"
    );
    let got = collector
        .trace(trace_id, |got| {
            named(got, "jisucloud.v1.UserService/GetUser").is_some()
        })
        .await;
    let span = named(&got, "jisucloud.v1.UserService/GetUser").unwrap();
    assert_eq!(hex(&span.parent_span_id), seen["span_id"].as_str().unwrap());
    assert_eq!(span.kind, 2);
    assert_eq!(attr(span, "enduser.id"), s("python"));
}

/// With head sampling at 0%, an error's SERVER span is exported anyway (kept by its
/// outcome, `jisu.sampled_by = "error"`), and nothing else is: not a success, not a
/// NOT_FOUND. Across two processes both sides of a failed call are kept, under one trace.
#[tokio::test]
async fn errors_are_traced_even_when_head_sampling_drops_them() {
    let mut collector = Collector::start().await;
    let never = |b: Binary<'static>| {
        b.env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "0")
    };
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::init(&certs_dir, &[], false).unwrap();
    let users = never(collector.binary("jisu-users"))
        .certs(&certs_dir)
        .args(["--services", "users"])
        .start();
    let orders = never(collector.binary("jisu-orders"))
        .certs(&certs_dir)
        .args(["--services", "orders", "--users-endpoint"])
        .arg(users.endpoint())
        .start();

    // Not kept: a success and a miss.
    let reader = users.client("users:read").await;
    reader.get_user("USER0001").await.unwrap();
    let missing = reader.get_user("USER0999").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // Kept: a refusal (the token lacks the scope).
    let denied = users
        .client("orders:read")
        .await
        .get_user("USER0001")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied_trace = trace_of(&denied);
    // The first span to arrive is the refusal's: the earlier calls were never queued
    // (the queue is first in, first out).
    let first = tokio::time::timeout(Duration::from_secs(30), collector.spans.recv())
        .await
        .expect("the kept span arrives")
        .unwrap();
    assert_eq!(hex(&first.span.trace_id), denied_trace, "{first:#?}");
    assert_eq!(first.span.name, "jisucloud.v1.UserService/GetUser");
    assert_eq!(attr(&first.span, "jisu.sampled_by"), s("error"));
    assert_eq!(
        attr(&first.span, "rpc.grpc.status_code"),
        Some(Value::IntValue(Code::PermissionDenied as i64))
    );
    let m = samples(&scrape(users.metrics_addr.parse().unwrap()).await);
    let kept = |reason: &str| value(&m, "jisu_traces_kept_total", &[("reason", reason)]);
    assert_eq!(kept("error"), 1.0);
    assert_eq!(kept("head"), 0.0);

    // A failure after store work: the store's span comes with it, below the SERVER span.
    let writer = users.client("users:write").await;
    writer.create_user("Ada", "ada@example.com").await.unwrap();
    let conflict = writer
        .create_user("Ada", "ada@example.com")
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    let trace = trace_of(&conflict);
    let got = collector
        .trace(&trace, |got| {
            named(got, "jisucloud.v1.UserService/CreateUser").is_some()
                && named(got, "store create_user").is_some()
        })
        .await;
    let server = named(&got, "jisucloud.v1.UserService/CreateUser").unwrap();
    let store = named(&got, "store create_user").unwrap();
    assert_eq!(store.parent_span_id, server.span_id, "{got:#?}");
    assert_eq!(attr(server, "enduser.id"), s("tester"));
    assert_eq!(attr(store, "db.operation.name"), s("create_user"));
    assert!(store.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(store.end_time_unix_nano <= server.end_time_unix_nano);

    // Across processes: orders checks the user with the caller's token, which lacks
    // users:read; users refuses, orders fails the call. Both sides are kept, with the
    // trace id the caller got, and the chain is whole: orders' SERVER span → its CLIENT
    // span → users' SERVER span.
    let failed = orders
        .client("orders:write")
        .await
        .orders()
        .create_order(order_request("USER0001"))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::PermissionDenied, "{failed:?}");
    let trace = trace_of(&failed);
    let get_user = "jisucloud.v1.UserService/GetUser";
    let got = collector
        .trace(&trace, |got| {
            named(got, "jisucloud.v1.OrderService/CreateOrder").is_some()
                && got.iter().filter(|r| r.span.name == get_user).count() == 2
        })
        .await;
    let (server_kind, client_kind) = (2, 3);
    let find = |service: &str, name: &str, kind: i32| {
        got.iter()
            .find(|r| r.service == service && r.span.name == name && r.span.kind == kind)
            .map(|r| &r.span)
            .unwrap_or_else(|| panic!("no {kind} span {name} from {service}: {got:#?}"))
    };
    let create = find(
        "jisu-orders",
        "jisucloud.v1.OrderService/CreateOrder",
        server_kind,
    );
    let call = find("jisu-orders", get_user, client_kind);
    let served = find("jisu-users", get_user, server_kind);
    assert_eq!(call.parent_span_id, create.span_id, "{got:#?}");
    assert_eq!(served.parent_span_id, call.span_id, "{got:#?}");
    assert_eq!(
        attr(call, "rpc.grpc.status_code"),
        Some(Value::IntValue(Code::PermissionDenied as i64))
    );
    for span in [create, served] {
        assert_eq!(attr(span, "jisu.sampled_by"), s("error"), "{span:#?}");
    }

    // Without any collector, the same chain from both processes' memory.
    let both = format!("{},{}", orders.debug_addr, users.debug_addr);
    let (code, text, err) = jisu_trace(&both, &[&trace]);
    assert_eq!(code, Some(0), "{err}");
    let tree: Vec<&str> = text.lines().filter(|l| l.contains("  [")).collect();
    assert!(
        tree[0].starts_with("jisucloud.v1.OrderService/CreateOrder  [server]  PermissionDenied"),
        "{text}"
    );
    assert!(
        tree[1].starts_with("└─ jisucloud.v1.UserService/GetUser  [client]"),
        "{text}"
    );
    assert!(
        tree[2].starts_with("   └─ jisucloud.v1.UserService/GetUser  [server]"),
        "{text}"
    );
}

/// With `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` the SERVER spans take the SDK's
/// exporter (not the hand-encoded OTLP/gRPC path) and arrive the same: the caller's
/// trace continued, the store's span below the SERVER span, the RPC attributes.
#[tokio::test]
async fn http_protobuf_export_carries_the_same_server_spans() {
    let mut collector = Collector::start_http().await;
    let server = collector
        .binary("jisu-http-export")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .start();
    let client = server.client("users:read").await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "10f067aa0ba902b7";
    client
        .users()
        .get_user(in_trace(trace_id, parent_id))
        .await
        .unwrap();
    let got = collector.trace(trace_id, get_user_with_store).await;
    let span = named(&got, "jisucloud.v1.UserService/GetUser").unwrap();
    let store = named(&got, "store get_user").unwrap();
    assert_eq!(got[0].service, "jisu-http-export");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(hex(&span.parent_span_id), parent_id);
    assert_eq!(store.parent_span_id, span.span_id);
    assert_eq!(attr(span, "rpc.method"), s("GetUser"));
    assert_eq!(attr(span, "jisu.sampled_by"), s("head"));
    assert_eq!(attr(store, "db.operation.name"), s("get_user"));
}
