//! Counting the libtorch operators a piece of code dispatches, and its host reads; and the GPU
//! memory libtorch's caching allocator holds.
//!
//! The counter is libtorch's own RecordFunction hook (what its profiler uses), set on the
//! calling thread by a small C++ file compiled against libtorch's headers (`opcount.cpp`, built
//! by build.rs). It sees every ATen operator the thread dispatches, views and in-place ops
//! included: on CUDA each top-level operator costs host time to dispatch and most launch at
//! least one kernel, so their count per decode token bounds how fast one stream can decode.
//! A host read is an operator the caller issues whose CUDA implementation waits for the GPU to
//! hand a value back (`item()`, `bincount`, `nonzero`, ...), or a copy from a device into host
//! memory; reads inside a CPU operator's own implementation are not counted.

use std::ffi::c_int;

unsafe extern "C" {
    fn dsocr_opcount_start() -> c_int;
    fn dsocr_opcount_stop(all: *mut i64, top: *mut i64, host_reads: *mut i64) -> c_int;
    fn dsocr_opcount_names(buf: *mut std::ffi::c_char, cap: i64) -> i64;
    fn dsocr_accelerator_memory(
        device: c_int,
        allocated: *mut i64,
        allocated_peak: *mut i64,
        reserved: *mut i64,
        reserved_peak: *mut i64,
    ) -> c_int;
    fn dsocr_accelerator_free(device: c_int, free: *mut i64, total: *mut i64) -> c_int;
}

/// What libtorch's caching allocator holds on a CUDA device, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuMemory {
    pub allocated: i64,
    pub allocated_peak: i64,
    /// Reserved from the driver (allocated plus cached).
    pub reserved: i64,
    pub reserved_peak: i64,
}

/// The caching allocator's figures for CUDA device `index`, from libtorch itself (`None`
/// without such a device).
pub fn gpu_memory(index: usize) -> Option<GpuMemory> {
    let mut m = GpuMemory::default();
    // SAFETY: the pointers are to live i64s; the call only writes them.
    let rc = unsafe {
        dsocr_accelerator_memory(
            index as c_int,
            &mut m.allocated,
            &mut m.allocated_peak,
            &mut m.reserved,
            &mut m.reserved_peak,
        )
    };
    (rc == 0 && tch::Cuda::is_available()).then_some(m)
}

/// Free and total bytes of CUDA device `index` as the driver reports them (`None` without
/// such a device).
pub fn gpu_free_memory(index: usize) -> Option<(u64, u64)> {
    if !tch::Cuda::is_available() {
        return None;
    }
    let (mut free, mut total) = (0i64, 0i64);
    // SAFETY: the pointers are to live i64s; the call only writes them.
    let rc = unsafe { dsocr_accelerator_free(index as c_int, &mut free, &mut total) };
    (rc == 0).then(|| (free.max(0) as u64, total.max(0) as u64))
}

/// What the thread dispatched while a [`Counter`] ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Every operator, including those called from inside other operators.
    pub all: i64,
    /// Operators called directly (not from inside another operator).
    pub top: i64,
    /// Operators issued that read a value back to the host on CUDA (`item()`, `bincount`,
    /// ...), and device-to-host copies.
    pub host_reads: i64,
}

/// Counts the operators of the calling thread from [`Counter::start`] to [`Counter::stop`].
/// One per thread at a time; it is not `Send` (the hook belongs to its thread).
#[derive(Debug)]
pub struct Counter {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Counter {
    /// Start counting on this thread; `None` when this thread is counting already.
    pub fn start() -> Option<Self> {
        // SAFETY: a plain C call with no arguments; it only touches thread-local state.
        (unsafe { dsocr_opcount_start() } == 0).then(|| Self {
            _not_send: std::marker::PhantomData,
        })
    }

    /// Stop counting and return the counts.
    pub fn stop(self) -> OpCounts {
        let mut c = OpCounts::default();
        // SAFETY: the pointers are to live i64s; the call writes them only when it succeeds
        // (it does: this Counter's start succeeded on this thread, as it is not Send).
        unsafe { dsocr_opcount_stop(&mut c.all, &mut c.top, &mut c.host_reads) };
        std::mem::forget(self);
        c
    }
}

/// The operators issued during the last count on this thread (top-level ones, by name, with
/// how many times each), after [`Counter::stop`]; most frequent first.
pub fn last_count_by_name() -> Vec<(String, i64)> {
    // SAFETY: a null buffer of capacity 0 is only measured, never written.
    let len = unsafe { dsocr_opcount_names(std::ptr::null_mut(), 0) };
    let mut buf = vec![0u8; len.max(0) as usize + 1];
    // SAFETY: `buf` is `len + 1` writable bytes; the call writes at most that many.
    unsafe { dsocr_opcount_names(buf.as_mut_ptr().cast(), buf.len() as i64) };
    buf.truncate(len.max(0) as usize);
    let mut names: Vec<(String, i64)> = String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|l| {
            let (name, n) = l.rsplit_once(' ')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect();
    names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    names
}

impl Drop for Counter {
    fn drop(&mut self) {
        let (mut a, mut b, mut c) = (0, 0, 0);
        // SAFETY: as in `stop`.
        unsafe { dsocr_opcount_stop(&mut a, &mut b, &mut c) };
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    #[test]
    fn counts_operators_nesting_and_host_reads() {
        let x = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([3, 4], (Kind::Float, Device::Cpu));
        let counter = Counter::start().expect("counting");
        assert!(Counter::start().is_none(), "one counter per thread");
        let y = &x + 1.0;
        let z = y.linear::<Tensor>(&w, None);
        let v = z.sum(Kind::Float).double_value(&[]);
        let c = counter.stop();
        assert_eq!(v, 3.0 * 4.0 * 8.0);
        // add, linear, sum, and the scalar read (its own top-level op): linear calls others.
        assert!(c.top >= 4, "{c:?}");
        assert!(c.all > c.top, "linear dispatches nested operators: {c:?}");
        assert_eq!(c.host_reads, 1, "{c:?}");
        let names = last_count_by_name();
        assert_eq!(
            names.iter().map(|(_, n)| n).sum::<i64>(),
            c.top,
            "the breakdown adds up: {names:?}"
        );
        assert!(
            names
                .iter()
                .any(|(name, n)| name == "aten::linear" && *n == 1),
            "{names:?}"
        );
        // Stopped: nothing more is counted, and a new counter starts from zero.
        let _ = &x * 2.0;
        let again = Counter::start().expect("counting again").stop();
        assert_eq!(again, OpCounts::default());
    }
}
