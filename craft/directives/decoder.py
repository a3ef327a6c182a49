"""DirectiveDecoder: a causal decoder of craft SwiGLU blocks that writes a TransformDirective.

Conditioning (prefix, chosen over cross-attention so that craft's ``Block`` is used unchanged):
the sequence is ``[context_0 .. context_{N-1}, command, instruction_0, instruction_1, ...]``.
Context items attend to each other (bidirectionally, padding masked out), the command and every
instruction attend to the valid context, the command and the instructions before them. The output
at the command's position is instruction 0; each instruction is fed back directly as the next input
(no vocabulary). Rotary positions: context ``0..N-1`` (order matters to the tasks), command ``N``.

Heads on the final RMSNorm'd hidden state ``x``: ``instruction = W_i x`` (D -> D);
``r = min_prob + (1 - 2 min_prob) * sigmoid(w_r . x + b_r)``; ``h = sigmoid(w_h . instruction + b_h)``
with ``b_h`` initialised to ``halt_bias`` (-3: ACT fails often from a zero or positive start) and
``b_r`` to ``return_bias``. The per-step arithmetic is :func:`craft.directives.directive.directive_step`.

Feedback (``feedback_dim > 0``, ``forward(..., engine=...)``): the engine executes each instruction
as soon as it is generated and its feedback ``f`` (the latent state after the step, see
:class:`craft.directives.engine.TransformEngine`) enters as ``g = W_f f``: ``r`` and ``h`` read
``g`` alone, and ``instruction + g`` is the next input. So whether a slot closes and whether a row
halts depend on the state of the computation only: a step that finds nothing left to do says so
for any input size, and the heads cannot fall back on counting steps (which the decoder's prefix
allows and which does not extrapolate past the training lengths). The directive then carries the
engine's per-instruction results.

``positions``: 'ordered' (rotary positions: context ``0..N-1``, command ``N``, instructions after)
or 'none' (no positional rotation: the context is a set and instruction order comes only from
causality, so no relative distance is unseen when inputs or runs get longer than in training).

Batched generation: every row steps together and halting is decided on device (no host sync per
step). Every ``compact_every`` steps one host read of the halted flags lets halted rows leave the
work: the batch, the state and the KV cache rows are gathered to the running rows.

Caches: without autograd the static ``KVCache`` (written in place at its slots; a step attends over
the slots written so far, :class:`PrefixKVCache`); with autograd
(training, backpropagation through the loop) a growing cache that concatenates keys/values, since
in-place writes would overwrite tensors saved for backward; ``cache="none"`` recomputes the whole
prefix every step (the benchmark's baseline).

Compiled generation (``compile=True``, no autograd): the per-step work of a 64-row decode step is
dozens of tiny kernels, so eagerly the dispatcher, not arithmetic, sets its speed. With
``compile=True`` the prefill and every step but the last are ``torch.compile``'d functions of fixed
shapes (gpt-fast style): the static cache spans all ``N + max_instructions`` slots and is kept
between calls, the step's position is a tensor, and halted rows stay in the batch, masked by the
step arithmetic, instead of being compacted (compaction would change the shapes). The result equals
the eager generation's.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from craft.directives.directive import MODES, DirectiveState, TransformDirective, directive_step
from craft.models.kv_cache import KVCache  # the one import of the static cache
from craft.models.config import ModelConfig
from craft.models.transformer import Block, RMSNorm, rope_angles


class GrowingKVCache(nn.Module):
    """Keys/values concatenated step by step (autograd-safe); ``update`` returns all so far. A module
    only because ``Attention.kv_cache`` is a child-module slot."""

    def __init__(self):
        super().__init__()
        self.k = self.v = None

    def update(self, input_pos, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        return self.k, self.v

    def select_rows(self, rows):
        self.k, self.v = self.k.index_select(0, rows), self.v.index_select(0, rows)


class PrefixKVCache(KVCache):
    """The static cache, written in place, whose ``update`` returns only slots ``0..length-1``
    (``length`` set by the decoder before each step, a Python int: no host sync): a step attends
    over the prefix so far instead of the whole buffer."""

    length: int = 0

    def update(self, input_pos, k, v):
        kc, vc = super().update(input_pos, k, v)
        return kc[:, :, : self.length], vc[:, :, : self.length]


def _select_static_rows(cache: KVCache, rows: torch.Tensor) -> None:
    cache.k_cache = cache.k_cache.index_select(0, rows)
    cache.v_cache = cache.v_cache.index_select(0, rows)


class DirectiveDecoder(nn.Module):
    """``forward(command (B, D), context (B, N, D), context_mask (B, N) bool = None) -> TransformDirective``.

    ``dim``/``n_layers``/``n_heads``/``hidden_dim`` size craft's blocks; ``max_seq_len`` bounds
    ``N + max_instructions``; ``mode`` 'clamp' or 'carry'; ``min_prob`` bounds raw return
    probabilities to ``[min_prob, 1 - min_prob]``."""

    def __init__(self, dim: int = 64, n_layers: int = 2, n_heads: int = 4, hidden_dim: int | None = None,
                 max_seq_len: int = 128, mode: str = "clamp", min_prob: float = 1e-3, halt_bias: float = -3.0,
                 eps: float = 1e-6, return_bias: float = 0.0, feedback_dim: int = 0, positions: str = "ordered"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if positions not in ("ordered", "none"):
            raise ValueError(f"positions: expected 'ordered' or 'none', got {positions!r}")
        if not eps < min_prob < 0.5:
            raise ValueError(f"min_prob: expected eps ({eps}) < min_prob < 0.5, got {min_prob}")
        self.config = ModelConfig(vocab_size=1, dim=dim, n_layers=n_layers, n_heads=n_heads,
                                  hidden_dim=hidden_dim or 4 * dim, max_seq_len=max_seq_len)
        self.mode, self.min_prob, self.eps, self.max_seq_len = mode, min_prob, eps, max_seq_len
        self.layers = nn.ModuleList(Block(self.config) for _ in range(n_layers))
        self.norm = RMSNorm(dim, self.config.norm_eps)
        self.instruction = nn.Linear(dim, dim)
        self.return_head = nn.Linear(dim, 1)
        self.halt_head = nn.Linear(dim, 1)
        self.feedback = nn.Linear(feedback_dim, dim) if feedback_dim else None
        with torch.no_grad():
            self.halt_head.bias.fill_(halt_bias)
            self.return_head.bias.fill_(return_bias)
        hd = self.config.head_dim
        inv_freq = 1.0 / (self.config.rope_base ** (torch.arange(0, hd, 2).float() / hd))
        if positions == "none":  # zero angles: the rotation is the identity at every position
            inv_freq = torch.zeros_like(inv_freq)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    # ------------------------------------------------------------------ pieces
    def _blocks(self, x, pos, mask, rope=None, cached=True):
        """x (B, T, D) at positions pos (T,) through the blocks with a bool mask (B, 1, T, S); ``cached``:
        write keys/values into each layer's cache at slots ``pos`` and attend over the cache, else
        attend over x's own keys (S = T)."""
        cos, sin = rope_angles(pos, self.inv_freq) if rope is None else rope
        for layer in self.layers:
            x = layer(x, cos, sin, None, pos if cached else None, mask)
        return x

    def heads(self, hidden: torch.Tensor, feedback=None):
        """hidden (..., D) -> instruction (..., D), raw return prob r (...), halting prob h (...), next
        input (..., D), engine result (or None), the return head's logit (...) (r before the sigmoid
        and the ``min_prob`` bounds: a loss on it keeps its gradient where r is saturated). ``feedback(instruction) -> (result, feedback)``
        executes the instruction first (feedback mode)."""
        x = self.norm(hidden)
        inst = self.instruction(x)
        nxt, res = inst, None
        if feedback is not None:
            res, fb = feedback(inst)
            g = self.feedback(fb)
            x, nxt = g, inst + g
        logit = self.return_head(x).squeeze(-1)
        r = self.min_prob + (1 - 2 * self.min_prob) * torch.sigmoid(logit)
        h = torch.sigmoid(self.halt_head(nxt if feedback is None else g).squeeze(-1))
        return inst, r, h, nxt, res, logit

    def _check(self, command, context, context_mask, max_instructions):
        if not isinstance(command, torch.Tensor) or command.dim() != 2 or command.shape[1] != self.config.dim:
            raise ValueError(f"command: expected (B, {self.config.dim}), got {tuple(getattr(command, 'shape', ()))}")
        B = command.shape[0]
        if not isinstance(context, torch.Tensor) or context.dim() != 3 or context.shape[0] != B \
                or context.shape[2] != self.config.dim:
            raise ValueError(f"context: expected (B={B}, N, {self.config.dim}), got {tuple(getattr(context, 'shape', ()))}")
        if context_mask is not None and (context_mask.dtype != torch.bool or tuple(context_mask.shape) != context.shape[:2]):
            raise ValueError(f"context_mask: expected a bool tensor of shape {tuple(context.shape[:2])}")
        if max_instructions < 1 or context.shape[1] + max_instructions > self.max_seq_len:
            raise ValueError(f"max_instructions: expected 1 <= max_instructions <= max_seq_len - N = "
                             f"{self.max_seq_len - context.shape[1]}, got {max_instructions}")

    def _set_length(self, n: int) -> None:
        for layer in self.layers:
            if isinstance(layer.attention.kv_cache, PrefixKVCache):
                layer.attention.kv_cache.length = n

    # ------------------------------------------------------------------ generation
    def forward(self, command: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                max_instructions: int = 32, schedule: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: str = "auto", compact_every: int = 8, engine=None,
                engine_context: torch.Tensor | None = None, engine_mask: torch.Tensor | None = None,
                compile: bool = False) -> TransformDirective:
        """Generates up to ``max_instructions`` per row. ``schedule = (r, h)`` (B, max_instructions)
        replaces the heads' probabilities (the fixed-N baseline). ``cache``: 'auto' (static without
        autograd, growing with), 'static', 'growing' or 'none' (recompute the prefix every step).
        ``engine``: a TransformEngine run step by step for feedback (required when the decoder was
        built with ``feedback_dim``), on ``engine_context`` / ``engine_mask`` (default ``context`` /
        ``context_mask``); the directive's
        ``results`` are then its per-instruction results.

        ``compile=True`` (no autograd; ``cache`` 'static' or 'none'): every step but the last is one
        ``torch.compile``'d function of fixed shapes (see :meth:`_generate_compiled`): halted rows are
        masked instead of compacted, and the static cache is the whole (B, H, N + max_instructions, hd)
        buffer, kept between calls of the same shape; 'none' compiles the recomputing step instead
        (the baseline with the same advantage). The directive equals the eager one's."""
        self._check(command, context, context_mask, max_instructions)
        if (engine is None) != (self.feedback is None):
            raise ValueError("engine: pass a TransformEngine exactly when the decoder has feedback_dim > 0")
        if engine is not None and engine.feedback_dim != self.feedback.in_features:
            raise ValueError(f"engine: its feedback_dim {engine.feedback_dim} != the decoder's {self.feedback.in_features}")
        B, N, D = context.shape
        dev = command.device
        if context_mask is None:
            context_mask = torch.ones(B, N, dtype=torch.bool, device=dev)
        if cache == "auto":
            cache = "growing" if torch.is_grad_enabled() else "static"
        if cache not in ("static", "growing", "none"):
            raise ValueError(f"cache: expected 'auto', 'static', 'growing' or 'none', got {cache!r}")
        if not isinstance(compact_every, int) or compact_every < 1:
            raise ValueError(f"compact_every: expected a positive int, got {compact_every!r}")
        if compile:
            if torch.is_grad_enabled():
                raise ValueError("compile: the compiled decode step is for generation without autograd; "
                                 "wrap the call in torch.no_grad() or pass compile=False")
            if cache == "growing":
                raise ValueError("compile: expected cache 'static' or 'none' (the growing cache changes shape "
                                 "every step); pass compile=False for cache='growing'")
            return self._generate_compiled(command, context, context_mask, max_instructions, schedule, cache,
                                           compact_every, engine, engine_context, engine_mask)
        L = N + max_instructions
        key_ok = torch.cat([context_mask, torch.ones(B, L - N, dtype=torch.bool, device=dev)], 1)  # (B, L)
        slots = torch.arange(L, device=dev)
        x0 = torch.cat([context, command[:, None]], 1)
        c = self.config
        for layer in self.layers:
            layer.attention.kv_cache = (PrefixKVCache(B, c.n_kv_heads, L, c.head_dim, x0.dtype, dev)
                                        if cache == "static" else GrowingKVCache() if cache == "growing" else None)
        self._set_length(N + 1)
        try:
            pos = slots[: N + 1]
            cos_all, sin_all = rope_angles(slots, self.inv_freq)  # once; each step slices its row
            if cache == "static":  # the step mask is a slice of one (B, 1, L, L) mask, rebuilt after compaction
                step_mask = _mask(slots, slots, key_ok, N)
            hidden = self._blocks(x0, pos, _mask(pos, pos, key_ok, N), cached=cache != "none")[:, -1]
            seq = x0
            rows = torch.arange(B, device=dev)
            state = DirectiveState.start(B, hidden.dtype, dev)
            mem, est = _start_engine(engine, command, context, context_mask, engine_context, engine_mask)
            record = []
            for t in range(max_instructions):
                last = t == max_instructions - 1
                sched = None if schedule is None else (schedule[0].index_select(0, rows)[:, t],
                                                        schedule[1].index_select(0, rows)[:, t])
                inst, out, state, est, res, nxt = self._decode_step(hidden, state, est, mem, engine, sched, last)
                record.append((rows, inst, out, res))
                if t == max_instructions - 1:
                    break
                if (t + 1) % compact_every == 0:
                    keep = (~state.halted).nonzero().squeeze(1)  # the one host sync per compact_every steps
                    if keep.numel() == 0:
                        break
                    if keep.numel() < rows.numel():
                        rows, state, nxt = rows[keep], state.select(keep), nxt[keep]
                        if engine is not None:
                            mem, est = mem.select(keep), est.select(keep)
                        key_ok, seq = key_ok[keep], seq[keep]
                        if cache == "static":
                            step_mask = step_mask[keep]
                        for layer in self.layers:
                            c = layer.attention.kv_cache
                            if cache == "static":
                                _select_static_rows(c, keep)
                            elif cache == "growing":
                                c.select_rows(keep)
                p = N + 1 + t
                if cache == "none":
                    seq = torch.cat([seq, nxt[:, None]], 1)
                    q = slots[: p + 1]
                    hidden = self._blocks(seq, q, _mask(q, q, key_ok, N), cached=False)[:, -1]
                else:
                    q = slots[p: p + 1]
                    m = _mask(q, slots[: p + 1], key_ok, N) if cache == "growing" else step_mask[:, :, p: p + 1, : p + 1]
                    self._set_length(p + 1)
                    hidden = self._blocks(nxt[:, None], q, m, (cos_all[p: p + 1], sin_all[p: p + 1]))[:, 0]
        finally:
            for layer in self.layers:
                layer.attention.kv_cache = None
        return _assemble(record, B, D, hidden.dtype, dev)

    # ------------------------------------------------------------------ compiled generation
    def _generate_compiled(self, command, context, context_mask, max_instructions, schedule, cache,
                           compact_every, engine, engine_context, engine_mask) -> TransformDirective:
        """``forward(..., compile=True)``: the eager loop's arithmetic with shapes that never change, so
        that one compiled step serves every position (the prefill is compiled too, on both paths).
        Rows stay in the batch after halting (:func:`directive_step` already gives them ``p = 0``, no
        close, slot -1, and the engine keeps their state), so nothing is compacted; every ``compact_every`` steps one host read of the
        halted flags ends the loop when all rows have halted, where the eager loop ends it."""
        B, N, D = context.shape
        dev, I = command.device, max_instructions
        L = N + I
        key_ok = torch.cat([context_mask, torch.ones(B, I, dtype=torch.bool, device=dev)], 1)  # (B, L)
        slots = torch.arange(L, device=dev)
        cos_all, sin_all = rope_angles(slots, self.inv_freq)
        x0 = torch.cat([context, command[:, None]], 1)
        static = cache == "static"
        if static:
            caches = self._static_caches(B, L, x0.dtype, dev)
            for layer, c in zip(self.layers, caches):
                layer.attention.kv_cache = c
        guards = contextlib.ExitStack()
        try:
            hidden = self._compiled("prefill", self._prefill, False)(x0, key_ok, cos_all, sin_all, N, static)
            state = DirectiveState.start(B, hidden.dtype, dev)
            mem, est = _start_engine(engine, command, context, context_mask, engine_context, engine_mask)
            step = (self._compiled("cached_step", self._cached_step, False) if static
                    else self._compiled("recompute_step", self._recompute_step, None))
            seq, record, rows = x0, [], torch.arange(B, device=dev)
            for t in range(I):
                if t == 1:  # step 0 picked the compiled step with every guard checked; later steps pass the same
                    # kinds of inputs (same shapes; recomputing, a longer dynamic length), so only the guards
                    # that tell compiled entries apart are checked (Dynamo's per-call guard cost is a good share
                    # of a small step)
                    guards.enter_context(torch.compiler.set_stance("default", skip_guard_eval_unsafe=True))
                sched = None if schedule is None else (schedule[0][:, t].contiguous(), schedule[1][:, t].contiguous())
                if t == I - 1:  # the last step: heads and rule 4, no block pass after it
                    inst, out, state, est, res, _ = self._decode_step(hidden, state, est, mem, engine, sched, last=True)
                    record.append((rows, inst, out, res))
                    break
                p = slots[N + 1 + t: N + 2 + t].clone()  # (1,) the new instruction's slot, a tensor: no recompiles
                if static:
                    inst, out, state, est, res, hidden = step(hidden, state, est, mem, engine, sched, p,
                                                              key_ok, cos_all, sin_all)
                else:
                    ok = key_ok[:, : seq.shape[1] + 1].contiguous()  # sliced here: a slice reaching L inside would specialise T
                    torch._dynamo.mark_dynamic(seq, 1)
                    torch._dynamo.mark_dynamic(ok, 1)
                    inst, out, state, est, res, hidden, seq = step(hidden, state, est, mem, engine, sched, seq,
                                                                   ok, cos_all, sin_all, N)
                record.append((rows, inst, out, res))
                if (t + 1) % compact_every == 0 and bool(state.halted.all()):  # one host read per compact_every steps
                    break
        finally:
            guards.close()
            for layer in self.layers:
                layer.attention.kv_cache = None
        return _assemble(record, B, D, hidden.dtype, dev)

    def _decode_step(self, hidden, state, est, mem, engine, sched, last=False):
        """Heads on ``hidden`` (B, D) (the engine executes the instruction first in feedback mode) and
        the directive arithmetic for the whole batch. Returns (instruction, StepOut, state, engine
        state, (result or None, return logit (B,)), next input (B, D))."""
        execute = step_out = None
        if engine is not None:
            run = ~state.halted & (state.fill > 0) if last else ~state.halted  # directive_step's active
            step_out = []
            execute = _Execute(engine, mem, est, run, step_out)
        inst, r, h, nxt, res, logit = self.heads(hidden, execute)
        if engine is not None:
            est = step_out[0]
        if sched is not None:
            r, h = sched
        out, state = directive_step(state, r, h, self.eps, self.mode, last=last)
        return inst, out, state, est, (res, logit), nxt

    def _cached_step(self, hidden, state, est, mem, engine, sched, p, key_ok, cos_all, sin_all):
        """:meth:`_decode_step`, then the next input through the blocks at cache slot ``p`` (1,) long,
        attending over the whole static cache with the valid keys up to ``p`` unmasked. Returns the
        step's outputs with the new hidden (B, D) in place of the next input."""
        inst, out, state, est, res, nxt = self._decode_step(hidden, state, est, mem, engine, sched)
        mask = (key_ok & (torch.arange(key_ok.shape[1], device=p.device) <= p))[:, None, None]  # (B, 1, 1, L)
        rope = cos_all.index_select(0, p), sin_all.index_select(0, p)
        hidden = self._blocks(nxt[:, None], p, mask, rope)[:, 0]
        return inst, out, state, est, res, hidden

    def _recompute_step(self, hidden, state, est, mem, engine, sched, seq, key_ok, cos_all, sin_all, N):
        """:meth:`_decode_step`, then the next input appended to ``seq`` (B, T - 1, D) and the whole
        prefix recomputed without a cache (the baseline); ``key_ok`` (B, T). Returns the step's
        outputs with the new hidden (B, D) and the new sequence."""
        inst, out, state, est, res, nxt = self._decode_step(hidden, state, est, mem, engine, sched)
        seq = torch.cat([seq, nxt[:, None]], 1)
        T = seq.shape[1]
        q = torch.arange(T, device=seq.device)
        hidden = self._blocks(seq, q, _mask(q, q, key_ok, N), (cos_all[:T], sin_all[:T]), cached=False)[:, -1]
        return inst, out, state, est, res, hidden.contiguous(), seq

    def _prefill(self, x0, key_ok, cos_all, sin_all, N, cached):
        """Context and command x0 (B, N + 1, D) through the blocks (context bidirectional, padding
        hidden), writing the keys/values into the static caches when ``cached`` (the mask then spans
        their L = ``key_ok.shape[1]`` slots); the command's hidden state (B, D), contiguous (the layout
        every step returns, so the step compiles once)."""
        T = x0.shape[1]
        pos = torch.arange(T, device=x0.device)
        keys = torch.arange(key_ok.shape[1], device=x0.device) if cached else pos
        hidden = self._blocks(x0, pos, _mask(pos, keys, key_ok, N), (cos_all[:T], sin_all[:T]), cached=cached)
        return hidden[:, -1].contiguous()

    def _compiled(self, name: str, fn, dynamic):
        """``torch.compile(fn, dynamic=dynamic)``, built once per decoder and name (not a module
        attribute: no state_dict entry)."""
        fns = self.__dict__.setdefault("_compiled_fns", {})
        if name not in fns:
            fns[name] = torch.compile(fn, dynamic=dynamic)
        return fns[name]

    def _static_caches(self, B: int, L: int, dtype, dev) -> list[KVCache]:
        """One static KVCache (B, H_kv, L, hd) per layer, kept between calls of the same shape (a new
        buffer would be a new input to the compiled step), zeroed (masked slots then hold no earlier
        call's values, which could be non-finite). Not module children: no state_dict entry."""
        c = self.config
        key = (B, L, dtype, torch.device(dev))
        if self.__dict__.get("_static_cache_key") != key:
            self.__dict__["_static_cache_key"] = key
            self.__dict__["_static_cache"] = [KVCache(B, c.n_kv_heads, L, c.head_dim, dtype, dev) for _ in self.layers]
        else:
            for cache in self.__dict__["_static_cache"]:
                cache.k_cache.zero_(), cache.v_cache.zero_()
        return self.__dict__["_static_cache"]


