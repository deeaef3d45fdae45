//! A small persistent thread pool for the kernels: no allocation per call, dynamic work stealing
//! over an item counter, the calling thread works too. One pool per process
//! ([`ThreadPool::global`]) serves every delegate. After a job, idle workers spin for a bounded
//! *time* — 50 us by default (`MOBILEMOE_SPIN_US`; decode issues a job every few tens of
//! microseconds within a forward) — and then sleep on a condvar, so a phone's cores go idle 50 us
//! after the last forward returns.
//!
//! Workers *join* a job; the caller never waits for a worker that has not joined. A worker that
//! wakes late (descheduled, asleep) finds the job closed and skips it, so one slow thread cannot
//! stall a decode step for a scheduler time slice.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// Thin pointer to the caller's `&Job` (a local of `run`, whose lifetime `run` guarantees).
    job: AtomicPtr<()>,
    n_items: AtomicUsize,
    next: AtomicUsize,
    /// Workers that joined the current job and have not left it yet.
    active: AtomicUsize,
    /// `epoch << 1 | open`: a new epoch per job; `open` while workers may still join.
    state: AtomicU64,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    threads: usize,
    handles: Vec<JoinHandle<()>>,
    /// Serialises callers: a second concurrent caller runs its job inline instead of waiting.
    busy: Mutex<()>,
}

/// Error from a job that panicked on some thread (the pool stays usable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPanicked;

/// How long an idle worker spins before it sleeps: `MOBILEMOE_SPIN_US` microseconds (default 50;
/// 0 = sleep at once). Bounded by time, not by `pause` iterations, whose cost varies 10x between
/// cores.
pub fn spin_time() -> Duration {
    static V: OnceLock<Duration> = OnceLock::new();
    *V.get_or_init(|| Duration::from_micros(std::env::var("MOBILEMOE_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(50)))
}

impl ThreadPool {
    /// A pool running jobs on `threads` threads in total (the caller counts as one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            n_items: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            state: AtomicU64::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let handles = (1..threads)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new().name(format!("mobilemoe-worker-{i}")).spawn(move || worker(s)).expect("spawn worker thread")
            })
            .collect();
        Self { shared, threads, handles, busy: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i in 0..n_items`, spread over the pool; returns when all are done.
    pub fn run(&self, n_items: usize, f: &(dyn Fn(usize) + Sync)) -> Result<(), JobPanicked> {
        if n_items == 0 {
            return Ok(());
        }
        let guard = match self.busy.try_lock() {
            Ok(g) if self.threads > 1 && n_items > 1 => g,
            _ => {
                // Single thread, a single item, or another caller owns the pool: run inline.
                return catch_unwind(AssertUnwindSafe(|| (0..n_items).for_each(f))).map_err(|_| JobPanicked);
            }
        };
        let s = &*self.shared;
        // SAFETY (lifetime erasure): the pointer to `f` is published to the workers; a worker uses
        // it only after joining (incrementing `active` while the job is open) and leaves (decrements)
        // after its last use. We close the job, then wait for `active == 0` before returning (the
        // code in between cannot unwind: `drain` runs under catch_unwind), so `f` outlives every use.
        // A thin pointer to a fat reference on this stack frame: no transmute of fat pointers.
        let fref: &Job<'_> = f;
        s.job.store(&fref as *const &Job<'_> as *mut (), Relaxed);
        s.n_items.store(n_items, Relaxed);
        s.next.store(0, Relaxed);
        s.panicked.store(false, Relaxed);
        let epoch = (s.state.load(Relaxed) >> 1) + 1;
        s.state.store(epoch << 1 | 1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let ok = catch_unwind(AssertUnwindSafe(|| drain(s, f))).is_ok();
        // Close: workers that have not joined yet will skip this job.
        s.state.store(epoch << 1, SeqCst);
        let mut spins = 0u32;
        while s.active.load(SeqCst) != 0 {
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        drop(guard);
        if ok && !s.panicked.load(Relaxed) {
            Ok(())
        } else {
            Err(JobPanicked)
        }
    }

    /// The process-wide pool (`MOBILEMOE_THREADS` or the number of CPUs).
    pub fn global() -> Arc<ThreadPool> {
        let mut g = global_slot().lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(|| {
            let n = std::env::var("MOBILEMOE_THREADS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            Arc::new(ThreadPool::new(n))
        })
        .clone()
    }

    /// Replace the process-wide pool with one of `threads` threads.
    pub fn set_global_threads(threads: usize) {
        let mut g = global_slot().lock().unwrap_or_else(|e| e.into_inner());
        *g = Some(Arc::new(ThreadPool::new(threads)));
    }
}

fn global_slot() -> &'static Mutex<Option<Arc<ThreadPool>>> {
    static SLOT: OnceLock<Mutex<Option<Arc<ThreadPool>>>> = OnceLock::new();
    SLOT.get_or_init(|| Mutex::new(None))
}

fn drain(s: &Shared, f: &Job<'_>) {
    let n = s.n_items.load(Relaxed);
    loop {
        let i = s.next.fetch_add(1, Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(s: Arc<Shared>) {
    // Epochs start at 0 when the pool is built; a worker that starts late must still see epoch 1.
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin first, then sleep.
        let mut spins = 0u32;
        let spin_until = Instant::now() + spin_time();
        let mut spinning = true;
        let state = loop {
            if s.shutdown.load(Relaxed) {
                return;
            }
            let st = s.state.load(Acquire);
            if st >> 1 != seen {
                break st;
            }
            if spinning {
                spins = spins.wrapping_add(1);
                std::hint::spin_loop();
                // read the clock every 64 pauses only
                if spins % 64 == 0 && Instant::now() >= spin_until {
                    spinning = false;
                }
                continue;
            }
            let l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            if s.state.load(SeqCst) >> 1 == seen && !s.shutdown.load(SeqCst) {
                drop(s.wake.wait(l).unwrap_or_else(|e| e.into_inner()));
            } else {
                drop(l);
            }
            s.sleepers.fetch_sub(1, SeqCst);
        };
        seen = state >> 1;
        // Join, then check the job is still open: with SeqCst on both sides, either the caller
        // sees our increment before it stops waiting, or we see the job closed and skip it.
        s.active.fetch_add(1, SeqCst);
        if s.state.load(SeqCst) == (seen << 1 | 1) {
            // SAFETY: published (a pointer to `run`'s local `&Job`) before the job was opened; the
            // local and the job it refers to stay valid until we leave (see `run`).
            let f: &Job<'_> = unsafe { *(s.job.load(Relaxed) as *const &Job<'_>) };
            if catch_unwind(AssertUnwindSafe(|| drain(&s, f))).is_err() {
                s.panicked.store(true, Relaxed);
            }
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _l = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn runs_every_item_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Relaxed);
            })
            .unwrap();
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1));
        }
    }
    #[test]
    fn panic_is_reported_and_pool_survives() {
        let pool = ThreadPool::new(2);
        assert_eq!(
            pool.run(10, &|i| if i == 5 {
                panic!("boom")
            }),
            Err(JobPanicked)
        );
        let count = AtomicUsize::new(0);
        pool.run(10, &|_| {
            count.fetch_add(1, Relaxed);
        })
        .unwrap();
        assert_eq!(count.load(Relaxed), 10);
    }
    #[test]
    fn concurrent_callers() {
        let pool = Arc::new(ThreadPool::new(2));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let p = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let c = AtomicUsize::new(0);
                        p.run(17, &|_| {
                            c.fetch_add(1, Relaxed);
                        })
                        .unwrap();
                        assert_eq!(c.load(Relaxed), 17);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}
