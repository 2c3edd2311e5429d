"""Labeling statistics against small vote tables whose kappa is worked out by hand."""

import json

import pytest

from prefloop.label.stats import format_report, label_stats, label_stats_command, position_bias
from prefloop.stats import cohen_kappa, fleiss_kappa
from prefloop.store import Store


def vote(item, annotator, verdict, order="ab", vote_id=None):
    return {"item_id": item, "annotator": annotator, "verdict": verdict, "shown_order": order,
            "vote_id": vote_id or item * 100 + hash(annotator) % 97, "created_at": f"2026-01-01T00:00:{item:02d}"}


# Two annotators on 10 items. Pairs: (a,a) x4, (a,b) x1, (b,b) x3, (b,tie) x1, (tie,tie) x1.
# p_o = 8/10 = 0.8. Marginals x: a 5, b 4, tie 1; y: a 4, b 4, tie 2.
# p_e = (5*4 + 4*4 + 1*2) / 100 = 0.38.  kappa = (0.8 - 0.38) / (1 - 0.38) = 0.42 / 0.62 = 0.6774...
X = ["a", "a", "a", "a", "a", "b", "b", "b", "b", "tie"]
Y = ["a", "a", "a", "a", "b", "b", "b", "b", "tie", "tie"]
COHEN = 0.42 / 0.62

# Three annotators on 4 items: {a,a,a}, {a,a,b}, {b,b,b}, {a,b,tie}.
# P_i = 1, (2*1)/(3*2) = 1/3, 1, 0 -> P_bar = (7/3)/4 = 7/12.
# Category totals over 12 ratings: a 6, b 5, tie 1 -> P_e = (36 + 25 + 1) / 144 = 62/144.
# kappa = (84/144 - 62/144) / (82/144) = 22/82 = 0.2683...
FLEISS_ITEMS = [["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"], ["a", "b", "tie"]]
FLEISS = 22 / 82


def test_cohen_kappa_by_hand():
    assert cohen_kappa(X, Y) == pytest.approx(COHEN)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement is 1: undefined
    assert cohen_kappa([], []) is None


def test_fleiss_kappa_by_hand():
    rows = [{c: labels.count(c) for c in set(labels)} for labels in FLEISS_ITEMS]
    assert fleiss_kappa(rows) == pytest.approx(FLEISS)
    # with two raters per item, Fleiss' kappa is Scott's pi: here p_o 0.8, P_e from pooled marginals
    two = [{a: 1, b: 1} if a != b else {a: 2} for a, b in zip(X, Y)]
    pooled = {"a": 9 / 20, "b": 8 / 20, "tie": 3 / 20}
    p_e = sum(p * p for p in pooled.values())
    assert fleiss_kappa(two) == pytest.approx((0.8 - p_e) / (1 - p_e))
    assert fleiss_kappa([{"a": 1}]) is None


def test_label_stats_two_annotators():
    votes = [vote(i, "x", v) for i, v in enumerate(X)] + [vote(i, "y", v) for i, v in enumerate(Y)]
    votes += [vote(50, "x", "skip"), vote(51, "y", "both_bad")]
    stats = label_stats(votes)
    assert stats["votes"] == 22
    assert stats["per_annotator"]["x"] == {"votes": 11, "a": 5, "b": 4, "tie": 1, "both_bad": 0, "skip": 1}
    assert stats["tie_rate"] == pytest.approx(3 / 22)
    assert stats["both_bad_rate"] == pytest.approx(1 / 22)
    assert stats["skip_rate"] == pytest.approx(1 / 22)
    assert stats["agreement"]["cohen_kappa"] == pytest.approx(COHEN)
    assert stats["agreement"]["pairwise_cohen"][0]["items"] == 10
    assert "Cohen's kappa 0.677" in format_report(stats)


def test_label_stats_three_annotators_fleiss():
    votes = [vote(i, name, v) for i, labels in enumerate(FLEISS_ITEMS) for name, v in zip("pqr", labels)]
    stats = label_stats(votes)
    assert stats["agreement"]["annotators"] == 3
    assert stats["agreement"]["fleiss_kappa"] == pytest.approx(FLEISS)
    assert stats["agreement"]["cohen_kappa"] is None
    assert len(stats["agreement"]["pairwise_cohen"]) == 3


def test_position_bias_counts_the_left_response():
    # decisive votes: left wins when (verdict a, shown ab) or (verdict b, shown ba)
    votes = [vote(1, "x", "a", "ab"), vote(2, "x", "b", "ba"), vote(3, "x", "a", "ba"), vote(4, "x", "tie", "ab"),
             vote(5, "x", "b", "ba")]
    assert position_bias(votes) == {"decisive_votes": 4, "left_wins": 3, "left_win_rate": 0.75}


def test_latest_vote_per_annotator_counts_for_agreement():
    # x first says a on item 1, later b. Latest: x = [b, a], y = [b, a] -> kappa 1.
    # Had the first vote counted: x = [a, a], y = [b, a] -> p_o 0.5, p_e (2*1)/4 = 0.5 -> kappa 0.
    votes = [vote(1, "x", "a", vote_id=1), vote(1, "y", "b", vote_id=2), vote(2, "x", "a", vote_id=3),
             vote(2, "y", "a", vote_id=4), dict(vote(1, "x", "b", vote_id=5), created_at="2026-01-02T00:00:00")]
    assert label_stats(votes)["agreement"]["cohen_kappa"] == pytest.approx(1.0)


def test_label_stats_command_reads_the_store(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        items = [store.add_label_item([{"role": "user", "content": f"q{i}"}], "x", "y", "m1", "m2") for i in range(10)]
        for item, (vx, vy) in zip(items, zip(X, Y)):
            store.add_vote(item, "x", vx, "ab")
            store.add_vote(item, "y", vy, "ba")
        store.add_vote(items[0], "x", "b", "ab")
        store.retract_last_vote("x")  # undone: not counted
    assert label_stats_command(str(db), json=True) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["votes"] == 20
    assert stats["agreement"]["cohen_kappa"] == pytest.approx(COHEN)
    # x saw stored A on the left, y on the right: left wins = x's a-votes + y's b-votes = 5 + 4 of 17 decisive
    assert stats["position_bias"] == {"decisive_votes": 17, "left_wins": 9, "left_win_rate": pytest.approx(9 / 17)}
    assert label_stats_command(str(db), json=False) == 0
    assert "position bias" in capsys.readouterr().out


# ------------------------------------------------------------------ label items from preference pairs

CALL = [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}]


def test_pairs_whose_answers_carry_tool_calls_are_left_out_of_label_items_and_reported(tmp_path, capsys):
    """A label item holds two response texts: answers that differ only in their tool calls would show as
    '' vs '' (and be hidden as identical), so such pairs are left out, counted, and the first one named."""
    from prefloop.label.sources import load_items

    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": [{"role": "user", "content": "Weather?"}],
         "chosen": [{"role": "assistant", "content": "", "tool_calls": CALL}],
         "rejected": [{"role": "assistant", "content": ""}]},
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
    ]) + "\n")
    items, _ = load_items(path)
    assert [(i.response_a, i.response_b) for i in items] == [("Hello!", "Go away.")]
    err = capsys.readouterr().err
    assert "1 pair(s) left out" in err and f"{path}:1" in err and "chosen.tool_calls" in err
