"""``craft directives train|eval``: train the directive decoder (and its baselines) on a task, and
report in-distribution accuracy, extrapolation accuracy, exact-count rate and the baselines' figures.

    craft directives train --task parity --max-minutes 5 --out runs/dir-parity            # ACT ponder cost
    craft directives train --task parity --variant all --max-minutes 5 --out runs/dir-parity  # + baselines
    craft directives eval runs/dir-parity --json

Each variant trains into ``OUT/<variant>/`` and resumes from its checkpoint when run again with a
larger ``--max-minutes``/``--max-steps`` (``--restart`` starts over).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ALL = ("act", "pondernet", "fixed")


def register(subparsers) -> None:
    from craft.directives.tasks import TASKS
    from craft.directives.train import VARIANTS
    from craft.training.clock import CLOCKS

    p = subparsers.add_parser("directives", help="transform directives: train and evaluate on synthetic tasks")
    sub = p.add_subparsers(dest="directives_command", parser_class=type(p))
    sub.required = True
    t = sub.add_parser("train", help="train a variant (or all) on a task")
    t.add_argument("--task", required=True, choices=sorted(TASKS))
    t.add_argument("--variant", default="act", choices=[*VARIANTS, "all"],
                   help="ponder cost act (default) / pondernet / none, fixed (no halting), or all = act, pondernet, fixed")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--max-minutes", type=float, default=5.0, help="training time per variant (default 5)")
    t.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="what --max-minutes counts: wall-clock, or this process's CPU time (a shared machine)")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--dim", type=int)
    t.add_argument("--mode", choices=["clamp", "carry"])
    t.add_argument("--seed", type=int)
    t.add_argument("--ponder-weight", type=float, help="weight of the ponder cost")
    t.add_argument("--lambda-p", type=float, help="PonderNet's geometric prior parameter")
    t.add_argument("--count-nll-weight", type=float, help="weight of -log P(halt at the target count) (task default)")
    t.add_argument("--return-bias", type=float, help="initial return-head bias (task default)")
    t.add_argument("--command-curriculum", action="store_true",
                   help="counts: draw commands in proportion to their training error")
    t.add_argument("--size-curriculum", type=int, metavar="STEPS",
                   help="grow the largest training size from the smallest + 1 to the task's largest over STEPS steps")
    t.add_argument("--seek-score", action=argparse.BooleanOptionalAction, default=None,
                   help="the engine's seek gets its own item score, apart from the lookahead's (task default)")
    t.add_argument("--score-gains", type=int, metavar="G",
                   help="item features per engine score whose gain the state sets (task default; 0: additive score)")
    t.add_argument("--lookahead-seek", action=argparse.BooleanOptionalAction, default=None,
                   help="the engine's lookahead counts the items its seek would take (needs the seek score; task default)")
    t.add_argument("--command-state", action=argparse.BooleanOptionalAction, default=None,
                   help="the engine's state starts from the command as well as the items (task default)")
    t.add_argument("--halt-margin-weight", type=float,
                   help="weight of the hinge that pushes the halting at the right close past ACT's threshold (task default)")
    t.add_argument("--return-credit-weight", type=float,
                   help="weight of the return-logit cross-entropy crediting each slot's best instruction (task default)")
    t.add_argument("--result-floor", type=float,
                   help="weight every instruction's result gets toward its slot's target (task default)")
    t.add_argument("--no-decoder-context", action="store_true",
                   help="the decoder sees only the command; the items reach the model only through the engine")
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    t.add_argument("--restart", action="store_true", help="delete the variant's checkpoint and start over")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=run)
    e = sub.add_parser("eval", help="evaluate every variant trained in a run folder")
    e.add_argument("dir")
    e.add_argument("--rows", type=int, default=512, help="rows per split (default 512)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(fn=run)


def run(args) -> int:
    import torch

    from craft.cli import CliError

    if args.directives_command == "train":
        from craft.directives.train import RunConfig, train

        torch.set_num_threads(max(1, args.threads))
        variants = ALL if args.variant == "all" else (args.variant,)
        out = Path(args.out)
        for v in variants:
            fields = dict(task=args.task, variant=v, max_minutes=args.max_minutes, clock=args.clock)
            for name in ("max_steps", "batch_size", "lr", "dim", "mode", "seed", "ponder_weight", "lambda_p",
                         "count_nll_weight", "return_bias", "size_curriculum", "seek_score", "score_gains",
                         "lookahead_seek", "command_state", "halt_margin_weight", "return_credit_weight",
                         "result_floor"):
                if getattr(args, name) is not None:
                    fields[name] = getattr(args, name)
            folder = out / v
            if args.command_curriculum:
                fields["command_curriculum"] = True
            if args.no_decoder_context:
                fields["decoder_context"] = False
            if args.restart and folder.exists():
                shutil.rmtree(folder)
            try:
                m = train(RunConfig(**fields), folder, progress=not args.no_progress)
            except ValueError as e:
                raise CliError(str(e)) from e
            print(f"{args.task}/{v}: step {m['steps']}, {m['wall_seconds']:.0f} s wall, {m['cpu_seconds']:.0f} s CPU; "
                  f"in-distribution {m['in_distribution']['accuracy']:.3f}, "
                  f"extrapolation {m['extrapolation']['accuracy']:.3f}, "
                  f"exact count {m['in_distribution']['exact_count']:.3f}; -> {folder}")
        return 0

    from craft.directives.train import evaluate, load_run
    from craft.training.clock import CLOCKS

    root = Path(args.dir)
    folders = sorted(p.parent for p in root.glob("*/checkpoint.pt"))
    if (root / "checkpoint.pt").is_file():
        folders = [root]
    if not folders:
        raise CliError(f"no directive checkpoint under {args.dir!r}; train one with `craft directives train`")
    results = {}
    for f in folders:
        model, state = load_run(f)
        m = evaluate(model, args.rows)
        m.update(variant=model.cfg.variant, task=model.cfg.task, steps=state["step"],
                 train_seconds=round(state["elapsed"], 1), clock=model.cfg.clock,
                 **{f"{c}_seconds": round(state[f"{c}_seconds"], 1) for c in CLOCKS if f"{c}_seconds" in state})
        results[model.cfg.variant] = m
    main = "act" if "act" in results else next(iter(results))
    report = {"task": results[main]["task"], "variant": main,
              "in_distribution_accuracy": results[main]["in_distribution"]["accuracy"],
              "extrapolation_accuracy": results[main]["extrapolation"]["accuracy"],
              "exact_count_rate": results[main]["in_distribution"]["exact_count"],
              "extrapolation_exact_count_rate": results[main]["extrapolation"]["exact_count"],
              "spearman_instructions_difficulty": results[main]["spearman_instructions_difficulty"],
              **({"spearman_instructions_work": results[main]["spearman_instructions_work"]}
                 if "spearman_instructions_work" in results[main] else {}),
              "baselines": {v: {"in_distribution_accuracy": r["in_distribution"]["accuracy"],
                                "extrapolation_accuracy": r["extrapolation"]["accuracy"],
                                "exact_count_rate": r["in_distribution"]["exact_count"],
                                "train_seconds": r["train_seconds"], "steps": r["steps"]}
                            for v, r in results.items() if v != main},
              "variants": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"task {report['task']}  (rows per split: {args.rows})")
    print(f"{'variant':<10} {'steps':>6} {'train s':>8} {'in-dist':>8} {'extrap':>8} {'count ok':>9} {'slot ok':>8} "
          f"{'spearman':>9}")
    for v, r in results.items():
        print(f"{v:<10} {r['steps']:>6} {r['train_seconds']:>8.0f} {r['in_distribution']['accuracy']:>8.3f} "
              f"{r['extrapolation']['accuracy']:>8.3f} {r['in_distribution']['exact_count']:>9.3f} "
              f"{r['in_distribution']['slot_accuracy']:>8.3f} {r['spearman_instructions_difficulty']:>9.3f}")
    return 0
