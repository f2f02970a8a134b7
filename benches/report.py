"""Turns the JSON lines written by `scripts/bench grpc` into the Markdown of BENCHMARKS.md:
medians over the repeats, ratios to the bare variant, and each target met or missed."""
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
NAMES = {
    "bare": "bare tonic handlers (plaintext, no auth, no telemetry)",
    "full10": "Jisu full stack, 10% parent-based sampling",
    "full100": "Jisu full stack, 100% sampling",
    "python": "Python grpcio (asyncio, plaintext, no auth)",
    "rest": "REST/JSON over HTTPS (axum, mTLS + JWT)",
}


def pick(run, variant):
    return [r for r in rows if r["run"] == run and r["variant"] == variant]


def med(rs, f):
    return statistics.median(f(r) for r in rs) if rs else float("nan")


def lat(rs, q):
    return med(rs, lambda r: r["latency_ms"][q])


print("\n## Throughput (closed loop, 64 calls in flight, GetUser; medians of",
      max(len(pick("max", "bare")), 1), "runs)\n")
print("| variant | calls/s | vs bare | p50 ms | p99 ms | p99.9 ms | server CPU µs/call | vs bare | peak RSS MiB | generator |")
print("|---|---|---|---|---|---|---|---|---|---|")
bare = pick("max", "bare")
bq, bcpu = med(bare, lambda r: r["qps"]), med(bare, lambda r: r["server_cpu_us_per_call"])
q = {}
for v in NAMES:
    rs = pick("max", v)
    if not rs:
        continue
    q[v] = med(rs, lambda r: r["qps"])
    cpu = med(rs, lambda r: r["server_cpu_us_per_call"])
    bound = sum(r["client_bound"] for r in rs)
    print(f"| {NAMES[v]} | {q[v]:,.0f} | {q[v] / bq:.2f} | {lat(rs, 'p50'):.3f} | {lat(rs, 'p99'):.3f} "
          f"| {lat(rs, 'p999'):.3f} | {cpu:.1f} | {cpu / bcpu:.2f} | {max(r['server_peak_rss_mib'] for r in rs):.0f} "
          f"| {med(rs, lambda r: r['client_cpu_us_per_call']):.1f} µs/call{', client-bound ' + str(bound) + '/' + str(len(rs)) if bound else ''} |")
    errs = {k: v for r in rs for k, v in r["status"].items() if k != "OK"}
    if errs:
        print(f"|  ↳ errors | {errs} |")

print("\n## Latency at a fixed rate (open loop; latency from the scheduled send time)\n")
print("| rate | variant | calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | server CPU µs/call | late sends |")
print("|---|---|---|---|---|---|---|---|---|")
p99 = {}
for run in ("rate50", "rate80"):
    for v in ("bare", "full10", "full100"):
        rs = pick(run, v)
        if not rs:
            continue
        p99[(run, v)] = lat(rs, "p99")
        print(f"| {run[4:]}% of bare max | {NAMES[v]} | {med(rs, lambda r: r['qps']):,.0f} | {lat(rs, 'p50'):.3f} "
              f"| {lat(rs, 'p90'):.3f} | {p99[(run, v)]:.3f} | {lat(rs, 'p999'):.3f} "
              f"| {med(rs, lambda r: r['server_cpu_us_per_call']):.1f} | {med(rs, lambda r: r['late_sends'] or 0):.0f} |")

print("\n## Streaming (ListUsers, 100 messages per stream, 8 streams in flight)\n")
for v in ("bare", "full10"):
    rs = pick("stream", v)
    if rs:
        print(f"- {NAMES[v]}: {med(rs, lambda r: r['messages_per_second']):,.0f} messages/s "
              f"({med(rs, lambda r: r['qps']):,.0f} streams/s)")

payload = {v: pick("max", v)[0].get("payload_bytes") for v in ("full10", "rest") if pick("max", v)}
if payload.get("full10") and payload.get("rest"):
    g, r = payload["full10"], payload["rest"]
    print(f"\nPayload per GetUser: gRPC {g['request']} B request + {g['response']} B response (protobuf + "
          f"5-byte frame); REST {r['request']} B path + {r['response']} B JSON body (HTTP headers not counted "
          f"on either side).")

print("\n## Targets\n")


def target(ok, text):
    print(f"- {'met' if ok else 'MISSED'}: {text}")


def have(*vs):
    return all(v in q for v in vs)


if have("bare", "full10", "full100"):
    target(q["full10"] >= 0.9 * bq, f"full stack at 10% sampling ≥ 90% of bare QPS: {q['full10'] / bq:.0%}")
    target(q["full100"] >= 0.75 * bq, f"full stack at 100% sampling with OTLP export ≥ 75% of bare QPS: {q['full100'] / bq:.0%}")
    c10 = med(pick("max", "full10"), lambda r: r["server_cpu_us_per_call"])
    target(c10 <= 1.15 * bcpu, f"server CPU per call at 10% ≤ 1.15× bare: {c10 / bcpu:.2f}×")
for v in ("full10", "full100"):
    if ("rate50", v) in p99:
        b = p99[("rate50", "bare")]
        f = p99[("rate50", v)]
        target(f <= 1.5 * b and f < 2.0, f"{v}: p99 at 50% of bare max ≤ 1.5× bare and < 2 ms: {f:.3f} ms vs {b:.3f} ms ({f / b:.2f}×)")
if have("full10", "python"):
    target(q["full10"] >= 15 * q["python"], f"full stack ≥ 15× Python grpcio: {q['full10'] / q['python']:.1f}×")
if have("full10", "rest"):
    target(q["full10"] >= 3 * q["rest"], f"full stack ≥ 3× REST/JSON: {q['full10'] / q['rest']:.1f}×")
rss = max([r["server_peak_rss_mib"] for r in rows if r["variant"] in ("full10", "full100")] or [0])
target(rss < 64, f"full stack peak RSS < 64 MiB: {rss:.0f} MiB")
print("\nLoad average during the runs:", ", ".join(sorted({r["loadavg"] for r in rows})[:3]), "…")
