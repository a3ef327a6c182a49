"""Token generation over the static KV cache: ``prefill`` the prompt once, then one decode step per
new token (O(N) model steps for N tokens, never a recompute of the context).

The decode step is gpt-fast's: :func:`decode_and_sample` runs the model on one token, samples the
next one and updates the per-row end-of-sequence flags, all on tensors, so ``torch.compile`` turns
the whole step into one graph and the loop never reads a value back to the host per token (the
random numbers are drawn outside, one per row and step, so a seed gives the same tokens eager and
compiled). Whether every row has stopped is read every ``eos_check_every`` steps; the tokens past
the last stop are cut afterwards, so the result does not depend on that period. Positions travel as
tensors and the cache never changes shape, so one compiled step serves every position.

With logits processors (arbitrary Python on the sequence so far) the step returns logits instead
(:func:`decode_one_token`) and processors and sampling run eagerly after it.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from craft_kernels import check_int

from craft.generation.sampling import (
    LogitsProcessor, apply_processors, check_sampling_args, draw_uniform, sample_unchecked,
)


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


def stop_rows(tok: torch.Tensor, done: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows already ``done`` (B,) bool emit ``eos_id``; a row emitting it is done. Returns (tok, done)."""
    tok = tok.masked_fill(done, eos_id)
    return tok, done | (tok == eos_id)


