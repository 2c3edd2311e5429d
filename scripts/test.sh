#!/usr/bin/env bash
# The test suite, from a fresh machine: install everything including Debian's chromium for the
# browser tests (scripts/setup.sh --with-browser), then run pytest with a per-test timeout.
# Screenshots and the JUnit report go to test-artifacts/. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
source scripts/python.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false GRADIO_ANALYTICS_ENABLED=False
export PREFLOOP_TEST_ARTIFACTS="${PREFLOOP_TEST_ARTIFACTS:-$PWD/test-artifacts}"

bash scripts/setup.sh --with-browser
mkdir -p "$PREFLOOP_TEST_ARTIFACTS"
echo "[test] python -m pytest -q (per-test timeout ${PYTEST_TIMEOUT:-300} s, artifacts in $PREFLOOP_TEST_ARTIFACTS)"
status=0
"$PYTHON" -m pytest -q --timeout="${PYTEST_TIMEOUT:-300}" --junitxml="$PREFLOOP_TEST_ARTIFACTS/junit.xml" "$@" || status=$?
elapsed=$(( $(date +%s) - start ))
printf '[test] pytest exit code %d; total wall time %dm%02ds\n' "$status" $((elapsed / 60)) $((elapsed % 60))
exit "$status"
