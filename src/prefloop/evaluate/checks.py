"""Checks an eval command makes before it loads anything: a model name that cannot load fails at once,
naming the option the user typed, instead of after the hub client's retries."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from prefloop.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers brings it
        return True
    for filename in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(name, filename), str):
                return True
        except Exception:  # noqa: BLE001 - a name the hub would refuse: let the loader say so
            return True
    return False


def check_model_path(path: str | None, option: str = "--model") -> None:
    """Raise ConfigError now when `path` (a local model directory, .gguf file or hub id given with `option`)
    cannot load: it is not an existing path and either the hub is offline (HF_HUB_OFFLINE) and the id is not
    in the hub cache, or it is a bare name (no '/') that looks like a typo of a directory next to it."""
    if not path:
        return
    from prefloop.endpoint import is_endpoint

    if is_endpoint(path) or Path(path).expanduser().exists():
        return
    if str(path).endswith(".gguf"):
        raise ConfigError(f"{option} {path}: the GGUF file does not exist")
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    siblings = [c.name for c in parent.iterdir() if c.is_dir()] if parent.is_dir() else []
    close = difflib.get_close_matches(p.name, siblings, n=1, cutoff=0.75)
    hint = f"; did you mean {str(parent / close[0]) if str(parent) != '.' else close[0]}?" if close else ""
    if hub_offline() and not _in_hub_cache(str(path)):
        raise ConfigError(f"{option} {path}: no such local directory, and the hub is offline (HF_HUB_OFFLINE) with "
                          f"no cached copy of it{hint or '; give a local model directory'}")
    if "/" not in str(path) and close:
        raise ConfigError(f"{option} {path}: no such local directory{hint} (a hub model is given as owner/name)")
