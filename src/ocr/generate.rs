//! Greedy generation: KV cache, EOS stop, max new tokens, no-repeat-ngram, cancel, callback;
//! one sequence ([`generate`]) or many decoding together ([`generate_batch`], continuous
//! batching: a finished sequence's slot goes to the next one).
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

use super::decoder::{KvCache, MAX_BATCH};
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
/// change and each token as it is chosen. The same scheduler as [`generate_batch`], with one
/// sequence.
pub fn generate(
    model: &DeepseekOcr,
    input: &PreparedInput,
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    on_event: impl FnMut(GenerateEvent),
) -> Result<GenerateOutput> {
    let request = Request {
        input: input.shallow_clone(),
        images: None,
        opts: opts.clone(),
    };
    generate_one(model, request, cancel, on_event)
}

/// [`generate`] with the image features already computed (`images`, one per input image).
pub fn generate_with_images(
    model: &DeepseekOcr,
    input: &PreparedInput,
    images: &[ImageFeatures],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    on_event: impl FnMut(GenerateEvent),
) -> Result<GenerateOutput> {
    let request = Request {
        input: input.shallow_clone(),
        images: Some(images.iter().map(ImageFeatures::shallow_clone).collect()),
        opts: opts.clone(),
    };
    generate_one(model, request, cancel, on_event)
}

/// One request through [`generate_batch`] at batch 1.
fn generate_one(
    model: &DeepseekOcr,
    request: Request,
    cancel: &AtomicBool,
    on_event: impl FnMut(GenerateEvent),
) -> Result<GenerateOutput> {
    let mut one = One {
        request: Some(request),
        cancel,
        on_event,
        result: None,
    };
    generate_batch(model, 1, &mut one);
    one.result.unwrap_or_else(|| {
        Err(OcrError::Invalid(
            "generation ended without a result".into(),
        ))
    })
}

/// The [`Driver`] of a single request.
struct One<'a, F> {
    request: Option<Request>,
    cancel: &'a AtomicBool,
    on_event: F,
    result: Option<Result<GenerateOutput>>,
}

impl<F: FnMut(GenerateEvent)> Driver for One<'_, F> {
    fn next(&mut self) -> Option<Result<Request>> {
        self.request.take().map(Ok)
    }

    fn event(&mut self, _seq: usize, event: GenerateEvent) {
        (self.on_event)(event);
    }

    fn done(&mut self, _seq: usize, result: Result<GenerateOutput>) {
        self.result = Some(result);
    }

    fn cancelled(&self, _seq: usize) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// One sequence to generate.
pub struct Request {
    /// The prompt and its images.
    pub input: PreparedInput,
    /// The images' features when already computed (one per image); `None` runs the vision
    /// encoders on `input`'s images.
    pub images: Option<Vec<ImageFeatures>>,
    /// How to generate.
    pub opts: GenerateOptions,
}

/// What [`generate_batch`] works for: where sequences come from and where their events and
/// results go. Sequences are numbered from 0 in the order [`Driver::next`] hands them out.
pub trait Driver {
    /// The next sequence, asked for whenever the batch has a free slot. `None`: nothing more
    /// for now (the running sequences go on; once none is left, [`generate_batch`] returns).
    /// An `Err` is that sequence's failure (reported back through [`Driver::done`]).
    fn next(&mut self) -> Option<Result<Request>>;
    /// A phase of sequence `seq` begins, or it has a new token.
    fn event(&mut self, seq: usize, event: GenerateEvent);
    /// Sequence `seq` is over: its output (stopped by EOS, the token limit or a cancel), or
    /// why it failed. Called exactly once per sequence.
    fn done(&mut self, seq: usize, result: Result<GenerateOutput>);
    /// Whether sequence `seq` should stop (checked before its prefill and every token).
    fn cancelled(&self, _seq: usize) -> bool {
        false
    }
}

/// A sequence in the running batch.
struct Running {
    seq: usize,
    cache: KvCache,
    out: GenerateOutput,
    /// `[1, V]` f32: the logits its next token is chosen from.
    logits: Tensor,
    rule: Option<NoRepeatNgram>,
    eos: i64,
    max_new: usize,
    record: bool,
    recorded: Vec<Tensor>,
    decode_start: Instant,
}

impl Running {
    /// The output, with its decode time and recorded logits.
    fn finish(mut self, stop: StopReason) -> Result<GenerateOutput> {
        self.out.stop = stop;
        self.out.timings.decode = self.decode_start.elapsed();
        if self.record && !self.recorded.is_empty() {
            self.out.step_logits = Some(Tensor::f_cat(&self.recorded, 0)?);
        }
        Ok(self.out)
    }
}

