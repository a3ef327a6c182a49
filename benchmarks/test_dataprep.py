"""Data-prep ops: C++ vs what a competent user writes instead, NumPy-vectorised, at ~1M tokens
(goal >= 5x), both timed by the same harness in the same run. The pure-Python references are an
extra, naive column only (build_dvt has no short NumPy form, so its row is C++ vs that reference)."""
import numpy as np
import pytest

import craft_kernels as ck
from _harness import nested_levels

N_TOKENS = 1_000_000


@pytest.fixture(scope="module")
def nested():
    return nested_levels(N_TOKENS)


# ---------------------------------------------------------------- the NumPy baselines
def pad_units_numpy(tokens, offsets, width, pad_id):
    lengths = np.diff(offsets)
    out = np.full((len(lengths), width), pad_id, dtype=np.int64)
    out[np.arange(width) < lengths[:, None]] = tokens  # units fit: row-major order is token order
    return out


def flatten_level_numpy(tokens, levels, level):
    """The gather alone, no checks: less work than the op, which promises every level is valid."""
    off = levels[0]
    for sel in levels[1:level + 1]:
        off = off[sel]
    return tokens, levels[:level + 1], off


def flatten_level_numpy_checked(tokens, levels, level):
    """The op's contract written in NumPy: every level's offsets start at 0, never decrease and end
    at the unit count of the level below (the checks ``flatten_level`` makes), then the gather."""
    total = len(tokens)
    for l, o in enumerate(levels):
        if o.ndim != 1 or len(o) == 0 or o[0] != 0 or o[-1] != total or (o[1:] < o[:-1]).any():
            raise ValueError(f"levels[{l}]: not CSR offsets over {total} units")
        total = len(o) - 1
    return flatten_level_numpy(tokens, levels, level)


def join_pad_numpy(tokens, offsets, budget, join_id, pad_id):
    """Next-fit grouping is sequential (a loop over units, not tokens); the rows are filled vectorised."""
    lengths = np.diff(offsets).tolist()
    row, col, used = np.empty(len(lengths), np.int64), np.empty(len(lengths), np.int64), -1
    g = -1
    for i, n in enumerate(lengths):
        if used >= 0 and used + 1 + n <= budget:
            col[i], used = used + 1, used + 1 + n
        else:
            g, col[i], used = g + 1, 0, n
        row[i] = g
    ids = np.full((g + 1, budget), pad_id, dtype=np.int64)
    starts = np.repeat(row * budget + col - offsets[:-1], np.diff(offsets)) + np.arange(len(tokens))
    ids.reshape(-1)[starts] = tokens
    joins = (row[1:] == row[:-1]).nonzero()[0] + 1
    ids.reshape(-1)[row[joins] * budget + col[joins] - 1] = join_id
    return ids


def _cpp(fn):
    def run():
        with ck.use_native("cpp"):
            return fn()
    return run


@pytest.mark.parametrize("op", ["pad_units", "flatten_level", "flatten_level_unchecked", "join_pad"])
def test_dataprep_cpp_vs_numpy(compare, nested, op):
    """``flatten_level`` against NumPy doing the same checks; ``flatten_level_unchecked``: the same
    op against the bare NumPy gather, which skips the checks (the harder, less fair baseline)."""
    tokens, levels = nested
    sent_tokens = ck.flatten_level(tokens, levels, 1).unit_token_offsets
    words = levels[0]
    ours, base = {
        "pad_units": (lambda: ck.pad_units(tokens, words, 8, 1), lambda: pad_units_numpy(tokens, words, 8, 1)),
        "flatten_level": (lambda: ck.flatten_level(tokens, levels, 2),
                          lambda: flatten_level_numpy_checked(tokens, levels, 2)),
        "flatten_level_unchecked": (lambda: ck.flatten_level(tokens, levels, 2),
                                    lambda: flatten_level_numpy(tokens, levels, 2)),
        "join_pad": (lambda: ck.join_pad(tokens, words, 64, 3, 1),
                     lambda: join_pad_numpy(tokens, words, 64, 3, 1)),
    }[op]
    a, b = _cpp(ours)(), base()
    if op == "pad_units":
        assert np.array_equal(a, b)
    elif op == "join_pad":
        assert np.array_equal(a.ids, b)
    else:
        assert np.array_equal(a.unit_token_offsets, b[2])
    compare(_cpp(ours), base, units=len(tokens), unit_name="tokens", baseline_reps=5, rounds=5, op=op,
            baseline_kind="numpy_vectorised")


@pytest.mark.parametrize("op", ["join_pad", "build_dvt", "pad_units", "flatten_level"])
def test_dataprep_cpp_vs_python_reference(compare, nested, op):
    """The naive column: the pure-Python twins (the specification), not a fair baseline."""
    tokens, levels = nested
    sent_tokens = ck.flatten_level(tokens, levels, 1).unit_token_offsets
    calls = {
        "join_pad": lambda: ck.join_pad(tokens, sent_tokens, 256, 3, 1, split_long=True),
        "build_dvt": lambda: ck.build_dvt(levels),
        "pad_units": lambda: ck.pad_units(tokens, levels[0], 8, 1),
        "flatten_level": lambda: ck.flatten_level(tokens, levels, 2),
    }
    fn = calls[op]

    def ref():
        with ck.use_native("python"):
            return fn()

    compare(_cpp(fn), ref, units=len(tokens), unit_name="tokens", baseline_reps=1, rounds=3, op=op,
            baseline_kind="python_reference")
