//! DeepSeek-V2 language model (MHA, RoPE, dense layer 0, then MoE) with a KV cache.
//!
//! A layer is written once ([`Layer::forward`]) over a small set of operations ([`Ops`]):
//! RMSNorm, a matrix product, a product added to the residual, SwiGLU, attention over the
//! cache, the MoE gate and the chosen experts. Two implementations run them:
//! - [`Torch`]: libtorch operations on tensors, on every device, for any number of rows (a
//!   prefill, a decode step, a batched decode step); this is the whole of the CUDA path. Its
//!   matrix products follow the phase's [`Path`] (libtorch's, or dsocr's kernels on the CPU).
//! - [`Step`]: a one-token decode step on the CPU as dsocr's kernels on f32 slices
//!   ([`cpu_step`] for the small operations, [`gemv`] for every matrix product), which leaves
//!   libtorch's per-operation cost behind.
//!
//! Precision follows the reference: weights and matmuls in the compute dtype; RMSNorm
//! statistics, the MoE gate (linear + softmax + top-k) and the experts' weighted sum in f32;
//! logits returned as f32. The shared experts are stored as extra experts next to the routed
//! ones (their inner width split into expert-sized parts, a split that changes no product) and
//! chosen for every token with weight 1, so one expert product serves both. A decode step on an
//! accelerator makes no host round trip: the chosen experts run through libtorch's grouped
//! matmul on the stacked weights. Prefill groups the tokens by expert (one read of the
//! per-expert counts per MoE layer, which on the CPU is plain memory; on CUDA it is the one
//! synchronisation of that layer). On the CPU the decoder's matrices live in one huge-page
//! buffer ([`Slab`]).
//!
//! Weights may be stored narrower than the activations: with bf16 weights on a CPU without
//! bf16 instructions the activations, KV cache and arithmetic are f32 and every matrix product
//! widens the weights on the fly ([`gemv`]), so memory holds and streams bf16.

use tch::{Device, Kind, Tensor};

use super::config::{Config, LanguageConfig, RMS_NORM_EPS, ROPE_THETA};
use super::cpu::gemv::{self, MatVec, Matrix};
use super::cpu::hostmem::{Slab, slab_bytes};
use super::cpu::{Isa, Path, Plan, step as cpu_step};
use super::error::{OcrError, Result};
use super::weights::{KeepAlive, Vars, release_free_heap};

/// Up to this many tokens, the chosen experts run through one grouped matmul (decode); above
/// it, tokens are grouped by expert and each expert runs once (prefill).
const GATHER_MAX_TOKENS: i64 = 4;

/// Most sequences one decode step runs together ([`Decoder::step_batch`]).
pub const MAX_BATCH: usize = 16;

/// `x W^T` for any pair of stored and compute dtypes on `path` (see [`gemv::linear_any`]).
fn lin(x: &Tensor, weight: &Tensor, path: Path) -> Result<Tensor> {
    gemv::linear_any(x, weight, None, path)
}

/// `t` on `device`, without an operation when it is there already (a move to the CPU counts as
/// a host read in the operator counts, see [`super::opcount`]).
pub(crate) fn on_device(t: &Tensor, device: Device) -> Result<Tensor> {
    Ok(if t.device() == device {
        t.shallow_clone()
    } else {
        t.f_to_device(device)?
    })
}

/// `silu(gate) * up` of `[..., 2M]` gate-and-up projections (gate first): `[..., M]`.
fn swiglu(gu: &Tensor) -> Result<Tensor> {
    let halves = gu.f_chunk(2, -1)?;
    Ok(halves[0].f_silu()?.f_mul(&halves[1])?)
}

/// RMSNorm: statistics in f32, the normalised values cast back to the activations' dtype, then
/// scaled by the weight in that dtype (the reference's order).
struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    /// The weight `name` `[width]`, converted to the compute dtype.
    fn load(w: &mut Vars, name: &str, width: i64, compute: Kind) -> Result<Self> {
        Ok(Self {
            weight: w.take(name, &[width])?.f_to_kind(compute)?,
        })
    }
}

/// A projection whose output is added to the residual stream (attention output, MLP down):
/// the weight `[N, K]` and its transposed view `[K, N]` (no copy), with which libtorch adds
/// the product to the residual in one operation (`addmm`).
struct Proj {
    w: Tensor,
    t: Tensor,
}

impl Proj {
    fn new(w: Tensor) -> Result<Self> {
        Ok(Self { t: w.f_tr()?, w })
    }
}

/// Gated SiLU MLP: `down(silu(gate(x)) * up(x))`, the gate and up projections stacked into one
/// matrix (`[2I, H]`: gate rows, then up rows), so that one product computes both.
struct Mlp {
    gate_up: Tensor,
    down: Proj,
}

impl Mlp {
    /// `{prefix}.gate_proj` and `up_proj` `[inner, hidden]`, `down_proj` `[hidden, inner]`.
    fn load(w: &mut Loader, prefix: &str, [hidden, inner]: [i64; 2]) -> Result<Self> {
        let name = |proj: &str| format!("{prefix}.{proj}.weight");
        let (gate, up) = (name("gate_proj"), name("up_proj"));
        Ok(Self {
            gate_up: w.stacked(&[(&gate, [inner, hidden]), (&up, [inner, hidden])])?,
            down: Proj::new(w.take(&name("down_proj"), &[hidden, inner])?)?,
        })
    }

    /// `residual + down(silu(gate x) * up x)`.
    fn forward<O: Ops>(&self, o: &mut O, x: &O::X, residual: O::X) -> Result<O::X> {
        let gu = o.linear(x, &self.gate_up)?;
        let act = o.swiglu(&gu)?;
        o.linear_add(&act, &self.down, residual)
    }
}

/// Mixture of experts: softmax gate in f32, top-k without renormalisation, routed experts
/// weighted by their raw probabilities times the routing scale, plus the shared experts
/// (unweighted). The shared experts' `[S*M]`-wide MLP is stored as S more experts of width M
/// after the E routed ones (gate rows `s*M..(s+1)*M`, up rows likewise, down columns likewise):
/// the sum of those S experts is that MLP.
struct Moe {
    /// `[E, H]`, f32.
    gate: Tensor,
    /// Stacked experts, routed then shared: gate and up projections `[E+S, 2M, H]`, down
    /// `[E+S, H, M]`.
    gate_up: Tensor,
    down: Tensor,
    /// The same weights seen as `[E+S, H, 2M]` and `[E+S, M, H]` (transposed views, no copy):
    /// the right-hand operands of a grouped matmul.
    gate_up_t: Tensor,
    down_t: Tensor,
    /// `0..E+S` (int64) on the weights' device.
    expert_ids: Tensor,
    /// The shared experts' ids `[1, S]` (`E..E+S`) and their weights `[1, S]` (f32 ones), on
    /// the weights' device; `None` without shared experts.
    shared: Option<(Tensor, Tensor)>,
    /// Routed experts (E).
    routed: i64,
    top_k: i64,
    scale: f64,
}

