"""Generation: KV cache, cached decoding vs recompute, sampling rules, processors, EOS, compile."""
import pytest
import torch

from craft.generation import (
    KVCache, apply_processors, decode_one_token, generate_tokens, prefill, repetition_penalty, sample,
    suppress_tokens, top_k_filter, top_p_filter,
)
from craft.models import LanguageModel, ModelConfig

V = 53


def make(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_seq_len=64)
    cfg.update(kw)
    return LanguageModel(ModelConfig(**cfg)).eval()


def greedy_by_recompute(m, prompt, n):
    seq = prompt.clone()
    for _ in range(n):
        nxt = m.forward_inference(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq


# ---- KV cache ------------------------------------------------------------------------------------
def test_kv_cache_update_and_compact():
    c = KVCache(2, 3, 8, 4)
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    kc, vc = c.update(torch.tensor([1, 2, 3, 5, 7]), k, v)
    assert kc.data_ptr() == c.k_cache.data_ptr()
    torch.testing.assert_close(kc[:, :, [1, 2, 3, 5, 7]], k)
    assert (kc[:, :, [0, 4, 6]] == 0).all()
    c.compact(torch.tensor([7, 2, 5]))
    torch.testing.assert_close(c.k_cache[:, :, :3], k[:, :, [4, 1, 3]])
    torch.testing.assert_close(c.v_cache[:, :, :3], v[:, :, [4, 1, 3]])
    assert (c.k_cache[:, :, 3:] == 0).all() and (c.v_cache[:, :, 3:] == 0).all()
    with pytest.raises(ValueError, match="keep"):
        c.compact(torch.tensor([8]))
    with pytest.raises(ValueError, match="keep"):
        c.compact(torch.tensor([[0]]))
    with pytest.raises(ValueError, match="max_seq_len"):
        KVCache(1, 1, 0, 4)


def test_cache_writes_in_cache_dtype():
    c = KVCache(1, 1, 4, 2, dtype=torch.bfloat16)
    c.update(torch.tensor([0]), torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    assert c.k_cache.dtype == torch.bfloat16 and c.k_cache[0, 0, 0].tolist() == [1.0, 1.0]


def test_compact_cache_drops_a_document():
    """After evicting document A from the cache, decoding B continues as if A had never been there."""
    m = make()
    a, b = torch.randint(0, V, (1, 7)), torch.randint(0, V, (1, 6))
    m.setup_cache(1, 32)
    slots = torch.arange(32)
    with torch.no_grad():
        prefill(m, a, torch.arange(7))
        pos_b = torch.arange(7, 13)
        own = ((slots[None] >= 7) & (slots[None] <= pos_b[:, None]))[None, None]
        prefill(m, b, pos_b, mask=own)
        m.compact_cache(torch.arange(7, 13))
        nxt = torch.randint(0, V, (1, 1))
        # slot 6 now, rotary position 13 (B's keys keep the rotation of positions 7..12)
        logits = decode_one_token(m, nxt, torch.tensor([6]), rope_pos=torch.tensor([13]))
    ref = m.forward_inference(torch.cat([b, nxt], 1))[:, -1]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


# ---- cached decoding ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_decode_logits_match_full_recompute(n_kv_heads):
    m = make(n_kv_heads=n_kv_heads)
    x = torch.randint(0, V, (3, 24))
    full = m.forward_inference(x)
    m.setup_cache(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(prefill(m, x[:, :10], torch.arange(10)), full[:, 9], atol=1e-5, rtol=1e-5)
        for i in range(10, 24):
            logits = decode_one_token(m, x[:, i:i + 1], torch.tensor([i]))
            torch.testing.assert_close(logits, full[:, i], atol=1e-5, rtol=1e-5)


def test_greedy_with_cache_equals_greedy_by_recompute():
    m = make(seed=1)
    prompt = torch.randint(0, V, (2, 5))
    out = generate_tokens(m, prompt, 20, temperature=0.0)
    assert out.shape == (2, 25) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, greedy_by_recompute(m, prompt, 20))
    # rows of a batch generate what they generate alone
    for r in range(2):
        assert torch.equal(generate_tokens(m, prompt[r:r + 1], 20, temperature=0.0), out[r:r + 1])


def test_generation_costs_one_model_step_per_token():
    m = make()
    calls = []
    real = m.forward_step

    def spy(tokens, input_pos, mask=None, rope_pos=None):
        calls.append(tokens.shape[1])
        return real(tokens, input_pos, mask, rope_pos)

    m.forward_step = spy
    generate_tokens(m, torch.randint(0, V, (1, 9)), 12, temperature=0.0)
    assert calls == [9] + [1] * 11


def test_batch_rows_stop_at_their_own_eos():
    m = make()
    eos = 7
    stop_at = {0: 2, 1: 5, 2: 100}  # new-token index at which each row is forced to emit eos
    seen_lengths = []

    def force(logits, ids):
        seen_lengths.append(ids.shape[1])
        step = ids.shape[1] - 4
        out = logits.clone()
        out[:, eos] = float("-inf")  # eos only where forced
        for row, s in stop_at.items():
            if step == s:
                out[row] = float("-inf")
                out[row, eos] = 0.0
        return out

    prompt = torch.randint(8, V, (3, 4))
    out = generate_tokens(m, prompt, 8, temperature=0.0, eos_id=eos, logits_processors=[force])
    assert out.shape == (3, 12) and seen_lengths == list(range(4, 12))
    assert out[0, 6].item() == eos and (out[0, 6:] == eos).all() and (out[0, 4:6] != eos).all()
    assert out[1, 9].item() == eos and (out[1, 9:] == eos).all() and (out[1, 4:9] != eos).all()
    assert (out[2, 4:] != eos).all()
    # when every row has stopped, generation ends early
    stop_at[2] = 3
    out = generate_tokens(m, prompt, 50, temperature=0.0, eos_id=eos, logits_processors=[force])
    assert out.shape == (3, 4 + 6) and (out[:, -1] == eos).all()


def test_sampled_generation_is_reproducible_and_in_range():
    m = make()
    prompt = torch.randint(0, V, (4, 3))
    a = generate_tokens(m, prompt, 10, temperature=1.3, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(5))
    b = generate_tokens(m, prompt, 10, temperature=1.3, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < V
    assert torch.equal(generate_tokens(m, prompt, 0), prompt)


def test_generate_argument_errors():
    m = make()
    p = torch.randint(0, V, (1, 3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_tokens(m, p, -1)
    with pytest.raises(ValueError, match="prompt_ids"):
        generate_tokens(m, torch.tensor([[V]]), 2)
    with pytest.raises(ValueError, match="prompt_ids"):
        generate_tokens(m, torch.tensor([1, 2]), 2)
    with pytest.raises(ValueError, match="eos_id"):
        generate_tokens(m, p, 2, eos_id=V)
    with pytest.raises(TypeError, match="compile"):
        generate_tokens(m, p, 2, compile=3)


def test_compiled_decode_gives_the_same_tokens():
    """The compiled step samples inside the graph; with the same draws it picks the same tokens."""
    m = make(seed=2, n_layers=1)
    prompt = torch.randint(0, V, (2, 6))
    kw = dict(temperature=0.9, top_k=20, top_p=0.95, eos_id=3)
    eager = generate_tokens(m, prompt, 12, generator=torch.Generator().manual_seed(1), **kw)
    compiled = generate_tokens(m, prompt, 12, compile=True, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(eager, compiled)
    again = m.generate(prompt, max_new_tokens=12, compile=True, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(again, eager)


def test_generation_beyond_the_context_is_an_error():
    """T + max_new_tokens past max_seq_len would rotate positions the model never saw: refused."""
    m = make()  # max_seq_len 64
    prompt = torch.randint(0, V, (1, 60))
    assert generate_tokens(m, prompt, 4, temperature=0.0).shape == (1, 64)
    with pytest.raises(ValueError, match=r"prompt_ids, max_new_tokens: 60 prompt tokens \+ 5 .*max_seq_len=64.*at most 4"):
        generate_tokens(m, prompt, 5, temperature=0.0)
    with pytest.raises(ValueError, match="max_seq_len"):
        m.generate(torch.randint(0, V, (1, 65)), max_new_tokens=0)


def test_fused_step_samples_like_the_eager_sampler():
    """Sampling inside the decode step draws what sample() draws from the step's logits: a no-op
    processor (which moves sampling out of the step) changes no token."""
    m = make(seed=3)
    prompt = torch.randint(0, V, (3, 5))
    kw = dict(temperature=1.2, top_k=30, top_p=0.9, eos_id=11)
    fused = generate_tokens(m, prompt, 30, generator=torch.Generator().manual_seed(4), **kw)
    split = generate_tokens(m, prompt, 30, generator=torch.Generator().manual_seed(4),
                            logits_processors=[lambda lg, ids: lg], **kw)
    assert torch.equal(fused, split)


def test_eos_is_read_back_every_n_steps_only(monkeypatch):
    """No host synchronisation per token: the stop flags are read every eos_check_every steps, and
    the result does not depend on that period."""
    m = make(seed=4)
    prompt = torch.randint(0, V, (2, 4))
    kw = dict(temperature=1.0, eos_id=5, generator=None)
    outs = {}
    for every in (1, 16):
        kw["generator"] = torch.Generator().manual_seed(2)
        reads = []
        for name in ("__bool__", "item", "__int__"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, lambda self, _r=real, _n=name: reads.append(_n) or _r(self))
        outs[every] = generate_tokens(m, prompt, 48, eos_check_every=every, **kw)
        monkeypatch.undo()
        if every == 16:
            assert len(reads) <= 8, reads  # 2 prompt-range checks, 2 flag reads, the final cut
    assert torch.equal(outs[1], outs[16])
    stopped = torch.Generator().manual_seed(0)
    force = [lambda lg, ids: torch.full_like(lg, float("-inf")).index_fill(-1, torch.tensor([5]), 0.0)
             if ids.shape[1] >= 7 else lg]
    short = generate_tokens(m, prompt, 48, temperature=1.0, eos_id=5, generator=stopped, logits_processors=force)
    assert short.shape[1] <= 8 and (short[:, -1] == 5).all()


def test_models_do_not_import_generation():
    """Layering: craft.models (and its KV cache) loads without craft.generation."""
    import subprocess
    import sys

    code = "import sys, craft.models; print(any(k.startswith('craft.generation') for k in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- sampling ------------------------------------------------------------------------------------
def test_temperature_zero_is_greedy():
    logits = torch.randn(5, 40)
    assert torch.equal(sample(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample(logits, temperature=2.0, top_k=1, generator=torch.Generator().manual_seed(0)),
                       logits.argmax(-1))


def test_sampling_frequencies_follow_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    for t in (0.5, 1.0, 2.0):
        draws = sample(logits, temperature=t, generator=g)
        freq = torch.bincount(draws, minlength=4).double() / draws.numel()
        torch.testing.assert_close(freq, torch.softmax(logits[0].double() / t, -1), atol=0.015, rtol=0)


def test_top_k_frequencies_are_the_renormalised_k_best():
    logits = torch.tensor([[1.5, 0.0, 1.0, -0.5, 0.5, 2.0]]).repeat(40000, 1)
    draws = sample(logits, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(3))
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    want = torch.zeros(6, dtype=torch.double)
    keep = torch.tensor([5, 0, 2])
    want[keep] = torch.softmax(logits[0, keep].double() / 1.5, -1)
    # 5 sigma of a binomial frequency at 40k draws is <= 0.0125; a sampler that ignores top-k or the
    # temperature is off by more than 0.05 on some token here
    torch.testing.assert_close(freq, want, atol=0.0125, rtol=0)


def test_top_k_keeps_only_the_k_best():
    logits = torch.randn(3000, 30, generator=torch.Generator().manual_seed(1))
    draws = sample(logits, temperature=5.0, top_k=4, generator=torch.Generator().manual_seed(2))
    top4 = logits.topk(4, -1).indices
    assert (top4 == draws[:, None]).any(-1).all()
    f = top_k_filter(logits, 4)
    assert torch.isfinite(f).sum(-1).eq(4).all()
    assert torch.equal(top_k_filter(logits, 100), logits)


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None]
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [[True, False, False, False]]
    # unsorted vocabulary order is restored
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.isfinite(top_p_filter(logits[:, perm], 0.7)).tolist() == [[False, True, False, True]]
    draws = sample(logits.repeat(20000, 1), top_p=0.7, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0, 0], dtype=torch.double), atol=0.015, rtol=0)


def test_empty_distribution_falls_back_to_top_token():
    logits = torch.tensor([[0.1, 3.0, -1.0], [0.0, 1.0, 2.0]])
    emptied = logits.clone()
    emptied[0] = float("-inf")
    for t in (0.0, 1.0):
        out = sample(emptied, temperature=t, fallback_logits=logits, generator=torch.Generator().manual_seed(0))
        assert out[0].item() == 1
    assert sample(torch.full((1, 3), float("nan")), temperature=1.0).shape == (1,)
    assert sample(emptied, temperature=1.0, top_k=1)[1].item() == 2

    m = make()

    def ban_all(lg, ids):
        return torch.full_like(lg, float("-inf"))

    prompt = torch.randint(0, V, (2, 4))
    out = generate_tokens(m, prompt, 6, temperature=0.8, logits_processors=[ban_all])
    assert torch.equal(out, generate_tokens(m, prompt, 6, temperature=0.0))


def test_processors():
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    ids = torch.tensor([[1, 2]])
    out = apply_processors(logits, ids, [suppress_tokens([0, 3]), repetition_penalty(2.0)])
    assert out.tolist() == [[float("-inf"), 1.0, -2.0, float("-inf")]]
    assert sample(out, temperature=0.0).item() == 1
    with pytest.raises(ValueError, match="processor"):
        apply_processors(logits, ids, [lambda lg, i: lg[:, :2]])
    with pytest.raises(ValueError, match="penalty"):
        repetition_penalty(0.0)


@pytest.mark.parametrize("kw, err, match", [
    (dict(temperature=-1.0), ValueError, "temperature"), (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"), (dict(temperature="1"), TypeError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"), (dict(top_k=2.0), TypeError, "top_k"), (dict(top_k=True), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"), (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=float("nan")), ValueError, "top_p"), (dict(top_p=True), TypeError, "top_p"),
])
def test_sampling_argument_errors(kw, err, match):
    """One check for every entry point: sample, generate_tokens and the linked GenerationConfig."""
    from craft.generation.linked import GenerationConfig

    with pytest.raises(err, match=match):
        sample(torch.randn(1, 5), **kw)
    with pytest.raises(err, match=match):
        generate_tokens(make(), torch.tensor([[1, 2]]), 2, **{"temperature": 1.0, **kw})
    with pytest.raises(err, match=match):
        GenerationConfig(**kw)


def test_sample_rejects_bad_logits():
    with pytest.raises(ValueError, match="logits"):
        sample(torch.randn(5))
    with pytest.raises(TypeError, match="floating"):
        sample(torch.ones(1, 5, dtype=torch.long))


def test_generation_leaves_normal_tensors_behind():
    """The decode loop runs under inference_mode, yet the result and the KV cache it filled stay
    ordinary tensors: writable afterwards and usable by a later prefill outside inference mode."""
    m = make()
    prompt = torch.randint(0, V, (1, 5))
    out = generate_tokens(m, prompt, 6, temperature=0.0)
    assert not out.is_inference()
    out[:, 0] = 1
    assert not m.layers[0].attention.kv_cache.k_cache.is_inference()
    with torch.no_grad():
        logits = prefill(m, prompt, torch.arange(5))  # same cache size: the cache is reused and written
    torch.testing.assert_close(logits, m.forward_inference(prompt)[:, -1], atol=1e-5, rtol=1e-5)
