//! A `tracing_subscriber::Layer` that records span enter/exit (and the integer fields of new
//! spans) into per-thread, preallocated buffers.
//!
//! Cost per event when recording: one clock read (vDSO), a thread-local lookup and an uncontended
//! mutex around a `Vec::push` into reserved capacity (no allocation; when a thread's buffer is
//! full, further events of that thread are counted as dropped, never reallocated). When the
//! recorder is stopped, every hook returns after one relaxed atomic load.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Event kinds stored in [`RawEvent::kind`].
pub mod kind {
    /// Span entered; `val` = span id, `name` = span name.
    pub const BEGIN: u8 = 0;
    /// Span exited; `val` = span id.
    pub const END: u8 = 1;
    /// Integer field of a new span; `ts` = span id, `name` = field name, `val` = i64 bits.
    pub const ARG_I64: u8 = 2;
    /// Unsigned field; `val` = value.
    pub const ARG_U64: u8 = 3;
    /// Float field; `val` = f64 bits.
    pub const ARG_F64: u8 = 4;
    /// Bool field; `val` = 0 / 1.
    pub const ARG_BOOL: u8 = 5;
}

/// One recorded event (32 bytes on 64-bit targets).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawEvent {
    /// Nanoseconds on the trace clock (CLOCK_BOOTTIME on Linux/Android), or the span id for args.
    pub ts: u64,
    pub val: u64,
    pub name: &'static str,
    pub kind: u8,
}

/// The events of one thread, in the order they happened on that thread.
#[derive(Clone, Debug, Default)]
pub struct ThreadEvents {
    pub tid: i32,
    pub name: String,
    pub events: Vec<RawEvent>,
    /// Events that did not fit in the preallocated buffer.
    pub dropped: u64,
}

/// Everything recorded between [`PerfettoRecorder::install`] (or [`PerfettoRecorder::new`]) and
/// [`PerfettoRecorder::stop`].
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub pid: i32,
    pub process_name: String,
    pub threads: Vec<ThreadEvents>,
}

struct ThreadBuf {
    tid: i32,
    name: String,
    events: Mutex<Vec<RawEvent>>,
    dropped: AtomicU64,
}

struct Shared {
    id: usize,
    capacity: usize,
    enabled: AtomicBool,
    threads: Mutex<Vec<Arc<ThreadBuf>>>,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static LOCAL: RefCell<Option<(usize, Arc<ThreadBuf>)>> = const { RefCell::new(None) };
}

/// The trace clock in nanoseconds: CLOCK_BOOTTIME (Perfetto's default clock) where it exists, so
/// the trace lines up with system traces recorded at the same time; a monotonic clock elsewhere.
#[inline]
pub fn now_ns() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer; CLOCK_BOOTTIME exists since Linux 2.6.39.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

pub(crate) fn current_tid() -> i32 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::syscall(libc::SYS_gettid) as i32 }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        thread_local!(static T: i32 = NEXT.fetch_add(1, Ordering::Relaxed) as i32);
        T.with(|t| *t)
    }
}

impl Shared {
    #[inline]
    fn with_buf(&self, f: impl FnOnce(&ThreadBuf)) {
        LOCAL.with(|l| {
            let mut l = match l.try_borrow_mut() {
                Ok(l) => l,
                Err(_) => return, // re-entrant call from inside a hook: ignore
            };
            match &*l {
                Some((id, buf)) if *id == self.id => f(buf),
                _ => {
                    let t = std::thread::current();
                    let buf = Arc::new(ThreadBuf {
                        tid: current_tid(),
                        name: t.name().map(str::to_owned).unwrap_or_else(|| format!("thread {:?}", t.id())),
                        events: Mutex::new(Vec::with_capacity(self.capacity)),
                        dropped: AtomicU64::new(0),
                    });
                    self.threads.lock().unwrap_or_else(|e| e.into_inner()).push(buf.clone());
                    f(&buf);
                    *l = Some((self.id, buf));
                }
            }
        })
    }

    #[inline]
    fn push(&self, ev: RawEvent) {
        self.with_buf(|b| {
            let mut v = b.events.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() < v.capacity() {
                v.push(ev);
            } else {
                b.dropped.fetch_add(1, Ordering::Relaxed);
            }
        })
    }
}

/// The layer; see the module docs. Obtain it with [`PerfettoRecorder::new`].
#[derive(Clone)]
pub struct PerfettoLayer {
    shared: Arc<Shared>,
}

