"""The package layout's rules (docs/architecture.md): imports point one way, training imports only the small
contracts it needs, packages stay small.

Imports are read with `ast` from every module under llava/, including those inside functions (a lazy import
is still a dependency) and under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LLAVA = REPO / "llava"

# llava's core: what every other part may import and what imports none of them.
CORE = ("llava.constants", "llava.conversation", "llava.generation", "llava.mm_utils", "llava.model", "llava.utils")
# What training may import from llava/visatb: the task presets, the data check and the weights-file contract.
TRAIN_MAY_IMPORT_FROM_VISATB = {"llava.visatb.tasks", "llava.visatb.check_data", "llava.visatb.weights.weights_file"}
MAX_LINES = 650
# A module longer than MAX_LINES says why near its top, in a line that starts with this (docstring or comment).
LONG_MODULE_MARK = "Long module:"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """{dotted name: file} of every module and package under llava/."""
    return {_module_name(path): path for path in sorted(LLAVA.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@cache
def imports_of(name: str) -> frozenset[str]:
    """The llava modules `name` imports; `from p import x` counts as p.x when that is a module, else as p."""
    tree = ast.parse(modules()[name].read_text(encoding="utf-8"), filename=str(modules()[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base)
    return frozenset(m for m in found if _within(m, "llava"))


def _edges(sources: str, targets: tuple[str, ...] | str) -> list[str]:
    """'module -> import' for every module inside `sources` importing something inside one of `targets`."""
    targets = (targets,) if isinstance(targets, str) else targets
    return [
        f"{name} -> {imported}"
        for name in modules()
        if _within(name, sources)
        for imported in sorted(imports_of(name))
        if any(_within(imported, t) for t in targets)
    ]


def _unit(name: str, parent: str) -> str | None:
    """The direct child of `parent` (sub-package or module) that `name` belongs to, or None if outside it."""
    if not name.startswith(parent + "."):
        return None
    return parent + "." + name[len(parent) + 1 :].split(".")[0]


def _two_way_pairs(parent: str) -> list[str]:
    """Pairs of children of `parent` that import each other, with one import each way as evidence."""
    edges: dict[tuple[str, str], str] = {}
    for name in modules():
        source = _unit(name, parent)
        for imported in imports_of(name):
            target = _unit(imported, parent)
            if source and target and source != target:
                edges.setdefault((source, target), f"{name} -> {imported}")
    return sorted(
        f"{a} <-> {b}: {edges[a, b]}; {edges[b, a]}" for (a, b) in edges if a < b and (b, a) in edges
    )


def test_the_import_parser_sees_lazy_relative_and_from_package_imports(tmp_path, monkeypatch):
    package = tmp_path / "llava" / "pkg"
    package.mkdir(parents=True)
    (tmp_path / "llava" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("X = 1\n")
    (package / "high.py").write_text(
        "from . import low\nfrom .low import X\nimport os\n\ndef f():\n    from llava.pkg import other\n"
        "    import llava.utils\n"
    )
    (package / "other.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "LLAVA", tmp_path / "llava")
    modules.cache_clear()
    imports_of.cache_clear()
    try:
        assert imports_of("llava.pkg.high") == {"llava.pkg.low", "llava.pkg.other", "llava.utils"}
        assert _two_way_pairs("llava.pkg") == []
        (package / "low.py").write_text("from llava.pkg.high import f\n")
        imports_of.cache_clear()
        assert _two_way_pairs("llava.pkg") == [
            "llava.pkg.high <-> llava.pkg.low: llava.pkg.high -> llava.pkg.low; llava.pkg.low -> llava.pkg.high"
        ]
    finally:
        modules.cache_clear()
        imports_of.cache_clear()


def test_eval_imports_nothing_above_it():
    """LLaVA's benchmark code stands on llava core and the answer engine alone."""
    assert _edges("llava.eval", ("llava.visatb", "llava.train", "llava.serve")) == []


def test_answers_import_only_llava_core():
    allowed = (*CORE, "llava.answers")
    outside = [edge for edge in _edges("llava.answers", "llava") if not any(
        _within(edge.split(" -> ")[1], a) for a in allowed)]  # fmt: skip
    assert outside == []


def test_model_imports_nothing_above_it():
    assert _edges("llava.model", ("llava.train", "llava.visatb", "llava.eval", "llava.answers", "llava.serve")) == []


def test_training_imports_only_the_small_contracts_of_visatb():
    imported = {edge.split(" -> ")[1] for edge in _edges("llava.train", "llava.visatb")}
    assert imported - TRAIN_MAY_IMPORT_FROM_VISATB == set(), _edges("llava.train", "llava.visatb")


def test_the_weights_file_contract_loads_without_numpy():
    code = ("import sys; import llava.visatb.weights.weights_file; "
            "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith('llava.')))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert run.stdout.split("\n")[0] == str(["llava.utils", "llava.visatb", "llava.visatb.weights",
                                             "llava.visatb.weights.weights_file"])  # fmt: skip


def test_no_two_folders_of_visatb_import_each_other():
    assert _two_way_pairs("llava.visatb") == []


def test_no_two_packages_of_llava_import_each_other():
    assert _two_way_pairs("llava") == []


def test_visatb_base_modules_import_no_visatb_folder():
    """tasks, scores, check_data, subsets, defaults are the layer the folders stand on."""
    base = [n for n in modules() if n.count(".") == 2 and _within(n, "llava.visatb") and not _is_package(n)]
    folders = tuple(n for n in modules() if n.count(".") == 2 and _within(n, "llava.visatb") and _is_package(n))
    assert base and folders
    assert [edge for name in base for edge in _edges(name, folders)] == []


@pytest.mark.parametrize("package", ["llava.answers", "llava.visatb"])
def test_init_files_of_the_new_packages_hold_only_a_docstring(package):
    for name, path in modules().items():
        if _within(name, package) and _is_package(name):
            body = ast.parse(path.read_text(encoding="utf-8")).body
            code = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
            assert code == [], f"{path.relative_to(REPO)}: an __init__.py holds a docstring only"


def test_no_module_is_long_without_a_reason_at_its_top():
    long = []
    for path in modules().values():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and not any(
            line.strip().lstrip("#").strip().startswith(LONG_MODULE_MARK) for line in lines[:30]
        ):
            long.append(f"{path.relative_to(REPO)} ({len(lines)} lines)")
    assert long == [], f"over {MAX_LINES} lines without a '{LONG_MODULE_MARK} <why>' line in its first 30 lines"
