"""Export: majority resolution, conflicts, ties/both-bad/skips counted, dimensions and provenance."""

import json

import pytest

from prefloop.data.loader import load_pairs
from prefloop.errors import ConfigError
from prefloop.label.export import export_command, resolve
from prefloop.store import Store

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]


def build_store(path):
    """Seven items with hand-made votes (verdicts relative to the stored a/b)."""
    store = Store(path)
    ids = [store.add_label_item(CONVERSATION if i == 1 else [{"role": "user", "content": f"q{i}"}],
                                f"A{i}", f"B{i}", "model-a", "model-b", origin=f"file:{i}") for i in range(1, 8)]
    votes = {
        1: [("ann", "a"), ("bob", "a"), ("cat", "b")],   # majority a (2/3), a conflict resolved
        2: [("ann", "a"), ("bob", "b")],                # no majority: conflict, left out
        3: [("ann", "tie"), ("bob", "tie")],            # tie: left out unless --include-ties
        4: [("ann", "both_bad")],                       # both bad: always left out
        5: [("ann", "skip")],                           # skipped only
        6: [("bob", "b")],                              # b wins, with ratings
    }
    for item, entries in votes.items():
        for annotator, verdict in entries:
            ratings = {"helpfulness": {"a": 2, "b": 5}, "safety": {"b": 4}} if item == 6 else None
            store.add_vote(ids[item - 1], annotator, verdict, "ba" if annotator == "bob" else "ab", ratings)
    store.add_vote(ids[6], "cat", "a", "ab")
    store.retract_last_vote("cat")                       # undone: item 7's a-vote does not count
    store.add_vote(ids[6], "cat", "b", "ab")
    store.close()


def test_resolve_majority_and_counts(tmp_path):
    build_store(tmp_path / "db.sqlite")
    with Store(tmp_path / "db.sqlite") as store:
        votes = store.active_votes()
    pairs, report = resolve(votes)
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [
        ("label-1", "A1", "B1"), ("label-6", "B6", "A6"), ("label-7", "B7", "A7")]
    assert report.items == 7 and report.written == 3
    assert dict(report.left_out) == {"without majority": 1, "ties": 1, "both bad": 1, "skipped only": 1}
    assert [(c["item_id"], c["resolved"]) for c in report.conflicts] == [(1, "a"), (2, None)]
    first = pairs[0]
    assert [m.role for m in first.prompt] == ["system", "user", "assistant", "user"]
    assert first.extra["annotators"] == ["ann", "bob", "cat"]
    assert first.extra["votes"] == {"chosen": 2, "rejected": 1}
    assert first.extra["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert first.dimensions is None
    rated = pairs[1]
    assert rated.dimensions == {"helpfulness": {"chosen": 5, "rejected": 2}, "safety": {"chosen": 4}}
    assert rated.extra["chosen_source"] == "model-b" and rated.extra["rejected_source"] == "model-a"

    strict, report = resolve(votes, min_agreement=0.7)
    assert [p.id for p in strict] == ["label-6", "label-7"]
    assert report.left_out["below agreement 0.7"] == 1

    with_ties, report = resolve(votes, include_ties=True)
    tie = next(p for p in with_ties if p.id == "label-3")
    assert tie.extra["tie"] is True and report.ties_written == 1
    assert report.left_out["both bad"] == 1 and "ties" not in report.left_out


def test_export_command_writes_seed_format(tmp_path, capsys):
    build_store(tmp_path / "db.sqlite")
    out = tmp_path / "out" / "prefs.jsonl"
    assert export_command(str(tmp_path / "db.sqlite"), str(out), 0.0, False) == 0
    printed = capsys.readouterr().out
    assert "7 voted items -> 3 pairs written" in printed
    assert "1 both bad" in printed and "1 ties" in printed and "1 skipped only" in printed
    assert "conflicts: 2 items" in printed and "item 2: ann=a, bob=b -> no majority" in printed

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["conversations"] == [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "hi"},
                                           {"from": "assistant", "value": "hello"}, {"from": "user", "value": "2+2?"}]
    assert (records[0]["chosen"], records[0]["rejected"]) == ("A1", "B1")
    assert records[0]["annotators"] == ["ann", "bob", "cat"] and records[0]["votes"] == {"chosen": 2, "rejected": 1}
    assert records[1]["dimensions"] == {"helpfulness": {"chosen": 5, "rejected": 2}, "safety": {"chosen": 4}}
    assert "dimensions" not in records[0]

    # the data layer reads the export back as training pairs
    loaded = load_pairs(str(out)).pairs
    assert [(p.chosen, p.rejected) for p in loaded] == [("A1", "B1"), ("B6", "A6"), ("B7", "A7")]


