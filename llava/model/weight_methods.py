"""Task loss weighting: the weighted token-loss reduction and the methods of the VisATB paper.

One class per method behind one interface (`Weighter`) and a name registry (`WEIGHT_METHODS`,
`build_weighter`). The model calls `reduce_token_loss` (or `weighter.loss`) on every micro-batch;
the trainer calls `weighter.step(global_step)` once after every optimizer step, on every rank.

Conventions shared by the dynamic methods (DWA, IGB):
- A step's per-task loss is the token mean over all micro-batches of that step and, under
  torch.distributed, over all ranks (sums and token counts are all-reduced in `step`), so every
  rank computes the same weights and gradient accumulation does not change what a step means.
- The release computes weights from a buffer that already holds the current batch's loss. Here a
  step's loss is only known once the step is over, so weights for step s use the losses of steps
  0..s-1; the step at which a method switches on is the release's.
- A task with no target tokens in a step carries its last loss forward; before a task is first
  seen it has no loss, which DWA treats like the release's initial buffer (1.0) and IGB as a
  neutral ratio of 1.0. No NaN can arise.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "EWTB_DENOMINATORS",
    "WEIGHT_METHODS",
    "DynamicWeightAverage",
    "EqualWeighting",
    "ImprovableGapBalancing",
    "RandomLossWeighting",
    "TaskBalancedWeighting",
    "Weighter",
    "build_weighter",
    "reduce_token_loss",
    "validate_static_weights",
]


def _check_batch(token_loss: torch.Tensor, mask: torch.Tensor, task_ids: torch.Tensor | None) -> None:
    if token_loss.dim() != 2:
        raise ValueError(f"token_loss must be [batch, tokens], got shape {tuple(token_loss.shape)}")
    if mask.shape != token_loss.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from token_loss shape {tuple(token_loss.shape)}")
    if task_ids is not None and task_ids.shape != token_loss.shape[:1]:
        raise ValueError(f"task_ids must be [batch] = [{token_loss.shape[0]}], got shape {tuple(task_ids.shape)}")


def _upcast(token_loss: torch.Tensor) -> torch.Tensor:
    # Half-precision sums (and token counts above 256 in bf16) are inexact; [B, T] is cheap to copy.
    return token_loss.float() if token_loss.dtype in (torch.float16, torch.bfloat16) else token_loss


def _masked_mean(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where(), not l * m: a non-finite value at a padded position must not leak into the loss.
    # An all-padding batch gives 0 (with a graph), not the NaN of CrossEntropyLoss's mean.
    return torch.where(mask, _upcast(token_loss), 0.0).sum() / mask.sum().clamp_min(1)


def reduce_token_loss(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    task_ids: torch.Tensor | None = None,
    weighter: Weighter | None = None,
) -> torch.Tensor:
    """Reduce per-token losses [B, T] to a scalar: the mean over `mask`, or the weighter's weighted loss."""
    _check_batch(token_loss, mask, task_ids)
    mask = mask if mask.dtype == torch.bool else mask != 0
    if weighter is None or task_ids is None:
        return _masked_mean(token_loss, mask)
    return weighter.loss(token_loss, mask, task_ids)


def validate_static_weights(
    weights: Sequence[float], num_tasks: int, task_names: Sequence[str] | None = None
) -> list[float]:
    """Check static (VisATB) weights: one per task, finite, >= 0, positive sum; return them as floats."""
    if isinstance(weights, str | bytes):
        raise ValueError(f"static weights must be a list of numbers, got the string {weights!r}")
    values = list(weights)
    if len(values) != num_tasks:
        raise ValueError(f"got {len(values)} static weight(s) {values} for {num_tasks} task(s)")
    out = []
    for k, value in enumerate(values):
        label = f"{k} ({task_names[k]})" if task_names is not None else str(k)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"static weight {label} is {value!r}, not a number") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"static weight {label} is {value!r}; weights must be finite and >= 0")
        out.append(number)
    if sum(out) <= 0:
        raise ValueError(f"static weights {values} sum to 0; at least one task needs a positive weight")
    return out


def _scaled_softmax(logits: Sequence[float]) -> list[float]:
    """N * softmax(logits), in plain Python (N is small; the result is shared by all ranks)."""
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [len(exps) * e / total for e in exps]