/// Greedy generation of many sequences, up to `batch` (at most [`MAX_BATCH`]) at a time,
/// continuously: a sequence runs vision and prefill alone when it joins, then takes one row of
/// every decode step ([`Decoder::step_batch`](super::decoder::Decoder::step_batch)), which
/// reads each weight once for all the rows; when it stops (its own EOS, token limit, repetition
/// rule and cancel), its slot goes to the next sequence. One host read per step: every row's
/// token at once. Each sequence's tokens are those [`generate`] gives it alone (greedy, the same
/// arithmetic per row up to rounding). A failing sequence is reported and the others go on; a
/// failed decode step fails the sequences in it.
pub fn generate_batch(model: &DeepseekOcr, batch: usize, driver: &mut impl Driver) {
    let _no_grad = tch::no_grad_guard();
    let batch = batch.clamp(1, MAX_BATCH);
    let mut running: Vec<Running> = Vec::with_capacity(batch);
    let mut count = 0;
    // Decode steps keep libtorch to one thread where dsocr's kernels do the work; a joining
    // sequence's vision and prefill get every thread.
    let mut solo = None;
    loop {
        while running.len() < batch {
            let Some(request) = driver.next() else { break };
            let seq = count;
            count += 1;
            solo = None;
            match request.and_then(|r| admit(model, seq, r, driver)) {
                Ok(Admitted::Running(r)) => running.push(r),
                Ok(Admitted::Done(out)) => driver.done(seq, Ok(out)),
                Err(e) => driver.done(seq, Err(e)),
            }
        }
        if running.is_empty() {
            return;
        }
        if solo.is_none() {
            solo = Some(model.decoder.decode_threads());
        }
        if let Err(e) = step(model, &mut running, driver) {
            let message = e.to_string();
            for r in running.drain(..) {
                let e = OcrError::Invalid(format!("decode step failed: {message}"));
                driver.done(r.seq, Err(e));
            }
        }
    }
}

/// What joining the batch gave.
enum Admitted {
    Running(Running),
    /// Over before its first decode step (no new tokens asked for, or cancelled).
    Done(GenerateOutput),
}

/// Vision and prefill of a joining sequence, up to the logits of its first token.
fn admit(
    model: &DeepseekOcr,
    seq: usize,
    request: Request,
    driver: &mut impl Driver,
) -> Result<Admitted> {
    let Request {
        input,
        images,
        opts,
    } = request;
    let prompt_tokens = input.input_ids.len();
    let mut out = GenerateOutput {
        tokens: Vec::new(),
        stop: StopReason::Cancelled,
        timings: Timings::default(),
        prompt_tokens,
        step_logits: None,
    };
    let images = match images {
        Some(images) => images,
        None => {
            driver.event(seq, GenerateEvent::Phase(Phase::Vision));
            let start = Instant::now();
            let images = model.encode_images(&input)?;
            out.timings.vision = start.elapsed();
            images
        }
    };
    if driver.cancelled(seq) {
        return Ok(Admitted::Done(out));
    }
    driver.event(seq, GenerateEvent::Phase(Phase::Prefill));
    let start = Instant::now();
    let embeds = model.input_embeds(&input, &images)?;
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
        return Ok(Admitted::Done(out));
    }
    let mut cache = model.decoder.new_cache(capacity as i64)?;
    let hidden = model.decoder.forward(&embeds, &mut cache)?;
    let logits = model
        .decoder
        .logits(&hidden.narrow(0, hidden.size()[0] - 1, 1))?;
    if let tch::Device::Cuda(i) = model.device {
        // CUDA runs asynchronously: wait, so that the prefill time is the prefill's.
        tch::Cuda::synchronize(i as i64);
    }
    out.timings.prefill = start.elapsed();
    driver.event(seq, GenerateEvent::Phase(Phase::Decode));
    Ok(Admitted::Running(Running {
        seq,
        cache,
        out,
        logits,
        rule: opts.no_repeat_ngram,
        eos: opts
            .eos_token_id
            .unwrap_or(model.config.language_config.eos_token_id),
        max_new: capacity - prompt_tokens,
        record: opts.record_logits,
        recorded: Vec::new(),
        decode_start: Instant::now(),
    }))
}

