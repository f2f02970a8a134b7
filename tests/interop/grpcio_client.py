"""A Python grpcio client calling a running Jisu over mTLS with a bearer token.

Generates the stubs from proto/ with grpcio-tools, makes the calls, and prints one JSON
object with what it saw; the Rust test (tests/interop.rs) asserts on it.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--certs", required=True)
    ap.add_argument("--proto", required=True)
    ap.add_argument("--otel", action="store_true",
                    help="instrument the client with OpenTelemetry; make one traced call")
    args = ap.parse_args()
    token = os.environ["JISU_TOKEN"]

    out = tempfile.mkdtemp()
    protos = [os.path.join(args.proto, "jisucloud", "v1", f) for f in ("users.proto", "orders.proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{args.proto}",
         f"--python_out={out}", f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, out)
    import grpc
    from jisucloud.v1 import orders_pb2, orders_pb2_grpc, users_pb2, users_pb2_grpc

    def read(name: str) -> bytes:
        with open(os.path.join(args.certs, name), "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"),
        private_key=read("client.key"),
        certificate_chain=read("client.pem"),
    )
    auth = [("authorization", f"Bearer {token}")]
    if args.otel:
        print(json.dumps(traced_call(args.target, creds, auth, users_pb2, users_pb2_grpc)))
        return
    seen = {}
    with grpc.secure_channel(args.target, creds) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        orders = orders_pb2_grpc.OrderServiceStub(channel)

        user = users.GetUser(users_pb2.GetUserRequest(user_id="USER0001"), metadata=auth, timeout=10)
        seen["get_user"] = {"id": user.id, "email": user.email}

        created = users.CreateUser(
            users_pb2.CreateUserRequest(name="Py", email="py@interop.dev"), metadata=auth, timeout=10
        )
        seen["created_id"] = created.id

        call = users.ListUsers(users_pb2.ListUsersRequest(page_size=3), metadata=auth, timeout=10)
        seen["listed"] = [u.id for u in call]
        seen["next_page_token"] = dict(call.trailing_metadata()).get("x-next-page-token")

        order = orders.CreateOrder(
            orders_pb2.CreateOrderRequest(
                user_id=created.id,
                items=[orders_pb2.OrderItem(product_id="P1", quantity=2, price=1.25)],
            ),
            metadata=auth,
            timeout=10,
        )
        seen["order_total"] = order.total_amount
        seen["tracked"] = track_orders(orders, orders_pb2, order.order_id, auth)

        try:
            users.GetUser(users_pb2.GetUserRequest(user_id="USER9999"), metadata=auth, timeout=10)
        except grpc.RpcError as e:
            seen["unknown_user"] = e.code().name
        try:
            users.GetUser(users_pb2.GetUserRequest(user_id="USER0001"), timeout=10)
        except grpc.RpcError as e:
            seen["no_token"] = e.code().name
    print(json.dumps(seen))


def track_orders(orders, orders_pb2, order_id, auth) -> list:
    """Drives TrackOrders (bidirectional): subscribes to a real and an unknown order, moves
    the real one with unary calls between reads, then closes its side."""
    import queue

    requests = queue.Queue()

    def outgoing():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    call = orders.TrackOrders(outgoing(), metadata=auth, timeout=30)
    events = iter(call)

    def event():
        e = next(events)
        if e.WhichOneof("event") == "order":
            return {"order": e.order.order_id, "status": e.order.status}
        return {"error": e.error.order_id, "code": e.error.code}

    got = []
    requests.put(orders_pb2.TrackOrdersRequest(subscribe=order_id))
    got.append(event())
    requests.put(orders_pb2.TrackOrdersRequest(subscribe="ORD0NOPE000"))
    got.append(event())
    orders.UpdateOrderStatus(
        orders_pb2.UpdateOrderStatusRequest(order_id=order_id, status="PAID"), metadata=auth, timeout=10
    )
    got.append(event())
    requests.put(None)  # close our side; the server ends the stream after the terminal state
    orders.CancelOrder(
        orders_pb2.CancelOrderRequest(order_id=order_id, reason="interop"), metadata=auth, timeout=10
    )
    got.append(event())
    got.append({"end": call.code().name if list(events) == [] else "MORE"})
    return got


def traced_call(target, creds, auth, users_pb2, users_pb2_grpc) -> dict:
    """One GetUser from a client instrumented by opentelemetry-instrumentation-grpc; returns
    the ids of its CLIENT span, which the server's span must continue."""
    import grpc
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    GrpcInstrumentorClient().instrument()
    with grpc.secure_channel(target, creds) as channel:
        users = users_pb2_grpc.UserServiceStub(channel)
        call = users.GetUser.with_call(
            users_pb2.GetUserRequest(user_id="USER0002"), metadata=auth, timeout=10
        )
        trace_header = dict(call[1].initial_metadata()).get("x-trace-id")
    spans = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
    assert len(spans) == 1, spans
    ctx = spans[0].get_span_context()
    return {
        "name": spans[0].name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "x_trace_id": trace_header,
    }


if __name__ == "__main__":
    main()
