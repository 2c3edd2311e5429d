#!/usr/bin/env bash
# Prepare what a bare GPU machine (no network; Python 3.12, torch, transformers, peft, accelerate,
# pandas, pyarrow, triton already there; no trl, liger-kernel or datasets) needs for
# bench/gpu_check.sh, in two git-ignored folders that travel with the working tree:
#   .whl/          the wheels: TRL 1.16 (the peer), Liger (trl_liger's kernels), datasets and the
#                  packages datasets needs that such a machine lacks (dill, multiprocess). datasets
#                  4.8.4, not 5.x: it accepts pyarrow >= 21 and huggingface-hub < 2 (the machine has 1.33),
#                  so the machine's own pyarrow serves and no 50 MB pyarrow wheel travels
#   bench/assets/  the SmolLM2 tokenizer (the random-weight models need a real tokenizer; the model
#                  itself, ~540 MB in fp32, does not travel)
# Run here, in the repository root, with network access to PyPI. Total about 6 MB.
# Usage: bash bench/gpu_wheels.sh [TOKENIZER_DIR]   (default: models/SmolLM2-135M-Instruct, or /work/main's)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl bench/assets

PURE=(trl==1.16.0 liger-kernel==0.8.5 datasets==4.8.4 dill==0.4.1)
python3 -m pip download --quiet --no-deps -d .whl "${PURE[@]}"
# multiprocess ships one wheel per Python version; pyarrow is compiled: ask for the GPU machine's platform.
BINARY=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download --quiet "${BINARY[@]}" -d .whl multiprocess==0.70.19

tok="${1:-models/SmolLM2-135M-Instruct}"
[ -f "$tok/tokenizer.json" ] || tok=/work/main/models/SmolLM2-135M-Instruct
[ -f "$tok/tokenizer.json" ] || { echo "no SmolLM2 tokenizer at $tok: run scripts/fetch_model.sh or pass a directory" >&2; exit 1; }
rm -rf bench/assets/smollm2-tokenizer && mkdir -p bench/assets/smollm2-tokenizer
cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json bench/assets/smollm2-tokenizer/
for f in chat_template.jinja special_tokens_map.json generation_config.json config.json; do
  [ -f "$tok/$f" ] && cp "$tok/$f" bench/assets/smollm2-tokenizer/
done
rm -f bench/assets/smollm2-tokenizer/model.safetensors
ls -la .whl bench/assets/smollm2-tokenizer
du -sh .whl bench/assets
