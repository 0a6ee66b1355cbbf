"""The weighted token-loss reduction and the weighting methods (EW, EWTB/TLA, RLW, DWA, IGB)."""

import math

import pytest
import torch
import torch.nn.functional as F

from llava.constants import IGNORE_INDEX
from llava.model.weight_methods import (
    WEIGHT_METHODS,
    DynamicWeightAverage,
    EqualWeighting,
    ImprovableGapBalancing,
    RandomLossWeighting,
    TaskBalancedWeighting,
    build_weighter,
    reduce_token_loss,
    validate_static_weights,
)

# Per-token losses set by hand. Padded positions hold junk (7.0, NaN) that the mask must exclude,
# and one real token has a loss of exactly 0 that must still count.
HAND_LOSS = torch.tensor(
    [
        [1.0, 2.0, 3.0, 7.0],  # task 0
        [4.0, 5.0, 7.0, float("nan")],  # task 1
        [6.0, 0.0, 7.0, 7.0],  # task 0
    ]
)
HAND_MASK = torch.tensor(
    [
        [True, True, True, False],
        [True, True, False, False],
        [True, True, False, False],
    ]
)
HAND_TASKS = torch.tensor([0, 1, 0])


def shifted_token_loss(logits, labels):
    """Per-token cross-entropy of a causal LM (next-token shift), as the model computes it."""
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        reduction="none",
        ignore_index=IGNORE_INDEX,
    ).view(shift_labels.shape)
    return token_loss, shift_labels != IGNORE_INDEX


def tiny_batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 11, generator=generator)
    labels = torch.randint(0, 11, (4, 6), generator=generator)
    labels[:, :2] = IGNORE_INDEX  # the prompt
    labels[1, 4:] = IGNORE_INDEX  # padding
    labels[3, 3:] = IGNORE_INDEX
    return logits, labels, torch.tensor([0, 1, 0, 2])


def feed_step(weighter, per_task_losses, global_step):
    """One optimizer step whose per-task mean losses are exactly `per_task_losses` (None: task absent)."""
    rows, masks, tasks = [], [], []
    for k, value in enumerate(per_task_losses):
        if value is None:
            continue
        # two tokens whose mean is `value`, so the reduction's averaging is exercised
        rows.append([value - 0.25, value + 0.25])
        masks.append([True, True])
        tasks.append(k)
    token_loss = torch.tensor(rows, dtype=torch.float64)
    weighter.loss(token_loss, torch.tensor(masks), torch.tensor(tasks))
    weighter.step(global_step)


def scaled_softmax(values):
    exps = [math.exp(v) for v in values]
    return [len(values) * e / sum(exps) for e in exps]


# -- the reduction ----------------------------------------------------------------------------


def test_plain_and_ew_loss_equal_standard_causal_lm_loss():
    logits, labels, task_ids = tiny_batch()
    expected = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)(
        logits[:, :-1, :].reshape(-1, 11), labels[:, 1:].reshape(-1)
    )
    token_loss, mask = shifted_token_loss(logits, labels)
    plain = reduce_token_loss(token_loss, mask)
    ew = reduce_token_loss(token_loss, mask, task_ids, EqualWeighting(3))
    assert plain.item() == pytest.approx(expected.item(), abs=1e-6)
    assert ew.item() == pytest.approx(expected.item(), abs=1e-6)


def test_no_task_ids_means_plain_mean_even_with_a_weighter():
    weighter = EqualWeighting(2, weights=[5.0, 1.0])
    loss = reduce_token_loss(HAND_LOSS, HAND_MASK, None, weighter)
    # (1 + 2 + 3 + 4 + 5 + 6 + 0) / 7 tokens
    assert loss.item() == pytest.approx(21 / 7)


