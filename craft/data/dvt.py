"""DVT (document vector tree) views over the arrays of :func:`craft_kernels.build_dvt`.

A batch of nested units (tokens → words → sentences → …) becomes one tree per top-level unit.
``DvtBatch`` owns the arrays and the node vectors; ``DvtTree``/``DvtNode`` are thin views (no
per-node storage besides the views themselves). ``realize(batch, embedding)`` embeds every leaf
(token, including join tokens when the tokens hold them) in one batched call.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from craft_kernels import build_dvt


class DvtBatch:
    """All trees of a batch. ``tokens`` (n_tokens,) int ids of the leaves; ``vectors`` (n_nodes, d)
    float once realized; ``realized`` (n_nodes,) bool."""

    def __init__(self, tokens, level_offsets):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.arrays = build_dvt(level_offsets, n_tokens=len(self.tokens))
        self.n_nodes = len(self.arrays.parent)
        self.vectors: torch.Tensor | None = None
        self.realized = np.zeros(self.n_nodes, dtype=bool)

    @cached_property
    def trees(self) -> list["DvtTree"]:
        return [DvtTree(self, t) for t in range(len(self.arrays.tree_offsets) - 1)]

    def node(self, pre_order_id: int) -> "DvtNode":
        return DvtNode(self, int(pre_order_id))


@dataclass(frozen=True)
class DvtNode:
    batch: DvtBatch
    pre_order_id: int

    @property
    def level(self) -> int:
        return int(self.batch.arrays.level[self.pre_order_id])

    @property
    def parent(self) -> "DvtNode | None":
        p = int(self.batch.arrays.parent[self.pre_order_id])
        return None if p < 0 else DvtNode(self.batch, p)

    @property
    def children(self) -> list["DvtNode"]:
        a = self.batch.arrays
        lo, hi = a.child_offsets[self.pre_order_id], a.child_offsets[self.pre_order_id + 1]
        return [DvtNode(self.batch, int(c)) for c in a.children[lo:hi]]

    @property
    def tree(self) -> "DvtTree":
        return self.batch.trees[int(self.batch.arrays.tree[self.pre_order_id])]

    @property
    def token(self) -> int | None:
        """The token id of a leaf; None for inner nodes."""
        if self.level != 0:
            return None
        return int(self.batch.tokens[self.batch.arrays.unit[self.pre_order_id]])

    @property
    def realized(self) -> bool:
        return bool(self.batch.realized[self.pre_order_id])

    @property
    def vector(self) -> torch.Tensor | None:
        return self.batch.vectors[self.pre_order_id] if self.realized else None


class DvtTree:
    """One tree: ``root`` and ``level_nodes`` {level: [nodes sorted by pre_order_id]}."""

    def __init__(self, batch: DvtBatch, index: int):
        self.batch, self.index = batch, index
        a = batch.arrays
        self.start, self.stop = int(a.tree_offsets[index]), int(a.tree_offsets[index + 1])

    @property
    def root(self) -> DvtNode:
        return DvtNode(self.batch, self.start)

    @property
    def level_nodes(self) -> dict[int, list[DvtNode]]:
        out: dict[int, list[DvtNode]] = {}
        for lvl, ids in enumerate(self.batch.arrays.level_nodes):
            lo, hi = np.searchsorted(ids, [self.start, self.stop])
            out[lvl] = [DvtNode(self.batch, int(i)) for i in ids[lo:hi]]
        return out

    def __len__(self) -> int:
        return self.stop - self.start


def realize(batch: DvtBatch, embedding: torch.nn.Module | torch.Tensor) -> torch.Tensor:
    """Embeds all leaves in one call and marks them realized. ``embedding`` is an ``nn.Embedding``
    (or any module mapping int64 ids to vectors) or a weight tensor (vocab, d). Returns the leaves'
    vectors (n_leaves, d) in pre-order; ``batch.vectors`` (n_nodes, d) holds them at their node ids."""
    leaf_ids = batch.arrays.level_nodes[0]
    tok = torch.from_numpy(batch.tokens[batch.arrays.unit[leaf_ids]])
    if isinstance(embedding, torch.Tensor):
        if tok.numel() and int(tok.max()) >= embedding.shape[0]:
            raise ValueError(f"embedding: token id {int(tok.max())} is outside its {embedding.shape[0]} rows")
        vec = embedding[tok.to(embedding.device)]
    else:
        weight = getattr(embedding, "weight", None)
        vec = embedding(tok.to(weight.device if weight is not None else "cpu"))
    if batch.vectors is None:
        batch.vectors = vec.new_zeros(batch.n_nodes, vec.shape[-1])
    batch.vectors[torch.from_numpy(leaf_ids).to(vec.device)] = vec
    batch.realized[leaf_ids] = True
    return vec
