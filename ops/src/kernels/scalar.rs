//! Scalar reference kernels. They define the numerics (docs/DESIGN.md section 3) that every SIMD
//! path must reproduce bit for bit: per row, groups in order, fused multiply-add.

use super::OutPtr;
use crate::act::QuantActsRef;
use crate::quant::{packed_q, packed_scale, PackedRef};
use std::ops::Range;

/// Q8 reference. # Safety: see `GemmQ8Fn`.
///
/// # Safety
/// `kernels::check_call` holds for these arguments (the dispatcher checks it before every call).
pub unsafe fn gemm_q8(w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let spec = w.spec;
    let (k, g_sz, ng) = (spec.k, spec.group, spec.groups());
    let n_end = (tiles.end * 16).min(spec.n);
    for n in tiles.start * 16..n_end {
        for i in 0..a.m {
            let qa = &a.q[i * k..(i + 1) * k];
            let zp = a.zp[i];
            let mut acc = 0f32;
            for g in 0..ng {
                // Exact: |isum| <= 255 * 128 * 256 < 2^24, so the conversion to f32 is exact too.
                let mut isum = 0i32;
                for kk in g * g_sz..(g + 1) * g_sz {
                    isum += (qa[kk] as i32 - zp) * packed_q(w, n, kk);
                }
                acc = (isum as f32).mul_add(packed_scale(w, n, g), acc);
            }
            out.write(i, n, acc * a.scale[i]);
        }
    }
}

/// Exact fp32 reference. # Safety: see `GemmF32Fn`.
///
/// # Safety
/// `kernels::check_call` holds for these arguments (the dispatcher checks it before every call).
pub unsafe fn gemm_f32(w: &PackedRef<'_>, tiles: Range<usize>, x: &[f32], m: usize, out: OutPtr) {
    let spec = w.spec;
    let (k, g_sz, ng) = (spec.k, spec.group, spec.groups());
    let n_end = (tiles.end * 16).min(spec.n);
    for n in tiles.start * 16..n_end {
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let mut acc = 0f32;
            for g in 0..ng {
                let mut part = 0f32;
                for kk in g * g_sz..(g + 1) * g_sz {
                    part = xr[kk].mul_add(packed_q(w, n, kk) as f32, part);
                }
                acc = part.mul_add(packed_scale(w, n, g), acc);
            }
            out.write(i, n, acc);
        }
    }
}
