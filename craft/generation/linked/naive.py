"""``NaiveLinkedGenerator``: the same linked generation, but every step recomputes the whole packed
context from scratch (no reuse of cached keys/values). The baseline the KV-cache generator is
measured against, and a differential check of it (same logits at every step)."""
from __future__ import annotations

import torch

from craft.generation.linked.generator import LinkedDocumentGenerator


class NaiveLinkedGenerator(LinkedDocumentGenerator):
    """Each model call runs every active token (slots ``0..length-1``, their rope positions) under the
    dense document mask built from the context's document ids and links; returns the last logits."""

    def _forward(self, tokens, slots, rope):
        from craft_kernels import doc_dense_mask

        self.fed += len(tokens)
        ctx = self.ctx
        toks, _, pos = ctx.packed()
        n = ctx.length
        ids = ctx.mask.doc_ids[None]
        links = ctx.mask.links[None] if ctx.mask_kind == "cross_doc_link" else None
        mask = doc_dense_mask(ids, ctx.mask_kind, links)[:, :, :n]
        slots_all = torch.arange(n, device=self.device)
        logits = self.model.forward_step(toks[None].to(self.device), slots_all, mask=mask, rope_pos=pos.to(self.device))
        return logits[0, -1]
