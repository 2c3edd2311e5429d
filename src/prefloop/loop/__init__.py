"""The online DPO loop: collect -> sample -> generate -> label -> pairs -> train -> eval -> gate -> promote.

`config.py` reads loop.yaml, `steps.py` runs the steps (each resumable, recorded in the store),
`feedback_pairs.py` turns user feedback into pairs, `scrub.py` removes personal data before text
leaves the store, `imports.py` brings other servers' logs into the store, `forget.py` removes a
conversation on request, `commands.py` is what `prefloop loop` calls."""
