"""What a folder-writing command (merge, convert) wrote into its output folder, recorded in its marker file.

`output_files.check_output_dir` lets a command replace a folder that holds its marker (an earlier output). The
folder is swapped in whole, so a file the user added there since (notes, an eval result, a quantized copy)
would be deleted with it. The marker therefore lists the files the command wrote (`written_files`), and
`check_earlier_output` refuses (exit 2, naming them) a folder that holds anything else. A marker written before
the list existed is read with the command's `legacy` file-name patterns instead.

(This belongs beside `check_output_dir` in output_files.py; it is a module of its own only while that file is
being changed elsewhere.)
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from prefloop.errors import ConfigError

FILES_KEY = "files"  # the marker's list of the files the command wrote, relative to the folder

# What `save_pretrained` of a model and its tokenizer writes: the names an earlier merge or conversion wrote
# before its marker listed them.
MODEL_FOLDER_PATTERNS = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "vocab.txt",
)


def written_files(folder: str | Path) -> list[str]:
    """Every file under `folder` (relative POSIX paths, sorted): what to record in the marker before the folder
    is swapped in."""
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def foreign_files(folder: str | Path, marker: str, legacy: tuple[str, ...] = ()) -> list[str]:
    """The entries of the earlier output `folder` that its `marker` does not list as written by the command
    (a foreign folder is named once, not each file in it). A marker without the list (or one that cannot be
    read) is read with the file-name patterns `legacy`."""
    root = Path(folder)
    try:
        recorded = json.loads((root / marker).read_text(encoding="utf-8")).get(FILES_KEY)
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, list):
        ours = {str(name) for name in recorded} | {marker}
        parents = {Path(name).parent.as_posix() for name in ours}
        parents |= {p.as_posix() for name in ours for p in Path(name).parents}

        def known(rel: str) -> bool:
            return rel in ours
    else:
        parents = set()

        def known(rel: str) -> bool:
            return rel == marker or ("/" not in rel and any(fnmatch.fnmatch(rel, p) for p in legacy))
    found: list[str] = []

    def walk(directory: Path) -> None:
        for entry in sorted(directory.iterdir()):
            rel = entry.relative_to(root).as_posix()
            if entry.is_dir() and not entry.is_symlink() and rel in parents:
                walk(entry)
            elif entry.is_dir() and not entry.is_symlink() or not known(rel):
                found.append(rel + ("/" if entry.is_dir() else ""))

    walk(root)
    return found


def check_earlier_output(folder: str | Path, out: str, marker: str, option: str, command: str,
                         legacy: tuple[str, ...] = ()) -> None:
    """Raise ConfigError (exit 2) when the earlier output `folder` (it holds `marker`; `out` as the user gave
    it) holds files the command did not write: replacing the folder would delete them. Nothing to check when
    `folder` is absent or holds no marker (`check_output_dir` has judged those)."""
    folder = Path(folder)
    if not (folder / marker).is_file():
        return
    extra = foreign_files(folder, marker, legacy)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ConfigError(f"{option} {out} is an earlier {command} output, but it also holds files {command} did not "
                          f"write ({shown}); {command} replaces its whole {option} folder, which would delete them. "
                          f"Move them out of {out}, or give a new or empty directory")
