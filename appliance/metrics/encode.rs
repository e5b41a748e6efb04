//! The exposition: [`Families`] collects one scrape's samples, family by
//! family, and prometheus-client encodes them as OpenMetrics text.
//!
//! Prometheus asks for OpenMetrics (its `Accept` header says so) and gets it.
//! Every other client (curl, `promtool check metrics`, older scrapers) gets
//! the classic text format 0.0.4, converted from the same output: counter
//! families are named with their `_total`, `unknown` is `untyped`, and the
//! OpenMetrics-only `# UNIT` and `# EOF` lines are left out. promtool's
//! parser knows only the classic format, and exporters users already run
//! (mysqld_exporter, redis_exporter) serve both the same way.
//!
//! Names follow the exporters dashboards already query: a counter is given
//! here without `_total` (the encoder adds it); a value those exporters
//! publish as untyped keeps its exact name as [`Kind::Untyped`].

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::collections::HashMap;

/// A sample's labels, in order.
pub type Labels = Vec<(String, String)>;

/// Make [`Labels`] from string pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Untyped,
    Histogram,
}

#[derive(Debug, Clone)]
enum Value {
    Number(f64),
    Histogram {
        sum: f64,
        count: u64,
        /// (upper bound, count in this bucket alone), `+Inf` last as `f64::MAX`.
        buckets: Vec<(f64, u64)>,
    },
}

#[derive(Debug)]
struct Family {
    name: String,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, Value)>,
}

/// One scrape's metric families, in the order first seen.
#[derive(Debug, Default)]
pub struct Families {
    list: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Families {
    pub fn new() -> Families {
        Families::default()
    }

    fn family(&mut self, name: &str, help: &'static str, kind: Kind) -> &mut Family {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.list.push(Family {
                    name: name.to_string(),
                    help,
                    kind,
                    samples: Vec::new(),
                });
                self.index.insert(name.to_string(), self.list.len() - 1);
                self.list.len() - 1
            }
        };
        debug_assert_eq!(self.list[i].kind, kind, "{name} registered twice");
        &mut self.list[i]
    }

    /// Declare a family with no samples yet (its HELP and TYPE still show).
    pub fn declare(&mut self, name: &str, help: &'static str, kind: Kind) {
        self.family(name, help, kind);
    }

    pub fn gauge(&mut self, name: &str, help: &'static str, l: Labels, v: f64) {
        self.number(name, help, Kind::Gauge, l, v);
    }

    /// `name` without `_total`.
    pub fn counter(&mut self, name: &str, help: &'static str, l: Labels, v: f64) {
        self.number(name, help, Kind::Counter, l, v);
    }

    pub fn untyped(&mut self, name: &str, help: &'static str, l: Labels, v: f64) {
        self.number(name, help, Kind::Untyped, l, v);
    }

    pub fn number(&mut self, name: &str, help: &'static str, kind: Kind, l: Labels, v: f64) {
        self.family(name, help, kind)
            .samples
            .push((l, Value::Number(v)));
    }

    /// `buckets`: (upper bound, cumulative count), ascending, without `+Inf`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &'static str,
        l: Labels,
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    ) {
        // The encoder wants per-bucket counts (it sums them) and `f64::MAX`
        // as the `+Inf` bound.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = buckets
            .into_iter()
            .map(|(le, cumulative)| {
                let n = cumulative.saturating_sub(below);
                below = below.max(cumulative);
                (le, n)
            })
            .collect();
        buckets.push((f64::MAX, count.saturating_sub(below)));
        self.family(name, help, Kind::Histogram).samples.push((
            l,
            Value::Histogram {
                sum,
                count,
                buckets,
            },
        ));
    }

    /// True when some family has a sample named `name` (tests).
    pub fn has(&self, name: &str) -> bool {
        self.list
            .iter()
            .any(|f| f.name == name && !f.samples.is_empty())
    }

    /// OpenMetrics text.
    pub fn openmetrics(self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail; a family that could not be
        // encoded is a bug, and the scrape still gets the rest.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    /// Classic Prometheus text format 0.0.4.
    pub fn classic(self) -> String {
        to_classic(&self.openmetrics())
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.list {
            let kind = match f.kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
                Kind::Untyped => MetricType::Unknown,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut m = encoder.encode_descriptor(&f.name, f.help, None, kind)?;
            for (labels, value) in &f.samples {
                // No labels: `name 1`, not `name{} 1`.
                if labels.is_empty() {
                    put(&mut m, f.kind, value)?;
                } else {
                    put(&mut m.encode_family(labels)?, f.kind, value)?;
                }
            }
        }
        Ok(())
    }
}

fn put(m: &mut MetricEncoder<'_>, kind: Kind, value: &Value) -> Result<(), std::fmt::Error> {
    match value {
        Value::Number(v) if kind == Kind::Counter => {
            m.encode_counter::<NoLabelSet, f64, f64>(v, None)
        }
        Value::Number(v) => m.encode_gauge(v),
        Value::Histogram {
            sum,
            count,
            buckets,
        } => m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
    }
}

/// OpenMetrics text as the classic text format (see the module header).
fn to_classic(om: &str) -> String {
    let mut out = String::with_capacity(om.len() + 256);
    let mut held_help: Option<&str> = None;
    for line in om.lines() {
        if line.starts_with("# HELP ") {
            held_help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some(help) = held_help.take() {
                let text = help
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.split_once(' '))
                    .map(|(_, t)| t)
                    .unwrap_or("");
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Families {
        let mut f = Families::new();
        f.gauge(
            "applianced_unit_up",
            "1 when the unit is running.",
            labels(&[("app", "demo"), ("unit", "redis")]),
            1.0,
        );
        f.counter(
            "applianced_http_requests",
            "Requests answered.",
            labels(&[("app", "demo"), ("code", "2xx")]),
            7.0,
        );
        f.untyped("phpfpm_slow_requests", "Slow requests.", vec![], 0.0);
        f.histogram(
            "applianced_http_request_duration_seconds",
            "Request time.",
            labels(&[("app", "demo")]),
            0.5,
            3,
            vec![(0.1, 2), (1.0, 3)],
        );
        f
    }

    #[test]
    fn openmetrics_names_counters_with_total_and_ends_with_eof() {
        let om = sample().openmetrics();
        assert!(
            om.contains("# TYPE applianced_http_requests counter\n"),
            "{om}"
        );
        assert!(
            om.contains("applianced_http_requests_total{app=\"demo\",code=\"2xx\"} 7"),
            "{om}"
        );
        assert!(om.contains("# TYPE phpfpm_slow_requests unknown\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn classic_format_renames_counter_families_and_drops_openmetrics_lines() {
        let text = sample().classic();
        assert!(
            text.contains("# HELP applianced_http_requests_total Requests answered.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE applianced_http_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE phpfpm_slow_requests untyped\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "applianced_http_request_duration_seconds_bucket{le=\"+Inf\",app=\"demo\"} 3"
            ),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
    }
}
