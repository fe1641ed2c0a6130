//! Greedy generation: KV cache, EOS stop, max new tokens, no-repeat-ngram, cancel, callback.
//!
//! ```no_run
//! # use std::sync::atomic::AtomicBool;
//! # use dsocr::ocr::generate::{generate, GenerateEvent, GenerateOptions};
//! # fn demo(model: &dsocr::ocr::model::DeepseekOcr, input: &dsocr::ocr::model::PreparedInput)
//! # -> dsocr::ocr::Result<()> {
//! let cancel = AtomicBool::new(false);
//! let out = generate(model, input, &GenerateOptions::default(), &cancel, |ev| {
//!     if let GenerateEvent::Token(id) = ev {
//!         print!("{id} ");
//!     }
//! })?;
//! println!("stopped by {:?} after {} tokens", out.stop, out.tokens.len());
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::decoder::KvCache;
use super::error::{OcrError, Result};
use super::model::{DeepseekOcr, PreparedInput};
use super::vision::ImageFeatures;

/// `<td>` and `</td>`: the official scripts let these repeat.
pub const DEFAULT_NGRAM_WHITELIST: [i64; 2] = [128821, 128822];

/// The vLLM-style no-repeat-ngram rule of the official scripts. It only sees generated tokens:
/// with the last `size - 1` of them as prefix, every n-gram starting within the last `window`
/// tokens that has that prefix bans its last token, unless whitelisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRepeatNgram {
    pub size: usize,
    pub window: usize,
    pub whitelist: Vec<i64>,
}

impl Default for NoRepeatNgram {
    /// The official image settings: size 30, window 90, whitelist `<td>`, `</td>`.
    fn default() -> Self {
        Self {
            size: 30,
            window: 90,
            whitelist: DEFAULT_NGRAM_WHITELIST.to_vec(),
        }
    }
}

impl NoRepeatNgram {
    /// Tokens banned as the next token after `generated` (sorted, without duplicates).
    pub fn banned(&self, generated: &[i64]) -> Vec<i64> {
        let n = self.size;
        if n == 0 || generated.len() < n {
            return Vec::new();
        }
        let len = generated.len();
        let prefix = &generated[len - (n - 1)..];
        let start = len.saturating_sub(self.window);
        let end = len + 1 - n;
        let whitelist: HashSet<i64> = self.whitelist.iter().copied().collect();
        let mut banned: Vec<i64> = (start..end)
            .filter(|&i| &generated[i..i + n - 1] == prefix)
            .map(|i| generated[i + n - 1])
            .filter(|t| !whitelist.contains(t))
            .collect();
        banned.sort_unstable();
        banned.dedup();
        banned
    }
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Stop after this many new tokens (the EOS token counts).
    pub max_new_tokens: usize,
    /// Stop token; `None` uses the config's `eos_token_id`.
    pub eos_token_id: Option<i64>,
    /// The repetition rule; `None` for plain greedy decoding.
    pub no_repeat_ngram: Option<NoRepeatNgram>,
    /// Keep the raw logits before each step in [`GenerateOutput::step_logits`] (for parity
    /// checks; costs vocab x 4 bytes per step).
    pub record_logits: bool,
}

impl Default for GenerateOptions {
    /// 8192 new tokens at most, the config's EOS, the official no-repeat-ngram rule.
    fn default() -> Self {
        Self {
            max_new_tokens: 8192,
            eos_token_id: None,
            no_repeat_ngram: Some(NoRepeatNgram::default()),
            record_logits: false,
        }
    }
}

/// A phase of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Vision,
    Prefill,
    Decode,
}

/// What [`generate`] reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateEvent {
    /// A phase begins.
    Phase(Phase),
    /// A new token id (the EOS token too, when generation ends on it).
    Token(i64),
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    MaxTokens,
    Cancelled,
}

/// Wall time of each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub vision: Duration,
    pub prefill: Duration,
    pub decode: Duration,
}

