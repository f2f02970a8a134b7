//! Trace-id exemplars on the server's latency histogram, and the OpenMetrics exposition
//! that carries them (Prometheus asks for it first; `--enable-feature=exemplar-storage`
//! keeps them), so a dashboard can jump from a slow bucket to that call's trace.
//!
//! Only calls whose trace can be found get one: sampled and exported, kept after the fact
//! (an error, a slow call: exported when a collector is named, and in memory either way),
//! or sampled into memory. Per method and bucket the latest such call wins.
//!
//! The exporter writes the Prometheus text format; [`openmetrics`] rewrites it: counter
//! families lose their `_total` in `# TYPE`/`# HELP` (OpenMetrics names the family, the
//! sample keeps `_total`), blank lines go, `"` in help text is escaped, bucket lines of
//! `grpc_server_handling_seconds` get `# {trace_id="…"} value timestamp`, and it ends with
//! `# EOF`. Sample names and labels do not change, so queries and rules read the same.
use std::{fmt::Write as _, time::Duration};

use parking_lot::Mutex;

use super::metrics::LATENCY_BUCKETS;

/// The histogram whose buckets carry exemplars.
pub const HISTOGRAM: &str = "grpc_server_handling_seconds";

const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

#[derive(Debug, Clone, PartialEq)]
struct Exemplar {
    /// Formatted (32 lowercase hex digits) only when scraped.
    trace_id: opentelemetry::trace::TraceId,
    seconds: f64,
    unix_seconds: f64,
}

/// One method's latest exemplar per bucket.
type Slots = [Option<Exemplar>; BUCKETS];

/// The latest exemplar per method and bucket.
#[derive(Debug)]
pub struct Exemplars {
    /// A call finds its method's slots by position (no hashing of names) and locks only
    /// them.
    table: jisu_api::PerMethod<Mutex<Slots>>,
}

impl Default for Exemplars {
    fn default() -> Self {
        Self {
            table: jisu_api::PerMethod::new(|_| Mutex::default()),
        }
    }
}

/// The index of the first bucket whose upper bound holds `seconds` (the last is +Inf).
fn bucket(seconds: f64) -> usize {
    LATENCY_BUCKETS
        .iter()
        .position(|le| seconds <= *le)
        .unwrap_or(LATENCY_BUCKETS.len())
}

impl Exemplars {
    /// Remembers `trace_id` as the exemplar of the bucket `took` falls in, for the method
    /// at `index` ([`jisu_api::served_index`]; `None`: unknown).
    pub fn record(
        &self,
        index: Option<usize>,
        trace_id: opentelemetry::trace::TraceId,
        took: Duration,
    ) {
        let seconds = took.as_secs_f64();
        let unix_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.table.at(index).lock()[bucket(seconds)] = Some(Exemplar {
            trace_id,
            seconds,
            unix_seconds,
        });
    }

    fn get(&self, service: &str, method: &str, le: &str) -> Option<Exemplar> {
        let index = if le == "+Inf" {
            LATENCY_BUCKETS.len()
        } else {
            let le: f64 = le.parse().ok()?;
            LATENCY_BUCKETS
                .iter()
                .position(|b| (*b - le).abs() < 1e-12)?
        };
        self.table.named(service, method).lock()[index].clone()
    }
}

/// The label value of `key` in a sample line's `{…}` (values unescaped).
fn label<'a>(labels: &'a str, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        let value = &after[..end];
        if name.trim_start_matches(',') == key {
            return Some(if value.contains('\\') {
                value.replace("\\\"", "\"").replace("\\\\", "\\").into()
            } else {
                value.into()
            });
        }
        rest = after[end + 1..].trim_start_matches(',');
    }
    None
}

