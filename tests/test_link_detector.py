import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from craft.tokenizers import ByteTokenizer, CharTokenizer, GPT2Tokenizer
from craft_kernels import BatchLinkDetector, DetectedLink, LinkDetector
from craft_kernels.native.link_detector import markdown_link
import craft_kernels as ck

GPT2 = GPT2Tokenizer()
ALPHABET = [b"a", b"b", b" ", b"[", b"]", b"(", b")", b"!", b"\\", b"\n", b"](", b").", b"))", b"([", b"x]", b"ab c",
            b"", b"\n\n", b"![", b"\\[", b"a)b(c", b"`", b"``", b"```", b"~~~", b"~", b"<", b">", b"](<", b">)", b"\r\n",
            b"  ", b"\t", b"   ", b"\\`", b"`[", b"\n```\n", b"[![", b")](", b" \n"]


def _fields(links):
    return [(l.open_bracket_pos, l.close_bracket_pos, l.open_paren_pos, l.close_paren_pos, l.open_bracket_offset,
             l.close_bracket_offset, l.open_paren_offset, l.close_paren_offset, l.text_bytes, l.target_bytes,
             l.is_image, l.link_text_tokens, l.target_tokens) for l in links]


def _scan(impl, token_bytes, ids, **kw):
    with ck.use_native(impl):
        return LinkDetector(token_bytes, **kw).scan(ids)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(ALPHABET) - 1), max_size=80), st.integers(0, 12), st.integers(0, 12), st.booleans())
def test_cpp_matches_reference(ids, max_text, max_target, skip_code):
    """Small limits exercise the abandon paths (text/target too long, span of byte-less tokens)."""
    kw = dict(max_text_bytes=max_text, max_target_bytes=max_target, skip_code=skip_code)
    assert _fields(_scan("cpp", ALPHABET, ids, **kw)) == _fields(_scan("python", ALPHABET, ids, **kw))
    assert _fields(_scan("cpp", ALPHABET, ids)) == _fields(_scan("python", ALPHABET, ids))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, len(ALPHABET) - 1), min_size=12, max_size=12), min_size=1, max_size=4),
       st.sampled_from(["cpp", "python"]))
def test_batch_matches_single_streams(rows, impl):
    with ck.use_native(impl):
        batch = BatchLinkDetector(ALPHABET, len(rows))
        got = [[] for _ in rows]
        for step in range(12):
            for r, link in enumerate(batch.push(np.array([row[step] for row in rows]))):
                if link is not None:
                    got[r].append(link)
            single = [LinkDetector(ALPHABET) for _ in rows]
        for r, row in enumerate(rows):
            assert _fields(got[r]) == _fields(single[r].scan(row))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(ALPHABET) - 1), max_size=40), st.sampled_from(["cpp", "python"]))
def test_split_invariance_every_split_point(ids, impl):
    whole = _fields(_scan(impl, ALPHABET, ids))
    with ck.use_native(impl):
        det = LinkDetector(ALPHABET)
        for cut in range(len(ids) + 1):
            det.reset()
            assert _fields(det.push_many(ids[:cut]) + det.push_many(ids[cut:])) == whole
        det.reset()
        one_by_one = [l for l in (det.push(t) for t in ids) if l is not None]
        assert _fields(one_by_one) == whole


