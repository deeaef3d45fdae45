//! MobileMoE kernels: MoE routing and INT4/INT8 grouped-expert GEMM with SIMD dispatch.
//!
//! Numerics and the packed weight layout are specified in `docs/DESIGN.md`; the scalar
//! reference in `kernels::scalar` is the executable form of that spec.

pub mod act;
pub mod decoder;
pub mod error;
pub mod kernels;
pub mod linear;
pub mod moe;
pub mod quant;
pub mod reference;
pub mod routing;
pub mod testing;
pub mod threadpool;

pub use error::{OpsError, Result};
pub use kernels::{KernelKind, Kernels};
pub use linear::{linear, LinearScratch};
pub use moe::{moe_ffn, MoeScratch, MoeSpec, MoeWeights, SharedExpert};
pub use quant::{MatrixSpec, OwnedScales, PackedMatrix, PackedRef, ScaleRef, ScaleType, WeightBits};
pub use routing::{GroupLimit, GroupScore, RouterConfig, ScoreFunc};
pub use threadpool::ThreadPool;
