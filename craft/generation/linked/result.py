"""What a linked generation run returns: ``GeneratedDocument`` and ``GenerationResult``."""
from __future__ import annotations

import heapq
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from craft.data.files import atomic_write
from craft.data.titles import create_filename, normalize_title

SOURCES = ("generated", "corpus")
#: why a document ended: ``eos`` (sampled EOS), ``max_tokens`` (max_tokens_per_document),
#: ``budget`` (max_new_tokens spent), ``context_full`` (no cache slot left), ``corpus`` (copied)
STATUSES = ("eos", "max_tokens", "budget", "context_full", "corpus")


@dataclass
class GeneratedDocument:
    """One document of a run.

    ``title`` is the title as written in the link (or ``root_title``); ``title_normalized`` is its
    file name stem ``create_filename(title)``; ``tokens`` int64 (n,) are the document's tokens as held
    in context (header or prompt, generated tokens, final EOS when it completed); ``text`` is their
    decoding without the EOS. ``links`` lists the titles this document links to, in link order
    (only links that were followed). ``depth`` is the number of link hops from the root.
    """

    title: str
    tokens: np.ndarray | None = None
    text: str | None = None
    source: Literal["generated", "corpus"] = "generated"
    is_root: bool = False
    parent_title: str | None = None
    depth: int = 0
    links: list[str] = field(default_factory=list)
    status: str = "eos"
    evicted: bool = False
    corpus_filename: str | None = None
    title_normalized: str = ""

    def __post_init__(self):
        if not isinstance(self.title, str):
            raise TypeError(f"title: expected a str, got {type(self.title).__name__}")
        if self.tokens is None and self.text is None:
            raise ValueError("tokens, text: at least one must be given")
        if self.tokens is not None:
            self.tokens = np.asarray(self.tokens, dtype=np.int64).reshape(-1)
        if self.source not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES}, got {self.source!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, got {self.status!r}")
        if self.is_root != (self.parent_title is None):
            raise ValueError("parent_title: the root has none and every other document has one")
        self.title_normalized = create_filename(self.title)

    @property
    def filename(self) -> str:
        return self.title_normalized + ".md"

    def to_dict(self) -> dict:
        return {"title": self.title, "filename": self.filename, "source": self.source, "is_root": self.is_root,
                "parent_title": self.parent_title, "depth": self.depth, "links": list(self.links),
                "status": self.status, "evicted": self.evicted, "corpus_filename": self.corpus_filename,
                "n_tokens": None if self.tokens is None else int(len(self.tokens))}


def topological_order(docs: Sequence[GeneratedDocument]) -> list[GeneratedDocument]:
    """Documents ordered so that a document comes after the documents it links to (dependencies
    first), ties broken by position in ``docs`` (creation order); a cycle is broken at its
    earliest-created document."""
    index = {d.title: i for i, d in enumerate(docs)}
    deps = [{index[t] for t in d.links if t in index and index[t] != i} for i, d in enumerate(docs)]
    users = [[] for _ in docs]
    for i, ds in enumerate(deps):
        for j in ds:
            users[j].append(i)
    remaining = [len(ds) for ds in deps]
    ready = [i for i, n in enumerate(remaining) if n == 0]
    heapq.heapify(ready)
    done, order = [False] * len(docs), []
    while len(order) < len(docs):
        if not ready:  # only cycles remain: release the earliest-created document of a cycle that
            heapq.heappush(ready, _cycle_head(deps, done))  # waits on nothing outside itself
        i = heapq.heappop(ready)
        if done[i]:
            continue
        done[i] = True
        order.append(docs[i])
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0 and not done[u]:
                heapq.heappush(ready, u)
    return order


def _cycle_head(deps: list[set[int]], done: list[bool]) -> int:
    """Earliest-created undone document x such that every undone document x depends on (transitively)
    depends back on x: x lies in a cycle of the remaining graph with no pending dependency outside it."""
    def reach(x):
        seen, stack = set(), [x]
        while stack:
            for j in deps[stack.pop()]:
                if not done[j] and j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    pending = [i for i in range(len(deps)) if not done[i]]
    reaches = {i: reach(i) for i in pending}
    for x in pending:
        if x in reaches[x] and all(x in reaches[y] for y in reaches[x]):
            return x
    return pending[0]


@dataclass
class GenerationResult:
    """``root_document`` plus ``auxiliary_documents`` in topological order (a document after those it
    links to; ties by creation order), the configuration used (``generation_config``, a dict) and
    run statistics (``stats``: tokens sampled, seconds, tokens/sec, evictions)."""

    root_document: GeneratedDocument
    auxiliary_documents: list[GeneratedDocument]
    generation_config: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    @classmethod
    def from_documents(cls, docs: Sequence[GeneratedDocument], generation_config: dict | None = None,
                       stats: dict | None = None) -> "GenerationResult":
        """``docs`` in creation order; exactly one must be the root."""
        roots = [d for d in docs if d.is_root]
        if len(roots) != 1:
            raise ValueError(f"docs: expected exactly one root document, got {len(roots)}")
        titles = [d.title for d in docs]
        if len(set(titles)) != len(titles):
            raise ValueError("docs: titles must be unique (a second link to a title reuses its document)")
        aux = [d for d in topological_order(docs) if not d.is_root]
        return cls(roots[0], aux, dict(generation_config or {}), dict(stats or {}))

    def get_all_documents(self) -> list[GeneratedDocument]:
        """Root first, then the auxiliary documents in their (topological) order."""
        return [self.root_document] + list(self.auxiliary_documents)

    def get_document_by_title(self, title: str) -> GeneratedDocument | None:
        """Match the original title, then the file name stem (``create_filename``, with or without
        ``.md``), then the normalized title (``normalize_title``)."""
        docs = self.get_all_documents()
        for d in docs:
            if d.title == title:
                return d
        stem = title[:-3] if title.endswith(".md") else title
        for d in docs:
            if d.title_normalized == stem:
                return d
        norm = normalize_title(title)
        for d in docs:
            if normalize_title(d.title) == norm:
                return d
        return None

    @property
    def link_graph(self) -> list[tuple[str, str]]:
        """Edges ``(source title, target title)``, in document order then link order."""
        return [(d.title, t) for d in self.get_all_documents() for t in d.links]

    def link_tree(self) -> str:
        """The documents as an indented tree following first links from the root (for printing)."""
        by_title = {d.title: d for d in self.get_all_documents()}
        lines, seen = [], set()

        def walk(d, indent):
            mark = "" if d.title not in seen else " (see above)"
            lines.append(f"{'  ' * indent}- {d.title} [{d.source}, {d.status}]{mark}")
            if d.title in seen:
                return
            seen.add(d.title)
            for t in d.links:
                if t in by_title:
                    walk(by_title[t], indent + 1)

        walk(self.root_document, 0)
        for d in self.auxiliary_documents:
            if d.title not in seen:
                walk(d, 0)
        return "\n".join(lines)

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``<create_filename(title)>.md`` per document and ``manifest.json`` (config, stats,
        documents in order, link graph) into ``directory`` (created if needed). Returns the
        manifest's path.

        Each file is written atomically through a temporary with a random name in ``directory``
        (:func:`craft.data.files.atomic_write`: a symlink planted there is replaced, never
        followed); the manifest comes last, so a manifest always describes files that exist.
        File names are capped (:data:`craft.data.titles.MAX_STEM_CHARS`) whatever a title's length.
        Files of the same names are replaced; other files in ``directory`` are left alone."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        docs = self.get_all_documents()
        for d in docs:
            atomic_write(out / d.filename, d.text if d.text is not None else "")
        manifest = {
            "format": 1,
            "root": self.root_document.title,
            "documents": [d.to_dict() for d in docs],
            "links": [{"src": s, "dst": t} for s, t in self.link_graph],
            "generation_config": self.generation_config,
            "stats": self.stats,
        }
        return atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
