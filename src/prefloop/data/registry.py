"""Dataset names -> files and format declarations (LLaMA-Factory's `dataset_info.json` convention).

`dataset: name1,name2` resolves each name through `dataset_dir/dataset_info.json`:

    {"my_prefs": {"file_name": "prefs.json", "formatting": "sharegpt", "ranking": true,
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
                  "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human"}}}

A plain path (a file or a directory of .jsonl/.json/.parquet files) works too, relative to the
working directory or to `dataset_dir`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.config_files import load_json
from prefloop.data.formats import AUTO, FORMATTINGS, FormatSpec
from prefloop.errors import DataError

DATASET_INFO = "dataset_info.json"
DATA_EXTENSIONS = (".jsonl", ".json", ".parquet")
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


@dataclass
class DatasetSource:
    """One resolved dataset: its name as given, the files to read, and how to read them."""

    name: str
    files: list[Path]
    spec: FormatSpec = AUTO
    num_samples: int | None = None
    extra: dict = field(default_factory=dict)


def split_names(dataset: str) -> list[str]:
    names = [n.strip() for n in str(dataset).split(",")]
    names = [n for n in names if n]
    if not names:
        raise DataError("no dataset given: pass a file, a directory or a name from dataset_info.json")
    return names


def load_dataset_info(dataset_dir: str | Path) -> dict:
    """The parsed `dataset_info.json` of `dataset_dir`, or {} when there is none."""
    path = Path(dataset_dir) / DATASET_INFO
    if not path.is_file():
        return {}
    try:
        info = load_json(path, DataError)  # a dataset entry or key given twice is an error, not lost
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); fix the syntax (a JSON object of dataset entries)") from err
    if not isinstance(info, dict):
        raise DataError(f"{path}: must be a JSON object mapping dataset names to entries, got {type(info).__name__}")
    return info


def data_files(path: Path) -> list[Path]:
    """`path` itself, or the data files directly inside a directory (sorted, dataset_info.json excluded)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DATA_EXTENSIONS and p.name != DATASET_INFO)
        if not files:
            raise DataError(f"{path}: directory holds no {'/'.join(DATA_EXTENSIONS)} files; put the data files there or name a file")
        return files
    return [path]


def _entry_source(name: str, entry: object, dataset_dir: Path) -> DatasetSource:
    where = f"{dataset_dir / DATASET_INFO}: dataset {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: the entry must be an object with 'file_name', got {type(entry).__name__}")
    if "file_name" not in entry:
        hub = [k for k in _HUB_KEYS if k in entry]
        if hub:
            raise DataError(f"{where}: '{hub[0]}' datasets are not downloaded by prefloop; download the files and set 'file_name' to their local path")
        raise DataError(f"{where}: missing 'file_name'; set it to a file or directory relative to {dataset_dir}")
    if entry.get("ranking") is False:
        raise DataError(f"{where}: 'ranking' is false, so it is not preference data; set \"ranking\": true if it holds chosen/rejected pairs")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    for key, value in (("columns", columns), ("tags", tags)):
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise DataError(f"{where}: '{key}' must be an object mapping names to strings")
    formatting = entry.get("formatting")
    if formatting is None:
        # LLaMA-Factory's default is alpaca; with no columns declared we can detect the format instead.
        formatting = "alpaca" if columns else "auto"
    if formatting not in FORMATTINGS:
        raise DataError(f"{where}: unknown formatting {formatting!r}; use one of {', '.join(FORMATTINGS)}")
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1):
        raise DataError(f"{where}: 'num_samples' must be a positive integer, got {num_samples!r}")
    path = Path(entry["file_name"])
    if not path.is_absolute():
        path = dataset_dir / path
    if not path.exists():
        raise DataError(f"{where}: file_name {entry['file_name']!r} not found at {path}; check the path (it is relative to {dataset_dir})")
    known = {"file_name", "formatting", "ranking", "columns", "tags", "num_samples"}
    return DatasetSource(
        name=name,
        files=data_files(path),
        spec=FormatSpec(formatting=formatting, columns=dict(columns), tags=dict(tags)),
        num_samples=num_samples,
        extra={k: v for k, v in entry.items() if k not in known},
    )


def resolve_dataset(dataset: str, dataset_dir: str | Path = "data") -> list[DatasetSource]:
    """Each comma-separated name -> a DatasetSource; a name neither registered nor a path is a DataError."""
    dataset_dir = Path(dataset_dir)
    info = load_dataset_info(dataset_dir)
    sources = []
    for name in split_names(dataset):
        if name in info:
            sources.append(_entry_source(name, info[name], dataset_dir))
            continue
        for candidate in (Path(name), dataset_dir / name):
            if candidate.exists():
                sources.append(DatasetSource(name=name, files=data_files(candidate)))
                break
        else:
            if info:
                known = ", ".join(sorted(info)) or "(none)"
                hint = f"known names in {dataset_dir / DATASET_INFO}: {known}"
            else:
                hint = f"there is no {dataset_dir / DATASET_INFO} (set --dataset-dir / dataset_dir to the folder holding it)"
            raise DataError(f"dataset {name!r} is neither a file, a directory nor a registered name; {hint}")
    return sources
