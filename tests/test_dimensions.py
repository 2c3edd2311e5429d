"""Multi-objective data (issue 16): dimension weighting on a hand-made table, per-dimension agreement in
`data check`, `pairs-from-ratings` on a hand-made UltraFeedback-style file, the example config trained
with per-dimension metrics."""

import json
from pathlib import Path

import pytest

import prefloop
from prefloop.cli import main as cli_main
from prefloop.data.dimensions import agreement, agreement_report, apply_dimensions
from prefloop.data.schema import Message, PreferencePair
from prefloop.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"helpfulness": 1.0, "safety": 2.0, "accuracy": 1.0}


def pair(pid: str, **dims) -> PreferencePair:
    return PreferencePair([Message("user", f"q {pid}")], f"chosen {pid}", f"rejected {pid}", id=pid,
                          dimensions={k: {"chosen": c, "rejected": r} for k, (c, r) in dims.items()})


# Hand-made table. d = 1*help + 2*safety + 1*accuracy (chosen minus rejected):
TABLE = [
    pair("agree", helpfulness=(5, 3), safety=(5, 4), accuracy=(4, 2)),        # d = 2 + 2 + 2 = 6
    pair("conflict", helpfulness=(5, 2), safety=(1, 5), accuracy=(3, 3)),     # d = 3 - 8 + 0 = -5
    pair("tie", helpfulness=(4, 2), safety=(3, 4), accuracy=(3, 3)),          # d = 2 - 2 + 0 = 0
    pair("small", helpfulness=(3, 2), safety=(4, 4), accuracy=(2, 2)),        # d = 1
    pair("partial", helpfulness=(4, 1)),                                      # d = 3, safety/accuracy missing
    PreferencePair([Message("user", "q plain")], "c", "r", id="plain"),        # no dimensions
]


def by_id(pairs):
    return {p.id: p for p in pairs}


def test_flip_swaps_contradicting_pairs_and_keeps_ties():
    out, report = apply_dimensions(TABLE, WEIGHTS, "flip", "none")
    got = by_id(out)
    assert list(got) == ["agree", "conflict", "tie", "small", "partial", "plain"]
    flipped = got["conflict"]
    assert (flipped.chosen, flipped.rejected) == ("rejected conflict", "chosen conflict")
    assert flipped.dimensions["safety"] == {"chosen": 5, "rejected": 1}
    assert got["tie"].chosen == "chosen tie"
    assert (report.agree, report.conflicts, report.flipped, report.ties, report.without_dimensions) == (3, 1, 1, 1, 1)
    assert dict(report.missing) == {"safety": 1, "accuracy": 1}
    assert TABLE[1].chosen == "chosen conflict"  # the input is not modified


def test_drop_removes_conflicts_and_ties_keep_trains_them_as_labeled():
    dropped, report = apply_dimensions(TABLE, WEIGHTS, "drop", "none")
    assert list(by_id(dropped)) == ["agree", "small", "partial", "plain"]
    assert (report.dropped, report.ties_dropped) == (1, 1)
    kept, report = apply_dimensions(TABLE, WEIGHTS, "keep", "none")
    assert by_id(kept)["conflict"].chosen == "chosen conflict" and report.kept_against == 1 and len(kept) == 6


def test_weight_scales_by_gap_over_mean_gap_and_margin_is_the_gap():
    out, _ = apply_dimensions(TABLE, WEIGHTS, "flip", "weight")
    mean = (6 + 5 + 0 + 1 + 3) / 5
    got = by_id(out)
    assert got["agree"].weight == pytest.approx(6 / mean)
    assert got["conflict"].weight == pytest.approx(5 / mean)
    assert got["tie"].weight == 0.0 and got["small"].weight == pytest.approx(1 / mean)
    assert got["plain"].weight is None  # no scores: untouched
    out, _ = apply_dimensions(TABLE, WEIGHTS, "flip", "margin")
    assert [by_id(out)[k].margin for k in ("agree", "conflict", "tie", "small", "partial")] == [6, 5, 0, 1, 3]


