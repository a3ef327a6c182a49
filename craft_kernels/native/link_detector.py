"""Incremental markdown link detection over token streams, on the tokens' bytes.

The detector reads the bytes of every token (``tokenizer.token_bytes``), so a ``)`` hidden in a
merged GPT-2 token such as ``).`` (737), ``),`` or ``))`` closes a link just like a lone ``)``.

Rules (CommonMark inline links, simplified):

- ``[`` opens link text unless escaped (``\\[``); a ``!`` right before it makes an image
  (``is_image=True``). Up to ``max_openers`` (32) unmatched openers are kept; older ones drop.
- ``]`` closes the most recent opener (so brackets inside the text must balance). If the very
  next byte is ``(``, a target begins; otherwise that opener is discarded (bare ``[text]`` and
  reference definitions ``[a]: b`` are not links) and the outer openers stay live.
- The target ends at the first unescaped ``)`` outside nested parentheses. Nesting deeper than
  ``max_depth`` (32, cmark's cap), a newline, or more than ``max_target_bytes`` bytes abandons it;
  its bytes then count as text of the enclosing link, if any. Spaces are allowed (targets are
  document titles); ``<...>`` destinations and link titles are not special.
- Link text longer than ``max_text_bytes`` drops its opener; a blank line (two newlines in a row)
  drops every opener. A completed link drops all openers (links do not contain links).
- A link spanning more than ``max_text_bytes + max_target_bytes + 8`` tokens is abandoned (only
  tokens without bytes, such as some specials, can make that happen before the byte limits do).

Positions are token indices since construction or ``reset()``; offsets are byte offsets inside
those tokens. Results do not depend on how the stream is split into ``push``/``push_many`` calls.
Each token costs O(its bytes), and O(1) for a token without any of ``[]()!\\`` and newline while
no link is open; memory per stream is bounded by the limits above.
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple, Sequence

import numpy as np

from craft_kernels.native import _dispatch
from craft_kernels.native._validate import ids_in_range, int_array, positive_int

SPECIAL = frozenset(b"[]()!\\\n")
_TEXT, _AFTER_CLOSE, _TARGET = 0, 1, 2
_EMPTY, _PLAIN, _SPECIAL = 0, 1, 2
MAX_OPENERS = 32
MAX_DEPTH = 32


class DetectedLink(NamedTuple):
    """A completed ``[text](target)``: token positions and byte offsets of ``[``, ``]``, ``(``, ``)``,
    the text and target bytes, and the ids of the tokens holding them (both ends inclusive).
    A named tuple: the cores' result tuples become links without copying a field."""

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

    @classmethod
    def _from_tuple(cls, t: tuple) -> "DetectedLink":
        """From a core's tuple (fields in declaration order)."""
        return _new_tuple(cls, t)

    @property
    def text(self) -> str:
        return self.text_bytes.decode("utf-8", errors="replace")

    @property
    def target(self) -> str:
        return self.target_bytes.decode("utf-8", errors="replace")


_new_tuple = tuple.__new__


class _Opener:
    __slots__ = ("tok", "off", "buf", "image")

    def __init__(self, tok, off, buf, image):
        self.tok, self.off, self.buf, self.image = tok, off, buf, image


