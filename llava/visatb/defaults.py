"""One source for the VisATB workflow's defaults: every argparse default and the shell scripts read them here.

    python -m llava.visatb.defaults --shell     # NAME=value lines for `eval` in a shell script

scripts_visatb/run_visatb.sh and compare_methods.sh evaluate that output and use each value only where the
user left the variable unset. The model keys (mini, start, VisATB, EW, the method names) are a vocabulary of
the scores table and live in llava/visatb/scores.py; `--shell` prints the method names from there.
Importing this module imports nothing heavy (the chain's orchestrator reads it without torch or numpy).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

# Eq. 8's a_out, a_in, a_D: final weight = a_out * w_out + a_in * w_in + a_D * w_D (the paper's setting).
DEFAULT_ALPHA: tuple[float, float, float] = (0.25, 0.25, 0.5)
# The softmax temperature of the weights; the paper's temperature rule chose it for its Academic and Chat runs.
DEFAULT_TEMPERATURE = 0.5
# Share of every task in the mini set (the paper: 1/32).
DEFAULT_MINI_FRACTION = 1 / 32
# A task whose own-data gain is at most this share of its score has no gain (neutral weight) ...
DEFAULT_GAIN_TOLERANCE = 0.01
# ... as has one whose gain is so small that some |C[i->j]| exceeds this.
DEFAULT_MAX_CONTRIBUTION = 10.0
# Answer length limit of the validation-set answers (inference_visatb.py's --max_new_tokens).
DEFAULT_MAX_NEW_TOKENS = 2048


def shell_values() -> dict[str, str]:
    """{shell variable: value} of every default a shell script reads, as the flags take them."""
    from llava.visatb.scores import METHOD_KEYS

    return {
        "DEFAULT_ALPHA": " ".join(repr(a) for a in DEFAULT_ALPHA),
        "DEFAULT_TEMPERATURE": repr(DEFAULT_TEMPERATURE),
        "DEFAULT_MINI_FRACTION": repr(DEFAULT_MINI_FRACTION),
        "DEFAULT_GAIN_TOLERANCE": repr(DEFAULT_GAIN_TOLERANCE),
        "DEFAULT_MAX_CONTRIBUTION": repr(DEFAULT_MAX_CONTRIBUTION),
        "DEFAULT_MAX_NEW_TOKENS": str(DEFAULT_MAX_NEW_TOKENS),
        "METHOD_KEYS": ",".join(METHOD_KEYS),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the VisATB defaults.")
    parser.add_argument("--shell", action="store_true", help="NAME=value lines, quoted for a shell's eval")
    args = parser.parse_args(argv)
    for name, value in shell_values().items():
        print(f"{name}={shlex.quote(value)}" if args.shell else f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
