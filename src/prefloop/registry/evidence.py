"""Evidence for the gate: the metrics of one side (candidate or baseline) read from `results.json` files.

A side may be measured by several eval runs (a win rate, held-out preference accuracy, benchmarks);
their flat metrics are merged, and a metric given twice with different values is an error. Each
file also names the models it measured (`models.ROLE`), which is how a results file from another
model than the one named is caught (`check_model`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.evaluate.results import read_results
from prefloop.registry import RegistryError

# The role in a results file that holds the model the metrics describe, per kind.
SUBJECT_ROLE = {"winrate": "after", "prefs": "model", "bench": "model"}


@dataclass
class Evidence:
    """Merged metrics of one side; `sources` keeps (path, results) of each file for identity checks."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # metric -> file it came from
    sources: list[tuple[Path, dict]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        """The results files read, as strings."""
        return [str(p) for p, _ in self.sources]


def load_evidence(paths, side: str) -> Evidence:
    """Read and merge results files (paths or eval --out directories). Raises DataError for a bad file and
    RegistryError for a leaderboard (no single subject) or a metric that two files disagree on."""
    evidence = Evidence()
    for raw in paths or []:
        path = Path(raw)
        results = read_results(path)
        path = path / "results.json" if path.is_dir() else path
        kind = results["kind"]
        if kind not in SUBJECT_ROLE:
            raise RegistryError(f"{path}: a {kind!r} results file ranks several models; the gate needs one model's "
                                f"results per side (winrate, prefs or bench)")
        for name, value in results["metrics"].items():
            if name in evidence.metrics and evidence.metrics[name] != value:
                raise RegistryError(f"{side} metric {name!r} is {evidence.metrics[name]} in {evidence.origin[name]} "
                                    f"but {value} in {path}; give one results file per measurement")
            evidence.metrics[name] = value
            evidence.origin[name] = str(path)
        evidence.sources.append((path, results))
    return evidence


def _same_path(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return os.path.realpath(a) == os.path.realpath(b) or Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def entry_matches(entry: dict, paths: list[str]) -> bool | None:
    """Whether a results file's model entry is one of `paths`: True/False, or None when the entry names
    no local files (a model behind a URL) and so cannot be checked. A LoRA run (`adapter` set) is
    identified by its adapter, a full model by its path."""
    named = entry.get("adapter") or entry.get("path")
    if not named:
        return None
    return any(_same_path(named, p) for p in paths)


def describe_entry(entry: dict) -> str:
    """A results file's model entry in words, for error messages."""
    parts = [f"{k}={entry[k]}" for k in ("path", "adapter", "url", "name") if entry.get(k)]
    return ", ".join(parts) or "no model named"


def check_model(evidence: Evidence, role_of: dict[str, str], paths: list[str], what: str) -> list[str]:
    """Check that every file's `role_of[kind]` model is one of `paths` (the files of `what`, e.g.
    "demo:v3"). Raises RegistryError naming the file for a mismatch; returns notes for files that
    could not be checked (models served by URL)."""
    notes = []
    for path, results in evidence.sources:
        role = role_of.get(results["kind"])
        if role is None:
            continue
        entry = results["models"].get(role)
        if entry is None:
            raise RegistryError(f"{path}: models.{role} is missing; a {results['kind']} results file names its "
                                f"{role!r} model")
        ok = entry_matches(entry, paths)
        if ok is False:
            raise RegistryError(f"{path}: models.{role} is {describe_entry(entry)}, not {what} "
                                f"({', '.join(paths)}); evaluate {what} or name the version these results belong to")
        if ok is None:
            notes.append(f"{path}: models.{role} ({describe_entry(entry)}) names no local files; "
                         f"cannot check that it is {what}")
    return notes