def test_malformed_scores_and_double_margins_are_located_errors():
    bad = PreferencePair([Message("user", "q")], "c", "r", id="x", source="data.jsonl:7",
                         dimensions={"safety": {"chosen": "high", "rejected": 1}})
    with pytest.raises(DataError, match=r"data.jsonl:7: field 'dimensions.safety.chosen'"):
        apply_dimensions([bad], WEIGHTS)
    with_margin = pair("m", safety=(5, 1))
    with_margin.margin, with_margin.source = 1.0, "data.jsonl:9"
    with pytest.raises(DataError, match=r"data.jsonl:9: field 'margin'"):
        apply_dimensions([with_margin], WEIGHTS, "flip", "margin")


def test_agreement_per_dimension():
    assert agreement(TABLE[1], ["helpfulness", "safety", "accuracy", "missing"]) == [1, 0, -1, -1]


def test_agreement_report_warns_on_contradicting_dimensions():
    table = [pair(f"p{i}", helpfulness=(5, 2), safety=(1, 4)) for i in range(3)] + [
        pair("p3", helpfulness=(4, 2), safety=(5, 1))]
    report = agreement_report(table)
    assert report["per_dimension"]["helpfulness"]["agreement"] == 1.0
    assert report["per_dimension"]["safety"]["agreement"] == 0.25
    assert report["contradictions"] == [{"dimensions": ["helpfulness", "safety"], "pairs": 4, "contradict": 0.75}]
    assert len(report["warnings"]) == 1 and "contradict each other in 75%" in report["warnings"][0]
    weighted = agreement_report(table, {"safety": 1.0})  # direction by safety: the first three flip
    assert weighted["per_dimension"]["safety"]["agreement"] == 1.0
    assert weighted["per_dimension"]["helpfulness"]["agreement"] == 0.25


