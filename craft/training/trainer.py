"""The Trainer: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast, DDP, checkpoints.

One optimizer step consumes ``TrainConfig.tokens_per_step`` tokens: the sampler hands out the
same global list of windows on every process, each process takes its share (``[rank::world]``)
and runs it in ``accum_steps`` forwards of ``micro_batch`` sequences. Losses, the Ctrl-C flag and
the time limit are all-reduced once per step, so every process stops at the same step.

Ctrl-C: the first SIGINT is noted and the run stops at the end of the current step, saves a
checkpoint and raises KeyboardInterrupt; a second SIGINT interrupts at once, still saving the last
completed step: before the update it drops the partial step, and during the update (optimizer,
schedule, step counter) it waits until the update is whole. ``resume`` continues from a checkpoint
exactly: model, optimizer, scheduler, RNG states and data position are restored, so the losses
after resuming are those of an uninterrupted run. The run folder is locked while a trainer uses
it (:class:`RunLock`).
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

from craft.data.files import remove_stale_temporaries
from craft.data.packing import PackedSequences, WindowSampler, split_windows
from craft.data.pretokenize import PretokenizedCorpus
from craft.models import LanguageModel, ModelConfig
from craft.training.checkpoint import (
    checkpoint_name, latest_checkpoint, load_checkpoint, prune_checkpoints, rng_state, save_checkpoint, set_rng_state,
)
from craft.training.config import RUN_FIELDS, TrainConfig
from craft_kernels import bf16_is_fast


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


class RunFolderBusy(RuntimeError):
    """Another process is training in this run folder (it holds ``<run>/.lock``)."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run>/.lock`` held while a trainer may write the folder, so
    two trainers never interleave checkpoints and logs. The lock is the kernel's: it goes away with
    the process (kill -9 included), so a stale lock file never blocks a later run. Where ``fcntl``
    does not exist (Windows) the lock is a no-op."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        if self._file is not None:
            return
        try:
            import fcntl
        except ImportError:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_NOFOLLOW: a symlink planted at .lock must not make us truncate the file it points to
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise RunFolderBusy(f"run folder {str(self.path.parent)!r}: cannot open its lock file {self.path.name} "
                                f"({e.strerror}); remove it if it is a link") from None
        f = os.fdopen(fd, "r+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise RunFolderBusy(f"run folder {str(self.path.parent)!r} is in use by another trainer (pid {owner}, lock "
                                f"{self.path.name}); wait for it to finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


class Trainer:
    """Trains a :class:`craft.models.LanguageModel` on a pretokenized corpus.

    ``corpus``: a pretokenized directory (see :func:`craft.data.pretokenize`) or a
    PretokenizedCorpus; ``out_dir``: the run folder (``checkpoints/``, ``log.jsonl``, ``tb/``);
    ``resume``: True (latest checkpoint in ``out_dir``) or a checkpoint path — its model and the
    step-defining fields of its train config win over ``config`` (only :data:`RUN_FIELDS` such as
    ``max_steps`` are taken from ``config``); ``callbacks``: ``fn(trainer, step, final=False)``
    called after every optimizer step and once at the end.

    The run folder is locked (:class:`RunLock`) from construction until :meth:`train` returns, so a
    second trainer on the same folder raises :class:`RunFolderBusy`; checkpoint temporaries a
    killed run left behind are removed once the lock is held.
    """

    def __init__(self, config: TrainConfig, corpus, out_dir: str | Path, resume: bool | str | Path = False,
                 callbacks: Sequence[Callable] = ()):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a craft.training.TrainConfig, got {type(config).__name__}")
        self.corpus = corpus if isinstance(corpus, PretokenizedCorpus) else PretokenizedCorpus(corpus)
        self.out_dir = Path(out_dir)
        self.rank, self.world_size, self.local_rank = distributed_env()
        self._lock = RunLock(self.out_dir)
        if self.rank == 0:
            self._lock.acquire()
            self._remove_stale_temporaries()
        try:
            self._own_group = self._init_distributed()
            config, state = self._resume_state(config, resume)
            self.config = config
            self.device = self._pick_device(config.device)
            self.tokenizer = self.corpus.tokenizer
            model_config = self._model_config(config, state)
            self._build_data(config)  # before the model: a seq_len the corpus cannot fill fails without allocating
            torch.manual_seed(config.seed)
            self.model = LanguageModel(model_config).to(self.device)
            self.model.tokenizer = self.tokenizer
            self._build_optimizer(config)
            self.step = 0
            if state is not None:
                self._restore(state)
            self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_is_fast(self.device))
            self._wrap_model(config)
        except BaseException:
            self._lock.release()
            raise
        self.callbacks = list(callbacks)
        if config.sample_every > 0:
            self.callbacks.append(SampleGeneration(config.sample_every, config.sample_prompt, config.sample_tokens,
                                                   config.sample_temperature))
        self.history: list[dict] = []
        self._stop_requested = 0
        self._in_commit = False
        self._interrupt_pending = False
        self._tb = None
        self._bar = None
        self._last_eval_step = -1
        self._last_saved_step = -1

    # ------------------------------------------------------------------ construction
    def _remove_stale_temporaries(self) -> None:
        """Checkpoint temporaries a killed run left (safe: this process holds the run lock)."""
        folder = self.out_dir / "checkpoints"
        remove_stale_temporaries(folder, "step_*.pt")
        for p in folder.glob(".step_*.pt.tmp-*") if folder.is_dir() else ():  # names of earlier versions
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)

    def _init_distributed(self) -> bool:
        """Joins the process group torchrun describes; True when this trainer created it."""
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            return True
        return False

    def _resume_state(self, config: TrainConfig, resume) -> tuple[TrainConfig, dict | None]:
        """(the config to run with, the checkpoint dict or None): a resumed run keeps its saved config
        except :data:`RUN_FIELDS`, and must use the corpus's tokenizer."""
        if not resume:
            return config, None
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
        return config, state

    def _model_config(self, config: TrainConfig, state: dict | None) -> ModelConfig:
        """The model's config (a resumed run's comes from its checkpoint) and ``seq_len``, checked
        against the tokenizer and the model's context."""
        if state is not None:
            model_config = ModelConfig.from_dict(state["model_config"])
        else:
            overrides = {"vocab_size": self.tokenizer.vocab_size, **config.model_overrides}  # a larger one may pad
            model_config = ModelConfig.preset(config.preset, **overrides)
        if model_config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"model_overrides: vocab_size {model_config.vocab_size} is smaller than the "
                             f"tokenizer's {self.tokenizer.vocab_size}")
        self.seq_len = config.seq_len or model_config.max_seq_len
        if self.seq_len > model_config.max_seq_len:
            raise ValueError(f"seq_len={self.seq_len}: longer than the model's max_seq_len="
                             f"{model_config.max_seq_len}")
        config.seq_len = self.seq_len
        return model_config

    def _build_data(self, config: TrainConfig) -> None:
        """Packed windows, the train/eval split, the seeded sampler and the batch layout."""
        self.micro_batch, self.accum_steps = config.batch_layout(self.seq_len, self.world_size)
        self.global_batch = self.micro_batch * self.accum_steps * self.world_size
        self.packed = PackedSequences(self.corpus, self.seq_len)
        train_idx, eval_idx = split_windows(len(self.packed), config.eval_fraction)
        self.eval_indices = eval_idx[:config.eval_windows]
        self.train_data = self.packed
        if config.linked:  # anchors: the documents wholly before the first held-out window
            from craft.data.linked_packing import LinkedPacking, train_document_count

            n_train = train_document_count(self.packed, config.eval_fraction)  # held-out documents never placed
            self.train_data = LinkedPacking(self.corpus, self.seq_len, n_documents=n_train,
                                            max_linked=config.linked_max_docs,
                                            budget_share=config.linked_budget_share,
                                            plain_share=config.linked_plain_share, seed=config.seed)
            train_idx = range(len(self.train_data))
        self.sampler = WindowSampler(train_idx, seed=config.seed)

    def _build_optimizer(self, config: TrainConfig) -> None:
        """AdamW (no weight decay on vectors) and the warmup + cosine schedule."""
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas, fused=False)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, config.warmup_steps, config.max_steps, config.min_lr_ratio))

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["data_position"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def _wrap_model(self, config: TrainConfig) -> None:
        """``ddp_model`` (DistributedDataParallel when there are several processes) and
        ``forward_model`` (``torch.compile`` of it when ``config.compile``)."""
        net = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            with warnings.catch_warnings():  # the buffers (rotary frequencies) are identical on every rank
                warnings.simplefilter("ignore", FutureWarning)
                net = DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)
        self.ddp_model = net
        self.forward_model = torch.compile(net) if config.compile else net

    # ------------------------------------------------------------------ helpers
    def _pick_device(self, name: str) -> torch.device:
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", self.local_rank)
            return torch.device("cpu")
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {name!r}, but CUDA is not available on this machine; use cpu or auto")
        if dev.type == "cuda" and self.world_size > 1:
            dev = torch.device("cuda", self.local_rank)
        return dev

    def _autocast(self):
        if not self.use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _batch(self, indices, data=None) -> dict[str, torch.Tensor]:
        b = (self.packed if data is None else data).batch(indices)
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
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # never through a symlink
        fd = os.open(self.out_dir / "log.jsonl", flags, 0o666)
        with os.fdopen(fd, "a") as f:
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
        gen = torch.Generator(device=self.device).manual_seed((self.config.seed * 1000003 + seed) % 2 ** 63)
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
        if self.rank == 0:
            save_checkpoint(self.state_dict(), path)
            prune_checkpoints(path.parent, self.config.keep_checkpoints)
            self.log({"event": "checkpoint", "step": self.step, "path": str(path)})
        if self.world_size > 1:
            dist.barrier()
        self._last_saved_step = self.step  # only once written: an interrupted save is redone at the end
        return path

    # ------------------------------------------------------------------ the loop
    def _on_sigint(self, signum, frame):
        self._stop_requested += 1
        if self._stop_requested > 1:
            if self._in_commit:  # never between optimizer.step() and the step counter: raise right after
                self._interrupt_pending = True
                return
            raise KeyboardInterrupt
        self.write("interrupt: stopping after this step and saving a checkpoint (Ctrl-C again to stop now)")

    @contextlib.contextmanager
    def _commit(self):
        """The section that changes the training state (parameters, optimizer, schedule, step
        counter): a second Ctrl-C arriving inside it is only noted (``_interrupt_pending``) and raised
        by the loop once the step is logged, so a checkpoint never holds the parameters of step
        n + 1 with the counter and data position of step n."""
        self._in_commit = True
        try:
            yield
        finally:
            self._in_commit = False

    def _raise_pending_interrupt(self) -> None:
        if self._interrupt_pending:
            self._interrupt_pending = False
            raise KeyboardInterrupt

    def train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (mean loss over the step's tokens on all processes, grad norm).
        A KeyboardInterrupt leaves the state of the last whole step (the partial step is dropped)."""
        before = self.sampler.state_dict(), rng_state()
        try:
            idx = self.sampler.take(self.global_batch)[self.rank::self.world_size]
            loss_sum = torch.zeros((), device=self.device)
            for a in range(self.accum_steps):
                b = self._batch(idx[a * self.micro_batch:(a + 1) * self.micro_batch], self.train_data)
                sync = a == self.accum_steps - 1 or self.world_size == 1
                ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
                with ctx:
                    with self._autocast():
                        _, loss = self.forward_model(b["tokens"], b["doc_ids"], b["targets"], b.get("links"))
                    (loss / self.accum_steps).backward()
                loss_sum += loss.detach().float()
            clip = self.config.grad_clip
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        except KeyboardInterrupt:  # second Ctrl-C before the update: nothing changed but the data position
            self.sampler.load_state_dict(before[0])
            set_rng_state(before[1])
            self.optimizer.zero_grad(set_to_none=True)
            raise
        with self._commit():
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
        """Runs until ``max_steps``, ``max_minutes`` or Ctrl-C; returns a summary dict (``loss``: the
        last step's loss, None when no step ran because the run had already reached ``max_steps``;
        ``eval_loss``, ``steps``, ``tokens_per_sec``, ``checkpoint``). Ctrl-C saves a checkpoint,
        then re-raises KeyboardInterrupt. The run folder stays locked until this returns."""
        if self.rank == 0:
            self._lock.acquire()
        try:
            return self._train()
        finally:
            self._lock.release()

    def _train(self) -> dict:
        self._open_tensorboard()
        started = time.monotonic()
        summary = {"start_step": self.step, "loss": None, "eval_loss": None}
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        interrupted = False
        try:
            self._open_progress()
            interrupted = self._loop(started, summary)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        try:
            self._finish(interrupted, summary)
        finally:
            self._close_outputs()
        if interrupted:
            raise KeyboardInterrupt(f"interrupted at step {self.step}; checkpoint saved in {self.out_dir}")
        elapsed = time.monotonic() - started
        tokens_per_step = self.global_batch * self.seq_len
        summary.update(steps=self.step, elapsed_s=elapsed,
                       tokens_per_sec=(self.step - summary["start_step"]) * tokens_per_step / max(elapsed, 1e-9),
                       checkpoint=str(self.out_dir / "checkpoints" / checkpoint_name(self.step)))
        return summary

    def _open_progress(self) -> None:
        if self.config.progress and self.rank == 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.config.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
        if self.rank == 0:
            self.write(f"training {self.model.num_parameters():,} parameters on {self.device} "
                       f"({'bf16' if self.use_bf16 else 'fp32'}), {self.world_size} process(es), "
                       f"{self.global_batch} x {self.seq_len} tokens per step "
                       f"({self.micro_batch} per forward x {self.accum_steps} accumulation)")

    def _loop(self, started: float, summary: dict) -> bool:
        """Steps until ``max_steps`` or a stop request; True when stopped by Ctrl-C."""
        cfg = self.config
        self.model.train()
        window = [time.perf_counter(), 0]  # start time and tokens of the throughput window
        while self.step < cfg.max_steps:
            if self._should_stop(started):
                return self._stop_requested > 0
            loss, norm = self.train_step()
            if self.world_size > 1:
                t = torch.tensor([loss], device=self.device)
                dist.all_reduce(t)
                loss = float(t) / self.world_size
            summary["loss"] = loss
            window[1] += self.global_batch * self.seq_len
            self._after_step(loss, norm, started, window, summary)
        return False

    def _after_step(self, loss: float, norm: float, started: float, window: list, summary: dict) -> None:
        """Logging, evaluation, callbacks and periodic checkpoints after optimizer step ``self.step``."""
        cfg = self.config
        if self._bar is not None:
            self._bar.update(1)
        if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
            dt = time.perf_counter() - window[0]
            tps = window[1] / dt if dt > 0 else 0.0
            self.log({"event": "train", "step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                      "grad_norm": norm, "tokens": self.step * self.global_batch * self.seq_len,
                      "tokens_per_sec": tps, "elapsed_s": time.monotonic() - started})
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
        else:
            self.history.append({"event": "train", "step": self.step, "loss": loss})
        self._raise_pending_interrupt()  # a second Ctrl-C during the update stops here, the step recorded
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            summary["eval_loss"] = self._log_eval()
        for cb in self.callbacks:
            cb(self, self.step)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        if self.step % cfg.log_every == 0:
            window[:] = [time.perf_counter(), 0]

    def _finish(self, interrupted: bool, summary: dict) -> None:
        """Final evaluation and callbacks (unless interrupted) and the last checkpoint."""
        if not interrupted and self.step > summary["start_step"]:
            if self._last_eval_step != self.step:
                summary["eval_loss"] = self._log_eval()
            for cb in self.callbacks:
                cb(self, self.step, final=True)
        if self._last_saved_step != self.step and (
                self.step > summary["start_step"] or latest_checkpoint(self.out_dir / "checkpoints") is None):
            self.save_checkpoint()

    def _close_outputs(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._own_group:
            dist.destroy_process_group()
            self._own_group = False

    def _log_eval(self) -> float:
        loss = self.evaluate()
        self._last_eval_step = self.step
        self.log({"event": "eval", "step": self.step, "eval_loss": loss})
        self.write(f"[step {self.step}] eval loss {loss:.4f}")
        return loss
