"""craft.agents.lm: the hierarchical language model (byte encoder -> word backbone -> byte decoder)
and the flat byte model: words and the stream, causality, the bits/byte definition, training,
checkpoints and the CLI. Tiny models and texts (each test well under a few seconds)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from craft.agents import lm as H
from craft.agents import train as T
from craft.models import ModelConfig

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n")
TINY = dict(byte_dim=32, byte_heads=2, byte_hidden_dim=64, encoder_layers=1, decoder_layers=1, word_dim=32,
            word_heads=2, word_hidden_dim=64, backbone_layers=1, max_word_len=8, max_seq_len=64)
TINY_FLAT = ModelConfig(vocab_size=256, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_seq_len=64)


# --------------------------------------------------------------------------- words and the stream
def test_split_words_covers_every_byte_with_whitespace_in_front():
    data = b"Hello,  world!\n\nsupercalifragilistic end \n"
    wo = H.split_words(data, max_word_len=8)
    words = [data[a:b] for a, b in zip(wo[:-1], wo[1:])]
    assert b"".join(words) == data
    assert words[:3] == [b"Hello,", b"  world!", b"\n\nsuperc"]
    assert words[3:6] == [b"alifragi", b"listic", b" end"] and words[-1] == b" \n"
    assert max(len(w) for w in words) <= 8
    assert H.split_words(b"").tolist() == [0]


def test_word_stream_marks_word_starts_and_ends():
    data = TEXT.encode()
    s = H.word_stream(data, 8)
    n_words = len(s.offsets) - 1
    assert len(s.inputs) == len(data) + n_words == s.offsets[-1]
    assert (s.inputs[s.offsets[:-1]] == H.WORD_ID).all()        # every word starts with the marker
    assert (s.targets[s.offsets[1:] - 1] == H.WORD_ID).all()    # and ends with it as its last target
    assert bytes(s.targets[s.targets != H.WORD_ID].astype(np.uint8)) == data
    assert bytes(s.inputs[s.inputs != H.WORD_ID].astype(np.uint8)) == data
    assert (s.inputs[1:][s.word[1:] == s.word[:-1]] == s.targets[:-1][s.word[1:] == s.word[:-1]]).all()
    cuts = H.stream_windows(s.offsets, 40)
    assert cuts[0] == 0 and cuts[-1] == n_words and (np.diff(s.offsets[cuts]) <= 40).all()
    with pytest.raises(ValueError, match="seq_len"):
        H.stream_windows(s.offsets, 5)


# --------------------------------------------------------------------------- the model
def _batch(cfg, text=TEXT, rows=2):
    s = H.word_stream(text.encode(), cfg.max_word_len)
    cuts = H.stream_windows(s.offsets, cfg.max_seq_len)
    return H.make_batch(s, list(zip(cuts[:-1], cuts[1:]))[:rows], cfg.max_seq_len)


def test_forward_shapes_and_same_parameters_as_the_flat_model():
    hier, flat = H.HierarchicalLM(), H.flat_model()
    assert abs(hier.num_parameters() / flat.num_parameters() - 1) < 0.01
    torch.manual_seed(0)
    model = H.HierarchicalLM(H.HierarchicalLMConfig(**TINY))
    b = _batch(model.config)
    logits, loss = model(b)
    assert logits.shape == (2, 64, H.VOCAB) and loss.ndim == 0 and torch.isfinite(loss)
    for r in range(2):  # ``last`` is each word's last position in the row
        n = int(b.doc[r].max()) + 1
        assert b.doc[r, b.last[r, :n]].tolist() == list(range(n))
        padded = torch.nn.functional.pad(b.doc[r], (0, 1), value=-1)
        assert (padded[b.last[r, :n] + 1] != torch.arange(n)).all()


CONTEXTS = [dict(encoder_context="row", decoder_context="row"), dict(encoder_context="word", decoder_context="word"),
            dict(encoder_context="word", decoder_context="row"),
            dict(encoder_context="row", decoder_context="row", byte_window=6)]


def _ctx_id(c):
    return f"{c['encoder_context']}-{c['decoder_context']}" + (f"-window{c['byte_window']}" if "byte_window" in c else "")


@pytest.mark.parametrize("contexts", CONTEXTS, ids=_ctx_id)
def test_each_position_sees_only_earlier_positions_and_earlier_words(contexts):
    """Position p of the stream predicts the byte at p (or the word end); its logits may depend on
    the inputs at positions <= p only. A gradient test: d logits[p] / d input embedding[q] must be
    exactly zero for q > p (later bytes of the same word, and every later word), and nonzero for
    some q in an earlier word (the backbone, and with "row" contexts the byte attention, carries the
    context). Leaking the current word's vector into its own decoder, or the next word's, fails it."""
    torch.manual_seed(0)
    model = H.HierarchicalLM(H.HierarchicalLMConfig(**TINY, **contexts)).eval()
    b = _batch(model.config, rows=1)
    saved = {}

    def keep(_, __, out):
        out.retain_grad()
        saved["x"] = out

    model.embed.register_forward_hook(keep)
    logits, _ = model(b)
    n = int((b.doc[0] >= 0).sum())
    for p in (5, 17, 30, n - 2):
        model.zero_grad()
        saved["x"].grad = None
        logits[0, p].square().sum().backward(retain_graph=True)
        g = saved["x"].grad[0].abs().sum(-1)
        assert g[p + 1:].max() == 0, f"position {p} sees later positions {torch.nonzero(g[p + 1:]).flatten() + p + 1}"
        earlier = b.doc[0, :p + 1] < b.doc[0, p]
        if earlier.any():
            assert g[:p + 1][earlier].max() > 0, f"position {p} sees nothing of the earlier words"


@pytest.mark.parametrize("contexts", CONTEXTS, ids=_ctx_id)
def test_perturbing_later_words_leaves_earlier_logits_unchanged(contexts):
    torch.manual_seed(1)
    model = H.HierarchicalLM(H.HierarchicalLMConfig(**TINY, **contexts)).eval()
    b = _batch(model.config, rows=2)
    cut = int(torch.nonzero(b.doc[0] == 4)[0])  # first position of word 4
    changed = H.StreamBatch(b.inputs.clone(), b.targets, b.doc, b.last, b.n_bytes)
    g = torch.Generator().manual_seed(0)
    changed.inputs[0, cut + 1:] = torch.randint(0, 256, (b.inputs.shape[1] - cut - 1,), generator=g)
    with torch.no_grad():
        a, _ = model(b)
        c, _ = model(changed)
    torch.testing.assert_close(c[0, :cut + 1], a[0, :cut + 1], rtol=0, atol=1e-6)
    assert (c[0, cut + 2:] - a[0, cut + 2:]).abs().max() > 1e-4
    torch.testing.assert_close(c[1], a[1], rtol=0, atol=1e-6)  # rows are independent


@pytest.mark.parametrize("window", [4, 0])
def test_byte_window_bounds_what_the_byte_blocks_see(window):
    """With the backbone's prediction cut off (``from_word`` zeroed), a byte position's logits come
    from the byte blocks alone: with ``byte_window=W`` and n byte blocks, from the last n * (W - 1)
    + 1 positions, so changing the inputs before them changes nothing; with 0 (the whole row) it
    does."""
    torch.manual_seed(2)
    model = H.HierarchicalLM(H.HierarchicalLMConfig(**TINY, byte_window=window)).eval()
    with torch.no_grad():
        model.from_word[1].weight.zero_()
    b = _batch(model.config, rows=1)
    reach = (model.config.encoder_layers + model.config.decoder_layers) * 3 + 1
    p = 40
    changed = H.StreamBatch(b.inputs.clone(), b.targets, b.doc, b.last, b.n_bytes)
    changed.inputs[0, : p - reach + 1] = (b.inputs[0, : p - reach + 1] + 7) % 256
    with torch.no_grad():
        a, _ = model(b)
        c, _ = model(changed)
    diff = (c[0, p:] - a[0, p:]).abs().max()
    if window:
        assert diff == 0
    else:
        assert diff > 1e-4
    with pytest.raises(ValueError, match="byte_window"):
        H.HierarchicalLM(H.HierarchicalLMConfig(**TINY, byte_window=-1))


def test_bits_per_byte_counts_every_byte_and_every_word_end():
    """With all-zero logits every stream position costs ln(vocab): the hierarchical code length is
    (bytes + words) * log2(257) bits, the flat one (bytes - 1) * 8 (its first byte is given)."""
    data = TEXT.encode()
    hier = H.HierarchicalLM(H.HierarchicalLMConfig(**TINY))
    flat = H.flat_model(TINY_FLAT)
    with torch.no_grad():
        hier.embed.weight.zero_()
        flat.tok_embeddings.weight.zero_()
    n_words = len(H.split_words(data, TINY["max_word_len"])) - 1
    assert H.hierarchical_bits_per_byte(hier, data) == pytest.approx((len(data) + n_words) * math.log2(257) / len(data))
    assert H.flat_bits_per_byte(flat, data) == pytest.approx((len(data) - 1) * 8 / len(data))


@pytest.mark.parametrize("kind", ["hier", "flat"])
def test_training_lowers_validation_bits_and_resumes(tmp_path, kind, one_thread):
    cfg = H.HierarchicalLMConfig(**TINY) if kind == "hier" else TINY_FLAT
    s = T.LMSettings(max_steps=40, lr=1e-2, batch_units=4, progress=False, bf16=False, eval_every_s=1e9,
                     checkpoint_every=10 ** 9, warmup_steps=10, max_minutes=60.0)
    text = TEXT * 4
    T.train_lm(text, TEXT, tmp_path, kind, cfg, s)
    ck = torch.load(tmp_path / T.LM_FILES[kind], weights_only=True)
    first, last = ck["evals"][0], ck["evals"][-1]
    assert ck["step"] == 40 and first["step"] == 0 and last["step"] == 40
    assert last["val_bits_per_byte"] < 0.7 * first["val_bits_per_byte"]
    assert all(g["fused"] for g in ck["optimizer"]["param_groups"])  # one fused AdamW kernel, both models
    for g in ck["optimizer"]["param_groups"]:  # as saved before the optimizer was fused
        g["fused"] = None
    torch.save(ck, tmp_path / T.LM_FILES[kind])
    s.max_steps = 45
    T.train_lm(text, TEXT, tmp_path, kind, cfg, s, resume=True)
    ck2 = torch.load(tmp_path / T.LM_FILES[kind], weights_only=True)
    assert ck2["step"] == 45 and ck2["train_bytes"] > ck["train_bytes"] and ck2["seconds"] > ck["seconds"]
    assert all(g["fused"] for g in ck2["optimizer"]["param_groups"])  # resumed fused
    assert [e["step"] for e in ck2["evals"]] == [0, 40, 45]
    assert [p.name for p in tmp_path.iterdir()] == [T.LM_FILES[kind]]  # no temporary left
    # a numpy learning rate in the optimizer state would make mid-run checkpoints unloadable with
    # weights_only=True (the end of the schedule is clamped to a Python float, so check the middle)
    assert {type(T._lr_at(k, 200, 1e-3)) for k in (0, 60, 120)} == {float}
    model, _ = T.load_lm(tmp_path, kind)
    assert T.lm_bits_per_byte(model, TEXT.encode()) == pytest.approx(ck2["evals"][-1]["val_bits_per_byte"], rel=1e-4)


def test_checkpoints_from_before_the_context_options_load_attending_inside_words(tmp_path, one_thread):
    """A checkpoint whose config predates ``encoder_context``/``decoder_context`` was trained with
    attention inside each word; loading it with the new defaults ("row") would change its output."""
    cfg = H.HierarchicalLMConfig(**TINY, encoder_context="word", decoder_context="word")
    s = T.LMSettings(max_steps=3, batch_units=2, progress=False, bf16=False, eval_every_s=1e9)
    T.train_lm(TEXT * 2, TEXT, tmp_path, "hier", cfg, s)
    path = tmp_path / T.LM_FILES["hier"]
    ck = torch.load(path, weights_only=True)
    for k in ("encoder_context", "decoder_context"):
        del ck["config"][k]
    torch.save(ck, path)
    model, _ = T.load_lm(tmp_path, "hier")
    assert (model.config.encoder_context, model.config.decoder_context) == ("word", "word")
    assert T.lm_bits_per_byte(model, TEXT.encode()) == pytest.approx(ck["evals"][-1]["val_bits_per_byte"], rel=1e-4)
    with pytest.raises(ValueError, match="decoder_context"):
        H.HierarchicalLM(H.HierarchicalLMConfig(**TINY, decoder_context="sentence"))


def test_checkpoints_from_before_the_byte_window_load_attending_over_the_whole_row(tmp_path, one_thread):
    """A row-context checkpoint whose config predates ``byte_window`` attended over the whole row;
    loading it with the default window (shorter than its rows here) would change its output."""
    cfg = H.HierarchicalLMConfig(**{**TINY, "max_seq_len": 96}, byte_window=0)
    assert H.HierarchicalLMConfig().byte_window < cfg.max_seq_len
    s = T.LMSettings(max_steps=3, batch_units=2, progress=False, bf16=False, eval_every_s=1e9)
    T.train_lm(TEXT * 3, TEXT, tmp_path, "hier", cfg, s)
    path = tmp_path / T.LM_FILES["hier"]
    ck = torch.load(path, weights_only=True)
    del ck["config"]["byte_window"]
    torch.save(ck, path)
    model, _ = T.load_lm(tmp_path, "hier")
    assert model.config.byte_window == 0 and model.config.encoder_context == "row"
    assert T.lm_bits_per_byte(model, TEXT.encode()) == pytest.approx(ck["evals"][-1]["val_bits_per_byte"], rel=1e-4)


@pytest.fixture
def eager_swiglu(monkeypatch):
    """The default-size models' SwiGLU would compile on first use (tens of seconds); eager here."""
    from craft_kernels import _backend

    monkeypatch.setenv("CRAFT_IMPL_SWIGLU", "eager")
    _backend.reset_dispatch()
    yield
    monkeypatch.delenv("CRAFT_IMPL_SWIGLU")
    _backend.reset_dispatch()


