"""Semantic IDs, the Tiger model, constrained beam search vs exact scoring, training/resume, CLI (synthetic data)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from craft.data.recsys import Examples, leave_one_out, training_windows
from craft.retrieval.decode import beam_search, build_trie, certified_top, exact_scores, history_codes, hybrid_rank
from craft.retrieval.evaluate import by_history_length, decode_split, evaluate, invalid_rate
from craft.retrieval.model import Tiger, TigerConfig
from craft.retrieval.semantic_ids import (add_collision_code, attribute_embeddings, cf_embeddings, kmeans,
                                          quality_report, residual_kmeans, rqvae)
from craft.retrieval.train import train


def _sequences(n_users=120, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        s = [int(rng.integers(1, n_items + 1))]
        for _ in range(int(rng.integers(4, 12)) - 1):
            s.append(s[-1] % n_items + 1 if rng.random() < 0.8 else int(rng.integers(1, n_items + 1)))
        seqs.append(np.array(s))
    return seqs


def _small(codes, **kw):
    sizes = [int(codes[1:, l].max()) + 1 for l in range(codes.shape[1])]
    cfg = dict(max_history=6, dim=32, n_heads=2, hidden_dim=64, n_encoder_layers=1, n_decoder_layers=2, dropout=0.0)
    cfg.update(kw)
    return TigerConfig(sizes, **cfg)


def _random_codes(n, levels, k, seed=0):
    rng = np.random.default_rng(seed)
    c = np.full((n + 1, levels), -1)
    c[1:] = rng.integers(0, k, size=(n, levels))
    return add_collision_code(c)


def test_collision_code_makes_ids_unique_and_report():
    codes = np.array([[-1, -1], [1, 2], [1, 2], [0, 5], [1, 2]])
    rep = quality_report(codes)
    assert rep["unique_share"] == pytest.approx(0.25) and rep["largest_collision"] == 3
    assert rep["codes_used"] == [2, 2]
    full = add_collision_code(codes)
    assert full[1:, -1].tolist() == [0, 1, 0, 2]
    assert quality_report(full)["unique_share"] == 1.0


def test_kmeans_reinitialises_dead_codes():
    # 3 well separated blobs, k = 6: every centroid ends up used (no dead code), inertia below plain Lloyd
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 2, generator=g) * 0.1 + c for c in (torch.tensor([0., 0.]), torch.tensor([5., 0.]),
                                                                          torch.tensor([0., 5.]))])
    c, idx = kmeans(x, 6, iters=10)
    assert len(torch.unique(idx)) == 6
    x2 = torch.zeros(20, 2)
    x2[:10] += 1.0  # only 2 distinct points, k = 4: some centroids must stay duplicate, assignment stays valid
    c2, idx2 = kmeans(x2, 4, iters=5)
    assert idx2.max() < 4 and torch.isfinite(c2).all()


def test_residual_kmeans_and_rqvae_codes():
    data = leave_one_out(_sequences(), max_history=6)
    emb = cf_embeddings(data, dim=8)
    assert emb.shape == (41, 8) and np.allclose(np.linalg.norm(emb[1:], axis=1), 1, atol=1e-4)
    # items = coarse centre + small offset, 4 x 4 combinations: two residual levels recover each exactly
    rng = np.random.default_rng(0)
    big, small = rng.standard_normal((4, 8)) * 10, rng.standard_normal((4, 8))
    pts = np.array([big[i] + small[j] for i in range(4) for j in range(4)])
    emb = np.vstack([np.zeros((1, 8)), pts + rng.standard_normal(pts.shape) * 1e-3]).astype(np.float32)
    codes = residual_kmeans(emb, levels=2, codebook_size=4, iters=10)
    assert codes.shape == (17, 2) and (codes[0] == -1).all() and codes[1:].min() >= 0 and codes[1:].max() < 4
    assert quality_report(codes)["codes_used"] == [4, 4] and quality_report(codes)["unique_share"] == 1.0
    emb = cf_embeddings(data, dim=8)
    assert quality_report(residual_kmeans(emb, levels=2, codebook_size=8, iters=5))["codes_used"] == [8, 8]
    rq = rqvae(emb, levels=2, codebook_size=8, latent_dim=4, hidden_dim=16, steps=120)
    assert rq.shape == (41, 2) and rq[1:].max() < 8 and quality_report(rq)["codes_used"][0] >= 4
    a = attribute_embeddings([[], [0, 1], [1], [2, 3], [0]], dim=3)
    assert a.shape == (5, 3)


def test_beam_search_equals_exact_ranking_when_beam_covers_the_catalog():
    codes = _random_codes(30, 3, 3)
    model = Tiger(_small(codes)).eval()
    ct = torch.from_numpy(codes)
    hist = np.zeros((5, 6), dtype=np.int64)
    hist[:, 3:] = np.random.default_rng(1).integers(1, 31, size=(5, 3))
    hist[0, :5] = 0
    items, lp = beam_search(model, build_trie(codes), ct, hist, beams=30, exclude_history=False)
    ex = exact_scores(model, ct, hist, 30, chunk_rows=64, exclude_history=False)  # small tensors keep SwiGLU eager
    for u in range(5):
        assert sorted(items[u].tolist()) == list(range(1, 31))  # every real item, each once
        np.testing.assert_allclose(lp[u], ex[u][items[u]], atol=1e-4)
        assert (np.diff(lp[u]) <= 1e-6).all()
    # narrower beam: only real, distinct items, scores match the exact ones
    items, lp = beam_search(model, build_trie(codes), ct, hist, beams=10, exclude_history=False)
    assert invalid_rate(items, 30) == 0.0
    np.testing.assert_allclose(lp, np.take_along_axis(ex, items, 1), atol=1e-4)
    # history excluded (the default): every other item, each once, in the exact order
    items, lp = beam_search(model, build_trie(codes), ct, hist, beams=30)
    exh = exact_scores(model, ct, hist, 30, chunk_rows=64)
    for u in range(5):
        seen = set(hist[u][hist[u] > 0].tolist())
        assert sorted(i for i in items[u].tolist() if i > 0) == [i for i in range(1, 31) if i not in seen]
        k = 30 - len(seen)
        assert (items[u, k:] == -1).all() and np.isneginf(exh[u, sorted(seen)]).all()
        np.testing.assert_allclose(lp[u, :k], exh[u][items[u, :k]], atol=1e-4)


def test_beam_spends_no_beam_on_history_branches():
    # 2-code IDs, unique for all 30 items (the collision code is always 0): a beam exactly as wide as
    # the eligible items must return every one of them, so no beam may enter a branch that holds
    # only history items (masking only the last code would lose the beams that entered one)
    c = np.full((31, 2), -1)
    c[1:] = np.array([(i // 6, i % 6) for i in range(30)])
    codes = add_collision_code(c)
    model = Tiger(_small(codes)).eval()
    ct = torch.from_numpy(codes)
    rng = np.random.default_rng(4)
    for _ in range(4):
        hist = np.zeros((1, 6), dtype=np.int64)
        hist[0, 1:] = rng.choice(np.arange(1, 31), 5, replace=False)
        items, _ = beam_search(model, build_trie(codes), ct, hist, beams=25)
        assert sorted(items[0].tolist()) == sorted(set(range(1, 31)) - set(hist[0].tolist()))


def test_beam_pads_when_catalog_is_smaller_than_beam():
    codes = _random_codes(6, 2, 2, seed=3)
    model = Tiger(_small(codes)).eval()
    items, lp = beam_search(model, build_trie(codes), torch.from_numpy(codes), np.array([[0, 0, 0, 0, 1, 2]]), beams=10)
    assert sorted(items[0, :4].tolist()) == [3, 4, 5, 6] and (items[0, 4:] == -1).all()  # history 1, 2 excluded
    assert np.isneginf(lp[0, 4:]).all()


def test_decode_split_batches_by_length_and_returns_users_in_order():
    # batches are formed by history length; every user's beams must come back in its own row,
    # equal to decoding all users in one batch in their own order
    codes = _random_codes(40, 3, 4, seed=5)
    model = Tiger(_small(codes)).eval()
    ct, trie = torch.from_numpy(codes), build_trie(codes)
    rng = np.random.default_rng(6)
    hist = np.zeros((9, 6), dtype=np.int64)
    for u, n in enumerate([5, 1, 3, 6, 2, 4, 1, 6, 3]):
        hist[u, 6 - n:] = rng.choice(np.arange(1, 41), n, replace=False)
    assert by_history_length(hist).tolist() == [1, 6, 4, 2, 8, 5, 0, 3, 7]
    ex = Examples(hist, np.ones(9, dtype=np.int64), np.arange(9))
    items, lp, _, _ = decode_split(model, trie, ct, ex, beams=12, batch_users=4)
    ref_items, ref_lp = beam_search(model, trie, ct, hist, beams=12)
    assert items.tolist() == ref_items.tolist()
    np.testing.assert_allclose(lp, ref_lp, atol=1e-5)
    assert invalid_rate(items[:, :10], 40, hist) == 0.0


def _peaked_model_and_users(n_items, codes_per_level, codes_seed, scale, users, users_seed):
    """(codes, model, codes tensor, trie, histories (users, 6)): a small Tiger whose output heads are
    scaled by ``scale`` (peaked levels, as a trained model's) and random histories of 1-6 items."""
    codes = _random_codes(n_items, 3, codes_per_level, seed=codes_seed)
    model = Tiger(_small(codes)).eval()
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(scale)
    rng = np.random.default_rng(users_seed)
    hist = np.zeros((users, 6), dtype=np.int64)
    for u in range(users):
        n = int(rng.integers(1, 7))
        hist[u, 6 - n:] = rng.choice(np.arange(1, n_items + 1), n, replace=False)
    return codes, model, torch.from_numpy(codes), build_trie(codes), hist


def test_beam_bound_and_certified_top_equal_full_scoring():
    # peaked levels, as a trained model's, so that narrow beams can be certified
    codes, model, ct, trie, hist = _peaked_model_and_users(60, 4, 7, 300, 12, 8)
    ex = exact_scores(model, ct, hist, 60, chunk_rows=64)
    # the bound: no item left out of a narrow beam scores above it
    items, lp, bound = beam_search(model, trie, ct, hist, beams=6, return_bound=True)
    for u in range(12):
        out = np.setdiff1d(np.flatnonzero(np.isfinite(ex[u])), items[u])
        assert ex[u, out].max() <= bound[u] + 1e-5
    # users certified by the first width, the second, or scored in full: the exact top 5 either way
    ref = torch.from_numpy(ex).topk(5, dim=1)
    for widths, paths in (((10, 30), {0, 1}), ((6, 12), {1, 2})):
        top, tlp, how = certified_top(model, trie, ct, hist, k=5, widths=widths)
        assert set(how.tolist()) == paths
        assert top.tolist() == ref.indices.tolist()
        np.testing.assert_allclose(tlp, ref.values.numpy(), rtol=1e-6, atol=1e-5)


def test_wider_early_levels_find_the_exact_top_items_a_uniform_beam_misses():
    # the first codes decide the most: a uniform beam of 3 loses items whose first code is not among
    # the 3 best first codes; keeping every prefix at the early levels and 3 at the last returns the
    # exact top 3 of full-catalog scoring for every user
    codes, model, ct, trie, hist = _peaked_model_and_users(120, 5, 11, 20, 16, 12)
    ref = torch.from_numpy(exact_scores(model, ct, hist, 120, chunk_rows=64)).topk(3, dim=1)
    uniform, _ = beam_search(model, trie, ct, hist, beams=3)
    assert (uniform != ref.indices.numpy()).any(1).sum() >= 2
    n_prefixes = [len(np.unique(codes[1:, :l + 1], axis=0)) for l in range(3)]  # trie nodes at depths 1..3
    items, lp, bound = beam_search(model, trie, ct, hist, beams=(*n_prefixes, 3), return_bound=True)
    assert items.tolist() == ref.indices.tolist()
    np.testing.assert_allclose(lp, ref.values.numpy(), rtol=1e-6, atol=1e-5)
    assert (bound <= lp[:, 2] + 1e-5).all()
    # a width per level keeps the guarantees: real, distinct items outside the history, exact scores
    ex = exact_scores(model, ct, hist, 120, chunk_rows=64)
    items, lp = beam_search(model, trie, ct, hist, beams=(8, 4, 4, 4))
    assert items.shape == (16, 4) and invalid_rate(items, 120, hist) == 0.0
    np.testing.assert_allclose(lp, np.take_along_axis(ex, items, 1), atol=1e-4)
    with pytest.raises(ValueError, match="one width per code level"):
        beam_search(model, trie, ct, hist, beams=(8, 4))


def test_decode_step_matches_teacher_forcing():
    codes = _random_codes(25, 3, 4)
    model = Tiger(_small(codes)).eval()
    ct = torch.from_numpy(codes)
    hist = history_codes(ct, np.array([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]]))
    tgt = ct[torch.tensor([7, 8])]
    with torch.no_grad():
        mem, mask = model.encode(hist)
        full = model.decode_full(mem, mask, model.decoder_inputs(tgt[:, :-1]))
        cache = [None] * len(model.decoder)
        tok = torch.zeros(2, dtype=torch.long)
        for lvl in range(4):
            step = model.decode_step(mem, mask, cache, tok, lvl, 1)
            torch.testing.assert_close(step, full[lvl].float(), atol=1e-5, rtol=1e-5)
            tok = tgt[:, lvl] + model.offsets[lvl]


