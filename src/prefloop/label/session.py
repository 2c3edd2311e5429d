"""The labeling app's logic, without the web page: what to show, how a click becomes a stored vote, undo.

The page talks in what the annotator saw ("A" is the left response); the store keeps verdicts and
ratings relative to the STORED a/b plus the `shown_order`, so position bias can be measured and
nothing depends on the random display order. `save_vote` is the one function every vote goes through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prefloop.errors import PrefloopError
from prefloop.label.assign import Assigner, shown_order
from prefloop.store import Store

# what the page offers -> label shown to people
CHOICES = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad", "skip": "Skip"}
RATING_SCALE = (1, 2, 3, 4, 5)


def to_stored(choice: str, order: str) -> str:
    """A shown choice ("A" = left) as a verdict on the stored a/b."""
    if choice not in CHOICES:
        raise PrefloopError(f"unknown choice {choice!r}; expected one of {', '.join(CHOICES)}")
    if choice == "A":
        return "a" if order == "ab" else "b"
    if choice == "B":
        return "b" if order == "ab" else "a"
    return choice


def ratings_to_stored(ratings: dict[str, dict[str, int | None]], order: str,
                      dimensions: list[str]) -> dict[str, dict[str, int]]:
    """{dim: {"A": x, "B": y}} as shown -> {dim: {"a": ., "b": .}} stored; unrated values are left out."""
    stored: dict[str, dict[str, int]] = {}
    for dim, by_side in (ratings or {}).items():
        if dim not in dimensions:
            raise PrefloopError(f"unknown rating dimension {dim!r}; this session rates {', '.join(dimensions)}")
        for side, value in by_side.items():
            if value in (None, ""):
                continue
            value = int(value)
            if value not in RATING_SCALE:
                raise PrefloopError(f"rating {value} for {dim} is outside 1-5")
            stored_side = {"A": "a", "B": "b"}[side] if order == "ab" else {"A": "b", "B": "a"}[side]
            stored.setdefault(dim, {})[stored_side] = value
    return stored


@dataclass
class Shown:
    """One item as the annotator sees it."""

    item_id: int
    order: str
    prompt: list[dict]
    left: str
    right: str
    left_source: str | None
    right_source: str | None


class LabelSession:
    def __init__(self, store: Store, overlap: int = 1, seed: int = 0, dimensions: list[str] | None = None,
                 responders: tuple[Callable, Callable] | None = None, prompts: list[list[dict]] | None = None):
        self.store = store
        self.seed = seed
        self.dimensions = list(dimensions or [])
        self.assigner = Assigner(store, overlap=overlap, seed=seed)
        self.responders = responders
        self.prompts = prompts or []

    def show(self, item_id: int, annotator: str) -> Shown:
        item = self.store.label_item(item_id)
        order = shown_order(self.seed, item_id, annotator)
        pairs = [(item["response_a"], item["source_a"]), (item["response_b"], item["source_b"])]
        if order == "ba":
            pairs.reverse()
        return Shown(item_id, order, item["prompt"], pairs[0][0], pairs[1][0], pairs[0][1], pairs[1][1])

    def next_for(self, annotator: str) -> Shown | None:
        item_id = self.assigner.next_item(annotator)
        return None if item_id is None else self.show(item_id, annotator)

    def save_vote(self, annotator: str, item_id: int, order: str, choice: str,
                  ratings: dict | None = None, reason: str | None = None) -> int:
        """Store one vote (the page acknowledges it only after this returns, i.e. after the commit)."""
        if not annotator:
            raise PrefloopError("no annotator name; log in or type your name first")
        vote_id = self.store.add_vote(item_id, annotator, to_stored(choice, order), order,
                                      ratings_to_stored(ratings or {}, order, self.dimensions),
                                      (reason or "").strip() or None)
        self.assigner.release(annotator)
        return vote_id

    def undo(self, annotator: str) -> int | None:
        """Retract the annotator's last vote; returns the item id to show again (None if nothing to undo)."""
        vote_id = self.store.retract_last_vote(annotator)
        if vote_id is None:
            return None
        item_id = self.store.votes(vote_id=vote_id)[0]["item_id"]
        self.assigner.reserve(annotator, item_id)
        return item_id

    def undo_message(self, annotator: str, item_id: int) -> str:
        """What to tell `annotator` after `undo` gave `item_id`: "vote again", or, when the undone vote had
        replaced an earlier one of theirs on this item, that the earlier vote counts again (and what it was)."""
        mine = [v for v in self.store.active_votes() if v["item_id"] == item_id and v["annotator"] == annotator]
        if not mine:
            return "Your last vote was undone; vote on this item again."
        order = shown_order(self.seed, item_id, annotator)  # the item is shown again in the same order
        shown = next((k for k in CHOICES if to_stored(k, order) == mine[-1]["verdict"]), None)
        what = f" ({CHOICES[shown]})" if shown else ""
        return (f"Your last vote was undone; your earlier vote on this item{what} counts again. Vote again to "
                "change it.")

    def progress(self, annotator: str) -> dict:
        return self.assigner.progress(annotator)

    @property
    def live(self) -> bool:
        return self.responders is not None

    def generate(self, annotator: str, prompt: list[dict]) -> int:
        """Live mode: both models answer `prompt`; the new item's id (stored a = model A, b = model B)."""
        if self.responders is None:
            raise PrefloopError("live mode is off; start the app with --model-a and --model-b")
        if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
            raise PrefloopError("type a prompt first")
        model_a, model_b = self.responders
        response_a, response_b = model_a(prompt), model_b(prompt)
        item_id = self.store.add_label_item(prompt, response_a, response_b, getattr(model_a, "name", "model A"),
                                            getattr(model_b, "name", "model B"), origin="live")
        self.assigner.reserve(annotator, item_id)
        return item_id
