"""Decoding throughput: tokens/sec of the ``tiny`` preset with the KV cache against recomputing the
context and against Hugging Face transformers ``generate`` on a random Llama of the same shape."""
import pytest
import torch

from craft.generation import generate_tokens
from craft.models import LanguageModel, ModelConfig

VOCAB = 258  # the byte tokenizer's vocabulary
PROMPT, NEW = 32, 128


def tiny_config() -> ModelConfig:
    return ModelConfig.preset("tiny", vocab_size=VOCAB)


def _decode_model():
    torch.manual_seed(0)
    return LanguageModel(tiny_config()).eval()


def _prompt(batch):
    return torch.randint(0, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))


@torch.no_grad()
def _recompute(model, prompt, n):
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, model.forward_inference(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_cache_vs_recompute(compare, batch):
    m, p = _decode_model(), _prompt(batch)
    fast = lambda: generate_tokens(m, p, NEW, temperature=0.0, compile=True)  # noqa: E731
    assert torch.equal(fast(), _recompute(m, p, NEW))
    compare(fast, lambda: _recompute(m, p, NEW), units=batch * NEW, unit_name="tokens", baseline_reps=1,
            rounds=3, preset="tiny", batch=batch, prompt=PROMPT, new_tokens=NEW, baseline_kind="recompute context")


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_vs_transformers(compare, batch):
    import transformers  # the `bench` extra

    cfg = tiny_config()
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ff_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.context_length,
        rope_theta=cfg.rope_base, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        attn_implementation="sdpa")).eval()
    m, p = _decode_model(), _prompt(batch)

    def base():
        with torch.no_grad():
            out = hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=NEW, min_new_tokens=NEW,
                              do_sample=False, pad_token_id=0)
        assert out.shape == (batch, PROMPT + NEW)

    fast = lambda: generate_tokens(m, p, NEW, temperature=0.0, compile=True)  # noqa: E731
    base()
    compare(fast, base, units=batch * NEW, unit_name="tokens", baseline_reps=2, rounds=3, preset="tiny",
            batch=batch, prompt=PROMPT, new_tokens=NEW, baseline_kind="transformers generate",
            transformers=transformers.__version__, hf_params=sum(q.numel() for q in hf.parameters()))
