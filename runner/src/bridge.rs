//! The cxx bridge to the C++ runner (`cpp/runner.cpp`, over ExecuTorch's
//! `extension::module::Module`). Errors come back as C++ exceptions, which cxx turns into `Err`.

#[cxx::bridge(namespace = "mobilemoe_runner")]
pub mod ffi {
    /// One input or output of a method. `tag` is executorch's `Tag` (Tensor = 1, Int = 4, ...).
    struct TensorMetaInfo {
        is_tensor: bool,
        tag: i32,
        /// executorch `ScalarType` (Float = 6, Long = 4), -1 for non-tensors.
        dtype: i32,
        dims: Vec<i64>,
    }

    struct MethodMetaInfo {
        name: String,
        inputs: Vec<TensorMetaInfo>,
        outputs: Vec<TensorMetaInfo>,
    }

    /// A copied output value.
    struct OutputValue {
        tag: i32,
        dtype: i32,
        dims: Vec<i64>,
        f32_data: Vec<f32>,
        i64_data: Vec<i64>,
        scalar_f64: f64,
        scalar_i64: i64,
    }

    unsafe extern "C++" {
        include!("runner.h");

        type Runner;
        fn runner_open(path: &str) -> Result<UniquePtr<Runner>>;
        fn runner_method_names(r: &Runner) -> Result<Vec<String>>;
        fn runner_method_meta(r: &Runner, method: &str) -> Result<MethodMetaInfo>;
        fn runner_load_method(r: Pin<&mut Runner>, method: &str) -> Result<()>;
        fn runner_set_input_f32(r: Pin<&mut Runner>, method: &str, idx: usize, data: &[f32], dims: &[i64]) -> Result<()>;
        fn runner_set_input_i64(r: Pin<&mut Runner>, method: &str, idx: usize, data: &[i64], dims: &[i64]) -> Result<()>;
        fn runner_execute(r: Pin<&mut Runner>, method: &str) -> Result<usize>;
        fn runner_output(r: &Runner, idx: usize) -> Result<OutputValue>;
        /// The `executorch::runtime::Error` number behind this thread's last failed call (0 if
        /// that failure was not an ExecuTorch error); reading it resets it to 0.
        fn runner_take_error() -> u32;
    }
}
