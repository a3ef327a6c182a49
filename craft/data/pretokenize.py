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
The directory is written under a temporary name and renamed into place; an existing ``out_dir``
is replaced only when it is an earlier build (:func:`check_out_dir`). :class:`PretokenizedCorpus`
is the one reader (training and linked generation) and validates a directory once, at open time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from craft_kernels import check_int

from craft.data.corpus import CorpusError, CorpusNotFoundError, Document, corpus_files, read_folder
from craft.data.files import atomic_write, is_inside
from craft.data.titles import create_filename, normalize_title
from craft.tokenizers import Tokenizer, get_tokenizer, tokenizer_from_dict

FORMAT = 1
DEFAULT_SHARD_TOKENS = 1 << 26
#: the token dtypes the writer produces (the only ones a reader accepts)
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
SHARD_NAME = re.compile(r"shard_\d{5,}\.bin")
#: every name a corpus build writes; a folder holding only these (and meta.json) is a previous build
_BUILD_FILES = frozenset({"meta.json", "index.sqlite", "source.json"})


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


def is_corpus_build(path: str | Path) -> bool:
    """True when ``path`` is a folder that holds a corpus build and nothing else: ``meta.json``,
    ``index.sqlite``, optionally ``source.json`` and ``shard_XXXXX.bin`` files (no sub-folders)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not is_pretokenized(path):
        return False
    return all((e.name in _BUILD_FILES or SHARD_NAME.fullmatch(e.name)) and e.is_file() and not e.is_symlink()
               for e in path.iterdir())


def check_out_dir(out_dir: str | Path, source: str | Path | None = None, name: str = "out_dir") -> Path:
    """Refuses an output folder that a corpus build must not replace; returns it as a Path.

    Allowed: a path that does not exist, an empty folder, or a previous corpus build
    (:func:`is_corpus_build`). Refused: anything else (a file, a folder with other content), the
    current folder or one above it, and — when ``source`` (the folder of documents) is given — the
    source itself or a folder that contains it. ``name`` is how the error names the argument.
    """
    out = Path(out_dir)
    if source is not None and is_inside(source, out):
        raise CorpusError(f"{name} {str(out)!r}: is the source folder {str(source)!r} or contains it; a corpus build "
                          "replaces its output folder, so choose a folder outside the source")
    if is_inside(Path.cwd(), out):
        raise CorpusError(f"{name} {str(out)!r}: is the current folder or contains it; choose a new folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CorpusError(f"{name} {str(out)!r}: exists and is not a folder; choose a new folder")
    if out.is_dir() and any(out.iterdir()) and not is_corpus_build(out):
        raise CorpusError(f"{name} {str(out)!r}: exists and is not a previous corpus build (it holds other files); "
                          "choose a new or empty folder")
    return out


def pretokenize(source: str | Path | Sequence[Document], out_dir: str | Path, tokenizer: str | Tokenizer = "byte",
                shard_tokens: int = DEFAULT_SHARD_TOKENS) -> Path:
    """Tokenizes a folder corpus (or a list of Documents) into ``out_dir``.

    ``out_dir`` may be new, empty, or a previous corpus build, which is replaced atomically (the
    new build is written beside it and renamed into place); anything else is refused with a
    CorpusError before any work (see :func:`check_out_dir`): the source folder, a folder that
    contains it, the current folder, or a folder holding other files.

    ``tokenizer``: a name (``char`` builds its vocabulary from these documents) or a Tokenizer.
    ``shard_tokens``: the most tokens per shard (a longer document gets a shard of its own).
    Returns ``out_dir``.
    """
    check_int(shard_tokens, "shard_tokens", 1)
    folder = Path(source) if isinstance(source, (str, os.PathLike)) else None
    out_dir = check_out_dir(out_dir, folder)
    if folder is not None:
        docs = read_folder(folder)
    else:
        docs = list(source)
        if not docs or not all(isinstance(d, Document) for d in docs):
            raise CorpusError("source: expected a folder or a non-empty list of craft.data.Document")
        if len({d.title for d in docs}) != len(docs):
            raise CorpusError("source: document titles must be unique")
    tok = _tokenizer(tokenizer, docs)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
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
        db = sqlite3.connect(tmp / "index.sqlite")  # a plain path, not a URI: '#', '?', '%' stay literal
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
        if folder is not None:
            atomic_write(tmp / "source.json", json.dumps(
                {"folder": str(folder.resolve()), "fingerprint": source_fingerprint(folder), "tokenizer": tok.name}))
        atomic_write(tmp / "meta.json", json.dumps(meta))  # last: its presence marks a complete build
        _replace_dir(tmp, out_dir, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _replace_dir(new: Path, out_dir: Path, source: Path | None) -> None:
    """Renames the finished build ``new`` to ``out_dir``; a previous build there is moved aside
    first and deleted after, so ``out_dir`` is never half-written. Re-checks ``out_dir`` right
    before (it may have changed while tokenizing)."""
    check_out_dir(out_dir, source)
    old = None
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
            os.replace(out_dir, old)  # rename over the empty temp folder
        else:
            out_dir.rmdir()
    try:
        os.replace(new, out_dir)
    except OSError:
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


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
    """The one reader of a pretokenized directory, used by training and by linked generation.

    Everything is validated once, here, with messages naming the file: ``meta.json`` (format, a
    token dtype the writer produces — ``uint16`` or ``uint32`` —, tokenizer, eos id, counts, shard
    names of the form ``shard_XXXXX.bin`` so nothing outside the directory is opened), each shard's
    size (a whole number of tokens), ``index.sqlite`` (ids 0..n-1, every document inside its shard)
    and every token id (< the tokenizer's ``vocab_size``). A corpus that passes cannot make a
    reader index out of bounds or hand the model an id outside its embedding.

    By position: ``n_documents``, ``n_tokens``, ``doc_lengths`` (n_documents,) int64,
    ``document(i)`` (a read-only view of its shard), ``title(i)``, ``find(title)`` (exact title ->
    id or None). By title: ``get_document(title)`` int64 copy or None (exact title first, then the
    first title with the same ``normalize_title``), ``resolve_title``, ``document_filename``,
    ``has_document`` / ``in``, ``get_title_variants``, ``titles()``, ``len()``,
    ``title_trie(tokenizer)`` (for constrained link targets). ``close()`` releases the shards; the
    object is a context manager. Missing directories or files raise :class:`CorpusNotFoundError`
    (a FileNotFoundError), anything else :class:`CorpusError` (a ValueError).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CorpusNotFoundError(f"path: corpus directory {str(self.path)!r} does not exist or is not a directory")
        for name in ("meta.json", "index.sqlite"):
            if not (self.path / name).is_file():
                raise CorpusNotFoundError(f"path: {str(self.path)!r} is not a pretokenized corpus (missing {name}); "
                                          "build one with `craft corpus build`")
        self.meta = _read_meta(self.path / "meta.json")
        self.dtype = np.dtype(TOKEN_DTYPES[self.meta["dtype"]])
        self.eos_id = int(self.meta["eos_id"])
        self.tokenizer = self.meta["_tokenizer"]
        del self.meta["_tokenizer"]
        self.shards = [self._open_shard(name) for name in self.meta["shards"]]
        rows = _read_index(self.path / "index.sqlite")
        self._titles = [r[1] for r in rows]
        self._normalized = [r[2] for r in rows]
        self._filenames = [r[3] for r in rows]
        self.doc_shard = np.array([r[4] for r in rows], dtype=np.int64)
        self.doc_offset = np.array([r[5] for r in rows], dtype=np.int64)
        self.doc_lengths = np.array([r[6] for r in rows], dtype=np.int64)
        self._check_index()
        self._check_token_ids()
        self._by_title = {t: i for i, t in enumerate(self._titles)}
        self._by_normalized: dict[str, list[int]] = {}
        for i, n in enumerate(self._normalized):
            self._by_normalized.setdefault(n, []).append(i)
        self._tries: dict = {}
        self._closed = False

    # ------------------------------------------------------------------ validation (once, at open)
    def _open_shard(self, name: str) -> np.ndarray:
        p = self.path / name
        if not p.is_file() or p.is_symlink():
            raise CorpusNotFoundError(f"{self.path / 'meta.json'}: shard {name!r} is missing (or not a regular file)")
        size = p.stat().st_size
        if size % self.dtype.itemsize:
            raise CorpusError(f"{p}: {size} bytes is not a whole number of {self.dtype.name} tokens; "
                              "the corpus is truncated, rebuild it with `craft corpus build`")
        return np.memmap(p, dtype=self.dtype, mode="r") if size else np.zeros(0, self.dtype)

    def _check_index(self) -> None:
        index = self.path / "index.sqlite"
        n = len(self._titles)
        for key in ("n_documents",):
            if key in self.meta and self.meta[key] != n:
                raise CorpusError(f"{index}: {n} documents, but meta.json says {key}={self.meta[key]}")
        if n == 0:
            return
        shard_len = np.array([len(s) for s in self.shards], dtype=np.int64)
        bad = np.flatnonzero((self.doc_shard < 0) | (self.doc_shard >= len(self.shards)))
        if bad.size:
            raise CorpusError(f"{index}: document {self._titles[bad[0]]!r} names shard {self.doc_shard[bad[0]]}, "
                              f"but meta.json lists {len(self.shards)} shards")
        end = self.doc_offset + self.doc_lengths
        bad = np.flatnonzero((self.doc_offset < 0) | (self.doc_lengths < 0) | (end > shard_len[self.doc_shard]))
        if bad.size:
            i = bad[0]
            raise CorpusError(f"{index}: document {self._titles[i]!r} spans [{self.doc_offset[i]}, {end[i]}) outside "
                              f"{self.meta['shards'][self.doc_shard[i]]} ({shard_len[self.doc_shard[i]]} tokens)")
        if "n_tokens" in self.meta and self.meta["n_tokens"] != int(self.doc_lengths.sum()):
            raise CorpusError(f"{index}: {int(self.doc_lengths.sum())} tokens, but meta.json says "
                              f"n_tokens={self.meta['n_tokens']}")

    def _check_token_ids(self) -> None:
        vocab = self.tokenizer.vocab_size
        if np.iinfo(self.dtype).max < vocab:
            return  # every storable id fits
        for name, shard in zip(self.meta["shards"], self.shards):
            for lo in range(0, len(shard), 1 << 24):  # bounded memory on huge shards
                chunk = shard[lo:lo + (1 << 24)]
                top = int(chunk.max()) if len(chunk) else 0
                if top >= vocab:
                    raise CorpusError(f"{self.path / name}: token id {top} is outside the tokenizer's vocabulary "
                                      f"[0, {vocab}); rebuild the corpus with `craft corpus build`")

    # ------------------------------------------------------------------ by position
    def _check_open(self) -> None:
        if self._closed:
            raise CorpusError(f"{self!r}: the corpus is closed")

    @property
    def n_documents(self) -> int:
        return len(self._titles)

    @property
    def n_tokens(self) -> int:
        return int(self.doc_lengths.sum())

    def __len__(self) -> int:
        return self.n_documents

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (a read-only view of its shard, the stored dtype)."""
        self._check_open()
        if not 0 <= i < self.n_documents:
            raise IndexError(f"document {i}: expected 0 <= i < {self.n_documents}")
        o = self.doc_offset[i]
        return self.shards[self.doc_shard[i]][o:o + self.doc_lengths[i]]

    def title(self, i: int) -> str:
        return self._titles[i]

    def titles(self) -> list[str]:
        """Every title, by document id."""
        return list(self._titles)

    def find(self, title: str) -> int | None:
        """The id of the document titled exactly ``title``, or None."""
        return self._by_title.get(title)

    # ------------------------------------------------------------------ by title
    def _lookup(self, title: str) -> int | None:
        if not isinstance(title, str):
            raise TypeError(f"title: expected a str, got {type(title).__name__}")
        self._check_open()
        i = self._by_title.get(title)
        if i is None:
            same = self._by_normalized.get(normalize_title(title))
            i = same[0] if same else None
        return i

    def get_document(self, title: str) -> np.ndarray | None:
        """The document's tokens, int64 (n,) (a copy), or None when no title matches (exact title
        first, then the first document whose title has the same ``normalize_title``)."""
        i = self._lookup(title)
        return None if i is None else np.array(self.document(i), dtype=np.int64)

    def resolve_title(self, title: str) -> str | None:
        """The corpus title ``get_document(title)`` would return, or None."""
        i = self._lookup(title)
        return None if i is None else self._titles[i]

    def document_filename(self, title: str) -> str | None:
        i = self._lookup(title)
        return None if i is None else self._filenames[i]

    def has_document(self, title: str) -> bool:
        return self._lookup(title) is not None

    def __contains__(self, title) -> bool:
        return isinstance(title, str) and self.has_document(title)

    def get_title_variants(self, title: str) -> list[str]:
        """Corpus titles equal to ``title`` (first), then those with the same ``normalize_title`` (by id)."""
        if not isinstance(title, str):
            raise TypeError(f"title: expected a str, got {type(title).__name__}")
        self._check_open()
        out = [self._titles[i] for i in self._by_normalized.get(normalize_title(title), [])]
        if title in self._by_title and title not in out:  # a title whose normalized form differs from its own
            out.append(title)
        if title in out:
            out.remove(title)
            out.insert(0, title)
        return out

    def title_trie(self, tokenizer: Tokenizer | None = None, suffix: str = ")"):
        """A ``craft_kernels.Trie`` over ``tokenizer.encode(title + suffix)`` for every title, item
        ids = document ids; built once per tokenizer and suffix. Used to keep link targets inside
        the corpus: the suffix is the closing parenthesis, so a finished path closes the link."""
        tok = tokenizer or self.tokenizer
        key = (id(tok), suffix)
        if key not in self._tries:
            from craft_kernels import Trie

            self._check_open()
            seqs = [tok.encode(t + suffix) for t in self._titles]
            self._tries[key] = Trie(seqs, item_ids=np.arange(len(seqs), dtype=np.int64))
        return self._tries[key]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._closed = True
        self.shards = []
        self._tries.clear()

    def __enter__(self) -> "PretokenizedCorpus":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PretokenizedCorpus({str(self.path)!r})"


def _read_meta(meta_path: Path) -> dict:
    """``meta.json`` parsed and checked (see :class:`PretokenizedCorpus`); the tokenizer object is
    returned under ``_tokenizer``."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{meta_path}: not valid JSON ({e}); rebuild the corpus with `craft corpus build`") from None
    if not isinstance(meta, dict):
        raise CorpusError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CorpusError(f"{meta_path}: unsupported corpus format {meta.get('format')!r} (expected {FORMAT})")
    if meta.get("dtype") not in TOKEN_DTYPES:
        raise CorpusError(f"{meta_path}: dtype must be one of {sorted(TOKEN_DTYPES)}, got {meta.get('dtype')!r}")
    try:
        tok = tokenizer_from_dict(meta.get("tokenizer"))
    except Exception as e:
        raise CorpusError(f"{meta_path}: bad tokenizer {meta.get('tokenizer')!r} ({e})") from None
    eos = meta.get("eos_id")
    if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < tok.vocab_size:
        raise CorpusError(f"{meta_path}: eos_id must be an int in [0, {tok.vocab_size}), got {eos!r}")
    if eos != tok.eos_id:
        raise CorpusError(f"{meta_path}: eos_id {eos} is not the tokenizer's ({tok.eos_id})")
    for key in ("n_tokens", "n_documents"):
        v = meta.get(key)
        if key in meta and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise CorpusError(f"{meta_path}: {key} must be an int >= 0, got {v!r}")
    shards = meta.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, str) and SHARD_NAME.fullmatch(s) for s in shards):
        raise CorpusError(f"{meta_path}: shards must be a list of names like 'shard_00000.bin' (files inside "
                          f"the corpus directory), got {shards!r}"[:400])
    if len(set(shards)) != len(shards):
        raise CorpusError(f"{meta_path}: a shard is listed twice")
    meta["_tokenizer"] = tok
    return meta


def _read_index(index_path: Path) -> list[tuple]:
    try:
        db = sqlite3.connect(f"{index_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, title, normalized, filename, shard, offset, length FROM documents "
                              "ORDER BY id").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise CorpusError(f"{index_path}: cannot read the document index ({e}); rebuild the corpus with "
                          "`craft corpus build`") from None
    for k, r in enumerate(rows):
        if r[0] != k or not isinstance(r[1], str) or not isinstance(r[2], str) or not isinstance(r[3], str) \
                or not all(isinstance(x, int) for x in r[4:]):
            raise CorpusError(f"{index_path}: row {k} of documents is malformed (ids must run 0..n-1, titles be "
                              f"text, shard/offset/length integers): {r!r}"[:400])
    return rows
