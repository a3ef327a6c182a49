"""C++ vs pure-Python reference for the data-prep ops at >= 1M tokens (goal >= 30x)."""
import numpy as np
import pytest

import craft_kernels as ck
from craft_kernels.native import _dispatch

N_TOKENS = 1_000_000


@pytest.fixture(scope="module")
def nested():
    rng = np.random.default_rng(0)
    word_len = rng.integers(1, 9, size=N_TOKENS // 4)
    word_len = word_len[np.cumsum(word_len) <= N_TOKENS]
    tokens = rng.integers(4, 200, size=int(word_len.sum()), dtype=np.int32)
    words = np.concatenate([[0], np.cumsum(word_len)])
    sent_len = rng.integers(1, 15, size=len(word_len))
    sent_len = sent_len[np.cumsum(sent_len) <= len(word_len)]
    sent_len[-1] += len(word_len) - sent_len.sum()
    sents = np.concatenate([[0], np.cumsum(sent_len)])
    para_len = rng.integers(1, 6, size=len(sent_len))
    para_len = para_len[np.cumsum(para_len) <= len(sent_len)]
    para_len[-1] += len(sent_len) - para_len.sum()
    paras = np.concatenate([[0], np.cumsum(para_len)])
    return tokens, [words, sents, paras]


def _impl(which, fn):
    def run():
        with _dispatch.use(which):
            return fn()
    return run


@pytest.mark.parametrize("op", ["join_pad", "build_dvt", "pad_units", "flatten_level"])
def test_dataprep_cpp_vs_reference(compare, nested, op):
    tokens, levels = nested
    sent_tokens = ck.flatten_level(tokens, levels, 1).unit_token_offsets
    calls = {
        "join_pad": lambda: ck.join_pad(tokens, sent_tokens, 256, 3, 1, split_long=True),
        "build_dvt": lambda: ck.build_dvt(levels),
        "pad_units": lambda: ck.pad_units(tokens, levels[0], 8, 1),
        "flatten_level": lambda: ck.flatten_level(tokens, levels, 2),
    }
    fn = calls[op]
    ratio = compare(_impl("cpp", fn), _impl("python", fn), units=len(tokens), unit_name="tokens",
                    baseline_reps=1, rounds=5, op=op)
    assert ratio > 1
