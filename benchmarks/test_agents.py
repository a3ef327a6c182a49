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
