"""``craft retrieval train`` and ``craft retrieval eval``: TIGER generative retrieval from the command line.

    craft retrieval train --data Beauty.txt [--sids cf|text:FILE|letter:FILE|attributes:FILE]
                          [--quantizer rkm|rqvae] [--max-minutes M] --out DIR [--resume]
    craft retrieval eval DIR [--split valid|test] [--beam N] [--beam-widths widened|uniform|W,W,…] [--json]

``--sids cf`` (default) quantises collaborative embeddings of the training interactions;
``text:FILE`` item text JSON through wordllama's bundled model; ``attributes:FILE`` an
``{item: [attribute ids]}`` JSON; ``letter:FILE`` ready-made IDs (LETTER's index format). A last
code separating colliding items is always appended. Errors are one line (``CliError``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    r = subparsers.add_parser("retrieval", help="generative retrieval (TIGER): semantic IDs, seq2seq, beam search")
    rs = r.add_subparsers(dest="retrieval_command", parser_class=type(r))
    rs.required = True
    t = rs.add_parser("train", help="build semantic IDs and train the seq2seq recommender")
    t.add_argument("--data", required=True, help="interactions file, one user per line: 'user item item …'")
    t.add_argument("--sids", default="cf", help="cf (default) | text:FILE | letter:FILE | attributes:FILE")
    t.add_argument("--quantizer", default="rkm", choices=["rkm", "rqvae"], help="residual k-means (default) or RQ-VAE")
    t.add_argument("--levels", type=int, default=3, help="codes per ID before the collision code (default 3)")
    t.add_argument("--codebook-size", type=int, default=256)
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--epochs", type=int, default=50, help="upper bound; --max-minutes usually ends the run first")
    t.add_argument("--batch-size", type=int, default=64, help="windows (users) per batch (default 64)")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=100, help="warmup steps (default 100)")
    t.add_argument("--dim", type=int, default=64)
    t.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each (default 2)")
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--hidden-dim", type=int, default=256, help="SwiGLU MLP width (default 256)")
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--max-history", type=int, default=20)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=run)
    e = rs.add_parser("eval", help="beam-search a split and print metrics beside popularity and the heuristic")
    e.add_argument("dir", help="run folder written by `craft retrieval train`")
    e.add_argument("--split", default="test", choices=["valid", "test"])
    e.add_argument("--beam", type=int, default=20,
                   help="beams kept at the last level = items returned per user (default 20)")
    e.add_argument("--beam-widths", default="widened",
                   help="beams kept after each code level: 'widened' (default: 2x --beam at every level but "
                        "the last two, --beam there, e.g. 40/40/20/20), 'uniform' (--beam at every level, "
                        "plain beam search) or one width per level, comma-separated (the last one replaces --beam)")
    e.add_argument("--batch-users", type=int, default=256)
    e.add_argument("--max-users", type=int, help="evaluate a seeded random sample of N users (quick checks)")
    e.add_argument("--no-hybrid", action="store_true", help="skip the hybrid ranker (saves a validation decode)")
    e.add_argument("--alpha-users", type=int, default=4000,
                   help="validation users (a seeded random sample) the hybrid's weight is chosen on (default 4000)")
    e.add_argument("--exact-users", type=int, default=0,
                   help="also find the exact top 10 of full-catalog scoring for the first N users (the beam-search oracle)")
    e.add_argument("--data", help="interactions file (default: the one the run was trained on)")
    e.add_argument("--threads", type=int)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=run)


def _error(msg: str):
    from craft.cli import CliError
    return CliError(msg)


def _positive(args, names):
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v <= 0:
            raise _error(f"--{n.replace('_', '-')}: expected a positive number, got {v}")


def _check_sids(spec: str) -> tuple[str, str]:
    kind, _, path = spec.partition(":")
    if kind not in ("cf", "text", "letter", "attributes") or (kind != "cf") != bool(path):
        raise _error(f"--sids {spec!r}: expected cf, text:FILE, letter:FILE or attributes:FILE")
    if path and not Path(path).is_file():
        raise _error(f"--sids {spec!r}: {path}: no such file")
    return kind, path


def build_codes(data, spec: str, quantizer: str, levels: int, codebook_size: int, seed: int, log):
    """(codes (n_items + 1, L + 1) with the collision code, report of the IDs before it)."""
    import numpy as np
    from craft.data.recsys import read_attributes, read_item_text, read_letter_index
    from craft.retrieval import semantic_ids as S

    kind, path = _check_sids(spec)
    if kind == "letter":
        codes = read_letter_index(path, data.n_items)
    else:
        if kind == "cf":
            emb = S.cf_embeddings(data, seed=seed)
        elif kind == "attributes":
            emb = S.attribute_embeddings(read_attributes(path, data.n_items), seed=seed)
        else:
            try:
                emb = S.text_embeddings(read_item_text(path, data.n_items))
            except ImportError:
                raise _error("--sids text:…: needs the wordllama package (pip install wordllama)") from None
        log(f"embeddings: {kind}, {emb.shape[1]} dims; quantising with {quantizer}")
        q = S.residual_kmeans if quantizer == "rkm" else S.rqvae
        codes = q(emb, levels=levels, codebook_size=codebook_size, seed=seed)
    rep = S.quality_report(codes)
    log(S.format_report(rep))
    full = S.add_collision_code(codes)
    return np.ascontiguousarray(full), rep


def cmd_train(args) -> int:
    import numpy as np
    import torch
    from craft.data.recsys import load_recsys
    from craft.retrieval.model import TigerConfig
    from craft.retrieval.train import train

    _positive(args, ["max_minutes", "epochs", "batch_size", "lr", "dim", "layers", "heads", "hidden_dim",
                     "max_history", "levels", "codebook_size", "threads"])
    _check_sids(args.sids)
    if not 0 <= args.dropout < 1:
        raise _error(f"--dropout: expected a value in [0, 1), got {args.dropout}")
    if args.threads:
        torch.set_num_threads(args.threads)
    def log(msg):
        print(msg, file=sys.stderr)

    out = Path(args.out)
    data = load_recsys(args.data, args.max_history)
    log(f"{args.data}: {data.n_items} items, {len(data.train)} training examples, {len(data.test)} test users")
    if args.resume:
        if not (out / "run.json").is_file():
            raise _error(f"--resume: {str(out)!r} has no run.json; start the run without --resume")
        run = json.loads((out / "run.json").read_text())
        codes = np.load(out / "codes.npy")
        config = TigerConfig(**run["model"])
    else:
        codes, rep = build_codes(data, args.sids, args.quantizer, args.levels, args.codebook_size, args.seed, log)
        sizes = [int(codes[1:, l].max()) + 1 for l in range(codes.shape[1])]
        config = TigerConfig(sizes, max_history=args.max_history, dim=args.dim, n_heads=args.heads,
                             hidden_dim=args.hidden_dim, n_encoder_layers=args.layers, n_decoder_layers=args.layers,
                             dropout=args.dropout)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "codes.npy", codes)
        run = {"data": str(Path(args.data).resolve()), "sids": args.sids, "quantizer": args.quantizer,
               "max_history": args.max_history, "ids_report": rep, "model": config.to_dict()}
        (out / "run.json").write_text(json.dumps(run, indent=1))
    summary = train(data, codes, out, config, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                    max_minutes=args.max_minutes, resume=args.resume, seed=args.seed,
                    progress=not args.no_progress, log=log)
    run.setdefault("trainings", []).append(summary)
    (out / "run.json").write_text(json.dumps(run, indent=1))
    log(f"trained {summary['steps']} steps ({summary['epochs']:.2f} epochs, {summary['parameters']:,} parameters), "
        f"loss {summary['loss']:.3f}, {summary['tokens_per_sec']:.0f} tokens/s; run folder {out}")
    return 0


def cmd_eval(args) -> int:
    import torch
    from craft.data.recsys import load_recsys
    from craft.retrieval.evaluate import evaluate, format_results
    from craft.retrieval.train import load_run

    _positive(args, ["beam", "batch_users", "max_users", "threads", "alpha_users"])
    if args.threads:
        torch.set_num_threads(args.threads)
    model, codes, run = load_run(args.dir)
    widths = _beam_widths(args, model.config.levels)
    data = load_recsys(args.data or run["data"], run["max_history"])
    if data.n_items + 1 != len(codes):
        raise _error(f"{args.data or run['data']}: {data.n_items} items, the run's IDs cover {len(codes) - 1}")
    res = evaluate(model, codes, data, args.split, widths, hybrid=not args.no_hybrid,
                   batch_users=args.batch_users, progress=not args.no_progress and not args.json,
                   max_users=args.max_users, exact_users=args.exact_users, alpha_users=args.alpha_users)
    res["run"] = str(args.dir)
    res["step"] = run["step"]
    print(json.dumps(res, indent=1) if args.json else format_results(res))
    return 0


def _beam_widths(args, levels: int) -> tuple[int, ...]:
    """--beam and --beam-widths -> one width per code level (the last: items returned, at least 10)."""
    from craft.retrieval.decode import widened_widths
    spec = args.beam_widths.strip()
    if spec == "widened":
        widths = widened_widths(args.beam, levels)
    elif spec == "uniform":
        widths = (args.beam,) * levels
    else:
        try:
            widths = tuple(int(w) for w in spec.split(","))
        except ValueError:
            widths = ()
        if len(widths) != levels or min(widths) < 1:
            raise _error(f"--beam-widths {spec!r}: expected widened, uniform or {levels} positive comma-separated "
                         f"ints (this run's IDs have {levels} levels), e.g. {','.join(map(str, widened_widths(20, levels)))}")
    if widths[-1] < 10:
        raise _error(f"--beam: at least 10 at the last level (the metrics rank 10 items), got {widths[-1]}")
    return widths


def run(args) -> int:
    return cmd_train(args) if args.retrieval_command == "train" else cmd_eval(args)
