"""Incremental markdown link detection over token streams, on the tokens' bytes.

Rules (CommonMark inline links, simplified):

- ``[`` opens link text unless escaped (``\\[``); ``!`` right before it makes an image
  (``is_image=True``). Up to ``max_openers`` (32) unmatched openers are kept; older ones drop.
- ``]`` closes the most recent opener (brackets in the text must balance). If the very next
  byte is ``(``, a target begins; otherwise that opener is discarded (so bare ``[text]`` and
  reference definitions ``[a]: b`` are not links) and the outer openers stay live.
- The target ends at the first unescaped ``)`` outside nested parentheses. Nesting deeper than
  ``max_depth`` (32, cmark's cap), a newline, or more than ``max_target_bytes`` aborts it.
  Spaces are allowed (targets are document titles).
- Link text longer than ``max_text_bytes`` drops its opener; a blank line (two newlines) drops
  every opener. A completed link drops all openers (links do not nest).

Positions are token indices since construction or ``reset()``; offsets are byte offsets inside
those tokens. Results do not depend on how the stream is split into ``push``/``push_many`` calls.
Each token costs O(its bytes) (O(1) for a token without any of ``[]()!\\`` and newline while no
link is open); memory per stream is bounded by the limits above.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from craft_kernels.native import _dispatch
from craft_kernels.native._validate import ids_in_range, int_array

SPECIAL = frozenset(b"[]()!\\\n")
_TEXT, _AFTER_CLOSE, _TARGET = 0, 1, 2


@dataclass(frozen=True)
class DetectedLink:
    open_bracket_pos: int
    close_bracket_pos: int
    open_paren_pos: int
    close_paren_pos: int
    open_bracket_offset: int
    close_bracket_offset: int
    open_paren_offset: int
    close_paren_offset: int
    text_bytes: bytes
    target_bytes: bytes
    is_image: bool
    link_text_tokens: list
    target_tokens: list

    @property
    def text(self) -> str:
        return self.text_bytes.decode("utf-8", errors="replace")

    @property
    def target(self) -> str:
        return self.target_bytes.decode("utf-8", errors="replace")


class _Opener:
    __slots__ = ("tok", "off", "buf", "image")

    def __init__(self, tok, off, buf, image):
        self.tok, self.off, self.buf, self.image = tok, off, buf, image


class LinkDetectorReference:
    """The pure-Python state machine (the specification of the C++ one). ``push_many`` returns
    tuples in the field order of :class:`DetectedLink`."""

    def __init__(self, token_bytes: Sequence[bytes], max_text_bytes=1024, max_target_bytes=1024,
                 max_openers=32, max_depth=32):
        self.tb = [bytes(b) for b in token_bytes]
        self.special = [any(c in SPECIAL for c in b) for b in self.tb]
        self.max_text, self.max_target, self.max_openers, self.max_depth = (
            max_text_bytes, max_target_bytes, max_openers, max_depth)
        self.reset()

    def reset(self):
        self.pos = 0
        self.state = _TEXT
        self.openers: list[_Opener] = []
        self.buf = bytearray()
        self.hist: deque = deque()  # (token index, id) since the oldest token still needed
        self.escaped = self.prev_bang = self.prev_nl = False
        self.cand = None  # (opener, text bytes, close tok, close off)
        self.paren = None
        self.target = bytearray()
        self.depth = 0

    @property
    def inside_target(self) -> bool:
        return self.state == _TARGET

    @property
    def current_target_bytes(self) -> bytes:
        return bytes(self.target) if self.state == _TARGET else b""

    def _oldest_needed(self):
        if self.state != _TEXT and self.cand is not None:
            return self.cand[0].tok
        return self.openers[0].tok if self.openers else self.pos + 1

    def push_many(self, ids) -> list:
        out = []
        for t in ids:
            t = int(t)
            self.hist.append((self.pos, t))
            if self.state == _TEXT and not self.openers and not self.special[t]:
                self.escaped = self.prev_bang = self.prev_nl = False
                if not self.tb[t]:
                    pass
            else:
                for off, b in enumerate(self.tb[t]):
                    link = self._byte(b, off)
                    if link is not None:
                        out.append(link)
            self.pos += 1
            keep = self._oldest_needed()
            while self.hist and self.hist[0][0] < keep:
                self.hist.popleft()
        return out

    def push(self, t: int):
        links = self.push_many([t])
        return links[-1] if links else None

    def _ids(self, first, last):
        return [i for p, i in self.hist if first <= p <= last]

    def _byte(self, b, off):
        tok = self.pos
        if self.state == _TARGET:
            if self.escaped:
                self.escaped = False
            elif b == 0x5C:  # backslash
                self.escaped = True
            elif b == 0x0A:
                return self._abort_and_text(b, off)
            elif b == 0x28:
                self.depth += 1
                if self.depth > self.max_depth:
                    return self._abort_and_text(b, off)
            elif b == 0x29:
                if self.depth == 0:
                    return self._complete(tok, off)
                self.depth -= 1
            self.target.append(b)
            if len(self.target) > self.max_target:
                self._abort()
            return None
        if self.state == _AFTER_CLOSE:
            if b == 0x28:
                self.state = _TARGET
                self.paren = (tok, off)
                self.target = bytearray()
                self.depth = 0
                return None
            self.state = _TEXT
            self.cand = None
        return self._text(b, off, tok)

    def _abort(self):
        self.state = _TEXT
        self.cand = None
        self.target = bytearray()
        self.escaped = False

    def _abort_and_text(self, b, off):
        self._abort()
        return self._text(b, off, self.pos)

    def _text(self, b, off, tok):
        if self.escaped:
            self.escaped = False
            if self.openers:
                self.buf.append(b)
            self.prev_bang = self.prev_nl = False
            return None
        nl = b == 0x0A
        if b == 0x5C:
            self.escaped = True
            if self.openers:
                self.buf.append(b)
        elif b == 0x5B:  # [
            if self.openers:
                self.buf.append(b)
            else:
                self.buf = bytearray()
            self.openers.append(_Opener(tok, off, len(self.buf), self.prev_bang))
            if len(self.openers) > self.max_openers:
                self.openers.pop(0)
        elif b == 0x5D:  # ]
            if self.openers:
                op = self.openers.pop()
                self.cand = (op, bytes(self.buf[op.buf:]), tok, off)
                self.state = _AFTER_CLOSE
                if self.openers:
                    self.buf.append(b)
        elif nl and self.prev_nl:
            self.openers.clear()
        elif self.openers:
            self.buf.append(b)
        self.prev_bang = b == 0x21
        self.prev_nl = nl
        self._bound_text()
        return None

    def _bound_text(self):
        while self.openers and len(self.buf) - self.openers[0].buf > self.max_text:
            self.openers.pop(0)
        if not self.openers and self.state == _TEXT:
            self.buf = bytearray()
        elif self.openers and self.openers[0].buf > self.max_text:  # rebase the buffer
            cut = self.openers[0].buf
            del self.buf[:cut]
            for o in self.openers:
                o.buf -= cut

    def _complete(self, tok, off):
        op, text, ctok, coff = self.cand
        ptok, poff = self.paren
        link = (op.tok, ctok, ptok, tok, op.off, coff, poff, off, text, bytes(self.target), op.image,
                self._ids(op.tok, ctok), self._ids(ptok, tok))
        self._abort()
        self.openers.clear()
        self.buf = bytearray()
        self.prev_bang = self.prev_nl = False
        return link


def _check_token_bytes(token_bytes) -> list[bytes]:
    if isinstance(token_bytes, (bytes, str)) or not isinstance(token_bytes, Sequence):
        raise TypeError("token_bytes: expected a sequence of bytes, one per token id (tokenizer.token_bytes)")
    out = []
    for i, b in enumerate(token_bytes):
        if not isinstance(b, (bytes, bytearray)):
            raise TypeError(f"token_bytes[{i}]: expected bytes, got {type(b).__name__}")
        out.append(bytes(b))
    return out


def _ids_arg(ids, vocab: int, name: str = "ids") -> np.ndarray:
    a = int_array(np.atleast_1d(np.asarray(ids)) if not isinstance(ids, np.ndarray) else ids, name)
    ids_in_range(a, name, vocab)
    return a


class LinkDetector:
    """Streaming link detector for one token stream (C++ unless ``CRAFT_NATIVE=python``).

    ``push(id) -> DetectedLink | None`` (if one token completes two links, the last is returned;
    ``push_many`` returns all), ``push_many(ids) -> list[DetectedLink]``, ``reset()``,
    ``scan(ids)`` (reset, then every link in ``ids``), ``inside_target``, ``current_target_bytes``.
    """

    def __init__(self, token_bytes: Sequence[bytes], max_text_bytes: int = 1024, max_target_bytes: int = 1024):
        tb = _check_token_bytes(token_bytes)
        self.vocab_size = len(tb)
        if _dispatch.use_cpp():
            self._core = _dispatch.ext().LinkDetectorCore(tb, max_text_bytes, max_target_bytes, 32, 32)
        else:
            self._core = LinkDetectorReference(tb, max_text_bytes, max_target_bytes)

    @classmethod
    def for_tokenizer(cls, tokenizer, **kw) -> "LinkDetector":
        return cls(tokenizer.token_bytes, **kw)

    def push(self, token_id: int) -> DetectedLink | None:
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
            raise TypeError(f"token_id: expected an int, got {type(token_id).__name__}")
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token_id: {token_id} is outside the vocabulary [0, {self.vocab_size})")
        t = self._core.push(int(token_id))
        return None if t is None else DetectedLink(*t)

    def push_many(self, ids) -> list[DetectedLink]:
        if isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.ndim == 1 and ids.size:
            if ids.min() < 0 or ids.max() >= self.vocab_size:  # fast path for int64 arrays
                ids_in_range(ids, "ids", self.vocab_size)
        else:
            ids = _ids_arg(ids, self.vocab_size)
        return [DetectedLink(*t) for t in self._core.push_many(ids)]

    def reset(self) -> None:
        self._core.reset()

    def scan(self, ids) -> list[DetectedLink]:
        self.reset()
        return self.push_many(ids)

    @property
    def inside_target(self) -> bool:
        return bool(self._core.inside_target)

    @property
    def current_target_bytes(self) -> bytes:
        return bytes(self._core.current_target_bytes)


class BatchLinkDetector:
    """B independent streams (one state each), as batched generation needs:
    ``push(ids (B,)) -> list[DetectedLink | None]``, ``reset(rows=None)``, ``inside_target`` (B,) bool."""

    def __init__(self, token_bytes: Sequence[bytes], batch_size: int, **kw):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        tb = _check_token_bytes(token_bytes)
        self.streams = [LinkDetector(tb, **kw) for _ in range(batch_size)]
        self.batch_size = batch_size

    def push(self, ids) -> list[DetectedLink | None]:
        a = _ids_arg(ids, self.streams[0].vocab_size)
        if a.shape != (self.batch_size,):
            raise ValueError(f"ids: expected shape ({self.batch_size},), one id per stream, got {a.shape}")
        return [s.push(int(t)) for s, t in zip(self.streams, a)]

    def reset(self, rows=None) -> None:
        for r in range(self.batch_size) if rows is None else rows:
            self.streams[r].reset()

    @property
    def inside_target(self) -> np.ndarray:
        return np.array([s.inside_target for s in self.streams])
