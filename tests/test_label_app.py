"""The labeling app without a browser: input validation, item sources, assignment, live mode."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from prefloop.errors import ConfigError, DataError
from prefloop.label.app import label_command, parse_dimensions, prepare_session, read_auth_file, validate_options
from prefloop.label.assign import shown_order
from prefloop.label.session import LabelSession, ratings_to_stored, to_stored
from prefloop.label.sources import load_items
from prefloop.store import Store, StoreError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_host_beyond_localhost_requires_auth_and_sources_are_required():
    with pytest.raises(ConfigError, match="--auth"):
        validate_options("c.jsonl", None, None, None, "0.0.0.0", None, 1)
    validate_options("c.jsonl", None, None, None, "0.0.0.0", "users.txt", 1)
    validate_options("c.jsonl", None, None, None, "127.0.0.1", None, 1)
    with pytest.raises(ConfigError, match="nothing to label"):
        validate_options(None, None, None, None, "127.0.0.1", None, 1)
    with pytest.raises(ConfigError, match="both --model-a and --model-b"):
        validate_options(None, "m", None, None, "127.0.0.1", None, 1)
    with pytest.raises(ConfigError, match="live mode"):
        validate_options("c.jsonl", None, None, "p.jsonl", "127.0.0.1", None, 1)
    with pytest.raises(ConfigError, match="overlap"):
        validate_options("c.jsonl", None, None, None, "127.0.0.1", None, 0)


def test_inputs_are_checked_before_the_server_starts(tmp_path):
    with pytest.raises(DataError, match="not found"):
        label_command(pairs=str(tmp_path / "missing.jsonl"), db=str(tmp_path / "db.sqlite"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "candidates": ["a", "b"]}\n{"prompt": "x", "candidates": [\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        label_command(pairs=str(bad), db=str(tmp_path / "db.sqlite"))
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "hi", "candidates": ["a", "b"]}])
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:  # another program's database
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="another program"):
        label_command(pairs=str(good), db=str(foreign))
    with pytest.raises(ConfigError, match="users.txt: file not found"):
        label_command(pairs=str(good), db=str(tmp_path / "db.sqlite"), auth=str(tmp_path / "users.txt"))
    with pytest.raises(ConfigError, match="no such local path"):
        label_command(model_a=str(tmp_path / "nope"), model_b=str(tmp_path / "nope"), db=str(tmp_path / "d.sqlite"))


def test_auth_file_and_dimensions(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# annotators\nalice:pw one\n\nbob:x:y\n")
    assert read_auth_file(str(users)) == [("alice", "pw one"), ("bob", "x:y")]
    users.write_text("alice:1\ncarol\n")
    with pytest.raises(ConfigError, match="users.txt:2: expected 'name:password'"):
        read_auth_file(str(users))
    users.write_text("alice:1\nalice:2\n")
    with pytest.raises(ConfigError, match="twice"):
        read_auth_file(str(users))
    assert parse_dimensions("helpfulness, safety") == ["helpfulness", "safety"]
    with pytest.raises(ConfigError, match="twice"):
        parse_dimensions("a,a")
    assert parse_dimensions("") == parse_dimensions("  ") == []  # `--dimensions "$DIMS"` with DIMS empty
    for empty in (",", "a,,b", "a, "):  # was accepted: "," as no dimensions, "a,,b" as a and b
        with pytest.raises(ConfigError, match="empty name"):
            parse_dimensions(empty)


def test_candidates_become_all_pairs_and_preference_data_is_accepted(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "p1", "messages": [{"role": "user", "content": "q"}], "model": "gen",
         "candidates": ["one", "two", "three"]},
        {"prompt": "same twice", "responses": ["x", "x"]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"},
                           {"from": "human", "value": "more"}], "system": "be kind",
         "candidates": [{"text": "m1", "model": "model-1"}, {"content": "m2", "source": "model-2"}]},
    ])
    items, skipped = load_items(path)
    assert skipped == 1
    assert [(i.response_a, i.response_b) for i in items] == [("one", "two"), ("one", "three"), ("two", "three"),
                                                             ("m1", "m2")]
    assert (items[0].source_a, items[0].source_b, items[0].origin) == ("gen #0", "gen #1", "p1#0-1")
    assert [m["role"] for m in items[3].prompt] == ["system", "user", "assistant", "user"]
    assert (items[3].source_a, items[3].source_b) == ("model-1", "model-2")

    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}])
    [item], _ = load_items(prefs)
    assert (item.response_a, item.source_a, item.response_b, item.source_b) == ("good", "chosen", "bad", "rejected")

    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "?"}])
    with pytest.raises(DataError, match="neither candidates nor preference data"):
        load_items(other)


def test_restarting_on_the_same_file_adds_no_duplicate_items(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "candidates": ["a", "b", "c"]}])
    first = prepare_session(pairs=str(path), db=str(tmp_path / "db.sqlite"))
    first.store.close()
    again = prepare_session(pairs=str(path), db=str(tmp_path / "db.sqlite"))
    assert len(again.store.label_item_ids()) == 3
    again.store.close()


def test_shown_order_maps_back_to_stored_verdicts_and_ratings():
    assert [to_stored(c, "ab") for c in ("A", "B", "tie", "both_bad", "skip")] == ["a", "b", "tie", "both_bad", "skip"]
    assert [to_stored(c, "ba") for c in ("A", "B", "tie")] == ["b", "a", "tie"]
    assert ratings_to_stored({"help": {"A": 5, "B": None}}, "ba", ["help"]) == {"help": {"b": 5}}
    orders = [shown_order(7, item, "ann") for item in range(400)]
    assert 160 < orders.count("ab") < 240  # a fair coin per item
    assert orders == [shown_order(7, item, "ann") for item in range(400)]  # reproducible from the seed


def _session(tmp_path, n_items, overlap):
    store = Store(tmp_path / "db.sqlite")
    for i in range(n_items):
        store.add_label_item([{"role": "user", "content": f"q{i}"}], f"a{i}", f"b{i}", "x", "y")
    return LabelSession(store, overlap=overlap, seed=0)


def test_overlap_never_twice_skip_and_undo(tmp_path):
    session = _session(tmp_path, 3, overlap=2)
    seen = {}
    for annotator in ("ann", "bob", "cat"):
        seen[annotator] = []
        while (shown := session.next_for(annotator)) is not None:
            seen[annotator].append(shown.item_id)
            session.save_vote(annotator, shown.item_id, shown.order, "A")
    for items in seen.values():
        assert len(items) == len(set(items))  # never the same item twice to one annotator
    # every item judged by exactly 2 different annotators, then complete
    counts = session.store.completed_counts()
    assert counts == {1: 2, 2: 2, 3: 2}
    assert session.progress("cat")["complete"] == 3 and session.progress("cat")["left"] == 0

    # a skip is not a judgment: the item stays open for someone else
    skip_session = _session(tmp_path / "skip", 1, overlap=1)
    shown = skip_session.next_for("ann")
    skip_session.save_vote("ann", shown.item_id, shown.order, "skip")
    assert skip_session.next_for("ann") is None
    assert skip_session.next_for("bob").item_id == shown.item_id
    # undo frees the item for the annotator again
    assert skip_session.undo("ann") == shown.item_id
    assert skip_session.undo("ann") is None


def test_an_item_being_shown_is_reserved(tmp_path):
    session = _session(tmp_path, 2, overlap=1)
    first = session.next_for("ann")
    second = session.next_for("bob")
    assert first.item_id != second.item_id
    assert session.next_for("cat") is None  # both items are being looked at
    session.save_vote("ann", first.item_id, first.order, "B")
    assert session.next_for("cat") is None  # ann's item is complete, bob's still reserved


def test_reservations_are_shared_by_every_labeling_process_on_the_store(tmp_path):
    """Two `prefloop label` servers on one database: the item one hands out is not handed out by the other."""
    session = _session(tmp_path, 2, overlap=1)
    first = session.next_for("ann")
    other = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            from prefloop.label.session import LabelSession
            from prefloop.store import Store
            s = LabelSession(Store({str(tmp_path / "db.sqlite")!r}), overlap=1, seed=0)
            a, b = s.next_for("bob"), s.next_for("cat")
            print(a.item_id, b)
        """)], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    bob_item, cat = other.stdout.split()
    assert int(bob_item) != first.item_id and cat == "None"  # one left for bob, none for cat
    held = session.store.label_reservations(now=time.time())
    assert held == {first.item_id: ["ann"], int(bob_item): ["bob"]}
    session.save_vote("ann", first.item_id, first.order, "A")
    assert session.store.label_reservations(now=time.time()) == {int(bob_item): ["bob"]}  # a vote releases


