"""Semantic IDs: item embeddings -> a few discrete codes per item (+ one code that splits collisions).

Embeddings (float32 (n_items + 1, d), row 0 unused):
- :func:`cf_embeddings`: collaborative, from the training interactions only (PPMI of item
  co-occurrence within a window, truncated SVD) — works for any interaction file;
- :func:`attribute_embeddings`: TF-IDF of the attribute ids, truncated SVD;
- :func:`text_embeddings`: item text through the ``wordllama`` package's bundled weights (offline).

Quantisers (codes int64 (n_items + 1, levels), row 0 = -1):
- :func:`residual_kmeans`: k-means on the embeddings, then on the residuals, level by level;
- :func:`rqvae`: an MLP autoencoder whose latent is quantised residually with codebooks initialised
  by k-means; both re-initialise dead codes (codes no item uses) from the worst-served items, the
  fix for the codebook collapse residual quantisers are known for.

:func:`add_collision_code` appends a last code numbering the items that share an ID, so every item
has a unique ID; :func:`quality_report` gives the unique-ID share, the largest collision group and
the codes used per level.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from craft.data.recsys import RecsysData


# ---------------------------------------------------------------------------------- embeddings
def _svd_rows(m: sp.spmatrix, dim: int, seed: int) -> np.ndarray:
    k = max(1, min(dim, min(m.shape) - 1))
    rng = np.random.default_rng(seed)
    u, s, _ = spla.svds(m.astype(np.float64), k=k, v0=rng.standard_normal(min(m.shape)))
    x = (u * np.sqrt(s)).astype(np.float32)
    if k < dim:
        x = np.pad(x, ((0, 0), (0, dim - k)))
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-8)).astype(np.float32)


def cf_embeddings(data: RecsysData, dim: int = 64, window: int = 3, seed: int = 0) -> np.ndarray:
    """float32 (n_items + 1, dim), unit rows: SVD of the positive PMI of items co-occurring within
    ``window`` positions in the training sequences (weights 1/distance). Items never seen in training
    get a tiny random row (they fall into collision groups, told apart by the last code)."""
    rows, cols, vals = [], [], []
    for s in data.train_sequences:
        for d in range(1, window + 1):
            if len(s) > d:
                rows += [s[:-d], s[d:]]
                cols += [s[d:], s[:-d]]
                vals += [np.full(len(s) - d, 1.0 / d)] * 2
    n = data.n_items + 1
    if rows:
        c = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    else:
        c = sp.csr_matrix((n, n))
    total = c.sum()
    rs = np.asarray(c.sum(1)).ravel()
    coo = c.tocoo()
    pmi = np.log(np.maximum(coo.data * total / (rs[coo.row] * rs[coo.col] + 1e-12), 1e-12))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n, n))
    x = _svd_rows(ppmi, dim, seed) if ppmi.nnz else np.zeros((n, dim), np.float32)
    unseen = np.linalg.norm(x, axis=1) < 1e-8
    x[unseen] = np.random.default_rng(seed).standard_normal((int(unseen.sum()), dim)).astype(np.float32) * 1e-3
    return _normalise(x)


def attribute_embeddings(attrs: list[list[int]], dim: int = 64, seed: int = 0) -> np.ndarray:
    """float32 (len(attrs), dim), unit rows: truncated SVD of the TF-IDF item x attribute matrix."""
    rows = np.repeat(np.arange(len(attrs)), [len(a) for a in attrs])
    cols = np.concatenate([np.asarray(a, np.int64) for a in attrs if a] or [np.zeros(0, np.int64)])
    if not len(cols):
        raise ValueError("attrs: no item has an attribute")
    m = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(attrs), int(cols.max()) + 1))
    m.data[:] = 1.0
    df = np.asarray((m > 0).sum(0)).ravel()
    m = m @ sp.diags(np.log((1 + len(attrs)) / (1 + df)) + 1)
    x = _svd_rows(m, dim, seed)
    return _normalise(x + np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32) * 1e-4)


def text_embeddings(texts: list[str], dim: int = 256) -> np.ndarray:
    """float32 (len(texts), dim) unit rows from ``wordllama``'s bundled model (no network). Raises
    ImportError when the package is missing."""
    import os

    import wordllama  # optional dependency
    from wordllama import WordLlama

    # the wheel ships weights/ and tokenizers/; pointing the cache at the package finds both, and
    # disable_download makes a missing file an error instead of a download
    wl = WordLlama.load(dim=dim, cache_dir=os.path.dirname(wordllama.__file__), disable_download=True)
    x = np.asarray(wl.embed([t or " " for t in texts]), dtype=np.float32)
    return _normalise(x)


# ---------------------------------------------------------------------------------- quantisers
def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    centers = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        c = x[torch.multinomial(p, 1, generator=g)].squeeze(0)
        centers.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    return torch.stack(centers)


def _assign(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]
    dist, idx = d.min(1)
    return idx, dist.clamp_min(0)


def _reinit_dead(x: torch.Tensor, c: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor) -> int:
    """Moves each unused centroid onto one of the worst-served points (in place); the number moved."""
    used = torch.bincount(idx, minlength=c.shape[0])
    dead = torch.nonzero(used == 0).ravel()
    if len(dead):
        worst = torch.argsort(dist, descending=True)[: len(dead)]
        c[dead[: len(worst)]] = x[worst]
    return len(dead)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (k, d), assignment (n,)): k-means++ init, Lloyd iterations, dead centroids moved
    onto the worst-served points every iteration. ``k`` is capped at the number of points."""
    g = torch.Generator().manual_seed(seed)
    k = min(k, x.shape[0])
    c = _kmeans_pp(x, k, g)
    for _ in range(iters):
        idx, dist = _assign(x, c)
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        cnt = torch.bincount(idx, minlength=k).to(x.dtype)
        c = torch.where(cnt[:, None] > 0, sums / cnt.clamp_min(1)[:, None], c)
        _reinit_dead(x, c, idx, dist)
    idx, _ = _assign(x, c)
    return c, idx


