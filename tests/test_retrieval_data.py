"""Readers, leave-one-out split, metrics and the training-free baselines (synthetic data only)."""
import json

import numpy as np
import pytest
import torch

from craft.data.recsys import (RecsysDataError, leave_one_out, load_recsys, read_attributes, read_item_text,
                               read_letter_index, read_sequences, training_windows)
from craft.retrieval.baselines import Popularity, TransitionHeuristic, evaluate_ranker
from craft.retrieval.metrics import metrics_from_ranks, ranks_from_lists, target_ranks


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_split_every_prefix_valid_test(tmp_path):
    path = _write(tmp_path, "d.txt", "1 1 2 3 4 5\n\n2 6 7 8\n3 9 1\n")
    data = load_recsys(path, max_history=2)
    assert data.n_items == 9
    # user 1: train on prefixes of [1 2 3]: (1)->2, (1 2)->3; user 2: [6] no pair; user 3 (2 items) trains only
    assert data.train.history.tolist() == [[0, 1], [1, 2], [0, 9]]
    assert data.train.target.tolist() == [2, 3, 1]
    assert data.valid.history.tolist() == [[2, 3], [0, 6]] and data.valid.target.tolist() == [4, 7]
    assert data.test.history.tolist() == [[3, 4], [6, 7]] and data.test.target.tolist() == [5, 8]
    assert [s.tolist() for s in data.train_sequences] == [[1, 2, 3], [6], [9, 1]]


def test_training_windows_cover_every_target_once():
    seqs = [np.arange(1, 31), np.array([5, 6]), np.array([7]), np.arange(40, 44)]
    w = training_windows(seqs, max_history=4)
    assert w.shape[1] == 5
    targets, histories = [], {}
    for row in w:
        items = row[row > 0]
        assert (row[len(items):] == 0).all() and len(items) >= 2
        for t in range(1, len(items)):
            targets.append(int(items[t]))
            histories[int(items[t])] = items[:t].tolist()
    # every item but each sequence's first is a target exactly once; the histories are its predecessors
    assert sorted(targets) == sorted(list(range(2, 31)) + [6, 41, 42, 43])
    assert histories[30] == [26, 27, 28, 29] and histories[26] == [22, 23, 24, 25] and histories[6] == [5]
    assert training_windows([np.arange(1, 31)], 28).tolist()[1][:3] == [1, 2, 0]  # 30 items, windows of 29
    with pytest.raises(ValueError, match="max_history"):
        training_windows(seqs, 0)


@pytest.mark.parametrize("text, msg", [("1 2 3\n2 x 4\n", ":2: expected 'user item item"),
                                       ("1 2 3\n5\n", ":2: user 5 has no items"),
                                       ("1 0 3\n", ":1: item ids must be >= 1")])
def test_malformed_lines_name_file_and_line(tmp_path, text, msg):
    path = _write(tmp_path, "bad.txt", text)
    with pytest.raises(RecsysDataError, match=msg) as e:
        read_sequences(path)
    assert "bad.txt" in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(RecsysDataError, match="no such interactions file"):
        read_sequences(str(tmp_path / "nope.txt"))
    with pytest.raises(RecsysDataError, match="no interactions"):
        read_sequences(_write(tmp_path, "e.txt", "\n\n"))


def test_letter_index_and_side_files(tmp_path):
    idx = {"0": ["<a_3>", "<b_1>"], "1": ["<a_3>", "<b_2>"], "2": ["<a_0>", "<b_1>"]}
    codes = read_letter_index(_write(tmp_path, "i.json", json.dumps(idx)))
    assert codes.tolist() == [[-1, -1], [3, 1], [3, 2], [0, 1]]
    with pytest.raises(RecsysDataError, match="no ID for 1 items .*item 4"):
        read_letter_index(_write(tmp_path, "i.json", json.dumps(idx)), n_items=4)
    with pytest.raises(RecsysDataError, match="has 1 codes"):
        read_letter_index(_write(tmp_path, "j.json", json.dumps({"0": ["<a_1>", "<b_1>"], "1": ["<a_2>"]})))
    with pytest.raises(RecsysDataError, match=r"j.json:1: not valid JSON"):
        read_letter_index(_write(tmp_path, "j.json", "{oops"))
    attrs = read_attributes(_write(tmp_path, "a.json", json.dumps({"1": [4, 5], "3": [5]})), 3)
    assert attrs == [[], [4, 5], [], [5]]
    text = read_item_text(_write(tmp_path, "t.json", json.dumps({"0": {"title": "Red", "description": "shoes"}})), 2)
    assert text == ["", "Red shoes", ""]


def test_pessimistic_ties_and_metrics():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 3.0, 2.0, 1.0], [0.0, 1.0, float("-inf"), 0.5]])
    ranks = target_ranks(scores, np.array([1, 1, 2]))
    assert ranks.tolist() == [2, 0, 4]  # all-equal scores put the target last; -inf is a miss
    m = metrics_from_ranks(np.array([0, 4, 7, 20]))
    assert m["recall@5"] == 0.5 and m["recall@10"] == 0.75
    assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(6)) / 4)
    assert ranks_from_lists(np.array([[3, 2, -1], [5, 6, 7]]), [2, 1]).tolist() == [1, 3]


def test_transition_heuristic_against_a_loop():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 16, size=rng.integers(3, 12)) for _ in range(40)]
    data = leave_one_out(seqs, max_history=5, n_items=15)
    h = TransitionHeuristic(data)
    got = h.scores(data.test.history).numpy()
    follows = np.zeros((16, 16))
    for s in data.train_sequences:
        for a, b in zip(s[:-1], s[1:]):
            follows[a, b] += 1
    pop = np.bincount(np.concatenate(data.train_sequences), minlength=16)
    for u, hist in enumerate(data.test.history):
        want = 1e-3 * pop / pop.max()
        items = [x for x in hist[::-1] if x > 0][:3]
        for w, x in zip((1, 0.5, 0.25), items):
            want = want + w * (follows[x] + 0.5 * follows[:, x])
        want[hist] = -np.inf
        want[0] = -np.inf
        np.testing.assert_allclose(got[u], want, rtol=1e-5)
    m, r = evaluate_ranker(h, data.test, chunk=7)
    assert len(r) == len(data.test) and 0 <= m["recall@10"] <= 1
    pop_scores = Popularity(data).scores(data.test.history)
    assert torch.isneginf(pop_scores[:, 0]).all()
