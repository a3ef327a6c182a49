"""Decoding: trie-constrained batched beam search, exact full-catalog scoring, the hybrid ranker.

Beam search runs many users at once: the encoder runs once per user, the decoder advances all
``users x beams`` rows one level at a time over a small KV cache, and before each top-k the
``craft_kernels.Trie`` of the catalog's semantic IDs sets every code that does not continue a real
item's ID to ``-inf`` (``Trie.apply_to_logits``, in place). A beam's score is the sum of the
model's log-probabilities (log-softmax over the whole level, as the exact mode computes them), so
beam search approximates :func:`score_items` over every item. Every finished beam is a distinct
path of the trie, i.e. a distinct real item (IDs are unique once the collision code is added).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from craft_kernels import Trie


def build_trie(codes: np.ndarray) -> Trie:
    """Trie over the IDs of items 1..n (codes (n + 1, L), row 0 unused); item ids are the item numbers."""
    return Trie(np.ascontiguousarray(codes[1:]), np.arange(1, len(codes), dtype=np.int64))


def history_codes(codes_t: torch.Tensor, history: np.ndarray) -> torch.Tensor:
    """(B, H) item ids left-padded with 0 (most recent last) -> (B, H', L) codes with each row's items
    first (oldest first) and -1 rows after, H' = the longest history (the model's layout)."""
    h = np.asarray(history)
    if h.ndim != 2:
        raise ValueError(f"history: expected (users, items) item ids, got shape {h.shape}")
    order = np.argsort(h == 0, axis=1, kind="stable")  # items first, order kept
    packed = torch.as_tensor(np.take_along_axis(h, order, 1), dtype=torch.long)
    used = int((packed > 0).sum(1).max()) if packed.numel() else 0
    return codes_t[packed[:, :max(used, 1)]]


class BeamTimer:
    """Seconds spent in the model and in the constraint (apply_to_logits + advance, plus the history
    exclusion when on) during beam search."""

    def __init__(self):
        self.model = self.constraint = self.other = 0.0


def level_widths(beams, levels: int) -> tuple[int, ...]:
    """Beams kept after each of the ``levels`` code levels: ``beams`` an int (the same width at every
    level) or a sequence of ``levels`` positive ints (the last one is how many items come back)."""
    ws = (beams,) * levels if isinstance(beams, (int, np.integer)) else tuple(beams)
    if len(ws) != levels or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in ws):
        raise ValueError(f"beams: expected a positive int or {levels} positive ints (one width per code level), "
                         f"got {beams!r}")
    return tuple(int(w) for w in ws)


def widened_widths(k: int, levels: int, factor: int = 2) -> tuple[int, ...]:
    """The evaluation's default schedule: ``factor * k`` beams after each level but the last two,
    ``k`` after those, e.g. 40/40/20/20 for 3 codes + the collision code (uniform when levels <= 2).

    Why there: a beam cut at an early level drops every item below the cut prefix for good, and the
    early prefixes' summed log-probabilities are the least decisive (which level loses the exact top
    items depends on the model: the first on one, the second on another), while the last semantic
    code and the collision code (mostly one allowed value) decide little, so ``k`` suffices there.
    A level's width sets the rows decoded at the next level. Compared with uniform beams and exact
    scoring in benchmarks/RESULTS.md."""
    if levels < 1 or k < 1 or factor < 1:
        raise ValueError(f"widened_widths: k, levels and factor must be positive, got {k}, {levels}, {factor}")
    return tuple(factor * k if lvl < levels - 2 else k for lvl in range(levels))


@torch.no_grad()
def beam_search(model, trie: Trie, codes_t: torch.Tensor, history: np.ndarray, beams=20,
                timer: BeamTimer | None = None, constrain=None, exclude_history: bool = True,
                return_bound: bool = False):
    """Top ``beams`` items per user: (items (B, beams) int64 best first, -1 where fewer exist;
    log-probabilities (B, beams) float32, -inf for those).

    ``beams``: an int, the same width at every level, or one width per code level
    (:func:`level_widths`; the last is the number of items returned). A prefix cut at any level is
    lost for good, so wider levels before the last keep items a uniform beam drops, at the same
    number of returned items; a level's width sets the rows decoded at the next level only
    (:func:`widened_widths`, the evaluation's default).

    ``return_bound``: also return bound (B,) float32, the highest log-probability any item outside
    the returned beams can have: the best candidate a top-k cut dropped, over every level (a
    prefix's summed log-probability bounds every item below it, each level adding a term <= 0).
    Items scoring above it are all returned, in exact order (:func:`certified_top`).

    ``exclude_history``: the user's history items are never returned, as the baselines exclude them:
    at every level a code is set to -inf when all the catalog items below it are history items, so
    no beam is spent on a branch that can only end in one.

    ``constrain(logp (rows, K) fp32, prefixes (rows, level) int64 codes decoded so far, level) -> None``
    replaces the trie step (benchmarks compare other constraint implementations); it must set the
    disallowed entries to -inf in place."""
    L = model.config.levels
    widths = level_widths(beams, L)
    t0 = time.perf_counter()
    memory, bias = model.encode(history_codes(codes_t, history))
    B = len(history)
    cache = [None] * len(model.decoder)
    tokens = torch.zeros(B, dtype=torch.long)
    scores = torch.zeros(B, 1)
    states = trie.root_states(B)
    prefixes = np.zeros((B, 0), dtype=np.int64)
    w = 1
    bound = torch.full((B,), float("-inf"))
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    if exclude_history:
        branches = _history_branches(trie, codes_t, history)
    t_con = time.perf_counter() - t0
    for level in range(L):
        t0 = time.perf_counter()
        logp = torch.log_softmax(model.decode_step(memory, bias, cache, tokens, level, w), dim=-1)
        t1 = time.perf_counter()
        if constrain is None:
            trie.apply_to_logits(logp, states, on_empty="keep")  # dead beams are -inf already
        else:
            constrain(logp, prefixes, level)
        if exclude_history:
            _mask_history(logp, states, branches, level, w)
        t2 = time.perf_counter()
        K = logp.shape[1]
        cand = (scores.view(B * w, 1) + logp).view(B, w * K)
        new_w = min(widths[level], w * K)
        if return_bound and new_w < w * K:
            top, idx = cand.topk(new_w + 1, dim=1)
            bound = torch.maximum(bound, top[:, new_w])
            top, idx = top[:, :new_w].contiguous(), idx[:, :new_w].contiguous()
        else:
            top, idx = cand.topk(new_w, dim=1)
        parent = idx // K
        code = (idx % K).view(-1)
        rows = (torch.arange(B)[:, None] * w + parent).view(-1)
        cache = [[k.index_select(0, rows), v.index_select(0, rows)] for k, v in cache]
        t3 = time.perf_counter()
        states = trie.advance(states[rows.numpy()], code.numpy())
        states[~torch.isfinite(top).view(-1).numpy()] = -1
        t4 = time.perf_counter()
        if constrain is not None:
            prefixes = np.concatenate([prefixes[rows.numpy()], code.numpy()[:, None]], 1)
        scores, w = top, new_w
        tokens = code + model.offsets[level]
        t_model += (t1 - t0) + (t3 - t2)
        t_con += (t2 - t1) + (t4 - t3)
    io, items_arr = trie.item_offsets, trie.items
    safe = np.maximum(states, 0)
    items = np.where(states >= 0, np.asarray(items_arr)[np.minimum(np.asarray(io)[safe], len(items_arr) - 1)], -1)
    items = items.reshape(B, w)
    sc = scores.numpy().astype(np.float32)
    items[~np.isfinite(sc)] = -1
    if w < widths[-1]:
        items = np.pad(items, ((0, 0), (0, widths[-1] - w)), constant_values=-1)
        sc = np.pad(sc, ((0, 0), (0, widths[-1] - w)), constant_values=-np.inf)
    if timer is not None:
        timer.model += t_model
        timer.constraint += t_con
    return (items, sc, bound.numpy()) if return_bound else (items, sc)


def _history_branches(trie: Trie, codes_t: torch.Tensor, history: np.ndarray):
    """Where beams must not go for each user: (parent (B, H, L) int64, code (B, H, L) int64, dead
    (B, H, L) bool). ``parent[b, h, l]`` is the trie node (depth l) of the first l codes of history
    item h and ``code[b, h, l]`` its next code; ``dead[b, h, l]`` when every catalog item below
    that child is in user b's history, so a beam at node ``parent`` must not take ``code`` (at the
    last level: the item itself). Padding and repeated history items are never dead.

    Nodes are numbered in DFS pre-order, so a subtree's catalog items are one slice of the trie's
    items and the history items below a node are those whose node at that depth is the same."""
    h = np.asarray(history, dtype=np.int64)
    B, H = h.shape
    L = codes_t.shape[1]
    first = np.ones(h.shape, dtype=bool)  # count each distinct history item once
    if H > 1:
        srt = np.sort(h, 1)
        dup_sorted = np.zeros(h.shape, dtype=bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        first = ~np.take_along_axis(dup_sorted, np.argsort(np.argsort(h, 1, kind="stable"), 1), 1)
    valid = (h > 0) & first
    code = np.maximum(codes_t.numpy()[h], 0)  # (B, H, L), padding -> code 0 (never dead)
    flat = code.reshape(B * H, L)
    nodes = np.zeros((B, H, L + 1), dtype=np.int64)
    for lvl in range(1, L + 1):
        nodes[..., lvl] = trie.walk(flat[:, :lvl])[0].reshape(B, H)
    io, se = np.asarray(trie.item_offsets), np.asarray(trie.subtree_end)
    below = nodes[..., 1:]
    n_cat = io[se[below]] - io[below]  # catalog items under each child
    n_hist = ((below[:, :, None, :] == below[:, None, :, :]) & valid[:, None, :, None]).sum(2)
    return nodes[..., :L], code, valid[..., None] & (n_hist >= n_cat)


def _mask_history(logp: torch.Tensor, states: np.ndarray, branches, level: int, w: int) -> None:
    """logp (B*w, K) at ``level``, states (B*w,) the rows' trie nodes: -inf on each code that leads
    into a dead history branch (:func:`_history_branches`) from the row's node (in place)."""
    parent, code, dead = branches
    bi, hi = np.nonzero(dead[:, :, level])
    if not len(bi):
        return
    hit = states.reshape(-1, w)[bi] == parent[bi, hi, level][:, None]  # (dead branches, w)
    k, j = np.nonzero(hit)
    if len(k):
        rows = torch.from_numpy(bi[k] * w + j)
        logp[rows, torch.from_numpy(code[bi[k], hi[k], level])] = float("-inf")


@torch.no_grad()
def score_items(model, codes_t: torch.Tensor, history: np.ndarray, items: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """Exact log-likelihood (B, C) float32 of candidate items (B, C) (<= 0 entries give -inf) for each
    user: teacher-forced decoder over the candidates' full IDs, summed log-softmax over levels."""
    items = np.asarray(items, dtype=np.int64)
    B, C = items.shape
    memory, bias = model.encode(history_codes(codes_t, history))
    out = np.full((B, C), -np.inf, dtype=np.float32)
    users_per = max(1, chunk_rows // max(C, 1))
    for u0 in range(0, B, users_per):
        u1 = min(B, u0 + users_per)
        it = torch.from_numpy(np.array(items[u0:u1])).clamp_min(0)
        tgt = codes_t[it].reshape(-1, model.config.levels).clamp_min(0)  # ((u1-u0)*C, L); item 0 -> any valid codes
        rep = torch.arange(u1 - u0).repeat_interleave(C) + u0
        mem = [(k[rep], v[rep]) for k, v in memory]
        logits = model.decode_full(mem, bias[rep], model.decoder_inputs(tgt[:, :-1]))
        lp = sum(torch.log_softmax(lg.float(), -1).gather(1, tgt[:, l:l + 1]).squeeze(1) for l, lg in enumerate(logits))
        lp = lp.view(u1 - u0, C).numpy()
        out[u0:u1] = np.where(items[u0:u1] > 0, lp, -np.inf)
    return out


def exact_scores(model, codes_t: torch.Tensor, history: np.ndarray, n_items: int, chunk_rows: int = 65536,
                 exclude_history: bool = True) -> np.ndarray:
    """float32 (B, n_items + 1): the log-likelihood of every item (column 0 = -inf; history items
    -inf with ``exclude_history``, as :func:`beam_search`) — the oracle beam search approximates."""
    B = len(history)
    all_items = np.broadcast_to(np.arange(n_items + 1, dtype=np.int64), (B, n_items + 1))
    out = score_items(model, codes_t, history, all_items, chunk_rows)
    if exclude_history:
        np.put_along_axis(out, np.asarray(history, dtype=np.int64), -np.inf, 1)  # column 0 (padding) included
    return out


def certified_top(model, trie: Trie, codes_t: torch.Tensor, history: np.ndarray, k: int = 10,
                  widths=(100, 300, 1000), rows: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact top ``k`` of full-catalog scoring (:func:`exact_scores`, history excluded) without
    scoring every item: beam search of width ``widths[0]`` with its bound (:func:`beam_search`);
    a user's top k is certified when the bound is below its k-th score (no item outside the beams
    can reach it), else the next width, and the users left after the last width are scored
    exactly. Returns (items (B, k) int64, log-probs (B, k) float32, how (B,) int: the index of the
    width that certified the user, ``len(widths)`` for full scoring). ``rows``: beams per batch."""
    if min(widths) < k:
        raise ValueError(f"widths: each must be at least k={k} (the beam returns the top k), got {tuple(widths)}")
    B = len(history)
    items = np.full((B, k), -1, dtype=np.int64)
    lp = np.full((B, k), -np.inf, dtype=np.float32)
    how = np.full(B, len(widths), dtype=np.int64)
    todo = np.arange(B)
    for wi, w in enumerate(widths):
        done = []
        for i in range(0, len(todo), max(1, rows // w)):
            sel = todo[i:i + max(1, rows // w)]
            it, sc, bound = beam_search(model, trie, codes_t, history[sel], w, return_bound=True)
            ok = bound < sc[:, k - 1]
            ok |= np.isneginf(bound) & np.isneginf(sc[:, k - 1])  # fewer than k eligible items, all found
            items[sel[ok]], lp[sel[ok]], how[sel[ok]] = it[ok, :k], sc[ok, :k], wi
            done.append(sel[ok])
        todo = np.setdiff1d(todo, np.concatenate(done) if done else todo[:0])
    for i in range(0, len(todo), 8):
        sel = todo[i:i + 8]
        sc = torch.from_numpy(exact_scores(model, codes_t, history[sel], len(codes_t) - 1))
        top = sc.topk(k, dim=1)
        lp[sel] = top.values.numpy()
        items[sel] = np.where(torch.isfinite(top.values).numpy(), top.indices.numpy(), -1)
    return items, lp, how


def hybrid_rank(cand: np.ndarray, logp: np.ndarray, heur: np.ndarray, alpha: float, k: int = 10) -> np.ndarray:
    """Top-k items (B, k) (-1 = empty) among candidates cand (B, C) (<= 0 = none; an item may appear
    twice) by ``logp + alpha * log1p(heur)``; logp (B, C) the model's exact log-probs, heur (B, C)
    the heuristic's scores (-inf = excluded history item)."""
    heur = np.asarray(heur, dtype=np.float64)
    s = logp + alpha * np.log1p(np.maximum(heur, 0)) + np.where(np.isneginf(heur) | (cand <= 0), -np.inf, 0.0)
    order = np.argsort(cand, 1, kind="stable")
    srt = np.take_along_axis(cand, order, 1)
    dup_sorted = np.zeros(cand.shape, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, 1)
    s = np.where(dup, -np.inf, s)
    top = np.argsort(-s, 1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(s, top, 1)), np.take_along_axis(cand, top, 1), -1)
