"""Trie-constrained beam search for generative retrieval vs the constraints peers use, same run.

Catalog: 12,101 items (Beauty's size) with random 3 x 256 semantic IDs plus the collision code;
a randomly initialised Tiger model of the size trained on Beauty (dim 64, 2 + 2 layers); 256 users x
beam 20 (5,120 beams). Baselines, each plugged into the same beam search:
- brute-force prefix check (GRID / EdoardoBotta style, vectorised NumPy): compare every beam's
  prefix with every item's codes, then allow the next codes of the matching items;
- per-beam dict-trie callback (HF ``prefix_allowed_tokens_fn`` / cornac style): one Python call per
  beam returning the allowed codes from a dict keyed by the prefix tuple.
"""
import time

import numpy as np
import pytest
import torch

from craft.retrieval.decode import BeamTimer, beam_search, build_trie
from craft.retrieval.model import Tiger, TigerConfig
from craft.retrieval.semantic_ids import add_collision_code

N_ITEMS, USERS, BEAMS = 12101, 256, 20


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    codes = np.full((N_ITEMS + 1, 3), -1)
    codes[1:] = rng.integers(0, 256, size=(N_ITEMS, 3))
    codes = add_collision_code(codes)
    sizes = [int(codes[1:, l].max()) + 1 for l in range(codes.shape[1])]
    torch.manual_seed(0)
    model = Tiger(TigerConfig(sizes, dim=64, n_heads=4, hidden_dim=256, n_encoder_layers=2, n_decoder_layers=2)).eval()
    hist = np.zeros((USERS, 20), dtype=np.int64)
    lengths = rng.integers(1, 21, size=USERS)
    for u, n in enumerate(lengths):
        hist[u, 20 - n:] = rng.integers(1, N_ITEMS + 1, size=n)
    ct = torch.from_numpy(codes)
    trie = build_trie(codes)
    beam_search(model, trie, ct, hist[:8], BEAMS)  # warm up (the SwiGLU MLP compiles on first use)
    beam_search(model, trie, ct, hist[:16], BEAMS)
    return model, codes, ct, trie, hist


def brute_force(codes):
    body = codes[1:]

    def constrain(logp, prefixes, level):
        allowed = np.zeros(logp.shape, dtype=bool)
        for r0 in range(0, len(prefixes), 256):
            p = prefixes[r0:r0 + 256]
            match = (body[None, :, :level] == p[:, None, :]).all(-1) if level else np.ones((len(p), len(body)), bool)
            rows, items = np.nonzero(match)
            allowed[rows + r0, body[items, level]] = True
        logp.masked_fill_(torch.from_numpy(~allowed), float("-inf"))
    return constrain


def dict_trie(codes):
    table: dict[tuple, set] = {}
    for c in codes[1:].tolist():
        for l in range(len(c)):
            table.setdefault(tuple(c[:l]), set()).add(c[l])
    table = {k: sorted(v) for k, v in table.items()}

    def constrain(logp, prefixes, level):
        mask = torch.full(logp.shape, float("-inf"))
        for r, p in enumerate(prefixes.tolist()):  # one callback per beam
            mask[r, table.get(tuple(p), [])] = 0.0
        logp.add_(mask)
    return constrain


def _time(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), float(np.min(ts)), float(np.max(ts))


def test_beam_search_constraint(benchmark, setup):
    """Users/sec of the whole batched beam search, the trie's share of it, and each constraint's own
    time per decode (summed over the 4 levels) for the three implementations, interleaved."""
    model, codes, ct, trie, hist = setup
    timer = BeamTimer()
    ours_items, _ = beam_search(model, trie, ct, hist, BEAMS)
    for name, c in (("brute", brute_force(codes)), ("dict", dict_trie(codes))):
        other, _ = beam_search(model, trie, ct, hist, BEAMS, constrain=c)
        assert (other == ours_items).all(), name  # the same constraint, the same beams
    benchmark.pedantic(lambda: beam_search(model, trie, ct, hist, BEAMS, timer), rounds=3, iterations=1)
    t_ours = benchmark.stats.stats.median
    # constraint time alone, per decode, on captured (logp, states / prefixes) of every level
    captured = []

    def capture(logp, prefixes, level):
        states, _ = trie.walk(prefixes) if level else (trie.root_states(len(prefixes)), None)
        captured.append((logp.clone(), prefixes.copy(), states.astype(np.int64), level))
        trie.apply_to_logits(logp, states, on_empty="keep")
    beam_search(model, trie, ct, hist, BEAMS, constrain=capture)
    impls = {"trie": lambda lp, p, s, l: trie.apply_to_logits(lp, s, on_empty="keep"),
             "brute": lambda lp, p, s, l, c=brute_force(codes): c(lp, p, l),
             "dict": lambda lp, p, s, l, c=dict_trie(codes): c(lp, p, l)}
    per = {k: [] for k in impls}
    for _ in range(3):  # interleaved rounds
        for k, f in impls.items():
            tot = 0.0
            for lp, p, s, l in captured:
                x = lp.clone()
                t = time.perf_counter()
                f(x, p, s, l)
                tot += time.perf_counter() - t
            per[k].append(tot)
    med = {k: float(np.median(v)) for k, v in per.items()}
    share = timer.constraint / max(timer.constraint + timer.model, 1e-12)
    info = benchmark.extra_info
    info.update(users=USERS, beams=BEAMS, n_items=N_ITEMS, users_per_s=round(USERS / t_ours, 1),
                constraint_share=round(share, 4), trie_s_per_decode=round(med["trie"], 6),
                brute_s_per_decode=round(med["brute"], 4), dict_s_per_decode=round(med["dict"], 4),
                trie_vs_brute=round(med["brute"] / med["trie"], 1), trie_vs_dict=round(med["dict"] / med["trie"], 1),
                spread={k: [round(min(v), 6), round(max(v), 6)] for k, v in per.items()},
                threads=torch.get_num_threads())
    print(info)
