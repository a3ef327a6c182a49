"""TransformEngine, directive losses, tasks, training/resume and the `craft directives` CLI."""
import json
import math
import pytest
import torch

from craft.directives import TransformDirective, run_directive
from craft.directives.engine import TransformEngine
from craft.directives.losses import (count_loss, count_nll, expected_count, halt_margin, halting_distribution, ponder_cost,
                                     position_in_slot, return_credit)
from craft.directives.tasks import AdditionTask, CountsTask, ParityTask
from craft.directives.train import DirectiveModel, RunConfig, load_run, train


def _directive(r, h, D=8, mode="clamp", seed=0):
    out, state = run_directive(r, h, mode=mode)
    inst = torch.randn(r.shape[0], r.shape[1], D, generator=torch.Generator().manual_seed(seed))
    return TransformDirective(inst * out.active[..., None], out.p, out.active, halting_probs=out.dh,
                              slot_index=out.slot, closes=out.closes, n_outputs=state.n_closed)


def test_engine_pours_results_by_return_probability():
    r = torch.tensor([[0.3, 0.5, 0.9, 0.6, 0.7, 0.2]])
    h = torch.tensor([[0.1, 0.1, 0.1, 0.2, 0.95, 0.1]])
    d = _directive(r, h)
    # p: 0.3, 0.5, 0.2 (closes slot 0), 0.6, 0.4 (closes slot 1, halts), then nothing
    torch.testing.assert_close(d.return_probs, torch.tensor([[0.3, 0.5, 0.2, 0.6, 0.4, 0.0]]))
    assert d.n_outputs.tolist() == [2] and d.mask.tolist() == [[True] * 5 + [False]]
    eng = TransformEngine(8)
    ctx = torch.randn(1, 3, 8)
    out = eng(d, ctx)
    p, res = d.return_probs[0], out.results[0]
    torch.testing.assert_close(out.slots[0, 0], (p[:3, None] * res[:3]).sum(0))
    torch.testing.assert_close(out.slots[0, 1], (p[3:5, None] * res[3:5]).sum(0))
    torch.testing.assert_close(out.slot_fill, torch.ones(1, 2))


def test_engine_masked_instructions_leave_state_and_gradients_flow():
    r = torch.rand(4, 7) * 0.8 + 0.1
    h = torch.rand(4, 7)
    d = _directive(r.requires_grad_(), h.requires_grad_())
    eng = TransformEngine(8)
    out = eng(d, torch.randn(4, 5, 8), torch.tensor([[True] * 5, [True] * 2 + [False] * 3] * 2))
    out.slots.pow(2).sum().backward()
    assert r.grad is not None and r.grad.abs().sum() > 0
    # the item score moves the heads (a seek), so it gets gradients even in a replay without feedback
    assert all(p.grad is not None for p in eng.parameters())


def test_halting_distribution_and_count_loss_push_the_right_way():
    r = torch.full((3, 10), 0.6)
    h = torch.tensor([0.2, 0.5, 0.9])[:, None].expand(3, 10).clone().requires_grad_()
    d = _directive(r, h)
    dist = halting_distribution(d)
    torch.testing.assert_close(dist.sum(1), torch.ones(3))
    # whole outputs once halted: expected count vs the hard count
    assert (expected_count(d) <= d.n_outputs.float() + 1e-6).all()
    loss = count_loss(d, torch.tensor([8, 8, 8]))  # all rows halt too early: want less halting
    loss.backward()
    assert bool((h.grad[d.closes] > 0).any()) and bool((h.grad >= 0).all())


def test_count_nll_raises_halting_at_the_target_close():
    r = torch.full((2, 12), 0.6)  # a close every 2 instructions
    h = torch.tensor([0.3, 0.6])[:, None].expand(2, 12).clone().requires_grad_()
    d = _directive(r, h)  # row 0 halts at its 4th close, row 1 at its 2nd (remainder 0.4)
    closes = [c.nonzero().squeeze(1).tolist() for c in d.closes]
    target = torch.tensor([2, 2])
    dist = halting_distribution(d)
    torch.testing.assert_close(count_nll(d, target), -(dist[:, 1].log()).mean())
    count_nll(d, target).backward()
    g0, g1 = h.grad[0, closes[0]], h.grad[1, closes[1]]
    assert g0[1] < 0 and bool((g0[[0, 2, 3]] == 0).all())  # P(2) = h at close 2: raise it
    assert g1[0] > 0  # P(2) = 1 - h at close 1 (the remainder): lower the earlier halting


