//! Routing statistics (tokens per expert, per layer) and time per MoE phase, as a text table
//! (`--stats`) and as JSON (`scripts/plot_stats.py` draws it).
//!
//! Layer attribution: a span's `layer` field (any span: e.g. the backend's per-node span, or a
//! test's `debug_span!("layer", layer = i)`) applies to it and to every span nested inside it on
//! the same thread. Spans outside any `layer` land in the row `-`.
//!
//! Routing counts come from [`record_routing`], which the caller feeds with
//! `MoeScratch::last_counts` after each `moe_ffn` (one relaxed atomic load when stats are off).

use super::export::balanced;
use super::recorder::{kind, Recording};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The phases of `mobilemoe_ops::moe_ffn` (spans nested directly in `moe_ffn`), in order.
pub const PHASES: [&str; 7] = ["route", "permute", "quantize", "gate_up", "act", "down", "scatter"];

static ROUTING_ON: AtomicBool = AtomicBool::new(false);
static ROUTING: Mutex<BTreeMap<i64, LayerRouting>> = Mutex::new(BTreeMap::new());

/// Tokens routed to each expert of one layer, summed over calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerRouting {
    pub calls: u64,
    pub tokens_per_expert: Vec<u64>,
}

/// Starts (true) or stops (false) collecting routing counts; starting clears earlier counts.
pub fn enable_routing_stats(on: bool) {
    if on {
        ROUTING.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    ROUTING_ON.store(on, Ordering::Relaxed);
}

/// Whether [`record_routing`] records.
#[inline]
pub fn routing_stats_enabled() -> bool {
    ROUTING_ON.load(Ordering::Relaxed)
}

/// Adds one call's per-expert token counts (`MoeScratch::last_counts`) to layer `layer`.
#[inline]
pub fn record_routing(layer: i64, counts: &[u32]) {
    if !routing_stats_enabled() {
        return;
    }
    let mut m = ROUTING.lock().unwrap_or_else(|e| e.into_inner());
    let l = m.entry(layer).or_default();
    if l.tokens_per_expert.len() < counts.len() {
        l.tokens_per_expert.resize(counts.len(), 0);
    }
    for (a, &c) in l.tokens_per_expert.iter_mut().zip(counts) {
        *a += c as u64;
    }
    l.calls += 1;
}

/// A copy of the routing counts collected so far.
pub fn routing_snapshot() -> BTreeMap<i64, LayerRouting> {
    ROUTING.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

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
        let mut o = String::from("{\n  \"phases\": [");
        let phases = self.phase_names();
        o += &phases.iter().map(|p| json_str(p)).collect::<Vec<_>>().join(", ");
        o += "],\n  \"layers\": [";
        let rows: Vec<String> = self
            .layers
            .iter()
            .map(|(l, t)| {
                let ph: Vec<String> = t.phase_ns.iter().map(|(k, v)| format!("{}: {v}", json_str(k))).collect();
                format!(
                    "\n    {{\"layer\": {}, \"calls\": {}, \"moe_ns\": {}, \"phase_ns\": {{{}}}}}",
                    l.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
                    t.calls,
                    t.moe_ns,
                    ph.join(", ")
                )
            })
            .collect();
        o += &rows.join(",");
        o += "\n  ],\n  \"spans\": {";
        let sp: Vec<String> = self
            .spans
            .iter()
            .map(|(k, t)| format!("\n    {}: {{\"count\": {}, \"total_ns\": {}}}", json_str(k), t.count, t.total_ns))
            .collect();
        o += &sp.join(",");
        o += "\n  },\n  \"routing\": [";
        let rr: Vec<String> = self
            .routing
            .iter()
            .map(|(l, r)| {
                let v: Vec<String> = r.tokens_per_expert.iter().map(|c| c.to_string()).collect();
                format!("\n    {{\"layer\": {l}, \"calls\": {}, \"tokens_per_expert\": [{}]}}", r.calls, v.join(", "))
            })
            .collect();
        o += &rr.join(",");
        o += "\n  ]\n}\n";
        o
    }
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

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o += "\\\"",
            '\\' => o += "\\\\",
            c if (c as u32) < 0x20 => o += &format!("\\u{:04x}", c as u32),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}
