"""Data-layer throughput: load_pairs and encode_pairs, and `prefloop data check` end to end, on
25k / 50k / 100k seeded JSONL pairs.

    python bench/bench_data.py [--pairs 100000] [--tokenizer models/SmolLM2-135M-Instruct] [--out DIR]
                               [--cutoff-len 512] [--only-check] [--sizes 100000] [--skip-tiny]

Writes one seeded JSONL file in the seed's format (single- and multi-turn, some system prompts),
then for each size runs a fresh Python process that loads the first N pairs and encodes them
(tiny test tokenizer, and the real one if --tokenizer is given). Each row: seconds, pairs/s and
the process's peak RSS, so memory growth across sizes is visible. Issue 2's target: load + encode
100,000 pairs in under 60 s on the 2-core machine.

Then it runs the command a user runs, `prefloop data check FILE --tokenizer T --cutoff-len N
--json` (loading, quality checks, token statistics and the truncation report), as a separate
process per size and tokenizer, and reports its wall and CPU seconds. `--only-check` skips the
load/encode rows. The command runs with the `prefloop` on PYTHONPATH, so the same script measures
another checkout (e.g. `PYTHONPATH=/path/to/main/src python bench/bench_data.py --only-check`).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can out up about them into "
    "time only new some could these two may first then do any like my now over such our man me even most made "
    "after also did many before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get here between both "
    "life being under never day same another know while last might us great old year off come since against go "
    "came right used take three water model data train loss reward policy gradient token answer question explain "
    "python function list string number capital country river mountain planet energy light sound music history"
).split()


def _text(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", "?", "!"])


def generate(path: Path, n: int, seed: int = 0) -> None:
    """n pairs in the seed's format: 30% multi-turn, 20% with a system prompt (seeded, reproducible)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            turns = []
            if rng.random() < 0.2:
                turns.append({"from": "system", "value": _text(rng, 5, 15)})
            for _ in range(rng.choice([1, 1, 1, 2, 3]) - 1):
                turns += [{"from": "user", "value": _text(rng, 5, 40)}, {"from": "assistant", "value": _text(rng, 10, 60)}]
            turns.append({"from": "user", "value": _text(rng, 5, 60)})
            record = {"conversations": turns, "chosen": _text(rng, 10, 120), "rejected": _text(rng, 5, 100)}
            if i % 10 == 0:
                record["id"] = f"pair-{i}"
            f.write(json.dumps(record) + "\n")


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (user + system): comparable on a shared, busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _current_rss_mb() -> float:
    """Resident memory now (not the peak): what the loaded/encoded data holds."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One measurement in a fresh process: load the first N pairs, then encode with each tokenizer."""
    from prefloop.data.encode import encode_pairs
    from prefloop.data.loader import load_pairs
    from prefloop.data.template import get_template
    from prefloop.models import load_tokenizer

    result = {"n": args.n}
    tokenizers = [(name, load_tokenizer(path)) for name, path in args.tok]
    templates = [(name, tok, get_template(None, tok)) for name, tok in tokenizers]
    result["rss_start_mb"] = _current_rss_mb()  # imports and tokenizers, before any data
    t0, c0 = time.perf_counter(), _cpu_seconds()
    pairs = load_pairs(str(args.file), max_samples=args.n).pairs
    result["load_s"], result["load_cpu"] = time.perf_counter() - t0, _cpu_seconds() - c0
    result["rss_after_load_mb"] = _current_rss_mb()
    for name, tok, template in templates:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        encoded, report = encode_pairs(pairs, tok, template)
        result[f"encode_{name}_s"], result[f"encode_{name}_cpu"] = time.perf_counter() - t0, _cpu_seconds() - c0
        result[f"tokens_{name}"] = sum(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in encoded)
        result[f"kept_{name}"] = report.kept
        result[f"rss_held_{name}_mb"] = _current_rss_mb()  # pairs and their encodings both alive
        del encoded
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_data_check(path: Path, tokenizer: str, cutoff_len: int) -> dict:
    """`prefloop data check` in its own process: wall seconds, CPU seconds (user + system), usable pairs."""
    cmd = [sys.executable, "-m", "prefloop", "data", "check", str(path), "--tokenizer", tokenizer,
           "--cutoff-len", str(cutoff_len), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"data check failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    cut = report["tokens"]["cutoff"]
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "usable": report["usable_pairs"], "kept": cut["kept"], "dropped": cut["dropped"],
            "over": cut.get("over_cutoff"), "peak_rss_mb": after.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--tokenizer", help="a real tokenizer (model directory) to encode with as well")
    parser.add_argument("--out", help="directory for the generated JSONL (default: a temporary one)")
    parser.add_argument("--cutoff-len", type=int, default=512, help="--cutoff-len given to data check (default 512)")
    parser.add_argument("--only-check", action="store_true", help="measure only `prefloop data check`")
    parser.add_argument("--sizes", help="comma-separated pair counts (default: a quarter, half and all of --pairs)")
    parser.add_argument("--skip-tiny", action="store_true", help="with --tokenizer: measure the real tokenizer only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tok", nargs=2, action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from prefloop.testing import build_tiny_tokenizer

    workdir = Path(args.out or tempfile.mkdtemp(prefix="bench_data_"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "pairs.jsonl"
    t0 = time.perf_counter()
    generate(data, args.pairs)
    print(f"generated {args.pairs} pairs ({data.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s -> {data}")
    tiny_dir = workdir / "tiny-tokenizer"
    build_tiny_tokenizer().save_pretrained(tiny_dir)
    toks = [("tiny", str(tiny_dir))] + ([("real", args.tokenizer)] if args.tokenizer else [])
    if args.skip_tiny and args.tokenizer:
        toks = toks[1:]

    if args.sizes:
        sizes = sorted({min(args.pairs, int(n)) for n in args.sizes.split(",")})
    else:
        sizes = sorted({max(1, args.pairs // 4), max(1, args.pairs // 2), args.pairs})
    if not args.only_check:
        load_and_encode(data, sizes, toks, args)
    print()
    print(f"prefloop data check FILE --tokenizer T --cutoff-len {args.cutoff_len} --json (one process each)")
    header = f"{'pairs':>8} {'tokenizer':<10} {'wall s':>8} {'CPU s':>8} {'pairs/s':>9} {'over':>7} {'kept':>8} {'dropped':>8}"
    print(header)
    print("-" * len(header))
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    for n in sizes:
        part = workdir / f"pairs-{n}.jsonl"
        part.write_text("".join(lines[:n]), encoding="utf-8")
        for name, path in toks:
            r = run_data_check(part, path, args.cutoff_len)
            over = "-" if r["over"] is None else r["over"]
            print(f"{n:>8} {name:<10} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {n / r['wall_s']:>9.0f} {over:>7} "
                  f"{r['kept']:>8} {r['dropped']:>8}")
    print("over = pairs longer than the cutoff (encoded a second time); '-' = a prefloop that does not report it")
    if args.tokenizer:
        print(f"real tokenizer: {args.tokenizer}")


def load_and_encode(data: Path, sizes: list[int], toks: list[tuple[str, str]], args) -> None:
    """The load_pairs / encode_pairs rows, each size in a fresh process."""
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", "--file", str(data), "--n", str(n)]
        for name, path in toks:
            cmd += ["--tok", name, path]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))

    print()
    header = f"{'pairs':>8} {'step':<20} {'wall s':>8} {'CPU s':>8} {'pairs/s':>9} {'tokens':>12} {'RSS MB':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        n = r["n"]
        print(f"{n:>8} {'load_pairs':<20} {r['load_s']:>8.2f} {r['load_cpu']:>8.2f} {n / r['load_s']:>9.0f} {'':>12} {r['rss_after_load_mb']:>8.0f}")
        for name, _ in toks:
            wall, cpu = r[f"encode_{name}_s"], r[f"encode_{name}_cpu"]
            print(f"{n:>8} {'encode (' + name + ')':<20} {wall:>8.2f} {cpu:>8.2f} {n / wall:>9.0f} {r[f'tokens_{name}']:>12} {r[f'rss_held_{name}_mb']:>8.0f}")
            wall, cpu = wall + r["load_s"], cpu + r["load_cpu"]
            print(f"{n:>8} {'load+encode (' + name + ')':<20} {wall:>8.2f} {cpu:>8.2f} {n / wall:>9.0f}")
    print("pairs/s from wall time; CPU s = user + system of all threads (meaningful on a shared machine).")
    print("RSS MB = resident memory with the loaded pairs (and, for encode, their encodings) held.")
    print(f"peak RSS of each process (MB): " + ", ".join(f"{r['n']}: {r['peak_rss_mb']:.0f}" for r in rows))
    print()
    keys = [("rss_after_load_mb", "loaded pairs")] + [(f"rss_held_{name}_mb", f"pairs + encodings ({name})") for name, _ in toks]
    for key, label in keys:
        per_pair = [f"{r['n']}: {(r[key] - r['rss_start_mb']) * 1024 / r['n']:.2f} KB" for r in rows]
        print(f"memory per pair, {label}: " + ", ".join(per_pair))
    print("(RSS above the process's start (imports, tokenizers) divided by the pairs; "
          "flat or falling with size = memory grows no worse than linearly)")
    print("issue target: load + encode of 100,000 pairs under 60 s")


if __name__ == "__main__":
    main()
