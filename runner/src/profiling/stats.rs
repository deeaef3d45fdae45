//! Time per MoE phase per layer and the routing statistics of the delegate, as a text table
//! (`--stats`) and as JSON (`scripts/plot_stats.py` draws it).
//!
//! Layer attribution: a span's `layer` field (any span: e.g. the backend's per-node span, or a
//! test's `debug_span!("layer", layer = i)`) applies to it and to every span nested inside it on
//! the same thread. Spans outside any `layer` land in the row `-`.

use super::export::balanced;
use mobilemoe_executorch::profiling::recorder::{kind, Recording};
use mobilemoe_executorch::profiling::{routing_snapshot, LayerRouting, PHASES};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Time of the spans of one layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerTimes {
    /// `moe_ffn` calls and their total time (ns).
    pub calls: u64,
    pub moe_ns: u64,
    /// Total ns per phase name (children of `moe_ffn`).
    pub phase_ns: BTreeMap<String, u64>,
}

/// Count and total time of every span name (all threads, all layers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanTotal {
    pub count: u64,
    pub total_ns: u64,
}

/// Phase times and routing counts, per layer. `None` = outside any `layer` span.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub layers: BTreeMap<Option<i64>, LayerTimes>,
    pub spans: BTreeMap<String, SpanTotal>,
    pub routing: BTreeMap<i64, LayerRouting>,
}

impl Stats {
    /// Phase times from a recording, routing counts from [`routing_snapshot`].
    pub fn from_recording(rec: &Recording) -> Stats {
        let mut s = Self::phases_only(rec);
        s.routing = routing_snapshot();
        s
    }

    /// Phase times from a recording; empty routing.
    pub fn phases_only(rec: &Recording) -> Stats {
        let mut s = Stats::default();
        struct Open {
            name: &'static str,
            ts: u64,
            layer: Option<i64>,
            parent_is_moe: bool,
        }
        for th in &rec.threads {
            let mut stack: Vec<Open> = Vec::new();
            for (e, args) in balanced(&th.events) {
                if e.kind == kind::BEGIN {
                    let own =
                        args.iter().find(|a| a.name == "layer" && matches!(a.kind, kind::ARG_I64 | kind::ARG_U64)).map(|a| a.val as i64);
                    let layer = own.or_else(|| stack.last().and_then(|o| o.layer));
                    let parent_is_moe = stack.last().map(|o| o.name == "moe_ffn").unwrap_or(false);
                    stack.push(Open { name: e.name, ts: e.ts, layer, parent_is_moe });
                } else if let Some(o) = stack.pop() {
                    let dur = e.ts.saturating_sub(o.ts);
                    let t = s.spans.entry(o.name.to_owned()).or_default();
                    t.count += 1;
                    t.total_ns += dur;
                    if o.name == "moe_ffn" {
                        let l = s.layers.entry(o.layer).or_default();
                        l.calls += 1;
                        l.moe_ns += dur;
                    } else if o.parent_is_moe {
                        *s.layers.entry(o.layer).or_default().phase_ns.entry(o.name.to_owned()).or_default() += dur;
                    }
                }
            }
        }
        s
    }

    fn phase_names(&self) -> Vec<String> {
        let mut v: Vec<String> = PHASES.iter().map(|s| s.to_string()).collect();
        for l in self.layers.values() {
            for k in l.phase_ns.keys() {
                if !v.contains(k) {
                    v.push(k.clone());
                }
            }
        }
        v
    }

