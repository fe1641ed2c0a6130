//! dsocr: DeepSeek-OCR on libtorch, a Hugging Face hub client that explains its failures, and a
//! terminal dashboard that puts both together.
//!
//! Layers (ARCHITECTURE.md at the repository root): [`hub`] and [`ocr`] do not know about each
//! other; [`cli`] and [`tui`] are the only places that combine them.

pub mod cli;
pub mod document;
pub mod hub;
pub mod ocr;
pub mod tui;
