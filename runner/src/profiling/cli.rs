//! `--trace FILE`, `--stats`, `--stats-json FILE` for the `mobilemoe` subcommands: flatten
//! [`ProfileArgs`] into a clap `Args` struct, call [`ProfileArgs::start`] before the work and
//! [`ProfileSession::finish`] after it.

use super::{enable_routing_stats, reset_layer_ids, PerfettoExport, PerfettoRecorder, Stats};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProfileArgs {
    /// Record every tracing span (per layer, per MoE phase, per thread) and write a Perfetto
    /// trace to FILE (open it in ui.perfetto.dev or trace_processor).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Print time per MoE phase per layer and the expert load (tokens per expert) at the end.
    #[arg(long)]
    pub stats: bool,
    /// Write the same statistics as JSON to FILE (`scripts/plot_stats.py FILE out.png`).
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
}

/// A running profile; see [`ProfileArgs`].
pub struct ProfileSession {
    rec: Option<PerfettoRecorder>,
    args: ProfileArgs,
}

impl ProfileArgs {
    /// Whether any profiling output was requested.
    pub fn enabled(&self) -> bool {
        self.trace.is_some() || self.stats || self.stats_json.is_some()
    }

    /// Installs the recorder (global tracing subscriber) and enables routing statistics, if any
    /// output was requested; otherwise does nothing (no subscriber: spans cost ~2 ns each).
    pub fn start(&self) -> Result<ProfileSession, String> {
        if !self.enabled() {
            return Ok(ProfileSession { rec: None, args: self.clone() });
        }
        let rec = PerfettoRecorder::install()?;
        reset_layer_ids();
        enable_routing_stats(self.stats || self.stats_json.is_some());
        Ok(ProfileSession { rec: Some(rec), args: self.clone() })
    }
}

impl ProfileSession {
    /// Stops recording; writes the trace / JSON and prints the table (to stderr).
    pub fn finish(self) -> Result<(), String> {
        let Some(rec) = self.rec else { return Ok(()) };
        let recording = rec.stop();
        enable_routing_stats(false);
        if let Some(p) = &self.args.trace {
            recording.write_perfetto(p).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            let n: usize = recording.threads.iter().map(|t| t.events.len()).sum();
            let dropped: u64 = recording.threads.iter().map(|t| t.dropped).sum();
            eprintln!(
                "trace: {} ({n} events on {} threads{}); open it in ui.perfetto.dev",
                p.display(),
                recording.threads.len(),
                if dropped > 0 { format!(", {dropped} dropped: raise MOBILEMOE_TRACE_EVENTS") } else { String::new() }
            );
        }
        if self.args.stats || self.args.stats_json.is_some() {
            let st = Stats::from_recording(&recording);
            if self.args.stats {
                eprintln!("{}", st.table());
            }
            if let Some(p) = &self.args.stats_json {
                std::fs::write(p, st.to_json()).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
                eprintln!("stats: {} (plot: scripts/plot_stats.py {} stats.png)", p.display(), p.display());
            }
        }
        Ok(())
    }
}
