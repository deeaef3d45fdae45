//! A naive, unfused MoE layer written straight from docs/DESIGN.md: per token, per selected expert,
//! on unpacked integer weights. The fused, permuted, threaded `moe::moe_ffn` must equal it bit for
//! bit (same operation order); tests also check it against plain fp32 formulas.

use crate::act::quantize_row;
use crate::moe::{sigmoid, silu, MoeSpec, MoeWeights};
use crate::quant::{unpack, PackedRef};
use crate::routing::{dot_f32, route_token};

/// `y[n] = sum_g fma(...)` over unpacked weights, Q8 or exact numerics, for one row `x[k]`.
fn matvec(q: &[i8], s: &[f32], n: usize, k: usize, group: usize, x: &[f32], exact: bool) -> Vec<f32> {
    let ng = k / group;
    let mut y = vec![0f32; n];
    if exact {
        for (r, yr) in y.iter_mut().enumerate() {
            let mut acc = 0f32;
            for g in 0..ng {
                let mut part = 0f32;
                for kk in g * group..(g + 1) * group {
                    part = x[kk].mul_add(q[r * k + kk] as f32, part);
                }
                acc = part.mul_add(s[r * ng + g], acc);
            }
            *yr = acc;
        }
    } else {
        let mut qa = vec![0i8; k];
        let (mut sa, mut zp) = (0f32, 0i32);
        let mut gs = vec![0i32; ng];
        quantize_row(x, group, &mut qa, &mut sa, &mut zp, &mut gs);
        for (r, yr) in y.iter_mut().enumerate() {
            let mut acc = 0f32;
            for g in 0..ng {
                let isum: i32 = (g * group..(g + 1) * group).map(|kk| (qa[kk] as i32 - zp) * q[r * k + kk] as i32).sum();
                acc = (isum as f32).mul_add(s[r * ng + g], acc);
            }
            *yr = acc * sa;
        }
    }
    y
}

fn ffn(w13: &PackedRef<'_>, w2: &PackedRef<'_>, x: &[f32], exact: bool) -> Vec<f32> {
    let (q13, s13) = unpack(w13);
    let (q2, s2) = unpack(w2);
    let f = w13.spec.n / 2;
    let h = matvec(&q13, &s13, 2 * f, w13.spec.k, w13.spec.group, x, exact);
    let a: Vec<f32> = (0..f).map(|j| silu(h[j]) * h[f + j]).collect();
    matvec(&q2, &s2, w2.spec.n, w2.spec.k, w2.spec.group, &a, exact)
}

/// Naive MoE layer for `x[t, D]`; panics on invalid input (test-only helper).
pub fn moe_ffn_naive(spec: &MoeSpec, w: &MoeWeights<'_>, x: &[f32], t: usize) -> Vec<f32> {
    w.validate(spec).expect("valid weights");
    let (d, e, k) = (spec.dim, spec.router.num_experts, spec.router.top_k);
    let (s13, s2) = (spec.w13_spec().unwrap(), spec.w2_spec().unwrap());
    let mut out = vec![0f32; t * d];
    let mut scratch = vec![0f32; e];
    for i in 0..t {
        let xi = &x[i * d..(i + 1) * d];
        let logits: Vec<f32> = (0..e).map(|j| dot_f32(xi, &w.router_w[j * d..(j + 1) * d])).collect();
        let mut ids = vec![0u32; k];
        let mut wts = vec![0f32; k];
        route_token(&spec.router, &logits, w.expert_bias, &mut scratch, &mut ids, &mut wts);
        let y = &mut out[i * d..(i + 1) * d];
        for j in 0..k {
            let ex = ids[j] as usize;
            let (w13, w2) = (w.expert_w13(s13, ex), w.expert_w2(s2, ex));
            let o = ffn(&w13, &w2, xi, spec.exact);
            for (yv, ov) in y.iter_mut().zip(o) {
                *yv = wts[j].mul_add(ov, *yv);
            }
        }
        if let Some(sh) = w.shared {
            let o = ffn(&sh.w13, &sh.w2, xi, spec.exact);
            let g = sh.gate.map(|gw| sigmoid(dot_f32(xi, gw))).unwrap_or(1.0);
            for (yv, ov) in y.iter_mut().zip(o) {
                *yv = g.mul_add(ov, *yv);
            }
        }
    }
    out
}
