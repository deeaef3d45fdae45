//! Per-call capture of the phase spans of one delegate execution, for ExecuTorch's EventTracer
//! (ETDump): the C++ `execute` asks Rust to run the program under [`capture`] when
//! `context.event_tracer()` is non-null, then logs every [`PhaseEvent`] with
//! `event_tracer_log_profiling_delegate(tracer, name, -1, start, end)` (see docs/profiling.md).
//!
//! [`capture`] runs the closure with a scoped `tracing` dispatcher (this thread only; the ops emit
//! their spans on the calling thread). If a [`PerfettoRecorder`](super::PerfettoRecorder) was
//! installed globally, its layer is part of that dispatcher too, so `--trace` keeps the spans.

use super::recorder::{now_ns, PerfettoLayer};
use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One finished span: `name` (the span name, e.g. `gate_up`), times on [`now_ns`]'s clock,
/// `layer` (nearest enclosing `layer` field, -1 if none), nesting depth inside the capture.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseEvent {
    pub name: &'static str,
    pub start_ns: u64,
    pub end_ns: u64,
    pub layer: i64,
    pub depth: u32,
}

struct Open {
    id: u64,
    name: &'static str,
    start: u64,
    layer: i64,
}

#[derive(Default)]
struct Local {
    active: bool,
    /// (span id, layer field) of spans created but not yet entered.
    pending_layer: Vec<(u64, i64)>,
    open: Vec<Open>,
    done: Vec<PhaseEvent>,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

struct CaptureLayer;

struct LayerField(Option<i64>);
impl Visit for LayerField {
    fn record_i64(&mut self, f: &Field, v: i64) {
        if f.name() == "layer" {
            self.0 = Some(v);
        }
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        if f.name() == "layer" {
            self.0 = Some(v as i64);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for CaptureLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut v = LayerField(None);
        attrs.record(&mut v);
        if let Some(l) = v.0 {
            LOCAL.with(|c| {
                if let Ok(mut c) = c.try_borrow_mut() {
                    if c.active {
                        c.pending_layer.push((id.into_u64(), l));
                    }
                }
            });
        }
    }
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let name = ctx.metadata(id).map(|m| m.name()).unwrap_or("?");
        let start = now_ns();
        LOCAL.with(|c| {
            let Ok(mut c) = c.try_borrow_mut() else { return };
            if !c.active {
                return;
            }
            let idv = id.into_u64();
            let own = c.pending_layer.iter().rposition(|p| p.0 == idv).map(|i| c.pending_layer.swap_remove(i).1);
            let layer = own.or_else(|| c.open.last().map(|o| o.layer)).unwrap_or(-1);
            c.open.push(Open { id: idv, name, start, layer });
        });
    }
    fn on_exit(&self, id: &Id, _: Context<'_, S>) {
        let end = now_ns();
        LOCAL.with(|c| {
            let Ok(mut c) = c.try_borrow_mut() else { return };
            if let Some(i) = c.open.iter().rposition(|o| o.id == id.into_u64()) {
                let o = c.open.remove(i);
                let depth = i as u32;
                c.done.push(PhaseEvent { name: o.name, start_ns: o.start, end_ns: end, layer: o.layer, depth });
            }
        });
    }
}

static GLOBAL_RECORDER_LAYER: Mutex<Option<PerfettoLayer>> = Mutex::new(None);
static DISPATCH: OnceLock<Mutex<(bool, Dispatch)>> = OnceLock::new();

/// Called by `PerfettoRecorder::install` so that captured executions also reach the recorder.
pub(crate) fn set_global_recorder_layer(l: PerfettoLayer) {
    *GLOBAL_RECORDER_LAYER.lock().unwrap_or_else(|e| e.into_inner()) = Some(l);
}

fn dispatch() -> Dispatch {
    let rec = GLOBAL_RECORDER_LAYER.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let build = |rec: Option<PerfettoLayer>| match rec {
        Some(l) => Dispatch::new(tracing_subscriber::registry().with(CaptureLayer).with(l)),
        None => Dispatch::new(tracing_subscriber::registry().with(CaptureLayer)),
    };
    let m = DISPATCH.get_or_init(|| Mutex::new((rec.is_some(), build(rec.clone()))));
    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
    if rec.is_some() && !g.0 {
        *g = (true, build(rec));
    }
    g.1.clone()
}

/// Runs `f` and returns the spans it entered and exited on this thread, in the order they ended
/// (children before parents). Nested `capture` calls return their spans to the innermost one.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<PhaseEvent>) {
    let d = dispatch();
    let prev = LOCAL.with(|c| {
        let mut c = c.borrow_mut();
        let prev = (c.active, std::mem::take(&mut c.done), std::mem::take(&mut c.open));
        c.active = true;
        prev
    });
    let r = tracing::dispatcher::with_default(&d, f);
    let events = LOCAL.with(|c| {
        let mut c = c.borrow_mut();
        let ev = std::mem::take(&mut c.done);
        c.active = prev.0;
        c.done = prev.1;
        c.open = prev.2;
        c.pending_layer.clear();
        ev
    });
    (r, events)
}
