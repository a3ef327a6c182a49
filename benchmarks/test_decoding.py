"""Decoding throughput, batch 1, ``tiny`` preset: ours against Hugging Face transformers'
``LlamaForCausalLM`` holding the same weights (the fused projections split), both greedy, 32 prompt
tokens, 128 new tokens, one thread.

Fair pairs, timed interleaved in one process (medians with min/max over the rounds):
- compiled vs compiled: ``generate_tokens(compile=True)`` (sampling fused into the compiled decode
  step) against ``hf.generate`` with its static cache and ``torch.compile`` through ``CompileConfig``
  (its documented route; forced on CPU), in both "default" and "reduce-overhead" modes, the faster
  one taken as the baseline. Ours in "reduce-overhead" is measured beside (kept if it helps on CPU).
- eager vs eager: ``generate_tokens`` against ``hf.generate`` with its default dynamic cache.
- extra column: ours against recomputing the whole context per token (a naive baseline).

Every result records the CPU model, its ISA flags, threads, the load average and the versions: the
development machine is shared by other jobs, so read the ratios (taken in one run) over the absolute
rates.
"""
import sys
from pathlib import Path

import pytest
import torch

from craft.generation import generate_tokens
from craft.models import LanguageModel, ModelConfig

sys.path.insert(0, str(Path(__file__).parent))
from _harness import interleaved_many, run_info  # noqa: E402

VOCAB = 258  # the byte tokenizer's vocabulary
PROMPT, NEW = 32, 128
ROUNDS = 7


def tiny_config() -> ModelConfig:
    return ModelConfig.preset("tiny", vocab_size=VOCAB)


def _decode_model():
    torch.manual_seed(0)
    return LanguageModel(tiny_config()).eval()


def _prompt(batch):
    return torch.randint(0, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))


def hf_twin(model: LanguageModel):
    """transformers.LlamaForCausalLM with ``model``'s weights (q/k/v and gate/up split out)."""
    import transformers  # the `bench` extra

    cfg = model.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_base, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        attn_implementation="sdpa")).eval()
    H, Hkv, hd, F = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(model.tok_embeddings.weight)
        hf.model.norm.weight.copy_(model.norm.weight)
        if not cfg.tie_embeddings:
            hf.lm_head.weight.copy_(model.output.weight)
        for ours, theirs in zip(model.layers, hf.model.layers):
            q, k, v = ours.attention.wqkv.weight.split([H * hd, Hkv * hd, Hkv * hd])
            theirs.self_attn.q_proj.weight.copy_(q)
            theirs.self_attn.k_proj.weight.copy_(k)
            theirs.self_attn.v_proj.weight.copy_(v)
            theirs.self_attn.o_proj.weight.copy_(ours.attention.wo.weight)
            g, u = ours.feed_forward.gate_up.weight.split([F, F])
            theirs.mlp.gate_proj.weight.copy_(g)
            theirs.mlp.up_proj.weight.copy_(u)
            theirs.mlp.down_proj.weight.copy_(ours.feed_forward.down.weight)
            theirs.input_layernorm.weight.copy_(ours.attention_norm.weight)
            theirs.post_attention_layernorm.weight.copy_(ours.ffn_norm.weight)
    return hf


def hf_generate(hf, p, static_mode: str | None):
    """``hf.generate`` greedy for NEW tokens; ``static_mode``: None = dynamic cache, eager; else
    static cache + torch.compile in that mode."""
    from transformers.generation.configuration_utils import CompileConfig

    kw = {}
    if static_mode is not None:
        cc = CompileConfig(fullgraph=True, mode=static_mode)
        cc._compile_all_devices = True  # transformers compiles on CUDA only unless told
        kw = dict(cache_implementation="static", compile_config=cc)

    def run():
        with torch.no_grad():
            return hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=NEW, min_new_tokens=NEW,
                               do_sample=False, pad_token_id=0, **kw)

    return run


def test_decode_batch1_vs_transformers(benchmark):
    import transformers

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m, p = _decode_model(), _prompt(1)
        hf = hf_twin(m)
        fns = {
            "ours_compiled": lambda: generate_tokens(m, p, NEW, temperature=0.0, compile=True),
            "ours_compiled_reduce_overhead": lambda: generate_tokens(m, p, NEW, temperature=0.0,
                                                                     compile="reduce-overhead"),
            "hf_static_compiled_default": hf_generate(hf, p, "default"),
            "hf_static_compiled_reduce_overhead": hf_generate(hf, p, "reduce-overhead"),
            "ours_eager": lambda: generate_tokens(m, p, NEW, temperature=0.0),
            "hf_eager": hf_generate(hf, p, None),
        }
        outs = {}
        for k, f in fns.items():  # compile and warm up outside the timing
            f()
            outs[k] = f()
        ref = outs["ours_eager"]
        for k, o in outs.items():  # same weights, same greedy tokens (allowing late fp divergence)
            assert torch.equal(o[:, :PROMPT + 16], ref[:, :PROMPT + 16]), k
        t = interleaved_many(fns, rounds=ROUNDS)
        benchmark.pedantic(fns["ours_compiled"], rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    info = benchmark.extra_info
    info.update(run_info(), transformers=transformers.__version__, preset="tiny", batch=1, prompt=PROMPT,
                new_tokens=NEW, rounds=ROUNDS, threads=1)
    for k, (med, lo, hi) in t.items():
        info[f"{k}_tokens_per_s"] = round(NEW / med, 1)
        info[f"{k}_tokens_per_s_range"] = [round(NEW / hi, 1), round(NEW / lo, 1)]
    hf_best = min(t["hf_static_compiled_default"][0], t["hf_static_compiled_reduce_overhead"][0])
    ours_best_mode = min(("default", t["ours_compiled"][0]), ("reduce-overhead", t["ours_compiled_reduce_overhead"][0]),
                         key=lambda kv: kv[1])
    info["compiled_vs_hf_static_compiled"] = round(hf_best / t["ours_compiled"][0], 2)
    info["ours_faster_compile_mode"] = ours_best_mode[0]
    info["eager_vs_hf_eager"] = round(t["hf_eager"][0] / t["ours_eager"][0], 2)
    info["goal"] = "compiled >= 1.5x HF static cache + compile; eager >= 1.0x HF eager"


@torch.no_grad()
def _recompute(model, prompt, n):
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, model.forward_inference(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_cache_vs_recompute(benchmark, batch):
    """Extra column, not a headline: the KV cache against recomputing the context per token (eager
    both: the cache's gain alone)."""
    m, p = _decode_model(), _prompt(batch)
    fns = {"cache": lambda: generate_tokens(m, p, NEW, temperature=0.0), "recompute": lambda: _recompute(m, p, NEW)}
    assert torch.equal(fns["cache"](), fns["recompute"]())
    t = interleaved_many(fns, rounds=3)
    benchmark.pedantic(fns["cache"], rounds=1, iterations=1)
    info = benchmark.extra_info
    info.update(run_info(), preset="tiny", batch=batch, prompt=PROMPT, new_tokens=NEW,
                baseline_kind="recompute context (naive)")
    info["tokens_per_s"] = round(batch * NEW / t["cache"][0])
    info["speedup_vs_recompute"] = round(t["recompute"][0] / t["cache"][0], 2)