def test_window_loss_equals_one_forward_per_prefix():
    # the one-pass training loss over a window == the mean of the per-example loss over every target
    codes = _random_codes(30, 3, 4, seed=2)
    model = Tiger(_small(codes, n_encoder_layers=2)).eval()
    with torch.no_grad():
        model.recency.normal_()  # a non-zero recency bias, so a wrong item distance shows
    ct = torch.from_numpy(codes)
    seqs = [np.array([3, 5, 7, 9]), np.arange(1, 17), np.array([4, 8])]
    win = torch.from_numpy(training_windows(seqs, 6))
    ref = [model(ct[torch.from_numpy(row[:t])][None], ct[row[t]][None])
           for row in win.numpy() for t in range(1, int((row > 0).sum()))]
    torch.testing.assert_close(model.window_loss(ct[win]), torch.stack(ref).mean(), atol=1e-5, rtol=1e-5)
    # and the encoder never looks ahead: changing a later item leaves earlier targets' losses alone
    hist = ct[torch.tensor([[3, 5, 7]])]
    changed = ct[torch.tensor([[3, 5, 8]])]
    m1, _ = model.encode(hist)
    m2, _ = model.encode(changed)
    torch.testing.assert_close(m1[0][0][..., :6, :], m2[0][0][..., :6, :])