class LinkDetectorReference:
    """The pure-Python state machine: the specification of the C++ ``LinkDetectorCore``.
    ``push_many`` returns tuples in the field order of :class:`DetectedLink`."""

    def __init__(self, token_bytes: Sequence[bytes], max_text_bytes=1024, max_target_bytes=1024,
                 max_openers=MAX_OPENERS, max_depth=MAX_DEPTH):
        self.tb = [bytes(b) for b in token_bytes]
        self.kind = [_EMPTY if not b else _SPECIAL if any(c in SPECIAL for c in b) else _PLAIN for b in self.tb]
        self.max_text, self.max_target, self.max_openers, self.max_depth = (
            max_text_bytes, max_target_bytes, max_openers, max_depth)
        self.max_span = max_text_bytes + max_target_bytes + 8
        self.reset()

    def reset(self):
        self.pos = 0
        self.state = _TEXT
        self.openers: list[_Opener] = []
        self.buf = bytearray()        # text bytes from the oldest opener on
        self.target = bytearray()
        self.hist: deque = deque()    # ids of the tokens from the oldest open bracket on
        self.hist_first = 0           # position of hist[0]
        self.escaped = self.prev_bang = self.prev_nl = False
        self.cand = None              # (opener, text bytes, close tok, close off) after a "]"
        self.paren = None             # (tok, off) of the "(" of the current target
        self.depth = 0

    @property
    def inside_target(self) -> bool:
        return self.state == _TARGET

    @property
    def current_target_bytes(self) -> bytes:
        return bytes(self.target) if self.state == _TARGET else b""

    def push_many(self, ids) -> list:
        out = []
        for t in ids.tolist() if isinstance(ids, np.ndarray) else ids:
            self._push(int(t), out)
        return out

    def push(self, t: int):
        out = []
        self._push(int(t), out)
        return out[-1] if out else None

    def _push(self, t, out):
        kind = self.kind[t]
        if self.state == _TEXT and not self.openers and kind != _SPECIAL:  # nothing open
            if kind == _PLAIN:
                self.escaped = self.prev_bang = self.prev_nl = False
            self.pos += 1
            return
        if not self.hist:
            self.hist_first = self.pos
        self.hist.append(t)
        if kind == _SPECIAL:
            for off, b in enumerate(self.tb[t]):
                link = self._byte(b, off)
                if link is not None:
                    out.append(link)
        elif kind == _PLAIN:
            for b in self.tb[t]:  # no special byte: every byte is plain text or target
                self._byte(b, 0)
        self._trim()
        self.pos += 1

    def _byte(self, b, off):
        if self.state == _TARGET:
            if self.escaped:
                self.escaped = False
            elif b == 0x5C:  # backslash
                self.escaped = True
            elif b == 0x0A:
                self._abort_target()
                return self._text(b, off)
            elif b == 0x28:  # (
                self.depth += 1
                if self.depth > self.max_depth:
                    self._abort_target()
                    return self._text(b, off)
            elif b == 0x29:  # )
                if self.depth == 0:
                    return self._complete(off)
                self.depth -= 1
            self.target.append(b)
            if len(self.target) > self.max_target:
                self._abort_target()
            return None
        if self.state == _AFTER_CLOSE:
            if b == 0x28:
                self.state = _TARGET
                self.paren = (self.pos, off)
                self.target = bytearray()
                self.depth = 0
                self.escaped = False
                return None
            self.state = _TEXT
            self.cand = None
        return self._text(b, off)

    def _text(self, b, off):
        if self.escaped:
            self.escaped = False
            if self.openers:
                self.buf.append(b)
            self.prev_bang = self.prev_nl = False
            self._bound_text()
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
            self.openers.append(_Opener(self.pos, off, len(self.buf), self.prev_bang))
            if len(self.openers) > self.max_openers:
                self.openers.pop(0)
        elif b == 0x5D:  # ]
            if self.openers:
                op = self.openers.pop()
                self.cand = (op, bytes(self.buf[op.buf:]), self.pos, off)
                self.state = _AFTER_CLOSE
                if self.openers:
                    self.buf.append(b)
        elif nl and self.prev_nl:
            self.openers.clear()  # blank line
        elif self.openers:
            self.buf.append(b)
        self.prev_bang = b == 0x21
        self.prev_nl = nl
        self._bound_text()
        return None

    def _abort_target(self):
        """The target cannot complete: its bytes become text of the enclosing link, if any."""
        self.state = _TEXT
        self.escaped = False
        if self.openers:
            self.buf += b"(" + self.target
        self.target = bytearray()
        self.cand = None
        self._bound_text()

    def _bound_text(self):
        while self.openers and len(self.buf) - self.openers[0].buf > self.max_text:
            self.openers.pop(0)
        if not self.openers:
            self.buf = bytearray()
        elif self.openers[0].buf > self.max_text:  # drop the bytes before the oldest opener
            cut = self.openers[0].buf
            del self.buf[:cut]
            for o in self.openers:
                o.buf -= cut

    def _oldest_needed(self):
        if self.openers:
            return self.openers[0].tok
        return -1 if self.state == _TEXT else self.cand[0].tok

    def _trim(self):
        keep = self._oldest_needed()
        while keep >= 0 and self.pos - keep + 1 > self.max_span:
            if self.openers:
                self.openers.pop(0)
                self._bound_text()
            else:
                if self.state == _TARGET:
                    self._abort_target()
                self.state, self.cand = _TEXT, None
            keep = self._oldest_needed()
        if keep < 0:
            self.hist.clear()
            return
        while self.hist_first < keep:
            self.hist.popleft()
            self.hist_first += 1

    def _ids(self, first, last):
        return [self.hist[p - self.hist_first] for p in range(first, last + 1)]

    def _complete(self, off):
        op, text, ctok, coff = self.cand
        ptok, poff = self.paren
        link = (op.tok, ctok, ptok, self.pos, op.off, coff, poff, off, text, bytes(self.target), op.image,
                self._ids(op.tok, ctok), self._ids(ptok, self.pos))
        self.state = _TEXT
        self.escaped = self.prev_bang = self.prev_nl = False
        self.openers.clear()  # links do not contain links
        self.buf = bytearray()
        self.target = bytearray()
        self.cand = None
        return link


