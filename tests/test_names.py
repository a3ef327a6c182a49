"""One name per concept across the library: capacity ``max_seq_len``, MLP width ``hidden_dim``,
end-of-sequence id ``eos_id``, masks take ``(doc_ids, kind, links)``. Old public names still work
for now, each with a DeprecationWarning."""
import dataclasses
import importlib
import inspect
import pkgutil
import warnings

import pytest
import torch

import craft
import craft_kernels as ck
from craft.generation.linked.config import GenerationConfig
from craft.generation.linked.context import DocumentContext
from craft.models import PRESETS, LanguageModel, ModelConfig

DEPRECATED = {"max_len", "max_context_length", "context_length", "ff_dim", "eos_token_id"}
# the keyword-only aliases that keep an old call working
ALIASES = {("craft_kernels.doc_masks.DocMaskState", "max_len")}


def _public_callables():
    for pkg in (craft, ck):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            mod = importlib.import_module(info.name)
            for name, obj in vars(mod).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                    continue
                if inspect.isclass(obj):
                    yield f"{mod.__name__}.{name}", obj
                    for meth_name, meth in vars(obj).items():
                        if inspect.isfunction(meth) and not meth_name.startswith("_"):
                            yield f"{mod.__name__}.{name}.{meth_name}", meth
                elif inspect.isfunction(obj):
                    yield f"{mod.__name__}.{name}", obj


def test_no_public_signature_or_field_uses_a_deprecated_name():
    found = []
    for qual, obj in _public_callables():
        if dataclasses.is_dataclass(obj):
            names = [f.name for f in dataclasses.fields(obj)]
        else:
            try:
                names = list(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                continue
        found += [(qual, n) for n in names if n in DEPRECATED and (qual, n) not in ALIASES]
    assert not found, f"rename to max_seq_len / hidden_dim / eos_id: {found}"


def test_model_config_names_and_deprecated_aliases():
    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=48, max_seq_len=40)
    assert (cfg.hidden_dim, cfg.max_seq_len) == (48, 40)
    assert set(PRESETS["tiny"]) >= {"hidden_dim", "max_seq_len"}
    with (pytest.warns(DeprecationWarning, match="ff_dim is deprecated, use hidden_dim"),
          pytest.warns(DeprecationWarning, match="context_length is deprecated, use max_seq_len")):
        old = ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, ff_dim=48, context_length=40)
    assert old == cfg
    with pytest.warns(DeprecationWarning, match="context_length is deprecated"):
        assert cfg.context_length == 40
    with pytest.raises(TypeError, match="pass hidden_dim only"):
        ModelConfig(hidden_dim=48, ff_dim=48)
    # a checkpoint written before the rename loads as it is, without warnings
    d = {("ff_dim" if k == "hidden_dim" else "context_length" if k == "max_seq_len" else k): v
         for k, v in cfg.to_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ModelConfig.from_dict(d) == cfg
        LanguageModel(cfg)


def test_doc_mask_state_max_seq_len():
    st = ck.DocMaskState(max_seq_len=16, max_docs=2)
    assert st.max_seq_len == 16
    with pytest.warns(DeprecationWarning, match="max_len is deprecated"):
        old = ck.DocMaskState(max_len=16, max_docs=2)
    assert old.max_seq_len == 16
    with pytest.warns(DeprecationWarning):
        assert old.max_len == 16
    with pytest.raises(TypeError, match="max_seq_len and max_docs are required"):
        ck.DocMaskState(max_docs=2)


def test_mask_functions_share_one_argument_order():
    ids = ck.doc_ids_from_spans([[(0, 5, 0), (5, 11, 1)]], 11)
    links = torch.tensor([[False, False], [True, False]])
    for f in (ck.doc_mask_mod, ck.doc_dense_mask, ck.doc_block_mask):
        assert list(inspect.signature(f).parameters)[:3] == ["doc_ids", "kind", "links"]
    mm = ck.doc_mask_mod(ids, "cross_doc_link", links)
    q, k = torch.meshgrid(torch.arange(11), torch.arange(11), indexing="ij")
    dense = ck.doc_dense_mask(ids, "cross_doc_link", links)[0, 0]
    assert torch.equal(mm(torch.zeros((), dtype=torch.long), 0, q, k), dense)
    with pytest.warns(DeprecationWarning, match="doc_mask_mod\\(doc_ids, kind, links\\)"):
        old = ck.doc_mask_mod("cross_doc_link", ids, links)
    assert torch.equal(old(torch.zeros((), dtype=torch.long), 0, q, k), dense)


def test_generation_config_and_context_names():
    with (pytest.warns(DeprecationWarning, match="eos_token_id is deprecated, use eos_id"),
          pytest.warns(DeprecationWarning, match="max_context_length is deprecated, use max_seq_len")):
        old = GenerationConfig(max_context_length=64, eos_token_id=2)
    assert (old.max_seq_len, old.eos_id) == (64, 2)
    with pytest.warns(DeprecationWarning):
        assert GenerationConfig.from_kwargs(max_context_length=64).max_seq_len == 64
    with pytest.warns(DeprecationWarning):
        assert old.replace(eos_token_id=3).eos_id == 3
    with pytest.warns(DeprecationWarning, match="max_context_length is deprecated"):
        ctx = DocumentContext(max_context_length=32, max_documents=2)
    assert ctx.max_seq_len == 32
