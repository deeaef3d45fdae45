//! Routing statistics: tokens per expert, per layer, collected by the delegate while enabled.
//! The runner crate (`mobilemoe-runner`, `profiling::Stats`) turns them and a recording into the
//! `--stats` table and JSON.
//!
//! Routing counts come from [`record_routing`], which the caller feeds with
//! `MoeScratch::last_counts` after each `moe_ffn` (one relaxed atomic load when stats are off).

use std::collections::BTreeMap;
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
