//! Traces over OTLP: the real binary exports to an OTLP receiver running inside the test;
//! the SERVER span continues the caller's W3C trace and carries the RPC attributes.
mod common;

use std::time::Duration;

use common::serve_binary;
use jisu::{
    client::{ClientConfig, JisuClient},
    pb::GetUserRequest,
    security::jwt::TokenIssuer,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio::sync::mpsc;

struct Receiver(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let _ = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let (tx, mut spans) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{collector}");
    let server = serve_binary(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_SERVICE_NAME", "jisu-under-test"),
    ]);
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
    let mut req = tonic::Request::new(GetUserRequest {
        user_id: "USER0001".into(),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    let reply = client.users().get_user(req).await.unwrap();
    assert_eq!(reply.metadata().get("x-trace-id").unwrap(), trace_id);

    // An error carries its trace id too, and marks the span as an error.
    let missing = client
        .users()
        .get_user(GetUserRequest {
            user_id: "USER0999".into(),
        })
        .await
        .unwrap_err();
    let error_trace = missing
        .metadata()
        .get("x-trace-id")
        .expect("x-trace-id on errors")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(error_trace.len(), 32);
    assert_ne!(error_trace, trace_id);

    let mut ok_span = None;
    let mut err_span = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ok_span.is_none() || err_span.is_none() {
        let span = tokio::time::timeout_at(deadline, spans.recv())
            .await
            .expect("spans never arrived")
            .unwrap();
        if span.name != "jisucloud.v1.UserService/GetUser" {
            continue;
        }
        if hex(&span.trace_id) == trace_id {
            ok_span = Some(span);
        } else if hex(&span.trace_id) == error_trace {
            err_span = Some(span);
        }
    }
    let span = ok_span.unwrap();
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(hex(&span.parent_span_id), parent_id);
    assert_eq!(attr(&span, "rpc.system"), s("grpc"));
    assert_eq!(attr(&span, "rpc.service"), s("jisucloud.v1.UserService"));
    assert_eq!(attr(&span, "rpc.method"), s("GetUser"));
    assert_eq!(
        attr(&span, "rpc.grpc.status_code"),
        Some(Value::IntValue(0))
    );
    assert_eq!(attr(&span, "enduser.id"), s("tracer"));
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
