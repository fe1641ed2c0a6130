//! DeepSeek-V2 language model (MHA, RoPE, dense layer 0, then MoE) with a KV cache.
//!
//! Precision follows the reference: weights and matmuls in the compute dtype; RMSNorm
//! statistics, the MoE gate (linear + softmax + top-k) and the routed-expert weighting in f32;
//! logits returned as f32. A decode step on an accelerator makes no host round trip: the routed
//! experts of the step's tokens are gathered from stacked expert weights (`index_select` + `bmm`). Prefill
//! groups the tokens by expert (one read of the per-expert counts per MoE layer, which on the
//! CPU is plain memory; on CUDA it is the one synchronisation of that layer). On the CPU (f32
//! arithmetic) a one-token step leaves libtorch altogether: slice kernels ([`cpu_step`]) for the
//! norms, rotary positions, attention over the cache and the gate, and [`gemv`] products for
//! every matrix, the chosen experts read straight from the stacked weights. There the decoder's
//! matrices live in one huge-page buffer ([`Slab`]).
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
use super::weights::{Weights, release_free_heap};

/// Up to this many tokens, routed experts are gathered per token (decode); above it, tokens are
/// grouped by expert (prefill).
const GATHER_MAX_TOKENS: i64 = 4;

/// Most sequences one decode step runs together ([`Decoder::step_batch`]).
pub const MAX_BATCH: usize = 16;

/// `x W^T` for any pair of stored and compute dtypes on `path` (see [`gemv::linear_any`]).
fn lin(x: &Tensor, weight: &Tensor, path: Path) -> Result<Tensor> {
    gemv::linear_any(x, weight, None, path)
}

