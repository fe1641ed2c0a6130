//! dsocr's own CPU kernels, and the one module that decides which of them may run.
//!
//! - [`features`]: the instruction-set tiers (avx512, avx2, scalar), the [`Isa`] token that
//!   proves the CPU has one, and the `--kernels` switch that turns into a per-phase [`Plan`].
//! - [`gemv`]: matrix-vector and few-row products over bf16 or f32 weights with f32
//!   activations (decode, and the prefill's small expert groups), and the routed experts.
//! - [`relpos_attn`]: SAM's attention with decomposed relative positions, fused (AVX-512).
//! - [`step`]: the small operations of a one-token decode step on slices.
//! - [`par`]: running the kernels' tasks on libtorch's OpenMP threads.
//! - [`hostmem`]: the huge-page buffer the decoder's matrices live in on the CPU.
//!
//! Every kernel takes an [`Isa`] and dispatches on it; only this module's code executes
//! `#[target_feature]` functions, and only for the tier the `Isa` proves. On libtorch's path
//! ([`Path::Libtorch`], and always on CUDA) none of this runs. The plan is made when a model
//! is loaded (`DeepseekOcr::load_with`) and each layer keeps the path of its phase.

pub mod features;
pub mod gemv;
pub mod hostmem;
pub mod par;
pub mod relpos_attn;
pub mod step;

pub use features::{Isa, Kernels, Path, Plan, Tier};
