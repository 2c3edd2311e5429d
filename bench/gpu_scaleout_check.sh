#!/usr/bin/env bash
# The single-GPU scale-out paths on a GPU machine (issue 8): a small random Qwen2 model, LoRA, 6 steps
# each, one result line per mode:
#   bf16          plain `prefloop train` with bf16: true
#   ddp-1gpu      torchrun --nproc_per_node 1 (NCCL process group, DDP wrapper, step as the wrapper's forward)
#   fsdp-1gpu     torchrun --nproc_per_node 1 with fsdp + examples/fsdp/fsdp_config.json
#   zero2 / zero3 torchrun --nproc_per_node 1 with examples/deepspeed/ds_z{2,3}_config.json (only if
#                 `import deepspeed` works; otherwise one "skipped" line each)
# Usage (repository root, prefloop's dependencies installed):  bash bench/gpu_scaleout_check.sh
# Takes about 2-4 minutes on one H100. ALLOW_CPU=1 MODES="bf16 ddp-1gpu" dry-runs the script on a CPU. Exit status 0 only if every mode that ran passed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK="${WORK:-$(mktemp -d /tmp/prefloop-scaleout.XXXX)}"
STEPS="${STEPS:-6}"
"${PYTHON:-python3}" - "$WORK" 2>"$WORK/setup.log" <<'EOF'
import json, sys
from pathlib import Path
import torch
from prefloop.testing import save_tiny_model
work = Path(sys.argv[1])
import os
assert torch.cuda.is_available() or os.environ.get("ALLOW_CPU"), "no CUDA GPU visible"
save_tiny_model(work / "model", hidden_size=256, num_layers=4)
topics = ["the moon", "tea", "python code", "water", "a dog", "the sun", "two plus two", "maps"]
with (work / "pairs.jsonl").open("w") as f:
    for i in range(64):
        t = topics[i % len(topics)]
        f.write(json.dumps({"conversations": [{"from": "human", "value": f"What is {t}?" + " Explain." * (i % 3)}],
                            "chosen": f"Certainly. Here is a good answer about {t}" + ", step by step" * (i % 4),
                            "rejected": "no" + " idea" * (i % 2)}) + "\n")
print(f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU dry run)'}; torch {torch.__version__}; work dir {work}")
EOF
[ $? -eq 0 ] || { tail -20 "$WORK/setup.log"; exit 1; }

COMMON=(model_name_or_path="$WORK/model" dataset="$WORK/pairs.jsonl" template=qwen cutoff_len=256
        finetuning_type=lora lora_rank=8 learning_rate=1e-3 max_steps="$STEPS" per_device_train_batch_size=4
        gradient_accumulation_steps=2 val_size=8 logging_steps=1 save_steps=3 report_to=none sample_prompts=1
        bf16=true overwrite_output_dir=true)
PORT=$((29500 + RANDOM % 2000))
FAILED=0

result() {  # mode, status, output dir, start, end, log
  "${PYTHON:-python3}" - "$@" <<'EOF'
import json, sys
from pathlib import Path
mode, status, out, start, end, log = sys.argv[1:7]
line = f"{mode:<10} {status:<7} {float(end) - float(start):6.1f} s"
try:
    hist = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in hist if "loss" in h]
    ev = json.loads((Path(out) / "eval_results.json").read_text())
    line += (f"  steps {len(losses)}  loss {losses[0]:.4f} -> {losses[-1]:.4f}  "
             f"eval_loss {ev['eval_loss']:.4f}  eval_acc {ev['eval_rewards/accuracies']:.3f}")
except (OSError, KeyError, ValueError, IndexError) as err:
    line += f"  (no results: {type(err).__name__}; last log lines below)"
    if status != "skipped":
        line += "\n" + "\n".join("    " + l for l in Path(log).read_text(errors="replace").splitlines()[-15:])
print(line)
EOF
}

run_mode() {  # mode, launcher..., -- extra config keys...
  local mode="$1"; shift
  local launcher=() extra=()
  while [ "$1" != "--" ]; do launcher+=("$1"); shift; done; shift
  extra=("$@")
  local out="$WORK/out-$mode" log="$WORK/$mode.log" start end status
  start=$(date +%s.%N)
  if timeout 240 "${launcher[@]}" -m prefloop train "${COMMON[@]}" output_dir="$out" "${extra[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED; FAILED=1
  fi
  end=$(date +%s.%N)
  result "$mode" "$status" "$out" "$start" "$end" "$log"
}

# `prefloop train` takes the config as key=value overrides on top of an empty YAML file.
echo "{}" > "$WORK/empty.yaml"
COMMON=("$WORK/empty.yaml" "${COMMON[@]}")
TORCHRUN=("${PYTHON:-python3}" -m torch.distributed.run --nproc_per_node 1 --master_port "$PORT")

echo "mode       status   time    result"
want() { [ -z "${MODES:-}" ] || [[ " $MODES " == *" $1 "* ]]; }
want bf16 && run_mode bf16 "${PYTHON:-python3}" --
want ddp-1gpu && run_mode ddp-1gpu "${TORCHRUN[@]}" --
want fsdp-1gpu && run_mode fsdp-1gpu "${TORCHRUN[@]}" -- fsdp="full_shard auto_wrap" fsdp_config="$PWD/examples/fsdp/fsdp_config.json"
if ! want zero2; then
  :
elif "${PYTHON:-python3}" -c "import deepspeed" >/dev/null 2>&1; then
  run_mode zero2 "${TORCHRUN[@]}" -- deepspeed="$PWD/examples/deepspeed/ds_z2_config.json"
  run_mode zero3 "${TORCHRUN[@]}" -- deepspeed="$PWD/examples/deepspeed/ds_z3_config.json"
else
  echo "zero2      skipped  deepspeed is not installed here (pip install deepspeed to check ZeRO-2/3)"
  echo "zero3      skipped  deepspeed is not installed here"
fi
exit $FAILED
