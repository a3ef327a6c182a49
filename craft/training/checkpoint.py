"""Checkpoints: one ``torch.save`` dict per file, written atomically (:func:`craft.data.files.atomic_writer`:
a temporary with a random name in the same folder, fsync, ``os.replace``).

Keys: ``model`` (state_dict), ``model_config`` (dict), ``tokenizer`` (``to_dict``), ``train_config``
(dict, ``seq_len`` resolved), ``optimizer``, ``scheduler``, ``rng`` (torch / python / cuda states),
``data_position`` (the sampler's state), ``step``; plus ``corpus`` (path) and ``format``.
Files are named ``step_XXXXXXXX.pt`` under ``<run>/checkpoints/``.
"""
from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import torch

from craft.data.files import atomic_writer
from craft.models import LanguageModel, ModelConfig
from craft.tokenizers import tokenizer_from_dict

CHECKPOINT_KEYS = ("model", "model_config", "tokenizer", "train_config", "optimizer", "scheduler", "rng",
                   "data_position", "step")
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Writes ``state`` to ``path`` atomically: a reader sees the old file or the whole new one."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"state: a checkpoint needs the keys {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint dict (tensors mapped to ``map_location``); FileNotFoundError names the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, ValueError, OSError) as e:
        # an empty or truncated file, another format, or a pickle payload weights_only refuses to run
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {str(path)!r}: not a readable craft checkpoint (empty, truncated or another "
                         f"format; {type(e).__name__}: {first})") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise ValueError(f"checkpoint {str(path)!r}: not a craft checkpoint (missing {missing})")
    return state


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files ``step_*.pt`` anywhere under ``directory``, oldest first (by step, then mtime)."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        return []
    found = [p for p in directory.rglob("step_*.pt") if _NAME.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, int(_NAME.match(p.name).group(1))))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The most recently written checkpoint under ``directory`` (a run folder, its ``checkpoints``
    folder, or a folder of runs), or None when there is none."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Deletes all but the ``keep`` highest-step checkpoints directly inside ``directory``."""
    directory = Path(directory)
    files = sorted((p for p in directory.glob("step_*.pt") if _NAME.match(p.name)),
                   key=lambda p: int(_NAME.match(p.name).group(1)))
    for p in files[:-keep] if keep > 0 else files:
        p.unlink(missing_ok=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
    """The LanguageModel of a checkpoint, in eval mode on ``device``, with ``.tokenizer`` (the
    checkpoint's tokenizer) and ``.train_config`` (dict) attached. ``path`` may be a checkpoint
    file or a folder (its latest checkpoint)."""
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(f"no checkpoint under {str(p)!r}; train one with `craft train`")
        p = found
    state = load_checkpoint(p, map_location=device)
    try:
        tokenizer = tokenizer_from_dict(state["tokenizer"])
        model = LanguageModel(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise ValueError(f"checkpoint {str(p)!r}: its model or tokenizer cannot be rebuilt ({e})".splitlines()[0]) \
            from None
    if tokenizer.vocab_size > model.config.vocab_size or tokenizer.eos_id >= model.config.vocab_size:
        raise ValueError(f"checkpoint {str(p)!r}: its tokenizer ({tokenizer.name}, {tokenizer.vocab_size} ids) does "
                         f"not fit its model (vocab_size {model.config.vocab_size}); the checkpoint is inconsistent")
    model.to(device).eval()
    model.tokenizer = tokenizer
    model.train_config = dict(state["train_config"])
    model.checkpoint_path = str(p)
    return model
