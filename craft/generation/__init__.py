"""Generation: static KV cache, prefill / decode steps, sampling and logits processors."""
from craft.generation.generate import (
    cache_size, compiled_decode_one_token, decode_one_token, generate_tokens, prefill,
)
from craft.generation.kv_cache import KVCache
from craft.generation.sampling import (
    LogitsProcessor, apply_processors, repetition_penalty, sample, suppress_tokens, top_k_filter, top_p_filter,
)

__all__ = ["KVCache", "prefill", "decode_one_token", "compiled_decode_one_token", "generate_tokens", "cache_size",
           "sample", "top_k_filter", "top_p_filter", "apply_processors", "LogitsProcessor", "suppress_tokens",
           "repetition_penalty"]
