//! Weight quantization (symmetric, per row, per group of K) and the T16K4 packed layout.
//! The layout is specified byte by byte in docs/DESIGN.md section 2.

use crate::error::{check_len, mul_dims, OpsError, Result};
use half::{bf16, f16};

/// Rows per tile of the packed layout.
pub const TILE_ROWS: usize = 16;
/// Columns per chunk (the 4 products summed in one i32 lane by vpdpbusd / sdot).
pub const CHUNK_K: usize = 4;

/// Weight width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightBits {
    Int4,
    Int8,
}

impl WeightBits {
    pub fn from_bits(bits: usize) -> Result<Self> {
        match bits {
            4 => Ok(Self::Int4),
            8 => Ok(Self::Int8),
            _ => Err(OpsError::BadWeightBits { bits }),
        }
    }
    pub fn bits(self) -> usize {
        match self {
            Self::Int4 => 4,
            Self::Int8 => 8,
        }
    }
    pub fn qmin(self) -> i32 {
        match self {
            Self::Int4 => -8,
            Self::Int8 => -128,
        }
    }
    pub fn qmax(self) -> i32 {
        match self {
            Self::Int4 => 7,
            Self::Int8 => 127,
        }
    }
    /// Bytes of one chunk (16 rows x 4 columns).
    pub fn chunk_bytes(self) -> usize {
        match self {
            Self::Int4 => 32,
            Self::Int8 => 64,
        }
    }
}

/// Shape and quantization parameters of one packed matrix `W[n, k]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatrixSpec {
    pub n: usize,
    pub k: usize,
    pub group: usize,
    pub bits: WeightBits,
}

impl MatrixSpec {
    /// Validates group size, divisibility and non-zero dims.
    pub fn new(n: usize, k: usize, group: usize, bits: WeightBits) -> Result<Self> {
        if !matches!(group, 32 | 64 | 128 | 256) {
            return Err(OpsError::BadGroupSize { group });
        }
        if n == 0 {
            return Err(OpsError::ZeroDim { what: "weight rows (N)" });
        }
        if k == 0 {
            return Err(OpsError::ZeroDim { what: "weight columns (K)" });
        }
        if k % group != 0 {
            return Err(OpsError::GroupDoesNotDivideK { k, group });
        }
        let spec = Self { n, k, group, bits };
        // Make sure every derived size fits in usize once, so later arithmetic cannot overflow:
        // padded rows x K, and data bytes + scale bytes (`total_bytes`, INT8: ~1.06 x that).
        mul_dims("packed weight bytes", &[spec.tiles(), TILE_ROWS, k])?;
        spec.data_bytes().checked_add(4 * spec.scale_count()).ok_or(OpsError::Overflow { what: "packed weight + scale bytes" })?;
        Ok(spec)
    }
    pub fn tiles(&self) -> usize {
        self.n.div_ceil(TILE_ROWS)
    }
    pub fn padded_rows(&self) -> usize {
        self.tiles() * TILE_ROWS
    }
    pub fn groups(&self) -> usize {
        self.k / self.group
    }
    pub fn chunks_per_group(&self) -> usize {
        self.group / CHUNK_K
    }
    /// Bytes of packed data for one tile.
    pub fn tile_bytes(&self) -> usize {
        self.groups() * self.chunks_per_group() * self.bits.chunk_bytes()
    }
    pub fn data_bytes(&self) -> usize {
        self.tiles() * self.tile_bytes()
    }
    pub fn scale_count(&self) -> usize {
        self.padded_rows() * self.groups()
    }
    /// Bytes read per full pass over the matrix (data + f32 scales; `PackedRef::total_bytes` for
    /// the stored scale type).
    pub fn total_bytes(&self) -> usize {
        self.data_bytes() + 4 * self.scale_count()
    }
}

/// Element type of the per-group weight scales (torchao's `scales_precision`). The kernels read
/// them in this type (fp16/bf16 halve the scale bytes a decode step streams) and widen them to
/// f32 exactly, so the arithmetic after the load is the same for every type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ScaleType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl ScaleType {
    /// Bytes per scale.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
    /// `v` rounded to this type (nearest, ties to even; as torch's `.to(dtype)`), as an f32
    /// (exact: every f16/bf16 value is an f32).
    pub fn round(self, v: f32) -> f32 {
        match self {
            Self::F32 => v,
            Self::F16 => f16::from_f32(v).to_f32(),
            Self::Bf16 => bf16::from_f32(v).to_f32(),
        }
    }
}

