import glob
import importlib.metadata
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from craft.tokenizers import ByteTokenizer, CharTokenizer, GPT2Tokenizer
from craft_kernels import BatchLinkDetector, LinkDetector
from craft_kernels.native import _dispatch

GPT2 = GPT2Tokenizer()
ALPHABET = [b"a", b"b", b" ", b"[", b"]", b"(", b")", b"!", b"\\", b"\n", b"](", b").", b"))", b"([", b"x]", b"ab c"]
SIMPLE = re.compile(r"(!?)\[([^\[\]\n\\]*)\]\(([^()\n\\]*)\)")


def _fields(links):
    return [(l.open_bracket_pos, l.close_bracket_pos, l.open_paren_pos, l.close_paren_pos, l.open_bracket_offset,
             l.close_bracket_offset, l.open_paren_offset, l.close_paren_offset, l.text_bytes, l.target_bytes,
             l.is_image, l.link_text_tokens, l.target_tokens) for l in links]


def _scan(impl, token_bytes, ids, **kw):
    with _dispatch.use(impl):
        return LinkDetector(token_bytes, **kw).scan(ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(ALPHABET) - 1), max_size=60))
def test_cpp_matches_reference(ids):
    assert _fields(_scan("cpp", ALPHABET, ids)) == _fields(_scan("python", ALPHABET, ids))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(ALPHABET) - 1), max_size=40), st.sampled_from(["cpp", "python"]))
def test_split_invariance_every_split_point(ids, impl):
    whole = _fields(_scan(impl, ALPHABET, ids))
    with _dispatch.use(impl):
        det = LinkDetector(ALPHABET)
        for cut in range(len(ids) + 1):
            det.reset()
            assert _fields(det.push_many(ids[:cut]) + det.push_many(ids[cut:])) == whole
        det.reset()
        one_by_one = [l for l in (det.push(t) for t in ids) if l is not None]
        assert _fields(one_by_one) == whole


@pytest.mark.parametrize("text, target, merged", [
    ("see [Python](Python (language)).", "Python (language)", ")."),
    ("a list ([x](y)), more", "y", "),"),
    ("call f([a](b))", "b", "))"),
    ("word_([t](u))", "u", "))"),
])
def test_gpt2_merged_parentheses(native_impl, text, target, merged):
    ids = GPT2.encode(text)
    links = LinkDetector.for_tokenizer(GPT2).scan(ids)
    assert [l.target for l in links] == [target]
    l = links[0]
    assert GPT2.token_bytes[ids[l.close_paren_pos]][l.close_paren_offset:l.close_paren_offset + 1] == b")"
    assert GPT2.token_bytes[ids[l.open_bracket_pos]][l.open_bracket_offset:l.open_bracket_offset + 1] == b"["
    assert GPT2.decode(l.target_tokens).strip().startswith("](") or GPT2.decode(l.target_tokens).startswith("(")
    assert any(GPT2.token_bytes[i] == merged.encode() or merged.encode() in GPT2.token_bytes[i] for i in ids)


def test_rules(native_impl):
    det = LinkDetector(ByteTokenizer().token_bytes)
    enc = lambda s: list(s.encode())  # noqa: E731
    found = lambda s: [(l.text, l.target, l.is_image) for l in det.scan(enc(s))]  # noqa: E731
    assert found("![alt](src.png)") == [("alt", "src.png", True)]
    assert found("[a]: b and [bare] text") == []
    assert found(r"\[no](x) [yes](y)") == [("yes", "y", False)]
    assert found("[a [b] c](d)") == [("a [b] c", "d", False)]
    assert found("[t](a\nb)") == []
    assert found("[t](a(b)c)") == [("t", "a(b)c", False)]
    assert found("[t](" + "(" * 33 + ")" * 34) == []
    assert found("[t](" + "(" * 32 + ")" * 33) == [("t", "(" * 32 + ")" * 32, False)]
    assert found("[t](a\\)b)") == [("t", "a\\)b", False)]
    assert found("[x\n\n[y](z)") == [("y", "z", False)]


def test_works_for_all_tokenizers(native_impl):
    text = "Intro [Link Text](Target Title). End."
    for tok in (GPT2, ByteTokenizer(), CharTokenizer.from_corpus(text)):
        links = LinkDetector.for_tokenizer(tok).scan(tok.encode(text))
        assert [(l.text, l.target) for l in links] == [("Link Text", "Target Title")]


def test_inside_target_while_streaming(native_impl):
    det = LinkDetector(ByteTokenizer().token_bytes)
    states = []
    for b in b"[a](xy)":
        det.push(b)
        states.append((det.inside_target, det.current_target_bytes))
    assert states[3] == (True, b"") and states[5] == (True, b"xy") and states[6] == (False, b"")


def _metadata_texts():
    texts = []
    for dist in importlib.metadata.distributions():
        body = dist.read_text("METADATA") or ""
        if "](" in body:
            texts.append(body[:20000])
    return texts[:25]


def test_real_markdown_from_installed_metadata(native_impl):
    texts = _metadata_texts()
    assert len(texts) >= 3
    det = LinkDetector.for_tokenizer(GPT2)
    total = 0
    for text in texts:
        links = det.scan(GPT2.encode(text))
        got = {(l.text, l.target) for l in links}
        for m in SIMPLE.finditer(text):  # every simple link the regex sees is found
            prefix = text[:m.start()]
            if prefix.endswith("\\") or "[" in prefix[-300:].split("\n\n")[-1].split("](")[-1]:
                continue  # an unmatched opener or escape before it changes the parse; the regex can't tell
            assert (m.group(2), m.group(3)) in got, (m.group(0), text[max(0, m.start() - 80):m.end()])
            total += 1
        for l in links:  # and everything found is really in the text
            assert f"[{l.text}]({l.target})" in text
    assert total > 10


def test_pathological_inputs_stay_bounded(native_impl):
    tb = ByteTokenizer().token_bytes
    det = LinkDetector(tb, max_text_bytes=64, max_target_bytes=64)
    assert det.push_many(list(b"[" * 200_000)) == []
    assert det.push_many(list(b"](" + b"(" * 100_000)) == []
    det.reset()
    assert [l.target for l in det.push_many(list(b"[" * 1000 + b"a](b)"))] == ["b"]
    assert det.push_many(list(b"[" + b"x" * 100 + b"](y)")) == []  # text over max_text_bytes


def test_batch_streams_are_independent(native_impl):
    tb = ByteTokenizer().token_bytes
    streams = [b"[a](b) [c](d)", b"xx[long text](t)", b"no links here"]
    n = max(map(len, streams))
    padded = [s.ljust(n, b" ") for s in streams]
    batch = BatchLinkDetector(tb, 3)
    found = [[] for _ in streams]
    for step in range(n):
        for r, link in enumerate(batch.push(np.array([p[step] for p in padded]))):
            if link is not None:
                found[r].append(link.target)
    assert found == [["b", "d"], ["t"], []]


def test_bad_inputs(native_impl):
    det = LinkDetector(ByteTokenizer().token_bytes)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        det.push(300)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        det.push_many(np.array([1, 300]))
    with pytest.raises(ValueError, match="ids must be >= 0"):
        det.push_many([1, -2])
    with pytest.raises(TypeError, match="integer array"):
        det.push_many([1.5])
    with pytest.raises(TypeError, match="token_bytes"):
        LinkDetector(["a", "b"])
    with pytest.raises(ValueError, match="one id per stream"):
        BatchLinkDetector(ByteTokenizer().token_bytes, 2).push([1, 2, 3])
