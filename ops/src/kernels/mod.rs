//! GEMM kernels over the T16K4 packed layout, one file per ISA beside the scalar reference
//! (`scalar.rs`), chosen at run time.
//!
//! Contract of every kernel (both paths), for the tiles `tiles` of `w` and all `m` rows of the
//! activations: `out[i * ldo + n] = y[i][n]` for `n` in `tiles.start*16 .. min(tiles.end*16, N)`.
//! Columns outside that range are not touched, which lets threads write disjoint tile ranges of
//! one output buffer. Results equal `scalar` bit for bit (docs/DESIGN.md section 3).

use crate::act::QuantActsRef;
use crate::quant::PackedRef;
use std::ops::Range;

#[cfg(target_arch = "aarch64")]
pub mod aarch64_dotprod;
#[cfg(target_arch = "aarch64")]
pub mod aarch64_i8mm;
#[cfg(target_arch = "aarch64")]
pub mod aarch64_neon;
pub mod attn_dot;
#[cfg(target_arch = "aarch64")]
pub mod attn_neon;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_geo;

/// A raw output pointer shared by threads that write disjoint columns. Building one is safe;
/// writing through it is not: only the `unsafe` [`Kernels::gemm_q8_raw`] / [`Kernels::gemm_f32_raw`]
/// (and [`OutPtr::write`]) take it, with the buffer's liveness and the writers' disjointness as
/// their callers' invariant. The safe entry points take `&mut [f32]`.
///
/// Safe code can neither reach the pointer nor write through one (issue #26 item 5):
/// ```compile_fail
/// let mut v = vec![0f32; 4];
/// let p = mobilemoe_ops::kernels::OutPtr::new(&mut v, 4);
/// let _raw = p.ptr; // private field
/// ```
/// ```compile_fail
/// use mobilemoe_ops::{kernels::OutPtr, Kernels, MatrixSpec, PackedMatrix, WeightBits};
/// let spec = MatrixSpec::new(16, 32, 32, WeightBits::Int4).unwrap();
/// let w = PackedMatrix::quantize(&[0.5; 512], spec).unwrap();
/// let mut out = vec![0f32; 16];
/// let p = OutPtr::new(&mut out, 16);
/// drop(out);
/// Kernels::best().gemm_f32_raw(&w.as_ref(), 0..1, &[1.0; 32], 1, p); // needs `unsafe`
/// ```
/// ```
/// use mobilemoe_ops::{Kernels, MatrixSpec, PackedMatrix, WeightBits};
/// let spec = MatrixSpec::new(16, 32, 32, WeightBits::Int4).unwrap();
/// let w = PackedMatrix::quantize(&[0.5; 512], spec).unwrap();
/// let mut out = vec![0f32; 16];
/// assert!(Kernels::best().gemm_f32(&w.as_ref(), 0..1, &[1.0; 32], 1, &mut out, 16)); // the safe API
/// assert!(!Kernels::best().gemm_f32(&w.as_ref(), 0..1, &[1.0; 32], 1, &mut out[..15], 16)); // too short: refused
/// ```
#[derive(Clone, Copy, Debug)]
pub struct OutPtr {
    ptr: *mut f32,
    /// Number of f32 elements valid from `ptr`.
    len: usize,
    /// Row stride in elements.
    ldo: usize,
}
// SAFETY: an OutPtr is only used to write disjoint (row, column) ranges from different threads;
// the owner of the buffer keeps it alive and does not read it until all writers have joined.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub fn new(buf: &mut [f32], ldo: usize) -> Self {
        Self { ptr: buf.as_mut_ptr(), len: buf.len(), ldo }
    }
    /// Elements valid from the start.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Row stride in elements.
    pub fn ldo(&self) -> usize {
        self.ldo
    }
    /// The same buffer starting at row `row0` (empty if past the end). Safe: only offsets within
    /// the buffer are formed.
    pub fn rows_from(self, row0: usize) -> Self {
        let off = row0.saturating_mul(self.ldo).min(self.len);
        // SAFETY: off <= len, so the pointer stays within (or one past) the buffer.
        Self { ptr: unsafe { self.ptr.add(off) }, len: self.len - off, ldo: self.ldo }
    }
    /// # Safety
    /// `i * ldo + n < len`, and no other thread writes or reads this element concurrently.
    #[inline(always)]
    pub unsafe fn write(&self, i: usize, n: usize, v: f32) {
        let idx = i * self.ldo + n;
        debug_assert!(idx < self.len);
        *self.ptr.add(idx) = v;
    }
}