def test_history_codes_packs_items_first():
    codes = _random_codes(9, 2, 3)
    ct = torch.from_numpy(codes)
    h = history_codes(ct, np.array([[0, 0, 4, 5], [0, 6, 7, 8], [0, 0, 0, 9]]))
    assert h.shape == (3, 3, 3)
    assert h[0].tolist() == [codes[4].tolist(), codes[5].tolist(), [-1, -1, -1]]
    assert h[1].tolist() == [codes[6].tolist(), codes[7].tolist(), codes[8].tolist()]
    assert h[2, 1:].tolist() == [[-1] * 3] * 2


def test_hybrid_rank_dedups_and_excludes_history():
    cand = np.array([[3, 5, 7, 5, -1]])
    lp = np.array([[-1.0, -2.0, -3.0, -2.0, -np.inf]])
    heur = np.array([[0.0, 10.0, -np.inf, 10.0, 0.0]])
    assert hybrid_rank(cand, lp, heur, 0.0, k=4).tolist() == [[3, 5, -1, -1]]
    assert hybrid_rank(cand, lp, heur, 1.0, k=2).tolist() == [[5, 3]]


def test_train_resume_and_evaluate(tmp_path):
    seqs = _sequences(n_users=60, n_items=30)
    data = leave_one_out(seqs, max_history=6)
    codes = _random_codes(30, 2, 4)
    cfg = _small(codes)
    r1 = train(data, codes, tmp_path / "a", cfg, epochs=2, batch_size=16, progress=False, log=lambda m: None)
    # interrupted after 1 epoch then resumed == uninterrupted 2 epochs
    train(data, codes, tmp_path / "b", cfg, epochs=1, batch_size=16, progress=False, log=lambda m: None)
    r2 = train(data, codes, tmp_path / "b", cfg, epochs=2, batch_size=16, progress=False, resume=True,
               log=lambda m: None)
    assert r1["steps"] == r2["steps"] > 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    model = Tiger(cfg)
    model.load_state_dict(a)
    model.eval()
    res = evaluate(model, codes, data, "test", beams=12, batch_users=8)
    assert res["invalid_id_rate"] == 0.0 and res["users"] == len(data.test)
    assert set(res["baselines"]) == {"popularity", "transition"} and "alpha" in res["hybrid"]
    # a beam as wide as the catalog is exact: the oracle's full ranking gives the same metrics
    res = evaluate(model, codes, data, "valid", beams=30, batch_users=4, hybrid=False, exact_users=12)
    assert res["exact"]["users"] == 12 and res["exact"]["beam"] == pytest.approx(res["exact"]["exact"])
    assert res["exact"]["top10_identical"] == 1.0 and res["exact"]["top10_overlap"] == 1.0
    assert "uniform_beam" not in res["exact"]
    # the default search (20 returned, 40 before) also reports a uniform beam of 20 beside it
    res = evaluate(model, codes, data, "valid", batch_users=4, hybrid=False, exact_users=12)
    assert res["beam_widths"] == [40, 20, 20] and set(res["exact"]["uniform_beam"]) == set(res["exact"]["exact"])


