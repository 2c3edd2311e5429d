#!/usr/bin/env bash
# Install prefloop and everything it needs on a fresh Debian machine with Python >= 3.10 and pip.
# Idempotent: steps that are already done are skipped, so running it again takes a second.
#
#   bash scripts/setup.sh                  # torch (CPU) + prefloop with its dev extras
#   bash scripts/setup.sh --with-browser   # also Debian's chromium, for the browser tests
#                                          # (same as PREFLOOP_WITH_BROWSER=1)
#
# torch comes FIRST and pinned (`pip install torch==2.13.0`): pip then keeps it, instead of pulling
# a multi-GB CUDA build for prefloop's dependencies. Chromium comes from apt, never from
# `playwright install`. Everything goes into the project's virtual environment .venv/ (made here
# with `python3 -m venv`), so a Debian Python marked externally managed is never touched. Set PYTHON to
# use an interpreter of your own instead (e.g. PYTHON=~/envs/dpo/bin/python): then no .venv is made.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/python.sh
TORCH_REQUIREMENT="${PREFLOOP_TORCH_REQUIREMENT:-torch==2.13.0}"
WITH_BROWSER="${PREFLOOP_WITH_BROWSER:-0}"
for arg in "$@"; do
  case "$arg" in
    --with-browser) WITH_BROWSER=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "setup: unknown option '$arg' (use --with-browser or --help)" >&2; exit 2 ;;
  esac
done

mkdir -p .cache
LOG=".cache/setup.log"
: > "$LOG"
say() { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] FAILED: %s\n' "$*" >&2; exit 1; }
# Run a step quietly; on failure show the end of its output and stop.
step() {
  local what="$1"; shift
  say "$what ..."
  if ! "$@" >>"$LOG" 2>&1; then
    printf '[setup] FAILED: %s. Last lines of %s:\n' "$what" "$LOG" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

if [ "$PREFLOOP_OWN_VENV" = "1" ] && [ ! -x "$PYTHON" ]; then
  BASE_PYTHON="$(command -v python3 || command -v python || true)"
  [ -n "$BASE_PYTHON" ] || fail "no python3 on PATH; install Python >= 3.10 (apt-get install -y python3 python3-venv)"
  say "making the project's virtual environment .venv/ with $BASE_PYTHON"
  if ! "$BASE_PYTHON" -m venv .venv >>"$LOG" 2>&1; then
    rm -rf .venv
    fail "'$BASE_PYTHON -m venv .venv' failed (on Debian/Ubuntu: apt-get install -y python3-venv), or set PYTHON to an interpreter of your own; see $LOG"
  fi
fi
[ -x "$PYTHON" ] || fail "PYTHON=$PYTHON is not an executable interpreter"
"$PYTHON" - <<'PY' || fail "prefloop needs Python >= 3.10 with pip; $PYTHON is too old or has no pip"
import sys
import pip  # noqa: F401
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
if "$PYTHON" -c "import sys, sysconfig, pathlib; sys.exit(0 if (pathlib.Path(sysconfig.get_path('stdlib')) / 'EXTERNALLY-MANAGED').exists() and sys.prefix == sys.base_prefix else 1)"; then
  fail "$PYTHON is a system Python marked externally managed (PEP 668): pip may not install into it. Unset PYTHON to use the project's .venv/, or point PYTHON at a virtual environment"
fi
say "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# 1. torch, pinned, before anything that depends on it.
torch_version="${TORCH_REQUIREMENT#*==}"
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '$torch_version' else 1)" 2>/dev/null; then
  say "torch $torch_version already installed"
else
  step "installing $TORCH_REQUIREMENT (CPU wheel)" "$PYTHON" -m pip install --quiet "$TORCH_REQUIREMENT"
fi

# 2. prefloop (editable) with its dev extras. Skipped when pyproject.toml is unchanged since the last
#    successful install and the package still imports from this checkout.
stamp=".cache/setup-pyproject.sha256"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PYTHON" - <<PY 2>/dev/null
import pathlib, sys
import prefloop, pytest, pytest_timeout, playwright  # noqa: F401
sys.exit(0 if pathlib.Path(prefloop.__file__).resolve().is_relative_to(pathlib.Path("src").resolve()) else 1)
PY
then
  say "prefloop already installed (editable, dependencies up to date)"
else
  step "installing prefloop and its dependencies (pip install -e .[dev])" "$PYTHON" -m pip install --quiet -e ".[dev]"
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$torch_version' else 1)" \
    || fail "installing prefloop replaced torch $torch_version; a dependency pins another torch version"
  echo "$want" > "$stamp"
fi

# 3. Chromium for the browser tests (optional).
if [ "$WITH_BROWSER" = "1" ]; then
  if command -v chromium >/dev/null 2>&1; then
    say "chromium already installed ($(command -v chromium))"
  else
    SUDO=""
    if [ "$(id -u)" != "0" ]; then
      command -v sudo >/dev/null 2>&1 || fail "installing chromium needs root: run as root or install sudo"
      SUDO="sudo"
    fi
    step "apt-get update" $SUDO apt-get update -qq
    step "installing chromium (apt)" env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
    command -v chromium >/dev/null 2>&1 || fail "apt installed chromium but no 'chromium' is on PATH"
  fi
fi

"$PYTHON" -c "import prefloop" || fail "prefloop does not import after installation"
say "done"
