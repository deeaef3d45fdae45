//! Perfetto trace from real `moe_ffn` calls on two threads: written to a file, parsed back with
//! the prost types, checked (names, nesting, per-thread tracks, span fields); stats and ETDump
//! phase capture on the same calls.

use mobilemoe_ops::testing::Rng;
use mobilemoe_ops::*;
use mobilemoe_runner::profiling::{self, phases, slices, PerfettoExport, PerfettoRecorder, Stats};
use mobilemoe_schema::perfetto::{trace_packet, Trace};
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;

struct SmallLayer {
    spec: MoeSpec,
    router: Vec<f32>,
    w13: PackedMatrix,
    w2: PackedMatrix,
    sh13: PackedMatrix,
    sh2: PackedMatrix,
    stacked13: (Vec<u8>, Vec<f32>),
    stacked2: (Vec<u8>, Vec<f32>),
}

impl SmallLayer {
    fn new(seed: u64) -> Self {
        let spec = MoeSpec {
            dim: 64,
            hidden: 32,
            shared_hidden: 32,
            group: 32,
            bits: WeightBits::Int4,
            router: RouterConfig {
                num_experts: 8,
                top_k: 2,
                score_func: ScoreFunc::Softmax,
                renormalize: true,
                route_scale: 1.0,
                ..Default::default()
            },
            exact: false,
            scales_out: false,
        };
        let mut r = Rng(seed | 1);
        let mut gen = |n: usize| r.vec(n, 0.1);
        let (d, f, e) = (spec.dim, spec.hidden, spec.router.num_experts);
        let (mut a, mut b) = ((vec![], vec![]), (vec![], vec![]));
        let mut first = None;
        for _ in 0..e {
            let m13 = PackedMatrix::quantize(&gen(2 * f * d), spec.w13_spec().unwrap()).unwrap();
            let m2 = PackedMatrix::quantize(&gen(d * f), spec.w2_spec().unwrap()).unwrap();
            a.0.extend_from_slice(&m13.data);
            a.1.extend_from_slice(&m13.scales);
            b.0.extend_from_slice(&m2.data);
            b.1.extend_from_slice(&m2.scales);
            first.get_or_insert((m13, m2));
        }
        let (w13, w2) = first.unwrap();
        let sh13 = PackedMatrix::quantize(&gen(2 * 32 * d), spec.shared_w13_spec().unwrap()).unwrap();
        let sh2 = PackedMatrix::quantize(&gen(d * 32), spec.shared_w2_spec().unwrap()).unwrap();
        let router = gen(e * d).iter().map(|v| v * 40.0).collect();
        SmallLayer { spec, router, w13, w2, sh13, sh2, stacked13: a, stacked2: b }
    }

    fn run(&self, x: &[f32], t: usize, scratch: &mut MoeScratch, pool: &ThreadPool) -> Vec<f32> {
        let _ = (&self.w13, &self.w2);
        let w = MoeWeights {
            router_w: &self.router,
            expert_bias: None,
            w13: &self.stacked13.0,
            w13_scales: (&self.stacked13.1).into(),
            w2: &self.stacked2.0,
            w2_scales: (&self.stacked2.1).into(),
            shared: Some(SharedExpert { w13: self.sh13.as_ref(), w2: self.sh2.as_ref(), gate: None }),
        };
        let mut out = vec![0f32; t * self.spec.dim];
        moe_ffn(&self.spec, &w, x, t, &mut out, scratch, pool, &Kernels::best()).unwrap();
        out
    }
}

/// Two "layers" x `calls` forward passes of `t` tokens, each layer inside a `layer` span.
fn forward(layers: &[SmallLayer], calls: usize, t: usize, record_routing: bool) {
    let pool = ThreadPool::new(2);
    let mut scratch = MoeScratch::default();
    let mut r = Rng(7);
    for _ in 0..calls {
        let _p = tracing::debug_span!("forward", tokens = t).entered();
        let mut x = r.vec(t * 64, 1.0);
        for (i, l) in layers.iter().enumerate() {
            let _l = tracing::debug_span!("layer", layer = i).entered();
            x = l.run(&x, t, &mut scratch, &pool);
            if record_routing {
                profiling::record_routing(i as i64, &scratch.last_counts);
            }
        }
    }
}

