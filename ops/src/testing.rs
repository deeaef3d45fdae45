//! Deterministic pseudo-random data for tests, benchmarks and demos (one generator for every crate
//! of the workspace, so no test depends on a rand crate and sequences stay reproducible).

/// xorshift64 (shifts 13, 7, 17). The seed must be non-zero (zero stays zero).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1) (24 random bits).
    pub fn f(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    /// Fills `v` with random bytes (8 per step, little-endian).
    pub fn fill_bytes(&mut self, v: &mut [u8]) {
        for c in v.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn sequence_is_the_documented_xorshift() {
        let mut r = Rng(1);
        // 1 -> x ^= x << 13 -> 8193; ^= >> 7 -> 8257; ^= << 17 -> 1082269761.
        assert_eq!(r.next_u64(), 1_082_269_761);
        let v = Rng(7).vec(1000, 2.0);
        assert!(v.iter().all(|x| (-2.0..2.0).contains(x)) && v.iter().any(|&x| x < -1.9) && v.iter().any(|&x| x > 1.9));
    }
}
