"""`prefloop forget --conversation ID`: remove a user's conversation on request.

In the store, the text of every interaction of the conversation (and of label items holding it) is
replaced by a tombstone and a
`forget_events` row records it (Store.forget_conversation). With `--loop loop.yaml`, every JSONL file
the loop wrote (prompts, candidates, judged pairs, training pairs, judge caches) loses the records that
hold any of that text. Later iterations skip forgotten conversations (the sample step counts them).
Rerunning is harmless: a second run finds nothing left to remove.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefloop.errors import ConfigError
from prefloop.loop.scrub import Scrubber
from prefloop.output_files import write_atomically
from prefloop.store import Store

MIN_CONTAINED = 20  # a text this long found inside another string counts as a leak; shorter ones must match whole


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _holds(record, texts: set[str]) -> bool:
    long = [t for t in texts if len(t) >= MIN_CONTAINED]
    return any(s in texts or any(t in s for t in long) for s in _strings(record))


def purge_files(root: Path, texts: set[str]) -> dict[str, int]:
    """Drop every record of every *.jsonl under `root` that holds one of `texts`; returns file -> records removed.
    Each file is rewritten atomically (a temporary file renamed over it)."""
    removed: dict[str, int] = {}
    for path in sorted(root.rglob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                record = line  # a half-written line: judged as text
            if record is not None and _holds(record, texts):
                continue
            keep.append(line)
        if len(keep) != len(lines):
            write_atomically(path, "".join(keep))  # a symlink's target is rewritten, not the link replaced
            removed[str(path)] = len(lines) - len(keep)
    return removed


def forget_command(conversation: str, db: str = "prefloop.sqlite", loop: str | None = None) -> int:
    """Forget one conversation in the store (and, with `loop`, in the loop's files); prints what was removed."""
    workdir = None
    scrub = Scrubber()
    if loop:
        from prefloop.loop.config import load_loop_config

        cfg = load_loop_config(loop)
        db, workdir = cfg.store, Path(cfg.workdir)
        scrub = Scrubber(cfg.sample["scrub_pii"], cfg.sample["pii_hook"])
    if not Path(db).is_file():
        raise ConfigError(f"{db}: no such store; give --db (the store `prefloop serve --db` logs into)")
    with Store(db) as store:
        rows = [i for i in store.interactions() if i["conversation_id"] == str(conversation)]
        if not rows:
            raise ConfigError(f"{db}: no interactions with conversation id {conversation!r}; "
                              "`prefloop serve` returns it with each completion")
        texts = set()
        for i in rows:
            for t in [i["response"]] + [m["content"] for m in i["messages"] if isinstance(m.get("content"), str)]:
                texts |= {t, scrub.text(t)}
        texts.discard("")
        removed = purge_files(workdir, texts) if workdir and workdir.is_dir() else {}
        items = [i["id"] for i in store.label_items() if _holds({k: i[k] for k in ("prompt", "response_a",
                                                                                    "response_b")}, texts)]
        n = store.forget_conversation(str(conversation), {"files": removed, "label_items": items}, items)
    print(f"forgot conversation {conversation}: {n} interaction(s) and {len(items)} label item(s) in {db} replaced "
          f"by a tombstone; {sum(removed.values())} record(s) removed from {len(removed)} loop file(s)")
    return 0
