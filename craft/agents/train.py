"""Training, evaluation and checkpoints of the agents (``craft agents train|eval|roundtrip``).

A run folder holds ``agent0.pt`` (word agent) and ``agent1.pt`` (sentence agent); level 1 trains
on top of the folder's frozen level 0. ``lm.pt`` / ``lm_flat.pt`` hold the hierarchical language
model and the flat byte model (:mod:`craft.agents.lm`), with their validation bits/byte over
training time (``evals``). Checkpoints are written atomically (``mkstemp`` in the
folder, then ``os.replace``) and hold the model, the optimizer, the step and the training seconds
so far, so ``--resume`` continues where a run stopped. Data: a text file or a folder of .txt/.md
files, split like nanoGPT's tiny-shakespeare: the first 90% of the characters train, the last 10%
validate.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from craft.data.files import save_torch_atomic
from craft.training.clock import clock_fn
from craft.agents.sentence import SentenceAgent, SentenceAgentConfig, pack_sentences
from craft.agents.stack import AgentStack
from craft.agents import lm as LM
from craft.agents.text import BYTE_OFFSET, JOIN_ID, normalize, text_to_units, word_pieces
from craft.agents.word import WordAgent, WordAgentConfig, pack_units
from craft_kernels import check_float

AGENT_FILES = {0: "agent0.pt", 1: "agent1.pt"}
LEVEL1_MUTATE_FRACTION = 0.25  # Agent 1's default share of mutated words (TrainSettings' 0.5 is Agent 0's)
LM_FILES = {"hier": "lm.pt", "flat": "lm_flat.pt"}  # the hierarchical LM and the flat byte model


# --------------------------------------------------------------------------- data
def read_corpus(path: str | Path | None) -> str:
    if path is None:
        from craft.data import builtin_corpus_dir
        path = builtin_corpus_dir()
    path = Path(path)
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise ValueError(f"corpus: no .txt or .md files under {path}")
        return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    raise ValueError(f"corpus: {str(path)!r} is neither a file nor a folder")


def split_corpus(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    n = int(len(text) * train_fraction)
    return text[:n], text[n:]


def pieces_of(text: str, width: int) -> list[list[int]]:
    return [p for w in text.split() for p in word_pieces(w, width)]


def _flat(pieces: list[list[int]]):
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    tokens = np.fromiter((t for p in pieces for t in p), dtype=np.int64, count=int(offsets[-1]))
    return tokens, offsets


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic: a random temporary in the same folder, then renamed over ``path`` (craft.data.files)."""
    save_torch_atomic(payload, path)


def load_agent(run: str | Path, level: int):
    path = Path(run) / AGENT_FILES[level]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no level-{level} agent; train it with `craft agents train --level {level} --out {run}`")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = (WordAgent(WordAgentConfig(**ck["config"])) if level == 0
             else SentenceAgent(SentenceAgentConfig(**ck["config"])))
    model.load_state_dict(ck["model"])
    return model.eval(), ck


def load_stack(run: str | Path) -> AgentStack:
    word, _ = load_agent(run, 0)
    sent = load_agent(run, 1)[0] if (Path(run) / AGENT_FILES[1]).is_file() else None
    return AgentStack(word, sent)


# --------------------------------------------------------------------------- training
@dataclass
class TrainSettings:
    max_minutes: float = 5.0
    max_steps: int | None = None
    lr: float = 3e-3
    batch_units: int = 512        # word pieces (level 0) or sentences (level 1) per step
    seed: int = 0
    checkpoint_every: int = 200
    progress: bool = True
    warmup_steps: int = 50
    clock: str = "wall"           # what max_minutes counts: "wall" seconds, or "cpu" seconds of this process
    mutate_fraction: float = 0.5   # level 0: share of each batch that is mutated spellings (see mutate_piece)
    bf16: bool | None = None      # bf16 autocast of the forward; None: where the CPU has fast bf16 (craft's default)

    def __post_init__(self):
        clock_fn(self.clock)  # ValueError naming the argument
        if not 0.0 <= self.mutate_fraction <= 1.0:
            raise ValueError(f"mutate_fraction: expected a share in [0, 1], got {self.mutate_fraction}")


def _use_bf16(s: TrainSettings) -> bool:
    from craft_kernels import bf16_is_fast

    return bf16_is_fast(torch.device("cpu")) if s.bf16 is None else bool(s.bf16)


