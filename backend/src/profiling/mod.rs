//! Profiling inside the plugin: what the delegate records while it runs. See docs/profiling.md.
//!
//! * [`PerfettoRecorder`]: a `tracing_subscriber::Layer` recording span enter/exit per thread
//!   into preallocated buffers (a [`Recording`]); the runner crate (`mobilemoe-runner`,
//!   `profiling::PerfettoExport`) writes it as a `.pftrace` and as the `--stats` table.
//! * [`record_routing`]: expert load histograms per layer.
//! * [`phases`]: per-call phase capture for ExecuTorch's EventTracer (ETDump delegate events).

pub mod phases;
pub mod recorder;
pub mod stats;

pub use recorder::{now_ns, PerfettoLayer, PerfettoRecorder, RawEvent, Recording, ThreadEvents};
pub use stats::{enable_routing_stats, record_routing, routing_snapshot, routing_stats_enabled, LayerRouting, PHASES};

use std::collections::HashMap;
use std::sync::Mutex;

static LAYER_IDS: Mutex<Option<(i64, HashMap<usize, i64>)>> = Mutex::new(None);

/// The layer number of the first MoE node of the delegate `key` (its address), for span fields
/// and routing statistics. With one delegate per MoE op (python_export's partitioner), layers are
/// numbered in the order their delegates first execute after [`reset_layer_ids`] (i.e. model
/// order), each delegate reserving `moe_nodes` numbers.
pub fn layer_base(key: usize, moe_nodes: usize) -> i64 {
    let mut g = LAYER_IDS.lock().unwrap_or_else(|e| e.into_inner());
    let (next, map) = g.get_or_insert_with(|| (0, HashMap::new()));
    *map.entry(key).or_insert_with(|| {
        let b = *next;
        *next += moe_nodes as i64;
        b
    })
}

/// Restarts layer numbering (called when a profile starts).
pub fn reset_layer_ids() {
    *LAYER_IDS.lock().unwrap_or_else(|e| e.into_inner()) = None;
}