impl Timings {
    /// Decode speed in tokens per second over `tokens` decode steps (0 when nothing was timed).
    pub fn tokens_per_second(&self, tokens: usize) -> f64 {
        let s = self.decode.as_secs_f64();
        if s > 0.0 { tokens as f64 / s } else { 0.0 }
    }
}

/// The result of [`generate`].
#[derive(Debug)]
pub struct GenerateOutput {
    /// The generated ids, ending with the EOS id when `stop` is [`StopReason::Eos`].
    pub tokens: Vec<i64>,
    pub stop: StopReason,
    pub timings: Timings,
    /// Length of the prompt in tokens (image tokens included).
    pub prompt_tokens: usize,
    /// `[steps, V]` f32 raw logits before each step, when `record_logits` was set.
    pub step_logits: Option<Tensor>,
}

/// Greedy generation for one prompt: vision, prefill, then decode steps with the KV cache.
/// `cancel` is checked before the prefill and before every step; `on_event` sees each phase
/// change and each token as it is chosen.
pub fn generate(
    model: &DeepseekOcr,
    input: &PreparedInput,
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    mut on_event: impl FnMut(GenerateEvent),
) -> Result<GenerateOutput> {
    let _no_grad = tch::no_grad_guard();
    on_event(GenerateEvent::Phase(Phase::Vision));
    let start = Instant::now();
    let images = model.encode_images(input)?;
    let vision = start.elapsed();
    let mut out = generate_with_images(model, input, &images, opts, cancel, on_event)?;
    out.timings.vision = vision;
    Ok(out)
}

/// [`generate`] with the image features already computed (`images`, one per input image).
pub fn generate_with_images(
    model: &DeepseekOcr,
    input: &PreparedInput,
    images: &[ImageFeatures],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    mut on_event: impl FnMut(GenerateEvent),
) -> Result<GenerateOutput> {
    let _no_grad = tch::no_grad_guard();
    let eos = opts
        .eos_token_id
        .unwrap_or(model.config.language_config.eos_token_id);
    let prompt_tokens = input.input_ids.len();
    let mut out = GenerateOutput {
        tokens: Vec::new(),
        stop: StopReason::Cancelled,
        timings: Timings::default(),
        prompt_tokens,
        step_logits: None,
    };
    if cancel.load(Ordering::Relaxed) {
        return Ok(out);
    }
    on_event(GenerateEvent::Phase(Phase::Prefill));
    let start = Instant::now();
    let embeds = model.input_embeds(input, images)?;
    let capacity =
        (prompt_tokens + opts.max_new_tokens).min(model.decoder.max_positions() as usize);
    if opts.max_new_tokens == 0 || capacity <= prompt_tokens {
        if opts.max_new_tokens > 0 {
            return Err(OcrError::Invalid(format!(
                "the prompt has {prompt_tokens} tokens, no room left under the model's {} \
                 positions",
                model.decoder.max_positions()
            )));
        }
        out.stop = StopReason::MaxTokens;
        return Ok(out);
    }
    let mut cache = model.decoder.new_cache(capacity as i64)?;
    let hidden = model.decoder.forward(&embeds, &mut cache)?;
    let mut logits = model
        .decoder
        .logits(&hidden.narrow(0, hidden.size()[0] - 1, 1))?;
    if let tch::Device::Cuda(i) = model.device {
        // CUDA runs asynchronously: wait, so that the prefill time is the prefill's.
        tch::Cuda::synchronize(i as i64);
    }
    out.timings.prefill = start.elapsed();

    on_event(GenerateEvent::Phase(Phase::Decode));
    let start = Instant::now();
    let _solo = model.decoder.decode_threads();
    let mut recorded = Vec::new();
    let max_new = capacity - prompt_tokens;
    out.stop = loop {
        if cancel.load(Ordering::Relaxed) {
            break StopReason::Cancelled;
        }
        if opts.record_logits {
            recorded.push(logits.shallow_clone());
        }
        let next = choose(&logits, &out.tokens, opts.no_repeat_ngram.as_ref())?;
        out.tokens.push(next);
        on_event(GenerateEvent::Token(next));
        if next == eos {
            break StopReason::Eos;
        }
        if out.tokens.len() >= max_new {
            break StopReason::MaxTokens;
        }
        logits = next_logits(model, &mut cache, next)?;
    };
    out.timings.decode = start.elapsed();
    if opts.record_logits && !recorded.is_empty() {
        out.step_logits = Some(Tensor::f_cat(&recorded, 0)?);
    }
    Ok(out)
}