@pytest.mark.parametrize("text, target, merged_id", [
    ("see [a](b).", "b", 737),                              # ")."
    ("see [a](b), then", "b", 828),                         # "),"
    ("call f([a](b))", "b", 4008),                          # "))" and "([" (26933)
    ("x([a](b)).", "b", 26933),                             # "([" opens the text inside a merged token
    ("see [Python](Python (language)).", "Python (language)", 29720),   # ")).": nested close + link close
    ("a list ([x](y)), more", "y", 36911),                  # " ([" and ")),"
    ("![img](a.png)", "a.png", 16151),                      # "](" merged
])
def test_gpt2_merged_tokens(native_impl, text, target, merged_id):
    ids = GPT2.encode(text)
    assert merged_id in ids  # the case really exercises a merged token
    links = LinkDetector.for_tokenizer(GPT2).scan(ids)
    assert [l.target for l in links] == [target]
    l = links[0]
    tb = GPT2.token_bytes
    assert tb[ids[l.open_bracket_pos]][l.open_bracket_offset:l.open_bracket_offset + 1] == b"["
    assert tb[ids[l.close_bracket_pos]][l.close_bracket_offset:l.close_bracket_offset + 1] == b"]"
    assert tb[ids[l.open_paren_pos]][l.open_paren_offset:l.open_paren_offset + 1] == b"("
    assert tb[ids[l.close_paren_pos]][l.close_paren_offset:l.close_paren_offset + 1] == b")"
    assert l.link_text_tokens == ids[l.open_bracket_pos:l.close_bracket_pos + 1]
    assert l.target_tokens == ids[l.open_paren_pos:l.close_paren_pos + 1]
    # the link ends inside the token holding ")": pushing that token is what reports it
    det = LinkDetector.for_tokenizer(GPT2)
    reported_at = [i for i, t in enumerate(ids) if det.push(t) is not None]
    assert reported_at == [l.close_paren_pos]


def test_rules(native_impl):
    det = LinkDetector(ByteTokenizer().token_bytes)
    enc = lambda s: list(s.encode())  # noqa: E731
    found = lambda s: [(l.text, l.target, l.is_image) for l in det.scan(enc(s))]  # noqa: E731
    assert found("![alt](src.png)") == [("alt", "src.png", True)]
    assert found("[a]: b and [bare] text") == []
    assert found(r"\[no](x) [yes](y)") == [("yes", "y", False)]
    assert found("[a [b] c](d)") == [("a [b] c", "d", False)]
    assert found("[t](a\nb)") == [] and found("[t](a\\\nb)") == []   # an escaped newline is a newline
    assert found("[t](a(b)c)") == [("t", "a(b)c", False)]
    assert found("[t](" + "(" * 33 + ")" * 34) == []
    assert found("[t](" + "(" * 32 + ")" * 33) == [("t", "(" * 32 + ")" * 32, False)]
    assert found("[t](a\\)b)") == [("t", "a\\)b", False)]
    assert found("[x\n\n[y](z)") == [("y", "z", False)]
    assert found("[x\n\n y](z)") == []                       # a blank line ends the text
    assert found("[a [b](c\nd](e)") == [("a [b](c\nd", "e", False)]   # the failed target is text again
    assert found("[a](b)[c](d)") == [("a", "b", False), ("c", "d", False)]
    assert found("[a] (b)") == [] and found("[a]\n(b)") == []
    assert found(r"\\[a](b)") == [("a", "b", False)]           # an escaped backslash does not escape "["
    assert found(r"[a\](b)") == [] and found(r"[a\]](b)") == [(r"a\]", "b", False)]
    assert found("[t](a b (c) d)") == [("t", "a b (c) d", False)]
    assert found(r"!\[x](y)") == []


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


