"""craft_kernels: kernels for small language models (Triton on CUDA, fastest PyTorch path on CPU, C++ native ops).

Native ops (C++ extension with pure-Python twins, CRAFT_NATIVE=python|cpp) are imported lazily, so
``import craft_kernels`` and ``backend_info()`` work even before the extension is built; importing a
native op without the extension raises an ImportError that says how to build it.
"""
from craft_kernels._backend import backend_info
from craft_kernels.act import ACTOutput, act_accumulate
from craft_kernels.attention import doc_attention
from craft_kernels.doc_masks import (
    MASK_KINDS, DocMaskState, doc_block_mask, doc_dense_mask, doc_ids_from_cu_seqlens, doc_ids_from_spans,
    doc_mask_mod, links_from_edges,
)
from craft_kernels.swiglu import SwiGLUMLP, swiglu, swiglu_packed

__version__ = "0.1.0"

# name -> module under craft_kernels.native that defines it
_NATIVE = {
    **dict.fromkeys(["pad_units", "greedy_join", "join_pad", "flatten_level", "build_dvt"], "dataprep"),
    **dict.fromkeys(["LinkDetector", "BatchLinkDetector", "DetectedLink"], "link_detector"),
    "Trie": "trie",
}


def __getattr__(name):
    mod = _NATIVE.get(name)
    if mod is None:
        raise AttributeError(f"module 'craft_kernels' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"craft_kernels.native.{mod}"), name)


def __dir__():
    return sorted(list(globals()) + list(_NATIVE))


__all__ = ["backend_info", "act_accumulate", "ACTOutput", "doc_attention", "MASK_KINDS", "DocMaskState", "doc_block_mask", "doc_dense_mask",
           "doc_ids_from_cu_seqlens", "doc_ids_from_spans", "doc_mask_mod", "links_from_edges", "swiglu", "swiglu_packed", "SwiGLUMLP", *_NATIVE]