def test_live_mode_with_a_local_model(tmp_path, tiny_model_dir):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi"}, {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"}]}])
    session = prepare_session(model_a=str(tiny_model_dir), model_b=str(tiny_model_dir), prompts=str(prompts),
                              db=str(tmp_path / "db.sqlite"))
    assert session.live and len(session.prompts) == 2
    session.responders[0].params = session.responders[1].params = session.responders[0].params.__class__(
        max_new_tokens=8, temperature=0.7)
    item_id = session.generate("ann", session.prompts[1])
    item = session.store.label_item(item_id)
    assert item["origin"] == "live"
    assert (item["source_a"], item["source_b"]) == (f"{tiny_model_dir.name} (--model-a)", f"{tiny_model_dir.name} (--model-b)")
    assert [m["content"] for m in item["prompt"]] == ["hi", "hello", "again"]
    assert isinstance(item["response_a"], str)
    shown = session.show(item_id, "ann")
    assert session.save_vote("ann", item_id, shown.order, "A") == 1
    session.store.close()


def test_cli_serves_on_localhost_and_stops_on_ctrl_c(tmp_path):
    import signal
    import socket
    import urllib.request

    pairs = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "candidates": ["a", "b"]}])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # `python -m prefloop label ...`, with Python's Ctrl-C handler installed and SIGINT unblocked first: a
    # child inherits an ignored (then Python installs no handler) or blocked SIGINT from its parent. In 3 of 5
    # full-suite runs the CLI started here did not react to SIGINT (its stack dump: the main thread still in
    # its sleep loop 60 s later), which a terminal's Ctrl-C never meets; the app's own handling of Ctrl-C is
    # what this test checks.
    start_cli = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                 "sys.argv = sys.argv[1:]; runpy.run_module('prefloop', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", start_cli, "prefloop", "label", "--pairs", str(pairs), "--db",
                             str(tmp_path / "db.sqlite"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # SIGABRT dumps every thread's stack
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the app did not start"
                time.sleep(0.5)
        started = ""
        while "labeling at" not in started:  # the page answers a moment before launch() returns
            line = proc.stdout.readline()
            assert line, "the app stopped before saying where it listens"
            started += line
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it hangs: faulthandler prints every thread's stack
            proc.send_signal(signal.SIGABRT)
            dump, _ = proc.communicate(timeout=30)
            pytest.fail(f"prefloop label did not stop within 60 s of Ctrl-C; its output and threads:\n{started}{dump}")
        output = started + output
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert f"labeling at http://127.0.0.1:{port}" in output and "1 comparison items (1 new" in output
    with Store(tmp_path / "db.sqlite") as store:
        assert len(store.label_item_ids()) == 1


def test_cli_export_and_stats(tmp_path, capsys):
    from prefloop.cli import main

    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        item = store.add_label_item([{"role": "user", "content": "q"}], "x", "y", "m1", "m2")
        store.add_vote(item, "ann", "b", "ab")
    assert main(["export", "--db", str(db), "--out", str(tmp_path / "p.jsonl")]) == 0
    record = json.loads((tmp_path / "p.jsonl").read_text())
    assert (record["chosen"], record["rejected"], record["annotators"]) == ("y", "x", ["ann"])
    assert main(["label-stats", "--db", str(db), "--json"]) == 0
    assert main(["export", "--db", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "q.jsonl")]) == 2
    assert "no such store" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The labeling faults of the peers' trackers: double submits, races for the last item, undo/skip accounting,
