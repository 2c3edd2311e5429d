#!/usr/bin/env bash
# One iteration of the online loop on the demo model, end to end (README, 'The online loop'):
#   1. install (scripts/setup.sh) and fetch SmolLM2-135M-Instruct (scripts/fetch_model.sh), as scripts/demo.sh does;
#   2. register it as smollm2 v1 in a fresh store and promote it to champion;
#   3. `prefloop serve --registry smollm2 --db STORE` in the background on a free 127.0.0.1 port (stopped on exit);
#   4. scripts/loop_demo_client.py: 20 prompts through the real `openai` client, thumbs and A/B choices as feedback;
#   5. `prefloop loop examples/loop/loop.yaml`: collect, sample, generate, label (AI judge), pairs, train, eval,
#      gate, promote; then the gate report, `prefloop loop status`, the registry, and the version the server serves.
# The judge is the demo model itself: a mechanism check, not a quality measurement (examples/loop/loop.yaml says
# how to point it at a real judge). Everything goes to checkpoints/loop-demo/ (removed first).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
source scripts/python.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

if [ "${PREFLOOP_SKIP_SETUP:-0}" != "1" ]; then  # 1: $PYTHON already has prefloop (e.g. a shared machine)
  bash scripts/setup.sh
fi
bash scripts/fetch_model.sh
prefloop() { "$PYTHON" -m prefloop "$@"; }

OUT=checkpoints/loop-demo
DB=$OUT/prefloop.sqlite
rm -rf "$OUT"
mkdir -p "$OUT"
echo "[loop-demo] register models/SmolLM2-135M-Instruct as smollm2 v1 and promote it"
prefloop models register models/SmolLM2-135M-Instruct --name smollm2 --db "$DB"
prefloop models promote v1 --name smollm2 --db "$DB" --note "loop demo: the starting champion"

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "[loop-demo] prefloop serve --registry smollm2 --db $DB --port $port (log: $OUT/serve.log)"
"$PYTHON" -m prefloop serve --registry smollm2 --db "$DB" --port "$port" --poll-seconds 1 > "$OUT/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  if "$PYTHON" -c "import httpx, sys; httpx.get('http://127.0.0.1:$port/health').raise_for_status()" 2>/dev/null; then
    break
  fi
  kill -0 "$server" 2>/dev/null || { echo "[loop-demo] the server exited:"; cat "$OUT/serve.log"; exit 1; }
  sleep 1
done

echo "[loop-demo] the users: 20 prompts and their feedback through the openai client"
"$PYTHON" scripts/loop_demo_client.py --base-url "http://127.0.0.1:$port/v1" --prompts examples/loop/user_prompts.jsonl

echo "[loop-demo] prefloop loop examples/loop/loop.yaml"
loop_start=$(date +%s)
code=0
prefloop loop examples/loop/loop.yaml || code=$?
echo "[loop-demo] prefloop loop exit code $code (0 promoted, 1 the gate did not pass); took $(( $(date +%s) - loop_start )) s"
report=$OUT/prefloop.sqlite.loop/smollm2/iter-0001/gate-report.md
[ -f "$report" ] && sed -n '1,/^Failed rules/p' "$report"
echo "[loop-demo] what the default gate rules say about the same evidence:"
prefloop gate --candidate "$OUT/prefloop.sqlite.loop/smollm2/iter-0001/eval/results.json" || true
echo "[loop-demo] prefloop loop status examples/loop/loop.yaml"
prefloop loop status examples/loop/loop.yaml
prefloop models list --name smollm2 --db "$DB"
sleep 2  # the server polls the champion every second
echo "[loop-demo] the server now answers with: $("$PYTHON" -c "import httpx; h = httpx.get('http://127.0.0.1:$port/health').json(); print(h['model'], '(model swaps since start:', str(h['swaps']) + ')')")"
elapsed=$(( $(date +%s) - start ))
printf '[loop-demo] done: total wall time %dm%02ds\n' $((elapsed / 60)) $((elapsed % 60))
exit "$code"
