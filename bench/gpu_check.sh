#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a bare GPU machine (issue 17), in under 8 minutes on one
# H200. Run from the repository root:   bash bench/gpu_check.sh OUTDIR
# Before it: `bash bench/gpu_wheels.sh` here (network) fills .whl/ and bench/assets/; carry both.
# Stages, each under its own time limit (a stuck stage cannot eat the others' time), each result
# printed as soon as it is done:
#   0 install   the wheels from .whl/ into /tmp/site when TRL is not importable (no network needed)
#   1 pytest    tests/test_gpu.py (flex and segment attention vs the masked computation on CUDA, fp32
#               and bf16, values and gradients; compiled flex across row lengths) + the CPU equality
#               tests of the backends on this machine's torch/transformers
#   2 table     bench/bench_train.py --device cuda: Qwen2-0.5B-shaped random model, LoRA and full,
#               fp32 per-step loss check on 16 pairs first, then bf16 whole runs of 128 pairs, batch 8:
#               TRL + Liger first, then prefloop (attn_backend auto = varlen) and prefloop_flex with
#               Liger's measured peak as their memory budget (gradient_checkpointing: auto), then TRL
#               defaults and TRL + precompute
#   3 scaleout  bench/gpu_scaleout_check.sh: DDP and FSDP through torchrun on one GPU (4 steps)
#   4 smollm2   the same table for the SmolLM2-135M shape, LoRA (only if time is left)
#   5 profile   bench/gpu_profile.py: one prefloop run (qwen2 shape, LoRA, 32 pairs) under torch.profiler:
#               the GPU's busy share and the top operators, into gpu_check.log (only if time is left)
# OUTDIR gets 8 files at most: gpu_check.log (the machine, versions and this summary), pytest.log,
# bench.log, table.md + table.json (qwen2), table-smollm2.md + .json, scaleout.log.
# STAGES="pytest table scaleout smollm2 profile" (the default: all) runs only the stages named (a rerun after
# a fix); PYTEST_K narrows the CUDA tests (pytest -k); CHECK_PAIRS=0 skips the fp32 loss check of the table.
# ALLOW_CPU=1 dry-runs every stage on a CPU with tiny sizes (random 4-layer model, 8 short pairs,
# prefloop and TRL; needs trl importable, e.g. bench/.venv/bin/python as PYTHON).
# Exit status: 0 when every stage that ran passed.
set -u
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash bench/gpu_check.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 \
       HF_DATASETS_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
BUDGET="${BUDGET:-450}"  # seconds for all stages together: the whole call must stay under 8 minutes
SCALE=1  # stage limits x SCALE (a CPU dry run is far slower)
START=$(date +%s)
FAILED=0
LOG="$OUT/gpu_check.log"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
limit() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; echo $(( want > 0 ? want : 0 )); }
STAGES=" ${STAGES:-pytest table scaleout smollm2 profile} "
stage() {  # name, seconds wanted, log file, command...: run under `timeout`, print the verdict with its time
  local name=$1 want=$2 log=$3; shift 3
  local t0 secs rc
  case "$STAGES install " in *" $name "*) ;; *) say "[$name] not asked for (STAGES)"; return ;; esac
  secs=$(limit $(( want * SCALE )))
  if [ "$secs" -lt "${MIN_STAGE:-30}" ]; then say "[$name] SKIPPED: only $(left) s of the ${BUDGET} s budget left"; FAILED=1; return; fi
  t0=$(date +%s)
  timeout -k 10 "$secs" "$@" >> "$log" 2>&1; rc=$?
  if [ $rc -eq 0 ]; then say "[$name] ok in $(( $(date +%s) - t0 )) s"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then say "[$name] TIMED OUT after ${secs} s"; FAILED=1
  else say "[$name] FAILED (exit $rc) after $(( $(date +%s) - t0 )) s"; FAILED=1; fi
}