def test_data_check_prints_the_dimension_table(tmp_path, capsys):
    path = tmp_path / "dims.jsonl"
    with path.open("w") as f:
        for i in range(4):
            chosen_safety, rejected_safety = (1, 4) if i < 3 else (5, 1)
            f.write(json.dumps({"prompt": f"question number {i} about water", "chosen": f"a long helpful answer {i}",
                                "rejected": f"short {i}", "dimensions": {
                                    "helpfulness": {"chosen": 5, "rejected": 2},
                                    "safety": {"chosen": chosen_safety, "rejected": rejected_safety}}}) + "\n")
    assert cli_main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Dimensions (4 pairs with scores; agreement with the data's chosen/rejected label)" in out
    assert "[WARN ] helpfulness and safety contradict each other in 75%" in out
    assert cli_main(["data", "check", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dimensions"]["per_dimension"]["safety"]["disagree"] == 3


ULTRAFEEDBACK = [
    {"instruction": "Name a fruit.", "completions": [
        {"response": "An apple.", "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "4"}}},
        {"response": "Rock.", "annotations": {"helpfulness": {"Rating": "1"}, "honesty": {"Rating": "2"}}},
        {"response": "A pear, maybe.", "annotations": {"helpfulness": {"Rating": "4"}, "honesty": {"Rating": "5"}}},
    ]},
    {"instruction": "Say hi.", "completions": [
        {"response": "Hi!", "annotations": {"helpfulness": {"Rating": "3"}, "honesty": {"Rating": "N/A"}}},
        {"response": "Hello.", "annotations": {"helpfulness": {"Rating": "3"}, "honesty": {"Rating": "3"}}},
        {"response": "Hey.", "annotations": {"helpfulness": {"Rating": "2"}, "honesty": {"Rating": "4"}}},
    ]},
]


def read_pairs(path: Path) -> list[tuple[str, str, str]]:
    return [(r["conversations"][0]["value"], r["chosen"], r["rejected"])
            for r in map(json.loads, path.read_text().splitlines())]


def test_pairs_from_ratings_on_a_hand_made_ultrafeedback_file(tmp_path, capsys):
    src = tmp_path / "uf.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ULTRAFEEDBACK))
    out = tmp_path / "pairs.jsonl"
    # Scores (helpfulness + honesty): apple 9, rock 3, pear 9 | "Hi!" unrated on honesty, Hello 6, Hey 6.
    assert cli_main(["data", "pairs-from-ratings", str(src), "--out", str(out)]) == 0
    assert read_pairs(out) == [("Name a fruit.", "An apple.", "Rock."), ("Name a fruit.", "A pear, maybe.", "Rock.")]
    printed = capsys.readouterr().out
    assert "-> 2 pairs; ties: 2 dropped, 0 kept; responses left out for a missing rating: 1 (honesty)" in printed
    first = json.loads(out.read_text().splitlines()[0])
    assert first["dimensions"] == {"helpfulness": {"chosen": 5.0, "rejected": 1.0},
                                   "honesty": {"chosen": 4.0, "rejected": 2.0}}
    # Ties kept (file order, marked), honesty weighted 0.5: apple 7, rock 2, pear 6.5 | Hello 4.5, Hey 4.
    assert cli_main(["data", "pairs-from-ratings", str(src), "--out", str(out), "--weights",
                     "helpfulness=1,honesty=0.5", "--ties", "keep"]) == 0
    assert read_pairs(out) == [("Name a fruit.", "An apple.", "Rock."), ("Name a fruit.", "An apple.", "A pear, maybe."),
                               ("Name a fruit.", "A pear, maybe.", "Rock."), ("Say hi.", "Hello.", "Hey.")]
    assert cli_main(["data", "pairs-from-ratings", str(src), "--out", str(out), "--weights", "helpfulness=1",
                     "--pairing", "best_worst", "--ties", "keep"]) == 0
    # helpfulness only: apple 5 > pear 4 > rock 1 | Hi 3 = Hello 3 > Hey 2 (best: Hi, first in file order).
    assert read_pairs(out) == [("Name a fruit.", "An apple.", "Rock."), ("Say hi.", "Hi!", "Hey.")]
    assert cli_main(["data", "pairs-from-ratings", str(src), "--out", str(out), "--weights", "helpfulness=1",
                     "--pairing", "best_vs_rest", "--ties", "keep"]) == 0
    assert read_pairs(out) == [("Name a fruit.", "An apple.", "A pear, maybe."), ("Name a fruit.", "An apple.", "Rock."),
                               ("Say hi.", "Hi!", "Hello."), ("Say hi.", "Hi!", "Hey.")]
    tie = json.loads(out.read_text().splitlines()[2])
    assert tie["tie"] is True
    # The written file reads back as training data, dimensions included.
    loaded = prefloop.data.loader.load_pairs(str(out))
    assert loaded.pairs[0].dimensions["helpfulness"] == {"chosen": 5.0, "rejected": 4.0}


def test_pairs_from_ratings_helpsteer_rows_and_located_errors(tmp_path, capsys):
    src = tmp_path / "hs.jsonl"
    rows = [{"prompt": "Explain rain.", "response": "Water falls from clouds.", "helpfulness": 4, "correctness": 4},
            {"prompt": "Explain rain.", "response": "Magic.", "helpfulness": 1, "correctness": 0},
            {"prompt": "Alone.", "response": "Only answer.", "helpfulness": 3, "correctness": 3}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs.jsonl"
    assert cli_main(["data", "pairs-from-ratings", str(src), "--out", str(out)]) == 0
    assert read_pairs(out) == [("Explain rain.", "Water falls from clouds.", "Magic.")]
    assert "1 prompt with fewer than 2 usable responses" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ULTRAFEEDBACK[0]) + "\n" + json.dumps(
        {"instruction": "x", "completions": [{"response": "y", "annotations": {"helpfulness": {"Rating": "great"}}}]}) + "\n")
    assert cli_main(["data", "pairs-from-ratings", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'completions[0].annotations.helpfulness.Rating'" in err


def test_multiobjective_example_trains_with_per_dimension_metrics(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "mo"
    metrics = prefloop.train(str(ROOT / "examples" / "multiobjective.yaml"), model_name_or_path=str(tiny_model_dir),
                             output_dir=str(out), max_steps=4)
    printed = capsys.readouterr().out
    # The shipped file (scripts/make_rounds_data.py): 12 helpfulness pairs, 3 of them labeled backwards
    # (d = -5 or -6); 12 safety pairs, 4 preferring the unsafe answer (d = 1 - 8 - 1 = -8); 8 code pairs (d = 4).
    assert ("dimensions: 32 pairs, 25 agree with the weighted scores, 7 contradict them (7 flipped, 0 dropped, "
            "0 kept as labeled), 0 ties (0 dropped)") in printed
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train_logs = [h for h in history if "loss" in h]
    for name in ("helpfulness", "safety", "accuracy"):
        assert f"rewards/accuracies/{name}" in train_logs[0]
        assert f"eval_rewards/accuracies/{name}" in metrics
        assert 0 <= metrics[f"eval_dimensions/{name}/agreement"] <= 1
    # After flipping, accuracy and safety never disagree with the pair's direction.
    assert metrics["eval_dimensions/accuracy/agreement"] == 1.0 and metrics["eval_dimensions/safety/agreement"] == 1.0


@pytest.mark.parametrize("extra, message", [
    (dict(pref_dimensions={"safety": -1}), r"pref_dimensions: safety: -1 is not allowed"),
    (dict(pref_dimensions={"safety": 0}), "every weight is 0"),
    (dict(dimension_weighting="weight"), "dimension_weighting needs pref_dimensions"),
    (dict(dimension_conflicts="drop"), "dimension_conflicts needs pref_dimensions"),
    (dict(pref_dimensions={"safety": 1}, dimension_conflicts="swap"), "dimension_conflicts: 'swap' is not allowed"),
])
def test_dimension_config_errors(tiny_model_dir, tmp_path, extra, message):
    from prefloop.config import load_config
    from prefloop.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path), dataset="x.jsonl", **extra))


def test_dimension_accuracy_counts_only_agreeing_pairs():
    from prefloop.data.dimensions import dimension_accuracy

    margins = [0.5, -0.2, 0.0, 0.3]
    agree = [[1, 1], [1, 0], [1, -1], [0, -1]]
    got = dimension_accuracy(margins, agree, ["helpfulness", "safety"])
    assert got["helpfulness"] == {"accuracy": (1 + 0 + 0.5) / 3, "pairs": 3, "agreement": 0.75}
    assert got["safety"] == {"accuracy": 1.0, "pairs": 1, "agreement": 0.5}


def test_a_multi_objective_round_reports_held_out_accuracy_per_dimension(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)
    report = prefloop.train(str(ROOT / "examples" / "rounds.yaml"), model_name_or_path=str(tiny_model_dir),
                            output_dir=str(tmp_path / "r"), report_to="none", plot_loss=False, max_steps=1,
                            rounds=[{"name": "helpfulness", "dataset": "examples/data/rounds/helpfulness.jsonl"},
                                    {"name": "multi", "dataset": "examples/data/multiobjective.jsonl",
                                     "pref_dimensions": {"helpfulness": 1, "safety": 2, "accuracy": 1}}])
    for row in report["rounds"]:
        assert "dimensions" not in row["heldout"]["helpfulness"]
        dims = row["heldout"]["multi"]["dimensions"]
        assert set(dims) == {"helpfulness", "safety", "accuracy"}
        assert dims["accuracy"]["agreement"] == 1.0  # after the flips every scored pair agrees on accuracy
    assert set(report["rounds"][1]["dimensions"]) == {"helpfulness", "safety", "accuracy"}  # eval metrics


def test_bad_weight_options_are_errors_naming_the_option(tmp_path, capsys):
    src = tmp_path / "uf.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ULTRAFEEDBACK))
    assert cli_main(["data", "pairs-from-ratings", str(src), "--out", str(tmp_path / "o.jsonl"),
                     "--weights", "helpfulness=lots"]) == 2
    assert "--weights: 'helpfulness=lots' is not name=number" in capsys.readouterr().err
    assert cli_main(["data", "check", str(ROOT / "examples" / "data" / "multiobjective.jsonl"),
                     "--dimension-weights", "safety=-1"]) == 2
    assert "--dimension-weights: 'safety=-1': give a name and a weight >= 0" in capsys.readouterr().err


def test_a_weighted_dimension_no_pair_has_is_a_typo_error(tmp_path, capsys):
    """`data check --dimension-weights helpfulnes=1,safety=2` (a typo) silently combined safety alone."""
    data = ROOT / "examples" / "data" / "multiobjective.jsonl"
    assert cli_main(["data", "check", str(data), "--dimension-weights", "helpfulnes=1,safety=2"]) == 2
    err = capsys.readouterr().err
    assert "--dimension-weights: no pair has a dimension 'helpfulnes' (did you mean 'helpfulness'?)" in err
    assert cli_main(["data", "check", str(data), "--dimension-weights", "helpfulness=1,safety=2"]) == 0
