"""Does a model use the documents a document links to? Loss of held-out documents in three contexts.

For every held-out document ``h`` (the documents wholly inside the trainer's held-out windows, see
:func:`craft.data.linked_packing.train_document_count`; linked training never places them) that links to corpus documents, the loss of
``h``'s own tokens is measured

- ``alone``: ``h`` by itself;
- ``linked``: after up to ``max_linked`` of the documents it links to (the first ones it links
  to, each cut to an equal share of ``budget_share`` of the sequence), with ``cross_doc_link``
  edges from ``h`` to them: what linked generation shows the model;
- ``random``: after as many random documents it does not link to, cut to the same lengths, with
  the same edges: context of the same size that says nothing about ``h``.

``h`` is cut to the same length in all three. ``title_*`` are the same losses restricted to the
tokens of link targets inside ``(...)`` whose document is in the linked context (the title of a
document the model can read). Losses are mean cross-entropy in nats per token.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from craft.data.linked_packing import corpus_links, train_document_count
from craft.data.packing import PackedSequences, split_windows
from craft.data.pretokenize import PretokenizedCorpus

CONDITIONS = ("alone", "linked", "random")


def _title_positions(corpus: PretokenizedCorpus, doc: int, n: int, placed: set[int]) -> list[int]:
    """Positions (in ``doc``, < n) of the target tokens strictly inside ``(`` ``)`` of links to ``placed``."""
    from craft_kernels import LinkDetector

    ids = np.asarray(corpus.document(doc), dtype=np.int64)[:n]
    out = []
    for link in LinkDetector.for_tokenizer(corpus.tokenizer).scan(ids):
        if link.is_image or not link.target_bytes:
            continue
        title = corpus.resolve_title(link.target_bytes.decode("utf-8", "replace"))
        if title is not None and corpus.find(title) in placed:
            out.extend(range(link.open_paren_pos + 1, link.close_paren_pos))
    return out


def held_out_linked_documents(corpus: PretokenizedCorpus, seq_len: int, eval_fraction: float = 0.02,
                              max_docs: int = 64, links: list | None = None) -> list[int]:
    """Up to ``max_docs`` documents wholly inside the trainer's held-out windows (``seq_len``,
    ``eval_fraction``) that link to other corpus documents, in corpus order; every document when the
    corpus is too small to hold any out. ValueError when there is none."""
    links = corpus_links(corpus) if links is None else links
    packed = PackedSequences(corpus, min(seq_len, max(1, corpus.n_tokens - 1)))
    first = train_document_count(packed, eval_fraction)
    if first >= corpus.n_documents:  # tiny corpus: no held-out documents, use them all
        first = 0
    else:  # a document straddling the split had its start in a training window: skip it
        first_eval = int(split_windows(len(packed), eval_fraction)[1][0]) * packed.seq_len
        first += int(packed.starts[first] < first_eval)
    held = [d for d in range(first, corpus.n_documents) if links[d]][:max_docs]
    if not held:
        raise ValueError("corpus: no held-out document links to another corpus document; nothing to measure "
                         "(use a corpus with links, or a larger eval_fraction)")
    return held


@torch.no_grad()
def evaluate_links(model, corpus: PretokenizedCorpus, seq_len: int | None = None, eval_fraction: float = 0.02,
                   max_docs: int = 64, max_linked: int = 3, budget_share: float = 0.5, seed: int = 0,
                   progress: bool = False) -> dict:
    """The three losses (and their title-token versions) over up to ``max_docs`` held-out linked
    documents: ``{"alone", "linked", "random", "title_alone", "title_linked", "title_random",
    "n_docs", "n_tokens", "n_title_tokens"}``. ``seq_len`` defaults to the model's max_seq_len."""
    seq_len = int(seq_len or model.config.max_seq_len)
    if seq_len < 4:
        raise ValueError(f"seq_len: expected >= 4, got {seq_len}")
    if not 0 < budget_share < 1:
        raise ValueError(f"budget_share: expected a number in (0, 1), got {budget_share!r}")
    links = corpus_links(corpus)
    held = held_out_linked_documents(corpus, seq_len, eval_fraction, max_docs, links)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = {k: 0.0 for k in CONDITIONS}
    tsums = {k: 0.0 for k in CONDITIONS}
    n_tok = n_title = n_measured = 0
    it = held
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(held, unit="doc", desc="eval-links")
    try:
        for h in it:
            targets = links[h][:max_linked]
            share = max(1, int(seq_len * budget_share) // len(targets))
            ctx_lens = [min(share, int(corpus.doc_lengths[t]) + 1) for t in targets]
            body = np.asarray(corpus.document(h), dtype=np.int64)
            h_len = min(len(body), seq_len - sum(ctx_lens))  # h's tokens; its EOS is the last target
            if h_len < 2:
                continue
            others = [d for d in range(corpus.n_documents) if d != h and d not in links[h]]
            randoms = [int(x) for x in rng.choice(others, size=min(len(targets), len(others)), replace=False)] \
                if others else []
            titles = np.array(_title_positions(corpus, h, h_len, set(targets)), dtype=np.int64)
            losses = {}
            for cond, ctx in (("alone", []), ("linked", targets), ("random", randoms)):
                toks, ids = [], []
                for j, (d, m) in enumerate(zip(ctx, ctx_lens)):
                    part = np.append(np.asarray(corpus.document(d), dtype=np.int64), corpus.eos_id)[:m]
                    toks.append(part)
                    ids.append(np.full(len(part), j))
                start = sum(len(t) for t in toks)
                toks.append(body[:h_len])
                ids.append(np.full(h_len, len(ctx)))
                x = torch.from_numpy(np.concatenate(toks))[None].to(device)
                doc_ids = torch.from_numpy(np.concatenate(ids))[None].to(device)
                edges = None
                if ctx:
                    edges = torch.zeros(1, len(ctx) + 1, len(ctx) + 1, dtype=torch.bool, device=device)
                    edges[0, len(ctx), :len(ctx)] = True
                logits = model.forward_inference(x, doc_ids, links=edges)[0, start:start + h_len - 1].float()
                nll = F.cross_entropy(logits, x[0, start + 1:start + h_len], reduction="none")  # predicts body[1:]
                losses[cond] = nll
            n_tok += h_len - 1
            n_measured += 1
            keep = titles[(titles >= 1) & (titles < h_len)] - 1
            n_title += len(keep)
            for cond in CONDITIONS:
                sums[cond] += float(losses[cond].sum())
                tsums[cond] += float(losses[cond][torch.from_numpy(keep).to(device)].sum()) if len(keep) else 0.0
    finally:
        model.train(was_training)
    if n_tok == 0:
        raise ValueError("corpus: every held-out linked document was too short to measure at this seq_len")
    out = {k: sums[k] / n_tok for k in CONDITIONS}
    out.update({f"title_{k}": (tsums[k] / n_title if n_title else None) for k in CONDITIONS})
    out.update(n_docs=n_measured, n_tokens=n_tok, n_title_tokens=n_title, seq_len=seq_len, max_linked=max_linked)
    return out
