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
    m = make(seed=2, n_layers=1)
    prompt = torch.randint(0, V, (2, 6))
    eager = generate_tokens(m, prompt, 12, temperature=0.0)
    compiled = generate_tokens(m, prompt, 12, temperature=0.0, compile=True)
    assert torch.equal(eager, compiled)
    assert torch.equal(m.generate(prompt, max_new_tokens=12, temperature=0.0, compile=True), eager)


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


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_sampling_argument_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        sample(torch.randn(1, 5), **kw)


def test_sample_rejects_bad_logits():
    with pytest.raises(ValueError, match="logits"):
        sample(torch.randn(5))
    with pytest.raises(TypeError, match="floating"):
        sample(torch.ones(1, 5, dtype=torch.long))
