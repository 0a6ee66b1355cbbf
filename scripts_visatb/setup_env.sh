#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the pinned set.
# Source it: `source scripts_visatb/setup_env.sh`. Reinstalls only when requirements change.
_visatb_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_visatb_venv="${VISATB_VENV:-$_visatb_root/.venv}"
_visatb_python="${PYTHON:-}"
if [ -z "$_visatb_python" ]; then
    for candidate in python3.11 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then _visatb_python="$candidate"; break; fi
    done
fi
if [ ! -x "$_visatb_venv/bin/python" ]; then
    echo "[setup] creating virtual environment $_visatb_venv with $_visatb_python"
    "$_visatb_python" -m venv "$_visatb_venv" || return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$_visatb_venv/bin/activate"
_visatb_stamp="$_visatb_venv/.requirements.sha"
_visatb_want="$(cat "$_visatb_root/requirements.txt" "$_visatb_root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_visatb_stamp" 2>/dev/null)" != "$_visatb_want" ]; then
    echo "[setup] installing the pinned requirements into $_visatb_venv (first run takes a minute or two)"
    python -m pip install -q --upgrade pip >/dev/null
    python -m pip install -q -r "$_visatb_root/requirements.txt" || return 1 2>/dev/null || exit 1
    python -m pip install -q --no-deps -e "$_visatb_root" || return 1 2>/dev/null || exit 1
    echo "$_visatb_want" > "$_visatb_stamp"
fi
export DS_ACCELERATOR="${DS_ACCELERATOR:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
unset _visatb_root _visatb_venv _visatb_python _visatb_stamp _visatb_want
