"""Writing result files and folders so that nothing already there is lost.

The one place every command that writes a result goes through:

- `write_atomically(path, content)`: a temporary file next to `path`, flushed to disk, renamed over it;
  a reader (or a crash) sees the old file or the whole new one. A symlinked `path` stays a symlink
  (the file it points to is replaced). `content` may be a writer `write(tmp_path)` for a file a library
  writes itself (e.g. the reference cache's safetensors files, `train/reference.py`).
- `fsync_dir(folder)`: flush a rename in `folder` to disk.
- `refuse_empty_replace(path, rows, ...)`: a result with no rows never replaces a file that holds data
  (e.g. every row filtered out): the command stops with exit 2 and the file is kept.
- `check_output_dir(out, marker, ...)`, `staging_dir(out)`, `replace_dir(tmp, out)`: a command that
  writes a whole folder (merge, convert) writes it beside the target and swaps it in only when
  complete; an existing target is replaced only when it holds the command's own marker file (a
  previous output), never a folder of the user's files.
- `written_files(folder)` / `check_earlier_output(...)`: the marker lists the files the command wrote, and an
  earlier output that also holds files the user put there since is refused (exit 2, naming them).

Not through here: a trainer's own output (checkpoints, `save_pretrained` under transformers' Trainer), and
the registry's version copies (`registry/versions.copy_model`), which are renamed from `.incoming-<id>/` to a
new `<id>/` (a new folder, never one replaced; an interrupted copy is what `registry leftovers` lists) and flushed with `fsync_dir`.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Union

from prefloop.errors import ConfigError

Content = Union[str, bytes, Callable[[str], object]]


def write_atomically(path: str | Path, content: Content) -> Path:
    """Write `content` (text as UTF-8, bytes, or a function `write(tmp_path)` that writes the file) to a
    temporary file next to `path`, flush it to disk, then rename it over `path` and flush the folder.

    Returns the path written (a symlink's target). The file keeps the permissions of the one it replaces.
    Where a rename cannot replace `path` (EXDEV/EBUSY: e.g. a single file bind-mounted into a container),
    the new content is copied over it in place instead, with a note on stderr (that write is not atomic).
    On any error the temporary file is removed and `path` is as it was. A `path` that is a directory (or
    whose folder is a file) is a ConfigError (exit 2) saying to give a file path."""
    target = Path(path).resolve()  # through a symlink: replace the file it points to, not the link
    if target.is_dir():
        raise ConfigError(f"{path} is a directory; give the path of a file to write (e.g. {Path(path) / 'out.jsonl'})")
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"{path}: {blocking} is a file, not a folder; give a path whose folders are folders")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        if callable(content):
            content(tmp)
        else:
            Path(tmp).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        try:
            os.replace(tmp, target)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EBUSY):
                raise
            with open(tmp, "rb") as src, open(target, "wb") as dst:  # a mount point: rewrite the file itself
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            Path(tmp).unlink(missing_ok=True)
            print(f"note: {path} cannot be replaced by a rename ({os.strerror(err.errno)}; a bind-mounted file?), "
                  "so it was rewritten in place: a reader at that moment may see it half-written", file=sys.stderr)
            return target
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename) to disk; a filesystem that cannot do it is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def refuse_empty_replace(path: str | Path, rows: int, option: str, why: str = "") -> None:
    """Raise ConfigError (exit 2) when a result of `rows` == 0 rows would replace `path`, a file that holds
    data: an empty result (e.g. every row filtered out) must not wipe an earlier one. `why` says what
    left the result empty, for the message."""
    target = Path(path)
    if rows or not target.is_file() or target.stat().st_size == 0:
        return
    raise ConfigError(f"{option} {path}: the result is empty (0 rows{'; ' + why if why else ''}), and {path} "
                      f"already holds data ({target.stat().st_size} bytes): kept {path} as it was, nothing written. "
                      f"Give another {option}, or delete {path} first if an empty file is what you want")


def check_output_dir(out: str | Path, marker: str, option: str, command: str) -> Path:
    """Where a command may write its output folder: `out` absent, empty, or a previous output of the command
    (it holds `marker`). A file, or a folder holding anything else (the user's files), is a ConfigError
    (exit 2) naming what is there. Returns `out` resolved (through a symlink)."""
    target = Path(out).resolve()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{option} {out} is a file; give a directory (new or empty) for {command}'s output")
    if target.is_dir() and not (target / marker).is_file():
        entries = sorted(p.name for p in target.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise ConfigError(f"{option} {out} is a directory with other files in it ({shown}) and no {marker}, so "
                              f"it is not an earlier {command} output; {command} replaces its whole --out folder, "
                              f"which would delete them. Give a new or empty directory")
    return target


def staging_dir(final: str | Path) -> Path:
    """A new empty folder beside `final` (same filesystem, so `replace_dir` is a rename), readable like any
    other model folder (mkdtemp makes it private)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".incoming", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the complete folder `tmp` in place of `final` by renames: an existing `final` (check it with
    `check_output_dir` first) is moved aside, `tmp` renamed to `final`, then the old one deleted; if the
    second rename fails the old folder is put back. A crash leaves the old or the new folder at `final`
    (at worst the old one beside it, as `.NAME.*.old`)."""
    tmp, final = Path(tmp), Path(final).resolve()
    if not final.exists():
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.rmdir(old)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ folder markers
# What a folder-writing command (merge, convert) wrote into its output folder, recorded in its marker file.
# `check_output_dir` lets a command replace a folder that holds its marker (an earlier output). The folder is
# swapped in whole, so a file the user added there since (notes, an eval result, a quantized copy) would be
# deleted with it. The marker therefore lists the files the command wrote (`written_files`), and
# `check_earlier_output` refuses (exit 2, naming them) a folder that holds anything else. A marker written
# before the list existed is read with the command's `legacy` file-name patterns instead.

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
