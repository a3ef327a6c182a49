"""Tasks generated on the fly, each a source of (command, context, target slots) batches.

- ``parity``: a 16-element vector with ``k`` elements set to +1 or -1 (the rest 0); the target is
  the parity of the number of +1s (Graves' ACT parity). The context holds one item per set element,
  ``[value, one-hot position (16)]``. PonderNet's extrapolation split: train ``k <= 8``, test
  ``9..16``. One output; difficulty = ``k``.
- ``counts``: 2-12 context items ``[key, value (8)]`` (test: 13-18, 1.5x the largest training
  count) and one of five commands: copy, reverse, running sum, keep the values whose key is positive,
  pairwise sums ``v0+v1, v2+v3, ...``; the targets are value vectors, so the number of results
  differs from the number of inputs. A slot is right when its cosine to the target is >= 0.99.
  Difficulty = target count.
- ``addition``: Graves' ACT addition: 1-5 numbers of 1-5 decimal digits (test: 6-8 numbers), each an
  item of five one-hot digits (least significant first, zero vectors past its length); output k is
  the sum of the first k numbers as 6 digits, each classified over 10. Difficulty = count.

Every sampler takes a ``torch.Generator`` so a step's batch is reproducible from (seed, step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    context: torch.Tensor  # (B, N, in_dim) float32
    context_mask: torch.Tensor  # (B, N) bool
    command: torch.Tensor  # (B,) long
    targets: torch.Tensor  # (B, K, ...) task-specific
    target_mask: torch.Tensor  # (B, K) bool
    count: torch.Tensor  # (B,) long
    difficulty: torch.Tensor  # (B,) long


def _pad_items(items: list[torch.Tensor], in_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    N = max(1, max(len(x) for x in items))
    ctx = torch.zeros(len(items), N, in_dim)
    mask = torch.zeros(len(items), N, dtype=torch.bool)
    for b, x in enumerate(items):
        ctx[b, :len(x)] = x
        mask[b, :len(x)] = True
    return ctx, mask


def _size_range(task, split: str, max_size: int | None) -> tuple[int, int]:
    """The (smallest, largest) number of context items of ``split``; ``max_size`` caps the largest
    (a size curriculum: short rows first), never below the smallest."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    lo, hi = task.train_items if split == "train" else task.test_items
    if max_size is not None:
        if not isinstance(max_size, int) or max_size < lo:
            raise ValueError(f"max_size: expected an int >= {lo} (the smallest {split} size of {task.name}), "
                             f"got {max_size!r}")
        hi = min(hi, max_size)
    return lo, hi


class Task:
    name: str
    in_dim: int
    out_dim: int  # readout width per slot
    n_commands: int = 1
    max_items: int  # most context items over both splits
    max_count: int  # most outputs over both splits
    fixed_steps: int  # instructions per output of the fixed-N baseline
    train_items: tuple[int, int]  # (smallest, largest) number of context items in training
    test_items: tuple[int, int]  # the same on the extrapolation split

    def sample(self, batch_size: int, gen: torch.Generator, split: str = "train") -> Batch:
        raise NotImplementedError

    def slot_loss(self, pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, K) loss of each predicted slot (B, K, out_dim)."""
        raise NotImplementedError

    def slot_correct(self, pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, K) bool."""
        raise NotImplementedError

    def work(self, batch: Batch) -> torch.Tensor | None:
        """(B,) long: a second measure of a row's difficulty beside ``batch.difficulty``, the items
        that change the answer, where the task has one; None otherwise."""
        return None


class ParityTask(Task):
    name, in_dim, out_dim, max_items, max_count, fixed_steps = "parity", 17, 1, 16, 1, 16
    size = 16
    train_items, test_items = (1, 8), (9, 16)

    def sample(self, batch_size, gen, split="train", max_size: int | None = None):
        lo, hi = _size_range(self, split, max_size)
        k = torch.randint(lo, hi + 1, (batch_size,), generator=gen)
        items, parity = [], []
        for b in range(batch_size):
            pos = torch.randperm(self.size, generator=gen)[: int(k[b])].sort().values
            val = torch.randint(0, 2, (int(k[b]),), generator=gen).float() * 2 - 1
            items.append(torch.cat([val[:, None], F.one_hot(pos, self.size).float()], 1))
            parity.append(int((val > 0).sum()) % 2)
        ctx, mask = _pad_items(items, self.in_dim)
        targets = torch.tensor(parity, dtype=torch.float32)[:, None, None]
        ones = torch.ones(batch_size, dtype=torch.long)
        return Batch(ctx, mask, torch.zeros(batch_size, dtype=torch.long), targets,
                     torch.ones(batch_size, 1, dtype=torch.bool), ones, k)

    def slot_loss(self, pred, targets):
        return F.binary_cross_entropy_with_logits(pred[..., 0], targets[..., 0], reduction="none")

    def slot_correct(self, pred, targets):
        return (pred[..., 0] > 0) == (targets[..., 0] > 0.5)

    def work(self, batch):
        """(B,) the +1 items: the only ones that flip the parity (``difficulty`` counts all the set
        elements, -1 or +1)."""
        return ((batch.context[..., 0] > 0) & batch.context_mask).sum(1)


