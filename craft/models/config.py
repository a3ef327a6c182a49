"""ModelConfig: the shape of a decoder-only language model, with named presets.

Presets are sized for low-spec devices (parameter counts without embeddings):
- ``tiny``: d 128, 6 layers, 8 heads, MLP width 512, capacity 256 tokens (~1.6M)
- ``small``: d 384, 6 layers, 6 heads, MLP width 1024, capacity 512 tokens (~10.6M)
``vocab_size`` is the tokenizer's; a trainer overrides it (``ModelConfig.preset("tiny", vocab_size=tok.vocab_size)``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from craft._deprecation import renamed
from craft_kernels import check_float, check_int

_RENAMED = {"ff_dim": "hidden_dim", "context_length": "max_seq_len"}

PRESETS: dict[str, dict] = {
    "tiny": dict(dim=128, n_layers=6, n_heads=8, hidden_dim=512, max_seq_len=256),
    "small": dict(dim=384, n_layers=6, n_heads=6, hidden_dim=1024, max_seq_len=512),
}


@renamed(**_RENAMED)
@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`craft.models.LanguageModel`.

    ``hidden_dim`` is the SwiGLU MLP's width; ``max_seq_len`` the longest sequence the model is
    built for (rotary angles are precomputed up to it; linked generation sizes its cache by it). ``ff_dim`` and
    ``context_length`` are their deprecated names (accepted with a DeprecationWarning, and read
    from old checkpoints by :meth:`from_dict`).

    ``n_kv_heads`` (None = ``n_heads``) must divide ``n_heads`` (grouped-query attention);
    ``dim`` must be a multiple of ``n_heads`` with an even head size (rotary embeddings).

    ``dropout`` in [0, 1): in training mode, the share of the embeddings and of each block's
    attention and MLP outputs zeroed before they join the residual stream (regularisation for
    small models that see their corpus many times); 0, the default, adds no op at all.
    """

    vocab_size: int = 50257
    dim: int = 128
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int | None = None
    hidden_dim: int = 512
    max_seq_len: int = 256
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dropout: float = 0.0

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len"):
            check_int(getattr(self, name), name, 1)
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim}: must be a multiple of n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"dim / n_heads = {self.head_dim}: rotary embeddings need an even head size")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads}: must divide n_heads={self.n_heads}")
        for name in ("rope_base", "norm_eps", "init_std"):
            check_float(getattr(self, name), name, 0, min_open=True)
        check_float(self.dropout, "dropout", 0, 1, max_open=True, hint=" (the share of activations zeroed in training; 0 turns it off)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        """The named preset (``tiny``, ``small``) with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"preset {name!r}: expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise (a checkpoint from another model)."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {_RENAMED.get(k, k): v for k, v in d.items()}  # checkpoints written before the renames
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)

    def num_parameters(self, embeddings: bool = True) -> int:
        """Parameter count of the model this config builds (``embeddings=False``: blocks and final norm only)."""
        d, hd = self.dim, self.head_dim
        attn = d * (self.n_heads + 2 * self.n_kv_heads) * hd + self.n_heads * hd * d
        ff = 3 * d * self.hidden_dim
        blocks = self.n_layers * (attn + ff + 2 * d) + d
        if not embeddings:
            return blocks
        emb = self.vocab_size * d
        return blocks + emb + (0 if self.tie_embeddings else emb)
