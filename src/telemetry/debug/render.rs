//! Plain-text views of kept traces, for `jisu trace`: one trace's span tree (across the
//! processes asked), and the list of recent failures.
use std::{collections::HashMap, fmt::Write as _};

use crate::telemetry::recent::TraceRecord;

/// One span placed in time, wherever it was recorded.
struct Placed<'a> {
    span: &'a super::super::recent::SpanRecord,
    start_nanos: u64,
    kept_by: Option<&'a str>,
    message: &'a str,
    dropped: u32,
}

fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn rfc3339(nanos: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
        .to_string()
}

/// The span tree of one trace from the calls of it the servers kept (each server's
/// SERVER span hangs below the CLIENT span that called it, when that was kept too).
pub fn trace_tree(calls: &[TraceRecord]) -> String {
    let mut placed: Vec<Placed> = Vec::new();
    for call in calls {
        for (i, span) in call.spans.iter().enumerate() {
            placed.push(Placed {
                span,
                start_nanos: call.start_unix_nanos + span.offset_micros * 1000,
                kept_by: (i == 0).then_some(call.kept_by.as_str()),
                message: if i == 0 { &call.message } else { "" },
                dropped: if i == 0 { call.dropped_spans } else { 0 },
            });
        }
    }
    placed.sort_by_key(|p| p.start_nanos);
    let ids: HashMap<&str, usize> = placed
        .iter()
        .enumerate()
        .map(|(i, p)| (p.span.span_id.as_str(), i))
        .collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, p) in placed.iter().enumerate() {
        match p.span.parent_span_id.as_deref().and_then(|id| ids.get(id)) {
            Some(&parent) if parent != i => children.entry(parent).or_default().push(i),
            _ => roots.push(i),
        }
    }
    let origin = placed.first().map_or(0, |p| p.start_nanos);
    let mut out = String::new();
    if let Some(first) = calls.first() {
        let _ = writeln!(
            out,
            "trace {} · {} call(s) kept · started {}",
            first.trace_id,
            calls.len(),
            rfc3339(origin)
        );
    }
    let tree = Tree {
        placed: &placed,
        children: &children,
        origin,
    };
    for &r in &roots {
        tree.walk(&mut out, r, "", true, true);
    }
    out
}

struct Tree<'a> {
    placed: &'a [Placed<'a>],
    children: &'a HashMap<usize, Vec<usize>>,
    origin: u64,
}

impl Tree<'_> {
    fn walk(&self, out: &mut String, i: usize, prefix: &str, last: bool, root: bool) {
        let (placed, children, origin) = (self.placed, self.children, self.origin);
        let p = &placed[i];
        let (branch, next) = match (root, last) {
            (true, _) => ("", String::new()),
            (false, true) => ("└─ ", format!("{prefix}   ")),
            (false, false) => ("├─ ", format!("{prefix}│  ")),
        };
        let at = (p.start_nanos.saturating_sub(origin)) / 1000;
        let mut line = format!(
            "{prefix}{branch}{}  [{}]  {}  {}  at +{}",
            p.span.name,
            p.span.kind,
            p.span.status,
            ms(p.span.duration_micros),
            ms(at)
        );
        if let Some(kept) = p.kept_by {
            let _ = write!(line, "  kept: {kept}");
        }
        let _ = writeln!(out, "{line}");
        let pad = if root { String::new() } else { next.clone() };
        let kids = children.get(&i).map(Vec::as_slice).unwrap_or_default();
        let bar = if kids.is_empty() { "   " } else { "│  " };
        if !p.message.is_empty() {
            let _ = writeln!(out, "{pad}{bar}message: {}", p.message);
        }
        if !p.span.attributes.is_empty() {
            let attrs: Vec<String> = p
                .span
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "{pad}{bar}{}", attrs.join(" "));
        }
        if p.dropped > 0 {
            let _ = writeln!(out, "{pad}{bar}({} more spans not kept)", p.dropped);
        }
        for (n, &kid) in kids.iter().enumerate() {
            self.walk(out, kid, &pad, n + 1 == kids.len(), false);
        }
    }
}

/// Recent failed and slow calls, newest first, one per line.
pub fn failures(records: &[TraceRecord]) -> String {
    let mut out = String::new();
    if records.is_empty() {
        out.push_str("no failed or slow call kept\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24}  {:<32}  {:<42}  {:<18}  {:>10}  {:<5}  MESSAGE",
        "STARTED (UTC)", "TRACE ID", "METHOD", "CODE", "DURATION", "KEPT"
    );
    for r in records {
        let _ = writeln!(
            out,
            "{:<24}  {:<32}  {:<42}  {:<18}  {:>10}  {:<5}  {}",
            rfc3339(r.start_unix_nanos),
            r.trace_id,
            r.method,
            r.code,
            ms(r.duration_micros),
            r.kept_by,
            r.message
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::recent::SpanRecord;

    fn span(id: &str, parent: Option<&str>, name: &str, kind: &str, at: u64) -> SpanRecord {
        SpanRecord {
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            name: name.into(),
            kind: kind.into(),
            offset_micros: at,
            duration_micros: 100,
            status: "OK".into(),
            attributes: vec![("k".into(), "v".into())],
        }
    }

    #[test]
    fn calls_of_two_processes_make_one_tree() {
        let orders = TraceRecord {
            trace_id: "ab".repeat(16),
            kept_by: "error".into(),
            method: "jisucloud.v1.OrderService/CreateOrder".into(),
            code: "PermissionDenied".into(),
            message: "denied".into(),
            start_unix_nanos: 1_000_000_000,
            duration_micros: 500,
            spans: vec![
                span(
                    "s1",
                    None,
                    "jisucloud.v1.OrderService/CreateOrder",
                    "server",
                    0,
                ),
                span(
                    "c1",
                    Some("s1"),
                    "jisucloud.v1.UserService/GetUser",
                    "client",
                    10,
                ),
                span("st", Some("s1"), "store create_order", "internal", 300),
            ],
            dropped_spans: 0,
        };
        let users = TraceRecord {
            start_unix_nanos: 1_000_020_000,
            spans: vec![span(
                "s2",
                Some("c1"),
                "jisucloud.v1.UserService/GetUser",
                "server",
                0,
            )],
            ..orders.clone()
        };
        let text = trace_tree(&[users, orders]);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains('[')).collect();
        assert!(
            lines[0].starts_with("jisucloud.v1.OrderService/CreateOrder  [server]"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("├─ jisucloud.v1.UserService/GetUser  [client]"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("│  └─ jisucloud.v1.UserService/GetUser  [server]"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("└─ store create_order  [internal]"),
            "{text}"
        );
        assert!(text.contains("message: denied"), "{text}");
    }
}
