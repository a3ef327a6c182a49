import json
import sqlite3
import time

import numpy as np
import pytest

from craft.data import (
    CorpusError, Document, PackedSequences, PretokenizedCorpus, WindowSampler, builtin_corpus_dir,
    ensure_pretokenized, parse_links, pretokenize, read_folder, split_windows,
)
from craft.data.titles import create_filename, normalize_title
from craft.tokenizers import ByteTokenizer, get_tokenizer
from tests._training_helpers import TOPICS, write_corpus


@pytest.fixture
def folder(tmp_path):
    return write_corpus(tmp_path / "src")


def test_read_folder_titles_links_and_duplicates(folder):
    (folder / "sub").mkdir()
    (folder / "sub" / "again.md").write_text("# Alpha\n\nsecond alpha [x](Beta)\n")
    (folder / ".hidden.md").write_text("# Hidden\n")
    (folder / "image.png").write_bytes(b"\x89PNG")
    docs = read_folder(folder)
    titles = [d.title for d in docs]
    assert sorted(titles) == sorted(TOPICS + ["notes", "Alpha (2)"])
    alpha = next(d for d in docs if d.title == "Alpha")
    assert alpha.links == ["Beta"] * 4  # the image link is not a link
    assert parse_links("[a](One Two) ![b](Img) [c](http://x.y/z)") == ["One Two", "http://x.y/z"]


def test_empty_or_missing_folder_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.md").write_text("  \n")
    with pytest.raises(CorpusError, match="has no text"):
        read_folder(tmp_path / "empty")
    with pytest.raises(CorpusError, match="does not exist"):
        read_folder(tmp_path / "nope")


