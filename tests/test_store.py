"""The store loses nothing: concurrent writers, a killed writer, and it refuses other programs' databases."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from prefloop.label.session import LabelSession
from prefloop.store import PREFLOOP_APP_ID, SCHEMA_VERSION, Store, StoreError

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


# ---------------------------------------------------------------------------------------------------------------
# Faults the peers' bug trackers are full of: "database is locked" between a labeling app, a logging server and a
# background job; half-written rows after a crash; a read-only or full disk; old store files; odd text; time zones.

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

MIXED_WRITER = textwrap.dedent("""
    import sys, time
    from prefloop.label.session import LabelSession
    from prefloop.store import Store
    path, role, start, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    while time.time() < start:
        time.sleep(0.001)
    store = Store(path)  # several processes create the fresh file at the same moment
    if role == "label":  # the label app's workers
        session = LabelSession(store, overlap=1000)
        items = [store.add_label_item([{"role": "user", "content": f"q{i}"}], "a", "b") for i in range(5)]
        for i in range(n):
            session.save_vote(f"ann-{i}", items[i % 5], "ab", "A")
    elif role == "serve":  # the server logging interactions and feedback
        for i in range(n):
            one = store.log_interaction(f"c{i}", "m:v1", [{"role": "user", "content": "hi"}], f"r{i}")
            store.add_feedback(one, "thumbs", "up")
    elif role == "loop":  # the loop: iterations, steps, registry moves
        for i in range(n):
            it = store.open_loop_iteration(f"loop-{i}")
            store.record_loop_step(it["id"], "collect", {}, {"i": i})
            vid = store.add_model_version("m", f"/m/{i}")
            store.move_alias("m", "champion", "set", vid)
    else:  # a long writer: holds the write lock for a while, again and again
        for _ in range(3):
            with store._write() as c:
                c.execute("INSERT INTO prefloop_meta(key, value) VALUES (?, 'x')", (f"hold-{time.time()}",))
                time.sleep(0.6)
            time.sleep(0.05)
    store.close()
    print("done", role, flush=True)
""")


def test_processes_of_the_label_app_the_server_and_the_loop_lose_nothing(tmp_path):
    """Four processes open a fresh store at once and write through each other's locks (one holds it 0.6 s at a
    time): every vote, interaction, feedback, step and alias move is there; nobody saw 'database is locked'."""
    import time

    db = tmp_path / "fresh" / "db.sqlite"
    n = 40
    start = time.time() + 1.5
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, "-c", MIXED_WRITER, str(db), role, str(start), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role in ("label", "serve", "loop", "hold")]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and "done" in out, err
    with Store(db) as store:
        assert len(store.active_votes()) == n
        assert len(store.interactions()) == n and len(store.feedback()) == n
        assert len([i for i in range(n) if store.loop_iterations(f"loop-{i}")]) == n
        assert len(store.alias_events("m", "champion")) == n
        assert [v["version"] for v in store.model_versions("m")] == [f"v{i}" for i in range(1, n + 1)]
        assert store.integrity_check() == "ok"


def test_a_lock_held_past_the_busy_timeout_is_a_clear_error_and_nothing_is_half_written(tmp_path, monkeypatch):
    from prefloop import store as store_mod

    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        item = _fill(store, 1)[0]
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_MS", 300)
    store = Store(db)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another program keeps the write lock
    with pytest.raises(StoreError, match=r"locked by another process for more than 0 s.*nothing was written"):
        store.add_vote(item, "ann", "a", "ab")
    other.execute("ROLLBACK")
    other.close()
    assert store.add_vote(item, "ann", "a", "ab") == 1  # the same connection works on afterwards
    assert len(store.votes()) == 1
    store.close()


def test_a_lock_released_within_the_timeout_only_delays_the_vote(tmp_path):
    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        item = _fill(store, 1)[0]
        other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(1.0, lambda: other.execute("COMMIT"))
        timer.start()
        vote_id = store.add_vote(item, "ann", "b", "ba")  # waits for the lock instead of failing
        timer.join()
        other.close()
        assert [v["vote_id"] for v in store.active_votes()] == [vote_id]


def test_a_full_disk_is_a_clear_error_rolls_back_the_whole_write_and_the_store_works_on(tmp_path):
    db = tmp_path / "db.sqlite"
    store = Store(db)
    _fill(store, 2)
    a, b = store.log_interaction("c", "m", PROMPT, "x"), store.log_interaction("c", "m", PROMPT, "y")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: no page may be added
    big = "lorem ipsum " * 100_000
    with pytest.raises(StoreError, match=r"disk holding .* is full.*nothing was written"):
        store.add_label_item(PROMPT, big, "short")
    with pytest.raises(StoreError, match="is full"):  # several rows in one transaction: none of them stays
        store.import_interactions("k1", "c2", "m", PROMPT, [big, big], {}, {}, [("choice", 0, 1, 1)])
    assert len(store.label_items()) == 2 and len(store.interactions()) == 2 and store.feedback() == []
    store._conn.execute("PRAGMA max_page_count = 1073741823")  # space again: the same connection writes
    store.add_feedback(a, "choice", "other", other_interaction_id=b)
    assert store.add_label_item(PROMPT, big, "short") == 3
    assert store.integrity_check() == "ok"
    store.close()


READ_ONLY = textwrap.dedent("""
    import os, sys
    from prefloop.store import Store, StoreError
    import prefloop.data.schema, json, sqlite3
    if os.geteuid() == 0:  # root ignores permissions: drop to nobody after the imports
        os.setgid(65534)
        os.setuid(65534)
    try:
        Store(sys.argv[1])
        print("opened")
    except StoreError as err:
        print("StoreError:", err)