def test_token_balanced_loss_matches_hand_arithmetic():
    # task 0: tokens 1, 2, 3, 6, 0 (5 tokens, sum 12); task 1: 4, 5 (2 tokens, sum 9); task 2 absent
    weighter = EqualWeighting(3, weights=[2.0, 0.5, 5.0])
    loss = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, weighter)
    expected = (2.0 * 12 + 0.5 * 9) / (2.0 * 5 + 0.5 * 2)  # 28.5 / 11
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_task_balanced_loss_divides_by_all_task_weights_by_default():
    # L0 = 12 / 5 = 2.4, L1 = 9 / 2 = 4.5; task 2 is absent: it adds no loss but, as in the release,
    # its weight 5 stays in the denominator.
    weighter = TaskBalancedWeighting(3, weights=[2.0, 0.5, 5.0])
    assert weighter.denominator == "all"
    loss = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, weighter)
    assert loss.item() == pytest.approx((2.0 * 2.4 + 0.5 * 4.5) / 7.5, rel=1e-6)
    equal = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, build_weighter("TLA", 3))
    assert equal.item() == pytest.approx((2.4 + 4.5) / 3, rel=1e-6)


def test_task_balanced_loss_over_present_tasks_is_an_option():
    weighter = build_weighter("EWTB", 3, weights=[2.0, 0.5, 5.0], denominator="present")
    loss = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, weighter)
    assert loss.item() == pytest.approx((2.0 * 2.4 + 0.5 * 4.5) / 2.5, rel=1e-6)
    equal = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, build_weighter("TLA", 3, denominator="present"))
    assert equal.item() == pytest.approx((2.4 + 4.5) / 2, rel=1e-6)


def test_task_balanced_absent_weight_scales_the_loss_not_its_direction():
    # Under the release's normalisation an absent task's weight only rescales the loss: 9 vs 0.
    heavy = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, build_weighter("EWTB", 3, weights=[1.0, 1.0, 9.0]))
    light = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, build_weighter("EWTB", 3, weights=[1.0, 1.0, 0.0]))
    assert heavy.item() == pytest.approx(light.item() * 2 / 11, rel=1e-6)


def test_task_balanced_rejects_an_unknown_denominator():
    with pytest.raises(ValueError, match="denominator must be one of all, present"):
        TaskBalancedWeighting(2, denominator="batch")


@pytest.mark.parametrize("method", ["EW", "EWTB"])
def test_zero_weight_removes_a_tasks_gradient(method):
    logits, labels, task_ids = tiny_batch()
    logits.requires_grad_(True)
    token_loss, mask = shifted_token_loss(logits, labels)
    loss = reduce_token_loss(token_loss, mask, task_ids, build_weighter(method, 3, weights=[1.0, 0.0, 1.0]))
    loss.backward()
    assert torch.all(logits.grad[1] == 0)  # the only task-1 sample
    for sample in (0, 2, 3):
        assert logits.grad[sample].abs().sum() > 0


@pytest.mark.parametrize(
    "method, options", [("EW", {}), ("EWTB", {"denominator": "present"}), ("RLW", {}), ("DWA", {}), ("IGB", {})]
)
def test_absent_task_contributes_nothing(method, options):
    # Task 2 never appears, whatever its weight: the loss is the weighted loss of tasks 0 and 1.
    with_absent = build_weighter(method, 3, weights=[1.0, 1.0, 9.0], seed=3, **options)
    without = build_weighter(method, 3, weights=[1.0, 1.0, 0.0], seed=3, **options)
    a = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, with_absent)
    b = reduce_token_loss(HAND_LOSS, HAND_MASK, HAND_TASKS, without)
    assert torch.isfinite(a)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("method", [None, "EW", "EWTB", "RLW", "DWA", "IGB"])
def test_all_padding_batch_gives_zero_loss_with_grad(method):
    logits, labels, task_ids = tiny_batch()
    logits.requires_grad_(True)
    labels[:] = IGNORE_INDEX
    token_loss, mask = shifted_token_loss(logits, labels)
    weighter = None if method is None else build_weighter(method, 3)
    loss = reduce_token_loss(token_loss, mask, task_ids, weighter)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize("method", ["EW", "EWTB"])
def test_present_tasks_all_weight_zero_gives_zero_loss(method):
    weighter = build_weighter(method, 3, weights=[0.0, 0.0, 1.0])
    token_loss = HAND_LOSS.clone().requires_grad_(True)
    loss = reduce_token_loss(token_loss, HAND_MASK, HAND_TASKS, weighter)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(token_loss.grad == 0)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="mask shape"):
        reduce_token_loss(HAND_LOSS, HAND_MASK[:, :3])
    with pytest.raises(ValueError, match="task_ids"):
        reduce_token_loss(HAND_LOSS, HAND_MASK, torch.tensor([0, 1]), EqualWeighting(2))


