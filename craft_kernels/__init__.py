"""craft_kernels: kernels for small language models (Triton on CUDA, fastest PyTorch path on CPU, C++ native ops).

The public API, by group (callers import these names from ``craft_kernels``, never from its
submodules):

- backend: ``backend_info()`` / ``format_backend_info()`` (what this machine offers and which path
  each op takes), ``bf16_is_fast(device)`` (whether bf16 autocast pays here), ``use_native(impl)``
  (a context manager that runs native ops and the CPU span-attention kernel with ``"cpp"`` or
  ``"python"``, overriding ``CRAFT_NATIVE`` inside the block) and ``native_impl()`` (the one in use).
- validation: ``check_int(x, name, minimum, maximum)``, ``check_float(...)`` and ``check_choice(x, name, choices)``, the one
  argument check of the library (messages name the argument and the fix); ``craft`` uses them too.
- kernels: ``swiglu``, ``swiglu_packed``, ``SwiGLUMLP``, ``act_accumulate`` / ``ACTOutput``.
- memory: ``retain_freed_memory(enable=True)``, an opt-in (never applied at import) that keeps freed
  large blocks in the C heap so that per-step tensors stop page-faulting (glibc; see its module),
  and ``freed_memory_retained()`` (whether it is in effect).
- document attention: ``doc_attention``, the masks ``doc_mask_mod``, ``doc_dense_mask``,
  ``doc_block_mask`` (all ``(doc_ids, kind, links)``), ``MASK_KINDS``, ``DocMaskState``, and the id
  helpers ``doc_ids_from_spans``, ``doc_ids_from_cu_seqlens``, ``links_from_edges``.
- native ops (C++ extension with pure-Python twins): ``pad_units``, ``greedy_join``, ``join_pad``,
  ``flatten_level``, ``build_dvt``, ``LinkDetector``, ``BatchLinkDetector``, ``DetectedLink``, ``Trie``.
  They are imported lazily, so ``import craft_kernels`` and ``backend_info()`` work before the
  extension is built; importing one without the extension raises an ImportError that says how to
  build it.
"""
from craft_kernels._backend import backend_info, bf16_is_fast, format_backend_info
from craft_kernels._validate import check_choice, check_float, check_int
from craft_kernels.native._dispatch import impl as native_impl, use as use_native
from craft_kernels.act import ACTOutput, act_accumulate
from craft_kernels.attention import doc_attention
from craft_kernels.doc_masks import (
    MASK_KINDS, DocMaskState, doc_block_mask, doc_dense_mask, doc_ids_from_cu_seqlens, doc_ids_from_spans,
    doc_mask_mod, links_from_edges,
)
from craft_kernels.heap import freed_memory_retained, retain_freed_memory
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

    obj = getattr(importlib.import_module(f"craft_kernels.native.{mod}"), name)
    globals()[name] = obj  # later lookups skip this hook (it costs microseconds per call)
    return obj


def __dir__():
    return sorted(list(globals()) + list(_NATIVE))


__all__ = ["backend_info", "format_backend_info", "bf16_is_fast", "use_native", "native_impl", "check_int", "check_float", "check_choice", "act_accumulate", "ACTOutput", "doc_attention", "MASK_KINDS", "DocMaskState", "doc_block_mask", "doc_dense_mask",
           "doc_ids_from_cu_seqlens", "doc_ids_from_spans", "doc_mask_mod", "links_from_edges", "swiglu", "swiglu_packed", "SwiGLUMLP",
           "retain_freed_memory", "freed_memory_retained", *_NATIVE]
