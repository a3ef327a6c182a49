"""Document titles and file names, shared by corpus pretokenization and linked generation.

``create_filename("New Topic")`` -> ``"new_topic_<6 hex>"``: the normalized title plus the first six
hex digits of the SHA-256 of the original title (deterministic across runs and machines), so two
titles that normalize alike still get distinct files. The normalized part is cut to
:data:`MAX_STEM_CHARS` characters, so a stem plus an extension and a temporary-file prefix and
suffix stays under the 255-byte file-name limit of common file systems, whatever the title's length
(the hash is over the whole title, so long titles sharing a prefix still differ).
"""
from __future__ import annotations

import hashlib
import re

_HASH_LEN = 6
#: most characters of the normalized title in a file name (ASCII, so bytes too)
MAX_STEM_CHARS = 200
_NOT_NAME = re.compile(r"[^a-z0-9_]")
_HASH_SUFFIX = re.compile(r"_([0-9a-f]{%d})$" % _HASH_LEN)


def normalize_title(title: str) -> str:
    """Lowercase, spaces -> ``_``, keep only ``[a-z0-9_]``."""
    return _NOT_NAME.sub("", title.strip().lower().replace(" ", "_"))


def generate_title_hash(title: str) -> str:
    """First six hex digits of SHA-256 over the UTF-8 of the original title."""
    return hashlib.sha256(title.encode("utf-8")).hexdigest()[:_HASH_LEN]


def create_filename(title: str) -> str:
    """``<normalized title, at most MAX_STEM_CHARS characters>_<6 hex>`` (no extension)."""
    return f"{normalize_title(title)[:MAX_STEM_CHARS]}_{generate_title_hash(title)}"


def strip_hash(filename: str) -> str:
    """``new_topic_1a2b3c`` -> ``new_topic`` (a name without a hash suffix is returned unchanged)."""
    return _HASH_SUFFIX.sub("", filename)


def title_matches_filename(title: str, filename: str) -> bool:
    """True when ``filename`` (with or without an extension) is exactly ``create_filename(title)``."""
    stem = filename.rsplit("/", 1)[-1]
    if stem.endswith((".md", ".txt")):
        stem = stem.rsplit(".", 1)[0]
    return stem == create_filename(title)
