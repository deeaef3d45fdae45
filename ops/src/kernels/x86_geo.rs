//! Tile geometry shared by the x86 kernels (AVX2, AVX-512).

use crate::quant::{PackedRef, ScaleType};

/// Everything the tile kernels need, with the bounds established by `check_call`.
#[derive(Clone, Copy)]
pub(crate) struct Geo {
    /// Packed data and scales of the whole matrix.
    pub(crate) data: *const u8,
    pub(crate) scales: *const u8,
    /// Element type of `scales`.
    pub(crate) scale_type: ScaleType,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) group: usize,
    pub(crate) ng: usize,
    pub(crate) cpg: usize,
    pub(crate) chunk_bytes: usize,
    pub(crate) tile_bytes: usize,
}

impl Geo {
    /// Address of scale `i` (any `i`: prefetch targets may lie past the end; never dereferenced
    /// there).
    #[inline(always)]
    pub(crate) fn scale_ptr(&self, i: usize) -> *const u8 {
        self.scales.wrapping_add(i * self.scale_type.bytes())
    }

    pub(crate) fn new(w: &PackedRef<'_>) -> Self {
        let s = w.spec;
        Self {
            data: w.data.as_ptr(),
            scales: w.scales.as_ptr(),
            scale_type: w.scales.scale_type(),
            n: s.n,
            k: s.k,
            group: s.group,
            ng: s.groups(),
            cpg: s.chunks_per_group(),
            chunk_bytes: s.bits.chunk_bytes(),
            tile_bytes: s.tile_bytes(),
        }
    }
}
