"""Linked-document generation: KV cache + incremental document mask vs recomputing the whole packed
context every token (``NaiveLinkedGenerator``), same documents, same run.

Scenario: a LanguageModel (``tiny`` with the byte tokenizer, ``tiny`` / ``small`` with GPT-2's
vocabulary; random weights), a root
document that links to three documents generated on the way (links found by the real
LinkDetector; a logits processor scripts the text so both generators take the same path, greedy).
The KV-cache generator runs its one-token steps compiled (``compile=True``; the first run, which
compiles, is timed apart, and the eager figure is recorded too). Both run on 1 torch thread (batch-1 decoding of a small model gains nothing from more threads and
loses a lot on a shared CPU, where 2 spinning threads made every op ~100x slower).
"""
import time

import pytest
import torch

from craft.generation.linked import GenerationConfig, LinkedDocumentGenerator, resolve_config
from craft.generation.linked.naive import NaiveLinkedGenerator
from craft.models import LanguageModel, ModelConfig
from craft.tokenizers import get_tokenizer

PROMPT = "Overview:"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def scripted(tok, scripts):
    """Forces ``scripts[header]`` then EOS for the document starting with ``encode(header)``."""
    table = [(tok.encode(k), tok.encode(v) + [tok.eos_id]) for k, v in scripts.items()]

    def fn(logits, ids):
        h = ids[0]
        n = h.numel()
        for prefix, body in table:
            k = n - len(prefix)
            if 0 <= k < len(body) and h[: len(prefix)].tolist() == prefix:
                logits[0, body[k]] += 1e4
                return logits
        return logits

    return fn


def scenario(tok, words: int):
    body = " ".join(["the model writes words about documents"] * (words // 6))
    root = f" {body} [first](Topic One) {body} [second](Topic Two) {body} [third](Topic Three) {body}."
    children = {f"# Topic {n}\n": f"{body}." for n in ("One", "Two", "Three")}
    return {PROMPT: root, **children}


def run_once(cls, model, tok, cfg, scripts, compile=False):
    with torch.inference_mode():
        gen = cls(model, tok, cfg, None, [scripted(tok, scripts)], compile=compile)
        return gen.run(tok.encode(PROMPT))


@pytest.mark.parametrize("preset, tokenizer, words, cache", [
    ("tiny", "byte", 6, 512),  # what `craft train` builds by default (byte tokenizer, 258 ids)
    ("small", "byte", 6, 512),
    ("tiny", "gpt2", 24, None),  # 50257 ids: the output head (6.4M weights) dominates each step
    ("small", "gpt2", 24, None),  # the same documents as tiny-gpt2
])
def test_linked_generation_tokens_per_second(benchmark, preset, tokenizer, words, cache):
    tok = get_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.preset(preset, vocab_size=tok.vocab_size)).eval()
    scripts = scenario(tok, words)
    cfg = resolve_config(model, tok, GenerationConfig(temperature=0.0, max_new_tokens=10_000, max_link_depth=1,
                                                      max_context_length=cache))
    threads = torch.get_num_threads()

    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        ref = run_once(LinkedDocumentGenerator, model, tok, cfg, scripts, compile=True)  # compiles the step
        t_first = time.perf_counter() - t0
        n_tokens = ref.stats["sampled_tokens"]
        assert len(ref.auxiliary_documents) == 3 and all(d.status == "eos" for d in ref.get_all_documents())
        benchmark.pedantic(lambda: run_once(LinkedDocumentGenerator, model, tok, cfg, scripts, compile=True),
                           rounds=2, iterations=1)
        t_fast = benchmark.stats.stats.min
        t_eager = min(_timed(lambda: run_once(LinkedDocumentGenerator, model, tok, cfg, scripts)) for _ in range(2))
        t0 = time.perf_counter()
        naive = run_once(NaiveLinkedGenerator, model, tok, cfg, scripts)
        t_naive = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert [d.tokens.tolist() for d in naive.get_all_documents()] == [d.tokens.tolist() for d in ref.get_all_documents()]
    info = benchmark.extra_info
    info.update(preset=preset, tokenizer=tokenizer, cache_slots=cfg.max_context_length, params=model.num_parameters(), sampled_tokens=n_tokens,
                context_tokens=int(sum(len(d.tokens) for d in ref.get_all_documents())),
                tokens_per_s=round(n_tokens / t_fast, 1), baseline_tokens_per_s=round(n_tokens / t_naive, 1),
                speedup_vs_baseline=round(t_naive / t_fast, 2), fast_s=round(t_fast, 4), baseline_s=round(t_naive, 4),
                eager_tokens_per_s=round(n_tokens / t_eager, 1), first_run_with_compile_s=round(t_first, 2),
                device="cpu", torch=torch.__version__, threads=1)
