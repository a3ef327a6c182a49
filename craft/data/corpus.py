"""Source corpora: a folder of ``.md``/``.txt`` files read as titled documents with links.

A markdown document's title is its first line ``# Title`` (else the file name without extension);
its links are ``[text](Target Title)`` (images ``![..](..)`` are not links). Titles must be unique:
a later file whose title repeats an earlier one gets `` (2)``, `` (3)``… appended.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

TEXT_SUFFIXES = (".md", ".txt")
_LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^()\n]+)\)")


class CorpusError(ValueError):
    """A corpus folder or pretokenized directory that cannot be used (the message says why and what to do)."""


@dataclass
class Document:
    title: str
    text: str
    path: str = ""
    links: list[str] = field(default_factory=list)  # link targets in order of appearance


def parse_links(text: str) -> list[str]:
    """Targets of the markdown links ``[text](Target)`` in ``text``, in order (images excluded)."""
    return [m.group(2).strip() for m in _LINK.finditer(text)]


def document_from_text(text: str, fallback_title: str, path: str = "") -> Document:
    first = text.split("\n", 1)[0].strip()
    title = first[2:].strip() if first.startswith("# ") else ""
    return Document(title=title or fallback_title, text=text, path=path, links=parse_links(text))


def corpus_files(folder: str | Path) -> list[Path]:
    """Every ``.md``/``.txt`` file under ``folder`` (recursive, hidden entries skipped), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"corpus folder {str(folder)!r} does not exist or is not a directory")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_folder(folder: str | Path) -> list[Document]:
    """The documents of a folder corpus (see the module doc); raises CorpusError when it holds no text."""
    files = corpus_files(folder)
    docs, seen = [], set()
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        if not text.strip():
            continue
        doc = document_from_text(text, p.stem.replace("_", " "), str(p))
        title, k = doc.title, 2
        while title in seen:
            title, k = f"{doc.title} ({k})", k + 1
        doc.title = title
        seen.add(title)
        docs.append(doc)
    if not docs:
        raise CorpusError(f"corpus folder {str(folder)!r} has no text: put .md or .txt files in it")
    return docs
