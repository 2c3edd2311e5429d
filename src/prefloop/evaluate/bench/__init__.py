"""Benchmark runners for `prefloop eval bench NAME`, one module each, all reading local files in the
benchmark's public format and writing results.json / report.md / report.html (the shared contract).

Each runner module has `run(args: BenchArgs) -> (results, report)` and `summary_lines(results)`.
"""

from __future__ import annotations

import importlib

RUNNERS = {
    "mt_bench": "prefloop.evaluate.bench.mt_bench",
    "alpaca_eval": "prefloop.evaluate.bench.alpaca_eval",
    "truthfulqa_mc": "prefloop.evaluate.bench.truthfulqa_mc",
    "safety_mc": "prefloop.evaluate.bench.safety_mc",
}


def run_bench(args):
    """(results, report) of benchmark `args.name`."""
    args.check()
    return importlib.import_module(RUNNERS[args.name]).run(args)


def bench_command(name: str, model: str, data: str, out: str, **options) -> int:
    """`prefloop eval bench NAME`: run one benchmark, print its summary, write its outputs into `out`."""
    from prefloop.evaluate.bench.common import BenchArgs
    from prefloop.evaluate.prefs import write_outputs

    from prefloop.endpoint import endpoint_api_key
    from prefloop.evaluate.results import check_out_dir

    check_out_dir(out)

    key_env, key_file = options.pop("api_key_env", None), options.pop("api_key_file", None)
    if options.get("api_key") is None and (key_env or key_file):  # a key named for this run's endpoints
        options["api_key"] = endpoint_api_key("", key_env, key_file)
    args = BenchArgs(name=name, model=model, data=data, out=out, **options)
    results, report = run_bench(args)
    for line in importlib.import_module(RUNNERS[name]).summary_lines(results):
        print(line)
    paths = write_outputs(out, results, report)
    print(f"Wrote {', '.join(str(p) for p in paths)}")
    return 0
