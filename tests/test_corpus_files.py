"""What a corpus build may overwrite, and what the one corpus reader refuses to open.

A corpus build replaces only an earlier corpus build; the reader validates meta.json, the shards
and the index once at open time, naming the file, so a corrupt or hostile corpus raises a
CorpusError instead of crashing or feeding the model ids outside its vocabulary.
"""
import json
import os
import sqlite3
import subprocess
import sys
import warnings

import numpy as np
import pytest

from craft.data import (
    CorpusError, CorpusNotFoundError, CorpusWarning, PretokenizedCorpus, is_corpus_build, pretokenize, read_folder,
)
from craft.data.files import atomic_write, remove_stale_temporaries
from craft.generation.linked import DocumentCorpus
from tests._training_helpers import write_corpus


@pytest.fixture
def src(tmp_path):
    return write_corpus(tmp_path / "src")


@pytest.fixture
def built(src, tmp_path):
    return pretokenize(src, tmp_path / "pre", "byte", shard_tokens=300)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- what a build may replace
def test_build_refuses_the_source_a_parent_of_it_and_the_current_folder(src, tmp_path, monkeypatch):
    before = listing(src)
    with pytest.raises(CorpusError, match="source"):
        pretokenize(src, src)
    with pytest.raises(CorpusError, match="source"):
        pretokenize(src, tmp_path)  # contains the source
    monkeypatch.chdir(src)
    with pytest.raises(CorpusError, match="current folder"):
        pretokenize([d for d in read_folder(src)], ".")
    assert listing(src) == before and (src / "alpha.md").is_file()


