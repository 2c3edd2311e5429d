"""Resuming an append-only JSONL file (generate's candidates, eval's answer cache) after a crash."""

from __future__ import annotations

from pathlib import Path


def end_cut_line(path: Path, data: bytes) -> None:
    """End the last line of `path` when a crash wrote a whole record but not its newline (`data`: the bytes
    read from it; nothing is done when the file changed since, e.g. a torn record was truncated away), so
    the next appended record starts on a line of its own instead of being glued to it."""
    if data and not data.endswith(b"\n") and path.stat().st_size == len(data):
        with path.open("ab") as f:
            f.write(b"\n")
