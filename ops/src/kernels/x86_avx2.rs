//! PLACEHOLDER until the SIMD kernels land: reports unsupported so dispatch never picks it.
use super::OutPtr;
use crate::act::QuantActsRef;
use crate::quant::PackedRef;
use std::ops::Range;
pub fn supported() -> bool { false }
pub unsafe fn gemm_q8(w: &PackedRef<'_>, t: Range<usize>, a: &QuantActsRef<'_>, o: OutPtr) { super::scalar::gemm_q8(w, t, a, o) }
pub unsafe fn gemm_f32(w: &PackedRef<'_>, t: Range<usize>, x: &[f32], m: usize, o: OutPtr) { super::scalar::gemm_f32(w, t, x, m, o) }
