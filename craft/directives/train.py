"""DirectiveModel (task input/output layers around DirectiveDecoder and TransformEngine), its
training loop with atomic checkpoints and resume, and evaluation.

Variants, trained in the same harness:
- ``act`` / ``pondernet`` / ``none``: the halting decoder with that ponder cost.
- ``fixed``: the same model with no halting: every output gets exactly ``task.fixed_steps``
  instructions, is the result of the last of them, and the number of outputs is the task's
  (an oracle the halting variants must learn); the repetition baseline of Fojo et al.

A run folder holds one sub-folder per variant with ``checkpoint.pt`` (model, optimizer, step,
training seconds on the budget's clock and on both clocks, config) and ``metrics.json``. A step's
batch is drawn from a generator seeded by (seed, step), so a resumed run sees the batches it would
have seen.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from craft.data.files import atomic_write, save_torch_atomic
from craft.directives.decoder import DirectiveDecoder
from craft.directives.engine import TransformEngine
from craft.directives.losses import count_loss, count_nll, halt_margin, pad_slots, ponder_cost, return_credit
from craft.directives.tasks import Batch, Task, get_task
from craft.training.clock import CLOCKS, clock_fn
from craft_kernels import check_float

VARIANTS = ("act", "pondernet", "none", "fixed")
# instructions allowed per row: in training / on the extrapolation split (longer inputs need more)
MAX_INSTRUCTIONS = {"parity": (12, 24), "counts": (28, 48), "addition": (16, 24)}
RESULT_LOSSES = ("expected", "slot")
# Per-task defaults of the RunConfig fields left None.
# return_bias: parity starts with rows running long (r about 0.02: the result after a full scan gets
# trained first); counts starts closing a slot every 2 instructions (r = 0.5), the pace its outputs
# need, so its slots line up with the targets from the first step. count_nll_weight: counts needs
# the halting to land on one exact close among many (see losses.count_nll); parity and addition
# were tuned without it.
# direction_bias: the engine's direction gate starts undecided for counts (copy and reverse must
# each pull it their way), forwards where the order does not matter (parity) or is always forwards.
# hold_at_end: parity's answer is the state after the last item; on inputs longer than in training
# the slot closes late, so the state must not drift after the scan (counts not yet tried with it).
# seek_score, score_gains: counts gives the seek its own score (pairwise sums must read every item
# while the lookahead's score is pulled by the count losses) and the scores gated features (keep
# positive filters on the key's sign, the other commands take every item); parity and addition keep
# the shared additive score they were tuned with.
# lookahead_seek, command_state: counts' halting reads a lookahead that counts what the seek takes,
# and its heads tell the commands apart from the first step (benchmarks/RESULTS.md, fifth session).
# halt_margin_weight (losses.halt_margin: a row must pass ACT's threshold at the right close, not
# only put most of its halting there), return_credit_weight (losses.return_credit: a saturated
# return rhythm can still change, pairwise sums need their own) and result_floor (every result of a
# target slot is trained, so the credit can see that a later one would be better): counts; parity
# and addition were tuned without them (parity's training is bit-identical with them at 0).
TASK_DEFAULTS = {"parity": {"return_bias": -4.0, "count_nll_weight": 0.0, "direction_bias": -4.0, "hold_at_end": True,
                            "seek_score": False, "score_gains": 0, "lookahead_seek": False, "command_state": False,
                            "halt_margin_weight": 0.0, "return_credit_weight": 0.0, "result_floor": 0.0},
                 "counts": {"return_bias": 0.0, "count_nll_weight": 1.0, "direction_bias": 0.0, "hold_at_end": False,
                            "seek_score": True, "score_gains": 4,
                            "lookahead_seek": True, "command_state": True,
                            "halt_margin_weight": 1.0, "return_credit_weight": 1.0, "result_floor": 0.1},
                 "addition": {"return_bias": -4.0, "count_nll_weight": 0.0, "direction_bias": -4.0,
                              "hold_at_end": False, "seek_score": False, "score_gains": 0,
                              "lookahead_seek": False, "command_state": False,
                              "halt_margin_weight": 0.0, "return_credit_weight": 0.0, "result_floor": 0.0}}


# fields added after runs were saved: the value that reproduces those runs
SAVED_BEFORE = {"hold_at_end": False, "seek_score": False, "score_gains": 0, "lookahead_seek": False,
                "command_state": False, "halt_margin_weight": 0.0, "return_credit_weight": 0.0, "result_floor": 0.0}


@dataclass
class RunConfig:
    task: str = "parity"
    variant: str = "act"
    mode: str = "clamp"
    dim: int = 32
    n_layers: int = 2
    n_heads: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    max_steps: int = 1_000_000
    max_minutes: float = 5.0
    # what max_minutes counts: "wall" seconds, or "cpu" seconds of this process (a shared machine:
    # the minutes of a quiet core); both are kept in the checkpoint whichever one the budget counts
    clock: str = "wall"
    seed: int = 0
    count_weight: float = 1.0
    count_nll_weight: float | None = None  # -log P(halt at the target count), beside the quantity loss
    ponder_weight: float = 1e-2
    lambda_p: float = 0.3
    feedback: bool = True
    positions: str = "none"
    return_bias: float | None = None  # initial return-head bias; None: the task's (TASK_DEFAULTS)
    direction_bias: float | None = None  # initial logit of the engine's direction gate; None: the task's
    hold_at_end: bool | None = None  # the engine's state holds once its heads are at the end; None: the task's
    seek_score: bool | None = None  # the engine's seek has its own item score; None: the task's
    score_gains: int | None = None  # item features whose gain the engine's state sets, per score; None: the task's
    lookahead_seek: bool | None = None  # the engine's lookahead counts what its seek would take; None: the task's
    command_state: bool | None = None  # the engine's state starts from the command too; None: the task's
    halt_margin_weight: float | None = None  # losses.halt_margin (ACT's threshold at the right close); None: the task's
    return_credit_weight: float | None = None  # losses.return_credit on the return logits; None: the task's
    result_floor: float | None = None  # every instruction's result trained toward its slot's target with this weight
    result_loss: str = "expected"
    decoder_context: bool = True  # False: the decoder sees only the command; the items reach only the engine
    # tasks with several commands (counts): draw each command in proportion to 0.2 + its training
    # error (a moving average of rows fully right), so the solved ones stop taking most of the batch
    command_curriculum: bool = False
    # > 0: a size curriculum over the first this-many steps: the largest training size (items in the
    # context) grows linearly from one above the smallest to the task's largest
    size_curriculum: int = 0
    checkpoint_every: int = 50
    eval_rows: int = 256

    def __post_init__(self):
        get_task(self.task)
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        clock_fn(self.clock)  # ValueError naming the argument
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        if not isinstance(self.size_curriculum, int) or self.size_curriculum < 0:
            raise ValueError(f"size_curriculum: expected a number of steps >= 0, got {self.size_curriculum!r}")
        if self.result_loss not in RESULT_LOSSES:
            raise ValueError(f"result_loss: expected one of {RESULT_LOSSES}, got {self.result_loss!r}")
        for name in ("count_nll_weight", "halt_margin_weight", "return_credit_weight", "result_floor"):
            check_float(getattr(self, name), name, 0, hint=" (a loss weight; 0 turns it off)")
        if self.return_credit_weight and self.result_loss != "expected":
            raise ValueError("return_credit_weight: needs result_loss='expected' (it credits per-instruction "
                             "results); set result_loss='expected' or return_credit_weight=0")


class DirectiveModel(nn.Module):
    """Command embedding, context projection, decoder, engine, readout.

    No learned per-index item embedding: an index seen only past the training sizes would be an
    untrained vector on the extrapolation split. Order reaches the engine as its index slope and the
    decoder through rotary positions (``positions='ordered'``) or not at all ('none').
    ``feedback``: the engine runs inside generation and the decoder's return/halting heads see its
    state (see decoder.py); otherwise it runs after generation."""

    def __init__(self, task: Task, cfg: RunConfig):
        super().__init__()
        self.task, self.cfg = task, cfg
        D = cfg.dim
        self.max_instructions, self.max_instructions_test = MAX_INSTRUCTIONS[task.name]
        self.command = nn.Embedding(task.n_commands, D)
        self.embed = nn.Linear(task.in_dim, D)
        self.engine = TransformEngine(D, mode=cfg.mode, direction_bias=cfg.direction_bias,
                                      hold_at_end=cfg.hold_at_end, seek_score=cfg.seek_score,
                                      score_gains=cfg.score_gains, lookahead_seek=cfg.lookahead_seek,
                                      command_state=cfg.command_state)
        self.decoder = DirectiveDecoder(D, cfg.n_layers, cfg.n_heads, max_seq_len=task.max_items + self.max_instructions_test,
                                        mode=cfg.mode, return_bias=cfg.return_bias, positions=cfg.positions,
                                        feedback_dim=self.engine.feedback_dim if cfg.feedback else 0)
        self.readout = nn.Linear(D, task.out_dim)

    def _schedule(self, batch: Batch):
        """The fixed-N baseline's (r, h) (B, I): each output is the result of its n-th instruction
        (return probability ``min_prob`` before it; the n-th closes the slot with the rest), and
        halting is 1 at the close of output ``count``."""
        n = self.task.fixed_steps
        I = n * int(batch.count.max())
        t = torch.arange(I)
        closing = ((t + 1) % n == 0)[None].expand(len(batch.count), I)
        m = self.decoder.min_prob
        r = torch.where(closing, torch.tensor(1 - m), torch.tensor(m))
        h = (((t + 1) % n == 0) & ((t + 1) // n == batch.count[:, None])).float()
        return (r, h), I

    def forward(self, batch: Batch, max_instructions: int | None = None):
        ctx = self.embed(batch.context)
        cmd = self.command(batch.command)
        if self.cfg.variant == "fixed":
            schedule, I = self._schedule(batch)
        else:
            schedule, I = None, max_instructions or self.max_instructions
        if self.cfg.feedback and not self.cfg.decoder_context:
            none = ctx.new_zeros(ctx.shape[0], 1, ctx.shape[2])
            d = self.decoder(cmd, none, torch.zeros(ctx.shape[0], 1, dtype=torch.bool), max_instructions=I,
                             schedule=schedule, engine=self.engine, engine_context=ctx, engine_mask=batch.context_mask)
            eng = self.engine.pour(d.results, d)
        elif self.cfg.feedback:
            d = self.decoder(cmd, ctx, batch.context_mask, max_instructions=I, schedule=schedule, engine=self.engine)
            eng = self.engine.pour(d.results, d)
        else:
            d = self.decoder(cmd, ctx, batch.context_mask, max_instructions=I, schedule=schedule)
            eng = self.engine(d, ctx, batch.context_mask, command=cmd)
        pred = self.readout(pad_slots(eng.slots, eng.n_slots, batch.targets.shape[1]))
        return d, eng, pred

    def expected_result_loss(self, d, eng, batch: Batch, per_instruction: bool = False):
        """PonderNet's reconstruction loss per slot: every instruction's own result is read out and
        scored against its slot's target, weighted by its return probability (within a closed slot
        these sum to 1: the slot's halting distribution). Unlike the loss of the mixed slot, this
        gives each step's result a gradient and tells the return probabilities which step was
        right, so a slot learns to stay open until its result is ready."""
        B, K = batch.target_mask.shape
        slot = d.slot_index.clamp(0, K - 1)
        idx = slot.reshape(B, -1, *([1] * (batch.targets.dim() - 2))).expand(B, slot.shape[1], *batch.targets.shape[2:])
        targets = batch.targets.gather(1, idx)
        ok = d.mask & (d.slot_index < K) & batch.target_mask.gather(1, slot)
        per = self.task.slot_loss(self.readout(eng.results), targets)
        r = d.return_probs + self.cfg.result_floor if self.cfg.result_floor else d.return_probs
        w = torch.where(ok, r, torch.zeros_like(r))
        loss = (w * per).sum() / batch.target_mask.sum().clamp_min(1)
        return (loss, per, ok) if per_instruction else loss

    def row_correct(self, d, pred, batch: Batch) -> torch.Tensor:
        """(B,) bool: the row made the right number of outputs and every target slot is right."""
        ok = self.task.slot_correct(pred, batch.targets) & batch.target_mask
        return (d.n_outputs == batch.count) & (ok | ~batch.target_mask).all(1)

    def losses(self, batch: Batch, rows: bool = False):
        """(total loss, parts: floats for the log) and with ``rows`` also :meth:`row_correct`."""
        d, eng, pred = self(batch)
        tm = batch.target_mask.float()
        per = None
        if self.cfg.result_loss == "expected":
            result, per, ok = self.expected_result_loss(d, eng, batch, per_instruction=True)
        else:
            result = (self.task.slot_loss(pred, batch.targets) * tm).sum() / tm.sum()
        total = result
        parts = {"result": float(result.detach())}
        if self.cfg.return_credit_weight and self.cfg.variant != "fixed":
            closed = d.slot_index < d.n_outputs[:, None]
            rc = return_credit(d, per, ok & closed)
            total = total + self.cfg.return_credit_weight * rc
            parts["credit"] = float(rc.detach())
        if self.cfg.variant != "fixed":
            c = count_loss(d, batch.count)
            total = total + self.cfg.count_weight * c
            parts["count"] = float(c.detach())
            if self.cfg.count_nll_weight:
                nll = count_nll(d, batch.count)
                total = total + self.cfg.count_nll_weight * nll
                parts["count_nll"] = float(nll.detach())
            if self.cfg.halt_margin_weight:
                hm = halt_margin(d, batch.count)
                total = total + self.cfg.halt_margin_weight * hm
                parts["halt_margin"] = float(hm.detach())
        if self.cfg.variant in ("act", "pondernet"):
            pc = ponder_cost(d, self.cfg.variant, self.cfg.lambda_p)
            total = total + self.cfg.ponder_weight * pc
            parts["ponder"] = float(pc.detach())
        parts["instructions"] = float(d.n_instructions.float().mean())
        if rows:
            with torch.no_grad():
                return total, parts, self.row_correct(d, pred.detach(), batch)
        return total, parts


# ---------------------------------------------------------------------------------- evaluation
def _spearman(x, y) -> float:
    def rank(a):
        a = np.asarray(a, dtype=float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for v in np.unique(a):  # ties share their mean rank
            r[a == v] = r[a == v].mean()
        return r

    if len(x) < 2:
        return float("nan")
    rx, ry = rank(x), rank(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@torch.no_grad()
def evaluate(model: DirectiveModel, rows: int = 512, seed: int = 12345) -> dict:
    """Accuracy (right count and every slot right), exact-count rate, slot accuracy, instructions
    used, on fixed in-distribution ('train' split) and extrapolation ('test' split) sets; for a task
    with named commands (counts) the same figures per command under ``by_command``. Spearman of the
    instructions used against the difficulty over both splits and per split; where the task
    defines :meth:`Task.work` (parity: the +1 items), the same against it (``..._work``)."""
    model.eval()
    out = {}
    per_difficulty: dict[int, list] = {}
    per_work: dict[int, list] = {}
    all_d, all_n, all_w = [], [], []
    names = getattr(model.task, "commands", None)
    for split, name in (("train", "in_distribution"), ("test", "extrapolation")):
        gen = torch.Generator().manual_seed(seed + (split == "test"))
        correct = exact = slots_ok = slots = 0
        by_cmd = {c: [0, 0, 0, 0, 0] for c in names} if names else None  # rows, right, exact, slots ok, slots
        first = len(all_d)
        for start in range(0, rows, 256):
            batch = model.task.sample(min(256, rows - start), gen, split)
            d, eng, pred = model(batch, model.max_instructions if split == "train" else model.max_instructions_test)
            ok = model.task.slot_correct(pred, batch.targets) & batch.target_mask
            count_ok = d.n_outputs == batch.count
            row_ok = model.row_correct(d, pred, batch)
            correct += int(row_ok.sum())
            exact += int(count_ok.sum())
            slots_ok += int(ok.sum())
            slots += int(batch.target_mask.sum())
            if by_cmd is not None:
                for c, cname in enumerate(names):
                    sel = batch.command == c
                    for i, v in enumerate((sel, row_ok & sel, count_ok & sel, ok & sel[:, None],
                                           batch.target_mask & sel[:, None])):
                        by_cmd[cname][i] += int(v.sum())
            for k, n in zip(batch.difficulty.tolist(), d.n_instructions.tolist()):
                per_difficulty.setdefault(k, []).append(n)
                all_d.append(k), all_n.append(n)
            work = model.task.work(batch)
            for w, n in zip([] if work is None else work.tolist(), d.n_instructions.tolist()):
                per_work.setdefault(w, []).append(n)
                all_w.append(w)
        out[name] = {"accuracy": correct / rows, "exact_count": exact / rows, "slot_accuracy": slots_ok / slots,
                     "spearman_instructions_difficulty": _spearman(all_d[first:], all_n[first:])}
        if all_w:
            out[name]["spearman_instructions_work"] = _spearman(all_w[first:], all_n[first:])
        if by_cmd is not None:
            out[name]["by_command"] = {c: {"rows": v[0], "accuracy": v[1] / max(v[0], 1), "exact_count": v[2] / max(v[0], 1),
                                           "slot_accuracy": v[3] / max(v[4], 1)} for c, v in by_cmd.items()}
    out["instructions_by_difficulty"] = {str(k): float(np.mean(v)) for k, v in sorted(per_difficulty.items())}
    out["spearman_instructions_difficulty"] = _spearman(all_d, all_n)
    if all_w:
        out["instructions_by_work"] = {str(k): float(np.mean(v)) for k, v in sorted(per_work.items())}
        out["spearman_instructions_work"] = _spearman(all_w, all_n)
    model.train()
    return out


def load_run(folder: Path) -> tuple[DirectiveModel, dict]:
    state = torch.load(Path(folder) / "checkpoint.pt", map_location="cpu", weights_only=True)
    # a run saved before a field existed ran with the behaviour the field now switches on or off
    cfg = RunConfig(**{**SAVED_BEFORE, **state["config"]})
    model = DirectiveModel(get_task(cfg.task), cfg)
    model.load_state_dict(state["model"])
    return model, state


def curriculum_size(task: Task, step: int, steps: int) -> int:
    """The largest training size at ``step`` of a size curriculum of ``steps`` steps: one above the
    task's smallest at step 0, growing linearly to its largest at step ``steps - 1`` and after."""
    lo, hi = task.train_items
    frac = min(1.0, step / max(1, steps - 1))
    return min(hi, lo + 1 + int(round((hi - lo - 1) * frac)))


