"""``craft`` refuses bad input with one line naming the flag, file or argument, and never destroys
files it did not write. Run in-process through ``craft.cli.main`` (the same code the console
script runs) so each case costs milliseconds, not an interpreter start."""
import json
import signal
import threading

import pytest
import torch

from craft.cli import main
from craft.data import pretokenize
from craft.training import TrainConfig, Trainer, latest_checkpoint, load_checkpoint, save_checkpoint
from tests._training_helpers import SMALL_MODEL, SMALL_SET_ARGS, write_corpus


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRAFT_HOME", str(tmp_path / "home"))
    write_corpus(tmp_path / "docs", repeat=6)
    return tmp_path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    corpus = pretokenize(write_corpus(tmp / "src", repeat=6), tmp / "pre", "byte")
    cfg = TrainConfig(model_overrides=SMALL_MODEL, tokens_per_step=64, micro_batch_tokens=64, max_steps=1,
                      eval_every=0, sample_every=0, precision="fp32", tensorboard=False, progress=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, corpus, tmp / "run").train()
    finally:
        torch.set_num_threads(n)
    return latest_checkpoint(tmp / "run")


def error_line(capsys, argv, *needles, code=1):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("craft: error:"), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_corpus_build_never_replaces_what_it_did_not_write(here, capsys):
    (here / "project").mkdir()
    (here / "project" / "main.py").write_text("precious = 1\n")
    error_line(capsys, ["corpus", "build", "docs", "--out", "docs"], "--out 'docs'", "source folder")
    error_line(capsys, ["corpus", "build", "docs", "--out", "."], "--out '.'", "source folder")
    error_line(capsys, ["corpus", "build", "docs", "--out", "project"], "--out 'project'", "not a previous corpus")
    error_line(capsys, ["corpus", "build", "docs/alpha.md"], "is not a directory")
    assert (here / "project" / "main.py").read_text() == "precious = 1\n" and (here / "docs" / "alpha.md").is_file()
    assert main(["corpus", "build", "docs", "--out", "pre"]) == 0
    assert main(["corpus", "build", "docs", "--out", "pre", "--tokenizer", "char"]) == 0  # an earlier build: replaced
    assert json.loads((here / "pre" / "meta.json").read_text())["tokenizer"]["kind"] == "char"


def test_skipped_corpus_files_are_reported(here, capsys):
    (here / "docs" / "blob.md").write_bytes(b"\x00\x01binary")
    assert main(["corpus", "build", "docs", "--out", "pre"]) == 0
    out = capsys.readouterr()
    assert "7 documents" in out.out
    assert out.err.strip() == "craft: warning: skipped 'docs/blob.md': binary data (NUL bytes), not text"


@pytest.mark.parametrize("args, needles", [
    (["--set", "betas=abc"], ["betas", "two numbers"]),
    (["--set", "betas=(0.9, 1.5)"], ["betas"]),
    (["--set", "lr=fast"], ["lr: expected a number, got str"]),
    (["--set", "vocab_size=10"], ["vocab_size 10 is smaller than the tokenizer's 258"]),
    (["--seed", str(2 ** 70)], ["seed:", "does not fit in int64"]),
    (["--set", "device=bogus"], ["--device 'bogus'"]),
    (["--set", "tokenizer=char"], ["--set tokenizer: use --tokenizer"]),
    (["--set", "max_seq_len=100000000"], ["seq_len=100000000", "corpus has only"]),  # before any allocation
])
def test_train_settings_errors_name_the_setting(here, capsys, args, needles):
    error_line(capsys, ["train", "--corpus", "docs", "--max-steps", "1", "--no-progress", *SMALL_SET_ARGS, *args],
               *needles)


@pytest.mark.parametrize("args, needles", [
    (["--num-samples", "0"], ["--num-samples"]),
    (["--temperature", "inf"], ["--temperature", "finite"]),
    (["--temperature", "nan"], ["--temperature"]),
    (["--temperature", "-1"], ["--temperature"]),
    (["--top-p", "0"], ["--top-p"]),
    (["--top-k", "0"], ["--top-k"]),
    (["--seed", str(2 ** 70)], ["--seed"]),
    (["--device", "bogus"], ["--device 'bogus'"]),
    (["--max-aux-docs", "100000"], ["--max-aux-docs", "4096"]),
    (["--max-new-tokens", "1000000"], ["--max-new-tokens 1000000", "context of 32"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["--corpus", "docs"], ["--corpus 'docs': is not a pretokenized corpus", "craft corpus build"]),
    (["--corpus", "nowhere"], ["--corpus 'nowhere': does not exist"]),
    (["--max-link-depth", "-1"], ["--max-link-depth"]),
])
def test_generate_bounds_name_the_flag(here, capsys, checkpoint, args, needles):
    error_line(capsys, ["generate", "# A", "--checkpoint", str(checkpoint), *args], *needles)


def test_generate_refuses_a_prompt_longer_than_the_context(here, capsys, checkpoint):
    error_line(capsys, ["generate", "x" * 100, "--checkpoint", str(checkpoint)], "prompt: 100 tokens",
               "context holds 32")
    assert main(["generate", "# A", "--checkpoint", str(checkpoint), "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("# A")
    assert main(["generate", "# A", "--checkpoint", str(checkpoint), "--seed", "1"]) == 0  # default cut to the context
    assert capsys.readouterr().out.startswith("# A")


def test_bad_checkpoints_are_named(here, capsys, checkpoint):
    (here / "empty.pt").write_bytes(b"")
    error_line(capsys, ["generate", "--checkpoint", "empty.pt"], "checkpoint 'empty.pt'", "not a readable")
    (here / "text.pt").write_text("not a checkpoint")
    error_line(capsys, ["generate", "--checkpoint", "text.pt"], "checkpoint 'text.pt'")
    state = load_checkpoint(checkpoint)
    state["tokenizer"] = {"kind": "gpt2"}  # 50257 ids for a 258-row embedding
    save_checkpoint(state, here / "mixed.pt")
    error_line(capsys, ["generate", "--checkpoint", "mixed.pt"], "mixed.pt", "does not fit its model")


def test_ctrl_c_during_start_up_says_interrupted(here, capsys):
    big = here / "big"
    big.mkdir()
    for i in range(40):
        (big / f"page{i}.md").write_text(f"# Page {i}\n\n" + "some words and [a link](Page 1) here. " * 2000)
    timer = threading.Timer(0.05, signal.raise_signal, (signal.SIGINT,))
    timer.start()
    try:
        code = main(["corpus", "build", "big", "--out", "pre", "--tokenizer", "char"])
    finally:
        timer.join()
    assert code == 130
    assert capsys.readouterr().err.strip() == "craft: interrupted"
    assert not (here / "pre").exists() and [p.name for p in here.iterdir() if p.name.startswith(".")] == []
