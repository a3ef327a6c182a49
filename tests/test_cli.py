import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from craft.training import latest_checkpoint, load_checkpoint
from tests._training_helpers import SMALL_SET_ARGS, write_corpus

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--tokens-per-step", "256", "--set", "micro_batch_tokens=128", "--set", "warmup_steps=1", "--set", "log_every=1",
        "--precision", "fp32", *SMALL_SET_ARGS]


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CRAFT_HOME": str(tmp_path / "home")}


def craft(args, cwd, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "craft", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("craft: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0]


def test_error_cases_print_one_line(tmp_path, env):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "picture.png").write_bytes(b"\x89PNG")
    assert_one_line_error(craft(["train", "--preset", "huge"], tmp_path, env), "unknown preset 'huge'", "tiny")
    assert_one_line_error(craft(["generate", "hello"], tmp_path, env), "no checkpoint", "craft train")
    assert_one_line_error(craft(["generate", "--checkpoint", "missing.pt"], tmp_path, env), "missing.pt")
    assert_one_line_error(craft(["train", "--corpus", "empty"], tmp_path, env), "has no text")
    assert_one_line_error(craft(["train", "--corpus", "nowhere"], tmp_path, env), "does not exist")
    assert_one_line_error(craft(["train", "--resume", "--out", "fresh"], tmp_path, env), "--resume")
    assert_one_line_error(craft(["train", "--set", "colour=3"], tmp_path, env), "colour")
    assert_one_line_error(craft(["frobnicate"], tmp_path, env), "frobnicate")


def test_info(tmp_path, env):
    proc = craft(["info"], tmp_path, env)
    assert proc.returncode == 0 and "extension:" in proc.stdout and "doc_attention" in proc.stdout


def test_corpus_build_train_resume_generate(tmp_path, env):
    write_corpus(tmp_path / "docs", repeat=6)
    proc = craft(["corpus", "build", "docs", "--out", "pre", "--tokenizer", "char"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "7 documents" in proc.stdout and json.loads((tmp_path / "pre" / "meta.json").read_text())["tokenizer"][
        "kind"] == "char"

    proc = craft(["train", "--corpus", "docs", "--max-steps", "3", "--sample-every", "3", *FAST], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "done: step 3" in proc.stdout and "sample:" in proc.stdout
    ckpt = latest_checkpoint(tmp_path / "runs")
    assert ckpt == tmp_path / "runs" / "tiny" / "checkpoints" / "step_00000003.pt"
    assert (tmp_path / "home" / "corpora").is_dir()  # the folder was pretokenized into the cache

    proc = craft(["train", "--resume", "--max-steps", "5", *FAST], tmp_path, env)  # corpus taken from the checkpoint
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(latest_checkpoint(tmp_path / "runs"))
    assert state["step"] == 5 and state["train_config"]["max_steps"] == 5
    steps = [json.loads(x)["step"] for x in (tmp_path / "runs" / "tiny" / "log.jsonl").read_text().splitlines()
             if json.loads(x)["event"] == "train"]
    assert steps == [1, 2, 3, 4, 5]
    proc = craft(["train", "--resume", "--max-steps", "5", *FAST], tmp_path, env)  # a finished run: nothing to do
    assert proc.returncode == 0 and "nothing to train" in proc.stdout and "step 5" in proc.stdout, proc.stderr

    proc = craft(["generate", "# Alpha", "--max-new-tokens", "12", "--seed", "0"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# Alpha")
    again = craft(["generate", "# Alpha", "--max-new-tokens", "12", "--seed", "0",
                   "--checkpoint", str(tmp_path / "runs" / "tiny")], tmp_path, env)
    assert again.stdout == proc.stdout  # seeded; a run folder resolves to its latest checkpoint


def test_ctrl_c_saves_a_checkpoint(tmp_path, env):
    write_corpus(tmp_path / "docs", repeat=6)
    proc = subprocess.Popen([sys.executable, "-m", "craft", "train", "--corpus", "docs", "--max-steps", "100000",
                             "--sample-every", "0", "--no-progress", *FAST],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "runs" / "tiny" / "log.jsonl"
    deadline = time.monotonic() + 180
    while not (log.exists() and '"train"' in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    state = load_checkpoint(latest_checkpoint(tmp_path / "runs"))
    assert 1 <= state["step"] < 100000
    pos = state["data_position"]
    assert pos["epoch"] * pos["n_items"] + pos["index"] == state["step"] * 8  # the position of the last whole step