def _check_token_bytes(token_bytes) -> list[bytes]:
    if isinstance(token_bytes, (bytes, str)) or not isinstance(token_bytes, Sequence):
        raise TypeError("token_bytes: expected a sequence of bytes, one per token id (tokenizer.token_bytes)")
    if len(token_bytes) == 0:
        raise ValueError("token_bytes: the vocabulary is empty; pass tokenizer.token_bytes")
    out = []
    for i, b in enumerate(token_bytes):
        if not isinstance(b, (bytes, bytearray)):
            raise TypeError(f"token_bytes[{i}]: expected bytes, got {type(b).__name__}")
        out.append(bytes(b))
    return out


def _check_limits(max_text_bytes, max_target_bytes) -> tuple[int, int]:
    return positive_int(max_text_bytes, "max_text_bytes", 0), positive_int(max_target_bytes, "max_target_bytes", 0)


def _ids_arg(ids) -> np.ndarray:
    """1-d int64 ids (the C++ cores read a 1-d int64 array in place and call this for anything else)."""
    if type(ids) is np.ndarray and ids.dtype == np.int64 and ids.ndim == 1 and ids.flags.c_contiguous:
        return ids
    return int_array(ids, "ids")


def _token_id(token_id, vocab: int) -> int:
    if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
        raise TypeError(f"token_id: expected an int, got {type(token_id).__name__}")
    if not 0 <= token_id < vocab:
        raise ValueError(f"token_id: {token_id} is outside the vocabulary [0, {vocab})")
    return int(token_id)


def _cpp_core(name, tb, *args):
    """A C++ core that builds DetectedLink tuples itself and converts odd inputs with the checks above."""
    return getattr(_dispatch.ext(), name)(tb, *args, MAX_OPENERS, MAX_DEPTH, DetectedLink, _ids_arg, _token_id)


