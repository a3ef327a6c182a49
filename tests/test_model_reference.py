"""LanguageModel and the benchmarks' plain baseline model against transformers' LlamaForCausalLM,
an implementation nobody here wrote, with the same weights copied in (the fused ``wqkv`` and
``gate_up`` projections split into q/k/v and gate/up): logits and every parameter's gradient agree
in float32 and float64, with multi-head and grouped-query attention, tied and untied embeddings,
and (for LanguageModel) document masks.

Both LlamaForCausalLM and LanguageModel compute RMSNorm and the rotary angles in float32 whatever
the dtype, so in float64 they agree to rounding; the baseline normalises in the input dtype, so its
float64 bound is float32 rounding of those two steps.
"""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from craft.models import LanguageModel, ModelConfig

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baseline_model import BaselineLM  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared

V, B, T = 71, 2, 37
CONFIGS = {
    "mha_untied": dict(n_heads=4, n_kv_heads=4, tie_embeddings=False),
    "gqa_tied": dict(n_heads=4, n_kv_heads=2, tie_embeddings=True),
}
# float32: the C++ span kernel (head_dim 16) vs SDPA, different summation orders; float64: rounding
TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}


def _config(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=V, dim=64, n_layers=2, hidden_dim=96, max_seq_len=64, rope_base=500.0,
                       norm_eps=1e-5, **kw)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from init (norm gains included), so every mapping error shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.15 * noise)


def _llama(cfg: ModelConfig, dtype) -> torch.nn.Module:
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_base,
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(hf_cfg).to(dtype).eval()


def _pairs_craft(model: LanguageModel, hf) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """(HF parameters whose concatenation along dim 0 is, craft parameter)."""
    c = model.config
    hm = hf.model
    pairs = [([hm.embed_tokens.weight], model.tok_embeddings.weight), ([hm.norm.weight], model.norm.weight)]
    if not c.tie_embeddings:
        pairs.append(([hf.lm_head.weight], model.output.weight))
    for ours, theirs in zip(model.layers, hm.layers):
        a, m = theirs.self_attn, theirs.mlp
        pairs += [([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], ours.attention.wqkv.weight),
                  ([a.o_proj.weight], ours.attention.wo.weight),
                  ([m.gate_proj.weight, m.up_proj.weight], ours.feed_forward.gate_up.weight),
                  ([m.down_proj.weight], ours.feed_forward.down.weight),
                  ([theirs.input_layernorm.weight], ours.attention_norm.weight),
                  ([theirs.post_attention_layernorm.weight], ours.ffn_norm.weight)]
    return pairs


def _pairs_baseline(model: BaselineLM, hf) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    hm = hf.model
    pairs = [([hm.embed_tokens.weight], model.emb.weight), ([hm.norm.weight], model.norm.weight)]
    if model.head.weight is not model.emb.weight:
        pairs.append(([hf.lm_head.weight], model.head.weight))
    for ours, theirs in zip(model.blocks, hm.layers):
        a, m = theirs.self_attn, theirs.mlp
        pairs += [([a.q_proj.weight], ours.wq.weight), ([a.k_proj.weight], ours.wk.weight),
                  ([a.v_proj.weight], ours.wv.weight), ([a.o_proj.weight], ours.wo.weight),
                  ([m.gate_proj.weight], ours.gate.weight), ([m.up_proj.weight], ours.up.weight),
                  ([m.down_proj.weight], ours.down.weight),
                  ([theirs.input_layernorm.weight], ours.norm1.weight),
                  ([theirs.post_attention_layernorm.weight], ours.norm2.weight)]
    return pairs


def _copy(pairs) -> None:
    with torch.no_grad():
        for theirs, ours in pairs:
            rows = torch.split(ours, [t.shape[0] for t in theirs], dim=0)
            for t, r in zip(theirs, rows):
                t.copy_(r)


def _twins(model_cls, pairs_fn, cfg: ModelConfig, dtype, seed: int):
    """``model_cls(cfg)`` with random weights, a Llama holding the same weights, and the pairs."""
    model = model_cls(cfg).to(dtype)
    _randomize(model, seed)
    hf = _llama(cfg, dtype)
    pairs = pairs_fn(model, hf)
    _copy(pairs)
    return model, hf, pairs


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def _hf_logits(hf, tokens, position_ids=None):
    return hf(input_ids=tokens, position_ids=position_ids, use_cache=False).logits


def _check(ours_logits, hf_logits, pairs, targets, tol):
    torch.testing.assert_close(ours_logits, hf_logits, **tol)
    for out in (ours_logits, hf_logits):
        F.cross_entropy(out.reshape(-1, V), targets.reshape(-1)).backward()
    for theirs, ours in pairs:
        assert ours.grad is not None and ours.grad.abs().max() > 0
        torch.testing.assert_close(ours.grad, torch.cat([t.grad for t in theirs], 0), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layout", sorted(CONFIGS))
def test_language_model_matches_llama(layout, dtype):
    model, hf, pairs = _twins(LanguageModel, _pairs_craft, _config(**CONFIGS[layout]), dtype, seed=1)
    tokens, targets = _data()
    _check(model(tokens), _hf_logits(hf, tokens), pairs, targets, TOL[dtype])


def test_language_model_document_mask_matches_llama_per_document():
    """doc_ids keep attention inside each document at its packed positions: the same as running
    Llama on each document alone with those position ids."""
    model, hf, pairs = _twins(LanguageModel, _pairs_craft, _config(**CONFIGS["gqa_tied"]), torch.float32, seed=2)
    tokens, targets = _data(seed=3)
    bounds = [(0, 5), (5, 21), (21, T)]
    doc_ids = torch.zeros(B, T, dtype=torch.long)
    for d, (a, b) in enumerate(bounds):
        doc_ids[:, a:b] = d
    ref = torch.cat([_hf_logits(hf, tokens[:, a:b], torch.arange(a, b).expand(B, -1)) for a, b in bounds], 1)
    _check(model(tokens, doc_ids=doc_ids), ref, pairs, targets, TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layout", sorted(CONFIGS))
def test_baseline_model_matches_llama(layout, dtype):
    model, hf, pairs = _twins(BaselineLM, _pairs_baseline, _config(**CONFIGS[layout]), dtype, seed=4)
    if dtype == torch.float64:  # Llama's rotary angles are float32 whatever the dtype
        model.inv_freq = model.inv_freq.float()
    tokens, targets = _data(seed=5)
    # float64: Llama normalises in float32, the baseline in float64
    tol = TOL[torch.float32] if dtype == torch.float32 else dict(rtol=1e-4, atol=1e-5)
    _check(model(tokens), _hf_logits(hf, tokens), pairs, targets, tol)
