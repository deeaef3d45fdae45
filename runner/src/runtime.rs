//! A small Rust API over the ExecuTorch runtime (C++ `extension::Module`, mmap loader):
//! load a program, load a method, set inputs, execute, read outputs. The `mobilemoe` CLI uses
//! it, and so can a generation loop (prefill + decode over a KV-cache LM):
//!
//! ```no_run
//! use mobilemoe_runner::runtime::Program;
//! let mut prog = Program::load("model.pte")?;
//! let mut m = prog.method("forward")?;
//! m.set_input_i64(0, &[1, 2, 3], &[1, 3])?;   // tokens [1, T]
//! m.set_input_i64(1, &[0, 1, 2], &[3])?;      // input_pos [T]
//! m.execute()?;
//! let logits = m.output(0)?.into_f32()?;
//! # Ok::<(), mobilemoe_runner::runtime::RuntimeError>(())
//! ```

use crate::bridge::ffi;
use mobilemoe_executorch as plugin;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    File(#[from] crate::pte::PteError),
    /// A call into ExecuTorch failed with `executorch::runtime::Error` number `code` (see
    /// [`et_error`]); the message names the call and the error.
    #[error("{message}")]
    Executorch { code: u32, message: String },
    #[error("{0}")]
    Runtime(String),
}

impl RuntimeError {
    /// The `executorch::runtime::Error` number, when ExecuTorch returned one.
    pub fn executorch_error(&self) -> Option<u32> {
        match self {
            RuntimeError::Executorch { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// `executorch::runtime::Error` numbers (runtime/core/error.h) that the MobileMoE backend and
/// kernels return (backend/src/error.rs `ErrorCode` -> `to_et_error` in backend.cpp).
pub mod et_error {
    pub const INTERNAL: u32 = 0x01;
    pub const NOT_SUPPORTED: u32 = 0x10;
    pub const INVALID_ARGUMENT: u32 = 0x12;
    pub const NOT_FOUND: u32 = 0x20;
    pub const MEMORY_ALLOCATION_FAILED: u32 = 0x21;
    pub const INVALID_PROGRAM: u32 = 0x23;
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// The error of a failed bridge call: typed when ExecuTorch returned an error (runner.cpp keeps
/// its number for this thread; reading it clears it), else the C++ message alone.
fn rt(e: cxx::Exception) -> RuntimeError {
    let message = e.what().to_string();
    match ffi::runner_take_error() {
        0 => RuntimeError::Runtime(message),
        code => RuntimeError::Executorch { code, message },
    }
}

/// executorch ScalarType codes used here.
pub mod dtype {
    pub const INT: i32 = 3;
    pub const LONG: i32 = 4;
    pub const FLOAT: i32 = 6;
    pub fn name(code: i32) -> &'static str {
        match code {
            0 => "uint8",
            1 => "int8",
            2 => "int16",
            3 => "int32",
            4 => "int64",
            5 => "float16",
            6 => "float32",
            7 => "float64",
            11 => "bool",
            15 => "bfloat16",
            -1 => "-",
            _ => "other",
        }
    }
}

/// Description of one method input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueMeta {
    pub is_tensor: bool,
    /// executorch `Tag` code.
    pub tag: i32,
    /// executorch `ScalarType` code (see [`dtype`]), -1 for non-tensors.
    pub dtype: i32,
    /// Sizes as exported (upper bounds for dynamic dimensions).
    pub dims: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MethodMeta {
    pub name: String,
    pub inputs: Vec<ValueMeta>,
    pub outputs: Vec<ValueMeta>,
}

/// A copied output.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    F32 { dims: Vec<i64>, data: Vec<f32> },
    I64 { dims: Vec<i64>, data: Vec<i64> },
    Int(i64),
    Double(f64),
    Bool(bool),
    None,
}

impl Value {
    pub fn into_f32(self) -> Result<(Vec<i64>, Vec<f32>)> {
        match self {
            Value::F32 { dims, data } => Ok((dims, data)),
            other => Err(RuntimeError::Runtime(format!("output is not a float32 tensor: {other:?}"))),
        }
    }
    pub fn dims(&self) -> &[i64] {
        match self {
            Value::F32 { dims, .. } | Value::I64 { dims, .. } => dims,
            _ => &[],
        }
    }
}

fn meta_conv(m: ffi::MethodMetaInfo) -> MethodMeta {
    let conv = |v: ffi::TensorMetaInfo| ValueMeta { is_tensor: v.is_tensor, tag: v.tag, dtype: v.dtype, dims: v.dims };
    MethodMeta { name: m.name, inputs: m.inputs.into_iter().map(conv).collect(), outputs: m.outputs.into_iter().map(conv).collect() }
}

/// A loaded program. Registers the MobileMoE backend and kernels (of the plugin crate, linked into
/// this process) first.
pub struct Program {
    runner: cxx::UniquePtr<ffi::Runner>,
    info: crate::pte::PteInfo,
}

impl Program {
    /// Loads `path` (mmap). Fails with a clear message for a missing file, a file that is not a
    /// .pte, or a program that needs a backend that is not registered in this process.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        plugin::register().map_err(RuntimeError::Runtime)?;
        plugin::install_runtime_log_hook();
        let info = crate::pte::inspect(path)?;
        let registered = plugin::registered_backends();
        let missing: Vec<String> = info.backend_ids().into_iter().filter(|b| !plugin::is_backend_registered(b)).collect();
        if !missing.is_empty() {
            return Err(RuntimeError::Runtime(format!(
                "{}: the program needs backend(s) {missing:?}, which are not registered in this process (registered: {registered:?})",
                path.display()
            )));
        }
        let runner = ffi::runner_open(&path.to_string_lossy()).map_err(rt)?;
        Ok(Self { runner, info })
    }

    /// What the program file contains (methods, delegates, operators, segments).
    pub fn info(&self) -> &crate::pte::PteInfo {
        &self.info
    }

    pub fn method_names(&self) -> Result<Vec<String>> {
        ffi::runner_method_names(&self.runner).map_err(rt)
    }

    pub fn method_meta(&self, name: &str) -> Result<MethodMeta> {
        ffi::runner_method_meta(&self.runner, name).map(meta_conv).map_err(rt)
    }

    /// Loads method `name` (initialising its delegates) and returns a handle to drive it.
    pub fn method(&mut self, name: &str) -> Result<Method<'_>> {
        let meta = self.method_meta(name)?;
        if let Err(e) = ffi::runner_load_method(self.runner.pin_mut(), name) {
            let e = rt(e);
            let mut msg = e.to_string();
            let missing: Vec<String> = self
                .info
                .methods
                .iter()
                .filter(|m| m.name == name)
                .flat_map(|m| m.operators.iter())
                .filter(|op| !plugin::is_operator_registered(op))
                .cloned()
                .collect();
            if !missing.is_empty() {
                msg.push_str(&format!("; operators without a registered kernel: {missing:?}"));
            }
            return Err(match e.executorch_error() {
                Some(code) => RuntimeError::Executorch { code, message: msg },
                None => RuntimeError::Runtime(msg),
            });
        }
        Ok(Method { prog: self, name: name.to_string(), meta })
    }
}

/// A loaded method. Outputs stay readable until the next `execute`.
pub struct Method<'p> {
    prog: &'p mut Program,
    name: String,
    meta: MethodMeta,
}

