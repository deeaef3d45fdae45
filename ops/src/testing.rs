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

/// CPU time of the whole process in seconds (all threads, the pool's spinning included): the
/// benchmark binaries report it beside wall time.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn process_cpu_s() -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
    }
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_PROCESS_CPUTIME_ID = 2 on Linux and Android.
    unsafe { clock_gettime(2, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// MobileMoE-S's MoE layer (as published) for the benchmark and demo binaries: D=768, 60 experts
/// x F=384, top-4 sigmoid routing renormalised with route scale 2.5, ungated shared expert
/// F=1536, INT4 group 32, Q8.
pub fn s_like_moe_spec() -> crate::MoeSpec {
    crate::MoeSpec {
        dim: 768,
        hidden: 384,
        shared_hidden: 1536,
        group: 32,
        bits: crate::WeightBits::Int4,
        router: crate::RouterConfig {
            num_experts: 60,
            top_k: 4,
            score_func: crate::ScoreFunc::Sigmoid,
            renormalize: true,
            route_scale: 2.5,
            renorm_eps: 1e-20,
            ..Default::default()
        },
        exact: false,
        scales_out: false,
    }
}

/// The owned random weights of an [`s_like_moe_spec`] layer (the bench and demo binaries).
pub struct SLikeLayer {
    pub spec: crate::MoeSpec,
    router: Vec<f32>,
    bias: Option<Vec<f32>>,
    w13: Vec<u8>,
    w13_scales: Vec<f32>,
    w2: Vec<u8>,
    w2_scales: Vec<f32>,
    shared_w13: crate::PackedMatrix,
    shared_w2: crate::PackedMatrix,
}

impl SLikeLayer {
    /// Draws from `r`, in order: the experts' gate/up then down weights (every expert its own
    /// draws if `distinct_experts`, else one expert's bytes for all: the same bytes streamed per
    /// expert), the shared expert's, the router, and a selection bias if `with_bias`.
    pub fn random(r: &mut Rng, distinct_experts: bool, with_bias: bool) -> Self {
        let spec = s_like_moe_spec();
        let (d, f, e, fs) = (spec.dim, spec.hidden, spec.router.num_experts, spec.shared_hidden);
        let quantize = |r: &mut Rng, n: usize, s: crate::Result<crate::MatrixSpec>| {
            crate::PackedMatrix::quantize(&r.vec(n, 0.05), s.unwrap()).unwrap()
        };
        let (mut w13, mut w13_scales, mut w2, mut w2_scales) = (vec![], vec![], vec![], vec![]);
        for _ in 0..if distinct_experts { e } else { 1 } {
            let a = quantize(r, 2 * f * d, spec.w13_spec());
            w13.extend(a.data);
            w13_scales.extend(a.scales);
            let b = quantize(r, d * f, spec.w2_spec());
            w2.extend(b.data);
            w2_scales.extend(b.scales);
        }
        if !distinct_experts {
            (w13, w13_scales, w2, w2_scales) = (w13.repeat(e), w13_scales.repeat(e), w2.repeat(e), w2_scales.repeat(e));
        }
        let shared_w13 = quantize(r, 2 * fs * d, spec.shared_w13_spec());
        let shared_w2 = quantize(r, d * fs, spec.shared_w2_spec());
        let router = r.vec(e * d, 0.1);
        let bias = with_bias.then(|| r.vec(e, 0.1));
        Self { spec, router, bias, w13, w13_scales, w2, w2_scales, shared_w13, shared_w2 }
    }

    pub fn weights(&self) -> crate::MoeWeights<'_> {
        crate::MoeWeights {
            router_w: &self.router,
            expert_bias: self.bias.as_deref(),
            w13: &self.w13,
            w13_scales: (&self.w13_scales).into(),
            w2: &self.w2,
            w2_scales: (&self.w2_scales).into(),
            shared: Some(crate::SharedExpert { w13: self.shared_w13.as_ref(), w2: self.shared_w2.as_ref(), gate: None }),
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