# -- step statistics, history and logging ---------------------------------------------------------


def test_gradient_accumulation_keeps_one_step_one_history_entry():
    accumulated = EqualWeighting(2)
    accumulated.loss(HAND_LOSS[:2], HAND_MASK[:2], HAND_TASKS[:2])
    accumulated.loss(HAND_LOSS[2:], HAND_MASK[2:], HAND_TASKS[2:])
    accumulated.step(1)
    whole = EqualWeighting(2)
    whole.loss(HAND_LOSS, HAND_MASK, HAND_TASKS)
    whole.step(1)
    assert accumulated.num_steps == whole.num_steps == 1
    # token means over the whole step: task 0 = 12 / 5, task 1 = 9 / 2
    assert accumulated.loss_history[0] == pytest.approx(whole.loss_history[0])
    assert whole.loss_history[0] == pytest.approx([2.4, 4.5])


def test_no_grad_forwards_are_not_recorded():
    weighter = EqualWeighting(2)
    with torch.no_grad():
        weighter.loss(HAND_LOSS, HAND_MASK, HAND_TASKS)
    weighter.step(1)
    assert list(weighter.loss_history) == [[None, None]]


def test_log_stats_reports_seen_tasks_and_weights_then_resets():
    weighter = EqualWeighting(3, task_names=["A", "B", "C"], weights=[1.0, 2.0, 0.5])
    feed_step(weighter, [2.0, None, 1.0], 1)
    feed_step(weighter, [4.0, None, None], 2)
    stats = weighter.log_stats()
    # A: mean of the two step means; C: its one step; B never had a token, so no loss key
    assert stats == pytest.approx({"loss_A": 3.0, "loss_C": 1.0, "weight_A": 1.0, "weight_B": 2.0, "weight_C": 0.5})
    assert weighter.log_stats() == {"weight_A": 1.0, "weight_B": 2.0, "weight_C": 0.5}
    unnamed = EqualWeighting(2)
    feed_step(unnamed, [1.5, None], 1)
    assert unnamed.log_stats() == pytest.approx({"loss_task0": 1.5, "weight_task0": 1.0, "weight_task1": 1.0})


# -- the dynamic methods --------------------------------------------------------------------------


def expected_dwa(history, num_tasks, window=25, temperature=2.0):
    """DWA weights from a list of per-task losses, with the release's 1.0-initialised 2*window buffer."""
    if len(history) <= window:
        return [1.0] * num_tasks
    buffer = ([[1.0] * num_tasks] * (2 * window) + history)[-2 * window :]
    ratios = []
    for k in range(num_tasks):
        older = sum(entry[k] for entry in buffer[:window]) / window
        newer = sum(entry[k] for entry in buffer[window:]) / window
        ratios.append(newer / older / temperature)
    return scaled_softmax(ratios)


def scripted_losses(step):
    """Per-task losses over steps: task 0 falls, task 1 oscillates, task 2 plateaus."""
    return [0.5 + 2.5 * 0.99**step, 1.0 + 0.5 * math.sin(step), 2.0 + 1.0 / (step + 1)]


def test_dwa_follows_its_formula_over_a_scripted_loss_sequence():
    weighter = DynamicWeightAverage(3)
    history = []
    for step in range(70):
        assert weighter.current_weights() == pytest.approx(expected_dwa(history, 3), rel=1e-9)
        losses = scripted_losses(step)
        feed_step(weighter, losses, step + 1)
        history.append(losses)
    assert weighter.current_weights() != pytest.approx([1.0, 1.0, 1.0])
    assert sum(weighter.current_weights()) == pytest.approx(3.0)


def test_dwa_switches_on_after_more_than_window_steps_with_custom_hyperparameters():
    weighter = build_weighter("DWA", 2, window=3, temperature=0.5)
    history = []
    for step in range(10):
        expected = expected_dwa(history, 2, window=3, temperature=0.5)
        assert weighter.current_weights() == pytest.approx(expected, rel=1e-9)
        assert (expected == [1.0, 1.0]) == (step <= 3)
        losses = [1.0 + step, 2.0]
        feed_step(weighter, losses, step + 1)
        history.append(losses)


