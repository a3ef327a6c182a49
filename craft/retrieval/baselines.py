"""Training-free rankers: popularity and the transition heuristic, vectorised with scipy.sparse.

Both learn only from ``RecsysData.train_sequences`` (each user's ``s[:-2]``) and score the whole
catalog; items in the user's history are excluded (score ``-inf``), as the heuristic specifies.

Transition heuristic: ``score(i) = sum_j w_j * (F[h_j, i] + 0.5 * F[i, h_j]) + eps * pop(i) / max pop``
where ``F[a, b]`` counts how often ``b`` directly followed ``a`` in the training sequences,
``h_0, h_1, h_2`` are the user's last three items (most recent first) and ``w = (1, 0.5, 0.25)``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from craft.data.recsys import Examples, RecsysData
from craft.retrieval.metrics import metrics_from_ranks, target_ranks

WEIGHTS = (1.0, 0.5, 0.25)
REVERSE = 0.5
POP_EPS = 1e-3


def item_counts(data: RecsysData) -> np.ndarray:
    """float64 (n_items + 1,) occurrences of each item in the training sequences (index 0 = 0)."""
    flat = np.concatenate([s for s in data.train_sequences if len(s)]) if data.train_sequences else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=data.n_items + 1).astype(np.float64)


def transition_matrix(data: RecsysData) -> sp.csr_matrix:
    """F (n+1, n+1) CSR float32: ``F[a, b]`` = times b directly followed a in the training sequences."""
    a = np.concatenate([s[:-1] for s in data.train_sequences if len(s) > 1] or [np.zeros(0, np.int64)])
    b = np.concatenate([s[1:] for s in data.train_sequences if len(s) > 1] or [np.zeros(0, np.int64)])
    n = data.n_items + 1
    return sp.csr_matrix((np.ones(len(a), np.float32), (a, b)), shape=(n, n))


class Popularity:
    """Scores every item by its training count."""

    name = "popularity"

    def __init__(self, data: RecsysData):
        self.pop = torch.from_numpy(item_counts(data).astype(np.float32))

    def scores(self, history: np.ndarray) -> torch.Tensor:
        s = self.pop.expand(len(history), -1).clone()
        return _exclude(s, history)


class TransitionHeuristic:
    """The transition heuristic of the module docstring."""

    name = "transition"

    def __init__(self, data: RecsysData, weights=WEIGHTS, reverse: float = REVERSE, pop_eps: float = POP_EPS):
        f = transition_matrix(data)
        self.m = (f + reverse * f.T).tocsr().astype(np.float32)
        pop = item_counts(data)
        self.pop = torch.from_numpy((pop_eps * pop / max(pop.max(), 1.0)).astype(np.float32))
        self.weights = tuple(float(w) for w in weights)

    def scores(self, history: np.ndarray) -> torch.Tensor:
        """history (N, H) int64 left-padded with 0 -> float32 (N, n_items + 1), column 0 and history = -inf."""
        n, n_cols = len(history), self.m.shape[0]
        rows, cols, vals = [], [], []
        for j, w in enumerate(self.weights[: history.shape[1]]):
            h = history[:, -1 - j]
            ok = h > 0
            rows.append(np.flatnonzero(ok))
            cols.append(h[ok])
            vals.append(np.full(int(ok.sum()), w, np.float32))
        q = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n_cols))
        s = torch.from_numpy((q @ self.m).toarray()) + self.pop
        return _exclude(s, history)


def _exclude(s: torch.Tensor, history: np.ndarray) -> torch.Tensor:
    h = torch.from_numpy(np.asarray(history, dtype=np.int64))
    s.scatter_(1, h, float("-inf"))  # column 0 (padding) included
    s[:, 0] = float("-inf")
    return s


def evaluate_ranker(ranker, examples: Examples, chunk: int = 2048) -> tuple[dict, np.ndarray]:
    """(metrics, ranks) of a ranker with ``scores(history)`` on ``examples``, full ranking, in chunks of users."""
    ranks = [target_ranks(ranker.scores(examples.history[i:i + chunk]), examples.target[i:i + chunk])
             for i in range(0, len(examples), chunk)]
    r = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
    return metrics_from_ranks(r), r


def baseline_report(data: RecsysData, split: str) -> dict:
    """{'popularity': metrics, 'transition': metrics} on ``split`` ('valid' or 'test')."""
    ex = getattr(data, split)
    return {r.name: evaluate_ranker(r, ex)[0] for r in (Popularity(data), TransitionHeuristic(data))}
