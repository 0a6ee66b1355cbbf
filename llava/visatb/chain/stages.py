"""The chain's stages as work items: for each stage, the commands that produce its outputs.

Each builder returns (title, items, parallel jobs). An item is one command (`python -m llava.visatb.subsets`, the
finetune script, `inference_visatb.py`, `eval/*.py`, `weighting_visatb.py`, `python -m
llava.visatb.results.report`), its environment, the outputs that prove it finished, and what to read from its
log. The builders only describe work; llava/visatb/chain/runner.py runs it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava.utils import load_json
from llava.visatb.chain.config import METHODS, REPO_ROOT, PipelineError
from llava.visatb.chain.costs import weight_model_keys
from llava.visatb.chain.records import ITEM_PREFIX, VALUE_PREFIX, Record, canonical_digest
from llava.visatb.chain.workdir import WorkDir, safe_name
from llava.visatb.defaults import DEFAULT_MAX_NEW_TOKENS
from llava.visatb.scores import ALONE_PREFIX, EW, MINI, MINI_ALONE_PREFIX, START, VISATB, group_scores
from llava.visatb.tasks import GPT_REVIEW, format_task_groups


@dataclass
class Item:
    """One command of a stage: what it is, how to run it, and how to tell that it finished."""

    key: str
    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    collect: Callable[[str], dict[str, Any]] | None = None  # reads the log, returns marker extras
    size: int = 0  # the work it is, e.g. its training records: a stage starts its larger items first
    # What it is made from, by name: a path (hashed), "item:<stage>/<key>" (that item's run) or "value:<digest>".
    inputs: dict[str, str] = field(default_factory=dict)
    stale: list[Path] = field(default_factory=list)  # what a redo must set aside first, or it would be reused
    recipe: Record | None = None  # its parameters and input digests, filled in by the runner


class StageBuilders(WorkDir):
    """The command builders of every stage (`python` is the interpreter the chain's Python commands run on)."""

    python: str

    def _subsets_items(self) -> tuple[str, list[Item], int]:
        cfg = self.cfg
        command = [self.python, "-m", "llava.visatb.subsets", "--data", str(cfg.data), "--output-dir",
                   str(self.subsets_dir), "--tasks", ",".join(cfg.tasks), "--mini-fraction", repr(cfg.mini_fraction),
                   "--seed", str(cfg.seed)]  # fmt: skip
        if cfg.val_per_task:
            command += ["--val-per-task", str(cfg.val_per_task)]
        if cfg.groups:
            command += ["--task-groups", format_task_groups(cfg.groups)]
        if cfg.large_fraction < 1:
            command += ["--large-fraction", repr(cfg.large_fraction)]
        kind = "group-plus-mini" if cfg.groups else "task-plus-mini"
        what = f"mini set (fraction {cfg.mini_fraction:g}) and {len(cfg.units)} {kind} sets"
        if cfg.large_fraction < 1:
            what += f" (large fraction {cfg.large_fraction:g})"
        key = "subsets"
        if cfg.needs_alone or cfg.needs_mini_alone:
            command.append("--alone")
            what += f", each {'group' if cfg.groups else 'task'} alone and its mini share alone"
            key = "subsets+alone"  # a chain that adds STL models rewrites the (identical) subsets with them
        if cfg.groups:
            key += "+groups"  # group sets are other files: a chain given groups later writes them
        item = Item(key, f"{what} of {cfg.data.name}", command, outputs=[self.subsets_dir / "subsets.json"],
                    inputs={"training data": str(cfg.data)})  # fmt: skip
        items = [item]
        if cfg.judged_tasks:
            review = cfg.review_set or {}
            split = [self.python, "-m", "llava.visatb.metrics.review_set", "split", "--review-set",
                     ",".join(review[k] for k in ("questions", "context", "reference", "rules")),
                     "--review-image-folder", review["image_folder"], "--tasks", ",".join(cfg.judged_tasks),
                     "--output-dir", str(self.review_dir)]  # fmt: skip
            items.append(Item("review-set", f"validation files of {', '.join(cfg.judged_tasks)} from the review set "
                              f"{Path(review['questions']).name}", split,
                              outputs=[Path(self.val_file(t)) for t in cfg.judged_tasks],
                              inputs={f"review set {k}": review[k] for k in ("questions", "context", "reference",
                                                                             "rules")}))  # fmt: skip
        return f"sub-datasets of {cfg.data}", items, 1

    def _task_env(self) -> dict[str, str]:
        cfg = self.cfg
        env = {"TASK_PRESET": cfg.task_preset or "", "TASK_NAMES": "" if cfg.task_preset else ",".join(cfg.tasks)}
        for name, value in (("BASE_MODEL_PATH", cfg.base_model), ("VISION_TOWER", cfg.vision_tower),
                            ("PRETRAIN_MM_MLP_ADAPTER", cfg.projector), ("IMAGE_FOLDER", cfg.image_folder)):  # fmt: skip
            if value:
                env[name] = value
        return env

    def _start_inputs(self) -> dict[str, str]:
        """The starting point every training reads: base model, vision tower, projector (hub names by name)."""
        cfg = self.cfg
        named = {"base model": cfg.base_model, "vision tower": cfg.vision_tower, "projector": cfg.projector}
        return {name: value for name, value in named.items() if value}

    def _made_by(self, key: str) -> str:
        """The item that trains model `key`, as an input of what reads the model."""
        stage = "final-train" if key in self.cfg.final_keys else "train"
        return f"{ITEM_PREFIX}{stage}/{key}"

    def _train_items(self, keys: list[str], final: bool) -> tuple[str, list[Item], int]:
        cfg = self.cfg
        items = []
        for key in keys:
            output = self.model_dir(key)
            env = {**self._task_env(), "OUTPUT_DIR": str(output), "WEIGHT_METHOD": "EW", "VISATB_WEIGHTS": "",
                   "VISATB_WEIGHTS_FILE": ""}  # fmt: skip
            if final:
                env["DATA_PATH"] = self.entire_data()
                if key == VISATB:
                    env["VISATB_WEIGHTS_FILE"] = str(self.weights_file)
                    what = "VisATB weights from weights.json"
                elif key in cfg.ablation_settings:
                    env["VISATB_WEIGHTS_FILE"] = str(self.ablation_weights_file(key))
                    what = f"VisATB weights from {self.ablation_weights_file(key).name}"
                else:
                    env["WEIGHT_METHOD"] = METHODS[key]
                    what = "equal weights (EW baseline)" if key == EW else f"{key} (WEIGHT_METHOD={METHODS[key]})"
                extra = cfg.final_train_args
            else:
                manifest = self.subsets_manifest()
                if key.startswith((ALONE_PREFIX, MINI_ALONE_PREFIX)):
                    part = "mini_alone" if key.startswith(MINI_ALONE_PREFIX) else "alone"
                    if part not in manifest:
                        raise PipelineError(f"{self.subsets_dir / 'subsets.json'} has no {part!r} sets; "
                                            "rerun the chain with --redo subsets")  # fmt: skip
                    entry = manifest[part][key.split(":", 1)[1]]
                else:
                    entry = manifest["mini"] if key == MINI else manifest["plus_mini"][key]
                env["DATA_PATH"] = entry["path"]
                what = f"{entry['file']} ({entry['count']} records)"
                extra = cfg.prep_train_args
            command = ["bash", cfg.finetune_script, *cfg.train_args, *extra]
            label = f"{key}: {what} -> {output.name} (log: {self.log_dir / ('final-train' if final else 'train') / (safe_name(key) + '.log')})"
            inputs = {"training data": env["DATA_PATH"], "finetune script": cfg.finetune_script, **self._start_inputs()}
            if env["VISATB_WEIGHTS_FILE"]:
                inputs["task weights"] = env["VISATB_WEIGHTS_FILE"]
            items.append(Item(key, label, command, env=env, outputs=[output / "config.json"],
                              size=0 if final else int(entry["count"]), inputs=inputs, stale=[output]))  # fmt: skip
        if final:
            title = f"final training on the entire data: {', '.join(keys)} through {Path(cfg.finetune_script).name}"
        else:
            mini_alone = sum(k.startswith(MINI_ALONE_PREFIX) for k in keys)
            alone = sum(k.startswith(ALONE_PREFIX) for k in keys)
            plus_mini = len(keys) - alone - mini_alone - (MINI in keys)
            unit = "group" if cfg.groups else "task"
            parts = (["the mini model"] if MINI in keys else []) + [
                f"{n} {kind} model(s)" for n, kind in ((plus_mini, f"{unit}-plus-mini"), (alone, f"single-{unit} (alone)"),
                                                       (mini_alone, "mini-alone")) if n]  # fmt: skip
            title = f"train {', '.join(parts)} through {Path(cfg.finetune_script).name}"
        return title, items, cfg.train_jobs

    def _infer_items(self, keys: list[str]) -> tuple[str, list[Item], int]:
        # One command per model answers every validation set, so each model loads once.
        cfg = self.cfg
        tasks = cfg.scored_tasks
        items = []
        for key in keys:
            model_path, model_base = self.model_path_and_base(key)
            command = [self.python, str(REPO_ROOT / "inference_visatb.py"), "--model-path", model_path,
                       "--question-file", *(self.val_file(t) for t in tasks),
                       "--answers-folder", str(self.answers_dir(key)), "--conv-mode", cfg.conv_mode]  # fmt: skip
            if model_base:
                command += ["--model-base", model_base]
            if cfg.image_folder:
                command += ["--image-folder", cfg.image_folder]
            limits = [cfg.max_new_tokens.get(t, cfg.max_new_tokens.get(cfg.metrics[t])) for t in tasks]
            if any(limits):
                default = str(DEFAULT_MAX_NEW_TOKENS)  # for tasks without a limit of their own
                command += ["--max_new_tokens", *(str(n) if n else default for n in limits)]
            command += cfg.infer_args
            inputs = {"model": model_path if key == START else self._made_by(key)}
            if model_base:
                inputs["model base"] = model_base
            inputs.update({f"validation set of {t}": self.val_file(t) for t in tasks})
            answers = [self.answers_file(key, t) for t in tasks]
            items.append(Item(key, f"{key} answers {len(tasks)} validation set(s)", command, outputs=answers,
                              inputs=inputs, stale=answers))  # fmt: skip
        title = f"inference of {len(keys)} model(s) ({', '.join(keys)}) on {len(tasks)} validation sets"
        return title, items, cfg.jobs

    def _score_items(self, keys: list[str]) -> tuple[str, list[Item], int]:
        cfg = self.cfg
        items = []
        for key in keys:
            for task in cfg.scored_tasks:
                metric = cfg.metrics[task]
                command = [self.python, self.eval_script(metric), "-a", str(self.answers_file(key, task)),
                           "--scores", str(self.scores_file), "--model-key", key, "--task", task, "--json"]  # fmt: skip
                if metric == GPT_REVIEW:
                    review = cfg.review_set or {}
                    command += ["--review-set", ",".join(review[k] for k in ("questions", "context", "reference", "rules")),
                                "--review-image-folder", review["image_folder"], "--tasks", ",".join(cfg.judged_tasks),
                                "--reviews", str(self.reviews_file(key, task)), "--judge-model", str(cfg.judge_model)]  # fmt: skip
                inputs = {"answers": str(self.answers_file(key, task)), "validation set": self.val_file(task)}
                items.append(Item(f"{key}__{task}", f"{key} / {task} ({metric})", command,
                                  outputs=[self.scores_file], collect=_collect_score, inputs=inputs))  # fmt: skip
        return f"metrics of {len(keys)} model(s) into {self.scores_file.name}", items, cfg.jobs

    def _missing_extra_scores(self) -> dict[str, list[str]]:
        """Scores the chat form or the precise difficulty needs that scores.json still lacks."""
        cfg = self.cfg
        if cfg.form == "academic" and cfg.difficulty_from == "real":
            return {}
        from llava.visatb.weights.measures import missing_scores

        scores = load_json(self.scores_file) if self.scores_file.is_file() else {}
        if cfg.groups:
            scores = group_scores(scores, cfg.groups)
        return missing_scores(scores, cfg.units, cfg.form, cfg.difficulty_from)

    def _extra_models_message(self, missing: dict[str, list[str]]) -> str:
        rows = "; ".join(f"{model} (on {', '.join(tasks)})" for model, tasks in missing.items())
        return (f"--form {self.cfg.form} with --difficulty-from {self.cfg.difficulty_from} needs scores that "
                f"{self.scores_file} lacks: {rows} (alone:<task>: trained on that task alone; mini-alone:<task>: "
                "on its mini subset alone, both trained by the chain for this form; start: the starting model, "
                "scored only with --start-model). Record missing scores in that file (the eval scripts' --scores "
                "FILE --model-key KEY --task NAME) and rerun; finished stages are skipped")  # fmt: skip

    def _weights_items(self) -> tuple[str, list[Item], int]:
        cfg = self.cfg
        missing = self._missing_extra_scores()
        if missing:
            raise PipelineError(f"weights stage: {self._extra_models_message(missing)}")
        command = [*self._weights_command(self.weights_file), "--plot", str(self.plot_file)]
        inputs = {"preparation scores": self._scores_digest(weight_model_keys(cfg))}
        item = Item("weights", "contributions, difficulties and weights from scores.json", command,
                    outputs=[self.weights_file, self.plot_file], collect=self._collect_weights, inputs=inputs)  # fmt: skip
        items = [item]
        every_preparation = {"preparation scores": self._scores_digest({START, *cfg.prep_keys})}
        for key, options in cfg.ablation_settings.items():
            ablated = self._weights_command(self.ablation_weights_file(key), **options)
            items.append(Item(f"weights:{key}", f"{key}: ablation weights", ablated,
                              outputs=[self.ablation_weights_file(key)], collect=_collect_weights_line,
                              inputs=every_preparation))  # fmt: skip
        title = "VisATB weights (weights.json, heatmap.png, VISATB_WEIGHTS)"
        if len(items) > 1:
            title += f" and {len(items) - 1} ablation weight file(s)"
        return title, items, 1

    def _scores_digest(self, keys: set[str]) -> str:
        """The weights read the scores of some preparation models only: the final models' scores (written into
        the same scores.json later) or added STL models must not make the weights look out of date."""
        scores = load_json(self.scores_file) if self.scores_file.is_file() else {}
        return VALUE_PREFIX + canonical_digest({key: scores.get(key) for key in sorted(keys)})

    def _weights_command(self, output: Path, alpha: list[float] | None = None, temperature: float | str | None = None,
                         difficulty_from: str | None = None) -> list[str]:  # fmt: skip
        cfg = self.cfg
        temperature = cfg.temperature if temperature is None else temperature
        command = [self.python, str(REPO_ROOT / "weighting_visatb.py"), "--scores", str(self.scores_file),
                   "--tasks", ",".join(cfg.tasks),
                   "--temperature", temperature if temperature == "auto" else repr(temperature),
                   "--alpha", *(repr(a) for a in (alpha or cfg.alpha)), "--form", cfg.form,
                   "--difficulty-from", difficulty_from or cfg.difficulty_from,
                   "--gain-tolerance", repr(cfg.gain_tolerance), "--max-contribution", repr(cfg.max_contribution),
                   "--output", str(output)]  # fmt: skip
        if cfg.strict:
            command.append("--strict")
        if cfg.groups:
            command += ["--task-groups", format_task_groups(cfg.groups)]
        if cfg.unscored_tasks:
            command += ["--unscored-tasks", ",".join(cfg.unscored_tasks)]
        return command

    def _collect_weights(self, log: str) -> dict[str, Any]:
        report = "\n".join(log.splitlines()[1:]) + "\n"
        self.weights_report.write_text(report, encoding="utf-8")
        return _collect_weights_line(report, f" (see {self.weights_report})")

    def _report_items(self) -> tuple[str, list[Item], int]:
        cfg = self.cfg
        metrics = ",".join(f"{t}={m}" for t, m in cfg.metrics.items())
        command = [self.python, "-m", "llava.visatb.results.report", "--scores", str(self.scores_file), "--tasks",
                   ",".join(cfg.scored_tasks), "--metrics", metrics, "--weights", str(self.weights_file),
                   "--plot", self.plot_file.name, "--output", str(self.report_file)]  # fmt: skip
        groups = ["--task-groups", format_task_groups(cfg.groups)] if cfg.groups else []
        command += [*groups, "--costs", str(self.work / "pipeline.json")]
        page = self.report_file.with_suffix(".html")  # the results page: tables and every model's answers
        command += ["--html", str(page), "--answers-dir", str(self.work / "answers"),
                    "--val-files", ",".join(f"{t}={self.val_file(t)}" for t in cfg.scored_tasks)]  # fmt: skip
        if cfg.image_folder:
            command += ["--image-folder", cfg.image_folder]
        item = Item("report", "report.md and report.html: per-task table, relative improvements, learning checks, "
                    "every model's answers", command, outputs=[self.report_file, page],
                    inputs={"scores": str(self.scores_file), "weights": str(self.weights_file)})  # fmt: skip
        items = [item]
        if cfg.needs_alone:
            compare = [self.python, "-m", "llava.visatb.results.compare", "--scores", str(self.scores_file), "--baseline",
                       "STL", "--tasks", ",".join(cfg.scored_tasks), "--models", ",".join(cfg.final_keys),
                       "--output", str(self.comparison_file), "--markdown", str(self.comparison_file.with_suffix(".md")),
                       "--plot", str(self.comparison_file.with_suffix(".png")), *groups]  # fmt: skip
            items.insert(0, Item("compare", "comparison.json/.md/.png: every final model against STL (dI, dE)",
                                 compare, outputs=[self.comparison_file], inputs={"scores": str(self.scores_file)}))  # fmt: skip
        return "report", items, 1


def _collect_weights_line(log: str, where: str = "") -> dict[str, Any]:
    match = re.search(r'^VISATB_WEIGHTS="([^"]*)"', log, flags=re.M)
    if not match:
        raise PipelineError(f"weighting_visatb.py printed no VISATB_WEIGHTS line{where}")
    return {"visatb_weights": match.group(1), "summary": f'VISATB_WEIGHTS="{match.group(1)}"'}


def _collect_score(log: str) -> dict[str, Any]:
    for line in reversed(log.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            return {"score": result["score"], "summary": f"{result['metric']} {result['score']:.4f}"}
    raise PipelineError("the metric script printed no JSON result line")
