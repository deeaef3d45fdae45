//! Replays every checked-in input (tests/fuzz/corpus/<target>/* and tests/fuzz/regressions/<target>/*)
//! through its harness without libFuzzer: a normal `cargo test` keeps every crash ever found fixed.
//!
//! Missing inputs fail instead of silently replaying nothing: every target needs a non-empty
//! `corpus/<target>/` and a `regressions/<target>/` folder (which holds `.gitkeep` only while the
//! target never crashed), and a folder that names no target (a typo, a renamed target) is an error.
//! Dot files are not inputs.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Option<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    Some(files)
}

/// Replays `tests/fuzz/<kind>/<target>/*` for every target; returns the number of inputs.
fn replay(kind: &str, need_inputs: bool) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(kind);
    let targets = mobilemoe_fuzz_harness::TARGETS;
    let mut problems = vec![];
    match std::fs::read_dir(&root) {
        Ok(rd) => {
            for e in rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if !targets.iter().any(|(t, _)| *t == name) {
                    problems.push(format!("{kind}/{name}: not a fuzz target (see harness/src/lib.rs TARGETS)"));
                }
            }
        }
        Err(e) => problems.push(format!("{}: {e}", root.display())),
    }
    let mut n = 0;
    for (name, harness) in targets {
        let Some(files) = inputs(&root.join(name)) else {
            problems.push(format!("{kind}/{name}: folder missing"));
            continue;
        };
        if need_inputs && files.is_empty() {
            problems.push(format!("{kind}/{name}: no inputs"));
        }
        for p in &files {
            let data = std::fs::read(p).unwrap();
            if std::panic::catch_unwind(|| harness(&data)).is_err() {
                problems.push(format!("{name}: input {} fails", p.display()));
            }
        }
        eprintln!("{kind}/{name}: {} inputs", files.len());
        n += files.len();
    }
    assert!(problems.is_empty(), "{} problem(s):\n  {}", problems.len(), problems.join("\n  "));
    n
}

#[test]
fn regressions_stay_fixed() {
    let n = replay("regressions", false);
    eprintln!("replayed {n} regression inputs");
}

#[test]
fn seed_corpus_passes() {
    let n = replay("corpus", true);
    eprintln!("replayed {n} corpus inputs");
}