class LinkDetector:
    """Streaming link detector for one token stream (C++ unless ``CRAFT_NATIVE=python``).

    ``token_bytes``: the bytes of every token id (``tokenizer.token_bytes``).
    ``push(id) -> DetectedLink | None`` (if one token completes two links, the last is returned;
    ``push_many`` returns all), ``push_many(ids (n,) int) -> list[DetectedLink]``, ``reset()``,
    ``scan(ids)`` (reset, then every link in ``ids``), ``inside_target`` (True after ``](`` and before
    the closing ``)``) and ``current_target_bytes`` (the target so far, ``b""`` outside a target).

    With the C++ core, ``push`` and ``push_many`` are the core's own methods (same checks, same
    results): a 1-d int64 array is read in place, anything else is converted first.
    """

    def __init__(self, token_bytes: Sequence[bytes], max_text_bytes: int = 1024, max_target_bytes: int = 1024):
        tb = _check_token_bytes(token_bytes)
        mt, mg = _check_limits(max_text_bytes, max_target_bytes)
        self.vocab_size = len(tb)
        if _dispatch.use_cpp():
            self._core = _cpp_core("LinkDetectorCore", tb, mt, mg)
            # The core checks its arguments and returns DetectedLinks: call it without a Python frame.
            self.push, self.push_many = self._core.push, self._core.push_many
        else:
            self._core = LinkDetectorReference(tb, mt, mg)

    @classmethod
    def for_tokenizer(cls, tokenizer, **kw) -> "LinkDetector":
        return cls(tokenizer.token_bytes, **kw)

    def push(self, token_id: int) -> DetectedLink | None:
        t = self._core.push(_token_id(token_id, self.vocab_size))
        return None if t is None else DetectedLink._from_tuple(t)

    def push_many(self, ids) -> list[DetectedLink]:
        a = _ids_arg(ids)
        ids_in_range(a, "ids", self.vocab_size)
        return [_new_tuple(DetectedLink, t) for t in self._core.push_many(a)]

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


class _BatchReference:
    """B reference streams side by side (the Python twin of ``BatchLinkDetectorCore``)."""

    def __init__(self, tb, batch_size, mt, mg):
        self.streams = [LinkDetectorReference(tb, mt, mg) for _ in range(batch_size)]

    def push(self, ids):
        return [s.push(t) for s, t in zip(self.streams, ids.tolist())]

    def reset_all(self):
        for s in self.streams:
            s.reset()

    def reset_rows(self, rows):
        for r in rows.tolist():
            self.streams[r].reset()

    @property
    def inside_target(self):
        return np.array([s.inside_target for s in self.streams], dtype=bool)

    @property
    def current_target_bytes(self):
        return [s.current_target_bytes for s in self.streams]


class BatchLinkDetector:
    """B independent streams (one state each), as batched generation needs; one C++ call per step.

    ``push(ids (B,) int) -> list[DetectedLink | None]`` (the link each stream completed, if any),
    ``reset(rows=None)`` (all streams, or the given rows), ``inside_target -> bool (B,)``,
    ``current_target_bytes -> list[bytes]``."""

    def __init__(self, token_bytes: Sequence[bytes], batch_size: int, max_text_bytes: int = 1024,
                 max_target_bytes: int = 1024):
        self.batch_size = positive_int(batch_size, "batch_size")
        tb = _check_token_bytes(token_bytes)
        mt, mg = _check_limits(max_text_bytes, max_target_bytes)
        self.vocab_size = len(tb)
        if _dispatch.use_cpp():
            self._core = _cpp_core("BatchLinkDetectorCore", tb, self.batch_size, mt, mg)
            self.push = self._core.push  # checks the ids itself and returns DetectedLinks
        else:
            self._core = _BatchReference(tb, self.batch_size, mt, mg)

    @classmethod
    def for_tokenizer(cls, tokenizer, batch_size: int, **kw) -> "BatchLinkDetector":
        return cls(tokenizer.token_bytes, batch_size, **kw)

    def push(self, ids) -> list[DetectedLink | None]:
        a = _ids_arg(ids)
        if a.shape != (self.batch_size,):
            raise ValueError(f"ids: expected shape ({self.batch_size},), one id per stream, got {a.shape}")
        ids_in_range(a, "ids", self.vocab_size)
        return [None if t is None else DetectedLink._from_tuple(t) for t in self._core.push(a)]

    def reset(self, rows=None) -> None:
        if rows is None:
            self._core.reset_all()
            return
        r = int_array(rows, "rows")
        if r.size and (r.min() < 0 or r.max() >= self.batch_size):
            raise ValueError(f"rows: stream indices must be in [0, {self.batch_size}), got {r.tolist()}")
        self._core.reset_rows(r)

    @property
    def inside_target(self) -> np.ndarray:
        return np.asarray(self._core.inside_target, dtype=bool)

    @property
    def current_target_bytes(self) -> list[bytes]:
        return [bytes(b) for b in self._core.current_target_bytes]
