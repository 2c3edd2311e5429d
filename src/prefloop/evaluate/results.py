"""`results.json`: the one machine-readable result of every `prefloop eval` run (the shared contract).

One JSON object:

    {"schema": "prefloop.eval/1",
     "kind": "winrate" | "leaderboard" | "prefs" | "bench",
     "benchmark": "mt_bench" | "alpaca_eval" | "truthfulqa_mc" | "safety_mc" | null,
     "created": ISO-8601 UTC, "prefloop_version": str,
     "models": {ROLE: {"path", "adapter", "url", "name", "fingerprint",      # each str or null
                       "endpoint_adaptations"}},
     "data": {"path", "n", "fingerprint"}, "judge": {...} | null, "seeds": {...}, "config": {...},
     "metrics": {FLAT_NAME: number},    # what the quality gate reads
     "details": {...}}                  # kind-specific tables

ROLE is "after"/"before" for winrate, "model" for prefs/bench, each model's name for a leaderboard.
`endpoint_adaptations` (in each models entry and in an LLM judge's entry): the request fields the
endpoint refused and how they were sent instead ({"max_tokens": "max_completion_tokens",
"temperature": "left out"}, OpenAI's reasoning models; `chat_clients.EndpointChatClient`), over
every answer or judgment the run used, cached ones included; {} when nothing was changed (a local
model), null when the run cannot know (`eval winrate --from-db`). A judge entry's `temperature` is
null when it was left out: the judge sampled at its endpoint's default, not greedily. Files written
before this field existed lack it (unknown).
Metric names: see `METRIC_NAMES`; rates are fractions in [0, 1]. A metric may be null when undefined
(e.g. no decisive judgment). Written atomically (temporary file, then rename), so a reader never sees
half a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path

from prefloop.errors import DataError
from prefloop.output_files import write_atomically

SCHEMA = "prefloop.eval/1"
KINDS = ("winrate", "leaderboard", "prefs", "bench")
BENCHMARKS = ("mt_bench", "alpaca_eval", "truthfulqa_mc", "safety_mc")
MODEL_FIELDS = ("path", "adapter", "url", "name", "fingerprint")
REQUIRED = ("schema", "kind", "benchmark", "created", "prefloop_version", "models", "data", "judge", "seeds",
            "config", "metrics", "details")
RESULTS_FILE = "results.json"
# The LC win rate's length feature: Δlen = len(before) − len(after), alpaca_eval's std_delta_len (baseline −
# model), so details.lc.weights.tanh_std_delta_len is the weight alpaca_eval saves (a judge that prefers longer
# answers: negative). Files written before 2026-12-01 used after − before (the opposite sign); `read_results`
# converts them, so comparing an old file with a new one shows no change that is only the sign convention.
LC_ORIENTATION = "before - after"

METRIC_NAMES = {
    "winrate": ("win_rate", "win_rate_ci_low", "win_rate_ci_high", "win_rate_se", "discrete_win_rate",
                "raw_win_rate", "lc_win_rate", "lc_win_rate_se", "wins", "ties", "losses", "n_prompts",
                "n_excluded_prompts", "n_identical_answers", "judge_consistency", "first_position_rate", "n_failed_judgments",
                "failed_judgment_rate", "mean_length_tokens/after", "mean_length_tokens/before"),
    "prefs": ("pref_accuracy", "pref_ties", "ref_free_accuracy", "reward_margin", "n_pairs"),
    "bench": ("mt_bench/score", "mt_bench/turn_1", "mt_bench/turn_2", "mt_bench/n_excluded",
              "mt_bench/n_out_of_range", "alpaca_eval/win_rate",
              "alpaca_eval/lc_win_rate", "truthfulqa_mc/mc1", "truthfulqa_mc/mc2", "safety_mc/accuracy",
              "safety_mc/n_unparsed"),
}


def now_iso() -> str:
    """The current UTC time as ISO-8601 with seconds, e.g. 2026-11-30T18:00:00Z."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def model_entry(path: str | None = None, adapter: str | None = None, url: str | None = None,
                name: str | None = None, fingerprint: str | None = None,
                endpoint_adaptations: dict | None = None) -> dict:
    """One entry of "models" with every contract field present (`endpoint_adaptations` {} unless given)."""
    return {"path": path, "adapter": adapter, "url": url, "name": name, "fingerprint": fingerprint,
            "endpoint_adaptations": dict(endpoint_adaptations or {})}