/// Rewrites the exporter's Prometheus text as OpenMetrics 1.0 with exemplars.
pub fn openmetrics(text: &str, exemplars: &Exemplars) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let bucket_prefix = format!("{HISTOGRAM}_bucket{{");
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            match (kind, name.strip_suffix("_total")) {
                ("counter", Some(family)) => {
                    let _ = writeln!(out, "# TYPE {family} counter");
                }
                // A counter without `_total` would need its samples renamed: left untyped.
                ("counter", None) => {
                    let _ = writeln!(out, "# TYPE {name} unknown");
                }
                _ => {
                    let _ = writeln!(out, "# TYPE {name} {kind}");
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let help = help.replace('"', "\\\"");
            // The family of a counter is its name without `_total` (see # TYPE); a HELP
            // comes first, so decide from the name the exporter gives counters.
            let family = if counters.contains(name) {
                name.strip_suffix("_total").unwrap_or(name)
            } else {
                name
            };
            let _ = writeln!(out, "# HELP {family} {help}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        out.push_str(line);
        if let Some(labels_and_value) = line.strip_prefix(&bucket_prefix)
            && let Some((labels, _)) = labels_and_value.rsplit_once('}')
            && let (Some(service), Some(method), Some(le)) = (
                label(labels, "grpc_service"),
                label(labels, "grpc_method"),
                label(labels, "le"),
            )
            && let Some(e) = exemplars.get(&service, &method, &le)
        {
            let _ = write!(
                out,
                " # {{trace_id=\"{}\"}} {} {:.3}",
                e.trace_id, e.seconds, e.unix_seconds
            );
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP grpc_server_started_total RPCs started on the \"server\".\n\
# TYPE grpc_server_started_total counter\n\
grpc_server_started_total{grpc_method=\"GetUser\"} 3\n\
\n\
# TYPE jisu_grpc_server_in_flight gauge\n\
jisu_grpc_server_in_flight 0\n\
\n\
# TYPE grpc_server_handling_seconds histogram\n\
grpc_server_handling_seconds_bucket{grpc_type=\"unary\",grpc_service=\"jisucloud.v1.UserService\",grpc_method=\"GetUser\",le=\"0.0001\"} 0\n\
grpc_server_handling_seconds_bucket{grpc_type=\"unary\",grpc_service=\"jisucloud.v1.UserService\",grpc_method=\"GetUser\",le=\"0.005\"} 3\n\
grpc_server_handling_seconds_bucket{grpc_type=\"unary\",grpc_service=\"jisucloud.v1.UserService\",grpc_method=\"GetUser\",le=\"+Inf\"} 3\n\
grpc_server_handling_seconds_sum{grpc_type=\"unary\",grpc_service=\"jisucloud.v1.UserService\",grpc_method=\"GetUser\"} 0.009\n\
grpc_server_handling_seconds_count{grpc_type=\"unary\",grpc_service=\"jisucloud.v1.UserService\",grpc_method=\"GetUser\"} 3\n";

    #[test]
    fn openmetrics_names_counter_families_and_carries_exemplars() {
        let e = Exemplars::default();
        e.record(
            jisu_api::served_index("/jisucloud.v1.UserService/GetUser"),
            opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            Duration::from_micros(4200),
        );
        let om = openmetrics(TEXT, &e);
        let lines: Vec<&str> = om.lines().collect();
        assert_eq!(
            lines[0],
            "# HELP grpc_server_started RPCs started on the \\\"server\\\"."
        );
        assert_eq!(lines[1], "# TYPE grpc_server_started counter");
        assert_eq!(
            lines[2],
            "grpc_server_started_total{grpc_method=\"GetUser\"} 3"
        );
        assert!(!om.contains("\n\n"));
        let bucket = lines.iter().find(|l| l.contains("le=\"0.005\"")).unwrap();
        assert!(
            bucket.ends_with(&format!(
                "}} 3 # {{trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"}} 0.0042 {}",
                bucket.rsplit(' ').next().unwrap()
            )),
            "{bucket}"
        );
        // Only the bucket the call fell in.
        assert_eq!(om.matches("trace_id=").count(), 1, "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn buckets_are_chosen_by_upper_bound() {
        assert_eq!(bucket(0.00005), 0);
        assert_eq!(bucket(0.0001), 0);
        assert_eq!(bucket(0.0042), 5);
        assert_eq!(bucket(99.0), LATENCY_BUCKETS.len());
    }
}
