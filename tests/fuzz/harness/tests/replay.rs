//! Replays every checked-in input (tests/fuzz/corpus/<target>/* and tests/fuzz/regressions/<target>/*)
//! through its harness without libFuzzer: a normal `cargo test` keeps every crash ever found fixed.

use std::path::Path;

fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut n = 0;
    for (name, harness) in mobilemoe_fuzz_harness::TARGETS {
        let Ok(rd) = std::fs::read_dir(root.join(name)) else { continue };
        let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for p in files {
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| harness(&data));
            assert!(r.is_ok(), "{name}: input {} fails", p.display());
            n += 1;
        }
    }
    n
}

#[test]
fn regressions_stay_fixed() {
    let n = replay("regressions");
    eprintln!("replayed {n} regression inputs");
}

#[test]
fn seed_corpus_passes() {
    let n = replay("corpus");
    eprintln!("replayed {n} corpus inputs");
}