def new_results(kind: str, *, benchmark: str | None = None, models: dict | None = None, data: dict | None = None,
                judge: dict | None = None, seeds: dict | None = None, config: dict | None = None,
                metrics: dict | None = None, details: dict | None = None) -> dict:
    """A results object with every contract key, `created` and `prefloop_version` filled in."""
    from prefloop import __version__

    models = models or {}
    if kind == "prefs":  # log-likelihoods of local models (eval prefs): no endpoint, nothing sent otherwise
        for entry in models.values():
            entry.setdefault("endpoint_adaptations", {})
    return {"schema": SCHEMA, "kind": kind, "benchmark": benchmark, "created": now_iso(),
            "prefloop_version": __version__, "models": models,
            "data": data or {"path": None, "n": None, "fingerprint": None}, "judge": judge, "seeds": seeds or {},
            "config": config or {}, "metrics": metrics or {}, "details": details or {}}


def _problems(results: dict) -> list[str]:
    """What breaks the contract in `results` (empty when it is valid)."""
    if not isinstance(results, dict):
        return ["the top level is not a JSON object"]
    problems = [f"missing key {k!r}" for k in REQUIRED if k not in results]
    if "schema" in results and results["schema"] != SCHEMA:
        problems.append(f"schema is {results['schema']!r}, expected {SCHEMA!r}")
    if "kind" in results and results["kind"] not in KINDS:
        problems.append(f"kind is {results['kind']!r}, expected one of {', '.join(KINDS)}")
    if results.get("benchmark") is not None and results["benchmark"] not in BENCHMARKS:
        problems.append(f"benchmark is {results['benchmark']!r}, expected null or one of {', '.join(BENCHMARKS)}")
    models = results.get("models", {})
    if not isinstance(models, dict):
        problems.append("models is not an object")
    else:
        for role, entry in models.items():
            if not isinstance(entry, dict):
                problems.append(f"models.{role} is not an object")
                continue
            problems += [f"models.{role} lacks field {f!r}" for f in MODEL_FIELDS if f not in entry]
    metrics = results.get("metrics", {})
    if not isinstance(metrics, dict):
        problems.append("metrics is not an object")
    else:
        for name, value in metrics.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problems.append(f"metrics.{name} is {value!r}, not a number or null")
            elif isinstance(value, float) and not math.isfinite(value):
                problems.append(f"metrics.{name} is {value}, not a finite number (use null)")
    return problems