/// Checks done once before calling any kernel (kernels may then index without bounds checks).
pub fn check_call(w: &PackedRef<'_>, tiles: &Range<usize>, m: usize, k: usize, out: &OutPtr) -> bool {
    let spec = &w.spec;
    // Public fields: a hand-built spec must pass the same validation as `MatrixSpec::new` (non-zero
    // group and dims, no overflow in the sizes below) before any size arithmetic.
    crate::quant::MatrixSpec::new(spec.n, spec.k, spec.group, spec.bits).is_ok_and(|s| s == *spec)
        && tiles.start <= tiles.end
        && tiles.end <= spec.tiles()
        && k == spec.k
        && w.data.len() == spec.data_bytes()
        && w.scales.len() == spec.scale_count()
        && out.ldo >= spec.n
        && (m == 0 || (m - 1).checked_mul(out.ldo).and_then(|v| v.checked_add(spec.n)).is_some_and(|v| v <= out.len))
}

/// `gemm_q8(w, tiles, acts, out)`: Q8 path (int8 activations with a per-row zero point x int4/int8
/// weights).
/// # Safety
/// `check_call(w, tiles, acts.m, acts.k, out)` holds, `acts` is consistent (`q.len() == m*k`,
/// `scale.len() == zp.len() == m`, every zp in [-128, 127], `gsum.len() == m*k/group`,
/// `group == w.spec.group`), and the caller's CPU has the kernel's ISA. The SIMD kernels also use
/// `gsum[i, g] = sum over group g of (q - zp[i])` (as `QuantActs` computes it); with other values
/// they give different (but memory-safe) results.
pub type GemmQ8Fn = unsafe fn(&PackedRef<'_>, Range<usize>, &QuantActsRef<'_>, OutPtr);
/// `gemm_f32(w, tiles, x, m, out)`: exact path (fp32 activations `x[m, k]`).
/// # Safety
/// As `GemmQ8Fn`, with `x.len() == m * w.spec.k`.
pub type GemmF32Fn = unsafe fn(&PackedRef<'_>, Range<usize>, &[f32], usize, OutPtr);

/// Runs `f` with a per-thread scratch buffer of at least `len` i32 (grow-only, so no allocation
/// once warmed up). The SIMD Q8 kernels keep there the weight row sums of one tile (per group),
/// computed by the first token block and reused by the following ones.
pub(crate) fn with_wsum_scratch<R>(len: usize, f: impl FnOnce(&mut [i32]) -> R) -> R {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < len {
            b.resize(len, 0);
        }
        f(&mut b[..len])
    })
}

/// Which implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    Scalar,
    Avx2,
    Avx512Vnni,
    Neon,
    NeonDotprod,
    NeonI8mm,
}

impl KernelKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512vnni",
            Self::Neon => "neon",
            Self::NeonDotprod => "neon-dotprod",
            Self::NeonI8mm => "neon-i8mm",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == s)
    }
    pub const ALL: [KernelKind; 6] = [Self::Scalar, Self::Avx2, Self::Avx512Vnni, Self::Neon, Self::NeonDotprod, Self::NeonI8mm];

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => x86_avx2::supported(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => x86_avx512::supported(),
            #[cfg(target_arch = "aarch64")]
            Self::Neon => aarch64_neon::supported(),
            #[cfg(target_arch = "aarch64")]
            Self::NeonDotprod => aarch64_dotprod::supported(),
            #[cfg(target_arch = "aarch64")]
            Self::NeonI8mm => aarch64_i8mm::supported(),
            _ => false,
        }
    }
}

/// A dispatched kernel set.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    pub kind: KernelKind,
    gemm_q8: GemmQ8Fn,
    gemm_f32: GemmF32Fn,
}

