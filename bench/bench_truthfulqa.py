"""prefloop's TruthfulQA MC1/MC2 against lm-evaluation-harness's own numbers, same local file, same model.

    bash bench/setup.sh                                  # bench/.venv with lm-eval (never a prefloop dependency)
    PYTHONPATH=src bench/.venv/bin/python bench/bench_truthfulqa.py   # two tiny random models built here
    PYTHONPATH=src bench/.venv/bin/python bench/bench_truthfulqa.py --model models/SmolLM2-135M-Instruct --data FILE.jsonl

lm-eval runs its own `truthfulqa_mc1` / `truthfulqa_mc2` task definitions (prompt, target delimiter, MC2's
`process_results_mc2`), included from the installed package, with only the dataset swapped for the local
JSONL file (the `json` builder of `datasets`: no hub access). Both runs score the model in float32 on the
CPU. Without --model it runs two tiny random models: a Qwen2 whose tokenizer adds no BOS, and a Llama whose
tokenizer adds a BOS to every text (as Llama's and Gemma's do: lm-eval 0.4.13 keeps the tokenizer's default,
`add_bos_token=None`). The script prints MC1 and MC2 of both, the largest per-choice log-likelihood
difference, and exits 1 when MC1 differs at all, MC2 by more than 1e-5 or a choice's log-likelihood by more
than 1e-3 nats (a missing BOS moves the log-likelihoods by about 3e-2 nats on the tiny Llama but MC2 of a
random model hardly at all).

It also runs lm-eval's `process_results_mc2` and prefloop's `mc2` on log-likelihoods where lm-eval's
exp-then-normalise underflows (every choice below about -745 nats): lm-eval gives NaN there, prefloop the
normalised mass (the same number wherever lm-eval's is defined); printed, not a failure.
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
LL_TOLERANCE = 1e-3  # nats per choice: float32 summation order differs between the two (about 3e-5 seen)


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


def save_bos_model(path: Path) -> Path:
    """A tiny random Llama whose tokenizer puts a BOS (<|im_start|>) in front of every text."""
    from tokenizers import processors

    from prefloop.testing import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    bos = "<|im_start|>"
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos))])
    tokenizer.bos_token = bos
    build_tiny_model(tokenizer, arch="llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def compare_model(label: str, model: str, data: str, tmp: Path) -> dict:
    """Both harnesses on one model: {"label", "ours", "theirs", "diff", "ok"}."""
    tmp.mkdir(parents=True, exist_ok=True)
    ours = prefloop_scores(model, data, str(tmp / "prefloop"))
    (tmp / "lm_eval").mkdir()
    theirs = lm_eval_scores(model, data, tmp / "lm_eval")
    rows = ours["details"]["questions"]
    diff = 0.0
    for name in ("mc1", "mc2"):
        for q, lls in zip(rows, theirs[f"{name}_lls"]):
            diff = max(diff, max(abs(a - b) for a, b in zip(q[f"{name}_loglikelihoods"], lls)))
    m = ours["metrics"]
    ok = (m["truthfulqa_mc/mc1"] == theirs["mc1"] and abs(m["truthfulqa_mc/mc2"] - theirs["mc2"]) <= MC2_TOLERANCE
          and diff <= LL_TOLERANCE)
    return {"label": label, "n": len(rows), "mc1": (m["truthfulqa_mc/mc1"], theirs["mc1"]),
            "mc2": (m["truthfulqa_mc/mc2"], theirs["mc2"]), "diff": diff, "ok": ok, "version": theirs["version"]}


UNDERFLOW_CASES = [  # (log-likelihoods, mc2 labels)
    ([-12.5, -14.0, -13.1, -20.2], [1, 1, 0, 0]),
    ([-1000.0, -1001.0], [1, 0]),
    ([-800.0, -760.0, -790.0], [0, 1, 1]),
]


def mc2_underflow_rows() -> list[tuple[list[float], float, float]]:
    """(log-likelihoods, lm-eval's process_results_mc2, prefloop's mc2) on UNDERFLOW_CASES."""
    import warnings

    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    from prefloop.evaluate.bench.truthfulqa_mc import mc2

    out = []
    for lls, labels in UNDERFLOW_CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lm-eval's 0/0
            theirs = float(process_results_mc2({"mc2_targets": {"labels": labels}}, [(x, False) for x in lls])["acc"])
        out.append((lls, theirs, mc2(lls, labels)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: two tiny random models built here)")
    parser.add_argument("--data", default=str(ROOT / "examples" / "eval" / "truthfulqa_mc.jsonl"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model:
            rows = [compare_model(args.model, args.model, args.data, tmp / "model")]
        else:
            from prefloop.testing import save_tiny_model

            rows = [compare_model("tiny Qwen2, tokenizer adds no BOS", str(save_tiny_model(tmp / "qwen")), args.data,
                                  tmp / "a"),
                    compare_model("tiny Llama, tokenizer adds a BOS", str(save_bos_model(tmp / "llama")), args.data,
                                  tmp / "b")]
    print(f"data: {args.data} ({rows[0]['n']} questions); lm-eval {rows[0]['version']}")
    print(f"{'model':36}{'MC1 prefloop':>13}{'MC1 lm-eval':>12}{'MC2 prefloop':>13}{'MC2 lm-eval':>12}{'max |Δll|':>11}")
    for r in rows:
        print(f"{r['label'][:36]:36}{r['mc1'][0]:>13.6f}{r['mc1'][1]:>12.6f}{r['mc2'][0]:>13.6f}{r['mc2'][1]:>12.6f}"
              f"{r['diff']:>11.2e}  {'equal' if r['ok'] else 'DIFFERENT'}")
    print("MC2 of given log-likelihoods (lm-eval's exp-then-normalise vs prefloop's max-shifted):")
    for lls, theirs, ours in mc2_underflow_rows():
        print(f"  {str(lls):36}  lm-eval {theirs:.10f}  prefloop {ours:.10f}")
    ok = all(r["ok"] for r in rows)
    print("equal" if ok else f"DIFFERENT (MC1 must be equal, MC2 within {MC2_TOLERANCE}, each log-likelihood within "
                             f"{LL_TOLERANCE} nats)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