impl Moe {
    /// Stacks the routed and shared experts into preallocated tensors, freeing each checkpoint
    /// tensor as soon as it is copied (heap memory returned after each layer, mapped file pages
    /// released), so loading needs one layer's experts of extra memory at most.
    ///
    /// Checkpoint tensors: `{prefix}.gate` `[E, H]`; per routed expert `e`,
    /// `experts.{e}.gate_proj` and `up_proj` `[M, H]`, `down_proj` `[H, M]`; the shared
    /// experts' `shared_experts.gate_proj` and `up_proj` `[S*M, H]`, `down_proj` `[H, S*M]`.
    fn load(w: &mut Loader, prefix: &str, l: &LanguageConfig) -> Result<Self> {
        let (routed, m, hidden) = (l.n_routed_experts, l.moe_intermediate_size, l.hidden_size);
        let shared = l.n_shared_experts;
        let gate_up = w.empty(&[routed + shared, 2 * m, hidden])?;
        let down = w.empty(&[routed + shared, hidden, m])?;
        let name = |expert: &str, proj: &str| format!("{prefix}.{expert}.{proj}.weight");
        // (destination, dimension of the source it is cut from, start along it)
        let gate_of = |e: i64, start: i64| (gate_up.get(e).narrow(0, 0, m), 0, start);
        let up_of = |e: i64, start: i64| (gate_up.get(e).narrow(0, m, m), 0, start);
        let down_of = |e: i64, start: i64| (down.get(e), 1, start);
        let (gate_shape, down_shape) = ([m, hidden], [hidden, m]);
        for e in 0..routed {
            let expert = format!("experts.{e}");
            let v = &mut w.vars;
            v.copy_into(
                &name(&expert, "gate_proj"),
                &gate_shape,
                vec![gate_of(e, 0)],
            )?;
            v.copy_into(&name(&expert, "up_proj"), &gate_shape, vec![up_of(e, 0)])?;
            v.copy_into(
                &name(&expert, "down_proj"),
                &down_shape,
                vec![down_of(e, 0)],
            )?;
        }
        if shared > 0 {
            let parts = |f: &dyn Fn(i64, i64) -> (Tensor, i64, i64)| {
                (0..shared)
                    .map(|s| f(routed + s, s * m))
                    .collect::<Vec<_>>()
            };
            let (gate_shape, down_shape) = ([shared * m, hidden], [hidden, shared * m]);
            let v = &mut w.vars;
            v.copy_into(
                &name("shared_experts", "gate_proj"),
                &gate_shape,
                parts(&gate_of),
            )?;
            v.copy_into(
                &name("shared_experts", "up_proj"),
                &gate_shape,
                parts(&up_of),
            )?;
            v.copy_into(
                &name("shared_experts", "down_proj"),
                &down_shape,
                parts(&down_of),
            )?;
        }
        release_free_heap();
        let gate = w
            .vars
            .take(&format!("{prefix}.gate.weight"), &[routed, hidden])?
            .f_to_kind(Kind::Float)?;
        Self::new(
            gate,
            gate_up,
            down,
            routed,
            l.num_experts_per_tok,
            l.routed_scaling_factor,
        )
    }

    /// A MoE block over stacked experts (`[E+S, 2M, H]`, `[E+S, H, M]`, the last S shared)
    /// with gate `[E, H]` (f32).
    fn new(
        gate: Tensor,
        gate_up: Tensor,
        down: Tensor,
        routed: i64,
        top_k: i64,
        scale: f64,
    ) -> Result<Self> {
        let device = gate_up.device();
        let experts = gate_up.size()[0];
        let shared = (experts > routed).then(|| {
            (
                Tensor::arange_start(routed, experts, (Kind::Int64, device)).view([1, -1]),
                Tensor::ones([1, experts - routed], (Kind::Float, device)),
            )
        });
        Ok(Self {
            gate,
            gate_up_t: gate_up.f_transpose(1, 2)?,
            down_t: down.f_transpose(1, 2)?,
            expert_ids: Tensor::f_arange(experts, (Kind::Int64, device))?,
            gate_up,
            down,
            shared,
            routed,
            top_k,
            scale,
        })
    }

    /// `residual + Σ w_j expert_j(x)` over each row's chosen experts.
    fn forward<O: Ops>(&self, o: &mut O, x: &O::X, residual: O::X) -> Result<O::X> {
        let route = o.route(x, self)?;
        o.experts_add(x, route, self, residual)
    }

    /// The gate on libtorch: each row's chosen experts `[T, k+S]` (int64: the top-k routed ones,
    /// largest probability first, then the shared ones) and their weights `[T, k+S]` (f32: the
    /// raw probabilities times the routing scale, then ones).
    fn route(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x32 = if x.kind() == Kind::Float {
            x.shallow_clone()
        } else {
            x.f_to_kind(Kind::Float)?
        };
        let probs = x32
            .f_linear::<Tensor>(&self.gate, None)?
            .f_softmax(-1, Kind::Float)?;
        let (weights, ids) = probs.f_topk(self.top_k, -1, true, true)?;
        let weights = if self.scale != 1.0 {
            weights.f_mul_scalar(self.scale)?
        } else {
            weights
        };
        let Some((shared_ids, ones)) = &self.shared else {
            return Ok((ids, weights));
        };
        let t = ids.size()[0];
        let (shared_ids, ones) = if t == 1 {
            (shared_ids.shallow_clone(), ones.shallow_clone())
        } else {
            (
                shared_ids.f_expand([t, -1], false)?,
                ones.f_expand([t, -1], false)?,
            )
        };
        Ok((
            Tensor::f_cat(&[ids, shared_ids], 1)?,
            Tensor::f_cat(&[weights, ones], 1)?,
        ))
    }

    /// The expert outputs `[T * n, H]` (assignment order) weighted by `weights` `[T, n]` and
    /// summed per token, in f32: `[T, H]`.
    fn weigh(routed: &Tensor, weights: &Tensor) -> Result<Tensor> {
        let (tokens, n) = weights.size2()?;
        let hidden = routed.size()[1];
        Ok((routed.f_view([tokens, n, hidden])?.f_to_kind(Kind::Float)?
            * weights.f_unsqueeze(-1)?)
        .f_sum_dim_intlist(1, false, Kind::Float)?)
    }