def test_pretokenize_layout_matches_contract(folder, tmp_path):
    out = pretokenize(folder, tmp_path / "pre", "byte")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == 1 and meta["tokenizer"] == {"kind": "byte"} and meta["dtype"] == "uint16"
    assert meta["eos_id"] == 256 and meta["n_documents"] == 7
    docs = {d.title: d for d in read_folder(folder)}
    db = sqlite3.connect(out / "index.sqlite")
    rows = db.execute("SELECT id, title, normalized, filename, shard, offset, length FROM documents").fetchall()
    assert len(rows) == 7 and sum(r[6] for r in rows) == meta["n_tokens"]
    for _id, title, norm, fname, shard, offset, length in rows:
        assert norm == normalize_title(title) and fname == create_filename(title)
        ids = np.memmap(out / meta["shards"][shard], dtype=np.uint16, mode="r")[offset:offset + length]
        assert bytes(ids.tolist()).decode() == docs[title].text
    indexes = [r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE type='index'")]
    assert any(s and "ON documents(normalized)" in s for s in indexes)
    links = db.execute("SELECT d.title, l.dst_title, l.dst FROM links l JOIN documents d ON d.id = l.src").fetchall()
    ids = {r[1]: r[0] for r in rows}
    assert ("Alpha", "Beta", ids["Beta"]) in links
    assert ("Zeta", "Missing Page", None) in links
    assert all(dst_title != "Alpha" for _, dst_title, _ in links)  # ![image](Alpha) is no link


def test_sharding_keeps_documents_whole(folder, tmp_path):
    out = pretokenize(folder, tmp_path / "pre", "byte", shard_tokens=300)
    c = PretokenizedCorpus(out)
    assert len(c.meta["shards"]) > 2
    for i in range(c.n_documents):
        assert c.doc_offset[i] + c.doc_lengths[i] <= len(c.shards[c.doc_shard[i]])
    texts = {d.title: d.text for d in read_folder(folder)}
    for i in range(c.n_documents):
        assert ByteTokenizer().decode(c.document(i).tolist()) == texts[c.title(i)]


@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_pretokenize_other_tokenizers_round_trip(folder, tmp_path, name):
    c = PretokenizedCorpus(pretokenize(folder, tmp_path / name, name))
    tok = c.tokenizer
    assert c.meta["tokenizer"]["kind"] == name and c.eos_id == tok.eos_id
    i = c.find("Gamma")
    assert tok.decode(c.document(i).tolist()) == (folder / "gamma.md").read_text()


def test_packing_rebuilds_the_eos_joined_stream(folder, tmp_path):
    c = PretokenizedCorpus(pretokenize(folder, tmp_path / "pre", "byte"))
    seq = 17
    packed = PackedSequences(c, seq)
    stream = np.concatenate([np.append(c.document(i), c.eos_id) for i in range(c.n_documents)])
    doc_of = np.concatenate([np.full(c.doc_lengths[i] + 1, i) for i in range(c.n_documents)])
    assert len(packed) == (len(stream) - 1) // seq
    for w in [0, 1, len(packed) // 2, len(packed) - 1]:
        tokens, docs = packed.window(w)
        s = w * seq
        assert np.array_equal(tokens, stream[s:s + seq + 1])
        assert np.array_equal(docs, doc_of[s:s + seq + 1] - doc_of[s])
    b = packed.batch([3, 0])
    t3, d3 = packed.window(3)
    assert b["tokens"].shape == (2, seq) and b["tokens"].dtype.is_floating_point is False
    assert b["tokens"][0].tolist() == t3[:-1].tolist() and b["targets"][0].tolist() == t3[1:].tolist()
    assert b["doc_ids"][0].tolist() == d3[:-1].tolist()
    with pytest.raises(ValueError, match="seq_len"):
        PackedSequences(c, len(stream))
    with pytest.raises(IndexError):
        packed.window(len(packed))


def test_sampler_is_seeded_complete_and_resumable():
    items = np.arange(10, 23)
    a = WindowSampler(items, seed=3)
    first = a.take(13)
    assert sorted(first.tolist()) == items.tolist()  # an epoch visits every item once
    assert WindowSampler(items, seed=3).take(13).tolist() == first.tolist()
    assert WindowSampler(items, seed=4).take(13).tolist() != first.tolist()
    b = WindowSampler(items, seed=3)
    b.take(9)
    state = b.state_dict()
    rest = b.take(20)
    c = WindowSampler(items, seed=3)
    c.load_state_dict(state)
    assert c.take(20).tolist() == rest.tolist()
    assert state["epoch"] == 0 and b.state_dict()["epoch"] == 2
    with pytest.raises(ValueError, match="data position"):
        WindowSampler(np.arange(5)).load_state_dict(state)


def test_split_windows():
    train, ev = split_windows(200, 0.05)
    assert len(ev) == 10 and len(train) == 190 and set(train).isdisjoint(ev)
    train, ev = split_windows(1)
    assert train.tolist() == ev.tolist() == [0]


def test_ensure_pretokenized_rebuilds_only_on_change(folder, tmp_path):
    out = tmp_path / "pre"
    ensure_pretokenized(folder, "byte", out)
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert ensure_pretokenized(folder, "byte", out) == out
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    (folder / "new.md").write_text("# New\n\nfresh text\n")
    assert ensure_pretokenized(folder, "byte", out) == out
    assert PretokenizedCorpus(out).find("New") is not None
    assert ensure_pretokenized(out) == out  # a pretokenized dir is used as is


def test_builtin_corpus_from_python_docs(tmp_path, monkeypatch):
    monkeypatch.setenv("CRAFT_HOME", str(tmp_path / "home"))
    hostile = tmp_path / "project"  # built from a folder holding a module named like a stdlib one
    hostile.mkdir()
    marker = tmp_path / "ran.txt"
    for name in ("calendar", "json", "string"):
        (hostile / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    monkeypatch.chdir(hostile)
    path = builtin_corpus_dir()
    assert not marker.exists(), f"the build ran code from the current folder: {marker.read_text()}"
    assert str(path).startswith(str(tmp_path / "home"))
    t = time.perf_counter()
    assert builtin_corpus_dir() == path and time.perf_counter() - t < 1.0  # cached
    docs = {d.title: d for d in read_folder(path)}
    assert len(docs) > 500
    for absent in ("antigravity", "this", "tkinter", "turtle", "idlelib"):
        assert absent not in docs
    assert "Python standard library" in docs and "Python language topics" in docs
    assert "json" in docs["json.dumps"].links  # a function page links to its module page
    assert "json.dumps" in docs["json"].links  # and the module page to its functions
    assert "Serialize" in docs["json.dumps"].text
    assert "json" in docs["Python standard library"].links
    assert any(t.endswith("(topic)") for t in docs)
    for d in list(docs.values())[:50]:
        assert (path / f"{create_filename(d.title)}.md").is_file()
    c = PretokenizedCorpus(pretokenize(path, tmp_path / "pre", "byte"))
    db = sqlite3.connect(c.path / "index.sqlite")
    n, resolved = db.execute("SELECT count(*), count(dst) FROM links").fetchone()
    assert n > 1000 and resolved / n > 0.9


def test_pretokenize_documents_list(tmp_path):
    docs = [Document("A", "# A\n\n[b](B)", links=["B"]), Document("B", "# B\n\nbee")]
    c = PretokenizedCorpus(pretokenize(docs, tmp_path / "p", get_tokenizer("byte")))
    assert c.n_documents == 2 and c.find("B") == 1
    with pytest.raises(CorpusError, match="unique"):
        pretokenize([docs[0], docs[0]], tmp_path / "q")
