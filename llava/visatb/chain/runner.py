"""The chain's stage loop: `Pipeline` runs the stages of one configuration in order, skipping what is marked done.

A stage's items come from llava/visatb/chain/stages.py; they run through the local executor
(llava/visatb/chain/executors.py) or, with Slurm settings, as Slurm jobs (llava/visatb/chain/slurm.py). A failed
command stops the chain with the stage, the item and the log named; a rerun resumes where it stopped.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import IO

from llava.utils import atomic_write_json, load_json
from llava.visatb.chain.config import PipelineConfig, PipelineError
from llava.visatb.chain.costs import COSTS_KEY, record_costs, weight_model_keys
from llava.visatb.chain.slurm import SlurmExecutor, SlurmSettings
from llava.visatb.chain.stages import Item, StageBuilders
from llava.visatb.scores import START


class Pipeline(StageBuilders, SlurmExecutor):
    """Runs the stages of one configuration, skipping what is marked done."""

    def __init__(self, cfg: PipelineConfig, python: str = sys.executable, out: IO[str] | None = None,
                 slurm_settings: SlurmSettings | None = None):  # fmt: skip
        super().__init__(cfg)
        self.slurm = slurm_settings  # None: items run here as subprocesses; else each one is a Slurm job
        self.python = python
        self.out = sys.stdout if out is None else out  # the stdout of the time of the run, not of the import
        self.skipped_items = 0
        self.ran_items = 0

    def _check_start_scores(self) -> None:
        """The chat form computes contributions against the starting model: without --start-model its scores
        must already be in scores.json, checked before any training rather than at the weights stage."""
        cfg = self.cfg
        if cfg.start_model or "weights" not in cfg.stages or START not in weight_model_keys(cfg):
            return
        absent = self._missing_extra_scores().get(START)
        if absent:
            raise PipelineError(
                f"--form {cfg.form} measures contributions against the starting model, and {self.scores_file} has "
                f"no '{START}' score on {', '.join(absent)}: pass --start-model (START_MODEL= in "
                "run_visatb.sh) so that the chain scores it, or record those scores first (the eval scripts' "
                f"--scores FILE --model-key {START} --task NAME)"
            )

    def run(self) -> None:
        """Run every stage in order; finished stages and items are skipped."""
        self._check_start_scores()
        self.work.mkdir(parents=True, exist_ok=True)
        self._record_config()
        stages = self.cfg.stages
        builders: dict[str, Callable[[], tuple[str, list[Item], int]]] = {
            "subsets": self._subsets_items,
            "train": lambda: self._train_items(self.cfg.prep_keys, final=False),
            "infer": lambda: self._infer_items(self._prep_eval_keys()),
            "score": lambda: self._score_items(self._prep_eval_keys()),
            "weights": self._weights_items,
            "final-train": lambda: self._train_items(self.cfg.final_keys, final=True),
            "final-infer": lambda: self._infer_items(self.cfg.final_keys),
            "final-score": lambda: self._score_items(self.cfg.final_keys),
            "report": self._report_items,
        }
        start = time.monotonic()
        for index, stage in enumerate(stages, 1):
            prefix = f"[stage {index}/{len(stages)}] {stage}"
            if stage == "report" and self.ran_items:
                self.marker(stage).unlink(missing_ok=True)  # something it reads changed in this run
                shutil.rmtree(self.done_dir / stage, ignore_errors=True)
            if self.is_done(stage):
                title, items, jobs = builders[stage]()
                if not self.stage_needs_run(stage, items):
                    self.say(f"{prefix}: done earlier, skipped")
                    self.skipped_items += 1
                    continue
                self.say(f"{prefix}: done earlier; new item(s) for this configuration")
            else:
                title, items, jobs = builders[stage]()
            self.say(f"{prefix}: {title}")
            stage_start = time.monotonic()
            self._run_items(stage, prefix, items, jobs)
            self._after_stage(stage)
            atomic_write_json(self.marker(stage), {"stage": stage, "items": [i.key for i in items],
                                                   "seconds": round(time.monotonic() - stage_start, 1)})  # fmt: skip
            self._record_costs()
            self.say(f"{prefix}: finished in {time.monotonic() - stage_start:.1f} s")
        self.say(f"[visatb] chain complete in {time.monotonic() - start:.1f} s ({self.ran_items} command(s) run, "
                 f"{self.skipped_items} finished stage(s)/item(s) reused); work directory {self.work}")  # fmt: skip

    def _record_config(self) -> None:
        path = self.work / "pipeline.json"
        current = self.cfg.to_json()
        if path.is_file():
            previous = load_json(path)
            if COSTS_KEY in previous:  # kept: a rerun that runs nothing must not lose them
                current[COSTS_KEY] = previous[COSTS_KEY]
            changed = sorted(k for k in set(previous) | set(current)
                             if k != COSTS_KEY and previous.get(k) != current.get(k))  # fmt: skip
            if changed:
                self.say(f"[visatb] note: the configuration changed since the last run ({', '.join(changed)}); "
                         "finished stages are reused: pass --redo STAGE to recompute from a stage on")  # fmt: skip
        atomic_write_json(path, current)

    def _run_items(self, stage: str, prefix: str, items: list[Item], jobs: int) -> None:
        pending = []
        for item in items:
            if self.is_done(stage, item.key):
                self.skipped_items += 1
            else:
                pending.append(item)
        if len(pending) < len(items):
            self.say(f"  {len(items) - len(pending)} of {len(items)} item(s) done earlier, skipped")
        total = len(pending)
        if not total:
            return
        # Largest first: with more items than parallel slots, a large item started last runs alone at the end
        # while the other slots idle (on the toy, one task-plus-mini model is about a third of its stage's work).
        # Stable, so items of one size keep their order; no item's result depends on when it runs.
        pending.sort(key=lambda item: -item.size)
        if self.slurm is not None:
            self._run_items_slurm(stage, prefix, pending, jobs)
            return
        self._run_items_local(stage, prefix, pending, jobs)

    def _record_costs(self) -> None:
        record_costs(self.cfg, self.done_dir, self.work / "pipeline.json")

    def _after_stage(self, stage: str) -> None:
        if stage == "weights":
            lines = self.weights_report.read_text(encoding="utf-8").splitlines()
            self.say("\n".join("  " + line for line in lines if line.strip()))
        if stage == "report":
            self.say(self.report_file.read_text(encoding="utf-8"))
            log = (self.log_dir / stage / "report.log").read_text(encoding="utf-8")
            for line in log.splitlines():
                if line.startswith("WARNING"):
                    self.say(line)