    /// A few tokens (decode) through libtorch's grouped matmul, straight from the stacked
    /// weights: the assignments sorted by expert, each expert's rows multiplied by its own
    /// matrices in one call, nothing copied and nothing read back to the host (the group
    /// boundaries are computed on the device). Returns the weighted sum `[T, H]` in f32.
    fn grouped_mm(&self, x: &Tensor, weights: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (tokens, hidden) = x.size2()?;
        let n = ids.size()[1];
        let run = |rows: &Tensor, sorted: &Tensor| -> Result<Tensor> {
            // Group e ends after the assignments to experts 0..=e: a search of the sorted ids,
            // on the device (`bincount` would read its maximum back to the host on CUDA).
            let offs =
                self.expert_ids
                    .f_searchsorted(sorted, true, true, "right", None::<Tensor>)?;
            let gu = rows.f_internal_grouped_mm(&self.gate_up_t, Some(&offs), None, None)?;
            let out = swiglu(&gu)?.f_internal_grouped_mm(&self.down_t, Some(&offs), None, None)?;
            Ok(if out.kind() == Kind::Float {
                out
            } else {
                out.f_to_kind(Kind::Float)?
            })
        };
        if tokens == 1 {
            // One token: its distinct experts in increasing order, its row repeated.
            let (sorted, perm) = ids.f_sort(-1, false)?;
            let out = run(&x.f_repeat([n, 1])?, &sorted.f_view([-1])?)?;
            return Ok(weights.f_gather(-1, &perm, false)?.f_matmul(&out)?);
        }
        let (sorted, perm) = ids.f_reshape([-1])?.f_sort(0, false)?;
        let token = perm.f_floor_divide_scalar(n)?;
        let out = run(&x.f_index_select(0, &token)?, &sorted)?;
        let w = weights.f_reshape([-1])?.f_index_select(0, &perm)?;
        let zeros = Tensor::f_zeros([tokens, hidden], (Kind::Float, x.device()))?;
        Ok(zeros.f_index_add(0, &token, &(out * w.f_unsqueeze(-1)?))?)
    }

    /// Many tokens: sort the assignments by expert and run each expert once on its rows (one
    /// read of the per-expert counts). Returns `[T * n, H]` in assignment order.
    fn grouped(&self, x: &Tensor, ids: &Tensor, path: Path) -> Result<Tensor> {
        let experts = self.gate_up.size()[0];
        let n = ids.size()[1];
        let flat = ids.f_reshape([-1])?;
        let order = flat.f_argsort(0, false)?;
        let rows = x.f_index_select(0, &order.f_floor_divide_scalar(n)?)?;
        let counts = Vec::<i64>::try_from(
            flat.f_bincount::<Tensor>(None, experts)?
                .f_to_device(Device::Cpu)?,
        )?;
        let mut outputs = Vec::with_capacity(experts as usize);
        let mut start = 0;
        for (e, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let e = e as i64;
            let gu = lin(&rows.f_narrow(0, start, count)?, &self.gate_up.get(e), path)?;
            outputs.push(lin(&swiglu(&gu)?, &self.down.get(e), path)?);
            start += count;
        }
        let sorted = Tensor::f_cat(&outputs, 0)?;
        Ok(sorted.f_zeros_like()?.f_index_copy(0, &order, &sorted)?)
    }
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

/// Multi-head attention with rotary positions and a slot in the KV cache. The q, k and v
/// projections are stacked into one matrix (`[3W, H]`), so that one product computes all three.
struct Attention {
    qkv: Tensor,
    o: Proj,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    /// `{prefix}.self_attn.q_proj` `[heads*d, H]`, `k_proj` and `v_proj` `[kv_heads*d, H]`,
    /// `o_proj` `[H, heads*d]`.
    fn load(w: &mut Loader, prefix: &str, l: &LanguageConfig) -> Result<Self> {
        let name = |n: &str| format!("{prefix}.self_attn.{n}.weight");
        let (q, k, v) = (name("q_proj"), name("k_proj"), name("v_proj"));
        let h = l.hidden_size;
        let (width, kv_width) = (
            l.num_attention_heads * l.head_dim(),
            l.num_key_value_heads * l.head_dim(),
        );
        Ok(Self {
            qkv: w.stacked(&[(&q, [width, h]), (&k, [kv_width, h]), (&v, [kv_width, h])])?,
            o: Proj::new(w.take(&name("o_proj"), &[h, width])?)?,
            heads: l.num_attention_heads,
            head_dim: l.head_dim(),
        })
    }

    /// `residual + o(attention(q, k, v))` of layer `layer`, q, k and v in one product.
    fn forward<O: Ops>(&self, o: &mut O, layer: usize, x: &O::X, residual: O::X) -> Result<O::X> {
        let qkv = o.linear(x, &self.qkv)?;
        let attended = o.attend(qkv, layer, self.heads, self.head_dim)?;
        o.linear_add(&attended, &self.o, residual)
    }
}

struct Layer {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    attn: Attention,
    ffn: Ffn,
}

impl Layer {
    /// The layer, the one implementation of it: pre-norm attention and pre-norm MLP (dense or
    /// MoE), each added to the residual stream.
    fn forward<O: Ops>(&self, o: &mut O, index: usize, x: O::X) -> Result<O::X> {
        let normed = o.rms_norm(&x, &self.input_norm)?;
        let h = self.attn.forward(o, index, &normed, x)?;
        let normed = o.rms_norm(&h, &self.post_norm)?;
        match &self.ffn {
            Ffn::Dense(mlp) => mlp.forward(o, &normed, h),
            Ffn::Moe(moe) => moe.forward(o, &normed, h),
        }
    }
}

/// The operations a decoder layer is made of ([`Layer::forward`]). An implementation may run
/// each one its own way, never restate the layer.
trait Ops {
    /// The activations of the rows in flight.
    type X;
    /// What the MoE gate chose for the rows.
    type Route;
    fn rms_norm(&mut self, x: &Self::X, norm: &RmsNorm) -> Result<Self::X>;
    /// `x W^T`.
    fn linear(&mut self, x: &Self::X, w: &Tensor) -> Result<Self::X>;
    /// `residual + x W^T`.
    fn linear_add(&mut self, x: &Self::X, w: &Proj, residual: Self::X) -> Result<Self::X>;
    /// `silu(gate) * up` of gate-and-up projections (gate first).
    fn swiglu(&mut self, gu: &Self::X) -> Result<Self::X>;
    /// `qkv` (q, k and v side by side, `heads` heads of `head_dim` each): rotary positions on
    /// q and k, k and v appended to layer `layer`'s cache, then each query's attention over the
    /// cached keys up to its own position.
    fn attend(&mut self, qkv: Self::X, layer: usize, heads: i64, head_dim: i64) -> Result<Self::X>;
    /// The MoE gate of `moe`: softmax in f32, the top-k routed experts with their raw
    /// probabilities times the routing scale, then the shared experts with weight 1.
    fn route(&mut self, x: &Self::X, moe: &Moe) -> Result<Self::Route>;
    /// `residual + Σ w_j expert_j(x)` over the chosen experts (the sum in f32).
    fn experts_add(
        &mut self,
        x: &Self::X,
        route: Self::Route,
        moe: &Moe,
        residual: Self::X,
    ) -> Result<Self::X>;
}

/// [`Ops`] as libtorch operations on `[T, ·]` tensors, on any device: the next T positions of
/// one sequence, or one row of each of several sequences (a batched decode step). The matrix
/// products run on `path`.
struct Torch<'a, 'c> {
    path: Path,
    caches: &'a mut [&'c mut KvCache],
    /// Per cache: where its new rows go.
    at: Vec<At>,
    /// The rotary tables of the rows' positions, laid out as [`Torch::attend`] uses them.
    rope: RopeAt,
}

