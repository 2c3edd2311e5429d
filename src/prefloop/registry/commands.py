"""`prefloop models register|list|show|promote|rollback|diff|mirror`: print what the registry holds or did.

Each function takes the CLI's options as keyword arguments and returns an exit code; the work is in
versions.py / aliases.py, this module only formats it for a person (or as JSON with --json).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from prefloop.registry import RegistryError, existing_store
from prefloop.registry import aliases as al
from prefloop.registry import versions as vs
from prefloop.store import Store, apply_alias_event

# Training keys shown by `show` (all keys are in --json and compared by `diff`).
SHOWN_CONFIG = ("model_name_or_path", "dataset", "finetuning_type", "pref_loss", "pref_beta", "learning_rate",
                "num_train_epochs", "max_steps", "seed")


def _mirror(store: Store, name: str, mlflow: str | None) -> None:
    if mlflow:
        from prefloop.registry.mlflow_mirror import sync

        numbers = sync(store, name, mlflow)
        print(f"mirrored {name} into MLflow at {mlflow}: {len(numbers)} version(s), aliases {store.aliases(name)}")


def training_config(path: Path) -> dict | None:
    """The resolved training config prefloop train saved with the model (prefloop_config.yaml), if any."""
    from prefloop.config import CONFIG_FILENAME

    f = path / CONFIG_FILENAME
    if not f.is_file():
        return None
    data = yaml.safe_load(f.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def infer_parent(store: Store, path: Path, config: dict | None) -> dict | None:
    """The registered version a model was trained from: its config's model_name_or_path, else its LoRA
    adapter's base model, when that path is a registered version."""
    candidates = [(config or {}).get("model_name_or_path")]
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        candidates.append(json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path"))
    for c in candidates:
        if c and (found := vs.find_by_path(store, c)) is not None:
            return found
    return None


def register_model(store: Store, path: str, name: str, parent: str | None = None, results=(),
                   version: str | None = None, copy: bool = True, extra_meta: dict | None = None,
                   metrics: dict | None = None, status: str = "candidate") -> dict:
    """Register `path` as a version of `name` with lineage, training config and metrics from `results`
    files (checked to be about this model). Sets the `candidate` alias to it."""
    from prefloop.registry.evidence import SUBJECT_ROLE, check_model, load_evidence

    src = Path(path)
    config = training_config(src) if src.is_dir() else None
    parent_version = vs.resolve(store, parent, name) if parent else infer_parent(store, src, config)
    evidence = load_evidence(results, "results")
    notes = check_model(evidence, SUBJECT_ROLE, [str(src)], str(src))
    meta = {**(extra_meta or {}), "config": config, "results": evidence.paths}
    version_row = vs.register(store, path, name, parent_version, version, {**evidence.metrics, **(metrics or {})},
                              meta, copy, alias="candidate")  # the row and its @candidate move: one transaction
    same = vs.same_files(store, name, version_row["meta"]["fingerprint"], exclude_id=version_row["id"])
    if same:  # as MLflow, registering again makes a new version; say that it holds the same files
        notes.append(f"{vs.label(version_row)} holds the same files as "
                     f"{', '.join(vs.label(v) for v in same)} (fingerprint {version_row['meta']['fingerprint'][:12]})")
    for note in notes:
        print(f"note: {note}")
    return version_row


def register_command(path, name, parent=None, results=None, version=None, no_copy=False, db="prefloop.sqlite",
                     mlflow=None) -> int:
    """`prefloop models register`: copy and register PATH, set @candidate, mirror if --mlflow."""
    with Store(db) as store:
        v = register_model(store, path, name, parent, results or [], version, copy=not no_copy)
        parent_text = f", parent {vs.label(store.model_version(v['parent_id']))}" if v["parent_id"] else ""
        print(f"registered {vs.label(v)} ({len(v['meta']['files'])} files at {v['path']}{parent_text}); "
              f"{name}@candidate -> {v['version']}")
        _mirror(store, name, mlflow)
    return 0


def _aliases_by_version(store: Store, name: str, until: str | None = None) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, vid in sorted(store.aliases(name, until).items()):
        out.setdefault(vid, []).append(alias)
    return out


def list_command(name=None, at=None, db="prefloop.sqlite", json_out=False) -> int:
    """`prefloop models list`: versions with aliases, status, last gate and parent (as of --at)."""
    until = al.parse_time(at) if at else None
    with existing_store(db) as store:
        names = [name] if name else store.model_names()
        rows = []
        for n in names:
            tags = _aliases_by_version(store, n, until)
            for v in store.model_versions(n, until):
                gates = [e for e in store.model_events(v["id"]) if e["status"] == "gate"
                         and (until is None or e["created_at"] <= until)]
                parent = store.model_version(v["parent_id"]) if v["parent_id"] else None
                rows.append({"name": n, "version": v["version"], "aliases": tags.get(v["id"], []), "status": v["status"],
                             "gate": gates[-1]["note"] if gates else None,
                             "parent": vs.label(parent) if parent else None, "created": v["created_at"][:19],
                             "path": v["path"]})
        leftover = {n: [str(p) for p in vs.leftovers(store, n)] for n in names}
        if json_out:
            print(json.dumps({"at": until, "versions": rows, "leftovers": leftover}, indent=2))
            return 0
        if not rows:
            print(f"no model versions in {db}" + (f" as of {until}" if until else ""))
            return 0
        print(_table(["name", "version", "aliases", "status", "gate", "parent", "created (UTC)", "path"],
                     [[r["name"], r["version"], ",".join(r["aliases"]) or "-", r["status"], r["gate"] or "-",
                       r["parent"] or "-", r["created"], r["path"]] for r in rows]))
        if until:
            print(f"(state as of {until})")
        for n, dirs in leftover.items():
            if dirs:
                print(f"note: {len(dirs)} folder(s) under {vs.files_root(store) / n} belong to no version (an "
                      f"interrupted register); safe to delete: {', '.join(dirs)}")
    return 0


def _table(header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header).rstrip()] + [fmt.format(*map(str, r)).rstrip() for r in rows])


