//! Fuzz harnesses for MobileMoE: one `pub fn <target>(data: &[u8])` per libFuzzer target in
//! `../fuzz_targets/`. A harness panics only on a real bug (a panic inside the code under test, a
//! wrong accept/reject decision, or results that differ between kernels/threads/scratch states).
//! `TARGETS` maps target names to harnesses for the corpus/regression replayer (`cargo test`).

pub mod gen;
pub mod ops;

pub use ops::{ops_kernels, ops_linear, ops_matrix_spec, ops_moe_ffn, ops_routing};

/// (target name, harness) for every fuzz target.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("ops_matrix_spec", ops_matrix_spec),
    ("ops_routing", ops_routing),
    ("ops_kernels", ops_kernels),
    ("ops_linear", ops_linear),
    ("ops_moe_ffn", ops_moe_ffn),
];
