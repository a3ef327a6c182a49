"""Source corpora: a folder of ``.md``/``.txt`` files read as titled documents with links.

A markdown document's title is its first line ``# Title`` (else the file name without extension);
its links are ``[text](Target Title)`` (images ``![..](..)`` are not links). Titles must be unique:
a later file whose title repeats an earlier one gets `` (2)``, `` (3)``… appended.

Files must be UTF-8 text: a file with NUL bytes (binary data under a ``.md``/``.txt`` name) or
invalid UTF-8 is skipped with a :class:`CorpusWarning` naming it (``craft`` prints it as
``craft: warning: …``), never fed to the tokenizer as replacement characters.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

TEXT_SUFFIXES = (".md", ".txt")
_LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^()\n]+)\)")


class CorpusError(ValueError):
    """A corpus folder or pretokenized directory that cannot be used (the message says why and what to do)."""


class CorpusNotFoundError(CorpusError, FileNotFoundError):
    """A corpus folder, pretokenized directory or one of its files that does not exist."""


class CorpusWarning(UserWarning):
    """A file of a corpus folder that was skipped (the message names it and says why)."""


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
    if not folder.exists():
        raise CorpusNotFoundError(f"corpus folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise CorpusError(f"corpus folder {str(folder)!r} is not a directory; give the folder that holds the "
                          ".md/.txt files")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_text_file(path: Path) -> str | None:
    """The file's text (CRLF -> LF), or None with a CorpusWarning when it is binary or not UTF-8."""
    data = path.read_bytes()
    if b"\0" in data:
        warnings.warn(f"skipped {str(path)!r}: binary data (NUL bytes), not text", CorpusWarning, stacklevel=3)
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        warnings.warn(f"skipped {str(path)!r}: not UTF-8 text (byte {e.start}); convert it to UTF-8 to include it",
                      CorpusWarning, stacklevel=3)
        return None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def read_folder(folder: str | Path) -> list[Document]:
    """The documents of a folder corpus (see the module doc); raises CorpusError when it holds no text."""
    files = corpus_files(folder)
    docs, seen = [], set()
    for p in files:
        text = read_text_file(p)
        if text is None or not text.strip():
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