/// Choose every running sequence's next token, retire those that stop, and run the decode step
/// of the others.
fn step(model: &DeepseekOcr, running: &mut Vec<Running>, driver: &mut impl Driver) -> Result<()> {
    let mut live = Vec::with_capacity(running.len());
    for r in running.drain(..) {
        if driver.cancelled(r.seq) {
            let seq = r.seq;
            driver.done(seq, r.finish(StopReason::Cancelled));
        } else {
            live.push(r);
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    let logits: Vec<Tensor> = live.iter().map(|r| r.logits.shallow_clone()).collect();
    let banned: Vec<Vec<i64>> = live
        .iter()
        .map(|r| {
            r.rule
                .as_ref()
                .map(|rule| rule.banned(&r.out.tokens))
                .unwrap_or_default()
        })
        .collect();
    // One sequence chooses from its own logits (no copy on the one-page decode path).
    let rows = match logits.as_slice() {
        [one] => one.shallow_clone(),
        _ => Tensor::f_cat(&logits, 0)?,
    };
    let ids = choose_rows(&rows, &banned)?;
    for (mut r, id) in live.into_iter().zip(ids) {
        if r.record {
            r.recorded.push(r.logits.shallow_clone());
        }
        r.out.tokens.push(id);
        driver.event(r.seq, GenerateEvent::Token(id));
        let stop = if id == r.eos {
            Some(StopReason::Eos)
        } else if r.out.tokens.len() >= r.max_new {
            Some(StopReason::MaxTokens)
        } else {
            None
        };
        match stop {
            Some(stop) => {
                let seq = r.seq;
                driver.done(seq, r.finish(stop));
            }
            None => running.push(r),
        }
    }
    if running.is_empty() {
        return Ok(());
    }
    let last: Vec<i64> = running
        .iter()
        .map(|r| r.out.tokens[r.out.tokens.len() - 1])
        .collect();
    let embeds = model.decoder.embed(&Tensor::from_slice(&last))?;
    let mut caches: Vec<&mut KvCache> = running.iter_mut().map(|r| &mut r.cache).collect();
    let hidden = model.decoder.step_batch(&embeds, &mut caches)?;
    let logits = model.decoder.logits(&hidden)?;
    for (i, r) in running.iter_mut().enumerate() {
        r.logits = logits.f_narrow(0, i as i64, 1)?;
    }
    Ok(())
}

/// Most pages [`default_batch`] picks on the CPU.
const CPU_BATCH_LIMIT: usize = 4;

/// Prompt tokens of the longest page [`default_batch`] plans for: Gundam mode with its most
/// tiles (global view 273, 9 tiles of 100 plus their newlines) and a prompt.
const LONGEST_PROMPT: usize = 1300;

/// How many pages decode together, and what that was based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchChoice {
    /// The batch.
    pub batch: usize,
    /// Memory free when it was chosen (`None`: unknown, batch 1).
    pub free_bytes: Option<u64>,
    /// The KV cache of one page at its longest.
    pub per_sequence_bytes: u64,
    /// The device's most.
    pub limit: usize,
}

/// The batch to use when none is asked for: as many pages as half of the free memory holds KV
/// caches for (each sized for a Gundam prompt plus `max_new_tokens`), at least 1 and at most 4
/// on the CPU (where decode steps of up to 4 rows keep to the few-token kernels) or
/// [`MAX_BATCH`] on a GPU. Free memory is the kernel's `MemAvailable` on the CPU and the
/// driver's free memory on CUDA, read now (call it after loading).
pub fn default_batch(model: &DeepseekOcr, max_new_tokens: usize) -> BatchChoice {
    let (free_bytes, limit) = match model.device {
        tch::Device::Cuda(i) => (
            super::opcount::gpu_free_memory(i).map(|(free, _)| free),
            MAX_BATCH,
        ),
        _ => (available_memory(), CPU_BATCH_LIMIT),
    };
    let longest = (LONGEST_PROMPT + max_new_tokens).min(model.decoder.max_positions() as usize);
    let per_sequence_bytes = model.decoder.cache_bytes(longest as i64).max(1);
    let batch = free_bytes.map_or(1, |free| {
        usize::try_from(free / 2 / per_sequence_bytes)
            .unwrap_or(usize::MAX)
            .clamp(1, limit)
    });
    BatchChoice {
        batch,
        free_bytes,
        per_sequence_bytes,
        limit,
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes (Linux).
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// One decode step's model work: the embedding of `id`, the decoder over it at the next position
/// of `cache`, and its logits `[1, V]` (f32).
pub fn next_logits(model: &DeepseekOcr, cache: &mut KvCache, id: i64) -> Result<Tensor> {
    let embeds = model.decoder.embed(&Tensor::from_slice(&[id]))?;
    let hidden = model.decoder.forward(&embeds, cache)?;
    model.decoder.logits(&hidden)
}

/// The greedy choice from `logits` `[1, V]` after the repetition rule bans its tokens (the one
/// host read of a decode step).
pub fn choose(logits: &Tensor, generated: &[i64], rule: Option<&NoRepeatNgram>) -> Result<i64> {
    let banned = rule.map(|r| r.banned(generated)).unwrap_or_default();
    let ids = choose_rows(logits, &[banned])?;
    ids.first()
        .copied()
        .ok_or_else(|| OcrError::Invalid("no logits to choose from".into()))
}

/// The greedy choice of every row of `logits` `[B, V]`, after `banned[b]` is taken out of row
/// `b`: one host read for the whole batch.
pub fn choose_rows(logits: &Tensor, banned: &[Vec<i64>]) -> Result<Vec<i64>> {
    let vocab = logits.size()[1];
    let flat: Vec<i64> = banned
        .iter()
        .enumerate()
        .flat_map(|(row, ids)| ids.iter().map(move |&id| row as i64 * vocab + id))
        .collect();
    let logits = if flat.is_empty() {
        logits.shallow_clone()
    } else {
        let index = super::decoder::on_device(&Tensor::from_slice(&flat), logits.device())?;
        logits
            .f_reshape([-1])?
            .f_index_fill(0, &index, f64::NEG_INFINITY)?
            .f_view([-1, vocab])?
    };
    let ids = logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?;
    Ok(Vec::<i64>::try_from(ids.f_to_kind(Kind::Int64)?)?)
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
