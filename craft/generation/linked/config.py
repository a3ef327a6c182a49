"""``GenerationConfig``: every knob of linked-document generation, validated on construction."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from craft._deprecation import rename_kwargs, renamed
from craft_kernels import check_choice, check_int
from craft.generation.sampling import check_sampling_args

EVICTION_POLICIES = ("drop_oldest", "stop_new")
GENERATION_MASK_KINDS = ("cross_doc_link", "doc_causal")


def _int(name, v, lo, allow_none=False):
    if v is None and allow_none:
        return
    check_int(v, name, lo)


def _bool(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected True or False, got {v!r}")


_RENAMED = {"max_context_length": "max_seq_len", "eos_token_id": "eos_id"}  # old public name -> name


@renamed(**_RENAMED)
@dataclass
class GenerationConfig:
    """How a linked generation run behaves.

    Budgets: ``max_new_tokens`` counts tokens sampled over the whole run (all documents);
    ``max_tokens_per_document`` bounds one document in context (header/prompt + generated + EOS;
    ``None`` = the checkpoint's training ``seq_len``, else the model's context length);
    ``max_seq_len`` is the number of KV-cache slots shared by every active document
    (``None`` = the model's context length). ``max_auxiliary_documents`` counts corpus and generated
    documents besides the root; ``max_link_depth`` is how many link hops from the root are followed
    (0 = none); ``allow_recursive_links=False`` follows only the root's links.

    ``eviction_policy``: ``drop_oldest`` evicts the oldest document that is neither being generated
    nor an ancestor of it when the cache is full; ``stop_new`` never evicts: documents that do not
    fit are not added and a document stops when the cache is full.
    ``mask_kind``: ``cross_doc_link`` (a document sees the documents it links to), ``doc_causal``, or
    None: what the checkpoint was trained with (``cross_doc_link`` after linked packing, else
    ``doc_causal``; see :func:`~craft.generation.linked.generator.resolve_config`).
    ``constrain_links_to_corpus``: while inside ``](...)``, only tokens continuing a corpus title (and
    its closing parenthesis) may be sampled. ``temperature=0`` is greedy; ``seed`` seeds sampling.
    ``num_threads``: torch intra-op threads during the run (restored after); batch-1 decoding of a
    small model is fastest on 1 thread, and several threads spin badly on a shared CPU. ``None``
    leaves torch's setting.
    """

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_tokens_per_document: int | None = None
    max_seq_len: int | None = None
    max_auxiliary_documents: int = 5
    max_link_depth: int = 1
    allow_corpus_fallback: bool = True
    eviction_policy: str = "drop_oldest"
    process_prompt_links: bool = True
    allow_recursive_links: bool = True
    eos_id: int | None = None
    device: str | None = None
    mask_kind: str | None = None
    constrain_links_to_corpus: bool = False
    root_title: str = "Root Document"
    seed: int | None = None
    num_threads: int | None = None

    def __post_init__(self):
        _int("max_new_tokens", self.max_new_tokens, 0)
        check_sampling_args(self.temperature, self.top_k, self.top_p)
        self.temperature = float(self.temperature)
        if self.top_p is not None:
            self.top_p = float(self.top_p)
        _int("max_tokens_per_document", self.max_tokens_per_document, 2, allow_none=True)
        _int("max_seq_len", self.max_seq_len, 2, allow_none=True)
        if (self.max_tokens_per_document is not None and self.max_seq_len is not None
                and self.max_tokens_per_document > self.max_seq_len):
            raise ValueError(f"max_tokens_per_document: {self.max_tokens_per_document} exceeds max_seq_len="
                             f"{self.max_seq_len}; a document must fit in the context")
        _int("max_auxiliary_documents", self.max_auxiliary_documents, 0)
        _int("max_link_depth", self.max_link_depth, 0)
        for name in ("allow_corpus_fallback", "process_prompt_links", "allow_recursive_links",
                     "constrain_links_to_corpus"):
            _bool(name, getattr(self, name))
        check_choice(self.eviction_policy, "eviction_policy", EVICTION_POLICIES)
        if self.mask_kind is not None:
            check_choice(self.mask_kind, "mask_kind", GENERATION_MASK_KINDS)
        _int("eos_id", self.eos_id, 0, allow_none=True)
        if self.device is not None and not isinstance(self.device, str):
            self.device = str(self.device)
        if not isinstance(self.root_title, str) or not self.root_title.strip():
            raise ValueError(f"root_title: expected a non-empty string, got {self.root_title!r}")
        _int("seed", self.seed, 0, allow_none=True)
        _int("num_threads", self.num_threads, 1, allow_none=True)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "GenerationConfig":
        """Like ``GenerationConfig(**kwargs)`` but names unknown options and lists the valid ones
        (deprecated names are accepted, with a DeprecationWarning)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = rename_kwargs(cls.__name__, kwargs, _RENAMED)
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; valid options: {sorted(names)}")
        return cls(**kwargs)

    def replace(self, **changes) -> "GenerationConfig":
        return dataclasses.replace(self, **rename_kwargs(type(self).__name__, changes, _RENAMED))

    def to_dict(self) -> dict:
        return asdict(self)
