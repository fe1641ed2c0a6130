//! Tokenizer, prompt presets and ids built the reference way, streaming detokeniser.
