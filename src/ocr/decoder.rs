//! DeepSeek-V2 language model (MHA, RoPE, dense layer 0, then MoE) with a KV cache.
