"""Incremental markdown link detection over token streams, on the tokens' bytes.

The detector reads the bytes of every token (``tokenizer.token_bytes``), so a ``)`` hidden in a
merged GPT-2 token such as ``).`` (737), ``),`` or ``))`` closes a link just like a lone ``)``.

Rules (CommonMark inline links, simplified; this module is the specification of the C++ core):

- ``[`` opens link text unless escaped (``\\[``); a ``!`` right before it makes an image
  (``is_image=True``). Up to ``max_openers`` (32) unclosed openers are kept; older ones drop.
- ``]`` closes the most recent opener (so brackets inside the text must balance). If the very
  next byte is ``(``, a target begins; otherwise that opener is discarded (bare ``[text]`` and
  reference definitions ``[a]: b`` are not links) and the outer openers stay live.
- A completed link deactivates every ``[`` opener before it (links do not contain links: a later
  ``]`` that meets one is plain text); ``![`` openers stay active, and a completed image keeps every
  opener, so a badge ``[![ci](badge.svg)](url)`` is an image inside a link and both are found.
- The target ends at the first unescaped ``)`` outside nested parentheses. Nesting deeper than
  ``max_depth`` (32, cmark's cap), a newline, or more than ``max_target_bytes`` bytes abandons it;
  its bytes then count as text of the enclosing link, if any. Whitespace and at most one newline
  before the target are skipped (``](\n  url)``, as CommonMark). Spaces are allowed (targets are
  document titles: ``[a](Python (language))``), and so is CommonMark's form ``[a](<Python (language)>)``:
  a target starting with ``<`` ends at the next unescaped ``>``, which must be followed by ``)``; its
  bytes may hold any parentheses but no newline or ``<``, and ``target_bytes`` leaves out the
  angle brackets (:func:`markdown_link` writes this form). Link titles (``"..."``) are not special.
- A backslash escapes ASCII punctuation only (``\\a`` is a backslash and an ``a``).
- A blank line (a newline after a line holding only spaces, tabs and ``\\r``, so CRLF text too)
  drops every opener and ends a code span.
- Code (``skip_code=True``): a run of backticks opens a code span that the next run of exactly as
  many backticks closes; a line starting (after at most 3 spaces) with 3 or more backticks (no
  backtick after them on that line) or tildes opens a fenced code block that a line of at least as
  many of the same character (and only whitespace after) closes. Nothing inside code is a link;
  code inside link text is text. Streaming cannot look ahead, so a backtick run that is never
  closed hides links up to the end of its paragraph, where CommonMark would read it as plain
  backticks. ``skip_code=False`` reads backticks and tildes as plain text.
- Link text longer than ``max_text_bytes`` drops its opener. A link spanning more than
  ``max_text_bytes + max_target_bytes + 8`` tokens is abandoned (only tokens without bytes, such
  as some specials, can make that happen before the byte limits do).
- Not modelled: reference links ``[a][b]``, autolinks ``<http://..>``, raw HTML, indented code
  blocks, and block structure other than blank lines and fences (a heading does not end a
  paragraph's openers).

Positions are token indices since construction or ``reset()``; offsets are byte offsets inside
those tokens. Results do not depend on how the stream is split into ``push``/``push_many`` calls.
Each token costs O(its bytes), and O(1) for a token without any of ``[]()!\\<>`~`` and newline while
no link or code is open; memory per stream is bounded by the limits above.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple, Sequence

import numpy as np

from craft_kernels.native import _dispatch
from craft_kernels.native._validate import ids_in_range, int_array, positive_int

SPECIAL = frozenset(b"[]()!\\\n<>`~")          # bytes the state machine looks at one by one
PUNCT = frozenset(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")  # what a backslash escapes
# Stream states. TICKS / TILDES: counting a run of backticks / line-start tildes; CODE: inside a code
# span; FENCE_INFO: the rest of a fence's opening line; FENCE: inside a fenced code block.
_TEXT, _AFTER_CLOSE, _TARGET, _TICKS, _TILDES, _CODE, _FENCE_INFO, _FENCE = range(8)
_BARE, _ANGLE, _ANGLE_DONE = 0, 1, 2           # target form: plain, inside <...>, after the ">"
_LINE, _RUN, _TAIL, _BODY = 0, 1, 2, 3         # where a fenced line is: indent, fence run, after it, content
_EMPTY, _PLAIN, _SPECIAL = 0, 1, 2
NO_LINE_START = 4   # the "spaces since the line started" count once the line holds anything else
MAX_OPENERS = 32
MAX_DEPTH = 32
MAX_BATCH = 1 << 20  # streams of a BatchLinkDetector


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


class LinkArrays:
    """The links of one call as arrays: a fixed number of Python objects however many links there are
    (so scanning a corpus does not wake the garbage collector once per link).

    ``positions (n, 4) int64``: token positions of ``[``, ``]``, ``(``, ``)``; ``offsets (n, 4) int64``:
    their byte offsets inside those tokens; ``is_image (n,) bool``; ``text_bytes`` / ``target_bytes``:
    every link's text / target concatenated, link ``k``'s at ``text_offsets[k]:text_offsets[k + 1]``
    (``(n + 1,) int64``, likewise ``target_offsets``). The tokens of link ``k`` are the stream's
    ``ids[positions[k, 0]:positions[k, 1] + 1]`` and ``ids[positions[k, 2]:positions[k, 3] + 1]``."""

    __slots__ = ("positions", "offsets", "is_image", "text_bytes", "text_offsets", "target_bytes", "target_offsets")

    def __init__(self, positions, offsets, is_image, text_bytes, text_offsets, target_bytes, target_offsets):
        self.positions, self.offsets, self.is_image = positions, offsets, is_image
        self.text_bytes, self.text_offsets = text_bytes, text_offsets
        self.target_bytes, self.target_offsets = target_bytes, target_offsets

    @classmethod
    def from_links(cls, links: Sequence[tuple]) -> "LinkArrays":
        """From DetectedLink tuples (what the Python twin produces)."""
        n = len(links)
        pos = np.array([l[:8] for l in links], dtype=np.int64).reshape(n, 8)
        ends = lambda k: np.concatenate([[0], np.cumsum([len(l[k]) for l in links], dtype=np.int64)])  # noqa: E731
        return cls(np.ascontiguousarray(pos[:, :4]), np.ascontiguousarray(pos[:, 4:]),
                   np.array([l[10] for l in links], dtype=bool), b"".join(l[8] for l in links), ends(8),
                   b"".join(l[9] for l in links), ends(9))

    def __len__(self) -> int:
        return len(self.is_image)

    def text(self, k: int) -> str:
        return self.text_bytes[self.text_offsets[k]:self.text_offsets[k + 1]].decode("utf-8", errors="replace")

    def target(self, k: int) -> str:
        return self.target_bytes[self.target_offsets[k]:self.target_offsets[k + 1]].decode("utf-8", errors="replace")

    def targets(self) -> list[str]:
        return [self.target(k) for k in range(len(self))]

    def __repr__(self) -> str:
        return f"LinkArrays({len(self)} links)"


def markdown_link(text: str, target: str, image: bool = False) -> str:
    """``[text](target)`` in a form CommonMark renderers and this detector read alike: a target with
    spaces or parentheses goes in angle brackets, ``[Python](<Python (language)>)``.
    Raises ValueError for a target no link form can hold (a newline, ``<`` or ``>``)."""
    if any(c in target for c in "\n\r<>"):
        raise ValueError(f"target: {target!r} holds a newline, '<' or '>', which no link target can hold")
    if any(c in target for c in " \t()\\"):
        target = f"<{target}>"
    return f"{'!' if image else ''}[{text}]({target})"


class _Opener:
    __slots__ = ("tok", "off", "buf", "image", "active")

    def __init__(self, tok, off, buf, image):
        self.tok, self.off, self.buf, self.image, self.active = tok, off, buf, image, True


class LinkDetectorReference:
    """The pure-Python state machine: the specification of the C++ ``LinkDetectorCore``.
    ``push_many`` returns tuples in the field order of :class:`DetectedLink`. One lock per object
    serialises calls from several threads (as the C++ core does)."""

    def __init__(self, token_bytes: Sequence[bytes], max_text_bytes=1024, max_target_bytes=1024,
                 max_openers=MAX_OPENERS, max_depth=MAX_DEPTH, skip_code=True):
        self.tb = [bytes(b) for b in token_bytes]
        self.kind = [_EMPTY if not b else _SPECIAL if any(c in SPECIAL for c in b) else _PLAIN for b in self.tb]
        self.max_text, self.max_target, self.max_openers, self.max_depth = (
            max_text_bytes, max_target_bytes, max_openers, max_depth)
        self.skip_code = bool(skip_code)
        self.max_span = max_text_bytes + max_target_bytes + 8
        self.lock = threading.Lock()
        self._reset()

    def reset(self):
        with self.lock:
            self._reset()

    def _reset(self):
        self.pos = 0
        self.state = _TEXT
        self.openers: list[_Opener] = []
        self.buf = bytearray()        # text bytes from the oldest opener on
        self.target = bytearray()
        self.hist: deque = deque()    # ids of the tokens from the oldest open bracket on
        self.hist_first = 0           # position of hist[0]
        # after the last byte: escaping backslash, "!", "line holds only whitespace after a newline",
        # and how many spaces the line started with (NO_LINE_START once it holds anything else)
        self.esc = self.bang = self.nl = False
        self.ls = 0
        self.cand = None              # (opener, text bytes, close tok, close off) after a "]"
        self.paren = None             # (tok, off) of the "(" of the current target
        self.depth = 0
        self.form = _BARE
        self.lead = bytearray()       # whitespace skipped before the target
        self.run = 0                  # backticks / tildes counted so far in the current run
        self.at_line_start = False    # the backtick run began a line (it may open a fence)
        self.fence_char = self.fence_len = 0   # a code span's length is in fence_len too
        self.fline = _LINE

    @property
    def inside_target(self) -> bool:
        return self.state == _TARGET

    @property
    def current_target_bytes(self) -> bytes:
        return bytes(self.target) if self.state == _TARGET else b""

    def push_many(self, ids) -> list:
        out = []
        with self.lock:
            for t in ids.tolist() if isinstance(ids, np.ndarray) else ids:
                self._push(int(t), out)
        return out

    def push(self, t: int):
        out = []
        with self.lock:
            self._push(int(t), out)
        return out[-1] if out else None

    def _push(self, t, out):
        kind = self.kind[t]
        if self.state == _TEXT and not self.openers and kind != _SPECIAL:  # nothing open: flags only
            for b in self.tb[t]:
                self._text(b, 0)
            self.pos += 1
            return
        if not self.hist:
            self.hist_first = self.pos
        self.hist.append(t)
        for off, b in enumerate(self.tb[t]):
            link = self._byte(b, off)
            if link is not None:
                out.append(link)
        self._trim()
        self.pos += 1

    def _byte(self, b, off):
        if self.state == _TARGET:
            return self._target_byte(b, off)
        if self.state == _AFTER_CLOSE:
            if b == 0x28:  # (
                self.state = _TARGET
                self.paren = (self.pos, off)
                self.target = bytearray()
                self.depth = 0
                self.form = _BARE
                self.lead = bytearray()
                self.esc = False
                return None
            self.state = _TEXT
            self.cand = None
        elif self.state != _TEXT:
            return self._code_byte(b, off)
        return self._text(b, off)

    def _target_byte(self, b, off):
        if self.form == _ANGLE_DONE:
            if b == 0x29:
                return self._complete(off)
            self._abort_target()
            return self._text(b, off)
        if self.esc and b in PUNCT:
            self.esc = False
            return self._target_append(b)
        self.esc = False  # a backslash before anything else is just a backslash
        if (b in (0x20, 0x09, 0x0D) or (b == 0x0A and 0x0A not in self.lead)) and not self.target and self.form == _BARE:
            self.lead.append(b)  # whitespace before the target
            self.nl = self.nl or b == 0x0A  # (a blank line if the target is abandoned)
            if len(self.lead) > self.max_target:
                self._abort_target()
            return None
        if b == 0x5C:
            self.esc = True
        elif b == 0x0A or (b == 0x3C and self.form == _ANGLE):
            self._abort_target()
            return self._text(b, off)
        elif self.form == _ANGLE:
            if b == 0x3E:
                self.form = _ANGLE_DONE
                return None
        elif b == 0x3C and not self.target:
            self.form = _ANGLE
            return None
        elif b == 0x28:
            self.depth += 1
            if self.depth > self.max_depth:
                self._abort_target()
                return self._text(b, off)
        elif b == 0x29:
            if self.depth == 0:
                return self._complete(off)
            self.depth -= 1
        return self._target_append(b)

    def _target_append(self, b):
        self.nl = False
        self.target.append(b)
        if len(self.target) > self.max_target:
            self._abort_target()
        return None

    def _line_flags(self, b):
        """The "!" / blank-line / line-start flags after text byte ``b`` (not escaped)."""
        self.bang = b == 0x21
        if b == 0x0A:
            self.nl, self.ls = True, 0
        elif b == 0x20:
            self.ls = min(self.ls + 1, NO_LINE_START)
        elif b == 0x09 or b == 0x0D:
            self.ls = NO_LINE_START
        else:
            self.nl, self.ls = False, NO_LINE_START

    def _text(self, b, off):
        if self.esc:
            self.esc = False
            if b in PUNCT:  # an escaped character is plain text
                if self.openers:
                    self.buf.append(b)
                self.bang = self.nl = False
                self.ls = NO_LINE_START
                self._bound_text()
                return None
        if b == 0x5C:
            self.esc = True
            if self.openers:
                self.buf.append(b)
        elif b == 0x5B:  # [
            if self.openers:
                self.buf.append(b)
            else:
                self.buf = bytearray()
            self.openers.append(_Opener(self.pos, off, len(self.buf), self.bang))
            if len(self.openers) > self.max_openers:
                self.openers.pop(0)
        elif b == 0x5D:  # ]
            if self.openers:
                op = self.openers.pop()
                if op.active:  # an inactive opener (before a link) makes "]" plain text
                    self.cand = (op, bytes(self.buf[op.buf:]), self.pos, off)
                    self.state = _AFTER_CLOSE
                if self.openers:
                    self.buf.append(b)
        elif b == 0x0A and self.nl:
            self.openers.clear()  # blank line: the paragraph ends
        else:
            if self.openers:
                self.buf.append(b)
            if self.skip_code and b == 0x60:
                self.state, self.run, self.at_line_start = _TICKS, 1, self.ls < NO_LINE_START
            elif self.skip_code and b == 0x7E and self.ls < NO_LINE_START:
                self.state, self.run = _TILDES, 1
        self._line_flags(b)
        self._bound_text()
        return None

    def _code_text(self, b):
        """A byte of code (or of a run that may open code): text of the enclosing link, if any."""
        if self.openers:
            self.buf.append(b)
        self._line_flags(b)
        self._bound_text()
        return None

    def _code_byte(self, b, off):
        s = self.state
        if s == _TICKS or s == _TILDES:
            if b == (0x60 if s == _TICKS else 0x7E):
                self.run += 1
                return self._code_text(b)
            if self.run >= 3 and (s == _TILDES or self.at_line_start):
                self.state, self.fence_char, self.fence_len = _FENCE_INFO, 0x60 if s == _TICKS else 0x7E, self.run
            elif s == _TICKS:
                self.state, self.fence_len, self.run = _CODE, self.run, 0
            else:  # fewer than 3 tildes: plain text
                self.state = _TEXT
                return self._text(b, off)
            return self._code_byte(b, off)
        if s == _CODE:
            if b == 0x60:
                self.run += 1
                return self._code_text(b)
            if self.run == self.fence_len:  # the closing run
                self.state = _TEXT
                return self._text(b, off)
            self.run = 0
            if b == 0x0A and self.nl:  # a blank line ends the paragraph, and the code span with it
                self.state = _TEXT
                return self._text(b, off)
            return self._code_text(b)
        if s == _FENCE_INFO:
            if b == 0x0A:  # the fence opens: the paragraph before it ends
                self.state, self.fline, self.run = _FENCE, _LINE, 0
                self.openers.clear()
            elif b == 0x60 and self.fence_char == 0x60:  # a backtick after ```: a code span, not a fence
                self.state, self.run = _CODE, 1
            return self._code_text(b)
        # inside a fence: a line of >= fence_len fence characters (indent <= 3, then whitespace) closes it
        if b == 0x0A:
            if self.fline in (_RUN, _TAIL) and self.run >= self.fence_len:
                self.state = _TEXT
            self.fline, self.run = _LINE, 0
        elif self.fline == _LINE:
            if b == self.fence_char and self.ls < NO_LINE_START:
                self.fline, self.run = _RUN, 1
            elif not (b == 0x20 and self.ls < 3):
                self.fline = _BODY
        elif self.fline == _RUN:
            if b == self.fence_char:
                self.run += 1
            else:
                self.fline = _TAIL if b in (0x20, 0x09, 0x0D) else _BODY
        elif self.fline == _TAIL and b not in (0x20, 0x09, 0x0D):
            self.fline = _BODY
        return self._code_text(b)

    def _raw_target(self) -> bytes:
        """The target as written, for the text of an enclosing link."""
        if self.form == _BARE:
            return b"(" + self.lead + self.target
        return b"(" + self.lead + b"<" + self.target + (b">" if self.form == _ANGLE_DONE else b"")

    def _abort_target(self):
        """The target cannot complete: its bytes become text of the enclosing link, if any."""
        self.state = _TEXT
        self.esc = False
        if self.openers:
            self.buf += self._raw_target()
        self.target = bytearray()
        self.lead = bytearray()
        self.cand = None
        self.form = _BARE
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
        return self.cand[0].tok if self.state in (_AFTER_CLOSE, _TARGET) else -1

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
        if self.openers:  # an image in a link's text (a badge), or a link in an image's text
            self.buf += self._raw_target() + b")"
            if not op.image:  # links do not contain links: the "[" openers before it stop
                for o in self.openers:
                    o.active = o.active and o.image
        self.state = _TEXT
        self.esc = self.bang = self.nl = False
        self.ls = NO_LINE_START
        self.target = bytearray()
        self.lead = bytearray()
        self.cand = None
        self.form = _BARE
        self._bound_text()
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
    """Any int64 is accepted: the span bound they imply saturates instead of overflowing."""
    return positive_int(max_text_bytes, "max_text_bytes", 0), positive_int(max_target_bytes, "max_target_bytes", 0)


def _ids_arg(ids) -> np.ndarray:
    """1-d int64 ids (the C++ cores read a 1-d int64 array directly and call this for anything else)."""
    if type(ids) is np.ndarray and ids.dtype == np.int64 and ids.ndim == 1 and ids.flags.c_contiguous:
        return ids
    return int_array(ids, "ids")


def _token_id(token_id, vocab: int) -> int:
    if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
        raise TypeError(f"token_id: expected an int, got {type(token_id).__name__}")
    if not 0 <= token_id < vocab:
        raise ValueError(f"token_id: {token_id} is outside the vocabulary [0, {vocab})")
    return int(token_id)


def _cpp_core(name, tb, *args, skip_code: bool):
    """A C++ core that builds DetectedLink tuples itself and converts odd inputs with the checks above."""
    return getattr(_dispatch.ext(), name)(tb, *args, MAX_OPENERS, MAX_DEPTH, bool(skip_code), DetectedLink, _ids_arg,
                                          _token_id)


class LinkDetector:
    """Streaming link detector for one token stream (C++ unless ``CRAFT_NATIVE=python``).

    ``token_bytes``: the bytes of every token id (``tokenizer.token_bytes``). ``skip_code``: links
    inside code spans and fenced code are not links (False: code is read as text, as before).
    ``push(id) -> DetectedLink | None`` (if one token completes two links, the last is returned;
    ``push_many`` returns all), ``push_many(ids (n,) int) -> Sequence[DetectedLink]`` (C++: a
    ``LinkList``, which holds the links as records and builds each DetectedLink when it is read:
    ``len`` costs nothing, iteration, indexing, ``==`` and ``+`` with lists work as on a list;
    the Python twin returns a list),
    ``push_many_arrays(ids) -> LinkArrays`` (the same links as arrays: no Python object per link),
    ``reset()``, ``scan(ids)`` / ``scan_arrays(ids)`` (reset, then every link in ``ids``),
    ``inside_target`` (True after ``](`` and before the closing ``)``) and ``current_target_bytes``
    (the target so far, ``b""`` outside a target).

    Safe to share between threads: calls on one detector run one at a time. The C++ core copies the
    ids into a buffer it owns and checks them there before reading them, so another thread writing
    to the caller's array during a call cannot crash it.
    """

    def __init__(self, token_bytes: Sequence[bytes], max_text_bytes: int = 1024, max_target_bytes: int = 1024,
                 skip_code: bool = True):
        tb = _check_token_bytes(token_bytes)
        mt, mg = _check_limits(max_text_bytes, max_target_bytes)
        self.vocab_size = len(tb)
        if _dispatch.use_cpp():
            self._core = _cpp_core("LinkDetectorCore", tb, mt, mg, skip_code=skip_code)
            # The core checks its arguments and returns DetectedLinks: call it without a Python frame.
            # push_many is a builtin bound to the core (no pybind11 dispatch either) returning a
            # LinkList: the links as records, each DetectedLink built when it is read.
            self.push, self.push_many = self._core.push, type(self._core).fast_push_many(self._core)
        else:
            self._core = LinkDetectorReference(tb, mt, mg, skip_code=skip_code)

    @classmethod
    def for_tokenizer(cls, tokenizer, **kw) -> "LinkDetector":
        return cls(tokenizer.token_bytes, **kw)

    def push(self, token_id: int) -> DetectedLink | None:
        t = self._core.push(_token_id(token_id, self.vocab_size))
        return None if t is None else DetectedLink._from_tuple(t)

    def push_many(self, ids) -> Sequence[DetectedLink]:
        a = _ids_arg(ids)
        ids_in_range(a, "ids", self.vocab_size)
        return [_new_tuple(DetectedLink, t) for t in self._core.push_many(a)]

    def push_many_arrays(self, ids) -> LinkArrays:
        if isinstance(self._core, LinkDetectorReference):
            return LinkArrays.from_links(self.push_many(ids))
        return LinkArrays(*self._core.push_many_arrays(ids))

    def reset(self) -> None:
        self._core.reset()

    def scan(self, ids) -> Sequence[DetectedLink]:
        self.reset()
        return self.push_many(ids)

    def scan_arrays(self, ids) -> LinkArrays:
        self.reset()
        return self.push_many_arrays(ids)

    @property
    def inside_target(self) -> bool:
        return bool(self._core.inside_target)

    @property
    def current_target_bytes(self) -> bytes:
        return bytes(self._core.current_target_bytes)


class _BatchReference:
    """B reference streams side by side (the Python twin of ``BatchLinkDetectorCore``)."""

    def __init__(self, tb, batch_size, mt, mg, skip_code):
        self.streams = [LinkDetectorReference(tb, mt, mg, skip_code=skip_code) for _ in range(batch_size)]
        self.lock = threading.Lock()

    def push(self, ids):
        with self.lock:
            return [s.push(t) for s, t in zip(self.streams, ids.tolist())]

    def reset_all(self):
        with self.lock:
            for s in self.streams:
                s.reset()

    def reset_rows(self, rows):
        with self.lock:
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
    ``reset(rows=None)`` (all streams; the given stream indices; or a (B,) boolean mask of the
    streams to reset), ``inside_target -> bool (B,)``, ``current_target_bytes -> list[bytes]``.
    ``batch_size`` is at most ``MAX_BATCH`` (2**20). Safe to share between threads, as LinkDetector."""

    def __init__(self, token_bytes: Sequence[bytes], batch_size: int, max_text_bytes: int = 1024,
                 max_target_bytes: int = 1024, skip_code: bool = True):
        self.batch_size = positive_int(batch_size, "batch_size")
        if self.batch_size > MAX_BATCH:
            raise ValueError(f"batch_size: {batch_size} streams is more than MAX_BATCH = {MAX_BATCH}; "
                             "use one BatchLinkDetector per batch of generated sequences")
        tb = _check_token_bytes(token_bytes)
        mt, mg = _check_limits(max_text_bytes, max_target_bytes)
        self.vocab_size = len(tb)
        if _dispatch.use_cpp():
            self._core = _cpp_core("BatchLinkDetectorCore", tb, self.batch_size, mt, mg, skip_code=skip_code)
            self.push = self._core.push  # checks the ids itself and returns DetectedLinks
        else:
            self._core = _BatchReference(tb, self.batch_size, mt, mg, skip_code)

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
        m = np.asarray(rows)
        if m.dtype == np.bool_:
            if m.shape != (self.batch_size,):
                raise ValueError(f"rows: a boolean mask must have shape ({self.batch_size},), one flag per "
                                 f"stream, got {m.shape}")
            r = np.flatnonzero(m).astype(np.int64)
        else:
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
