"""Evaluation of a trained model beside the baselines, measured in the same run.

Model: trie-constrained beam search; its first 10 items are the ranking (items past the beam rank
last, so Recall/NDCG@K are those of full ranking for K <= beams). Invalid-ID rate: the share of
top-10 slots that are repeated, history or non-catalog items, or empty although enough eligible
items exist. Every ranker excludes the user's history items (none of Beauty's or Yelp's targets
is one). Hybrid: candidates are the beam's items
plus the heuristic's top ``beams`` items (each scored exactly by the model), ranked by
``log p_model + alpha * log1p(heuristic)``; ``alpha`` is the grid value with the best validation NDCG@10.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from craft.data.recsys import Examples, RecsysData
from craft.retrieval.baselines import Popularity, TransitionHeuristic, evaluate_ranker
from craft.retrieval.decode import (BeamTimer, beam_search, build_trie, certified_top, hybrid_rank, level_widths,
                                   score_items, widened_widths)
from craft.retrieval.metrics import metrics_from_ranks, ranks_from_lists

EXACT_WIDTHS = (100, 300, 1000)  # beam widths certified_top tries before scoring every item
ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


def by_history_length(history: np.ndarray) -> np.ndarray:
    """Permutation (N,) int64 that sorts users by history length (stable). The encoder and the
    cross-attention run over a batch's longest history, so batching users of similar length skips
    the padding (Beauty's test histories average 7 items of the 20 a random batch pads to)."""
    return np.argsort((np.asarray(history) > 0).sum(1), kind="stable")


def decode_split(model, trie, codes_t, ex: Examples, beams, batch_users: int = 256, progress: bool = False):
    """(items (N, K), logp (N, K), BeamTimer, seconds) of beam search over every user of ``ex``, in
    ``ex``'s order (batches are formed by history length, :func:`by_history_length`); ``beams`` an
    int or one width per code level (:func:`level_widths`), K the last level's width."""
    timer = BeamTimer()
    order = by_history_length(ex.history)
    k = level_widths(beams, model.config.levels)[-1]
    items = np.empty((len(ex), k), dtype=np.int64)
    logp = np.empty((len(ex), k), dtype=np.float32)
    rng = range(0, len(ex), batch_users)
    if progress:
        from tqdm.auto import tqdm
        rng = tqdm(rng, unit="batch", dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    for i in rng:
        sel = order[i:i + batch_users]
        items[sel], logp[sel] = beam_search(model, trie, codes_t, ex.history[sel], beams, timer)
    return items, logp, timer, time.perf_counter() - t0


def invalid_rate(top: np.ndarray, n_items: int, history: np.ndarray | None = None) -> float:
    """Share of the top-k slots (top (N, k), -1 = empty) holding a non-catalog item, a repeat or a
    history item, or left empty although enough eligible items exist (catalog minus history)."""
    bad = (top < 1) | (top > n_items)
    srt = np.sort(top, 1)
    dup = np.zeros_like(bad)
    dup[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] > 0)
    filled = top > 0
    if history is not None:
        h = np.asarray(history)
        in_hist = (top[:, :, None] == h[:, None, :]).any(-1) & filled
        distinct = np.array([len(set(r[r > 0].tolist())) for r in h])
        eligible = np.minimum(top.shape[1], n_items - distinct)
    else:
        in_hist = np.zeros_like(bad)
        eligible = np.full(len(top), top.shape[1])
    wrong = ((bad & filled) | dup | in_hist).sum()
    missing = np.maximum(eligible - filled.sum(1), 0).sum()
    return float((wrong + missing) / max(top.size, 1))


def _hybrid_inputs(model, codes_t, ex, heur, items, beams, batch_users=256):
    """In chunks of users (the heuristic's (N, n_items + 1) scores would not fit at once): the heuristic's
    top ``beams`` items (N, beams), their exact model log-probs, and the heuristic's values of all
    candidates ``[items, extra]`` (N, 2 * beams)."""
    n = len(ex)
    extra = np.zeros((n, beams), dtype=np.int64)
    extra_lp = np.empty((n, beams), dtype=np.float32)
    h_cand = torch.empty(n, items.shape[1] + beams)
    order = by_history_length(ex.history)
    for i in range(0, n, batch_users):
        sel = order[i:i + batch_users]
        hs = heur.scores(ex.history[sel])
        top = hs.topk(beams, dim=1)
        e = np.where(torch.isfinite(top.values).numpy(), top.indices.numpy(), 0)
        extra[sel] = e
        extra_lp[sel] = score_items(model, codes_t, ex.history[sel], e, chunk_rows=batch_users * beams)
        cand = np.concatenate([items[sel], e], 1)
        h_cand[torch.from_numpy(sel)] = hs.gather(1, torch.from_numpy(np.maximum(cand, 0))).float()
    return extra, extra_lp, h_cand


def _hybrid_metrics(items, logp, extra, extra_lp, h_cand, alpha, targets):
    cand = np.concatenate([items, extra], 1)
    ranked = hybrid_rank(cand, np.concatenate([logp, extra_lp], 1), h_cand.numpy(), alpha, k=10)
    return metrics_from_ranks(ranks_from_lists(ranked, targets)), ranked


def evaluate(model, codes: np.ndarray, data: RecsysData, split: str = "test", beams=None,
             hybrid: bool = True, batch_users: int = 256, progress: bool = False, max_users: int | None = None,
             exact_users: int = 0, alpha_users: int | None = 4000) -> dict:
    """Metrics of the model (beam search), the baselines and the hybrid on ``split``; with
    ``exact_users`` > 0 also beam vs the exact top 10 of full-catalog scoring (:func:`certified_top`,
    pessimistic ties) on the first ``exact_users`` users of the evaluated ones. ``max_users``: evaluate a seeded
    random sample of that many users (the same users for every model and baseline). The hybrid's
    ``alpha`` is chosen on a seeded random sample of ``alpha_users`` validation users (None: all),
    never on the evaluated split's targets unless that split is ``valid``. ``beams``: an int (a
    uniform beam) or one width per code level (:func:`level_widths`); None: 20 returned items with
    wider early levels (:func:`widened_widths`, the CLI's default). The result's ``beams`` is the
    last width (items returned), ``beam_widths`` all of them."""
    if split not in ("valid", "test"):
        raise ValueError(f"split: expected 'valid' or 'test', got {split!r}")
    widths = level_widths(widened_widths(20, model.config.levels) if beams is None else beams, model.config.levels)
    if widths[-1] < 10:
        raise ValueError(f"beams: need at least 10 at the last level to rank 10 items, got {beams}")
    t_start = time.perf_counter()
    codes_t = torch.from_numpy(codes)
    trie = build_trie(codes)

    def sub(ex: Examples, n: int | None = max_users) -> Examples:
        if n is None or n >= len(ex):
            return ex
        # a seeded random sample: the files' user order is not random (the first users are far
        # harder than the average one), so the first N users would give a biased estimate
        sel = np.sort(np.random.default_rng(0).choice(len(ex), n, replace=False))
        return Examples(ex.history[sel], ex.target[sel], ex.user[sel])

    ex = sub(getattr(data, split))
    heur, pop = TransitionHeuristic(data), Popularity(data)
    res = {"split": split, "users": len(ex), "beams": widths[-1], "beam_widths": list(widths), "n_items": data.n_items,
           "baselines": {r.name: evaluate_ranker(r, ex)[0] for r in (pop, heur)}}
    c0 = time.process_time()
    items, logp, timer, secs = decode_split(model, trie, codes_t, ex, widths, batch_users, progress)
    cpu = time.process_time() - c0  # on a shared machine the wall time is set by the load
    top = items[:, :10]
    res["model"] = metrics_from_ranks(ranks_from_lists(items, ex.target))
    res["invalid_id_rate"] = invalid_rate(top, data.n_items, ex.history)
    res["decode_seconds"] = secs
    res["decode_cpu_seconds"] = cpu
    res["users_per_sec"] = len(ex) / max(secs, 1e-9)
    res["constraint_share"] = timer.constraint / max(timer.constraint + timer.model, 1e-9)
    if hybrid:
        n_alpha = max_users if alpha_users is None else min(alpha_users, max_users or alpha_users)
        vex = sub(data.valid, n_alpha)
        if split == "valid" and len(vex) == len(ex):
            v_items, v_logp = items, logp
        else:
            v_items, v_logp, _, _ = decode_split(model, trie, codes_t, vex, widths, batch_users, progress)
        ve, vlp, vh = _hybrid_inputs(model, codes_t, vex, heur, v_items, widths[-1], batch_users)
        scores = {a: _hybrid_metrics(v_items, v_logp, ve, vlp, vh, a, vex.target)[0]["ndcg@10"] for a in ALPHAS}
        alpha = max(ALPHAS, key=lambda a: (scores[a], -a))
        e, elp, eh = ((ve, vlp, vh) if split == "valid" and len(vex) == len(ex)
                      else _hybrid_inputs(model, codes_t, ex, heur, items, widths[-1], batch_users))
        hm, _ = _hybrid_metrics(items, logp, e, elp, eh, alpha, ex.target)
        res["hybrid"] = {"alpha": alpha, **hm, "alpha_users": len(vex),
                         "valid_ndcg@10_by_alpha": {str(a): v for a, v in scores.items()}}
    if exact_users:
        n = min(exact_users, len(ex))
        t0 = time.perf_counter()
        ex_top, ex_lp, how = certified_top(model, trie, codes_t, ex.history[:n], 10, EXACT_WIDTHS)
        # pessimistic ties among the exact top 10 (items outside it score strictly lower)
        hit = ex_top == ex.target[:n, None]
        t_lp = np.where(hit, ex_lp, np.inf).min(1)
        ranks = np.where(hit.any(1), (ex_lp >= t_lp[:, None]).sum(1) - 1, 10)
        overlap = [len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(top[:n], ex_top)]
        res["exact"] = {"users": n, "exact": metrics_from_ranks(ranks),
                        "beam": metrics_from_ranks(ranks_from_lists(items[:n], ex.target[:n])),
                        "top10_identical": float((top[:n] == ex_top).all(1).mean()),
                        "top10_overlap": float(np.mean(overlap)),
                        "certified_by": {str(w): int((how == i).sum()) for i, w in enumerate((*EXACT_WIDTHS, "full"))},
                        "seconds": time.perf_counter() - t0}
        if len(set(widths)) > 1:  # the plain beam of the same final width, on the same users, beside it
            c0 = time.process_time()
            u_items, _, _, u_secs = decode_split(model, trie, codes_t, Examples(ex.history[:n], ex.target[:n], ex.user[:n]),
                                                 widths[-1], batch_users)
            res["exact"]["uniform_beam"] = metrics_from_ranks(ranks_from_lists(u_items, ex.target[:n]))
            res["exact"]["uniform_decode_seconds"] = u_secs
            res["exact"]["uniform_decode_cpu_seconds"] = time.process_time() - c0
            res["exact"]["uniform_top10_identical"] = float((u_items[:, :10] == ex_top).all(1).mean())
    res["seconds"] = time.perf_counter() - t_start
    return res


def format_results(res: dict) -> str:
    def row(name, m):
        return (f"{name:<12} R@5 {m['recall@5']:.4f}  N@5 {m['ndcg@5']:.4f}  "
                f"R@10 {m['recall@10']:.4f}  N@10 {m['ndcg@10']:.4f}")
    lines = [f"{res['split']}: {res['users']} users, beam {res['beams']} (widths per level "
             f"{'/'.join(map(str, res['beam_widths']))}), {res['n_items']} items",
             row("model", res["model"])]
    if "hybrid" in res:
        lines.append(row(f"hybrid a={res['hybrid']['alpha']:g}", res["hybrid"]))
    for name, m in res["baselines"].items():
        lines.append(row(name, m))
    if "exact" in res:
        lines.append(f"beam vs exact full-catalog scoring on the first {res['exact']['users']} users "
                     "(and a uniform beam of the same final width, when the widths differ):")
        lines.append(row("  beam", res["exact"]["beam"]))
        lines.append(row("  exact", res["exact"]["exact"]))
        if "uniform_beam" in res["exact"]:
            lines.append(row(f"  uniform {res['beams']}", res["exact"]["uniform_beam"]))
        lines.append(f"  top-10 identical (items and order) for {100 * res['exact']['top10_identical']:.1f}% of users, "
                     f"mean overlap {100 * res['exact']['top10_overlap']:.1f}%; certified by width {res['exact']['certified_by']}")
    lines.append(f"invalid IDs {100 * res['invalid_id_rate']:.3f}%  decode {res['decode_seconds']:.1f} s "
                 f"({res['decode_cpu_seconds']:.1f} s CPU) "
                 f"({res['users_per_sec']:.0f} users/s, constraint {100 * res['constraint_share']:.1f}% of decode)  "
                 f"total {res['seconds']:.1f} s")
    return "\n".join(lines)
