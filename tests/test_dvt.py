import numpy as np
import torch

from craft.data.dvt import DvtBatch, realize


def _batch():
    # tree 0: sentence of words "ab" "c"; tree 1: sentence of words "de" "f" "" (empty word)
    tokens = np.array([10, 11, 12, 13, 14, 15])
    words = [0, 2, 3, 5, 6, 6]
    sentences = [0, 2, 5]
    return DvtBatch(tokens, [words, sentences])


def test_trees_roots_levels():
    b = _batch()
    assert len(b.trees) == 2
    t0, t1 = b.trees
    assert t0.root.pre_order_id == 0 and t0.root.level == 2 and t0.root.parent is None
    assert [n.pre_order_id for n in t0.root.children] == [1, 4]
    assert [c.token for c in t0.root.children[0].children] == [10, 11]
    assert {lvl: [n.pre_order_id for n in ns] for lvl, ns in t0.level_nodes.items()} == {0: [2, 3, 5], 1: [1, 4], 2: [0]}
    assert len(t0) == 6 and t1.root.pre_order_id == 6 and len(t1) == 7
    assert t1.level_nodes[1][2].children == [] and t1.level_nodes[1][2].tree is t1
    ids = [n.pre_order_id for ns in t1.level_nodes.values() for n in ns]
    assert sorted(ids) == list(range(6, 13))


def test_realize_embeds_all_leaves_in_one_call():
    b = _batch()
    emb = torch.nn.Embedding(20, 4)
    calls = []
    emb.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    vec = realize(b, emb)
    assert calls == [torch.Size([6])]
    assert vec.shape == (6, 4)
    leaf = b.trees[1].level_nodes[0][0]
    assert leaf.realized and torch.equal(leaf.vector, emb.weight[13])
    assert not b.trees[0].root.realized and b.trees[0].root.vector is None
    vec.sum().backward()
    assert emb.weight.grad[10:16].abs().sum() > 0


def test_realize_with_weight_tensor_checks_range():
    b = _batch()
    import pytest
    with pytest.raises(ValueError, match="embedding"):
        realize(b, torch.zeros(12, 3))