def test_export_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such store"):
        export_command(str(tmp_path / "missing.sqlite"), str(tmp_path / "x.jsonl"), 0.0, False)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        export_command(str(tmp_path / "missing.sqlite"), str(tmp_path / "x.jsonl"), 1.5, False)


def test_a_prompt_with_tool_calls_keeps_them_in_the_exported_pair(tmp_path):
    """Issue 12 item 3's kind: message fields a template renders survive label → export (they were rebuilt
    from role and content only)."""
    call = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]
    prompt = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "", "tool_calls": call},
              {"role": "tool", "content": "18 C, sunny", "tool_call_id": "c1"},
              {"role": "user", "content": "So, a jacket?"}]
    with Store(tmp_path / "db.sqlite") as store:
        item = store.add_label_item(prompt, "No jacket needed.", "Yes.", "m-a", "m-b")
        store.add_vote(item, "ann", "a", "ab")
        pairs, _ = resolve(store.active_votes())
    assert [m.fields for m in pairs[0].prompt] == [{}, {"tool_calls": call}, {"tool_call_id": "c1"}, {}]


def test_disagreement_resolves_by_majority_and_split_votes_are_left_out_and_counted(tmp_path):
    splits = {"a a b": "chosen=a", "a b tie": None, "a a b b tie": None, "tie tie a": "tie", "b b both_bad a": "chosen=b",
              "both_bad both_bad a": "both bad", "skip a": "chosen=a", "skip skip": "skipped only"}
    with Store(tmp_path / "db.sqlite") as store:
        for n, verdicts in enumerate(splits):
            item = store.add_label_item([{"role": "user", "content": f"q{n}"}], f"A{n}", f"B{n}")
            for i, verdict in enumerate(verdicts.split()):
                store.add_vote(item, f"annotator-{i}", verdict, "ab" if i % 2 else "ba")
        votes = store.active_votes()
    pairs, report = resolve(votes, include_ties=True)
    got = {p.extra["label_item"]: ("tie" if p.extra.get("tie") else f"chosen={'a' if p.chosen.startswith('A') else 'b'}")
           for p in pairs}
    want = {n + 1: outcome for n, outcome in enumerate(splits.values()) if outcome and outcome.startswith(("chosen", "tie"))}
    assert got == want
    assert dict(report.left_out) == {"without majority": 2, "both bad": 1, "skipped only": 1}
    assert report.items == len(splits) and report.written + sum(report.left_out.values()) == report.items
    assert sorted(c["item_id"] for c in report.conflicts if c["resolved"] is None) == [2, 3]


def test_the_export_round_trips_through_the_loader_and_exporting_twice_gives_the_same_file(tmp_path, capsys):
    build_store(tmp_path / "db.sqlite")
    out = tmp_path / "prefs.jsonl"
    assert export_command(str(tmp_path / "db.sqlite"), str(out), 0.0, True) == 0
    first = out.read_bytes()
    assert export_command(str(tmp_path / "db.sqlite"), str(out), 0.0, True) == 0
    assert out.read_bytes() == first  # replaced, never appended: no pair twice
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite", "prefs.jsonl"]  # no temporary file left
    with Store(tmp_path / "db.sqlite") as store:
        pairs, _ = resolve(store.active_votes(), include_ties=True)
    result = load_pairs(str(out))
    loaded = result.pairs
    assert [(p.id, [(m.role, m.content) for m in p.prompt], p.chosen, p.rejected, p.dimensions) for p in loaded] == \
        [(p.id, [(m.role, m.content) for m in p.prompt], p.chosen, p.rejected, p.dimensions) for p in pairs]
    assert [p.extra.get("tie") for p in loaded] == [None, True, None, None]
    # the tie was asked for (--include-ties): read in the file's order, and counted in the load summary
    assert result.warnings.kinds["tie_read_in_order"] == 1 and "1 pair had a tie" in result.summary()
    assert loaded[0].extra["annotators"] == ["ann", "bob", "cat"]