impl Kernels {
    /// The kernel set `kind`, if this CPU supports it.
    pub fn get(kind: KernelKind) -> Option<Self> {
        if !kind.supported() {
            return None;
        }
        Some(match kind {
            KernelKind::Scalar => Self { kind, gemm_q8: scalar::gemm_q8, gemm_f32: scalar::gemm_f32 },
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => Self { kind, gemm_q8: x86_avx2::gemm_q8, gemm_f32: x86_avx2::gemm_f32 },
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512Vnni => Self { kind, gemm_q8: x86_avx512::gemm_q8, gemm_f32: x86_avx512::gemm_f32 },
            #[cfg(target_arch = "aarch64")]
            KernelKind::Neon => Self { kind, gemm_q8: aarch64_neon::gemm_q8, gemm_f32: aarch64_neon::gemm_f32 },
            #[cfg(target_arch = "aarch64")]
            KernelKind::NeonDotprod => Self { kind, gemm_q8: aarch64_dotprod::gemm_q8, gemm_f32: aarch64_dotprod::gemm_f32 },
            #[cfg(target_arch = "aarch64")]
            KernelKind::NeonI8mm => Self { kind, gemm_q8: aarch64_i8mm::gemm_q8, gemm_f32: aarch64_i8mm::gemm_f32 },
            _ => return None,
        })
    }

    /// The fastest kernel set this CPU supports; `MOBILEMOE_KERNEL=<name>` overrides it
    /// (ignored if unsupported).
    pub fn best() -> Self {
        if let Some(k) = std::env::var("MOBILEMOE_KERNEL").ok().and_then(|s| KernelKind::from_name(&s)) {
            if let Some(ks) = Self::get(k) {
                return ks;
            }
        }
        // The last available set, except that `neon-i8mm` is not preferred over `neon-dotprod`:
        // its smmla path executes as many or more instructions (docs/aarch64.md: equal at decode,
        // 4% more for prefill), so the fastest path per phase is sdot today.
        Self::available().into_iter().rev().find(|k| k.kind != KernelKind::NeonI8mm).expect("scalar is always available")
    }

    /// Every kernel set this CPU supports, slowest (scalar) first.
    pub fn available() -> Vec<Self> {
        KernelKind::ALL.iter().filter_map(|&k| Self::get(k)).collect()
    }

    /// Q8 GEMM on `tiles` into `out` (row stride `ldo`; see module docs). Returns false (and does
    /// nothing) on a contract violation, so a bad call can never read or write out of bounds.
    pub fn gemm_q8(&self, w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: &mut [f32], ldo: usize) -> bool {
        // SAFETY: `out` is borrowed mutably for the call: alive, and written by no one else.
        unsafe { self.gemm_q8_raw(w, tiles, a, OutPtr::new(out, ldo)) }
    }

    /// Exact fp32 GEMM on `tiles` into `out` (row stride `ldo`). Returns false on a contract
    /// violation.
    pub fn gemm_f32(&self, w: &PackedRef<'_>, tiles: Range<usize>, x: &[f32], m: usize, out: &mut [f32], ldo: usize) -> bool {
        // SAFETY: as in `gemm_q8`.
        unsafe { self.gemm_f32_raw(w, tiles, x, m, OutPtr::new(out, ldo)) }
    }

    /// [`Self::gemm_q8`] through a shared output pointer (pool threads writing disjoint tiles).
    ///
    /// # Safety
    /// The buffer `out` was built from is alive for the call, and no other thread reads or
    /// writes the (row, column) elements of `tiles` (rows `0..a.m`) meanwhile. Sizes are checked.
    pub unsafe fn gemm_q8_raw(&self, w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) -> bool {
        let ok = check_call(w, &tiles, a.m, a.k, &out)
            && a.group == w.spec.group
            && a.q.len() == a.m * a.k
            && a.scale.len() == a.m
            && a.zp.len() == a.m
            && a.zp.iter().all(|&z| (-128..=127).contains(&z))
            && a.gsum.len() == a.m * (a.k / a.group);
        if ok {
            // SAFETY: contract checked above; `self` was built by `get`, which checked the ISA.
            unsafe { (self.gemm_q8)(w, tiles, a, out) }
        }
        ok
    }

    /// [`Self::gemm_f32`] through a shared output pointer.
    ///
    /// # Safety
    /// As [`Self::gemm_q8_raw`].
    pub unsafe fn gemm_f32_raw(&self, w: &PackedRef<'_>, tiles: Range<usize>, x: &[f32], m: usize, out: OutPtr) -> bool {
        let ok = check_call(w, &tiles, m, w.spec.k, &out) && x.len() == m * w.spec.k;
        if ok {
            // SAFETY: as in gemm_q8.
            unsafe { (self.gemm_f32)(w, tiles, x, m, out) }
        }
        ok
    }
}
