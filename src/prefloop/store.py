"""The one SQLite store of prefloop: label items and votes, interactions and feedback, model versions.

Why SQLite (stdlib `sqlite3`) in WAL mode: many annotators, a chat server and the loop write to the
same file at once; WAL lets readers run beside one writer, `busy_timeout` makes a concurrent writer
wait instead of failing, and one transaction per write (`BEGIN IMMEDIATE ... COMMIT`, with
`synchronous=FULL`) means a write that returned is on disk: a killed process loses nothing it
acknowledged.

Nothing is overwritten: votes, feedback and model-status changes are append-only (triggers refuse
UPDATE and DELETE on them); undoing a vote adds a row to `vote_retractions`.

A database from another program is refused: the file carries `PRAGMA application_id` = PREFLOOP_APP_ID
and a `prefloop_meta` table with the schema version.

Every SQLite failure reaches the caller as a StoreError that says what happened and what to do: the
file or its folder is read-only, the disk is full, another process held the write lock past the busy
timeout, a disk I/O error, a corrupt file. A failed write is rolled back whole (nothing half-written)
and the connection stays usable. Text is stored as valid UTF-8: a lone surrogate (which JSON input can
carry, e.g. "\\ud800") becomes U+FFFD instead of failing the write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from prefloop.data.schema import TEMPLATE_FIELDS
from prefloop.errors import PrefloopError

PREFLOOP_APP_ID = 0x50464C50  # "PFLP"
SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 30_000

VERDICTS = ("a", "b", "tie", "both_bad", "skip")
SHOWN_ORDERS = ("ab", "ba")  # "ab": stored A shown on the left (as "A"); "ba": stored B shown on the left
FEEDBACK_KINDS = ("thumbs", "choice")
THUMBS_VALUES = ("up", "down")
MODEL_STATUSES = ("candidate", "promoted", "rejected", "retired")
MODEL_EVENT_KINDS = MODEL_STATUSES + ("gate",)  # "gate": a quality-gate verdict (detail holds the rule table)
ALIAS_ACTIONS = ("set", "rollback", "remove")
FORGOTTEN = "[forgotten on request]"  # the tombstone text of a forgotten conversation


class StoreError(PrefloopError):
    """The store file is not a prefloop database, is corrupt, or a write refers to a missing row."""


_SCHEMA = """
CREATE TABLE prefloop_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE label_items (
    id          INTEGER PRIMARY KEY,
    item_key    TEXT NOT NULL UNIQUE,
    prompt_json TEXT NOT NULL,
    response_a  TEXT NOT NULL,
    response_b  TEXT NOT NULL,
    source_a    TEXT,
    source_b    TEXT,
    origin      TEXT,
    created_at  TEXT NOT NULL
);
CREATE TABLE votes (
    id           INTEGER PRIMARY KEY,
    item_id      INTEGER NOT NULL REFERENCES label_items(id),
    annotator    TEXT NOT NULL,
    verdict      TEXT NOT NULL CHECK (verdict IN ('a', 'b', 'tie', 'both_bad', 'skip')),
    shown_order  TEXT NOT NULL CHECK (shown_order IN ('ab', 'ba')),
    ratings_json TEXT NOT NULL DEFAULT '{}',
    reason       TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX votes_item ON votes(item_id);
CREATE INDEX votes_annotator ON votes(annotator);
CREATE TABLE vote_retractions (
    vote_id      INTEGER PRIMARY KEY REFERENCES votes(id),
    retracted_at TEXT NOT NULL
);
CREATE TABLE interactions (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    model           TEXT NOT NULL,
    messages_json   TEXT NOT NULL,
    response        TEXT NOT NULL,
    params_json     TEXT NOT NULL DEFAULT '{}',
    usage_json      TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL
);
CREATE INDEX interactions_conversation ON interactions(conversation_id);
CREATE TABLE feedback (
    id                   INTEGER PRIMARY KEY,
    interaction_id       INTEGER NOT NULL REFERENCES interactions(id),
    kind                 TEXT NOT NULL CHECK (kind IN ('thumbs', 'choice')),
    value_json           TEXT NOT NULL,
    annotator            TEXT,
    other_interaction_id INTEGER REFERENCES interactions(id),
    created_at           TEXT NOT NULL
);
CREATE TABLE model_versions (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    path         TEXT NOT NULL,
    parent_id    INTEGER REFERENCES model_versions(id),
    metrics_json TEXT NOT NULL DEFAULT '{}',
    meta_json    TEXT NOT NULL DEFAULT '{}',
    created_at   TEXT NOT NULL
);
CREATE TABLE model_events (
    id         INTEGER PRIMARY KEY,
    version_id INTEGER NOT NULL REFERENCES model_versions(id),
    status     TEXT NOT NULL CHECK (status IN ('candidate', 'promoted', 'rejected', 'retired')),
    note       TEXT,
    created_at TEXT NOT NULL
);
"""

_APPEND_ONLY_TABLES = ("votes", "vote_retractions", "feedback", "model_events", "interactions")

# Migrations: MIGRATIONS[v] takes a store from schema v-1 to v. A new file runs the v1 schema and then
# every migration in the same transaction, so new and upgraded stores are the same by construction.
_MIGRATIONS = {
    2: """
ALTER TABLE model_versions ADD COLUMN version TEXT;
UPDATE model_versions SET version = 'v' || (SELECT COUNT(*) FROM model_versions m2
    WHERE m2.name = model_versions.name AND m2.id <= model_versions.id);
CREATE UNIQUE INDEX model_versions_name_version ON model_versions(name, version);
DROP TRIGGER model_events_no_update;
DROP TRIGGER model_events_no_delete;
CREATE TABLE model_events_v2 (
    id          INTEGER PRIMARY KEY,
    version_id  INTEGER NOT NULL REFERENCES model_versions(id),
    status      TEXT NOT NULL CHECK (status IN ('candidate', 'promoted', 'rejected', 'retired', 'gate')),
    note        TEXT,
    detail_json TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL
);
INSERT INTO model_events_v2(id, version_id, status, note, created_at)
    SELECT id, version_id, status, note, created_at FROM model_events;
DROP TABLE model_events;
ALTER TABLE model_events_v2 RENAME TO model_events;
CREATE INDEX model_events_version ON model_events(version_id);
CREATE TABLE model_aliases (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    alias      TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('set', 'rollback', 'remove')),
    version_id INTEGER REFERENCES model_versions(id),
    note       TEXT,
    forced     INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX model_aliases_name ON model_aliases(name, alias);
""" + "\n".join(
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;"
        for table in ("model_events", "model_aliases") for op in ("UPDATE", "DELETE")
    ),
    3: """
CREATE TABLE loop_iterations (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    number     INTEGER NOT NULL,
    config_json TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    UNIQUE (name, number)
);
CREATE TABLE loop_steps (
    id           INTEGER PRIMARY KEY,
    iteration_id INTEGER NOT NULL REFERENCES loop_iterations(id),
    step         TEXT NOT NULL,
    inputs_json  TEXT NOT NULL DEFAULT '{}',
    outputs_json TEXT NOT NULL DEFAULT '{}',
    created_at   TEXT NOT NULL,
    UNIQUE (iteration_id, step)
);
CREATE TABLE forget_events (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    interactions    INTEGER NOT NULL,
    detail_json     TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL
);
""" + "\n".join(
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;"
        for table in ("loop_iterations", "loop_steps", "forget_events") for op in ("UPDATE", "DELETE")
    ),
    # Which label item each annotator is looking at, until when (Unix seconds): shared by every labeling
    # process on the store, so two `prefloop label` servers do not hand out the same last slot twice.
    # Not a record (rows are replaced and deleted): a vote, not a reservation, is what counts.
    4: """
CREATE TABLE label_reservations (
    annotator TEXT PRIMARY KEY,
    item_id   INTEGER NOT NULL REFERENCES label_items(id),
    until     REAL NOT NULL
);
CREATE INDEX label_reservations_item ON label_reservations(item_id);
""",
}


def _append_only_triggers() -> str:
    parts = []
    for table in _APPEND_ONLY_TABLES:
        for op in ("UPDATE", "DELETE"):
            parts.append(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;"
            )
    return "\n".join(parts)


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` as valid Unicode for the store: lone surrogates (from JSON such as "\\ud800", which UTF-8 cannot
    encode) become U+FFFD; a surrogate pair becomes the character it encodes. Other text is returned as is."""
    if not isinstance(text, str) or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clean(value: Any) -> Any:
    """`clean_text` applied to every string in a JSON-like value (keys included)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(clean(value), ensure_ascii=False, **kwargs)


def now_iso() -> str:
    """UTC timestamp with microseconds, sortable as text."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def item_key(prompt: list[dict], response_a: str, response_b: str, source_a: str | None, source_b: str | None) -> str:
    """Stable content hash of a label item, so loading the same file twice adds no duplicates."""
    blob = json.dumps([prompt, response_a, response_b, source_a, source_b], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Store:
    """A prefloop SQLite database. Thread-safe: each thread gets its own connection.

    `Store(path)` creates the file (and its parent directory) or opens an existing prefloop store;
    anything else (another program's database, a non-SQLite file, a newer schema) raises StoreError.
    `option` is how the calling command names the store's path in its errors (default --db).
    """

    def __init__(self, path: str | os.PathLike, option: str = "--db"):
        self.path = Path(path)
        self.option = option
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._check_file()
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a folder we may not enter, a read-only filesystem
            raise StoreError(f"cannot use {self.path} as the store: {err.strerror or err} ({err.filename}); check "
                             f"that the path exists and its folder is writable, or point {option} elsewhere") from err
        self._initialize()

    # ------------------------------------------------------------------ connection handling

    def _check_file(self) -> None:
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; {self.option} needs a file path, e.g. "
                             f"{self.path / 'prefloop.sqlite'}")
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                header = fh.read(16)
            if header != b"SQLite format 3\x00":
                raise StoreError(
                    f"{self.path} is not a SQLite database (it starts with {header[:8]!r}); "
                    f"point {self.option} at a new file or an existing prefloop store"
                )

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as err:
            raise self.explain(err, "open the store") from err
        with self._lock:
            self._connections.append(conn)
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._setup_connection(conn)
            self._local.conn = conn
        return conn

    def _setup_connection(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as err:
            raise self.explain(err, "open the store") from err

    def _initialize(self) -> None:
        conn = self._conn
        try:
            mode = self._switch_to_wal(conn)
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch {self.path} to WAL mode (got {mode!r}); is it on a network filesystem?")
            with self._write("open the store") as c:
                app_id = c.execute("PRAGMA application_id").fetchone()[0]
                tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                if app_id == 0 and not tables:
                    for statement in _split_sql(_SCHEMA + _append_only_triggers()):
                        c.execute(statement)
                    c.execute(f"PRAGMA application_id = {PREFLOOP_APP_ID}")
                    c.execute("INSERT INTO prefloop_meta(key, value) VALUES ('program', 'prefloop'), "
                              "('schema_version', '1'), ('created_at', ?)", (now_iso(),))
                    self._migrate(c, 1)
                    return
            version = self._verify_existing(app_id, tables)
            if version < SCHEMA_VERSION:
                with self._write(f"upgrade the store from schema version {version} to {SCHEMA_VERSION}") as c:
                    # re-read inside the write lock: another process may have migrated
                    row = c.execute("SELECT value FROM prefloop_meta WHERE key = 'schema_version'").fetchone()
                    self._migrate(c, int(row[0]))
        except sqlite3.Error as err:
            raise self.explain(err, "open the store") from err

    @staticmethod
    def _switch_to_wal(conn: sqlite3.Connection) -> str:
        """`PRAGMA journal_mode = WAL`, retried: switching needs an exclusive lock and SQLite answers "database
        is locked" at once, without its busy handler, when other processes open or write the same fresh file at
        that moment (several label workers, the server and the loop starting together). A store already in
        WAL mode needs no switch."""
        import random
        import time

        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() == "wal":
                    return mode
                return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as err:
                busy = getattr(err, "sqlite_errorname", "").startswith("SQLITE_BUSY") or "locked" in str(err)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.01 + random.random() * 0.05)

    @staticmethod
    def _migrate(c: sqlite3.Connection, version: int) -> None:
        """Run the migrations after `version` inside the caller's transaction (all or nothing)."""
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _split_sql(_MIGRATIONS[target]):
                c.execute(statement)
            c.execute("UPDATE prefloop_meta SET value = ? WHERE key = 'schema_version'", (str(target),))
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _verify_existing(self, app_id: int, tables: list[str]) -> int:
        if app_id != PREFLOOP_APP_ID or "prefloop_meta" not in tables:
            shown = ", ".join(sorted(tables)[:6]) or "none"
            raise StoreError(
                f"{self.path} is a SQLite database from another program (application_id={app_id:#x}, "
                f"tables: {shown}); prefloop will not write into it. Use a new file for {self.option}."
            )
        row = self._conn.execute("SELECT value FROM prefloop_meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema version {version}, newer than this prefloop understands "
                f"({SCHEMA_VERSION}); upgrade prefloop"
            )
        if version < 1:
            raise StoreError(f"{self.path} has no valid prefloop schema version; it may be damaged")
        return version

    def explain(self, err: BaseException, doing: str) -> "StoreError":
        """A StoreError for a failed SQLite call while `doing` (e.g. "write a vote"), saying what went wrong
        and what to do. `err` is an sqlite3 error (or the UnicodeError of text SQLite cannot store)."""
        code = getattr(err, "sqlite_errorname", "") or ""
        text = str(err)
        low = text.lower()
        wal = f"{self.path.name}-wal and {self.path.name}-shm"
        if code.startswith("SQLITE_READONLY") or "readonly database" in low or "read-only" in low:
            msg = (f"{self.path} is read-only (file or folder permissions, or a read-only filesystem), so prefloop "
                   f"cannot {doing}; nothing was written. Make the file and its folder writable (SQLite also "
                   f"creates {wal} next to it), or point {self.option} at a writable copy")
        elif code.startswith("SQLITE_FULL") or "disk is full" in low:
            msg = (f"the disk holding {self.path} is full, so prefloop could not {doing}; nothing was written "
                   "(the store is unchanged). Free some space and run the command again")
        elif code.startswith("SQLITE_BUSY") or "database is locked" in low or "database is busy" in low:
            msg = (f"{self.path} stayed locked by another process for more than {BUSY_TIMEOUT_MS // 1000} s, so "
                   f"prefloop could not {doing}; nothing was written. Another program (or a stuck prefloop "
                   "command) holds a long write transaction on it: finish or stop it and try again")
        elif code.startswith("SQLITE_CANTOPEN") or "unable to open" in low:
            msg = (f"cannot open {self.path} to {doing}: its folder {self.path.parent} must exist and be writable "
                   f"(SQLite creates {wal} there); check the path and its permissions")
        elif code.startswith("SQLITE_IOERR") or "disk i/o error" in low:
            msg = (f"a disk I/O error on {self.path} while trying to {doing} ({text}); nothing was written. Check "
                   "the disk (dmesg) and that the store is on a local filesystem, not NFS")
        elif code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in low or "not a database" in low:
            msg = (f"{self.path} is corrupt or not a SQLite database ({text}); restore it from a backup or point "
                   f"{self.option} at a new file")
        elif isinstance(err, UnicodeError):
            msg = f"cannot {doing} in {self.path}: the text is not valid Unicode ({err})"
        else:
            msg = f"cannot {doing} in {self.path}: {text}"
        out = StoreError(msg)
        out.sqlite_error = code or type(err).__name__
        return out

    class _Tx:
        """BEGIN IMMEDIATE ... COMMIT; on any failure the transaction is rolled back whole and the connection is
        left usable (a COMMIT that fails, e.g. on a full disk, is rolled back too). SQLite failures other than
        a constraint (which callers catch as sqlite3.IntegrityError) are raised as an explained StoreError."""

        def __init__(self, store: "Store", doing: str):
            self.store, self.doing = store, doing
            self.conn = store._conn

        def _rollback(self) -> None:
            try:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite may have rolled back itself (e.g. after SQLITE_FULL)
                pass

        def __enter__(self) -> sqlite3.Connection:
            if self.conn.in_transaction:  # a write inside another write of this thread: leave the outer one alone
                raise StoreError(f"cannot {self.doing} inside another write transaction on {self.store.path} "
                                 "(a bug in the caller)")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                self._rollback()
                raise self.store.explain(err, self.doing) from err
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> bool:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.Error as err:
                    self._rollback()
                    raise self.store.explain(err, self.doing) from err
                return False
            self._rollback()
            if isinstance(exc, (sqlite3.OperationalError, UnicodeError)) or (
                    isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError)):
                raise self.store.explain(exc, self.doing) from exc
            return False

    def _write(self, doing: str = "write to the store") -> "Store._Tx":
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front (waits up to busy_timeout)."""
        return Store._Tx(self, doing)

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as err:
            raise self.explain(err, "read the store") from err

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        with self._lock:
            conns, self._connections = self._connections, []
            self._closed = True
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # opened in a thread that is gone; sqlite allows it with check_same_thread=False
                pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ label items and votes

    def add_label_item(self, prompt: list[dict], response_a: str, response_b: str, source_a: str | None = None,
                       source_b: str | None = None, origin: str | None = None) -> int:
        """Add a comparison item (or find the identical one already stored); returns its id."""
        # role and content, plus the fields a chat template renders (tool calls, tool-result ids, names,
        # reasoning) when a turn has them, so `export` gives back the conversation the model was shown
        prompt = clean([{"role": str(m["role"]), "content": str(m["content"] or ""),
                         **{k: m[k] for k in TEMPLATE_FIELDS if m.get(k) not in (None, "", [])}} for m in prompt])
        response_a, response_b, source_a, source_b, origin = (clean_text(x) for x in (response_a, response_b, source_a,
                                                                                      source_b, origin))
        key = item_key(prompt, response_a, response_b, source_a, source_b)
        with self._write("add a label item") as c:
            row = c.execute("SELECT id FROM label_items WHERE item_key = ?", (key,)).fetchone()
            if row:
                return int(row[0])
            cur = c.execute(
                "INSERT INTO label_items(item_key, prompt_json, response_a, response_b, source_a, source_b, origin, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, _dumps(prompt), response_a, response_b, source_a, source_b, origin,
                 now_iso()),
            )
            return int(cur.lastrowid)

    def label_items(self, after_id: int = 0) -> list[dict]:
        """Label items (those with an id above `after_id`), oldest first."""
        rows = self._query("SELECT * FROM label_items WHERE id > ? ORDER BY id", (int(after_id),))
        return [_item_dict(r) for r in rows]

    def unlabelable_item_ids(self) -> set[int]:
        """Items nobody can judge: forgotten on request (tombstoned) or with the same text on both sides."""
        rows = self._query("SELECT id FROM label_items WHERE response_a = response_b OR response_a = ? "
                           "OR response_b = ?", (FORGOTTEN, FORGOTTEN))
        return {int(r[0]) for r in rows}

    def label_item_ids(self) -> list[int]:
        return [int(r[0]) for r in self._query("SELECT id FROM label_items ORDER BY id")]

    def label_item(self, item_id: int) -> dict:
        rows = self._query("SELECT * FROM label_items WHERE id = ?", (item_id,))
        if not rows:
            raise StoreError(f"no label item with id {item_id} in {self.path}")
        return _item_dict(rows[0])

    def add_vote(self, item_id: int, annotator: str, verdict: str, shown_order: str,
                 ratings: dict | None = None, reason: str | None = None) -> int:
        """Append one vote (verdict relative to the STORED a/b); committed to disk when this returns.

        One annotator has one vote per item that counts: their latest active one (an earlier one is
        `superseded`, kept in the table, and comes back if the later one is undone). The same vote sent
        again while it is the annotator's current vote on the item (a double click, a retried request)
        is not stored twice: its id is returned."""
        if verdict not in VERDICTS:
            raise StoreError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if shown_order not in SHOWN_ORDERS:
            raise StoreError(f"shown_order {shown_order!r} is not one of {', '.join(SHOWN_ORDERS)}")
        annotator = clean_text(str(annotator or "")).strip()
        if not annotator:
            raise StoreError("a vote needs an annotator id")
        ratings_json, reason = _dumps(ratings or {}, sort_keys=True), clean_text(reason) or None
        with self._write("save a vote") as c:
            if not c.execute("SELECT 1 FROM label_items WHERE id = ?", (item_id,)).fetchone():
                raise StoreError(f"no label item with id {item_id} in {self.path}")
            current = c.execute(
                "SELECT v.id, v.verdict, v.shown_order, v.ratings_json, v.reason FROM votes v LEFT JOIN "
                "vote_retractions r ON r.vote_id = v.id WHERE v.item_id = ? AND v.annotator = ? AND r.vote_id IS NULL "
                "ORDER BY v.id DESC LIMIT 1", (item_id, annotator)).fetchone()
            if current is not None and tuple(current)[1:] == (verdict, shown_order, ratings_json, reason):
                return int(current[0])  # the same vote again: counted once
            cur = c.execute(
                "INSERT INTO votes(item_id, annotator, verdict, shown_order, ratings_json, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item_id, annotator, verdict, shown_order, ratings_json, reason, now_iso()),
            )
            return int(cur.lastrowid)

    def retract_last_vote(self, annotator: str) -> int | None:
        """Undo: mark the annotator's latest active vote retracted; returns its id (None if nothing to undo).
        A vote it had superseded on the same item counts again."""
        with self._write("undo a vote") as c:
            row = c.execute(
                "SELECT v.id FROM votes v LEFT JOIN vote_retractions r ON r.vote_id = v.id "
                "WHERE v.annotator = ? AND r.vote_id IS NULL ORDER BY v.id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if row is None:
                return None
            c.execute("INSERT INTO vote_retractions(vote_id, retracted_at) VALUES (?, ?)", (row[0], now_iso()))
            return int(row[0])

    # A vote counts when it is not retracted and no later unretracted vote of the same annotator on the same
    # item exists (the annotator's current vote on the item).
    _CURRENT_VOTES = ("SELECT MAX(v2.id) FROM votes v2 LEFT JOIN vote_retractions r2 ON r2.vote_id = v2.id "
                      "WHERE r2.vote_id IS NULL GROUP BY v2.item_id, v2.annotator")

    def votes(self, include_retracted: bool = True, vote_id: int | None = None) -> list[dict]:
        """Every vote row (or just `vote_id`) joined with its item; `retracted` tells undone ones apart and
        `superseded` those replaced by a later vote of the same annotator on the same item. Without
        `include_retracted`, only the votes that count: neither retracted nor superseded."""
        conditions = [] if include_retracted else ["r.vote_id IS NULL", f"v.id IN ({self._CURRENT_VOTES})"]
        params: tuple = ()
        if vote_id is not None:
            conditions.append("v.id = ?")
            params = (vote_id,)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        rows = self._query(
            "SELECT v.id AS vote_id, v.item_id, v.annotator, v.verdict, v.shown_order, v.ratings_json, v.reason, "
            "v.created_at, r.retracted_at, i.prompt_json, i.response_a, i.response_b, i.source_a, i.source_b, "
            f"i.origin, (r.vote_id IS NULL AND v.id NOT IN ({self._CURRENT_VOTES})) AS superseded "
            "FROM votes v JOIN label_items i ON i.id = v.item_id "
            f"LEFT JOIN vote_retractions r ON r.vote_id = v.id {where} ORDER BY v.id", params
        )
        return [_vote_dict(r) for r in rows]

    def active_votes(self) -> list[dict]:
        """The votes that count: each annotator's current (latest, not undone) vote per item, with its item;
        verdicts relative to the stored a/b (see `shown_order`)."""
        return self.votes(include_retracted=False)

    def annotator_item_ids(self, annotator: str) -> set[int]:
        """Items this annotator holds an active vote on (skips included)."""
        rows = self._query(
            "SELECT DISTINCT v.item_id FROM votes v LEFT JOIN vote_retractions r ON r.vote_id = v.id "
            "WHERE v.annotator = ? AND r.vote_id IS NULL",
            (annotator,),
        )
        return {int(r[0]) for r in rows}

    def _completed_counts_sql(self) -> str:
        return ("SELECT v.item_id, COUNT(DISTINCT v.annotator) FROM votes v "
                f"WHERE v.id IN ({self._CURRENT_VOTES}) AND v.verdict != 'skip' GROUP BY v.item_id")

    def completed_counts(self) -> dict[int, int]:
        """item id -> number of annotators whose current vote on it is a judgment (not a skip)."""
        return {int(r[0]): int(r[1]) for r in self._query(self._completed_counts_sql())}

    # ------------------------------------------------------------------ label reservations

    def claim_label_item(self, annotator: str, candidates: list[int], overlap: int, seconds: float,
                         now: float) -> int | None:
        """Reserve for `annotator` the first open item of `candidates` and return its id (None: none is open).

        All in one write transaction, so labeling processes sharing this store never hand the same last
        slot to two people. An item is open when its judgments (`completed_counts`, read inside the
        transaction) plus the unexpired reservations of *other* annotators are fewer than `overlap`.
        Among open items, the one with most judgments wins (items complete instead of all staying
        half-done), then the earlier in `candidates` (the caller's order). The reservation lasts until
        `now + seconds` (`now`: Unix seconds) and replaces any other reservation of `annotator`.
        """
        with self._write("reserve a label item") as c:
            done = {int(r[0]): int(r[1]) for r in c.execute(self._completed_counts_sql())}
            held: dict[int, int] = {}
            for item_id, n in c.execute("SELECT item_id, COUNT(*) FROM label_reservations WHERE annotator != ? "
                                        "AND until > ? GROUP BY item_id", (annotator, now)):
                held[int(item_id)] = int(n)
            open_items = [(-done.get(i, 0), pos, i) for pos, i in enumerate(candidates)
                          if done.get(i, 0) + held.get(i, 0) < overlap]
            if not open_items:
                c.execute("DELETE FROM label_reservations WHERE annotator = ?", (annotator,))
                return None
            item_id = min(open_items)[2]
            c.execute("INSERT OR REPLACE INTO label_reservations(annotator, item_id, until) VALUES (?, ?, ?)",
                      (annotator, item_id, now + seconds))
            return item_id

    def reserve_label_item(self, annotator: str, item_id: int, seconds: float, now: float) -> None:
        """Hold `item_id` for `annotator` until `now + seconds` (Unix seconds), replacing their other hold."""
        with self._write("reserve a label item") as c:
            c.execute("INSERT OR REPLACE INTO label_reservations(annotator, item_id, until) VALUES (?, ?, ?)",
                      (annotator, int(item_id), now + seconds))

    def release_label_item(self, annotator: str) -> None:
        """Drop `annotator`'s reservation (after their vote, or when they leave)."""
        with self._write("release a label item") as c:
            c.execute("DELETE FROM label_reservations WHERE annotator = ?", (annotator,))

    def label_reservations(self, now: float) -> dict[int, list[str]]:
        """item id -> annotators holding an unexpired reservation on it at `now` (Unix seconds)."""
        held: dict[int, list[str]] = {}
        for item_id, who in self._query("SELECT item_id, annotator FROM label_reservations WHERE until > ? "
                                        "ORDER BY item_id, annotator", (now,)):
            held.setdefault(int(item_id), []).append(str(who))
        return held

    # ------------------------------------------------------------------ interactions and feedback

    def log_interaction(self, conversation_id: str, model: str, messages: list[dict], response: str,
                        params: dict | None = None, usage: dict | None = None) -> int:
        """Record one served chat request and its response; returns the interaction id."""
        conversation_id, model, response = clean_text(str(conversation_id)), clean_text(str(model)), clean_text(response)
        with self._write("log an interaction") as c:
            cur = c.execute(
                "INSERT INTO interactions(conversation_id, model, messages_json, response, params_json, usage_json, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(conversation_id), str(model), _dumps(messages), response,
                 _dumps(params or {}, default=str),
                 _dumps(usage or {}, default=str), now_iso()),
            )
            return int(cur.lastrowid)

    def add_feedback(self, interaction_id: int, kind: str, value: Any, annotator: str | None = None,
                     other_interaction_id: int | None = None) -> int:
        """Feedback on a served response: kind "thumbs" (value "up"/"down") or "choice" between two interactions.

        For "choice", `value` names the preferred one: "this"/"other" or one of the two interaction ids.
        """
        if kind not in FEEDBACK_KINDS:
            raise StoreError(f"feedback kind {kind!r} is not one of {', '.join(FEEDBACK_KINDS)}")
        if kind == "thumbs" and value not in THUMBS_VALUES:
            raise StoreError(f"thumbs feedback must be 'up' or 'down', got {value!r}")
        if kind == "choice":
            if other_interaction_id is None:
                raise StoreError("choice feedback needs other_interaction_id (the interaction it was compared with)")
            if other_interaction_id == interaction_id:
                raise StoreError(f"choice feedback compares two different interactions; both ids are {interaction_id}")
            allowed = ("this", "other", interaction_id, other_interaction_id,
                       str(interaction_id), str(other_interaction_id))
            if isinstance(value, bool) or value not in allowed:
                raise StoreError(f"choice feedback value must be 'this', 'other', {interaction_id} or "
                                 f"{other_interaction_id}, got {value!r}")
        with self._write("save feedback") as c:
            for iid in (interaction_id, other_interaction_id):
                if iid is not None and not c.execute("SELECT 1 FROM interactions WHERE id = ?", (iid,)).fetchone():
                    raise StoreError(f"no interaction with id {iid} in {self.path}")
            cur = c.execute(
                "INSERT INTO feedback(interaction_id, kind, value_json, annotator, other_interaction_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (interaction_id, kind, _dumps(value), clean_text(annotator), other_interaction_id, now_iso()),
            )
            return int(cur.lastrowid)

    def interactions(self, limit: int | None = None) -> list[dict]:
        """Logged interactions, oldest first (the latest `limit` if given)."""
        if limit is not None:
            rows = self._query("SELECT * FROM (SELECT * FROM interactions ORDER BY id DESC LIMIT ?) ORDER BY id",
                               (int(limit),))
        else:
            rows = self._query("SELECT * FROM interactions ORDER BY id")
        return [_interaction_dict(r) for r in rows]

    def interaction_log_summary(self, after_interaction: int = 0, after_feedback: int = 0) -> dict:
        """The newest interaction and feedback ids, and what came after the given ids: {"to_interaction_id",
        "to_feedback_id", "interactions", "feedback", "interactions_by_model"} (what the loop's collect step
        records)."""
        to_i = int(self._query("SELECT COALESCE(MAX(id), 0) FROM interactions")[0][0])
        to_f = int(self._query("SELECT COALESCE(MAX(id), 0) FROM feedback")[0][0])
        to_i, to_f = max(to_i, after_interaction), max(to_f, after_feedback)
        by_model = {r[0]: r[1] for r in self._query(
            "SELECT model, COUNT(*) FROM interactions WHERE id > ? AND id <= ? GROUP BY model ORDER BY model",
            (after_interaction, to_i))}
        n_f = int(self._query("SELECT COUNT(*) FROM feedback WHERE id > ? AND id <= ?", (after_feedback, to_f))[0][0])
        return {"to_interaction_id": to_i, "to_feedback_id": to_f, "interactions": sum(by_model.values()),
                "feedback": n_f, "interactions_by_model": by_model}

    def interaction(self, interaction_id: int) -> dict:
        rows = self._query("SELECT * FROM interactions WHERE id = ?", (interaction_id,))
        if not rows:
            raise StoreError(f"no interaction with id {interaction_id} in {self.path}")
        return _interaction_dict(rows[0])

    def feedback(self) -> list[dict]:
        rows = self._query("SELECT * FROM feedback ORDER BY id")
        return [
            {"id": r["id"], "interaction_id": r["interaction_id"], "kind": r["kind"],
             "value": json.loads(r["value_json"]), "annotator": r["annotator"],
             "other_interaction_id": r["other_interaction_id"], "created_at": r["created_at"]}
            for r in rows
        ]

    # ------------------------------------------------------------------ model versions (registry)

    def add_model_version(self, name: str, path: str, parent_id: int | None = None, metrics: dict | None = None,
                          meta: dict | None = None, status: str = "candidate", version: str | None = None,
                          alias: str | None = None, alias_note: str | None = None) -> int:
        """Register a model version with its lineage (parent) and metrics; its first status event is `status`.

        `version` is the tag within `name` (the user's own, unique per name); None numbers it v1, v2, ...
        (one more than the highest vN of that name; versions are never deleted, so a number is never given
        twice), chosen inside the transaction so concurrent registrations never get the same tag. `alias`
        (e.g. "candidate") is pointed at the new version in the same transaction: a crash leaves neither
        or both. Raises StoreError for a taken tag or a missing parent."""
        if status not in MODEL_STATUSES:
            raise StoreError(f"model status {status!r} is not one of {', '.join(MODEL_STATUSES)}")
        with self._write("register a model version") as c:
            if parent_id is not None and not c.execute("SELECT 1 FROM model_versions WHERE id = ?",
                                                       (parent_id,)).fetchone():
                raise StoreError(f"no model version with id {parent_id} in {self.path}")
            tags = [r[0] for r in c.execute("SELECT version FROM model_versions WHERE name = ?", (name,))]
            if version is None:
                numbers = [int(t[1:]) for t in tags if t and t[0] == "v" and t[1:].isdigit()]
                version = f"v{max(numbers, default=0) + 1}"
            elif version in tags:
                raise StoreError(f"{name}:{version} is already registered in {self.path}; pick another tag "
                                 "(or leave it out to get the next vN)")
            created = now_iso()
            cur = c.execute(
                "INSERT INTO model_versions(name, version, path, parent_id, metrics_json, meta_json, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, version, str(path), parent_id, _dumps(metrics or {}, default=str),
                 _dumps(meta or {}, default=str), created),
            )
            version_id = int(cur.lastrowid)
            c.execute("INSERT INTO model_events(version_id, status, note, created_at) VALUES (?, ?, ?, ?)",
                      (version_id, status, None, created))
            if alias is not None:
                self._move_alias_in(c, name, alias, "set", version_id, alias_note, False, False)
            return version_id

    def set_model_status(self, version_id: int, status: str, note: str | None = None,
                         detail: dict | None = None) -> int:
        """Append an event to a version: a status (promote, reject, retire) or a "gate" verdict with its
        `detail`; the latest status event is the version's status. Returns the event id."""
        if status not in MODEL_EVENT_KINDS:
            raise StoreError(f"model event {status!r} is not one of {', '.join(MODEL_EVENT_KINDS)}")
        with self._write("record a model event") as c:
            if not c.execute("SELECT 1 FROM model_versions WHERE id = ?", (version_id,)).fetchone():
                raise StoreError(f"no model version with id {version_id} in {self.path}")
            return self._add_event(c, version_id, status, note, detail)

    @staticmethod
    def _add_event(c: sqlite3.Connection, version_id: int, status: str, note: str | None, detail: dict | None,
                   created: str | None = None) -> int:
        cur = c.execute("INSERT INTO model_events(version_id, status, note, detail_json, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (version_id, status, note, _dumps(detail or {}, default=str), created or now_iso()))
        return int(cur.lastrowid)

    def model_versions(self, name: str | None = None, until: str | None = None) -> list[dict]:
        """Versions (of `name`, or all), oldest first, each with its current status (latest status event,
        as of `until` when given: an ISO-8601 UTC time as `now_iso` writes it) and lineage."""
        where, params = ["m.created_at <= ?" if until else "1"], [until] if until else []
        if name is not None:
            where.append("m.name = ?")
            params.append(name)
        status_until = "AND e.created_at <= ?" if until else ""
        rows = self._query(
            "SELECT m.*, (SELECT e.status FROM model_events e WHERE e.version_id = m.id AND e.status != 'gate' "
            f"{status_until} ORDER BY e.id DESC LIMIT 1) AS status FROM model_versions m "
            f"WHERE {' AND '.join(where)} ORDER BY m.id", ([until] if until else []) + params
        )
        return [_version_dict(r) for r in rows]

    def model_version(self, version_id: int) -> dict:
        """One version by id (as `model_versions` gives them); StoreError if there is none."""
        rows = self._query(
            "SELECT m.*, (SELECT e.status FROM model_events e WHERE e.version_id = m.id AND e.status != 'gate' "
            "ORDER BY e.id DESC LIMIT 1) AS status FROM model_versions m WHERE m.id = ?", (version_id,))
        if not rows:
            raise StoreError(f"no model version with id {version_id} in {self.path}")
        return _version_dict(rows[0])

    def model_names(self) -> list[str]:
        """Every registered model name, sorted."""
        return [r[0] for r in self._query("SELECT DISTINCT name FROM model_versions ORDER BY name")]

    def model_events(self, version_id: int | None = None) -> list[dict]:
        """Status and gate events (of one version or all), oldest first; `detail` is the decoded detail_json."""
        sql, params = "SELECT * FROM model_events", ()
        if version_id is not None:
            sql, params = sql + " WHERE version_id = ?", (version_id,)
        return [{**dict(r), "detail": json.loads(r["detail_json"])} for r in self._query(sql + " ORDER BY id", params)]

    def promoted_model(self) -> dict | None:
        """The most recently promoted version that is still promoted, or None."""
        promoted = [v for v in self.model_versions() if v["status"] == "promoted"]
        if not promoted:
            return None
        last_event = {e["version_id"]: e["id"] for e in self.model_events() if e["status"] == "promoted"}
        return max(promoted, key=lambda v: last_event[v["id"]])

    # ------------------------------------------------------------------ aliases (append-only pointer moves)

    def alias_events(self, name: str, alias: str | None = None, until: str | None = None) -> list[dict]:
        """Alias moves of model `name` (one alias or all), oldest first, up to `until` (ISO-8601 UTC)."""
        sql, params = "SELECT * FROM model_aliases WHERE name = ?", [name]
        if alias is not None:
            sql, params = sql + " AND alias = ?", params + [alias]
        if until is not None:
            sql, params = sql + " AND created_at <= ?", params + [until]
        rows = self._query(sql + " ORDER BY id", params)
        return [{**dict(r), "forced": bool(r["forced"])} for r in rows]

    def aliases(self, name: str, until: str | None = None) -> dict[str, int]:
        """alias -> version id of model `name` now (or as of `until`); removed aliases are left out."""
        by_alias: dict[str, list[dict]] = {}
        for event in self.alias_events(name, until=until):
            by_alias.setdefault(event["alias"], []).append(event)
        state = {alias: alias_stack(events) for alias, events in by_alias.items()}
        return {alias: stack[-1] for alias, stack in state.items() if stack}

    def move_alias(self, name: str, alias: str, action: str, version_id: int | None = None, note: str | None = None,
                   forced: bool = False, expect_version_id: int | None | bool = False) -> dict:
        """Append one alias move in one transaction and return {"version_id", "previous_id", "event_id"}.

        action "set" points `alias` at `version_id`; "rollback" moves it back to where it pointed before
        the move that is current (a stack: promote v2, promote v3, rollback -> v2, rollback -> v1);
        "remove" clears it. `expect_version_id` (when not False) is where the caller saw the alias: if
        another process moved it meanwhile, StoreError says so and nothing is written. For the alias
        "champion" the versions also get status events (new: promoted; old: retired, or rejected on a
        rollback), in the same transaction.
        """
        with self._write("move an alias") as c:
            return self._move_alias_in(c, name, alias, action, version_id, note, forced, expect_version_id)

    def _move_alias_in(self, c: sqlite3.Connection, name: str, alias: str, action: str, version_id: int | None,
                       note: str | None, forced: bool, expect_version_id: int | None | bool) -> dict:
        """`move_alias` inside the caller's write transaction."""
        if action not in ALIAS_ACTIONS:
            raise StoreError(f"alias action {action!r} is not one of {', '.join(ALIAS_ACTIONS)}")
        rows = c.execute("SELECT * FROM model_aliases WHERE name = ? AND alias = ? ORDER BY id",
                         (name, alias)).fetchall()
        stack = alias_stack([dict(r) for r in rows])
        current = stack[-1] if stack else None
        if expect_version_id is not False and expect_version_id != current:
            raise StoreError(f"{name}@{alias} moved while this command ran (another process changed it to "
                             f"version id {current}); nothing was written: look with `prefloop models list "
                             f"--name {name}` and run the command again")
        if action == "set":
            row = c.execute("SELECT name FROM model_versions WHERE id = ?", (version_id,)).fetchone()
            if row is None or row[0] != name:
                raise StoreError(f"no version with id {version_id} under the name {name!r} in {self.path}")
            if version_id == current:
                raise StoreError(f"{name}@{alias} already points to that version; nothing to do")
            target = version_id
        elif action == "rollback":
            if len(stack) < 2:
                raise StoreError(f"{name}@{alias} has no previous version to roll back to "
                                 f"({'it was never set' if not stack else 'it was set only once'})")
            target = stack[-2]
        else:
            if current is None:
                raise StoreError(f"{name}@{alias} is not set; nothing to remove")
            target = None
        created = now_iso()
        cur = c.execute("INSERT INTO model_aliases(name, alias, action, version_id, note, forced, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (name, alias, action, target, note, int(forced), created))
        if alias == "champion":
            if current is not None:
                self._add_event(c, current, "rejected" if action == "rollback" else "retired",
                                f"{action}: {alias} moved away", None, created)
            if target is not None:
                self._add_event(c, target, "promoted", f"{action}: {alias}" + (" (forced)" if forced else ""),
                                {"forced": forced} if forced else None, created)
        return {"version_id": target, "previous_id": current, "event_id": int(cur.lastrowid)}

    # ------------------------------------------------------------------ online loop (iterations and steps)

    def open_loop_iteration(self, name: str, config: dict | None = None) -> dict:
        """The open (unfinished) iteration of loop `name`, or a new one numbered one past the last.

        An iteration is finished when its "promote" step is recorded. One transaction, so two loop
        processes never open two iterations at once. Returns {"id", "name", "number", "created_at"}."""
        with self._write("open a loop iteration") as c:
            row = c.execute("SELECT * FROM loop_iterations WHERE name = ? ORDER BY number DESC LIMIT 1",
                            (name,)).fetchone()
            if row is not None and not c.execute("SELECT 1 FROM loop_steps WHERE iteration_id = ? AND step = "
                                                 "'promote'", (row["id"],)).fetchone():
                return _loop_iteration_dict(row)
            number = (row["number"] if row else 0) + 1
            created = now_iso()
            cur = c.execute("INSERT INTO loop_iterations(name, number, config_json, created_at) VALUES (?, ?, ?, ?)",
                            (name, number, _dumps(config or {}, default=str), created))
            return {"id": int(cur.lastrowid), "name": name, "number": number, "created_at": created}

    def loop_iterations(self, name: str) -> list[dict]:
        """Every iteration of loop `name`, oldest first, each with its recorded steps (step -> record)."""
        rows = self._query("SELECT * FROM loop_iterations WHERE name = ? ORDER BY number", (name,))
        return [{**_loop_iteration_dict(r), "steps": self.loop_steps(r["id"])} for r in rows]

    def loop_steps(self, iteration_id: int) -> dict[str, dict]:
        """step -> {"inputs", "outputs", "created_at"} of the steps recorded as done in an iteration."""
        rows = self._query("SELECT * FROM loop_steps WHERE iteration_id = ? ORDER BY id", (iteration_id,))
        return {r["step"]: {"inputs": json.loads(r["inputs_json"]), "outputs": json.loads(r["outputs_json"]),
                            "created_at": r["created_at"]} for r in rows}

    def record_loop_step(self, iteration_id: int, step: str, inputs: dict, outputs: dict) -> None:
        """Record `step` of an iteration as done with its inputs and outputs (once: a second record of the same
        step raises StoreError, so a step can never be counted twice)."""
        try:
            with self._write("record a loop step") as c:
                c.execute("INSERT INTO loop_steps(iteration_id, step, inputs_json, outputs_json, created_at) "
                          "VALUES (?, ?, ?, ?, ?)", (iteration_id, step, _dumps(inputs, default=str),
                                                     _dumps(outputs, default=str), now_iso()))
        except sqlite3.IntegrityError as err:
            raise StoreError(f"loop step {step!r} of iteration id {iteration_id} is already recorded") from err

    def import_interactions(self, key: str, conversation_id: str, model: str, messages: list[dict],
                            responses: list[str], params: dict, usage: dict,
                            feedback: list[tuple[str, int, Any, int | None]]) -> list[int] | None:
        """Log one imported chat completion (one interaction per choice) and its feedback in one transaction.

        `key` identifies the completion (e.g. its `chatcmpl-...` id); it is kept in params_json as
        "import_key", and a completion whose key is already in the store is not logged again (returns None).
        `feedback` holds (kind, choice index, value, other choice index or None); a choice feedback's value is
        the index of the preferred choice. Returns the new interaction ids."""
        with self._write("import interactions") as c:
            if c.execute("SELECT 1 FROM interactions WHERE json_extract(params_json, '$.import_key') = ? LIMIT 1",
                         (key,)).fetchone():
                return None
            created, ids = now_iso(), []
            conversation_id, model = clean_text(str(conversation_id)), clean_text(str(model))
            for text in map(clean_text, responses):
                cur = c.execute(
                    "INSERT INTO interactions(conversation_id, model, messages_json, response, params_json, "
                    "usage_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (str(conversation_id), str(model), _dumps(messages), text,
                     _dumps({**params, "import_key": key}, default=str),
                     _dumps(usage, default=str), created))
                ids.append(int(cur.lastrowid))
            for kind, index, value, other in feedback:
                other_id = ids[other] if other is not None else None
                stored = ids[value] if kind == "choice" else value
                c.execute("INSERT INTO feedback(interaction_id, kind, value_json, annotator, other_interaction_id, "
                          "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                          (ids[index], kind, _dumps(stored), None, other_id, created))
            return ids

    # ------------------------------------------------------------------ forgetting a conversation (privacy)

    def forget_conversation(self, conversation_id: str, detail: dict | None = None,
                            label_item_ids: Iterable[int] = ()) -> int:
        """Replace the text of every interaction of `conversation_id` (and of the label items `label_item_ids`)
        with the tombstone FORGOTTEN and record a `forget_events` row, in one transaction; returns the number
        of interactions changed.

        Interactions are append-only, so this is the one sanctioned rewrite: the update trigger is dropped and
        re-created inside the same transaction (all or nothing), and `secure_delete` overwrites the freed
        pages so the old text does not linger in the file."""
        self._conn.execute("PRAGMA secure_delete = ON")
        tombstone = json.dumps([{"role": "user", "content": FORGOTTEN}])
        with self._write("forget a conversation") as c:
            c.execute("DROP TRIGGER interactions_no_update")
            cur = c.execute("UPDATE interactions SET messages_json = ?, response = ?, params_json = '{}' "
                            "WHERE conversation_id = ?", (tombstone, FORGOTTEN, str(conversation_id)))
            for item_id in label_item_ids:  # label items made from its text (the loop's human modes)
                c.execute("UPDATE label_items SET prompt_json = ?, response_a = ?, response_b = ? WHERE id = ?",
                          (tombstone, FORGOTTEN, FORGOTTEN, int(item_id)))
            c.execute("CREATE TRIGGER interactions_no_update BEFORE UPDATE ON interactions "
                      "BEGIN SELECT RAISE(ABORT, 'interactions is append-only'); END;")
            c.execute("INSERT INTO forget_events(conversation_id, interactions, detail_json, created_at) "
                      "VALUES (?, ?, ?, ?)", (str(conversation_id), cur.rowcount, _dumps(detail or {}), now_iso()))
        # the WAL held the old pages too: copy it into the file and empty it. TRUNCATE waits (busy_timeout) for
        # readers of older snapshots; if one stays, the old text may still be in the WAL: say so, never pretend
        busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            raise StoreError(f"conversation {conversation_id} is forgotten in {self.path}, but another process kept "
                             f"reading an older state of the store, so its old text may remain in "
                             f"{self.path.name}-wal until the next checkpoint; run the same forget command again "
                             "when that process is done (it is safe to repeat)")
        return cur.rowcount

    def forgotten_conversations(self) -> set[str]:
        """Conversation ids that were forgotten (their interactions hold the tombstone)."""
        return {r[0] for r in self._query("SELECT DISTINCT conversation_id FROM forget_events")}

    def forget_events(self) -> list[dict]:
        return [{**dict(r), "detail": json.loads(r["detail_json"])}
                for r in self._query("SELECT * FROM forget_events ORDER BY id")]

    # ------------------------------------------------------------------ integrity

    def integrity_check(self) -> str:
        """SQLite's own `PRAGMA integrity_check` ('ok' when the file is consistent)."""
        return str(self._query("PRAGMA integrity_check")[0][0])


def _split_sql(script: str) -> list[str]:
    """Split a schema script into statements (trigger bodies keep their inner ';')."""
    statements, current = [], []
    for line in script.splitlines():
        if not line.strip():
            continue
        current.append(line)
        text = "\n".join(current)
        if sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    if current:
        raise ValueError("incomplete SQL statement in schema: " + "\n".join(current))
    return statements


def preferred_interaction(feedback: dict) -> int:
    """The interaction id a "choice" feedback row (as `Store.feedback()` gives it) prefers. Its value may be
    "this", "other", or either interaction id as a number or as text ("12" is interaction 12, not "other")."""
    value, this, other = feedback["value"], feedback["interaction_id"], feedback["other_interaction_id"]
    if value == "this" or (not isinstance(value, bool) and str(value) == str(this)):
        return int(this)
    if value == "other" or (not isinstance(value, bool) and str(value) == str(other)):
        return int(other)
    raise StoreError(f"feedback {feedback.get('id')}: choice value {value!r} names neither interaction {this} "
                     f"nor {other}")


def alias_stack(events: list[dict]) -> list[int]:
    """Replay alias moves (oldest first) into a stack of version ids; the top is where the alias points.

    "set" pushes, "rollback" pops (back to the version before the current move), "remove" empties it."""
    stack: list[int] = []
    for event in events:
        apply_alias_event(stack, event)
    return stack


def apply_alias_event(stack: list[int], event: dict) -> None:
    """One alias move applied to a stack of version ids, in place (see `alias_stack`)."""
    if event["action"] == "set":
        stack.append(int(event["version_id"]))
    elif event["action"] == "rollback":
        stack.pop()
    else:
        stack.clear()


def _loop_iteration_dict(r: sqlite3.Row) -> dict:
    return {"id": r["id"], "name": r["name"], "number": r["number"], "config": json.loads(r["config_json"]),
            "created_at": r["created_at"]}


def _version_dict(r: sqlite3.Row) -> dict:
    return {"id": r["id"], "name": r["name"], "version": r["version"], "path": r["path"],
            "parent_id": r["parent_id"], "metrics": json.loads(r["metrics_json"]), "meta": json.loads(r["meta_json"]),
            "status": r["status"], "created_at": r["created_at"]}


def _item_dict(r: sqlite3.Row) -> dict:
    return {"id": r["id"], "item_key": r["item_key"], "prompt": json.loads(r["prompt_json"]),
            "response_a": r["response_a"], "response_b": r["response_b"], "source_a": r["source_a"],
            "source_b": r["source_b"], "origin": r["origin"], "created_at": r["created_at"]}


def _vote_dict(r: sqlite3.Row) -> dict:
    return {"vote_id": r["vote_id"], "item_id": r["item_id"], "prompt": json.loads(r["prompt_json"]),
            "response_a": r["response_a"], "response_b": r["response_b"], "source_a": r["source_a"],
            "source_b": r["source_b"], "origin": r["origin"], "verdict": r["verdict"],
            "shown_order": r["shown_order"], "ratings": json.loads(r["ratings_json"]), "reason": r["reason"],
            "annotator": r["annotator"], "created_at": r["created_at"], "retracted": r["retracted_at"] is not None,
            "retracted_at": r["retracted_at"], "superseded": bool(r["superseded"])}


def _interaction_dict(r: sqlite3.Row) -> dict:
    return {"id": r["id"], "conversation_id": r["conversation_id"], "model": r["model"],
            "messages": json.loads(r["messages_json"]), "response": r["response"],
            "params": json.loads(r["params_json"]), "usage": json.loads(r["usage_json"]),
            "created_at": r["created_at"]}
