"""LanguageModel: config, shapes, loss, document isolation, cached steps vs full forward, gradients."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from craft.models import GenerativeModel, LanguageModel, Model, ModelConfig

V = 61


def make(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_seq_len=64)
    cfg.update(kw)
    return LanguageModel(ModelConfig(**cfg)).eval()


def test_presets_and_round_trip():
    tiny = ModelConfig.preset("tiny", vocab_size=258)
    assert (tiny.dim, tiny.n_layers, tiny.n_heads, tiny.hidden_dim, tiny.max_seq_len) == (128, 6, 8, 512, 256)
    assert tiny.n_kv_heads == 8 and tiny.head_dim == 16
    assert 1.0e6 < tiny.num_parameters(embeddings=False) < 2.0e6
    assert 9e6 < ModelConfig.preset("small").num_parameters(embeddings=False) < 12e6
    assert ModelConfig.from_dict(tiny.to_dict()) == tiny
    assert ModelConfig.preset("small", n_kv_heads=2).n_kv_heads == 2


@pytest.mark.parametrize("bad, match", [
    (dict(dim=30), "n_heads"), (dict(n_kv_heads=3), "n_kv_heads"), (dict(vocab_size=0), "vocab_size"),
    (dict(dim=24, n_heads=8), "even"), (dict(rope_base=-1.0), "rope_base"),
])
def test_config_errors(bad, match):
    kw = dict(vocab_size=V, dim=32, n_heads=4)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kw)


def test_unknown_preset_and_keys():
    with pytest.raises(ValueError, match="preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"dim": 32, "n_heads": 4, "colour": "red"})


def test_hierarchy_and_parameter_counts():
    m = make()
    assert isinstance(m, GenerativeModel) and isinstance(m, Model) and m.tokenizer is None
    assert m.num_parameters() == m.config.num_parameters() == sum(p.numel() for p in m.parameters())
    assert m.output.weight is m.tok_embeddings.weight
    u = make(tie_embeddings=False)
    assert u.output.weight is not u.tok_embeddings.weight
    assert u.num_parameters() == u.config.num_parameters() == m.num_parameters() + V * 32
    assert u.num_parameters(embeddings=False) == m.num_parameters(embeddings=False)
    assert not any("kv_cache" in k for k in m.state_dict())


def test_forward_shapes_and_loss():
    m = make()
    x = torch.randint(0, V, (3, 17))
    logits = m(x)
    assert logits.shape == (3, 17, V) and logits.dtype == torch.float32
    targets = torch.randint(0, V, (3, 17))
    targets[0, :5] = -100
    logits2, loss = m(x, targets=targets)
    keep = targets != -100
    ref = F.cross_entropy(logits2[keep].double(), targets[keep])
    torch.testing.assert_close(logits2, logits)
    assert abs(loss.item() - ref.item()) < 1e-5
    assert abs(loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.5  # small init: near uniform


def test_causality():
    m = make()
    x = torch.randint(0, V, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % V
    torch.testing.assert_close(m(x)[:, :8], m(y)[:, :8])
    assert not torch.allclose(m(x)[:, 8:], m(y)[:, 8:])


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_doc_ids_isolate_documents(n_kv_heads):
    """A packed row with document ids gives each document the logits of a separate forward."""
    m = make(n_kv_heads=n_kv_heads)
    lens = [5, 9, 3]
    docs = [torch.randint(0, V, (1, n)) for n in lens]
    packed = torch.cat(docs + [torch.zeros(1, 2, dtype=torch.long)], 1)  # two padding slots at the end
    doc_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lens)] + [torch.full((1, 2), -1)], 1)
    out = m(packed, doc_ids=doc_ids)
    assert torch.isfinite(out).all()
    start = 0
    for d, n in zip(docs, lens):
        torch.testing.assert_close(out[:, start:start + n], m(d), atol=2e-5, rtol=1e-4)
        start += n
    # one document covering the row is plain causal attention
    torch.testing.assert_close(m(packed, doc_ids=torch.zeros_like(packed)), m(packed), atol=1e-5, rtol=1e-5)


def test_forward_inference_matches_without_grad():
    m = make().train()
    x = torch.randint(0, V, (2, 10))
    ids = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
    out = m.forward_inference(x, ids)
    assert not out.requires_grad
    torch.testing.assert_close(out, m(x, doc_ids=ids).detach(), atol=0, rtol=0)


def test_gradients_flow_to_every_parameter():
    m = make(tie_embeddings=False, n_kv_heads=2).train()
    x = torch.randint(0, V, (2, 12))
    ids = torch.tensor([[0] * 6 + [1] * 6, [0] * 12])
    _, loss = m(x, doc_ids=ids, targets=torch.roll(x, -1, 1))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "tok_embeddings.weight":  # only the rows of tokens present get gradient
            assert p.grad.abs().sum() > 0, name


def test_gradients_match_float64_reference():
    m = make(seed=3)
    x = torch.randint(0, V, (2, 9))
    t = torch.randint(0, V, (2, 9))
    _, loss = m(x, targets=t)
    g32 = torch.autograd.grad(loss, m.layers[0].attention.wqkv.weight)[0]
    m64 = make(seed=3).double()
    _, loss64 = m64(x, targets=t)
    g64 = torch.autograd.grad(loss64, m64.layers[0].attention.wqkv.weight)[0]
    torch.testing.assert_close(g32.double(), g64, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_forward_step_matches_full_forward(n_kv_heads):
    m = make(n_kv_heads=n_kv_heads)
    x = torch.randint(0, V, (2, 20))
    full = m(x)
    m.setup_cache(2, 32)
    chunks = [(0, 7), (7, 8), (8, 15), *[(i, i + 1) for i in range(15, 20)]]
    with torch.no_grad():
        for a, b in chunks:
            step = m.forward_step(x[:, a:b], torch.arange(a, b))
            torch.testing.assert_close(step, full[:, a:b], atol=1e-5, rtol=1e-5)


def test_decoding_head_follows_weights_at_setup_cache():
    """forward_step's transposed copy of the output weight is refreshed by every setup_cache (the
    generators call it first), e.g. after a training step changed the weights."""
    m = make()
    x = torch.randint(0, V, (1, 6))
    m.setup_cache(1, 8)
    with torch.no_grad():
        m.output.weight.mul_(-2.0)  # an update after the cache was set up
        m.setup_cache(1, 8)  # same size: the cache is kept, the head copy refreshed in place
        step = m.forward_step(x, torch.arange(6))
    torch.testing.assert_close(step, m(x), atol=1e-5, rtol=1e-5)
    m.clear_cache()
    assert m._head_t.numel() == 0


def test_forward_step_explicit_mask_and_rope_pos():
    """A document written after another, masked to see only itself, matches its own forward."""
    m = make()
    a, b = torch.randint(0, V, (1, 6)), torch.randint(0, V, (1, 5))
    m.setup_cache(1, 16)
    with torch.no_grad():
        m.forward_step(a, torch.arange(6))
        slots = torch.arange(16)
        pos = torch.arange(6, 11)
        mask = ((slots[None] >= 6) & (slots[None] <= pos[:, None]))[None, None]
        out = m.forward_step(b, pos, mask=mask, rope_pos=torch.arange(5))
    torch.testing.assert_close(out, m(b), atol=1e-5, rtol=1e-5)


def test_argument_errors():
    m = make()
    with pytest.raises(ValueError, match="tokens"):
        m(torch.randint(0, V, (5,)))
    with pytest.raises(TypeError, match="integer"):
        m(torch.rand(2, 5))
    with pytest.raises(ValueError, match="doc_ids"):
        m(torch.randint(0, V, (2, 5)), doc_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        m(torch.randint(0, V, (2, 5)), targets=torch.zeros(2, 6, dtype=torch.long))
    m.clear_cache()
    with pytest.raises(ValueError, match="setup_cache"):
        m.forward_step(torch.randint(0, V, (1, 1)), torch.tensor([0]))
    m.setup_cache(1, 8)
    with pytest.raises(ValueError, match="input_pos"):
        m.forward_step(torch.randint(0, V, (1, 2)), torch.tensor([0]))
    with pytest.raises(ValueError, match="mask"):
        m.forward_step(torch.randint(0, V, (1, 1)), torch.tensor([0]), mask=torch.ones(1, 1, 1, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="ModelConfig"):
        LanguageModel({"dim": 32})


def test_bf16_autocast_forward_backward():
    m = make().train()
    x = torch.randint(0, V, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = m(x, targets=x)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_compiled_model_matches_eager():
    m = make(n_layers=1).train()
    x = torch.randint(0, V, (2, 16))
    cm = torch.compile(m, fullgraph=True)
    ref_logits, ref_loss = m(x, targets=x)
    logits, loss = cm(x, targets=x)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    g_ref = torch.autograd.grad(ref_loss, m.output.weight)[0]
    g = torch.autograd.grad(loss, m.output.weight)[0]
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)


def test_generate_with_text_prompt_dispatches_to_linked(monkeypatch):
    """generate(prompt=...) hands over to craft.generation.linked.generate_linked with its settings."""
    calls = []
    mod = types.ModuleType("craft.generation.linked")
    mod.generate_linked = lambda model, prompt, corpus=None, **config: calls.append((model, prompt, corpus, config)) or "ok"
    monkeypatch.setitem(sys.modules, "craft.generation.linked", mod)
    m = make()
    assert m.generate(prompt="# Title", corpus="/corpus", max_new_tokens=5, temperature=0.0, link_budget=3) == "ok"
    assert calls == [(m, "# Title", "/corpus", {"max_new_tokens": 5, "temperature": 0.0, "link_budget": 3})]
    with pytest.raises(ValueError, match="not both"):
        m.generate(torch.tensor([1, 2]), prompt="x")
    with pytest.raises(TypeError, match="unexpected"):
        m.generate(torch.tensor([1, 2]), link_budget=3)
    with pytest.raises(ValueError, match="prompt_ids"):
        m.generate()


def test_generate_uses_tokenizer_eos():
    from craft.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    m = make(vocab_size=tok.vocab_size)
    m.tokenizer = tok

    def force_eos(logits, ids):
        return torch.full_like(logits, float("-inf")).index_fill(-1, torch.tensor([tok.eos_id]), 0.0)

    out = m.generate(tok.encode("hi"), max_new_tokens=10, logits_processors=[force_eos])
    assert out.tolist() == [tok.encode("hi") + [tok.eos_id]]


def test_attention_with_a_mask_and_no_cache_attends_over_its_own_keys_and_cached_needs_a_mask():
    """A bool mask without ``input_pos``: masked attention over the call's own keys (the directive
    decoder recomputing a prefix), here bidirectional, against SDPA on the same projections."""
    from craft.models.transformer import apply_rope, rope_angles
    m = make()
    B, T, H, hd = 2, 6, 4, 8
    x = torch.randn(B, T, m.config.dim)
    attn = m.layers[0].attention
    cos, sin = rope_angles(torch.arange(T), m.inv_freq)
    with torch.no_grad():
        q, k, v = attn.wqkv(x).split([H * hd] * 3, dim=-1)
        q, k = (apply_rope(t.view(B, T, H, hd), cos, sin).transpose(1, 2) for t in (q, k))
        ref = attn.wo(F.scaled_dot_product_attention(q, k, v.view(B, T, H, hd).transpose(1, 2))
                      .transpose(1, 2).reshape(B, T, H * hd))
        out = attn(x, cos, sin, mask=torch.ones(1, 1, T, T, dtype=torch.bool))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
        m.setup_cache(B, 8)
        with pytest.raises(ValueError, match="mask"):
            attn(x, cos, sin, input_pos=torch.arange(T))
