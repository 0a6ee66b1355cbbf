#!/usr/bin/env bash
# Create (or reuse) the second virtual environment, .venv-ecosystem: transformers 5.x, lmms-eval and torch 2.13.0
# CPU from requirements-ecosystem.txt, for checking exports (python -m llava.model.convert_to_hf) the way users
# evaluate them. Run it (do not source it); it prints the environment's python on its last line. It reinstalls
# only when requirements-ecosystem.txt changes. VISATB_ECOSYSTEM_VENV chooses another folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VISATB_ECOSYSTEM_VENV:-$root/.venv-ecosystem}"
requirements="$root/requirements-ecosystem.txt"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    for candidate in python3.11 python3.12 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
    done
fi
mkdir -p "$(dirname "$venv")"
# One builder at a time (tests and CI may start it together).
exec 9>"$venv.lock"
flock 9
stamp="$venv/.requirements.sha"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup-ecosystem] installing requirements-ecosystem.txt into $venv (a minute or two)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    # The file pins the whole closure: --no-deps keeps lmms-eval's unused heavy requirements out.
    "$venv/bin/python" -m pip install -q --no-deps -r "$requirements" >&2
    "$venv/bin/python" -c "import transformers, lmms_eval.models.chat.llava_hf" >&2
    echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