def test_pathological_inputs_stay_bounded(native_impl):
    tb = ByteTokenizer().token_bytes
    det = LinkDetector(tb, max_text_bytes=64, max_target_bytes=64)
    assert det.push_many(list(b"[" * 200_000)) == []
    assert det.push_many(list(b"](" + b"(" * 100_000)) == []
    det.reset()
    assert [l.target for l in det.push_many(list(b"[" * 1000 + b"a](b)"))] == ["b"]
    assert det.push_many(list(b"[" + b"x" * 100 + b"](y)")) == []  # text over max_text_bytes
    assert det.push_many(list(b"[a](" + b"y" * 100 + b")")) == []  # target over max_target_bytes
    assert [l.target for l in det.push_many(list(b"[a](b)"))] == ["b"]
    # tokens without bytes cannot hold a link open forever: the span bound abandons it
    tb = [*tb, b""]
    eos = len(tb) - 1
    det = LinkDetector(tb, max_text_bytes=64, max_target_bytes=64)
    assert det.push_many([ord("["), *[eos] * 10_000, ord("]"), ord("("), ord("b"), ord(")")]) == []
    det.reset()
    assert det.push_many(list(b"[a](") + [eos] * 10_000 + [ord(")")]) == []
    assert not det.inside_target
    det.reset()
    assert [l.target_tokens for l in det.push_many(list(b"[a](") + [eos] * 5 + [ord(")")])] == [
        [ord("(")] + [eos] * 5 + [ord(")")]]


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
    with pytest.raises(ValueError, match="outside the vocabulary"):
        BatchLinkDetector(ByteTokenizer().token_bytes, 2).push([1, 999])
    with pytest.raises(ValueError, match="rows: stream indices"):
        BatchLinkDetector(ByteTokenizer().token_bytes, 2).reset([2])
    with pytest.raises(ValueError, match="batch_size"):
        BatchLinkDetector(ByteTokenizer().token_bytes, 0)
    with pytest.raises(TypeError, match="token_id"):
        det.push(1.0)
    with pytest.raises(ValueError, match="max_text_bytes"):
        LinkDetector(ByteTokenizer().token_bytes, max_text_bytes=-1)
    with pytest.raises(ValueError, match="expected a 1-d"):
        det.push_many(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="vocabulary is empty"):
        LinkDetector([])


# Tokens that change the escape / "!" / newline flags while nothing is open, so that a flag carried
# across a run of idle tokens (and tokens without bytes) decides what the next "[" does.
FLAG_ALPHABET = [b"", b"!", b"\\", b"\n", b"a", b"[", b"](", b")", b"\\\\", b"!\\", b"a\\", b"\n!", b"x]", b"(",
                 b"\\[", b"![", b"b "]


_F = {b: i for i, b in enumerate(FLAG_ALPHABET)}
_LINK = [_F[b"["], _F[b"a"], _F[b"]("], _F[b"b "], _F[b")"]]   # a whole link, so most streams hold some
_FLAG_STREAM = st.lists(st.one_of(st.lists(st.integers(0, len(FLAG_ALPHABET) - 1), max_size=4), st.just(_LINK)),
                        max_size=30).map(lambda parts: [t for p in parts for t in p])


@settings(max_examples=200, deadline=None)
@given(_FLAG_STREAM, st.lists(st.integers(1, 9), max_size=30))
def test_cpp_matches_reference_flags_and_chunks(ids, cuts):
    """C++ pushed in random chunk sizes == the reference over the whole stream (the same DetectedLinks)."""
    with ck.use_native("python"):
        want = LinkDetector(FLAG_ALPHABET).scan(ids)
    with ck.use_native("cpp"):
        det = LinkDetector(FLAG_ALPHABET)
        got, i = [], 0
        for c in cuts:
            got += det.push_many(np.array(ids[i:i + c], dtype=np.int64))
            i += c
        got += det.push_many(ids[i:])
    assert got == want
    assert all(type(l) is DetectedLink and isinstance(l.text, str) for l in got)


