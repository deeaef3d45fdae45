//! Typed errors: every bad shape, size or attribute becomes one of these, never a panic.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum OpsError {
    #[error("invalid group size {group}: must be one of 32, 64, 128, 256")]
    BadGroupSize { group: usize },
    #[error("K = {k} is not a multiple of the group size {group}")]
    GroupDoesNotDivideK { k: usize, group: usize },
    #[error("weight bits {bits} not supported (4 or 8)")]
    BadWeightBits { bits: usize },
    #[error("top_k = {top_k} must be in 1..=num_experts ({num_experts})")]
    BadTopK { top_k: usize, num_experts: usize },
    #[error("unknown score function {0:?} (expected softmax, softmax_all or sigmoid)")]
    UnknownScoreFunc(String),
    #[error("{what}: expected {expected} elements, got {got}")]
    SizeMismatch { what: &'static str, expected: usize, got: usize },
    #[error("{what}: dimension must be > 0")]
    ZeroDim { what: &'static str },
    #[error("{what}: size overflows usize")]
    Overflow { what: &'static str },
    #[error("{what}: cannot allocate {bytes} bytes")]
    OutOfMemory { what: &'static str, bytes: usize },
    /// A worker of the thread pool panicked inside `{0}` (a bug, not a bad input).
    #[error("internal error: a {0} thread panicked")]
    Panicked(&'static str),
    /// A broken internal invariant (a bug, not a bad input), e.g. a kernel refusing a call the op
    /// had checked.
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, OpsError>;

/// `expected == got` or a `SizeMismatch` naming the buffer.
pub fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(OpsError::SizeMismatch { what, expected, got })
    }
}

/// Checked product of dimensions.
pub fn mul_dims(what: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or(OpsError::Overflow { what })
}

/// `vec![value; n]` that reports a failed (or impossible) allocation as `OutOfMemory` instead of
/// aborting the process: for buffers sized from a program or a call (KV caches), not from code.
pub fn try_vec<T: Clone>(what: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| OpsError::OutOfMemory { what, bytes: n.saturating_mul(std::mem::size_of::<T>()) })?;
    v.resize(n, value);
    Ok(v)
}
