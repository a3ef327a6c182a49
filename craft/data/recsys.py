"""Sequential-recommendation data: readers and the leave-one-out split.

Formats (the S3-Rec / LETTER files, and any file written the same way):

- interactions: one user per line, ``user item item …``, whitespace-separated positive ints, items
  numbered from 1 in time order (0 is reserved for padding);
- ``{item: [attribute ids]}`` JSON (items from 1);
- LETTER index JSON ``{"0": ["<a_183>", "<b_70>", …]}`` (items from 0: item = key + 1);
- item text JSON ``{"0": {"title": …, "description": …}}`` (items from 0, like the index).

Every reader raises :class:`RecsysDataError` naming the file (and the line, for text files) and
what was expected, so a command line can print it as one line.

Leave-one-out (the protocol of S3-Rec, TIGER and their reimplementations): for a user sequence
``s`` the model trains on every prefix of ``s[:-2]`` (history ``s[:t]`` -> target ``s[t]``), is
validated on ``s[-2]`` given ``s[:-2]`` and tested on ``s[-1]`` given ``s[:-1]``; histories keep
their last ``max_history`` items. Users with fewer than 3 items have no valid/test example.

:func:`training_windows` cuts the same training targets into windows of up to ``max_history + 1``
items for models that train every target of a window in one pass (each target exactly once; a
target's history is the items before it in its window).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from craft_kernels import check_int

_CODE = re.compile(r"^<([A-Za-z]+)_(\d+)>$")


class RecsysDataError(ValueError):
    """A malformed or unreadable data file; the message names the file (and line)."""


def _open_text(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RecsysDataError(f"{path}: no such {what} file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RecsysDataError(f"{path}: cannot read {what} file ({e})") from None


def _load_json(path: str, what: str) -> dict:
    text = _open_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecsysDataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise RecsysDataError(f"{path}: expected a JSON object {{item: …}}, got {type(data).__name__}")
    return data


def read_sequences(path: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(user_ids (U,) int64, sequences)``: one int64 array of items (>= 1) per user, in file order."""
    text = _open_text(path, "interactions")
    users, seqs = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            nums = np.array([int(p) for p in parts], dtype=np.int64)
        except ValueError:
            bad = next(p for p in parts if not p.lstrip("-").isdigit())
            raise RecsysDataError(f"{path}:{lineno}: expected 'user item item …' (integers), found {bad[:40]!r}") from None
        if len(nums) < 2:
            raise RecsysDataError(f"{path}:{lineno}: user {parts[0]} has no items; expected 'user item item …'")
        if nums[1:].min() < 1:
            raise RecsysDataError(f"{path}:{lineno}: item ids must be >= 1 (0 is padding), found {int(nums[1:].min())}")
        if nums[1:].max() >= 2**31:
            raise RecsysDataError(f"{path}:{lineno}: item id {int(nums[1:].max())} is too large (must be < 2**31)")
        users.append(nums[0])
        seqs.append(nums[1:])
    if not seqs:
        raise RecsysDataError(f"{path}: no interactions (expected lines 'user item item …')")
    return np.array(users, dtype=np.int64), seqs


def _item_key(path: str, key: str, offset: int) -> int:
    try:
        item = int(key) + offset
    except ValueError:
        raise RecsysDataError(f"{path}: key {key[:40]!r} is not an item number") from None
    if item < 1:
        raise RecsysDataError(f"{path}: item key {key!r} gives item {item}; items start at 1")
    return item


def read_letter_index(path: str, n_items: int | None = None) -> np.ndarray:
    """LETTER semantic IDs as int64 (n_items + 1, L): row ``item`` holds its L codes (row 0 unused, -1).

    ``n_items``: the catalog size (default: the largest item in the file); every item 1..n_items
    must have an ID, all IDs the same length."""
    data = _load_json(path, "semantic-ID index")
    rows: dict[int, list[int]] = {}
    length = None
    for key, codes in data.items():
        item = _item_key(path, key, 1)
        if not isinstance(codes, list) or not codes:
            raise RecsysDataError(f"{path}: item key {key!r}: expected a list of codes like '<a_12>', got {codes!r:.60}")
        parsed = []
        for c in codes:
            m = _CODE.match(c) if isinstance(c, str) else None
            if m is None and not (isinstance(c, int) and not isinstance(c, bool) and c >= 0):
                raise RecsysDataError(f"{path}: item key {key!r}: code {c!r:.40} is not '<x_N>' or a non-negative int")
            parsed.append(int(m.group(2)) if m else int(c))
        if length is None:
            length = len(parsed)
        elif len(parsed) != length:
            raise RecsysDataError(f"{path}: item key {key!r} has {len(parsed)} codes, the others {length}")
        rows[item] = parsed
    if not rows:
        raise RecsysDataError(f"{path}: empty index")
    n = max(rows) if n_items is None else n_items
    missing = [i for i in range(1, n + 1) if i not in rows]
    if missing:
        raise RecsysDataError(f"{path}: no ID for {len(missing)} items (first: item {missing[0]}, key "
                              f"{missing[0] - 1!r}); the index must cover items 1..{n}")
    out = np.full((n + 1, length), -1, dtype=np.int64)
    for item, codes in rows.items():
        if item <= n:
            out[item] = codes
    return out


