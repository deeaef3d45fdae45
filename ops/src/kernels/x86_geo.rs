//! Tile geometry shared by the x86 kernels (AVX2, AVX-512).

use crate::quant::PackedRef;

/// Everything the tile kernels need, with the bounds established by `check_call`.
#[derive(Clone, Copy)]
pub(crate) struct Geo {
    /// Packed data and scales of the whole matrix.
    pub(crate) data: *const u8,
    pub(crate) scales: *const f32,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) group: usize,
    pub(crate) ng: usize,
    pub(crate) cpg: usize,
    pub(crate) chunk_bytes: usize,
    pub(crate) tile_bytes: usize,
}

impl Geo {
    pub(crate) fn new(w: &PackedRef<'_>) -> Self {
        let s = w.spec;
        Self {
            data: w.data.as_ptr(),
            scales: w.scales.as_ptr(),
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