def decode_and_sample(model, token: torch.Tensor, input_pos: torch.Tensor, uniform: torch.Tensor | None,
                      done: torch.Tensor | None, temperature: float, top_k: int | None, top_p: float | None,
                      eos_id: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One fused step: token (B, 1) at slot ``input_pos`` (1,) → (next token (B,) long, done (B,)
    bool or None). ``uniform`` (B,) are the sampling draws (None when greedy); ``done`` the rows
    that have emitted ``eos_id`` (None without one). Arguments are checked by the caller."""
    logits = model.forward_step(token, input_pos)[:, -1]
    tok = sample_unchecked(logits, temperature, top_k, top_p, uniform)
    if eos_id is not None:
        tok, done = stop_rows(tok, done, eos_id)
    return tok, done


@functools.lru_cache(maxsize=None)
def _compiled(fn, mode: str | None):
    return torch.compile(fn, mode=mode, dynamic=False)


def compiled_decode_one_token(mode: str | None = None):
    """``torch.compile(decode_one_token, mode=mode)`` (static shapes), built once per mode."""
    return _compiled(decode_one_token, mode)


def compiled_decode_and_sample(mode: str | None = None):
    """``torch.compile(decode_and_sample, mode=mode)`` (static shapes), built once per mode. On CPU
    the default mode is the one to use (benchmarks/test_decoding.py measures "reduce-overhead", whose
    CUDA graphs do not apply to CPU tensors)."""
    return _compiled(decode_and_sample, mode)


def _compile_mode(compile) -> tuple[bool, str | None]:
    if compile is False or compile is None:
        return False, None
    if compile is True:
        return True, None
    if isinstance(compile, str):
        return True, compile
    raise TypeError(f"compile: expected a bool or a torch.compile mode string, got {compile!r}")


def select_decode_step(compile):
    """:func:`decode_one_token`, compiled when ``compile`` is True or a mode name."""
    on, mode = _compile_mode(compile)
    return compiled_decode_one_token(mode) if on else decode_one_token


def cache_size(n_tokens: int, multiple: int = 64) -> int:
    """Slots allocated for n_tokens: rounded up so nearby lengths share one cache (and one compiled step)."""
    return -(-n_tokens // multiple) * multiple


def _check_generate_args(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, eos_id, eos_check_every):
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError("prompt_ids: expected a (B, T) tensor of token ids with T >= 1")
    if prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
        raise TypeError(f"prompt_ids: expected an integer tensor, got {prompt_ids.dtype}")
    check_int(max_new_tokens, "max_new_tokens", 0)
    check_int(eos_check_every, "eos_check_every", 1)
    check_sampling_args(temperature, top_k, top_p)
    V = model.config.vocab_size
    if prompt_ids.numel() and (int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= V):
        raise ValueError(f"prompt_ids: ids must lie in [0, vocab_size={V})")
    if eos_id is not None and not 0 <= int(eos_id) < V:
        raise ValueError(f"eos_id: expected an id in [0, {V}), got {eos_id!r}")
    T, limit = prompt_ids.shape[1], int(model.config.max_seq_len)
    if T + max_new_tokens > limit:
        raise ValueError(f"prompt_ids, max_new_tokens: {T} prompt tokens + {max_new_tokens} new tokens exceed the "
                         f"model's max_seq_len={limit} (rotary positions beyond it were never trained); "
                         f"shorten the prompt or ask for at most {max(0, limit - T)} new tokens")


@torch.no_grad()
def generate_tokens(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                    logits_processors: Sequence[LogitsProcessor] = (), generator: torch.Generator | None = None,
                    compile: bool | str = False, eos_check_every: int = 16) -> torch.Tensor:
    """Continues prompt_ids (B, T) long by up to ``max_new_tokens`` tokens; returns (B, T + n) long
    (prompt included). ``T + max_new_tokens`` must fit the model's ``max_seq_len`` (ValueError
    otherwise: there is no sliding window). Each row stops at its ``eos_id`` (kept, then padded with
    ``eos_id``); the result ends where the last row stopped, or after ``max_new_tokens``.
    ``compile`` runs the decode step through ``torch.compile`` (True, or a mode name);
    ``eos_check_every`` is how many steps run between two reads of the stop flags."""
    _check_generate_args(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, eos_id, eos_check_every)
    device = model.device
    prompt_ids = prompt_ids.to(device=device, dtype=torch.long)
    B, T = prompt_ids.shape
    if max_new_tokens == 0:
        return prompt_ids.clone()
    eos_id = None if eos_id is None else int(eos_id)
    processors = list(logits_processors)
    compiled, mode = _compile_mode(compile)
    total = T + max_new_tokens
    model.setup_cache(B, cache_size(total))
    out = torch.empty(B, total, dtype=torch.long, device=device)
    out[:, :T] = prompt_ids

    with torch.inference_mode():  # less per-op bookkeeping than no_grad; cache and `out` stay normal tensors
        n = _decode_loop(model, prompt_ids, out, max_new_tokens, temperature, top_k, top_p, eos_id, processors,
                         generator, compiled, mode, eos_check_every)
    return out[:, :T + n]


def _decode_loop(model, prompt_ids, out, max_new_tokens, temperature, top_k, top_p, eos_id, processors, generator,
                 compiled, mode, eos_check_every) -> int:
    """Fills ``out[:, T:]``; returns the number of new tokens kept."""
    B, T = prompt_ids.shape
    device = out.device
    done = torch.zeros(B, dtype=torch.bool, device=device) if eos_id is not None else None

    def draw():
        return None if temperature == 0 else draw_uniform(B, generator, device)

    def pick(logits, n_ids):  # eager processors + sampling
        nonlocal done
        filtered = apply_processors(logits, out[:, :n_ids], processors) if processors else logits
        tok = sample_unchecked(filtered, temperature, top_k, top_p, draw(), fallback_logits=logits)
        if eos_id is not None:
            tok, done = stop_rows(tok, done, eos_id)
        return tok

    tok = pick(prefill(model, prompt_ids, torch.arange(T, device=device)), T)
    out[:, T] = tok
    if processors:
        step = compiled_decode_one_token(mode) if compiled else decode_one_token
    else:
        step = compiled_decode_and_sample(mode) if compiled else decode_and_sample
    pos = torch.tensor([T], device=device)
    n = max_new_tokens
    for i in range(1, max_new_tokens):
        if eos_id is not None and i % eos_check_every == 0 and bool(done.all()):
            n = i
            break
        if processors:
            tok = pick(step(model, tok[:, None], pos), T + i)
        else:
            tok, done = step(model, tok[:, None], pos, draw(), done, temperature, top_k, top_p, eos_id)
        out[:, T + i] = tok
        pos = pos + 1
    if eos_id is not None:
        hit = out[:, T:T + n] == eos_id
        if bool(hit.any(-1).all()):  # every row stopped: end at the last row's stop
            n = int(hit.int().argmax(-1).max()) + 1
    return n
