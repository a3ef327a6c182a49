"""GenerationConfig validation, GenerationResult (order, lookup, save) and DocumentCorpus over a
pretokenized directory in the corpus format."""
import json

import numpy as np
import pytest

from craft.data.titles import create_filename, title_matches_filename
from craft.generation.linked import DocumentCorpus, GeneratedDocument, GenerationConfig, GenerationResult
from craft.generation.linked.result import topological_order
from craft.tokenizers import get_tokenizer


def write_corpus(path, docs, tokenizer, shard_tokens=64):
    """A pretokenized corpus directory written by the real corpus pretokenizer
    (``craft.data.pretokenize``) from ``docs``: (title, markdown); small shards so documents
    spread over several."""
    from craft.data.corpus import Document
    from craft.data.pretokenize import pretokenize

    return pretokenize([Document(title=t, text=x) for t, x in docs], path, tokenizer=tokenizer, shard_tokens=shard_tokens)


DOCS = [("Python", "# Python\n\nA language. See [os](os).\n"),
        ("os", "# os\n\nOperating system interfaces.\n"),
        ("os.path", "# os.path\n\nPathname manipulations, part of [os](os).\n"),
        ("New Topic", "# New Topic\n\nSomething new.\n"),
        ("new topic", "# new topic\n\nThe lowercase one.\n")]


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer("gpt2")


@pytest.fixture
def corpus_dir(tmp_path, gpt2):
    return write_corpus(tmp_path / "corpus", DOCS, gpt2)


# ---------------------------------------------------------------- config
def test_config_defaults_and_round_trip():
    c = GenerationConfig()
    assert c.eviction_policy == "drop_oldest" and c.mask_kind is None  # resolved from the checkpoint
    assert GenerationConfig(**c.to_dict()) == c
    assert c.replace(max_link_depth=3).max_link_depth == 3


@pytest.mark.parametrize("kwargs, err, name", [
    ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": 1.5}, TypeError, "max_new_tokens"),
    ({"temperature": -0.1}, ValueError, "temperature"),
    ({"temperature": float("nan")}, ValueError, "temperature"),
    ({"top_k": 0}, ValueError, "top_k"),
    ({"top_p": 0.0}, ValueError, "top_p"),
    ({"top_p": 1.5}, ValueError, "top_p"),
    ({"max_tokens_per_document": 1}, ValueError, "max_tokens_per_document"),
    ({"max_tokens_per_document": 64, "max_seq_len": 32}, ValueError, "max_tokens_per_document"),
    ({"max_link_depth": -1}, ValueError, "max_link_depth"),
    ({"max_auxiliary_documents": True}, TypeError, "max_auxiliary_documents"),
    ({"eviction_policy": "lru"}, ValueError, "eviction_policy"),
    ({"mask_kind": "full"}, ValueError, "mask_kind"),
    ({"allow_corpus_fallback": 1}, TypeError, "allow_corpus_fallback"),
    ({"root_title": " "}, ValueError, "root_title"),
])
def test_config_rejects(kwargs, err, name):
    with pytest.raises(err, match=name):
        GenerationConfig(**kwargs)


def test_config_from_kwargs_names_unknown_options():
    with pytest.raises(TypeError, match="max_depth"):
        GenerationConfig.from_kwargs(max_depth=2)
    assert GenerationConfig.from_kwargs(max_link_depth=2).max_link_depth == 2


def test_config_old_option_names_are_deprecated_aliases():
    """eos_token_id / max_context_length were public: they map to eos_id / max_seq_len, with a warning."""
    with pytest.warns(DeprecationWarning, match="eos_id"):
        c = GenerationConfig.from_kwargs(eos_token_id=3, max_context_length=64)
    assert (c.eos_id, c.max_seq_len) == (3, 64)
    with pytest.raises(TypeError, match="pass eos_id only"):
        GenerationConfig.from_kwargs(eos_id=3, eos_token_id=3)


# ---------------------------------------------------------------- result
def _doc(title, parent=None, links=(), source="generated", text=None):
    return GeneratedDocument(title=title, text=text or f"# {title}\n", source=source, is_root=parent is None,
                             parent_title=parent, links=list(links), status="corpus" if source == "corpus" else "eos")


def test_topological_order_dependencies_first_ties_by_creation():
    docs = [_doc("R", links=["A", "B"]), _doc("A", "R", links=["C"]), _doc("B", "R"), _doc("C", "A")]
    assert [d.title for d in topological_order(docs)] == ["B", "C", "A", "R"]
    res = GenerationResult.from_documents(docs, {"max_link_depth": 2})
    assert res.root_document.title == "R"
    assert [d.title for d in res.auxiliary_documents] == ["B", "C", "A"]
    assert [d.title for d in res.get_all_documents()] == ["R", "B", "C", "A"]
    # a cycle (A <-> B) is broken at the earliest-created document
    cyc = [_doc("R", links=["A"]), _doc("A", "R", links=["B"]), _doc("B", "A", links=["A"])]
    assert [d.title for d in topological_order(cyc)] == ["A", "R", "B"]


