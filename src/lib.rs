//! dsocr: DeepSeek-OCR on libtorch, a Hugging Face hub client that explains its failures, and a
//! terminal dashboard that puts both together.
//!
//! Layers (ARCHITECTURE.md at the repository root): [`hub`], [`ocr`] and [`document`] do not
//! know about each other; [`cli`], [`tui`] and [`serve`] are the only places that combine them.
//! [`units`] (sizes as people read them) is shared by all of them.

pub mod cli;
pub mod document;
pub mod hub;
pub mod ocr;
pub mod serve;
pub mod tui;
pub mod units;
