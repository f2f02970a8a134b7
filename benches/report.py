"""Turns the JSON lines written by `scripts/bench grpc` into the Markdown of BENCHMARKS.md:
medians over the repeats, ratios to the bare variant, and each target met or missed."""
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
NAMES = {
    "bare": "bare tonic handlers (plaintext, no auth, no telemetry)",
    "bare-tls": "bare handlers over Jisu's mTLS listener (no auth, no telemetry)",
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


def stolen(rs):
    """Median CPU time the hypervisor took from the VM (both cores), ms per second of the
    measured window; "n/a" from builds that do not report it."""
    s = [r["steal_ms_per_s"] for r in rs if "steal_ms_per_s" in r]
    return f"{statistics.median(s):.0f}" if s else "n/a"


print("\n## Throughput (closed loop, 64 calls in flight, GetUser; medians of",
      max(len(pick("max", "bare")), 1), "runs)\n")
print("| variant | calls/s | vs bare | p50 ms | p99 ms | p99.9 ms | server CPU µs/call | vs bare | peak RSS MiB | generator | stolen ms/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
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
          f"| {med(rs, lambda r: r['client_cpu_us_per_call']):.1f} µs/call{', client-bound ' + str(bound) + '/' + str(len(rs)) if bound else ''} "
          f"| {stolen(rs)} |")
    errs = {k: v for r in rs for k, v in r["status"].items() if k != "OK"}
    if errs:
        print(f"|  ↳ errors | {errs} |")

print("\n## Latency and CPU at the same offered rate (open loop; latency from the scheduled send time)\n")
print("A repeat counts only if the rate held: at least 95% of the offered calls/s were answered.")
print("Less means the server or the generator could not carry the rate (a VM stall, or more than")
print("the pair can do), and its figures describe that overload, not the server's cost; the")
print("medians are over the repeats that held. Late sends (over 1 ms after their time) are the")
print("generator's lateness, and with `--frames` also calls that waited for a free stream while")
print("the server held as many as its SETTINGS_MAX_CONCURRENT_STREAMS allows (the server's")
print("backpressure): latency counts from the scheduled time, so either is in these figures.")
print("Generator: its own CPU per call on its one core (at 20,000/s, 30 µs per call keeps it 60 % busy).")
print("Stolen: CPU time the hypervisor took from this VM (both cores) per second of the window,")
print("median of all repeats: a stall of the VM, not the server's cost.\n")
print("| rate | variant | calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | server CPU µs/call | vs bare | generator µs/call | late sends | held | stolen ms/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
p99 = {}
cpu_at = {}
unheld = {}
RATES = (("rate70", "70% of the 10% stack's max"), ("rate70own", "70% of the 100% stack's max"),
         ("rate4k", "4,000/s"))


def offered(r):
    """The open loop's rate, from its mode ("open loop at N calls/s")."""
    words = r["mode"].split()
    return float(words[words.index("at") + 1])


def gen(rs):
    """The generator's own CPU per call (median): near the server's, the pair is two queues
    in a row and the generator's lateness is part of every tail."""
    return f"{med(rs, lambda r: r['client_cpu_us_per_call']):.1f}"


def held(r):
    return r["qps"] >= 0.95 * offered(r)


for run, label in RATES:
    for v in ("bare", "bare-tls", "full10", "full100"):
        every = pick(run, v)
        if not every:
            continue
        rs = [r for r in every if held(r)]
        late = sum(r.get("late_sends", 0) for r in every)
        if not rs:
            unheld[(run, v)] = (f"{med(every, lambda r: r['qps']):,.0f} calls/s answered of "
                                f"{offered(every[0]):,.0f} offered")
            print(f"| {label} | {NAMES[v]} | {med(every, lambda r: r['qps']):,.0f} | — | — | — | — | — | — "
                  f"| {gen(every)} | {late} | 0/{len(every)} | {stolen(every)} |")
            continue
        p99[(run, v)] = lat(rs, "p99")
        cpu_at[(run, v)] = med(rs, lambda r: r["server_cpu_us_per_call"])
        base = cpu_at.get((run, "bare"))
        ratio = f"{cpu_at[(run, v)] / base:.2f}" if base else ""
        print(f"| {label} ({med(rs, lambda r: r['qps']):,.0f}/s) | {NAMES[v]} | {med(rs, lambda r: r['qps']):,.0f} "
              f"| {lat(rs, 'p50'):.3f} | {lat(rs, 'p90'):.3f} | {p99[(run, v)]:.3f} | {lat(rs, 'p999'):.3f} "
              f"| {cpu_at[(run, v)]:.1f} | {ratio} | {gen(rs)} | {late} | {len(rs)}/{len(every)} | {stolen(every)} |")

tails = [(run, label, v, [r["tail"] for r in pick(run, v) if "tail" in r])
         for run, label in RATES for v in ("bare", "bare-tls", "full10", "full100")]
tails = [t for t in tails if t[3]]
if tails:
    print("\nWhat the 70% rows' tails are made of (every call's times, `jisu bench --timeline`):")
    print("calls answered over 2 ms after their slot, the episodes they come in (such calls whose")
    print("slots are under 5 ms apart), the median time from one episode's start to the next's, and")
    print("the share of those calls that left over 1 ms late (the generator's side, or with `--frames`")
    print("a wait for one of the server's streams); per repeat.\n")
    print("| rate | variant | calls over 2 ms | episodes | one every (ms) | of them left late |")
    print("|---|---|---|---|---|---|")
    for run, label, v, ts in tails:
        over = ", ".join(str(t["over_2ms"]) for t in ts)
        episodes = ", ".join(str(t["episodes"]) for t in ts)
        every = ", ".join(f"{t['every_ms']:,.0f}" if t["every_ms"] else "—" for t in ts)
        left = ", ".join(f"{t['left_late']:.0%}" for t in ts)
        print(f"| {label} | {NAMES[v]} | {over} | {episodes} | {every} | {left} |")

print("\n## One call at a time (concurrency 1)\n")
print("| variant | calls/s | p50 ms | p99 ms | server CPU µs/call |")
print("|---|---|---|---|---|")
p50_1 = {}
for v in ("bare", "bare-tls", "full10"):
    rs = pick("conc1", v)
    if rs:
        p50_1[v] = lat(rs, "p50")
        print(f"| {NAMES[v]} | {med(rs, lambda r: r['qps']):,.0f} | {p50_1[v]:.3f} | {lat(rs, 'p99'):.3f} "
              f"| {med(rs, lambda r: r['server_cpu_us_per_call']):.1f} |")

print("\n## Streaming (ListUsers, 100 messages per stream, 8 streams in flight)\n")
for v in ("bare", "full10"):
    rs = pick("stream", v)
    if rs:
        print(f"- {NAMES[v]}: {med(rs, lambda r: r['messages_per_second']):,.0f} messages/s "
              f"({med(rs, lambda r: r['qps']):,.0f} streams/s)")

print("\n## Realistic payloads (closed loop, 64 in flight; one h2 connection)\n")
print("| call | variant | calls/s | p50 ms | p99 ms | server CPU µs/call | vs bare |")
print("|---|---|---|---|---|---|---|")
for run, label in (("max", "GetUser"), ("batch100", "BatchGetUsers, 100 users"), ("list100", "ListUsers stream, 100 users")):
    base = None
    for v in ("bare", "bare-tls", "full10", "rest"):
        rs = pick(run, v)
        if not rs:
            continue
        c = med(rs, lambda r: r["server_cpu_us_per_call"])
        base = base or c
        print(f"| {label} | {NAMES[v]} | {med(rs, lambda r: r['qps']):,.0f} | {lat(rs, 'p50'):.3f} | {lat(rs, 'p99'):.3f} "
              f"| {c:.1f} | {c / base:.2f} |")

print("\n## The same calls over the same number of connections (64), gRPC vs REST/JSON\n")
print("REST/JSON over HTTP/1.1 carries one call per connection at a time, so the tables above pit its")
print("64 connections against one h2 connection; here the full stack also spreads its 64 calls in")
print("flight over 64 h2 connections.\n")
print("| call | full stack, 64 h2 conns: calls/s | server CPU µs/call | REST, 64 HTTP/1.1 conns: calls/s | server CPU µs/call | gRPC CPU / REST CPU |")
print("|---|---|---|---|---|---|")
for grpc_run, rest_run, label in (("max_c64", "max", "GetUser"), ("batch100_c64", "batch100", "BatchGetUsers, 100 users"),
                                  ("list100_c64", "list100", "ListUsers, 100 users (REST: one page)")):
    g, r_ = pick(grpc_run, "full10"), pick(rest_run, "rest")
    if g and r_:
        gc, rc = med(g, lambda r: r["server_cpu_us_per_call"]), med(r_, lambda r: r["server_cpu_us_per_call"])
        print(f"| {label} | {med(g, lambda r: r['qps']):,.0f} | {gc:.1f} | {med(r_, lambda r: r['qps']):,.0f} | {rc:.1f} | {gc / rc:.2f} |")

payload = {v: pick("max", v)[0].get("payload_bytes") for v in ("full10", "rest") if pick("max", v)}
if payload.get("full10") and payload.get("rest"):
    g, r = payload["full10"], payload["rest"]
    print(f"\nPayload per GetUser: gRPC {g['request']} B request + {g['response']} B response (protobuf + "
          f"5-byte frame); REST {r['request']} B path + {r['response']} B JSON body (HTTP headers not counted "
          f"on either side).")

print("\n## Targets\n")


def target(ok, text):
    print(f"- {'met' if ok else 'MISSED'}: {text}")


def not_measured(text, run, *variants):
    """The rate held in no repeat: missed when bare held it (the generator could send it, the
    stack could not answer it), otherwise not measured."""
    why = "; ".join(f"{NAMES[v]}: {unheld[(run, v)]}" for v in variants if (run, v) in unheld)
    if (run, "bare") in unheld:
        print(f"- NOT MEASURED: {text}: the rate held in no repeat ({why})")
    elif (run, "bare-tls") in unheld:
        # mTLS alone (no Jisu middleware) failed too: the limit is TLS on the server or the
        # generator's own TLS client, which costs it more per call than plaintext.
        print(f"- MISSED: {text}: the stack could not carry the rate that bare carried, nor could "
              f"mTLS alone ({why}; {NAMES['bare-tls']}: {unheld[(run, 'bare-tls')]})")
    else:
        print(f"- MISSED: {text}: the stack could not carry the rate that bare carried ({why})")


def spread(run, v):
    """The ratio to bare repeat by repeat (repeat k of each variant ran in the same turn of
    the loop, minutes apart at most), where both held: how far one repeat is from the median."""
    pairs = [(r, b) for r, b in zip(pick(run, v), pick(run, "bare")) if held(r) and held(b)]
    if len(pairs) < 2:
        return ""
    ratios = ", ".join(f"{r['server_cpu_us_per_call'] / b['server_cpu_us_per_call']:.2f}" for r, b in pairs)
    return f"; repeat by repeat {ratios}"


def have(*vs):
    return all(v in q for v in vs)


spans = [json.loads(line) for line in open(sys.argv[2])] if len(sys.argv) > 2 else []
for run, label in RATES:
    label = "at " + label
    b = cpu_at.get((run, "bare"))
    for v, limit in (("full10", 1.25), ("full100", 1.6)):
        c = cpu_at.get((run, v))
        if b and c:
            target(c <= limit * b, f"server CPU per call, {NAMES[v]}, {label}: ≤ {limit}× bare: "
                   f"{c / b:.2f}× ({c:.1f} vs {b:.1f} µs){spread(run, v)}")
        elif (run, v) in unheld or (run, "bare") in unheld:
            not_measured(f"server CPU per call, {NAMES[v]}, {label}: ≤ {limit}× bare", run, "bare", v)
if have("bare", "full10", "full100"):
    for v, limit in (("full10", 1.25), ("full100", 1.6)):
        c = med(pick("max", v), lambda r: r["server_cpu_us_per_call"])
        target(c <= limit * bcpu, f"server CPU per call, {NAMES[v]}, each at its own max: ≤ {limit}× bare: {c / bcpu:.2f}×")
RUN_NAMES = {"max": "closed-loop max", "conc1": "one at a time", **dict(RATES)}
for s_ in spans:
    v = s_["variant"]
    # Where they were dropped: per kind of run (the count is read around each run).
    where = {}
    for r in rows:
        if r["variant"] == v and "spans_dropped" in r:
            where[r["run"]] = where.get(r["run"], 0) + r["spans_dropped"]
    detail = ", ".join(f"{RUN_NAMES.get(k, k)} {n}" for k, n in where.items())
    target(s_["dropped"] == 0, f"{NAMES[v]}: no span dropped at the rates measured: {s_['dropped']}"
           + (f" (by run: {detail})" if detail else ""))
# Where the cost is: TLS alone (bare-tls vs bare) and everything else (full vs bare-tls).
for run, label in RATES:
    label = "at " + label
    b, t = cpu_at.get((run, "bare")), cpu_at.get((run, "bare-tls"))
    for v in ("full10", "full100"):
        c = cpu_at.get((run, v))
        if b and t and c:
            print(f"- (breakdown) {NAMES[v]}, {label}: mTLS alone {t / b:.2f}× bare; auth, policy, "
                  f"metrics and tracing on top {c / t:.2f}× bare-tls ({c - t:+.1f} µs per call)")
for run, v in (("rate70", "full10"), ("rate70own", "full100")):
    if (run, v) in p99 and (run, "bare") in p99:
        f, b = p99[(run, v)], p99[(run, "bare")]
        late = {w: sum(r.get("late_sends", 0) for r in pick(run, w)) / max(sum(r["count"] for r in pick(run, w)), 1)
                for w in ("bare", v)}
        note = "" if max(late.values()) <= 0.01 else (
            f" (late sends: bare {late['bare']:.1%}, the stack {late[v]:.1%} of calls: the generator's "
            f"lateness, or a wait for a stream, is in both)")
        target(f <= 2.0 and f <= 2 * b, f"p99, {NAMES[v]}, at 70% of its own max ≤ 2 ms and ≤ 2× bare: "
               f"{f:.3f} ms vs bare {b:.3f} ms ({f / b:.2f}×){note}")
    elif (run, v) in unheld or (run, "bare") in unheld:
        not_measured(f"p99, {NAMES[v]}, at 70% of its own max ≤ 2 ms and ≤ 2× bare", run, "bare", v)
if "bare" in p50_1 and "full10" in p50_1:
    d = (p50_1["full10"] - p50_1["bare"]) * 1000
    target(d <= 50, f"one call at a time: full-stack p50 ≤ bare p50 + 50 µs: +{d:.0f} µs")
if have("full10", "python"):
    print(f"- (for reference) full stack vs Python grpcio: {q['full10'] / q['python']:.1f}× the calls/s")
if have("full10", "rest"):
    print(f"- (for reference) full stack vs REST/JSON, GetUser, 64 HTTP/1.1 connections vs one h2 connection: {q['full10'] / q['rest']:.2f}× the calls/s")
rss = max([r["server_peak_rss_mib"] for r in rows if r["variant"] in ("full10", "full100")] or [0])
target(rss < 64, f"full stack peak RSS < 64 MiB: {rss:.0f} MiB")
print("\nLoad average during the runs:", ", ".join(sorted({r["loadavg"] for r in rows})[:3]), "…")