def test_dwa_carries_an_absent_tasks_loss_forward_and_treats_unseen_as_one():
    weighter = DynamicWeightAverage(3, window=2)
    # task 1 is absent at steps 2-3 (carried forward); task 2 only appears at step 3
    fed = [[2.0, 3.0, None], [1.5, 2.5, None], [1.0, None, None], [0.8, None, 4.0], [0.6, 2.0, 3.0]]
    seen = [[2.0, 3.0, 1.0], [1.5, 2.5, 1.0], [1.0, 2.5, 1.0], [0.8, 2.5, 4.0], [0.6, 2.0, 3.0]]
    for step, losses in enumerate(fed):
        feed_step(weighter, losses, step + 1)
        assert all(math.isfinite(w) for w in weighter.current_weights())
    assert list(weighter.loss_history)[-2] == [0.8, 2.5, 4.0]
    assert weighter.current_weights() == pytest.approx(expected_dwa(seen, 3, window=2), rel=1e-9)


def expected_igb(history, step, num_tasks, window=100):
    """IGB weights used at `step` (0-based), given the per-task losses of the steps before it."""
    if step < 2 * window:
        return [1.0] * num_tasks
    base = [sum(entry[k] for entry in history[window : 2 * window]) / window for k in range(num_tasks)]
    latest = history[step - 1]
    return scaled_softmax([latest[k] / base[k] for k in range(num_tasks)])


def test_igb_follows_its_formula_over_a_scripted_loss_sequence():
    weighter = ImprovableGapBalancing(3)
    history = []
    for step in range(215):
        assert weighter.current_weights() == pytest.approx(expected_igb(history, step, 3), rel=1e-9)
        losses = scripted_losses(step)
        feed_step(weighter, losses, step + 1)
        history.append(losses)
    assert weighter.current_weights() != pytest.approx([1.0, 1.0, 1.0])
    assert sum(weighter.current_weights()) == pytest.approx(3.0)


def test_igb_without_a_base_for_a_task_uses_ratio_one():
    weighter = ImprovableGapBalancing(2, window=2)
    for step, losses in enumerate([[1.0, None], [2.0, None], [3.0, None], [5.0, None], [4.0, None]]):
        feed_step(weighter, losses, step + 1)
    # base of task 0 = mean(3, 5) = 4; latest 4.0 -> ratio 1; task 1 never seen -> ratio 1
    assert weighter.base_losses == [4.0, None]
    assert weighter.current_weights() == pytest.approx([1.0, 1.0])
    feed_step(weighter, [8.0, None], 6)
    assert weighter.current_weights() == pytest.approx(scaled_softmax([8.0 / 4.0, 1.0]))


def test_static_weights_multiply_dynamic_weights():
    dynamic = build_weighter("DWA", 2, window=1)
    combined = build_weighter("DWA", 2, weights=[3.0, 0.5], window=1)
    for step, losses in enumerate([[2.0, 1.0], [1.0, 1.5], [0.5, 2.0]]):
        feed_step(dynamic, losses, step + 1)
        feed_step(combined, losses, step + 1)
    assert combined.current_weights() == pytest.approx([3.0 * dynamic.current_weights()[0], 0.5 * dynamic.current_weights()[1]])


def test_rlw_is_seeded_by_step_and_sums_to_num_tasks():
    first, second = RandomLossWeighting(4, seed=7), build_weighter("rlw", 4, seed=7)
    other_seed = RandomLossWeighting(4, seed=8)
    drawn = []
    for global_step in range(1, 6):
        for weighter in (first, second, other_seed):
            weighter.step(global_step)
        assert first.current_weights() == second.current_weights()
        assert first.current_weights() != other_seed.current_weights()
        assert sum(first.current_weights()) == pytest.approx(4.0)
        z = torch.randn(4, generator=torch.Generator().manual_seed(7 + global_step), dtype=torch.float64)
        assert first.current_weights() == pytest.approx(scaled_softmax(z.tolist()), rel=1e-9)
        drawn.append(first.current_weights())
    assert len({tuple(w) for w in drawn}) == len(drawn)