/// RMSNorm: statistics in f32, the normalised values cast back to the activations' dtype, then
/// scaled by the weight in that dtype (the reference's order), as libtorch's one `rms_norm` op.
struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    /// The weight `name`, converted to the compute dtype.
    fn load(w: &mut Weights, name: &str, compute: Kind) -> Result<Self> {
        Ok(Self {
            weight: w.take(name)?.f_to_kind(compute)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let width = x.size().last().copied().unwrap_or(0);
        Ok(x.f_rms_norm([width], Some(&self.weight), RMS_NORM_EPS)?)
    }
}

/// Gated SiLU MLP: `down(silu(gate(x)) * up(x))`, the gate and up projections stacked into one
/// matrix (`[2I, H]`: gate rows, then up rows), so that one product computes both.
struct Mlp {
    gate_up: Tensor,
    down: Tensor,
}

impl Mlp {
    fn load(w: &mut Loader<'_>, prefix: &str) -> Result<Self> {
        let gate = format!("{prefix}.gate_proj.weight");
        let up = format!("{prefix}.up_proj.weight");
        Ok(Self {
            gate_up: w.stacked(&[&gate, &up])?,
            down: w.take(&format!("{prefix}.down_proj.weight"))?,
        })
    }

    /// Rows of the gate projection (the inner width).
    fn inner(&self) -> i64 {
        self.gate_up.size()[0] / 2
    }

    /// `out = down(silu(gate x) * up x)` for one token on the CPU.
    fn step_cpu(&self, isa: Isa, x: &[f32], out: &mut [f32]) -> Result<()> {
        let inner = self.inner() as usize;
        let mut gu = vec![0f32; 2 * inner];
        gemv::matvec_pool(isa, Matrix::of(&self.gate_up)?, x, &mut gu)?;
        let mut act = vec![0f32; inner];
        let (g, u) = gu.split_at(inner);
        cpu_step::silu_mul(g, u, &mut act);
        gemv::matvec_pool(isa, Matrix::of(&self.down)?, &act, out)
    }

    fn forward(&self, x: &Tensor, path: Path) -> Result<Tensor> {
        let gu = lin(x, &self.gate_up, path)?;
        lin(&swiglu(&gu)?, &self.down, path)
    }
}

/// `silu(gate) * up` of `[..., 2M]` gate-and-up projections (gate first): `[..., M]`.
fn swiglu(gu: &Tensor) -> Result<Tensor> {
    let halves = gu.f_chunk(2, -1)?;
    Ok(halves[0].f_silu()?.f_mul(&halves[1])?)
}

/// Mixture of experts: softmax gate in f32, top-k without renormalisation, routed experts
/// weighted by their raw probabilities, plus the shared experts (unweighted).
struct Moe {
    /// `[E, H]`, f32.
    gate: Tensor,
    /// Stacked routed experts: gate and up projections `[E, 2M, H]`, down `[E, H, M]`.
    gate_up: Tensor,
    down: Tensor,
    /// The same weights seen as `[E, H, 2M]` and `[E, M, H]` (transposed views, no copy): the
    /// right-hand operands of a grouped matmul.
    gate_up_t: Tensor,
    down_t: Tensor,
    /// `0..E` (int64) on the weights' device.
    expert_ids: Tensor,
    inner: i64,
    top_k: i64,
    scale: f64,
    shared: Option<Mlp>,
}

impl Moe {
    /// Stacks the routed experts into preallocated tensors, freeing each expert's own tensors
    /// as soon as they are copied (heap memory returned after each layer, mapped file pages
    /// released), so loading needs one layer's experts of extra memory at most.
    fn load(w: &mut Loader<'_>, prefix: &str, l: &LanguageConfig) -> Result<Self> {
        let (experts, inner, hidden) = (l.n_routed_experts, l.moe_intermediate_size, l.hidden_size);
        let kind = w
            .weights
            .shape_and_kind(&format!("{prefix}.gate.weight"))?
            .1;
        let opts = (kind, w.weights.device());
        let gate_up = w.empty(&[experts, 2 * inner, hidden], opts)?;
        let down = w.empty(&[experts, hidden, inner], opts)?;
        for e in 0..experts {
            let p = format!("{prefix}.experts.{e}");
            let slot = gate_up.get(e);
            for (mut dst, name) in [
                (slot.narrow(0, 0, inner), "gate_proj"),
                (slot.narrow(0, inner, inner), "up_proj"),
                (down.get(e), "down_proj"),
            ] {
                // Straight from the host tensor into its slot (one upload on a GPU).
                let t = w.weights.take_host(&format!("{p}.{name}.weight"))?;
                dst.f_copy_(&t)?;
                w.weights.done_with(t);
            }
        }
        release_free_heap();
        let shared = if l.n_shared_experts > 0 {
            Some(Mlp::load(w, &format!("{prefix}.shared_experts"))?)
        } else {
            None
        };
        Ok(Self {
            gate: w
                .weights
                .take(&format!("{prefix}.gate.weight"))?
                .f_to_kind(Kind::Float)?,
            gate_up_t: gate_up.f_transpose(1, 2)?,
            down_t: down.f_transpose(1, 2)?,
            expert_ids: Tensor::f_arange(experts, (Kind::Int64, gate_up.device()))?,
            gate_up,
            down,
            inner: l.moe_intermediate_size,
            top_k: l.num_experts_per_tok,
            scale: l.routed_scaling_factor,
            shared,
        })
    }

    fn forward(&self, x: &Tensor, path: Path) -> Result<Tensor> {
        let tokens = x.size()[0];
        let x32 = if x.kind() == Kind::Float {
            x.shallow_clone()
        } else {
            x.f_to_kind(Kind::Float)?
        };
        let probs = x32
            .f_linear::<Tensor>(&self.gate, None)?
            .f_softmax(-1, Kind::Float)?;
        let (weights, ids) = probs.f_topk(self.top_k, -1, true, true)?;
        // dsocr's kernels take several tokens (a batched decode step, a prefill) expert by
        // expert, so that an expert chosen by several rows is read once (faster than gathering
        // per token for batched steps; BENCHMARKS.md, "Batched pages").
        let grouped_here = tokens > GATHER_MAX_TOKENS || (tokens > 1 && path.isa().is_some());
        let weighted = if grouped_here {
            self.weigh(&self.grouped(x, &ids, path)?, &weights)?
        } else {
            match path {
                Path::Kernels(isa) if gemv::applies(x, &self.gate_up) => {
                    let routed = gemv::routed_experts(isa, x, &ids, &self.gate_up, &self.down)?;
                    self.weigh(&routed, &weights)?
                }
                _ if x.kind() == self.gate_up.kind() => self.grouped_mm(x, &weights, &ids)?,
                // Weights stored narrower than the activations (f16 weights, f32 arithmetic, on
                // the CPU): the chosen experts are copied and widened.
                _ => self.weigh(&self.gathered(x, &ids), &weights)?,
            }
        };
        let weighted = if self.scale != 1.0 {
            weighted * self.scale
        } else {
            weighted
        };
        let mut y = weighted.to_kind(x.kind());
        if let Some(shared) = &self.shared {
            y += shared.forward(x, path)?;
        }
        Ok(y)
    }

    /// The MoE block for one token on the CPU: gate, top-k, then the chosen experts' and the
    /// shared experts' gate-and-up products in one parallel pass and their down products in
    /// another; `out` gets the weighted sum plus the shared output.
    fn step_cpu(&self, isa: Isa, x: &[f32], out: &mut [f32]) -> Result<()> {
        let gate = Matrix::of(&self.gate)?;
        let (experts, _) = gate.shape();
        let mut logits = vec![0f32; experts];
        gemv::matvec_here(isa, gate, x, &mut logits)?;
        let chosen = cpu_step::softmax_top_k(&logits, self.top_k as usize);
        let m = self.inner as usize;
        let stacked_gu = Matrix::of(&self.gate_up)?;
        let stacked_down = Matrix::of(&self.down)?;
        let mut gu = vec![0f32; chosen.len() * 2 * m];
        let mut jobs = Vec::with_capacity(chosen.len() + 2);
        for (&(e, _), out) in chosen.iter().zip(gu.chunks_exact_mut(2 * m)) {
            jobs.push(MatVec {
                m: stacked_gu.stacked(e, experts)?,
                x,
                out,
            });
        }
        let shared_inner = self.shared.as_ref().map_or(0, |s| s.inner() as usize);
        let mut shared_gu = vec![0f32; 2 * shared_inner];
        if let Some(s) = &self.shared {
            jobs.push(MatVec {
                m: Matrix::of(&s.gate_up)?,
                x,
                out: &mut shared_gu,
            });
        }
        gemv::matvecs(isa, jobs)?;
        let mut act = vec![0f32; chosen.len() * m];
        for (a, gu) in act.chunks_exact_mut(m).zip(gu.chunks_exact(2 * m)) {
            let (g, u) = gu.split_at(m);
            cpu_step::silu_mul(g, u, a);
        }
        let mut shared_act = vec![0f32; shared_inner];
        let (sg, su) = shared_gu.split_at(shared_inner);
        cpu_step::silu_mul(sg, su, &mut shared_act);
        let hidden = out.len();
        let mut routed = vec![0f32; chosen.len() * hidden];
        let mut jobs = Vec::with_capacity(chosen.len() + 1);
        for ((&(e, _), a), out) in chosen
            .iter()
            .zip(act.chunks_exact(m))
            .zip(routed.chunks_exact_mut(hidden))
        {
            jobs.push(MatVec {
                m: stacked_down.stacked(e, experts)?,
                x: a,
                out,
            });
        }
        let mut shared_out = vec![0f32; hidden];
        if let Some(s) = &self.shared {
            jobs.push(MatVec {
                m: Matrix::of(&s.down)?,
                x: &shared_act,
                out: &mut shared_out,
            });
        }
        gemv::matvecs(isa, jobs)?;
        let scale = self.scale as f32;
        for (i, o) in out.iter_mut().enumerate() {
            let weighted: f32 = chosen
                .iter()
                .enumerate()
                .map(|(j, &(_, p))| routed[j * hidden + i] * p)
                .sum();
            *o = weighted * scale + shared_out[i];
        }
        Ok(())
    }

    /// The routed outputs `[T * k, H]` (assignment order) weighted by their probabilities
    /// `weights` `[T, k]` and summed per token, in f32: `[T, H]`.
    fn weigh(&self, routed: &Tensor, weights: &Tensor) -> Result<Tensor> {
        let (tokens, hidden) = (weights.size()[0], routed.size()[1]);
        Ok((routed
            .f_view([tokens, self.top_k, hidden])?
            .f_to_kind(Kind::Float)?
            * weights.f_unsqueeze(-1)?)
        .f_sum_dim_intlist(1, false, Kind::Float)?)
    }

    /// A few tokens (decode) through libtorch's grouped matmul, straight from the stacked
    /// weights: the assignments sorted by expert, each expert's rows multiplied by its own
    /// matrices in one call, nothing copied and nothing read back to the host (the group
    /// boundaries are computed on the device). Returns the weighted sum `[T, H]` in f32.
    fn grouped_mm(&self, x: &Tensor, weights: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (tokens, hidden) = x.size2()?;
        let k = self.top_k;
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
            // One token: its k distinct experts in increasing order, its row repeated.
            let (sorted, perm) = ids.f_sort(-1, false)?;
            let out = run(&x.f_repeat([k, 1])?, &sorted.f_view([-1])?)?;
            return Ok(weights.f_gather(-1, &perm, false)?.f_matmul(&out)?);
        }
        let (sorted, perm) = ids.f_reshape([-1])?.f_sort(0, false)?;
        let token = perm.f_floor_divide_scalar(k)?;
        let out = run(&x.f_index_select(0, &token)?, &sorted)?;
        let w = weights.f_reshape([-1])?.f_index_select(0, &perm)?;
        let zeros = Tensor::f_zeros([tokens, hidden], (Kind::Float, x.device()))?;
        Ok(zeros.f_index_add(0, &token, &(out * w.f_unsqueeze(-1)?))?)
    }

    /// Expert MLP on rows `x` `[n, H]` with that expert's `gate_up` `[2M, H]` and `down`.
    fn expert(&self, x: &Tensor, gate_up: &Tensor, down: &Tensor, path: Path) -> Result<Tensor> {
        let gu = lin(x, gate_up, path)?;
        lin(&swiglu(&gu)?, down, path)
    }

    /// Few tokens whose activations are wider than the stored weights (the grouped matmul needs
    /// one dtype): gather each assignment's expert weights (a copy of k experts per token),
    /// widen them, and run them as one batched matmul. Returns `[tokens * k, H]` in assignment
    /// order.
    fn gathered(&self, x: &Tensor, ids: &Tensor) -> Tensor {
        let flat = ids.reshape([-1]);
        let xs = x
            .repeat_interleave_self_int(self.top_k, 0, None)
            .unsqueeze(-1);
        // Weights stored narrower than the activations (f16 on the CPU) are widened here.
        let gate_up = self.gate_up.index_select(0, &flat).to_kind(x.kind());
        let down = self.down.index_select(0, &flat).to_kind(x.kind());
        let gu = gate_up.bmm(&xs);
        let act = gu.narrow(1, 0, self.inner).silu() * gu.narrow(1, self.inner, self.inner);
        down.bmm(&act).squeeze_dim(-1)
    }

    /// Many tokens: sort the assignments by expert and run each expert once on its rows.
    /// Returns `[tokens * k, H]` in assignment order.
    fn grouped(&self, x: &Tensor, ids: &Tensor, path: Path) -> Result<Tensor> {
        let experts = self.gate_up.size()[0];
        let flat = ids.reshape([-1]);
        let order = flat.argsort(0, false);
        let rows = x.index_select(0, &order.floor_divide_scalar(self.top_k));
        let counts = Vec::<i64>::try_from(
            flat.bincount::<Tensor>(None, experts)
                .to_device(Device::Cpu),
        )?;
        let mut outputs = Vec::with_capacity(experts as usize);
        let mut start = 0;
        for (e, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let e = e as i64;
            outputs.push(self.expert(
                &rows.narrow(0, start, n),
                &self.gate_up.get(e),
                &self.down.get(e),
                path,
            )?);
            start += n;
        }
        let sorted = Tensor::f_cat(&outputs, 0)?;
        Ok(sorted.zeros_like().index_copy(0, &order, &sorted))
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
    o: Tensor,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    fn load(w: &mut Loader<'_>, prefix: &str, l: &LanguageConfig) -> Result<Self> {
        let name = |n: &str| format!("{prefix}.self_attn.{n}.weight");
        let (q, k, v) = (name("q_proj"), name("k_proj"), name("v_proj"));
        Ok(Self {
            qkv: w.stacked(&[&q, &k, &v])?,
            o: w.take(&name("o_proj"))?,
            heads: l.num_attention_heads,
            head_dim: l.head_dim(),
        })
    }

    /// `x` `[T, H]` (`rope` holds the tables of its rows' positions): q, k and v in one product,
    /// viewed as `[T, 3, heads, d]`; the rotary positions applied to all three at once (v's
    /// tables leave it as it is); then attention over the cache, and the output projection.
    /// With one cache the T rows are the next T positions of that sequence; with several, row
    /// `b` is the next token of the sequence of `caches[b]` (a decode step over a batch).
    fn forward(
        &self,
        x: &Tensor,
        rope: &RopeAt,
        caches: &mut [&mut LayerCache],
        positions: &[i64],
        path: Path,
    ) -> Result<Tensor> {
        let t = x.size()[0];
        let (heads, d) = (self.heads, self.head_dim);
        let qkv = rope.apply(&lin(x, &self.qkv, path)?.f_view([t, 3, heads, d])?)?;
        let out = match caches {
            [cache] => Self::attend(&qkv, cache, positions[0])?,
            _ => {
                let rows = caches
                    .iter_mut()
                    .zip(positions)
                    .enumerate()
                    .map(|(b, (cache, &pos))| {
                        Self::attend(&qkv.f_narrow(0, b as i64, 1)?, cache, pos)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::f_cat(&rows, 0)?
            }
        };
        lin(&out, &self.o, path)
    }

    /// Attention of one sequence's rows `qkv` `[T, 3, heads, d]` (positions `pos..pos + T`): k
    /// and v written into the cache in one copy, then every query over the keys up to its own
    /// position. Returns `[T, heads * d]`.
    fn attend(qkv: &Tensor, cache: &mut LayerCache, pos: i64) -> Result<Tensor> {
        let (t, heads, d) = (qkv.size()[0], qkv.size()[2], qkv.size()[3]);
        let q = qkv.f_select(1, 0)?.f_transpose(0, 1)?;
        let kv = qkv.f_narrow(1, 1, 2)?.f_permute([1, 2, 0, 3])?;
        cache.kv.f_narrow(2, pos, t)?.f_copy_(&kv)?;
        let cached = cache.kv.f_narrow(2, 0, pos + t)?.f_unbind(0)?;
        let (mask, causal) = if t == 1 {
            (None, false)
        } else if pos == 0 {
            (None, true)
        } else {
            // Query i (at position pos + i) sees keys 0..=pos + i.
            let device = qkv.device();
            let qi = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(1) + pos;
            let kj = Tensor::arange(pos + t, (Kind::Int64, device)).unsqueeze(0);
            (Some(kj.le_tensor(&qi)), false)
        };
        let out = Tensor::f_scaled_dot_product_attention(
            &q, &cached[0], &cached[1], mask, 0.0, causal, None, false,
        )?;
        Ok(out.f_transpose(0, 1)?.f_reshape([t, heads * d])?)
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

    /// The tables of positions `pos..pos + t` (one narrow of each, shared by every layer).
    fn at(&self, pos: i64, t: i64) -> Result<RopeAt> {
        Ok(RopeAt {
            cos: self.cos.f_narrow(0, pos, t)?,
            sin: self.sin.f_narrow(0, pos, t)?,
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

/// [`Rope`]'s tables at the positions of one forward call, `[T, 3, 1, d]`.
struct RopeAt {
    cos: Tensor,
    sin: Tensor,
}

impl RopeAt {
    /// `qkv` `[T, 3, heads, d]` with q and k rotated.
    fn apply(&self, qkv: &Tensor) -> Result<Tensor> {
        let d = qkv.size()[3];
        let rolled = qkv.f_roll([d / 2], [-1])?;
        Ok(qkv.f_mul(&self.cos)?.f_addcmul(&rolled, &self.sin)?)
    }
}

struct Layer {
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    attn: Attention,
    ffn: Ffn,
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
struct Loader<'a> {
    weights: &'a mut Weights,
    slab: Option<Slab>,
}

impl<'a> Loader<'a> {
    fn new(weights: &'a mut Weights, device: Device) -> Result<Self> {
        let slab = if device == Device::Cpu {
            let bytes: i64 = weights
                .shapes_and_kinds()
                .filter(|(name, shape, _)| {
                    (Self::is_matrix(name) && shape.len() >= 2) || *name == "lm_head.weight"
                })
                .map(|(_, shape, kind)| slab_bytes(&shape, kind))
                .sum();
            Some(Slab::new(bytes)?)
        } else {
            None
        };
        Ok(Self { weights, slab })
    }

    /// A decoder matrix that goes into the buffer: everything under `model.layers.` but the MoE
    /// gate (kept in f32, converted anyway) and the norms (1-D).
    fn is_matrix(name: &str) -> bool {
        name.starts_with("model.layers.") && !name.ends_with(".mlp.gate.weight")
    }

    /// The matrix `name`, in the buffer when there is one.
    fn take(&mut self, name: &str) -> Result<Tensor> {
        let t = self.weights.take(name)?;
        match &mut self.slab {
            Some(slab) => {
                let copy = slab.copy_of(&t)?;
                self.weights.done_with(t);
                Ok(copy)
            }
            None => Ok(t),
        }
    }

    /// The matrices `names` (`[N_i, K]`, one dtype and device) stacked by rows into one new
    /// `[sum N_i, K]` matrix, in the buffer when there is one; each original is released as
    /// soon as it is copied.
    fn stacked(&mut self, names: &[&str]) -> Result<Tensor> {
        let (shapes, kinds): (Vec<_>, Vec<_>) = names
            .iter()
            .map(|name| self.weights.shape_and_kind(name))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let kind = kinds[0];
        let cols = shapes[0][1];
        if let Some((name, shape)) = names
            .iter()
            .zip(&shapes)
            .find(|(_, s)| s.len() != 2 || s[1] != cols)
        {
            return Err(OcrError::Invalid(format!(
                "{name} {shape:?} cannot be stacked with {} {:?}",
                names[0], shapes[0]
            )));
        }
        let rows: i64 = shapes.iter().map(|s| s[0]).sum();
        let out = self.empty(&[rows, cols], (kind, self.weights.device()))?;
        let mut start = 0;
        for (name, shape) in names.iter().zip(&shapes) {
            // Straight from the host tensor into its rows (one upload on a GPU).
            let t = self.weights.take_host(name)?;
            out.f_narrow(0, start, shape[0])?.f_copy_(&t)?;
            self.weights.done_with(t);
            start += shape[0];
        }
        Ok(out)
    }

    /// A new uninitialised tensor, in the buffer when there is one.
    fn empty(&mut self, shape: &[i64], opts: (Kind, Device)) -> Result<Tensor> {
        match &mut self.slab {
            Some(slab) => slab.empty(shape, opts.0),
            None => Ok(Tensor::f_empty(shape, opts)?),
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
}

impl Decoder {
    /// Build the decoder from the checkpoint tensors (taken out of `w`, which must already hold
    /// them on the compute device), computing in `compute`: the stored dtype, or f32 over
    /// narrower stored weights, with the prefill and decode paths of `plan`. Norm weights are
    /// converted to `compute` here.
    pub fn load(cfg: &Config, w: &mut Weights, compute: Kind, plan: Plan) -> Result<Self> {
        let l = &cfg.language_config;
        let embed = w.take("model.embed_tokens.weight")?;
        let (device, stored) = (embed.device(), embed.kind());
        let mut w = Loader::new(w, device)?;

        let mut layers = Vec::with_capacity(l.num_hidden_layers as usize);
        for i in 0..l.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let ffn = if l.is_moe_layer(i) {
                Ffn::Moe(Moe::load(&mut w, &format!("{p}.mlp"), l)?)
            } else {
                Ffn::Dense(Mlp::load(&mut w, &format!("{p}.mlp"))?)
            };
            layers.push(Layer {
                input_norm: RmsNorm::load(
                    w.weights,
                    &format!("{p}.input_layernorm.weight"),
                    compute,
                )?,
                post_norm: RmsNorm::load(
                    w.weights,
                    &format!("{p}.post_attention_layernorm.weight"),
                    compute,
                )?,
                attn: Attention::load(&mut w, &p, l)?,
                ffn,
            });
        }
        // The largest single copy comes last: hand freed heap back first, so that the peak
        // of loading (everything held, plus this copy) does not also count dead chunks.
        release_free_heap();
        let lm_head = w.take("lm_head.weight")?;
        Ok(Self {
            embed,
            layers,
            norm: RmsNorm::load(w.weights, "model.norm.weight", compute)?,
            lm_head,
            rope: Rope::new(l.head_dim(), l.max_position_embeddings, compute, device),
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

    /// One decode step on the CPU: `embeds` `[1, H]` at position `cache.len` through every
    /// layer with [`cpu_step`] kernels and [`gemv`] products (each layer's q, k and v in one
    /// parallel pass; a MoE layer's chosen and shared experts in two); returns the final-normed
    /// hidden state `[1, H]`. Does not advance `cache.len`.
    fn step_cpu(&self, isa: Isa, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let pos = cache.len as usize;
        let d = self.head_dim as usize;
        let width = (self.heads * self.head_dim) as usize;
        let embeds = embeds.f_to_kind(Kind::Float)?.f_contiguous()?;
        let mut x = cpu_step::f32_values(&embeds)?.to_vec();
        let hidden = x.len();
        let mut normed = vec![0f32; hidden];
        let mut qkv = vec![0f32; 3 * width];
        let mut attended = vec![0f32; width];
        let mut delta = vec![0f32; hidden];
        let cos = Rope::row(cpu_step::f32_values(&self.rope.cos)?, pos, d);
        let sin = Rope::row(cpu_step::f32_values(&self.rope.sin)?, pos, d);
        for (layer, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let norm = cpu_step::f32_values(&layer.input_norm.weight)?;
            cpu_step::rms_norm(&x, norm, RMS_NORM_EPS, &mut normed);
            let a = &layer.attn;
            gemv::matvec_pool(isa, Matrix::of(&a.qkv)?, &normed, &mut qkv)?;
            let (q, kv) = qkv.split_at_mut(width);
            let (k, v) = kv.split_at_mut(width);
            cpu_step::rotate(q, d, cos, sin);
            cpu_step::rotate(k, d, cos, sin);
            // SAFETY: the cache's tensor belongs to this `KvCache`, borrowed mutably here;
            // nothing else views it during the step.
            let cached = unsafe { cpu_step::f32_values_mut(&mut lc.kv)? };
            let (keys, values) = cached.split_at_mut(cached.len() / 2);
            let capacity = keys.len() / width;
            for (part, new) in [(&mut *keys, &*k), (&mut *values, &*v)] {
                for (h, row) in new.chunks_exact(d).enumerate() {
                    part[(h * capacity + pos) * d..][..d].copy_from_slice(row);
                }
            }
            cpu_step::attend(isa, q, keys, values, d, pos + 1, &mut attended)?;
            gemv::matvec_pool(isa, Matrix::of(&a.o)?, &attended, &mut delta)?;
            x.iter_mut().zip(&delta).for_each(|(x, d)| *x += d);

            let norm = cpu_step::f32_values(&layer.post_norm.weight)?;
            cpu_step::rms_norm(&x, norm, RMS_NORM_EPS, &mut normed);
            match &layer.ffn {
                Ffn::Dense(mlp) => mlp.step_cpu(isa, &normed, &mut delta)?,
                Ffn::Moe(moe) => moe.step_cpu(isa, &normed, &mut delta)?,
            }
            x.iter_mut().zip(&delta).for_each(|(x, d)| *x += d);
        }
        let norm = cpu_step::f32_values(&self.norm.weight)?;
        cpu_step::rms_norm(&x, norm, RMS_NORM_EPS, &mut normed);
        Ok(Tensor::from_slice(&normed).view([1, hidden as i64]))
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
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        self.embed
            .index_select(0, &ids.to_device(self.embed.device()))
            .to_kind(self.compute)
    }

    /// Run `embeds` `[T, H]` (the next T positions) through the layers, appending their keys and
    /// values to `cache`; returns the final-normed hidden states `[T, H]`. Several rows are a
    /// prefill (the plan's prefill path), one row a decode step.
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let t = embeds.size()[0];
        if let (1, Some(isa)) = (t, self.step_isa) {
            Self::check_room(cache, 1)?;
            let hidden = self.step_cpu(isa, embeds, cache)?;
            cache.len += 1;
            return Ok(hidden);
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
            _ if embeds.size()[0] != caches.len() as i64 => Err(OcrError::Invalid(format!(
                "a decode step over {} sequences got {} rows",
                caches.len(),
                embeds.size()[0]
            ))),
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

    /// The layers over `embeds`: with one cache, its next T positions; with B caches, one row
    /// each (see [`Attention::forward`]). Advances the caches.
    fn layers_forward(
        &self,
        embeds: &Tensor,
        caches: &mut [&mut KvCache],
        path: Path,
    ) -> Result<Tensor> {
        let t = embeds.size()[0];
        let rows = if caches.len() == 1 { t } else { 1 };
        for cache in caches.iter() {
            Self::check_room(cache, rows)?;
        }
        let positions: Vec<i64> = caches.iter().map(|c| c.len).collect();
        let rope = match caches {
            [_] => self.rope.at(positions[0], t)?,
            _ => self
                .rope
                .at_each(&Tensor::from_slice(&positions).to_device(embeds.device()))?,
        };
        let mut x = embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut LayerCache> =
                caches.iter_mut().map(|c| &mut c.layers[i]).collect();
            let normed = layer.input_norm.forward(&x)?;
            let h = &x
                + layer
                    .attn
                    .forward(&normed, &rope, &mut layer_caches, &positions, path)?;
            let normed = layer.post_norm.forward(&h)?;
            let f = match &layer.ffn {
                Ffn::Dense(mlp) => mlp.forward(&normed, path)?,
                Ffn::Moe(moe) => moe.forward(&normed, path)?,
            };
            x = h + f;
        }
        for cache in caches.iter_mut() {
            cache.len += rows;
        }
        self.norm.forward(&x)
    }

    /// f32 logits `[n, V]` of hidden states `[n, H]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let path = self.path(hidden.size()[0]);
        Ok(lin(hidden, &self.lm_head, path)?.to_kind(Kind::Float))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MoE block over the given stacked experts (`[E, 2M, H]`, `[E, H, M]`), top-3.
    fn moe_of(gate: &Tensor, gate_up: Tensor, down: Tensor, shared: Option<Mlp>) -> Moe {
        Moe {
            gate: gate.copy(),
            gate_up_t: gate_up.transpose(1, 2),
            down_t: down.transpose(1, 2),
            expert_ids: Tensor::arange(gate_up.size()[0], (Kind::Int64, Device::Cpu)),
            inner: down.size()[2],
            gate_up,
            down,
            top_k: 3,
            scale: 1.0,
            shared,
        }
    }

    /// A random MoE block: 8 experts of width 16 on hidden 32, top-3, one shared expert.
    fn moe() -> Moe {
        let r = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.2;
        let shared = Mlp {
            gate_up: r(&[32, 32]),
            down: r(&[32, 16]),
        };
        moe_of(&r(&[8, 32]), r(&[8, 32, 32]), r(&[8, 32, 16]), Some(shared))
    }

    #[test]
    fn expert_paths_agree() {
        tch::manual_seed(3);
        let m = moe();
        let x = Tensor::randn([4, 32], (Kind::Float, Device::Cpu));
        let probs = x.linear::<Tensor>(&m.gate, None).softmax(-1, Kind::Float);
        let (weights, ids) = probs.topk(3, -1, true, true);
        let isa = Isa::best();
        let a = m.gathered(&x, &ids);
        let b = gemv::routed_experts(isa, &x, &ids, &m.gate_up, &m.down).expect("routed");
        let c = m.grouped(&x, &ids, Path::Libtorch).expect("grouped");
        // Reference: every (token, slot) through its expert one by one.
        let ids_v = Vec::<i64>::try_from(ids.reshape([-1])).expect("ids");
        let rows: Vec<Tensor> = ids_v
            .iter()
            .enumerate()
            .map(|(i, &e)| {
                let t = x.get(i as i64 / 3).unsqueeze(0);
                let gu = m.gate_up.get(e);
                let g = t.linear::<Tensor>(&gu.narrow(0, 0, 16), None).silu();
                let u = t.linear::<Tensor>(&gu.narrow(0, 16, 16), None);
                (g * u).linear::<Tensor>(&m.down.get(e), None)
            })
            .collect();
        let want = Tensor::cat(&rows, 0);
        // bf16 stacked weights through the same kernel, against f32 math on the same
        // (bf16-rounded) weights.
        let (gu16, down16) = (
            m.gate_up.to_kind(Kind::BFloat16),
            m.down.to_kind(Kind::BFloat16),
        );
        let d = gemv::routed_experts(isa, &x, &ids, &gu16, &down16).expect("routed bf16");
        let rounded = moe_of(
            &m.gate,
            gu16.to_kind(Kind::Float),
            down16.to_kind(Kind::Float),
            None,
        );
        let want16 = rounded.gathered(&x, &ids);
        let diff = (&d - &want16).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "routed bf16: max diff {diff}");
        for (name, got) in [("gathered", a), ("routed", b), ("grouped", c)] {
            let diff = (&got - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{name}: max diff {diff}");
        }
        // The grouped matmul gives the weighted sums directly: four tokens, then one.
        let weighted = m.weigh(&want, &weights).expect("weigh");
        let got = m.grouped_mm(&x, &weights, &ids).expect("grouped_mm");
        let diff = (&got - &weighted).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "grouped_mm, 4 tokens: max diff {diff}");
        let one = m
            .grouped_mm(
                &x.narrow(0, 2, 1),
                &weights.narrow(0, 2, 1),
                &ids.narrow(0, 2, 1),
            )
            .expect("grouped_mm, one token");
        let diff = (&one - &weighted.narrow(0, 2, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "grouped_mm, 1 token: max diff {diff}");
    }
}
