import json
import math
from pathlib import Path

import pytest
import torch

from craft.models import LanguageModel
from craft.training import (
    CHECKPOINT_KEYS, TrainConfig, Trainer, latest_checkpoint, load_checkpoint, load_model, save_checkpoint,
    warmup_cosine,
)
from craft_kernels._backend import bf16_is_fast
from tests._training_helpers import SMALL_MODEL


pytestmark = pytest.mark.usefixtures("one_thread")  # small runs: one thread is faster and deterministic


@pytest.fixture
def corpus(small_byte_corpus):
    return small_byte_corpus


def config(**kw):
    base = dict(model_overrides=SMALL_MODEL, tokens_per_step=256, micro_batch_tokens=128, warmup_steps=2,
                max_steps=8, log_every=1, eval_every=4, eval_windows=4, sample_every=4, sample_tokens=8,
                checkpoint_every=0, precision="fp32", tensorboard=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def losses(*trainers):
    return [h["loss"] for t in trainers for h in t.history if h["event"] == "train"]


def stop_at(step):
    def cb(trainer, s, final=False):
        if s == step:
            trainer._stop_requested = 1  # what the first Ctrl-C does
    return cb


def test_resume_continues_exactly(corpus, tmp_path):
    full = Trainer(config(), corpus, tmp_path / "full")
    full.train()
    part = Trainer(config(), corpus, tmp_path / "part", callbacks=[stop_at(5)])
    with pytest.raises(KeyboardInterrupt, match="step 5"):
        part.train()
    assert latest_checkpoint(tmp_path / "part").name == "step_00000005.pt"  # saved before exiting
    rest = Trainer(config(), corpus, tmp_path / "part", resume=True)
    assert rest.step == 5
    rest.train()
    assert len(losses(full)) == 8 and losses(part, rest) == losses(full)  # bit-exact in fp32
    for (n, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert losses(full)[-1] < losses(full)[0] - 0.3  # it learns


def test_checkpoint_contents_and_load_model(corpus, tmp_path):
    tr = Trainer(config(max_steps=4, checkpoint_every=2, keep_checkpoints=1, tensorboard=True), corpus,
                 tmp_path / "run")
    tr.train()
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_00000004.pt"]  # pruned to keep_checkpoints, no temp files left
    state = load_checkpoint(ckpts[0])
    assert set(CHECKPOINT_KEYS) <= set(state)
    assert state["step"] == 4 and state["train_config"]["seq_len"] == 32
    assert state["tokenizer"] == {"kind": "byte"} and state["model_config"]["dim"] == 32
    assert state["data_position"]["index"] == 4 * tr.global_batch
    m = load_model(tmp_path / "run")
    assert isinstance(m, LanguageModel) and not m.training
    assert m.tokenizer.name == "byte" and m.train_config["max_steps"] == 4
    x = torch.randint(0, 258, (2, 16))
    torch.testing.assert_close(m(x), tr.model.eval()(x), rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    events = {r["event"] for r in log}
    assert {"train", "eval", "sample", "checkpoint"} <= events
    train = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all(r["tokens_per_sec"] > 0 for r in train)
    assert isinstance(next(r for r in log if r["event"] == "sample")["text"], str)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run" / "tb").iterdir())


def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path):
    big = Trainer(config(max_steps=3, micro_batch_tokens=256, sample_every=0, eval_every=0), corpus, tmp_path / "a")
    acc = Trainer(config(max_steps=3, micro_batch_tokens=64, sample_every=0, eval_every=0), corpus, tmp_path / "b")
    assert (big.micro_batch, big.accum_steps) == (8, 1) and (acc.micro_batch, acc.accum_steps) == (2, 4)
    big.train()
    acc.train()
    for a, b in zip(losses(big), losses(acc)):
        assert a == pytest.approx(b, abs=2e-5)
    for a, b in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_batch_layout_from_tokens_per_step():
    c = TrainConfig(tokens_per_step=8192, micro_batch_tokens=2048)
    assert c.batch_layout(256) == (8, 4)
    assert c.batch_layout(256, world_size=2) == (8, 2)
    assert TrainConfig(tokens_per_step=1000, micro_batch_tokens=10_000).batch_layout(256) == (4, 1)
    assert TrainConfig(tokens_per_step=100, micro_batch_tokens=1).batch_layout(256) == (1, 1)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 100, 0.1) == pytest.approx(0.2)
    assert warmup_cosine(3, 4, 100, 0.1) == pytest.approx(0.8)
    assert warmup_cosine(4, 4, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(52, 4, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 4, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 4, 100, 0.1) == pytest.approx(0.1)


def test_bf16_autocast_runs(corpus, tmp_path):
    tr = Trainer(config(max_steps=2, precision="bf16", sample_every=0), corpus, tmp_path / "bf")
    assert tr.use_bf16
    assert Trainer(config(precision="auto"), corpus, tmp_path / "auto").use_bf16 == bf16_is_fast("cpu")
    out = tr.train()
    assert math.isfinite(out["loss"]) and next(tr.model.parameters()).dtype == torch.float32


def test_config_and_resume_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="tokens_per_step"):
        TrainConfig(tokens_per_step=0)
    with pytest.raises(ValueError, match="seq_len=64"):
        Trainer(config(seq_len=64), corpus, tmp_path / "x")
    with pytest.raises(ValueError, match="preset"):
        Trainer(config(preset="huge"), corpus, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(config(), corpus, tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="keys"):
        save_checkpoint({"model": {}}, tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing.pt")


def test_second_ctrl_c_inside_the_update_still_resumes_exactly(corpus, tmp_path):
    """Both Ctrl-Cs land right after optimizer.step() of step 3, before the step counter moves (a real
    SIGINT from the optimizer's post-step hook): the checkpoint must hold step 3 whole."""
    import signal

    full = Trainer(config(sample_every=0), corpus, tmp_path / "full")
    full.train()
    part = Trainer(config(sample_every=0), corpus, tmp_path / "part")
    calls = []

    def two_ctrl_c(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    part.optimizer.register_step_post_hook(two_ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="step 3"):
        part.train()
    state = load_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert state["step"] == 3 and state["data_position"]["index"] == 3 * part.global_batch
    rest = Trainer(config(sample_every=0), corpus, tmp_path / "part", resume=True)
    rest.train()
    assert losses(part, rest) == losses(full)
    for (n, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), n


def test_one_trainer_per_run_folder_and_stale_temporaries_are_removed(corpus, tmp_path):
    from craft.training.trainer import RunFolderBusy

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    stale = ckpts / ".step_00000002.pt.k3j9x_q1.tmp"  # what a kill -9 mid-save leaves
    stale.write_bytes(b"half a checkpoint")
    older = ckpts / ".step_00000001.pt.tmp-4242"  # the name earlier versions used
    older.write_bytes(b"half a checkpoint")
    keep = ckpts / "notes.txt"
    keep.write_text("mine")
    first = Trainer(config(max_steps=2, sample_every=0, eval_every=0), corpus, tmp_path / "run")
    assert not stale.exists() and not older.exists() and keep.read_text() == "mine"
    with pytest.raises(RunFolderBusy, match="in use by another trainer"):
        Trainer(config(max_steps=2), corpus, tmp_path / "run")
    first.train()
    second = Trainer(config(max_steps=3, sample_every=0, eval_every=0), corpus, tmp_path / "run", resume=True)
    assert second.step == 2  # the lock is released when train() returns
    del second

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / ".lock").symlink_to(victim)
    with pytest.raises(RunFolderBusy, match="cannot open its lock file"):
        Trainer(config(max_steps=2), corpus, tmp_path / "planted")
    assert victim.read_text() == "precious"


def test_resume_of_a_finished_run_trains_nothing(corpus, tmp_path):
    Trainer(config(max_steps=2, sample_every=0), corpus, tmp_path / "run").train()
    again = Trainer(config(max_steps=2, sample_every=0), corpus, tmp_path / "run", resume=True)
    summary = again.train()
    assert summary["loss"] is None and summary["steps"] == 2
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000002.pt"]


def test_compiled_bf16_training_with_document_ids_resumes_exactly(corpus, tmp_path):
    """The compiled path end to end: torch.compile'd forward with document ids under bf16 autocast,
    interrupted and resumed, gives the losses of an uninterrupted compiled run, close to eager."""
    kw = dict(max_steps=4, precision="bf16", sample_every=0, eval_every=0)
    eager = Trainer(config(**kw), corpus, tmp_path / "eager")
    eager.train()
    full = Trainer(config(compile=True, **kw), corpus, tmp_path / "full")
    full.train()
    part = Trainer(config(compile=True, **kw), corpus, tmp_path / "part", callbacks=[stop_at(2)])
    with pytest.raises(KeyboardInterrupt, match="step 2"):
        part.train()
    rest = Trainer(config(compile=True, **kw), corpus, tmp_path / "part", resume=True)
    rest.train()
    assert losses(part, rest) == losses(full)
    for (n, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), n
    for a, b in zip(losses(full), losses(eager)):  # bf16: compiled and eager kernels round differently
        assert a == pytest.approx(b, abs=0.05)


def test_kill_9_then_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    """A trainer killed with SIGKILL (possibly mid-save) leaves a resumable run: its lock dies with it,
    its temporaries are cleaned, and training on from the last checkpoint gives the uninterrupted model."""
    import signal
    import subprocess
    import sys
    import time

    kw = dict(max_steps=8, sample_every=0, eval_every=0, checkpoint_every=1, keep_checkpoints=2)
    full = Trainer(config(**dict(kw, checkpoint_every=0)), corpus, tmp_path / "full")
    full.train()
    code = ("import time, torch, tests.test_trainer as t\n"
            "torch.set_num_threads(1)\n"
            "slow = lambda tr, s, final=False: time.sleep(0.3 * (s >= 3))  # time to be killed before the end\n"
            f"t.Trainer(t.config(**{kw!r}), {str(corpus)!r}, {str(tmp_path / 'run')!r}, callbacks=[slow]).train()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while (latest_checkpoint(tmp_path / "run") is None or load_checkpoint(
                latest_checkpoint(tmp_path / "run"))["step"] < 3) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = load_checkpoint(latest_checkpoint(tmp_path / "run"))["step"]
    assert 3 <= step < 8, step
    rest = Trainer(config(**kw), corpus, tmp_path / "run", resume=True)
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))
    rest.train()
    assert losses(rest) == losses(full)[rest.history[0]["step"] - 1:]
    for (n, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), n
