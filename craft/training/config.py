"""TrainConfig: everything a training run needs besides the corpus and the output folder."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from craft_kernels import check_choice, check_float, check_int

# fields that may change when a run is resumed (they do not change what a step computes)
RUN_FIELDS = frozenset({"max_steps", "max_minutes", "eval_every", "eval_windows", "sample_every", "sample_tokens",
                        "sample_prompt", "sample_temperature", "checkpoint_every", "keep_checkpoints", "log_every",
                        "progress", "tensorboard", "compile", "device"})


@dataclass
class TrainConfig:
    """Hyper-parameters of :class:`craft.training.Trainer`.

    Batch size comes from memory budgets, not a sequence count: ``tokens_per_step`` tokens (all
    processes together) are consumed per optimizer step, in forward passes of at most
    ``micro_batch_tokens`` tokens per process; the trainer derives the micro-batch (sequences per
    forward) and the gradient-accumulation count from them (see :meth:`batch_layout`).

    ``precision``: ``auto`` (bf16 autocast where ``craft_kernels._backend.bf16_is_fast``), ``bf16``
    or ``fp32``. The learning rate warms up linearly for ``warmup_steps``, then follows a cosine
    down to ``lr * min_lr_ratio`` at ``max_steps``; ``max_minutes`` (optional) also stops the run
    without changing the schedule.

    ``linked``: train on :class:`craft.data.linked_packing.LinkedPacking` sequences (a document
    after up to ``linked_max_docs`` documents it links to, taking at most ``linked_budget_share``
    of the sequence; ``linked_plain_share`` of the sequences plain) with ``cross_doc_link``
    attention; evaluation stays on the plain held-out windows.
    """

    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    tokenizer: str = "byte"
    seq_len: int | None = None  # None: the model's max_seq_len
    tokens_per_step: int = 8192
    micro_batch_tokens: int = 8192
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    max_steps: int = 200
    max_minutes: float | None = None
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: str = "auto"
    compile: bool = False
    eval_every: int = 100
    eval_windows: int = 32
    eval_fraction: float = 0.02
    sample_every: int = 100
    sample_tokens: int = 200
    sample_prompt: str = "# "
    sample_temperature: float = 0.8
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True
    linked: bool = False  # linked packing (craft.data.linked_packing) with cross_doc_link attention
    linked_max_docs: int = 3  # linked documents per sequence, at most
    linked_budget_share: float = 0.5  # share of a sequence the linked documents may take
    linked_plain_share: float = 0.25  # share of plain doc_causal sequences

    def __post_init__(self):
        for name, lo in (("tokens_per_step", 1), ("micro_batch_tokens", 1), ("warmup_steps", 0), ("max_steps", 1),
                         ("eval_every", 0), ("eval_windows", 1), ("sample_every", 0), ("sample_tokens", 1),
                         ("checkpoint_every", 0), ("keep_checkpoints", 1), ("log_every", 1), ("linked_max_docs", 1)):
            check_int(getattr(self, name), name, lo)
        check_int(self.seed, "seed", 0, 2 ** 63 - 1)
        if self.seq_len is not None:
            check_int(self.seq_len, "seq_len", 1, hint=" (or None: the model's max_seq_len)")
        check_float(self.lr, "lr", 0, min_open=True)
        check_float(self.min_lr_ratio, "min_lr_ratio", 0, 1)
        check_float(self.weight_decay, "weight_decay", 0)
        check_float(self.grad_clip, "grad_clip", 0, hint=" (0 = no clipping)")
        check_float(self.eval_fraction, "eval_fraction", 0, 1, max_open=True)
        check_float(self.sample_temperature, "sample_temperature", 0, hint=" (0 = greedy)")
        check_float(self.linked_budget_share, "linked_budget_share", 0, 1, min_open=True)
        check_float(self.linked_plain_share, "linked_plain_share", 0, 1)
        if self.max_minutes is not None:
            check_float(self.max_minutes, "max_minutes", 0, min_open=True, hint=" (or None: no time limit)")
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == 2):
            raise ValueError(f"betas: expected two numbers in [0, 1), e.g. (0.9, 0.95), got {self.betas!r}")
        self.betas = tuple(check_float(b, f"betas[{i}]", 0, 1, max_open=True) for i, b in enumerate(self.betas))
        for name in ("compile", "progress", "tensorboard", "linked"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        for name in ("preset", "sample_prompt", "device"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a str, got {getattr(self, name)!r}")
        if not isinstance(self.model_overrides, dict):
            raise TypeError(f"model_overrides: expected a dict, got {self.model_overrides!r}")
        check_choice(self.precision, "precision", ("auto", "bf16", "fp32"))
        check_choice(self.tokenizer, "tokenizer", ("byte", "char", "gpt2"))

    def batch_layout(self, seq_len: int, world_size: int = 1) -> tuple[int, int]:
        """(micro_batch, accum_steps): sequences per forward per process and forwards per step, so
        that ``micro_batch * accum_steps * world_size * seq_len`` is ``tokens_per_step`` rounded up
        to whole sequences (and to a multiple of the process count)."""
        seqs = max(1, -(-self.tokens_per_step // seq_len))
        per_rank = max(1, -(-seqs // world_size))
        micro = max(1, min(per_rank, self.micro_batch_tokens // seq_len))
        accum = -(-per_rank // micro)
        return micro, accum

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}")
        return cls(**d)