def _lr_at(step, total, base, warm=50):
    if step < warm:
        return base * (step + 1) / warm
    # a Python float: a numpy scalar in the optimizer state would make the checkpoint unloadable
    # with weights_only=True
    return base * max(0.05, 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total)))))


def _loop(model, opt, make_batch, out_path, config_dict, s: TrainSettings, start_step, start_seconds, extra, log,
          evaluate=None, eval_every_s: float = 60.0):
    """Steps until ``max_steps`` or ``max_minutes`` of training time. ``evaluate()`` -> dict, when
    given, runs every ``eval_every_s`` training seconds and at the end; its time is not training
    time, and its results go to ``extra['evals']`` with the step and training seconds."""
    from tqdm import tqdm

    total = s.max_steps or 10 ** 9
    budget = s.max_minutes * 60
    step, elapsed = start_step, start_seconds
    est_total = s.max_steps or max(step + 1, 1)
    bar = tqdm(total=s.max_steps, disable=not s.progress, desc=out_path.name, unit="step")
    rate = None
    evals = extra.setdefault("evals", []) if evaluate is not None else None
    next_eval = (evals[-1]["seconds"] if evals else 0.0) + eval_every_s

    def run_eval():
        evals.append({"step": step, "seconds": elapsed, **evaluate()})
        if s.progress:
            bar.write(f"step {step} ({elapsed:.0f} s): " + ", ".join(f"{k} {v:.4f}" for k, v in evals[-1].items()
                                                                      if k not in ("step", "seconds")))
        model.train()

    if evaluate is not None and not evals:
        run_eval()
    model.train()
    now_fn = clock_fn(s.clock)
    t_last = now_fn()
    while step < total and elapsed < budget:
        if rate is not None and not s.max_steps:
            est_total = step + int((budget - elapsed) * rate)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, est_total, s.lr, s.warmup_steps)
        loss, info = make_batch()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        step += 1
        now = now_fn()
        elapsed += now - t_last
        t_last = now
        rate = step / max(elapsed, 1e-9) if step > start_step + 5 else None
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.3f}" for k, v in info.items()})
            log.append({"step": step, "seconds": elapsed, "loss": loss.item(), "grad_norm": grad_norm, **info})
        if evaluate is not None and elapsed >= next_eval:
            run_eval()
            next_eval = elapsed + eval_every_s
            t_last = now_fn()  # evaluation time is not training time
        if step % s.checkpoint_every == 0:
            _save(out_path, model, opt, config_dict, step, elapsed, extra, log)
    bar.close()
    if evaluate is not None and (not evals or evals[-1]["step"] != step):
        run_eval()
    _save(out_path, model, opt, config_dict, step, elapsed, extra, log)
    model.eval()
    return step, elapsed


def _save(path, model, opt, config_dict, step, elapsed, extra, log):
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": config_dict,
                           "step": step, "seconds": elapsed, "log": log[-2000:], **extra})


def _resume(path: Path, model, opt, resume: bool):
    if resume and path.is_file():
        ck = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        return ck["step"], ck["seconds"], ck.get("log", [])
    return 0, 0.0, []


def mutate_piece(piece: list[int], alphabet: list[int], rng: random.Random) -> list[int]:
    """A spelling the corpus may not hold, near one it does: the piece with its letters' case
    swapped to upper (names like ``ADRIAN:``), or with 1-2 ids replaced by ids of ``alphabet``
    (the corpus's ids). A final join id stays, so the piece stays a valid piece.

    Why: an autoencoder is not a language model; it should rebuild any spelling. Trained on the
    corpus's pieces only, it learns their ~10^4 spellings by heart (training loss ~0) and fails on
    held-out names and rare characters; mutated spellings make it learn the per-position code."""
    p = list(piece)
    body = len(p) - (1 if p[-1] == JOIN_ID and len(p) > 1 else 0)
    if rng.random() < 0.3:
        up = [b + BYTE_OFFSET for b in bytes(t - BYTE_OFFSET for t in p[:body] if t >= BYTE_OFFSET).upper()]
        if len(up) == body and up != p[:body]:
            return up + p[body:]
    for _ in range(rng.randint(1, 2)):
        p[rng.randrange(body)] = rng.choice(alphabet)
    return p