const PHASES: [&str; 7] = ["route", "permute", "quantize", "gate_up", "act", "down", "scatter"];

#[test]
fn perfetto_trace_from_moe_calls() {
    let layers = vec![SmallLayer::new(1), SmallLayer::new(2)];
    let (rec, layer) = PerfettoRecorder::new(4096);
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || forward(&layers, 3, 4, false));
    std::thread::scope(|sc| {
        std::thread::Builder::new()
            .name("second".into())
            .spawn_scoped(sc, || tracing::dispatcher::with_default(&dispatch, || forward(&layers, 2, 1, false)))
            .unwrap();
    });

    let path = std::env::temp_dir().join(format!("mobilemoe_trace_{}.pftrace", std::process::id()));
    let recording = profiling::finish(rec, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).ok();
    let trace = Trace::decode(&bytes[..]).expect("the file decodes as perfetto.protos.Trace");

    // Tracks: one process, two threads with distinct tids, parented to the process.
    let mut process = None;
    let mut threads = vec![];
    for p in &trace.packet {
        if let Some(trace_packet::Data::TrackDescriptor(d)) = &p.data {
            if let Some(pd) = &d.process {
                assert_eq!(pd.pid, Some(std::process::id() as i32));
                process = d.uuid;
            }
            if let Some(td) = &d.thread {
                threads.push((d.uuid.unwrap(), d.parent_uuid, td.tid.unwrap(), td.thread_name.clone().unwrap()));
            }
        }
    }
    assert!(process.is_some());
    assert_eq!(threads.len(), 2, "{threads:?}");
    assert_ne!(threads[0].2, threads[1].2);
    assert!(threads.iter().all(|t| t.1 == process));
    assert!(threads.iter().any(|t| t.3 == "second"));

    let sl = slices(&trace).expect("well-formed slices");
    for (uuid, _, _, name) in &threads {
        let on: Vec<_> = sl.iter().filter(|s| s.track_uuid == *uuid).collect();
        let calls = if name == "second" { 2 } else { 3 };
        let fwd: Vec<_> = on.iter().filter(|s| s.name == "forward").collect();
        assert_eq!(fwd.len(), calls);
        assert!(fwd.iter().all(|s| s.depth == 0));
        let tokens = if name == "second" { 1 } else { 4 };
        assert!(fwd.iter().all(|s| s.args.contains(&("tokens".into(), tokens))), "{:?}", fwd[0].args);
        let lay: Vec<_> = on.iter().filter(|s| s.name == "layer").collect();
        assert_eq!(lay.len(), 2 * calls);
        assert!(lay.iter().all(|s| s.depth == 1));
        let moe: Vec<_> = on.iter().filter(|s| s.name == "moe_ffn").collect();
        assert_eq!(moe.len(), 2 * calls);
        for (i, m) in moe.iter().enumerate() {
            assert_eq!(m.depth, 2);
            assert!(m.args.contains(&("tokens".into(), tokens)) && m.args.contains(&("experts".into(), 8)), "{:?}", m.args);
            // The enclosing layer slice has the layer index and contains the call.
            let l = lay[i];
            assert!(l.args.contains(&("layer".into(), (i % 2) as i64)));
            assert!(l.ts <= m.ts && m.ts + m.dur <= l.ts + l.dur);
            // Children: exactly the phases, in order, inside the call.
            let kids: Vec<_> = on.iter().filter(|s| s.depth == 3 && s.ts >= m.ts && s.ts + s.dur <= m.ts + m.dur).collect();
            assert_eq!(kids.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), PHASES);
            assert!(kids.windows(2).all(|w| w[0].ts + w[0].dur <= w[1].ts));
        }
    }
    // Tracks are per thread: nothing on track 0 (the implicit global track).
    assert!(sl.iter().all(|s| threads.iter().any(|t| t.0 == s.track_uuid)));
    assert!(recording.threads.iter().all(|t| t.dropped == 0));

    // Stats from the same recording: both layers, every phase, shares add up to <= 100%.
    let st = Stats::phases_only(&recording);
    assert_eq!(st.layers.len(), 2);
    for (l, t) in &st.layers {
        assert!(l.is_some());
        assert_eq!(t.calls, 5);
        assert!(PHASES.iter().all(|p| t.phase_ns.get(*p).copied().unwrap_or(0) > 0), "{t:?}");
        assert!(t.phase_ns.values().sum::<u64>() <= t.moe_ns);
    }
    assert_eq!(st.spans["moe_ffn"].count, 10);
    let table = st.table();
    assert!(table.contains("gate_up") && table.contains("moe_ffn"), "{table}");
}

