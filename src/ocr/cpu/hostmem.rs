//! One host buffer backed by transparent huge pages, from which the decoder's weights are
//! carved.
//!
//! A CPU decode step streams every decoder weight it uses from memory once per token, so the
//! step runs at the speed the memory delivers. With 4 KiB pages the hardware prefetchers stop at
//! each page boundary and every 4 KiB costs a TLB entry; with 2 MiB pages neither happens
//! (BENCHMARKS.md has the bandwidth measured both ways).
//!
//! The buffer is one libtorch `uint8` tensor; each weight is a typed view of a slice of it, so
//! libtorch's reference counting keeps the buffer alive as long as any weight is used (no raw
//! pointers outlive anything). The kernel is asked for huge pages (`MADV_HUGEPAGE`) before
//! anything is written, so the pages are huge from their first fault. Where huge pages are
//! unavailable (another OS, `transparent_hugepage=never`) the buffer is ordinary memory and
//! everything works the same, only slower.

use tch::{Device, Kind, Tensor};

use crate::ocr::error::{OcrError, Result};

/// Huge page size on x86-64 and most aarch64 kernels.
const HUGE_PAGE: i64 = 2 << 20;

/// Each view starts on a 4 KiB boundary (good alignment for any SIMD load).
const ALIGN: i64 = 4096;

/// Bytes a tensor of `shape` and `kind` takes in a [`Slab`], alignment included.
pub fn slab_bytes(shape: &[i64], kind: Kind) -> i64 {
    let bytes = shape.iter().product::<i64>() * kind.elt_size_in_bytes() as i64;
    round_up(bytes, ALIGN)
}

fn round_up(n: i64, to: i64) -> i64 {
    (n + to - 1) / to * to
}

/// A fixed-size CPU buffer handing out contiguous tensors (bump allocation, never freed
/// separately: the buffer goes when its last view goes).
pub struct Slab {
    buf: Tensor,
    /// Offset in `buf` of the first byte on a huge page boundary: views are placed from here.
    start: i64,
    /// Bytes handed out after `start` (a multiple of [`ALIGN`]).
    used: i64,
    /// Bytes available after `start`.
    len: i64,
}

impl Slab {
    /// A buffer of `bytes` (sum of [`slab_bytes`] of what will be placed), starting on a huge
    /// page boundary and advised for huge pages.
    pub fn new(bytes: i64) -> Result<Self> {
        let bytes = round_up(bytes.max(ALIGN), ALIGN);
        let buf = Tensor::f_empty([bytes + HUGE_PAGE], (Kind::Uint8, Device::Cpu))?;
        let base = buf.data_ptr() as i64;
        let start = round_up(base, HUGE_PAGE) - base;
        advise_huge_pages(base + start, bytes);
        Ok(Self {
            buf,
            start,
            used: 0,
            len: bytes,
        })
    }

    /// A new uninitialised contiguous tensor of `shape` and `kind` inside the buffer.
    pub fn empty(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor> {
        let elt = kind.elt_size_in_bytes() as i64;
        let bytes = shape.iter().product::<i64>() * elt;
        if self.used + bytes > self.len {
            return Err(OcrError::Invalid(format!(
                "host buffer too small: {bytes} more bytes asked, {} left",
                self.len - self.used
            )));
        }
        let t = self
            .buf
            .f_narrow(0, self.start + self.used, bytes)?
            .f_view_dtype(kind)?
            .f_view(shape)?;
        self.used = round_up(self.used + bytes, ALIGN);
        Ok(t)
    }

    /// A copy of `t` (any device) inside the buffer.
    pub fn copy_of(&mut self, t: &Tensor) -> Result<Tensor> {
        let mut dst = self.empty(&t.size(), t.kind())?;
        dst.f_copy_(t)?;
        Ok(dst)
    }
}

/// Ask the kernel for transparent huge pages over `len` bytes at address `start`, which must lie
/// in memory this process owns and that nothing has touched yet. Failure is harmless (ordinary
/// pages), so it is only logged.
fn advise_huge_pages(start: i64, len: i64) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: MADV_HUGEPAGE changes only how the kernel backs the range, never its
        // contents; the range lies inside a live allocation (see the caller).
        let rc = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                len as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if rc != 0 {
            tracing::debug!(
                "madvise(MADV_HUGEPAGE) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_aligned_disjoint_and_keep_their_values() {
        let a_src = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        let b_src = Tensor::randn([7], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let mut slab =
            Slab::new(slab_bytes(&[3, 5], Kind::Float) + slab_bytes(&[7], Kind::BFloat16))
                .expect("slab");
        let a = slab.copy_of(&a_src).expect("a");
        let b = slab.copy_of(&b_src).expect("b");
        // Exactly the bytes `slab_bytes` counted: nothing left.
        assert!(slab.empty(&[1], Kind::Uint8).is_err());
        assert_eq!(a.size(), [3, 5]);
        assert_eq!(b.kind(), Kind::BFloat16);
        assert_eq!(a.data_ptr() as usize % (HUGE_PAGE as usize), 0);
        assert_eq!(b.data_ptr() as usize % (ALIGN as usize), 0);
        assert!(a.data_ptr() != b.data_ptr());
        // The slab's handle can go: the views keep the buffer alive.
        drop(slab);
        assert!(a.equal(&a_src));
        assert!(b.equal(&b_src));
        // Full: a clear error, not a panic.
        let mut small = Slab::new(ALIGN).expect("small");
        assert!(small.empty(&[ALIGN + 1], Kind::Uint8).is_err());
        assert!(small.empty(&[ALIGN], Kind::Uint8).is_ok());
    }
}