# A/B order flipped on screen but chosen/rejected swapped in the export, agreement computed on screen sides.

def test_a_double_click_is_one_vote_and_one_undo_takes_it_back(tmp_path):
    from prefloop.label.export import resolve
    from prefloop.label.stats import label_stats

    session = _session(tmp_path, 2, overlap=1)
    shown = session.next_for("ann")
    first = session.save_vote("ann", shown.item_id, shown.order, "A", reason="clearer")
    again = session.save_vote("ann", shown.item_id, shown.order, "A", reason="clearer")  # the second click
    assert again == first and len(session.store.votes()) == 1
    stats = label_stats(session.store.votes())
    assert stats["votes"] == 1 and stats["per_annotator"]["ann"]["votes"] == 1
    pairs, report = resolve(session.store.active_votes())
    assert report.written == 1 and pairs[0].extra["votes"] == {"chosen": 1}
    assert session.undo("ann") == shown.item_id  # one undo is enough
    assert session.store.active_votes() == [] and session.undo("ann") is None


def test_a_changed_vote_counts_once_and_undo_brings_the_first_back(tmp_path):
    from prefloop.label.export import resolve
    from prefloop.label.stats import label_stats

    session = _session(tmp_path, 1, overlap=2)
    shown = session.next_for("ann")
    session.save_vote("ann", shown.item_id, shown.order, "A")
    session.save_vote("ann", shown.item_id, shown.order, "B")  # a second tab, or a quick change of mind
    active = session.store.active_votes()
    assert len(active) == 1 and active[0]["verdict"] == to_stored("B", shown.order)
    assert session.store.completed_counts() == {shown.item_id: 1}  # still one annotator: overlap 2 not met
    assert session.next_for("bob").item_id == shown.item_id
    stats = label_stats(session.store.votes())
    assert (stats["votes"], stats["replaced"], stats["undone"]) == (1, 1, 0)
    pairs, report = resolve(session.store.active_votes())
    assert report.conflicts == [] and pairs[0].extra["annotators"] == ["ann"]
    assert session.undo("ann") == shown.item_id
    assert [v["verdict"] for v in session.store.active_votes()] == [to_stored("A", shown.order)]
    told = session.undo_message("ann", shown.item_id)  # the earlier vote quietly counting again is said
    assert "earlier vote on this item (A is better) counts again" in told
    stats = label_stats(session.store.votes())
    assert (stats["votes"], stats["replaced"], stats["undone"]) == (1, 0, 1)
    assert session.undo("ann") == shown.item_id  # now no vote of ann's counts on it
    assert session.undo_message("ann", shown.item_id) == "Your last vote was undone; vote on this item again."


