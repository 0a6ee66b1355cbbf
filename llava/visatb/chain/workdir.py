"""Where a chain writes: the work directory's paths and the done-markers that let a rerun skip finished work.

    WORK_DIR/subsets/                 mini and task-plus-mini files (subsets/review/: the gpt_review tasks' files)
    WORK_DIR/checkpoints/llava-<run>-<model>/
    WORK_DIR/answers/<model>/         every model's answers to every validation set
    WORK_DIR/reviews/<model>/<task>.jsonl   the judge's reviews (gpt_review tasks), kept by --redo
    WORK_DIR/scores.json, weights.json, heatmap.png, weights.txt, report.md, pipeline.json
    WORK_DIR/logs/<stage>/<item>.log  each command's output
    WORK_DIR/.done/<stage>.json, .done/<stage>/<item>.json   markers, written only after success, each with the
                                      item's record (parameters, input digests; llava/visatb/chain/records.py)
    WORK_DIR/.started/<stage>/<item>.json   the record of an item started and not yet finished
    WORK_DIR/.lock                    the running chain's pid and host (llava/visatb/chain/lock.py)
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava.utils import load_json
from llava.visatb.chain.config import METHODS, REPO_ROOT, PipelineConfig
from llava.visatb.scores import ALONE_PREFIX, MINI, MINI_ALONE_PREFIX, START, VISATB

if TYPE_CHECKING:
    from llava.visatb.chain.stages import Item


def safe_name(name: str) -> str:
    """A model key or item name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def model_slug(key: str) -> str:
    """Folder-name part of a model key: `mini`, `<task>-plus-mini`, `<task>-alone`, `<task>-mini-alone`, `visatb`,
    `ew`, `tla`, ..., and `visatb-alpha_1_0_0` for an ablation row `VisATB[alpha=1:0:0]`."""
    if key == MINI:
        return MINI
    if key in METHODS:
        return key.lower()
    if key.startswith(VISATB + "["):
        return "visatb-" + safe_name(key[len(VISATB) + 1 : -1]).strip("_")
    if key.startswith(MINI_ALONE_PREFIX):
        return f"{safe_name(key[len(MINI_ALONE_PREFIX):])}-mini-alone"
    if key.startswith(ALONE_PREFIX):
        return f"{safe_name(key[len(ALONE_PREFIX):])}-alone"
    return f"{safe_name(key)}-plus-mini"


