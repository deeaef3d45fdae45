//! The MobileMoE runner: everything around the plugin library (`libmobilemoe_executorch.so`,
//! crate `mobilemoe-backend`) that a process running a `.pte` needs, and that ExecuTorch itself
//! never loads.
//!
//! * [`runtime`] wraps ExecuTorch's C++ `Module` (load, set inputs, execute, outputs) over a cxx
//!   bridge ([`bridge`], `cpp/runner.cpp`); loading registers the plugin's backend and kernels.
//! * [`pte`] reads `.pte` files without the runtime (`mobilemoe inspect`).
//! * [`tokenizer`] (Hugging Face `tokenizers`), [`generate`] (prefill + decode, sampling): the
//!   loop shared by the `mobilemoe` CLI and the Android JNI library.
//! * [`profiling`]: Perfetto traces and `--stats` output of what the plugin records.

#[allow(warnings, clippy::all)]
#[rustfmt::skip]
#[path = "generated/program_generated.rs"]
mod program_generated;

pub mod bridge;
pub mod chat;
pub mod generate;
pub mod profiling;
pub mod pte;
pub mod runtime;
pub mod tokenizer;
