"""Generation: prefill / decode steps over the model's static KV cache, sampling and logits processors."""
from craft.generation.generate import (
    cache_size, compiled_decode_and_sample, compiled_decode_one_token, decode_and_sample, decode_one_token,
    generate_tokens, prefill,
)
from craft.generation.sampling import (
    LogitsProcessor, apply_processors, check_sampling_args, draw_uniform, repetition_penalty, sample, suppress_tokens,
    top_k_filter, top_p_filter,
)
from craft.models.kv_cache import KVCache

__all__ = ["KVCache", "prefill", "decode_one_token", "decode_and_sample", "compiled_decode_one_token",
           "compiled_decode_and_sample", "generate_tokens", "cache_size", "sample",
           "draw_uniform", "check_sampling_args", "top_k_filter", "top_p_filter", "apply_processors",
           "LogitsProcessor", "suppress_tokens", "repetition_penalty"]
