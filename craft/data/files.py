"""Writing files safely: atomic replacement, unpredictable temporaries, stale-temporary cleanup.

Every file craft writes into a user-visible folder (checkpoints, a corpus's ``meta.json``, linked
generation's documents and ``manifest.json``) goes through :func:`atomic_writer`: the bytes go to a
temporary created by ``tempfile.mkstemp`` in the target folder (``O_CREAT | O_EXCL``, a random
name, so a symlink planted there is never followed or overwritten), are fsync'ed, and the
temporary is renamed over the target (``os.replace``: a reader sees the old file or the whole new
one; a symlink at the target is replaced, not followed). Temporaries are named
``.<target name>.<random>.tmp`` so :func:`remove_stale_temporaries` can find the ones a killed
process left behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open(path, "w") would give a new file


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """``with atomic_writer(path) as f: f.write(...)``: ``path`` is replaced only when the block
    ends without an exception (the temporary is removed otherwise). ``mode``: ``"wb"`` or ``"w"``
    (text, ``encoding`` default UTF-8). The parent folder must exist."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            fd = -1  # owned by f now
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def save_torch_atomic(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_writer`); creates the parent folder."""
    import torch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        torch.save(obj, f)
    return Path(path)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Writes ``data`` (bytes, or str as UTF-8) to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Deletes the temporaries :func:`atomic_writer` left in ``folder`` for targets matching
    ``pattern`` (a glob over the target name), e.g. after a kill -9. Call it only while no other
    process writes there (the trainer holds its run lock). Returns the removed paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".{pattern}.*{TMP_SUFFIX}"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies under it (after resolving symlinks and ``..``)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents
