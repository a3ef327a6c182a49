"""Token generation over the static KV cache: ``prefill`` the prompt once, then one
``decode_one_token`` per new token (O(N) model steps for N tokens, never a recompute of the
context). Positions travel as tensors, so a compiled step is reused at every position.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from craft.generation.sampling import LogitsProcessor, apply_processors, check_sampling_args, sample


def prefill(model, tokens: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor | None = None,
            rope_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Runs tokens (B, T) at cache slots ``input_pos`` (T,) through ``model.forward_step``; returns
    the fp32 logits of the last position (B, V)."""
    return model.forward_step(tokens, input_pos, mask, rope_pos)[:, -1].float()


def decode_one_token(model, token: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor | None = None,
                     rope_pos: torch.Tensor | None = None) -> torch.Tensor:
    """One step: token (B, 1) at cache slot ``input_pos`` (1,) → fp32 logits (B, V). Plain function:
    ``torch.compile`` it (see :func:`compiled_decode_one_token`)."""
    return model.forward_step(token, input_pos, mask, rope_pos)[:, -1].float()


@functools.lru_cache(maxsize=None)
def compiled_decode_one_token(mode: str | None = None):
    """``torch.compile(decode_one_token, mode=mode)`` (static shapes), built once per mode. On CPU
    the default mode is the fastest measured (benchmarks/test_throughput.py); "reduce-overhead"
    (CUDA graphs) suits CUDA."""
    return torch.compile(decode_one_token, mode=mode, dynamic=False)


def select_decode_step(compile):
    if compile is False or compile is None:
        return decode_one_token
    if compile is True:
        return compiled_decode_one_token(None)
    if isinstance(compile, str):
        return compiled_decode_one_token(compile)
    raise TypeError(f"compile: expected a bool or a torch.compile mode string, got {compile!r}")


def cache_size(n_tokens: int, multiple: int = 64) -> int:
    """Slots allocated for n_tokens: rounded up so nearby lengths share one cache (and one compiled step)."""
    return -(-n_tokens // multiple) * multiple


@torch.no_grad()
def generate_tokens(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                    logits_processors: Sequence[LogitsProcessor] = (), generator: torch.Generator | None = None,
                    compile: bool | str = False) -> torch.Tensor:
    """Continues prompt_ids (B, T) long by up to ``max_new_tokens`` tokens; returns (B, T + n) long
    (prompt included). Each row stops at its ``eos_id`` (kept, then padded with ``eos_id``);
    generation ends when every row has stopped or after ``max_new_tokens``. ``compile`` runs the
    decode step through ``torch.compile`` (True, or a mode name)."""
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError("prompt_ids: expected a (B, T) tensor of token ids with T >= 1")
    if prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
        raise TypeError(f"prompt_ids: expected an integer tensor, got {prompt_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    check_sampling_args(temperature, top_k, top_p)
    V = model.config.vocab_size
    if prompt_ids.numel() and (int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= V):
        raise ValueError(f"prompt_ids: ids must lie in [0, vocab_size={V})")
    if eos_id is not None and not 0 <= int(eos_id) < V:
        raise ValueError(f"eos_id: expected an id in [0, {V}), got {eos_id!r}")
    step = select_decode_step(compile)
    device = model.device
    prompt_ids = prompt_ids.to(device=device, dtype=torch.long)
    B, T = prompt_ids.shape
    if max_new_tokens == 0:
        return prompt_ids.clone()
    total = T + max_new_tokens
    model.setup_cache(B, cache_size(total))
    out = torch.empty(B, total, dtype=torch.long, device=device)
    out[:, :T] = prompt_ids
    logits = prefill(model, prompt_ids, torch.arange(T, device=device))
    done = torch.zeros(B, dtype=torch.bool, device=device)
    pos = torch.tensor([T], device=device)
    n = total
    for i in range(max_new_tokens):
        filtered = apply_processors(logits, out[:, :T + i], logits_processors) if logits_processors else logits
        tok = sample(filtered, temperature, top_k, top_p, generator, fallback_logits=logits)
        if eos_id is not None:
            tok = tok.masked_fill(done, eos_id)
            done |= tok == eos_id
        out[:, T + i] = tok
        if i == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
            n = T + i + 1
            break
        logits = step(model, tok[:, None], pos)
        pos = pos + 1
    return out[:, :n]
