#!/usr/bin/env bash
# The demo, from a fresh machine: install (scripts/setup.sh), fetch and convert SmolLM2-135M-Instruct
# (scripts/fetch_model.sh), then DPO-train it with LoRA on the shipped preference pairs
# (`prefloop train examples/demo.yaml`). The trainer prints the held-out preference accuracy before
# and after training and a sample answer; then `prefloop eval winrate` judges the trained model against
# the base on held-out prompts. Extra arguments are key=value overrides for the training config.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHON HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

bash scripts/setup.sh
bash scripts/fetch_model.sh
echo "[demo] prefloop train examples/demo.yaml $*"
"$PYTHON" -m prefloop train examples/demo.yaml "$@"
# Win rate of the trained adapter against the base on 16 held-out prompts. The judge is the base model
# itself, the only one this machine has: a mechanism check, not a quality claim (see the README).
eval_args=(--config examples/demo.yaml --limit 16 --judge models/SmolLM2-135M-Instruct
           --temperature 0 --max-new-tokens 64 --judge-max-tokens 32 --batch-size 16
           --out checkpoints/demo/smollm2-dpo/eval-winrate)
echo "[demo] prefloop eval winrate ${eval_args[*]}"
eval_start=$(date +%s)
"$PYTHON" -m prefloop eval winrate "${eval_args[@]}"
echo "[demo] eval winrate took $(( $(date +%s) - eval_start )) s; report: checkpoints/demo/smollm2-dpo/eval-winrate/report.html"
elapsed=$(( $(date +%s) - start ))
printf '[demo] done: total wall time %dm%02ds\n' $((elapsed / 60)) $((elapsed % 60))
