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
from typing import IO, Any

from llava.utils import atomic_write_json, load_json
from llava.visatb.chain.config import REPO_ROOT, PipelineConfig, PipelineError
from llava.visatb.chain.costs import COSTS_KEY, record_costs, weight_model_keys
from llava.visatb.chain.lock import LockHeld, WorkDirLock
from llava.visatb.chain.records import (
    HASH_CACHE_NAME,
    ITEM_PREFIX,
    VALUE_PREFIX,
    FileHasher,
    Record,
    command_params,
    portable,
    record_changes,
    with_real_paths,
)
from llava.visatb.chain.slurm import JobFiles, SlurmExecutor, SlurmSettings
from llava.visatb.chain.stages import Item, StageBuilders
from llava.visatb.chain.workdir import safe_name
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
        self.hasher = FileHasher(self.done_dir / HASH_CACHE_NAME)

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
        """Run every stage in order, holding the work directory's lock; items whose record is unchanged are
        skipped, items whose inputs or parameters changed are redone (or, with strict reuse, refused)."""
        self._check_start_scores()
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            with WorkDirLock(self.work, self.say):
                self._run_stages()
        except LockHeld as e:
            raise PipelineError(str(e)) from None
        finally:
            self.hasher.save()

    def _run_stages(self) -> None:
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
            title, items, jobs = builders[stage]()
            plan = self._plan_items(stage, items)
            if self.is_done(stage):
                if not plan["pending"]:
                    self.say(f"{prefix}: done earlier, skipped")
                    self.skipped_items += 1
                    continue
                changed = len(plan["changed"])
                self.say(f"{prefix}: done earlier; " + (f"{changed} item(s) to redo, their inputs changed" if changed
                                                        else "new item(s) for this configuration"))  # fmt: skip
            self.say(f"{prefix}: {title}")
            stage_start = time.monotonic()
            self._run_items(stage, prefix, items, jobs, plan)
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
                         "every item it reaches is redone and says why, the others are reused")  # fmt: skip
        atomic_write_json(path, current)

    # -- item records ----------------------------------------------------------------------------

    def _input_digest(self, value: str) -> str:
        if value.startswith(VALUE_PREFIX):
            return value
        if value.startswith(ITEM_PREFIX):
            stage, key = value[len(ITEM_PREFIX) :].split("/", 1)
            marker = self.marker(stage, key)
            made = load_json(marker).get("made") if marker.is_file() else None
            return f"run:{made}" if made else "absent"
        return self.hasher.path(value)

    def item_recipe(self, item: Item) -> Record:
        """What the item is made from now: its command (interpreter and checkout left out), its own environment
        variables and the digest of each input."""
        roots = with_real_paths({str(REPO_ROOT): "", str(self.work): "$WORK_DIR"})
        params = {"command": command_params(item.command, self.python, REPO_ROOT, roots),
                  "env": {k: portable(v, roots) for k, v in item.env.items()}}  # fmt: skip
        return Record(params, {name: self._input_digest(value) for name, value in item.inputs.items()})

    def _plan_items(self, stage: str, items: list[Item]) -> dict[str, Any]:
        """Which items run: those never finished, and those whose record differs from their marker's (with the
        reasons); an unfinished earlier attempt made from other inputs is set aside too, not resumed."""
        pending: list[Item] = []
        changed: list[tuple[Item, list[str]]] = []
        legacy = 0
        stage_done = load_json(self.marker(stage)).get("items") if self.is_done(stage) else None
        for item in items:
            item.recipe = self.item_recipe(item)
            marker = self.marker(stage, item.key)
            if not marker.is_file() and isinstance(stage_done, list) and item.key in stage_done:
                legacy += 1  # finished in a stage marked done as a whole, before items kept records
                continue
            if marker.is_file():
                done = load_json(marker)
                if "recipe" not in done:
                    legacy += 1  # made before items kept records: nothing to compare with
                    continue
                reasons = record_changes(done["recipe"], item.recipe, self._input_labels(item))
                if not reasons:
                    continue
                changed.append((item, reasons))
            else:
                started = self.started_marker(stage, item.key)
                if started.is_file():
                    reasons = record_changes(load_json(started).get("recipe"), item.recipe, self._input_labels(item))
                    if reasons:
                        changed.append((item, ["an unfinished earlier run of it had other inputs: " + reasons[0],
                                               *reasons[1:]]))  # fmt: skip
            pending.append(item)
        return {"pending": pending, "changed": changed, "legacy": legacy}

    def _input_labels(self, item: Item) -> dict[str, str]:
        labels = {}
        for name, value in item.inputs.items():
            if value.startswith(ITEM_PREFIX):
                labels[name] = f"{name} (remade by {value[len(ITEM_PREFIX):]})"
            elif not value.startswith(VALUE_PREFIX):
                labels[name] = f"{name} {value}"
        return labels

    def _set_aside(self, stage: str, item: Item) -> None:
        """Before redoing an item: forget its marker and earlier Slurm job, keep a trained model under another
        name (nothing trained is deleted unasked), remove answers and other files it would otherwise reuse."""
        self.marker(stage, item.key).unlink(missing_ok=True)
        self.marker(stage).unlink(missing_ok=True)
        JobFiles.of(self.slurm_dir / stage, safe_name(item.key)).remove()
        for path in item.stale:
            if not path.exists():
                continue
            if stage in TRAIN_STAGES and path.is_dir():
                stamp = time.strftime("%Y%m%d-%H%M%S")
                kept = path.with_name(f"{path.name}.replaced-{stamp}")
                number = 1
                while kept.exists():  # replaced twice within a second
                    number += 1
                    kept = path.with_name(f"{path.name}.replaced-{stamp}-{number}")
                path.rename(kept)
                self.say(f"    the previous {path.name} is kept as {kept} (delete it when no longer needed)")
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _run_items(self, stage: str, prefix: str, items: list[Item], jobs: int,
                   plan: dict[str, Any] | None = None) -> None:  # fmt: skip
        plan = plan or self._plan_items(stage, items)
        pending, changed = plan["pending"], plan["changed"]
        if changed and self.cfg.strict_reuse:
            listed = "; ".join(f"{item.key}: {', '.join(reasons)}" for item, reasons in changed)
            raise PipelineError(f"{prefix}: {len(changed)} finished item(s) are out of date and --strict-reuse "
                                f"refuses to redo them: {listed}. Rerun without --strict-reuse (STRICT_REUSE=0) "
                                "to redo them, or restore their inputs")  # fmt: skip
        self.skipped_items += len(items) - len(pending)
        if len(pending) < len(items):
            self.say(f"  {len(items) - len(pending)} of {len(items)} item(s) done earlier, skipped")
        if plan["legacy"]:
            self.say(f"  {plan['legacy']} of them made before items kept records of their inputs: reused as they are "
                     f"(--redo {stage} recomputes them)")  # fmt: skip
        for item, reasons in changed:
            self.say(f"  redo {item.key}: {'; '.join(reasons)}")
            self._set_aside(stage, item)
        total = len(pending)
        if not total:
            return
        for item in pending:
            started = self.started_marker(stage, item.key)
            started.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(started, {"item": item.key, "recipe": item.recipe.to_json() if item.recipe else None})
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


TRAIN_STAGES = ("train", "final-train")

