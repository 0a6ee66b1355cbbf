"""Sub-datasets of the preparation stage: the mini set and one task-plus-mini set per task.

    python -m llava.visatb.subsets --data Academic_train-475k.json --output-dir data/subsets --task-preset academic

Mini: per task, max(1, round(fraction * n_task)) records drawn at random (seeded), so every task is present.
Task-plus-mini for task t: all of t's records plus the minis of all other tasks. With `--large-fraction R`
(M3IT: 1/4) it holds a random share R of t instead, and every mini is drawn from its task's share. With
`--task-groups` (M3IT's 5 groups) the sets are per group: the group's tasks plus the minis of the others.
Files follow the release's naming, `{name}-mini_train-{size}.json` and `{task}-plus-mini_train-{size}.json`,
and a manifest (`subsets.json`) lists every file written with its per-task counts.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llava.utils import atomic_write_json, load_json, refuse_same_file
from llava.visatb.defaults import DEFAULT_MINI_FRACTION
from llava.visatb.tasks import parse_task_groups, resolve_tasks

MANIFEST_NAME = "subsets.json"


def human_size(count: int) -> str:
    """A record count as the release writes it in file names: 14k, 475k, 1169k; below 1000 the plain count."""
    if count < 1000:
        return str(count)
    return f"{(count + 500) // 1000}k"


def dataset_name(path: str | os.PathLike) -> str:
    """`Academic_train-475k.json` -> `Academic`: the file name without its split and size suffixes."""
    stem = Path(path).name
    stem = re.sub(r"\.json$", "", stem)
    stem = re.sub(r"-\d+(\.\d+)?[km]?$", "", stem)
    stem = re.sub(r"_(train|val|test)$", "", stem)
    return stem or "data"


def _record_label(index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "")


def check_file_name_part(name: str, what: str, source: str) -> None:
    """Refuse a name that would leave the output folder or hide a file when used inside a file name."""
    if not name or "/" in name or "\\" in name or ".." in name or name.startswith(".") or "\0" in name:
        raise ValueError(
            f"{source}: {what} {name!r} cannot be used in a file name (no '/', '\\', '..', leading '.'); "
            "rename it in the data"
        )


def group_by_task(
    records: Sequence[dict], tasks: Sequence[str] | None = None, source: str = "data"
) -> dict[str, list[int]]:
    """Indices of the records of each task, in task order; tasks come from the data when not given."""
    groups: dict[str, list[int]] = {t: [] for t in tasks} if tasks is not None else {}
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("task"), str):
            raise ValueError(f"{source}: {_record_label(index, record)} has no 'task' field (a task name)")
        task = record["task"]
        if task not in groups:
            if tasks is not None:
                raise ValueError(
                    f"{source}: {_record_label(index, record)} has task {task!r}, which is not in the task "
                    f"list ({', '.join(tasks)})"
                )
            groups[task] = []
        groups[task].append(index)
    empty = [t for t, idx in groups.items() if not idx]
    if empty:
        raise ValueError(f"{source}: no records of task(s) {', '.join(empty)}")
    return groups


def mini_size(n_task: int, fraction: float) -> int:
    """Records of a task that go into the mini set: round(fraction * n), at least 1 (half rounds up)."""
    return min(n_task, max(1, int(fraction * n_task + 0.5)))


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise ValueError(f"mini fraction must be in (0, 1], got {fraction!r}")


def _draw(indices: list[int], k: int, seed: int, stream: str) -> list[int]:
    # One generator per (seed, purpose, task): a task's draw does not depend on the other tasks' sizes.
    rng = random.Random(f"{seed}/{stream}")
    return sorted(rng.sample(indices, k))


def large_size(n_task: int, fraction: float) -> int:
    """Records of a task in its "large enough" subset: round(fraction * n), at least 1 (half rounds up)."""
    return mini_size(n_task, fraction)


def _check_large_fraction(large_fraction: float, fraction: float) -> None:
    if not 0 < large_fraction <= 1:
        raise ValueError(f"large fraction must be in (0, 1], got {large_fraction!r}")
    if large_fraction < fraction:
        raise ValueError(
            f"large fraction {large_fraction:g} is below the mini fraction {fraction:g}: the minis are drawn "
            "from the large subsets, so it must be at least as large"
        )


def _units(
    tasks: Sequence[str], groups: dict[str, Sequence[str]] | None, source: str
) -> dict[str, list[str]]:
    """The preparation units: each task alone, or the task groups (every task of the data in exactly one)."""
    if not groups:
        return {t: [t] for t in tasks}
    members = [t for g in groups.values() for t in g]
    unknown = sorted({t for t in members if t not in tasks})
    if unknown:
        raise ValueError(
            f"{source}: group task(s) {', '.join(unknown)} have no records (tasks: {', '.join(tasks)})"
        )
    dupes = sorted({t for t in members if members.count(t) > 1})
    if dupes:
        raise ValueError(f"{source}: task(s) {', '.join(dupes)} are in more than one group")
    return {g: list(m) for g, m in groups.items()}


def _large_and_mini(
    groups: dict[str, list[int]], fraction: float, large_fraction: float, seed: int
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """({task: its large subset}, {task: its mini share}); the mini share is drawn from the large subset and
    has the size of `fraction` of the whole task. With `large_fraction` 1 the large subset is the whole task
    and the draws are those of the sets without a large fraction."""
    large, mini = {}, {}
    for task, indices in groups.items():
        if large_fraction < 1:
            large[task] = _draw(indices, large_size(len(indices), large_fraction), seed, f"large/{task}")
        else:
            large[task] = list(indices)
        k = min(mini_size(len(indices), fraction), len(large[task]))
        mini[task] = _draw(large[task], k, seed, f"mini/{task}")
    return large, mini


def build_subsets(
    records: Sequence[dict],
    tasks: Sequence[str] | None = None,
    fraction: float = DEFAULT_MINI_FRACTION,
    seed: int = 0,
    source: str = "data",
    groups: dict[str, Sequence[str]] | None = None,
    large_fraction: float = 1.0,
) -> tuple[list[dict], dict[str, list[dict]]]:
    """(mini, {unit: unit-plus-mini}); records keep their order in the input file.

    A unit is a task, or with `groups` a task group. Its set holds the large subset (`large_fraction`, drawn
    per task, so a group's subset is stratified by task) of each of its tasks plus the minis of all others."""
    _check_fraction(fraction)
    _check_large_fraction(large_fraction, fraction)
    by_task = group_by_task(records, tasks, source)
    units = _units(list(by_task), groups, source)
    large, mini_of = _large_and_mini(by_task, fraction, large_fraction, seed)
    in_mini = set().union(*(set(m) for m in mini_of.values()))
    mini = [records[i] for i in sorted(in_mini)]
    plus_mini = {}
    for unit, members in units.items():
        keep = set(in_mini)
        for task in members:
            keep |= set(large[task])
        plus_mini[unit] = [records[i] for i in sorted(keep)]
    return mini, plus_mini


def build_alone_subsets(
    records: Sequence[dict],
    tasks: Sequence[str] | None = None,
    fraction: float = DEFAULT_MINI_FRACTION,
    seed: int = 0,
    source: str = "data",
    groups: dict[str, Sequence[str]] | None = None,
    large_fraction: float = 1.0,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """({unit: its records alone}, {unit: its share of the mini set alone}), for STL and precise difficulty.

    A unit's mini-alone set is exactly its part of `build_subsets`' mini set (the same draw); its alone set is
    all of its tasks' records (the single-task model sees the whole task, whatever the large fraction)."""
    _check_fraction(fraction)
    _check_large_fraction(large_fraction, fraction)
    by_task = group_by_task(records, tasks, source)
    units = _units(list(by_task), groups, source)
    _, mini_of = _large_and_mini(by_task, fraction, large_fraction, seed)
    alone, mini_alone = {}, {}
    for unit, members in units.items():
        alone[unit] = [records[i] for i in sorted(i for t in members for i in by_task[t])]
        mini_alone[unit] = [records[i] for i in sorted(i for t in members for i in mini_of[t])]
    return alone, mini_alone


def carve_validation(
    records: Sequence[dict],
    per_task: int,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    source: str = "data",
) -> tuple[list[dict], dict[str, list[dict]]]:
    """(remaining training records, {task: K validation records}) for datasets without validation sets."""
    if per_task < 1:
        raise ValueError(f"validation records per task must be at least 1, got {per_task}")
    groups = group_by_task(records, tasks, source)
    held_out: set[int] = set()
    val = {}
    for task, indices in groups.items():
        if len(indices) <= per_task:
            raise ValueError(
                f"{source}: task {task!r} has {len(indices)} records, too few to carve {per_task} for "
                f"validation and keep some for training"
            )
        chosen = _draw(indices, per_task, seed, f"val/{task}")
        held_out.update(chosen)
        val[task] = [records[i] for i in chosen]
    train = [r for i, r in enumerate(records) if i not in held_out]
    return train, val


def task_counts(records: Sequence[dict], tasks: Sequence[str]) -> dict[str, int]:
    """Records per task, in task order."""
    counts = {t: 0 for t in tasks}
    for r in records:
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    return counts


def write_subsets(
    data_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    fraction: float = DEFAULT_MINI_FRACTION,
    seed: int = 0,
    name: str | None = None,
    val_per_task: int | None = None,
    manifest_path: str | os.PathLike | None = None,
    alone: bool = False,
    groups: dict[str, Sequence[str]] | None = None,
    large_fraction: float = 1.0,
) -> dict[str, Any]:
    """Build and write every subset file and the manifest; returns the manifest.

    `alone`: also each task's records alone (`alone`, for single-task STL models) and each task's mini share
    alone (`mini_alone`, for the precise difficulty and the Chat form). With `groups`, the task-plus-mini,
    alone and mini-alone sets are per group (the manifest's `groups`); `large_fraction` < 1 makes each
    task-plus-mini set use that share of its task(s), with the minis drawn from those shares."""
    _check_fraction(fraction)
    _check_large_fraction(large_fraction, fraction)
    if val_per_task is not None and val_per_task < 1:
        raise ValueError(f"--val-per-task must be at least 1, got {val_per_task}")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file, not a folder")
    records = load_json(data_path)
    if not isinstance(records, list):
        raise ValueError(f"{data_path}: expected a JSON list of records, got {type(records).__name__}")
    source = str(data_path)
    task_order = list(group_by_task(records, tasks, source))
    for task in task_order:
        check_file_name_part(task, "task name", source)
    units = _units(task_order, groups, source)
    for unit in units if groups else ():
        check_file_name_part(unit, "group name", source)
    name = name or dataset_name(data_path)
    check_file_name_part(name, "--name", source)
    if manifest_path is not None:
        refuse_same_file(manifest_path, {"the input data file --data": data_path}, "--manifest")
    output_dir = Path(output_dir)
    manifest: dict[str, Any] = {
        "source": str(Path(data_path).resolve()),
        "name": name,
        "seed": seed,
        "mini_fraction": fraction,
        "large_fraction": large_fraction,
        "tasks": task_order,
        "groups": units if groups else None,
        "output_dir": str(output_dir.resolve()),
        "entire": {"count": len(records), "per_task": task_counts(records, task_order)},
        "train": None,
        "val": {},
        "mini": None,
        "plus_mini": {},
    }
    jobs: list[tuple[str, list[dict]]] = []

    def plan(entry_parent: dict, key: str, file_name: str, subset: list[dict]) -> None:
        entry_parent[key] = {
            "file": file_name,
            "path": str((output_dir / file_name).resolve()),
            "count": len(subset),
            "per_task": task_counts(subset, task_order),
        }
        jobs.append((file_name, subset))

    train = records
    if val_per_task:
        train, val = carve_validation(records, val_per_task, task_order, seed, source)
        for task, subset in val.items():
            plan(manifest["val"], task, f"{task}_val-{human_size(len(subset))}.json", subset)
        plan(manifest, "train", f"{name}_train-{human_size(len(train))}.json", train)
    mini, plus_mini = build_subsets(train, task_order, fraction, seed, source, groups, large_fraction)
    plan(manifest, "mini", f"{name}-mini_train-{human_size(len(mini))}.json", mini)
    for task, subset in plus_mini.items():
        plan(manifest["plus_mini"], task, f"{task}-plus-mini_train-{human_size(len(subset))}.json", subset)
    if alone:
        manifest["alone"], manifest["mini_alone"] = {}, {}
        alone_sets, mini_alone_sets = build_alone_subsets(
            train, task_order, fraction, seed, source, groups, large_fraction
        )
        for task, subset in alone_sets.items():
            plan(manifest["alone"], task, f"{task}-alone_train-{human_size(len(subset))}.json", subset)
        for task, subset in mini_alone_sets.items():
            plan(
                manifest["mini_alone"],
                task,
                f"{task}-mini-alone_train-{human_size(len(subset))}.json",
                subset,
            )

    names = [file_name for file_name, _ in jobs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"two subsets would be written to the same file: {', '.join(clashes)}; pick --name")
    if any((output_dir / n).resolve() == Path(data_path).resolve() for n in names):
        raise ValueError(
            f"{data_path}: a subset would overwrite the input file; pick another --output-dir or --name"
        )
    for file_name, subset in tqdm(jobs, desc="writing subsets", unit="file", file=sys.stderr):
        atomic_write_json(output_dir / file_name, subset, indent=None)
    atomic_write_json(manifest_path or output_dir / MANIFEST_NAME, manifest)
    return manifest


def format_counts(manifest: dict[str, Any]) -> str:
    """A per-task table of the counts in every subset, then the files written."""
    tasks = manifest["tasks"]
    width = max([len(t) for t in tasks] + [len("total")]) + 2
    columns = [("entire", manifest["entire"])]
    if manifest["train"]:
        columns += [("val", {"per_task": {t: e["count"] for t, e in manifest["val"].items()}})]
        columns += [("train", manifest["train"])]
    columns += [("mini", manifest["mini"])]
    unit_of = {t: g for g, members in (manifest.get("groups") or {}).items() for t in members}
    own = {
        t: manifest["plus_mini"][unit_of.get(t, t)]
        for t in tasks
        if unit_of.get(t, t) in manifest["plus_mini"]
    }
    summed = len(columns)
    if manifest.get("large_fraction", 1.0) < 1:
        columns += [("large", {"per_task": {t: e["per_task"].get(t, 0) for t, e in own.items()}})]
    columns += [("plus-mini", {"per_task": {t: e["count"] for t, e in own.items()}})]
    lines = [f"{'task':<{width}}" + "".join(f"{c:>11}" for c, _ in columns)]
    for task in tasks:
        lines.append(f"{task:<{width}}" + "".join(f"{e['per_task'].get(task, 0):>11}" for _, e in columns))
    totals = [str(sum(e["per_task"].values())) for _, e in columns[:summed]]
    lines.append(f"{'total':<{width}}" + "".join(f"{t:>11}" for t in totals))
    if unit_of:
        lines.append("(plus-mini: the size of the group-plus-mini file of the task's group)")
        lines.append("groups: " + "; ".join(f"{g} = {', '.join(m)}" for g, m in manifest["groups"].items()))
    else:
        lines.append("(plus-mini: the size of each task's own task-plus-mini file)")
    if "large" in dict(columns):
        lines.append(
            f"(large: the task's records in that file, a share {manifest['large_fraction']:g} of the task)"
        )
    lines.append(f"files in {manifest['output_dir']}:")
    entries = list(manifest["val"].values()) + [manifest["train"], manifest["mini"]]
    entries += list(manifest["plus_mini"].values())
    entries += list(manifest.get("alone", {}).values()) + list(manifest.get("mini_alone", {}).values())
    for entry in entries:
        if entry:
            lines.append(f"  {entry['file']}  ({entry['count']} records)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write the mini set and the task-plus-mini sets of a multi-task training file."
    )
    parser.add_argument("--data", required=True, help="the entire multi-task training file (JSON list)")
    parser.add_argument("--output-dir", required=True)
    tasks = parser.add_mutually_exclusive_group()
    tasks.add_argument("--tasks", help="task names A,B,... (fixes the order; other task names are errors)")
    tasks.add_argument("--task-preset", help="academic or chat")
    parser.add_argument("--mini-fraction", type=float, default=DEFAULT_MINI_FRACTION, help="default 1/32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--name", help="file name prefix of the mini (and training) file; default from --data"
    )
    parser.add_argument(
        "--val-per-task", type=int, help="carve K records per task into {task}_val-K.json, out of training"
    )
    parser.add_argument(
        "--manifest", help=f"where to write the manifest (default OUTPUT_DIR/{MANIFEST_NAME})"
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="also each task alone and its mini share alone (STL, precise difficulty)",
    )
    parser.add_argument(
        "--task-groups",
        help="G1=A,B;G2=C,D: one task-plus-mini (and alone) set per group instead of per task (M3IT's setting)",
    )
    parser.add_argument(
        "--large-fraction",
        type=float,
        default=1.0,
        help="share of each task in its task-plus-mini set (1/4 for M3IT); the minis come from these shares",
    )
    parser.add_argument("--check", action="store_true", help="check the data first (needs --image-folder)")
    parser.add_argument("--image-folder", help="image root, for --check")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tasks = resolve_tasks(args.tasks, args.task_preset) if (args.tasks or args.task_preset) else None
        if args.check:
            from llava.visatb.check_data import check_file

            if not args.image_folder:
                raise ValueError("--check needs --image-folder")
            report = check_file(args.data, args.image_folder, tasks)
            print(report.format())
            if not report.ok:
                print(f"error: {args.data} failed the data check; no subsets written", file=sys.stderr)
                return 1
        manifest = write_subsets(
            args.data,
            args.output_dir,
            tasks,
            fraction=args.mini_fraction,
            seed=args.seed,
            name=args.name,
            val_per_task=args.val_per_task,
            manifest_path=args.manifest,
            alone=args.alone,
            groups=parse_task_groups(args.task_groups) if args.task_groups else None,
            large_fraction=args.large_fraction,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_counts(manifest))
    print(f"manifest: {args.manifest or Path(args.output_dir) / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
