"""Token-by-token generation of linked documents on a KV cache.

``SingleDocumentGenerator`` generates one document (sample, append, feed; stops at EOS, the
document's token limit, the run's token budget or a full context). ``LinkedDocumentGenerator``
also feeds every sampled token to a ``craft_kernels.LinkDetector``; when a link completes, the
target is looked up in the corpus (its tokens are placed in the context as a document the parent
links to) or generated recursively (within depth and count limits), then the parent resumes and
sees it. Each step runs the model on one token: ``forward_step`` writes its K/V at the slot the
``DocumentContext`` gives and attends through the incremental ``DocMaskState`` query mask.
With ``compile=True`` those one-token steps go through ``torch.compile`` (static shapes: the mask is
always (1, 1, 1, max_seq_len), positions are tensors, eviction compacts the cache in place,
so one compiled step serves the whole run); prefills of several tokens stay eager.

Cached keys/values keep what a token saw when it was computed: a parent's tokens written before a
link do not see the linked document (the token closing the link and every later one do), and an
evicted document disappears from later steps only. Links in the prompt are resolved before the
prompt is placed, so every prompt token sees them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from craft.generation.generate import select_decode_step
from craft.generation.sampling import LogitsProcessor, apply_processors, sample
from craft.generation.linked.config import GenerationConfig
from craft.generation.linked.context import ContextFull, DocumentContext
from craft.data.pretokenize import PretokenizedCorpus
from craft.generation.linked.result import GeneratedDocument, GenerationResult


def resolve_config(model, tokenizer, config: GenerationConfig) -> GenerationConfig:
    """Fills the ``None`` fields from the model (context length, device), its checkpoint's training
    config (``seq_len``: the per-document limit; ``linked``: the mask) and the tokenizer (EOS id);
    checks they fit together.

    The mask defaults to what the model was trained with: ``cross_doc_link`` for a checkpoint
    trained with linked packing, ``doc_causal`` otherwise (also for a model without a checkpoint):
    a ``doc_causal``-trained model is worse with its linked documents in view (``craft eval-links``;
    benchmarks/RESULTS.md, linked training)."""
    ctx_len = int(model.config.max_seq_len)
    max_ctx = config.max_seq_len or ctx_len
    per_doc = config.max_tokens_per_document
    if per_doc is None:
        seq_len = (getattr(model, "train_config", None) or {}).get("seq_len")
        per_doc = min(int(seq_len or ctx_len), max_ctx)
    if per_doc > max_ctx:
        raise ValueError(f"max_tokens_per_document: {per_doc} exceeds max_seq_len={max_ctx}")
    if per_doc > ctx_len:
        raise ValueError(f"max_tokens_per_document: {per_doc} exceeds the model's max_seq_len={ctx_len} "
                         "(positions inside a document must stay within what the model was built for)")
    eos = config.eos_id if config.eos_id is not None else tokenizer.eos_id
    vocab = int(model.config.vocab_size)
    if not 0 <= eos < vocab:
        raise ValueError(f"eos_id: {eos} is outside the model's vocabulary [0, {vocab})")
    if tokenizer.vocab_size > vocab:
        raise ValueError(f"tokenizer: its {tokenizer.vocab_size} ids exceed the model's vocab_size={vocab}")
    device = config.device or str(next(model.parameters()).device)
    kind = config.mask_kind
    if kind is None:
        kind = "cross_doc_link" if (getattr(model, "train_config", None) or {}).get("linked") else "doc_causal"
    return config.replace(max_seq_len=max_ctx, max_tokens_per_document=per_doc, eos_id=eos, device=device,
                          mask_kind=kind)


class SingleDocumentGenerator:
    """Generates documents of a :class:`DocumentContext` one at a time, without following links.

    ``model`` implements ``setup_cache``/``forward_step``/``compact_cache``; ``config`` must be
    resolved (:func:`resolve_config`); ``logits_processors`` are ``fn(logits (1, V),
    document_tokens (1, t)) -> logits`` applied before sampling.
    """

    def __init__(self, model, tokenizer, config: GenerationConfig, logits_processors: Sequence[LogitsProcessor] = (),
                 compile: bool | str = False):
        if (config.max_seq_len is None or config.max_tokens_per_document is None or config.eos_id is None
                or config.mask_kind is None):
            raise ValueError("config: resolve it first with resolve_config(model, tokenizer, config)")
        self.model, self.tokenizer, self.cfg = model, tokenizer, config
        self.processors = list(logits_processors)
        self.step = select_decode_step(compile)
        self.eos = int(config.eos_id)
        self.device = torch.device(config.device)
        self.generator = None
        if config.seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.ctx = self._new_context()
        self.sampled = 0  # tokens sampled in this run (all documents)
        self.fed = 0  # tokens run through the model (prefills included)

    def _new_context(self) -> DocumentContext:
        cfg = self.cfg
        self.model.setup_cache(1, cfg.max_seq_len, device=self.device)
        return DocumentContext(cfg.max_seq_len, cfg.max_auxiliary_documents + 1, cfg.eviction_policy,
                               cfg.mask_kind, cfg.max_tokens_per_document, device=self.device,
                               on_compact=self.model.compact_cache)

    # ------------------------------------------------------------------ model calls
    def _forward(self, tokens: Sequence[int], slots: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        self.fed += len(tokens)
        t = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        mask = self.ctx.query_mask(len(tokens))
        if len(tokens) == 1:
            return self.step(self.model, t, slots, mask, rope)[0]
        return self.model.forward_step(t, slots, mask=mask, rope_pos=rope)[0, -1]

    def prefill(self, index: int) -> torch.Tensor:
        """Places document ``index``'s pending tokens in the cache; returns the next-token logits (V,)."""
        d = self.ctx.docs[index]
        start = 0 if not d.active else d.placed
        slots, rope = self.ctx.place(index)
        return self._forward(d.tokens[start:], slots, rope)

    def feed(self, tokens: Sequence[int]) -> torch.Tensor:
        """Appends ``tokens`` to the current document and runs them; returns the next logits (V,)."""
        slots, rope = self.ctx.append(tokens)
        return self._forward(tokens, slots, rope)

    # ------------------------------------------------------------------ sampling
    def choose(self, logits: torch.Tensor, index: int, frame=None) -> int:
        """The next token of document ``index`` from ``logits`` (V,)."""
        raw = logits[None].float()
        row = raw
        if self.processors:
            hist = torch.tensor([self.ctx.docs[index].tokens], dtype=torch.long, device=logits.device)
            row = apply_processors(row, hist, self.processors)
        row = self._constrain(row[0], frame)[None]
        cfg = self.cfg
        return int(sample(row, cfg.temperature, cfg.top_k, cfg.top_p, self.generator, fallback_logits=raw)[0])

    def _constrain(self, logits: torch.Tensor, frame) -> torch.Tensor:
        return logits

    # ------------------------------------------------------------------ one document
    def _new_frame(self, index: int):
        return None

    def _on_token(self, frame, index: int, token: int) -> None:
        """Called with every sampled token of document ``index`` before it is fed (not EOS)."""

    def generate(self, index: int, logits: torch.Tensor) -> int:
        """Generates document ``index`` (current, with its header or prompt placed) from ``logits``,
        the model's output after its last placed token. Returns the number of tokens sampled."""
        ctx, cfg = self.ctx, self.cfg
        frame = self._new_frame(index)
        n = 0
        while True:
            if self.sampled >= cfg.max_new_tokens:
                status = "budget"
                break
            if ctx.room_in_document(index) <= 1:  # the last slot is the EOS's
                status = "max_tokens"
                break
            t = self.choose(logits, index, frame)
            self.sampled += 1
            n += 1
            if t == self.eos:
                status = "eos"
                break
            self._on_token(frame, index, t)
            try:
                logits = self.feed([t])
            except ContextFull:
                status = "context_full"
                break
        self._close(index, status)
        return n

    def _close(self, index: int, status: str) -> None:
        """Marks the document finished; a completed non-root document gets its EOS placed (the parent
        then sees it as it was in training); the root's EOS is added to the result only."""
        self.ctx.finish(index, status)
        d = self.ctx.docs[index]
        if status in ("eos", "max_tokens") and d.parent is not None:
            try:
                self.feed([self.eos])
            except ContextFull:
                pass

    # ------------------------------------------------------------------ results
    def document_result(self, index: int) -> GeneratedDocument:
        d = self.ctx.docs[index]
        status = d.status or ("budget" if self.sampled >= self.cfg.max_new_tokens else "context_full")
        toks = list(d.tokens)
        if status in ("eos", "max_tokens", "corpus") and (not toks or toks[-1] != self.eos):
            toks.append(self.eos)
        text = self.tokenizer.decode([t for t in toks if t != self.eos])
        parent = None if d.parent is None else self.ctx.docs[d.parent].title
        return GeneratedDocument(title=d.title, tokens=np.asarray(toks, dtype=np.int64), text=text, source=d.source,
                                 is_root=d.parent is None, parent_title=parent, depth=d.depth,
                                 links=[self.ctx.docs[j].title for j in d.links], status=status,
                                 evicted=d.archived and not d.active, corpus_filename=d.corpus_filename)

    def result(self, seconds: float) -> GenerationResult:
        docs = [self.document_result(i) for i in range(len(self.ctx.docs))]
        stats = {"sampled_tokens": self.sampled, "model_tokens": self.fed, "seconds": seconds,
                 "tokens_per_second": self.sampled / seconds if seconds > 0 else None,
                 "evictions": self.ctx.n_evictions, "documents": len(docs)}
        return GenerationResult.from_documents(docs, self.cfg.to_dict(), stats)

    def run(self, prompt_ids: Sequence[int]) -> GenerationResult:
        """Generates the root document from ``prompt_ids`` (no links followed)."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            root = self._register_root(prompt_ids)
            self.generate(root, self.prefill(root))
        return self.result(time.perf_counter() - t0)

    def _register_root(self, prompt_ids: Sequence[int]) -> int:
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("prompt: must encode to at least one token")
        if len(ids) >= self.cfg.max_tokens_per_document:
            raise ValueError(f"prompt: {len(ids)} tokens leave no room in max_tokens_per_document="
                             f"{self.cfg.max_tokens_per_document}")
        return self.ctx.add_document(self.cfg.root_title, None, "generated", 0, ids)


@dataclass
class _Frame:
    """Per-document generation state: its link detector and trie state (None outside a target)."""

    detector: object
    trie_state: int | None = None


class LinkedDocumentGenerator(SingleDocumentGenerator):
    """Follows links while generating (see module docstring). ``corpus`` is a
    :class:`PretokenizedCorpus` or None (every followed link is then generated)."""

    def __init__(self, model, tokenizer, config: GenerationConfig, corpus: PretokenizedCorpus | None = None,
                 logits_processors: Sequence[LogitsProcessor] = (), compile: bool | str = False):
        super().__init__(model, tokenizer, config, logits_processors, compile)
        from craft_kernels import LinkDetector

        self.corpus = corpus
        self._make_detector = lambda: LinkDetector(tokenizer.token_bytes)
        self._detectors: list = []  # one per depth, reused (a document's children run at depth + 1)
        self._aliases: dict[str, int] = {}  # link target as written -> document index
        self.trie = None
        if config.constrain_links_to_corpus:
            if corpus is None:
                raise ValueError("constrain_links_to_corpus: needs a corpus")
            self.trie = corpus.title_trie(tokenizer)

    def detector(self, depth: int):
        while len(self._detectors) <= depth:
            self._detectors.append(self._make_detector())
        d = self._detectors[depth]
        d.reset()
        return d

    # ------------------------------------------------------------------ hooks
    def _new_frame(self, index: int) -> _Frame:
        return _Frame(self.detector(self.ctx.docs[index].depth))

    def _constrain(self, logits: torch.Tensor, frame) -> torch.Tensor:
        if self.trie is None or frame is None or not frame.detector.inside_target:
            return logits
        if frame.trie_state is None:  # just entered ](...: start from the root, or follow bytes already written
            state = self.trie.root_states(1)
            written = frame.detector.current_target_bytes
            if written:
                for t in self.tokenizer.encode(written.decode("utf-8", errors="replace")):
                    state = self.trie.advance(state, [t])
            frame.trie_state = int(state[0])
        if frame.trie_state < 0:  # the target already left every title: leave it unconstrained
            return logits
        row = logits[None].clone()
        self.trie.apply_to_logits(row, [frame.trie_state], on_empty="keep")
        return row[0]

    def _on_token(self, frame: _Frame, index: int, token: int) -> None:
        if frame.trie_state is not None and frame.trie_state >= 0:
            frame.trie_state = int(self.trie.advance([frame.trie_state], [token])[0])
        link = frame.detector.push(token)
        if not frame.detector.inside_target:
            frame.trie_state = None
        if link is not None:
            self.handle_link(index, link.target, link.is_image)

    # ------------------------------------------------------------------ links
    def _follows(self, index: int, target: str, is_image: bool) -> bool:
        d, cfg = self.ctx.docs[index], self.cfg
        if is_image or not target or target == d.title:
            return False
        if d.depth + 1 > cfg.max_link_depth:
            return False
        return d.parent is None or cfg.allow_recursive_links

    def _existing(self, target: str) -> int | None:
        i = self._aliases.get(target)
        if i is None:
            i = self.ctx.find(target)
        if i is None and self.corpus is not None:
            canon = self.corpus.resolve_title(target)
            if canon is not None:
                i = self.ctx.find(canon)
        return i

    def handle_link(self, index: int, target: str, is_image: bool = False, defer: bool = False) -> int | None:
        """Resolves a completed link of document ``index`` (the current one): an existing document is
        reused (and placed again if it was evicted), a corpus document is placed, else a new document
        is generated now (or, with ``defer``, registered and returned for the caller to generate).
        Afterwards ``index`` is current again. Returns the linked document's index or None."""
        target = target.strip()
        if not self._follows(index, target, is_image):
            return None
        ctx = self.ctx
        j = self._existing(target)
        if j is not None:
            self._aliases[target] = j
            ctx.link(index, j)
            dj = ctx.docs[j]
            if dj.archived and not dj.active and ctx.can_fit(len(dj.tokens), protect=[j]):
                self.prefill(j)
                self._return_to(index)
            return j
        if len(ctx.docs) - 1 >= self.cfg.max_auxiliary_documents:
            return None
        tokens = self.corpus.get_document(target) if self.corpus is not None else None
        if tokens is not None:
            limit = self.cfg.max_tokens_per_document - 1
            toks = [int(t) for t in tokens[:limit]] + [self.eos]
            if not ctx.can_fit(len(toks)):
                return None
            j = ctx.add_document(self.corpus.resolve_title(target), index, "corpus", tokens=toks)
            ctx.docs[j].corpus_filename = self.corpus.document_filename(target)
            self._aliases[target] = j
            ctx.link(index, j)
            self.prefill(j)
            ctx.finish(j, "corpus")
            self._return_to(index)
            return j
        if self.corpus is not None and not self.cfg.allow_corpus_fallback:
            return None
        header = self.tokenizer.encode(f"# {target}\n")[: self.cfg.max_tokens_per_document - 2]
        if not ctx.can_fit(len(header) + 1):
            return None
        j = ctx.add_document(target, index, "generated", tokens=header)
        self._aliases[target] = j
        ctx.link(index, j)
        if defer:
            return j
        self._generate_child(j)
        self._return_to(index)
        return j

    def _generate_child(self, j: int) -> None:
        try:
            logits = self.prefill(j)
        except ContextFull:
            self.ctx.finish(j, "context_full")
            return
        self.generate(j, logits)

    def _return_to(self, index: int) -> None:
        if self.ctx.docs[index].active:
            self.ctx.switch_to(index)
        else:  # the root while prompt links are resolved: not placed yet
            self.ctx.current = index

    # ------------------------------------------------------------------ the run
    def run(self, prompt_ids: Sequence[int]) -> GenerationResult:
        """Resolves the prompt's links (corpus documents placed, missing ones generated, at depth 1),
        places the prompt (which sees them), then generates the root, following links as they come."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            root = self._register_root(prompt_ids)
            queued = []
            if self.cfg.process_prompt_links:
                queued = PromptLinkProcessor(self).process(root)
            for j in queued:
                self._generate_child(j)
                self._return_to(root)
            try:
                logits = self.prefill(root)
            except ContextFull:
                raise ValueError(f"prompt: {len(self.ctx.docs[root].tokens)} tokens do not fit in the context "
                                 f"beside the documents its links brought in") from None
            self.generate(root, logits)
        return self.result(time.perf_counter() - t0)


class PromptLinkProcessor:
    """Links already in the prompt: corpus documents are placed (before the prompt, so every prompt
    token sees them), existing ones reused, missing ones registered and returned for generation.
    Depth counts from the prompt: the prompt's links are depth 1."""

    def __init__(self, generator: LinkedDocumentGenerator):
        self.gen = generator

    def process(self, root: int) -> list[int]:
        """Returns the indices of the documents queued for generation, in link order."""
        gen = self.gen
        links = gen.detector(0).scan(gen.ctx.docs[root].tokens)
        gen.ctx.current = root
        queued = []
        for link in links:
            j = gen.handle_link(root, link.target, link.is_image, defer=True)
            if j is not None and gen.ctx.docs[j].source == "generated" and j != root and j not in queued \
                    and gen.ctx.docs[j].status is None and not gen.ctx.docs[j].active:
                queued.append(j)
        return queued