def train(cfg: RunConfig, folder: str | Path, resume: bool = True, progress: bool = True, log=print) -> dict:
    """Trains until ``max_steps`` or ``max_minutes`` of training time on ``cfg.clock`` (resumed time
    included, evaluation excluded); checkpoints every ``checkpoint_every`` steps and at the end;
    writes metrics.json. Returns it.

    The checkpoint keeps the training seconds of both clocks (``wall_seconds``, ``cpu_seconds``) and
    ``elapsed`` = those of ``cfg.clock``, so a run resumed on the other clock goes on from that
    clock's total. A checkpoint saved before both were kept has only wall seconds: its CPU seconds
    are taken as its wall seconds (an over-count, so a CPU budget stops early rather than late)."""
    folder = Path(folder)
    ckpt = folder / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    model = DirectiveModel(get_task(cfg.task), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    step, spent = 0, dict.fromkeys(CLOCKS, 0.0)  # training seconds per clock
    commands = getattr(model.task, "commands", None) if cfg.command_curriculum else None
    solved = torch.zeros(len(commands)) if commands else None  # moving average of rows right, per command
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config"]["task"] != cfg.task or state["config"]["variant"] != cfg.variant:
            raise ValueError(f"{ckpt}: holds a {state['config']['task']}/{state['config']['variant']} run, not "
                             f"{cfg.task}/{cfg.variant}; use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        spent = {c: float(state.get(f"{c}_seconds", state["elapsed"])) for c in CLOCKS}
        if solved is not None and "command_solved" in state:
            solved = state["command_solved"]

    def save():
        extra = {} if solved is None else {"command_solved": solved}
        save_torch_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                           "elapsed": spent[cfg.clock], **{f"{c}_seconds": spent[c] for c in CLOCKS},
                           "config": dataclasses.asdict(cfg), **extra}, ckpt)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(cfg.max_minutes * 60), initial=int(spent[cfg.clock]), unit="s", dynamic_ncols=True,
                   desc=f"{cfg.task}/{cfg.variant}")
    parts = {}
    try:
        clocks = {c: clock_fn(c) for c in CLOCKS}
        while step < cfg.max_steps and spent[cfg.clock] < cfg.max_minutes * 60:
            t0 = {c: fn() for c, fn in clocks.items()}
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            size = {} if not cfg.size_curriculum else {"max_size": curriculum_size(model.task, step, cfg.size_curriculum)}
            if solved is None:
                batch = model.task.sample(cfg.batch_size, gen, "train", **size)
                loss, parts = model.losses(batch)
            else:
                batch = model.task.sample(cfg.batch_size, gen, "train", command_weights=0.2 + (1 - solved), **size)
                loss, parts, right = model.losses(batch, rows=True)
                for c in range(len(commands)):
                    sel = batch.command == c
                    if bool(sel.any()):
                        solved[c] = 0.9 * solved[c] + 0.1 * right[sel].float().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            for c, fn in clocks.items():
                spent[c] += fn() - t0[c]
            if bar is not None:
                bar.update(min(int(spent[cfg.clock]) - bar.n, bar.total - bar.n))
                bar.set_postfix(step=step, **{k: f"{v:.3g}" for k, v in parts.items()})
            if step % cfg.checkpoint_every == 0:
                save()
    finally:
        if bar is not None:
            bar.close()
        save()
    metrics = evaluate(model, cfg.eval_rows)
    metrics.update(task=cfg.task, variant=cfg.variant, steps=step, train_seconds=round(spent[cfg.clock], 1),
                   clock=cfg.clock, wall_seconds=round(spent["wall"], 1), cpu_seconds=round(spent["cpu"], 1),
                   load_average=os.getloadavg()[0],
                   last_losses=parts, config=dataclasses.asdict(cfg))
    atomic_write(folder / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
