"""Pretokenized corpora: memory-mapped token shards plus an SQLite index of documents and links.

Directory layout (format 1, see CONTRACTS.md):
- ``meta.json``: format, tokenizer (``to_dict``), dtype (uint16 when the vocabulary fits, else uint32),
  eos_id, n_tokens, n_documents, shards;
- ``shard_XXXXX.bin``: raw token ids, documents concatenated without separators (a document never
  straddles two shards);
- ``index.sqlite``: ``documents(id, title, normalized, filename, shard, offset, length)`` and
  ``links(src, dst_title, dst)`` (``dst`` NULL when the target is not a title of the corpus);
- ``source.json`` (craft's own): the source folder and a fingerprint of its files, so
  :func:`ensure_pretokenized` rebuilds only when the source changed.
The directory is written under a temporary name and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from craft.data.corpus import CorpusError, Document, corpus_files, read_folder
from craft.data.titles import create_filename, normalize_title
from craft.tokenizers import Tokenizer, get_tokenizer, tokenizer_from_dict

FORMAT = 1
DEFAULT_SHARD_TOKENS = 1 << 26


def _tokenizer(tokenizer: str | Tokenizer, docs: Sequence[Document]) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if not isinstance(tokenizer, str):
        raise TypeError(f"tokenizer: expected a name ('byte', 'char', 'gpt2') or a Tokenizer, got {tokenizer!r}")
    return get_tokenizer(tokenizer, corpus=[d.text for d in docs] if tokenizer == "char" else None)


def source_fingerprint(folder: str | Path) -> str:
    """SHA-256 over the relative path, size and mtime of every text file of a folder corpus."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in corpus_files(folder):
        st = p.stat()
        h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def pretokenize(source: str | Path | Sequence[Document], out_dir: str | Path, tokenizer: str | Tokenizer = "byte",
                shard_tokens: int = DEFAULT_SHARD_TOKENS) -> Path:
    """Tokenizes a folder corpus (or a list of Documents) into ``out_dir`` (replaced if present).

    ``tokenizer``: a name (``char`` builds its vocabulary from these documents) or a Tokenizer.
    ``shard_tokens``: the most tokens per shard (a longer document gets a shard of its own).
    Returns ``out_dir``.
    """
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"shard_tokens: expected a positive int, got {shard_tokens!r}")
    folder = None
    if isinstance(source, (str, Path)):
        folder = Path(source)
        docs = read_folder(folder)
    else:
        docs = list(source)
        if not docs or not all(isinstance(d, Document) for d in docs):
            raise CorpusError("source: expected a folder or a non-empty list of craft.data.Document")
        if len({d.title for d in docs}) != len(docs):
            raise CorpusError("source: document titles must be unique")
    tok = _tokenizer(tokenizer, docs)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        title_ids = {d.title: i for i, d in enumerate(docs)}
        norm_ids: dict[str, int] = {}
        for i, d in enumerate(docs):
            norm_ids.setdefault(normalize_title(d.title), i)
        rows, links, shards = [], [], []
        buf: list[np.ndarray] = []
        used = 0

        def flush():
            nonlocal buf, used
            if buf:
                name = f"shard_{len(shards):05d}.bin"
                np.concatenate(buf).astype(dtype, copy=False).tofile(tmp / name)
                shards.append(name)
            buf, used = [], 0

        n_tokens = 0
        for i, d in enumerate(docs):
            ids = np.asarray(tok.encode(d.text), dtype=np.int64)
            if used and used + len(ids) > shard_tokens:
                flush()
            rows.append((i, d.title, normalize_title(d.title), create_filename(d.title), len(shards), used, len(ids)))
            buf.append(ids)
            used += len(ids)
            n_tokens += len(ids)
            for target in d.links:
                dst = title_ids.get(target, norm_ids.get(normalize_title(target)))
                links.append((i, target, dst))
        flush()
        db = sqlite3.connect(tmp / "index.sqlite")
        db.executescript(
            "CREATE TABLE documents(id INTEGER PRIMARY KEY, title TEXT NOT NULL UNIQUE, normalized TEXT NOT NULL, "
            "filename TEXT NOT NULL, shard INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL);"
            "CREATE INDEX documents_normalized ON documents(normalized);"
            "CREATE TABLE links(src INTEGER NOT NULL, dst_title TEXT NOT NULL, dst INTEGER);"
            "CREATE INDEX links_src ON links(src);")
        db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO links VALUES (?, ?, ?)", links)
        db.commit()
        db.close()
        meta = {"format": FORMAT, "tokenizer": tok.to_dict(), "dtype": np.dtype(dtype).name, "eos_id": tok.eos_id,
                "n_tokens": n_tokens, "n_documents": len(docs), "shards": shards}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if folder is not None:
            (tmp / "source.json").write_text(json.dumps(
                {"folder": str(folder.resolve()), "fingerprint": source_fingerprint(folder),
                 "tokenizer": tok.name}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def is_pretokenized(path: str | Path) -> bool:
    path = Path(path)
    return (path / "meta.json").is_file() and (path / "index.sqlite").is_file()


def default_pretokenized_dir(folder: str | Path, tokenizer: str) -> Path:
    """Where ``craft corpus build`` / ``craft train`` keep a folder's pretokenized copy: under
    ``$CRAFT_HOME/corpora/``, named after the folder, a hash of its absolute path, and the tokenizer."""
    from craft.data.builtin import craft_home

    folder = Path(folder).resolve()
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    return craft_home() / "corpora" / f"{folder.name}-{tag}-{tokenizer}"


def ensure_pretokenized(folder: str | Path, tokenizer: str = "byte", out_dir: str | Path | None = None) -> Path:
    """The pretokenized copy of a folder corpus, (re)built when missing or when the folder changed.
    A folder that already is a pretokenized directory is returned as is."""
    if is_pretokenized(folder):
        return Path(folder)
    out = Path(out_dir) if out_dir is not None else default_pretokenized_dir(folder, tokenizer)
    src = out / "source.json"
    if is_pretokenized(out) and src.is_file():
        info = json.loads(src.read_text())
        if info.get("tokenizer") == tokenizer and info.get("fingerprint") == source_fingerprint(folder):
            return out
    return pretokenize(folder, out, tokenizer)


class PretokenizedCorpus:
    """Read access to a pretokenized directory: ``tokenizer``, ``eos_id``, ``n_documents``,
    ``doc_lengths`` (n_documents,) int64, ``document(i)`` (length,) ids, ``title(i)``, ``find(title)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise CorpusError(f"{str(self.path)!r} is not a pretokenized corpus (no meta.json); "
                              "build one with `craft corpus build`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise CorpusError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT}")
        self.dtype = np.dtype(self.meta["dtype"])
        self.eos_id = int(self.meta["eos_id"])
        self.tokenizer = tokenizer_from_dict(self.meta["tokenizer"])
        self.shards = [np.memmap(self.path / name, dtype=self.dtype, mode="r")
                       if (self.path / name).stat().st_size else np.zeros(0, self.dtype)
                       for name in self.meta["shards"]]
        db = sqlite3.connect(f"file:{self.path / 'index.sqlite'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, title, shard, offset, length FROM documents ORDER BY id").fetchall()
        finally:
            db.close()
        self.titles = [r[1] for r in rows]
        self.doc_shard = np.array([r[2] for r in rows], dtype=np.int64)
        self.doc_offset = np.array([r[3] for r in rows], dtype=np.int64)
        self.doc_lengths = np.array([r[4] for r in rows], dtype=np.int64)
        self._by_title = {t: i for i, t in enumerate(self.titles)}

    @property
    def n_documents(self) -> int:
        return len(self.titles)

    @property
    def n_tokens(self) -> int:
        return int(self.doc_lengths.sum())

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (a read-only view of its shard)."""
        if not 0 <= i < self.n_documents:
            raise IndexError(f"document {i}: expected 0 <= i < {self.n_documents}")
        o = self.doc_offset[i]
        return self.shards[self.doc_shard[i]][o:o + self.doc_lengths[i]]

    def title(self, i: int) -> str:
        return self.titles[i]

    def find(self, title: str) -> int | None:
        return self._by_title.get(title)
