// The debug pages: everything is rendered from the JSON API with textContent (never
// HTML from data: error messages and identities come from callers).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function ms(micros) {
  return (micros / 1000).toFixed(micros < 10000 ? 2 : 1) + " ms";
}

function when(nanos) {
  return new Date(nanos / 1e6).toISOString().replace("T", " ").replace("Z", "");
}

function codeClass(code) {
  return code === "OK" ? "code-OK" : "failed";
}

async function getJson(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

function showError(e) {
  const p = document.getElementById("error");
  p.textContent = "Could not load: " + e.message;
  p.hidden = false;
}

function traceRow(t) {
  const link = el("a", { href: "/debug/traces?trace=" + encodeURIComponent(t.trace_id), class: "mono" }, t.trace_id);
  return el("tr", { "data-trace-id": t.trace_id },
    el("td", { class: "mono" }, when(t.start_unix_nanos)),
    el("td", {}, link),
    el("td", { class: "mono" }, t.method),
    el("td", { class: codeClass(t.code) }, t.code),
    el("td", { class: "num" }, ms(t.duration_micros)),
    el("td", {}, t.kept_by),
    el("td", {}, t.message || ""));
}

function fillTable(id, traces) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...traces.map(traceRow));
  document.getElementById(id + "-empty").hidden = traces.length > 0;
}

function timeline(call) {
  const total = Math.max(call.duration_micros, 1);
  const rows = call.spans.map((s) => {
    const left = Math.min(100, (s.offset_micros / total) * 100);
    const width = Math.max(0.4, Math.min(100 - left, (s.duration_micros / total) * 100));
    const failed = s.status !== "OK";
    const bar = el("div", { class: "span-bar" + (failed ? " failed" : ""), title: s.name });
    bar.style.left = left.toFixed(2) + "%";
    bar.style.width = width.toFixed(2) + "%";
    const attrs = s.attributes.map(([k, v]) => k + "=" + v).join("  ");
    const depth = s.parent_span_id && s.kind !== "server" ? "\u00a0\u00a0\u2514 " : "";
    return el("tr", { class: "span", "data-span-name": s.name, "data-kind": s.kind },
      el("td", {}, el("span", { class: "mono" }, depth + s.name), el("div", { class: "attrs" }, attrs)),
      el("td", {}, s.kind),
      el("td", { class: failed ? "failed" : "code-OK" }, s.status),
      el("td", { class: "num" }, ms(s.duration_micros)),
      el("td", { class: "bar" }, el("div", { class: "track" }, bar)));
  });
  const head = el("tr", {}, el("th", {}, "span"), el("th", {}, "kind"), el("th", {}, "status"),
    el("th", {}, "duration"), el("th", {}, "timeline"));
  const table = el("table", { class: "timeline" }, el("thead", {}, head), el("tbody", {}, ...rows));
  const title = el("h3", {}, call.method + " · ", el("span", { class: codeClass(call.code) }, call.code),
    " · " + ms(call.duration_micros) + " · kept: " + call.kept_by + " · " + when(call.start_unix_nanos));
  const parts = [title];
  if (call.message) parts.push(el("p", { class: "failed" }, call.message));
  parts.push(table);
  if (call.dropped_spans > 0) parts.push(el("p", { class: "empty" }, call.dropped_spans + " more spans not kept"));
  return el("div", { class: "call" }, ...parts);
}

async function tracesPage() {
  const id = new URLSearchParams(location.search).get("trace");
  if (id) {
    document.getElementById("trace").hidden = false;
    document.getElementById("trace-id").textContent = id;
    const found = await getJson("/debug/api/traces/" + encodeURIComponent(id));
    document.getElementById("trace-missing").hidden = !!found;
    if (found) document.getElementById("calls").replaceChildren(...found.calls.map(timeline));
  }
  const failures = await getJson("/debug/api/traces?failures=true&limit=100");
  fillTable("failures", failures.traces);
  const all = await getJson("/debug/api/traces?limit=200");
  fillTable("sampled", all.traces.filter((t) => t.kept_by === "sample").slice(0, 100));
  document.body.dataset.loaded = "true";
}

async function rpczPage() {
  const stats = await getJson("/debug/api/rpcz");
  const rows = stats.methods.map((m) => el("tr", { "data-method": m.service + "/" + m.method },
    el("td", { class: "mono" }, m.service),
    el("td", { class: "mono" }, m.method),
    el("td", { class: "num" }, m.calls),
    el("td", { class: m.errors.length ? "failed" : "" }, m.errors.map(([c, n]) => c + ": " + n).join(", ")),
    el("td", { class: "num" }, m.p50_ms.toFixed(2)),
    el("td", { class: "num" }, m.p90_ms.toFixed(2)),
    el("td", { class: "num" }, m.p99_ms.toFixed(2)),
    el("td", { class: "num" }, m.max_ms.toFixed(2))));
  document.querySelector("#methods tbody").replaceChildren(...rows);
  document.getElementById("methods-empty").hidden = rows.length > 0;
  document.body.dataset.loaded = "true";
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  (page === "rpcz" ? rpczPage() : tracesPage()).catch(showError);
});