def _start_engine(engine, command, context, context_mask, engine_context, engine_mask):
    """(memory, engine state) of ``engine`` over ``engine_context`` (its mask ``engine_mask``), or over
    the decoder's own context and mask when none is given; (None, None) without an engine."""
    if engine is None:
        return None, None
    if engine_context is None:
        return engine.start(context, context_mask if engine_mask is None else engine_mask, command)
    return engine.start(engine_context, engine_mask, command)


class _Execute:
    """Runs one engine step on the instruction the heads just made; keeps the new engine state."""

    def __init__(self, engine, mem, state, active, out: list):
        self.engine, self.mem, self.state, self.active, self.out = engine, mem, state, active, out

    def __call__(self, inst):
        state, res, fb = self.engine.step(self.mem, self.state, inst, self.active)
        self.out.append(state)
        return res, fb


def _mask(q: torch.Tensor, k: torch.Tensor, key_ok: torch.Tensor, N: int) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool attention mask for query positions q and key positions k: context queries
    (< N) see the context, later queries see every position up to their own; padded keys are hidden
    except from themselves (so no row of the softmax is empty)."""
    qq, kk = q[:, None], k[None, :]
    allowed = torch.where(qq < N, kk < N, kk <= qq)
    return (allowed[None] & (key_ok[:, None, : k.numel()] | (qq == kk)[None]))[:, None]


def _assemble(record, B, D, dtype, dev) -> TransformDirective:
    """Scatters each step's (running rows, values) into full-batch (B, I, ...) tensors."""
    def full(vals, rows, fill=0):
        if rows.numel() == B:  # no row has left yet: rows is arange(B)
            return vals
        shape = (B,) + tuple(vals.shape[1:])
        base = torch.full(shape, fill, dtype=vals.dtype, device=dev)
        return base.index_copy(0, rows, vals)

    cols = {k: [] for k in ("inst", "p", "active", "closes", "dh", "slot", "res", "logit")}
    for rows, inst, o, (res, logit) in record:
        if res is not None:  # 0 where inactive, like the instructions (the engine keeps a halted row's state)
            cols["res"].append(full(res * o.active[:, None].to(res.dtype), rows))
        cols["inst"].append(full(inst * o.active[:, None].to(inst.dtype), rows))  # 0 where inactive
        cols["p"].append(full(o.p, rows))
        cols["active"].append(full(o.active, rows, False))
        cols["closes"].append(full(o.closes, rows, False))
        cols["dh"].append(full(o.dh, rows))
        cols["slot"].append(full(o.slot, rows, -1))
        cols["logit"].append(full(logit * o.active.to(logit.dtype), rows))
    st = {k: torch.stack(v, 1) for k, v in cols.items() if v}
    return TransformDirective(st["inst"], st["p"], st["active"], halting_probs=st["dh"], slot_index=st["slot"],
                              closes=st["closes"], n_outputs=st["closes"].sum(1), results=st.get("res"),
                              return_logits=st["logit"])
