"""The paper's settings: C_out, C_in and D from the paper and its reference release, per preset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llava.visatb.tasks import ACADEMIC, CHAT
from llava.visatb.weights.weights import (
    DEFAULT_ALPHA,
    DEFAULT_TEMPERATURE,
    VisatbWeights,
    weights_from_measures,
)


@dataclass(frozen=True)
class PaperSetting:
    """C_out, C_in and the release's ratio V_i(mini)/V_i(i+mini) (= 1 - D) over a preset's scored tasks."""

    name: str
    title: str
    tasks: tuple[str, ...]
    unscored: tuple[str, ...]
    out_contribution: tuple[float, ...]
    in_contribution: tuple[float, ...]
    mini_ratio: tuple[float, ...]

    @property
    def difficulty(self) -> list[float]:
        return [1.0 - r for r in self.mini_ratio]

    def weights(
        self, temperature: float | str = DEFAULT_TEMPERATURE, alpha: Sequence[float] = DEFAULT_ALPHA
    ) -> VisatbWeights:
        scored = [t for t in self.tasks if t not in self.unscored]
        measures = (self.out_contribution, self.in_contribution, self.difficulty)
        result = weights_from_measures(*measures, scored, self.tasks, temperature, alpha=alpha)
        result.task_order = f"the paper's {self.name} order"
        return result


PAPER_SETTINGS: dict[str, PaperSetting] = {
    s.name: s
    for s in (
        PaperSetting(
            name="academic-7b",
            title="Academic benchmark, Vicuna-7B",
            tasks=ACADEMIC.tasks,
            unscored=ACADEMIC.unscored,
            out_contribution=(0.1637, 0.1903, 0.1952, 0.1433, 0.0768, 0.1316, 0.1582),
            in_contribution=(0.1634, 0.2179, 0.1326, 0.1775, 0.1674, 0.0783, 0.1219),
            mini_ratio=(0.7597, 0.5313, 0.8852, 0.7979, 0.5511, 0.8680, 0.1904),
        ),
        PaperSetting(
            name="academic-13b",
            title="Academic benchmark, Vicuna-13B",
            tasks=ACADEMIC.tasks,
            unscored=ACADEMIC.unscored,
            out_contribution=(0.1885, 0.2192, 0.1561, 0.1390, 0.0409, 0.1519, 0.1248),
            in_contribution=(0.0551, 0.2067, 0.1497, 0.2181, 0.1392, 0.0702, 0.1813),
            mini_ratio=(0.6814, 0.5744, 0.8916, 0.8065, 0.5705, 0.8715, 0.1247),
        ),
        PaperSetting(
            name="chat",
            title="Chat benchmark (LLaVA-Instruct), Vicuna-7B",
            tasks=CHAT.tasks,
            unscored=CHAT.unscored,
            out_contribution=(0.7601, 0.3496, 1.6727),
            in_contribution=(1.2890, 0.9779, 0.5156),
            mini_ratio=(0.8636, 0.3534, 0.9593),
        ),
    )
}


def get_paper_setting(name: str) -> PaperSetting:
    """A paper setting by name; an unknown name lists the known ones."""
    try:
        return PAPER_SETTINGS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown paper setting {name!r}; known settings: {', '.join(PAPER_SETTINGS)}"
        ) from None
