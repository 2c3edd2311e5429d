"""The store loses nothing: concurrent writers, a killed writer, and it refuses other programs' databases."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from prefloop.label.session import LabelSession
from prefloop.store import PREFLOOP_APP_ID, Store, StoreError

PROMPT = [{"role": "user", "content": "Which is better?"}]


def _fill(store: Store, n: int) -> list[int]:
    return [store.add_label_item(PROMPT, f"answer a {i}", f"answer b {i}", "model-a", "model-b") for i in range(n)]


def test_eight_threads_two_hundred_votes_each_through_save_vote(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    items = _fill(store, 200)
    session = LabelSession(store, overlap=8, seed=1)
    errors = []

    def annotate(worker: int) -> None:
        try:
            for item_id in items:
                session.save_vote(f"annotator-{worker}", item_id, "ab" if item_id % 2 else "ba",
                                  ["A", "B", "tie"][item_id % 3], None, f"w{worker}")
        except Exception as err:  # surfaced below; a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=annotate, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store.close()

    with Store(tmp_path / "db.sqlite") as reopened:
        votes = reopened.votes()
        assert len(votes) == 1600
        assert len({v["vote_id"] for v in votes}) == 1600
        assert {(v["annotator"], v["item_id"]) for v in votes} == {
            (f"annotator-{w}", i) for w in range(8) for i in items}
        assert reopened.integrity_check() == "ok"
    raw = sqlite3.connect(tmp_path / "db.sqlite")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 1600
    raw.close()


WRITER = textwrap.dedent("""
    import sys
    from prefloop.label.session import LabelSession
    from prefloop.store import Store
    store = Store(sys.argv[1])
    session = LabelSession(store, overlap=1000)
    items = store.label_item_ids()
    n = 0
    while True:
        item = items[n % len(items)]
        vote_id = session.save_vote(f"killed-{n // len(items)}", item, "ab", "A", None, "r" * 200)
        print(vote_id, flush=True)  # the acknowledgement: printed only after the commit returned
        n += 1
""")


def test_killed_writer_leaves_consistent_db_with_every_acknowledged_vote(tmp_path):
    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        _fill(store, 20)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 150:
                break
        proc.send_signal(signal.SIGKILL)  # mid-voting: the writer is in its loop
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) == 150

    with Store(db) as store:
        assert store.integrity_check() == "ok"
        stored = {v["vote_id"]: v for v in store.votes()}
        assert set(acked) <= set(stored)
        assert len(stored) in range(150, 150 + 3)  # a vote may land between the last ack and the kill
        assert all(v["reason"] == "r" * 200 and v["verdict"] == "a" for v in stored.values())
        # the store is writable again after the crash
        store.add_vote(1, "after-crash", "b", "ba")


def test_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another program.*customers"):
        Store(path)
    conn = sqlite3.connect(path)  # untouched
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["customers"]
    conn.close()


def test_non_sqlite_file_and_newer_schema_are_refused(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("these are my notes\n")
    with pytest.raises(StoreError, match="not a SQLite database"):
        Store(text)

    path = tmp_path / "future.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == PREFLOOP_APP_ID
    conn.execute("UPDATE prefloop_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(path)


def test_votes_are_append_only_and_undo_marks_retracted(tmp_path):
    with Store(tmp_path / "db.sqlite") as store:
        item = _fill(store, 1)[0]
        first = store.add_vote(item, "ann", "a", "ab", {"helpfulness": {"a": 5, "b": 1}}, "clear")
        assert store.retract_last_vote("ann") == first
        assert store.retract_last_vote("ann") is None
        second = store.add_vote(item, "ann", "b", "ab")
        assert [v["vote_id"] for v in store.active_votes()] == [second]
        all_votes = store.votes()
        assert [(v["vote_id"], v["retracted"]) for v in all_votes] == [(first, True), (second, False)]
        assert all_votes[0]["ratings"] == {"helpfulness": {"a": 5, "b": 1}}
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store._conn.execute("UPDATE votes SET verdict = 'b'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store._conn.execute("DELETE FROM votes")
        with pytest.raises(StoreError, match="verdict"):
            store.add_vote(item, "ann", "left", "ab")
        with pytest.raises(StoreError, match="no label item"):
            store.add_vote(999, "ann", "a", "ab")
        # the same item content is stored once
        assert store.add_label_item(PROMPT, "answer a 0", "answer b 0", "model-a", "model-b") == item


def test_interactions_feedback_and_model_versions(tmp_path):
    with Store(tmp_path / "db.sqlite") as store:
        messages = [{"role": "user", "content": "hi"}]
        one = store.log_interaction("conv-1", "tiny", messages, "hello", {"temperature": 0.7}, {"total_tokens": 5})
        two = store.log_interaction("conv-1", "tiny-v2", messages, "hey")
        store.add_feedback(one, "thumbs", "up", annotator="u1")
        store.add_feedback(one, "choice", two, annotator="u1", other_interaction_id=two)
        with pytest.raises(StoreError, match="no interaction with id 77"):
            store.add_feedback(77, "thumbs", "down")
        with pytest.raises(StoreError, match="'up' or 'down'"):
            store.add_feedback(one, "thumbs", "meh")
        assert [i["response"] for i in store.interactions()] == ["hello", "hey"]
        assert [i["id"] for i in store.interactions(limit=1)] == [two]
        assert store.interactions()[0]["usage"] == {"total_tokens": 5}
        assert [(f["kind"], f["value"]) for f in store.feedback()] == [("thumbs", "up"), ("choice", two)]

        base = store.add_model_version("sft", "/models/sft", status="promoted")
        cand = store.add_model_version("dpo-1", "/models/dpo-1", parent_id=base, metrics={"win_rate": 0.61})
        assert store.promoted_model()["id"] == base
        store.set_model_status(cand, "promoted", "gate passed")
        store.set_model_status(base, "retired")
        versions = {v["name"]: v for v in store.model_versions()}
        assert versions["dpo-1"]["parent_id"] == base and versions["dpo-1"]["metrics"] == {"win_rate": 0.61}
        assert store.promoted_model()["id"] == cand
        assert [e["status"] for e in store.model_events(base)] == ["promoted", "retired"]
    assert json.loads(json.dumps(versions["sft"]))  # plain JSON-able rows