/// Borrowed per-group scales in their stored element type.
#[derive(Clone, Copy, Debug)]
pub enum ScaleRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl<'a> ScaleRef<'a> {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(s) => s.len(),
            Self::F16(s) => s.len(),
            Self::Bf16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn scale_type(&self) -> ScaleType {
        match self {
            Self::F32(_) => ScaleType::F32,
            Self::F16(_) => ScaleType::F16,
            Self::Bf16(_) => ScaleType::Bf16,
        }
    }
    /// Scale `i` widened to f32 (exact). Panics if `i >= len()`, like slice indexing.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Self::F32(s) => s[i],
            Self::F16(s) => s[i].to_f32(),
            Self::Bf16(s) => s[i].to_f32(),
        }
    }
    /// The scales `range` (panics outside, like slice indexing).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        match self {
            Self::F32(s) => Self::F32(&s[range]),
            Self::F16(s) => Self::F16(&s[range]),
            Self::Bf16(s) => Self::Bf16(&s[range]),
        }
    }
    /// Start of the scales (element type: `scale_type()`), for the kernels.
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            Self::F32(s) => s.as_ptr() as *const u8,
            Self::F16(s) => s.as_ptr() as *const u8,
            Self::Bf16(s) => s.as_ptr() as *const u8,
        }
    }
    /// Every scale widened to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

impl<'a> From<&'a [f32]> for ScaleRef<'a> {
    fn from(s: &'a [f32]) -> Self {
        Self::F32(s)
    }
}
impl<'a> From<&'a Vec<f32>> for ScaleRef<'a> {
    fn from(s: &'a Vec<f32>) -> Self {
        Self::F32(s)
    }
}
impl<'a, const N: usize> From<&'a [f32; N]> for ScaleRef<'a> {
    fn from(s: &'a [f32; N]) -> Self {
        Self::F32(s)
    }
}
impl<'a> From<&'a [f16]> for ScaleRef<'a> {
    fn from(s: &'a [f16]) -> Self {
        Self::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for ScaleRef<'a> {
    fn from(s: &'a [bf16]) -> Self {
        Self::Bf16(s)
    }
}

/// Owned per-group scales in their element type.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedScales {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl OwnedScales {
    /// `values` (already representable in `t`, e.g. from `quantize_rows_as`) stored as `t`.
    pub fn from_f32(t: ScaleType, values: &[f32]) -> Self {
        match t {
            ScaleType::F32 => Self::F32(values.to_vec()),
            ScaleType::F16 => Self::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            ScaleType::Bf16 => Self::Bf16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
        }
    }
    /// Scales of type `t` decoded from little-endian bytes (a trailing partial element is
    /// ignored): for buffers not aligned for `t`.
    pub fn from_le_bytes(t: ScaleType, bytes: &[u8]) -> Self {
        let halves = || bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        match t {
            ScaleType::F32 => Self::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            ScaleType::F16 => Self::F16(halves().map(f16::from_bits).collect()),
            ScaleType::Bf16 => Self::Bf16(halves().map(bf16::from_bits).collect()),
        }
    }
    pub fn as_ref(&self) -> ScaleRef<'_> {
        match self {
            Self::F32(s) => ScaleRef::F32(s),
            Self::F16(s) => ScaleRef::F16(s),
            Self::Bf16(s) => ScaleRef::Bf16(s),
        }
    }
}

/// A borrowed packed matrix (zero copy: points into a delegate blob, a tensor, or a `PackedMatrix`).
#[derive(Clone, Copy, Debug)]
pub struct PackedRef<'a> {
    pub spec: MatrixSpec,
    pub data: &'a [u8],
    pub scales: ScaleRef<'a>,
}

