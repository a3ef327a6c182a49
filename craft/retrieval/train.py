"""Training the Tiger model: AdamW, warmup + cosine, length-bucketed batches, atomic checkpoints, resume.

A run folder holds ``run.json`` (data path, ID source, model config, quality report), ``codes.npy``
(the items' semantic IDs, (n_items + 1, L)) and ``checkpoint.pt`` (model, optimizer, step, epoch,
batch position, RNG state, elapsed seconds), written atomically (temp file + ``os.replace``) every
``checkpoint_minutes`` and at the end. ``resume=True`` continues from it at the same batch.

Examples: the training sequences cut into windows of up to ``max_history + 1`` items
(:func:`craft.data.recsys.training_windows`); :meth:`Tiger.window_loss` trains every target of a
window in one pass. Batches: each epoch's shuffled windows are cut into chunks of 64 batches, sorted
by length inside a chunk, and the batches are shuffled; each batch is trimmed to its longest window,
so short windows do not pay for 21 items of padding. ``batch_size`` counts windows. The LR follows warmup then a cosine over the run's
progress: the larger of steps done / planned steps and minutes spent / ``max_minutes``, so a time
limit still ends on a decayed rate.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from craft.data.files import save_torch_atomic
from craft.data.recsys import RecsysData, training_windows
from craft.retrieval.model import Tiger, TigerConfig


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index batches of one epoch, length-bucketed (see the module docstring); deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    chunk = 64 * batch_size
    batches = []
    for c in range(0, len(perm), chunk):
        part = perm[c:c + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def lr_factor(progress: float, step: int, warmup: int, min_ratio: float = 0.05) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(data: RecsysData, codes: np.ndarray, out: str | Path, config: TigerConfig, epochs: int = 20,
          batch_size: int = 256, lr: float = 2e-3, weight_decay: float = 0.05, warmup: int = 300,
          max_minutes: float | None = None, resume: bool = False, seed: int = 0, progress: bool = True,
          checkpoint_minutes: float = 2.0, log=print) -> dict:
    """Trains (or resumes) and returns a summary dict (steps, epochs, last loss, tokens/s, seconds)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(seed)
    model = Tiger(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    step, epoch, pos, elapsed = 0, 0, 0, 0.0
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        st = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, epoch, pos, elapsed = st["step"], st["epoch"], st["pos"], st["elapsed"]
        torch.set_rng_state(st["rng"])
        log(f"resumed at step {step} (epoch {epoch}, batch {pos})")
    codes_t = torch.from_numpy(codes)
    windows = training_windows(data.train_sequences, config.max_history)
    lengths = (windows > 0).sum(1)
    per_epoch = math.ceil(len(windows) / batch_size)
    total = epochs * per_epoch
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
    started = time.monotonic() - elapsed
    last_ckpt = time.monotonic()
    tokens_done, t_tok, loss_ema = 0, time.monotonic(), None

    def save():
        save_torch_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                     "pos": pos, "elapsed": time.monotonic() - started, "rng": torch.get_rng_state(),
                     "config": config.to_dict()}, ckpt_path)

    model.train()
    stop = False
    try:
        while epoch < epochs and not stop:
            batches = epoch_batches(lengths, batch_size, seed, epoch)
            while pos < len(batches):
                spent = time.monotonic() - started
                if max_minutes is not None and spent >= 60 * max_minutes:
                    stop = True
                    break
                prog = max(step / total, spent / (60 * max_minutes) if max_minutes else 0.0)
                for g in opt.param_groups:
                    g["lr"] = lr * lr_factor(prog, step, warmup)
                idx = batches[pos]
                win = torch.from_numpy(windows[idx, :int(lengths[idx].max())])
                loss = model.window_loss(codes_t[win])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step, pos = step + 1, pos + 1
                tokens_done += 2 * int(lengths[idx].sum()) * codes.shape[1]  # encoder + decoder tokens
                loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
                if bar is not None:
                    bar.update(1)
                    if step % 20 == 0:
                        tps = tokens_done / max(time.monotonic() - t_tok, 1e-9)
                        bar.set_postfix(epoch=epoch, loss=f"{loss_ema:.3f}", tok_s=f"{tps:.0f}")
                if time.monotonic() - last_ckpt >= 60 * checkpoint_minutes:
                    save()
                    last_ckpt = time.monotonic()
            else:
                epoch, pos = epoch + 1, 0
    finally:
        save()
        if bar is not None:
            bar.close()
    secs = time.monotonic() - t_tok
    return {"steps": step, "epochs": epoch + pos / max(per_epoch, 1), "loss": loss_ema,
            "tokens_per_sec": tokens_done / max(secs, 1e-9), "seconds": time.monotonic() - started,
            "parameters": model.num_parameters()}


def load_run(run_dir: str | Path) -> tuple[Tiger, np.ndarray, dict]:
    """(model in eval mode, codes (n_items + 1, L), run.json dict) of a run folder."""
    d = Path(run_dir)
    if not (d / "run.json").is_file() or not (d / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{str(d)!r} is not a retrieval run folder (needs run.json and checkpoint.pt); "
                                "create one with `craft retrieval train --out DIR`")
    run = json.loads((d / "run.json").read_text())
    st = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = Tiger(TigerConfig(**st["config"]))
    try:
        model.load_state_dict(st["model"])
    except RuntimeError:
        raise ValueError(f"{str(d)!r}: the checkpoint does not match this version's model (it predates the "
                         "block-causal encoder with recency bias); train it again with `craft retrieval train`") from None
    model.eval()
    run["step"] = st["step"]
    return model, np.load(d / "codes.npy"), run
