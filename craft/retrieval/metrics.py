"""Recall@K and NDCG@K for leave-one-out next-item prediction (one target per user).

Full ranking: every item of the catalog is scored. Ties are broken pessimistically: the target's
rank (0-based) is the number of *other* items whose score is >= its own, so a model that gives all
items one score ranks the target last, not first. Unscored items (``-inf``, e.g. excluded history
items) rank after every finite score; a target scored ``-inf`` is a miss.
"""
from __future__ import annotations

import numpy as np
import torch

KS = (5, 10)


def target_ranks(scores, targets) -> np.ndarray:
    """scores (N, V) float (numpy or torch), targets (N,) int columns -> int64 (N,) pessimistic 0-based ranks."""
    s = torch.as_tensor(scores)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if s.dim() != 2 or t.shape != (s.shape[0],):
        raise ValueError(f"scores (N, V) and targets (N,) expected, got {tuple(s.shape)} and {tuple(t.shape)}")
    ts = s.gather(1, t[:, None])
    rank = (s >= ts).sum(1) - 1
    rank = torch.where(torch.isneginf(ts[:, 0]), torch.full_like(rank, s.shape[1]), rank)
    return rank.numpy().astype(np.int64)


def ranks_from_lists(topk: np.ndarray, targets) -> np.ndarray:
    """topk (N, K) int item lists, best first (-1 = empty slot) -> 0-based rank of the target, or K when absent."""
    topk = np.asarray(topk)
    hit = topk == np.asarray(targets)[:, None]
    return np.where(hit.any(1), hit.argmax(1), topk.shape[1]).astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks=KS) -> dict:
    """{'recall@K', 'ndcg@K'} means over users, for each K."""
    r = np.asarray(ranks)
    out = {}
    for k in ks:
        hit = r < k
        out[f"recall@{k}"] = float(hit.mean()) if len(r) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean()) if len(r) else 0.0
    return out
