//! dsocr: DeepSeek-OCR on libtorch, a Hugging Face hub client that explains its failures, and a
//! terminal dashboard that puts both together.
//!
//! Layers (ARCHITECTURE.md at the repository root): [`hub`], [`ocr`] and [`document`] do not
//! know about each other; [`model_source`] (which folder a model value means) reads the hub's
//! cache; [`cli`], [`tui`] and [`serve`] are the only places that combine them. [`units`] (sizes
//! as people read them) is shared by all of them.

pub mod cli;
pub mod document;
pub mod hub;
pub mod model_source;
pub mod ocr;
pub mod serve;
pub mod settings;
pub mod tui;
pub mod units;
