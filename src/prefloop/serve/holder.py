"""Which model the server answers with, swappable while it runs (`prefloop serve --registry`).

Each request leases the current `ServedModel` for its whole life (a stream included) and gives it
back when done; `swap` makes new requests go to a new engine at once, and the old engine is closed
only when its last lease is returned. So requests already running finish on the old weights and no
request is dropped. A server for one fixed model uses the same holder and simply never swaps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class ServedModel:
    """One loaded model: `name` is the id clients request (/v1/models); `answer_name` is the id in
    responses and the interaction log (e.g. "demo:v3", which version answered)."""

    engine: object  # a GenerationEngine
    name: str
    answer_name: str
    version: str | None = None
    leases: int = 0
    retired: bool = False


class ModelHolder:
    """Thread-safe current model with leases; see the module docstring."""

    def __init__(self, engine, name: str, answer_name: str | None = None, version: str | None = None):
        self._lock = threading.Lock()
        self._current = ServedModel(engine, name, answer_name or name, version)
        self.swaps = 0

    @property
    def current(self) -> ServedModel:
        """The model new requests get (without leasing it)."""
        return self._current

    @property
    def name(self) -> str:
        """The model id clients request."""
        return self._current.name

    def acquire(self) -> ServedModel:
        """Lease the current model for one request; give it back with `release`."""
        with self._lock:
            served = self._current
            served.leases += 1
            return served

    def release(self, served: ServedModel) -> None:
        """Give a lease back; a swapped-out model is closed when its last lease returns."""
        with self._lock:
            served.leases -= 1
            done = served.retired and served.leases == 0
        if done:
            _close_later(served)

    def swap(self, engine, answer_name: str, version: str | None = None) -> ServedModel:
        """New requests go to `engine` from now on; the old one closes when its last request finishes."""
        with self._lock:
            old = self._current
            self._current = ServedModel(engine, old.name, answer_name, version)
            old.retired = True
            idle = old.leases == 0
            self.swaps += 1
        if idle:
            _close_later(old)
        return old

    def close(self) -> None:
        """Close the current model's engine (at server shutdown)."""
        with self._lock:
            served = self._current
        served.engine.close()


def _close_later(served: ServedModel) -> None:
    """Close an engine off the caller's thread (closing joins its worker)."""
    threading.Thread(target=served.engine.close, name="prefloop-close-engine", daemon=True).start()
