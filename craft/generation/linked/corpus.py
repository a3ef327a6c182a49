"""``DocumentCorpus``: read access to a pretokenized corpus directory during generation.

The directory (written by corpus pretokenization) holds ``meta.json`` (format 1: tokenizer,
dtype, eos id, counts, shard names), ``shard_XXXXX.bin`` (raw token ids, documents concatenated,
memory-mapped here) and ``index.sqlite`` (table ``documents(id, title, normalized, filename, shard,
offset, length)``, ``normalized = normalize_title(title)``).
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np

from craft.data.titles import normalize_title

_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


class DocumentCorpus:
    """``DocumentCorpus(path)``; ``get_document(title) -> np.int64 (n,) | None`` (exact title first,
    then a title with the same normalized form), ``has_document``, ``get_title_variants`` (the
    corpus titles matching exactly or after normalization, exact first), ``titles()``,
    ``title_trie(tokenizer)`` (for constrained link targets), ``close()``; a context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"path: corpus directory {str(self.path)!r} does not exist")
        meta_path, index_path = self.path / "meta.json", self.path / "index.sqlite"
        for p in (meta_path, index_path):
            if not p.exists():
                raise FileNotFoundError(f"path: {str(self.path)!r} is not a pretokenized corpus (missing {p.name})")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != 1:
            raise ValueError(f"path: unsupported corpus format {self.meta.get('format')!r} in {meta_path} (expected 1)")
        dtype = self.meta.get("dtype")
        if dtype not in _DTYPES:
            raise ValueError(f"path: meta.json dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.dtype = _DTYPES[dtype]
        self.eos_id = int(self.meta["eos_id"])
        self._shard_names = list(self.meta["shards"])
        self._shards: dict[int, np.ndarray] = {}
        self._db = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True, check_same_thread=False)
        self._tokenizer = None
        self._tries: dict = {}

    # ------------------------------------------------------------------ lookups
    def _check_open(self):
        if self._db is None:
            raise ValueError("DocumentCorpus: the corpus is closed")

    def _row(self, title: str):
        if not isinstance(title, str):
            raise TypeError(f"title: expected a str, got {type(title).__name__}")
        self._check_open()
        row = self._db.execute("SELECT id, title, filename, shard, offset, length FROM documents WHERE title = ?",
                               (title,)).fetchone()
        if row is None:
            row = self._db.execute("SELECT id, title, filename, shard, offset, length FROM documents "
                                   "WHERE normalized = ? ORDER BY id LIMIT 1", (normalize_title(title),)).fetchone()
        return row

    def _shard(self, i: int) -> np.ndarray:
        m = self._shards.get(i)
        if m is None:
            if not 0 <= i < len(self._shard_names):
                raise ValueError(f"index.sqlite names shard {i}, but meta.json lists {len(self._shard_names)}")
            p = self.path / self._shard_names[i]
            m = np.memmap(p, dtype=self.dtype, mode="r") if p.stat().st_size else np.zeros(0, self.dtype)
            self._shards[i] = m
        return m

    def get_document(self, title: str) -> np.ndarray | None:
        """The document's tokens, int64 (n,), or None when no title matches."""
        row = self._row(title)
        if row is None:
            return None
        _, _, _, shard, offset, length = row
        data = self._shard(shard)
        if offset < 0 or offset + length > len(data):
            raise ValueError(f"index.sqlite: document {title!r} spans [{offset}, {offset + length}) past the "
                             f"end of shard {shard} ({len(data)} tokens); the corpus is corrupt")
        return np.array(data[offset:offset + length], dtype=np.int64)

    def resolve_title(self, title: str) -> str | None:
        """The corpus title ``get_document(title)`` would return, or None."""
        row = self._row(title)
        return None if row is None else row[1]

    def document_filename(self, title: str) -> str | None:
        row = self._row(title)
        return None if row is None else row[2]

    def has_document(self, title: str) -> bool:
        return self._row(title) is not None

    def get_title_variants(self, title: str) -> list[str]:
        """Corpus titles equal to ``title``, then those with the same ``normalize_title`` (by id)."""
        if not isinstance(title, str):
            raise TypeError(f"title: expected a str, got {type(title).__name__}")
        self._check_open()
        rows = self._db.execute("SELECT title FROM documents WHERE title = ? OR normalized = ? ORDER BY id",
                                (title, normalize_title(title))).fetchall()
        out = [r[0] for r in rows]
        if title in out:
            out.remove(title)
            out.insert(0, title)
        return out

    def titles(self) -> list[str]:
        self._check_open()
        return [r[0] for r in self._db.execute("SELECT title FROM documents ORDER BY id")]

    def __len__(self) -> int:
        self._check_open()
        return int(self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def __contains__(self, title) -> bool:
        return isinstance(title, str) and self.has_document(title)

    @property
    def tokenizer(self):
        """The tokenizer the corpus was pretokenized with (from meta.json)."""
        if self._tokenizer is None:
            from craft.tokenizers import tokenizer_from_dict

            self._tokenizer = tokenizer_from_dict(self.meta["tokenizer"])
        return self._tokenizer

    def title_trie(self, tokenizer=None, suffix: str = ")"):
        """A ``craft_kernels.Trie`` over ``tokenizer.encode(title + suffix)`` for every title, item ids
        = document ids; built once per tokenizer and suffix. Used to keep link targets inside the
        corpus: the suffix is the closing parenthesis, so a finished path closes the link."""
        tok = tokenizer or self.tokenizer
        key = (id(tok), suffix)
        if key not in self._tries:
            from craft_kernels import Trie

            self._check_open()
            rows = self._db.execute("SELECT id, title FROM documents ORDER BY id").fetchall()
            seqs = [tok.encode(t + suffix) for _, t in rows]
            self._tries[key] = Trie(seqs, item_ids=np.array([r[0] for r in rows], dtype=np.int64))
        return self._tries[key]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._shards.clear()
        self._tries.clear()

    def __enter__(self) -> "DocumentCorpus":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DocumentCorpus({str(self.path)!r})"