""")


def test_a_store_on_a_read_only_disk_is_a_clear_error(tmp_path):
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="prefloop-ro-")  # outside pytest's private folder, so another user can reach it
    os.chmod(top, 0o755)
    folder = Path(top) / "ro"
    with Store(folder / "db.sqlite") as store:
        _fill(store, 1)
    os.chmod(folder / "db.sqlite", 0o444)
    os.chmod(folder, 0o555)
    try:
        out = subprocess.run([sys.executable, "-c", READ_ONLY, str(folder / "db.sqlite")], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    finally:
        os.chmod(folder, 0o755)
        os.chmod(folder / "db.sqlite", 0o644)
    assert "StoreError:" in out.stdout, out.stdout + out.stderr
    assert "is read-only" in out.stdout and "writable" in out.stdout and "corrupt" not in out.stdout
    # a store that turns read-only while open (a remount): the write fails clearly and nothing is half-written
    with Store(folder / "db.sqlite") as store:
        store._conn.execute("PRAGMA query_only = ON")
        with pytest.raises(StoreError, match=r"read-only.*cannot save a vote; nothing was written"):
            store.add_vote(1, "ann", "a", "ab")
        store._conn.execute("PRAGMA query_only = OFF")
        assert store.add_vote(1, "ann", "a", "ab") == 1
    shutil.rmtree(top)


KILLED_IN_TRANSACTION = textwrap.dedent("""
    import sys, time
    from prefloop.store import Store
    store = Store(sys.argv[1])
    with store._write() as c:  # rows written, not committed: the process dies here
        for i in range(50):
            c.execute("INSERT INTO votes(item_id, annotator, verdict, shown_order, created_at) "
                      "VALUES (1, ?, 'a', 'ab', 'x')", (f"half-{i}",))
        print("inside", flush=True)
        time.sleep(60)