/// Where one sequence's new rows go in its cache.
struct At {
    /// The first new position.
    pos: i64,
    /// `pos..pos + T` (int64, on the cache's device): the positions the keys and values are
    /// written to.
    index: Tensor,
    /// Several new rows after cached ones: which keys each query sees (query i, at position
    /// `pos + i`, sees keys `0..=pos + i`).
    mask: Option<Tensor>,
}

impl At {
    fn new(pos: i64, t: i64, device: Device) -> Result<Self> {
        let mask = if t > 1 && pos > 0 {
            let qi = Tensor::f_arange(t, (Kind::Int64, device))?.f_unsqueeze(1)? + pos;
            let kj = Tensor::f_arange(pos + t, (Kind::Int64, device))?.f_unsqueeze(0)?;
            Some(kj.f_le_tensor(&qi)?)
        } else {
            None
        };
        Ok(Self {
            pos,
            index: Tensor::f_arange_start(pos, pos + t, (Kind::Int64, device))?,
            mask,
        })
    }
}

impl<'a, 'c> Torch<'a, 'c> {
    /// For `t` rows over `caches`: with one cache, its next `t` positions; with several, one
    /// row each.
    fn new(
        decoder: &Decoder,
        path: Path,
        caches: &'a mut [&'c mut KvCache],
        t: i64,
        device: Device,
    ) -> Result<Self> {
        let rows = if caches.len() == 1 { t } else { 1 };
        if caches.len() > 1 && t != caches.len() as i64 {
            return Err(OcrError::Invalid(format!(
                "a decode step over {} sequences got {t} rows",
                caches.len()
            )));
        }
        for cache in caches.iter() {
            Decoder::check_room(cache, rows)?;
        }
        let positions: Vec<i64> = caches.iter().map(|c| c.len).collect();
        let at = positions
            .iter()
            .map(|&pos| At::new(pos, rows, device))
            .collect::<Result<Vec<_>>>()?;
        let rope = match positions.as_slice() {
            [pos] => decoder.rope.at(*pos, t)?,
            _ => decoder
                .rope
                .at_each(&on_device(&Tensor::f_from_slice(&positions)?, device)?)?,
        };
        Ok(Self {
            path,
            caches,
            at,
            rope,
        })
    }
}

/// One sequence's attention: `x` `[3, heads, T, d]` (q, k, v with the rotary positions
/// applied), k and v written into the layer's cache at the new positions in one copy, then
/// every query over the keys up to its own position. Returns `[heads, T, d]`.
fn attend_cache(x: &Tensor, cache: &mut LayerCache, at: &At) -> Result<Tensor> {
    let t = x.size()[2];
    let q = x.f_select(0, 0)?;
    let _ = cache
        .kv
        .f_index_copy_(2, &at.index, &x.f_narrow(0, 1, 2)?)?;
    let cached = cache.kv.f_narrow(2, 0, at.pos + t)?.f_unbind(0)?;
    let causal = t > 1 && at.pos == 0;
    Ok(Tensor::f_scaled_dot_product_attention(
        &q,
        &cached[0],
        &cached[1],
        at.mask.as_ref(),
        0.0,
        causal,
        None,
        false,
    )?)
}

impl Ops for Torch<'_, '_> {
    type X = Tensor;
    type Route = (Tensor, Tensor);

    fn rms_norm(&mut self, x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
        let width = x.size().last().copied().unwrap_or(0);
        Ok(x.f_rms_norm([width], Some(&norm.weight), RMS_NORM_EPS)?)
    }

    fn linear(&mut self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        lin(x, w, self.path)
    }

    fn linear_add(&mut self, x: &Tensor, w: &Proj, residual: Tensor) -> Result<Tensor> {
        if self.path == Path::Libtorch && x.kind() == w.w.kind() {
            // One operation: the product accumulated onto the residual.
            Ok(residual.f_addmm(x, &w.t)?)
        } else {
            Ok(residual.f_add(&lin(x, &w.w, self.path)?)?)
        }
    }

    fn swiglu(&mut self, gu: &Tensor) -> Result<Tensor> {
        swiglu(gu)
    }

    fn attend(&mut self, qkv: Tensor, layer: usize, heads: i64, d: i64) -> Result<Tensor> {
        let t = qkv.size()[0];
        let width = heads * d;
        match &mut *self.caches {
            // One row: `[1, 3W]` is q, k and v as `[3, heads, 1, d]` already.
            [cache] if t == 1 => {
                let x = self.rope.apply(&qkv.f_view([3, heads, 1, d])?)?;
                let out = attend_cache(&x, &mut cache.layers[layer], &self.at[0])?;
                Ok(out.f_reshape([1, width])?)
            }
            [cache] => {
                let x = self
                    .rope
                    .apply(&qkv.f_view([t, 3, heads, d])?)?
                    .f_permute([1, 2, 0, 3])?;
                let out = attend_cache(&x, &mut cache.layers[layer], &self.at[0])?;
                Ok(out.f_transpose(0, 1)?.f_reshape([t, width])?)
            }
            caches => {
                let x = self.rope.apply(&qkv.f_view([t, 3, heads, d])?)?;
                let rows = caches
                    .iter_mut()
                    .zip(&self.at)
                    .enumerate()
                    .map(|(b, (cache, at))| {
                        let row = x.f_select(0, b as i64)?.f_unsqueeze(2)?;
                        attend_cache(&row, &mut cache.layers[layer], at)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::f_cat(&rows, 1)?
                    .f_transpose(0, 1)?
                    .f_reshape([t, width])?)
            }
        }
    }

    fn route(&mut self, x: &Tensor, moe: &Moe) -> Result<(Tensor, Tensor)> {
        moe.route(x)
    }

    fn experts_add(
        &mut self,
        x: &Tensor,
        (ids, weights): (Tensor, Tensor),
        moe: &Moe,
        residual: Tensor,
    ) -> Result<Tensor> {
        let tokens = x.size()[0];
        // dsocr's kernels take several tokens (a batched decode step, a prefill) expert by
        // expert, so that an expert chosen by several rows is read once (BENCHMARKS.md,
        // "Batched pages"); the grouped matmul needs one dtype.
        let one_call = tokens <= GATHER_MAX_TOKENS
            && (tokens == 1 || self.path.isa().is_none())
            && x.kind() == moe.gate_up.kind();
        let weighted = if one_call {
            moe.grouped_mm(x, &weights, &ids)?
        } else {
            Moe::weigh(&moe.grouped(x, &ids, self.path)?, &weights)?
        };
        let weighted = if weighted.kind() == residual.kind() {
            weighted
        } else {
            weighted.f_to_kind(residual.kind())?
        };
        Ok(residual.f_add(&weighted)?)
    }
}

/// [`Ops`] as dsocr's CPU kernels on f32 slices: one token of one sequence at position `pos`.
struct Step<'a> {
    isa: Isa,
    cache: &'a mut KvCache,
    pos: usize,
    /// The rotary tables' rows of `pos` (q's and k's, `[d]` each).
    cos: &'a [f32],
    sin: &'a [f32],
}

