"""The chained VisATB method: subsets -> N+1 models -> answers -> scores -> weights -> final models -> report.

Every stage runs the project's own commands (`python -m llava.visatb.subsets`, the finetune script,
`inference_visatb.py`, `eval/*.py`, `weighting_visatb.py`, `python -m llava.visatb.results.report`) and writes each
command's output to WORK_DIR/logs/<stage>/<item>.log. An item (one model to train, one model answering every
validation set in one process, one score) is marked done in WORK_DIR/.done/ only after its command succeeded
and its outputs exist, so running the chain again skips everything finished and resumes a crashed or killed
run where it stopped (inference also resumes inside a validation set). A failed command stops the chain with
the stage, the item and the log named. With `--executor slurm` every item is an sbatch job instead, waited on
through squeue under the same rules (llava/visatb/slurm.py).

    bash scripts_visatb/run_visatb.sh                       # configured by the variables at its top
    python -m llava.visatb.pipeline --work-dir work/academic --data data/Academic_train-475k.json \
        --image-folder data --task-preset academic --val-dir data ...

Work directory: subsets/ (mini and task-plus-mini files), checkpoints/llava-<run>-<model>/, answers/<model>/,
scores.json (V_j(m) of every model), weights.json + heatmap.png + weights.txt, report.md, pipeline.json.

Tasks scored by `gpt_review` (the Chat preset's) are validated on one review set in LLaVA-Bench-COCO's layout
(--review-set; a question's category decides its task, llava/visatb/metrics/review_set.py): the subsets stage writes
subsets/review/<task>_val.json from it, every model answers those as any validation set, and the score stage
has the judge on OPENAI_BASE_URL (OPENAI_API_KEY, checked before anything runs) review each (model, task)
into reviews/<model>/<task>.jsonl, reused on reruns while answer and judge are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llava.utils import atomic_write_json, load_json
from llava.visatb import slurm
from llava.visatb.defaults import (
    DEFAULT_ALPHA,
    DEFAULT_GAIN_TOLERANCE,
    DEFAULT_MAX_CONTRIBUTION,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MINI_FRACTION,
    DEFAULT_TEMPERATURE,
)
from llava.visatb.scores import (
    ALONE_PREFIX,
    EW,
    METHOD_KEYS,
    MINI,
    MINI_ALONE_PREFIX,
    START,
    STL,
    VISATB,
    group_scores,
)
from llava.visatb.tasks import (
    CHAIN_METRIC_TYPES,
    GPT_REVIEW,
    PRESETS,
    check_task_groups,
    format_task_groups,
    parse_task_groups,
    parse_task_names,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FINETUNE_SCRIPT = "scripts_visatb/finetune_academic.sh"
STAGES = ("subsets", "train", "infer", "score", "weights", "final-train", "final-infer", "final-score", "report")
# Final models by method name, and the finetune script's WEIGHT_METHOD for each: VisATB trains with EW plus its
# weights, TLA is the script's EWTB (token-level averaging); every other method has its own name there.
METHODS = {key: {VISATB: "EW", "TLA": "EWTB"}.get(key, key) for key in METHOD_KEYS}
# Table 8's rows besides the default VisATB (alpha 0.25 0.25 0.5, T 0.5, real difficulty).
# Row keys name them without commas (a key list is comma-separated): VisATB[alpha=1:0:0], VisATB[T=2], ...
ABLATION_ALPHAS = {"1:0:0": (1.0, 0.0, 0.0), "0:1:0": (0.0, 1.0, 0.0), "0:0:1": (0.0, 0.0, 1.0),
                   "0.5:0.5:0": (0.5, 0.5, 0.0), "1/3:1/3:1/3": (1 / 3, 1 / 3, 1 / 3),
                   "0.25:0.25:0.5": (0.25, 0.25, 0.5)}  # fmt: skip
ABLATION_TEMPERATURES = (2.0, 1.0, 0.5)
ABLATIONS = ("alpha", "temperature", "difficulty")
LOG_TAIL_LINES = 15
COSTS_KEY = "costs"  # pipeline.json: every finished item's wall time and devices


class PipelineError(RuntimeError):
    """A stage failed; the message names the stage, the item and its log file."""


# ---------------------------------------------------------------------------------------------- configuration


@dataclass
class PipelineConfig:
    """Everything the chain needs, resolved and checked before anything runs."""

    work_dir: Path
    data: Path
    image_folder: str | None
    tasks: list[str]
    task_preset: str | None
    metrics: dict[str, str]
    val_files: dict[str, str]
    val_per_task: int | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)  # {group: tasks}; empty: every task on its own
    large_fraction: float = 1.0
    review_set: dict[str, str] | None = None  # ReviewSet.to_json() of the gpt_review tasks' review set
    judge_model: str | None = None
    base_model: str | None = None
    vision_tower: str | None = None
    projector: str | None = None
    finetune_script: str = DEFAULT_FINETUNE_SCRIPT
    mini_fraction: float = DEFAULT_MINI_FRACTION
    seed: int = 0
    train_args: list[str] = field(default_factory=list)
    prep_train_args: list[str] = field(default_factory=list)
    final_train_args: list[str] = field(default_factory=list)
    infer_args: list[str] = field(default_factory=list)
    max_new_tokens: dict[str, int] = field(default_factory=dict)
    conv_mode: str = "vicuna_v1"
    start_model: str | None = None
    start_model_base: str | None = None
    ew_baseline: bool = True
    eval_final: bool = True
    temperature: float | str = DEFAULT_TEMPERATURE  # or "auto"
    alpha: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHA))
    form: str = "academic"
    difficulty_from: str = "real"
    gain_tolerance: float = DEFAULT_GAIN_TOLERANCE
    max_contribution: float = DEFAULT_MAX_CONTRIBUTION
    strict: bool = False
    methods: list[str] = field(default_factory=lambda: [VISATB, EW])
    stl: bool = False
    ablations: list[str] = field(default_factory=list)
    jobs: int = 1
    train_jobs: int = 1
    run_name: str = "visatb"

    @property
    def scored_tasks(self) -> list[str]:
        return [t for t in self.tasks if t in self.metrics]

    @property
    def unscored_tasks(self) -> list[str]:
        return [t for t in self.tasks if t not in self.metrics]

    @property
    def units(self) -> list[str]:
        """What the method balances: the scored tasks, or the task groups (one preparation model each)."""
        return list(self.groups) if self.groups else self.scored_tasks

    @property
    def judged_tasks(self) -> list[str]:
        """Scored tasks whose validation set is the review set (metric gpt_review)."""
        return [t for t in self.scored_tasks if self.metrics[t] == GPT_REVIEW]

    @property
    def ablation_settings(self) -> dict[str, dict[str, Any]]:
        """{final model key: weighting options} of the ablation rows (Table 8), each unlike the main VisATB run."""
        rows: dict[str, dict[str, Any]] = {}
        if "alpha" in self.ablations:
            for label, alpha in ABLATION_ALPHAS.items():
                if any(abs(a - b) > 1e-9 for a, b in zip(alpha, self.alpha)):
                    rows[f"{VISATB}[alpha={label}]"] = {"alpha": list(alpha)}
        if "temperature" in self.ablations:
            for temperature in ABLATION_TEMPERATURES:
                if temperature != self.temperature:
                    rows[f"{VISATB}[T={temperature:g}]"] = {"temperature": temperature}
        if "difficulty" in self.ablations:
            other = "precise" if self.difficulty_from == "real" else "real"
            rows[f"{VISATB}[D={other}]"] = {"difficulty_from": other}
        return rows

    @property
    def final_keys(self) -> list[str]:
        return [*self.methods, *self.ablation_settings]

    @property
    def _difficulty_sources(self) -> set[str]:
        return {self.difficulty_from, *(o["difficulty_from"] for o in self.ablation_settings.values()
                                        if "difficulty_from" in o)}  # fmt: skip

    @property
    def needs_alone(self) -> bool:
        """alone:<task> models: STL, the Chat form's contributions, the precise difficulty."""
        return self.stl or self.form == "chat" or "precise" in self._difficulty_sources

    @property
    def needs_mini_alone(self) -> bool:
        return "precise" in self._difficulty_sources

    @property
    def prep_keys(self) -> list[str]:
        """The models the weights need (by form and difficulty source), then the STL models."""
        keys = [] if self.form == "chat" and self._difficulty_sources == {"precise"} else [MINI, *self.units]
        if self.needs_alone:
            keys += [ALONE_PREFIX + t for t in self.units]
        if self.needs_mini_alone:
            keys += [MINI_ALONE_PREFIX + t for t in self.units]
        return keys

    @property
    def stages(self) -> list[str]:
        skipped = () if self.eval_final else ("final-infer", "final-score")
        return [s for s in STAGES if s not in skipped]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["work_dir"] = str(self.work_dir)
        data["data"] = str(self.data)
        return data


