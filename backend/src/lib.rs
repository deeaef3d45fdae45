//! `libmobilemoe_executorch.so`: the MobileMoE ExecuTorch plugin (docs/DESIGN.md sections 7, 8).
//!
//! * `MobileMoEBackend` (C++ `BackendInterface`, `cpp/backend.cpp`) runs delegate blobs through
//!   [`delegate::Delegate`] (cxx bridge, [`bridge`]).
//! * Kernels `mobilemoe::moe_ffn.out` and `mobilemoe::int4_linear.out` (argument layout
//!   generated from `schema/ops.txt` by `build.rs`) call the C ABI in [`capi`].
//! * Every failure carries an [`ErrorCode`] across the C ABI and the bridge ([`error`]); the C++
//!   side turns it into an `executorch::runtime::Error` in one place.
//! * Loading the library registers both (an `.init_array` constructor); [`mobilemoe_register`]
//!   does the same explicitly. Both are idempotent, also across two loaded copies.
//!
//! The runner (ExecuTorch `Module` wrapper, `.pte` reader, tokenizer, generation, CLI, profiling
//! output) is the `mobilemoe-runner` crate beside this one: this library holds only what
//! ExecuTorch loads.

pub mod bridge;
pub mod capi;
pub mod delegate;
pub mod error;
pub mod logging;
pub mod profiling;

pub use capi::{MobileMoeFfnArgs, MobileMoeLinearArgs};
pub use error::{Error, ErrorCode};

/// Name of the backend (the Python `BackendDetails` subclass' `__name__`).
pub const BACKEND_NAME: &str = "MobileMoEBackend";
/// Kernel names registered by this library.
pub const KERNEL_NAMES: [&str; 2] = ["mobilemoe::moe_ffn.out", "mobilemoe::int4_linear.out"];

/// Registers the backend and the kernels with the ExecuTorch runtime (once per process; a no-op
/// for names already registered, e.g. by another loaded copy of this library).
pub fn register() -> Result<(), String> {
    match std::panic::catch_unwind(bridge::ffi::register_all) {
        Ok(0) => Ok(()),
        Ok(rc) => Err(format!("registration failed (code {rc}); see the ExecuTorch log")),
        Err(_) => Err("registration panicked".into()),
    }
}

/// Backends registered in this process.
pub fn registered_backends() -> Vec<String> {
    bridge::ffi::registered_backends()
}

/// Whether a kernel named `name` (e.g. `mobilemoe::moe_ffn.out`) is registered.
pub fn is_operator_registered(name: &str) -> bool {
    bridge::ffi::is_operator_registered(name)
}

/// Whether a backend named `name` is registered in this process.
pub fn is_backend_registered(name: &str) -> bool {
    bridge::ffi::is_backend_registered(name)
}

/// Routes the ExecuTorch runtime's log lines into [`logging`] (quiet by default). For a process
/// that owns the runtime (a Rust runner, an app); Python's pybindings keep their own log.
pub fn install_runtime_log_hook() {
    bridge::ffi::install_runtime_log_hook()
}

/// Idempotent registration (C ABI); 0 = ok.
#[no_mangle]
pub extern "C" fn mobilemoe_register() -> i32 {
    capi::ffi_guard("mobilemoe_register", || register().map_err(Error::internal))
}

/// Registration at load time (a C++ static initializer in the cxx static archive would be dropped
/// from the cdylib, so this is a Rust `.init_array` entry).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static MOBILEMOE_INIT: extern "C" fn() = {
    extern "C" fn init() {
        if std::env::var_os("MOBILEMOE_NO_AUTOREGISTER").is_none() {
            let _ = mobilemoe_register();
        }
    }
    init
};
