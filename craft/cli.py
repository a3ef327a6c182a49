"""The ``craft`` command: ``info``, ``corpus build``, ``train``, ``generate``, ``bench``.

``craft train`` with no arguments trains the ``tiny`` preset on the built-in corpus (this Python's
documentation) with the ``byte`` tokenizer for 200 steps of 8192 tokens (1.6M tokens: about 2-4
minutes on 2 cores at the 7.6k-12.6k tokens/s measured for this preset), writing to ``runs/tiny``;
``craft generate`` then continues a prompt with the most recent checkpoint under ``runs/``.

Why ``byte`` by default: with GPT-2's 50257 ids the embedding table (6.4M parameters at d=128)
would dwarf the 1.6M-parameter tiny model and a few minutes of training would barely move it;
bytes (258 ids) spend the parameters on the network, need no vocabulary file, encode any prompt
(``char`` maps unseen characters to ``<unk>``) and show visible learning — words, markdown
headings, code-like lines — within a few hundred steps.

Errors print one line ``craft: error: …`` on stderr and exit with status 1 (``CRAFT_DEBUG=1``
shows the traceback); Ctrl-C prints ``craft: interrupted…`` and exits with status 130 (during
training it saves a checkpoint first). Skipped corpus files print ``craft: warning: …``.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

DEFAULT_RUNS = Path("runs")
DEFAULT_NEW_TOKENS = 200


class CliError(Exception):
    """A user-facing error: printed as one line, no traceback."""


def _parse_set(items: list[str]) -> tuple[dict, dict]:
    from craft.models import ModelConfig
    from craft.models.config import _RENAMED as MODEL_RENAMED
    from craft.training import TrainConfig

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model_overrides"}
    model, train = {}, {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise CliError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if key in ("preset", "tokenizer"):
            raise CliError(f"--set {key}: use --{key} instead")
        if key in MODEL_RENAMED:
            print(f"craft: warning: --set {key} is deprecated, use --set {MODEL_RENAMED[key]}", file=sys.stderr)
            key = MODEL_RENAMED[key]
        if key in model_fields:
            model[key] = value
        elif key in train_fields:
            train[key] = value
        else:
            raise CliError(f"--set {key}: not a model or training setting; model: {sorted(model_fields)}, "
                           f"training: {sorted(train_fields)}")
    return model, train


# --------------------------------------------------------------------------- commands
def cmd_info(args) -> int:
    import json

    from craft_kernels import _backend

    if args.calibrate:
        _backend.calibrate_common()
    info = _backend.backend_info()
    print(json.dumps(info, indent=1, default=str) if args.json else _backend.format_backend_info(info))
    return 0


def _source_folder(corpus: str | None) -> Path:
    from craft.data import builtin_corpus_dir

    if corpus is None:
        return builtin_corpus_dir()
    path = Path(corpus)
    if not path.exists():
        raise CliError(f"corpus folder {corpus!r} does not exist")
    if not path.is_dir():
        raise CliError(f"corpus folder {corpus!r} is not a directory; give the folder that holds the .md/.txt files")
    return path


def cmd_corpus_build(args) -> int:
    from craft.data import PretokenizedCorpus, check_out_dir, ensure_pretokenized, pretokenize

    folder = _source_folder(args.dir)
    if args.out:
        check_out_dir(args.out, folder, "--out")  # before the (long) tokenization, naming the flag
    out = pretokenize(folder, args.out, args.tokenizer) if args.out else ensure_pretokenized(folder, args.tokenizer)
    c = PretokenizedCorpus(out)
    print(f"{c.n_documents} documents, {c.n_tokens:,} {args.tokenizer} tokens -> {out}")
    return 0


def cmd_train(args) -> int:
    from craft.data import ensure_pretokenized
    from craft.models import PRESETS
    from craft.training import TrainConfig, Trainer, latest_checkpoint, load_checkpoint

    if args.preset not in PRESETS:
        raise CliError(f"unknown preset {args.preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    model_set, train_set = _parse_set(args.set or [])
    out = Path(args.out) if args.out else DEFAULT_RUNS / args.preset
    tokenizer, corpus = args.tokenizer, args.corpus
    if args.resume:
        ckpt = latest_checkpoint(out / "checkpoints")
        if ckpt is None:
            raise CliError(f"--resume: no checkpoint under {out / 'checkpoints'}; train without --resume first")
        saved = load_checkpoint(ckpt)
        tokenizer = tokenizer or saved["train_config"].get("tokenizer", "byte")
        if corpus is None and saved.get("corpus") and Path(saved["corpus"]).is_dir():
            corpus = saved["corpus"]
    tokenizer = tokenizer or "byte"
    if "device" in train_set:
        _check_device(str(train_set["device"]))
    corpus_dir = ensure_pretokenized(_source_folder(corpus), tokenizer)
    fields = dict(preset=args.preset, tokenizer=tokenizer, model_overrides=model_set, **train_set)
    for name in ("max_steps", "max_minutes", "tokens_per_step", "micro_batch_tokens", "seq_len", "lr", "precision",
                 "seed", "eval_every", "sample_every", "checkpoint_every"):
        v = getattr(args, name)
        if v is not None:
            fields[name] = v
    if args.compile:
        fields["compile"] = True
    if args.linked:
        fields["linked"] = True
    if args.no_progress:
        fields["progress"] = False
    config = TrainConfig(**fields)
    trainer = Trainer(config, corpus_dir, out, resume=args.resume)
    summary = trainer.train()
    if summary["loss"] is None:  # resumed at or past max_steps: no step ran
        print(f"nothing to train: the run in {out} is already at step {summary['steps']} (max_steps "
              f"{config.max_steps if not args.resume else trainer.config.max_steps}); pass a larger --max-steps "
              f"to continue; checkpoint {summary['checkpoint']}")
        return 0
    ev = summary.get("eval_loss")
    print(f"done: step {summary['steps']}, loss {summary['loss']:.4f}"
          + (f", eval loss {ev:.4f}" if ev is not None else "")
          + f", {summary['tokens_per_sec']:,.0f} tokens/s; checkpoint {summary['checkpoint']}")
    return 0


def _check_device(name: str) -> str:
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {name!r}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name!r}: CUDA is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise CliError(f"--device {name!r}: craft runs on cpu or cuda")
    return name


def _check_generate_args(args) -> None:
    """Bounds of ``craft generate``'s numeric options, each error naming its flag."""
    if args.num_samples < 1:
        raise CliError(f"--num-samples: expected an int >= 1, got {args.num_samples}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens: expected an int >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise CliError(f"--temperature: expected a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise CliError(f"--top-k: expected an int >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise CliError(f"--top-p: expected a number in (0, 1], got {args.top_p}")
    if args.seed is not None and not 0 <= args.seed < 2 ** 63:
        raise CliError(f"--seed: expected an int in [0, 2**63), got {args.seed}")
    _check_device(args.device)
    from craft.generation.linked.cli import check_linked_options

    check_linked_options(args)


def _model_context(model) -> int:
    """The model's sequence capacity (positions it was built for)."""
    cfg = model.config
    return int(cfg.max_seq_len)


def cmd_generate(args) -> int:
    import torch

    from craft.training import latest_checkpoint, load_model

    _check_generate_args(args)
    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.exists():
            raise CliError(f"checkpoint {args.checkpoint!r} does not exist")
        if path.is_dir():
            found = latest_checkpoint(path)
            if found is None:
                raise CliError(f"no checkpoint under {args.checkpoint!r}")
            path = found
    else:
        path = latest_checkpoint(DEFAULT_RUNS)
        if path is None:
            raise CliError(f"no checkpoint found under {DEFAULT_RUNS}/; train one with `craft train` "
                           "or pass --checkpoint PATH")
    model = load_model(path, device=args.device)
    tok = model.tokenizer
    prompt = args.prompt if args.prompt is not None else "# "
    if _wants_linked(args):
        if args.max_new_tokens is None:
            args.max_new_tokens = DEFAULT_NEW_TOKENS
        return _generate_linked(model, prompt, args)
    ids = tok.encode(prompt) or [tok.eos_id]
    context = _model_context(model)
    if len(ids) >= context:
        raise CliError(f"prompt: {len(ids)} tokens, but the model's context holds {context}; shorten the prompt")
    if args.max_new_tokens is None:  # the default fills the context at most
        args.max_new_tokens = min(DEFAULT_NEW_TOKENS, context - len(ids))
    if len(ids) + args.max_new_tokens > context:
        raise CliError(f"--max-new-tokens {args.max_new_tokens}: the prompt ({len(ids)} tokens) plus the new tokens "
                       f"exceed the model's context of {context}; use at most {context - len(ids)}")
    gen = torch.Generator(device=model.device)
    if args.seed is not None:
        gen.manual_seed(args.seed)
    else:
        gen.seed()
    for i in range(args.num_samples):
        out = model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, eos_id=tok.eos_id, generator=gen,
                             compile=args.compile)
        text = tok.decode([t for t in out[0, len(ids):].tolist() if t != tok.eos_id])
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(prompt + text)
    return 0


def _wants_linked(args) -> bool:
    """Linked-document generation when any of its options is given."""
    return any(getattr(args, n) not in (None, False) for n in ("corpus", "out", "max_link_depth", "constrain_links"))


def _generate_linked(model, prompt: str, args) -> int:
    from craft.generation.linked.cli import run_linked

    if args.max_link_depth is None:
        args.max_link_depth = 1
    run_linked(model, prompt, args)
    return 0


def cmd_bench(args) -> int:
    import importlib.util
    import tempfile

    root = Path(__file__).resolve().parents[1]
    bench = root / "benchmarks"
    if not bench.is_dir():
        raise CliError(f"benchmarks folder not found at {bench}; run `craft bench` from a source checkout")
    out = Path(tempfile.mkdtemp(prefix="craft-bench-")) / "run.json"
    targets = args.pytest_args or [str(bench)]
    cmd = [sys.executable, "-m", "pytest", *targets, "--benchmark-only", f"--benchmark-json={out}",
           "-p", "no:cacheprovider"]
    rc = subprocess.call(cmd, cwd=root)
    if not out.exists():
        return rc or 1
    spec = importlib.util.spec_from_file_location("craft_bench_history", bench / "history.py")
    history = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(history)
    dest, lines, png = history.record(out, Path(args.history) if args.history else history.DEFAULT_HISTORY,
                                      draw=not args.no_plot)
    print(f"\nsaved {dest}\nchange against the previous run on this machine:")
    print("\n".join(f"  {line}" for line in lines))
    if png:
        print(f"plot: {png}")
    print("regenerate benchmarks/RESULTS.md: python benchmarks/summarize.py")
    return rc


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CliError(f"{message} (see `{self.prog} --help`)")


def _add_linked_generate_options(g) -> None:
    """``--corpus DIR --max-link-depth N --out DIR`` and friends: linked-document generation."""
    from craft.generation.linked.cli import add_linked_options

    add_linked_options(g)
    g.set_defaults(max_link_depth=None)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="craft", description="Small language models for low-spec devices.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("info", help="what this machine offers and which kernel path each op takes, and why")
    s.add_argument("--calibrate", action="store_true",
                   help="time the paths of each op for a tiny model now (seconds; cached per machine)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=cmd_info)

    c = sub.add_parser("corpus", help="corpus tools")
    csub = c.add_subparsers(dest="corpus_command", parser_class=_Parser)
    csub.required = True
    b = csub.add_parser("build", help="pretokenize a folder of .md/.txt files (default: the built-in corpus)")
    b.add_argument("dir", nargs="?", help="folder of .md/.txt files (default: the built-in Python-docs corpus)")
    b.add_argument("--out", help="output directory (default: under $CRAFT_HOME/corpora/)")
    b.add_argument("--tokenizer", default="byte", choices=["byte", "char", "gpt2"])
    b.set_defaults(fn=cmd_corpus_build)

    t = sub.add_parser("train", help="train a model (default: tiny preset on the built-in corpus)")
    t.add_argument("--preset", default="tiny", help="model preset: tiny (default) or small")
    t.add_argument("--corpus", help="folder of .md/.txt files or a pretokenized directory (default: built-in)")
    t.add_argument("--tokenizer", choices=["byte", "char", "gpt2"], help="default byte (see `craft --help`)")
    t.add_argument("--out", help="run folder (default: runs/<preset>)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the run folder")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--tokens-per-step", type=int)
    t.add_argument("--micro-batch-tokens", type=int, help="most tokens per forward pass (memory budget)")
    t.add_argument("--seq-len", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--seed", type=int, help="0 <= seed < 2**63")
    t.add_argument("--eval-every", type=int)
    t.add_argument("--sample-every", type=int)
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any model or training setting, e.g. --set dim=64 --set warmup_steps=5")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or samples on the terminal")
    t.add_argument("--linked", action="store_true", help="linked packing with cross_doc_link attention "
                   "(options: --set linked_max_docs=3 linked_budget_share=0.5 linked_plain_share=0.25)")
    t.set_defaults(fn=cmd_train)

    g = sub.add_parser("generate", help="continue a prompt with a trained model")
    g.add_argument("prompt", nargs="?", help="text to continue (default '# ', a document title)")
    g.add_argument("--checkpoint", help="checkpoint file or run folder (default: latest under runs/)")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"default {DEFAULT_NEW_TOKENS}; plain generation: prompt + new tokens must fit the model's "
                        "context (the default is cut to fit)")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--device", default="cpu")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (a one-off compilation of seconds; faster per token after, see benchmarks/RESULTS.md)")
    _add_linked_generate_options(g)
    g.set_defaults(fn=cmd_generate)

    bn = sub.add_parser("bench", help="run the benchmarks, file the run in the history, show the change")
    bn.add_argument("--history", help="history folder (default benchmarks/history)")
    bn.add_argument("--no-plot", action="store_true", help="do not redraw the history PNG")
    bn.add_argument("pytest_args", nargs=argparse.REMAINDER,
                    help="pytest arguments (default: the whole benchmarks folder), e.g. benchmarks/test_swiglu.py")
    bn.set_defaults(fn=cmd_bench)

    from craft.retrieval.cli import register as register_retrieval  # `craft retrieval train|eval`
    register_retrieval(sub)
    from craft.directives.cli import register as register_directives  # `craft directives train|eval`
    register_directives(sub)
    from craft.agents.cli import register as register_agents  # `craft agents train|eval|roundtrip`
    register_agents(sub)
    from craft.training.cli import register as register_training  # `craft eval-links CHECKPOINT`
    register_training(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Corpus warnings as one ``craft: warning:`` line; any other warning as Python prints it."""
    from craft.data.corpus import CorpusWarning

    if issubclass(category, CorpusWarning):
        print(f"craft: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except KeyboardInterrupt as e:
        print(f"craft: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except Exception as e:
        if os.environ.get("CRAFT_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"craft: error: {msg}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
