"""Linked generation end to end with a real LanguageModel (random weights), the real GPT-2
tokenizer, the real LinkDetector and a real pretokenized corpus directory.

Links are never injected: a logits processor biases the model toward a scripted text per document
(chosen by the document's first tokens: the prompt, or the ``# Title`` header of a linked
document); the links in that text are found by the LinkDetector from the sampled tokens."""
import json

import pytest
import torch

from craft.data.titles import create_filename, title_matches_filename
from craft.generation.linked import DocumentCorpus, GenerationConfig, LinkedDocumentGenerator, generate_linked, resolve_config
from craft.generation.linked.naive import NaiveLinkedGenerator
from craft.models import LanguageModel, ModelConfig
from craft.tokenizers import get_tokenizer
from test_linked_units import DOCS, write_corpus

PROMPT = "Intro:"


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = LanguageModel(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, n_layers=2, context_length=256))
    m.tokenizer = tok
    return m.eval()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, tok):
    return write_corpus(tmp_path_factory.mktemp("corpus"), DOCS, tok)


def scripted(tok, scripts: dict, eos=True):
    """A processor forcing, for the document whose tokens start with ``encode(key)``, the tokens of
    ``scripts[key]`` and then EOS (or nothing more forced when ``eos`` is False)."""
    table = [(tok.encode(k), tok.encode(v)) for k, v in scripts.items()]

    def fn(logits, ids):
        h = ids[0].tolist()
        for prefix, body in sorted(table, key=lambda pb: -len(pb[0])):
            if h[: len(prefix)] == prefix:
                k = len(h) - len(prefix)
                target = body[k] if k < len(body) else (tok.eos_id if eos else None)
                if target is not None:
                    logits = logits.clone()
                    logits[0, target] += 1e4
                return logits
        return logits

    return fn


def run(model, tok, scripts, corpus=None, **kw):
    kw.setdefault("max_new_tokens", 400)
    kw.setdefault("temperature", 0.0)
    kw.setdefault("num_threads", 1)
    return generate_linked(model, PROMPT, corpus=corpus, logits_processors=[scripted(tok, scripts)], **kw)


def test_simple_generation_and_files(model, tok, tmp_path):
    res = run(model, tok, {PROMPT: " plain text without links."})
    root = res.root_document
    assert res.auxiliary_documents == [] and root.is_root and root.status == "eos"
    assert root.text == PROMPT + " plain text without links."
    assert root.tokens[-1] == tok.eos_id and root.tokens.tolist()[:-1] == tok.encode(root.text)
    assert res.stats["sampled_tokens"] == len(tok.encode(" plain text without links.")) + 1
    manifest = json.loads(res.save(tmp_path).read_text())
    assert (tmp_path / f"{create_filename('Root Document')}.md").read_text() == root.text
    assert manifest["documents"][0]["status"] == "eos" and manifest["links"] == []


def test_model_generate_text_prompt_is_deprecated_and_forwards(model, tok):
    """The old spelling model.generate(prompt=text) warns and returns what generate_linked returns."""
    with pytest.warns(DeprecationWarning, match="generate_linked"):
        res = model.generate(prompt=PROMPT, max_new_tokens=5, temperature=0.0, num_threads=1)
    assert res.root_document.status == "budget" and res.stats["sampled_tokens"] == 5
    assert len(res.root_document.tokens) == len(tok.encode(PROMPT)) + 5
    new = generate_linked(model, PROMPT, max_new_tokens=5, temperature=0.0, num_threads=1)
    assert new.root_document.tokens.tolist() == res.root_document.tokens.tolist()


def test_one_sampler_for_plain_and_linked_generation(model, tok):
    """One seed, one sampler: a linked run without links samples exactly the tokens that
    model.generate(prompt_ids) samples (same temperature, top-k, top-p and generator)."""
    ids = tok.encode(PROMPT)
    kw = dict(temperature=1.1, top_k=50, top_p=0.95)
    plain = model.generate(ids, max_new_tokens=12, generator=torch.Generator().manual_seed(7), **kw)
    linked = generate_linked(model, PROMPT, max_new_tokens=12, num_threads=1, process_prompt_links=False,
                             max_link_depth=0, generator=torch.Generator().manual_seed(7), **kw)
    got = linked.root_document.tokens.tolist()
    want = plain[0].tolist()
    if tok.eos_id in want[len(ids):]:  # the linked root stops at its EOS as well
        want = want[:want.index(tok.eos_id, len(ids)) + 1]
    assert got == want