def residual_kmeans(emb: np.ndarray, levels: int = 3, codebook_size: int = 256, iters: int = 25,
                    seed: int = 0) -> np.ndarray:
    """int64 (n_items + 1, levels) codes of rows 1.. of ``emb`` (row 0 = -1)."""
    x = torch.from_numpy(np.ascontiguousarray(emb[1:], dtype=np.float32))
    codes = np.full((len(emb), levels), -1, dtype=np.int64)
    r = x.clone()
    for lvl in range(levels):
        c, idx = kmeans(r, codebook_size, iters, seed + lvl)
        codes[1:, lvl] = idx.numpy()
        r = r - c[idx]
    return codes


def rqvae(emb: np.ndarray, levels: int = 3, codebook_size: int = 256, latent_dim: int = 32, hidden_dim: int = 256,
          steps: int = 1500, lr: float = 1e-3, beta: float = 0.25, seed: int = 0) -> np.ndarray:
    """int64 (n_items + 1, levels) codes from an RQ-VAE trained full-batch on rows 1.. of ``emb``:
    MLP encoder -> latent, residual quantisation (straight-through, codebook + ``beta`` x commitment
    loss), MLP decoder, MSE reconstruction. Codebooks start as k-means of the initial residuals;
    dead codes are re-initialised every 100 steps."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(emb[1:], dtype=np.float32))
    d = x.shape[1]
    enc = torch.nn.Sequential(torch.nn.Linear(d, hidden_dim), torch.nn.SiLU(), torch.nn.Linear(hidden_dim, latent_dim))
    dec = torch.nn.Sequential(torch.nn.Linear(latent_dim, hidden_dim), torch.nn.SiLU(), torch.nn.Linear(hidden_dim, d))
    k = min(codebook_size, len(x))
    with torch.no_grad():
        r = enc(x)
        books = []
        for lvl in range(levels):
            c, idx = kmeans(r, k, 10, seed + lvl)
            books.append(c)
            r = r - c[idx]
    books = torch.nn.Parameter(torch.stack(books))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), books], lr=lr)

    def quantise(z):
        r, q, loss, ids = z, torch.zeros_like(z), z.new_zeros(()), []
        for lvl in range(levels):
            idx, dist = _assign(r.detach(), books[lvl].detach())
            e = books[lvl][idx]
            loss = loss + ((e - r.detach()) ** 2).mean() + beta * ((r - e.detach()) ** 2).mean()
            ids.append((idx, dist, r.detach()))
            q = q + e
            r = r - e.detach()
        return q, loss, ids

    for step in range(steps):
        z = enc(x)
        q, qloss, ids = quantise(z)
        zq = z + (q - z).detach()
        loss = ((dec(zq) - x) ** 2).mean() + qloss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            with torch.no_grad():
                for lvl, (idx, dist, r) in enumerate(ids):
                    _reinit_dead(r, books.data[lvl], idx, dist)
    with torch.no_grad():
        _, _, ids = quantise(enc(x))
    codes = np.full((len(emb), levels), -1, dtype=np.int64)
    for lvl, (idx, _, _) in enumerate(ids):
        codes[1:, lvl] = idx.numpy()
    return codes


# ---------------------------------------------------------------------------------- collisions, report
def add_collision_code(codes: np.ndarray) -> np.ndarray:
    """(n + 1, L) -> (n + 1, L + 1): the last code numbers the items sharing the same L codes
    (0, 1, …, in item order), so every item 1..n gets a distinct ID. Row 0 stays -1."""
    body = codes[1:]
    _, inv = np.unique(body, axis=0, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    sorted_inv = inv[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
    rank_sorted = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    extra = np.empty(len(order), np.int64)
    extra[order] = rank_sorted
    out = np.full((len(codes), codes.shape[1] + 1), -1, dtype=np.int64)
    out[1:, :-1] = body
    out[1:, -1] = extra
    return out


def quality_report(codes: np.ndarray) -> dict:
    """For codes (n + 1, L) of items 1..n: ``unique_share`` (items whose L codes no other item has),
    ``largest_collision`` (most items sharing one ID), ``codes_used`` per level, ``levels``."""
    body = codes[1:]
    _, inv, counts = np.unique(body, axis=0, return_inverse=True, return_counts=True)
    per_item = counts[inv.ravel()]
    return {"items": int(len(body)), "levels": int(body.shape[1]),
            "unique_share": float((per_item == 1).mean()), "largest_collision": int(counts.max()),
            "codes_used": [int(len(np.unique(body[:, lvl]))) for lvl in range(body.shape[1])]}


def format_report(rep: dict) -> str:
    return (f"semantic IDs: {rep['items']} items, {rep['levels']} levels, unique {100 * rep['unique_share']:.1f}%, "
            f"largest collision group {rep['largest_collision']}, codes used per level {rep['codes_used']}")