def test_two_annotators_racing_for_the_last_item(tmp_path, monkeypatch):
    import threading

    from prefloop.label import assign

    session = _session(tmp_path, 1, overlap=1)
    barrier, got = threading.Barrier(8), {}

    def ask(name):
        barrier.wait()
        got[name] = session.next_for(name)

    threads = [threading.Thread(target=ask, args=(f"ann-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, shown in got.items() if shown is not None]
    assert len(winners) == 1  # the last item goes to one of them; the others are told nothing is left
    # a reservation that ran out (an annotator away for long): both vote, both votes are kept, none is lost
    later = time.time() + assign.RESERVATION_SECONDS + 1
    monkeypatch.setattr(assign.time, "time", lambda: later)
    late = session.next_for("late")
    assert late is not None and late.item_id == got[winners[0]].item_id
    session.save_vote(winners[0], late.item_id, got[winners[0]].order, "A")
    session.save_vote("late", late.item_id, late.order, "A")
    assert len(session.store.active_votes()) == 2
    assert session.progress("late") == {"mine": 1, "left": 0, "complete": 1, "total": 1, "overlap": 1}


def test_skips_and_undos_are_counted_and_reported(tmp_path):
    from prefloop.label.export import resolve
    from prefloop.label.stats import format_report, label_stats

    session = _session(tmp_path, 3, overlap=1)
    one, two, three = (session.store.label_item_ids())
    session.save_vote("ann", one, "ab", "skip")
    session.save_vote("ann", two, "ab", "tie")
    session.save_vote("ann", three, "ab", "both_bad")
    session.save_vote("bob", one, "ba", "A")
    session.undo("bob")
    stats = label_stats(session.store.votes())
    assert stats["verdicts"] == {"a": 0, "b": 0, "tie": 1, "both_bad": 1, "skip": 1}
    assert (stats["skip_rate"], stats["undone"]) == (pytest.approx(1 / 3), 1)
    assert "1 undone votes" in format_report(stats)
    _, report = resolve(session.store.active_votes())
    assert dict(report.left_out) == {"skipped only": 1, "ties": 1, "both bad": 1} and report.written == 0
    pairs, report = resolve(session.store.active_votes(), include_ties=True)
    assert [(p.extra.get("tie"), p.chosen) for p in pairs] == [(True, "a1")] and report.ties_written == 1


def test_the_response_clicked_is_chosen_whichever_side_it_was_shown_on(tmp_path):
    """The classic swap: the display order is flipped for half the items, and the export must still name the
    clicked response chosen. Each item's good answer is stored as a on even items and as b on odd ones."""
    from prefloop.label.export import resolve

    store = Store(tmp_path / "db.sqlite")
    for i in range(40):
        good, bad = f"GOOD {i}", f"bad {i}"
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        store.add_label_item([{"role": "user", "content": f"q{i}"}], a, b, "model-x", "model-y")
    session = LabelSession(store, overlap=1, seed=3, dimensions=["helpful"])
    orders = []
    while (shown := session.next_for("ann")) is not None:
        side = "A" if shown.left.startswith("GOOD") else "B"
        other = "B" if side == "A" else "A"
        orders.append((shown.order, side))
        session.save_vote("ann", shown.item_id, shown.order, side, {"helpful": {side: 5, other: 1}})
    assert {o for o, _ in orders} == {"ab", "ba"} and {s for _, s in orders} == {"A", "B"}
    pairs, report = resolve(store.active_votes())
    assert report.written == 40
    assert all(p.chosen.startswith("GOOD") and p.rejected.startswith("bad") for p in pairs)
    assert all(p.dimensions == {"helpful": {"chosen": 5, "rejected": 1}} for p in pairs)
    for p in pairs:  # the sources follow their responses
        item = store.label_item(p.extra["label_item"])
        chosen_side = "a" if item["response_a"] == p.chosen else "b"
        assert p.extra["chosen_source"] == item[f"source_{chosen_side}"]
    store.close()


def test_agreement_compares_the_stored_responses_not_the_screen_sides(tmp_path):
    from prefloop.label.export import resolve
    from prefloop.label.stats import label_stats

    store = Store(tmp_path / "db.sqlite")
    items = [store.add_label_item([{"role": "user", "content": f"q{i}"}], f"x{i}", f"y{i}") for i in range(12)]
    session = LabelSession(store, overlap=2, seed=0)
    for annotator in ("ann", "bob"):
        for item in items:  # both prefer y on even items and x on odd ones, whatever side it was shown on
            shown = session.show(item, annotator)
            want = f"y{item - 1}" if item % 2 else f"x{item - 1}"
            session.save_vote(annotator, item, shown.order, "A" if shown.left == want else "B")
    assert {session.show(i, "ann").order != session.show(i, "bob").order for i in items} == {True, False}
    agreement = label_stats(store.active_votes())["agreement"]
    assert agreement["cohen_kappa"] == pytest.approx(1.0) and agreement["fleiss_kappa"] == pytest.approx(1.0)
    pairs, report = resolve(store.active_votes())
    assert report.conflicts == [] and all(p.extra["agreement"] == 1.0 for p in pairs)
    store.close()


def test_the_same_comparison_loaded_twice_is_shown_once_to_an_annotator_and_exported_once(tmp_path):
    """Two files hold the same prompt with its two answers in opposite orders (and other model names): two items
    that ask the same question. One annotator sees it once; votes on both copies count as votes on one item."""
    from prefloop.label.export import resolve
    from prefloop.label.stats import label_stats

    store = Store(tmp_path / "db.sqlite")
    q = [{"role": "user", "content": "2+2?"}]
    first = store.add_label_item(q, "4", "5", "run-1 a", "run-1 b")
    second = store.add_label_item(q, "5", "4", "run-2 a", "run-2 b")  # the same comparison, flipped
    other = store.add_label_item(q, "4", "four", "run-1 a", "run-1 c")
    session = LabelSession(store, overlap=2, seed=0)
    seen = []
    while (shown := session.next_for("ann")) is not None:
        seen.append(shown.item_id)
        session.save_vote("ann", shown.item_id, shown.order, "A" if shown.left in ("4", "four") else "B")
    assert sorted(seen) in ([first, other], [second, other])  # never both copies
    assert session.progress("ann")["left"] == 0
    bob = session.show(second if seen[0] == first or seen[1] == first else first, "bob")
    session.save_vote("bob", bob.item_id, bob.order, "A" if bob.left == "4" else "B")  # "4" again
    pairs, report = resolve(store.active_votes())
    four = [p for p in pairs if p.rejected == "5"]
    assert len(four) == 1 and four[0].chosen == "4" and four[0].extra["annotators"] == ["ann", "bob"]
    assert four[0].extra["votes"] == {"chosen": 2} and report.conflicts == []
    assert report.left_out["merged into an item asking the same comparison (their votes count there)"] == 1
    assert label_stats(store.active_votes())["agreement"]["items_with_2plus"] == 1
    store.close()


def test_forgotten_and_identical_items_are_never_shown_nor_exported(tmp_path):
    from prefloop.label.export import resolve

    store = Store(tmp_path / "db.sqlite")
    keep = store.add_label_item([{"role": "user", "content": "q"}], "x", "y")
    same = store.add_label_item([{"role": "user", "content": "q2"}], "same text", "same text")
    secret = store.add_label_item([{"role": "user", "content": "my phone is 555"}], "ok", "noted")
    held_out = store.add_label_item([{"role": "user", "content": "eval q"}], "after", "before", "after", "before",
                                    origin="eval-winrate:m:v2 vs m:v1 [abc]")
    for item in (keep, same, secret, held_out):
        store.add_vote(item, "ann", "a", "ab")
    store.log_interaction("c1", "m", [{"role": "user", "content": "my phone is 555"}], "ok")
    store.forget_conversation("c1", label_item_ids=[secret])
    session = LabelSession(store, overlap=2, seed=0)
    shown = set()
    while (s := session.next_for("bob")) is not None:
        shown.add(s.item_id)
        session.save_vote("bob", s.item_id, s.order, "skip")
    assert shown == {keep, held_out}  # people vote on eval items (eval winrate --human-db reads them)
    pairs, report = resolve(store.active_votes())
    assert [p.chosen for p in pairs] == ["x"]
    assert dict(report.left_out) == {"held-out eval items (prefloop eval winrate --human-db)": 1,
                                     "forgotten on request": 1, "identical responses": 1}
    assert report.items == 4
    store.close()


def test_the_eval_origin_prefix_export_leaves_out_is_the_one_eval_writes():
    from prefloop.evaluate.winrate import ORIGIN_PREFIX
    from prefloop.label.export import EVAL_ORIGIN_PREFIX

    assert EVAL_ORIGIN_PREFIX == ORIGIN_PREFIX