    /// The `--stats` text: phase shares per layer, span totals, expert load per layer.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let phases = self.phase_names();
        let lname = |l: &Option<i64>| l.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        if !self.layers.is_empty() {
            let _ = writeln!(o, "MoE FFN time per layer: total, and share of each phase (% of moe_ffn time)");
            let _ = write!(o, "{:>6} {:>6} {:>10} {:>9}", "layer", "calls", "total ms", "us/call");
            for p in &phases {
                let _ = write!(o, " {:>8}", p);
            }
            let _ = writeln!(o, " {:>8}", "other");
            let mut all = LayerTimes::default();
            for (l, t) in &self.layers {
                row(&mut o, &lname(l), t, &phases);
                all.calls += t.calls;
                all.moe_ns += t.moe_ns;
                for (k, v) in &t.phase_ns {
                    *all.phase_ns.entry(k.clone()).or_default() += v;
                }
            }
            if self.layers.len() > 1 {
                row(&mut o, "all", &all, &phases);
            }
            o.push('\n');
        }
        if !self.spans.is_empty() {
            let _ = writeln!(o, "Spans (all threads): count, total, mean");
            let _ = writeln!(o, "{:<24} {:>8} {:>11} {:>11}", "span", "count", "total ms", "mean us");
            let mut v: Vec<_> = self.spans.iter().collect();
            v.sort_by_key(|b| std::cmp::Reverse(b.1.total_ns));
            for (n, t) in v {
                let _ = writeln!(
                    o,
                    "{:<24} {:>8} {:>11.3} {:>11.2}",
                    n,
                    t.count,
                    t.total_ns as f64 / 1e6,
                    t.total_ns as f64 / 1e3 / t.count.max(1) as f64
                );
            }
            o.push('\n');
        }
        if !self.routing.is_empty() {
            let _ = writeln!(o, "Expert load per layer (tokens routed to each expert, summed over calls)");
            let _ = writeln!(
                o,
                "{:>6} {:>6} {:>8} {:>6} {:>6} {:>6} {:>8} {:>8}  busiest experts (id:tokens)",
                "layer", "calls", "tokens", "used", "min", "max", "mean", "max/mean"
            );
            for (l, r) in &self.routing {
                let n = r.tokens_per_expert.len().max(1);
                let tot: u64 = r.tokens_per_expert.iter().sum();
                let used = r.tokens_per_expert.iter().filter(|&&c| c > 0).count();
                let min = r.tokens_per_expert.iter().copied().min().unwrap_or(0);
                let max = r.tokens_per_expert.iter().copied().max().unwrap_or(0);
                let mean = tot as f64 / n as f64;
                let mut idx: Vec<usize> = (0..r.tokens_per_expert.len()).collect();
                idx.sort_by(|&a, &b| r.tokens_per_expert[b].cmp(&r.tokens_per_expert[a]).then(a.cmp(&b)));
                let top: Vec<String> = idx.iter().take(4).map(|&i| format!("{i}:{}", r.tokens_per_expert[i])).collect();
                let _ = writeln!(
                    o,
                    "{:>6} {:>6} {:>8} {:>3}/{:<2} {:>6} {:>6} {:>8.2} {:>8.2}  {}",
                    l,
                    r.calls,
                    tot,
                    used,
                    r.tokens_per_expert.len(),
                    min,
                    max,
                    mean,
                    if mean > 0.0 { max as f64 / mean } else { 0.0 },
                    top.join(" ")
                );
            }
        }
        o
    }

    /// JSON for `scripts/plot_stats.py`:
    /// `{"phases": [..], "layers": [{"layer", "calls", "moe_ns", "phase_ns": {..}}],
    ///   "spans": {name: {"count", "total_ns"}}, "routing": [{"layer", "calls", "tokens_per_expert"}]}`
    /// (`"layer": null` = outside any layer span).
    pub fn to_json(&self) -> String {
        let json = StatsJson {
            phases: self.phase_names(),
            layers: self
                .layers
                .iter()
                .map(|(&layer, t)| LayerJson { layer, calls: t.calls, moe_ns: t.moe_ns, phase_ns: &t.phase_ns })
                .collect(),
            spans: self.spans.iter().map(|(k, t)| (k.as_str(), SpanJson { count: t.count, total_ns: t.total_ns })).collect(),
            routing: self
                .routing
                .iter()
                .map(|(&layer, r)| RoutingJson { layer, calls: r.calls, tokens_per_expert: &r.tokens_per_expert })
                .collect(),
        };
        // Maps of strings and integers only: serialization cannot fail.
        serde_json::to_string_pretty(&json).unwrap_or_default() + "\n"
    }
}

/// The JSON layout of [`Stats::to_json`] (what `scripts/plot_stats.py` reads).
#[derive(serde::Serialize)]
struct StatsJson<'a> {
    phases: Vec<String>,
    layers: Vec<LayerJson<'a>>,
    spans: BTreeMap<&'a str, SpanJson>,
    routing: Vec<RoutingJson<'a>>,
}

#[derive(serde::Serialize)]
struct LayerJson<'a> {
    /// `null` = outside any layer span.
    layer: Option<i64>,
    calls: u64,
    moe_ns: u64,
    phase_ns: &'a BTreeMap<String, u64>,
}

#[derive(serde::Serialize)]
struct SpanJson {
    count: u64,
    total_ns: u64,
}

#[derive(serde::Serialize)]
struct RoutingJson<'a> {
    layer: i64,
    calls: u64,
    tokens_per_expert: &'a [u64],
}

fn row(o: &mut String, name: &str, t: &LayerTimes, phases: &[String]) {
    let _ = write!(o, "{:>6} {:>6} {:>10.3} {:>9.1}", name, t.calls, t.moe_ns as f64 / 1e6, t.moe_ns as f64 / 1e3 / t.calls.max(1) as f64);
    let mut covered = 0u64;
    for p in phases {
        let v = t.phase_ns.get(p).copied().unwrap_or(0);
        covered += v;
        let _ = write!(o, " {:>7.1}%", pct(v, t.moe_ns));
    }
    let _ = writeln!(o, " {:>7.1}%", pct(t.moe_ns.saturating_sub(covered), t.moe_ns));
}

fn pct(v: u64, tot: u64) -> f64 {
    if tot == 0 {
        0.0
    } else {
        v as f64 * 100.0 / tot as f64
    }
}
