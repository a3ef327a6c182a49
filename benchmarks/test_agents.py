"""Word agent training step on tiny-shakespeare's words: join_pad rows (many words per row) vs
pad-to-max (every word padded to the piece width, the baseline), same model, same words; plus the
padding waste and the activation memory against a per-level budget."""
from pathlib import Path

import numpy as np
import pytest
import torch

from craft.agents.stack import activation_bytes, budget_batches
from craft.agents.text import word_pieces
from craft.agents.word import WordAgent, WordAgentConfig, pack_units, pad_to_max

SHAKESPEARE = Path("/work/shared/data/text/tinyshakespeare.txt")


@pytest.fixture(scope="module")
def words():
    if not SHAKESPEARE.is_file():
        pytest.skip("tinyshakespeare.txt not found")
    pieces = [p for w in SHAKESPEARE.read_text()[:40000].split() for p in word_pieces(w, 16)][:2048]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return np.concatenate(pieces).astype(np.int64), offsets


def test_word_agent_step_join_pad_vs_pad_to_max(compare, words):
    tok, off = words
    torch.manual_seed(0)
    model = WordAgent(WordAgentConfig())
    packed = pack_units(tok, off, 128)
    padded = pad_to_max(tok, off, 16)

    def step(p):
        return lambda: model.loss(p)[0].backward()

    bytes_packed = activation_bytes(lambda: model.loss(packed))
    bytes_padded = activation_bytes(lambda: model.loss(padded))
    per_pos = bytes_packed / packed.ids.numel()
    budget = 64 * 128 * per_pos
    plan = budget_batches(np.diff(off), 128, 16, per_pos, int(budget))
    compare(step(packed), step(padded), units=len(off) - 1, unit_name="words",
            join_pad_waste=round(plan.join_pad_waste, 4), join_share=round(plan.join_share, 4),
            pad_to_max_waste=round(plan.pad_to_max_waste, 4),
            activation_mb_packed=round(bytes_packed / 2 ** 20, 2), activation_mb_padded=round(bytes_padded / 2 ** 20, 2))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager_vs_eager", "compiled_vs_compiled"])
def test_lm_training_step_hierarchical_vs_flat(compare, benchmark, compiled):
    """Training step (forward + backward, bf16 autocast as in `craft agents train --level lm`) of the
    hierarchical LM against the flat byte model of the same parameter count, on 8 rows of
    tiny-shakespeare each: whole-word rows of 320 stream positions vs 256-byte rows; both eager, or
    both ``torch.compile``'d (`--compile`). The ratio reported as ``bytes_per_second_ratio`` is text
    bytes per second, hierarchical over flat."""
    if not SHAKESPEARE.is_file():
        pytest.skip("tinyshakespeare.txt not found")
    from craft.agents import lm as H

    data = SHAKESPEARE.read_bytes()[:200000]
    torch.set_num_threads(1)  # as in the documented runs (OMP_NUM_THREADS=1)
    torch.manual_seed(0)
    hier, flat = H.HierarchicalLM(), H.flat_model()
    s = H.word_stream(data, hier.config.max_word_len)
    cuts = H.stream_windows(s.offsets, hier.config.max_seq_len)
    batch = H.make_batch(s, list(zip(cuts[:8].tolist(), cuts[1:9].tolist())), hier.config.max_seq_len)
    x, y = H.byte_windows(data, flat.config.max_seq_len)
    x, y = x[:8], y[:8]
    fh, ff = (torch.compile(hier), torch.compile(flat)) if compiled else (hier, flat)

    def step(fn, model):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = fn()
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    ratio = compare(step(lambda: fh(batch)[1], hier), step(lambda: ff(x, targets=y)[1], flat),
                    units=batch.n_bytes, unit_name="bytes", rounds=9, warmup=2,
                    hier_bytes=batch.n_bytes, flat_bytes=int((y != -100).sum()),
                    hier_parameters=hier.num_parameters(), flat_parameters=flat.num_parameters(), compiled=compiled)
    bytes_ratio = ratio * batch.n_bytes / int((y != -100).sum())
    benchmark.extra_info["bytes_per_second_ratio"] = round(bytes_ratio, 3)
    print(f"\nhierarchical / flat training bytes per second: {bytes_ratio:.2f}x (step time ratio {ratio:.2f})")
    assert bytes_ratio > 0
