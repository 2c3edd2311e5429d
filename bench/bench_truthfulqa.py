"""prefloop's TruthfulQA MC1/MC2 against lm-evaluation-harness's own numbers, same local file, same model.

    bash bench/setup.sh                                  # bench/.venv with lm-eval (never a prefloop dependency)
    bench/.venv/bin/python bench/bench_truthfulqa.py     # a tiny random model built here, the shipped sample
    bench/.venv/bin/python bench/bench_truthfulqa.py --model models/SmolLM2-135M-Instruct --data FILE.jsonl

lm-eval runs its own `truthfulqa_mc1` / `truthfulqa_mc2` task definitions (prompt, target delimiter, MC2's
`process_results_mc2`), included from the installed package, with only the dataset swapped for the local
JSONL file (the `json` builder of `datasets`: no hub access). Both runs score the model in float32 on the
CPU. The script prints MC1 and MC2 of both, the largest per-choice log-likelihood difference, and exits 1
when MC1 differs at all or MC2 by more than 1e-5.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
MC2_TOLERANCE = 1e-5


def prefloop_scores(model: str, data: str, out: str) -> dict:
    from prefloop.evaluate.bench import run_bench
    from prefloop.evaluate.bench.common import BenchArgs

    results, _ = run_bench(BenchArgs("truthfulqa_mc", model, data, out, batch_size=4))
    return results


def lm_eval_scores(model: str, data: str, workdir: Path) -> dict:
    """lm-eval's MC1/MC2 and per-document log-likelihoods on `data` (its tasks, our file)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks_dir = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    for name in ("mc1", "mc2"):
        (workdir / f"local_truthfulqa_{name}.yaml").write_text(
            f"include: {tasks_dir / f'truthfulqa_{name}.yaml'}\n"
            f"task: local_truthfulqa_{name}\n"
            "dataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {Path(data).resolve()}\n")
    manager = TaskManager(include_path=str(workdir))
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", device="cpu",
                                  tasks=["local_truthfulqa_mc1", "local_truthfulqa_mc2"], batch_size=1,
                                  task_manager=manager, log_samples=True)
    scores = {}
    for name in ("mc1", "mc2"):
        task = f"local_truthfulqa_{name}"
        scores[name] = out["results"][task]["acc,none"]
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        scores[f"{name}_lls"] = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    scores["version"] = lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?"
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: a tiny random Qwen2 built here)")
    parser.add_argument("--data", default=str(ROOT / "examples" / "eval" / "truthfulqa_mc.jsonl"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from prefloop.testing import save_tiny_model

            model = str(save_tiny_model(tmp / "tiny-model"))
        ours = prefloop_scores(model, args.data, str(tmp / "prefloop"))
        (tmp / "lm_eval").mkdir()
        theirs = lm_eval_scores(model, args.data, tmp / "lm_eval")
    m = ours["metrics"]
    rows = ours["details"]["questions"]
    diff = 0.0
    for name in ("mc1", "mc2"):
        for q, lls in zip(rows, theirs[f"{name}_lls"]):
            diff = max(diff, max(abs(a - b) for a, b in zip(q[f"{name}_loglikelihoods"], lls)))
    mc1_ok = m["truthfulqa_mc/mc1"] == theirs["mc1"]
    mc2_ok = abs(m["truthfulqa_mc/mc2"] - theirs["mc2"]) <= MC2_TOLERANCE
    print(f"data: {args.data} ({len(rows)} questions); model: {args.model or 'tiny random Qwen2 (prefloop.testing)'}")
    print(f"{'':24}{'MC1':>10}{'MC2':>12}")
    print(f"{'prefloop':24}{m['truthfulqa_mc/mc1']:>10.6f}{m['truthfulqa_mc/mc2']:>12.6f}")
    print(f"{'lm-eval ' + str(theirs['version']):24}{theirs['mc1']:>10.6f}{theirs['mc2']:>12.6f}")
    print(f"largest per-choice log-likelihood difference: {diff:.2e} nats")
    print("equal" if mc1_ok and mc2_ok else f"DIFFERENT (MC1 must be equal, MC2 within {MC2_TOLERANCE})")
    return 0 if mc1_ok and mc2_ok else 1


if __name__ == "__main__":
    sys.exit(main())
