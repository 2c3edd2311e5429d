"""Dataset names -> files and format declarations (LLaMA-Factory's `dataset_info.json` convention).

`dataset: name1,name2` resolves each name through `dataset_dir/dataset_info.json`:

    {"my_prefs": {"file_name": "prefs.json", "formatting": "sharegpt", "ranking": true,
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
                  "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human"}}}

A plain path (a file or a directory of .jsonl/.json/.parquet files) works too, relative to the
working directory or to `dataset_dir`.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.config_files import load_json
from prefloop.data.formats import AUTO, FORMATTINGS, FormatSpec
from prefloop.errors import DataError, json_error_text

DATASET_INFO = "dataset_info.json"
DATA_EXTENSIONS = (".jsonl", ".json", ".parquet")
# LLaMA-Factory columns for data prefloop cannot train on: declared, they would be ignored silently.
_UNSUPPORTED_COLUMNS = ("images", "videos", "audios", "kto_tag")
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# LLaMA-Factory's dataset_info.json keys (its data/README.md and data/parser.py). prefloop reads the first
# group; the hub ones and the hub-only options (subset, folder, revision, a split other than "train") it does
# not implement, so an entry that has them is refused instead of being read as something else.
ENTRY_KEYS = ("file_name", "formatting", "ranking", "columns", "tags", "num_samples", "split", "file_sha1")
_UNSUPPORTED_KEYS = {
    "subset": "a subset of a hub dataset", "folder": "a folder of a hub dataset repository",
    "revision": "a revision of a hub dataset",
}
COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
               "chosen", "rejected", "kto_tag")
TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")


@dataclass(frozen=True)
class OptionNames:
    """How the calling command spells the options an error message may point to; None: it has none.

    Errors name only options the command has: `data check` has --dataset-dir and --skip-bad-rows,
    a training config has the keys dataset_dir and skip_bad_rows, `generate` has neither.
    """

    dataset_dir: str | None = None
    skip_bad_rows: str | None = None


NO_OPTIONS = OptionNames()
CONFIG_KEYS = OptionNames("dataset_dir", "skip_bad_rows: true")
CHECK_OPTIONS = OptionNames("--dataset-dir", "--skip-bad-rows")


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
        raise DataError(f"{path}: {json_error_text(err)}; fix the syntax (a JSON object of dataset entries)") from err
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
    _check_keys(entry, where, "", (*ENTRY_KEYS, *_HUB_KEYS, *_UNSUPPORTED_KEYS))
    hub = [k for k in _HUB_KEYS if k in entry]
    if hub:
        ignored = " (LLaMA-Factory would load that and ignore 'file_name')" if "file_name" in entry else ""
        raise DataError(f"{where}: '{hub[0]}' datasets are not downloaded by prefloop{ignored}; download the files and "
                        f"set 'file_name' to their local path (and remove '{hub[0]}')")
    for key, what in _UNSUPPORTED_KEYS.items():
        if entry.get(key) not in (None, ""):
            raise DataError(f"{where}: '{key}' ({what}) is not supported: prefloop reads local files only; put the "
                            f"files you want under 'file_name' and remove '{key}'")
    split = entry.get("split")
    if split not in (None, "train"):
        raise DataError(f"{where}: 'split': {split!r} is not supported (prefloop reads every record of 'file_name', "
                        "LLaMA-Factory's split \"train\"); point 'file_name' at that split's files and remove 'split'")
    if "file_name" not in entry:
        raise DataError(f"{where}: missing 'file_name'; set it to a file or directory relative to {dataset_dir}")
    if entry.get("ranking") is False:
        raise DataError(f"{where}: 'ranking' is false, so it is not preference data; set \"ranking\": true if it holds chosen/rejected pairs")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    for key, value, known in (("columns", columns, COLUMN_KEYS), ("tags", tags, TAG_KEYS)):
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise DataError(f"{where}: '{key}' must be an object mapping names to strings")
        _check_keys(value, where, f"{key}.", known)
    unsupported = [k for k in _UNSUPPORTED_COLUMNS if columns.get(k)]
    if unsupported:
        raise DataError(f"{where}: columns {', '.join(repr(k) for k in unsupported)} are not supported: prefloop trains "
                        "on text preference pairs (no images, videos, audios or KTO tags); remove them from 'columns' "
                        "(and the data)")
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
    return DatasetSource(
        name=name,
        files=data_files(path),
        spec=FormatSpec(formatting=formatting, columns=dict(columns), tags=dict(tags)),
        num_samples=num_samples,
        extra={k: v for k, v in entry.items() if k == "file_sha1"},
    )


def _check_keys(entry: dict, where: str, prefix: str, known: tuple[str, ...]) -> None:
    """A key LLaMA-Factory does not define (a typo such as 'colums') is an error naming the closest one."""
    for key in entry:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
            raise DataError(f"{where}: unknown key '{prefix}{key}'; {hint}known keys: {', '.join(known)}")


def closest_path(path: Path) -> Path | None:
    """The existing path most like `path` (a typo in its file or folder names), or None."""
    parent = path.parent
    if not parent.is_dir():
        if parent == path or str(parent) in ("", "."):
            return None
        parent = closest_path(parent)
        if parent is None or not parent.is_dir():
            return None
        if parent.joinpath(path.name).exists():
            return parent / path.name
    try:
        names = [p.name for p in parent.iterdir()]
    except OSError:
        return None
    match = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return parent / match[0] if match else None


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.startswith(".") or Path(name).suffix.lower() in DATA_EXTENSIONS


def _not_found(name: str, dataset_dir: Path, info: dict, options: OptionNames) -> DataError:
    """The error for a dataset that is neither a path nor a registered name: what does not exist first,
    then the closest existing file or registered name, then (only if the command has it) the option to set."""
    candidates = [Path(name)] + ([dataset_dir / name] if not Path(name).is_absolute() else [])
    guesses = [str(p) for p in (closest_path(c) for c in candidates) if p is not None]
    guesses += difflib.get_close_matches(name, list(info), n=1, cutoff=0.6)
    guess = f"; did you mean {guesses[0]!r}?" if guesses else ""
    info_path = dataset_dir / DATASET_INFO
    if _looks_like_path(name) or not info:
        looked = " or ".join(repr(str(c)) for c in candidates)
        message = f"dataset file {name!r} does not exist (looked for {looked}){guess}"
        if not _looks_like_path(name):
            message += f"; nor is it a registered name: there is no {info_path}"
            if options.dataset_dir:
                message += f" (set {options.dataset_dir} to the folder holding dataset_info.json)"
        return DataError(message)
    known = ", ".join(sorted(info))
    return DataError(f"dataset {name!r} is not a file or directory, nor a name in {info_path} (known names: {known})"
                     + guess)


def resolve_dataset(dataset: str, dataset_dir: str | Path = "data", options: OptionNames = NO_OPTIONS) -> list[DatasetSource]:
    """Each comma-separated name -> a DatasetSource; a name neither registered nor a path is a DataError
    that says first what does not exist and the closest existing name (`options`: see OptionNames)."""
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
            raise _not_found(name, dataset_dir, info, options)
    return sources
