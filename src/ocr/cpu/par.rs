//! Parallel tasks for this crate's CPU kernels, run on libtorch's own OpenMP threads when they
//! can be reached, on a rayon pool otherwise.
//!
//! libtorch (and MKL under it) parallelises with OpenMP; its idle workers spin for a while after
//! each parallel region before they sleep. A second pool of our own (rayon) meant two sets of
//! busy threads on the same cores whenever our kernels followed a libtorch op, and the prefill
//! and vision alternate between the two all the time. Running our tasks through `GOMP_parallel`
//! (looked up at run time, so no link-time dependency on one OpenMP runtime; Intel's runtime
//! exports it too) hands them to the threads that are already spinning.

use std::ffi::{c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

/// `GOMP_parallel(fn, data, num_threads, flags)`: runs `fn(data)` on a team of threads (the
/// caller included) and returns when all have finished.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

static OPENMP: AtomicBool = AtomicBool::new(true);

/// Run tasks on libtorch's OpenMP threads where the runtime is found (the default), or always on
/// the rayon pool (to compare the two).
pub fn set_openmp(on: bool) {
    OPENMP.store(on, Ordering::Relaxed);
}

/// Where [`for_each`] runs its tasks now, in words (for reports).
pub fn runtime() -> &'static str {
    if OPENMP.load(Ordering::Relaxed) && gomp_parallel().is_some() {
        "libtorch's OpenMP threads"
    } else {
        "a rayon pool"
    }
}

fn gomp_parallel() -> Option<GompParallel> {
    static FOUND: OnceLock<Option<GompParallel>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr()) };
        if p.is_null() {
            tracing::debug!("GOMP_parallel not found; CPU kernels use their own thread pool");
            None
        } else {
            // SAFETY: GOMP_parallel has this signature in every OpenMP runtime exporting it
            // (libgomp's ABI, GOMP_4.0).
            Some(unsafe { std::mem::transmute::<*mut c_void, GompParallel>(p) })
        }
    })
}

/// The tasks of one call and the closure that runs them.
struct Job<'a, T> {
    tasks: Vec<Mutex<Option<T>>>,
    next: AtomicUsize,
    run: &'a (dyn Fn(T) + Sync),
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl<T> Job<'_, T> {
    /// Take tasks until none are left (each thread of the team).
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = self.tasks.get(i) else {
                return;
            };
            let task = slot.lock().ok().and_then(|mut t| t.take());
            if let Some(task) = task
                && let Err(e) = catch_unwind(AssertUnwindSafe(|| (self.run)(task)))
            {
                if let Ok(mut p) = self.panic.lock() {
                    p.get_or_insert(e);
                }
                // Leave the remaining tasks to nobody: the call panics once the team is done.
                self.next.store(self.tasks.len(), Ordering::Relaxed);
            }
        }
    }
}

extern "C" fn team_entry<T>(data: *mut c_void) {
    // SAFETY: `data` is the `&Job<T>` passed by `for_each`, alive until GOMP_parallel returns.
    let job = unsafe { &*(data as *const Job<'_, T>) };
    job.work();
}

/// Threads for this crate's parallel kernels: libtorch's intra-op thread count when first
/// asked (decode narrows libtorch to one thread while its kernels keep this many).
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| tch::get_num_threads().max(1) as usize)
}

/// The fallback pool, [`threads`] wide. None when its threads cannot be started; tasks then run
/// on the calling thread.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads())
            .thread_name(|i| format!("dsocr-cpu-{i}"))
            .build()
            .map_err(|e| tracing::warn!("no thread pool for CPU kernels ({e}); using one thread"))
            .ok()
    })
    .as_ref()
}

/// Run `run` on every task, in parallel on [`threads`] threads (the caller's included);
/// returns when all are done. A panic in a task is resumed here after the others have stopped.
pub fn for_each<T: Send>(tasks: Vec<T>, run: &(dyn Fn(T) + Sync)) {
    run_on(tasks, threads(), run)
}

/// [`for_each`] on `threads` threads.
fn run_on<T: Send>(tasks: Vec<T>, threads: usize, run: &(dyn Fn(T) + Sync)) {
    if tasks.len() <= 1 || threads <= 1 {
        tasks.into_iter().for_each(run);
        return;
    }
    let gomp = if OPENMP.load(Ordering::Relaxed) {
        gomp_parallel()
    } else {
        None
    };
    let Some(gomp) = gomp else {
        match pool() {
            Some(pool) => pool.install(|| tasks.into_par_iter().for_each(run)),
            None => tasks.into_iter().for_each(run),
        }
        return;
    };
    let team = threads.min(tasks.len()) as c_uint;
    let job = Job {
        tasks: tasks.into_iter().map(|t| Mutex::new(Some(t))).collect(),
        next: AtomicUsize::new(0),
        run,
        panic: Mutex::new(None),
    };
    // SAFETY: `team_entry::<T>` reads `data` as `&Job<T>`, which outlives the call;
    // GOMP_parallel returns only when every thread of the team has returned from it, and
    // `team_entry` never unwinds (task panics are caught in `Job::work`).
    unsafe {
        gomp(
            team_entry::<T>,
            &job as *const Job<'_, T> as *mut c_void,
            team,
            0,
        )
    };
    if let Some(p) = job.panic.into_inner().ok().flatten() {
        resume_unwind(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_task_once_on_either_runtime() {
        let _ = tch::get_num_threads(); // load libtorch (and its OpenMP runtime)
        for openmp in [true, false] {
            set_openmp(openmp);
            let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
            run_on((0..100).collect(), 2, &|i: usize| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "openmp={openmp}"
            );
        }
        set_openmp(true);
    }

    #[test]
    fn a_panicking_task_panics_the_call() {
        let r = catch_unwind(|| {
            run_on((0..10).collect(), 2, &|i: usize| {
                if i == 3 {
                    panic!("task 3");
                }
            })
        });
        assert!(r.is_err());
    }
}