class Weighter:
    """Base class: reduces per-token losses with the current task weights and tracks per-task losses.

    `weights` are static per-task weights (VisATB); the effective weight of a task is the method's
    dynamic weight times its static weight.
    """

    name = "base"
    task_balanced = False  # True: mean per task, then a weighted sum of those means over the weights
    history_size = 1  # steps of per-task losses the method looks back on

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, weights: Sequence[float] | None = None
    ) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = num_tasks
        if task_names is None:
            self.task_names = [f"task{k}" for k in range(num_tasks)]
        else:
            self.task_names = [str(t) for t in task_names]
            if len(self.task_names) != num_tasks:
                raise ValueError(f"got {len(self.task_names)} task name(s) {self.task_names} for {num_tasks} task(s)")
        self.static_weights = None if weights is None else validate_static_weights(weights, num_tasks, self.task_names)
        self.num_steps = 0
        # One entry per step: per-task mean losses, None for a task not seen yet.
        self.loss_history: deque[list[float | None]] = deque(maxlen=self.history_size)
        self._last_loss: list[float | None] = [None] * num_tasks
        self._step_stats: torch.Tensor | None = None  # [2, N]: loss sums, token counts since the last step
        self._stats_device: torch.device | None = None
        self._log_sum = [0.0] * num_tasks
        self._log_steps = [0] * num_tasks
        self._set_dynamic_weights(self._initial_weights())

    # -- the interface used by the model and the trainer -----------------------------------------

    def loss(self, token_loss: torch.Tensor, mask: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Weighted loss of one micro-batch with the current weights; records its per-task statistics.

        Statistics are recorded only when autograd is on, so evaluation under no_grad leaves them alone.
        """
        _check_batch(token_loss, mask, task_ids)
        mask = mask if mask.dtype == torch.bool else mask != 0
        token_loss = _upcast(token_loss)
        task_ids = task_ids.to(device=token_loss.device, dtype=torch.long)
        sample_loss = torch.where(mask, token_loss, 0.0).sum(dim=1)
        sample_tokens = mask.sum(dim=1, dtype=token_loss.dtype)
        task_loss = token_loss.new_zeros(self.num_tasks).index_add(0, task_ids, sample_loss)
        task_tokens = token_loss.new_zeros(self.num_tasks).index_add(0, task_ids, sample_tokens)
        if torch.is_grad_enabled():
            self._record(task_loss.detach(), task_tokens)
        weights = self._weight_tensor(token_loss.device, token_loss.dtype)
        tiny = torch.finfo(token_loss.dtype).tiny
        if self.task_balanced:
            # An absent task's mean is 0 (task_loss is 0 there); whether its weight stays in the
            # denominator is the method's choice (`_task_balance_weights`).
            task_mean = task_loss / task_tokens.clamp_min(1)
            denominator_weights = self._task_balance_weights(weights, task_tokens)
            return (weights * task_mean).sum() / denominator_weights.sum().clamp_min(tiny)
        # sum_b sum_t w_k(b) l m == sum_k w_k * (task k's loss sum), so [N] vectors suffice.
        return (weights * task_loss).sum() / (weights * task_tokens).sum().clamp_min(tiny)

    def step(self, global_step: int) -> None:
        """Close one optimizer step: all-reduce its statistics, extend the history, update the weights.

        Call on every rank after every optimizer step (a collective under torch.distributed).
        """
        stats = self._step_stats
        self._step_stats = None
        if stats is None:
            stats = torch.zeros(2, self.num_tasks, dtype=torch.float64, device=self._collective_device())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        loss_sums, token_counts = stats.tolist()
        for k in range(self.num_tasks):
            if token_counts[k] > 0:
                mean = loss_sums[k] / token_counts[k]
                self._last_loss[k] = mean
                self._log_sum[k] += mean
                self._log_steps[k] += 1
        self.loss_history.append(list(self._last_loss))
        self.num_steps += 1
        self._set_dynamic_weights(self._next_weights(global_step))

    def current_weights(self) -> list[float]:
        """The effective per-task weights the next `loss` call uses (dynamic times static)."""
        return list(self._weights)

    def log_stats(self) -> dict[str, float]:
        """Per-task mean loss over the steps since the last call (seen tasks only) and current weights."""
        stats: dict[str, float] = {}
        for k, task in enumerate(self.task_names):
            if self._log_steps[k]:
                stats[f"loss_{task}"] = self._log_sum[k] / self._log_steps[k]
        for task, weight in zip(self.task_names, self._weights):
            stats[f"weight_{task}"] = weight
        self._log_sum = [0.0] * self.num_tasks
        self._log_steps = [0] * self.num_tasks
        return stats

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, so a resumed run continues with the same history and weights."""
        return {
            "method": self.name,
            "task_names": list(self.task_names),
            "num_steps": self.num_steps,
            "loss_history": [list(entry) for entry in self.loss_history],
            "last_loss": list(self._last_loss),
            "dynamic_weights": list(self._dynamic),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output saved by the same method over the same tasks."""
        if state.get("method") != self.name or state.get("task_names") != self.task_names:
            raise ValueError(
                f"weighter state is for method {state.get('method')!r} with tasks {state.get('task_names')}, "
                f"not {self.name!r} with tasks {self.task_names}"
            )
        self.num_steps = int(state["num_steps"])
        self.loss_history = deque((list(e) for e in state["loss_history"]), maxlen=self.history_size)
        self._last_loss = list(state["last_loss"])
        self._set_dynamic_weights(list(state["dynamic_weights"]))

    # -- what a method defines ----------------------------------------------------------------------

    def _initial_weights(self) -> list[float]:
        return [1.0] * self.num_tasks

    def _task_balance_weights(self, weights: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        """The weights summed in a task-balanced loss's denominator (all N tasks by default)."""
        return weights

    def _next_weights(self, global_step: int) -> list[float]:
        """Dynamic weights for the step after `global_step`, from `loss_history` (newest last)."""
        return [1.0] * self.num_tasks

    # -- internals ------------------------------------------------------------------------------------

    def _set_dynamic_weights(self, dynamic: list[float]) -> None:
        self._dynamic = [float(w) for w in dynamic]
        static = self.static_weights or [1.0] * self.num_tasks
        weights = [d * s for d, s in zip(self._dynamic, static)]
        # Static methods keep their weights: keep the device tensor too, so no host-to-device copy stalls
        # the next forward pass.
        if weights != getattr(self, "_weights", None):
            self._weights = weights
            self._weight_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _weight_tensor(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._weight_cache:
            self._weight_cache[key] = torch.tensor(self._weights, device=device, dtype=dtype)
        return self._weight_cache[key]

    def _record(self, task_loss: torch.Tensor, task_tokens: torch.Tensor) -> None:
        stats = torch.stack([task_loss, task_tokens]).to(torch.float64)
        self._stats_device = stats.device
        if self._step_stats is None:
            self._step_stats = stats
        else:
            self._step_stats += stats

    def _collective_device(self) -> torch.device:
        # A rank that saw no batch this step still joins the all-reduce, on a device its backend takes.
        if self._stats_device is not None:
            return self._stats_device
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


class EqualWeighting(Weighter):
    """EW: all weights 1, token balancing (plain LLaVA); with static weights, VisATB."""

    name = "EW"


EWTB_DENOMINATORS = ("all", "present")


class TaskBalancedWeighting(Weighter):
    """EWTB / TLA: mean token loss L_k per task, then sum_k w_k L_k / sum_k w_k.

    `denominator="all"` (the release's, and the default) sums the weights of all N tasks: a task absent
    from the micro-batch adds no loss but keeps its weight below the line. `"present"` sums only the
    weights of the tasks that have target tokens in the micro-batch (a weighted mean over those tasks).
    """

    name = "EWTB"
    task_balanced = True

    def __init__(
        self,
        num_tasks: int,
        task_names: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        denominator: str = "all",
    ) -> None:
        if denominator not in EWTB_DENOMINATORS:
            raise ValueError(
                f"EWTB denominator must be one of {', '.join(EWTB_DENOMINATORS)}, not {denominator!r}"
            )
        self.denominator = denominator
        super().__init__(num_tasks, task_names, weights)

    def _task_balance_weights(self, weights: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        if self.denominator == "present":
            return torch.where(task_tokens > 0, weights, 0.0)
        return weights


class RandomLossWeighting(Weighter):
    """RLW: every step w = N * softmax(z), z ~ N(0, I), drawn with seed + global_step on every rank."""

    name = "RLW"

    def __init__(
        self,
        num_tasks: int,
        task_names: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        self.seed = int(seed)
        super().__init__(num_tasks, task_names, weights)

    def _draw(self, global_step: int) -> list[float]:
        # Same seed on every rank: identical weights without communication, reproducible on resume.
        generator = torch.Generator().manual_seed(self.seed + int(global_step))
        z = torch.randn(self.num_tasks, generator=generator, dtype=torch.float64)
        return _scaled_softmax(z.tolist())

    def _initial_weights(self) -> list[float]:
        return self._draw(0)

    def _next_weights(self, global_step: int) -> list[float]:
        return self._draw(global_step)


class DynamicWeightAverage(Weighter):
    """DWA: r_k = mean(last `window` losses) / mean(the `window` before), w = N * softmax(r / T).

    As in the release, the 2*window buffer starts filled with 1.0, so until 2*window steps exist the
    older window is partly 1.0; DWA switches on once more than `window` steps have run.
    """

    name = "DWA"

    def __init__(
        self,
        num_tasks: int,
        task_names: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        window: int = 25,
        temperature: float = 2.0,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"DWA window must be a positive integer, got {window!r}")
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"DWA temperature must be a positive number, got {temperature!r}")
        self.window = window
        self.temperature = float(temperature)
        self.history_size = 2 * window
        super().__init__(num_tasks, task_names, weights)

    def _next_weights(self, global_step: int) -> list[float]:
        if self.num_steps <= self.window:
            return [1.0] * self.num_tasks
        missing = self.history_size - len(self.loss_history)
        buffer = [[None] * self.num_tasks] * missing + list(self.loss_history)
        older, newer = buffer[: self.window], buffer[self.window :]
        logits = []
        for k in range(self.num_tasks):
            older_mean = sum(1.0 if e[k] is None else e[k] for e in older) / self.window
            newer_mean = sum(1.0 if e[k] is None else e[k] for e in newer) / self.window
            ratio = newer_mean / older_mean if older_mean > 0 else 1.0
            logits.append(ratio / self.temperature)
        return _scaled_softmax(logits)


class ImprovableGapBalancing(Weighter):
    """IGB v1: base_k = mean loss over steps window..2*window-1; then w = N * softmax(L_k / base_k).

    L_k is the task's latest step loss; a task without a base or a loss gets the neutral ratio 1.
    """

    name = "IGB"

    def __init__(
        self,
        num_tasks: int,
        task_names: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        window: int = 100,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"IGB window must be a positive integer, got {window!r}")
        self.window = window
        self.history_size = window  # after step 2*window-1 the history is exactly the base window
        self.base_losses: list[float | None] | None = None
        super().__init__(num_tasks, task_names, weights)

    def _next_weights(self, global_step: int) -> list[float]:
        if self.base_losses is None and self.num_steps == 2 * self.window:
            self.base_losses = []
            for k in range(self.num_tasks):
                seen = [e[k] for e in self.loss_history if e[k] is not None]
                self.base_losses.append(sum(seen) / len(seen) if seen else None)
        if self.base_losses is None:
            return [1.0] * self.num_tasks
        ratios = []
        for latest, base in zip(self._last_loss, self.base_losses):
            ratios.append(latest / base if latest is not None and base is not None and base > 0 else 1.0)
        return _scaled_softmax(ratios)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "base_losses": self.base_losses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base_losses = state.get("base_losses")


WEIGHT_METHODS: dict[str, type[Weighter]] = {
    "EW": EqualWeighting,
    "EWTB": TaskBalancedWeighting,
    "TLA": TaskBalancedWeighting,
    "RLW": RandomLossWeighting,
    "DWA": DynamicWeightAverage,
    "IGB": ImprovableGapBalancing,
}


def build_weighter(
    name: str,
    num_tasks: int,
    task_names: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    **hyperparameters: Any,
) -> Weighter:
    """Build a weighter by method name (case-insensitive); `seed` reaches the methods that draw weights."""
    by_upper = {key.upper(): cls for key, cls in WEIGHT_METHODS.items()}
    cls = by_upper.get(str(name).upper())
    if cls is None:
        raise ValueError(f"unknown weight method {name!r}; known methods: {', '.join(WEIGHT_METHODS)}")
    accepted = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_tasks", "task_names", "weights")
    ]
    if "seed" in accepted:
        hyperparameters["seed"] = seed
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "none"
        raise ValueError(f"weight method {cls.name} has no hyperparameter {', '.join(unknown)} (it takes: {takes})")
    return cls(num_tasks, task_names=task_names, weights=weights, **hyperparameters)
