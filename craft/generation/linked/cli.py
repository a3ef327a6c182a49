"""Command-line options of linked generation, for ``craft generate``.

``add_linked_options(parser)`` adds ``--corpus DIR``, ``--max-link-depth N``, ``--out DIR`` and the
other linked-generation options to an argparse parser; ``run_linked(model, prompt, args)`` runs
:func:`generate_linked` with them, prints every document and the link tree, and saves the result
when ``--out`` is given. Sampling options (``max_new_tokens``, ``temperature``, ``top_k``,
``top_p``, ``seed``) are read from ``args`` when the command defines them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from craft.data.pretokenize import is_pretokenized
from craft.generation.linked.config import EVICTION_POLICIES, GENERATION_MASK_KINDS
from craft.generation.linked.generator import generate_linked
from craft.generation.linked.result import GenerationResult

_SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
#: the most auxiliary documents ``--max-aux-docs`` accepts (the link mask is a dense (n + 1)^2 bool matrix)
MAX_AUX_DOCS = 4096


def add_linked_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("linked documents")
    g.add_argument("--corpus", metavar="DIR", default=None,
                   help="pretokenized corpus directory: linked titles found there are inserted, not generated")
    g.add_argument("--max-link-depth", type=int, default=1, metavar="N",
                   help="link hops followed from the root (0 = none; default 1)")
    g.add_argument("--max-aux-docs", type=int, default=5, metavar="N",
                   help=f"documents besides the root (at most {MAX_AUX_DOCS})")
    g.add_argument("--max-tokens-per-document", type=int, default=None, metavar="N",
                   help="default: the checkpoint's training seq_len")
    g.add_argument("--max-seq-len", "--max-context-length", dest="max_seq_len", type=int, default=None, metavar="N",
                   help="KV-cache slots (default: the model's max_seq_len); --max-context-length is its old name")
    g.add_argument("--eviction-policy", choices=EVICTION_POLICIES, default="drop_oldest")
    g.add_argument("--mask-kind", choices=GENERATION_MASK_KINDS, default=None,
                   help="default: cross_doc_link for a checkpoint trained with --linked, doc_causal otherwise")
    g.add_argument("--constrain-links", action="store_true", help="link targets must be corpus titles (needs --corpus)")
    g.add_argument("--no-corpus-fallback", action="store_true", help="skip links the corpus lacks instead of generating them")
    g.add_argument("--no-prompt-links", action="store_true", help="do not follow links written in the prompt")
    g.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads while decoding (default 1)")
    g.add_argument("--out", metavar="DIR", default=None, help="write one markdown file per document + manifest.json")
    return parser


def check_linked_options(args: argparse.Namespace) -> None:
    """Refuses, naming the flag (ValueError), a ``--corpus`` that is not a pretokenized corpus and
    option values out of range or that would allocate without bound (``--max-aux-docs``)."""
    if not 0 <= args.max_aux_docs <= MAX_AUX_DOCS:
        raise ValueError(f"--max-aux-docs: expected an int in [0, {MAX_AUX_DOCS}] (the link mask is dense, "
                         f"(n + 1)^2), got {args.max_aux_docs}")
    corpus = getattr(args, "corpus", None)
    if corpus is not None and not is_pretokenized(corpus):
        what = "does not exist" if not Path(corpus).exists() else "is not a pretokenized corpus"
        raise ValueError(f"--corpus {corpus!r}: {what}; build one with `craft corpus build FOLDER --out DIR` "
                         "and pass DIR")
    for flag, name in (("--max-link-depth", "max_link_depth"), ("--threads", "threads"),
                       ("--max-tokens-per-document", "max_tokens_per_document"),
                       ("--max-seq-len", "max_seq_len")):
        v = getattr(args, name, None)
        low = 0 if name == "max_link_depth" else 1
        if v is not None and v < low:
            raise ValueError(f"{flag}: expected an int >= {low}, got {v}")


def linked_options(args: argparse.Namespace) -> dict:
    """The :func:`generate_linked` keyword arguments named by ``args``."""
    opts = dict(max_link_depth=args.max_link_depth, max_auxiliary_documents=args.max_aux_docs,
                max_tokens_per_document=args.max_tokens_per_document, max_seq_len=args.max_seq_len,
                eviction_policy=args.eviction_policy, mask_kind=args.mask_kind,
                constrain_links_to_corpus=args.constrain_links, allow_corpus_fallback=not args.no_corpus_fallback,
                process_prompt_links=not args.no_prompt_links, num_threads=args.threads)
    if getattr(args, "compile", False):
        opts["compile"] = True
    for name in _SAMPLING:
        v = getattr(args, name, None)
        if v is not None:
            opts[name] = v
    return opts


def print_result(result: GenerationResult, out: TextIO | None = None) -> None:
    out = sys.stdout if out is None else out
    for d in result.get_all_documents():
        out.write(f"===== {d.title} ({d.source}, {d.status}, depth {d.depth}) =====\n{d.text}\n\n")
    out.write("link tree:\n" + result.link_tree() + "\n")
    tps = result.stats.get("tokens_per_second")
    if tps:
        out.write(f"{result.stats['sampled_tokens']} tokens sampled, {tps:.1f} tokens/s, "
                  f"{result.stats['evictions']} evictions\n")


def run_linked(model, prompt: str, args: argparse.Namespace, out: TextIO | None = None) -> GenerationResult:
    out = sys.stdout if out is None else out
    result = generate_linked(model, prompt, corpus=args.corpus, **linked_options(args))
    print_result(result, out)
    if args.out:
        path = result.save(args.out)
        out.write(f"saved {len(result.get_all_documents())} documents and {path}\n")
    return result
