"""The model class hierarchy: :class:`Model` (an nn.Module with a config and an optional tokenizer)
→ :class:`GenerativeModel` (adds ``generate``) → :class:`craft.models.LanguageModel`."""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import nn

from craft.models.config import ModelConfig


class Model(nn.Module):
    """Base of every craft model: holds ``config`` and ``tokenizer`` (None until a checkpoint loader
    or the caller sets it)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a craft.models.ModelConfig, got {type(config).__name__}")
        self.config = config
        self.tokenizer = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, embeddings: bool = True) -> int:
        """Distinct parameters (tied weights counted once); ``embeddings=False`` leaves out token
        embeddings and an untied output head."""
        seen, total = set(), 0
        skip = set() if embeddings else {id(p) for p in self.embedding_parameters()}
        for p in self.parameters():
            if id(p) not in seen and id(p) not in skip:
                seen.add(id(p))
                total += p.numel()
        return total

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding-table parameters (subclasses list theirs)."""
        return []


class GenerativeModel(Model):
    """A model that continues token sequences: subclasses implement ``setup_cache`` and
    ``forward_step`` (see :class:`craft.models.LanguageModel`)."""

    def setup_cache(self, batch_size: int, max_seq_len: int, dtype=None, device=None) -> None:
        raise TypeError(f"{type(self).__name__} does not implement setup_cache")

    def forward_step(self, tokens, input_pos, mask=None, rope_pos=None):
        raise TypeError(f"{type(self).__name__} does not implement forward_step")

    @torch.no_grad()
    def generate(self, prompt_ids=None, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                 logits_processors: Sequence[Callable] = (), generator: torch.Generator | None = None,
                 compile: bool = False, *, prompt: str | None = None, corpus=None, **config) -> torch.Tensor:
        """Continues ``prompt_ids`` (B, T) / (T,) / list of ints and returns (B, T + n) long ids
        (prompt included; rows that stopped early are padded with ``eos_id``, which defaults to the
        tokenizer's), see :func:`craft.generation.generate_tokens`. Always returns a tensor.

        Linked-document generation has its own entry point,
        ``craft.generation.linked.generate_linked(model, prompt, corpus=...)``, returning a
        ``GenerationResult``. ``prompt=`` (text) here is its deprecated spelling: it warns and
        forwards there.
        """
        # imported on call: the model layer does not load craft.generation when it is imported
        if prompt is not None:
            if prompt_ids is not None:
                raise ValueError("prompt, prompt_ids: pass text (prompt) or token ids (prompt_ids), not both")
            warnings.warn("model.generate(prompt=...) is deprecated: call "
                          "craft.generation.linked.generate_linked(model, prompt, corpus=...) for linked "
                          "generation (it returns a GenerationResult); model.generate returns token ids only",
                          DeprecationWarning, stacklevel=3)
            given = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_id=eos_id, generator=generator)
            config.update({k: v for k, v in given.items() if v is not None})
            if logits_processors:
                config["logits_processors"] = logits_processors
            if compile:
                config["compile"] = compile
            from craft.generation.linked import generate_linked

            return generate_linked(self, prompt, corpus=corpus, **config)
        if config or corpus is not None:
            raise TypeError(f"generate: unexpected arguments {sorted(config) + (['corpus'] if corpus else [])}; "
                            "linked generation is craft.generation.linked.generate_linked(model, prompt, ...)")
        if prompt_ids is None:
            raise ValueError("prompt_ids: pass token ids (linked generation from text is "
                             "craft.generation.linked.generate_linked)")
        from craft.generation.generate import generate_tokens

        if eos_id is None and self.tokenizer is not None:
            eos_id = self.tokenizer.eos_id
        ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.device)
        if ids.dim() == 1:
            ids = ids[None]
        return generate_tokens(self, ids, 64 if max_new_tokens is None else max_new_tokens,
                               1.0 if temperature is None else temperature, top_k, top_p, eos_id=eos_id,
                               logits_processors=logits_processors, generator=generator, compile=compile)
