"""`prefloop eval compare RESULTS_A RESULTS_B`: what changed between two eval runs.

Prints every metric either run has, A, B and B - A, and the settings that differ (models, data, judge,
seeds, config), so a reader sees whether the two numbers are comparable at all. Exit code 0; a file that
is not a results.json is a located error (exit 2).
"""

from __future__ import annotations

import json


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def compare_results(a: dict, b: dict) -> dict:
    """{"metrics": [{"name", "a", "b", "diff"}], "settings": [{"name", "a", "b"}], "kinds": [a, b]}.

    diff = b - a for numbers (None when either is missing). Settings: the flattened models, data, judge,
    seeds and config entries whose values differ (usage counters left out).
    """
    names = list(dict.fromkeys([*a["metrics"], *b["metrics"]]))
    metrics = []
    for name in names:
        x, y = a["metrics"].get(name), b["metrics"].get(name)
        diff = y - x if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None
        metrics.append({"name": name, "a": x, "b": y, "diff": diff})
    settings = []
    for key in ("benchmark", "models", "data", "judge", "seeds", "config"):
        fa, fb = _flatten(a.get(key), key), _flatten(b.get(key), key)
        for name in dict.fromkeys([*fa, *fb]):
            if ".usage." in name:
                continue
            if fa.get(name) != fb.get(name):
                settings.append({"name": name, "a": fa.get(name), "b": fb.get(name)})
    return {"kinds": [a["kind"], b["kind"]], "metrics": metrics, "settings": settings}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def compare_command(results_a, results_b, json=False) -> int:  # noqa: A002 - the CLI flag is --json
    from prefloop.evaluate.results import read_results

    a, b = read_results(results_a), read_results(results_b)
    diff = compare_results(a, b)
    if json:
        print(_json_dumps(diff))
        return 0
    print(f"A: {results_a} ({a['kind']}, {a['created']})\nB: {results_b} ({b['kind']}, {b['created']})")
    if a["kind"] != b["kind"]:
        print(f"note: different kinds of eval ({a['kind']} vs {b['kind']}); only shared metric names line up")
    width = max([len(m["name"]) for m in diff["metrics"]] + [6])
    print(f"\n{'metric':{width}s}  {'A':>12s}  {'B':>12s}  {'B - A':>12s}")
    for m in diff["metrics"]:
        d = "-" if m["diff"] is None else f"{m['diff']:+.4f}"
        print(f"{m['name']:{width}s}  {_fmt(m['a']):>12s}  {_fmt(m['b']):>12s}  {d:>12s}")
    if diff["settings"]:
        print("\nsettings that differ:")
        for s in diff["settings"]:
            print(f"  {s['name']}: A={s['a']!r}  B={s['b']!r}")
    else:
        print("\nsettings: identical (models, data, judge, seeds, config)")
    return 0


def _json_dumps(value) -> str:
    return json.dumps(value, indent=2, default=str)