def test_link_found_in_corpus(model, tok, corpus_dir):
    res = run(model, tok, {PROMPT: " See [the docs](os) for more."}, corpus=str(corpus_dir))
    root = res.root_document
    assert root.text == PROMPT + " See [the docs](os) for more." and root.links == ["os"]
    (os_doc,) = res.auxiliary_documents
    with DocumentCorpus(corpus_dir) as c:
        assert os_doc.tokens.tolist() == c.get_document("os").tolist() + [tok.eos_id]
    assert os_doc.source == "corpus" and os_doc.parent_title == root.title and os_doc.depth == 1
    assert title_matches_filename("os", os_doc.corpus_filename)


def test_link_generated_then_parent_resumes(model, tok, tmp_path):
    res = run(model, tok, {PROMPT: " Read [this](New Topic) now.", "# New Topic\n": "Fresh words."})
    root, (child,) = res.root_document, res.auxiliary_documents
    assert root.text == PROMPT + " Read [this](New Topic) now." and root.status == "eos"
    assert child.title == "New Topic" and child.source == "generated" and child.status == "eos"
    assert child.text == "# New Topic\nFresh words." and child.parent_title == root.title
    res.save(tmp_path)
    assert (tmp_path / f"{create_filename('New Topic')}.md").read_text() == child.text
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["links"] == [{"src": root.title, "dst": "New Topic"}]


def test_mixed_corpus_generated_reuse_and_order(model, tok, corpus_dir):
    scripts = {PROMPT: " [a](os), [b](Fresh Page), [c](OS) and [e]() end.",
               "# Fresh Page\n": "Fresh page cites [x](os.path)."}
    res = run(model, tok, scripts, corpus=corpus_dir, max_link_depth=2)
    titles = [d.title for d in res.get_all_documents()]
    # "OS" reuses the corpus document "os"; the empty target is ignored; os.path (depth 2) from the corpus
    assert sorted(titles) == sorted(["Root Document", "os", "Fresh Page", "os.path"])
    assert res.root_document.links == ["os", "Fresh Page"]
    fresh = res.get_document_by_title("Fresh Page")
    assert fresh.links == ["os.path"] and res.get_document_by_title("os.path").depth == 2
    # topological: os.path before Fresh Page (which links to it)
    assert titles.index("os.path") < titles.index("Fresh Page")


@pytest.mark.parametrize("depth", [1, 2])
def test_depth_limit(model, tok, depth):
    scripts = {PROMPT: " Go [there](Level One).", "# Level One\n": "Then [deeper](Level Two).",
               "# Level Two\n": "Bottom."}
    res = run(model, tok, scripts, max_link_depth=depth)
    titles = {d.title for d in res.get_all_documents()}
    assert ("Level Two" in titles) == (depth == 2)
    one = res.get_document_by_title("Level One")
    assert one.text == "# Level One\nThen [deeper](Level Two)."
    assert one.links == (["Level Two"] if depth == 2 else [])
    off = run(model, tok, scripts, max_link_depth=2, allow_recursive_links=False)
    assert {d.title for d in off.get_all_documents()} == {"Root Document", "Level One"}


def test_count_limit_and_corpus_fallback(model, tok, corpus_dir):
    scripts = {PROMPT: " [a](One) [b](Two) [c](Three)."}
    res = run(model, tok, scripts, max_auxiliary_documents=2)
    assert [d.title for d in res.auxiliary_documents] == ["One", "Two"]
    res = run(model, tok, {PROMPT: " [a](os) [b](Missing Page)."}, corpus=corpus_dir, allow_corpus_fallback=False)
    assert [d.title for d in res.auxiliary_documents] == ["os"]


def test_stopping_conditions(model, tok):
    res = run(model, tok, {PROMPT: " go [x](Long One) back.", "# Long One\n": " word" * 100},
              max_tokens_per_document=20)
    child = res.get_document_by_title("Long One")
    assert child.status == "max_tokens" and len(child.tokens) == 20 and child.tokens[-1] == tok.eos_id
    assert res.root_document.status == "eos"
    res = run(model, tok, {PROMPT: " go [x](Long One) back.", "# Long One\n": " word" * 100}, max_new_tokens=12)
    assert res.stats["sampled_tokens"] == 12
    assert {d.status for d in res.get_all_documents()} == {"budget"}


def test_prompt_links_resolved_before_the_prompt(model, tok, corpus_dir):
    prompt = "See [os](os) and [f](Fresh Page)."
    res = generate_linked(model, prompt, corpus=corpus_dir, temperature=0.0, num_threads=1, max_new_tokens=50,
                          logits_processors=[scripted(tok, {prompt: " Done.", "# Fresh Page\n": "Made."})])
    root = res.root_document
    assert root.text == prompt + " Done." and root.links == ["os", "Fresh Page"]
    assert res.get_document_by_title("os").source == "corpus"
    assert res.get_document_by_title("Fresh Page").text == "# Fresh Page\nMade."
    assert all(d.depth == 1 for d in res.auxiliary_documents)
    off = generate_linked(model, prompt, corpus=corpus_dir, temperature=0.0, num_threads=1, max_new_tokens=3,
                          process_prompt_links=False)
    assert off.auxiliary_documents == []