def splice_pieces(a: list[int], b: list[int], alphabet: list[int], width: int, rng: random.Random) -> list[int]:
    """A long spelling the corpus may not hold: the bytes of pieces ``a`` and ``b`` glued (half the
    time with one id of ``alphabet`` between them), cut to a valid piece of at most ``width`` ids:
    when longer, ``width - 1`` ids and the join id (a non-final piece) or ``width`` ids (a full final
    piece), at random.

    Why: Agent 0's held-out errors were long pieces (10-16 bytes: compounds such as
    ``taming-school!``, ``hag-born--not``) wrong in their last positions. Long pieces are rare among
    the corpus's types, so the late positions of the per-position code got little training;
    mutating a piece (:func:`mutate_piece`) keeps its length and does not add any."""
    body = lambda p: list(p[:-1] if len(p) > 1 and p[-1] == JOIN_ID else p)  # noqa: E731
    ids = body(a) + ([rng.choice(alphabet)] if rng.random() < 0.5 else []) + body(b)
    if len(ids) <= width:
        return ids
    return ids[:width - 1] + [JOIN_ID] if rng.random() < 0.5 else ids[:width]


def train_word_agent(text: str, out: Path, config: WordAgentConfig | None = None,
                     settings: TrainSettings | None = None, resume: bool = False) -> WordAgent:
    """Agent 0 on the word pieces of ``text``: each batch draws ``mutate_fraction`` of its pieces
    as spellings the corpus may not hold, half mutated (:func:`mutate_piece`) and half spliced
    from two pieces (:func:`splice_pieces`, long ones), and of the rest half from the running text
    (frequent words) and half from the distinct pieces (rare spellings)."""
    s, c = settings or TrainSettings(), config or WordAgentConfig()
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    pieces = pieces_of(text, c.width)
    types = sorted({tuple(p) for p in pieces})
    alphabet = sorted({t for p in types for t in p if t >= BYTE_OFFSET})
    bf16 = _use_bf16(s)
    n_mut = int(round(s.batch_units * s.mutate_fraction))
    model = WordAgent(c)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    path = out / AGENT_FILES[0]
    step, secs, log = _resume(path, model, opt, resume)
    half = (s.batch_units - n_mut) // 2

    def batch():
        b = [pieces[rng.randrange(len(pieces))] for _ in range(half)]
        b += [list(types[rng.randrange(len(types))]) for _ in range(s.batch_units - n_mut - half)]
        b += [mutate_piece(types[rng.randrange(len(types))], alphabet, rng) for _ in range(n_mut - n_mut // 2)]
        pick = lambda: types[rng.randrange(len(types))]  # noqa: E731
        b += [splice_pieces(pick(), pick(), alphabet, c.width, rng) for _ in range(n_mut // 2)]
        tok, off = _flat(b)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.loss(pack_units(tok, off, c.row_len))

    _loop(model, opt, batch, path, c.to_dict(), s, step, secs, {}, log)
    return model


LM_LR = {"hier": 4e-3, "flat": 2e-3}  # each model's default peak learning rate (LMSettings.lr None)


@dataclass
class LMSettings(TrainSettings):
    """Language-model runs: ``batch_units`` rows per step; bf16 autocast where the CPU has fast bf16
    (craft's trainer default), evaluation on the validation text every ``eval_every_s`` seconds.
    ``lr`` None: the model's own default, :data:`LM_LR` (the hierarchical model's small byte
    blocks train best at twice the flat model's rate; benchmarks/RESULTS.md). ``dropout`` None: the
    given config's own (0 in the models' defaults); a number overrides it (the model config's
    ``dropout``: training mode only)."""
    lr: float | None = None
    dropout: float | None = None
    batch_units: int = 8
    eval_every_s: float = 60.0
    compile: bool = False         # torch.compile the forward; its compilation counts as training time

    def __post_init__(self):
        super().__post_init__()
        if self.dropout is not None:
            check_float(self.dropout, "dropout", 0, 1, max_open=True,
                        hint=" (the share of activations zeroed in training; 0 turns it off)")


def _lm_model(kind: str, config: dict | None):
    if kind == "hier":
        return LM.HierarchicalLM(LM.HierarchicalLMConfig(**(config or {})))
    if kind == "flat":
        from craft.models import ModelConfig
        return LM.flat_model(ModelConfig.from_dict(config) if config else None)
    raise ValueError(f"kind: expected 'hier' or 'flat', got {kind!r}")


def _lm_config_dict(model) -> dict:
    return model.config.to_dict()


def load_lm(run: str | Path, kind: str):
    """(model, checkpoint) of a run folder's ``lm.pt`` (kind ``hier``) or ``lm_flat.pt`` (``flat``)."""
    path = Path(run) / LM_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {kind} language model; train it with "
                                f"`craft agents train --level lm --lm-model {kind} --out {run}`")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    config = ck["config"]
    if kind == "hier":  # checkpoints from before the context options attended inside the word,
        # and from before the window over the whole row
        config = {"encoder_context": "word", "decoder_context": "word", "byte_window": 0, **config}
    model = _lm_model(kind, config)
    model.load_state_dict(ck["model"])
    return model.eval(), ck


def lm_bits_per_byte(model, data: bytes, bf16: bool = False) -> float:
    if isinstance(model, LM.HierarchicalLM):
        return LM.hierarchical_bits_per_byte(model, data, autocast=bf16)
    return LM.flat_bits_per_byte(model, data, autocast=bf16)


def train_lm(train_text: str, val_text: str, out: Path, kind: str = "hier", config=None,
             settings: LMSettings | None = None, resume: bool = False):
    """The hierarchical LM (``kind='hier'``, ``lm.pt``) or the flat byte model (``'flat'``,
    ``lm_flat.pt``) on ``train_text``; validation bits/byte on ``val_text`` through training.
    Rows: random windows of whole words (hier, ``max_seq_len`` stream positions) or of
    ``max_seq_len`` + 1 bytes (flat). The checkpoint keeps ``train_bytes`` (text bytes trained on)
    and ``evals`` ([{step, seconds, val_bits_per_byte}])."""
    s = settings or LMSettings()
    if s.lr is None:
        s = dataclasses.replace(s, lr=LM_LR[kind])
    bf16 = _use_bf16(s)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    config = config.to_dict() if config is not None and not isinstance(config, dict) else config
    if s.dropout is not None:
        base = config if config is not None else (LM.flat_config().to_dict() if kind == "flat" else {})
        config = {**base, "dropout": s.dropout}
    model = _lm_model(kind, config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    # fused: one kernel over all parameters instead of a dozen small ops per tensor (both models)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.99), fused=True)
    path = out / LM_FILES[kind]
    step, secs, log = _resume(path, model, opt, resume)
    for g in opt.param_groups:  # a checkpoint from before the fused optimizer resumes fused too
        g["fused"] = True
    fwd = torch.compile(model) if s.compile else model
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # tied weights once
    extra = {"kind": kind, "bf16": bf16, "clock": s.clock, "parameters": n_params, "train_bytes": 0, "evals": []}
    if resume and path.is_file():
        ck = torch.load(path, map_location="cpu", weights_only=True)
        extra.update({k: ck[k] for k in ("train_bytes", "evals") if k in ck})
    data = train_text.encode("utf-8")
    val = val_text.encode("utf-8")
    L = model.config.max_seq_len
    if kind == "hier":
        stream = LM.word_stream(data, model.config.max_word_len)
        n_words = len(stream.offsets) - 1
        last_start = int(np.searchsorted(stream.offsets, stream.offsets[-1] - L, side="left"))

        def batch():
            w0 = rng.integers(0, max(1, last_start), size=s.batch_units)
            w1 = np.searchsorted(stream.offsets, stream.offsets[w0] + L, side="right") - 1
            b = LM.make_batch(stream, list(zip(w0.tolist(), np.minimum(w1, n_words).tolist())), L)
            extra["train_bytes"] += b.n_bytes
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                _, loss = fwd(b)
            return loss, {}
    else:
        all_bytes = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))
        if all_bytes.numel() <= L + 1:
            raise ValueError(f"corpus: {all_bytes.numel()} training bytes, need more than max_seq_len + 1 = {L + 1}")

        def batch():
            st = torch.from_numpy(rng.integers(0, all_bytes.numel() - L - 1, size=s.batch_units))
            idx = st[:, None] + torch.arange(L + 1)
            w = all_bytes[idx]
            extra["train_bytes"] += w.shape[0] * L
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                _, loss = fwd(w[:, :-1], targets=w[:, 1:])
            return loss, {}

    # both clocks, training time only (evaluation excluded): the machine may be shared, so the
    # process's CPU seconds are kept beside the wall-clock ones whichever one the budget counts
    prev = extra["evals"][-1] if extra["evals"] else {}
    clocks = {"wall": [time.perf_counter, time.perf_counter() - prev.get("wall_seconds", 0.0)],
              "cpu": [time.process_time, time.process_time() - prev.get("cpu_seconds", 0.0)]}

    def evaluate():
        marks = {k: fn() for k, (fn, _) in clocks.items()}
        out = {"val_bits_per_byte": lm_bits_per_byte(model, val, bf16),
               **{f"{k}_seconds": marks[k] - start for k, (_, start) in clocks.items()},
               "load_average": os.getloadavg()[0]}
        for k, (fn, _) in clocks.items():
            clocks[k][1] += fn() - marks[k]
        return out

    _loop(model, opt, batch, path, _lm_config_dict(model), s, step, secs, extra, log,
          evaluate=evaluate if val else None, eval_every_s=s.eval_every_s)
    return model


def sentence_units(text: str, width: int, max_words: int):
    """(pieces, sentence_offsets over pieces) of ``text``."""
    u = text_to_units(text, width, max_words)
    tokens, wo = u.tokens, u.level_offsets[0]
    pieces = [tokens[wo[i]:wo[i + 1]].tolist() for i in range(len(wo) - 1)]
    return pieces, u.level_offsets[1]


def train_sentence_agent(text: str, out: Path, config: SentenceAgentConfig | None = None,
                         settings: TrainSettings | None = None, resume: bool = False) -> SentenceAgent:
    """Agent 1 on the sentences of ``text`` over the run folder's frozen Agent 0.

    ``settings.mutate_fraction`` of the word pieces of each batch's sentences are replaced by
    spellings the corpus may not hold (as Agent 0's: half :func:`mutate_piece`, half
    :func:`splice_pieces` with another piece), their vectors from the frozen Agent 0: Agent 1 has to
    copy any word vector, not only the corpus's ~10^4 (its held-out errors were rare words)."""
    s = settings or TrainSettings(batch_units=128, mutate_fraction=LEVEL1_MUTATE_FRACTION)
    word, _ = load_agent(out, 0)
    for p in word.parameters():
        p.requires_grad_(False)
    c = config or SentenceAgentConfig(word_dim=word.config.dim)
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    pieces, so = sentence_units(text, word.config.width, c.max_words)
    # the targets: Agent 0's vectors of every distinct piece, computed once
    types = {}
    for p in pieces:
        types.setdefault(tuple(p), len(types))
    type_list = [list(t) for t in types]
    with torch.no_grad():
        tv = torch.cat([word.encode(type_list[i:i + 8192]) for i in range(0, len(type_list), 8192)])
    piece_type = np.array([types[tuple(p)] for p in pieces], dtype=np.int64)
    alphabet = sorted({t for p in type_list for t in p if t >= BYTE_OFFSET})
    model = SentenceAgent(c)
    bf16 = _use_bf16(s)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    path = out / AGENT_FILES[1]
    step, secs, log = _resume(path, model, opt, resume)
    n_sent = len(so) - 1

    def batch():
        idx = sorted(rng.randrange(n_sent) for _ in range(s.batch_units))
        w_idx = np.concatenate([np.arange(so[i], so[i + 1]) for i in idx])
        lens = np.array([so[i + 1] - so[i] for i in idx])
        sent_off = np.concatenate([[0], np.cumsum(lens)])
        vecs = tv[torch.from_numpy(piece_type[w_idx])]
        batch_pieces = [pieces[j] for j in w_idx]
        swap = [i for i in range(len(w_idx)) if rng.random() < s.mutate_fraction]
        if swap:
            for k, i in enumerate(swap):
                p = batch_pieces[i]
                if k % 2 == 0:
                    batch_pieces[i] = mutate_piece(p, alphabet, rng)
                else:
                    other = type_list[rng.randrange(len(type_list))]
                    batch_pieces[i] = splice_pieces(p, other, alphabet, word.config.width, rng)
            with torch.no_grad():
                vecs = vecs.clone()
                vecs[swap] = word.encode([batch_pieces[i] for i in swap])
        tok, off = _flat(batch_pieces)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.loss(vecs, pack_sentences(sent_off, c.row_len), word,
                              pack_units(tok, off, word.config.row_len))

    _loop(model, opt, batch, path, c.to_dict(), s, step, secs, {}, log)
    return model


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def eval_word_agent(word: WordAgent, train_text: str, val_text: str, max_tokens: int = 20000) -> dict:
    """Exact rebuild of held-out word tokens and of held-out word types never seen in training."""
    w = word.config.width
    val_words = val_text.split()[:max_tokens]
    train_types = set(train_text.split())
    val_types = sorted(set(val_words))
    unseen = [t for t in val_types if t not in train_types]

    def exact(words):
        """Per word: all its pieces rebuilt exactly (grouped by the true piece count, so one wrong
        join id cannot shift the words after it)."""
        per_word = [word_pieces(x, w) for x in words]
        pieces = [p for ps in per_word for p in ps]
        dec = []
        for i in range(0, len(pieces), 8192):
            dec += word.decode(word.encode(pieces[i:i + 8192]))
        out, i = [], 0
        for ps in per_word:
            out.append(dec[i:i + len(ps)] == ps)
            i += len(ps)
        return out

    type_ok = dict(zip(val_types, exact(val_types)))
    tok_acc = float(np.mean([type_ok[x] for x in val_words])) if val_words else float("nan")
    unseen_acc = float(np.mean([type_ok[x] for x in unseen])) if unseen else float("nan")
    pieces = [p for x in val_words for p in word_pieces(x, w)]
    lens = torch.tensor([len(p) for p in pieces])
    pred = torch.cat([word.predict_lengths(word.encode(pieces[i:i + 8192])) for i in range(0, len(pieces), 8192)])
    return {"word_token_accuracy": tok_acc, "unseen_word_type_accuracy": unseen_acc,
            "word_length_accuracy": float((pred == lens).float().mean()),
            "held_out_word_tokens": len(val_words), "unseen_word_types": len(unseen)}


@torch.no_grad()
def eval_sentence_agent(stack: AgentStack, val_text: str, max_sentences: int = 2000) -> dict:
    """Exact rebuild of held-out sentences (<= max_words pieces) and word-count accuracy."""
    word, sent = stack.word_agent, stack.sentence_agent
    pieces, so = sentence_units(val_text, word.config.width, sent.config.max_words)
    n = min(len(so) - 1, max_sentences)
    so = so[: n + 1]
    pieces = pieces[: so[-1]]
    wv = word.encode(pieces)
    z = sent.encode(wv, so)
    vecs, counts = sent.decode(z)
    dec = word.decode(vecs)
    true_counts = np.diff(so)
    count_ok = counts.numpy() == true_counts
    ok, j = [], 0
    for k in range(n):
        a = pieces[so[k]:so[k + 1]]
        b = dec[j:j + int(counts[k])]
        j += int(counts[k])
        ok.append(a == b)
    # the vectors themselves: regenerated word vectors vs Agent 0's, where counts agree
    return {"sentence_accuracy": float(np.mean(ok)), "word_count_accuracy": float(count_ok.mean()),
            "held_out_sentences": n}


def eval_lm(run: str | Path, kind: str, val_text: str) -> dict:
    """Validation bits/byte of a run folder's language model (same precision as its training), its
    parameters, and its training throughput (text bytes per training second)."""
    model, ck = load_lm(run, kind)
    bf16 = bool(ck.get("bf16", False))
    res = {"val_bits_per_byte": lm_bits_per_byte(model, val_text.encode("utf-8"), bf16),
           "parameters": ck["parameters"],
           "steps": ck["step"], "train_seconds": ck["seconds"], "clock": ck.get("clock", "wall"),
           "train_bytes_per_second": ck.get("train_bytes", 0) / max(ck["seconds"], 1e-9), "bf16": bf16}
    last = (ck.get("evals") or [{}])[-1]
    if "cpu_seconds" in last:
        res["train_bytes_per_cpu_second"] = ck.get("train_bytes", 0) / max(last["cpu_seconds"], 1e-9)
        res["train_bytes_per_wall_second"] = ck.get("train_bytes", 0) / max(last["wall_seconds"], 1e-9)
    return res


@torch.no_grad()
def eval_roundtrip(stack: AgentStack, val_text: str, max_paragraphs: int = 300, max_sentences: int = 3) -> dict:
    """compress -> decompress of held-out paragraphs of <= ``max_sentences`` sentences."""
    from craft.agents.text import _PARA

    paras = [normalize(p) for p in _PARA.split(val_text) if p.split()]
    keep = []
    for p in paras:
        u = text_to_units(p, stack.width, stack.max_words)
        if len(u.level_offsets[1]) - 1 <= max_sentences:
            keep.append(p)
        if len(keep) >= max_paragraphs:
            break
    ok = [stack.roundtrip(p) == p for p in keep]
    return {"paragraph_roundtrip_accuracy": float(np.mean(ok)) if ok else float("nan"), "held_out_paragraphs": len(ok)}
