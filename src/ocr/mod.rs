//! DeepSeek-OCR implemented on libtorch through `tch`.
//!
//! `config` (config.json) -> `weights` (safetensors, the name/shape contract, seeded init) ->
//! `vision` (SAM ViT-B + CLIP-L + projector + image-token layout) and `decoder` (DeepSeek-V2 MoE
//! language model with a KV cache) -> `model` (the two joined: prefill with image features
//! scattered into the embeddings) -> `generate` (greedy decoding, no-repeat-ngram, cancel,
//! streaming callback) -> `session` (model + tokenizer loaded once; one image: preprocess,
//! generate with streamed text and a cancel flag, grounding, output files).

pub mod config;
pub mod cpu;
pub mod decoder;
pub mod device;
pub mod error;
pub mod generate;
pub mod grounding;
pub mod model;
pub mod opcount;
pub mod preprocess;
pub mod prompt;
pub mod session;
pub mod vision;
pub mod weights;

pub use config::Config;
pub use error::{OcrError, Result};
