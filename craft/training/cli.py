"""``craft eval-links CHECKPOINT [--json]``: does the model use the documents a document links to?

Prints the loss of held-out linked documents alone, after their linked documents
(``cross_doc_link``) and after random unlinked documents, and the same on the link-target title
tokens (see :mod:`craft.training.eval_links`). The corpus defaults to the one the checkpoint was
trained on; the held-out split and ``seq_len`` to the checkpoint's.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    e = subparsers.add_parser("eval-links", help="loss of held-out documents alone / with linked / with random "
                                                 "documents in context")
    e.add_argument("checkpoint", help="a checkpoint file or a run folder (its latest checkpoint)")
    e.add_argument("--corpus", help="pretokenized directory or source folder (default: the checkpoint's corpus)")
    e.add_argument("--max-docs", type=int, default=64, help="held-out linked documents to measure (default 64)")
    e.add_argument("--max-linked", type=int, default=3, help="linked documents in context, at most (default 3)")
    e.add_argument("--seq-len", type=int, help="default: the checkpoint's training seq_len")
    e.add_argument("--seed", type=int, default=0, help="the draw of the random documents")
    e.add_argument("--generate", type=int, default=0, metavar="SEEDS",
                   help="also generate SEEDS root documents per held-out title (no trie) and report the share "
                        "of their links whose target is a corpus document (default 0: skip)")
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")
    e.set_defaults(fn=run)


def run(args) -> int:
    from craft.cli import CliError
    from craft.data import PretokenizedCorpus, ensure_pretokenized
    from craft.data.pretokenize import is_pretokenized
    from craft.training import load_checkpoint, load_model
    from craft.training.eval_links import evaluate_links

    try:
        model = load_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(f"checkpoint: {e}") from None
    tc = model.train_config
    corpus_path = args.corpus or load_checkpoint(model.checkpoint_path).get("corpus")
    if not corpus_path:
        raise CliError("--corpus: the checkpoint does not name its corpus; pass --corpus")
    if not is_pretokenized(corpus_path):
        corpus_path = ensure_pretokenized(Path(corpus_path), tc.get("tokenizer", "byte"))
    for name in ("max_docs", "max_linked"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    if args.generate < 0:
        raise CliError(f"--generate: expected an int >= 0 (seeds per title), got {args.generate}")
    with PretokenizedCorpus(corpus_path) as corpus:
        if corpus.tokenizer.to_dict() != model.tokenizer.to_dict():
            raise CliError(f"--corpus: {corpus_path} was tokenized with {corpus.tokenizer.name!r}, the checkpoint "
                           f"with {model.tokenizer.name!r}; pass the corpus it was trained on")
        try:
            res = evaluate_links(model, corpus, seq_len=args.seq_len or tc.get("seq_len"),
                                 eval_fraction=tc.get("eval_fraction", 0.02), max_docs=args.max_docs,
                                 max_linked=args.max_linked, seed=args.seed, progress=not args.json)
            if args.generate:
                from craft.generation.linked.target_share import link_target_share
                from craft.training.eval_links import held_out_linked_documents

                held = held_out_linked_documents(corpus, int(args.seq_len or tc.get("seq_len") or
                                                             model.config.max_seq_len),
                                                 tc.get("eval_fraction", 0.02), args.max_docs)
                res.update(link_target_share(model, corpus, [corpus.title(d) for d in held], seeds=args.generate,
                                             progress=not args.json))
        except ValueError as e:
            raise CliError(str(e)) from None
    res["checkpoint"] = model.checkpoint_path
    res["trained_linked"] = bool(tc.get("linked", False))
    if args.json:
        print(json.dumps(res))
        return 0
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{res['n_docs']} held-out linked documents, {res['n_tokens']} tokens ({res['n_title_tokens']} in "
          f"link-target titles); trained {'with' if res['trained_linked'] else 'without'} linked packing")
    print(f"{'context':<10}{'loss':>10}{'title loss':>12}")
    for c in ("alone", "linked", "random"):
        print(f"{c:<10}{fmt(res[c]):>10}{fmt(res['title_' + c]):>12}")
    if args.generate:
        print(f"generated {res['prompts']} root documents: {res['links_written']} links, {res['links_in_corpus']} "
              f"to corpus documents (share {fmt(res['link_target_share'])})")
    return 0