def _finite(value):
    """JSON has no NaN/Infinity: non-finite floats anywhere become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def check_out_dir(out: str | Path, option: str = "--out") -> Path:
    """`out` as a Path, checked before any work: it (or the first part of it that exists) must be a
    directory this process can write into. Raises ConfigError naming `option` otherwise."""
    from prefloop.errors import ConfigError

    path = Path(out)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        if existing == path:
            raise ConfigError(f"{option} {out} is a file; give a directory")
        raise ConfigError(f"{option} {out}: {existing} is a file; give a directory")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {out} is not writable ({existing} denies writing); give a directory you can "
                          f"write into")
    return path


def write_results(out_dir: str | Path, results: dict) -> Path:
    """Write `results` as OUT_DIR/results.json (atomically) and return the path.

    Non-finite floats become null. Raises ValueError when `results` breaks the contract (a bug in the
    caller, not bad user input).
    """
    results = _finite(results)
    problems = _problems(results)
    if problems:
        raise ValueError("results break the prefloop.eval/1 contract: " + "; ".join(problems))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    _keep_another_runs_results(out, results)
    write_atomically(path, json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


REPORT_FILES = ("report.md", "report.html")


def run_identity(results: dict) -> dict:
    """What makes two results the same evaluation run: kind, benchmark, the models (path, adapter, endpoint,
    name), the judge (its endpoint and model), the data file, the seeds and the settings. A rerun with the
    same identity replaces its results."""
    def who(entry):
        keys = ("path", "adapter", "url", "name", "target", "template_fingerprint")
        return {k: entry.get(k) for k in keys} if isinstance(entry, dict) else entry

    models = {role: who(m) for role, m in (results.get("models") or {}).items()}
    data = results.get("data") if isinstance(results.get("data"), dict) else {}
    return {"kind": results.get("kind"), "benchmark": results.get("benchmark"), "models": models,
            "judge": who(results.get("judge")), "data": data.get("path"), "seeds": results.get("seeds"),
            "config": results.get("config")}


def _keep_another_runs_results(out: Path, results: dict) -> None:
    """Before `results` replace OUT/results.json: when that file holds another run's results (another
    benchmark, model, data or settings: `run_identity`), move it, its reports and figures into
    OUT/previous/<its created time>/ with a note on stderr, so an evaluation never silently overwrites a different one."""
    import shutil
    import sys

    old_path = out / RESULTS_FILE
    if not old_path.is_file():
        return
    try:
        old = json.loads(old_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and run_identity(old) == run_identity(results):
        return  # the same evaluation run again: its results are replaced
    stamp = str(old.get("created") if isinstance(old, dict) else "") or _dt.datetime.now().isoformat()
    keep = out / "previous" / "".join(c if c.isalnum() or c in "-_" else "-" for c in stamp)
    while keep.exists():
        keep = keep.with_name(keep.name + "-1")
    keep.mkdir(parents=True)
    for name in (RESULTS_FILE, *REPORT_FILES, "figures"):
        if (out / name).exists():
            shutil.move(str(out / name), keep / name)
    print(f"prefloop: {out} held the results of another evaluation run; moved them to {keep} (give each run its "
          f"own --out to keep them apart)", file=sys.stderr)


def _lc_fits(results: dict) -> list[dict]:
    """The LC win rate fits a results object holds: details.lc (winrate, alpaca_eval) and each
    details.per_model[M].lc (leaderboard)."""
    details = results.get("details") if isinstance(results.get("details"), dict) else {}
    fits = [details.get("lc")]
    per_model = details.get("per_model")
    if isinstance(per_model, dict):
        fits += [m.get("lc") for m in per_model.values() if isinstance(m, dict)]
    return [f for f in fits if isinstance(f, dict)]


def upgrade_lc_orientation(results: dict) -> dict:
    """Every LC fit of `results` in today's orientation (`LC_ORIENTATION`), marked with `delta_len`.

    A fit without `delta_len` and without `n_missing` (added in the same change as the sign) was written
    with Δlen = after − before: its `weights.tanh_std_delta_len` is negated and `converted_on_read` says
    so. A fit with `n_missing` but no `delta_len` (written on 2026-12-01 before the marker) is already in
    today's orientation. Changes `results` in place and returns it."""
    for fit in _lc_fits(results):
        if "delta_len" in fit:
            continue
        weights = fit.get("weights")
        w = weights.get("tanh_std_delta_len") if isinstance(weights, dict) else None
        if "n_missing" not in fit and isinstance(w, (int, float)) and not isinstance(w, bool):
            weights["tanh_std_delta_len"] = -w
            fit["converted_on_read"] = ("weights.tanh_std_delta_len sign flipped on read: written with "
                                        "Δlen = after − before (prefloop before 2026-12-01)")
        fit["delta_len"] = LC_ORIENTATION
    return results


def read_results(path: str | Path) -> dict:
    """Read a results.json (or a directory holding one); DataError naming the file and the problem.
    LC fits written in the old orientation come back in today's (`upgrade_lc_orientation`)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise DataError(f"{p}: no such results file; pass a results.json or the --out directory of a prefloop eval run")
    text = p.read_text(encoding="utf-8")
    try:
        results = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{p}:{err.lineno}: not valid JSON ({err.msg}); rerun the eval that wrote it") from err
    problems = _problems(results)
    if problems:
        raise DataError(f"{p}: not a prefloop eval results file ({'; '.join(problems)}); "
                        f"it must follow schema {SCHEMA} as written by prefloop eval")
    return upgrade_lc_orientation(results)
