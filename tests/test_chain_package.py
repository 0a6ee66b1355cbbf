"""llava/visatb/chain: its modules import one way, stay small, and its command line names its own flags."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from llava.visatb.chain import cli as chain_cli

REPO = Path(__file__).resolve().parents[1]
CHAIN = REPO / "llava" / "visatb" / "chain"


def chain_imports(module: str) -> set[str]:
    """The chain modules `module` imports at run time (imports for type checking only do not count)."""
    tree = ast.parse((CHAIN / f"{module}.py").read_text())
    guards = [node for node in ast.walk(tree)
              if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    typing_only = {id(n) for guard in guards for n in ast.walk(guard)}
    found = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.ImportFrom) and id(node) not in typing_only and node.module
                and node.module.startswith("llava.visatb.chain.")):  # fmt: skip
            found.add(node.module.rsplit(".", 1)[1])
    return found


def test_chain_modules_import_one_way():
    graph = {path.stem: chain_imports(path.stem) for path in CHAIN.glob("*.py") if path.stem != "__init__"}
    assert graph["config"] == set()  # the base every other module builds on
    assert not any("cli" in deps for m, deps in graph.items() if m != "__main__")  # the front end is on top
    done: set[str] = set()
    while len(done) < len(graph):  # peel off modules whose imports are all peeled: fails on a cycle
        ready = {m for m, deps in graph.items() if m not in done and deps <= done}
        assert ready, f"import cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_chain_modules_stay_under_600_lines():
    sizes = {path.name: len(path.read_text().splitlines()) for path in CHAIN.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "A,B", "--task-preset", "toy"],
         "give either a task list (--tasks) or a preset (--task-preset), not both"),
        ([], "no task list: pass --tasks A,B,... or --task-preset academic|chat|toy"),
        (["--task-preset", "nope"], "unknown task preset 'nope'; known presets: academic, chat, toy"),
    ],
)
def test_task_errors_name_the_chains_flags(tmp_path, capsys, argv, message):
    data = tmp_path / "data.json"
    data.write_text("[]")
    assert chain_cli.main(["--work-dir", str(tmp_path / "w"), "--data", str(data), *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_python_dash_m_runs_the_chain_cli():
    run = subprocess.run([sys.executable, "-m", "llava.visatb.chain", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert run.stdout.startswith("usage: python -m llava.visatb.chain ")
    assert "--executor {local,slurm}" in run.stdout