def test_cli_train_and_eval_lm(tmp_path, capsys, one_thread, eager_swiglu):
    from craft.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 10)
    out = tmp_path / "run"
    for kind in ("hier", "flat"):
        assert main(["agents", "train", "--level", "lm", "--lm-model", kind, "--corpus", str(corpus),
                     "--max-steps", "2", "--batch-units", "2", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["agents", "eval", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for kind in ("hier", "flat"):
        r = res[f"lm_{kind}"]
        assert r["steps"] == 2 and 0 < r["val_bits_per_byte"] < 12 and r["train_bytes_per_second"] > 0
    assert abs(res["lm_hier"]["parameters"] / res["lm_flat"]["parameters"] - 1) < 0.01
    assert main(["agents", "eval", str(tmp_path / "nope")]) == 1
    assert main(["agents", "train", "--level", "0", "--compile", "--corpus", str(corpus), "--out", str(out)]) == 1
    assert "--compile" in capsys.readouterr().err


def test_each_model_trains_at_its_own_default_learning_rate_unless_one_is_given(tmp_path, one_thread):
    s = T.LMSettings(max_steps=1, warmup_steps=1, batch_units=2, progress=False, bf16=False, eval_every_s=1e9)
    for kind, cfg in (("hier", H.HierarchicalLMConfig(**TINY)), ("flat", TINY_FLAT)):
        T.train_lm(TEXT * 2, TEXT, tmp_path / kind, kind, cfg, s)
        lrs = {g["lr"] for g in torch.load(tmp_path / kind / T.LM_FILES[kind], weights_only=True)["optimizer"]["param_groups"]}
        assert lrs == {T.LM_LR[kind]}
    assert T.LM_LR["hier"] != T.LM_LR["flat"] and s.lr is None  # the settings object is not changed
    T.train_lm(TEXT * 2, TEXT, tmp_path / "given", "hier", H.HierarchicalLMConfig(**TINY), dataclasses.replace(s, lr=1e-3))
    ck = torch.load(tmp_path / "given" / T.LM_FILES["hier"], weights_only=True)
    assert {g["lr"] for g in ck["optimizer"]["param_groups"]} == {1e-3}


@pytest.mark.parametrize("kind", ["hier", "flat"])
def test_dropout_acts_in_training_mode_only(kind, one_thread):
    """With dropout the training-mode forward is random (two calls differ, and differ from the same
    weights without dropout); in eval mode it is the deterministic model without dropout."""
    torch.manual_seed(0)
    if kind == "hier":
        cfg = H.HierarchicalLMConfig(**TINY)
        batch = _batch(cfg)
        make = lambda p: H.HierarchicalLM(dataclasses.replace(cfg, dropout=p))  # noqa: E731
        run = lambda m: m(batch)[0]  # noqa: E731
    else:
        x = torch.randint(0, 256, (2, 48))
        make = lambda p: H.flat_model(dataclasses.replace(TINY_FLAT, dropout=p))  # noqa: E731
        run = lambda m: m(x)  # noqa: E731
    plain, drop = make(0.0), make(0.3)
    drop.load_state_dict(plain.state_dict())
    plain.eval()
    ref = run(plain)
    drop.train()
    a, b = run(drop), run(drop)
    assert not torch.allclose(a, b) and not torch.allclose(a, ref)
    plain.train()
    torch.testing.assert_close(run(plain), ref)  # dropout 0 adds nothing in training mode either
    drop.eval()
    torch.testing.assert_close(run(drop), ref)
    with pytest.raises(ValueError, match="dropout"):
        make(1.0)
    with pytest.raises(ValueError, match="dropout"):
        make(-0.1)


def test_dropout_reaches_the_checkpoint_and_old_checkpoints_load_without_it(tmp_path, one_thread):
    s = T.LMSettings(max_steps=1, warmup_steps=1, batch_units=2, progress=False, bf16=False, eval_every_s=1e9)
    for kind, cfg in (("hier", H.HierarchicalLMConfig(**TINY)), ("flat", TINY_FLAT)):
        # a number in the settings overrides the config; None keeps the config's own
        T.train_lm(TEXT * 2, TEXT, tmp_path / kind, kind, cfg, dataclasses.replace(s, dropout=0.25))
        model, ck = T.load_lm(tmp_path / kind, kind)
        assert model.config.dropout == ck["config"]["dropout"] == 0.25 and not model.training
        T.train_lm(TEXT * 2, TEXT, tmp_path / "own", kind, dataclasses.replace(cfg, dropout=0.1), s)
        assert T.load_lm(tmp_path / "own", kind)[0].config.dropout == 0.1
        # a checkpoint from before the field: no dropout, the same bits/byte
        path = tmp_path / kind / T.LM_FILES[kind]
        del ck["config"]["dropout"]
        torch.save(ck, path)
        model, _ = T.load_lm(tmp_path / kind, kind)
        assert model.config.dropout == 0.0
        assert T.lm_bits_per_byte(model, TEXT.encode()) == pytest.approx(ck["evals"][-1]["val_bits_per_byte"], rel=1e-4)
    with pytest.raises(ValueError, match="dropout"):
        T.LMSettings(dropout=1.0)


def test_cli_dropout_reaches_the_language_models_only(tmp_path, capsys, one_thread, eager_swiglu):
    from craft.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 10)
    out = tmp_path / "run"
    for kind in ("hier", "flat"):
        assert main(["agents", "train", "--level", "lm", "--lm-model", kind, "--corpus", str(corpus), "--dropout",
                     "0.2", "--max-steps", "1", "--batch-units", "2", "--out", str(out), "--no-progress"]) == 0
        assert T.load_lm(out, kind)[0].config.dropout == 0.2
        assert main(["agents", "train", "--level", "lm", "--lm-model", kind, "--corpus", str(corpus), "--max-steps",
                     "1", "--batch-units", "2", "--out", str(out), "--no-progress"]) == 0
        assert T.load_lm(out, kind)[0].config.dropout == 0.0  # not kept from the run before
    capsys.readouterr()
    assert main(["agents", "train", "--level", "lm", "--dropout", "1", "--corpus", str(corpus), "--out", str(out)]) == 1
    assert "dropout" in capsys.readouterr().err
    assert main(["agents", "train", "--level", "0", "--dropout", "0.1", "--corpus", str(corpus), "--out", str(out)]) == 1
    assert "--dropout" in capsys.readouterr().err


def test_plot_draws_both_models(tmp_path):
    pytest.importorskip("matplotlib")
    from craft.agents.plot import plot

    s = T.LMSettings(max_steps=2, batch_units=2, progress=False, bf16=False)
    T.train_lm(TEXT * 2, TEXT, tmp_path, "hier", H.HierarchicalLMConfig(**TINY), s)
    T.train_lm(TEXT * 2, TEXT, tmp_path, "flat", TINY_FLAT, s)
    out = plot(str(tmp_path), str(tmp_path / "lm.png"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="lm.pt"):
        plot(str(tmp_path / "empty"), str(tmp_path / "x.png"))
