//! The C ABI (docs/DESIGN.md section 8; backend/src/capi.rs): `mobilemoe_moe_ffn`,
//! `mobilemoe_int4_linear`, `mobilemoe_pack_weights` with arbitrary attributes (any i64), lengths
//! that disagree with the shapes, null pointers with non-zero lengths and misaligned f32 pointers.
//! Pointers always cover their claimed length (the documented caller contract). Every call must
//! return 0 or 1 with a message — never 2 (a panic caught at the boundary) and never crash.

use crate::gen::{ByteFill, FloatFill};
use arbitrary::{Arbitrary, Unstructured};
use mobilemoe_executorch::capi::{mobilemoe_int4_linear, mobilemoe_last_error, mobilemoe_moe_ffn, mobilemoe_pack_weights};
use mobilemoe_executorch::{MobileMoeFfnArgs, MobileMoeLinearArgs};

/// How one pointer argument is passed.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Buf {
    /// Claimed length: the right one (`sel < 200`), off by `delta`, or 0.
    sel: u8,
    delta: i8,
    /// 0..=250: valid pointer; 251..=253: null; 254..: misaligned (f32 buffers).
    ptr: u8,
}

struct Arg {
    f: Vec<f32>,
    b: Vec<u8>,
}

fn claimed(exp: i64, b: Buf) -> u64 {
    let exp = exp.clamp(0, 1 << 16) as u64;
    match b.sel {
        0..=199 => exp,
        200..=239 => (exp as i64 + b.delta as i64).clamp(0, 1 << 17) as u64,
        _ => 0,
    }
}