def test_ew_and_ewtb_weights_stay_fixed_across_steps():
    for weighter in (EqualWeighting(2, weights=[0.5, 1.5]), TaskBalancedWeighting(2)):
        before = weighter.current_weights()
        for step in range(3):
            feed_step(weighter, [1.0 + step, 2.0], step + 1)
        assert weighter.current_weights() == before


def test_state_dict_round_trip_continues_identically():
    original = DynamicWeightAverage(2, window=2)
    for step in range(4):
        feed_step(original, scripted_losses(step)[:2], step + 1)
    resumed = DynamicWeightAverage(2, window=2)
    resumed.load_state_dict(original.state_dict())
    for step in range(4, 7):
        feed_step(original, scripted_losses(step)[:2], step + 1)
        feed_step(resumed, scripted_losses(step)[:2], step + 1)
        assert resumed.current_weights() == original.current_weights()
    igb = ImprovableGapBalancing(2, window=1)
    for step in range(3):
        feed_step(igb, [1.0 + step, 2.0], step + 1)
    igb_resumed = ImprovableGapBalancing(2, window=1)
    igb_resumed.load_state_dict(igb.state_dict())
    assert igb_resumed.base_losses == igb.base_losses == [2.0, 2.0]
    with pytest.raises(ValueError, match="DWA"):
        ImprovableGapBalancing(2).load_state_dict(original.state_dict())


# -- registry and validation ------------------------------------------------------------------------


def test_registry_names_and_aliases():
    assert set(WEIGHT_METHODS) == {"EW", "EWTB", "TLA", "RLW", "DWA", "IGB"}
    assert WEIGHT_METHODS["TLA"] is WEIGHT_METHODS["EWTB"]
    assert isinstance(build_weighter("tla", 2), TaskBalancedWeighting)
    assert isinstance(build_weighter("Igb", 2), ImprovableGapBalancing)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown weight method 'GradNorm'.*EW, EWTB, TLA, RLW, DWA, IGB"):
        build_weighter("GradNorm", 2)


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(ValueError, match="EW has no hyperparameter temperature"):
        build_weighter("EW", 2, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        build_weighter("DWA", 2, temperature=0.0)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0, 2.0], "2 static weight"),
        ([1.0, -0.5, 1.0], r"static weight 1 \(B\) is -0.5"),
        ([1.0, float("nan"), 1.0], r"static weight 1 \(B\) is nan"),
        ([1.0, 1.0, float("inf")], r"static weight 2 \(C\) is inf"),
        ([0.0, 0.0, 0.0], "sum to 0"),
        ([1.0, "heavy", 1.0], "'heavy', not a number"),
    ],
)
def test_bad_static_weights_are_rejected(weights, message):
    with pytest.raises(ValueError, match=message):
        build_weighter("EW", 3, task_names=["A", "B", "C"], weights=weights)


def test_valid_static_weights_become_floats():
    assert validate_static_weights([1, 0, 2.5], 3) == [1.0, 0.0, 2.5]


def test_bad_task_count_or_names_are_rejected():
    with pytest.raises(ValueError, match="num_tasks"):
        EqualWeighting(0)
    with pytest.raises(ValueError, match="2 task name"):
        EqualWeighting(3, task_names=["A", "B"])


def test_bfloat16_token_losses_are_reduced_in_float32():
    # 300 tokens of loss 1.0 and one of 256.0, all exact in bf16; their sum and count are not (bf16 steps by 2 past 256)
    token_loss = torch.ones(1, 301)
    token_loss[0, 0] = 256.0
    mask = torch.ones(1, 301, dtype=torch.bool)
    for weighter in (None, EqualWeighting(1)):
        loss = reduce_token_loss(token_loss.bfloat16(), mask, torch.tensor([0]), weighter)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(556 / 301, rel=1e-6)


def test_static_weights_given_as_a_string_are_rejected():
    with pytest.raises(ValueError, match="list of numbers"):
        build_weighter("EW", 3, weights="1 2 3")
