"""Shared helpers for the corpus / trainer / CLI / DDP tests: a small linked markdown corpus and a
model small enough to train in seconds on a loaded 2-core machine."""
from __future__ import annotations

from pathlib import Path

SMALL_MODEL = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_seq_len=32)
SMALL_SET_ARGS = [a for k, v in SMALL_MODEL.items() for a in ("--set", f"{k}={v}")]

TOPICS = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta"]


def write_corpus(folder: Path, repeat: int = 4) -> Path:
    """Six linked markdown documents (each links to the next; Zeta links to a missing page) plus a .txt file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(TOPICS):
        nxt = TOPICS[i + 1] if i + 1 < len(TOPICS) else "Missing Page"
        body = f"The {t.lower()} page talks about letter number {i}. See [{nxt}]({nxt}) next.\n" * repeat
        (folder / f"{t.lower()}.md").write_text(f"# {t}\n\n{body}![an image](Alpha)\n", encoding="utf-8")
    (folder / "notes.txt").write_text("plain notes without a heading\n" * repeat, encoding="utf-8")
    return folder
