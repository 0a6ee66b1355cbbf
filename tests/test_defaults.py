"""llava/visatb/defaults.py is the one source of the defaults: the shell scripts and the chain's flags read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava.visatb import defaults, scores
from llava.visatb.chain import cli as chain_cli
from llava.visatb.chain import config as chain_config

REPO = Path(__file__).resolve().parents[1]


def shell(script: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run(["bash", "-c", script], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return run.stdout


def test_shell_lines_evaluate_to_the_python_values():
    printed = shell(f'eval "$({sys.executable} -m llava.visatb.defaults --shell)"; '
                    'printf "%s|" "$DEFAULT_ALPHA" "$DEFAULT_TEMPERATURE" "$DEFAULT_MINI_FRACTION" '
                    '"$DEFAULT_GAIN_TOLERANCE" "$DEFAULT_MAX_CONTRIBUTION" "$DEFAULT_MAX_NEW_TOKENS" "$METHOD_KEYS"')  # fmt: skip
    alpha, temperature, mini, tolerance, contribution, tokens, methods, _ = printed.split("|")
    assert tuple(float(a) for a in alpha.split()) == defaults.DEFAULT_ALPHA == (0.25, 0.25, 0.5)
    assert float(temperature) == defaults.DEFAULT_TEMPERATURE == 0.5
    assert float(mini) == defaults.DEFAULT_MINI_FRACTION == 1 / 32
    assert float(tolerance) == defaults.DEFAULT_GAIN_TOLERANCE == 0.01
    assert float(contribution) == defaults.DEFAULT_MAX_CONTRIBUTION == 10.0
    assert int(tokens) == defaults.DEFAULT_MAX_NEW_TOKENS == 2048
    assert methods.split(",") == list(scores.METHOD_KEYS) == ["VisATB", "EW", "TLA", "RLW", "DWA", "IGB"]


def test_the_chains_flags_default_to_the_defaults_module():
    args = chain_cli.build_parser().parse_args(["--work-dir", "w", "--data", "d.json"])
    assert args.alpha == list(defaults.DEFAULT_ALPHA) and args.temperature == defaults.DEFAULT_TEMPERATURE
    assert args.mini_fraction == defaults.DEFAULT_MINI_FRACTION
    assert (args.gain_tolerance, args.max_contribution) == (defaults.DEFAULT_GAIN_TOLERANCE,
                                                            defaults.DEFAULT_MAX_CONTRIBUTION)  # fmt: skip
    assert list(chain_config.METHODS) == list(scores.METHOD_KEYS)


def run_visatb_arguments(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """The arguments run_visatb.sh hands the chain, caught by a `python` that records them (the defaults
    module itself still runs on the real interpreter)."""
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir(parents=True)
    record = tmp_path / "args.txt"
    stub.write_text(f'#!/usr/bin/env bash\nif [ "$2" = llava.visatb.defaults ]; then exec {sys.executable} "$@"; fi\n'
                    f'printf "%s\\n" "$@" > {record}\n')  # fmt: skip
    stub.chmod(0o755)
    base = {"PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(tmp_path)}
    unset = ("MINI_FRACTION", "TEMPERATURE", "ALPHA", "GAIN_TOLERANCE", "MAX_CONTRIBUTION", "METHODS")
    full = {k: v for k, v in os.environ.items() if k not in unset}
    subprocess.run(["bash", str(REPO / "scripts_visatb" / "run_visatb.sh")], cwd=REPO, env={**full, **base, **env},
                   check=True, capture_output=True)  # fmt: skip
    return record.read_text().splitlines()


def flag(args: list[str], name: str, count: int = 1) -> list[str]:
    return args[args.index(name) + 1 : args.index(name) + 1 + count]


def test_run_visatb_passes_the_defaults_module_values_unless_a_variable_is_set(tmp_path):
    args = run_visatb_arguments(tmp_path / "a", {})
    assert flag(args, "--mini-fraction") == [repr(defaults.DEFAULT_MINI_FRACTION)]
    assert flag(args, "--temperature") == [repr(defaults.DEFAULT_TEMPERATURE)]
    assert flag(args, "--alpha", 3) == [repr(a) for a in defaults.DEFAULT_ALPHA]
    assert flag(args, "--gain-tolerance") == [repr(defaults.DEFAULT_GAIN_TOLERANCE)]
    assert flag(args, "--max-contribution") == [repr(defaults.DEFAULT_MAX_CONTRIBUTION)]
    assert "--methods" not in args
    # The chain reads what the script passes as the values it would default to itself.
    assert args[:2] == ["-m", "llava.visatb.chain"]
    parsed = chain_cli.build_parser().parse_args(args[2:])
    default = chain_cli.build_parser().parse_args(["--work-dir", "w", "--data", "d.json"])
    for name in ("mini_fraction", "alpha", "gain_tolerance", "max_contribution"):
        assert getattr(parsed, name) == getattr(default, name)
    assert float(parsed.temperature) == default.temperature

    mine = run_visatb_arguments(tmp_path / "b", {"MINI_FRACTION": "0.1", "ALPHA": "0.5 0.5 0", "TEMPERATURE": "auto"})
    assert flag(mine, "--mini-fraction") == ["0.1"] and flag(mine, "--alpha", 3) == ["0.5", "0.5", "0"]
    assert flag(mine, "--temperature") == ["auto"]


@pytest.mark.parametrize("argv", [[], ["--shell"]])
def test_defaults_cli_prints_every_value(argv, capsys):
    assert defaults.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == len(defaults.shell_values()) and "DEFAULT_MINI_FRACTION" in out
