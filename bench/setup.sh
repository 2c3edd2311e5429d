#!/usr/bin/env bash
# Make bench/.venv: its own virtual environment with torch (CPU wheel, pinned first), prefloop
# (editable, from this checkout) and the peers the benchmarks compare against (bench/requirements.txt:
# TRL, alpaca_eval, lm-eval, ...). The peers never enter prefloop's own environment (.venv) or its
# dependencies. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$here/.venv"
TORCH_REQUIREMENT="${PREFLOOP_TORCH_REQUIREMENT:-torch==2.13.0}"
if [ ! -x "$venv/bin/python" ]; then
  "$(command -v python3 || command -v python)" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "$TORCH_REQUIREMENT"
"$venv/bin/pip" install --quiet -e "$root" -r "$here/requirements.txt" "$TORCH_REQUIREMENT"
"$venv/bin/python" -c "import trl, torch, prefloop; print('bench env: trl', trl.__version__, 'torch', torch.__version__)"