/// One decode step's model work: the embedding of `id`, the decoder over it at the next position
/// of `cache`, and its logits `[1, V]` (f32).
pub fn next_logits(model: &DeepseekOcr, cache: &mut KvCache, id: i64) -> Result<Tensor> {
    let embeds = model.decoder.embed(&Tensor::from_slice(&[id]));
    let hidden = model.decoder.forward(&embeds, cache)?;
    model.decoder.logits(&hidden)
}

/// The greedy choice from `logits` `[1, V]` after the repetition rule bans its tokens (the one
/// host read of a decode step).
pub fn choose(logits: &Tensor, generated: &[i64], rule: Option<&NoRepeatNgram>) -> Result<i64> {
    let banned = rule.map(|r| r.banned(generated)).unwrap_or_default();
    let logits = if banned.is_empty() {
        logits.shallow_clone()
    } else {
        let index = Tensor::from_slice(&banned).to_device(logits.device());
        logits.index_fill(-1, &index, f64::NEG_INFINITY)
    };
    Ok(logits
        .argmax(-1, false)
        .to_kind(Kind::Int64)
        .f_int64_value(&[0])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(size: usize, window: usize, whitelist: &[i64]) -> NoRepeatNgram {
        NoRepeatNgram {
            size,
            window,
            whitelist: whitelist.to_vec(),
        }
    }

    #[test]
    fn bans_the_token_that_would_repeat_an_ngram() {
        let r = rule(3, 100, &[]);
        // Too short: fewer than `size` generated tokens.
        assert!(r.banned(&[5, 5]).is_empty());
        // [5, 5, 5]: prefix (5, 5) was followed by 5.
        assert_eq!(r.banned(&[5, 5, 5]), vec![5]);
        // Prefix (1, 2) was followed by 3 and by 4.
        assert_eq!(r.banned(&[1, 2, 3, 1, 2, 4, 1, 2]), vec![3, 4]);
        assert!(r.banned(&[1, 2, 3, 4]).is_empty());
    }

    #[test]
    fn window_and_whitelist_limit_the_ban() {
        // The earlier (1, 2, 3) starts before the window of the last 4 tokens.
        let seq = [1, 2, 3, 9, 9, 8, 1, 2];
        assert_eq!(rule(3, 100, &[]).banned(&seq), vec![3]);
        assert!(rule(3, 4, &[]).banned(&seq).is_empty());
        assert!(rule(3, 100, &[3]).banned(&seq).is_empty());
    }

    #[test]
    fn default_rule_is_the_official_one() {
        let r = NoRepeatNgram::default();
        assert_eq!((r.size, r.window), (30, 90));
        assert_eq!(r.whitelist, vec![128821, 128822]);
    }

    #[test]
    fn choose_skips_banned_tokens() {
        let logits = Tensor::from_slice(&[0.0f32, 3.0, 2.0, 1.0]).view([1, 4]);
        assert_eq!(choose(&logits, &[], None).ok(), Some(1));
        let r = rule(2, 10, &[]);
        // Generated [1, 1]: prefix (1,) was followed by 1, so 1 is banned.
        assert_eq!(choose(&logits, &[1, 1], Some(&r)).ok(), Some(2));
    }
}
