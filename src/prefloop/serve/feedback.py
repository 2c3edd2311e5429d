"""`POST /v1/feedback`: what a user thought of a logged response, written to the store.

Body (JSON):
- thumbs: `{"interaction_id": 12, "kind": "thumbs", "value": "up" | "down", "annotator": "ana"}`
- choice between two responses (e.g. the two choices of an n=2 request):
  `{"interaction_id": 12, "other_interaction_id": 13, "kind": "choice", "value": "this" | "other" | 12 | 13}`
`kind` may be left out: it is "choice" when `other_interaction_id` is given, else "thumbs".
"""

from __future__ import annotations

from prefloop.serve.protocol import APIError
from prefloop.store import StoreError


def _interaction_id(body: dict, name: str, required: bool) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be the integer interaction id returned with the completion "
                            "(choices[i].interaction_id)", name)
    return value


def record_feedback(store, body) -> dict:
    """Validate the body and append the feedback; returns `{"id", "object": "feedback", ...}`."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    interaction_id = _interaction_id(body, "interaction_id", required=True)
    other = _interaction_id(body, "other_interaction_id", required=False)
    kind = body.get("kind") or ("choice" if other is not None else "thumbs")
    annotator = body.get("annotator")
    if annotator is not None and not isinstance(annotator, str):
        raise APIError(400, "'annotator' must be a string", "annotator")
    try:
        feedback_id = store.add_feedback(interaction_id, kind, body.get("value"), annotator=annotator,
                                         other_interaction_id=other)
    except StoreError as err:
        status = 404 if "no interaction with id" in str(err) else 400
        raise APIError(status, str(err), "interaction_id" if status == 404 else "value") from err
    return {"id": feedback_id, "object": "feedback", "interaction_id": interaction_id, "kind": kind,
            "value": body.get("value"), "other_interaction_id": other}