def history(store: Store, version: dict) -> list[dict]:
    """Everything that happened to a version, oldest first: status and gate events, alias moves onto or off it."""
    events = [{"time": e["created_at"], "event": e["status"], "note": e["note"] or ""}
              for e in store.model_events(version["id"])]
    stacks: dict[str, list[int]] = {}
    for e in store.alias_events(version["name"]):
        stack = stacks.setdefault(e["alias"], [])
        before = stack[-1] if stack else None
        apply_alias_event(stack, e)
        after = stack[-1] if stack else None
        if version["id"] in (before, after) and before != after:
            events.append({"time": e["created_at"], "event": f"{e['alias']} {e['action']} "
                           + ("to this version" if after == version["id"] else "away"),
                           "note": (e["note"] or "") + (" [forced]" if e["forced"] else "")})
    return sorted(events, key=lambda e: e["time"])


def show_command(version, name=None, db="prefloop.sqlite", json_out=False) -> int:
    """`prefloop models show`: path and file check, lineage, config, data, metrics, gates, history."""
    with existing_store(db) as store:
        v = vs.resolve(store, version, name)
        chain = vs.lineage(store, v)
        try:
            vs.check_files(v)
            files = "ok"
        except RegistryError as err:
            files = str(err)
        gates = [e for e in store.model_events(v["id"]) if e["status"] == "gate"]
        info = {**v, "label": vs.label(v), "aliases": _aliases_by_version(store, v["name"]).get(v["id"], []),
                "files_check": files, "lineage": [vs.label(x) for x in chain],
                "metrics": vs.recorded_metrics(store, v),
                "gates": [{"time": g["created_at"], "verdict": g["note"], "reason": g["detail"].get("reason"),
                           "rows": g["detail"].get("rows")} for g in gates],
                "events": history(store, v)}
    if json_out:
        print(json.dumps(info, indent=2, default=str))
        return 0
    meta = v["meta"]
    print(f"{info['label']}  (aliases: {', '.join(info['aliases']) or 'none'}; status {v['status']})")
    print(f"  path: {v['path']}  (files: {files}; registered from {meta.get('source')})")
    print(f"  fingerprint: {meta.get('fingerprint')}")
    print(f"  lineage: {' <- '.join(info['lineage'])}")
    config = meta.get("config") or {}
    if config:
        print("  config: " + ", ".join(f"{k}={config[k]}" for k in SHOWN_CONFIG if k in config))
    for key, value in (meta.get("data") or {}).items():
        print(f"  data {key}: {value}")
    if info["metrics"]:
        print("  metrics: " + ", ".join(f"{k}={_num(x)}" for k, x in sorted(info["metrics"].items())))
    for g in info["gates"]:
        print(f"  gate {g['time'][:19]}: {g['verdict']} ({g['reason']})")
    print("  history:")
    for e in info["events"]:
        print(f"    {e['time'][:19]}  {e['event']}" + (f"  {e['note']}" if e["note"] else ""))
    return 0


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def promote_command(version, name=None, alias="champion", force=False, note=None, db="prefloop.sqlite",
                    mlflow=None) -> int:
    """`prefloop models promote`: move an alias (champion) to a version; see aliases.promote."""
    with existing_store(db) as store:
        done = al.promote(store, version, name, alias, force, note)
        v, prev = done["version"], done["previous"]
        if done.get("unchanged"):
            print(f"{v['name']}@{alias} already points to {v['version']}; nothing changed")
            _mirror(store, v["name"], mlflow)
            return 0
        print(f"{v['name']}@{alias} -> {v['version']}" + (f" (was {prev['version']})" if prev else " (first)")
              + (f"; FORCED past gate verdict {done['gate']!r}" if done["forced"] else
                 f"; gate: {done['gate'] or 'never run'}"))
        _mirror(store, v["name"], mlflow)
    return 0