def read_attributes(path: str, n_items: int) -> list[list[int]]:
    """``attrs[item]``: attribute ids of each item 0..n_items (item 0 and unknown items: empty)."""
    data = _load_json(path, "attributes")
    attrs: list[list[int]] = [[] for _ in range(n_items + 1)]
    for key, vals in data.items():
        item = _item_key(path, key, 0)
        if not isinstance(vals, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals):
            raise RecsysDataError(f"{path}: item {key!r}: expected a list of non-negative attribute ids, got {vals!r:.60}")
        if item <= n_items:
            attrs[item] = vals
    return attrs


def read_item_text(path: str, n_items: int) -> list[str]:
    """``texts[item]``: ``title + description`` of each item 0..n_items (keys from 0 like LETTER's files)."""
    data = _load_json(path, "item text")
    texts = [""] * (n_items + 1)
    for key, val in data.items():
        item = _item_key(path, key, 1)
        if isinstance(val, str):
            text = val
        elif isinstance(val, dict):
            text = " ".join(str(val.get(k, "")) for k in ("title", "description") if val.get(k))
        else:
            raise RecsysDataError(f"{path}: item key {key!r}: expected a string or {{title, description}}")
        if item <= n_items:
            texts[item] = text
    return texts


@dataclass
class Examples:
    """Histories (N, max_history) int64 left-padded with 0 (most recent item last), targets (N,) int64,
    users (N,) int64 (row of the user in the file)."""

    history: np.ndarray
    target: np.ndarray
    user: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def lengths(self) -> np.ndarray:
        return (self.history > 0).sum(1)


@dataclass
class RecsysData:
    """A leave-one-out split. ``n_items``: items are 1..n_items; ``train_sequences``: each user's
    ``s[:-2]`` (what models and heuristics may learn from)."""

    n_items: int
    max_history: int
    train: Examples
    valid: Examples
    test: Examples
    train_sequences: list[np.ndarray]
    path: str = ""


def _examples(rows: list[tuple[int, np.ndarray, int]], max_history: int) -> Examples:
    hist = np.zeros((len(rows), max_history), dtype=np.int64)
    for r, (_, h, _) in enumerate(rows):
        h = h[-max_history:]
        if len(h):
            hist[r, -len(h):] = h
    return Examples(hist, np.array([t for _, _, t in rows], dtype=np.int64),
                    np.array([u for u, _, _ in rows], dtype=np.int64))


def leave_one_out(sequences: list[np.ndarray], max_history: int = 20, n_items: int | None = None,
                  path: str = "") -> RecsysData:
    """The split described in the module docstring. ``n_items`` defaults to the largest item seen."""
    check_int(max_history, "max_history", 1)
    seen = max(int(s.max()) for s in sequences if len(s))
    n = seen if n_items is None else n_items
    if n < seen:
        raise ValueError(f"n_items={n}: the data holds item {seen}")
    train, valid, test, train_seqs = [], [], [], []
    for u, s in enumerate(sequences):
        s = np.asarray(s, dtype=np.int64)
        head = s[:-2] if len(s) >= 3 else s
        train_seqs.append(head)
        for t in range(1, len(head)):
            train.append((u, head[:t], int(head[t])))
        if len(s) >= 3:
            valid.append((u, s[:-2], int(s[-2])))
            test.append((u, s[:-1], int(s[-1])))
    if not test:
        raise ValueError("sequences: no user has 3 or more items, so there is nothing to validate or test")
    return RecsysData(n, max_history, _examples(train, max_history), _examples(valid, max_history),
                      _examples(test, max_history), train_seqs, path)


def training_windows(train_sequences: list[np.ndarray], max_history: int) -> np.ndarray:
    """int64 (N, max_history + 1): windows of the training sequences, items first (oldest first),
    0-padded on the right. A sequence of n items gives windows ending at n, n - max_history, …, so
    every item but the first of each sequence is a target (item t of a window, t >= 1) exactly once;
    windows with fewer than 2 items are dropped."""
    check_int(max_history, "max_history", 1)
    w = max_history + 1
    rows = []
    for s in train_sequences:
        end = len(s)
        while end >= 2:
            start = max(0, end - w)
            rows.append(np.asarray(s[start:end], dtype=np.int64))
            if start == 0:
                break
            end = start + 1  # the next window's last target is this window's first item
    out = np.zeros((len(rows), w), dtype=np.int64)
    for r, items in enumerate(rows):
        out[r, :len(items)] = items
    return out


def load_recsys(path: str, max_history: int = 20) -> RecsysData:
    """``read_sequences`` + ``leave_one_out``."""
    _, seqs = read_sequences(path)
    return leave_one_out(seqs, max_history, path=os.fspath(path))
