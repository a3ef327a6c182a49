"""Tokenizers: ``gpt2`` (real GPT-2 BPE, offline), ``byte`` and ``char``.

Every tokenizer has ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``,
``eos_id``/``pad_id`` (plus ``specials``: name -> id) and ``token_bytes`` (the bytes of every id,
in id order; what the link detector reads). ``to_dict``/``tokenizer_from_dict`` round-trip a
tokenizer through a checkpoint.

The character tokenizer uses the hierarchical (DVT) vocabulary layout: 0=``<unk>``, 1=``<pad>``,
2=``<eos>``, 3=``<join>``, then the characters of the corpus in code-point order.
"""
from __future__ import annotations

import abc
import functools
import importlib.util
import os
from typing import Iterable, Sequence

import tiktoken

DVT_SPECIALS = ("<unk>", "<pad>", "<eos>", "<join>")
UNK_ID, PAD_ID, EOS_ID, JOIN_ID = range(4)


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"ids: {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


class Tokenizer(abc.ABC):
    name: str
    specials: dict[str, int]

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included."""

    @property
    def eos_id(self) -> int:
        return self.specials["<eos>"]

    @property
    def pad_id(self) -> int:
        return self.specials["<pad>"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def gpt2_ranks_path() -> str:
    """Path of the official GPT-2 BPE ranks shipped in the openai-whisper package."""
    spec = importlib.util.find_spec("whisper")  # finds the package without importing it (no torch/numba import)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the gpt2 tokenizer needs the GPT-2 ranks from openai-whisper: pip install openai-whisper")
    path = os.path.join(list(spec.submodule_search_locations)[0], "assets", "gpt2.tiktoken")
    if not os.path.exists(path):
        raise FileNotFoundError(f"GPT-2 ranks not found at {path}; reinstall openai-whisper")
    return path


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 tiktoken ``Encoding`` (50257 ids, ``<|endoftext|>`` = 50256), built offline."""
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = load_tiktoken_bpe(gpt2_ranks_path())
    return tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257,
    )


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE. ``<|endoftext|>`` (50256) serves as both EOS and pad."""

    name = "gpt2"

    def __init__(self):
        self.encoding = gpt2_encoding()
        self.specials = {"<eos>": 50256, "<pad>": 50256}

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(_check_ids(ids, self.vocab_size))

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        return self.encoding.decode_tokens_bytes(list(range(self.vocab_size)))

    def to_dict(self) -> dict:
        return {"kind": "gpt2"}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, then ``<eos>`` = 256 and ``<pad>`` = 257."""

    name = "byte"

    def __init__(self):
        self.specials = {"<eos>": 256, "<pad>": 257}

    @property
    def vocab_size(self) -> int:
        return 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        ids = _check_ids(ids, self.vocab_size)
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        return [bytes([i]) for i in range(256)] + [b"<eos>", b"<pad>"]

    def to_dict(self) -> dict:
        return {"kind": "byte"}


class CharTokenizer(Tokenizer):
    """One id per character seen in a corpus, after the DVT specials 0..3; unseen characters map to ``<unk>``."""

    name = "char"

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars) - set(DVT_SPECIALS))
        if any(len(c) != 1 for c in chars):
            raise ValueError("chars: every entry must be a single character")
        self.chars = list(DVT_SPECIALS) + chars
        self.specials = {s: i for i, s in enumerate(DVT_SPECIALS)}
        self._index = {c: i for i, c in enumerate(self.chars) if i >= len(DVT_SPECIALS)}

    @classmethod
    def from_corpus(cls, texts: str | Iterable[str]) -> "CharTokenizer":
        if isinstance(texts, str):
            texts = [texts]
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(seen)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def join_id(self) -> int:
        return JOIN_ID

    def encode(self, text: str) -> list[int]:
        get = self._index.get
        return [get(c, UNK_ID) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        ids = _check_ids(ids, self.vocab_size)
        return "".join(self.chars[i] for i in ids if i >= len(DVT_SPECIALS))

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        return [c.encode("utf-8") for c in self.chars]

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars[len(DVT_SPECIALS):]}


def get_tokenizer(name: str, corpus: str | Iterable[str] | None = None) -> Tokenizer:
    """``gpt2``, ``byte``, or ``char`` (which needs ``corpus`` to build its vocabulary)."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        if corpus is None:
            raise ValueError("corpus: the char tokenizer builds its vocabulary from a corpus; pass corpus=texts")
        return CharTokenizer.from_corpus(corpus)
    raise ValueError(f"name={name!r}: expected one of 'gpt2', 'byte', 'char'")


def tokenizer_from_dict(d: dict) -> Tokenizer:
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind in ("gpt2", "byte"):
        return get_tokenizer(kind)
    raise ValueError(f"tokenizer dict: unknown kind {kind!r}")