@pytest.mark.parametrize("policy", ["drop_oldest", "stop_new"])
def test_eviction_policies(model, tok, corpus_dir, policy):
    scripts = {PROMPT: " [a](Python) [b](os.path) [c](New Topic) [d](os) done."}
    res = run(model, tok, scripts, corpus=corpus_dir, max_seq_len=48, max_tokens_per_document=40,
              eviction_policy=policy)
    root, full = res.root_document, PROMPT + " [a](Python) [b](os.path) [c](New Topic) [d](os) done."
    if policy == "drop_oldest":  # older linked documents make room; the root completes
        assert root.text == full and root.status == "eos"
        assert res.stats["evictions"] > 0 and any(d.evicted for d in res.auxiliary_documents)
        assert root.links == ["Python", "os.path", "New Topic", "os"]
    else:  # nothing is evicted: documents that do not fit are not added, then the root stops when full
        assert res.stats["evictions"] == 0 and not any(d.evicted for d in res.auxiliary_documents)
        assert len(res.auxiliary_documents) < 4 and root.status == "context_full"
        assert full.startswith(root.text) and len(root.text) < len(full)
        in_context = sum(len(d.tokens) for d in res.get_all_documents())
        assert in_context <= 48


def test_constrained_link_targets_stay_in_the_corpus(model, tok, corpus_dir):
    # the script writes "[x](" and then nothing is forced: the trie alone picks the target
    res = generate_linked(model, PROMPT, corpus=corpus_dir, temperature=1.0, seed=3, num_threads=1, max_new_tokens=40,
                          constrain_links_to_corpus=True, max_tokens_per_document=64,
                          logits_processors=[scripted(tok, {PROMPT: " see [x]("}, eos=False)])
    root = res.root_document
    assert len(root.links) == 1 and res.auxiliary_documents[0].source == "corpus"
    assert root.links[0] in [t for t, _ in DOCS]
    assert f"[x]({root.links[0]})" in root.text


@pytest.mark.parametrize("case", ["doc_causal_evictions", "doc_causal_evictions_compiled", "cross_doc_prompt_links"])
def test_kv_cache_generator_matches_full_recompute(model, tok, corpus_dir, case):
    """Same logits at every step as recomputing the whole packed context, wherever the two agree by
    definition: under doc_causal (with evictions and compactions), and under cross_doc_link when every
    link is resolved before the tokens that see it (prompt links). Elsewhere the cache keeps what a
    token saw when it was computed (tokens before a link do not see its document; an evicted document
    is gone from later steps only), which a full recompute cannot reproduce."""
    if case.startswith("doc_causal_evictions"):
        prompt = PROMPT
        scripts = {PROMPT: " [a](Python) text [b](Topic A) more [c](os) end", "# Topic A\n": "Child [d](os.path) body"}
        kw = dict(eviction_policy="drop_oldest", mask_kind="doc_causal", max_seq_len=64)
    else:
        prompt = "Read [a](Python) and [b](Topic A)."
        scripts = {prompt: " More words here", "# Topic A\n": "Child body"}
        kw = dict(eviction_policy="stop_new", mask_kind="cross_doc_link", max_seq_len=128)
    seen = {"fast": [], "naive": []}

    def recorder(name):
        def fn(logits, ids):
            seen[name].append(logits[0].clone())
            return logits
        return fn

    cfg = GenerationConfig(temperature=0.0, max_new_tokens=60, max_tokens_per_document=40, max_link_depth=2, **kw)
    with DocumentCorpus(corpus_dir) as corpus:
        cfg = resolve_config(model, tok, cfg)
        out = {}
        with torch.inference_mode():
            for name, cls in (("fast", LinkedDocumentGenerator), ("naive", NaiveLinkedGenerator)):
                procs = [recorder(name), scripted(tok, scripts, eos=False)]
                compile = name == "fast" and case.endswith("_compiled")  # one compiled step across compactions
                out[name] = cls(model, tok, cfg, corpus, procs, compile=compile).run(tok.encode(prompt))
    a, b = out["fast"], out["naive"]
    assert [d.tokens.tolist() for d in a.get_all_documents()] == [d.tokens.tolist() for d in b.get_all_documents()]
    assert len(seen["fast"]) == len(seen["naive"]) >= 30
    for x, y in zip(seen["fast"], seen["naive"]):
        torch.testing.assert_close(x, y, atol=2e-4, rtol=1e-4)
    assert len(a.auxiliary_documents) >= 2 and a.stats["model_tokens"] == b.stats["model_tokens"]
    if case.startswith("doc_causal_evictions"):
        assert a.stats["evictions"] > 0