impl Ops for Step<'_> {
    type X = Vec<f32>;
    /// The chosen experts and their weights.
    type Route = Vec<(usize, f32)>;

    fn rms_norm(&mut self, x: &Vec<f32>, norm: &RmsNorm) -> Result<Vec<f32>> {
        let mut out = vec![0f32; x.len()];
        let weight = cpu_step::f32_values(&norm.weight)?;
        cpu_step::rms_norm(x, weight, RMS_NORM_EPS, &mut out);
        Ok(out)
    }

    fn linear(&mut self, x: &Vec<f32>, w: &Tensor) -> Result<Vec<f32>> {
        let m = Matrix::of(w)?;
        let mut out = vec![0f32; m.shape().0];
        gemv::matvec_pool(self.isa, m, x, &mut out)?;
        Ok(out)
    }

    fn linear_add(&mut self, x: &Vec<f32>, w: &Proj, mut residual: Vec<f32>) -> Result<Vec<f32>> {
        let y = self.linear(x, &w.w)?;
        residual.iter_mut().zip(&y).for_each(|(r, y)| *r += y);
        Ok(residual)
    }

    fn swiglu(&mut self, gu: &Vec<f32>) -> Result<Vec<f32>> {
        let (g, u) = gu.split_at(gu.len() / 2);
        let mut out = vec![0f32; g.len()];
        cpu_step::silu_mul(g, u, &mut out);
        Ok(out)
    }

    fn attend(
        &mut self,
        mut qkv: Vec<f32>,
        layer: usize,
        heads: i64,
        head_dim: i64,
    ) -> Result<Vec<f32>> {
        let (d, width, pos) = (head_dim as usize, (heads * head_dim) as usize, self.pos);
        let (q, kv) = qkv.split_at_mut(width);
        let (k, v) = kv.split_at_mut(width);
        cpu_step::rotate(q, d, self.cos, self.sin);
        cpu_step::rotate(k, d, self.cos, self.sin);
        // SAFETY: the cache's tensor belongs to this `KvCache`, borrowed mutably by this step;
        // nothing else views it meanwhile.
        let cached = unsafe { cpu_step::f32_values_mut(&mut self.cache.layers[layer].kv)? };
        let (keys, values) = cached.split_at_mut(cached.len() / 2);
        let capacity = keys.len() / width;
        for (part, new) in [(&mut *keys, &*k), (&mut *values, &*v)] {
            for (h, row) in new.chunks_exact(d).enumerate() {
                part[(h * capacity + pos) * d..][..d].copy_from_slice(row);
            }
        }
        let mut out = vec![0f32; width];
        cpu_step::attend(self.isa, q, keys, values, d, pos + 1, &mut out)?;
        Ok(out)
    }

    fn route(&mut self, x: &Vec<f32>, moe: &Moe) -> Result<Vec<(usize, f32)>> {
        let gate = Matrix::of(&moe.gate)?;
        let mut logits = vec![0f32; gate.shape().0];
        gemv::matvec_here(self.isa, gate, x, &mut logits)?;
        let scale = moe.scale as f32;
        let mut chosen: Vec<(usize, f32)> = cpu_step::softmax_top_k(&logits, moe.top_k as usize)
            .into_iter()
            .map(|(e, p)| (e, if moe.scale != 1.0 { p * scale } else { p }))
            .collect();
        let experts = moe.gate_up.size()[0] as usize;
        chosen.extend((moe.routed as usize..experts).map(|e| (e, 1.0)));
        Ok(chosen)
    }

    /// The chosen experts' gate-and-up products in one parallel pass, their down products in
    /// another, then the weighted sum onto the residual.
    fn experts_add(
        &mut self,
        x: &Vec<f32>,
        chosen: Vec<(usize, f32)>,
        moe: &Moe,
        mut residual: Vec<f32>,
    ) -> Result<Vec<f32>> {
        let experts = moe.gate_up.size()[0] as usize;
        let (gate_up, down) = (Matrix::of(&moe.gate_up)?, Matrix::of(&moe.down)?);
        let m = gate_up.shape().0 / experts.max(1) / 2;
        let hidden = residual.len();
        let mut gu = vec![0f32; chosen.len() * 2 * m];
        let jobs = chosen
            .iter()
            .zip(gu.chunks_exact_mut(2 * m))
            .map(|(&(e, _), out)| {
                let m = gate_up.stacked(e, experts)?;
                Ok(MatVec { m, x, out })
            })
            .collect::<Result<Vec<_>>>()?;
        gemv::matvecs(self.isa, jobs)?;
        let mut act = vec![0f32; chosen.len() * m];
        for (a, gu) in act.chunks_exact_mut(m).zip(gu.chunks_exact(2 * m)) {
            let (g, u) = gu.split_at(m);
            cpu_step::silu_mul(g, u, a);
        }
        let mut outs = vec![0f32; chosen.len() * hidden];
        let jobs = chosen
            .iter()
            .zip(act.chunks_exact(m))
            .zip(outs.chunks_exact_mut(hidden))
            .map(|((&(e, _), x), out)| {
                let m = down.stacked(e, experts)?;
                Ok(MatVec { m, x, out })
            })
            .collect::<Result<Vec<_>>>()?;
        gemv::matvecs(self.isa, jobs)?;
        for (i, r) in residual.iter_mut().enumerate() {
            let sum: f32 = chosen
                .iter()
                .enumerate()
                .map(|(j, &(_, w))| outs[j * hidden + i] * w)
                .sum();
            *r += sum;
        }
        Ok(residual)
    }
}

