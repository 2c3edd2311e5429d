"""Which item an annotator sees next, and in which order its two responses are shown.

Rules: an item is complete once `overlap` different annotators judged it (skips do not count);
an annotator never gets an item they already hold a vote on (an undone vote frees the item again),
nor another item asking the same comparison (the same prompt and responses, in either order, e.g.
loaded from two files); items forgotten on request or with one text on both sides are never shown;
items already started by others come first, so items complete instead of all staying half-done;
among equals the order is a per-annotator shuffle fixed by the seed. An item being shown to someone
is reserved for a while (RESERVATION_SECONDS, in the store, so every labeling process on it shares them) so
that concurrent annotators do not all pile onto the same last slot.
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
        self._lock = threading.Lock()  # guards the content-key cache; reservations live in the store
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

    def next_item(self, annotator: str, exclude: set[int] | frozenset[int] = frozenset()) -> int | None:
        """The next item id for `annotator` (reserved for them), or None when nothing is left for them.

        The choice and the reservation are one store transaction (`Store.claim_label_item`), so every
        labeling process on the same store shares the reservations.
        """
        with self._lock:
            mine = self.store.annotator_item_ids(annotator)
            skip = self._excluded(annotator, mine)
            ids = self.store.label_item_ids()
            random.Random(f"{self.seed}:{annotator}").shuffle(ids)
            candidates = [i for i in ids if i not in mine and i not in exclude and i not in skip]
            return self.store.claim_label_item(annotator, candidates, self.overlap, RESERVATION_SECONDS,
                                               now=time.time())

    def reserve(self, annotator: str, item_id: int) -> None:
        """Hold `item_id` for `annotator` (an item they generated live, or one they undid)."""
        self.store.reserve_label_item(annotator, item_id, RESERVATION_SECONDS, now=time.time())

    def release(self, annotator: str) -> None:
        """Drop `annotator`'s reservation (called after their vote)."""
        self.store.release_label_item(annotator)

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