impl<'a> PackedRef<'a> {
    /// Checks buffer sizes against the spec.
    pub fn new(spec: MatrixSpec, data: &'a [u8], scales: impl Into<ScaleRef<'a>>) -> Result<Self> {
        let scales = scales.into();
        // Public fields: a hand-built spec (group 0, overflowing sizes) is an error, not a panic.
        let spec = MatrixSpec::new(spec.n, spec.k, spec.group, spec.bits)?;
        check_len("packed weight data", spec.data_bytes(), data.len())?;
        check_len("packed weight scales", spec.scale_count(), scales.len())?;
        Ok(Self { spec, data, scales })
    }
    /// Bytes read per full pass over the matrix (data + scales in their element type).
    pub fn total_bytes(&self) -> usize {
        self.spec.data_bytes() + self.scales.scale_type().bytes() * self.spec.scale_count()
    }
    /// Dequantized row-major `[n, k]` weights (tests, debugging).
    pub fn dequantize(&self) -> Vec<f32> {
        let (q, s) = unpack(self);
        let s = &s;
        let spec = self.spec;
        let mut out = vec![0f32; spec.n * spec.k];
        for n in 0..spec.n {
            for k in 0..spec.k {
                out[n * spec.k + k] = q[n * spec.k + k] as f32 * s[n * spec.groups() + k / spec.group];
            }
        }
        out
    }
}

/// An owned packed matrix.
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    pub spec: MatrixSpec,
    pub data: Vec<u8>,
    pub scales: Vec<f32>,
}

impl PackedMatrix {
    pub fn as_ref(&self) -> PackedRef<'_> {
        PackedRef { spec: self.spec, data: &self.data, scales: ScaleRef::F32(&self.scales) }
    }
    /// Quantize row-major fp32 weights `[n, k]` and pack them.
    pub fn quantize(w: &[f32], spec: MatrixSpec) -> Result<Self> {
        let (q, s) = quantize_rows(w, spec)?;
        pack(&q, &s, spec)
    }
}

/// Round half to even, as torch.round.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// Symmetric per-group quantization of row-major `w[n, k]`: returns (q `[n, k]`, scales `[n, k/G]`).
/// Numerics equal torchao's symmetric per-group int4/int8 (see docs/DESIGN.md section 1).
pub fn quantize_rows(w: &[f32], spec: MatrixSpec) -> Result<(Vec<i8>, Vec<f32>)> {
    quantize_rows_as(w, spec, ScaleType::F32)
}

/// `quantize_rows` with the scales in `scale_type` (torchao's `scales_precision`): the scale is
/// computed in f32, clamped at the smallest normal f32, then rounded to the type; torchao then
/// quantizes with `w * (1 / scale)` where the reciprocal is computed *in the scale's type*
/// (rounded to it), and so does this. The returned scales are f32 values exact in `scale_type`.
/// A group whose scale rounds to 0 in the type (|w| below ~1e-7 for f16) quantizes to 0.
pub fn quantize_rows_as(w: &[f32], spec: MatrixSpec, scale_type: ScaleType) -> Result<(Vec<i8>, Vec<f32>)> {
    let spec = MatrixSpec::new(spec.n, spec.k, spec.group, spec.bits)?; // hand-built specs
    check_len("fp32 weights", spec.n * spec.k, w.len())?;
    let (qmin, qmax) = (spec.bits.qmin() as f32, spec.bits.qmax() as f32);
    let half_range = (qmax - qmin) / 2.0;
    let ng = spec.groups();
    let mut q = vec![0i8; spec.n * spec.k];
    let mut scales = vec![0f32; spec.n * ng];
    for n in 0..spec.n {
        for g in 0..ng {
            let base = n * spec.k + g * spec.group;
            let block = &w[base..base + spec.group];
            let max_abs = block.iter().fold(0f32, |m, &v| if v.abs() > m { v.abs() } else { m });
            // torchao: scale clamped at the smallest normal f32, cast to the scale type;
            // q = round(w * (1 / scale)) with the reciprocal in the scale type.
            let scale = scale_type.round((max_abs / half_range).max(f32::MIN_POSITIVE));
            scales[n * ng + g] = scale;
            if scale == 0.0 {
                continue; // q stays 0 (torchao would divide by zero)
            }
            let inv = scale_type.round(1.0 / scale);
            for (i, &v) in block.iter().enumerate() {
                let r = round_half_even(v * inv);
                // NaN weights quantize to 0 (clamp of NaN is NaN; `as` maps NaN to 0).
                q[base + i] = r.clamp(qmin, qmax) as i8;
            }
        }
    }
    Ok((q, scales))
}