def rollback_command(name=None, alias="champion", note=None, db="prefloop.sqlite", mlflow=None) -> int:
    """`prefloop models rollback`: move an alias back to its previous version."""
    with existing_store(db) as store:
        name = name or vs.only_name(store)
        done = al.rollback(store, name, alias, note)
        print(f"{name}@{alias} -> {done['version']['version']} (rolled back from {done['previous']['version']})")
        _mirror(store, name, mlflow)
    return 0


def diff_command(a, b, name=None, db="prefloop.sqlite", json_out=False) -> int:
    """`prefloop models diff`: lineage relation, file identity, config keys and metrics that differ."""
    with existing_store(db) as store:
        va, vb = vs.resolve(store, a, name), vs.resolve(store, b, name)
        ma, mb = vs.recorded_metrics(store, va), vs.recorded_metrics(store, vb)
        ca, cb = va["meta"].get("config") or {}, vb["meta"].get("config") or {}
        related = ("ancestor" if va["id"] in [x["id"] for x in vs.lineage(store, vb)] else
                   "descendant" if vb["id"] in [x["id"] for x in vs.lineage(store, va)] else "unrelated")
    config = {k: [ca.get(k), cb.get(k)] for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)}
    metrics = {k: [ma.get(k), mb.get(k)] for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)}
    la, lb = vs.label(va), vs.label(vb)
    if json_out:
        print(json.dumps({"a": la, "b": lb, "a_is": related, "config": config, "metrics": metrics,
                          "fingerprint": [va["meta"].get("fingerprint"), vb["meta"].get("fingerprint")]}, indent=2))
        return 0
    print(f"{la} vs {lb}: {la} is {'an ' if related[0] in 'au' else 'a '}{related} of {lb}"
          if related != "unrelated" else f"{la} vs {lb}: not in one lineage")
    print(f"files: {'identical' if va['meta'].get('fingerprint') == vb['meta'].get('fingerprint') else 'differ'}")
    if bool(ca) != bool(cb):
        print(f"config: only {la if ca else lb} has a training config ({lb if ca else la} was not trained by "
              "prefloop train)")
    else:
        rows = [[k, x, y] for k, (x, y) in config.items()]
        print("config: same" if not rows else _table(["config key", la, lb], rows))
    mrows = []
    for k, (x, y) in metrics.items():
        delta = f"{y - x:+.4g}" if isinstance(x, (int, float)) and isinstance(y, (int, float)) else "-"
        mrows.append([k, _num(x) if x is not None else "-", _num(y) if y is not None else "-", delta])
    print("metrics: same" if not mrows else _table(["metric", la, lb, "change"], mrows))
    return 0


def path_command(version, name=None, db="prefloop.sqlite") -> int:
    """`prefloop models path`: print a version's model directory (after checking its files)."""
    with existing_store(db) as store:
        v = vs.resolve(store, version, name)
        vs.check_files(v)
        print(v["path"])
    return 0


def mirror_command(name=None, mlflow=None, db="prefloop.sqlite") -> int:
    """`prefloop models mirror`: mirror every (or one) model name into MLflow."""
    if not mlflow:
        raise RegistryError("give --mlflow URI (an MLflow tracking server, or file:///path for a local folder)")
    with existing_store(db) as store:
        for n in [name] if name else store.model_names():
            _mirror(store, n, mlflow)
    return 0