def _craft(*args):
    return subprocess.run([sys.executable, "-m", "craft", "retrieval", *args], capture_output=True, text=True)


def test_cli_train_eval_json_and_errors(tmp_path, capsys):
    from craft.cli import main
    data = tmp_path / "d.txt"
    data.write_text("\n".join(f"{u} " + " ".join(map(str, s)) for u, s in enumerate(_sequences(50, 24), 1)) + "\n")
    out = tmp_path / "run"
    rc = main(["retrieval", "train", "--data", str(data), "--out", str(out), "--levels", "2", "--codebook-size", "4",
               "--dim", "16", "--layers", "1", "--heads", "2", "--hidden-dim", "32", "--epochs", "1", "--batch-size", "8",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "unique" in err and "tokens/s" in err
    rc = main(["retrieval", "eval", str(out), "--json", "--beam", "10", "--split", "valid", "--batch-users", "8",
               "--no-hybrid"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = json.loads(cap.out)
    for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"):
        assert 0 <= res["model"][k] <= 1 and k in res["baselines"]["transition"]
    assert res["invalid_id_rate"] == 0.0 and res["users"] == 50 and res["seconds"] > 0
    assert res["beams"] == 10 and res["beam_widths"] == [20, 10, 10]  # the default: widened but the last two
    rc = main(["retrieval", "eval", str(out), "--json", "--beam-widths", "uniform", "--beam", "12", "--split", "valid",
               "--batch-users", "8", "--no-hybrid", "--max-users", "10"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["beam_widths"] == [12, 12, 12]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n2 4 five\n")
    for args, msg in [(("train", "--data", str(data), "--out", str(out), "--sids", "wat"), "--sids 'wat'"),
                      (("train", "--data", str(data), "--out", str(out), "--sids", "letter:" + str(tmp_path / "no.json")),
                       "no.json: no such file"),
                      (("eval", str(tmp_path)), "not a retrieval run folder"),
                      (("eval", str(out), "--beam", "5"), "--beam: at least 10"),
                      (("eval", str(out), "--beam-widths", "30,20"), "--beam-widths '30,20': expected"),
                      (("eval", str(out), "--beam-widths", "30,x,20"), "3 positive comma-separated"),
                      (("eval", str(out), "--beam-widths", "30,20,5"), "--beam: at least 10 at the last level")]:
        assert main(["retrieval", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("craft: error:") and msg in err and len(err.strip().splitlines()) == 1, (args, err)
    old = tmp_path / "old"  # a run folder from before the recency bias: a clear line, not a state-dict dump
    old.mkdir()
    for f in ("run.json", "codes.npy"):
        (old / f).write_bytes((out / f).read_bytes())
    st = torch.load(out / "checkpoint.pt", weights_only=False)
    del st["model"]["recency"]
    torch.save(st, old / "checkpoint.pt")
    assert main(["retrieval", "eval", str(old)]) == 1
    assert "does not match this version's model" in capsys.readouterr().err
    p = _craft("train", "--data", str(bad), "--out", str(out))  # a real process: one line, no traceback
    assert p.returncode == 1 and p.stderr.startswith("craft: error:") and "bad.txt:2:" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_text_embeddings_from_the_bundled_wordllama_model():
    pytest.importorskip("wordllama")
    from craft.retrieval.semantic_ids import text_embeddings
    e = text_embeddings(["red matte lipstick", "lipstick, red", "hair dryer 2000W"])
    assert e.shape == (3, 256)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3  # related titles are closer than unrelated ones