def generate_linked(model, prompt: str | Sequence[int], corpus: PretokenizedCorpus | str | None = None, *,
                    tokenizer=None, logits_processors: Sequence[LogitsProcessor] = (), config: GenerationConfig | None = None,
                    generator: torch.Generator | None = None, compile: bool = False, **options) -> GenerationResult:
    """Generates a root document from ``prompt`` (text, or token ids) and the documents it links to.

    ``corpus``: a :class:`PretokenizedCorpus`, a corpus directory, or None. ``tokenizer`` defaults to
    ``model.tokenizer``, then the corpus's. ``options`` are :class:`GenerationConfig` fields (or pass
    ``config``; the old names ``eos_token_id`` and ``max_context_length`` still work, with a
    DeprecationWarning); ``generator`` a torch.Generator for
    sampling (else ``seed``). ``compile`` (True or a ``torch.compile`` mode) compiles the one-token
    decode step; the one-off compilation takes seconds, so it pays off for long runs
    (benchmarks/test_linked_generation.py measures both).
    Returns a :class:`GenerationResult`.
    """
    if config is None:
        config = GenerationConfig.from_kwargs(**options)
    elif options:
        config = config.replace(**options)
    own_corpus = corpus is not None and not isinstance(corpus, PretokenizedCorpus)
    if own_corpus:
        corpus = PretokenizedCorpus(corpus)
    try:
        tok = tokenizer or getattr(model, "tokenizer", None) or (corpus.tokenizer if corpus is not None else None)
        if tok is None:
            raise ValueError("tokenizer: the model has none attached; pass tokenizer=")
        if corpus is not None and corpus.meta.get("tokenizer") != tok.to_dict():
            raise ValueError(f"corpus: pretokenized with {corpus.meta.get('tokenizer')}, but the model's tokenizer is "
                             f"{tok.to_dict()}")
        if isinstance(prompt, str):
            ids = tok.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        cfg = resolve_config(model, tok, config)
        was_training, threads = model.training, torch.get_num_threads()
        model.eval()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        try:
            gen = LinkedDocumentGenerator(model, tok, cfg, corpus, logits_processors, compile)
            if generator is not None:
                gen.generator = generator
            return gen.run(ids)
        finally:
            model.train(was_training)
            torch.set_num_threads(threads)
    finally:
        if own_corpus:
            corpus.close()