COUNT_COMMANDS = ("copy", "reverse", "running_sum", "keep_positive", "pairwise_sum")


class CountsTask(Task):
    name, in_dim, out_dim, n_commands, max_items, max_count, fixed_steps = "counts", 9, 8, 5, 18, 18, 2
    value_dim = 8
    commands = COUNT_COMMANDS
    train_items, test_items = (2, 12), (13, 18)

    def sample(self, batch_size, gen, split="train", command_weights: torch.Tensor | None = None,
               max_size: int | None = None):
        """``command_weights`` (5,) non-negative: draw the commands in these proportions (a
        curriculum); default uniform. ``max_size``: see :func:`_size_range`."""
        lo, hi = _size_range(self, split, max_size)
        n = torch.randint(lo, hi + 1, (batch_size,), generator=gen)
        if command_weights is None:
            cmd = torch.randint(0, self.n_commands, (batch_size,), generator=gen)
        else:
            w = torch.as_tensor(command_weights, dtype=torch.float64)
            if w.shape != (self.n_commands,) or bool((w < 0).any()) or not float(w.sum()) > 0:
                raise ValueError(f"command_weights: expected {self.n_commands} non-negative weights, not all 0, "
                                 f"one per command {COUNT_COMMANDS}; got {command_weights!r}")
            cmd = torch.multinomial(w, batch_size, replacement=True, generator=gen)
        items, outs = [], []
        for b in range(batch_size):
            key = torch.randn(int(n[b]), generator=gen)
            val = torch.randn(int(n[b]), self.value_dim, generator=gen)
            c = COUNT_COMMANDS[int(cmd[b])]
            if c == "copy":
                out = val
            elif c == "reverse":
                out = val.flip(0)
            elif c == "running_sum":
                out = val.cumsum(0)
            elif c == "keep_positive":
                if not bool((key > 0).any()):
                    key[0] = key[0].abs() + 0.1
                out = val[key > 0]
            else:
                m = (len(val) // 2) * 2
                out = val[:m:2] + val[1:m:2]
            items.append(torch.cat([key[:, None], val], 1))
            outs.append(out)
        ctx, mask = _pad_items(items, self.in_dim)
        targets, tmask = _pad_items(outs, self.value_dim)
        return Batch(ctx, mask, cmd, targets, tmask, tmask.sum(1), tmask.sum(1))

    def slot_loss(self, pred, targets):
        return (pred - targets).pow(2).mean(-1)

    def slot_correct(self, pred, targets):
        return F.cosine_similarity(pred, targets, dim=-1, eps=1e-8) >= 0.99


class AdditionTask(Task):
    name, in_dim, out_dim, max_items, max_count, fixed_steps = "addition", 50, 60, 8, 8, 2
    digits, out_digits = 5, 6
    train_items, test_items = (1, 5), (6, 8)

    def sample(self, batch_size, gen, split="train", max_size: int | None = None):
        lo, hi = _size_range(self, split, max_size)
        n = torch.randint(lo, hi + 1, (batch_size,), generator=gen)
        items, outs = [], []
        for b in range(batch_size):
            length = torch.randint(1, self.digits + 1, (int(n[b]),), generator=gen)
            nums = [int(torch.randint(0, 10 ** int(L), (1,), generator=gen)) for L in length]
            item = torch.zeros(int(n[b]), self.digits, 10)
            for i, (x, L) in enumerate(zip(nums, length.tolist())):
                for d in range(L):
                    item[i, d, (x // 10 ** d) % 10] = 1
            sums = torch.tensor(nums).cumsum(0)
            digits = torch.stack([(sums // 10 ** d) % 10 for d in range(self.out_digits)], 1)
            items.append(item.reshape(int(n[b]), -1))
            outs.append(digits.float())
        ctx, mask = _pad_items(items, self.in_dim)
        targets, tmask = _pad_items(outs, self.out_digits)
        return Batch(ctx, mask, torch.zeros(batch_size, dtype=torch.long), targets.long(), tmask, tmask.sum(1),
                     tmask.sum(1))

    def slot_loss(self, pred, targets):
        B, K = targets.shape[:2]
        logits = pred.reshape(B, K, self.out_digits, 10)
        return F.cross_entropy(logits.reshape(-1, 10), targets.reshape(-1), reduction="none").reshape(
            B, K, self.out_digits).mean(-1)

    def slot_correct(self, pred, targets):
        B, K = targets.shape[:2]
        return (pred.reshape(B, K, self.out_digits, 10).argmax(-1) == targets).all(-1)


TASKS = {t.name: t for t in (ParityTask, CountsTask, AdditionTask)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task {name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name]()