@pytest.mark.parametrize("span", [63, 64, 65, 200, 1500])
def test_long_links_keep_every_token(native_impl, span):
    """Links spanning more tokens than the history starts with (it grows to the span bound)."""
    tb = ByteTokenizer().token_bytes
    text = b"intro [" + b"t" * span + b"](" + b"(g)" * (span // 3) + b") end"
    ids = list(text)
    det = LinkDetector(tb, max_text_bytes=2048, max_target_bytes=2048)
    links = det.scan(ids)
    assert len(links) == 1
    l = links[0]
    assert l.text_bytes == b"t" * span and l.target_bytes == b"(g)" * (span // 3)
    assert l.link_text_tokens == ids[l.open_bracket_pos:l.close_bracket_pos + 1]
    assert l.target_tokens == ids[l.open_paren_pos:l.close_paren_pos + 1]
    assert len(l.link_text_tokens) == span + 2


def test_long_stream_matches_reference_in_one_call():
    """A stream long enough that the C++ core releases the GIL (>= 4096 tokens), whole and chunked."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 21, size=50_000)  # no code markers: code would hide most links
    with ck.use_native("python"):
        want = LinkDetector(ALPHABET).scan(ids)
    with ck.use_native("cpp"):
        det = LinkDetector(ALPHABET)
        assert det.scan(ids) == want
        det.reset()
        assert [l for c in np.array_split(ids, 7) for l in det.push_many(c)] == want
    assert len(want) > 100


def test_id_inputs_of_every_kind(native_impl):
    """Lists, other int dtypes, non-contiguous views and NumPy scalars give what int64 arrays give."""
    tok = GPT2
    ids = tok.encode("a [b](c) and ![d](e (f)) then [g](h).")
    want = LinkDetector.for_tokenizer(tok).scan(np.array(ids, dtype=np.int64))
    det = LinkDetector.for_tokenizer(tok)
    assert det.scan(ids) == want
    assert det.scan(np.array(ids, dtype=np.int32)) == want
    assert det.scan(np.array(ids, dtype=np.uint16)) == want
    assert det.scan(np.repeat(np.array(ids, dtype=np.int64), 2)[::2]) == want   # strided view
    assert det.scan(tuple(ids)) == want
    det.reset()
    assert [l for l in (det.push(np.int64(t)) for t in ids) if l is not None] == want
    det.reset()
    assert [l for l in (det.push(np.uint16(t)) for t in ids) if l is not None] == want
    assert det.push_many([]) == [] and det.push_many(np.zeros(0, dtype=np.int64)) == []


def test_bad_token_ids(native_impl):
    det = LinkDetector(ByteTokenizer().token_bytes)
    for bad in (2 ** 64, -(2 ** 64), -1, det.vocab_size):
        with pytest.raises(ValueError, match=f"token_id: {bad} is outside the vocabulary"):
            det.push(bad)
    with pytest.raises(TypeError, match="token_id: expected an int, got bool"):
        det.push(True)
    with pytest.raises(TypeError, match="token_id: expected an int, got str"):
        det.push("a")
    with pytest.raises(TypeError, match="integer array"):
        det.push_many(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="expected a 1-d"):
        det.push_many(5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        det.push_many(np.array([1, 2 ** 40], dtype=np.int64)[::-1])
    with pytest.raises(ValueError, match="does not fit in int64"):
        det.push_many(np.array([2 ** 63 + 5], dtype=np.uint64))
    batch = BatchLinkDetector(ByteTokenizer().token_bytes, 2)
    with pytest.raises(ValueError, match=r"one id per stream, got \(1,\)"):
        batch.push(np.array([1]))
    with pytest.raises(TypeError, match="integer array"):
        batch.push(["a", "b"])
    # a failed call changes nothing: the stream goes on as if it had not happened
    det.reset()
    det.push_many(list(b"[a]("))
    with pytest.raises(ValueError):
        det.push_many([ord("b"), 999, ord(")")])
    assert det.inside_target and [l.target for l in det.push_many(list(b"b)"))] == ["b"]


def _found(det, s):
    return [(l.text, l.target, l.is_image) for l in det.scan(list(s.encode()))]


@pytest.mark.parametrize("text, links", [
    # a completed image keeps the enclosing bracket (badges); a link deactivates the "[" before it
    ("[![ci](badge.svg)](url)", [("ci", "badge.svg", True), ("![ci](badge.svg)", "url", False)]),
    ("[![a](b) ![c](d)](e) [f](g)", [("a", "b", True), ("c", "d", True), ("![a](b) ![c](d)", "e", False),
                                     ("f", "g", False)]),
    ("[a [b](c) d](e)", [("b", "c", False)]),
    ("![x [a](b)](c)", [("a", "b", False), ("x [a](b)", "c", True)]),
    # code spans and fences hide links; code in link text is text
    ("`[x](y)` [a](b)", [("a", "b", False)]),
    ("`` [x](y) ` [z](w) ``[a](b)", [("a", "b", False)]),
    ("[a `]` b](c)", [("a `]` b", "c", False)]),
    ("[not a `link](/foo`)", []),
    ("`x\n\n[a](b)", [("a", "b", False)]),                      # a blank line ends an open code span
    ("```\n[x](y)\n```\n[a](b)", [("a", "b", False)]),
    ("  ~~~~ py\n[x](y)\n~~~\n[x](y)\n   ~~~~~  \n[a](b)", [("a", "b", False)]),
    ("    ```\n[a](b)", []),                                  # (indented 4: a code span, still open)
    ("x ```\n[x](y)\n``` [a](b)", [("a", "b", False)]),        # not at a line start: a code span
    ("```js` [x](y) ```\n[a](b)", [("a", "b", False)]),         # a backtick in the info string: a code span
    ("[a\n```\n](b)\n```", []),                                # a fence ends the paragraph's openers
    ("\\`[a](b)`", [("a", "b", False)]),                        # an escaped backtick opens nothing
    ("~~[a](b)~~", [("a", "b", False)]),                        # two tildes: text
    # CommonMark targets: <...>, whitespace and one newline before the target
    ("[a](<Python (language)>)", [("a", "Python (language)", False)]),
    ("[a](<b)c>) [d](<e>f) [g](<h\ni>) [j](<k<l>)", [("a", "b)c", False)]),
    ("[a](\n  https://x.org)", [("a", "https://x.org", False)]),
    ("[a](\n\nb)", []),
    # blank lines: whitespace-only lines and CRLF
    ("[a\r\n\r\n](b)", []), ("[a\n \t\n](b)", []), ("[a\r\nb](c)", [("a\r\nb", "c", False)]),
    # a backslash escapes punctuation only
    ("\\a[b](c)", [("b", "c", False)]), ("[a](b\\ c)", [("a", "b\\ c", False)]),
])
def test_commonmark_rules(native_impl, text, links):
    assert _found(LinkDetector(ByteTokenizer().token_bytes), text) == links


def test_skip_code_false_reads_code_as_text(native_impl):
    det = LinkDetector(ByteTokenizer().token_bytes, skip_code=False)
    assert _found(det, "`[x](y)` ```\n[a](b)\n```") == [("x", "y", False), ("a", "b", False)]
    assert _found(LinkDetector(ByteTokenizer().token_bytes), "`[x](y)` ```\n[a](b)\n```") == []


def test_code_in_gpt2_tokens(native_impl):
    """Merged GPT-2 tokens around code: a handler call inside a fence is not a link."""
    text = "Intro [a](b).\n\n```python\nhandlers[0](event)\nx = [y](z)\n```\n\nThen `f[0](x)` and [c](d)."
    links = LinkDetector.for_tokenizer(GPT2).scan(GPT2.encode(text))
    assert [l.target for l in links] == ["b", "d"]


@pytest.mark.parametrize("target", ["Python (language)", "a b", "plain", "x\\y", "f(x) (y)"])
def test_markdown_link_round_trips(native_impl, target):
    from markdown_it import MarkdownIt

    link = markdown_link("text", target)
    got = LinkDetector.for_tokenizer(GPT2).scan(GPT2.encode(f"See {link}."))
    assert [l.target for l in got] == [target]
    tokens = MarkdownIt("commonmark").parseInline(link)[0].children
    assert tokens[0].type == "link_open"  # a CommonMark renderer reads the same link
    with pytest.raises(ValueError, match="target"):
        markdown_link("t", "a>b")


def test_arrays_match_links(native_impl):
    ids = GPT2.encode("a [b](c) and ![d](e (f)) then [![g](h)](<i j>) end [k](l).")
    det = LinkDetector.for_tokenizer(GPT2)
    links, arr = det.scan(ids), det.scan_arrays(ids)
    assert len(arr) == len(links) == 5
    assert arr.positions.tolist() == [list(l[:4]) for l in links]
    assert arr.offsets.tolist() == [list(l[4:8]) for l in links]
    assert arr.is_image.tolist() == [l.is_image for l in links]
    assert arr.targets() == [l.target for l in links] and [arr.text(k) for k in range(5)] == [l.text for l in links]
    assert arr.positions.dtype == np.int64 and arr.text_offsets.shape == (6,)
    empty = det.scan_arrays(np.zeros(0, dtype=np.int64))
    assert len(empty) == 0 and empty.positions.shape == (0, 4) and empty.target_offsets.tolist() == [0]
    # streaming in chunks: positions are stream positions, as with push_many
    det.reset()
    parts = [det.push_many_arrays(c) for c in np.array_split(np.array(ids), 4)]
    assert np.concatenate([p.positions for p in parts]).tolist() == arr.positions.tolist()


def test_push_many_results_read_like_a_list():
    """C++ push_many returns a LinkList: the links as records, each DetectedLink built when read.
    It must read like the Python twin's list: len, indexing (negative too), slices, iteration,
    == and + with lists in both orders, += onto a list, arrays() like push_many_arrays; it cannot
    be hashed or made from Python, and outlives its detector."""
    text = list(b"[a](b) x ![c](d) [e](f)")
    with ck.use_native("python"):
        want = LinkDetector([bytes([i]) for i in range(256)]).push_many(text)
    det = LinkDetector([bytes([i]) for i in range(256)])
    got = det.push_many(text)
    assert type(got).__name__ == "LinkList" and not isinstance(got, list)
    assert len(got) == 3 and got == want and want == got and not (got != want)
    assert got[-1] == want[-1] and got[1:] == want[1:] and list(got) == want
    assert all(type(l) is DetectedLink for l in got) and got[0].target == "b"
    assert got + want == want + got == want * 2 and got + got == want * 2
    acc = []
    acc += got
    assert acc == want
    with pytest.raises(IndexError):
        got[3]
    with pytest.raises(TypeError):
        hash(got)
    with pytest.raises(TypeError):
        type(got)()
    with pytest.raises(TypeError):
        got + (1,)
    pos, off, img, tb, to, gb, go = got.arrays()
    ref = det.scan_arrays(text)
    assert np.array_equal(pos, ref.positions) and np.array_equal(off, ref.offsets) and tb == ref.text_bytes
    assert img.tolist() == [False, True, False] and gb == ref.target_bytes
    empty = det.push_many([ord("x")])
    assert len(empty) == 0 and empty == [] and not empty and repr(empty) == "[]" and empty.arrays()[0].shape == (0, 4)
    del det
    assert [l.target for l in got] == ["b", "d", "f"] and repr(got) == repr(want)


@pytest.mark.parametrize("blank", [b"  ", b"\t", b" \r", b""])
def test_code_span_content_skipped_whole_keeps_the_line_flags(blank):
    """Inside a code span with no link open, C++ skips whole tokens without a backtick or a newline,
    applying each one's flag change at once: a line of such tokens holding only whitespace is still a
    blank line (it ends the span and the link after it is found); one holding anything else is not."""
    vocab = [b"`", b"code", b"\n", blank, b"x ", b"[", b"a", b"]", b"(", b"b", b")", b"!"]
    for middle, found in (([3], True), ([3, 3], True), ([4], False), ([3, 4, 3], False), ([11], False)):
        ids = [0, 1, 2, *middle, 2, 5, 6, 7, 8, 9, 10]
        with ck.use_native("python"):
            want = _fields(LinkDetector(vocab).scan(ids))
        got = _fields(LinkDetector(vocab).scan(ids))
        assert got == want and (len(got) == 1) == found, (middle, got)
