//! Dense INT4/INT8 linear `y = x @ W^T + b` on the same kernels (attention projections, LM head,
//! the dense baseline, the shared expert).

use crate::act::QuantActs;
use crate::error::{check_len, mul_dims, OpsError, Result};
use crate::kernels::{Kernels, OutPtr};
use crate::quant::{MatrixSpec, PackedRef};
use crate::threadpool::ThreadPool;
use tracing::debug_span;

/// Reusable buffers for `linear`.
#[derive(Default)]
pub struct LinearScratch {
    qx: QuantActs,
}

/// `out[m, n] = x[m, k] @ W^T (+ bias)`, Q8 path unless `exact`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    w: &PackedRef<'_>,
    bias: Option<&[f32]>,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    exact: bool,
    scratch: &mut LinearScratch,
    pool: &ThreadPool,
    kernels: &Kernels,
) -> Result<()> {
    // `MatrixSpec` has public fields: re-validate so a hand-built spec (group 0, sizes that
    // overflow) is a typed error here rather than a panic or a wrapped size check below.
    let spec = MatrixSpec::new(w.spec.n, w.spec.k, w.spec.group, w.spec.bits)?;
    let _span = debug_span!("int4_linear", m, n = spec.n, k = spec.k).entered();
    check_len("packed weight data", spec.data_bytes(), w.data.len())?;
    check_len("packed weight scales", spec.scale_count(), w.scales.len())?;
    check_len("linear input", mul_dims("linear input", &[m, spec.k])?, x.len())?;
    check_len("linear output", mul_dims("linear output", &[m, spec.n])?, out.len())?;
    if let Some(b) = bias {
        check_len("linear bias", spec.n, b.len())?;
    }
    if m == 0 {
        return Ok(());
    }
    if !exact {
        let _g = debug_span!("quantize").entered();
        scratch.qx.quantize(x, m, spec.k, spec.group)?;
    }
    let tiles = spec.tiles();
    let threads = pool.threads();
    // Split over output tiles, and over row blocks when there are many rows (prefill).
    let row_blocks = if m >= 64 { (m / 32).clamp(1, threads * 2) } else { 1 };
    let tile_blk = tiles.div_ceil(threads * 8 / row_blocks.min(threads * 8)).max(1);
    let tile_items = tiles.div_ceil(tile_blk);
    let rows_per = m.div_ceil(row_blocks);
    let outp = OutPtr::new(out, spec.n);
    // Only the Q8 path has quantized activations: a fresh scratch (group 0) must not be viewed.
    let qx = (!exact).then(|| scratch.qx.as_ref());
    let failed = std::sync::atomic::AtomicBool::new(false);
    {
        let _g = debug_span!("gemm").entered();
        pool.run(tile_items * row_blocks, &|idx| {
            let (rb, tb) = (idx / tile_items, idx % tile_items);
            let r0 = rb * rows_per;
            let r1 = ((rb + 1) * rows_per).min(m);
            if r0 >= r1 {
                return;
            }
            let t0 = tb * tile_blk;
            let t1 = ((tb + 1) * tile_blk).min(tiles);
            let sub = outp.rows_from(r0);
            let ok = match &qx {
                // SAFETY: `out` outlives `pool.run`; items write disjoint (row block, tile) ranges.
                None => unsafe { kernels.gemm_f32_raw(w, t0..t1, &x[r0 * spec.k..r1 * spec.k], r1 - r0, sub) },
                Some(qx) => unsafe { kernels.gemm_q8_raw(w, t0..t1, &qx.rows(r0, r1 - r0), sub) },
            };
            if !ok {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .map_err(|_| OpsError::Panicked("kernel"))?;
    }
    if failed.into_inner() {
        return Err(OpsError::Internal("kernel contract check failed"));
    }
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(spec.n) {
            for (y, &bv) in row.iter_mut().zip(b) {
                *y += bv;
            }
        }
    }
    Ok(())
}
