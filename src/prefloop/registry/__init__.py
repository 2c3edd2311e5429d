"""Model registry: versions with lineage (versions.py), aliases such as `champion` (aliases.py), the
quality gate (rules.py: rules as data; evidence.py: results.json files; gate.py: the verdict), the
server's champion follower (follow.py) and the optional MLflow mirror (mlflow_mirror.py).

The SQLite store (`prefloop.store`) is the source of truth: every change is one transaction and
alias moves are append-only events, so any past state can be shown.
"""

from prefloop.errors import PrefloopError


class RegistryError(PrefloopError):
    """A registry reference, file or operation is wrong; the message says which and what to do."""
