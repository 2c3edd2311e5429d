# Sourced by the scripts in this folder: sets and exports PYTHON, the interpreter prefloop runs in.
# Default: the project's virtual environment .venv/ (made by scripts/setup.sh). Set PYTHON to use
# another interpreter, e.g. one of your own virtual environments: PYTHON=/path/to/venv/bin/python.
PREFLOOP_VENV_PYTHON="$PWD/.venv/bin/python"
PYTHON="${PYTHON:-$PREFLOOP_VENV_PYTHON}"
if [ "$PYTHON" = "$PREFLOOP_VENV_PYTHON" ]; then PREFLOOP_OWN_VENV=1; else PREFLOOP_OWN_VENV=0; fi
export PYTHON PREFLOOP_OWN_VENV