def test_the_export_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from prefloop.label import export as export_mod

    build_store(tmp_path / "db.sqlite")
    out = tmp_path / "prefs.jsonl"
    out.write_text("the previous export\n")

    def dies_half_way(pairs, path):
        with open(path, "w") as f:
            f.write('{"conversations": [')  # half a record, then the process fails
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "write_seed_jsonl", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        export_command(str(tmp_path / "db.sqlite"), str(out))
    assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite", "prefs.jsonl"]
    monkeypatch.undo()
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match="adir is a directory; give the path of a file to write"):
        export_command(str(tmp_path / "db.sqlite"), str(tmp_path / "adir"))


# ----------------------------------------------------------------------------------- atomic writes of --out

def test_write_atomically_keeps_a_symlinked_out_a_symlink(tmp_path):
    from prefloop.output_files import write_atomically

    real = tmp_path / "data" / "pairs.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    write_atomically(link, lambda tmp: open(tmp, "w").write("new\n"))
    assert link.is_symlink() and link.resolve() == real.resolve() and real.read_text() == "new\n"
    assert sorted(p.name for p in real.parent.iterdir()) == ["pairs.jsonl"]  # no temporary left behind


@pytest.mark.parametrize("code", ["EXDEV", "EBUSY"])
def test_write_atomically_rewrites_in_place_where_a_rename_cannot_replace_out(tmp_path, monkeypatch, capsys, code):
    import errno
    import os

    from prefloop.output_files import write_atomically

    out = tmp_path / "mounted.jsonl"  # e.g. a single file bind-mounted into a container: rename gives EBUSY
    out.write_text("old\n")

    def refuse(src, dst):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "replace", refuse)
    write_atomically(out, lambda tmp: open(tmp, "w").write("new\n"))
    assert out.read_text() == "new\n" and "rewritten in place" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted.jsonl"]

    def other(src, dst):
        raise PermissionError(errno.EACCES, "no")

    monkeypatch.setattr(os, "replace", other)
    with pytest.raises(PermissionError):
        write_atomically(out, lambda tmp: open(tmp, "w").write("newer\n"))
    assert out.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["mounted.jsonl"]


def test_an_empty_export_keeps_an_out_file_that_holds_data(tmp_path, capsys):
    from prefloop.cli import main

    Store(tmp_path / "EMPTY.sqlite").close()
    keep = tmp_path / "keep.jsonl"
    lines = "".join(json.dumps({"conversations": [{"from": "user", "value": f"q{i}"}], "chosen": "a",
                                "rejected": "b"}) + "\n" for i in range(14))
    keep.write_text(lines)
    assert main(["export", "--db", str(tmp_path / "EMPTY.sqlite"), "--out", str(keep)]) == 2
    err = capsys.readouterr().err
    assert "nothing to export (0 voted items in" in err and f"kept {keep} as it was" in err
    assert keep.read_text() == lines
    # votes that all get left out: the same, and the message says why
    store = Store(tmp_path / "db.sqlite")
    store.add_vote(store.add_label_item([{"role": "user", "content": "q"}], "A", "B", "m-a", "m-b"), "ann", "both_bad",
                   "ab")
    store.close()
    assert main(["export", "--db", str(tmp_path / "db.sqlite"), "--out", str(keep)]) == 2
    err = capsys.readouterr().err
    assert "nothing to export (1 voted items" in err and "left out: 1 both bad" in err and keep.read_text() == lines
    # a new (or empty) --out still gets the empty export
    fresh = tmp_path / "fresh.jsonl"
    assert main(["export", "--db", str(tmp_path / "EMPTY.sqlite"), "--out", str(fresh)]) == 0
    assert fresh.read_text() == ""
