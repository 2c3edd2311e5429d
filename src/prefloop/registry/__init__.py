"""Model registry: versions with lineage (versions.py), aliases such as `champion` (aliases.py), the
quality gate (rules.py: rules as data; evidence.py: results.json files; gate.py: the verdict), the
server's champion follower (follow.py) and the optional MLflow mirror (mlflow_mirror.py).

The SQLite store (`prefloop.store`) is the source of truth: every change is one transaction and
alias moves are append-only events, so any past state can be shown.
"""

from prefloop.errors import PrefloopError


class RegistryError(PrefloopError):
    """A registry reference, file or operation is wrong; the message says which and what to do."""


def existing_store(db):
    """Open the store at `db` for a command that reads (or changes) versions already registered; a path
    that does not exist is an error, never a new empty SQLite file left behind (only `models register`
    creates a store)."""
    from pathlib import Path

    from prefloop.store import Store

    if str(db) != ":memory:" and not Path(db).is_file():
        raise RegistryError(f"no store at {db}: the file does not exist; pass the --db that holds the registry, or "
                            f"register a version first (prefloop models register PATH --name NAME --db {db})")
    return Store(db)
