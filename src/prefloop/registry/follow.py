"""`prefloop serve --registry NAME`: serve the version the `champion` alias points to, and follow it.

A background thread reads the alias from the store every `poll_seconds` (one indexed query); when it
moved (a promote or a rollback, from any process), the new version is loaded beside the old one and
swapped in through the server's `ModelHolder`: new requests get the new weights, requests already
running finish on the old ones, nothing restarts. A version that fails to load is reported and the
server keeps answering with the one it has.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from prefloop.registry import RegistryError
from prefloop.registry.versions import check_files, label
from prefloop.store import Store

ALIAS = "champion"


def load_generator(version: dict):
    """A LocalGenerator for a version: a full model directory, or a LoRA adapter on the base it names."""
    from prefloop.sampling import LocalGenerator

    path = Path(version["path"])
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise RegistryError(f"{label(version)}: {adapter_config} names no base_model_name_or_path")
        return LocalGenerator.load(base, adapter=str(path))
    return LocalGenerator.load(str(path))


def champion(store: Store, name: str) -> dict:
    """The version `name@champion` points to; RegistryError when none is promoted yet."""
    vid = store.aliases(name).get(ALIAS)
    if vid is None:
        names = store.model_names()
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=1)
            raise RegistryError(f"no model named {name!r} in {store.path}"
                                + (f" (did you mean {close[0]!r}?)" if close else "")
                                + (f"; registered: {', '.join(names)}" if names else
                                   "; it holds no model yet: register the starting model with `prefloop models "
                                   f"register PATH --name {name} --db {store.path}`, then promote it"))
        latest = store.model_versions(name)[-1]["version"]
        raise RegistryError(f"{name} has no champion in {store.path}: promote a version first "
                            f"(prefloop models promote {latest} --name {name} --db {store.path})")
    return store.model_version(vid)


class ChampionFollower:
    """Polls `name@champion` and swaps the holder's engine when it moves; `make_engine(generator)` wraps a
    loaded generator in a GenerationEngine."""

    def __init__(self, store: Store, name: str, holder, make_engine, version_id: int, poll_seconds: float = 2.0,
                 log=lambda msg: print(msg, file=sys.stderr)):
        self.store, self.name, self.holder, self.make_engine = store, name, holder, make_engine
        self.version_id, self.poll_seconds, self.log = version_id, poll_seconds, log
        self._failed: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefloop-champion-follower", daemon=True)

    def start(self) -> "ChampionFollower":
        """Start polling in a daemon thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (waits up to 10 s for the thread)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def check_once(self) -> bool:
        """Swap if the champion moved; True when a new version is now served."""
        vid = self.store.aliases(self.name).get(ALIAS)
        if vid is None or vid == self.version_id or vid == self._failed:
            return False
        version = self.store.model_version(vid)
        try:
            check_files(version)
            engine = self.make_engine(load_generator(version))
        except Exception as err:  # noqa: BLE001 - keep serving the current version, say why
            self._failed = vid
            self.log(f"prefloop serve: cannot load {label(version)} ({err}); still serving the previous version")
            return False
        self.holder.swap(engine, label(version), version["version"])
        self.version_id, self._failed = vid, None
        self.log(f"prefloop serve: now serving {label(version)} (champion moved); requests in flight finish on "
                 "the previous version")
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_once()
            except Exception as err:  # noqa: BLE001 - a locked or unreadable store: try again next time
                self.log(f"prefloop serve: reading the registry failed ({err}); retrying")
