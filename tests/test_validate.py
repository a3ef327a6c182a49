"""craft_kernels' one integer check (craft_kernels._validate.check_int), as every op sees it: a bool
or a float is a TypeError naming the argument, NumPy integers are ints, ranges name their bounds."""
import numpy as np
import pytest
import torch

import craft_kernels as ck
from craft_kernels._validate import check_int


def test_check_int_rules():
    assert check_int(np.int32(5), "x", 0, 9) == 5 and type(check_int(np.int64(5), "x")) is int
    with pytest.raises(TypeError, match="x: expected an int, got bool"):
        check_int(True, "x")
    with pytest.raises(TypeError, match="x: expected an int, got float"):
        check_int(2.0, "x")
    with pytest.raises(ValueError, match="x: 9223372036854775808 does not fit in int64"):
        check_int(2**63, "x")
    with pytest.raises(ValueError, match=r"x: must be an int in \[1, 3\] \(why\), got 4"):
        check_int(4, "x", 1, 3, hint=" (why)")
    with pytest.raises(ValueError, match="x: must be >= 1, got 0"):
        check_int(0, "x", 1)


@pytest.mark.parametrize("call, name, ok", [
    (lambda v: ck.doc_block_mask(torch.zeros(1, 8, dtype=torch.long), block_size=v), "block_size", 4),
    (lambda v: _state().append(v), "n", 1),
    (lambda v: _state(2).query_mask(v), "n_query", 1),
    (lambda v: ck.pad_units([1], [0, 1], v, 0), "width", 1),
    (lambda v: ck.flatten_level([1, 2], [[0, 2]], v), "level", 0),
    (lambda v: ck.Trie([[1]]).apply_to_logits(torch.zeros(1, 3), [-1], on_empty="eos", eos_id=v), "eos_id", 1),
])
def test_every_op_checks_ints_the_same_way(call, name, ok):
    with pytest.raises(TypeError, match=f"{name}: expected an int, got bool"):
        call(True)
    call(np.int64(ok))  # NumPy integers are ints everywhere


def _state(n=0):
    s = ck.DocMaskState(16, 1, block_size=4)
    s.start_document(0)
    if n:
        s.append(n)
    return s


def test_check_float_rules():
    from craft_kernels import check_float
    assert check_float(np.float32(0.5), "x", 0, 1) == 0.5 and type(check_float(3, "x")) is float
    with pytest.raises(TypeError, match="x: expected a number, got bool"):
        check_float(True, "x")
    with pytest.raises(TypeError, match="x: expected a number, got str"):
        check_float("0.1", "x")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="x: expected a finite number"):
            check_float(bad, "x")
    with pytest.raises(ValueError, match=r"x: must be a number in \(0, 1\], got 0.0"):
        check_float(0.0, "x", 0, 1, min_open=True)
    with pytest.raises(ValueError, match=r"x: must be a number > 0 \(why\), got -1.0"):
        check_float(-1, "x", 0, min_open=True, hint=" (why)")
    with pytest.raises(ValueError, match=r"x: must be a number in \[0, 1\), got 1.0"):
        check_float(1.0, "x", 0, 1, max_open=True)


@pytest.mark.parametrize("make, name", [
    (lambda v: __import__("craft.training", fromlist=["TrainConfig"]).TrainConfig(lr=v), "lr"),
    (lambda v: __import__("craft.training", fromlist=["TrainConfig"]).TrainConfig(max_minutes=v), "max_minutes"),
    (lambda v: __import__("craft.training", fromlist=["TrainConfig"]).TrainConfig(betas=(0.9, v)), r"betas\[1\]"),
    (lambda v: __import__("craft.models", fromlist=["ModelConfig"]).ModelConfig(norm_eps=v), "norm_eps"),
    (lambda v: __import__("craft.generation.sampling", fromlist=["x"]).check_sampling_args(1.0, None, v), "top_p"),
])
def test_configs_check_numbers_with_the_shared_check(make, name):
    """Every config's number fields go through the one check: the same TypeError for a bool and the
    same ValueError for NaN, naming the field (each config used to have its own rules and messages)."""
    with pytest.raises(ValueError, match=f"{name}: expected a finite number"):
        make(float("nan"))
    with pytest.raises(TypeError, match=f"{name}: expected a number, got bool"):
        make(True)