def test_get_document_by_title_original_filename_or_normalized():
    res = GenerationResult.from_documents([_doc("R", links=["New Topic"]), _doc("New Topic", "R")])
    d = res.get_document_by_title("New Topic")
    assert d is res.auxiliary_documents[0]
    assert res.get_document_by_title(create_filename("New Topic")) is d
    assert res.get_document_by_title(create_filename("New Topic") + ".md") is d
    assert res.get_document_by_title("new_topic") is d
    assert res.get_document_by_title("Old Topic") is None


def test_result_validation():
    with pytest.raises(ValueError, match="root"):
        GenerationResult.from_documents([_doc("A", "R")])
    with pytest.raises(ValueError, match="unique"):
        GenerationResult.from_documents([_doc("R"), _doc("A", "R"), _doc("A", "R")])
    with pytest.raises(ValueError, match="tokens, text"):
        GeneratedDocument(title="x", is_root=True)
    with pytest.raises(ValueError, match="source"):
        GeneratedDocument(title="x", text="", source="web", is_root=True)


def test_save_writes_markdown_and_manifest(tmp_path):
    docs = [_doc("Root Document", links=["os", "New Topic"], text="Prompt [os](os) and [n](New Topic)."),
            _doc("os", "Root Document", source="corpus", text="# os\n\nOperating system."),
            _doc("New Topic", "Root Document", text="# New Topic\n\nfresh")]
    res = GenerationResult.from_documents(docs, {"max_link_depth": 1}, {"tokens": 3})
    manifest = json.loads(res.save(tmp_path / "out").read_text())
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted([create_filename(d.title) + ".md" for d in docs] + ["manifest.json"])
    for d in docs:
        assert (tmp_path / "out" / (create_filename(d.title) + ".md")).read_text() == d.text
        assert title_matches_filename(d.title, create_filename(d.title) + ".md")
    assert manifest["root"] == "Root Document"
    assert manifest["links"] == [{"src": "Root Document", "dst": "os"}, {"src": "Root Document", "dst": "New Topic"}]
    assert [m["title"] for m in manifest["documents"]] == ["Root Document", "os", "New Topic"]
    assert manifest["documents"][1]["source"] == "corpus"
    assert manifest["generation_config"] == {"max_link_depth": 1} and manifest["stats"] == {"tokens": 3}
    assert "- os [corpus, corpus]" in res.link_tree()


# ---------------------------------------------------------------- corpus
def test_corpus_lookups(corpus_dir, gpt2):
    with DocumentCorpus(corpus_dir) as c:
        assert len(c) == 5 and c.titles() == [t for t, _ in DOCS]
        for title, text in DOCS:  # documents straddle shards; every one comes back exactly
            got = c.get_document(title)
            assert got.dtype == np.int64 and gpt2.decode(got.tolist()) == text
        assert c.has_document("os.path") and "os.path" in c and not c.has_document("sys")
        assert c.get_document("sys") is None
        # normalized match: "OS" -> "os"; exact wins over normalized siblings
        assert c.resolve_title("OS") == "os"
        assert c.get_title_variants("new topic") == ["new topic", "New Topic"]
        assert c.get_title_variants("NEW TOPIC") == ["New Topic", "new topic"]
        assert c.get_title_variants("sys") == []
        assert title_matches_filename("Python", c.document_filename("Python"))
        assert c.tokenizer.to_dict() == gpt2.to_dict() and c.eos_id == gpt2.eos_id
        trie = c.title_trie(gpt2)
        assert trie.lookup(gpt2.encode("os.path)")).tolist() == [2]
        assert trie.lookup(gpt2.encode("os.pat)")).tolist() == []
    with pytest.raises(ValueError, match="closed"):
        c.get_document("os")


def test_corpus_errors(tmp_path, gpt2):
    d = write_corpus(tmp_path / "c", DOCS[:2], gpt2)
    with DocumentCorpus(d) as c:
        assert gpt2.decode(c.get_document("os").tolist()) == DOCS[1][1]
    with pytest.raises(FileNotFoundError, match="path"):
        DocumentCorpus(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        DocumentCorpus(tmp_path / "empty")
    meta = json.loads((d / "meta.json").read_text())
    meta["format"] = 2
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format"):
        DocumentCorpus(d)
    with DocumentCorpus(write_corpus(tmp_path / "c16", DOCS[:1], gpt2)) as c, pytest.raises(TypeError, match="title"):
        c.get_document(3)
