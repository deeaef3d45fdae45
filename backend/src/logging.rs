//! Log lines of the ExecuTorch runtime (its PAL log hook, registered by backend.cpp) and of this
//! library: emitted as `tracing` events (target `executorch` / `mobilemoe`) and printed to stderr
//! by level — errors always, warnings and info with `-v` (`set_verbosity(1)`), debug with `-vv` —
//! so that a runner's output is not interleaved with the runtime's chatter.

use std::sync::atomic::{AtomicU8, Ordering};

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// 0: errors only (default); 1: + warnings and info; 2: + debug.
pub fn set_verbosity(v: u8) {
    VERBOSITY.store(v, Ordering::Relaxed);
}

pub fn verbosity() -> u8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// The PAL hook's target (called from C++ with ExecuTorch's level letter: 'D', 'I', 'E', 'F').
pub fn runtime_log(level: u8, file: &str, line: usize, msg: &[u8]) {
    let text = String::from_utf8_lossy(msg);
    let text = text.trim_end();
    let short = file.rsplit('/').next().unwrap_or(file);
    match level {
        b'E' | b'F' => tracing::error!(target: "executorch", file = short, line, "{text}"),
        b'I' => tracing::info!(target: "executorch", file = short, line, "{text}"),
        _ => tracing::debug!(target: "executorch", file = short, line, "{text}"),
    }
    let need = match level {
        b'E' | b'F' => 0,
        b'I' => 1,
        _ => 2,
    };
    if verbosity() >= need {
        eprintln!("[executorch {} {short}:{line}] {text}", level as char);
    }
}

/// A warning of this library (same routing; shown with `-v`).
pub fn warn(msg: &str) {
    tracing::warn!(target: "mobilemoe", "{msg}");
    if verbosity() >= 1 {
        eprintln!("[mobilemoe] {msg}");
    }
}
