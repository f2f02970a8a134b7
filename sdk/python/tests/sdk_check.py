"""Exercises the Python SDK against a real `jisu serve` over mTLS (run by
tests/suite/sdk.rs): GetUser, ListUsers across pages, CreateOrder, StreamOrderUpdates
while the order moves, TrackOrders (bidirectional), and typed errors. Prints JSON."""
import argparse
import json
import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import grpc  # noqa: E402

from jisu_sdk import JisuError, TokenSource, connect, orders_pb2, users_pb2  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--target", required=True)
parser.add_argument("--certs", required=True)
args = parser.parse_args()

fetches = []


def fetch():
    fetches.append(time.time())
    return os.environ["JISU_TOKEN"], time.time() + 300


out = {}
with connect(args.target, args.certs, TokenSource(fetch), timeout=10) as jisu:
    out["get_user"] = jisu.get_user("USER0001").id
    users = list(jisu.list_all_users(page_size=40))
    out["listed"] = [len(users), users[0].id, users[-1].id]

    try:
        jisu.get_user("USER0999")
    except JisuError as error:
        out["not_found"] = {
            "code": error.code.name,
            "reason": error.reason,
            "domain": error.domain,
            "trace_id": error.trace_id,
        }
    try:
        jisu.users.CreateUser(users_pb2.CreateUserRequest(name="", email="not-an-email"))
    except grpc.RpcError as raw:
        error = JisuError.from_rpc_error(raw)
        out["invalid"] = {
            "code": error.code.name,
            "reason": error.reason,
            "fields": sorted(v.field for v in error.field_violations),
        }

    item = orders_pb2.OrderItem(product_id="P1", product_name="Widget", quantity=2, price=1.25)
    order = jisu.orders.CreateOrder(orders_pb2.CreateOrderRequest(user_id="USER0001", items=[item]))
    out["order"] = {"status": order.status, "total": order.total_amount}

    # Watch the order while it moves to DELIVERED; the stream ends with OK there.
    seen = []
    watching = threading.Event()

    def watch():
        stream = jisu.orders.StreamOrderUpdates(
            orders_pb2.StreamOrderUpdatesRequest(order_id=order.order_id), timeout=30
        )
        for update in stream:
            seen.append(update.status)
            watching.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    watching.wait(10)
    for status in ["PAID", "PROCESSING", "SHIPPED", "DELIVERED"]:
        jisu.orders.UpdateOrderStatus(
            orders_pb2.UpdateOrderStatusRequest(order_id=order.order_id, status=status)
        )
    watcher.join(30)
    out["watched"] = seen

    # TrackOrders: subscribe to a new order and a missing one, cancel the order, close.
    second = jisu.orders.CreateOrder(orders_pb2.CreateOrderRequest(user_id="USER0001", items=[item]))
    requests = queue.Queue()
    requests.put(orders_pb2.TrackOrdersRequest(subscribe=second.order_id))
    requests.put(orders_pb2.TrackOrdersRequest(subscribe="ORD0NOPE000"))

    def outgoing():
        while True:
            request = requests.get()
            if request is None:
                return
            yield request

    events = []
    for event in jisu.orders.TrackOrders(outgoing(), timeout=30):
        if event.HasField("order"):
            events.append(["order", event.order.status])
            if event.order.status == "PENDING":
                jisu.orders.CancelOrder(
                    orders_pb2.CancelOrderRequest(order_id=second.order_id, reason="test")
                )
            if event.order.status == "CANCELLED":
                requests.put(None)
        else:
            events.append(["error", event.error.order_id, event.error.code])
    out["tracked"] = events
    out["token_fetches"] = len(fetches)

print(json.dumps(out))