def test_build_refuses_a_folder_with_other_files_and_replaces_an_earlier_build(src, tmp_path):
    other = tmp_path / "project"
    other.mkdir()
    (other / "keep.py").write_text("print('mine')\n")
    with pytest.raises(CorpusError, match="not a previous corpus build"):
        pretokenize(src, other)
    assert listing(other) == ["keep.py"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CorpusError, match="not a folder"):
        pretokenize(src, tmp_path / "afile")

    out = pretokenize(src, tmp_path / "pre", "byte", shard_tokens=300)
    n_shards = len(PretokenizedCorpus(out).shards)
    assert is_corpus_build(out) and n_shards > 2
    pretokenize(src, out, "byte")  # an earlier build is replaced: fewer shards now, none left over
    assert len(PretokenizedCorpus(out).shards) == 1 and listing(out) == sorted(
        ["index.sqlite", "meta.json", "source.json", "shard_00000.bin"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    (tmp_path / "empty").mkdir()
    assert PretokenizedCorpus(pretokenize(src, tmp_path / "empty")).n_documents == 7


def test_sqlite_paths_with_uri_characters(src, tmp_path):
    out = pretokenize(src, tmp_path / "C# notes?x=1%20" / "pre", "byte")
    with PretokenizedCorpus(out) as c:
        assert c.n_documents == 7 and c.get_document("Alpha") is not None
    assert listing(tmp_path) == ["C# notes?x=1%20", "src"]  # no stray files beside it


def test_binary_and_non_utf8_files_are_skipped_with_a_warning(src):
    (src / "blob.md").write_bytes(b"# Blob\n\x00\x01\x02")
    (src / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.warns(CorpusWarning) as record:
        docs = read_folder(src)
    messages = " ".join(str(w.message) for w in record)
    assert "blob.md" in messages and "binary" in messages and "latin.txt" in messages and "UTF-8" in messages
    assert {d.title for d in docs}.isdisjoint({"Blob", "latin"}) and len(docs) == 7


def test_folder_errors_say_what_is_wrong(src):
    with pytest.raises(CorpusError, match="is not a directory"):
        read_folder(src / "alpha.md")
    with pytest.raises(CorpusNotFoundError, match="does not exist"):
        read_folder(src / "nowhere")


# ---------------------------------------------------------------- the one reader validates at open time
def rewrite_meta(corpus, **changes):
    meta = json.loads((corpus / "meta.json").read_text())
    meta.update(changes)
    (corpus / "meta.json").write_text(json.dumps(meta))


def test_object_dtype_is_refused_before_any_shard_is_mapped(built):
    rewrite_meta(built, dtype="object")
    # in a subprocess: the old reader mapped the bytes as PyObject pointers and training crashed the interpreter
    code = ("from craft.data import PretokenizedCorpus, PackedSequences\n"
            f"c = PretokenizedCorpus({str(built)!r})\n"
            "print(PackedSequences(c, 16).window(0))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 1, proc.stderr
    assert "CorpusError" in proc.stderr and "meta.json: dtype must be one of ['uint16', 'uint32']" in proc.stderr


@pytest.mark.parametrize("changes, needle", [
    ({"dtype": "float64"}, "dtype must be one of"),
    ({"dtype": "int64"}, "dtype must be one of"),
    ({"shards": ["../secret.bin"]}, "shards must be a list of names"),
    ({"shards": ["/etc/passwd"]}, "shards must be a list of names"),
    ({"format": 7}, "unsupported corpus format 7"),
    ({"eos_id": 10**6}, "eos_id"),
    ({"tokenizer": {"kind": "nope"}}, "bad tokenizer"),
    ({"n_documents": 3}, "n_documents=3"),
])
def test_bad_meta_is_refused_naming_meta_json(built, changes, needle):
    rewrite_meta(built, **changes)
    with pytest.raises(CorpusError, match="meta.json") as e:
        PretokenizedCorpus(built)
    assert needle in str(e.value)
    with pytest.raises(CorpusError, match="meta.json"):
        DocumentCorpus(built)  # linked generation reads through the same class


def test_bad_shards_and_index_are_refused_naming_the_file(built, tmp_path):
    (built / "meta.json").write_text("{not json")
    with pytest.raises(CorpusError, match="meta.json: not valid JSON"):
        PretokenizedCorpus(built)

    fresh = lambda name: pretokenize(write_corpus(tmp_path / f"s{name}"), tmp_path / name, "byte", shard_tokens=300)
    c = fresh("odd")
    with open(c / "shard_00001.bin", "ab") as f:
        f.write(b"\x01")  # half a uint16
    with pytest.raises(CorpusError, match=r"shard_00001.bin: \d+ bytes is not a whole number of uint16"):
        PretokenizedCorpus(c)

    c = fresh("trunc")
    with open(c / "shard_00000.bin", "r+b") as f:
        f.truncate(20)
    with pytest.raises(CorpusError, match="index.sqlite: document .* outside shard_00000.bin"):
        PretokenizedCorpus(c)

    c = fresh("ids")
    ids = np.fromfile(c / "shard_00000.bin", dtype=np.uint16)
    ids[5] = 300  # byte tokenizer: 258 ids
    ids.tofile(c / "shard_00000.bin")
    with pytest.raises(CorpusError, match="shard_00000.bin: token id 300 is outside"):
        PretokenizedCorpus(c)

    c = fresh("missing")
    (c / "shard_00002.bin").unlink()
    with pytest.raises(CorpusNotFoundError, match="shard_00002.bin"):
        PretokenizedCorpus(c)

    c = fresh("rows")
    db = sqlite3.connect(c / "index.sqlite")
    db.execute("UPDATE documents SET shard = 99 WHERE id = 2")
    db.commit()
    db.close()
    with pytest.raises(CorpusError, match="index.sqlite: document .* names shard 99"):
        PretokenizedCorpus(c)

    c = fresh("notdb")
    (c / "index.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(CorpusError, match="index.sqlite: cannot read"):
        PretokenizedCorpus(c)


def test_one_reader_serves_training_and_generation(built):
    assert DocumentCorpus is PretokenizedCorpus
    with PretokenizedCorpus(built) as c:
        i = c.find("Gamma")
        assert c.get_document("gamma").tolist() == c.document(i).tolist()  # normalized lookup, int64 copy
        assert c.get_document("gamma").dtype == np.int64 and c.titles()[i] == "Gamma" and len(c) == 7
    with pytest.raises(ValueError, match="closed"):
        c.get_document("Gamma")


# ---------------------------------------------------------------- atomic writes
def test_atomic_write_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("manifest.json.tmp", ".manifest.json.tmp", "manifest.json"):
        (out / name).symlink_to(victim)
    atomic_write(out / "manifest.json", "{}")
    assert victim.read_text() == "precious"
    assert (out / "manifest.json").read_text() == "{}" and not (out / "manifest.json").is_symlink()
    assert oct((out / "manifest.json").stat().st_mode & 0o777) != "0o600"  # umask-based, like open()

    with pytest.raises(RuntimeError):
        with warnings.catch_warnings():
            from craft.data.files import atomic_writer
            with atomic_writer(out / "half.bin") as f:
                f.write(b"partial")
                raise RuntimeError("killed")
    assert not (out / "half.bin").exists() and not list(out.glob(".half.bin*"))
    (out / ".step_00000004.pt.abc123.tmp").write_bytes(b"stale")
    assert [p.name for p in remove_stale_temporaries(out, "step_*.pt")] == [".step_00000004.pt.abc123.tmp"]


def test_linked_result_save_caps_file_names_and_ignores_planted_symlinks(tmp_path):
    from craft.data.titles import MAX_STEM_CHARS, create_filename
    from craft.generation.linked import GeneratedDocument, GenerationResult

    long_title = "A very long link title " * 60  # 1380 characters: far past the 255-byte name limit
    docs = [GeneratedDocument("Root", text="root [x](y)", is_root=True),
            GeneratedDocument(long_title, text="long", parent_title="Root", depth=1),
            GeneratedDocument(long_title + "!", text="longer", parent_title="Root", depth=1)]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json.tmp").symlink_to(victim)
    (out / (create_filename("Root") + ".md.tmp")).symlink_to(victim)
    manifest = json.loads(GenerationResult.from_documents(docs).save(out).read_text())
    assert victim.read_text() == "precious"
    names = [m["filename"] for m in manifest["documents"]]
    assert len(set(names)) == 3 and all(len(n) <= MAX_STEM_CHARS + 10 for n in names)
    assert [(out / n).read_text() for n in names] == ["root [x](y)", "long", "longer"]
