//! Turning a few fuzzer bytes into large, reproducible buffers and "claimed" dimensions.
//!
//! Buffers are filled by a seeded PRNG (so a 20-byte input can describe a 100 KB weight tensor),
//! then a handful of fuzzer-chosen positions are overwritten with special values (NaN, +-inf,
//! subnormals, f32::MAX, raw bit patterns). Dimensions are mostly small but sometimes an arbitrary
//! u64 ("huge claimed size"); buffers are never allocated beyond `CAP_ELEMS`, so a huge claim is
//! always paired with a buffer that does not match it and the op must return a typed error.

use arbitrary::Arbitrary;

/// Largest buffer (elements) a harness allocates.
pub const CAP_ELEMS: usize = 1 << 16;

/// splitmix64.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Special {
    NaN,
    Inf,
    NegInf,
    Zero,
    NegZero,
    Max,
    Min,
    MinPositive,
    Subnormal,
    Pow2(i8),
    Raw(u32),
}

impl Special {
    pub fn value(self) -> f32 {
        match self {
            Self::NaN => f32::NAN,
            Self::Inf => f32::INFINITY,
            Self::NegInf => f32::NEG_INFINITY,
            Self::Zero => 0.0,
            Self::NegZero => -0.0,
            Self::Max => f32::MAX,
            Self::Min => f32::MIN,
            Self::MinPositive => f32::MIN_POSITIVE,
            Self::Subnormal => f32::from_bits(1),
            Self::Pow2(e) => 2f32.powi(e as i32),
            Self::Raw(b) => f32::from_bits(b),
        }
    }
}

/// A float buffer description: PRNG values in [-2^e, 2^e) plus up to 8 special values.
#[derive(Arbitrary, Debug, Clone)]
pub struct FloatFill {
    pub seed: u64,
    pub scale_exp: i8,
    pub specials: Vec<(u16, Special)>,
}

impl FloatFill {
    pub fn make(&self, n: usize) -> Vec<f32> {
        let mut r = Rng(self.seed);
        let scale = 2f32.powi((self.scale_exp as i32).clamp(-24, 24));
        let mut v: Vec<f32> = (0..n).map(|_| r.f32() * scale).collect();
        if n > 0 {
            for &(i, s) in self.specials.iter().take(8) {
                v[i as usize % n] = s.value();
            }
        }
        v
    }
    /// True if `make` may produce a non-finite or huge value.
    pub fn has_specials(&self) -> bool {
        !self.specials.is_empty() || self.scale_exp > 24
    }
    /// Positive values (scales): |PRNG| * 2^e, specials as given.
    pub fn make_scales(&self, n: usize) -> Vec<f32> {
        let mut v = self.make(n);
        let nspec = self.specials.len().min(8);
        // Only the PRNG part is made positive; specials keep their sign (negative scales are legal
        // bit patterns in a blob and must not crash anything).
        let mut is_special = vec![false; n];
        if n > 0 {
            for &(i, _) in self.specials.iter().take(nspec) {
                is_special[i as usize % n] = true;
            }
        }
        for (x, s) in v.iter_mut().zip(is_special) {
            if !s {
                *x = x.abs() * (1.0 / 64.0);
            }
        }
        v
    }
}

/// A byte buffer description (packed weights: every byte pattern is a valid INT4/INT8 encoding).
#[derive(Arbitrary, Debug, Clone)]
pub struct ByteFill {
    pub seed: u64,
    pub specials: Vec<(u16, u8)>,
}

impl ByteFill {
    pub fn make(&self, n: usize) -> Vec<u8> {
        let mut r = Rng(self.seed);
        let mut v: Vec<u8> = (0..n).map(|_| r.next_u64() as u8).collect();
        if n > 0 {
            for &(i, b) in self.specials.iter().take(8) {
                v[i as usize % n] = b;
            }
        }
        v
    }
}

/// A claimed dimension: `small(sel)` most of the time, an arbitrary u64 when `sel >= 248`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Dim {
    pub sel: u8,
    pub raw: u64,
}

impl Dim {
    /// `f(sel)` for a small value, else `raw` (as usize).
    pub fn get(self, small: impl Fn(u8) -> usize) -> usize {
        if self.sel >= 248 {
            self.raw as usize
        } else {
            small(self.sel)
        }
    }
}

/// Group size: usually valid, sometimes 0, 16, 33, 512 or raw.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct GroupSel(pub u8, pub u16);

impl GroupSel {
    pub fn get(self) -> usize {
        match self.0 % 32 {
            28 => 0,
            29 => 16,
            30 => 33,
            31 => self.1 as usize,
            s => [32, 64, 128, 256][(s % 4) as usize],
        }
    }
}

/// Weight bits: usually 4 or 8, sometimes 0, 2, 16 or raw.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct BitsSel(pub u8);

impl BitsSel {
    pub fn get(self) -> usize {
        match self.0 % 16 {
            12 => 0,
            13 => 2,
            14 => 16,
            15 => self.0 as usize,
            s => [4, 8][(s % 2) as usize],
        }
    }
}

/// An optional length perturbation: 1 time in 8 nonzero.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Delta(pub u8, pub i8);

impl Delta {
    pub fn get(self) -> isize {
        if self.0 % 8 == 7 {
            if self.1 == 0 {
                1
            } else {
                self.1 as isize
            }
        } else {
            0
        }
    }
}

/// Length of a buffer for an op that expects `expected` elements (None: the claim overflowed):
/// `(len, matches)`. Never above `CAP_ELEMS`.
pub fn buf_len(expected: Option<usize>, delta: isize) -> (usize, bool) {
    match expected {
        Some(e) if e <= CAP_ELEMS => {
            let len = (e as isize + delta).clamp(0, CAP_ELEMS as isize) as usize;
            (len, len == e)
        }
        // Too big to allocate (or overflowed): a small buffer that cannot match.
        Some(_) | None => (delta.unsigned_abs() % 64, false),
    }
}

pub fn mul(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Bitwise equality with every NaN equal to every NaN.
pub fn same_bits(a: &[f32], b: &[f32]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(usize::MAX);
    }
    a.iter().zip(b).position(|(x, y)| !(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())))
}
