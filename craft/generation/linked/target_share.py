"""How often linked generation links to documents that exist, without a trie forcing it to.

For each prompt title and seed, :func:`generate_linked` writes a root document (``# <title>`` then
free text, ``max_link_depth`` levels of linked documents behind it, no ``constrain_links``), and the
link targets written in the root's text (``parse_links``: every ``[text](target)``, followed or
not) are looked up in the corpus (``corpus.has_document``: exact title, then the same
normalized title). A model that reads the documents it links to should name real ones more often.
"""
from __future__ import annotations

from typing import Sequence

from craft.data.corpus import parse_links
from craft.data.pretokenize import PretokenizedCorpus
from craft.generation.linked.generator import generate_linked


def link_target_share(model, corpus: PretokenizedCorpus, titles: Sequence[str], seeds: int = 4,
                      max_new_tokens: int = 160, temperature: float = 0.8, max_link_depth: int = 1,
                      progress: bool = False) -> dict:
    """``{"prompts", "links_written", "links_in_corpus", "link_target_share"}`` over ``len(titles) *
    seeds`` generations (seeds 0..seeds-1); the share is None when no link was written."""
    runs = [(t, s) for t in titles for s in range(seeds)]
    it = runs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(runs, unit="doc", desc="link targets")
    written = found = 0
    for title, seed in it:
        res = generate_linked(model, f"# {title}\n\n", corpus, max_new_tokens=max_new_tokens,
                              temperature=temperature, seed=seed, max_link_depth=max_link_depth)
        targets = parse_links(res.root_document.text or "")
        written += len(targets)
        found += sum(corpus.has_document(t) for t in targets)
    return {"prompts": len(runs), "links_written": written, "links_in_corpus": found,
            "link_target_share": found / written if written else None}
