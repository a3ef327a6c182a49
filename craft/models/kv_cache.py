"""Static key/value cache: fixed-size buffers written in place at given slots (no reallocation, so a
compiled decode step never sees a new shape). Part of the model layer: ``LanguageModel.setup_cache``
builds one per attention layer; ``craft.generation`` drives it."""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """``k_cache``/``v_cache``: (B, H_kv, S_max, head_dim) buffers (not saved in state_dicts).

    ``update(input_pos (T,) long, k, v (B, H_kv, T, hd))`` writes the new keys/values at those slots
    and returns the whole buffers; ``compact(keep)`` moves the kept slots to the front.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        for name, v in (("batch_size", batch_size), ("n_kv_heads", n_kv_heads), ("max_seq_len", max_seq_len),
                        ("head_dim", head_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.k_cache.shape[2]

    @property
    def batch_size(self) -> int:
        return self.k_cache.shape[0]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Writes k, v (B, H_kv, T, hd) at slots ``input_pos`` (T,); returns (k_cache, v_cache)."""
        self.k_cache.index_copy_(2, input_pos, k.to(self.k_cache.dtype))
        self.v_cache.index_copy_(2, input_pos, v.to(self.v_cache.dtype))
        return self.k_cache, self.v_cache

    @torch.no_grad()
    def compact(self, keep: torch.Tensor) -> None:
        """Gathers slots ``keep`` (1-d long, in the order wanted) to slots ``0..len(keep)-1`` and zeroes
        the rest (as after ``DocMaskState.compact()``)."""
        keep = torch.as_tensor(keep, device=self.k_cache.device)
        if keep.dim() != 1 or keep.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"keep: expected a 1-d int tensor of slot indices, got {tuple(keep.shape)} {keep.dtype}")
        n = keep.numel()
        if n > self.max_seq_len or (n and (int(keep.min()) < 0 or int(keep.max()) >= self.max_seq_len)):
            raise ValueError(f"keep: slot indices must lie in [0, {self.max_seq_len}) and number at most "
                             f"{self.max_seq_len}")
        keep = keep.long()
        for buf in (self.k_cache, self.v_cache):
            kept = buf.index_select(2, keep)
            buf.zero_()
            buf[:, :, :n] = kept