struct ArgVisitor<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Visit for ArgVisitor<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.shared.push(RawEvent { ts: self.id, val: value as u64, name: field.name(), kind: kind::ARG_I64 });
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.shared.push(RawEvent { ts: self.id, val: value, name: field.name(), kind: kind::ARG_U64 });
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.shared.push(RawEvent { ts: self.id, val: value.to_bits(), name: field.name(), kind: kind::ARG_F64 });
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.shared.push(RawEvent { ts: self.id, val: value as u64, name: field.name(), kind: kind::ARG_BOOL });
    }
    // Strings and Debug values are not recorded (formatting would cost more than the span).
    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

impl<S> Layer<S> for PerfettoLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        if !self.shared.enabled.load(Ordering::Relaxed) || attrs.fields().is_empty() {
            return;
        }
        attrs.record(&mut ArgVisitor { shared: &self.shared, id: id.into_u64() });
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if !self.shared.enabled.load(Ordering::Relaxed) {
            return;
        }
        let name = ctx.metadata(id).map(|m| m.name()).unwrap_or("?");
        self.shared.push(RawEvent { ts: now_ns(), val: id.into_u64(), name, kind: kind::BEGIN });
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        if !self.shared.enabled.load(Ordering::Relaxed) {
            return;
        }
        self.shared.push(RawEvent { ts: now_ns(), val: id.into_u64(), name: "", kind: kind::END });
    }
}

/// Records `tracing` spans into memory; the runner crate writes them as a Perfetto trace.
///
/// ```no_run
/// let rec = mobilemoe_executorch::profiling::PerfettoRecorder::install().unwrap();
/// // ... run the model ...
/// let recording = rec.stop();
/// ```
pub struct PerfettoRecorder {
    shared: Arc<Shared>,
}

/// Default per-thread buffer: 256 Ki events (8 MiB per thread that emits spans).
pub const DEFAULT_CAPACITY: usize = 1 << 18;

impl PerfettoRecorder {
    /// A recorder (already recording) and its layer, to compose with other layers or to install
    /// as a scoped default (`tracing::subscriber::with_default`). `capacity` events per thread.
    pub fn new(capacity: usize) -> (Self, PerfettoLayer) {
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            capacity: capacity.max(16),
            enabled: AtomicBool::new(true),
            threads: Mutex::new(Vec::new()),
        });
        (PerfettoRecorder { shared: shared.clone() }, PerfettoLayer { shared })
    }

    /// Installs `registry() + PerfettoLayer` as the process-wide default subscriber and starts
    /// recording. Fails if a global subscriber is already set (tracing allows one per process).
    /// Per-thread capacity: `MOBILEMOE_TRACE_EVENTS` or [`DEFAULT_CAPACITY`].
    pub fn install() -> Result<Self, String> {
        use tracing_subscriber::layer::SubscriberExt;
        let cap = std::env::var("MOBILEMOE_TRACE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CAPACITY);
        let (rec, layer) = Self::new(cap);
        super::phases::set_global_recorder_layer(layer.clone());
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(sub)
            .map_err(|e| format!("cannot install the trace recorder: {e} (a global tracing subscriber is already set)"))?;
        Ok(rec)
    }

    /// Pauses (false) or resumes (true) recording; cheap.
    pub fn set_enabled(&self, on: bool) {
        self.shared.enabled.store(on, Ordering::Relaxed);
    }

    /// Stops recording and returns what was recorded (the buffers are emptied and reserved again,
    /// so [`set_enabled(true)`](Self::set_enabled) starts a new recording).
    pub fn stop(&self) -> Recording {
        self.set_enabled(false);
        let threads = self.shared.threads.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Recording {
            pid: std::process::id() as i32,
            process_name: std::env::args().next().map(|a| a.rsplit('/').next().unwrap_or(&a).to_owned()).unwrap_or_default(),
            threads: Vec::with_capacity(threads.len()),
        };
        for b in threads.iter() {
            let mut v = b.events.lock().unwrap_or_else(|e| e.into_inner());
            let events = std::mem::replace(&mut *v, Vec::with_capacity(self.shared.capacity));
            drop(v);
            out.threads.push(ThreadEvents { tid: b.tid, name: b.name.clone(), events, dropped: b.dropped.swap(0, Ordering::Relaxed) });
        }
        out
    }
}
