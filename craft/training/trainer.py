"""The Trainer: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast, DDP, checkpoints.

One optimizer step consumes ``TrainConfig.tokens_per_step`` tokens: the sampler hands out the
same global list of windows on every process, each process takes its share (``[rank::world]``)
and runs it in ``accum_steps`` forwards of ``micro_batch`` sequences. Losses, the Ctrl-C flag and
the time limit are all-reduced once per step, so every process stops at the same step.

Ctrl-C: the first SIGINT is noted and the run stops at the end of the current step, saves a
checkpoint and raises KeyboardInterrupt; a second SIGINT interrupts at once (still saving the
last completed step). ``resume`` continues from a checkpoint exactly: model, optimizer, scheduler,
RNG states and data position are restored, so the losses after resuming are those of an
uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from craft.data.packing import PackedSequences, WindowSampler, split_windows
from craft.data.pretokenize import PretokenizedCorpus
from craft.models import LanguageModel, ModelConfig
from craft.training.checkpoint import (
    checkpoint_name, latest_checkpoint, load_checkpoint, prune_checkpoints, rng_state, save_checkpoint, set_rng_state,
)
from craft.training.config import RUN_FIELDS, TrainConfig
from craft_kernels._backend import bf16_is_fast


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier at ``step``: linear warmup over ``warmup`` steps, cosine to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when not launched by it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


class SampleGeneration:
    """Callback: every ``every`` steps (and at the end) rank 0 continues ``prompt`` for ``n_tokens``
    tokens with :func:`craft.generation.generate_tokens` and logs the text."""

    def __init__(self, every: int, prompt: str, n_tokens: int, temperature: float):
        self.every, self.prompt, self.n_tokens, self.temperature = every, prompt, n_tokens, temperature

    def __call__(self, trainer: "Trainer", step: int, final: bool = False) -> None:
        periodic = bool(self.every) and step % self.every == 0
        if trainer.rank != 0 or periodic == final:  # at the end, only when this step did not sample already
            return
        text = trainer.sample(self.prompt, self.n_tokens, self.temperature, seed=step)
        trainer.log({"event": "sample", "step": step, "text": text})
        trainer.write(f"[step {step}] sample: {text!r}")


class Trainer:
    """Trains a :class:`craft.models.LanguageModel` on a pretokenized corpus.

    ``corpus``: a pretokenized directory (see :func:`craft.data.pretokenize`) or a
    PretokenizedCorpus; ``out_dir``: the run folder (``checkpoints/``, ``log.jsonl``, ``tb/``);
    ``resume``: True (latest checkpoint in ``out_dir``) or a checkpoint path — its model and the
    step-defining fields of its train config win over ``config`` (only :data:`RUN_FIELDS` such as
    ``max_steps`` are taken from ``config``); ``callbacks``: ``fn(trainer, step, final=False)``
    called after every optimizer step and once at the end.
    """

    def __init__(self, config: TrainConfig, corpus, out_dir: str | Path, resume: bool | str | Path = False,
                 callbacks: Sequence[Callable] = ()):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a craft.training.TrainConfig, got {type(config).__name__}")
        self.corpus = corpus if isinstance(corpus, PretokenizedCorpus) else PretokenizedCorpus(corpus)
        self.out_dir = Path(out_dir)
        self.rank, self.world_size, self.local_rank = distributed_env()
        self._own_group = False
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
            self._own_group = True
        state = None
        if resume:
            path = latest_checkpoint(self.out_dir / "checkpoints") if resume is True else Path(resume)
            if path is None:
                raise FileNotFoundError(f"--resume: no checkpoint under {str(self.out_dir / 'checkpoints')!r}")
            state = load_checkpoint(path)
            saved = TrainConfig.from_dict(state["train_config"])
            run = {k: getattr(config, k) for k in RUN_FIELDS}
            config = TrainConfig.from_dict({**saved.to_dict(), **run})
            if state["tokenizer"] != self.corpus.meta["tokenizer"]:
                raise ValueError(f"corpus: pretokenized with {self.corpus.meta['tokenizer'].get('kind')!r}, but the "
                                 f"checkpoint's tokenizer is {state['tokenizer'].get('kind')!r}; resume on the "
                                 "corpus the run started with")
        self.config = config
        self.device = self._pick_device(config.device)
        self.tokenizer = self.corpus.tokenizer
        if state is not None:
            model_config = ModelConfig.from_dict(state["model_config"])
        else:
            model_config = ModelConfig.preset(config.preset, vocab_size=self.tokenizer.vocab_size,
                                              **config.model_overrides)
        if model_config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"model_overrides: vocab_size {model_config.vocab_size} is smaller than the "
                             f"tokenizer's {self.tokenizer.vocab_size}")
        self.seq_len = config.seq_len or model_config.max_seq_len
        if self.seq_len > model_config.max_seq_len:
            raise ValueError(f"seq_len={self.seq_len}: longer than the model's max_seq_len="
                             f"{model_config.max_seq_len}")
        config.seq_len = self.seq_len
        self.micro_batch, self.accum_steps = config.batch_layout(self.seq_len, self.world_size)
        self.global_batch = self.micro_batch * self.accum_steps * self.world_size

        torch.manual_seed(config.seed)
        self.model = LanguageModel(model_config).to(self.device)
        self.model.tokenizer = self.tokenizer
        self.packed = PackedSequences(self.corpus, self.seq_len)
        train_idx, eval_idx = split_windows(len(self.packed), config.eval_fraction)
        self.eval_indices = eval_idx[:config.eval_windows]
        self.sampler = WindowSampler(train_idx, seed=config.seed)
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas, fused=False)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, config.warmup_steps, config.max_steps, config.min_lr_ratio))
        self.step = 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.load_state_dict(state["data_position"])
            set_rng_state(state["rng"])
            self.step = int(state["step"])
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_is_fast(self.device))
        net = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            with warnings.catch_warnings():  # the buffers (rotary frequencies) are identical on every rank
                warnings.simplefilter("ignore", FutureWarning)
                net = DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)
        self.ddp_model = net
        self.forward_model = torch.compile(net) if config.compile else net
        self.callbacks = list(callbacks)
        if config.sample_every > 0:
            self.callbacks.append(SampleGeneration(config.sample_every, config.sample_prompt, config.sample_tokens,
                                                   config.sample_temperature))
        self.history: list[dict] = []
        self._stop_requested = 0
        self._tb = None
        self._bar = None
        self._last_eval_step = -1
        self._last_saved_step = -1

    # ------------------------------------------------------------------ helpers
    def _pick_device(self, name: str) -> torch.device:
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", self.local_rank)
            return torch.device("cpu")
        dev = torch.device(name)
        if dev.type == "cuda" and self.world_size > 1:
            dev = torch.device("cuda", self.local_rank)
        return dev

    def _autocast(self):
        if not self.use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _batch(self, indices) -> dict[str, torch.Tensor]:
        b = self.packed.batch(indices)
        return {k: v.to(self.device, non_blocking=True) for k, v in b.items()}

    def write(self, text: str) -> None:
        """Prints a line without breaking the progress bar (rank 0 only)."""
        if self.rank != 0 or not self.config.progress:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def log(self, record: dict) -> None:
        """Appends ``record`` to ``log.jsonl`` (and TensorBoard scalars) on rank 0."""
        self.history.append(record)
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "event") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{record.get('event', 'train')}/{k}", v, record.get("step", 0))

    def _open_tensorboard(self) -> None:
        if self.rank != 0 or not self.config.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the JSONL log is enough
            return
        self._tb = SummaryWriter(str(self.out_dir / "tb"))

    # ------------------------------------------------------------------ evaluation and sampling
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the held-out windows (every process computes the same value)."""
        self.model.eval()
        total, n = 0.0, 0
        for i in range(0, len(self.eval_indices), self.micro_batch):
            b = self._batch(self.eval_indices[i:i + self.micro_batch])
            with self._autocast():
                _, loss = self.model(b["tokens"], b["doc_ids"], b["targets"])
            total += float(loss) * len(b["tokens"])
            n += len(b["tokens"])
        self.model.train()
        return total / max(1, n)

    @torch.no_grad()
    def sample(self, prompt: str, n_tokens: int, temperature: float = 0.8, seed: int = 0) -> str:
        """``prompt`` continued by ``n_tokens`` sampled tokens (decoded text, prompt excluded)."""
        from craft.generation import generate_tokens

        ids = self.tokenizer.encode(prompt) or [self.tokenizer.eos_id]
        ids = ids[-(self.model.config.max_seq_len - n_tokens):] if n_tokens < self.model.config.max_seq_len \
            else ids[-1:]
        n = min(n_tokens, self.model.config.max_seq_len - len(ids))
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed * 1000003 + seed)
        self.model.eval()
        try:
            out = generate_tokens(self.model, torch.tensor([ids], device=self.device), n, temperature,
                                  eos_id=self.tokenizer.eos_id, generator=gen)
        finally:
            self.model.clear_cache()
            self.model.train()
        return self.tokenizer.decode(out[0, len(ids):].tolist())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "train_config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "data_position": self.sampler.state_dict(),
            "step": self.step,
            "corpus": str(self.corpus.path),
        }

    def save_checkpoint(self) -> Path | None:
        """Writes ``checkpoints/step_XXXXXXXX.pt`` (rank 0; other ranks wait) and prunes old ones."""
        path = self.out_dir / "checkpoints" / checkpoint_name(self.step)
        self._last_saved_step = self.step
        if self.rank == 0:
            save_checkpoint(self.state_dict(), path)
            prune_checkpoints(path.parent, self.config.keep_checkpoints)
            self.log({"event": "checkpoint", "step": self.step, "path": str(path)})
        if self.world_size > 1:
            dist.barrier()
        return path

    # ------------------------------------------------------------------ the loop
    def _on_sigint(self, signum, frame):
        self._stop_requested += 1
        if self._stop_requested > 1:
            raise KeyboardInterrupt
        self.write("interrupt: stopping after this step and saving a checkpoint (Ctrl-C again to stop now)")

    def train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (mean loss over the step's tokens on all processes, grad norm)."""
        idx = self.sampler.take(self.global_batch)[self.rank::self.world_size]
        loss_sum = torch.zeros((), device=self.device)
        for a in range(self.accum_steps):
            b = self._batch(idx[a * self.micro_batch:(a + 1) * self.micro_batch])
            sync = a == self.accum_steps - 1 or self.world_size == 1
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            with ctx:
                with self._autocast():
                    _, loss = self.forward_model(b["tokens"], b["doc_ids"], b["targets"])
                (loss / self.accum_steps).backward()
            loss_sum += loss.detach().float()
        clip = self.config.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss_sum) / self.accum_steps, float(norm)

    def _should_stop(self, started: float) -> bool:
        over = self.config.max_minutes is not None and time.monotonic() - started >= 60 * self.config.max_minutes
        flag = torch.tensor([float(self._stop_requested > 0 or over)], device=self.device)
        if self.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def train(self) -> dict:
        """Runs until ``max_steps``, ``max_minutes`` or Ctrl-C; returns a summary dict (last loss,
        eval loss, steps, tokens/sec). Ctrl-C saves a checkpoint, then re-raises KeyboardInterrupt."""
        cfg = self.config
        self._open_tensorboard()
        handler_set = False
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
            handler_set = True
        if cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
        self.model.train()
        started = time.monotonic()
        window_t, window_tokens = time.perf_counter(), 0
        tokens_per_step = self.global_batch * self.seq_len
        summary = {"start_step": self.step, "loss": None, "eval_loss": None}
        if self.rank == 0:
            self.write(f"training {self.model.num_parameters():,} parameters on {self.device} "
                       f"({'bf16' if self.use_bf16 else 'fp32'}), {self.world_size} process(es), "
                       f"{self.global_batch} x {self.seq_len} tokens per step "
                       f"({self.micro_batch} per forward x {self.accum_steps} accumulation)")
        interrupted = False
        try:
            while self.step < cfg.max_steps:
                if self._should_stop(started):
                    interrupted = self._stop_requested > 0
                    break
                before, step_before = self.sampler.state_dict(), self.step
                try:
                    loss, norm = self.train_step()
                except KeyboardInterrupt:  # second Ctrl-C mid-step: drop the partial step
                    if self.step == step_before:
                        self.sampler.load_state_dict(before)
                    self.optimizer.zero_grad(set_to_none=True)
                    raise
                if self.world_size > 1:
                    t = torch.tensor([loss], device=self.device)
                    dist.all_reduce(t)
                    loss = float(t) / self.world_size
                summary["loss"] = loss
                window_tokens += tokens_per_step
                if self._bar is not None:
                    self._bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    dt = time.perf_counter() - window_t
                    tps = window_tokens / dt if dt > 0 else 0.0
                    rec = {"event": "train", "step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": norm, "tokens": self.step * tokens_per_step, "tokens_per_sec": tps,
                           "elapsed_s": time.monotonic() - started}
                    self.log(rec)
                    if self._bar is not None:
                        self._bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
                else:
                    self.history.append({"event": "train", "step": self.step, "loss": loss})
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    summary["eval_loss"] = self._log_eval()
                for cb in self.callbacks:
                    cb(self, self.step)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.step % cfg.log_every == 0:
                    window_t, window_tokens = time.perf_counter(), 0
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if handler_set:
                signal.signal(signal.SIGINT, previous)
        try:
            if not interrupted and self.step > summary["start_step"]:
                if self._last_eval_step != self.step:
                    summary["eval_loss"] = self._log_eval()
                for cb in self.callbacks:
                    cb(self, self.step, final=True)
            if self._last_saved_step != self.step and (
                    self.step > summary["start_step"] or latest_checkpoint(self.out_dir / "checkpoints") is None):
                self.save_checkpoint()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self._tb is not None:
                self._tb.close()
            if self._own_group:
                dist.destroy_process_group()
        if interrupted:
            raise KeyboardInterrupt(f"interrupted at step {self.step}; checkpoint saved in {self.out_dir}")
        elapsed = time.monotonic() - started
        summary.update(steps=self.step, elapsed_s=elapsed,
                       tokens_per_sec=(self.step - summary["start_step"]) * tokens_per_step / max(elapsed, 1e-9),
                       checkpoint=str(self.out_dir / "checkpoints" / checkpoint_name(self.step)))
        return summary

    def _log_eval(self) -> float:
        loss = self.evaluate()
        self._last_eval_step = self.step
        self.log({"event": "eval", "step": self.step, "eval_loss": loss})
        self.write(f"[step {self.step}] eval loss {loss:.4f}")
        return loss