def test_errors(model, tok, corpus_dir):
    with pytest.raises(TypeError, match="max_depth"):
        generate_linked(model, PROMPT, max_depth=2)
    with pytest.raises(ValueError, match="prompt"):
        generate_linked(model, "")
    with pytest.raises(ValueError, match="constrain_links_to_corpus"):
        generate_linked(model, PROMPT, constrain_links_to_corpus=True)
    with pytest.raises(ValueError, match="max_tokens_per_document"):
        generate_linked(model, PROMPT, max_tokens_per_document=512, max_seq_len=512)
    with pytest.raises(TypeError, match="compile"):
        generate_linked(model, PROMPT, compile=1.5)


def test_cli_options_run_and_save(model, tok, corpus_dir, tmp_path):
    import argparse
    import io

    from craft.generation.linked.cli import add_linked_options, run_linked

    p = argparse.ArgumentParser()
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--temperature", type=float, default=0.0)
    add_linked_options(p)
    args = p.parse_args(["--corpus", str(corpus_dir), "--max-link-depth", "2", "--out", str(tmp_path / "gen")])
    buf = io.StringIO()
    prompt = "See [the os page](os) and [x](Brand New)."
    res = run_linked(model, prompt, args, out=buf)
    text = buf.getvalue()
    assert "===== os (corpus, corpus, depth 1) =====" in text and "link tree:" in text
    assert "  - Brand New [generated" in text
    m = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert m["generation_config"]["max_link_depth"] == 2
    assert {d["title"] for d in m["documents"]} == {d.title for d in res.get_all_documents()}
    with pytest.raises(SystemExit):
        p.parse_args(["--eviction-policy", "lru"])


def test_craft_generate_command_linked(model, tok, corpus_dir, tmp_path, capsys):
    """``craft generate --corpus DIR --max-link-depth 2 --out DIR`` on a real checkpoint file."""
    from craft.cli import main
    from craft.training.checkpoint import checkpoint_name, save_checkpoint

    ckpt = save_checkpoint({"model": model.state_dict(), "model_config": model.config.to_dict(),
                            "tokenizer": tok.to_dict(), "train_config": {"seq_len": 64}, "step": 1,
                            "optimizer": {}, "scheduler": {}, "rng": {}, "data_position": 0},
                           tmp_path / "run" / checkpoint_name(1))
    rc = main(["generate", "See [a](os) then", "--checkpoint", str(ckpt), "--corpus", str(corpus_dir),
               "--max-link-depth", "2", "--out", str(tmp_path / "out"), "--max-new-tokens", "20", "--seed", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "===== os (corpus" in out and "link tree:" in out
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["generation_config"]["max_link_depth"] == 2
    assert m["generation_config"]["max_tokens_per_document"] == 64  # the checkpoint's training seq_len
    assert m["links"][0] == {"src": "Root Document", "dst": "os"}
    assert (tmp_path / "out" / f"{create_filename('os')}.md").exists()


def test_builtin_corpus_links_and_constrained_targets(model, tok):
    """The built-in Python-docs corpus, pretokenized with GPT-2: a function page linked from the
    prompt is inserted from the corpus; with constrained targets, a free link lands on a real title."""
    from craft.data import builtin_corpus_dir
    from craft.data.pretokenize import ensure_pretokenized

    path = ensure_pretokenized(builtin_corpus_dir(), "gpt2")
    with DocumentCorpus(path) as corpus:
        assert corpus.has_document("shlex.join")
        prompt = "Joining arguments: [join](shlex.join)."
        res = generate_linked(model, prompt, corpus=corpus, temperature=0.0, max_new_tokens=3, num_threads=1)
        doc = res.get_document_by_title("shlex.join")
        assert doc.source == "corpus" and doc.tokens[:-1].tolist() == corpus.get_document("shlex.join").tolist()
        res = generate_linked(model, PROMPT, corpus=corpus, temperature=1.0, seed=5, num_threads=1, max_new_tokens=60,
                              constrain_links_to_corpus=True, max_tokens_per_document=96,
                              logits_processors=[scripted(tok, {PROMPT: " see [the module]("}, eos=False)])
        (target,) = res.root_document.links
        assert corpus.has_document(target) and res.get_document_by_title(target).source == "corpus"