class WorkDir:
    """The paths and markers of one configuration's work directory."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.work = cfg.work_dir
        self.done_dir = self.work / ".done"
        self.log_dir = self.work / "logs"
        self.slurm_dir = self.work / "slurm"
        self.subsets_dir = self.work / "subsets"
        self.review_dir = self.subsets_dir / "review"  # the gpt_review tasks' validation files
        self.reviews_dir = self.work / "reviews"  # the judge's reviews, kept by --redo (reused while unchanged)
        self.scores_file = self.work / "scores.json"
        self.weights_file = self.work / "weights.json"
        self.plot_file = self.work / "heatmap.png"
        self.weights_report = self.work / "weights.txt"
        self.report_file = self.work / "report.md"

    def model_dir(self, key: str) -> Path:
        return self.work / "checkpoints" / f"llava-{self.cfg.run_name}-{model_slug(key)}"

    def model_path_and_base(self, key: str) -> tuple[str, str | None]:
        if key == START:
            return str(self.cfg.start_model), self.cfg.start_model_base
        return str(self.model_dir(key)), None

    def answers_dir(self, key: str) -> Path:
        return self.work / "answers" / safe_name(key)

    def answers_file(self, key: str, task: str) -> Path:
        from llava.answers.validation_answers import answers_path
        from llava.mm_utils import get_model_name_from_path

        model_path, _ = self.model_path_and_base(key)
        return answers_path(self.answers_dir(key), self.val_file(task), get_model_name_from_path(model_path))

    def subsets_manifest(self) -> dict[str, Any]:
        return load_json(self.subsets_dir / "subsets.json")

    def val_file(self, task: str) -> str:
        if task in self.cfg.judged_tasks:
            from llava.visatb.metrics.review_set import val_file_path

            return str(val_file_path(self.review_dir, task))
        if self.cfg.val_per_task:
            return self.subsets_manifest()["val"][task]["path"]
        return self.cfg.val_files[task]

    def entire_data(self) -> str:
        """The final training set: the whole data file, or what is left of it after carving validation sets."""
        if self.cfg.val_per_task:
            return self.subsets_manifest()["train"]["path"]
        return str(self.cfg.data)

    def reviews_file(self, key: str, task: str) -> Path:
        return self.reviews_dir / safe_name(key) / f"{safe_name(task)}.jsonl"

    def eval_script(self, metric: str) -> str:
        return str(REPO_ROOT / "eval" / f"{metric}.py")

    def marker(self, stage: str, item: str | None = None) -> Path:
        if item is None:
            return self.done_dir / f"{stage}.json"
        return self.done_dir / stage / f"{safe_name(item)}.json"

    def is_done(self, stage: str, item: str | None = None) -> bool:
        return self.marker(stage, item).is_file()

    def started_marker(self, stage: str, item: str) -> Path:
        return self.work / ".started" / stage / f"{safe_name(item)}.json"

    def stage_needs_run(self, stage: str, items: Sequence[Item]) -> bool:
        """Whether a stage must run: not marked done, or done for fewer items than this configuration has
        (STL models, more methods or ablation rows added to a finished chain). Done items inside it are skipped."""
        if not self.is_done(stage):
            return True
        done = load_json(self.marker(stage)).get("items")
        return not isinstance(done, list) or not {i.key for i in items} <= set(done)

    def redo(self, stage: str) -> None:
        """Forget `stage` (its markers, earlier Slurm jobs and outputs) so that it runs again. Later stages are not
        touched: their items are redone by their records only where what they read changes (a rescoring that
        gives the same scores keeps the weights and the final models)."""
        stages = self.cfg.stages
        if stage not in stages:
            raise ValueError(f"--redo {stage!r}: unknown stage; stages of this run: {', '.join(stages)}")
        self.marker(stage).unlink(missing_ok=True)
        shutil.rmtree(self.done_dir / stage, ignore_errors=True)
        shutil.rmtree(self.work / ".started" / stage, ignore_errors=True)
        shutil.rmtree(self.slurm_dir / stage, ignore_errors=True)  # earlier jobs' results must not be taken
        for path in self._stage_outputs(stage):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _stage_outputs(self, stage: str) -> list[Path]:
        keys = {"train": self.cfg.prep_keys, "final-train": self.cfg.final_keys}
        if stage in keys:
            return [self.model_dir(k) for k in keys[stage]]
        if stage == "infer":
            return [self.answers_dir(k) for k in self._prep_eval_keys()]
        if stage == "final-infer":
            return [self.answers_dir(k) for k in self.cfg.final_keys]
        if stage == "weights":
            return [self.weights_file, self.plot_file, self.weights_report, self.work / "weights"]
        if stage == "report":
            return [self.report_file, self.report_file.with_suffix(".html"),
                    *(self.comparison_file.with_suffix(x) for x in (".json", ".md", ".png"))]
        if stage == "subsets":
            return [self.subsets_dir]
        return []

    def _prep_eval_keys(self) -> list[str]:
        return ([START] if self.cfg.start_model else []) + self.cfg.prep_keys

    def ablation_weights_file(self, key: str) -> Path:
        return self.work / "weights" / f"{model_slug(key)}.json"

    def item_log(self, stage: str, item: Item) -> Path:
        return self.log_dir / stage / f"{safe_name(item.key)}.log"

    @property
    def comparison_file(self) -> Path:
        return self.work / "comparison.json"
