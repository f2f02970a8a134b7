"""Allocations per call from two dhat runs of the server (scripts/allocs): the counts of the
larger run minus the smaller one's, over the calls between them, in total and per site.

    python3 benches/allocs.py SMALL.json LARGE.json CALLS CALL SERVER REPO_DIR_NAME
"""
import json
import re
import sys
from collections import defaultdict

small, large, calls, call, server, repo = sys.argv[1:7]
calls = int(calls)
# dhat's frames: "0xADDR: function (last/path/components.rs:line:col)". The standard
# library's and the allocator's own frames say nothing about who allocated.
FRAME = re.compile(r"0x[0-9a-f]+: (.*?)(?: \(([^()]*)\))?$")
STD = re.compile(
    r"^(dhat-|alloc/src/|core/src/|std/src/|hashbrown-|src/(raw_vec|vec|boxed|string|slice|"
    r"sync|fmt|collections|ops|convert|str|rc|borrow|alloc|option|result|iter|ptr|mem|"
    r"cell|hash|clone|macros)[/.])"
)
OURS = re.compile(rf"^({re.escape(repo)}|jisu-client|jisu-api)/src/")


def describe(frame):
    m = FRAME.match(frame)
    name, where = (m.group(1), m.group(2) or "") if m else (frame, "")
    return re.sub(r"<.*", "", name), where


def site(frames, ftbl):
    """The first frame outside the allocator and the standard library, and the first
    frame in Jisu's own code at or above it."""
    first = ours = None
    for f in frames:
        name, where = describe(ftbl[f])
        if name.startswith("__r"):  # the global allocator's shims
            continue
        if first is None and where and not STD.match(where):
            first = f"{name} ({where.rsplit(':', 1)[0]})"
        if OURS.match(where):
            ours = f"{name} ({where.split('/src/', 1)[1].rsplit(':', 1)[0]})"
            break
    return first or "?", ours or "-"


def load(path):
    with open(path) as f:
        d = json.load(f)
    sites = defaultdict(lambda: [0, 0])
    for pp in d["pps"]:
        s = sites[site(pp["fs"], d["ftbl"])]
        s[0] += pp["tb"]
        s[1] += pp["tbk"]
    return sites


a, b = load(small), load(large)
blocks = sum(v[1] for v in b.values()) - sum(v[1] for v in a.values())
nbytes = sum(v[0] for v in b.values()) - sum(v[0] for v in a.values())
print(
    f"{call}, one call at a time, {server}: **{blocks / calls:.1f} allocations, "
    f"{nbytes / calls:.0f} bytes per call** in the server (the counts of a "
    f"{calls * 3 // 2}-call run minus a {calls // 2}-call run's, over {calls})"
)
print()
print("| allocations per call | bytes per call | allocated in | from Jisu's code at |")
print("|---:|---:|---|---|")
rows = []
for k in set(a) | set(b):
    d_blocks = b.get(k, [0, 0])[1] - a.get(k, [0, 0])[1]
    d_bytes = b.get(k, [0, 0])[0] - a.get(k, [0, 0])[0]
    rows.append((d_blocks / calls, d_bytes / calls, k))
rows.sort(reverse=True)
shown = 0.0
for per_call, per_bytes, (first, ours) in rows:
    if per_call < 0.1:
        break
    shown += per_call
    print(f"| {per_call:.2f} | {per_bytes:.0f} | `{first}` | `{ours}` |")
print(f"| {blocks / calls - shown:.2f} | | (sites under 0.1 per call) | |")