/// Rotary embedding tables (rotate-half convention over the whole head) for q, k and v side by
/// side, `[positions, 3, 1, d]` in the compute dtype, so that one expression rotates all three:
/// `x * cos + roll(x, d/2) * sin`. The sign of rotate-half is folded into `sin` (its first half
/// negated); v's slot is `cos = 1`, `sin = 0`, which leaves v exactly as it is.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(head_dim: i64, positions: i64, kind: Kind, device: Device) -> Self {
        let opts = (Kind::Float, Device::Cpu);
        let exponents = Tensor::arange_start_step(0, head_dim, 2, opts) / head_dim as f64;
        let inv_freq = Tensor::from(ROPE_THETA).pow(&exponents).reciprocal();
        let t = Tensor::arange(positions, opts);
        let freqs = t.outer(&inv_freq);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let (cos, sin) = (emb.cos(), emb.sin());
        let half = head_dim / 2;
        let signed = Tensor::cat(
            &[
                -sin.narrow(-1, 0, half),
                sin.narrow(-1, half, head_dim - half),
            ],
            -1,
        );
        let slots = |qk: &Tensor, v: f64| {
            Tensor::stack(&[qk, qk, &qk.full_like(v)], 1)
                .unsqueeze(2)
                .to_kind(kind)
                .to_device(device)
        };
        Self {
            cos: slots(&cos, 1.0),
            sin: slots(&signed, 0.0),
        }
    }

    /// The tables of positions `pos..pos + t` (one narrow of each, shared by every layer),
    /// `[t, 3, 1, d]`; one position's as `[3, 1, 1, d]`, the layout of a single row's q, k and
    /// v in [`Torch::attend`].
    fn at(&self, pos: i64, t: i64) -> Result<RopeAt> {
        let table = |tab: &Tensor| -> Result<Tensor> {
            let rows = tab.f_narrow(0, pos, t)?;
            Ok(if t == 1 {
                let d = rows.size()[3];
                rows.f_view([3, 1, 1, d])?
            } else {
                rows
            })
        };
        Ok(RopeAt {
            cos: table(&self.cos)?,
            sin: table(&self.sin)?,
        })
    }

    /// The tables of the given positions, one row each (a decode step over a batch).
    fn at_each(&self, positions: &Tensor) -> Result<RopeAt> {
        Ok(RopeAt {
            cos: self.cos.f_index_select(0, positions)?,
            sin: self.sin.f_index_select(0, positions)?,
        })
    }

    /// The query's and key's tables `[d]` of position `pos` (f32 tables, for the CPU step).
    fn row(table: &[f32], pos: usize, d: usize) -> &[f32] {
        &table[pos * 3 * d..][..d]
    }
}

/// [`Rope`]'s tables at the positions of one forward call, shaped to broadcast over q, k and v
/// (`[T, 3, 1, d]` against `[T, 3, heads, d]`, or `[3, 1, 1, d]` against `[3, heads, 1, d]`).
struct RopeAt {
    cos: Tensor,
    sin: Tensor,
}

impl RopeAt {
    /// `qkv` with q and k rotated (d is the last dimension).
    fn apply(&self, qkv: &Tensor) -> Result<Tensor> {
        let d = qkv.size().last().copied().unwrap_or(0);
        let rolled = qkv.f_roll([d / 2], [-1])?;
        Ok(qkv.f_mul(&self.cos)?.f_addcmul(&rolled, &self.sin)?)
    }
}

/// Keys and values of one layer, `[2, heads, capacity, head_dim]` (keys, then values).
struct LayerCache {
    kv: Tensor,
}

/// The KV cache of one sequence, preallocated to its maximum length.
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// Positions filled so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }
}

/// Takes the decoder's matrices out of the checkpoint tensors. On the CPU every matrix a decode
/// step reads (attention, MLPs, stacked experts, `lm_head`) is copied into one huge-page buffer
/// ([`Slab`]) and the original released (mapped file pages handed back, heap memory freed), so
/// the resident set holds each weight once and decode streams it from 2 MiB pages. Elsewhere
/// the tensors are used as they are.
/// The decoder's way of loading: tensors asked for through [`Vars`] in the stored dtype, the
/// matrices placed in one slab of host memory on the CPU ([`Slab`]).
struct Loader<'v, 'a> {
    vars: &'v mut Vars<'a>,
    /// The stored dtype (the embedding's).
    kind: Kind,
    slab: Option<Slab>,
}

impl<'v, 'a> Loader<'v, 'a> {
    /// On the CPU, with weights to load, the slab is sized for every decoder matrix they hold.
    fn new(vars: &'v mut Vars<'a>, kind: Kind) -> Result<Self> {
        let slab = match vars.weights() {
            Some(weights) if vars.device() == Device::Cpu => {
                let bytes: i64 = weights
                    .shapes_and_kinds()
                    .filter(|(name, shape, _)| {
                        (Self::is_matrix(name) && shape.len() >= 2) || *name == "lm_head.weight"
                    })
                    .map(|(_, shape, kind)| slab_bytes(&shape, kind))
                    .sum();
                Some(Slab::new(bytes)?)
            }
            _ => None,
        };
        Ok(Self { vars, kind, slab })
    }

    /// A decoder matrix that goes into the buffer: everything under `model.layers.` but the MoE
    /// gate (kept in f32, converted anyway) and the norms (1-D).
    fn is_matrix(name: &str) -> bool {
        name.starts_with("model.layers.") && !name.ends_with(".mlp.gate.weight")
    }

    /// The matrix `name` of `shape`, in the buffer when there is one.
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.vars.take(name, shape)?;
        match &mut self.slab {
            Some(slab) => {
                let copy = slab.copy_of(&t)?;
                self.vars.done_with(t);
                Ok(copy)
            }
            None => Ok(t),
        }
    }

    /// The matrices `parts` (name and shape `[N_i, K]`) stacked by rows into one new
    /// `[sum N_i, K]` matrix, in the buffer when there is one; each original is released as
    /// soon as it is copied.
    fn stacked(&mut self, parts: &[(&str, [i64; 2])]) -> Result<Tensor> {
        let cols = parts.first().map_or(0, |(_, [_, k])| *k);
        if let Some((name, shape)) = parts.iter().find(|(_, [_, k])| *k != cols) {
            return Err(OcrError::Invalid(format!(
                "{name} {shape:?} cannot be stacked with {} {:?}",
                parts[0].0, parts[0].1
            )));
        }
        let rows: i64 = parts.iter().map(|(_, [n, _])| n).sum();
        let out = self.empty(&[rows, cols])?;
        let mut start = 0;
        for (name, shape) in parts {
            let rows = out.f_narrow(0, start, shape[0])?;
            self.vars.copy_into(name, shape, vec![(rows, 0, 0)])?;
            start += shape[0];
        }
        Ok(out)
    }

    /// A new uninitialised tensor in the stored dtype, in the buffer when there is one.
    fn empty(&mut self, shape: &[i64]) -> Result<Tensor> {
        match &mut self.slab {
            Some(slab) => slab.empty(shape, self.kind),
            None => self.vars.empty(shape, self.kind),
        }
    }
}

/// The DeepSeek-V2 decoder.
pub struct Decoder {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    heads: i64,
    head_dim: i64,
    max_positions: i64,
    vocab: i64,
    /// Dtype of activations and KV cache (the stored weights may be narrower).
    compute: Kind,
    /// Where the prefill and the decode steps run.
    plan: Plan,
    /// One-token steps run on [`cpu_step`] and [`gemv`] (CPU, f32 arithmetic) of this tier
    /// instead of libtorch operations: the plan's decode tier, where the kernels apply.
    step_isa: Option<Isa>,
    /// The weights' file mappings: tensors kept above may be views of them.
    _mapping: KeepAlive,
}

