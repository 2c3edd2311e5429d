"""Where a LoRA adapter's base model is: recorded when the adapter is saved, found and verified when it loads.

An adapter is only half a model. PEFT records the base as the path it was loaded from, often relative
(`models/SmolLM2-135M-Instruct`), which means nothing once the adapter directory is moved or used from
another working directory. prefloop records the base as an absolute path (a local model) or a hub id,
plus a fingerprint of the base's files, in `adapter_config.json` and in `prefloop_base.json` beside it;
`prefloop merge` and `prefloop serve --adapter` find the base from anywhere, check the fingerprint, and
every error names the flag that fixes it (`--base` for merge).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

BASE_FILE = "prefloop_base.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_EDGE_BYTES = 1 << 20  # bytes hashed from the start and from the end of each weight file


def portable_base(path: str) -> str:
    """`path` as it should be recorded: absolute when it is a local directory or file, else as given (a hub id)."""
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


def base_fingerprint(path: str) -> str | None:
    """sha256 of a local base model's files: config.json's text, and each weight file's name, size and
    first and last MiB (seconds for any size); None for a hub id or a missing path. Equal fingerprints mean
    the same files; a re-saved or re-converted copy of the same weights gets another fingerprint."""
    p = Path(path).expanduser()
    if p.is_file():
        files, config = [p], b""
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)
        config = (p / "config.json").read_bytes() if (p / "config.json").is_file() else b""
    else:
        return None
    h = hashlib.sha256(config)
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as handle:
            h.update(handle.read(_EDGE_BYTES))
            if size > 2 * _EDGE_BYTES:
                handle.seek(size - _EDGE_BYTES)
                h.update(handle.read(_EDGE_BYTES))
    return h.hexdigest()


def record_base(adapter_dir: str | Path, base: str) -> dict:
    """Write the base of the adapter in `adapter_dir` (absolute path or hub id, and its fingerprint) to
    `adapter_config.json` (base_model_name_or_path, which PEFT and vLLM read) and `prefloop_base.json`.
    Returns the record. Raises FileNotFoundError when `adapter_dir` holds no adapter_config.json."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    record = {"base_model_name_or_path": portable_base(base), "given_as": str(base),
              "fingerprint": base_fingerprint(base)}
    config["base_model_name_or_path"] = record["base_model_name_or_path"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (adapter_dir / BASE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def recorded_base(adapter_dir: str | Path) -> dict:
    """{"base_model_name_or_path", "fingerprint"} as the adapter records them (fingerprint None for
    adapters saved without prefloop_base.json)."""
    from prefloop.models import ModelLoadError

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{adapter_dir} holds no LoRA adapter (adapter_config.json is missing); "
                             f"give the output_dir of a LoRA training run")
    record_path = adapter_dir / BASE_FILE
    if record_path.is_file():
        return json.loads(record_path.read_text(encoding="utf-8"))
    base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return {"base_model_name_or_path": base, "fingerprint": None}


def resolve_base(adapter_dir: str | Path, base: str | None = None, flag: str = "--base") -> str:
    """The base model to load `adapter_dir` onto: `base` when given (the user's `flag`), else the recorded one.

    Raises ModelLoadError, naming `flag`, when no base is recorded, when the recorded base is not on this
    machine, or when the recorded base's files no longer match the fingerprint. A `base` given explicitly
    that does not match the fingerprint only warns (the user chose it)."""
    from prefloop.models import ModelLoadError

    record = recorded_base(adapter_dir)
    recorded = record.get("base_model_name_or_path")
    candidate = base or recorded
    if not candidate:
        raise ModelLoadError(f"{adapter_dir}/adapter_config.json does not name its base model; pass {flag} MODEL_DIR")
    local = Path(candidate).expanduser()
    if not base and not local.exists() and record.get("fingerprint"):  # it was a local model at training
        raise ModelLoadError(f"{adapter_dir} was trained on the base model {candidate}, which is not on this machine "
                             f"(moved or deleted?); pass {flag} with the base model's directory")
    expected = record.get("fingerprint")
    if expected and local.exists():
        actual = base_fingerprint(str(local))
        if actual != expected:
            message = (f"the base model {candidate} is not the one {adapter_dir} was trained on (its files differ "
                       f"from the fingerprint recorded at training, {expected[:12]}...)")
            if base is None:
                raise ModelLoadError(f"{message}; pass {flag} with the base model it was trained on")
            print(f"prefloop: warning: {message}; using it because {flag} names it", file=sys.stderr)
    return str(local.resolve()) if local.exists() else candidate