/// Pack integer weights `q[n, k]` (values within the width's range) and scales `[n, k/G]`.
pub fn pack(q: &[i8], scales: &[f32], spec: MatrixSpec) -> Result<PackedMatrix> {
    let spec = MatrixSpec::new(spec.n, spec.k, spec.group, spec.bits)?; // hand-built specs
    check_len("integer weights", spec.n * spec.k, q.len())?;
    check_len("weight scales", spec.n * spec.groups(), scales.len())?;
    let (qmin, qmax) = (spec.bits.qmin(), spec.bits.qmax());
    if let Some(bad) = q.iter().find(|&&v| (v as i32) < qmin || (v as i32) > qmax) {
        return Err(OpsError::Invalid(format!("integer weight {bad} outside [{qmin}, {qmax}] for {}-bit weights", spec.bits.bits())));
    }
    let ng = spec.groups();
    let cpg = spec.chunks_per_group();
    let cb = spec.bits.chunk_bytes();
    let mut data = vec![0u8; spec.data_bytes()];
    let mut packed_scales = vec![0f32; spec.scale_count()];
    let get = |row: usize, k: usize| -> i32 {
        if row < spec.n {
            q[row * spec.k + k] as i32
        } else {
            0
        }
    };
    for t in 0..spec.tiles() {
        for g in 0..ng {
            for r in 0..TILE_ROWS {
                let row = t * TILE_ROWS + r;
                if row < spec.n {
                    packed_scales[(t * ng + g) * TILE_ROWS + r] = scales[row * ng + g];
                }
            }
            for c in 0..cpg {
                let off = ((t * ng + g) * cpg + c) * cb;
                for j in 0..cb {
                    let k = g * spec.group + c * CHUNK_K + j % CHUNK_K;
                    data[off + j] = match spec.bits {
                        WeightBits::Int4 => {
                            let lo = get(t * TILE_ROWS + j / 4, k) + 8;
                            let hi = get(t * TILE_ROWS + 8 + j / 4, k) + 8;
                            (lo as u8) | ((hi as u8) << 4)
                        }
                        WeightBits::Int8 => get(t * TILE_ROWS + j / 4, k) as i8 as u8,
                    };
                }
            }
        }
    }
    Ok(PackedMatrix { spec, data, scales: packed_scales })
}

/// Integer weight of row `n`, column `k` read from the packed layout (reference accessor).
#[inline]
pub fn packed_q(w: &PackedRef<'_>, n: usize, k: usize) -> i32 {
    let spec = &w.spec;
    let (t, r) = (n / TILE_ROWS, n % TILE_ROWS);
    let (g, kg) = (k / spec.group, k % spec.group);
    let (c, kc) = (kg / CHUNK_K, kg % CHUNK_K);
    let chunk = ((t * spec.groups() + g) * spec.chunks_per_group() + c) * spec.bits.chunk_bytes();
    match spec.bits {
        WeightBits::Int4 => {
            let byte = w.data[chunk + (r % 8) * 4 + kc];
            let nib = if r < 8 { byte & 0x0F } else { byte >> 4 };
            nib as i32 - 8
        }
        WeightBits::Int8 => w.data[chunk + r * 4 + kc] as i8 as i32,
    }
}

/// Scale of row `n`, group `g` in the packed layout.
#[inline]
pub fn packed_scale(w: &PackedRef<'_>, n: usize, g: usize) -> f32 {
    w.scales.get(((n / TILE_ROWS) * w.spec.groups() + g) * TILE_ROWS + n % TILE_ROWS)
}

/// Inverse of `pack`: (q `[n, k]`, scales `[n, k/G]`).
pub fn unpack(w: &PackedRef<'_>) -> (Vec<i8>, Vec<f32>) {
    let spec = w.spec;
    let mut q = vec![0i8; spec.n * spec.k];
    let mut s = vec![0f32; spec.n * spec.groups()];
    for n in 0..spec.n {
        for k in 0..spec.k {
            q[n * spec.k + k] = packed_q(w, n, k) as i8;
        }
        for g in 0..spec.groups() {
            s[n * spec.groups() + g] = packed_scale(w, n, g);
        }
    }
    (q, s)
}
