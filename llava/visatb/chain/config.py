"""The chain's configuration: the command line resolved into a checked `PipelineConfig` before anything runs.

Every error names the flag or file at fault. The constants here (stages, final methods, Table 8's ablation
rows) are the vocabulary the other chain modules share.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llava.folders import base_model_problem
from llava.utils import load_json
from llava.visatb.defaults import (
    DEFAULT_ALPHA,
    DEFAULT_GAIN_TOLERANCE,
    DEFAULT_MAX_CONTRIBUTION,
    DEFAULT_MINI_FRACTION,
    DEFAULT_TEMPERATURE,
)
from llava.visatb.scores import ALONE_PREFIX, EW, METHOD_KEYS, MINI, MINI_ALONE_PREFIX, START, STL, VISATB
from llava.visatb.tasks import (
    CHAIN_METRIC_TYPES,
    GPT_REVIEW,
    check_task_groups,
    get_preset,
    parse_task_groups,
    parse_task_names,
    resolve_tasks,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
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


class PipelineError(RuntimeError):
    """A stage failed; the message names the stage, the item and its log file."""


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
    strict_reuse: bool = False  # an item whose inputs changed stops the chain instead of being redone

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
    tasks = resolve_tasks(args.tasks, args.task_preset, names_flag="--tasks", preset_flag="--task-preset")
    preset = get_preset(args.task_preset).name if args.task_preset else None
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
        metrics = dict(get_preset(preset).metrics)
    else:
        raise ValueError("no metric for the tasks: pass --task-metrics A=qa,B=caption,... (or use a preset)")
    unscored = set(parse_task_names(args.unscored_tasks) if args.unscored_tasks else manifest_unscored)
    if preset is not None and not args.unscored_tasks:
        unscored |= set(get_preset(preset).unscored)
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
    elif preset is not None and get_preset(preset).groups:
        groups = {g: list(m) for g, m in get_preset(preset).groups.items()}
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
    if args.base_model:
        problem = base_model_problem(args.base_model, "--base-model (BASE_MODEL_PATH)")
        if problem:
            raise ValueError(problem)

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
        strict_reuse=bool(getattr(args, "strict_reuse", False)),
    )
