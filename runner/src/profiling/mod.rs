//! Profiling output of the runner: Perfetto traces, the `--stats` table and JSON, and the CLI
//! flags that ask for them. See docs/profiling.md.
//!
//! The recording itself happens in the plugin (`mobilemoe_executorch::profiling`: the tracing
//! layer, routing counters, ETDump phase capture), re-exported here so that one path serves both.
//!
//! * [`PerfettoExport`]: a [`Recording`] as a `.pftrace` that opens in ui.perfetto.dev /
//!   trace_processor (prost types: `mobilemoe_schema::perfetto`).
//! * [`Stats`]: time per MoE phase per layer + expert load histograms, as a text table
//!   (`--stats`) or JSON (`scripts/plot_stats.py`).
//! * [`ProfileArgs`]: `--trace`, `--stats`, `--stats-json` for the `mobilemoe` subcommands.

pub mod cli;
pub mod export;
pub mod stats;

pub use cli::{ProfileArgs, ProfileSession};
pub use export::{finish, slices, PerfettoExport, Slice};
pub use mobilemoe_executorch::profiling::{
    enable_routing_stats, layer_base, now_ns, phases, record_routing, recorder, reset_layer_ids, routing_snapshot, routing_stats_enabled,
    LayerRouting, PerfettoLayer, PerfettoRecorder, RawEvent, Recording, ThreadEvents, PHASES,
};
pub use stats::Stats;