def parse_mapping(text: str | None, what: str) -> dict[str, str]:
    """`A=x,B=y` (commas or whitespace between pairs) -> {"A": "x", "B": "y"}; errors name the bad pair."""
    mapping: dict[str, str] = {}
    for pair in re.split(r"[,\s]+", (text or "").strip()):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what}: {pair!r} is not NAME=VALUE")
        if key in mapping:
            raise ValueError(f"{what}: {key!r} is given twice")
        mapping[key] = value
    return mapping


def _resolve_tasks(task_names: str | None, task_preset: str | None) -> tuple[list[str], str | None]:
    if task_names and task_preset:
        raise ValueError("give either --tasks or --task-preset, not both")
    if task_names:
        return parse_task_names(task_names), None
    if task_preset:
        if task_preset.lower() not in PRESETS:
            raise ValueError(f"unknown task preset {task_preset!r}; known presets: {', '.join(PRESETS)}")
        return list(PRESETS[task_preset.lower()].tasks), task_preset.lower()
    raise ValueError("no task list: pass --task-preset academic|toy|... or --tasks A,B,...")


def _val_manifest_files(path: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(val files, metrics, unscored) of a toy benchmark manifest or a subsets.json with carved validation sets."""
    manifest = load_json(path)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if isinstance(manifest.get("val_files"), dict):  # toy_benchmark.json: names relative to its folder
        files = {t: str((path.parent / name).resolve()) for t, name in manifest["val_files"].items()}
        return files, dict(manifest.get("metrics") or {}), list(manifest.get("unscored") or [])
    if isinstance(manifest.get("val"), dict) and manifest["val"]:  # subsets.json with --val-per-task
        return {t: entry["path"] for t, entry in manifest["val"].items()}, {}, []
    raise ValueError(f"{path}: names no validation files (expected 'val_files' or a non-empty 'val')")


def _val_dir_files(folder: Path, tasks: Sequence[str]) -> dict[str, str]:
    """The release's naming: `{task}_val-{size}.json` in `folder`, one per task."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--val-dir {folder}: no such folder")
    files = {}
    for task in tasks:
        found = sorted(folder.glob(f"{task}_val-*.json"))
        if len(found) > 1:
            raise ValueError(f"--val-dir {folder}: several validation files for {task}: {', '.join(p.name for p in found)}")
        if found:
            files[task] = str(found[0].resolve())
    return files


def _positive_int(value: int, flag: str) -> int:
    if value < 1:
        raise ValueError(f"{flag} must be at least 1, got {value}")
    return value


def _resolve_review_set(args: argparse.Namespace, judged: list[str]) -> tuple[dict[str, str] | None, str | None]:
    """The review set of the gpt_review tasks, checked (questions of every judged task, references, contexts,
    rules, images), and the judge model; the judge's key must be set now, before any training."""
    from llava.eval.eval_gpt_review_bench import DEFAULT_JUDGE_MODEL
    from llava.visatb.metrics.review_set import load_questions_by_task, locate_review_set

    if not judged:
        if args.review_set:
            raise ValueError("--review-set is given but no scored task has the metric gpt_review")
        return None, None
    if not args.review_set:
        raise ValueError(f"task(s) {', '.join(judged)} are scored by gpt_review: give their review set with "
                         "--review-set FOLDER (or QUESTIONS,CONTEXT,REFERENCE[,RULES] jsonl files)")  # fmt: skip
    if not os.environ.get("OPENAI_API_KEY"):
        raise ValueError(f"OPENAI_API_KEY is not set: task(s) {', '.join(judged)} are scored by a GPT judge "
                         "(gpt_review); export OPENAI_API_KEY=... (and OPENAI_BASE_URL=... for a non-OpenAI "
                         "endpoint, JUDGE_MODEL=... for another judge model)")  # fmt: skip
    review_set = locate_review_set(args.review_set, args.review_image_folder)
    by_task = load_questions_by_task(review_set, judged)
    print(f"[visatb] review set {review_set.questions.parent}: "
          + ", ".join(f"{t} {len(q)} question(s)" for t, q in by_task.items()), flush=True)  # fmt: skip
    judge_model = args.judge_model or os.environ.get("JUDGE_MODEL") or DEFAULT_JUDGE_MODEL
    return review_set.to_json(), judge_model


def resolve_config(args: argparse.Namespace) -> PipelineConfig:
    """Turn the command line into a checked configuration; every error names the flag or file at fault."""
    tasks, preset = _resolve_tasks(args.tasks, args.task_preset)
    data = Path(args.data)
    if not data.is_file():
        where = "" if data.is_absolute() else f"; relative paths are taken from {Path.cwd()} (run_visatb.sh runs there)"
        raise FileNotFoundError(f"--data {data}: no such file (the entire multi-task training file){where}")

    sources = [flag for flag, value in (("--val-files", args.val_files), ("--val-manifest", args.val_manifest),
                                        ("--val-dir", args.val_dir), ("--val-per-task", args.val_per_task)) if value]  # fmt: skip
    def one_source_please() -> ValueError:
        return ValueError(
            "give the validation sets in exactly one way: --val-files A=path,..., --val-manifest FILE, --val-dir DIR "
            f"or --val-per-task K (got {', '.join(sources) or 'none'})"
        )

    if len(sources) > 1:
        raise one_source_please()
    manifest_metrics: dict[str, str] = {}
    manifest_unscored: list[str] = []
    val_files: dict[str, str] = {}
    if args.val_files:
        val_files = {t: str(Path(p).resolve()) for t, p in parse_mapping(args.val_files, "--val-files").items()}
    elif args.val_manifest:
        val_files, manifest_metrics, manifest_unscored = _val_manifest_files(Path(args.val_manifest))
    elif args.val_dir:
        val_files = _val_dir_files(Path(args.val_dir), tasks)

    # Metric of each scored task: --task-metrics, else the toy manifest's, else the preset's.
    if args.task_metrics:
        metrics = parse_mapping(args.task_metrics, "--task-metrics")
    elif manifest_metrics:
        metrics = manifest_metrics
    elif preset is not None:
        metrics = dict(PRESETS[preset].metrics)
    else:
        raise ValueError("no metric for the tasks: pass --task-metrics A=qa,B=caption,... (or use a preset)")
    unscored = set(parse_task_names(args.unscored_tasks) if args.unscored_tasks else manifest_unscored)
    if preset is not None and not args.unscored_tasks:
        unscored |= set(PRESETS[preset].unscored)
    for task, metric in metrics.items():
        if task not in tasks:
            raise ValueError(f"task-to-metric map names {task!r}, which is not in the task list ({', '.join(tasks)})")
        if metric not in CHAIN_METRIC_TYPES:
            raise ValueError(f"task {task!r}: unknown metric {metric!r}; use one of {', '.join(CHAIN_METRIC_TYPES)}")
    metrics = {t: metrics[t] for t in tasks if t in metrics and t not in unscored}
    if len(metrics) < 2:
        raise ValueError(f"VisATB needs at least two scored tasks; scored here: {', '.join(metrics) or 'none'}")

    groups: dict[str, list[str]] = {}
    if args.task_groups:
        groups = parse_task_groups(args.task_groups)
    elif preset is not None and PRESETS[preset].groups:
        groups = {g: list(m) for g, m in PRESETS[preset].groups.items()}
    if groups:
        check_task_groups(groups, list(metrics), metrics, reserved=[MINI, START, STL, *METHODS])
        for name in groups:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"--task-groups: group name {name!r}: use letters, digits, '.', '_' and '-'")
    if not 0 < args.large_fraction <= 1 or args.large_fraction < args.mini_fraction:
        raise ValueError(f"--large-fraction must be in [--mini-fraction, 1] (the minis come from the large "
                         f"subsets), got {args.large_fraction}")  # fmt: skip

    # gpt_review tasks are validated on the review set; every other scored task on a validation file.
    judged = [t for t in metrics if metrics[t] == GPT_REVIEW]
    file_tasks = [t for t in metrics if t not in judged]
    if file_tasks and not sources:
        raise one_source_please()
    review_set, judge_model = _resolve_review_set(args, judged)
    if not args.val_per_task:
        missing = [t for t in file_tasks if t not in val_files]
        if missing:
            raise ValueError(f"no validation file for scored task(s) {', '.join(missing)}")
        for task in file_tasks:
            if not Path(val_files[task]).is_file():
                raise FileNotFoundError(f"validation file of {task}: {val_files[task]}: no such file")
        val_files = {t: val_files[t] for t in file_tasks}

    script = Path(args.finetune_script)
    if not script.is_file() and (REPO_ROOT / script).is_file():
        script = REPO_ROOT / script
    if not script.is_file():
        raise FileNotFoundError(f"--finetune-script {args.finetune_script}: no such file")
    for flag, value in (("--projector", args.projector), ("--start-model", args.start_model)):
        if value and not Path(value).exists():
            raise FileNotFoundError(f"{flag} {value}: no such file or folder")

    max_new_tokens: dict[str, int] = {}
    for key, value in parse_mapping(args.max_new_tokens, "--max-new-tokens").items():
        if key not in CHAIN_METRIC_TYPES and key not in tasks:
            raise ValueError(f"--max-new-tokens: {key!r} is neither a metric type ({', '.join(CHAIN_METRIC_TYPES)}) "
                             "nor a task")  # fmt: skip
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"--max-new-tokens: {key}={value} is not a positive integer")
        max_new_tokens[key] = int(value)
    if not 0 < args.mini_fraction <= 1:
        raise ValueError(f"--mini-fraction must be in (0, 1], got {args.mini_fraction}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.run_name):
        raise ValueError(f"--run-name {args.run_name!r}: use letters, digits, '.', '_' and '-'")
    # The weighting step's options, checked now rather than after every training has run.
    from llava.visatb.weights.measures import check_gain_options, get_difficulty_source
    from llava.visatb.weights.weights import check_alpha, temperature_option

    try:
        temperature = temperature_option(args.temperature)
    except ValueError as e:
        raise ValueError(f"--temperature: {e}") from None
    try:
        alpha = list(check_alpha(args.alpha))
    except ValueError as e:
        raise ValueError(f"--alpha: {e}") from None
    # The Chat preset is the Chat form's benchmark (App. C); --form academic still runs it the academic way.
    form = args.form or ("chat" if preset == "chat" else "academic")
    difficulty_from = get_difficulty_source(args.difficulty_from, form).name
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods or len(set(methods)) != len(methods):
            raise ValueError(f"--methods {args.methods!r}: give distinct names from {', '.join(METHODS)}")
        if VISATB not in methods:
            methods.insert(0, VISATB)
    else:
        methods = [VISATB, EW] if args.ew_baseline else [VISATB]
    ablations = [a.strip() for a in (args.ablations or "").replace(",", " ").split() if a.strip()]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        raise ValueError(f"--ablations: unknown {', '.join(unknown)}; use any of {', '.join(ABLATIONS)}")
    try:
        check_gain_options(args.gain_tolerance, args.max_contribution)
    except ValueError as e:
        raise ValueError(f"--gain-tolerance/--max-contribution: {e}") from None

    return PipelineConfig(
        work_dir=Path(args.work_dir).resolve(),
        data=data.resolve(),
        image_folder=str(Path(args.image_folder).resolve()) if args.image_folder else None,
        tasks=tasks,
        task_preset=preset,
        metrics=metrics,
        val_files=val_files,
        val_per_task=args.val_per_task,
        groups=groups,
        large_fraction=args.large_fraction,
        review_set=review_set,
        judge_model=judge_model,
        base_model=args.base_model or None,
        vision_tower=args.vision_tower or None,
        projector=args.projector or None,
        finetune_script=str(script.resolve()),
        mini_fraction=args.mini_fraction,
        seed=args.seed,
        train_args=shlex.split(args.train_args or ""),
        prep_train_args=shlex.split(args.prep_train_args or ""),
        final_train_args=shlex.split(args.final_train_args or ""),
        infer_args=shlex.split(args.infer_args or ""),
        max_new_tokens=max_new_tokens,
        conv_mode=args.conv_mode,
        start_model=args.start_model or None,
        start_model_base=args.start_model_base or None,
        ew_baseline=args.ew_baseline,
        eval_final=args.eval_final,
        temperature=temperature,
        alpha=alpha,
        form=form,
        difficulty_from=difficulty_from,
        gain_tolerance=args.gain_tolerance,
        max_contribution=args.max_contribution,
        strict=args.strict,
        methods=methods,
        stl=args.stl,
        ablations=ablations,
        jobs=_positive_int(args.jobs, "--jobs"),
        train_jobs=_positive_int(args.train_jobs, "--train-jobs"),
        run_name=args.run_name,
    )


# ---------------------------------------------------------------------------------------------- work items


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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def model_slug(key: str) -> str:
    """Folder-name part of a model key: `mini`, `<task>-plus-mini`, `<task>-alone`, `<task>-mini-alone`, `visatb`,
    `ew`, `tla`, ..., and `visatb-alpha_1_0_0` for an ablation row `VisATB[alpha=1:0:0]`."""
    if key == MINI:
        return MINI
    if key in METHODS:
        return key.lower()
    if key.startswith(VISATB + "["):
        return "visatb-" + _safe(key[len(VISATB) + 1 : -1]).strip("_")
    if key.startswith(MINI_ALONE_PREFIX):
        return f"{_safe(key[len(MINI_ALONE_PREFIX):])}-mini-alone"
    if key.startswith(ALONE_PREFIX):
        return f"{_safe(key[len(ALONE_PREFIX):])}-alone"
    return f"{_safe(key)}-plus-mini"


class Pipeline:
    """Runs the stages of one configuration, skipping what is marked done."""

    def __init__(self, cfg: PipelineConfig, python: str = sys.executable, out=None,
                 slurm_settings: slurm.SlurmSettings | None = None):  # fmt: skip
        self.cfg = cfg
        self.slurm = slurm_settings  # None: items run here as subprocesses; else each one is a Slurm job
        self.python = python
        self.out = sys.stdout if out is None else out  # the stdout of the time of the run, not of the import
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
        self.skipped_items = 0
        self.ran_items = 0

    # -- paths ---------------------------------------------------------------------------------

    def model_dir(self, key: str) -> Path:
        return self.work / "checkpoints" / f"llava-{self.cfg.run_name}-{model_slug(key)}"

    def model_path_and_base(self, key: str) -> tuple[str, str | None]:
        if key == START:
            return str(self.cfg.start_model), self.cfg.start_model_base
        return str(self.model_dir(key)), None

    def answers_dir(self, key: str) -> Path:
        return self.work / "answers" / _safe(key)

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
        return self.reviews_dir / _safe(key) / f"{_safe(task)}.jsonl"

    def eval_script(self, metric: str) -> str:
        return str(REPO_ROOT / "eval" / f"{metric}.py")

    # -- markers -------------------------------------------------------------------------------

    def marker(self, stage: str, item: str | None = None) -> Path:
        if item is None:
            return self.done_dir / f"{stage}.json"
        return self.done_dir / stage / f"{_safe(item)}.json"

    def is_done(self, stage: str, item: str | None = None) -> bool:
        return self.marker(stage, item).is_file()

    def stage_needs_run(self, stage: str, items: Sequence[Item]) -> bool:
        """Whether a stage must run: not marked done, or done for fewer items than this configuration has
        (STL models, more methods or ablation rows added to a finished chain). Done items inside it are skipped."""
        if not self.is_done(stage):
            return True
        done = load_json(self.marker(stage)).get("items")
        return not isinstance(done, list) or not {i.key for i in items} <= set(done)

    def redo_from(self, stage: str) -> None:
        """Forget `stage` and every later one: remove their markers and the outputs they made."""
        stages = self.cfg.stages
        if stage not in stages:
            raise ValueError(f"--redo {stage!r}: unknown stage; stages of this run: {', '.join(stages)}")
        for name in stages[stages.index(stage):]:
            self.marker(name).unlink(missing_ok=True)
            shutil.rmtree(self.done_dir / name, ignore_errors=True)
            shutil.rmtree(self.slurm_dir / name, ignore_errors=True)  # earlier jobs' results must not be taken
            for path in self._stage_outputs(name):
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
            return [self.report_file, *(self.comparison_file.with_suffix(x) for x in (".json", ".md", ".png"))]
        if stage == "subsets":
            return [self.subsets_dir]
        return []

    def _prep_eval_keys(self) -> list[str]:
        return ([START] if self.cfg.start_model else []) + self.cfg.prep_keys

    # -- running -------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _check_start_scores(self) -> None:
        """The chat form computes contributions against the starting model: without --start-model its scores
        must already be in scores.json, checked before any training rather than at the weights stage."""
        cfg = self.cfg
        if cfg.start_model or "weights" not in cfg.stages or START not in self.weight_model_keys():
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
        # while the other slots idle (the toy's ToyBBox-plus-mini, about a third of its stage's work, was the
        # stage's last item). Stable, so items of one size keep their order; no item's result depends on when
        # it runs.
        pending.sort(key=lambda item: -item.size)
        if self.slurm is not None:
            self._run_items_slurm(stage, prefix, pending, jobs)
            return
        failures: list[PipelineError] = []
        finished = 0
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, total))) as pool:
            running: dict[Future, Item] = {}
            queue = list(pending)
            while queue or running:
                while queue and len(running) < jobs and not failures:
                    item = queue.pop(0)
                    self.say(f"  [{finished + len(running) + 1}/{total}] {item.label}")
                    running[pool.submit(self._run_item, stage, item, jobs)] = item
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    finished += 1
                    try:
                        seconds, extras = future.result()
                    except PipelineError as e:
                        failures.append(e)
                        continue
                    note = f" ({extras['summary']})" if extras.get("summary") else ""
                    self.say(f"    done {finished}/{total}: {item.key} in {seconds:.1f} s{note}")
        if failures:
            raise PipelineError(f"{prefix} failed: {failures[0]}")

    def item_log(self, stage: str, item: Item) -> Path:
        return self.log_dir / stage / f"{_safe(item.key)}.log"

    def _item_env(self, item: Item) -> dict[str, str]:
        """What an item's process gets on top of the chain's environment: its own variables and PYTHONPATH."""
        env = dict(item.env)
        inherited = item.env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + inherited if inherited else "")
        return env

    def _run_item(self, stage: str, item: Item, jobs: int) -> tuple[float, dict[str, Any]]:
        log = self.item_log(stage, item)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._item_env(item)}
        if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            # Parallel CPU processes share the cores instead of each starting one thread per core.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        start = time.monotonic()
        with open(log, "w", encoding="utf-8") as handle:
            handle.write("$ " + " ".join(shlex.quote(c) for c in item.command) + "\n")
            handle.flush()
            result = subprocess.run(item.command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                    check=False)  # fmt: skip
        seconds = time.monotonic() - start
        return seconds, self._finish_item(stage, item, log, result.returncode, seconds)

    def _finish_item(self, stage: str, item: Item, log: Path, returncode: int, seconds: float,
                     job: str = "", record: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """Check an item's exit code and outputs, read its log, mark it done; `job` names a Slurm job."""
        if returncode != 0:
            tail = _tail(log) if log.is_file() else "    (no log written)"
            raise PipelineError(f"{item.key}: {job}exit code {returncode}; log {log}\n{tail}")
        missing = [str(p) for p in item.outputs if not p.exists()]
        if missing:
            raise PipelineError(f"{item.key}: {job}finished but did not write {', '.join(missing)}; log {log}")
        text = log.read_text(encoding="utf-8")
        extras = item.collect(text) if item.collect else {}
        extras.update(item_devices(stage, text))
        self.ran_items += 1
        atomic_write_json(self.marker(stage, item.key), {
            "item": item.key, "command": item.command, "env": item.env, "seconds": round(seconds, 1),
            "log": str(log), **(record or {}), **extras,
        })  # fmt: skip
        return extras

    def _run_items_slurm(self, stage: str, prefix: str, pending: list[Item], jobs: int) -> None:
        """Submit every pending item of the stage as one Slurm job (or wait on the job an earlier run submitted),
        then poll squeue until all have ended. The first failure stops the chain; jobs still in flight keep
        running and a rerun waits on them."""
        assert self.slurm is not None
        total = len(pending)
        # CPUs per job by default: what a local item of this stage would use, so the jobs' OMP_NUM_THREADS (and
        # with it the numbers) match the local executor's, and as many jobs share a node as local items run.
        resources = self.slurm.resources(stage, default_cpus=max(1, (os.cpu_count() or 1) // jobs))
        files = {item.key: slurm.JobFiles.of(self.slurm_dir / stage, _safe(item.key)) for item in pending}
        names = {item.key: slurm.job_name(self.work, stage, _safe(item.key)) for item in pending}
        earlier = {item.key: slurm.submitted_job(files[item.key]) for item in pending}
        try:
            known = slurm.job_states([job[0] for job in earlier.values() if job])
        except slurm.SlurmError as e:
            raise PipelineError(f"{prefix} failed: {e}") from None
        in_flight: dict[str, Item] = {}

        def still_in_slurm() -> str:
            if not in_flight:
                return ""
            listed = ", ".join(f"job {job_id} ({item.key})" for job_id, item in in_flight.items())
            return (f"\n  still in Slurm: {listed}; a rerun waits on them "
                    f"(`scancel {' '.join(in_flight)}` stops them)")  # fmt: skip

        for index, item in enumerate(pending, 1):
            self.say(f"  [{index}/{total}] {item.label}")
            job_files, previous = files[item.key], earlier[item.key]
            if previous is not None:
                job_id, name = previous
                state = known.get(job_id)
                # The status file first: its job script writes it as its last step, so a job that wrote it has
                # done its work even while Slurm still lists it (RUNNING or COMPLETING for a moment after).
                status = slurm.read_status(job_files, job_id)
                if status is not None and status[0] == 0:
                    self.say(f"    Slurm job {job_id} of an earlier run finished with exit code 0; taking its result")
                    in_flight[job_id] = item
                    continue
                if status is None and state is not None and state[1] == name and slurm.is_live(state[0]):
                    self.say(f"    Slurm job {job_id} of an earlier run is {state[0]}; waiting on it")
                    in_flight[job_id] = item
                    continue
                ended = f"exit code {status[0]}" if status else slurm.describe_end(state[0] if state else None)
                self.say(f"    Slurm job {job_id} of an earlier run ended without success ({ended}); submitting again")
            log = self.item_log(stage, item)
            log.parent.mkdir(parents=True, exist_ok=True)
            env = self._item_env(item)
            if "OMP_NUM_THREADS" not in os.environ and not resources.gpus_per_node:
                # A CPU job computes with as many threads as it has CPUs (GPU jobs: the launcher decides).
                env["OMP_NUM_THREADS"] = str(resources.cpus)
            if resources.gpus_per_node and "NUM_GPUS" not in os.environ and "NUM_GPUS" not in env:
                env["NUM_GPUS"] = str(resources.gpus_per_node)
            slurm.write_job_script(job_files, f"VisATB chain {self.work}: stage {stage}, item {item.key}",
                                   item.command, env, log, REPO_ROOT)  # fmt: skip
            try:
                job_id = slurm.submit(job_files, names[item.key], resources)
            except slurm.SlurmError as e:
                raise PipelineError(f"{prefix} failed: {item.key}: {e}{still_in_slurm()}") from None
            self.say(f"    submitted: Slurm job {job_id} ({resources.describe()}); log {log}")
            in_flight[job_id] = item

        try:
            self._wait_for_jobs(stage, prefix, in_flight, files, total, still_in_slurm)
        except KeyboardInterrupt:
            raise PipelineError(f"{prefix} interrupted{still_in_slurm()}") from None

    def _wait_for_jobs(self, stage: str, prefix: str, in_flight: dict[str, Item], files: dict[str, slurm.JobFiles],
                       total: int, still_in_slurm: Callable[[], str]) -> None:  # fmt: skip
        """Poll squeue until every job in `in_flight` has ended; mark each finished item done as it ends."""
        assert self.slurm is not None
        watcher = slurm.JobWatcher(say=self.say)
        ended_at: dict[str, float] = {}
        failures: list[PipelineError] = []
        finished = 0
        while in_flight:
            try:
                states = watcher.states(list(in_flight))
            except slurm.SlurmError as e:
                raise PipelineError(f"{prefix} failed: {e}{still_in_slurm()}") from None
            for job_id, item in list(in_flight.items()) if states is not None else []:
                state = states.get(job_id)
                if state is not None and slurm.is_live(state[0]):
                    continue
                job_files, log = files[item.key], self.item_log(stage, item)
                status = slurm.read_status(job_files, job_id)
                if status is None:
                    if state is None or state[0] not in slurm.KILLED_STATES:
                        first_seen = ended_at.setdefault(job_id, time.monotonic())
                        if time.monotonic() - first_seen < slurm.STATUS_GRACE_SECONDS:
                            continue  # a network file system may show the status file a little later
                    ended = slurm.describe_end(state[0] if state else None)
                    said = f"\n{_tail(job_files.output, 5)}" if job_files.output.is_file() else ""
                    failures.append(PipelineError(
                        f"{item.key}: Slurm job {job_id} {ended} without an exit status (cancelled, out of time "
                        f"or killed); log {log}; Slurm's output {job_files.output}{said}"))  # fmt: skip
                else:
                    code, seconds = status
                    try:
                        extras = self._finish_item(stage, item, log, code, seconds, job=f"Slurm job {job_id}: ",
                                                   record={"slurm_job": job_id})  # fmt: skip
                    except PipelineError as e:
                        failures.append(e)
                    else:
                        job_files.remove()
                        finished += 1
                        note = f" ({extras['summary']})" if extras.get("summary") else ""
                        self.say(f"    done {finished}/{total}: {item.key} in {seconds:.1f} s (Slurm job {job_id}){note}")
                del in_flight[job_id]
            if failures:
                raise PipelineError(f"{prefix} failed: {failures[0]}{still_in_slurm()}")
            if in_flight:
                time.sleep(self.slurm.poll_seconds)

    # -- cost accounting -----------------------------------------------------------------------

    def weight_model_keys(self) -> set[str]:
        """The models VisATB's own weights need (its preparation cost), by form and difficulty source."""
        cfg = self.cfg
        keys: set[str] = set()
        if cfg.form == "academic" or cfg.difficulty_from == "real":
            keys |= {MINI, *cfg.units}
        if cfg.form == "chat" or cfg.difficulty_from == "precise":
            keys |= {ALONE_PREFIX + u for u in cfg.units}
        if cfg.difficulty_from == "precise":
            keys |= {MINI_ALONE_PREFIX + u for u in cfg.units}
        if cfg.form == "chat":
            keys.add(START)
        return keys

    def _cost_part(self, stage: str, key: str) -> str:
        """preparation (what VisATB's weights need), final (VisATB's own final model) or other (baselines,
        STL, ablations, the start model's learning checks) for one item."""
        if stage in ("subsets", "weights"):
            return "preparation"
        if stage == "report":
            return "other"
        model = key.split("__", 1)[0]
        if stage.startswith("final-"):
            return "final" if model == VISATB else "other"
        return "preparation" if model in self.weight_model_keys() else "other"

    def _record_costs(self) -> None:
        """Every finished item's wall time and devices (from its marker), in pipeline.json under "costs"."""
        path = self.work / "pipeline.json"
        items: dict[str, dict[str, Any]] = {}
        for stage in self.cfg.stages:
            folder = self.done_dir / stage
            for marker in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                done = load_json(marker)
                key = str(done.get("item", marker.stem))
                items[f"{stage}/{key}"] = {"stage": stage, "item": key, "part": self._cost_part(stage, key),
                                           "seconds": done.get("seconds"), "gpus": done.get("gpus"),
                                           "processes": done.get("processes")}  # fmt: skip
        config = load_json(path) if path.is_file() else self.cfg.to_json()
        config[COSTS_KEY] = {"items": items, "units": len(self.cfg.units), "mini_fraction": self.cfg.mini_fraction,
                             "large_fraction": self.cfg.large_fraction}  # fmt: skip
        atomic_write_json(path, config)

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

    # -- stages --------------------------------------------------------------------------------

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
        item = Item(key, f"{what} of {cfg.data.name}", command, outputs=[self.subsets_dir / "subsets.json"])
        items = [item]
        if cfg.judged_tasks:
            review = cfg.review_set or {}
            split = [self.python, "-m", "llava.visatb.metrics.review_set", "split", "--review-set",
                     ",".join(review[k] for k in ("questions", "context", "reference", "rules")),
                     "--review-image-folder", review["image_folder"], "--tasks", ",".join(cfg.judged_tasks),
                     "--output-dir", str(self.review_dir)]  # fmt: skip
            items.append(Item("review-set", f"validation files of {', '.join(cfg.judged_tasks)} from the review set "
                              f"{Path(review['questions']).name}", split,
                              outputs=[Path(self.val_file(t)) for t in cfg.judged_tasks]))  # fmt: skip
        return f"sub-datasets of {cfg.data}", items, 1

    def _task_env(self) -> dict[str, str]:
        cfg = self.cfg
        env = {"TASK_PRESET": cfg.task_preset or "", "TASK_NAMES": "" if cfg.task_preset else ",".join(cfg.tasks)}
        for name, value in (("BASE_MODEL_PATH", cfg.base_model), ("VISION_TOWER", cfg.vision_tower),
                            ("PRETRAIN_MM_MLP_ADAPTER", cfg.projector), ("IMAGE_FOLDER", cfg.image_folder)):  # fmt: skip
            if value:
                env[name] = value
        return env

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
            label = f"{key}: {what} -> {output.name} (log: {self.log_dir / ('final-train' if final else 'train') / (_safe(key) + '.log')})"
            items.append(Item(key, label, command, env=env, outputs=[output / "config.json"],
                              size=0 if final else int(entry["count"])))  # fmt: skip
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
            items.append(Item(key, f"{key} answers {len(tasks)} validation set(s)", command,
                              outputs=[self.answers_file(key, t) for t in tasks]))  # fmt: skip
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
                items.append(Item(f"{key}__{task}", f"{key} / {task} ({metric})", command,
                                  outputs=[self.scores_file], collect=_collect_score))  # fmt: skip
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
        item = Item("weights", "contributions, difficulties and weights from scores.json", command,
                    outputs=[self.weights_file, self.plot_file], collect=self._collect_weights)  # fmt: skip
        items = [item]
        for key, options in cfg.ablation_settings.items():
            ablated = self._weights_command(self.ablation_weights_file(key), **options)
            items.append(Item(f"weights:{key}", f"{key}: ablation weights", ablated,
                              outputs=[self.ablation_weights_file(key)], collect=_collect_weights_line))  # fmt: skip
        title = "VisATB weights (weights.json, heatmap.png, VISATB_WEIGHTS)"
        if len(items) > 1:
            title += f" and {len(items) - 1} ablation weight file(s)"
        return title, items, 1

    def ablation_weights_file(self, key: str) -> Path:
        return self.work / "weights" / f"{model_slug(key)}.json"

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
        item = Item("report", "report.md: per-task table, relative improvements, learning checks", command,
                    outputs=[self.report_file])
        items = [item]
        if cfg.needs_alone:
            compare = [self.python, "-m", "llava.visatb.results.compare", "--scores", str(self.scores_file), "--baseline",
                       "STL", "--tasks", ",".join(cfg.scored_tasks), "--models", ",".join(cfg.final_keys),
                       "--output", str(self.comparison_file), "--markdown", str(self.comparison_file.with_suffix(".md")),
                       "--plot", str(self.comparison_file.with_suffix(".png")), *groups]  # fmt: skip
            items.insert(0, Item("compare", "comparison.json/.md/.png: every final model against STL (dI, dE)",
                                 compare, outputs=[self.comparison_file]))  # fmt: skip
        return "report", items, 1

    @property
    def comparison_file(self) -> Path:
        return self.work / "comparison.json"


def item_devices(stage: str, log: str) -> dict[str, Any]:
    """What a command ran on, from its log: {"gpus": n, "processes": p} (either may be None when unknown).

    Training logs carry the launcher's line (scripts_visatb/_launch.sh): `deepspeed --num_gpus N`, or the
    CPU fallback with its process count; inference logs `[inference] <model> loaded on <device>`."""
    if stage in ("train", "final-train"):
        gpus = re.search(r"^\[visatb\] deepspeed .*--num_gpus (\d+)", log, flags=re.M)
        if gpus:
            return {"gpus": int(gpus.group(1)), "processes": int(gpus.group(1))}
        cpu = re.search(r"falling back to the CPU with (\d+) process", log)
        if cpu:
            return {"gpus": 0, "processes": int(cpu.group(1))}
        return {"gpus": None, "processes": None}
    if stage in ("infer", "final-infer"):
        devices = re.findall(r"^\[inference\] .* loaded on (\S+)", log, flags=re.M)
        if devices:
            return {"gpus": int(devices[0].startswith("cuda")), "processes": 1}
        return {"gpus": None, "processes": 1 if "already complete" in log else None}
    return {"gpus": 0, "processes": 1}


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


def _tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join("    | " + line for line in text)


# ---------------------------------------------------------------------------------------------- command line


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected a yes/no value (1/0, true/false), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the whole VisATB method as one resumable chain (see scripts_visatb/run_visatb.sh).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--work-dir", required=True, help="where every stage writes; reruns resume here")
    parser.add_argument("--data", required=True, help="the entire multi-task training file (JSON list)")
    parser.add_argument("--image-folder", help="root of the records' image paths")
    tasks = parser.add_argument_group("tasks and metrics")
    tasks.add_argument("--task-preset", help="academic, toy, ... (task order = task ids)")
    tasks.add_argument("--tasks", help="task names A,B,... instead of a preset")
    tasks.add_argument("--task-metrics", help="A=caption,B=qa,...: metric per scored task (default: preset/manifest)")
    tasks.add_argument("--unscored-tasks", help="tasks trained but not scored (weight 1.0); default: the preset's")
    tasks.add_argument("--task-groups", help="G1=A,B;G2=C,D: balance task groups (M3IT): one preparation model, "
                       "score (the mean of its tasks') and weight per group; default: the preset's groups")  # fmt: skip
    val = parser.add_argument_group("validation sets (exactly one)")
    val.add_argument("--val-files", help="A=path,B=path,...: one validation file per scored task")
    val.add_argument("--val-manifest", help="toy_benchmark.json, or a subsets.json with carved validation sets")
    val.add_argument("--val-dir", help="folder with {task}_val-{size}.json files (the release's naming)")
    val.add_argument("--val-per-task", type=int, help="carve K records per task out of --data as validation sets")
    review = parser.add_argument_group("GPT-judged tasks (metric gpt_review: the Chat preset)")
    review.add_argument("--review-set", help="the review set of every gpt_review task (LLaVA-Bench-COCO's layout): a "
                        "folder with qa90_questions.jsonl, caps_boxes_coco2014_val_80.jsonl, qa90_gpt4_answer.jsonl "
                        "(or questions.jsonl, context.jsonl, answers_ref.jsonl) [and rule.json], or "
                        "QUESTIONS,CONTEXT,REFERENCE[,RULES]; a question's category decides its task")  # fmt: skip
    review.add_argument("--review-image-folder", help="the review set's images (default: images/ beside its questions)")
    review.add_argument("--judge-model", help="judge model on OPENAI_BASE_URL (default: $JUDGE_MODEL, else gpt-4-0314)")
    model = parser.add_argument_group("starting point (passed to the finetune script)")
    model.add_argument("--base-model", help="BASE_MODEL_PATH, e.g. lmsys/vicuna-7b-v1.5")
    model.add_argument("--vision-tower", help="VISION_TOWER, e.g. openai/clip-vit-large-patch14-336")
    model.add_argument("--projector", help="PRETRAIN_MM_MLP_ADAPTER: the pretrained mm_projector.bin")
    model.add_argument("--start-model", help="also score the starting point: a LLaVA checkpoint (model key 'start')")
    model.add_argument("--start-model-base", help="its --model-base (projector-only or LoRA checkpoints)")
    run = parser.add_argument_group("training and inference")
    run.add_argument("--finetune-script", default=DEFAULT_FINETUNE_SCRIPT)
    run.add_argument("--mini-fraction", type=float, default=DEFAULT_MINI_FRACTION, help="share of every task in the mini set")
    run.add_argument("--large-fraction", type=float, default=1.0,
                     help="share of its task(s) in each task-plus-mini set (M3IT: 0.25); the minis come from it")  # fmt: skip
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--train-args", help="extra flags for every training run (quoted string)")
    run.add_argument("--prep-train-args", help="extra flags for the mini and task-plus-mini runs")
    run.add_argument("--final-train-args", help="extra flags for the final VisATB and EW runs")
    run.add_argument("--infer-args", help="extra flags for inference_visatb.py (e.g. '--batch-size 16')")
    run.add_argument("--max-new-tokens", help="per metric type or task, e.g. qa=16,caption=512 (default: the CLI's)")
    run.add_argument("--conv-mode", default="vicuna_v1")
    run.add_argument("--temperature", default=DEFAULT_TEMPERATURE,
                     help="softmax temperature of the weights, or 'auto': the smallest of 2, 1, 0.5, 0.25, 0.125 "
                     "keeping every final weight in [0.5, 2.0]")
    run.add_argument("--alpha", type=float, nargs=3, default=list(DEFAULT_ALPHA), metavar=("A_OUT", "A_IN", "A_D"),
                     help="Eq. 8: final weight = A_OUT * w_out + A_IN * w_in + A_D * w_diff (>= 0, summing to 1)")
    run.add_argument("--form", choices=("academic", "chat"),
                     help="contributions from the mini and task-plus-mini models (academic) or from start and "
                     "alone:<task> models (chat, App. C; the chain trains those); default: chat for the chat "
                     "preset, academic otherwise")
    run.add_argument("--difficulty-from", choices=("real", "precise"),
                     help="D from mini and task-plus-mini (real) or from mini-alone:<task> and alone:<task> (precise, "
                     "App. F; the chain trains those); default: real for the academic form, precise for chat")
    run.add_argument("--gain-tolerance", type=float, default=DEFAULT_GAIN_TOLERANCE,
                     help="relative own-data gain at or below which a task counts as without gain (weighting_visatb.py)")
    run.add_argument("--max-contribution", type=float, default=DEFAULT_MAX_CONTRIBUTION,
                     help="an own gain so small that some |C[i->j]| exceeds this also counts as no gain")
    run.add_argument("--strict", type=_bool, default=False,
                     help="a task without own-data gain stops the chain at the weights stage (default: neutral weight)")
    run.add_argument("--ew-baseline", type=_bool, default=True, help="also train the EW baseline on the entire data")
    run.add_argument("--methods", help=f"final models, by weighting method: any of {', '.join(METHODS)} "
                     "(default VisATB,EW, or VisATB with --ew-baseline false)")
    run.add_argument("--stl", type=_bool, default=False,
                     help="also train each task alone (alone:<task>, the STL baseline) and compare every final "
                     "model against it (comparison.json: dI, dE)")
    run.add_argument("--ablations", help=f"Table 8's rows, any of {', '.join(ABLATIONS)}: more VisATB final models "
                     "with other alpha, temperature or difficulty")
    run.add_argument("--eval-final", type=_bool, default=True, help="score the final model(s) on every validation set")
    run.add_argument("--jobs", type=int, default=1, help="inference/metric commands run at the same time")
    run.add_argument("--train-jobs", type=int, default=1, help="training runs at the same time (CPU only; 1 on GPUs)")
    run.add_argument("--run-name", default="visatb", help="checkpoint names: llava-<run-name>-<model>")
    run.add_argument("--redo", help=f"recompute from this stage on ({', '.join(STAGES)})")
    cluster = parser.add_argument_group(
        "executor (each --slurm-* value: VALUE for every stage, or STAGE=VALUE pairs, e.g. '1,train=4'; STAGE is "
        "train, infer, score (both stages of that kind) or a stage name such as final-train)")
    cluster.add_argument("--executor", choices=("local", "slurm"), default="local",
                         help="local: every item a subprocess here; slurm: every item an sbatch job, waited on "
                         "through squeue (a rerun waits on jobs still in flight)")
    cluster.add_argument("--slurm-partition", help="partition (default: the cluster's default partition)")
    cluster.add_argument("--slurm-nodes", help="nodes per job (more than 1: training only; launched with srun)")
    cluster.add_argument("--slurm-gpus-per-node", help="GPUs per node (default 0: none requested)")
    cluster.add_argument("--slurm-cpus", help="CPUs per job, also the OMP_NUM_THREADS of a job without GPUs unless "
                         "that is set (default: what a local item of the stage uses: the CPUs here / --jobs or "
                         "--train-jobs)")
    cluster.add_argument("--slurm-time", help="time limit per job (minutes, HH:MM:SS, D-HH:MM:SS)")
    cluster.add_argument("--slurm-args", help="more sbatch flags for every job, e.g. '--account=x --mem=64G'")
    cluster.add_argument("--slurm-train-args", help="more sbatch flags for training jobs only, e.g. '--exclusive'")
    return parser


SLURM_FLAGS = ("slurm_partition", "slurm_nodes", "slurm_gpus_per_node", "slurm_cpus", "slurm_time", "slurm_args",
               "slurm_train_args")  # fmt: skip


def resolve_slurm(args: argparse.Namespace) -> slurm.SlurmSettings | None:
    """The Slurm settings of --executor slurm (None for local); --slurm-* flags without it are an error."""
    given = [f"--{name.replace('_', '-')}" for name in SLURM_FLAGS if getattr(args, name)]
    if args.executor != "slurm":
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --executor slurm (the executor is {args.executor})")
        return None
    return slurm.SlurmSettings.from_flags(
        partition=args.slurm_partition, nodes=args.slurm_nodes, gpus_per_node=args.slurm_gpus_per_node,
        cpus=args.slurm_cpus, time_limit=args.slurm_time, args=args.slurm_args, train_args=args.slurm_train_args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        slurm_settings = resolve_slurm(args)
        if slurm_settings is not None:
            slurm_settings.check_cluster()  # before the first job, not after the first stage
        pipeline = Pipeline(cfg, slurm_settings=slurm_settings)
        if args.redo:
            pipeline.redo_from(args.redo)
    except (ValueError, FileNotFoundError, slurm.SlurmError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        pipeline.run()
    except (PipelineError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
