"""Linked packing, training with cross_doc_link, and `craft eval-links`."""
import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch

from craft.data import Document, PretokenizedCorpus, pretokenize
from craft.data.linked_packing import LinkedPacking, corpus_links
from craft.models import LanguageModel, ModelConfig
from craft.training import TrainConfig, Trainer
from craft.training.eval_links import evaluate_links
from craft_kernels.doc_masks import doc_dense_mask
from tests._training_helpers import SMALL_MODEL


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DOCS = [
    Document("A", "aaaa [to b](B) aa", links=["B"]),
    Document("B", "bbbbbbbbbbbb"),
    Document("C", "cc [x](A) [y](B) [y again](B) [z](Nowhere) [self](C)", links=["A", "B", "B", "Nowhere", "C"]),
    Document("D", "dddddd"),
    Document("E", "ee [d](D) [b](B) [a](A)", links=["D", "B", "A"]),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    c = PretokenizedCorpus(pretokenize(DOCS, tmp_path_factory.mktemp("lp") / "pre", "byte"))
    yield c
    c.close()


def test_links_from_the_index_and_from_the_link_detector(corpus, tmp_path):
    expected = [[1], [], [0, 1], [], [3, 1, 0]]  # resolved, in order, no duplicates, no self, no missing
    assert corpus_links(corpus) == expected
    copy = tmp_path / "nolinks"
    shutil.copytree(corpus.path, copy)
    db = sqlite3.connect(copy / "index.sqlite")
    db.execute("DELETE FROM links")
    db.commit()
    db.close()
    with PretokenizedCorpus(copy) as c:
        assert corpus_links(c) == expected  # found again by scanning the tokens


def _spans(ids):
    return {int(d): np.flatnonzero(ids == d) for d in np.unique(ids)}


def test_linked_sequence_order_ids_edges_and_budget(corpus):
    L = 48
    lp = LinkedPacking(corpus, L - 1, max_linked=2, budget_share=0.5, plain_share=0.0, seed=3)
    for i in range(len(lp)):
        anchor, targets, plain = lp.plan(i)
        tokens, ids, edges = lp.sequence(i)
        assert len(tokens) == len(ids) == L
        assert np.all(np.diff(ids) >= 0) and ids[0] == 0 and np.all(np.diff(ids) <= 1)  # 0, 1, 2, ... in order
        if not corpus_links(corpus)[anchor]:
            assert plain and edges == []
            continue
        assert not plain and 1 <= len(targets) <= 2 and set(targets) <= set(corpus_links(corpus)[anchor])
        k = len(targets)
        assert edges == [(k, j) for j in range(k)]  # the anchor, placed after its targets, sees each of them
        sp = _spans(ids)
        assert sum(len(sp[j]) for j in range(k)) <= int(L * 0.5)  # budget
        for j, t in enumerate(targets):  # each target: its own prefix (+ EOS when whole)
            body = np.append(np.asarray(corpus.document(t), dtype=np.int64), corpus.eos_id)
            assert np.array_equal(tokens[sp[j]], body[:len(sp[j])])
        a_body = np.append(np.asarray(corpus.document(anchor), dtype=np.int64), corpus.eos_id)
        assert np.array_equal(tokens[sp[k]], a_body[:len(sp[k])])  # then the anchor


def test_plain_share_and_argument_errors(corpus):
    anchors = [4] * 400  # E links to three documents: only the draw decides plain or linked
    for share, lo, hi in ((0.0, 0, 0), (1.0, 400, 400), (0.3, 80, 160)):
        lp = LinkedPacking(corpus, 31, anchors=anchors, plain_share=share, seed=1)
        n_plain = sum(lp.plan(i)[2] for i in range(len(lp)))
        assert lo <= n_plain <= hi, (share, n_plain)
    lp = LinkedPacking(corpus, 31, anchors=anchors, plain_share=0.0, max_linked=1)
    assert {len(lp.plan(i)[1]) for i in range(20)} == {1}
    for kw, name in ((dict(max_linked=0), "max_linked"), (dict(budget_share=0), "budget_share"),
                     (dict(plain_share=1.5), "plain_share"), (dict(anchors=[]), "anchors")):
        with pytest.raises(ValueError, match=name):
            LinkedPacking(corpus, 31, **kw)


def test_batch_mask_is_causal_and_lets_the_anchor_see_its_links(corpus):
    lp = LinkedPacking(corpus, 40, plain_share=0.0, seed=0)
    b = lp.batch(range(len(lp)))
    assert b["links"].shape == (len(lp), int(b["doc_ids"].max()) + 1, int(b["doc_ids"].max()) + 1)
    mask = doc_dense_mask(b["doc_ids"], "cross_doc_link", b["links"])[:, 0]
    T = b["doc_ids"].shape[1]
    assert not (mask & ~torch.ones(T, T, dtype=torch.bool).tril()).any()  # targets first: nothing sees ahead
    for r in range(len(lp)):
        anchor, targets, _ = lp.plan(r)
        ids = b["doc_ids"][r]
        k = len(targets)
        same = (ids[:, None] == ids[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
        sees_links = (ids[:, None] == k) & (ids[None, :] < k) if k else torch.zeros(T, T, dtype=torch.bool)
        assert torch.equal(mask[r], same | sees_links)
        assert torch.equal(b["tokens"][r, 1:], b["targets"][r, :-1])


def _model(seed=0):
    torch.manual_seed(seed)
    return LanguageModel(ModelConfig.preset("tiny", vocab_size=260, **SMALL_MODEL))


def test_gradient_flows_across_a_link_and_only_across_it():
    model = _model()
    tokens = torch.randint(0, 256, (1, 24))
    doc_ids = torch.tensor([[0] * 8 + [1] * 8 + [2] * 8])
    links = torch.zeros(1, 3, 3, dtype=torch.bool)
    links[0, 2, 0] = True  # document 2 links to document 0, not to 1
    targets = torch.full_like(tokens, -100)
    targets[0, 16:] = tokens[0, 16:].roll(-1)  # loss on document 2's tokens only

    def grad_at(**kw):
        emb = model.tok_embeddings(tokens).detach().requires_grad_()
        cos, sin = model.rope_cos[:24], model.rope_sin[:24]
        logits = model._logits(emb, cos, sin, doc_ids, **kw)
        torch.nn.functional.cross_entropy(logits[0], targets[0], ignore_index=-100).backward()
        return emb.grad[0].abs().sum(-1)

    g = grad_at(links=links)
    assert (g[:8] > 0).all() and (g[8:16] == 0).all() and (g[16:] > 0).all()
    g0 = grad_at()  # doc_causal: nothing crosses documents
    assert (g0[:16] == 0).all()
    # no links at all is exactly doc_causal
    none = torch.zeros(1, 3, 3, dtype=torch.bool)
    assert torch.allclose(model(tokens, doc_ids, links=none), model(tokens, doc_ids), atol=1e-5)
    with pytest.raises(ValueError, match="links"):
        model(tokens, None, links=links)


@pytest.fixture
def md_corpus(small_byte_corpus):
    return small_byte_corpus


def _config(**kw):
    base = dict(model_overrides=SMALL_MODEL, tokens_per_step=256, micro_batch_tokens=128, warmup_steps=2,
                max_steps=10, log_every=1, eval_every=0, sample_every=0, checkpoint_every=0, precision="fp32",
                tensorboard=False, progress=False, linked=True, linked_plain_share=0.0, eval_fraction=0.2)
    base.update(kw)
    return TrainConfig(**base)


def test_linked_training_runs_learns_and_feeds_the_links_to_the_model(md_corpus, tmp_path, monkeypatch):
    seen = []
    original = LanguageModel.forward

    def spy(self, tokens, doc_ids=None, targets=None, links=None):
        seen.append(links)
        return original(self, tokens, doc_ids, targets, links)

    monkeypatch.setattr(LanguageModel, "forward", spy)
    t = Trainer(_config(), md_corpus, tmp_path / "run")
    summary = t.train()
    losses = [h["loss"] for h in t.history if h["event"] == "train"]
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.3
    train_links = [x for x in seen if x is not None]
    assert train_links and any(bool(x.any()) for x in train_links)  # edges reached the model
    assert summary["eval_loss"] is not None
    with pytest.raises(ValueError, match="linked_budget_share"):
        TrainConfig(linked_budget_share=0)


def test_eval_links_reports_the_three_contexts(md_corpus, tmp_path):
    with PretokenizedCorpus(md_corpus) as c:
        model = _model().eval()
        res = evaluate_links(model, c, seq_len=160, eval_fraction=0.5, max_docs=4, max_linked=1)
    for k in ("alone", "linked", "random", "title_alone", "title_linked", "title_random"):
        assert res[k] is not None and np.isfinite(res[k]) and res[k] > 0
    assert res["n_docs"] >= 1 and res["n_title_tokens"] > 0
    assert res["linked"] != res["alone"]  # the linked document changed the predictions


def test_train_linked_and_eval_links_cli(md_corpus, tmp_path, capsys):
    from craft.cli import main

    run = tmp_path / "run"
    sets = [a for k, v in SMALL_MODEL.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "--corpus", str(md_corpus), "--out", str(run), "--linked", "--max-steps", "2",
                 "--tokens-per-step", "128", "--precision", "fp32", "--no-progress", "--eval-every", "0",
                 "--sample-every", "0", "--set", "eval_fraction=0.5", "--set", "tensorboard=False", *sets]) == 0
    capsys.readouterr()
    assert main(["eval-links", str(run), "--json", "--max-docs", "2", "--seq-len", "160"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["trained_linked"] is True and res["n_docs"] >= 1
    assert {"alone", "linked", "random", "title_alone", "title_linked", "title_random"} <= set(res)
    assert main(["eval-links", str(run), "--max-docs", "2"]) == 0
    assert "linked" in capsys.readouterr().out
    assert main(["eval-links", str(run), "--json", "--max-docs", "1", "--generate", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompts"] == 2 and 0 <= res["links_in_corpus"] <= res["links_written"]
    assert res["link_target_share"] == (res["links_in_corpus"] / res["links_written"] if res["links_written"] else None)
    assert main(["eval-links", str(run), "--generate", "-1"]) == 1
    assert "--generate" in capsys.readouterr().err
    assert main(["eval-links", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("craft: error: checkpoint:") and len(err.splitlines()) == 1


def test_held_out_documents_are_never_placed_in_linked_training(md_corpus, tmp_path):
    t = Trainer(_config(max_steps=1), md_corpus, tmp_path / "run")
    data = t.train_data
    n = data.n_documents
    assert 1 <= n < t.corpus.n_documents  # eval_fraction=0.3 holds some documents out
    first_eval = int(t.eval_indices[0]) * t.seq_len
    assert t.packed.starts[n] <= first_eval  # every placed document lies before the held-out windows
    for i in range(len(data)):
        anchor, targets, _ = data.plan(i)
        assert anchor < n and all(x < n for x in targets)
    t._lock.release()