impl Decoder {
    /// Build the decoder from the checkpoint tensors (taken out of `w`, which must already hold
    /// them on the compute device), computing in `compute`: the stored dtype, or f32 over
    /// narrower stored weights, with the prefill and decode paths of `plan`. Norm weights are
    /// converted to `compute` here.
    ///
    /// This is also where the decoder's tensor names and shapes are declared (see [`Vars`]).
    pub fn load(cfg: &Config, vars: &mut Vars, compute: Kind, plan: Plan) -> Result<Self> {
        let l = &cfg.language_config;
        let h = l.hidden_size;
        let embed = vars.take("model.embed_tokens.weight", &[l.vocab_size, h])?;
        let (device, stored) = (embed.device(), embed.kind());
        let mapping = vars.keep_alive();
        let mut w = Loader::new(vars, stored)?;

        let mut layers = Vec::with_capacity(l.num_hidden_layers as usize);
        for i in 0..l.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let ffn = if l.is_moe_layer(i) {
                Ffn::Moe(Moe::load(&mut w, &format!("{p}.mlp"), l)?)
            } else {
                Ffn::Dense(Mlp::load(
                    &mut w,
                    &format!("{p}.mlp"),
                    [h, l.intermediate_size],
                )?)
            };
            let norm = |w: &mut Loader, name: &str| {
                RmsNorm::load(w.vars, &format!("{p}.{name}.weight"), h, compute)
            };
            layers.push(Layer {
                input_norm: norm(&mut w, "input_layernorm")?,
                post_norm: norm(&mut w, "post_attention_layernorm")?,
                attn: Attention::load(&mut w, &p, l)?,
                ffn,
            });
        }
        // The largest single copy comes last: hand freed heap back first, so that the peak
        // of loading (everything held, plus this copy) does not also count dead chunks.
        release_free_heap();
        let lm_head = w.take("lm_head.weight", &[l.vocab_size, h])?;
        // Declaring builds no rotary tables: freeing them again (12 MB each) would raise
        // glibc's mmap threshold, and the activations of a run below it would then stay
        // resident (0.34 GB more during a run, measured).
        let positions = if w.vars.is_declaring() {
            1
        } else {
            l.max_position_embeddings
        };
        Ok(Self {
            embed,
            layers,
            norm: RmsNorm::load(w.vars, "model.norm.weight", h, compute)?,
            lm_head,
            rope: Rope::new(l.head_dim(), positions, compute, device),
            heads: l.num_attention_heads,
            head_dim: l.head_dim(),
            max_positions: l.max_position_embeddings,
            vocab: l.vocab_size,
            compute,
            plan,
            step_isa: plan
                .decode
                .isa()
                .filter(|_| Self::kernels_apply(device, stored, compute)),
            _mapping: mapping,
        })
    }

    /// The one-token kernels run f32 arithmetic on the CPU over bf16 or f32 matrices (f16
    /// weights take the libtorch step).
    fn kernels_apply(device: Device, stored: Kind, compute: Kind) -> bool {
        device == Device::Cpu
            && compute == Kind::Float
            && matches!(stored, Kind::BFloat16 | Kind::Float)
    }

    /// The path of the logits of `rows` hidden states: the decode step's for up to
    /// [`MAX_BATCH`] (a step, one row per sequence), the prefill's for more.
    fn path(&self, rows: i64) -> Path {
        if rows <= MAX_BATCH as i64 {
            self.plan.decode
        } else {
            self.plan.prefill
        }
    }

    /// For the duration of a decode loop: when this decoder's matrix products run in
    /// [`gemv`]'s kernels (f32 arithmetic on the CPU, over bf16 or f32 weights), a guard that keeps
    /// libtorch's pool to one thread (see [`gemv::SoloTorch`]); otherwise nothing.
    pub fn decode_threads(&self) -> Option<gemv::SoloTorch> {
        self.step_isa.map(|_| gemv::SoloTorch::new())
    }

    /// Vocabulary size (rows of the embedding and of the logits).
    pub fn vocab_size(&self) -> i64 {
        self.vocab
    }

    /// Longest sequence the model supports (`max_position_embeddings`).
    pub fn max_positions(&self) -> i64 {
        self.max_positions
    }

    /// Bytes of the KV cache of a sequence of `capacity` tokens.
    pub fn cache_bytes(&self, capacity: i64) -> u64 {
        let per_position = 2 * self.layers.len() as i64 * self.heads * self.head_dim;
        (per_position * capacity.max(0)) as u64 * self.compute.elt_size_in_bytes() as u64
    }

    /// A KV cache for sequences of up to `capacity` tokens (at most `max_positions`).
    pub fn new_cache(&self, capacity: i64) -> Result<KvCache> {
        if capacity <= 0 || capacity > self.max_positions {
            return Err(OcrError::Invalid(format!(
                "sequence of {capacity} tokens: the model supports 1..={} (prompt plus new \
                 tokens); lower the maximum number of new tokens",
                self.max_positions
            )));
        }
        let shape = [2, self.heads, capacity, self.head_dim];
        let opts = (self.compute, self.embed.device());
        let layers = (0..self.layers.len())
            .map(|_| {
                Ok(LayerCache {
                    kv: Tensor::f_zeros(shape, opts)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
        })
    }

    /// Token embeddings `[T, H]` of `ids` (`[T]`, int64, each below the vocabulary size).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self
            .embed
            .f_index_select(0, &on_device(ids, self.embed.device())?)?;
        Ok(if rows.kind() == self.compute {
            rows
        } else {
            rows.f_to_kind(self.compute)?
        })
    }

    /// Run `embeds` `[T, H]` (the next T positions) through the layers, appending their keys and
    /// values to `cache`; returns the final-normed hidden states `[T, H]`. Several rows are a
    /// prefill (the plan's prefill path), one row a decode step.
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let t = embeds.size()[0];
        if let (1, Some(isa)) = (t, self.step_isa) {
            Self::check_room(cache, 1)?;
            let embeds = embeds.f_to_kind(Kind::Float)?.f_contiguous()?;
            let x = cpu_step::f32_values(&embeds)?.to_vec();
            let (pos, d) = (cache.len as usize, self.head_dim as usize);
            let mut step = Step {
                isa,
                pos,
                cos: Rope::row(cpu_step::f32_values(&self.rope.cos)?, pos, d),
                sin: Rope::row(cpu_step::f32_values(&self.rope.sin)?, pos, d),
                cache,
            };
            let hidden = self.run(&mut step, x)?;
            step.cache.len += 1;
            return Ok(Tensor::f_from_slice(&hidden)?.f_view([1, hidden.len() as i64])?);
        }
        let path = if t == 1 {
            self.plan.decode
        } else {
            self.plan.prefill
        };
        self.layers_forward(embeds, &mut [cache], path)
    }

    /// One decode step of several sequences at once: row `b` of `embeds` `[B, H]` is the next
    /// token of the sequence whose cache is `caches[b]`. Every matrix product sees the B rows
    /// together, so each weight is read once per step for all of them; attention runs per
    /// sequence over its own cache. Returns the final-normed hidden states `[B, H]`. One
    /// sequence is [`Self::forward`].
    pub fn step_batch(&self, embeds: &Tensor, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        match caches {
            [cache] => self.forward(embeds, cache),
            _ => self.layers_forward(embeds, caches, self.plan.decode),
        }
    }

    fn check_room(cache: &KvCache, t: i64) -> Result<()> {
        if cache.len + t > cache.capacity {
            return Err(OcrError::Invalid(format!(
                "KV cache full: {} + {t} tokens exceed its capacity {}",
                cache.len, cache.capacity
            )));
        }
        Ok(())
    }

    /// The layers as libtorch operations ([`Torch`]) over `embeds`: with one cache, its next T
    /// positions; with B caches, one row each. Advances the caches.
    fn layers_forward(
        &self,
        embeds: &Tensor,
        caches: &mut [&mut KvCache],
        path: Path,
    ) -> Result<Tensor> {
        let t = embeds.size()[0];
        let rows = if caches.len() == 1 { t } else { 1 };
        let hidden = {
            let mut o = Torch::new(self, path, caches, t, embeds.device())?;
            self.run(&mut o, embeds.shallow_clone())?
        };
        for cache in caches.iter_mut() {
            cache.len += rows;
        }
        Ok(hidden)
    }

    /// Every layer, then the final norm.
    fn run<O: Ops>(&self, o: &mut O, mut x: O::X) -> Result<O::X> {
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(o, i, x)?;
        }
        o.rms_norm(&x, &self.norm)
    }

    /// f32 logits `[n, V]` of hidden states `[n, H]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let path = self.path(hidden.size()[0]);
        Ok(lin(hidden, &self.lm_head, path)?.to_kind(Kind::Float))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ocr::weights::Weights;

    /// The tiny model's language config (hidden 64, 8 routed experts of width 32, top-3, 2
    /// shared).
    fn tiny() -> LanguageConfig {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-model/config.json"
        );
        let text = std::fs::read_to_string(path).expect("tiny config");
        Config::from_json(&text).expect("config").language_config
    }

    /// A MoE layer's checkpoint tensors (random), loaded through [`Moe::load`], and the
    /// checkpoint tensors themselves.
    fn moe(l: &LanguageConfig) -> (Moe, HashMap<String, Tensor>) {
        let r = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.2;
        let (h, m, s) = (l.hidden_size, l.moe_intermediate_size, l.n_shared_experts);
        let p = "model.layers.1.mlp";
        let mut t = HashMap::new();
        t.insert(format!("{p}.gate.weight"), r(&[l.n_routed_experts, h]));
        let mut mlp = |prefix: String, inner: i64| {
            t.insert(format!("{prefix}.gate_proj.weight"), r(&[inner, h]));
            t.insert(format!("{prefix}.up_proj.weight"), r(&[inner, h]));
            t.insert(format!("{prefix}.down_proj.weight"), r(&[h, inner]));
        };
        for e in 0..l.n_routed_experts {
            mlp(format!("{p}.experts.{e}"), m);
        }
        mlp(format!("{p}.shared_experts"), s * m);
        let copies: HashMap<String, Tensor> =
            t.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
        let mut w = Weights::from_tensors(t, Device::Cpu);
        let mut vars = Vars::load(&mut w);
        let mut loader = Loader::new(&mut vars, Kind::Float).expect("loader");
        (Moe::load(&mut loader, p, l).expect("load"), copies)
    }

    /// The reference's MoE on `x` `[T, H]`, token by token from the checkpoint tensors: softmax
    /// gate, top-k routed experts weighted by their probabilities, plus the shared MLP (whole).
    fn reference(x: &Tensor, t: &HashMap<String, Tensor>, l: &LanguageConfig) -> Tensor {
        let p = "model.layers.1.mlp";
        let mlp = |x: &Tensor, prefix: &str| {
            let w = |n: &str| &t[&format!("{prefix}.{n}.weight")];
            let g = x.linear::<Tensor>(w("gate_proj"), None).silu();
            (g * x.linear::<Tensor>(w("up_proj"), None)).linear::<Tensor>(w("down_proj"), None)
        };
        let probs = x
            .linear::<Tensor>(&t[&format!("{p}.gate.weight")], None)
            .softmax(-1, Kind::Float);
        let (weights, ids) = probs.topk(l.num_experts_per_tok, -1, true, true);
        let rows: Vec<Tensor> = (0..x.size()[0])
            .map(|i| {
                let xi = x.narrow(0, i, 1);
                let mut y = mlp(&xi, &format!("{p}.shared_experts"));
                for j in 0..l.num_experts_per_tok {
                    let e = ids.int64_value(&[i, j]);
                    let wj = weights.double_value(&[i, j]);
                    y += mlp(&xi, &format!("{p}.experts.{e}")) * wj;
                }
                y
            })
            .collect();
        Tensor::cat(&rows, 0)
    }

    /// Ops over no cache (the MoE operations use none).
    fn torch<'a, 'c>(path: Path, caches: &'a mut [&'c mut KvCache]) -> Torch<'a, 'c> {
        Torch {
            path,
            caches,
            at: Vec::new(),
            rope: RopeAt {
                cos: Tensor::new(),
                sin: Tensor::new(),
            },
        }
    }

    #[test]
    fn every_expert_path_is_the_reference_moe() {
        let _rng = crate::ocr::weights::lock_global_rng();
        tch::manual_seed(3);
        let l = tiny();
        let (moe, tensors) = moe(&l);
        let isa = Isa::best();
        let mut empty = KvCache {
            layers: Vec::new(),
            len: 0,
            capacity: 0,
        };
        let check = |name: &str, got: &Tensor, want: &Tensor| {
            let diff = (got - want).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{name}: max diff {diff}");
        };
        for tokens in [1, 2, 4, 9] {
            let x = Tensor::randn([tokens, l.hidden_size], (Kind::Float, Device::Cpu));
            let want = reference(&x, &tensors, &l);
            let zero = x.zeros_like();
            // libtorch: the grouped matmul for up to 4 tokens, expert by expert above.
            for path in [Path::Libtorch, Path::Kernels(isa)] {
                let mut o = torch(path, &mut []);
                let got = moe
                    .forward(&mut o, &x, zero.shallow_clone())
                    .expect("torch");
                check(
                    &format!("{tokens} token(s) on {}", path.name()),
                    &got,
                    &want,
                );
            }
            // dsocr's one-token step, row by row.
            for i in 0..tokens {
                let mut step = Step {
                    isa,
                    cache: &mut empty,
                    pos: 0,
                    cos: &[],
                    sin: &[],
                };
                let row = Vec::<f32>::try_from(x.get(i)).expect("row");
                let got = moe
                    .forward(&mut step, &row, vec![0.0; row.len()])
                    .expect("step");
                check(
                    &format!("step, row {i} of {tokens}"),
                    &Tensor::from_slice(&got).unsqueeze(0),
                    &want.narrow(0, i, 1),
                );
            }
        }
    }
}