impl Method<'_> {
    pub fn meta(&self) -> &MethodMeta {
        &self.meta
    }
    pub fn set_input_f32(&mut self, idx: usize, data: &[f32], dims: &[i64]) -> Result<()> {
        ffi::runner_set_input_f32(self.prog.runner.pin_mut(), &self.name, idx, data, dims).map_err(rt)
    }
    pub fn set_input_i64(&mut self, idx: usize, data: &[i64], dims: &[i64]) -> Result<()> {
        ffi::runner_set_input_i64(self.prog.runner.pin_mut(), &self.name, idx, data, dims).map_err(rt)
    }
    /// Runs the method; returns the number of outputs.
    pub fn execute(&mut self) -> Result<usize> {
        let _span = tracing::debug_span!("execute").entered(); // profiling: one slice per program run
        ffi::runner_execute(self.prog.runner.pin_mut(), &self.name).map_err(rt)
    }
    /// Copies output `idx` of the last `execute`.
    pub fn output(&self, idx: usize) -> Result<Value> {
        let o = ffi::runner_output(&self.prog.runner, idx).map_err(rt)?;
        Ok(match o.tag {
            1 if o.dtype == dtype::FLOAT => Value::F32 { dims: o.dims, data: o.f32_data },
            1 => Value::I64 { dims: o.dims, data: o.i64_data },
            4 => Value::Int(o.scalar_i64),
            3 => Value::Double(o.scalar_f64),
            5 => Value::Bool(o.scalar_i64 != 0),
            _ => Value::None,
        })
    }
}
