"""The tape-head TransformEngine step and the decoder running it inside generation (feedback)."""
import pytest
import torch

from craft.directives.decoder import DirectiveDecoder
from craft.directives.engine import TransformEngine
from craft.directives.tasks import ParityTask
from craft.directives.train import DirectiveModel, RunConfig


def _scan_engine(D=8, reverse=False):
    """Gates fixed by their biases: a hard scan (backwards when ``reverse``) taking every item, the
    register copying each read."""
    torch.manual_seed(0)
    eng = TransformEngine(D)
    with torch.no_grad():
        eng.gates.weight.zero_()
        eng.gates.bias.copy_(torch.tensor([-30.0, 30.0, 30.0 if reverse else -30.0, -30.0, 30.0]))
        eng.null_value.fill_(7.0)
        eng.score_item.weight.zero_(), eng.score_item.bias.fill_(30.0), eng.score_state.weight.zero_()
    return eng


def _prefix_context(B, N, D, lengths, seed=0):
    ctx = torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed))
    mask = torch.arange(N)[None] < torch.tensor(lengths)[:, None]
    return ctx, mask


@pytest.mark.parametrize("reverse", [False, True])
def test_tape_head_scans_items_in_order_then_reads_null(reverse):
    """A backward scan needs only the direction gate: from the start cell it enters at the last item.
    The lookahead columns count in the direction of travel: (left to read, read so far)."""
    D, lengths = 8, [3, 5, 1, 0]
    eng = _scan_engine(D, reverse)
    ctx, mask = _prefix_context(4, 5, D, lengths)
    mem, st = eng.start(ctx, mask)
    values = eng.value(ctx)
    x = torch.zeros(4, D)
    for t in range(7):
        st, res, fb = eng.step(mem, st, x)
        read = fb[:, D:2 * D]
        for b, n in enumerate(lengths):
            want = values[b, (n - 1 - t) if reverse else t] if t < n else eng.null_value
            # scores are capped at 1 - 1e-6, so about 1e-6 of the mass per step passes an item
            torch.testing.assert_close(read[b], want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(res[b] - eng.result(torch.cat([st.z[b], read[b]])), want, atol=1e-4, rtol=1e-4)
            assert float(fb[b, 2 * D].detach()) == pytest.approx(float(t >= n), abs=1e-5)  # nothing left to read
            left, done = (min(n - 1 - t, 3), min(t, 3)) if t < n else (0, 0)
            assert float(fb[b, 2 * D + 1].detach()) == pytest.approx(left, abs=1e-4)
            assert float(fb[b, 2 * D + 2].detach()) == pytest.approx(done, abs=1e-4)
        torch.testing.assert_close(st.head.sum(2), torch.ones(4, 2))


@pytest.mark.parametrize("reverse", [False, True])
def test_seek_skips_the_items_not_taken_and_lookahead_counts_the_taken_ones(reverse):
    """With a score that takes only the items whose first value coordinate is positive (what keeping
    the positive keys needs), each move lands on the next such item in the direction of travel, and
    ``left`` / ``done`` (the last two feedback columns) count the taken items still to read / read,
    clamped at 3; after the last one the head is at the end and reads null."""
    D, lengths = 8, [3, 6, 1, 0, 5]
    eng = _scan_engine(D, reverse)
    ctx, mask = _prefix_context(5, 6, D, lengths, seed=3)
    mem, st = eng.start(ctx, mask)
    vals = mem.values.detach()
    with torch.no_grad():  # a hard score: the item is taken when its value's coordinate 0 is positive
        mem = mem._replace(score=1e4 * vals[..., 0])
    taken = [[i for i in (range(n - 1, -1, -1) if reverse else range(n)) if float(vals[b, i, 0]) > 0]
             for b, n in enumerate(lengths)]
    assert any(0 < len(k) < n for k, n in zip(taken, lengths))  # some items skipped, some taken
    x = torch.zeros(5, D)
    for t in range(7):
        st, res, fb = eng.step(mem, st, x)
        for b, k in enumerate(taken):
            want_read = vals[b, k[t]] if t < len(k) else eng.null_value.detach()
            torch.testing.assert_close(fb[b, D:2 * D].detach(), want_read, atol=1e-4, rtol=1e-4)
            assert float(fb[b, 2 * D].detach()) == pytest.approx(float(t >= len(k)), abs=1e-4)
            left, done = (min(len(k) - 1 - t, 3), min(t, 3)) if t < len(k) else (0, 0)  # the end cell: past none
            assert float(fb[b, -2].detach()) == pytest.approx(left, abs=1e-4), (b, t)
            assert float(fb[b, -1].detach()) == pytest.approx(done, abs=1e-4), (b, t)


def test_undecided_direction_mixes_two_sharp_heads():
    """With the direction gate at 0.5 each head still moves one item per step (no mass spreads), so
    the read is half the t-th item plus half the t-th from the end, at every step."""
    D, n = 8, 5
    eng = _scan_engine(D)
    with torch.no_grad():
        eng.gates.bias[2] = 0.0
    ctx, mask = _prefix_context(1, n, D, [n])
    mem, st = eng.start(ctx, mask)
    values = eng.value(ctx).detach()
    for t in range(n):
        st, _, fb = eng.step(mem, st, torch.zeros(1, D))
        torch.testing.assert_close(fb[0, D:2 * D].detach(), 0.5 * (values[0, t] + values[0, n - 1 - t]),
                                   atol=1e-4, rtol=1e-4)
        assert float(st.head[0, 0, t].detach()) == pytest.approx(1.0, abs=1e-4)
        assert float(st.head[0, 1, n - 1 - t].detach()) == pytest.approx(1.0, abs=1e-4)


def test_jump_begins_the_scan_again():
    D, n = 8, 4
    eng = _scan_engine(D)
    ctx, mask = _prefix_context(1, n, D, [n])
    mem, st = eng.start(ctx, mask)
    values = eng.value(ctx)
    for t in range(3):
        st, _, fb = eng.step(mem, st, torch.zeros(1, D))
    with torch.no_grad():
        eng.gates.bias[0] = 30.0  # jump, then move: the first item again
    st, _, fb = eng.step(mem, st, torch.zeros(1, D))
    torch.testing.assert_close(fb[0, D:2 * D], values[0, 0], atol=1e-4, rtol=1e-4)


def test_tape_head_mass_is_conserved_and_inactive_rows_keep_state():
    torch.manual_seed(1)
    D = 8
    eng = TransformEngine(D)
    with torch.no_grad():
        eng.gates.weight.normal_(0, 2.0)  # random soft gates
    ctx, mask = _prefix_context(16, 7, D, [int(n) for n in torch.randint(0, 8, (16,))])
    mem, st = eng.start(ctx, mask)
    for t in range(10):
        active = torch.rand(16) > 0.3
        new, res, fb = eng.step(mem, st, torch.randn(16, D), active)
        torch.testing.assert_close(new.head.sum(2), torch.ones(16, 2))
        assert bool((new.head[:, :, :-2].transpose(1, 2)[~mask] == 0).all()) and bool((new.head >= -1e-7).all())
        assert torch.equal(new.z[~active], st.z[~active]) and torch.equal(new.head[~active], st.head[~active])
        st = new


def _feedback_decoder(D=16):
    torch.manual_seed(0)
    eng = TransformEngine(D)
    dec = DirectiveDecoder(D, n_layers=1, n_heads=2, max_seq_len=32, feedback_dim=eng.feedback_dim, positions="none")
    with torch.no_grad():
        dec.halt_head.bias.fill_(0.5)  # rows halt after different numbers of instructions
        dec.return_head.bias.fill_(0.5)
    return dec, eng


def test_feedback_generation_batched_matches_each_row_alone_with_gradients():
    dec, eng = _feedback_decoder()
    B, N, D = 6, 5, 16
    ctx, mask = _prefix_context(B, N, D, [5, 2, 4, 1, 3, 5], seed=3)
    cmd = torch.randn(B, D, generator=torch.Generator().manual_seed(4))
    d = dec(cmd, ctx, mask, max_instructions=12, compact_every=2, engine=eng)
    assert len(set(d.n_instructions.tolist())) > 1
    loss = (d.results * torch.linspace(-1, 1, D)).sum() + (d.return_probs * torch.arange(d.return_probs.shape[1])).sum()
    grads = torch.autograd.grad(loss, list(eng.parameters()) + [dec.feedback.weight], allow_unused=True)
    assert grads[-1] is not None and grads[-1].abs().sum() > 0  # the heads depend on the engine's state
    for b in range(B):
        db = dec(cmd[b:b + 1], ctx[b:b + 1, :int(mask[b].sum())], None, max_instructions=12, cache="none", engine=eng)
        k = db.mask.shape[1]
        assert torch.equal(db.mask[0], d.mask[b, :k]) and not bool(d.mask[b, k:].any())
        torch.testing.assert_close(db.return_probs[0], d.return_probs[b, :k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(db.results[0][db.mask[0]], d.results[b, :k][db.mask[0]], atol=1e-5, rtol=1e-4)


def test_feedback_needs_a_matching_engine():
    dec, eng = _feedback_decoder()
    ctx, mask = _prefix_context(2, 3, 16, [3, 2])
    with pytest.raises(ValueError, match="engine"):
        dec(torch.randn(2, 16), ctx, mask, max_instructions=4)
    with pytest.raises(ValueError, match="feedback_dim"):
        dec(torch.randn(2, 16), ctx, mask, max_instructions=4, engine=TransformEngine(8))
    with pytest.raises(ValueError, match="positions"):
        DirectiveDecoder(16, positions="learned")


def test_expected_result_loss_weights_each_instruction_by_its_return_probability():
    cfg = RunConfig(task="parity", variant="act", dim=16, n_heads=2, n_layers=1)
    model = DirectiveModel(ParityTask(), cfg)
    b = model.task.sample(5, torch.Generator().manual_seed(0))
    d, eng, pred = model(b)
    got = model.expected_result_loss(d, eng, b)
    want = 0.0
    for i in range(5):
        for n in range(d.mask.shape[1]):
            if d.mask[i, n] and d.slot_index[i, n] == 0:
                logit = model.readout(eng.results[i, n])[0]
                want = want + d.return_probs[i, n] * torch.nn.functional.binary_cross_entropy_with_logits(
                    logit, b.targets[i, 0, 0])
    torch.testing.assert_close(got, want / 5)


def test_fixed_schedule_reads_out_the_last_instruction_of_each_output():
    cfg = RunConfig(task="counts", variant="fixed", dim=16, n_heads=2, n_layers=1)
    from craft.directives.tasks import CountsTask

    model = DirectiveModel(CountsTask(), cfg)
    b = model.task.sample(4, torch.Generator().manual_seed(2))
    with torch.no_grad():
        d, eng, pred = model(b)
    n = model.task.fixed_steps
    closing = d.closes & d.mask
    assert bool((d.return_probs[closing] > 0.99).all())
    assert bool((d.return_probs[d.mask & ~closing] == model.decoder.min_prob).all())
    assert torch.equal(closing.sum(1), b.count) and bool((closing.nonzero()[:, 1] % n == n - 1).all())


def test_decoder_without_context_sees_items_only_through_the_engine():
    cfg = RunConfig(task="parity", variant="pondernet", dim=16, n_heads=2, n_layers=1, decoder_context=False)
    model = DirectiveModel(ParityTask(), cfg)
    b = model.task.sample(4, torch.Generator().manual_seed(0))
    other = model.task.sample(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        d1, _, _ = model(b)
        d2, _, _ = model(type(b)(other.context, other.context_mask, b.command, b.targets, b.target_mask, b.count,
                                 b.difficulty))
    torch.testing.assert_close(d1.instructions[:, 0], d2.instructions[:, 0])  # the first comes from the command alone
    assert not torch.allclose(d1.results[:, 0], d2.results[:, 0])  # the engine reads the items


@pytest.mark.parametrize("hold", [False, True])
def test_hold_at_end_keeps_the_state_once_everything_is_read(hold):
    """With ``hold_at_end`` the state and the result stop changing when the head has left the items
    (without it the GRU keeps updating on null reads)."""
    D, n = 8, 3
    eng = _scan_engine(D)
    eng.hold_at_end = hold
    ctx, mask = _prefix_context(1, n, D, [n])
    mem, st = eng.start(ctx, mask)
    results = []
    for t in range(n + 4):
        st, res, fb = eng.step(mem, st, torch.randn(1, D, generator=torch.Generator().manual_seed(t)))
        results.append(res.detach())
    after = torch.stack(results[n:])  # the head is on the end cell from step n on
    assert bool(torch.allclose(after, after[:1], atol=1e-4)) == hold
    assert not torch.allclose(results[n - 1], results[n - 2])  # reads of items still change it


def _seek_engine(D=8, G=0):
    """A forward scan (fixed gates, register copying each read) whose seek has its own score."""
    torch.manual_seed(0)
    eng = TransformEngine(D, seek_score=True, score_gains=G)
    with torch.no_grad():
        eng.gates.weight.zero_()
        eng.gates.bias.copy_(torch.tensor([-30.0, 30.0, -30.0, -30.0, 30.0]))
    return eng


def test_the_seek_score_is_apart_from_the_lookahead_score():
    """A lookahead score that takes only the items whose value coordinate 0 is positive leaves a seek
    of its own (initialised to take every item) a shift by one: the heads read every item, while
    ``left`` / ``done`` count only the lookahead's items (pairwise sums must read every item, whatever
    the count losses do to the lookahead). With the shared score (the engine before) the seek skipped."""
    D, lengths = 8, [3, 6, 5]
    eng = _seek_engine(D)
    with torch.no_grad():
        eng.seek_item.bias.fill_(30.0)
    ctx, mask = _prefix_context(3, 6, D, lengths, seed=3)
    mem, st = eng.start(ctx, mask)
    vals = mem.values.detach()
    with torch.no_grad():
        mem = mem._replace(score=1e4 * vals[..., 0])
    kept = [[i for i in range(n) if float(vals[b, i, 0]) > 0] for b, n in enumerate(lengths)]
    assert any(0 < len(k) < n for k, n in zip(kept, lengths))
    x = torch.zeros(3, D)
    for t in range(7):
        st, res, fb = eng.step(mem, st, x)
        for b, n in enumerate(lengths):
            want = vals[b, t] if t < n else eng.null_value.detach()
            torch.testing.assert_close(fb[b, D:2 * D].detach(), want, atol=1e-4, rtol=1e-4)
            left = sum(i > t for i in kept[b]) if t < n else 0
            done = sum(i < t for i in kept[b]) if t < n else 0
            assert float(fb[b, -2].detach()) == pytest.approx(min(left, 3), abs=1e-4), (b, t)
            assert float(fb[b, -1].detach()) == pytest.approx(min(done, 3), abs=1e-4), (b, t)


def test_score_gains_let_one_instruction_filter_and_another_take_every_item():
    """With a gated feature, the instruction sets the gain: x[0] = 0 (gain 0) takes every item, x[0] = 1
    takes only the items whose value coordinate 0 is positive: two commands, one filter, in one batch.
    The gains start at 0, so a fresh engine's seek takes every item whatever the instruction."""
    D, N = 8, 6
    eng = _seek_engine(D, G=1)
    ctx, mask = _prefix_context(2, N, D, [N, N], seed=3)
    ctx[1] = ctx[0]
    x = torch.zeros(2, D)
    x[1, 0] = 1.0
    mem, _ = eng.start(ctx, mask)
    z = torch.zeros(2, D)
    assert bool((eng.score(mem, z, x, seek=True) > 0.95).all())  # fresh: every item taken
    with torch.no_grad():
        eng.seek_item.weight.zero_(), eng.seek_item.bias.zero_()
        eng.seek_item.bias[0] = 30.0
        eng.seek_item.weight[1, 0] = 1e4  # feature 1: 1e4 * the item value's coordinate 0
        eng.seek_state.weight.zero_()
        eng.seek_state.weight[0, D] = -30.0  # x[0] = 1: the additive part drops to 0 ...
        eng.seek_state.weight[1, D] = 1.0  # ... and the feature's gain rises to 1
    mem, st = eng.start(ctx, mask)
    vals = mem.values.detach()
    kept = [i for i in range(N) if float(vals[0, i, 0]) > 0]
    assert 0 < len(kept) < N
    for t in range(N + 1):
        st, res, fb = eng.step(mem, st, x)
        want = [vals[0, t] if t < N else eng.null_value.detach(),
                vals[0, kept[t]] if t < len(kept) else eng.null_value.detach()]
        for b in range(2):
            torch.testing.assert_close(fb[b, D:2 * D].detach(), want[b], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="score_gains"):
        TransformEngine(D, score_gains=-1)


def test_lookahead_seek_counts_what_the_seek_takes_without_count_gradient():
    """With ``lookahead_seek`` the lookahead counts the items the seek's own score takes (here: value
    coordinate 0 positive) while the lookahead's score takes every item: ``left`` / ``done`` follow the
    seek's filter, and a loss on them sends no gradient into the seek's parameters (the count losses
    must not pull the filter the result loss teaches). Without the flag they count every item."""
    D, lengths = 8, [3, 6, 5]
    ctx, mask = _prefix_context(3, 6, D, lengths, seed=3)
    for flag in (True, False):
        torch.manual_seed(0)
        eng = TransformEngine(D, seek_score=True, score_gains=1, lookahead_seek=flag)
        with torch.no_grad():
            eng.gates.weight.zero_()
            eng.gates.bias.copy_(torch.tensor([-30.0, 30.0, -30.0, -30.0, 30.0]))
            eng.score_item.weight.zero_(), eng.score_item.bias.fill_(30.0), eng.score_state.weight.zero_()
            eng.seek_item.weight.zero_(), eng.seek_item.bias.zero_()
            eng.seek_item.weight[0, 0] = 1e4
        mem, st = eng.start(ctx, mask)
        vals = mem.values.detach()
        kept = [[i for i in range(n) if float(vals[b, i, 0]) > 0] for b, n in enumerate(lengths)]
        assert any(0 < len(k) < n for k, n in zip(kept, lengths))
        st, res, fb = eng.step(mem, st, torch.zeros(3, D))  # the head on each row's first kept item
        for b, n in enumerate(lengths):
            counted = kept[b] if flag else list(range(n))
            first = kept[b][0] if kept[b] else n
            want = (sum(i > first for i in counted), sum(i < first for i in counted)) if first < n else (0, 0)
            assert float(fb[b, -2]) == pytest.approx(min(want[0], 3), abs=1e-3), (flag, b)
            assert float(fb[b, -1]) == pytest.approx(min(want[1], 3), abs=1e-3), (flag, b)
        if flag:
            eng.zero_grad()
            fb[:, -2:].sum().backward()
            assert eng.seek_item.weight.grad is None or float(eng.seek_item.weight.grad.abs().sum()) == 0
    with pytest.raises(ValueError, match="seek_score"):
        TransformEngine(D, lookahead_seek=True)


def test_command_state_starts_the_state_from_the_command():
    """``command_state``: z starts from the items and the command; the projection starts at 0 (same z
    as without), and once trained two commands on the same items start from different states."""
    D = 8
    ctx, mask = _prefix_context(2, 4, D, [4, 4])
    ctx[1] = ctx[0]
    cmd = torch.randn(2, D, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    eng = TransformEngine(D, command_state=True)
    _, st = eng.start(ctx, mask, cmd)
    torch.testing.assert_close(st.z[0], st.z[1])
    with torch.no_grad():
        eng.command_state.weight.copy_(torch.eye(D))
    _, st = eng.start(ctx, mask, cmd)
    assert float((st.z[0] - st.z[1]).abs().max()) > 0.1
    with pytest.raises(ValueError, match="command"):
        eng.start(ctx, mask)
