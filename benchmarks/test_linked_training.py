"""The training step with linked packing (``cross_doc_link`` attention) against ``doc_causal``
packing, same model, same tokens per step, same autocast, eager: the price of reading across links.

Both batches come from the same synthetic linked corpus of ~250-token documents (each links to
three others): ours from :class:`craft.data.linked_packing.LinkedPacking`, the baseline from
:class:`craft.data.packing.PackedSequences` windows (what ``craft train`` without ``--linked``
runs). The goal is ours <= 1.2x the baseline's time (ratio >= 0.83)."""
import numpy as np
import pytest
import torch

from craft.data import Document, PretokenizedCorpus, pretokenize
from craft.data.linked_packing import LinkedPacking
from craft.data.packing import PackedSequences
from craft.models import LanguageModel, ModelConfig
from craft_kernels._backend import bf16_is_fast, calibrate_common, dispatch_report

BATCH, SEQ = 16, 256


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 200
    words = ["alpha", "beta", "gamma", "delta", "kernel", "page", "module", "value", "token", "link"]
    docs = []
    for i in range(n):
        targets = [f"Page {int(j)}" for j in rng.choice(n, 3, replace=False) if j != i]
        body = " ".join(rng.choice(words, 30)) + " " + " ".join(f"[see]({t})" for t in targets)
        docs.append(Document(f"Page {i}", f"# Page {i}\n\n{body}\n", links=targets))
    c = PretokenizedCorpus(pretokenize(docs, tmp_path_factory.mktemp("lt") / "pre", "byte"))
    yield c
    c.close()


def _step(model, batch, bf16):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(batch["tokens"], batch["doc_ids"], batch["targets"], batch.get("links"))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


@pytest.mark.parametrize("autocast", ["machine", "fp32"])
def test_linked_step_vs_doc_causal_step(compare, corpus, autocast):
    """One AdamW step of the tiny preset on BATCH x SEQ tokens: linked packing (cross_doc_link)
    against doc_causal packing, eager, same autocast."""
    bf16 = bf16_is_fast("cpu") if autocast == "machine" else False
    cfg = ModelConfig.preset("tiny", vocab_size=258)
    calibrate_common(head_dim=cfg.head_dim, seq_len=SEQ)
    linked = LinkedPacking(corpus, SEQ, plain_share=0.0, seed=0).batch(range(BATCH))
    plain = PackedSequences(corpus, SEQ).batch(range(BATCH))
    torch.manual_seed(0)
    ours = _step(LanguageModel(cfg), linked, bf16)
    torch.manual_seed(0)
    base = _step(LanguageModel(cfg), plain, bf16)
    ours(), base()
    docs_per_row = float((linked["doc_ids"].max(1).values + 1).float().mean())
    compare(ours, base, units=BATCH * SEQ, unit_name="tokens", rounds=5, warmup=1, preset="tiny",
            batch=f"{BATCH}x{SEQ}", autocast="bf16" if bf16 else "fp32", linked_docs_per_row=docs_per_row,
            baseline_kind="doc_causal packing, same model and autocast, eager",
            dispatch=str(dispatch_report()["doc_attention"]))
