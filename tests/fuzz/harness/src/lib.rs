//! Fuzz harnesses for MobileMoE: one `pub fn <target>(data: &[u8])` per libFuzzer target in
//! `../fuzz_targets/`. A harness panics only on a real bug (a panic inside the code under test, a
//! wrong accept/reject decision, or results that differ between kernels/threads/scratch states).
//! `TARGETS` maps target names to harnesses for the corpus/regression replayer (`cargo test`).

pub mod blob;
#[cfg(feature = "backend")]
pub mod capi;
pub mod decoder;
pub mod gen;
pub mod ops;
#[cfg(feature = "backend")]
pub mod tok;

// The backend crate's `delegate` (blob -> executable program) and the runner crate's `pte` (the
// `inspect` reader). Feature "backend" (default); without it the blob harnesses only parse and
// pte_inspect is a no-op, so the ops/schema fuzzers keep working while the backend does not build.
#[cfg(feature = "backend")]
pub use mobilemoe_executorch::delegate;
#[cfg(feature = "backend")]
pub use mobilemoe_runner::pte;

pub use blob::{blob_parse, blob_structured, pte_inspect};
/// The C ABI harness (a no-op without the backend feature).
pub fn capi(data: &[u8]) {
    #[cfg(feature = "backend")]
    capi::capi(data);
    #[cfg(not(feature = "backend"))]
    let _ = data;
}

/// The tokenizer harness (a no-op without the backend feature: the tokenizer lives in the runner).
pub fn tokenizer(data: &[u8]) {
    #[cfg(feature = "backend")]
    tok::tokenizer(data);
    #[cfg(not(feature = "backend"))]
    let _ = data;
}

pub use decoder::ops_decoder;
pub use ops::{ops_kernels, ops_linear, ops_matrix_spec, ops_moe_ffn, ops_routing};

/// A harness: one fuzz input in, panics on a bug.
pub type Harness = fn(&[u8]);

/// (target name, harness) for every fuzz target.
pub const TARGETS: &[(&str, Harness)] = &[
    ("ops_matrix_spec", ops_matrix_spec),
    ("ops_routing", ops_routing),
    ("ops_kernels", ops_kernels),
    ("ops_linear", ops_linear),
    ("ops_moe_ffn", ops_moe_ffn),
    ("ops_decoder", ops_decoder),
    ("blob_parse", blob_parse),
    ("blob_structured", blob_structured),
    ("pte_inspect", pte_inspect),
    ("capi", capi),
    ("tokenizer", tokenizer),
];
