#!/usr/bin/env bash
# Make bench/.venv: a venv that sees the system packages (torch, transformers, peft, prefloop)
# and adds the peers the benchmark compares against (bench/requirements.txt), without touching
# prefloop's own dependencies. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv --system-site-packages "$venv"
fi
# --no-deps for what the system already has would risk a mismatch; let pip resolve, but never
# replace torch (the CPU wheel installed first).
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"
"$venv/bin/python" -c "import trl, torch; print('bench env: trl', trl.__version__, 'torch', torch.__version__)"
