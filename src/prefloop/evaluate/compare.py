"""`prefloop eval compare RESULTS_A RESULTS_B`: what changed between two eval runs.

Prints every metric either run has, A, B and B - A, the settings that differ (models, data, judge,
seeds, config), so a reader sees whether the two numbers are comparable at all, and the `details`
entries that differ (per-prompt outcomes, fits, per-category tables: equal metrics can hide changed
items). Exit code 0; a file that is not a results.json is a located error (exit 2).
"""

from __future__ import annotations

import json

DETAILS_SHOWN = 20  # differing details entries printed (all of them with --json)


def _flatten(value, prefix: str = "", lists: bool = False) -> dict:
    """{dotted name: leaf value}. With `lists`, lists are opened too: a list of records with an "id" by id
    (`details.per_prompt[p3].outcome`, so two runs line up per item whatever their order), others by index."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k), lists))
        return out
    if lists and isinstance(value, list) and value:
        ids = [v.get("id") for v in value if isinstance(v, dict)]
        keyed = len(ids) == len(value) and None not in ids and len(set(map(str, ids))) == len(ids)
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{v['id'] if keyed else i}]", lists))
        return out
    return {prefix: value}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _details(a: dict, b: dict) -> tuple[list[dict], int]:
    """The flattened `details` entries (per-item tables included) whose values differ, each {"name", "a",
    "b", "diff"} (diff = b - a for two numbers), and how many entries are the same in both. Notes added on
    read (`converted_on_read`) are no result and left out."""
    fa, fb = _flatten(a.get("details"), "details", lists=True), _flatten(b.get("details"), "details", lists=True)
    changed, same = [], 0
    for name in dict.fromkeys([*fa, *fb]):
        if name.endswith(".converted_on_read"):
            continue
        x, y = fa.get(name), fb.get(name)
        if x == y and (name in fa) == (name in fb):
            same += 1
            continue
        changed.append({"name": name, "a": x, "b": y, "diff": y - x if _number(x) and _number(y) else None})
    return changed, same


def compare_results(a: dict, b: dict) -> dict:
    """{"metrics": [{"name", "a", "b", "diff"}], "settings": [{"name", "a", "b"}], "details": [{"name", "a",
    "b", "diff"}], "details_same": N, "kinds": [a, b]}.

    diff = b - a for numbers (None when either is missing). Settings: the flattened models, data, judge,
    seeds and config entries whose values differ (usage counters left out). Details: the flattened
    kind-specific tables (per-prompt outcomes, LC fit, per-category scores, ...) whose values differ, and
    the count of entries that are the same (`_details`).
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
    details, same = _details(a, b)
    return {"kinds": [a["kind"], b["kind"]], "metrics": metrics, "settings": settings, "details": details,
            "details_same": same}


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
    if diff["details"]:
        print(f"\ndetails that differ: {len(diff['details'])} ({diff['details_same']} the same)")
        for d in diff["details"][:DETAILS_SHOWN]:
            change = f"  ({d['diff']:+.4f})" if d["diff"] is not None else ""
            print(f"  {d['name']}: A={_short(d['a'])}  B={_short(d['b'])}{change}")
        if len(diff["details"]) > DETAILS_SHOWN:
            print(f"  ... and {len(diff['details']) - DETAILS_SHOWN} more (--json lists them all)")
    else:
        print(f"details: identical ({diff['details_same']} entries)")
    return 0


def _short(v, width: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= width else text[: width - 3] + "..."


def _json_dumps(value) -> str:
    return json.dumps(value, indent=2, default=str)
