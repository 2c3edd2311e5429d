#!/usr/bin/env bash
# The demo, from a fresh machine: install (scripts/setup.sh), fetch and convert SmolLM2-135M-Instruct
# (scripts/fetch_model.sh), then DPO-train it with LoRA on the shipped preference pairs
# (`prefloop train examples/demo.yaml`). The trainer prints the held-out preference accuracy before
# and after training and a sample answer. Extra arguments are key=value overrides for the config.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
source scripts/python.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

bash scripts/setup.sh
bash scripts/fetch_model.sh
echo "[demo] prefloop train examples/demo.yaml $*"
"$PYTHON" -m prefloop train examples/demo.yaml "$@"
elapsed=$(( $(date +%s) - start ))
printf '[demo] done: total wall time %dm%02ds\n' $((elapsed / 60)) $((elapsed % 60))
