"""Model versions: register (files copied whole or not at all), resolve a reference, lineage, file checks.

A version is a row in the store (`model_versions`: name, tag v1/v2/... or the user's own, path,
parent, metrics, meta) plus, by default, a copy of its files under the registry's folder next to the
store (`<store>.models/NAME/<id>/`). The copy is written into a temporary folder and renamed into
place before the store row is committed, so a register killed at any moment leaves either no version
or a whole one (at worst an unreferenced folder, which `leftovers` reports).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

from prefloop.output_files import fsync_dir
from prefloop.registry import RegistryError
from prefloop.store import Store, StoreError

# Training leftovers that are not part of a model version (checkpoints, TensorBoard runs, caches).
SKIP_DIRS = ("runs", "ref_cache", "__pycache__")
SKIP_PREFIXES = ("checkpoint-", ".")
INCOMING = ".incoming-"


def files_root(store: Store) -> Path:
    """Where the registry keeps version files: next to the store file, `<stem>.models/`."""
    return store.path.resolve().parent / f"{store.path.stem}.models"


def _model_files(src: Path) -> list[Path]:
    """Files of a model directory (relative), training leftovers excluded, sorted."""
    out = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(SKIP_PREFIXES))
        for f in sorted(files):
            if not f.startswith("."):
                out.append((Path(root) / f).relative_to(src))
    return out


def manifest_of(directory: Path) -> tuple[dict[str, int], str]:
    """({relative path: size in bytes}, sha256 over every file's path and content) of a model directory."""
    h = hashlib.sha256()
    manifest = {}
    for rel in _model_files(directory):
        full = directory / rel
        manifest[rel.as_posix()] = full.stat().st_size
        h.update(rel.as_posix().encode() + b"\0")
        with open(full, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return manifest, h.hexdigest()


def copy_model(src: Path, dest_root: Path) -> Path:
    """Copy the model files of `src` to a new folder under `dest_root`: written and fsynced in
    `.incoming-<id>/`, then renamed to `<id>/` (atomic on one filesystem). Returns the final folder."""
    files = _model_files(src)
    if not files:
        raise RegistryError(f"{src} holds no model files (only checkpoints or logs?); give the directory with "
                            "config.json + weights, or a LoRA adapter (adapter_config.json)")
    dest_root.mkdir(parents=True, exist_ok=True)
    key = uuid.uuid4().hex[:12]
    tmp, final = dest_root / f"{INCOMING}{key}", dest_root / key
    try:
        for rel in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, target)
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(dest_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def is_model_dir(path: Path) -> bool:
    """A transformers model directory (config.json) or a LoRA adapter (adapter_config.json)."""
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def register(store: Store, path: str, name: str, parent: dict | None = None, version: str | None = None,
             metrics: dict | None = None, meta: dict | None = None, copy: bool = True,
             alias: str | None = None) -> dict:
    """Register the model at `path` as a new version of `name`; returns the version (store row).

    With `copy` (default) the files are copied into the registry (see `copy_model`) and the version
    points at the copy; otherwise it points at `path` as is. `meta` gets source path, file manifest
    and fingerprint. `alias` (e.g. "candidate") points at the new version in the same store transaction
    as its row. Raises RegistryError for a missing or empty model directory or a taken tag; a failure
    after the copy removes it again."""
    src = Path(path)
    if not src.is_dir() or not is_model_dir(src):
        raise RegistryError(f"{path}: not a model directory (no config.json or adapter_config.json); give the "
                            "output_dir of prefloop train or a saved transformers model")
    check_name(name)
    if version is not None:
        check_name(version, "version tag")
        if version in RESERVED_ALIASES or version in store.aliases(name):
            raise RegistryError(f"version tag {version!r} is the name of an alias of {name}; references such as "
                                f"{name}:{version} or {version} would be ambiguous. Pick another tag")
    if alias is not None:
        check_alias(store, name, alias)
    manifest, fingerprint = manifest_of(src)
    stored = copy_model(src, files_root(store) / name) if copy else src.resolve()
    meta = {**(meta or {}), "source": str(src.resolve()), "files": manifest, "fingerprint": fingerprint,
            "copied": copy}
    try:
        version_id = store.add_model_version(name, str(stored), parent["id"] if parent else None, metrics, meta,
                                             version=version, alias=alias, alias_note="registered")
    except BaseException as err:
        if copy:
            shutil.rmtree(stored, ignore_errors=True)
        if isinstance(err, StoreError):
            raise RegistryError(str(err)) from err
        raise
    return store.model_version(version_id)


RESERVED_ALIASES = ("champion", "candidate")
_VERSION_LIKE = re.compile(r"^[vV]\d+$")


def check_alias(store: Store, name: str, alias: str) -> None:
    """RegistryError unless `alias` can name a pointer of model `name`: a simple name (as `check_name`) that
    does not look like a version number (v3) nor is "latest" (both reserved by MLflow, which the mirror
    writes to) and is no version tag of `name`, so that
    `NAME@ALIAS`, `NAME:TAG` and a bare `ALIAS` or `TAG` always mean one thing."""
    check_name(alias, "alias")
    if alias.lower() == "latest":
        raise RegistryError("alias 'latest' is reserved (MLflow's models:/NAME/latest is the newest version; the "
                            "mirror could not set it); pick another alias name")
    if _VERSION_LIKE.match(alias):
        raise RegistryError(f"alias {alias!r} looks like a version number; an alias names a role such as champion, "
                            "candidate or staging (v1, v2, ... are the versions themselves)")
    if alias in {v["version"] for v in store.model_versions(name)} and alias not in RESERVED_ALIASES:
        # a version tagged "champion"/"candidate" (allowed in stores made before they became reserved) must not
        # stop every register/promote: the alias is set beside it, and `resolve` asks which one a bare name means
        raise RegistryError(f"alias {alias!r} is the tag of a version of {name}; a reference {alias!r} would be "
                            "ambiguous. Pick another alias name")


def check_name(text: str, what: str = "model name") -> None:
    """RegistryError unless `text` is usable as a model name or version tag."""
    bad = [c for c in ":@/\\ " if c in text]
    if not text or bad or text.startswith("."):
        raise RegistryError(f"{what} {text!r} is not allowed: use letters, digits, '-', '_' and '.' "
                            "(':' and '@' separate name, version and alias in references)")


def leftovers(store: Store, name: str) -> list[Path]:
    """Folders under the registry's files that no version points to (an interrupted register)."""
    root = files_root(store) / name
    if not root.is_dir():
        return []
    used = {Path(v["path"]).resolve() for v in store.model_versions(name)}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.resolve() not in used)


def resolve(store: Store, ref: str, name: str | None = None) -> dict:
    """The version a reference names: `TAG` (v3), `NAME:TAG`, `NAME@ALIAS`, `@ALIAS` or `ALIAS` when no tag
    matches. The name comes from the reference, else `name`, else the store's only model name.
    Raises RegistryError saying what exists."""
    ref = original = str(ref).strip()
    alias = None
    if "@" in ref:
        ref_name, _, alias = ref.partition("@")
    elif ":" in ref:
        ref_name, _, ref = ref.partition(":")
    else:
        ref_name = ""
    name = ref_name or name or only_name(store)
    versions = store.model_versions(name)
    if not versions:
        raise RegistryError(f"no model named {name!r} in {store.path}; names there: "
                            f"{', '.join(store.model_names()) or 'none'} (prefloop models register PATH --name NAME)")
    if alias is None:
        found = [v for v in versions if v["version"] == ref]
        if found:
            if ":" not in original and ref in RESERVED_ALIASES and store.aliases(name).get(ref) not in (
                    None, found[0]["id"]):
                raise RegistryError(f"{ref!r} is ambiguous in {name}: {name}:{ref} is the version tagged {ref!r} "
                                    f"(registered before {ref!r} became a reserved alias) and {name}@{ref} is the "
                                    "alias; give one of the two")
            return found[0]
        if ref in store.aliases(name):
            alias = ref
        else:
            raise RegistryError(f"{name} has no version or alias {ref!r}; versions: "
                                f"{', '.join(v['version'] for v in versions)}; aliases: "
                                f"{', '.join(store.aliases(name)) or 'none'}")
    aliases = store.aliases(name)
    if alias not in aliases:
        raise RegistryError(f"{name}@{alias} is not set; aliases of {name}: {', '.join(aliases) or 'none'} "
                            f"(set one with prefloop models promote VERSION --alias {alias})")
    return store.model_version(aliases[alias])


def only_name(store: Store) -> str:
    """The store's only model name; RegistryError when it holds none or several."""
    names = store.model_names()
    if len(names) == 1:
        return names[0]
    if not names:
        raise RegistryError(f"the registry in {store.path} is empty; register a model first: "
                            "prefloop models register PATH --name NAME")
    raise RegistryError(f"{store.path} holds several models ({', '.join(names)}); say which with --name NAME "
                        "or NAME:VERSION")


def label(version: dict) -> str:
    """`NAME:TAG` of a version, as every message shows it."""
    return f"{version['name']}:{version['version']}"


def lineage(store: Store, version: dict) -> list[dict]:
    """The version and its ancestors, newest first (parent, grandparent, ...)."""
    chain, seen = [version], {version["id"]}
    while chain[-1]["parent_id"] is not None and chain[-1]["parent_id"] not in seen:
        chain.append(store.model_version(chain[-1]["parent_id"]))
        seen.add(chain[-1]["id"])
    return chain


def same_files(store: Store, name: str, fingerprint: str, exclude_id: int | None = None) -> list[dict]:
    """Versions of `name` whose files have `fingerprint` (the same model registered more than once)."""
    return [v for v in store.model_versions(name)
            if v["meta"].get("fingerprint") == fingerprint and v["id"] != exclude_id]


def find_by_path(store: Store, path: str) -> dict | None:
    """The newest version whose files are at `path` (its registry copy or the folder it was registered from)."""
    try:
        target = Path(path).resolve()
    except OSError:
        return None
    for version in reversed(store.model_versions()):
        if target in (Path(version["path"]).resolve(), Path(version["meta"].get("source", "/nonexistent")).resolve()):
            return version
    return None


def find_round(store: Store, name: str, run: str, index: int) -> dict | None:
    """The version of `name` registered for round `index` of the rounds run `run` (iterative DPO,
    meta["round"] = {"index", "name", "run", ...}), or None."""
    for version in store.model_versions(name):
        info = version["meta"].get("round") or {}
        if info.get("run") == run and info.get("index") == index:
            return version
    return None


def check_files(version: dict) -> None:
    """RegistryError when a version's files are gone or changed size (promoting it would serve nothing)."""
    root = Path(version["path"])
    if not root.is_dir():
        raise RegistryError(f"{label(version)}: its files at {root} are gone; it cannot be promoted or served. "
                            "Register the model again (prefloop models register PATH --name "
                            f"{version['name']}) and promote the new version")
    for rel, size in (version["meta"].get("files") or {}).items():
        f = root / rel
        if not f.is_file():
            raise RegistryError(f"{label(version)}: file {f} is missing; register the model again")
        if f.stat().st_size != size:
            raise RegistryError(f"{label(version)}: file {f} has {f.stat().st_size} bytes, {size} when registered; "
                                "the files were changed after registration; register the model again")


def version_paths(version: dict) -> list[str]:
    """Paths that identify a version in results files: its registry folder and the folder it came from."""
    return [p for p in (version["path"], version["meta"].get("source")) if p]


def recorded_metrics(store: Store, version: dict) -> dict:
    """A version's metrics: those given at registration, updated by the candidate metrics of each gate run
    on it (latest last). Used as the baseline when this version is the champion."""
    metrics = dict(version["metrics"])
    for event in store.model_events(version["id"]):
        if event["status"] == "gate":
            metrics.update(event["detail"].get("metrics") or {})
    return metrics


def last_gate(store: Store, version: dict) -> dict | None:
    """The version's latest gate event (detail holds verdict and table), or None if it was never gated."""
    gates = [e for e in store.model_events(version["id"]) if e["status"] == "gate"]
    return gates[-1] if gates else None
