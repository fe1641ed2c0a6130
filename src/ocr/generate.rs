//! Greedy generation: KV cache, EOS stop, max new tokens, no-repeat-ngram, cancel, callback.