#[test]
fn full_buffer_drops_without_corrupting() {
    let layers = vec![SmallLayer::new(3)];
    let (rec, layer) = PerfettoRecorder::new(20); // fewer events than one call produces
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || forward(&layers, 2, 2, false));
    let r = rec.stop();
    assert!(r.threads[0].dropped > 0);
    assert!(r.threads[0].events.len() <= 20);
    let trace = Trace::decode(&r.to_perfetto().encode_to_vec()[..]).unwrap();
    slices(&trace).expect("open slices are closed, so the trace still nests");
}

#[test]
fn routing_stats_and_json() {
    let layers = vec![SmallLayer::new(4), SmallLayer::new(5)];
    profiling::enable_routing_stats(true);
    forward(&layers, 3, 5, true);
    profiling::enable_routing_stats(false);
    let r = profiling::routing_snapshot();
    assert_eq!(r.len(), 2);
    for l in r.values() {
        assert_eq!(l.calls, 3);
        assert_eq!(l.tokens_per_expert.len(), 8);
        assert_eq!(l.tokens_per_expert.iter().sum::<u64>(), 3 * 5 * 2);
    }
    let st = Stats { routing: r, ..Default::default() };
    let table = st.table();
    assert!(table.contains("Expert load"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&st.to_json()).unwrap();
    let routing = json["routing"].as_array().unwrap();
    assert_eq!(routing.len(), 2, "{json}");
    for (l, (layer, counts)) in routing.iter().zip(&st.routing) {
        assert_eq!(l["layer"], *layer);
        assert_eq!(l["calls"], 3);
        let tokens: Vec<u64> = l["tokens_per_expert"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(tokens, counts.tokens_per_expert);
    }
    assert_eq!(json["phases"][0], "route");
    assert!(json["layers"].as_array().unwrap().is_empty() && json["spans"].as_object().unwrap().is_empty());
}

#[test]
fn etdump_phase_capture() {
    let layers = vec![SmallLayer::new(6), SmallLayer::new(7)];
    let ((), ev) = phases::capture(|| forward(&layers, 1, 3, false));
    // forward + 2 x (layer + moe_ffn + 7 phases)
    assert_eq!(ev.len(), 1 + 2 * 9, "{ev:?}");
    let gate_up: Vec<_> = ev.iter().filter(|e| e.name == "gate_up").collect();
    assert_eq!(gate_up.iter().map(|e| e.layer).collect::<Vec<_>>(), [0, 1]);
    assert!(gate_up.iter().all(|e| e.depth == 3 && e.end_ns >= e.start_ns));
    assert_eq!(ev.last().unwrap().name, "forward");
    // Outside capture nothing is collected.
    let ((), ev2) = phases::capture(|| ());
    assert!(ev2.is_empty());
}