""")


def test_a_process_killed_inside_a_transaction_leaves_no_half_written_rows(tmp_path):
    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        _fill(store, 1)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_IN_TRANSACTION, str(db)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert proc.stdout.readline().strip() == "inside"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with Store(db) as store:
        assert store.votes() == [] and store.integrity_check() == "ok"
        assert store.add_vote(1, "ann", "a", "ab") == 1  # the lock died with the process


def test_a_schema_2_store_is_migrated_with_its_rows_and_the_append_only_rules(tmp_path):
    from prefloop import store as store_mod

    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in store_mod._split_sql(store_mod._SCHEMA + store_mod._append_only_triggers()):
        conn.execute(statement)
    for statement in store_mod._split_sql(store_mod._MIGRATIONS[2]):
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {store_mod.PREFLOOP_APP_ID}")
    conn.execute("INSERT INTO prefloop_meta(key, value) VALUES ('program', 'prefloop'), ('schema_version', '2')")
    conn.execute("INSERT INTO label_items(item_key, prompt_json, response_a, response_b, created_at) "
                 "VALUES ('k', '[{\"role\": \"user\", \"content\": \"q\"}]', 'x', 'y', '2026-01-01T00:00:00+00:00')")
    conn.execute("INSERT INTO votes(item_id, annotator, verdict, shown_order, created_at) "
                 "VALUES (1, 'ann', 'b', 'ba', '2026-01-01T00:00:01+00:00')")
    conn.execute("INSERT INTO model_versions(name, version, path, created_at) VALUES ('m', 'v1', '/m', '2026')")
    conn.execute("INSERT INTO model_aliases(name, alias, action, version_id, created_at) "
                 "VALUES ('m', 'champion', 'set', 1, '2026')")
    conn.close()
    with Store(path) as store:
        assert [(v["annotator"], v["verdict"]) for v in store.active_votes()] == [("ann", "b")]
        assert store.aliases("m") == {"champion": 1}
        it = store.open_loop_iteration("loop")  # a table schema 3 added
        store.record_loop_step(it["id"], "collect", {}, {})
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store._conn.execute("DELETE FROM loop_steps")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store._conn.execute("DELETE FROM votes")
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT value FROM prefloop_meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


def test_a_migration_that_fails_leaves_the_old_store_as_it_was(tmp_path, monkeypatch):
    from prefloop import store as store_mod

    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in store_mod._split_sql(store_mod._SCHEMA + store_mod._append_only_triggers()
                                          + store_mod._MIGRATIONS[2]):
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {store_mod.PREFLOOP_APP_ID}")
    conn.execute("INSERT INTO prefloop_meta(key, value) VALUES ('program', 'prefloop'), ('schema_version', '2')")
    conn.close()
    broken = dict(store_mod._MIGRATIONS)
    broken[3] = store_mod._MIGRATIONS[3] + "\nCREATE TABLE loop_steps (id INTEGER);"  # fails half-way
    monkeypatch.setattr(store_mod, "_MIGRATIONS", broken)
    with pytest.raises(StoreError, match=f"upgrade the store from schema version 2 to {SCHEMA_VERSION}"):
        Store(path)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT value FROM prefloop_meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert "loop_iterations" not in {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
    raw.close()
    monkeypatch.undo()
    with Store(path) as store:  # the real migration then runs whole
        assert store.open_loop_iteration("loop")["number"] == 1


ODD_TEXTS = ["naïve café — 日本語 — 🙂👍🏽 — עברית — e\u0301", "nul \x00 inside", "lone \ud800 surrogate",
             "pair \ud83d\ude00 as two halves", "line\r\nbreaks\ttabs", "x" * 5_000_000]


def test_unicode_control_characters_and_very_long_texts_round_trip(tmp_path):
    from prefloop.label.export import export_command
    from prefloop.data.loader import load_pairs

    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        ids = [store.add_label_item([{"role": "user", "content": text}], text, f"other {i}", "m1", "m2")
               for i, text in enumerate(ODD_TEXTS)]
        for item in ids:
            store.add_vote(item, "annotatorin ü", "a", "ab", reason="weil 🙂 \ud800")
        store.log_interaction("c\ud800", "m", [{"role": "user", "content": "hi \ud800"}], "answer \ud800",
                              {"user": "\ud800"})
    expected = [t.replace("\ud800", "\ufffd").replace("\ud83d\ude00", "😀") for t in ODD_TEXTS]
    with Store(db) as store:
        items = store.label_items()
        assert [i["response_a"] for i in items] == expected
        assert [i["prompt"][0]["content"] for i in items] == expected
        assert {v["annotator"] for v in store.votes()} == {"annotatorin ü"}
        assert store.votes()[0]["reason"] == "weil 🙂 \ufffd"
        logged = store.interactions()[0]
        assert (logged["response"], logged["messages"][0]["content"]) == ("answer \ufffd", "hi \ufffd")
        # the same odd item loaded again is found, not added twice
        assert store.add_label_item([{"role": "user", "content": ODD_TEXTS[2]}], ODD_TEXTS[2], "other 2", "m1",
                                    "m2") == ids[2]
    assert export_command(str(db), str(tmp_path / "out.jsonl")) == 0
    pairs = load_pairs(str(tmp_path / "out.jsonl")).pairs
    assert [p.chosen for p in pairs] == expected


def test_timestamps_are_utc_whatever_the_local_zone(tmp_path, monkeypatch):
    import time
    from datetime import datetime, timedelta

    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        with Store(tmp_path / "db.sqlite") as store:
            item = _fill(store, 1)[0]
            store.add_vote(item, "ann", "a", "ab")
            vid = store.add_model_version("m", "/m")
            store.move_alias("m", "champion", "set", vid)
            stamps = [store.votes()[0]["created_at"], store.label_items()[0]["created_at"],
                      store.model_version(vid)["created_at"], store.alias_events("m")[0]["created_at"]]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    for stamp in stamps:
        when = datetime.fromisoformat(stamp)
        assert stamp.endswith("+00:00") and when.utcoffset() == timedelta(0)
        assert abs((datetime.now(when.tzinfo) - when).total_seconds()) < 600


def test_forgetting_while_another_process_reads_an_old_snapshot_says_the_wal_may_hold_the_text(tmp_path, monkeypatch):
    from prefloop import store as store_mod

    db = tmp_path / "db.sqlite"
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_MS", 300)
    with Store(db) as store:
        store.log_interaction("secret-conv", "m", [{"role": "user", "content": "my address is 1 Main St"}], "ok")
        reader = sqlite3.connect(db, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM interactions").fetchone()  # holds a snapshot from before the forget
        with pytest.raises(StoreError, match="may remain in db.sqlite-wal.*run the same forget command again"):
            store.forget_conversation("secret-conv")
        reader.execute("COMMIT")
        reader.close()
        assert store.interactions()[0]["response"] == store_mod.FORGOTTEN  # the rewrite itself was committed
        assert store.forget_conversation("secret-conv") == 1  # repeated once the reader is gone: checkpointed
    assert b"1 Main St" not in db.read_bytes()
    assert not (tmp_path / "db.sqlite-wal").exists() or b"1 Main St" not in (tmp_path / "db.sqlite-wal").read_bytes()


OPEN_AT_ONCE = textwrap.dedent("""
    import sys, time
    from prefloop.store import Store
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    with Store(sys.argv[1]) as store:
        store.log_interaction("c", "m", [], "r")
    print("ok", flush=True)
""")


def test_processes_creating_a_fresh_store_at_the_same_moment_all_succeed(tmp_path):
    """Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once (its
    busy handler is not asked) while another process opens the same fresh file: label workers, the server and the
    loop started together failed now and then. Eight processes, twice."""
    import time

    env = {**os.environ, "PYTHONPATH": SRC}
    for trial in range(2):
        db = tmp_path / f"fresh-{trial}.sqlite"
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(db), str(start)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 and out.strip() == "ok" for p, (out, _) in zip(procs, outs)), \
            [err[-400:] for _, err in outs if err]
        with Store(db) as store:
            assert len(store.interactions()) == 8
