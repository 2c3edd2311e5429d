"""Evaluation: win rate after-vs-before (bootstrap interval, length control, Bradley–Terry leaderboard),
held-out preference accuracy, benchmark runners, and the reports every `prefloop eval` command writes.

Every run writes `results.json` (see `results.py` for the shared contract), `report.md` and a
self-contained `report.html` into its `--out` directory. Evaluation knows no trainer internals beyond
the log-prob function (`train/logps.py`).
"""
