//! Profiling: `tracing` spans -> Perfetto traces, routing/phase statistics, ETDump phase events.
//! See docs/profiling.md.
//!
//! * [`PerfettoRecorder`]: a `tracing_subscriber::Layer` recording span enter/exit per thread
//!   into preallocated buffers; [`Recording::write_perfetto`] writes a `.pftrace` that opens in
//!   ui.perfetto.dev / trace_processor (prost types: `mobilemoe_schema::perfetto`).
//! * [`Stats`]: time per MoE phase per layer + expert load histograms ([`record_routing`]), as a
//!   text table (`--stats`) or JSON (`scripts/plot_stats.py`).
//! * [`phases`]: per-call phase capture for ExecuTorch's EventTracer (ETDump delegate events).

pub mod export;
pub mod phases;
pub mod recorder;
pub mod stats;

pub use export::{slices, Slice};
pub use recorder::{now_ns, PerfettoLayer, PerfettoRecorder, RawEvent, Recording, ThreadEvents};
pub use stats::{enable_routing_stats, record_routing, routing_snapshot, routing_stats_enabled, LayerRouting, Stats};