def test_halt_margin_pushes_the_right_close_past_acts_threshold():
    """A row whose halting at the right close is 0.98 (cumulative 0.985 < 1 - halt_eps) goes on and
    makes one output too many; count_nll scores it as about 98% right and barely moves it in 10 SGD
    steps, with halt_margin the row halts at the right close."""
    r = torch.full((1, 12), 0.6)  # a close every 2 instructions
    target = torch.tensor([2])
    runs = {}
    for with_margin in (False, True):
        a = torch.full((1, 12), math.log(0.005 / 0.995))
        a[0, 3] = math.log(0.98 / 0.02)  # the 2nd close
        a.requires_grad_()
        opt = torch.optim.SGD([a], lr=1.0)
        for it in range(10):
            d = _directive(r, torch.sigmoid(a))
            if it == 0:
                assert d.n_outputs.tolist() == [3] and float(count_nll(d, target).detach()) < 0.03
                assert float(halt_margin(d, target).detach()) > 1.0
            loss = count_nll(d, target) + (halt_margin(d, target) if with_margin else 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs[with_margin] = _directive(r, torch.sigmoid(a.detach())).n_outputs.item()
    assert runs == {False: 3, True: 2}
    # a row that halts at the right close, and one that closed fewer slots, cost nothing (no NaN gradient)
    h = torch.tensor([[0.1, 0.1, 0.1, 0.995] + [0.1] * 8, [0.1, 0.995] + [0.1] * 10]).requires_grad_()
    d = _directive(torch.full((2, 12), 0.6), h)
    assert d.n_outputs.tolist() == [2, 1]
    loss = halt_margin(d, torch.tensor([2, 2]))
    loss.backward()
    assert float(loss) == 0 and bool(torch.isfinite(h.grad).all())
    with pytest.raises(ValueError, match="margin"):
        halt_margin(d, target.expand(2), margin=0)


def test_return_credit_moves_a_saturated_rhythm():
    """Two slots of two instructions each; in slot 0 the second instruction's result is better, in
    slot 1 the first's. The cross-entropy on the logits lowers the first return of slot 0 with a
    gradient of order 1 even at logit 20 (where the sigmoid's slope is 2e-9), raises its second, and
    leaves slot 1's second instruction (after the best) alone."""
    r = torch.tensor([[0.9, 0.6, 0.9, 0.6, 0.5]])
    d = _directive(r, torch.tensor([[0.0, 0.01, 0.0, 0.999, 0.0]]))
    assert d.slot_index.tolist() == [[0, 0, 1, 1, -1]] and d.n_outputs.tolist() == [2]
    d.return_logits = torch.tensor([[20.0, -20.0, 20.0, -20.0, 0.0]], requires_grad=True)
    per = torch.tensor([[1.0, 0.1, 0.1, 0.5, 0.0]])
    eligible = d.mask.clone()
    loss = return_credit(d, per, eligible)
    loss.backward()
    g = d.return_logits.grad[0]
    assert g[0] > 0.4 and g[1] < -0.4  # slot 0: lower the first, raise the second
    assert abs(float(g[2])) < 1e-6 and g[3] == 0 and g[4] == 0  # slot 1: already right; nothing after the best
    torch.testing.assert_close(loss, torch.tensor(40.0 / 2), atol=1e-3, rtol=0)
    # an earlier instruction is preferred unless the later one is better by more than prefer_earlier
    d.return_logits = torch.zeros(1, 5, requires_grad=True)
    return_credit(d, torch.tensor([[0.11, 0.1, 0.1, 0.5, 0.0]]), eligible).backward()
    assert d.return_logits.grad[0, 0] < 0 and d.return_logits.grad[0, 1] == 0
    with pytest.raises(ValueError, match="return_logits"):
        d.return_logits = None
        return_credit(d, per, eligible)


def test_run_config_refuses_bad_loss_weights_before_training():
    with pytest.raises(ValueError, match="halt_margin_weight"):
        RunConfig(task="counts", halt_margin_weight=-1.0)
    with pytest.raises(TypeError, match="result_floor"):
        RunConfig(task="counts", result_floor="0.1")
    with pytest.raises(ValueError, match="return_credit_weight: needs result_loss='expected'"):
        RunConfig(task="counts", result_loss="slot")
    RunConfig(task="counts", result_loss="slot", return_credit_weight=0.0)  # the fix the message names

def test_counts_losses_credit_returns_and_halting_through_the_model():
    """The counts defaults add the credit and halting-margin terms, and the credit reaches the
    decoder's return head; parity's defaults have neither (its loss is unchanged)."""
    task = CountsTask()
    cfg = RunConfig(task="counts", dim=16)
    assert cfg.halt_margin_weight > 0 and cfg.return_credit_weight > 0 and cfg.result_floor > 0
    p = RunConfig(task="parity")
    assert not (p.halt_margin_weight or p.return_credit_weight or p.result_floor)
    torch.manual_seed(0)
    model = DirectiveModel(task, cfg)
    batch = task.sample(8, torch.Generator().manual_seed(0))
    loss, parts = model.losses(batch)
    assert {"credit", "halt_margin"} <= set(parts)
    d, eng, _ = model(batch)
    # the first instruction returns its raw probability (no fill, no halting yet): the logit's sigmoid
    torch.testing.assert_close(d.return_probs[:, 0], 1e-3 + (1 - 2e-3) * torch.sigmoid(d.return_logits[:, 0]))
    _, per, ok = model.expected_result_loss(d, eng, batch, per_instruction=True)
    return_credit(d, per, ok).backward()
    assert model.decoder.return_head.weight.grad.abs().sum() > 0


def test_ponder_costs():
    r = torch.tensor([[0.3, 0.5, 0.9, 0.6, 0.7, 0.2]], requires_grad=True)
    h = torch.tensor([[0.1, 0.1, 0.1, 0.2, 0.95, 0.1]])
    d = _directive(r, h)
    assert position_in_slot(d)[0, :5].tolist() == [0, 1, 2, 0, 1]
    act = ponder_cost(d, "act")  # (N + R) per output = (5 + 0.2 + 0.4) / 2
    assert math.isclose(float(act.detach()), 2.8, rel_tol=1e-6)
    act.backward()
    assert r.grad[0, 0] < 0  # a larger early return probability shrinks the remainder
    p = torch.tensor([0.3, 0.5, 0.2, 0.6, 0.4])
    j = torch.tensor([0, 1, 2, 0, 1.0])
    lam = 0.3
    kl = (p * (p.log() - (math.log(lam) + j * math.log(1 - lam)))).sum() / 2
    assert math.isclose(float(ponder_cost(d, "pondernet", lam)), float(kl), rel_tol=1e-5)
    with pytest.raises(ValueError, match="ponder"):
        ponder_cost(d, "graves")


def test_tasks_targets():
    g = torch.Generator().manual_seed(0)
    t = CountsTask()
    b = t.sample(200, g)
    for i in range(200):
        n = int(b.context_mask[i].sum())
        key, val = b.context[i, :n, 0], b.context[i, :n, 1:]
        c = int(b.command[i])
        want = [val, val.flip(0), val.cumsum(0), val[key > 0], val[: n // 2 * 2:2] + val[1: n // 2 * 2:2]][c]
        assert int(b.count[i]) == len(want) >= 1
        torch.testing.assert_close(b.targets[i, :len(want)], want)
    assert int(t.sample(64, g, "test").count.max()) > 12
    p = ParityTask().sample(300, g)
    k = b_k = p.context_mask.sum(1)
    assert torch.equal(p.difficulty, b_k) and int(k.max()) <= 8
    plus = ((p.context[..., 0] > 0) & p.context_mask).sum(1) % 2
    assert torch.equal(plus.float(), p.targets[:, 0, 0])
    assert int(ParityTask().sample(50, g, "test").difficulty.min()) >= 9
    a = AdditionTask().sample(50, g)
    digits = a.context.reshape(50, -1, 5, 10).argmax(-1) * (a.context.reshape(50, -1, 5, 10).sum(-1) > 0)
    nums = (digits * 10 ** torch.arange(5)).sum(-1)
    sums = (a.targets * 10 ** torch.arange(6)).sum(-1)
    assert torch.equal(sums * a.target_mask, nums.cumsum(1) * a.target_mask)


def test_fixed_baseline_schedule_gives_the_task_count():
    cfg = RunConfig(task="counts", variant="fixed", dim=16, n_heads=2, n_layers=1)
    model = DirectiveModel(CountsTask(), cfg)
    b = model.task.sample(6, torch.Generator().manual_seed(1))
    with torch.no_grad():
        d, eng, pred = model(b)
    assert torch.equal(d.n_outputs, b.count) and torch.equal(eng.n_slots, b.count)
    assert torch.equal(d.n_instructions, b.count * model.task.fixed_steps)


def test_train_resume_and_cli(tmp_path, capsys):
    cfg = RunConfig(task="parity", variant="act", dim=16, n_heads=2, n_layers=1, batch_size=8, max_steps=2,
                    eval_rows=16, checkpoint_every=1)
    m = train(cfg, tmp_path / "act", progress=False)
    assert m["steps"] == 2 and (tmp_path / "act" / "checkpoint.pt").is_file()
    model, state = load_run(tmp_path / "act")
    m2 = train(RunConfig(**{**cfg.__dict__, "max_steps": 3}), tmp_path / "act", progress=False)
    assert m2["steps"] == 3  # resumed at 2
    with pytest.raises(ValueError, match="another --out"):
        train(RunConfig(**{**cfg.__dict__, "task": "counts"}), tmp_path / "act", progress=False)
    from craft.cli import main

    assert main(["directives", "eval", str(tmp_path), "--rows", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("in_distribution_accuracy", "extrapolation_accuracy", "exact_count_rate", "baselines"):
        assert key in rep
    assert main(["directives", "eval", str(tmp_path / "nothing")]) == 1
    assert "no directive checkpoint" in capsys.readouterr().err


def test_counts_command_weights_and_curriculum(tmp_path):
    task = CountsTask()
    b = task.sample(32, torch.Generator().manual_seed(0), command_weights=torch.tensor([0.0, 0, 1, 0, 2]))
    assert set(b.command.tolist()) == {2, 4}
    with pytest.raises(ValueError, match="command_weights"):
        task.sample(4, torch.Generator(), command_weights=torch.zeros(5))
    cfg = RunConfig(task="counts", variant="act", dim=16, n_heads=2, n_layers=1, batch_size=16, max_steps=2,
                    eval_rows=8, command_curriculum=True)
    m = train(cfg, tmp_path / "c", progress=False)
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert m["steps"] == 2 and state["command_solved"].shape == (5,)
    assert set(m["in_distribution"]["by_command"]) == set(task.commands)


def test_size_curriculum_grows_the_largest_training_size():
    from craft.directives.train import curriculum_size

    task = ParityTask()
    sizes = [curriculum_size(task, s, 8) for s in range(10)]
    assert sizes[0] == 2 and sizes[7:] == [8, 8, 8] and sizes == sorted(sizes)
    b = task.sample(64, torch.Generator().manual_seed(0), max_size=3)
    assert int(b.difficulty.max()) == 3 and int(b.context_mask.sum(1).max()) == 3
    c = CountsTask().sample(64, torch.Generator().manual_seed(0), max_size=4)
    assert int(c.context_mask.sum(1).max()) == 4
    assert int(task.sample(8, torch.Generator(), "test", max_size=12).difficulty.max()) <= 12
    with pytest.raises(ValueError, match="max_size"):
        task.sample(4, torch.Generator(), max_size=0)
    with pytest.raises(ValueError, match="size_curriculum"):
        RunConfig(task="parity", size_curriculum=-1)


def test_a_run_saved_before_hold_at_end_loads_without_it(tmp_path):
    cfg = RunConfig(task="parity", variant="act", dim=16, n_heads=2, n_layers=1, batch_size=4, max_steps=1, eval_rows=4)
    assert cfg.hold_at_end  # parity's default now
    train(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["config"]["hold_at_end"]
    torch.save(state, tmp_path / "checkpoint.pt")
    model, _ = load_run(tmp_path)
    assert model.cfg.hold_at_end is False and model.engine.hold_at_end is False


def test_a_counts_run_saved_before_the_seek_score_loads_with_the_shared_score(tmp_path):
    cfg = RunConfig(task="counts", variant="act", dim=16, n_heads=2, n_layers=1, batch_size=4, max_steps=1, eval_rows=4)
    assert cfg.seek_score and cfg.score_gains > 0  # counts' defaults now
    assert not RunConfig(task="parity").seek_score and RunConfig(task="parity").score_gains == 0
    old = RunConfig(task="counts", variant="act", dim=16, n_heads=2, n_layers=1, batch_size=4, max_steps=1,
                    eval_rows=4, seek_score=False, score_gains=0, lookahead_seek=False, command_state=False,
                    halt_margin_weight=0.0, return_credit_weight=0.0, result_floor=0.0)
    train(old, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for name in ("seek_score", "score_gains", "lookahead_seek", "command_state", "halt_margin_weight",
                 "return_credit_weight", "result_floor"):
        del state["config"][name]
    torch.save(state, tmp_path / "checkpoint.pt")
    model, _ = load_run(tmp_path)
    assert model.cfg.seek_score is False and model.engine.score_gains == 0
    assert not hasattr(model.engine, "seek_item")
    # nor the losses added since: its training is the one it had
    assert not (model.cfg.halt_margin_weight or model.cfg.return_credit_weight or model.cfg.result_floor)


def test_clock_cpu_does_not_count_a_sleep():
    import time

    from craft.training.clock import clock_fn

    cpu, wall = clock_fn("cpu"), clock_fn("wall")
    c0, w0 = cpu(), wall()
    time.sleep(0.2)
    assert wall() - w0 >= 0.19 and cpu() - c0 < 0.1
    with pytest.raises(ValueError, match="clock"):
        clock_fn("gpu")
    with pytest.raises(ValueError, match="clock"):
        RunConfig(task="parity", clock="gpu")


def test_train_budget_counts_the_chosen_clock_and_keeps_both(tmp_path):
    cfg = RunConfig(task="parity", variant="act", dim=16, n_heads=2, n_layers=1, batch_size=4, max_steps=1,
                    eval_rows=4, clock="cpu")
    m = train(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["elapsed"] == state["cpu_seconds"] > 0 and state["wall_seconds"] > 0
    assert m["clock"] == "cpu" and m["cpu_seconds"] == round(state["cpu_seconds"], 1)
    # a run that spent 1000 wall seconds but 1 CPU second: a 10-minute budget is spent on the wall
    # clock, not on the CPU clock
    state.update(wall_seconds=1000.0, cpu_seconds=1.0, elapsed=1.0)
    torch.save(state, tmp_path / "checkpoint.pt")
    ten = {**cfg.__dict__, "max_minutes": 10.0, "max_steps": 2}
    assert train(RunConfig(**{**ten, "clock": "wall"}), tmp_path, progress=False)["steps"] == 1
    m = train(RunConfig(**{**ten, "clock": "cpu"}), tmp_path, progress=False)
    assert m["steps"] == 2 and m["wall_seconds"] > 1000
    # saved before both clocks were kept: the CPU seconds are taken as the wall seconds
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for c in ("wall_seconds", "cpu_seconds"):
        del state[c]
    state["elapsed"] = 1000.0
    torch.save(state, tmp_path / "checkpoint.pt")
    assert train(RunConfig(**{**ten, "max_steps": 3}), tmp_path, progress=False)["steps"] == 2


def test_parity_work_counts_the_items_that_flip_it_and_evaluate_reports_it():
    from craft.directives.train import evaluate

    task = ParityTask()
    b = task.sample(64, torch.Generator().manual_seed(0), "test")
    w = task.work(b)
    assert torch.equal(w % 2, b.targets[:, 0, 0].long()) and bool((w <= b.difficulty).all())
    assert bool((w < b.difficulty).any())  # the -1 items are set elements too, and not work
    assert CountsTask().work(CountsTask().sample(4, torch.Generator())) is None
    model = DirectiveModel(task, RunConfig(task="parity", dim=16, n_heads=2, n_layers=1))
    m = evaluate(model, rows=16)
    assert set(m["instructions_by_work"]) <= {str(k) for k in range(17)}
    for split in ("in_distribution", "extrapolation"):
        assert {"spearman_instructions_difficulty", "spearman_instructions_work"} <= set(m[split])