if [ -n "${ALLOW_CPU:-}" ] && ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  DEVICE=cpu
  QWEN=(--model random:small --pairs 8 --check-pairs 8 --batch 4 --lengths short --finetuning lora --engines trl,prefloop,prefloop_varlen
        --check-engines prefloop,trl --prefloop-budget-from trl)
  SMOL=(--model random:small --pairs 8 --batch 4 --lengths short --finetuning lora --engines prefloop,trl)
  ENGINE_TIMEOUT=900; BUDGET="${BUDGET_CPU:-3600}"; SCALE=8; SCALEOUT_MODES="${SCALEOUT_MODES:-ddp-1gpu}"
else
  DEVICE=cuda
  QWEN=(--model random:qwen2-0.5b --pairs 128 --check-pairs "${CHECK_PAIRS:-16}" --finetuning lora,full
        --engines "${QWEN_ENGINES:-trl_liger,prefloop,prefloop_flex,trl,trl_precompute}" --check-engines prefloop,trl,trl_precompute,trl_liger
        --prefloop-budget-from trl_liger)
  SMOL=(--model random:smollm2-135m --pairs 128 --finetuning lora --engines trl_liger,prefloop,trl,trl_precompute
        --prefloop-budget-from trl_liger)
  ENGINE_TIMEOUT=150
fi

# 0 install ------------------------------------------------------------------------------------------
if ! "$PY" -c "import trl" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  stage install 60 "$LOG" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
  date -u; nvidia-smi 2>&1 | head -15; nproc
  "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("transformers", "peft", "accelerate", "trl", "datasets", "liger_kernel", "pyarrow", "triton", "prefloop"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as err:
        print(name, "NOT IMPORTABLE:", type(err).__name__, err)
EOF
} 2>&1 | tee -a "$LOG"
say "# prefloop GPU check on $DEVICE (budget $BUDGET s)"

# 1 pytest -------------------------------------------------------------------------------------------
stage pytest 90 "$OUT/pytest.log" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_attention.py \
  -k "${PYTEST_K:-gpu or cuda or varlen or flex or sdpa_mask}"
tail -4 "$OUT/pytest.log" 2>/dev/null | tee -a "$LOG"

# 2 the table (qwen2-0.5b) ---------------------------------------------------------------------------
OPTIONS='{"packing": true, "prefix_sharing": true, "logps_chunk_size": 1024, "gradient_checkpointing": "auto"}'
BENCH=("$PY" bench/bench_train.py --device "$DEVICE" --in-process --tokenizer bench/assets/smollm2-tokenizer
       --precision bf16 --timeout "$ENGINE_TIMEOUT" --prefloop-options "$OPTIONS")
stage table 240 "$OUT/bench.log" "${BENCH[@]}" "${QWEN[@]}" --out "$OUT/table.md"
grep -E "loss check|^\[|failed|per-step losses|memory budget" "$OUT/bench.log" 2>/dev/null | tail -16 | tee -a "$LOG"
[ -f "$OUT/table.md" ] && tee -a "$LOG" < "$OUT/table.md"

# 3 DDP / FSDP smoke ---------------------------------------------------------------------------------
stage scaleout 110 "$OUT/scaleout.log" env MODES="${SCALEOUT_MODES:-ddp-1gpu fsdp-1gpu}" STEPS=4 \
  bash bench/gpu_scaleout_check.sh
grep -E "^(mode|ddp|fsdp|bf16)|^ " "$OUT/scaleout.log" 2>/dev/null | head -20 | tee -a "$LOG"

# 4 the table (smollm2-135m), if time is left ------------------------------------------------------
MIN_STAGE=45 stage smollm2 120 "$OUT/bench.log" "${BENCH[@]}" "${SMOL[@]}" --out "$OUT/table-smollm2.md"
[ -f "$OUT/table-smollm2.md" ] && tee -a "$LOG" < "$OUT/table-smollm2.md"

# 5 profile of one prefloop run, if time is left ----------------------------------------------------
if [ "$DEVICE" = cuda ]; then PROFILE=(--model random:qwen2-0.5b --pairs 32)
else PROFILE=(--device cpu --model random:small --pairs 8 --lengths short); fi
MIN_STAGE=30 stage profile 60 "$LOG" "$PY" bench/gpu_profile.py --tokenizer bench/assets/smollm2-tokenizer "${PROFILE[@]}"

say "# done in $(( $(date +%s) - START )) s; exit $FAILED"
exit $FAILED
