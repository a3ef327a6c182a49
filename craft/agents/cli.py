"""``craft agents train|eval|roundtrip``: the word and sentence agents and the language models from the
command line."""
from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    from craft.training.clock import CLOCKS

    a = subparsers.add_parser("agents", help="DVT agents: word/sentence autoencoders that compress text level by level")
    sub = a.add_subparsers(dest="agents_command", parser_class=type(a))
    sub.required = True
    t = sub.add_parser("train", help="train one level of the agent stack into a run folder")
    t.add_argument("--level", required=True, choices=["0", "1", "lm"],
                   help="0 word agent, 1 sentence agent (needs 0), lm a language model (see --lm-model)")
    t.add_argument("--lm-model", choices=["hier", "flat"], default="hier",
                   help="with --level lm: the hierarchical model (lm.pt) or the flat byte model (lm_flat.pt)")
    t.add_argument("--corpus", help="a text file or a folder of .txt/.md files (default: the built-in corpus)")
    t.add_argument("--max-minutes", type=float, default=5.0)
    t.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="what --max-minutes counts: wall-clock, or this process's CPU time (a shared machine)")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--dropout", type=float,
                   help="lm: share of activations zeroed in training (embeddings and every block's attention and "
                        "MLP outputs), in [0, 1); default: the model's own (0)")
    t.add_argument("--batch-units", type=int, help="word pieces (level 0), sentences (level 1) or rows (lm) per step")
    t.add_argument("--mutate-fraction", type=float,
                   help="level 0: share of each batch that is mutated or spliced spellings (default 0.5); level 1: "
                        "share of the words of each batch's sentences replaced by such spellings (default 0.25); "
                        "0 turns them off")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-every", type=float, default=60.0,
                   help="lm: validation bits/byte every this many training seconds (default 60)")
    t.add_argument("--compile", action="store_true",
                   help="lm: torch.compile the model's forward (compilation counts as training time)")
    t.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint of this level")
    t.add_argument("--out", required=True, help="run folder (agent0.pt, agent1.pt, lm.pt, lm_flat.pt)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=run)
    e = sub.add_parser("eval", help="held-out accuracies of a run folder")
    e.add_argument("dir")
    e.add_argument("--corpus", help="default: the corpus the run was trained on")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=run)
    r = sub.add_parser("roundtrip", help="compress a text to its vector tree and decompress it "
                       "(exit status 2 when the rebuilt text differs from the normalised input)")
    r.add_argument("text")
    r.add_argument("--checkpoint", default="runs/agents", help="run folder (default runs/agents)")
    r.set_defaults(fn=run)


def run(args) -> int:
    from craft.cli import CliError

    try:
        return {"train": _train, "eval": _eval, "roundtrip": _roundtrip}[args.agents_command](args)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from e


def _train(args) -> int:
    from craft.agents import train as T

    out = Path(args.out)
    text = T.read_corpus(args.corpus)
    train_text, val_text = T.split_corpus(text)
    if args.mutate_fraction is not None and args.level == "lm":
        raise ValueError("--mutate-fraction: only the agents (levels 0 and 1) train on mutated spellings, not the "
                         "language models; drop it")
    common = dict(max_minutes=args.max_minutes, max_steps=args.max_steps, seed=args.seed,
                  progress=not args.no_progress, clock=args.clock)
    if args.level == "lm":
        s = T.LMSettings(**common, eval_every_s=args.eval_every, compile=args.compile, dropout=args.dropout)
    else:
        if args.dropout is not None:
            raise ValueError(f"--dropout: only the language models (--level lm) take dropout, not level {args.level}; "
                             "drop it")
        if args.compile:
            raise ValueError(f"--compile: only the language models (--level lm) compile, not level {args.level}; drop it")
        if args.mutate_fraction is not None:
            common["mutate_fraction"] = args.mutate_fraction
        s = T.TrainSettings(**common)
        if args.level == "1":
            s.batch_units = 128
            if args.mutate_fraction is None:
                s.mutate_fraction = T.LEVEL1_MUTATE_FRACTION
    if args.lr:
        s.lr = args.lr
    if args.batch_units:
        s.batch_units = args.batch_units
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").write_text(json.dumps({"corpus": str(Path(args.corpus).resolve()) if args.corpus else None}))
    if args.level == "lm":
        T.train_lm(train_text, val_text, out, args.lm_model, settings=s, resume=args.resume)
        print(f"saved {out / T.LM_FILES[args.lm_model]}")
        return 0
    if args.level == "0":
        T.train_word_agent(train_text, out, settings=s, resume=args.resume)
    else:
        T.train_sentence_agent(train_text, out, settings=s, resume=args.resume)
    print(f"saved {out / T.AGENT_FILES[int(args.level)]}")
    return 0


def _eval(args) -> int:
    from craft.agents import train as T

    run_dir = Path(args.dir)
    corpus = args.corpus
    meta = run_dir / "corpus.json"
    if corpus is None and meta.is_file():
        corpus = json.loads(meta.read_text())["corpus"]
    train_text, val_text = T.split_corpus(T.read_corpus(corpus))
    res = {"corpus": corpus or "builtin"}
    lms = [k for k, f in T.LM_FILES.items() if (run_dir / f).is_file()]
    if not lms or (run_dir / T.AGENT_FILES[0]).is_file():
        stack = T.load_stack(run_dir)
        res.update(T.eval_word_agent(stack.word_agent, train_text, val_text))
        if stack.sentence_agent is not None:
            res.update(T.eval_sentence_agent(stack, val_text))
            res.update(T.eval_roundtrip(stack, val_text))
    for kind in lms:
        res[f"lm_{kind}"] = T.eval_lm(run_dir, kind, val_text)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            for kk, vv in (v.items() if isinstance(v, dict) else [("", v)]):
                name = f"{k}.{kk}" if kk else k
                print(f"{name:30s} {vv:.4f}" if isinstance(vv, float) else f"{name:30s} {vv}")
    return 0


def _roundtrip(args) -> int:
    from craft.agents import train as T
    from craft.agents.text import normalize

    stack = T.load_stack(args.checkpoint)
    if stack.sentence_agent is None:
        words = normalize(args.text).split()
        from craft.agents.text import pieces_to_words, word_pieces
        pieces = [p for w in words for p in word_pieces(w, stack.width)]
        print(" ".join(pieces_to_words(stack.word_agent.decode(stack.word_agent.encode(pieces)))) if pieces else "")
        return 0
    c = stack.compress(args.text)
    out = stack.decompress(c)
    print(out)
    return 0 if out == normalize(args.text) else 2
