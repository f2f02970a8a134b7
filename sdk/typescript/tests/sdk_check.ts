/**
 * Exercises the TypeScript SDK against a real `jisu serve` over mTLS (run by
 * tests/suite/sdk.rs): GetUser, ListUsers across pages, CreateOrder, StreamOrderUpdates
 * while the order moves, TrackOrders (bidirectional) and typed errors. Prints JSON.
 */
import { create } from "@bufbuild/protobuf";

import { Code, JisuError, TokenSource, connect, orders, users } from "../src/index.js";

const arg = (name: string): string => {
  const i = process.argv.indexOf(name);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`missing ${name}`);
  return process.argv[i + 1] as string;
};

let fetches = 0;
const source = new TokenSource(() => {
  fetches += 1;
  return [process.env.JISU_TOKEN ?? "", Date.now() / 1000 + 300];
});
const jisu = connect(`https://${arg("--target")}`, { certs: arg("--certs"), token: source, serverName: "localhost" });
const out: Record<string, unknown> = {};

out.get_user = (await jisu.getUser("USER0001")).id;
const all: users.User[] = [];
for await (const user of jisu.listAllUsers(40)) all.push(user);
out.listed = [all.length, all[0]?.id, all[all.length - 1]?.id];
out.created_at_is_bigint = typeof all[0]?.createdAt === "bigint";

try {
  await jisu.getUser("USER0999");
} catch (error) {
  if (!(error instanceof JisuError)) throw error;
  out.not_found = { code: Code[error.code], reason: error.reason, domain: error.domain, trace_id: error.traceId };
}
try {
  await jisu.users.createUser(create(users.CreateUserRequestSchema, { name: "", email: "not-an-email" }));
} catch (raw) {
  const error = JisuError.from(raw);
  out.invalid = {
    code: Code[error.code],
    reason: error.reason,
    fields: error.fieldViolations.map((v) => v.field).sort(),
  };
}

const item = create(orders.OrderItemSchema, { productId: "P1", productName: "Widget", quantity: 2, price: 1.25 });
const order = await jisu.orders.createOrder(create(orders.CreateOrderRequestSchema, { userId: "USER0001", items: [item] }));
out.order = { status: order.status, total: order.totalAmount };

// Watch the order while it moves to DELIVERED; the stream ends with OK there.
const watched: string[] = [];
let first!: () => void;
const started = new Promise<void>((resolve) => (first = resolve));
const watching = (async () => {
  const stream = jisu.orders.streamOrderUpdates(create(orders.StreamOrderUpdatesRequestSchema, { orderId: order.orderId }), {
    timeoutMs: 30_000,
  });
  for await (const update of stream) {
    watched.push(update.status);
    first();
  }
})();
await started;
for (const status of ["PAID", "PROCESSING", "SHIPPED", "DELIVERED"]) {
  await jisu.orders.updateOrderStatus(create(orders.UpdateOrderStatusRequestSchema, { orderId: order.orderId, status }));
}
await watching;
out.watched = watched;

// TrackOrders: subscribe to a new order and a missing one, cancel the order, close.
const second = await jisu.orders.createOrder(create(orders.CreateOrderRequestSchema, { userId: "USER0001", items: [item] }));
let finish!: () => void;
const finished = new Promise<void>((resolve) => (finish = resolve));
async function* requests(): AsyncGenerator<orders.TrackOrdersRequest> {
  yield create(orders.TrackOrdersRequestSchema, { action: { case: "subscribe", value: second.orderId } });
  yield create(orders.TrackOrdersRequestSchema, { action: { case: "subscribe", value: "ORD0NOPE000" } });
  await finished;
}
const tracked: unknown[] = [];
for await (const event of jisu.orders.trackOrders(requests(), { timeoutMs: 30_000 })) {
  if (event.event.case === "order") {
    tracked.push(["order", event.event.value.status]);
    if (event.event.value.status === "PENDING") {
      await jisu.orders.cancelOrder(create(orders.CancelOrderRequestSchema, { orderId: second.orderId, reason: "test" }));
    }
    if (event.event.value.status === "CANCELLED") finish();
  } else if (event.event.case === "error") {
    tracked.push(["error", event.event.value.orderId, event.event.value.code]);
  }
}
out.tracked = tracked;
out.token_fetches = fetches;
console.log(JSON.stringify(out));
