"""Text <-> nested byte units for the agents: paragraphs -> sentences -> words -> bytes.

Token ids are bytes shifted by 4 (``byte + 4``) so that 0 unk, 1 pad, 2 eos, 3 join stay free.
A word longer than ``width`` bytes is cut into pieces: every piece but the last holds
``width - 1`` bytes and ends with the join id (3), which says "glued to the next piece"; the
last piece holds the rest. A sentence ends after a word ending in ``. ! ? : ;`` or after
``max_words`` words (pieces), so every sentence unit fits the sentence agent. Paragraphs are
separated by blank lines.

The round trip is exact on :func:`normalize`'d text: whitespace runs inside a paragraph become
one space, paragraphs are joined by one blank line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

UNK_ID, PAD_ID, EOS_ID, JOIN_ID = 0, 1, 2, 3
BYTE_OFFSET = 4
VOCAB_SIZE = 256 + BYTE_OFFSET
_SENT_END = (".", "!", "?", ":", ";")
_PARA = re.compile(r"\n\s*\n")


def normalize(text: str) -> str:
    """The text as the agents give it back: paragraphs joined by a blank line, words by a space."""
    return "\n\n".join(" ".join(p.split()) for p in _PARA.split(text) if p.split())


def word_pieces(word: str, width: int) -> list[list[int]]:
    """Token ids of one word, cut into pieces of at most ``width`` ids (join id ends a non-final piece)."""
    if width < 2:
        raise ValueError(f"width: must be >= 2 to hold a byte and the join id, got {width}")
    ids = [b + BYTE_OFFSET for b in word.encode("utf-8")]
    out = []
    while len(ids) > width:
        out.append(ids[: width - 1] + [JOIN_ID])
        ids = ids[width - 1:]
    out.append(ids)
    return out


@dataclass
class Units:
    """A text as a nested batch: ``tokens`` (n_tokens,) int64 and ``level_offsets`` =
    [pieces -> tokens, sentences -> pieces, paragraphs -> sentences, document -> paragraphs]
    (the layout :class:`craft.data.dvt.DvtBatch` and ``build_dvt`` read; one tree per document)."""
    tokens: np.ndarray
    level_offsets: list


def text_to_units(texts: str | list[str], width: int = 16, max_words: int = 16) -> Units:
    """One tree per text (a document root over its paragraphs)."""
    if isinstance(texts, str):
        texts = [texts]
    tokens: list[int] = []
    w_off, s_off, p_off, d_off = [0], [0], [0], [0]
    for text in texts:
        for para in _PARA.split(text):
            words = para.split()
            if not words:
                continue
            n_in_sent = 0
            for k, word in enumerate(words):
                for piece in word_pieces(word, width):
                    tokens += piece
                    w_off.append(len(tokens))
                    n_in_sent += 1
                    if n_in_sent == max_words and piece[-1] == JOIN_ID:
                        s_off.append(len(w_off) - 1)
                        n_in_sent = 0
                if n_in_sent and (word.endswith(_SENT_END) or n_in_sent >= max_words or k == len(words) - 1):
                    s_off.append(len(w_off) - 1)
                    n_in_sent = 0
            p_off.append(len(s_off) - 1)
        d_off.append(len(p_off) - 1)
    i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Units(i64(tokens), [i64(w_off), i64(s_off), i64(p_off), i64(d_off)])


def pieces_to_words(pieces: list[list[int]]) -> list[str]:
    """Token-id pieces -> words (a piece ending in the join id is glued to the next piece)."""
    words, cur = [], b""
    for p in pieces:
        glued = bool(p) and p[-1] == JOIN_ID
        body = p[:-1] if glued else p
        cur += bytes(max(0, min(255, t - BYTE_OFFSET)) for t in body if t >= BYTE_OFFSET)
        if not glued:
            words.append(cur.decode("utf-8", errors="replace"))
            cur = b""
    if cur:
        words.append(cur.decode("utf-8", errors="replace"))
    return words


def units_to_text(pieces: list[list[int]], sentence_sizes: list[int], paragraph_sizes: list[int]) -> str:
    """Pieces grouped by sentence sizes (pieces per sentence) and paragraph sizes (sentences per paragraph)."""
    out, i, s = [], 0, 0
    sent_texts = []
    for n in sentence_sizes:
        sent_texts.append(pieces[i:i + n])
        i += n
    for n in paragraph_sizes:
        flat = [p for sent in sent_texts[s:s + n] for p in sent]
        out.append(" ".join(pieces_to_words(flat)))
        s += n
    return "\n\n".join(out)