impl Arg {
    fn f32(len: u64, fill: &FloatFill) -> Self {
        // One spare element so a misaligned pointer still covers `len` floats.
        let b: Vec<u8> = fill.make(len as usize + 1).iter().flat_map(|v| v.to_le_bytes()).collect();
        Arg { f: vec![], b }
    }
    fn u8(len: u64, fill: &ByteFill) -> Self {
        Arg { f: vec![], b: fill.make(len as usize) }
    }
    fn out(len: u64) -> Self {
        Arg { f: vec![0f32; len as usize + 1], b: vec![] }
    }
    fn ptr_f32(&self, b: Buf, len: u64) -> (*const f32, u64) {
        match b.ptr {
            251..=253 => (std::ptr::null(), len),
            // Misaligned: one byte in (reads stay inside the buffer: it has a spare float).
            254.. if len > 0 => (unsafe { self.b.as_ptr().add(1) } as *const f32, len),
            _ => {
                // Copy to an aligned Vec<f32>, leaked into self via f is not possible (&self): use b if aligned.
                let p = self.b.as_ptr();
                if (p as usize).is_multiple_of(4) {
                    (p as *const f32, len)
                } else {
                    (std::ptr::null(), 0)
                }
            }
        }
    }
    fn ptr_u8(&self, b: Buf, len: u64) -> (*const u8, u64) {
        match b.ptr {
            251..=253 => (std::ptr::null(), len),
            _ => (self.b.as_ptr(), len),
        }
    }
    fn ptr_out(&mut self, b: Buf, len: u64) -> (*mut f32, u64) {
        match b.ptr {
            251..=253 => (std::ptr::null_mut(), len),
            _ => (self.f.as_mut_ptr(), len),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct CapiInput {
    which: u8,
    attrs: [i64; 8],
    attr_raw: u8,
    score_func: i32,
    flags: u8,
    route_scale: f32,
    bufs: [Buf; 14],
    floats: FloatFill,
    bytes: ByteFill,
}

fn attr(v: i64, raw: bool, small: impl Fn(i64) -> i64) -> i64 {
    if raw {
        v
    } else {
        small(v.rem_euclid(256))
    }
}

pub fn capi(data: &[u8]) {
    let Ok(inp) = CapiInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let a = inp.attrs;
    let raw = |i: usize| inp.attr_raw & (1 << i) != 0 && inp.attr_raw >= 0xF0;
    let group = attr(a[0], raw(0), |v| [32, 64, 128, 256, 0, 48][(v % 6) as usize]);
    let gm = group.max(1);
    let dim = attr(a[1], raw(1), |v| gm.saturating_mul(1 + v % 2));
    let hidden = attr(a[2], raw(2), |v| gm.saturating_mul(1 + v % 2));
    let experts = attr(a[3], raw(3), |v| v % 6);
    let top_k = attr(a[4], raw(4), |v| v % 4);
    let bits = attr(a[5], raw(5), |v| [4, 8, 4, 8, 0, 3][(v % 6) as usize]);
    let tokens = attr(a[6], raw(6), |v| v % 6);
    let shared = attr(a[7], false, |v| if v % 3 == 0 { gm } else { 0 });
    // Expected sizes (saturating; the C side must check, the harness only picks lengths near them).
    let np = |n: i64| n.max(0).saturating_add(15) / 16 * 16;
    let sz = |n: i64, k: i64| -> (i64, i64) {
        let e = np(n).saturating_mul(k.max(0));
        (if bits == 8 { e } else { e / 2 }, if gm > 0 { e / gm } else { 0 })
    };
    let (d13, s13) = sz(hidden.saturating_mul(2), dim);
    let (d2, s2) = sz(dim, hidden);
    let (sd13, ss13) = sz(shared.saturating_mul(2), dim);
    let (sd2, ss2) = sz(dim, shared);
    let b = inp.bufs;
    let rc = match inp.which % 3 {
        0 => {
            let lens = [
                claimed(tokens.saturating_mul(dim), b[0]),
                claimed(experts.saturating_mul(dim), b[1]),
                claimed(experts, b[2]),
                claimed(experts.saturating_mul(d13), b[3]),
                claimed(experts.saturating_mul(s13), b[4]),
                claimed(experts.saturating_mul(d2), b[5]),
                claimed(experts.saturating_mul(s2), b[6]),
                claimed(sd13, b[7]),
                claimed(ss13, b[8]),
                claimed(sd2, b[9]),
                claimed(ss2, b[10]),
                claimed(dim, b[11]),
                claimed(tokens.saturating_mul(dim), b[12]),
            ];
            let x = Arg::f32(lens[0], &inp.floats);
            let rw = Arg::f32(lens[1], &inp.floats);
            let eb = Arg::f32(lens[2], &inp.floats);
            let w13 = Arg::u8(lens[3], &inp.bytes);
            let w13s = Arg::f32(lens[4], &inp.floats);
            let w2 = Arg::u8(lens[5], &inp.bytes);
            let w2s = Arg::f32(lens[6], &inp.floats);
            let sw13 = Arg::u8(lens[7], &inp.bytes);
            let sw13s = Arg::f32(lens[8], &inp.floats);
            let sw2 = Arg::u8(lens[9], &inp.bytes);
            let sw2s = Arg::f32(lens[10], &inp.floats);
            let sg = Arg::f32(lens[11], &inp.floats);
            let mut out = Arg::out(lens[12]);
            let with_bias = inp.flags & 1 != 0;
            let with_shared = shared > 0 || inp.flags & 2 != 0;
            let opt = |on: bool, p: (*const f32, u64)| if on { p } else { (std::ptr::null(), 0) };
            let optu = |on: bool, p: (*const u8, u64)| if on { p } else { (std::ptr::null(), 0) };
            let (xp, xl) = x.ptr_f32(b[0], lens[0]);
            let (rp, rl) = rw.ptr_f32(b[1], lens[1]);
            let (ep, el) = opt(with_bias, eb.ptr_f32(b[2], lens[2]));
            let (w13p, w13l) = w13.ptr_u8(b[3], lens[3]);
            let (w13sp, w13sl) = w13s.ptr_f32(b[4], lens[4]);
            let (w2p, w2l) = w2.ptr_u8(b[5], lens[5]);
            let (w2sp, w2sl) = w2s.ptr_f32(b[6], lens[6]);
            let (s13p, s13l) = optu(with_shared, sw13.ptr_u8(b[7], lens[7]));
            let (s13sp, s13sl) = opt(with_shared, sw13s.ptr_f32(b[8], lens[8]));
            let (s2p, s2l) = optu(with_shared, sw2.ptr_u8(b[9], lens[9]));
            let (s2sp, s2sl) = opt(with_shared, sw2s.ptr_f32(b[10], lens[10]));
            let (gp, gl) = opt(with_shared && inp.flags & 4 != 0, sg.ptr_f32(b[11], lens[11]));
            let (op, ol) = out.ptr_out(b[12], lens[12]);
            let args = MobileMoeFfnArgs {
                x: xp,
                x_len: xl,
                tokens: tokens as u64,
                router_weight: rp,
                router_weight_len: rl,
                expert_bias: ep,
                expert_bias_len: el,
                w13: w13p,
                w13_len: w13l,
                w13_scales: w13sp,
                w13_scales_len: w13sl,
                w2: w2p,
                w2_len: w2l,
                w2_scales: w2sp,
                w2_scales_len: w2sl,
                shared_w13: s13p,
                shared_w13_len: s13l,
                shared_w13_scales: s13sp,
                shared_w13_scales_len: s13sl,
                shared_w2: s2p,
                shared_w2_len: s2l,
                shared_w2_scales: s2sp,
                shared_w2_scales_len: s2sl,
                shared_gate: gp,
                shared_gate_len: gl,
                num_experts: experts,
                top_k,
                dim,
                hidden_dim: hidden,
                shared_hidden_dim: if raw(7) { a[7] } else { shared },
                group_size: group,
                weight_bits: bits,
                // low byte: the score function (0..=4 valid, 5 not); higher bits: the v4 routing
                score_func: (inp.score_func & 0xff).rem_euclid(6),
                renormalize: (inp.flags >> 3 & 1) as i32,
                route_scale: if inp.flags & 16 != 0 { inp.route_scale } else { 1.0 },
                exact: (inp.flags >> 5 & 1) as i32,
                out: op,
                out_len: ol,
                num_groups: 1 + (inp.score_func >> 8 & 7) as i64,
                top_groups: 1 + (inp.score_func >> 11 & 7) as i64,
                group_score: inp.score_func >> 14 & 3,
                weight_input: inp.score_func >> 16 & 1,
                jitter_eps: if inp.score_func >> 17 & 1 != 0 { inp.route_scale } else { 0.0 },
                renorm_eps: if inp.score_func >> 18 & 1 != 0 { inp.route_scale } else { 0.0 },
                renorm_min: if inp.score_func >> 19 & 1 != 0 { inp.route_scale } else { f32::MIN_POSITIVE },
                // output-grouped expert scales (format version 5): other scale counts are expected
                scales_out: (inp.score_func >> 20 & 1) as i32,
            };
            unsafe { mobilemoe_moe_ffn(&args) }
        }
        1 => {
            let (n, k) = (hidden, dim);
            let (dd, ss) = sz(n, k);
            let lens = [
                claimed(tokens.saturating_mul(k), b[0]),
                claimed(dd, b[1]),
                claimed(ss, b[2]),
                claimed(n, b[3]),
                claimed(tokens.saturating_mul(n), b[4]),
            ];
            let x = Arg::f32(lens[0], &inp.floats);
            let w = Arg::u8(lens[1], &inp.bytes);
            let s = Arg::f32(lens[2], &inp.floats);
            let bi = Arg::f32(lens[3], &inp.floats);
            let mut out = Arg::out(lens[4]);
            let (xp, xl) = x.ptr_f32(b[0], lens[0]);
            let (wp, wl) = w.ptr_u8(b[1], lens[1]);
            let (sp, sl) = s.ptr_f32(b[2], lens[2]);
            let (bp, bl) = if inp.flags & 1 != 0 { bi.ptr_f32(b[3], lens[3]) } else { (std::ptr::null(), 0) };
            let (op, ol) = out.ptr_out(b[4], lens[4]);
            let args = MobileMoeLinearArgs {
                x: xp,
                x_len: xl,
                rows: tokens as u64,
                weight: wp,
                weight_len: wl,
                scales: sp,
                scales_len: sl,
                bias: bp,
                bias_len: bl,
                in_features: k,
                out_features: n,
                group_size: group,
                weight_bits: bits,
                exact: (inp.flags >> 5 & 1) as i32,
                out: op,
                out_len: ol,
            };
            unsafe { mobilemoe_int4_linear(&args) }
        }
        _ => {
            let (n, k) = (hidden, dim);
            let (dd, ss) = sz(n, k);
            let lens = [
                claimed(n.saturating_mul(k), b[0]),
                claimed(if gm > 0 { n.saturating_mul(k) / gm } else { 0 }, b[1]),
                claimed(dd, b[2]),
                claimed(ss, b[3]),
            ];
            let q: Vec<i8> = inp.bytes.make(lens[0] as usize).into_iter().map(|v| (v as i8) >> (inp.flags & 4)).collect();
            let s = Arg::f32(lens[1], &inp.floats);
            let mut d = vec![0u8; lens[2] as usize];
            let mut so = Arg::out(lens[3]);
            let (sp, sl) = s.ptr_f32(b[1], lens[1]);
            let (sop, sol) = so.ptr_out(b[3], lens[3]);
            let qp = if b[0].ptr >= 251 && b[0].ptr <= 253 { std::ptr::null() } else { q.as_ptr() };
            let dp = if b[2].ptr >= 251 && b[2].ptr <= 253 { std::ptr::null_mut() } else { d.as_mut_ptr() };
            unsafe { mobilemoe_pack_weights(qp, lens[0], sp, sl, n, k, group, bits, dp, lens[2], sop, sol) }
        }
    };
    let msg = unsafe { std::ffi::CStr::from_ptr(mobilemoe_last_error()) }.to_string_lossy().into_owned();
    // 0 or a typed error; never Internal (a caught panic) and never a number outside ErrorCode.
    let code = mobilemoe_executorch::ErrorCode::from_i32(rc);
    assert!(rc == 0 || code.is_some_and(|c| c != mobilemoe_executorch::ErrorCode::Internal), "C ABI returned {rc}: {msg}");
    if rc != 0 {
        assert!(!msg.is_empty(), "error without a message");
    }
}
