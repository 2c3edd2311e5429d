"""Which item an annotator sees next, and in which order its two responses are shown.

Rules: an item is complete once `overlap` different annotators judged it (skips do not count);
an annotator never gets an item they already hold a vote on (an undone vote frees the item again),
nor another item asking the same comparison (the same prompt and responses, in either order, e.g.
loaded from two files); items forgotten on request or with one text on both sides are never shown;
items already started by others come first, so items complete instead of all staying half-done;
among equals the order is a per-annotator shuffle fixed by the seed. An item being shown to someone
is reserved for a while so that concurrent annotators do not all pile onto the same last slot.
The A/B position is random per (item, annotator), reproducible from the seed.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time

from prefloop.store import Store

RESERVATION_SECONDS = 30 * 60


def shown_order(seed: int, item_id: int, annotator: str) -> str:
    """'ab' (stored A on the left) or 'ba', a fair coin per (item, annotator) fixed by the seed."""
    digest = hashlib.sha256(f"{seed}:{item_id}:{annotator}".encode()).digest()
    return "ab" if digest[0] % 2 == 0 else "ba"


class Assigner:
    def __init__(self, store: Store, overlap: int = 1, seed: int = 0):
        if overlap < 1:
            raise ValueError("overlap must be >= 1")
        self.store = store
        self.overlap = overlap
        self.seed = seed
        self._lock = threading.Lock()
        self._reserved: dict[int, dict[str, float]] = {}  # item id -> annotator -> reserved until
        self._keys: dict[int, str] = {}  # item id -> content_key (items only grow; a forgotten one is excluded)

    def _content_keys(self) -> dict[int, str]:
        """item id -> the comparison it asks for (`label.stats.content_key`), read once per new item."""
        from prefloop.label.stats import content_key

        for item in self.store.label_items(after_id=max(self._keys, default=0)):
            self._keys[item["id"]] = content_key(item["prompt"], item["response_a"], item["response_b"])
        return self._keys

    def _excluded(self, annotator: str, mine: set[int]) -> set[int]:
        """Items not to show `annotator`: unlabelable ones, and duplicates of the comparisons they judged."""
        keys = self._content_keys()
        judged = {keys[i] for i in mine if i in keys}
        return self.store.unlabelable_item_ids() | {i for i, k in keys.items() if k in judged and i not in mine}

    def _others_reserving(self, item_id: int, annotator: str, now: float) -> int:
        holders = self._reserved.get(item_id, {})
        return sum(1 for who, until in holders.items() if who != annotator and until > now)

    def next_item(self, annotator: str, exclude: set[int] | frozenset[int] = frozenset()) -> int | None:
        """The next item id for `annotator` (reserved for them), or None when nothing is left for them."""
        with self._lock:
            now = time.monotonic()
            mine = self.store.annotator_item_ids(annotator)
            done = self.store.completed_counts()
            ids = self.store.label_item_ids()
            skip = self._excluded(annotator, mine)
            rng = random.Random(f"{self.seed}:{annotator}")
            rng.shuffle(ids)
            open_items = []
            for position, item_id in enumerate(ids):
                if item_id in mine or item_id in exclude or item_id in skip:
                    continue
                taken = done.get(item_id, 0) + self._others_reserving(item_id, annotator, now)
                if taken < self.overlap:
                    open_items.append((-done.get(item_id, 0), position, item_id))
            if not open_items:
                return None
            item_id = min(open_items)[2]
            self._reserve(annotator, item_id, now)
            return item_id

    def _reserve(self, annotator: str, item_id: int, now: float) -> None:
        for holders in self._reserved.values():
            holders.pop(annotator, None)  # one reservation per annotator
        self._reserved.setdefault(item_id, {})[annotator] = now + RESERVATION_SECONDS

    def reserve(self, annotator: str, item_id: int) -> None:
        """Hold `item_id` for `annotator` (an item they generated live, or one they undid)."""
        with self._lock:
            self._reserve(annotator, item_id, time.monotonic())

    def release(self, annotator: str) -> None:
        with self._lock:
            for holders in self._reserved.values():
                holders.pop(annotator, None)

    def progress(self, annotator: str) -> dict:
        """Counts for the progress line: the annotator's votes, items still open to them, items complete / total."""
        done = self.store.completed_counts()
        ids = self.store.label_item_ids()
        mine = self.store.annotator_item_ids(annotator)
        with self._lock:
            skip = self._excluded(annotator, mine)
        complete = sum(1 for n in done.values() if n >= self.overlap)
        left = sum(1 for i in ids if i not in mine and i not in skip and done.get(i, 0) < self.overlap)
        return {"mine": len(mine), "left": left, "complete": complete, "total": len(ids), "overlap": self.overlap}
