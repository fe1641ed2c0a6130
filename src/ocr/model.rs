//! The whole model: vision features scattered into the token embeddings, then the decoder.
